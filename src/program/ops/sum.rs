//! Sums and averages of variables of one width: residual connections, a recurrent
//! step's input and state, pooling over time or positions.
//!
//! - **Finite:** $s = c Σ_j a_j$ ($c = 1$ for a sum, $1/K$ for a mean of $K$ parts);
//!   each part receives $c$ times the gradient.
//! - **Limit:** the same linear combination of the parts' forms, block by block, and of
//!   their backward combinations.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::Result;
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients};
use crate::program::{Program, Var};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// The sum of `parts`, or their mean when `mean`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Sum {
    pub(crate) parts: Vec<usize>,
    pub(crate) mean: bool,
}

impl Sum {
    /// $c$: 1 for a sum, $1/K$ for a mean.
    fn scale(&self) -> f64 {
        if self.mean {
            1.0 / self.parts.len() as f64
        } else {
            1.0
        }
    }
}

impl Program {
    /// The sum of `parts` (all of the same width): residual connections, or a
    /// recurrent step's input and state.
    ///
    /// # Errors
    /// An empty list, a foreign handle, or parts of different widths.
    pub fn add(&mut self, parts: &[Var]) -> Result<Var> {
        let (parts, width) = self.same_width("add", parts)?;
        Ok(self.push(Op::Sum(Sum { parts, mean: false }), width))
    }

    /// The average of `parts` (all of the same width): pooling over time or positions.
    ///
    /// # Errors
    /// An empty list, a foreign handle, or parts of different widths.
    pub fn mean(&mut self, parts: &[Var]) -> Result<Var> {
        let (parts, width) = self.same_width("mean", parts)?;
        Ok(self.push(Op::Sum(Sum { parts, mean: true }), width))
    }
}

impl<T: Scalar> FiniteRule<T> for Sum {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let mut s = at.values[self.parts[0]].clone();
        for &p in &self.parts[1..] {
            s += &at.values[p];
        }
        if self.mean {
            s *= T::from_f64_lossy(self.scale());
        }
        s.into()
    }

    fn backward(
        &self,
        _: &FiniteBackward<'_, T>,
        _: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        let s = T::from_f64_lossy(self.scale());
        for &p in &self.parts {
            grads.add(p, g, s);
        }
    }
}

impl LimitRule for Sum {
    fn form(&self, c: &mut Compiler<'_>, _: usize) -> Form {
        c.combine(&self.parts, self.scale())
    }

    fn backward(
        &self,
        _: &mut Compiler<'_>,
        _: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        let s = self.scale();
        for &p in &self.parts {
            for (k, t) in here.iter().enumerate() {
                grads.add(p, k, t, s);
            }
        }
        Ok(())
    }

    fn write_structure(&self, w: &mut Writer) {
        w.usize(usize::from(self.mean));
        w.list(&self.parts);
    }
}
