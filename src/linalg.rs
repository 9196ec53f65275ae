//! Dense products the kernels are made of, on nalgebra's GEMM (the `matrixmultiply`
//! kernels for `f32`/`f64`, which take any strides, so transposes need no copy).

use std::ops::Range;

use nalgebra::{DMatrix, DMatrixViewMut, Dyn, Matrix, MatrixView, Storage, StorageMut};

use crate::Scalar;
use crate::error::{Error, Result};

/// The transpose of columns `first .. first + count` of `m`, as a view on `m`'s
/// storage (no copy): column-major columns read with swapped strides.
pub(crate) fn columns_transposed<T: Scalar>(
    m: &DMatrix<T>,
    first: usize,
    count: usize,
) -> MatrixView<'_, T, Dyn, Dyn, Dyn, Dyn> {
    let n = m.nrows();
    let data = &m.as_slice()[first * n..(first + count) * n];
    MatrixView::from_slice_with_strides_generic(data, Dyn(count), Dyn(n), Dyn(n), Dyn(1))
}

/// C = A Bᵀ over the column blocks `a[:, a0 .. a0+w]` and `b[:, b0 .. b0+w]`,
/// overwriting `c` (which must be `a.nrows() × b.nrows()`).
pub(crate) fn gemm_nt<T: Scalar>(
    c: &mut DMatrixViewMut<'_, T>,
    a: &DMatrix<T>,
    a0: usize,
    b: &DMatrix<T>,
    b0: usize,
    w: usize,
) {
    let bt = columns_transposed(b, b0, w);
    c.gemm(T::one(), &a.columns(a0, w), &bt, T::zero());
}

/// Fewest rows for which nalgebra's `gemm` uses the `matrixmultiply` kernels; below
/// it, it multiplies column by column, which is slow on large (and strided) operands.
const GEMM_ROWS: usize = 6;

/// y ← α a b + β y through the `matrixmultiply` kernels even when y has fewer than
/// six rows (a batch of a few samples): the rows are zero-padded to six, so that a
/// product with a large (possibly transposed, strided) b runs as one GEMM.
pub(crate) fn gemm<T: Scalar, SY, SA, SB>(
    y: &mut Matrix<T, Dyn, Dyn, SY>,
    alpha: T,
    a: &Matrix<T, Dyn, Dyn, SA>,
    b: &Matrix<T, Dyn, Dyn, SB>,
    beta: T,
) where
    SY: StorageMut<T, Dyn, Dyn>,
    SA: Storage<T, Dyn, Dyn>,
    SB: Storage<T, Dyn, Dyn>,
{
    let n = y.nrows();
    if n >= GEMM_ROWS || n == 0 || a.ncols() < GEMM_ROWS || y.ncols() < GEMM_ROWS {
        y.gemm(alpha, a, b, beta);
        return;
    }
    let mut padded_a = DMatrix::<T>::zeros(GEMM_ROWS, a.ncols());
    padded_a.rows_mut(0, n).copy_from(a);
    let mut padded_y = DMatrix::<T>::zeros(GEMM_ROWS, y.ncols());
    if beta != T::zero() {
        padded_y.rows_mut(0, n).copy_from(y);
    }
    padded_y.gemm(alpha, &padded_a, b, beta);
    y.copy_from(&padded_y.rows(0, n));
}

/// Copies block (`rows`, `cols`) of the square `m`, transposed, onto block
/// (`cols`, `rows`): $m_{cr} = m_{rc}$, in 16 × 16 blocks (a column of the destination then
/// spans 16 pages, not the whole block's).
pub(crate) fn copy_transposed<T: nalgebra::Scalar + Copy>(
    m: &mut DMatrix<T>,
    rows: Range<usize>,
    cols: Range<usize>,
) {
    const BLOCK: usize = 16;
    let stride = m.nrows();
    let data = m.as_mut_slice();
    for c0 in cols.clone().step_by(BLOCK) {
        for r0 in rows.clone().step_by(BLOCK) {
            for c in c0..(c0 + BLOCK).min(cols.end) {
                for r in r0..(r0 + BLOCK).min(rows.end) {
                    data[c + r * stride] = data[r + c * stride];
                }
            }
        }
    }
}

/// Copies the strict upper triangle of the square `m` onto the lower, in 64 × 64 tiles.
pub(crate) fn mirror_upper<T: nalgebra::Scalar + Copy>(m: &mut DMatrix<T>) {
    const TILE: usize = 64;
    let n = m.nrows();
    for jb in (0..n).step_by(TILE) {
        let tile = jb..(jb + TILE).min(n);
        for j in tile.clone() {
            for i in (j + 1)..tile.end {
                m[(i, j)] = m[(j, i)];
            }
        }
        for ib in (tile.end..n).step_by(TILE) {
            copy_transposed(m, tile.clone(), ib..(ib + TILE).min(n));
        }
    }
}

/// A zero `rows` × `cols` matrix, or [`Error::AllocationFailed`] naming `parameter`
/// (with `value()`, the sizes that asked for it) when the size overflows or the memory
/// cannot be allocated: an error instead of an abort.
pub(crate) fn try_zeros<T: Scalar>(
    rows: usize,
    cols: usize,
    parameter: &'static str,
    value: impl FnOnce() -> String,
) -> Result<DMatrix<T>> {
    let mut data = Vec::new();
    if let Some(len) = rows.checked_mul(cols)
        && data.try_reserve_exact(len).is_ok()
    {
        data.resize(len, T::zero());
        return Ok(DMatrix::from_vec(rows, cols, data));
    }
    Err(Error::AllocationFailed {
        what: format!("`{parameter}` = {}", value()),
        size: format!("{rows} x {cols} numbers"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_nt_is_a_times_b_transposed() {
        let a = DMatrix::from_fn(7, 9, |i, j| (i as f64 * 0.3 - j as f64).sin());
        let b = DMatrix::from_fn(6, 9, |i, j| (i as f64 + 0.7 * j as f64).cos());
        let mut c = DMatrix::<f64>::from_element(7, 6, f64::NAN);
        gemm_nt(&mut c.view_mut((0, 0), (7, 6)), &a, 3, &b, 3, 6);
        let expected = a.columns(3, 6) * b.columns(3, 6).transpose();
        assert!((c - expected).amax() < 1e-14);
        assert_eq!(columns_transposed(&a, 9, 0).shape(), (0, 7));
    }

    /// The padded product is the product, for every small row count, with β = 0 and 1.
    #[test]
    fn gemm_with_few_rows_is_the_product() {
        let b = DMatrix::from_fn(9, 8, |i, j| (i as f64 + 0.7 * j as f64).cos());
        let bt = b.transpose();
        for n in 0..8 {
            let a = DMatrix::from_fn(n, 9, |i, j| (i as f64 * 0.3 - j as f64).sin());
            for beta in [0.0, 1.0] {
                let y0 = DMatrix::from_fn(n, 8, |i, j| (i * j) as f64);
                let mut y = y0.clone();
                gemm(&mut y, 2.0, &a, &columns_transposed(&bt, 0, 9), beta);
                let expected = &a * &b * 2.0 + y0 * beta;
                assert!((y - expected).amax() < 1e-13, "{n} rows, β = {beta}");
            }
        }
    }

    #[test]
    fn impossible_allocations_are_errors() {
        assert_eq!(
            try_zeros::<f64>(3, 2, "m", String::new).unwrap().shape(),
            (3, 2)
        );
        let too_many = try_zeros::<f64>(usize::MAX, 2, "width", || "huge".into());
        match too_many {
            Err(Error::AllocationFailed { what, size }) => {
                assert_eq!(what, "`width` = huge");
                assert!(size.contains(&usize::MAX.to_string()), "{size}");
            }
            other => panic!("expected an allocation error, got {other:?}"),
        }
        let too_large = try_zeros::<f64>(1 << 40, 1 << 20, "width", || "huge".into());
        assert!(too_large.is_err());
    }
}
