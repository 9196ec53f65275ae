//! The kernel recursion over a batch: Gram matrix by GEMM, then every entry runs all
//! layers in place, column block by column block, in parallel.
//!
//! The recursion at entry (i, j) needs only x1_i · x2_j and the per-sample variances
//! Σ^l(x, x) of every layer, which are computed first (O(N L)). Each column block of
//! the outputs is then filled by one GEMM (the Gram block, written straight into the
//! NNGP output) and, for each column in chunks of rows that stay in L1, one in-place
//! sweep per layer ([`PairDual::eval_column_then`]: C, Ċ and the Σ/Θ update in one
//! loop that vectorises for the ReLU family): no per-entry allocation and one pass over
//! memory. When x1 = x2 only rows i ≤ j are computed and the lower triangle is
//! mirrored at the end. Disjoint column blocks go to rayon's `par_chunks_mut`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nalgebra::{DMatrix, DMatrixViewMut};

use crate::activation::Activation;
use crate::error::{Error, Result, first_non_finite};
use crate::linalg::mirror_upper;
use crate::mlp::{MlpSpec, Parameterization};
use crate::parallel;

use super::dual::{PairDual, Variances};
use super::quadrature::GaussHermite;

/// Columns per work item.
const BLOCK_COLS: usize = 32;

/// Rows of a column taken through all layers at once.
const ROW_CHUNK: usize = 256;

/// One hidden layer: its activation, the activation's dual and its width (the next
/// Dense layer's n_in).
struct Hidden {
    activation: Activation,
    dual: PairDual,
    width: f64,
}

/// The recursion's constants for one spec.
pub(crate) struct Plan {
    hidden: Vec<Hidden>,
    sw2: f64,
    sb2: f64,
    input_dim: f64,
    standard: bool,
    /// The bias parameters' share of each Dense layer's NTK: σ_b² (NTK parameterization)
    /// or 1 (standard), 0 without biases.
    bias_ntk: f64,
}

/// Per-sample variances Σ^l(x, x) at every hidden layer.
struct Stats {
    q: Vec<Variances>,
}

impl Plan {
    pub(crate) fn new(spec: &MlpSpec, rule: &Arc<GaussHermite>) -> Plan {
        let standard = spec.parameterization_value() == Parameterization::Standard;
        let sb = spec.bias_std_value();
        Plan {
            hidden: spec
                .hidden_layers()
                .iter()
                .map(|(w, act)| Hidden {
                    activation: act.clone(),
                    dual: PairDual::new(act, act, rule),
                    width: *w as f64,
                })
                .collect(),
            sw2: spec.weight_std_value().powi(2),
            sb2: sb * sb,
            input_dim: spec.input_dim() as f64,
            standard,
            bias_ntk: match (spec.has_bias(), standard) {
                (false, _) => 0.0,
                (true, false) => sb * sb,
                (true, true) => 1.0,
            },
        }
    }

    /// The update of one Dense layer reading hidden layer `layer`'s C and Ċ.
    fn update(&self, width: f64) -> Update {
        Update {
            sw2: self.sw2,
            sb2: self.sb2,
            standard: self.standard,
            width,
            bias: self.bias_ntk,
        }
    }

    /// Σ^l(x, x) for every row of `x` and hidden layer l, checking on the way that
    /// Σ(x, x) and Θ̊(x, x) stay finite through every layer (off-diagonal entries are
    /// bounded by the diagonal ones, |K(x, x̄)| ≤ √(K(x, x) K(x̄, x̄))).
    fn stats(&self, x: &DMatrix<f64>, argument: &'static str) -> Result<Stats> {
        let n = x.nrows();
        let scale = self.sw2 / self.input_dim;
        let mut q: Vec<f64> = Vec::with_capacity(n);
        let mut t: Vec<f64> = Vec::with_capacity(n);
        for i in 0..n {
            let norm2 = x.row(i).norm_squared();
            let qi = scale * norm2 + self.sb2;
            q.push(qi);
            t.push(if self.standard {
                norm2 + self.bias_ntk
            } else {
                qi
            });
            if !(qi.is_finite() && t[i].is_finite()) {
                return Err(Error::NonFiniteResult {
                    result: "infinite_width",
                    reason: format!(
                        "the first layer's variance σ_w²|x|²/d + σ_b² = {qi:e} overflows f64 \
                         at row {i} of `{argument}` (|x|² = {norm2:e}): the input's norm (or \
                         σ_w) is too large"
                    ),
                });
            }
        }
        let mut qs = Vec::with_capacity(self.hidden.len());
        for (l, layer) in self.hidden.iter().enumerate() {
            let update = self.update(layer.width);
            let mut next = Vec::with_capacity(n);
            for i in 0..n {
                let (c, cdot) = layer.dual.eval(q[i], q[i], q[i]);
                if c.is_nan() || cdot.is_nan() {
                    return Err(Error::NonFiniteResult {
                        result: "infinite_width",
                        reason: format!(
                            "the Gaussian expectations of {} at hidden layer {} (row {i} of \
                             `{argument}`, variance {:e}) are E φφ = {c}, E φ'φ' = {cdot}: φ or \
                             φ' returns NaN (or ∞ − ∞) for some argument",
                            layer.activation,
                            l + 1,
                            q[i]
                        ),
                    });
                }
                let (mut s, mut ti) = (c, t[i]);
                update.apply(&mut s, &mut ti, cdot);
                if !(s.is_finite() && ti.is_finite()) {
                    return Err(Error::NonFiniteResult {
                        result: "infinite_width",
                        reason: format!(
                            "at row {i} of `{argument}` the kernel overflows f64 after hidden \
                             layer {} ({}, σ_w² = {:e}, variance in {:e}): Σ(x, x) = {s:e}, \
                             Θ̊(x, x) = {ti:e}; the input's norm, σ_w or the depth is too large \
                             for the kernel to be representable",
                            l + 1,
                            layer.activation,
                            self.sw2,
                            q[i]
                        ),
                    });
                }
                next.push(s);
                t[i] = ti;
            }
            qs.push(Variances::new(std::mem::replace(&mut q, next)));
        }
        Ok(Stats { q: qs })
    }

    /// Σ and Θ̊ between the rows of `x1` and `x2` (`None`: x2 = x1).
    pub(crate) fn kernels(
        &self,
        x1: &DMatrix<f64>,
        x2: Option<&DMatrix<f64>>,
    ) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
        let symmetric = x2.is_none();
        let x2 = x2.unwrap_or(x1);
        let (n1, n2) = (x1.nrows(), x2.nrows());
        let s1 = self.stats(x1, "x1")?;
        let s2_owned = if symmetric {
            None
        } else {
            Some(self.stats(x2, "x2")?)
        };
        let s2 = s2_owned.as_ref().unwrap_or(&s1);
        let mut nngp = DMatrix::<f64>::zeros(n1, n2);
        let mut ntk = DMatrix::<f64>::zeros(n1, n2);
        if n1 == 0 || n2 == 0 {
            return Ok((nngp, ntk));
        }
        let x2t = x2.transpose();
        let chunk = n1 * BLOCK_COLS;
        let first_bad_column = AtomicUsize::new(usize::MAX);
        // Disjoint column blocks of both outputs, one work item each.
        parallel::for_each_chunk_pair(
            nngp.as_mut_slice(),
            chunk,
            ntk.as_mut_slice(),
            chunk,
            |b, s, t| {
                let j0 = b * BLOCK_COLS;
                let cols = s.len() / n1;
                let rows = if symmetric { (j0 + cols).min(n1) } else { n1 };
                // Gram block x1[..rows] · x2[j0..j0+cols]ᵀ, written into the NNGP output.
                let mut gram = DMatrixViewMut::from_slice(s, n1, cols);
                gram.rows_mut(0, rows)
                    .gemm(1.0, &x1.rows(0, rows), &x2t.columns(j0, cols), 0.0);
                for jj in 0..cols {
                    let j = j0 + jj;
                    let len = if symmetric { j + 1 } else { n1 };
                    let col = jj * n1..jj * n1 + len;
                    self.column(&s1, s2, j, &mut s[col.clone()], &mut t[col.clone()]);
                    // Checked while the column is in cache.
                    if first_non_finite(&s[col.clone()])
                        .or(first_non_finite(&t[col]))
                        .is_some()
                    {
                        first_bad_column.fetch_min(j, Ordering::Relaxed);
                    }
                }
            },
        );
        let j = first_bad_column.into_inner();
        if j < n2 {
            for (what, m) in [("NNGP", &nngp), ("NTK", &ntk)] {
                if let Some(i) = m.column(j).iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFiniteResult {
                        result: "infinite_width",
                        reason: format!(
                            "the {what} entry ({i}, {j}) = {} is not finite although every \
                             diagonal entry is: an activation's φ or φ' is NaN or ∞ for some \
                             argument",
                            m[(i, j)]
                        ),
                    });
                }
            }
        }
        if symmetric {
            parallel::join(|| mirror_upper(&mut nngp), || mirror_upper(&mut ntk));
        }
        Ok((nngp, ntk))
    }

    /// Runs the recursion on column j: `s` holds x1_i · x2_j on entry, Σ(i, j) on exit;
    /// `t` receives Θ̊(i, j).
    fn column(&self, s1: &Stats, s2: &Stats, j: usize, s: &mut [f64], t: &mut [f64]) {
        let (sw2, sb2) = (self.sw2, self.sb2);
        let scale = sw2 / self.input_dim;
        if self.standard {
            let b = self.bias_ntk;
            for (si, ti) in s.iter_mut().zip(t.iter_mut()) {
                *ti = *si + b;
                *si = scale * *si + sb2;
            }
        } else {
            for (si, ti) in s.iter_mut().zip(t.iter_mut()) {
                *si = scale * *si + sb2;
                *ti = *si;
            }
        }
        // Every entry runs all layers on its own: row chunks keep the chunk's C, Ċ, Θ and
        // the rows' statistics in L1 through the layers.
        for (k, (s, t)) in s
            .chunks_mut(ROW_CHUNK)
            .zip(t.chunks_mut(ROW_CHUNK))
            .enumerate()
        {
            let first = k * ROW_CHUNK;
            for (l, layer) in self.hidden.iter().enumerate() {
                let update = self.update(layer.width);
                layer
                    .dual
                    .eval_column_then(&s1.q[l], first, s, &s2.q[l], j, t, |c, cdot, t| {
                        update.step(c, cdot, t)
                    });
            }
        }
    }
}

/// One layer's affine update of an entry from C and Ċ: Σ ← σ_w² C + σ_b² and
/// Θ ← Σ + σ_w² Ċ Θ (NTK) or Θ ← n C + b + σ_w² Ċ Θ (standard).
#[derive(Clone, Copy)]
struct Update {
    sw2: f64,
    sb2: f64,
    standard: bool,
    width: f64,
    bias: f64,
}

impl Update {
    /// (Σ, Θ) of this layer from C, Ċ and the previous layer's Θ.
    #[inline(always)]
    fn step(self, c: f64, cdot: f64, t: f64) -> (f64, f64) {
        let s = self.sw2 * c + self.sb2;
        let t = if self.standard {
            self.width * c + self.bias + self.sw2 * cdot * t
        } else {
            s + self.sw2 * cdot * t
        };
        (s, t)
    }

    /// [`Update::step`] in place: `s` holds C on entry and Σ on exit, `t` Θ.
    #[inline(always)]
    fn apply(self, s: &mut f64, t: &mut f64, cdot: f64) {
        (*s, *t) = self.step(*s, cdot, *t);
    }
}
