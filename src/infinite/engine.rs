//! The kernel recursion over a batch: Gram matrix by GEMM, then every entry runs all
//! layers in place, column block by column block, in parallel.
//!
//! The recursion at entry (i, j) needs only x1_i · x2_j and the per-sample variances
//! Σ^l(x, x) of every layer, which are computed first (O(N L)). Each column block of
//! the outputs is then filled by one GEMM (the Gram block, written straight into the
//! NNGP output) and one in-place sweep per layer over each column: no per-entry
//! allocation, one pass over memory, and tight loops the compiler can vectorise. When
//! x1 = x2 only rows i ≤ j are computed and the lower triangle is mirrored at the end.

use std::f64::consts::PI;
use std::sync::{Arc, Mutex};

use nalgebra::{DMatrix, DMatrixViewMut};

use crate::error::{Error, Result};
use crate::mlp::{MlpSpec, Parameterization};
use crate::parallel;

use super::dual::{Dual, erf_moments, gelu_moments, quadrature_moments, sin_moments};
use super::fastmath;
use super::quadrature::GaussHermite;

/// 1/(2π).
const INV_2PI: f64 = 0.5 * std::f64::consts::FRAC_1_PI;

/// Columns per work item.
const BLOCK_COLS: usize = 32;

/// A work item: the first column j0 and the NNGP and NTK storage of its columns.
type Block<'a> = (usize, &'a mut [f64], &'a mut [f64]);

/// One hidden layer: its activation's dual and its width (the next Dense layer's n_in).
struct Hidden {
    dual: Dual,
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

/// Per-sample variances Σ^l(x, x) at every hidden layer, their square roots and the
/// reciprocals of those (0 for a zero variance).
struct Stats {
    q: Vec<Vec<f64>>,
    sd: Vec<Vec<f64>>,
    inv_sd: Vec<Vec<f64>>,
}

impl Plan {
    pub(crate) fn new(spec: &MlpSpec, rule: &Arc<GaussHermite>) -> Plan {
        let standard = spec.get_parameterization() == Parameterization::Standard;
        let sb = spec.get_bias_std();
        Plan {
            hidden: spec
                .hidden_layers()
                .iter()
                .map(|(w, act)| Hidden {
                    dual: Dual::new(act, rule),
                    width: *w as f64,
                })
                .collect(),
            sw2: spec.get_weight_std().powi(2),
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

    /// Σ^l(x, x) for every row of `x` and hidden layer l.
    fn stats(&self, x: &DMatrix<f64>, argument: &'static str) -> Result<Stats> {
        let n = x.nrows();
        let mut q: Vec<f64> = (0..n)
            .map(|i| self.sw2 * x.row(i).norm_squared() / self.input_dim + self.sb2)
            .collect();
        let mut qs = Vec::with_capacity(self.hidden.len());
        for layer in &self.hidden {
            if let Some(i) = q.iter().position(|v| !v.is_finite()) {
                return Err(Error::InvalidParameter {
                    parameter: argument,
                    value: format!("row {i}"),
                    reason: "the kernel overflows f64 at this input (its norm is too large)",
                });
            }
            let next = q
                .iter()
                .map(|&v| self.sw2 * layer.dual.eval(v, v, v).phi + self.sb2)
                .collect();
            qs.push(std::mem::replace(&mut q, next));
        }
        if let Some(i) = q.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidParameter {
                parameter: argument,
                value: format!("row {i}"),
                reason: "the kernel overflows f64 at this input (its norm is too large)",
            });
        }
        let sd: Vec<Vec<f64>> = qs
            .iter()
            .map(|q| q.iter().map(|v| v.sqrt()).collect())
            .collect();
        let inv_sd = sd
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&v| if v > 0.0 { 1.0 / v } else { 0.0 })
                    .collect()
            })
            .collect();
        Ok(Stats { q: qs, sd, inv_sd })
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
        // Disjoint column chunks of both outputs, one per work item; each Mutex is locked
        // once, by the one worker that takes the item (it only hands out the `&mut`).
        let blocks: Vec<Mutex<Block<'_>>> = nngp
            .as_mut_slice()
            .chunks_mut(chunk)
            .zip(ntk.as_mut_slice().chunks_mut(chunk))
            .enumerate()
            .map(|(b, (s, t))| Mutex::new((b * BLOCK_COLS, s, t)))
            .collect();
        parallel::for_each(&blocks, |block| {
            let mut guard = block.lock().unwrap_or_else(|e| e.into_inner());
            let (j0, s, t) = &mut *guard;
            let j0 = *j0;
            let cols = s.len() / n1;
            let rows = if symmetric { (j0 + cols).min(n1) } else { n1 };
            // Gram block x1[..rows] · x2[j0..j0+cols]ᵀ, written into the NNGP output.
            let mut gram = DMatrixViewMut::from_slice(s, n1, cols);
            gram.rows_mut(0, rows)
                .gemm(1.0, &x1.rows(0, rows), &x2t.columns(j0, cols), 0.0);
            let mut scratch = vec![0.0; rows];
            for jj in 0..cols {
                let j = j0 + jj;
                let len = if symmetric { j + 1 } else { n1 };
                let col = jj * n1..jj * n1 + len;
                self.column(
                    &s1,
                    s2,
                    j,
                    &mut s[col.clone()],
                    &mut t[col],
                    &mut scratch[..len],
                );
            }
        });
        drop(blocks);
        if symmetric {
            let both = [Mutex::new(&mut nngp), Mutex::new(&mut ntk)];
            parallel::for_each(&both, |m| {
                mirror_upper(&mut m.lock().unwrap_or_else(|e| e.into_inner()));
            });
        }
        Ok((nngp, ntk))
    }

    /// Runs the recursion on column j: `s` holds x1_i · x2_j on entry, Σ(i, j) on exit;
    /// `t` receives Θ̊(i, j).
    fn column(
        &self,
        s1: &Stats,
        s2: &Stats,
        j: usize,
        s: &mut [f64],
        t: &mut [f64],
        cdot: &mut [f64],
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
        for (l, layer) in self.hidden.iter().enumerate() {
            let n = s.len();
            let update = Update {
                sw2,
                sb2,
                standard: self.standard,
                width: layer.width,
                bias: self.bias_ntk,
            };
            match &layer.dual {
                Dual::ArcCos { a, b, d0 } => arccos_column(
                    (*a, *b, *d0),
                    Side {
                        q: &s1.q[l][..n],
                        sd: &s1.sd[l][..n],
                        inv_sd: &s1.inv_sd[l][..n],
                    },
                    (s2.q[l][j], s2.sd[l][j], s2.inv_sd[l][j]),
                    s,
                    t,
                    update,
                ),
                dual => {
                    dual_column(dual, &s1.q[l][..n], s2.q[l][j], s, cdot);
                    for ((si, ti), &di) in s.iter_mut().zip(t.iter_mut()).zip(cdot.iter()) {
                        update.apply(si, ti, di);
                    }
                }
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
    /// `s` holds C on entry and Σ on exit; `t` holds Θ of the previous layer.
    #[inline(always)]
    fn apply(self, s: &mut f64, t: &mut f64, cdot: f64) {
        let c = *s;
        *s = self.sw2 * c + self.sb2;
        *t = if self.standard {
            self.width * c + self.bias + self.sw2 * cdot * *t
        } else {
            *s + self.sw2 * cdot * *t
        };
    }
}

/// The rows' per-sample statistics at one layer.
struct Side<'a> {
    q: &'a [f64],
    sd: &'a [f64],
    inv_sd: &'a [f64],
}

/// One arc-cosine layer on one column, fused with the update: `s` holds Σ(i, j) on
/// entry and the next layer's Σ on exit, `t` the NTK. Straight-line code (selects, no
/// calls, no division or per-entry square root of the variances) so that the loop
/// vectorises.
#[inline(never)]
fn arccos_column(
    (a, b, d0): (f64, f64, f64),
    rows: Side<'_>,
    (qj, sdj, inv_sdj): (f64, f64, f64),
    s: &mut [f64],
    t: &mut [f64],
    update: Update,
) {
    let (k1, k2) = (a * a + b * b, 2.0 * a * b);
    let mean = 0.5 * (a + b);
    let side_j = if qj > 0.0 { mean } else { d0 };
    let n = s.len();
    let (q, sd, inv_sd) = (&rows.q[..n], &rows.sd[..n], &rows.inv_sd[..n]);
    let t = &mut t[..n];
    for i in 0..n {
        let std = sd[i] * sdj;
        let rho = fastmath::correlation(s[i] * (inv_sd[i] * inv_sdj));
        let theta = fastmath::acos(rho);
        let sin = ((1.0 - rho) * (1.0 + rho)).sqrt();
        let c = std * INV_2PI * (k1 * (sin + (PI - theta) * rho) - k2 * (sin - theta * rho));
        let d = INV_2PI * (k1 * (PI - theta) + k2 * theta);
        let side_i = if q[i] > 0.0 { mean } else { d0 };
        let cdot = if std > 0.0 { d } else { side_i * side_j };
        s[i] = c;
        update.apply(&mut s[i], &mut t[i], cdot);
    }
}

/// C and Ċ for one column: `c` holds the covariances Σ(i, j) on entry and C on exit;
/// `cdot` receives Ċ. `q` are the rows' variances, `qj` the column's.
fn dual_column(dual: &Dual, q: &[f64], qj: f64, c: &mut [f64], cdot: &mut [f64]) {
    match dual {
        Dual::ArcCos { .. } => {
            for ((ci, di), &qi) in c.iter_mut().zip(cdot.iter_mut()).zip(q) {
                let m = dual.eval(qi, *ci, qj);
                *ci = m.phi;
                *di = m.derivative;
            }
        }
        Dual::Identity => cdot.fill(1.0),
        Dual::Erf => apply(q, qj, c, cdot, erf_moments),
        Dual::Sin => apply(q, qj, c, cdot, sin_moments),
        Dual::Gelu => apply(q, qj, c, cdot, gelu_moments),
        Dual::Quadrature { activation, rule } => {
            for ((ci, di), &qi) in c.iter_mut().zip(cdot.iter_mut()).zip(q) {
                let m = quadrature_moments(activation, qi, *ci, qj, rule);
                *ci = m.phi;
                *di = m.derivative;
            }
        }
    }
}

#[inline]
fn apply(
    q: &[f64],
    qj: f64,
    c: &mut [f64],
    cdot: &mut [f64],
    f: impl Fn(f64, f64, f64) -> (f64, f64),
) {
    for ((ci, di), &qi) in c.iter_mut().zip(cdot.iter_mut()).zip(q) {
        let (phi, d) = f(qi, *ci, qj);
        *ci = phi;
        *di = d;
    }
}

/// Copies the strict upper triangle of the square `m` onto the lower, in cache tiles.
fn mirror_upper(m: &mut DMatrix<f64>) {
    const TILE: usize = 64;
    let n = m.nrows();
    for jb in (0..n).step_by(TILE) {
        for ib in (jb..n).step_by(TILE) {
            for j in jb..(jb + TILE).min(n) {
                for i in ib.max(j + 1)..(ib + TILE).min(n) {
                    m[(i, j)] = m[(j, i)];
                }
            }
        }
    }
}
