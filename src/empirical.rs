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
use crate::model::{LayerKernel, LayerTangent, NtkModel, check_inputs, check_tangent_shape};
use crate::{Scalar, parallel};

/// Rows per block: large enough for efficient GEMMs, small enough to split the work.
const BLOCK_ROWS: usize = 256;

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
/// `cols` (samples of `x2`): Θ(x1[rows], x2[cols]).
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

    let b1 = row_blocks(x1.nrows());
    let b2 = row_blocks(x2.nrows());
    let pairs: Vec<(usize, usize)> = (0..b1.len())
        .flat_map(|i| (0..b2.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| !symmetric || i <= j)
        .collect();

    let out = Mutex::new(DMatrix::<T>::zeros(x1.nrows() * per, x2.nrows() * per));
    parallel::for_each(&pairs, |&(i, j)| {
        let mut sum = DMatrix::<T>::zeros(b1[i].len() * per, b2[j].len() * per);
        for (l1, l2) in f1[i].iter().zip(&f2[j]) {
            let (w, b) = contract(l1, l2, k, layout);
            sum += w;
            if let Some(b) = b {
                sum += b;
            }
        }
        let (r0, c0) = (b1[i].start * per, b2[j].start * per);
        let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
        out.view_mut((r0, c0), sum.shape()).copy_from(&sum);
        if symmetric && i != j {
            out.view_mut((c0, r0), (sum.ncols(), sum.nrows()))
                .copy_from(&sum.transpose());
        }
    });
    Ok(out.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Per-layer kernels (averaged over outputs) from the tangent features of two batches.
pub(crate) fn layer_kernels_from_tangents<T: Scalar>(
    t1: &[LayerTangent<T>],
    t2: &[LayerTangent<T>],
    k: usize,
) -> Result<Vec<LayerKernel<T>>> {
    if t1.len() != t2.len() {
        return Err(Error::ShapeMismatch {
            argument: "layer_tangents",
            expected: format!("{} parameter groups on both batches", t1.len()),
            found: format!("{} groups", t2.len()),
        });
    }
    let n1 = t1.first().map_or(0, |t| rows_of(t, k));
    let n2 = t2.first().map_or(0, |t| rows_of(t, k));
    let f1 = factors(t1.to_vec(), n1, k)?;
    let f2 = factors(t2.to_vec(), n2, k)?;
    Ok(f1
        .iter()
        .zip(&f2)
        .map(|(a, b)| {
            let (weights, bias) = contract(a, b, k, Layout::Trace);
            LayerKernel { weights, bias }
        })
        .collect())
}

/// Number of samples a tangent describes.
fn rows_of<T: Scalar>(t: &LayerTangent<T>, k: usize) -> usize {
    match t {
        LayerTangent::Dense { uses, .. } => uses.first().map_or(0, |u| u.input.nrows()),
        LayerTangent::Jacobian(j) => j.nrows() / k.max(1),
    }
}

/// `0..n` cut into consecutive ranges of at most [`BLOCK_ROWS`].
fn row_blocks(n: usize) -> Vec<Range<usize>> {
    let count = n.div_ceil(BLOCK_ROWS).max(1);
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

/// One parameter group's weight and bias kernels between two batches.
fn contract<T: Scalar>(
    f1: &Factor<T>,
    f2: &Factor<T>,
    k: usize,
    layout: Layout,
) -> (DMatrix<T>, Option<DMatrix<T>>) {
    let n1 = f1.uses.first().map_or(0, |u| u.1.nrows());
    let n2 = f2.uses.first().map_or(0, |u| u.1.nrows());
    let per = if layout == Layout::Full { k } else { 1 };
    let mut weights = DMatrix::<T>::zeros(n1 * per, n2 * per);
    let mut bias = f1
        .bias_coef
        .map(|_| DMatrix::<T>::zeros(n1 * per, n2 * per));
    for (x1, g1) in &f1.uses {
        for (x2, g2) in &f2.uses {
            let xx: Option<DMatrix<T>> = match (x1, x2) {
                (Some(a), Some(b)) => Some(a * b.transpose()),
                _ => None,
            };
            let grams: Vec<(usize, usize, DMatrix<T>)> = match layout {
                Layout::Trace => vec![(0, 0, g1 * g2.transpose())],
                Layout::Full => {
                    let m1 = g1.ncols() / k;
                    let m2 = g2.ncols() / k;
                    (0..k)
                        .flat_map(|c| (0..k).map(move |d| (c, d)))
                        .map(|(c, d)| {
                            (
                                c,
                                d,
                                g1.columns(c * m1, m1) * g2.columns(d * m2, m2).transpose(),
                            )
                        })
                        .collect()
                }
            };
            for (c, d, gg) in grams {
                let weight_term = match &xx {
                    Some(xx) => xx.component_mul(&gg),
                    None => gg.clone(),
                };
                add_strided(&mut weights, &weight_term, per, c, d);
                if let Some(b) = bias.as_mut() {
                    add_strided(b, &gg, per, c, d);
                }
            }
        }
    }
    let norm = if layout == Layout::Trace {
        T::one() / T::of(k as f64)
    } else {
        T::one()
    };
    weights *= f1.weight_coef * norm;
    if let (Some(b), Some(coef)) = (bias.as_mut(), f1.bias_coef) {
        *b *= coef * norm;
    }
    (weights, bias)
}

/// out[(i·per + c, j·per + d)] += m[(i, j)].
fn add_strided<T: Scalar>(out: &mut DMatrix<T>, m: &DMatrix<T>, per: usize, c: usize, d: usize) {
    if per == 1 {
        *out += m;
        return;
    }
    for j in 0..m.ncols() {
        for i in 0..m.nrows() {
            out[(i * per + c, j * per + d)] += m[(i, j)];
        }
    }
}
