//! LayerNorm without affine parameters or $ε$:
//! $z = (x − \operatorname{mean}(x)) / \operatorname{std}(x)$ over the coordinates of each sample.
//!
//! - **Finite:** per sample, the biased standard deviation; backward
//!   $dx = (dz − \operatorname{mean}(dz) − z \operatorname{mean}(dz ⊙ z)) / \operatorname{std}(x)$.
//!   A sample whose coordinates are all equal has $\operatorname{std}(x) = 0$ and no
//!   LayerNorm: its values are not finite, and the finite network reports it.
//! - **Limit (Tensor Programs II, Appendix):** the mean over the coordinates of a
//!   Gaussian $g$ vanishes, so $z = g/\sqrt{E[g²]}$: $g$ with the per-sample coefficient
//!   $1/\sqrt{E[g²]}$, which the gradient carries as well (the projection terms of the
//!   Jacobian vanish). LayerNorm of a vector that is not Gaussian (its mean does not
//!   vanish) is outside the limit.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients, SampleScalar};
use crate::infinite::tape::Val;
use crate::program::{Program, Var, Width};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// LayerNorm of variable `input`, one hidden vector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LayerNorm {
    pub(crate) input: usize,
}

impl Program {
    /// LayerNorm without affine parameters or $ε$:
    /// $(x − \operatorname{mean}(x)) / \operatorname{std}(x)$, the mean and the (biased)
    /// standard deviation taken over the $n$ coordinates of each sample.
    ///
    /// # Errors
    /// A foreign handle, or a variable that is not one hidden vector (input columns or
    /// a concatenation).
    pub fn layer_norm(&mut self, x: Var) -> Result<Var> {
        let x = self.check_var("layer_norm input", x)?;
        self.check_single_hidden("layer_norm input", x)?;
        Ok(self.push(Op::LayerNorm(LayerNorm { input: x }), Width::Hidden(1)))
    }
}

impl<T: Scalar> FiniteRule<T> for LayerNorm {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let x = &at.values[self.input];
        let m = T::from_usize(x.ncols()).unwrap_or_else(T::one);
        let mut z = x.clone();
        for mut row in z.row_iter_mut() {
            let mean = row.sum() / m;
            row.add_scalar_mut(-mean);
            let sd = (row.norm_squared() / m).sqrt();
            row /= sd;
        }
        z.into()
    }

    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        i: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        let (x, z) = (&at.values[self.input], &at.values[i]);
        let m = x.ncols();
        let mf = T::from_usize(m).unwrap_or_else(T::one);
        let mut dx = DMatrix::<T>::zeros(g.nrows(), g.ncols());
        for r in 0..x.nrows() {
            let row = x.row(r);
            let mean = row.sum() / mf;
            let sd = (row.map(|v| (v - mean) * (v - mean)).sum() / mf).sqrt();
            for c in 0..grads.outputs {
                let dz = g.view((r, c * m), (1, m));
                let zr = z.row(r);
                let mean_dz = dz.sum() / mf;
                let mean_dzz = dz.component_mul(&zr).sum() / mf;
                for j in 0..m {
                    dx[(r, c * m + j)] = (dz[(0, j)] - mean_dz - zr[j] * mean_dzz) / sd;
                }
            }
        }
        grads.add(self.input, &dx, T::one());
    }
}

impl LayerNorm {
    /// The per-sample scale $1/\sqrt{E[g²]}$ of variable `i` and the Gaussian
    /// combination $g$ of its input.
    fn scale(&self, c: &mut Compiler<'_>, i: usize, block: u32) -> Result<SampleScalar> {
        let g = c.as_gaussian(block).ok_or_else(|| Error::OutsideLimit {
            variable: i,
            reason: format!(
                "it is the LayerNorm of variable {}, which is not Gaussian in the limit \
                 (its mean over the coordinates does not vanish)",
                self.input
            ),
        })?;
        Ok(SampleScalar { node: i, index: g })
    }
}

impl LimitRule for LayerNorm {
    fn form(&self, c: &mut Compiler<'_>, i: usize) -> Form {
        c.map_blocks(self.input, |c, _, block| {
            let s = self.scale(c, i, block)?;
            Ok(c.scaled_block(block, s))
        })
    }

    fn backward(
        &self,
        c: &mut Compiler<'_>,
        i: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        let Form::Blocks(blocks) = c.form(self.input)?.clone() else {
            return Ok(());
        };
        let s = self.scale(c, i, blocks[0])?;
        let scaled = c.scale_terms(&here[0], s);
        grads.add(self.input, 0, &scaled, 1.0);
        Ok(())
    }

    fn sample_scalar(&self, c: &mut Compiler<'_>, i: usize, g: u32) -> Result<Val> {
        Ok(match c.cov(g, g, crate::infinite::program::Mode::Diag)? {
            Val::Const(q) if q > 0.0 => Val::Const(1.0 / q.sqrt()),
            Val::Zero | Val::Const(_) => {
                return Err(Error::OutsideLimit {
                    variable: i,
                    reason: format!(
                        "it is the LayerNorm of variable {}, which vanishes in the limit \
                         (its variance is 0)",
                        self.input
                    ),
                });
            }
            q => c.diag.push_inv_sqrt(q),
        })
    }
}
