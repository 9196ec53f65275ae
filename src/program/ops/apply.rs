//! An elementwise nonlinearity, $φ(h)$.
//!
//! - **Finite:** $φ$ entrywise; backward $∂f/∂h = ∂f/∂φ(h) ⊙ φ'(h)$.
//! - **Limit (forward):** $φ$ of a Gaussian combination $g$ is a φ-atom; its second
//!   moments are the dual $E[φ(g) ψ(ḡ)]$ (closed forms or quadrature) and, against a
//!   Gaussian, Stein's lemma $E[φ(g) ḡ'] = \operatorname{Cov}(g, ḡ') E[φ'(g)]$. φ of a
//!   vector that is not Gaussian (it holds a nonlinearity's output) has no 2-D
//!   Gaussian reduction and is outside the limit.
//! - **Limit (backward):** the backward atoms are multiplied by $φ'(g)$, whose moments
//!   are $E[φ'(g)]$ and the dual's $Ċ = E[φ'(g) ψ'(ḡ)]$.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::activation::Activation;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{Atom, BackwardTerms, Compiler, Form, LimitGradients, ONE};
use crate::program::{Program, Var};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// $φ$ = `activation` of variable `input`, entrywise.
#[derive(Clone, Debug)]
pub(crate) struct Apply {
    pub(crate) activation: Activation,
    pub(crate) input: usize,
}

impl Program {
    /// $φ(h)$ entrywise.
    ///
    /// # Errors
    /// A foreign handle, or an invalid activation ([`Activation::validate`]).
    pub fn apply(&mut self, activation: Activation, h: Var) -> Result<Var> {
        activation.validate()?;
        let h = self.check_var("apply input", h)?;
        let width = self.nodes[h].width;
        Ok(self.push(
            Op::Apply(Apply {
                activation,
                input: h,
            }),
            width,
        ))
    }
}

impl<T: Scalar> FiniteRule<T> for Apply {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        self.activation.elementwise(&at.values[self.input]).into()
    }

    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        _: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        if !grads.takes(self.input) {
            return;
        }
        let d = at.values[self.input].map(|v| self.activation.derivative(v));
        let (m, outputs) = (d.ncols(), grads.outputs);
        let Some(acc) = grads.slot(self.input, m) else {
            return;
        };
        for c in 0..outputs {
            let mut block = acc.columns_mut(c * m, m);
            block += g.columns(c * m, m).component_mul(&d);
        }
    }

    fn non_finite_reason(&self) -> String {
        if self.activation.finite_on_finite_inputs() {
            format!(
                "{} of variable {} exceeds the range of the scalar type (the inputs, a σ or \
                 the depth is too large)",
                self.activation, self.input
            )
        } else {
            format!(
                "activation {} applied to variable {} gives a NaN or ∞",
                self.activation, self.input
            )
        }
    }
}

impl LimitRule for Apply {
    fn form(&self, c: &mut Compiler<'_>, i: usize) -> Form {
        if let Activation::Identity = self.activation {
            return c.forms[self.input].clone();
        }
        let act = c.activation_id(&self.activation);
        let (name, input) = (&self.activation, self.input);
        c.map_blocks(input, |c, _, block| match c.as_gaussian(block) {
            Some(g) => {
                let p = c.phi.id((act, g));
                Ok(c.hlin.id(vec![((Atom::Phi(p), ONE), 1.0_f64.to_bits())]))
            }
            None => Err(Error::OutsideLimit {
                variable: i,
                reason: format!(
                    "it applies {name} to variable {input}, which is not Gaussian in the \
                     limit because it holds the output of a nonlinearity (φ(ψ(h)) and \
                     φ(h + ψ(g)) have no 2-D Gaussian reduction)"
                ),
            }),
        })
    }

    fn backward(
        &self,
        c: &mut Compiler<'_>,
        i: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        if let Activation::Identity = self.activation {
            for (k, t) in here.iter().enumerate() {
                grads.add(self.input, k, t, 1.0);
            }
            return Ok(());
        }
        let Form::Blocks(blocks) = c.form(self.input)?.clone() else {
            return Ok(());
        };
        let act = c.activation_id(&self.activation);
        for (k, t) in here.iter().enumerate() {
            let g = c.as_gaussian(blocks[k]).ok_or_else(|| c.outside(i))?;
            let p = c.phi.id((act, g));
            let mut scaled = Vec::with_capacity(t.len());
            for &((a, m), coefficient) in t {
                if a.factor.is_some() {
                    return Err(Error::OutsideLimit {
                        variable: i,
                        reason: "its gradient meets a second nonlinearity's derivative \
                                 before a weight, and E[φ'(g) ψ'(h) χ'(ḡ)] has no 2-D \
                                 Gaussian reduction"
                            .into(),
                    });
                }
                scaled.push(((a.with_factor(p), m), coefficient));
            }
            grads.add(self.input, k, &scaled, 1.0);
        }
        Ok(())
    }

    fn write_structure(&self, w: &mut Writer) {
        w.activation(&self.activation);
        w.usize(self.input);
    }

    fn non_finite_cause(&self) -> Option<&'static str> {
        matches!(self.activation, Activation::Erf | Activation::Gelu).then_some(
            "an Erf or GELU of a pair of nearly parallel inputs of large norm, whose \
             determinant q₁q₂ − c² the rounded second moments no longer determine (to \
             1e-8): scale the inputs down, or for an MLP use its MlpSpec, whose engine \
             computes the determinant from the inputs",
        )
    }
}
