//! Dense factorizations of symmetric kernels (eigendecomposition, Cholesky), computed
//! in f64 by [`faer`].
//!
//! faer's self-adjoint eigensolver (Householder tridiagonalisation, then divide and
//! conquer) runs at LAPACK speed, several times faster than nalgebra's
//! `SymmetricEigen` at N = 2048. Its AVX-512 kernels leave the upper halves of the
//! vector registers dirty, which slows all later non-VEX (SSE) code on the same thread
//! (the scalar libm calls of the activations, say) for as long as the thread lives.
//! Measured (`gradient_flow/after_eigen`, N = 256, on this crate's 2-core AVX-512
//! benchmark machine): a scalar libm loop takes 6–7 ms after `GradientFlow::new`, as
//! alone (5–8 ms on the shared machine), and 34–37 ms after faer ran sequentially on
//! the same thread, 5× slower. So every factorization here runs on threads that end
//! when it does: a scoped thread (sequential build, or N < 384) or a short-lived rayon
//! pool of the current pool's size (`parallel` feature). The caller's threads, rayon's
//! global pool included, never execute faer code, and the global pool idles meanwhile
//! (no two pools compete for the cores). The isolation costs a thread spawn (tens of
//! µs on an idle machine).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::LltRegularization;
use faer::linalg::evd::ComputeEigenvectors;
use faer::{Conj, MatMut, MatRef, Par};
use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::{Error, Result};

/// Matrices smaller than this are factored sequentially (a thread pool costs more
/// than it saves).
#[cfg(feature = "parallel")]
const PARALLEL_MIN_DIM: usize = 384;

/// Runs `f` with faer's parallelism on threads that exit when it returns, for a
/// factorization of an `n` × `n` matrix.
fn isolated<R: Send>(n: usize, f: impl FnOnce(Par) -> R + Send) -> R {
    #[cfg(feature = "parallel")]
    {
        let threads = rayon::current_num_threads().max(1);
        if threads > 1
            && n >= PARALLEL_MIN_DIM
            && let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build()
        {
            return pool.install(|| f(Par::rayon(threads)));
        }
    }
    #[cfg(not(feature = "parallel"))]
    let _ = n;
    std::thread::scope(|s| {
        s.spawn(|| f(Par::Seq))
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// The eigendecomposition A = V diag(λ) Vᵀ of the symmetric `a` (only its lower
/// triangle is read), eigenvalues in **descending** order, column i of V ↔ λ_i.
pub(crate) fn symmetric_eigen<T: Scalar>(a: &DMatrix<f64>) -> Result<(DVector<f64>, DMatrix<T>)> {
    let n = a.nrows();
    debug_assert_eq!(n, a.ncols());
    let mut vectors = DMatrix::<f64>::zeros(n, n);
    let mut values = faer::diag::Diag::<f64>::zeros(n);
    if n == 0 {
        return Ok((DVector::zeros(0), DMatrix::zeros(0, 0)));
    }
    let outcome = isolated(n, |par| {
        let a = MatRef::from_column_major_slice(a.as_slice(), n, n);
        let u = MatMut::from_column_major_slice_mut(vectors.as_mut_slice(), n, n);
        let mut mem = MemBuffer::new(faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
            n,
            ComputeEigenvectors::Yes,
            par,
            Default::default(),
        ));
        faer::linalg::evd::self_adjoint_evd(
            a,
            values.as_mut(),
            Some(u),
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
    });
    if outcome.is_err() {
        return Err(not_converged(n));
    }
    // faer sorts ascending; reverse to descending.
    let values = DVector::from_fn(n, |i, _| values[n - 1 - i]);
    let vectors = DMatrix::from_fn(n, n, |i, j| T::from_f64_lossy(vectors[(i, n - 1 - j)]));
    Ok((values, vectors))
}

/// The eigenvalues of the symmetric `a` (only its lower triangle is read), in
/// **descending** order, without the eigenvectors.
pub(crate) fn symmetric_eigenvalues(a: &DMatrix<f64>) -> Result<DVector<f64>> {
    let n = a.nrows();
    debug_assert_eq!(n, a.ncols());
    let mut values = faer::diag::Diag::<f64>::zeros(n);
    if n == 0 {
        return Ok(DVector::zeros(0));
    }
    let outcome = isolated(n, |par| {
        let a = MatRef::from_column_major_slice(a.as_slice(), n, n);
        let mut mem = MemBuffer::new(faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
            n,
            ComputeEigenvectors::No,
            par,
            Default::default(),
        ));
        faer::linalg::evd::self_adjoint_evd(
            a,
            values.as_mut(),
            None,
            par,
            MemStack::new(&mut mem),
            Default::default(),
        )
    });
    if outcome.is_err() {
        return Err(not_converged(n));
    }
    Ok(DVector::from_fn(n, |i, _| values[n - 1 - i]))
}

/// The error of an eigensolver that did not converge on an n × n kernel.
fn not_converged(n: usize) -> Error {
    Error::Factorization {
        message: format!(
            "the symmetric eigendecomposition of the {n} x {n} kernel did not converge"
        ),
    }
}

/// The Cholesky factor L (lower triangular, A = L Lᵀ) of the symmetric positive
/// definite `a` (only its lower triangle is read).
#[derive(Clone, Debug)]
pub(crate) struct Cholesky {
    /// L in the lower triangle; the strict upper triangle is unspecified.
    factor: DMatrix<f64>,
}

impl Cholesky {
    /// Factors `a`; `None` if a pivot is not positive (A is not positive definite
    /// to working precision).
    pub(crate) fn new(a: &DMatrix<f64>) -> Option<Self> {
        let n = a.nrows();
        debug_assert_eq!(n, a.ncols());
        let mut factor = a.clone();
        let ok = isolated(n, |par| {
            let l = MatMut::from_column_major_slice_mut(factor.as_mut_slice(), n, n);
            let mut mem = MemBuffer::new(
                faer::linalg::cholesky::llt::factor::cholesky_in_place_scratch::<f64>(
                    n,
                    par,
                    Default::default(),
                ),
            );
            faer::linalg::cholesky::llt::factor::cholesky_in_place(
                l,
                LltRegularization::default(),
                par,
                MemStack::new(&mut mem),
                Default::default(),
            )
            .is_ok()
        });
        ok.then_some(Cholesky { factor })
    }

    /// min_i L_ii² / max_i A_ii: the smallest pivot relative to the largest diagonal
    /// entry of A (0 for an empty matrix). Round-off-sized pivots mean A is singular
    /// to working precision even where the factorization succeeded.
    pub(crate) fn smallest_relative_pivot(&self, a: &DMatrix<f64>) -> f64 {
        let n = self.factor.nrows();
        let largest = (0..n).map(|i| a[(i, i)]).fold(0.0_f64, f64::max);
        let smallest = (0..n)
            .map(|i| self.factor[(i, i)].powi(2))
            .fold(f64::INFINITY, f64::min);
        if n == 0 { 0.0 } else { smallest / largest }
    }

    /// A⁻¹ B.
    pub(crate) fn solve(&self, b: &DMatrix<f64>) -> DMatrix<f64> {
        let n = self.factor.nrows();
        let mut x = b.clone();
        let k = x.ncols();
        isolated(n, |par| {
            let l = MatRef::from_column_major_slice(self.factor.as_slice(), n, n);
            let rhs = MatMut::from_column_major_slice_mut(x.as_mut_slice(), n, k);
            let mut mem = MemBuffer::new(
                faer::linalg::cholesky::llt::solve::solve_in_place_scratch::<f64>(n, k, par),
            );
            faer::linalg::cholesky::llt::solve::solve_in_place_with_conj(
                l,
                Conj::No,
                rhs,
                par,
                MemStack::new(&mut mem),
            );
        });
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> DMatrix<f64> {
        let a = DMatrix::from_fn(n, n + 3, |i, j| ((3 * i + 5 * j) as f64 * 0.41).sin());
        &a * a.transpose() + DMatrix::identity(n, n) * 0.1
    }

    #[test]
    fn eigen_recomposes_and_is_sorted() {
        for n in [0, 1, 7, 40] {
            let a = spd(n);
            let (values, vectors) = symmetric_eigen::<f64>(&a).unwrap();
            let alone = symmetric_eigenvalues(&a).unwrap();
            assert!((&alone - &values).amax() <= 1e-12 * a.norm().max(1.0));
            let recomposed = &vectors * DMatrix::from_diagonal(&values) * vectors.transpose();
            assert!((recomposed - &a).norm() <= 1e-12 * a.norm().max(1.0));
            let gram = vectors.transpose() * &vectors;
            assert!((gram - DMatrix::identity(n, n)).norm() <= 1e-12 * (n as f64).max(1.0));
            assert!(values.as_slice().windows(2).all(|w| w[0] >= w[1]));
        }
    }

    #[test]
    fn cholesky_solves() {
        let a = spd(30);
        let b = DMatrix::from_fn(30, 2, |i, j| (i + j) as f64);
        let x = Cholesky::new(&a).unwrap().solve(&b);
        assert!((&a * x - &b).norm() <= 1e-10 * b.norm());
        let mut bad = a.clone();
        bad[(3, 3)] = -1.0;
        assert!(Cholesky::new(&bad).is_none());
    }
}
