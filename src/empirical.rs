//! The empirical NTK from per-layer tangent features: Gram matrices and Hadamard
//! products, computed in row blocks.
//!
//! For each parameter group ([`LayerTangent`]) the kernel between batches 1 and 2 is
//!
//! Θ_l = s_w² Σ_{u,v} (X₁_u X₂_vᵀ) ⊙ (G₁_u G₂_vᵀ) + s_b² Σ_{u,v} G₁_u G₂_vᵀ,
//!
//! and Θ = Σ_l Θ_l. The samples are split into row blocks; tangent features are
//! computed per block (one forward and backward pass each, in parallel), and each
//! block (I, J) of Θ is contracted from the features of blocks I and J. When x1 = x2
//! only the blocks with I ≤ J are computed and the rest mirrored. Peak memory is the
//! output plus the features: O(N · Σ widths), never the N × P Jacobian.

use std::ops::Range;
use std::sync::Mutex;

use nalgebra::DMatrix;

use crate::error::{Error, Result, shape};
use crate::linalg::gemm_nt;
use crate::model::{LayerKernel, LayerTangent, NtkModel, check_inputs, check_tangent_shape};
use crate::{Scalar, parallel};

/// Most rows per block: large enough for efficient GEMMs, small enough that the
/// blocks on the diagonal (computed whole when x1 = x2) waste little and the work
/// splits across threads. Measured best on the benchmark MLP (3 × 512, d = 32):
/// 128 at N = 1024, 64 at N = 256, 32 at N = 64, hence N/4 within these bounds.
const BLOCK_ROWS: usize = 128;
/// Fewest rows per block (unless N is smaller).
const MIN_BLOCK_ROWS: usize = 32;

/// The empirical NTK Θ(x1, x2) = ⟨∇θ f(x1), ∇θ f(x2)⟩, averaged over the k outputs:
/// N1 × N2, entry (i, j) = (1/k) Σ_c ∇θ f_c(x1_i) · ∇θ f_c(x2_j).
///
/// Rows of `x1` (N1 × d) and `x2` (N2 × d) are samples. For k = 1 this is the NTK;
/// for k > 1 it is neural-tangents' default (`trace_axes=(-1,)` averaged), the
/// kernel Θ of the Θ ⊗ I limit. It equals the sum of
/// [`NtkModel::layer_kernels`] and the contraction J₁ J₂ᵀ of the Jacobians, but is
/// computed from per-layer Gram matrices without forming either.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::rand::{rngs::StdRng, SeedableRng};
/// use ntk::{empirical_ntk, Activation, Mlp, MlpSpec};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(2).hidden(64, Activation::Relu).bias_std(0.1);
/// let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(0))?;
/// let x = DMatrix::from_row_slice(3, 2, &[1.0, 0.0, 0.0, 1.0, 0.6, 0.8]);
/// let theta = empirical_ntk(&net, &x, &x)?;
/// assert_eq!(theta.shape(), (3, 3));
/// assert!((theta[(0, 1)] - theta[(1, 0)]).abs() < 1e-12);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// If `x1` or `x2` does not have `model.input_dim()` columns, or has NaN or infinite
/// entries.
pub fn empirical_ntk<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<DMatrix<T>> {
    blocked_ntk(model, x1, x2, Layout::Trace)
}

/// The full empirical NTK with output blocks: (N1·k) × (N2·k), entry
/// (i·k + c, j·k + c') = ∇θ f_c(x1_i) · ∇θ f_c'(x2_j).
///
/// This is neural-tangents' `empirical_ntk_fn(..., trace_axes=())` with its
/// (N1, N2, k, k) array laid out sample-major. For k = 1 it equals [`empirical_ntk`].
///
/// # Errors
/// As [`empirical_ntk`].
pub fn empirical_ntk_full<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<DMatrix<T>> {
    blocked_ntk(model, x1, x2, Layout::Full)
}

/// The block of [`empirical_ntk`] with rows `rows` (samples of `x1`) and columns
/// `cols` (samples of `x2`): Θ(x1\[rows\], x2\[cols\]).
///
/// Every entry of Θ depends only on its two samples, so a kernel too large for one
/// machine can be computed block by block, by any scheduler (threads, or the tasks
/// of a cluster job array), and assembled or streamed to disk. Each call runs its
/// own forward and backward passes on the rows it needs.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::rand::{rngs::StdRng, SeedableRng};
/// use ntk::{empirical_ntk, empirical_ntk_block, Activation, Mlp, MlpSpec};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let net: Mlp<f64> = MlpSpec::new(2)
///     .hidden(32, Activation::Tanh)
///     .init(&mut StdRng::seed_from_u64(1))?;
/// let x = DMatrix::from_fn(10, 2, |i, j| (i as f64 - 3.0 * j as f64).cos());
/// let full = empirical_ntk(&net, &x, &x)?;
/// let block = empirical_ntk_block(&net, &x, &x, 2..5, 6..10)?;
/// assert!((block - full.view((2, 6), (3, 4))).amax() < 1e-12);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`empirical_ntk`], and [`Error::InvalidParameter`] if a range is reversed or
/// reaches past the last sample.
pub fn empirical_ntk_block<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Result<DMatrix<T>> {
    let a = select_rows("rows", x1, rows)?;
    let b = select_rows("cols", x2, cols)?;
    blocked_ntk(model, &a, &b, Layout::Trace)
}

/// The samples `range` of `x`, or an error naming `argument` if the range does not fit.
pub(crate) fn select_rows<T: Scalar>(
    argument: &'static str,
    x: &DMatrix<T>,
    range: Range<usize>,
) -> Result<DMatrix<T>> {
    if range.start > range.end || range.end > x.nrows() {
        return Err(Error::InvalidParameter {
            parameter: argument,
            value: format!("{}..{}", range.start, range.end),
            reason: "must be an increasing range within the samples (rows) of its matrix",
        });
    }
    Ok(x.rows(range.start, range.len()).into_owned())
}

/// How output dimensions appear in a kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Layout {
    /// Averaged over the k outputs: N1 × N2.
    Trace,
    /// All output pairs: (N1·k) × (N2·k), sample-major.
    Full,
}

fn blocked_ntk<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
    layout: Layout,
) -> Result<DMatrix<T>> {
    check_inputs(model.input_dim(), x1, x2)?;
    let k = model.output_dim();
    let per = if layout == Layout::Full { k } else { 1 };
    let symmetric = x1 == x2;

    let tangents_of = |x: &DMatrix<T>| -> Result<Vec<Vec<Factor<T>>>> {
        let blocks = row_blocks(x.nrows());
        parallel::map(&blocks, |r| {
            let xb = x.rows(r.start, r.len()).into_owned();
            let t = model.layer_tangents(&xb)?;
            factors(t, r.len(), k)
        })
        .into_iter()
        .collect()
    };
    let f1 = tangents_of(x1)?;
    let f2_owned = if symmetric {
        None
    } else {
        Some(tangents_of(x2)?)
    };
    let f2 = f2_owned.as_ref().unwrap_or(&f1);
    if let Some(first) = f1.first() {
        for block in f1.iter().chain(f2) {
            check_compatible(first, block)?;
        }
    }

    let b1 = row_blocks(x1.nrows());
    let b2 = row_blocks(x2.nrows());
    let pairs: Vec<(usize, usize)> = (0..b1.len())
        .flat_map(|i| (0..b2.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| !symmetric || i <= j)
        .collect();

    let out = Mutex::new(DMatrix::<T>::zeros(x1.nrows() * per, x2.nrows() * per));
    parallel::for_each(&pairs, |&(i, j)| {
        let mut sum = DMatrix::<T>::zeros(b1[i].len() * per, b2[j].len() * per);
        let mut scratch = Scratch::default();
        for (l1, l2) in f1[i].iter().zip(&f2[j]) {
            accumulate(&mut sum, None, l1, l2, k, layout, &mut scratch);
        }
        let (r0, c0) = (b1[i].start * per, b2[j].start * per);
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        out.view_mut((r0, c0), sum.shape()).copy_from(&sum);
        if symmetric && i != j {
            out.view_mut((c0, r0), (sum.ncols(), sum.nrows()))
                .tr_copy_from(&sum);
        }
    });
    Ok(out.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Per-layer kernels (averaged over outputs) from the tangent features of two batches.
pub(crate) fn layer_kernels_from_tangents<T: Scalar>(
    t1: &[LayerTangent<T>],
    t2: &[LayerTangent<T>],
    n1: usize,
    n2: usize,
    k: usize,
) -> Result<Vec<LayerKernel<T>>> {
    let f1 = factors(t1.to_vec(), n1, k)?;
    let f2 = factors(t2.to_vec(), n2, k)?;
    check_compatible(&f1, &f2)?;
    let mut scratch = Scratch::default();
    Ok(f1
        .iter()
        .zip(&f2)
        .map(|(a, b)| {
            let mut weights = DMatrix::zeros(n1, n2);
            let mut bias = a.bias_coef.map(|_| DMatrix::zeros(n1, n2));
            accumulate(
                &mut weights,
                bias.as_mut(),
                a,
                b,
                k,
                Layout::Trace,
                &mut scratch,
            );
            LayerKernel { weights, bias }
        })
        .collect())
}

/// Errors unless two batches' factors describe the same parameter groups (same count,
/// and per group the same input and gradient widths and bias), so that they contract.
fn check_compatible<T: Scalar>(f1: &[Factor<T>], f2: &[Factor<T>]) -> Result<()> {
    let signature = |f: &Factor<T>| {
        (
            f.uses
                .first()
                .map(|(x, g)| (x.as_ref().map(DMatrix::ncols), g.ncols())),
            f.bias_coef.is_some(),
        )
    };
    if f1.len() != f2.len() {
        return Err(Error::ShapeMismatch {
            argument: "layer_tangents",
            expected: format!("{} parameter groups on both batches", f1.len()),
            found: format!("{} groups", f2.len()),
        });
    }
    for (l, (a, b)) in f1.iter().zip(f2).enumerate() {
        if signature(a) != signature(b) {
            return Err(Error::ShapeMismatch {
                argument: "layer_tangents",
                expected: format!(
                    "parameter group {l} of the same shape on both batches: {:?}",
                    signature(a)
                ),
                found: format!("{:?}", signature(b)),
            });
        }
    }
    Ok(())
}

/// `0..n` cut into consecutive ranges of about n/4 rows, within
/// [`MIN_BLOCK_ROWS`]..=[`BLOCK_ROWS`].
fn row_blocks(n: usize) -> Vec<Range<usize>> {
    let count = n.div_ceil((n / 4).clamp(MIN_BLOCK_ROWS, BLOCK_ROWS)).max(1);
    let size = n.div_ceil(count).max(1);
    (0..count)
        .map(|b| (b * size).min(n)..((b + 1) * size).min(n))
        .collect()
}

/// A parameter group in the form the contraction uses: each use as (X or none, G),
/// G being N × (k·m) with output c in column block c; the weight term is
/// `weight_coef` Σ (X₁ X₂ᵀ) ⊙ (G₁ G₂ᵀ) (or Σ G₁ G₂ᵀ without X).
struct Factor<T: Scalar> {
    uses: Vec<(Option<DMatrix<T>>, DMatrix<T>)>,
    weight_coef: T,
    bias_coef: Option<T>,
}

/// Validates tangents of a batch of `n` samples and brings them to [`Factor`] form.
fn factors<T: Scalar>(
    tangents: Vec<LayerTangent<T>>,
    n: usize,
    k: usize,
) -> Result<Vec<Factor<T>>> {
    tangents
        .into_iter()
        .map(|t| match t {
            LayerTangent::Dense {
                weight_scale,
                bias_scale,
                uses,
            } => {
                if let Some(first) = uses.first() {
                    let n_in = first.input.ncols();
                    let n_out = first.output_grad.ncols() / k.max(1);
                    for u in &uses {
                        check_tangent_shape(u, n, n_in, n_out, k)?;
                    }
                }
                Ok(Factor {
                    uses: uses
                        .into_iter()
                        .map(|u| (Some(u.input), u.output_grad))
                        .collect(),
                    weight_coef: weight_scale * weight_scale,
                    bias_coef: bias_scale.map(|s| s * s),
                })
            }
            LayerTangent::Jacobian(j) => {
                if j.nrows() != n * k {
                    return Err(Error::ShapeMismatch {
                        argument: "LayerTangent::Jacobian",
                        expected: format!("{} rows (N·k)", n * k),
                        found: shape(&j),
                    });
                }
                // Row i·k + c of J becomes row i, column block c.
                let p = j.ncols();
                let g = DMatrix::from_fn(n, k * p, |i, col| j[(i * k + col / p, col % p)]);
                Ok(Factor {
                    uses: vec![(None, g)],
                    weight_coef: T::one(),
                    bias_coef: None,
                })
            }
        })
        .collect()
}

/// Reused products: X₁ X₂ᵀ and G₁ G₂ᵀ of one block.
struct Scratch<T: Scalar> {
    xx: Option<DMatrix<T>>,
    gg: Option<DMatrix<T>>,
}

impl<T: Scalar> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { xx: None, gg: None }
    }
}

/// A buffer of shape `shape`, reused when it already has it (GEMMs with β = 0
/// overwrite it without reading).
fn buffer<T: Scalar>(slot: &mut Option<DMatrix<T>>, shape: (usize, usize)) -> &mut DMatrix<T> {
    if slot.as_ref().is_none_or(|m| m.shape() != shape) {
        *slot = Some(DMatrix::zeros(shape.0, shape.1));
    }
    slot.as_mut().expect("just set")
}

/// Adds one parameter group's kernel between two batches: the weight term
/// c_w Σ_{u,v} (X₁_u X₂_vᵀ) ⊙ (G₁_u G₂_vᵀ) to `weights` and the bias term
/// c_b Σ_{u,v} G₁_u G₂_vᵀ to `bias`, or to `weights` too when `bias` is `None`
/// (one fused pass: (c_w X₁X₂ᵀ + c_b) ⊙ G₁G₂ᵀ). Trace layout divides by k.
fn accumulate<T: Scalar>(
    weights: &mut DMatrix<T>,
    mut bias: Option<&mut DMatrix<T>>,
    f1: &Factor<T>,
    f2: &Factor<T>,
    k: usize,
    layout: Layout,
    scratch: &mut Scratch<T>,
) {
    let norm = match layout {
        Layout::Trace => T::one() / T::of(k as f64),
        Layout::Full => T::one(),
    };
    let cw = f1.weight_coef * norm;
    let cb = f1.bias_coef.map_or(T::zero(), |c| c * norm);
    let per = if layout == Layout::Full { k } else { 1 };
    for (x1, g1) in &f1.uses {
        for (x2, g2) in &f2.uses {
            let (n1, n2) = (g1.nrows(), g2.nrows());
            let xx = match (x1, x2) {
                (Some(a), Some(b)) => {
                    let xx = buffer(&mut scratch.xx, (n1, n2));
                    gemm_nt(&mut xx.as_view_mut(), a, 0, b, 0, a.ncols());
                    Some(&*xx)
                }
                _ => None,
            };
            // Output pairs (c, d) and the columns of G they use; in trace layout one
            // GEMM over all columns sums the k diagonal pairs at once.
            let m1 = g1.ncols() / k;
            let pairs: Vec<(usize, usize, usize, usize, usize)> = match layout {
                Layout::Trace => vec![(0, 0, 0, 0, g1.ncols())],
                Layout::Full => (0..k)
                    .flat_map(|c| (0..k).map(move |d| (c, d, c * m1, d * m1, m1)))
                    .collect(),
            };
            for (c, d, a0, b0, w) in pairs {
                let gg = buffer(&mut scratch.gg, (n1, n2));
                gemm_nt(&mut gg.as_view_mut(), g1, a0, g2, b0, w);
                let gg = &*gg;
                if per == 1 {
                    // Same layout everywhere: one pass over contiguous storage.
                    let w = weights.as_mut_slice();
                    let g = gg.as_slice();
                    match (xx, bias.as_deref_mut()) {
                        (Some(xx), None) => {
                            for ((w, &x), &g) in w.iter_mut().zip(xx.as_slice()).zip(g) {
                                *w += (cw * x + cb) * g;
                            }
                        }
                        (Some(xx), Some(b)) => {
                            let b = b.as_mut_slice();
                            for (((w, b), &x), &g) in
                                w.iter_mut().zip(b.iter_mut()).zip(xx.as_slice()).zip(g)
                            {
                                *w += cw * x * g;
                                *b += cb * g;
                            }
                        }
                        (None, _) => {
                            for (w, &g) in w.iter_mut().zip(g) {
                                *w += cw * g;
                            }
                        }
                    }
                    continue;
                }
                for j in 0..n2 {
                    for i in 0..n1 {
                        let g = gg[(i, j)];
                        let (r, s) = (i * per + c, j * per + d);
                        let x = xx.map_or(T::one(), |xx| xx[(i, j)]);
                        match bias.as_deref_mut() {
                            Some(b) => {
                                weights[(r, s)] += cw * x * g;
                                b[(r, s)] += cb * g;
                            }
                            None => weights[(r, s)] += (cw * x + cb) * g,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, MlpSpec};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// ‖a − b‖_F / ‖b‖_F.
    fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
        (a - b).norm() / b.norm()
    }

    /// The blocked, fused contraction equals J₁ J₂ᵀ of the explicit Jacobians, across
    /// several row blocks, with and without symmetry, for both output layouts.
    #[test]
    fn blocked_kernels_equal_jacobian_contraction() {
        for k in [1, 2] {
            let spec = MlpSpec::new(3)
                .hidden(6, Activation::Tanh)
                .hidden(5, Activation::Relu)
                .bias_std(0.4)
                .outputs(k);
            let net = spec.init::<f64, _>(&mut StdRng::seed_from_u64(7)).unwrap();
            let x1 = DMatrix::from_fn(BLOCK_ROWS + 37, 3, |i, j| (0.37 * (i * 3 + j) as f64).sin());
            let x2 = DMatrix::from_fn(BLOCK_ROWS * 2 + 3, 3, |i, j| {
                (0.11 * (i + 5 * j) as f64).cos()
            });
            let j1 = net.jacobian(&x1).unwrap();
            let j2 = net.jacobian(&x2).unwrap();
            let full = empirical_ntk_full(&net, &x1, &x2).unwrap();
            assert!(rel(&full, &(&j1 * j2.transpose())) < 1e-12);
            let sym = empirical_ntk_full(&net, &x1, &x1).unwrap();
            assert!(rel(&sym, &(&j1 * j1.transpose())) < 1e-12);
            let traced = empirical_ntk(&net, &x1, &x2).unwrap();
            let expected = DMatrix::from_fn(x1.nrows(), x2.nrows(), |i, j| {
                (0..k).map(|c| full[(i * k + c, j * k + c)]).sum::<f64>() / k as f64
            });
            assert!(rel(&traced, &expected) < 1e-12);
        }
    }

    #[test]
    fn row_blocks_cover_every_row_once() {
        for n in [0, 1, 255, 256, 257, 1000] {
            let blocks = row_blocks(n);
            assert_eq!(blocks.iter().map(Range::len).sum::<usize>(), n);
            assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
            assert!(blocks.iter().all(|b| b.len() <= BLOCK_ROWS));
        }
    }
}
