//! Columns of the input: a token, or one position's channels. Deterministic and of
//! finite width, in the network and in the limit alike.

use std::ops::Range;

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients};
use crate::program::{Program, Var, Width};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// Columns `columns` of the input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Input {
    pub(crate) columns: Range<usize>,
}

impl Program {
    /// The variable holding columns `columns` of the input (a token, or one
    /// position's channels).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if the range is empty or reaches past the input.
    pub fn input(&mut self, columns: Range<usize>) -> Result<Var> {
        if columns.start >= columns.end || columns.end > self.input_dim {
            return Err(Error::InvalidParameter {
                parameter: "input columns",
                value: format!(
                    "{}..{} (the input has {} columns)",
                    columns.start, columns.end, self.input_dim
                ),
                reason: "must be a non-empty range within the input's columns",
            });
        }
        let width = Width::Input(columns.len());
        Ok(self.push(Op::Input(Input { columns }), width))
    }
}

impl<T: Scalar> FiniteRule<T> for Input {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        at.x.columns(self.columns.start, self.columns.len())
            .into_owned()
            .into()
    }

    fn backward(&self, _: &FiniteBackward<'_, T>, _: usize, _: &DMatrix<T>, _: &mut Gradients<'_, T>) {
    }
}

impl LimitRule for Input {
    fn form(&self, _: &mut Compiler<'_>, i: usize) -> Form {
        Form::Fixed(i)
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

    fn write_structure(&self, w: &mut Writer) {
        w.pair(self.columns.start, self.columns.end);
    }
}
