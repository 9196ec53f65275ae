//! LayerNorm without affine parameters or $ε$:
//! $z = (x − \operatorname{mean}(x)) / \operatorname{std}(x)$ over the coordinates of each sample.
//!
//! - **Finite:** per sample, the biased standard deviation; backward
//!   $dx = (dz − \operatorname{mean}(dz) − z \operatorname{mean}(dz ⊙ z)) / \operatorname{std}(x)$,
//!   both computed on the row divided by its largest magnitude (exact at any scale: the
//!   squares of entries near $10^{±200}$ are not representable, their ratios are). A
//!   sample whose coordinates are all equal ($\operatorname{std}(x) = 0$) normalises to
//!   0, LayerNorm's value with any $ε > 0$; LayerNorm has no derivative there (its value
//!   jumps to a unit vector along any perturbation), so the network's gradients at that
//!   sample are an error naming the variable and the sample.
//! - **Limit (Tensor Programs II, Appendix):** the mean over the coordinates of a
//!   Gaussian $g$ vanishes, so $z = g/\sqrt{E[g²]}$: $g$ with the per-sample coefficient
//!   $1/\sqrt{E[g²]}$, which the gradient carries as well (the projection terms of the
//!   Jacobian vanish). LayerNorm of a vector that is not Gaussian (its mean does not
//!   vanish) is outside the limit.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
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
    /// A vector whose coordinates are all equal (zero variance, e.g. the dense output of
    /// an all-zero input without a bias) normalises to 0, LayerNorm's value with any
    /// $ε > 0$. LayerNorm has no derivative there (its value jumps to a unit vector along
    /// any perturbation), so the finite network's gradients, kernels and training steps
    /// on such a sample are [`Error::NonFiniteResult`], and so are the infinite-width
    /// kernels (an error naming the entry).
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

/// A row divided by its largest magnitude, its mean subtracted, and the variance of the
/// result, with the scale: $(y, \operatorname{var} y, \max|x|)$ for
/// $y = x/\max|x| − \operatorname{mean}$; $(x, 0, 0)$ for a zero row.
fn centred<T: Scalar>(row: nalgebra::DMatrixView<'_, T>) -> (DMatrix<T>, T, T) {
    let m = T::from_usize(row.ncols()).unwrap_or_else(T::one);
    let scale = row.amax();
    if scale == T::zero() {
        return (row.into_owned(), T::zero(), T::zero());
    }
    let mut y = row / scale;
    let mean = y.sum() / m;
    y.add_scalar_mut(-mean);
    let var = y.norm_squared() / m;
    (y, var, scale)
}

impl<T: Scalar> FiniteRule<T> for LayerNorm {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let x = &at.values[self.input];
        let mut z = DMatrix::<T>::zeros(x.nrows(), x.ncols());
        for r in 0..x.nrows() {
            let (y, var, _) = centred(x.rows(r, 1));
            if var > T::zero() {
                z.row_mut(r).copy_from(&(y / var.sqrt()));
            }
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
            // std(x) = scale · √var(y), divided by in two steps so that neither underflows
            // (`differentiable` has checked that var(y) > 0).
            let (_, var, scale) = centred(x.rows(r, 1));
            let sd = var.sqrt();
            for c in 0..grads.outputs {
                let dz = g.view((r, c * m), (1, m));
                let zr = z.row(r);
                let mean_dz = dz.sum() / mf;
                let mean_dzz = dz.component_mul(&zr).sum() / mf;
                for j in 0..m {
                    dx[(r, c * m + j)] = (dz[(0, j)] - mean_dz - zr[j] * mean_dzz) / sd / scale;
                }
            }
        }
        grads.add(self.input, &dx, T::one());
    }

    fn differentiable(&self, at: &FiniteBackward<'_, T>, i: usize) -> Result<()> {
        let x = &at.values[self.input];
        match (0..x.nrows()).find(|&r| centred(x.rows(r, 1)).1 <= T::zero()) {
            None => Ok(()),
            Some(row) => Err(Error::NonFiniteResult {
                result: "program network gradient",
                reason: format!(
                    "variable {i} is the LayerNorm of variable {}, whose coordinates are all \
                     equal at row {row} (zero variance, e.g. an all-zero input with no bias \
                     before it): LayerNorm is 0 there but has no derivative",
                    self.input
                ),
            }),
        }
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

    fn write_structure(&self, w: &mut Writer) {
        w.usize(self.input);
    }

    fn non_finite_cause(&self) -> Option<&'static str> {
        Some(
            "a LayerNorm's input has zero variance at one of the two samples (e.g. an \
             all-zero input with no bias before it), where LayerNorm has no derivative",
        )
    }
}
