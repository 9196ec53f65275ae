//! The zero vector: what a zero-padded convolution puts in its windows past the edge
//! of the image, so that the window keeps the filter's full fan-in (neural-tangents'
//! `Conv(padding='SAME')` normalisation).
//!
//! - **Finite:** zeros; no gradient flows through it.
//! - **Limit:** the empty combination of atoms (every moment with it is 0); at input
//!   width, zeros evaluated exactly.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::Result;
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients};
use crate::program::{Program, Var, Width};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// Zeros of a given width.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Zeros;

impl Program {
    /// The zero vector of the width of variable `like` (a padding position).
    pub(crate) fn zeros_like(&mut self, like: usize) -> Var {
        let width = self.nodes[like].width;
        self.push(Op::Zeros(Zeros), width)
    }
}

impl<T: Scalar> FiniteRule<T> for Zeros {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let n = at.x.nrows();
        let i = at.values.len();
        let columns = match at.program.nodes[i].width {
            Width::Input(d) => d,
            Width::Hidden(k) => k * at.parameters().width,
        };
        DMatrix::zeros(n, columns).into()
    }

    fn backward(&self, _: &FiniteBackward<'_, T>, _: usize, _: &DMatrix<T>, _: &mut Gradients<'_, T>) {
    }
}

impl LimitRule for Zeros {
    fn form(&self, c: &mut Compiler<'_>, i: usize) -> Form {
        let blocks = c.program.nodes[i].width.hidden_blocks();
        let empty = c.hlin.id(Vec::new());
        Form::Blocks(vec![empty; blocks])
    }

    fn backward(
        &self,
        _: &mut Compiler<'_>,
        _: usize,
        _: &[BackwardTerms],
        _: &mut LimitGradients,
    ) -> Result<()> {
        Ok(())
    }

    fn write_structure(&self, _: &mut Writer) {}
}
