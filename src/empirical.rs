//! The empirical NTK from per-group tangent features: Gram matrices and Hadamard
//! products, computed in row blocks.
//!
//! For each parameter group ([`GroupTangent`](crate::GroupTangent)) the kernel between
//! batches 1 and 2 is
//!
//! $$Θ_l = s_w² Σ_{u,v} (X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ) + s_b² Σ_{u,v} G_{1,u} G_{2,v}ᵀ,$$
//!
//! and $Θ = Σ_l Θ_l$ (the [`tangent`](crate::tangent) module has the math, and when a
//! weight with many uses is contracted through its per-sample gradients instead). The
//! samples are split into row blocks; tangent features are computed per block (one
//! forward and backward pass each, in parallel), and each tile $(I, J)$ of $Θ$ is
//! contracted from the features of blocks $I$ and $J$. When $x_1 = x_2$ only the tiles with
//! $I ≤ J$ are computed and the rest mirrored. Peak memory is the output plus the
//! features: $O(N · k · Σ \text{widths})$ for an MLP with $k$ outputs, never the $N × P$ Jacobian.
//! A [batch-coupled](crate::NtkModel::batch_coupled) model's batches are one block
//! each: its tangents of a row block would carry the block's statistics, not the batch's.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use nalgebra::{DMatrix, DMatrixViewMut};

use crate::error::{Error, Result, check_inputs, first_non_finite, select_rows};
use crate::linalg::{copy_transposed, try_zeros};
use crate::model::NtkModel;
use crate::tangent::{OutputLayout, Scratch, Tangents, check_kernel_finite};
use crate::{Scalar, parallel};

/// Most rows per block: large enough for efficient GEMMs, small enough that the
/// blocks on the diagonal (computed whole when $x_1 = x_2$) waste little and the work
/// splits across threads. Measured best on the benchmark MLP ($3 × 512$, $d = 32$):
/// 128 at $N = 1024$, 64 at $N = 256$, 32 at $N = 64$, hence $N/4$ within these bounds.
const BLOCK_ROWS: usize = 128;
/// Fewest rows per block (unless $N$ is smaller).
const MIN_BLOCK_ROWS: usize = 32;

/// The empirical NTK $Θ(x_1, x_2) = ⟨∇\_θ f(x_1), ∇\_θ f(x_2)⟩$, averaged over the $k$ outputs:
/// $N_1 × N_2$, entry $(i, j) = (1/k) Σ_c ∇\_θ f_c(x_{1,i}) · ∇\_θ f_c(x_{2,j})$.
///
/// Rows of `x1` ($N_1 × d$) and `x2` ($N_2 × d$) are samples. For $k = 1$ this is the NTK;
/// for $k > 1$ it is neural-tangents' default (`trace_axes=(-1,)` averaged), the
/// kernel $Θ$ of the $Θ ⊗ I$ limit. It equals the sum of
/// [`NtkModel::group_kernels`] and the contraction $J₁ J₂ᵀ$ of the Jacobians, but is
/// computed from per-layer Gram matrices without forming either.
///
/// For a [batch-coupled](NtkModel::batch_coupled) model (batch normalisation) `x1` and
/// `x2` are two batches, each with its own statistics:
/// $Θ_{ij} = ⟨∇\_θ f(x_{1,i}; x_1), ∇\_θ f(x_{2,j}; x_2)⟩$.
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
    blocked_ntk(model, x1, x2, OutputLayout::Trace)
}

/// The full empirical NTK with output blocks: $(N_1·k) × (N_2·k)$, entry
/// $(i·k + c, j·k + c\') = ∇\_θ f_c(x_{1,i}) · ∇\_θ f_{c\'}(x_{2,j})$.
///
/// This is neural-tangents' `empirical_ntk_fn(..., trace_axes=())` with its
/// $(N_1, N_2, k, k)$ array laid out sample-major. For $k = 1$ it equals [`empirical_ntk`].
///
/// # Errors
/// As [`empirical_ntk`].
pub fn empirical_ntk_full<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<DMatrix<T>> {
    blocked_ntk(model, x1, x2, OutputLayout::Full)
}

/// The block of [`empirical_ntk`] with rows `rows` (samples of `x1`) and columns
/// `cols` (samples of `x2`): $Θ(x_1\[\text{rows}\], x_2\[\text{cols}\])$.
///
/// Every entry of $Θ$ depends only on its two samples, so a kernel too large for one
/// machine can be computed block by block, by any scheduler (threads, or the tasks
/// of a cluster job array), and assembled or streamed to disk. Each call runs its
/// own forward and backward passes on the rows it needs.
///
/// A [batch-coupled](NtkModel::batch_coupled) model (batch normalisation) is the
/// exception: its rows keep the statistics of their whole batches, so the call computes
/// the kernel between the whole `x1` and `x2` and returns the block of it.
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
/// As [`empirical_ntk`], and [`Error::InvalidParameter`] if a range is reversed or reaches
/// past the last sample.
pub fn empirical_ntk_block<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Result<DMatrix<T>> {
    let a = select_rows("rows", x1, rows.clone())?;
    let b = select_rows("cols", x2, cols.clone())?;
    if model.batch_coupled() {
        // The rows' statistics are those of their whole batches: compute the kernel of
        // the whole batches and cut the block out.
        let whole = blocked_ntk(model, x1, x2, OutputLayout::Trace)?;
        return Ok(whole
            .view((rows.start, cols.start), (rows.len(), cols.len()))
            .into_owned());
    }
    blocked_ntk(model, &a, &b, OutputLayout::Trace)
}

/// $Θ$ between `x1` and `x2` in `layout`, row block by row block.
fn blocked_ntk<T: Scalar, M: NtkModel<T> + ?Sized>(
    model: &M,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
    layout: OutputLayout,
) -> Result<DMatrix<T>> {
    check_inputs(model.input_dim(), x1, x2)?;
    let k = model.output_dim();
    let per = layout.per_sample(k);
    let symmetric = x1 == x2;

    // The tangent features of every row block, from one forward and backward pass
    // each, in parallel.
    let features = |x: &DMatrix<T>, blocks: &[Range<usize>]| -> Result<Vec<Tangents<T>>> {
        parallel::map(blocks, |r| {
            let xb = x.rows(r.start, r.len()).into_owned();
            Tangents::for_kernels(model.group_tangents(&xb)?, r.len(), k, layout)
        })
        .into_iter()
        .collect()
    };
    // A batch-coupled model's batches are never split: one block each.
    let (b1, b2) = if model.batch_coupled() {
        (
            vec![Range {
                start: 0,
                end: x1.nrows(),
            }],
            vec![Range {
                start: 0,
                end: x2.nrows(),
            }],
        )
    } else {
        (row_blocks(x1.nrows()), row_blocks(x2.nrows()))
    };
    let f1 = features(x1, &b1)?;
    let f2_owned = if symmetric {
        None
    } else {
        Some(features(x2, &b2)?)
    };
    let f2 = f2_owned.as_ref().unwrap_or(&f1);
    if let Some(first) = f1.first() {
        for block in f1.iter().chain(f2) {
            first.check_compatible(block)?;
        }
    }

    let (n1, n2) = (x1.nrows(), x2.nrows());
    let kernel_size = |what: &str| format!("the {what} of {n1} x {n2} samples with {k} outputs");
    let mut out = match (n1.checked_mul(per), n2.checked_mul(per)) {
        (Some(rows), Some(cols)) => try_zeros(rows, cols, "x1", || kernel_size("kernel"))?,
        _ => {
            return Err(Error::InvalidParameter {
                parameter: "x1",
                value: kernel_size("kernel"),
                reason: "the kernel has more entries than usize counts",
            });
        }
    };
    // Column block j of Θ (the columns of x2's row block j) is one disjoint slice of
    // the column-major output: each task fills the tiles (i, j) of its own.
    let tiles = |j: usize| -> Vec<usize> {
        if symmetric {
            symmetric_tiles(b1.len(), j)
        } else {
            (0..b1.len()).collect()
        }
    };
    let block_cols = b2.first().map_or(0, Range::len) * per;
    let overflowed = AtomicBool::new(false);
    parallel::for_each_column_block(&mut out, block_cols, |j, column| {
        let mut rows: Vec<usize> = tiles(j);
        rows.sort_unstable();
        let starts: Vec<usize> = rows.iter().map(|&i| b1[i].start * per).collect();
        let fill = |k: usize, tile: &mut DMatrixViewMut<'_, T>| {
            let i = rows[k];
            let mut tile = tile.rows_mut(0, b1[i].len() * per);
            f1[i].add_kernel(&f2[j], &mut tile, layout, &mut Scratch::default());
            // Each task checks its own tiles; the whole kernel is searched only if one
            // is not finite, for the error message.
            if tile
                .column_iter()
                .any(|c| first_non_finite(c.as_slice()).is_some())
            {
                overflowed.store(true, Ordering::Relaxed);
            }
        };
        fill_tiles(column, 0, &starts, 0, &fill);
    });
    if overflowed.load(Ordering::Relaxed) {
        // Name the model's non-finite feature if there is one, else the overflow.
        for features in f1.iter().chain(f2) {
            features.check_finite()?;
        }
        check_kernel_finite("empirical_ntk", &out)?;
    }
    if symmetric {
        // Every other tile is the transpose of one computed.
        for (j, cols) in b1.iter().enumerate() {
            for i in tiles(j).into_iter().filter(|&i| i != j) {
                let rows = b1[i].start * per..b1[i].end * per;
                copy_transposed(&mut out, rows, cols.start * per..cols.end * per);
            }
        }
    }
    Ok(out)
}

/// Fills the tiles of one column block (rows from `offset` on in the whole output;
/// tile $k$, $k₀ ≤ k < k₀ +$ `starts.len()`, starts at row `starts[k − k₀]`, its rows in
/// increasing order) with `fill(k, view from the tile's first row)`, splitting the block
/// by rows into disjoint views so that the tiles run in parallel: work units as fine as
/// one tile, with every output entry written by one task.
fn fill_tiles<T: Scalar>(
    mut column: DMatrixViewMut<'_, T>,
    offset: usize,
    starts: &[usize],
    first: usize,
    fill: &(impl Fn(usize, &mut DMatrixViewMut<'_, T>) + Sync),
) {
    match starts {
        [] => {}
        [start] => {
            let mut rest = column.rows_range_mut(start - offset..);
            fill(first, &mut rest);
        }
        _ => {
            let mid = starts.len() / 2;
            let split = starts[mid] - offset;
            let (top, bottom) = column.rows_range_pair_mut(..split, split..);
            parallel::join(
                || fill_tiles(top, offset, &starts[..mid], first, fill),
                || fill_tiles(bottom, offset + split, &starts[mid..], first + mid, fill),
            );
        }
    }
}

/// The row blocks $i$ whose tiles $(i, j)$ column block $j$ computes when $x_1 = x_2$, of `blocks`
/// blocks: its diagonal tile and the pairs at circular distance $1$ ..= $B/2$ behind it,
/// $(j − 1, j), (j − 2, j), …$ (wrapping around: those are below the diagonal). Every
/// unordered pair of blocks is computed once (at distance $B/2$, by the block $j ≥ B/2$),
/// and every column block gets about $(B + 1)/2$ tiles, so the tasks are balanced; the
/// other tiles are transposes.
fn symmetric_tiles(blocks: usize, j: usize) -> Vec<usize> {
    let half = blocks / 2;
    (0..=half)
        .filter(|&d| d == 0 || d < blocks - d || j >= half)
        .map(|d| (j + blocks - d) % blocks)
        .collect()
}

/// `0..n` cut into consecutive ranges of about $n/4$ rows, within
/// [`MIN_BLOCK_ROWS`]..=[`BLOCK_ROWS`], all of the same length but the last.
fn row_blocks(n: usize) -> Vec<Range<usize>> {
    let count = n.div_ceil((n / 4).clamp(MIN_BLOCK_ROWS, BLOCK_ROWS)).max(1);
    let size = n.div_ceil(count).max(1);
    (0..count)
        .map(|b| (b * size).min(n)..((b + 1) * size).min(n))
        .collect()
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
            let net = spec.init::<f64>(&mut StdRng::seed_from_u64(7)).unwrap();
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

    /// Every unordered pair of blocks is computed exactly once, and the work per
    /// column block differs by at most one tile.
    #[test]
    fn symmetric_tiles_cover_every_pair_once_and_balance() {
        for blocks in 1..12 {
            let mut seen = vec![vec![0; blocks]; blocks];
            let counts: Vec<usize> = (0..blocks)
                .map(|j| {
                    let tiles = symmetric_tiles(blocks, j);
                    for &i in &tiles {
                        seen[i.min(j)][i.max(j)] += 1;
                    }
                    tiles.len()
                })
                .collect();
            for (a, row) in seen.iter().enumerate() {
                for (b, &count) in row.iter().enumerate().skip(a) {
                    assert_eq!(count, 1, "{blocks} blocks, pair ({a}, {b})");
                }
            }
            let (lo, hi) = (counts.iter().min(), counts.iter().max());
            assert!(hi.unwrap() - lo.unwrap() <= 1, "{blocks}: {counts:?}");
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
