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
                    let inputs = (x1, x2, j);
                    self.column(&s1, s2, inputs, &mut s[col.clone()], &mut t[col.clone()]);
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
    /// `t` receives Θ̊(i, j). The inputs are there for the first layer's determinant.
    fn column(
        &self,
        s1: &Stats,
        s2: &Stats,
        (x1, x2, j): (&DMatrix<f64>, &DMatrix<f64>, usize),
        s: &mut [f64],
        t: &mut [f64],
    ) {
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
                if l == 0
                    && let Some(closed) = layer.dual.needs_determinant()
                    && self.determinant_may_be_lost(
                        &s1.q[0].q()[first..first + s.len()],
                        s2.q[0].q()[j],
                    )
                {
                    let (q, qj) = (s1.q[0].q(), s2.q[0].q()[j]);
                    for (i, (si, ti)) in s.iter_mut().zip(t.iter_mut()).enumerate() {
                        let (q1, c) = (q[first + i], *si);
                        let r = self.first_determinant_root((x1, first + i), (x2, j), q1, c, qj);
                        let (cc, cd) = closed.eval_with_determinant(q1, c, qj, r);
                        (*si, *ti) = update.step(cc, cd, *ti);
                    }
                    continue;
                }
                layer
                    .dual
                    .eval_column_then(&s1.q[l], first, s, &s2.q[l], j, t, |c, cdot, t| {
                        update.step(c, cdot, t)
                    });
            }
        }
    }
}

impl Plan {
    /// Whether any entry between rows of first-layer variances `rows` and a column of
    /// variance `qj` may need its determinant from the inputs (see
    /// [`Plan::first_determinant_root`]): a bound over the chunk, so that inputs of
    /// moderate norm keep the vectorised loop.
    fn determinant_may_be_lost(&self, rows: &[f64], qj: f64) -> bool {
        let qmax = rows.iter().fold(0.0_f64, |m, &q| m.max(q));
        4.0 * self.input_dim.sqrt() * f64::EPSILON * qmax * qj > 1e-14 * (0.25 + 0.5 * qj)
    }

    /// $\sqrt{q_1q_2 − c^2}$ for the first layer's pre-activations at rows `a` of x1 and
    /// `b` of x2, whose variances and covariance are `q1`, `q2`, `c`. From the correlation
    /// when that is accurate; otherwise from the inputs themselves, by the Lagrange
    /// identity for the features $u = (σ_w x/\sqrt d, σ_b)$ and $v = (σ_w x̄/\sqrt d, σ_b)$
    /// (then $q_1 = |u|^2$, $c = u·v$): the rounded Gram entries
    /// determine $q_1q_2 − c^2$ only to about $\sqrt d ε q_1q_2$, which at nearly parallel
    /// inputs of large norm is all of it (Erf and GELU kernels several percent off at
    /// $q ≈ 10^{16}$).
    fn first_determinant_root(
        &self,
        (x1, a): (&DMatrix<f64>, usize),
        (x2, b): (&DMatrix<f64>, usize),
        q1: f64,
        c: f64,
        q2: f64,
    ) -> f64 {
        let std = q1.sqrt() * q2.sqrt();
        let rho = if std > 0.0 {
            (c / std).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let r = std * ((1.0 - rho) * (1.0 + rho)).sqrt();
        // The rounding of q1, q2 and c (dot products of d terms) moves g = r² by about
        // 4 √d ε q1 q2; the forms read g through 1/4 + q1/2 + q2/2 + g (Erf) or
        // 1 + q1 + q2 + g (GELU).
        let uncertainty = 4.0 * self.input_dim.sqrt() * f64::EPSILON * std * std;
        if uncertainty <= 1e-14 * (0.25 + 0.5 * (q1 + q2) + r * r) {
            return r;
        }
        // With s = σ_w/√d, the features u = (s x, σ_b), v = (s x̄, σ_b) have, by the
        // Lagrange identity, g = s⁴ (|x|²|x̄|² − (x·x̄)²) + s² σ_b² |x − x̄|²: both terms from
        // the inputs as stored (scaling them first would round away the part of x̄
        // orthogonal to x).
        let (x, y): (Vec<f64>, Vec<f64>) = (
            x1.row(a).iter().copied().collect(),
            x2.row(b).iter().copied().collect(),
        );
        let s = (self.sw2 / self.input_dim).sqrt();
        let difference: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p - q).collect();
        s * (s * determinant_root(&x, &y)).hypot(self.sb2.sqrt() * norm(&difference))
    }
}

/// The Euclidean norm, computed on the vector divided by its largest magnitude.
fn norm(v: &[f64]) -> f64 {
    let m = v.iter().fold(0.0_f64, |m, x| m.max(x.abs()));
    if m == 0.0 {
        return 0.0;
    }
    m * v.iter().map(|x| (x / m) * (x / m)).sum::<f64>().sqrt()
}

/// $\sqrt{|u|^2|v|^2 − (u·v)^2} = |u| |v_⊥|$ with $v_⊥$ the part of $v$ orthogonal to $u$,
/// found by two projections with fused multiply-adds (each component of $v − tu$ is
/// rounded once, relative to itself, and the second pass removes what the rounding of
/// $t$ left along $u$): accurate to about $d ε$ relative unless $u$ and $v$ are parallel
/// to within rounding, where the result is at round-off of $|u||v|$. Computed on $u$ and
/// $v$ divided by powers of two near their largest magnitudes (exact), so that nothing
/// over- or underflows.
fn determinant_root(u: &[f64], v: &[f64]) -> f64 {
    let power = |w: &[f64]| {
        let m = w.iter().fold(0.0_f64, |m, x| m.max(x.abs()));
        if m == 0.0 {
            0.0
        } else {
            2.0_f64.powi(m.log2().floor() as i32)
        }
    };
    let (su, sv) = (power(u), power(v));
    if su == 0.0 || sv == 0.0 {
        return 0.0;
    }
    let u: Vec<f64> = u.iter().map(|x| x / su).collect();
    let mut w: Vec<f64> = v.iter().map(|x| x / sv).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let uu = dot(&u, &u);
    for _ in 0..2 {
        let t = dot(&u, &w) / uu;
        for (wk, &uk) in w.iter_mut().zip(&u) {
            *wk = (-t).mul_add(uk, *wk);
        }
    }
    su * sv * uu.sqrt() * norm(&w)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Σ_{i<j} (u_i v_j − u_j v_i)², each 2 × 2 determinant by Kahan's fused algorithm.
    fn lagrange(u: &[f64], v: &[f64]) -> f64 {
        let mut sum = 0.0;
        for i in 0..u.len() {
            for j in i + 1..u.len() {
                let w = u[j] * v[i];
                let e = (-u[j]).mul_add(v[i], w);
                sum += (u[i].mul_add(v[j], -w) + e).powi(2);
            }
        }
        sum.sqrt()
    }

    /// The determinant's root from the inputs against the Lagrange identity: generic,
    /// nearly parallel (1 − ρ ~ 1e-17), exactly parallel and at 1e70; homogeneous of
    /// degree 2 at 2^±465 ≈ 1e±140 (exact scalings), where the naive |u|²|v|² over- or
    /// underflows.
    #[test]
    fn determinant_root_is_the_lagrange_identity() {
        let u = [1.2e8, -0.7e8, 0.9e8, 3.0];
        let cases: [(Vec<f64>, Vec<f64>); 4] = [
            (vec![0.3, -1.2, 2.0, 0.5], vec![1.1, 0.4, -0.3, 2.2]),
            (
                u.to_vec(),
                vec![1.2e8 + 0.75, -0.7e8 - 1.5, 0.9e8 + 0.5, 3.0],
            ),
            (u.to_vec(), u.iter().map(|x| 2.0 * x).collect()),
            (
                vec![1e70, 3e69, -2e70, 1e69],
                vec![1e70, 3e69, -2e70, 1.5e69],
            ),
        ];
        for (a, b) in &cases {
            let want = lagrange(a, b);
            assert!(want.is_finite());
            let got = determinant_root(a, b);
            assert!(
                (got - want).abs() <= 1e-14 * want,
                "{a:?}, {b:?}: {got:e} vs {want:e}"
            );
            for c in [2.0_f64.powi(465), 2.0_f64.powi(-465)] {
                if !(got * c * c).is_normal() {
                    continue;
                }
                let scaled = |w: &[f64]| w.iter().map(|x| x * c).collect::<Vec<_>>();
                let at = determinant_root(&scaled(a), &scaled(b));
                assert!(
                    (at / (c * c) - got).abs() <= 1e-14 * got,
                    "{a:?}, {b:?} at {c:e}: {at:e}"
                );
            }
        }
    }
}
