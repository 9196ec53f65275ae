//! Softmax attention with $1/n$ logits (Tensor Programs II's scaling):
//! $y_t = Σ_s A_{ts} v_s$, $A_{ts} = \operatorname{softmax}_s(q_t·k_s / n)$, one variable per query.
//!
//! - **Finite:** the weights per sample and query; backward, with
//!   $dA_s = g·v_s$ and $dL_s = A_s (dA_s − Σ_r A_r dA_r)$: $dv_s$ += $A_s g$,
//!   $dq$ += $Σ_s dL_s k_s / n$, $dk_s$ += $dL_s q / n$ (per sample and output).
//! - **Limit (Tensor Programs II, Appendix):** $q·k_s/n → E[q k_s]$, so the weights are
//!   deterministic per sample, $A_{ts} = \operatorname{softmax}_s E[q_t k_s]$, and
//!   $y_t = Σ_s A_{ts} v_s$ carries them as per-sample coefficients; the values'
//!   gradients are scaled alike, and the logits' gradients vanish.

use std::sync::Arc;

use nalgebra::{DMatrix, RealField};

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{
    BackwardTerms, Compiler, Form, LimitGradients, Mode, SampleScalar, lin,
};
use crate::infinite::tape::Val;
use crate::program::{Program, Var, Width, empty};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// The output of query `query` of an attention block with keys `keys` and values
/// `values` (variables of hidden width; the lists are shared by the block's outputs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Attend {
    pub(crate) query: usize,
    pub(crate) keys: Arc<[usize]>,
    pub(crate) values: Arc<[usize]>,
}

impl Program {
    /// Softmax attention with $1/n$ logits, one output per query:
    /// $y_t = Σ_s \operatorname{softmax}\_s(q_t·k_s / n) v_s$, $n$ the width of the queries and keys (not
    /// $1/\sqrt n$: Tensor Programs II's scaling, whose limit is non-trivial when queries and
    /// keys are tied). Queries, keys and values may be the same variables.
    ///
    /// # Errors
    /// An empty list, keys and values of different lengths, a foreign handle, or a
    /// variable that is not one hidden vector.
    pub fn attention(&mut self, queries: &[Var], keys: &[Var], values: &[Var]) -> Result<Vec<Var>> {
        if queries.is_empty() || keys.is_empty() {
            return Err(empty("attention"));
        }
        if keys.len() != values.len() {
            return Err(Error::InvalidParameter {
                parameter: "attention values",
                value: format!("{} values for {} keys", values.len(), keys.len()),
                reason: "every key needs one value",
            });
        }
        let mut lists = [Vec::new(), Vec::new(), Vec::new()];
        for (list, (name, vars)) in lists.iter_mut().zip([
            ("attention query", queries),
            ("attention key", keys),
            ("attention value", values),
        ]) {
            for &v in vars {
                let v = self.check_var(name, v)?;
                self.check_single_hidden(name, v)?;
                list.push(v);
            }
        }
        let [queries, keys, values] = lists;
        let (keys, values): (Arc<[usize]>, Arc<[usize]>) = (keys.into(), values.into());
        Ok(queries
            .into_iter()
            .map(|query| {
                let op = Attend {
                    query,
                    keys: Arc::clone(&keys),
                    values: Arc::clone(&values),
                };
                self.push(Op::Attend(op), Width::Hidden(1))
            })
            .collect())
    }
}

/// $\operatorname{softmax}(l)_s = e^{l_s − \max l} / Σ_r e^{l_r − \max l}$, in place: finite at
/// any size of the logits.
pub(crate) fn softmax_in_place<T: RealField + Copy>(logits: &mut [T]) {
    let Some(max) = logits.iter().copied().reduce(T::max) else {
        return;
    };
    let mut total = T::zero();
    for l in logits.iter_mut() {
        *l = (*l - max).exp();
        total += *l;
    }
    for l in logits.iter_mut() {
        *l /= total;
    }
}

impl Attend {
    /// The softmax of sample `i`'s logits q·k_s/n when one of them overflows: formed from
    /// q and the keys divided by their largest magnitudes a and b, L_s = ab·l_s, so that
    /// $e^{L_s − L_{max}} = e^{ab(l_s − l_{max})}$ (1 at the maximum, 0 where it underflows):
    /// the saturated weights, exactly.
    fn saturated_softmax<T: Scalar>(&self, at: &FiniteForward<'_, T>, i: usize, logits: &mut [T]) {
        let q = at.values[self.query].row(i);
        let qa = q.amax();
        let kb = self
            .keys
            .iter()
            .map(|&key| at.values[key].row(i).amax())
            .fold(T::zero(), |m, v| m.max(v));
        if qa == T::zero() || kb == T::zero() {
            logits.fill(T::zero());
            softmax_in_place(logits);
            return;
        }
        let inv = T::one() / T::from_usize(q.ncols()).unwrap_or_else(T::one);
        let qs = q / qa;
        for (l, &key) in logits.iter_mut().zip(self.keys.iter()) {
            *l = qs.dot(&(at.values[key].row(i) / kb)) * inv;
        }
        let ab = qa * kb;
        let Some(max) = logits.iter().copied().reduce(|m, v| m.max(v)) else {
            return;
        };
        let mut total = T::zero();
        for l in logits.iter_mut() {
            let d = *l - max;
            *l = if d == T::zero() { T::one() } else { (ab * d).exp() };
            total += *l;
        }
        for l in logits.iter_mut() {
            *l /= total;
        }
    }
}

impl<T: Scalar> FiniteRule<T> for Attend {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let q = &at.values[self.query];
        let n = at.x.nrows();
        let inv = T::one() / T::from_usize(q.ncols()).unwrap_or_else(T::one);
        // The weights, N × keys: softmax over the keys of q·k_s / n per sample.
        let mut a = DMatrix::<T>::zeros(n, self.keys.len());
        let mut logits = vec![T::zero(); self.keys.len()];
        for i in 0..n {
            for (l, &key) in logits.iter_mut().zip(self.keys.iter()) {
                *l = q.row(i).dot(&at.values[key].row(i)) * inv;
            }
            if logits.iter().all(|l| l.is_finite()) {
                softmax_in_place(&mut logits);
            } else {
                self.saturated_softmax(at, i, &mut logits);
            }
            for (s, &w) in logits.iter().enumerate() {
                a[(i, s)] = w;
            }
        }
        let mut y = DMatrix::<T>::zeros(n, at.values[self.values[0]].ncols());
        for (s, &v) in self.values.iter().enumerate() {
            let w = a.column(s);
            for (mut yc, vc) in y.column_iter_mut().zip(at.values[v].column_iter()) {
                yc.zip_zip_apply(&vc, &w, |y, v, w| *y += w * v);
            }
        }
        Evaluated {
            value: y,
            saved: Some(a),
        }
    }

    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        i: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        let a = at.saved[i]
            .as_ref()
            .expect("the forward pass keeps the attention weights");
        let (n, outputs) = (a.nrows(), grads.outputs);
        let q = &at.values[self.query];
        let m = q.ncols();
        let inv_m = T::one() / T::from_usize(m).unwrap_or_else(T::one);
        let keys = self.keys.len();
        for c in 0..outputs {
            let gc = g.columns(c * m, m);
            let mut dl = DMatrix::<T>::zeros(n, keys);
            for (s, &v) in self.values.iter().enumerate() {
                for r in 0..n {
                    dl[(r, s)] = gc.row(r).dot(&at.values[v].row(r));
                }
            }
            for r in 0..n {
                let mean: T = (0..keys)
                    .map(|s| a[(r, s)] * dl[(r, s)])
                    .fold(T::zero(), |x, y| x + y);
                for s in 0..keys {
                    dl[(r, s)] = a[(r, s)] * (dl[(r, s)] - mean) * inv_m;
                }
            }
            for (s, (&v, &key)) in self.values.iter().zip(self.keys.iter()).enumerate() {
                if let Some(dv) = grads.slot(v, m) {
                    for r in 0..n {
                        let w = a[(r, s)];
                        for j in 0..m {
                            dv[(r, c * m + j)] += w * gc[(r, j)];
                        }
                    }
                }
                if let Some(dk) = grads.slot(key, m) {
                    for r in 0..n {
                        let w = dl[(r, s)];
                        for j in 0..m {
                            dk[(r, c * m + j)] += w * q[(r, j)];
                        }
                    }
                }
                if let Some(dq) = grads.slot(self.query, m) {
                    for r in 0..n {
                        let w = dl[(r, s)];
                        for j in 0..m {
                            dq[(r, c * m + j)] += w * at.values[key][(r, j)];
                        }
                    }
                }
            }
        }
    }
}

impl LimitRule for Attend {
    fn form(&self, c: &mut Compiler<'_>, i: usize) -> Form {
        let mut terms = Vec::new();
        for (key, &v) in self.values.iter().enumerate() {
            match c.forms[v].clone() {
                Form::Blocks(b) => {
                    let s = weight_of(i, key);
                    for (a, coefficient) in c.hlin_terms(b[0]) {
                        let m = c.times(a.1, s);
                        terms.push(((a.0, m), coefficient));
                    }
                }
                bad @ Form::NotGaussian(_) => return bad,
                Form::Fixed(_) => unreachable!("attention values are hidden"),
            }
        }
        Form::Blocks(vec![c.hlin.id(lin(terms))])
    }

    fn backward(
        &self,
        c: &mut Compiler<'_>,
        i: usize,
        here: &[BackwardTerms],
        grads: &mut LimitGradients,
    ) -> Result<()> {
        for (key, &v) in self.values.iter().enumerate() {
            let scaled = c.scale_terms(&here[0], weight_of(i, key));
            grads.add(v, 0, &scaled, 1.0);
        }
        Ok(())
    }

    fn sample_scalar(&self, c: &mut Compiler<'_>, i: usize, index: u32) -> Result<Val> {
        // All keys of this query at once: softmax over E[q·k_s] (the 1/n logits).
        let qf = c.form(self.query)?.clone();
        let mut logits = Vec::with_capacity(self.keys.len());
        for &k in self.keys.iter() {
            let kf = c.form(k)?.clone();
            logits.push(c.moment_of_forms(&qf, &kf, Mode::Diag, self.query)?);
        }
        let weights = match logits
            .iter()
            .map(|v| v.constant())
            .collect::<Option<Vec<f64>>>()
        {
            Some(mut l) => {
                softmax_in_place(l.as_mut_slice());
                l.into_iter().map(Val::constant_or_zero).collect()
            }
            None => c.diag.push_softmax(logits),
        };
        for (key, &w) in weights.iter().enumerate() {
            c.remember_scalar(weight_of(i, key), w);
        }
        Ok(weights[index as usize])
    }

    fn write_structure(&self, w: &mut Writer) {
        w.usize(self.query);
        w.list(&self.keys);
        w.list(&self.values);
    }
}

/// The weight $A_{t,\text{key}}$ of attention output `i` as a per-sample scalar.
fn weight_of(i: usize, key: usize) -> SampleScalar {
    SampleScalar {
        node: i,
        index: key as u32,
    }
}
