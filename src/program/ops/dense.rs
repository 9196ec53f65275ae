//! A matrix multiplication, $h = (σ_W/\sqrt{n_{in}}) W z$: the source of Gaussian vectors.
//!
//! - **Finite:** $h = s_W z W^⊤$ on a batch (rows are samples); backward
//!   $∂f/∂z = s_W (∂f/∂h) W$.
//! - **Limit (forward):** $h$ is a Gaussian base. Two uses $u$, $v$ of one weight have
//!   $\operatorname{Cov}(h_u, h̄_v) = σ_W² M(z_u, z̄_v)$ with
//!   $M(z, z̄) = (1/K) Σ_k E[z_k z̄_k]$ (or $z·z̄/d$ for input columns); uses of
//!   different weights are independent. The tangent moment adds the weight's own
//!   derivative: $T(h_u, h̄_v) = c_W M(z_u, z̄_v) + σ_W² T(z_u, z̄_v)$.
//! - **Limit (backward):** the gradient reaching $z$ is the base $W^⊤ dh_u$ (block $k$ of
//!   $z$), with $\operatorname{Cov}(W^⊤ dh_u, W^⊤ dh̄_v)_k = (σ_W²/K) D(h_u, h̄_v)$ for uses of one
//!   weight (gradient independence), 0 otherwise.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{
    Base, BackwardTerms, Compiler, Form, Gauss, LimitGradients, Mode, backward_atom,
};
use crate::infinite::tape::Val;
use crate::linalg::{columns_transposed, gemm};
use crate::program::{Program, Var, Weight, Width};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// $(σ_W/\sqrt{n_{in}}) W z$ with weight `weight` and $z$ = variable `input`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Dense {
    pub(crate) weight: usize,
    pub(crate) input: usize,
}

impl Program {
    /// $(σ_W/\sqrt{n_{in}}) W z$: a hidden vector of width $n$. A weight may be used many times,
    /// always with the same fan-in.
    ///
    /// # Errors
    /// A handle from another program, or a fan-in different from the weight's earlier
    /// uses.
    pub fn dense(&mut self, weight: Weight, z: Var) -> Result<Var> {
        let w = self.check_weight(weight)?;
        let z = self.check_var("dense input", z)?;
        let fan_in = self.nodes[z].width;
        match self.weights[w].fan_in {
            Some(previous) if previous != fan_in => {
                return Err(Error::InvalidParameter {
                    parameter: "dense input",
                    value: format!("variable {z} of width {}", fan_in.describe()),
                    reason: "a weight must be used with the same fan-in at every use",
                });
            }
            _ => self.weights[w].fan_in = Some(fan_in),
        }
        let var = self.push(
            Op::Dense(Dense {
                weight: w,
                input: z,
            }),
            Width::Hidden(1),
        );
        self.weights[w].uses.push(var.index);
        Ok(var)
    }
}

impl<T: Scalar> FiniteRule<T> for Dense {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let parameters = at.parameters();
        let wt = &parameters.weights[self.weight];
        let mut h = DMatrix::<T>::zeros(at.x.nrows(), wt.ncols());
        let scale = parameters.weight_scale(at.program, self.weight);
        gemm(&mut h, scale, &at.values[self.input], wt, T::zero());
        h.into()
    }

    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        _: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        let wt = &at.parameters.weights[self.weight];
        let (fan, m) = wt.shape();
        let s = at.parameters.weight_scale(at.program, self.weight);
        let outputs = grads.outputs;
        let Some(acc) = grads.slot(self.input, fan) else {
            return;
        };
        let w = columns_transposed(wt, 0, m);
        for c in 0..outputs {
            gemm(
                &mut acc.columns_mut(c * fan, fan),
                s,
                &g.columns(c * m, m),
                &w,
                T::one(),
            );
        }
    }
}

impl LimitRule for Dense {
    fn form(&self, c: &mut Compiler<'_>, i: usize) -> Form {
        let a = c.gauss_atom(Gauss::Dense(i));
        Form::Blocks(vec![c.hlin.id(vec![(a, 1.0_f64.to_bits())])])
    }

    fn backward(
        &self,
        c: &mut Compiler<'_>,
        i: usize,
        _: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        for k in 0..c.program.nodes[self.input].width.hidden_blocks() {
            let base = Base::Transposed {
                weight: self.weight,
                node: i,
                block: k,
            };
            grads.add(self.input, k, &[backward_atom(None, base)], 1.0);
        }
        Ok(())
    }

    fn write_structure(&self, w: &mut Writer) {
        w.pair(self.weight, self.input);
    }
}

/// The dense variable `u` of a program.
fn dense_of(program: &Program, u: usize) -> &Dense {
    match &program.nodes[u].op {
        Op::Dense(d) => d,
        _ => unreachable!("weight uses and dense atoms are dense variables"),
    }
}

impl Compiler<'_> {
    /// $\operatorname{Cov}(h_u, h̄_v)$ of two dense variables.
    pub(crate) fn dense_covariance(&mut self, u: usize, v: usize, mode: Mode) -> Result<Val> {
        let (a, b) = (dense_of(self.program, u), dense_of(self.program, v));
        if a.weight != b.weight {
            return Ok(Val::Zero);
        }
        let s2 = self.program.weights[a.weight].std.powi(2);
        let m = self.fan_in_moment(u, v, mode)?;
        Ok(self.poly(mode, 0.0, vec![(s2, m, None)]))
    }

    /// $T(h_u, h̄_v) = c_W M(z_u, z̄_v) + σ_W² T(z_u, z̄_v)$ of two dense variables.
    pub(crate) fn dense_tangent(&mut self, u: usize, v: usize) -> Result<Val> {
        let (a, b) = (dense_of(self.program, u), dense_of(self.program, v));
        if a.weight != b.weight {
            return Ok(Val::Zero);
        }
        let decl = &self.program.weights[a.weight];
        let (s2, coef_w) = (decl.std * decl.std, decl.ntk_coefficient());
        let (fa, fb) = (self.form(a.input)?.clone(), self.form(b.input)?.clone());
        let t = self.tangent_of_forms(&fa, &fb)?;
        let m = self.fan_in_moment(u, v, Mode::Cross)?;
        Ok(self.poly(
            Mode::Cross,
            0.0,
            vec![(coef_w, m, None), (s2, t, None)],
        ))
    }

    /// $\operatorname{Cov}(W^⊤ dh_u, W^⊤ dh̄_v)$ in block $k$: $(σ_W²/K) D(h_u, h̄_v)$ for
    /// uses $u$, $v$ of one weight.
    pub(crate) fn transposed_covariance(
        &mut self,
        (w1, u, k): (usize, usize, usize),
        (w2, v, l): (usize, usize, usize),
    ) -> Result<Val> {
        if w1 != w2 || k != l {
            return Ok(Val::Zero);
        }
        let decl = &self.program.weights[w1];
        let blocks = decl.fan_in.map_or(1, |w| w.hidden_blocks().max(1));
        let s = decl.std * decl.std / blocks as f64;
        let d = self.grad_of_nodes(u, v, 0)?;
        Ok(self.poly(Mode::Cross, 0.0, vec![(s, d, None)]))
    }

    /// $M(z_u, z̄_v)$ of the inputs of two dense uses: $(1/K) Σ_k E[z_k z̄_k]$ or $z·z̄/d$.
    pub(crate) fn fan_in_moment(&mut self, u: usize, v: usize, mode: Mode) -> Result<Val> {
        let (a, b) = (
            dense_of(self.program, u).input,
            dense_of(self.program, v).input,
        );
        let (fa, fb) = (self.form(a)?.clone(), self.form(b)?.clone());
        self.moment_of_forms(&fa, &fb, mode, a)
    }
}
