//! A bias, $h + σ_b b$: a second source of Gaussian vectors.
//!
//! - **Finite:** $σ_b b$ added to every sample; the gradient passes through unchanged.
//! - **Limit:** block $k$ of $b$ is a Gaussian base with
//!   $\operatorname{Cov}(b_k, b_k) = σ_b²$, shared by every use of the bias and
//!   independent of everything else; its tangent moment is its NTK coefficient $c_b$
//!   ($σ_b²$). The backward combination passes through unchanged.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, Gauss, LimitGradients, lin};
use crate::infinite::tape::Val;
use crate::program::{Bias, Program, Var, Width};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// Variable `input` plus $σ_b$ times bias `bias`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct AddBias {
    pub(crate) input: usize,
    pub(crate) bias: usize,
}

impl Program {
    /// $h + σ_b b$. A bias may be added at many places, always to vectors of the same
    /// hidden width.
    ///
    /// # Errors
    /// A handle from another program, a variable of input width (a bias belongs to a
    /// hidden vector), or a width different from the bias's earlier uses.
    pub fn add_bias(&mut self, h: Var, bias: Bias) -> Result<Var> {
        let b = self.check_bias(bias)?;
        let h = self.check_var("add_bias input", h)?;
        let width = self.nodes[h].width;
        if let Width::Input(_) = width {
            return Err(Error::InvalidParameter {
                parameter: "add_bias input",
                value: format!("variable {h} of width {}", width.describe()),
                reason: "a bias is added to a hidden vector (the output of a dense layer)",
            });
        }
        match self.biases[b].width {
            Some(previous) if previous != width => {
                return Err(Error::InvalidParameter {
                    parameter: "add_bias input",
                    value: format!("variable {h} of width {}", width.describe()),
                    reason: "a bias must be added to vectors of the same width at every use",
                });
            }
            _ => self.biases[b].width = Some(width),
        }
        let var = self.push(Op::AddBias(AddBias { input: h, bias: b }), width);
        self.biases[b].uses.push(var.index);
        Ok(var)
    }
}

impl<T: Scalar> FiniteRule<T> for AddBias {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let mut h = at.values[self.input].clone();
        let s = T::from_f64_lossy(at.program.biases[self.bias].std);
        let b = &at.parameters().biases[self.bias];
        for (mut col, &b) in h.column_iter_mut().zip(b.iter()) {
            col.add_scalar_mut(s * b);
        }
        h.into()
    }

    fn backward(
        &self,
        _: &FiniteBackward<'_, T>,
        _: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        grads.add(self.input, g, T::one());
    }
}

impl LimitRule for AddBias {
    fn form(&self, c: &mut Compiler<'_>, _: usize) -> Form {
        c.map_blocks(self.input, |c, k, block| {
            let a = c.gauss_atom(Gauss::Bias(self.bias, k));
            let mut terms = c.hlin_terms(block);
            terms.push((a, 1.0));
            Ok(c.hlin.id(lin(terms)))
        })
    }

    fn backward(
        &self,
        _: &mut Compiler<'_>,
        _: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        for (k, t) in here.iter().enumerate() {
            grads.add(self.input, k, t, 1.0);
        }
        Ok(())
    }

    fn write_structure(&self, w: &mut Writer) {
        w.pair(self.input, self.bias);
    }
}

impl Compiler<'_> {
    /// $\operatorname{Cov}(b_k, b'_l)$: $σ_b²$ for the same block of one bias, else 0.
    pub(crate) fn bias_covariance(&self, (b1, k1): (usize, usize), (b2, k2): (usize, usize)) -> Val {
        if (b1, k1) == (b2, k2) {
            Val::Const(self.program.biases[b1].std.powi(2))
        } else {
            Val::Zero
        }
    }

    /// $T(b_k, b'_l)$: the bias's NTK coefficient $c_b$ for the same block, else 0.
    pub(crate) fn bias_tangent(&self, (b1, k1): (usize, usize), (b2, k2): (usize, usize)) -> Val {
        if (b1, k1) == (b2, k2) {
            Val::Const(self.program.biases[b1].ntk_coefficient())
        } else {
            Val::Zero
        }
    }
}
