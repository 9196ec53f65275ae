//! Gradient flow at a single time without the eigendecomposition: Lanczos (Krylov
//! subspace) approximations of $e^{−ηtΘ} r$ and $Θ⁻¹(I − e^{−ηtΘ}) r$.
//!
//! For a residual $r$, $m$ steps of the Lanczos process on $Θ$ started at $q₁ = r/\lVert r \rVert$ give an
//! orthonormal basis $Q_m$ of the Krylov space $\mathrm{span}\\{r, Θr, …, Θ^{m−1}r\\}$ and the
//! tridiagonal $T_m = Q_mᵀ Θ Q_m$, and for a function $g$
//!
//! $$g(Θ) r ≈ \lVert r \rVert Q_m g(T_m) e₁,$$
//!
//! exact when $Θ$ has at most $m$ distinct eigenvalues on $r$, and otherwise converging
//! roughly like the best polynomial approximation of $g$ of degree $m − 1$ on $Θ$'s spectrum
//! (Saad 1992; Hochbruck & Lubich 1997). For $g(λ) = e^{−ηtλ}$ that needs about
//! $\sqrt{ηt λ_{max}}$ steps; $g(λ) = (1 − e^{−ηtλ})/λ$ (test points) behaves like a conjugate
//! gradient solve for large $t$. Each step costs one product with $Θ$, $O(N²)$, so a
//! prediction costs $O(mN²)$ instead of the $O(N³)$ eigendecomposition: worth it for one
//! or a few times on a large kernel. The basis is fully reorthogonalised ($O(Nm²)$), and
//! convergence is checked in the coefficient space ($\lVert g(T_m)e₁ − g(T_{m−1})e₁ \rVert$, equal
//! to the change of the prediction since $Q_m$ is orthonormal).

use nalgebra::{DMatrix, DVector, SymmetricEigen};

use super::problem::{
    TrainingProblem, check_test_inputs, check_train_outputs, flow_decay, flow_integral,
    psd_spectrum,
};
use crate::Scalar;
use crate::error::{Error, Result, check_time};

/// Gradient-flow predictions at a single time by the Lanczos method, without
/// eigendecomposing $Θ$: the same results as [`GradientFlow::train`] and
/// [`GradientFlow::test`] to the tolerance, at $O(mN²)$ per call ($m$ Lanczos steps).
///
/// [`GradientFlow::train`]: crate::GradientFlow::train
/// [`GradientFlow::test`]: crate::GradientFlow::test
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{GradientFlow, KrylovFlow};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let a = DMatrix::from_fn(50, 60, |i, j| ((i * 7 + j * 3) as f64 * 0.1).sin());
/// let theta = &a * a.transpose() / 60.0;
/// let y = DMatrix::from_fn(50, 1, |i, _| (i as f64 * 0.3).cos());
/// let f0 = DMatrix::zeros(50, 1);
///
/// let krylov = KrylovFlow::new(&theta, &y, 0.5)?.tolerance(1e-12)?;
/// let exact = GradientFlow::new(&theta, &y, 0.5)?;
/// let err = (krylov.train(2.0, &f0)? - exact.train(2.0, &f0)?).norm();
/// assert!(err < 1e-9 * y.norm());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct KrylovFlow<T: Scalar> {
    problem: TrainingProblem<T>,
    tolerance: f64,
    max_dimension: usize,
}

impl<T: Scalar> KrylovFlow<T> {
    /// Prepares predictions on the $N × N$ kernel `theta_train` with targets `y_train`
    /// ($N × k$) and learning rate `eta` (time units as [`GradientFlow`](crate::GradientFlow)).
    /// No factorization: $O(N²)$ for the checks. Defaults: relative tolerance 1e-10, at
    /// most $\min(N, 500)$ Lanczos steps.
    ///
    /// Without a factorization, positive semi-definiteness is checked where the
    /// predictions meet $Θ$'s spectrum: on the Lanczos matrices' eigenvalues (see
    /// [`train`](Self::train)).
    ///
    /// # Errors
    /// As [`GradientFlow::new`](crate::GradientFlow::new), except for
    /// [`Error::NotPositiveSemidefinite`].
    pub fn new(theta_train: &DMatrix<T>, y_train: &DMatrix<T>, eta: T) -> Result<Self> {
        let problem = TrainingProblem::new(theta_train, y_train, eta)?;
        let n = problem.targets.nrows();
        Ok(KrylovFlow {
            problem,
            tolerance: 1e-10,
            max_dimension: n.min(500),
        })
    }

    /// Sets the relative tolerance on each predicted column (default 1e-10).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless $0 <$ `tolerance` $< 1$.
    pub fn tolerance(mut self, tolerance: f64) -> Result<Self> {
        if !(tolerance > 0.0 && tolerance < 1.0) {
            return Err(Error::InvalidParameter {
                parameter: "tolerance",
                value: format!("{tolerance}"),
                reason: "must be in (0, 1)",
            });
        }
        self.tolerance = tolerance;
        Ok(self)
    }

    /// Sets the largest Krylov dimension (default $\min(N, 500)$).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `max_dimension` is 0.
    pub fn max_dimension(mut self, max_dimension: usize) -> Result<Self> {
        if max_dimension == 0 {
            return Err(Error::InvalidParameter {
                parameter: "max_dimension",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        self.max_dimension = max_dimension;
        Ok(self)
    }

    /// $f_t(X) = Y + e^{−ηtΘ}(f_0(X) − Y)$, $N × k$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative, NaN or infinite (use
    /// [`KernelRegression`](crate::KernelRegression) for $t = ∞$);
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`] if `f0_train` is not a finite
    /// $N × k$ matrix; [`Error::Factorization`] if the tolerance is not reached within
    /// the maximum dimension; [`Error::NotPositiveSemidefinite`] (`theta_train`) if a
    /// Lanczos matrix has an eigenvalue below $−\max(10⁻⁸, N·ε)·\max |λ|$ (its
    /// eigenvalues lie in $Θ$'s spectrum, and the extreme ones converge first, so a
    /// clearly indefinite $Θ$ is found unless the residual has no component along its
    /// negative directions). Eigenvalues below $N·ε·λ_{max}$ count as 0, as in
    /// [`GradientFlow`](crate::GradientFlow).
    pub fn train(&self, t: T, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        let eta_t = self.eta_t(t)?;
        let r = self.residual(f0_train)?;
        let moved = self.function_times(|l| flow_decay(eta_t, l), &r)?;
        let targets = &self.problem.targets;
        Ok(DMatrix::from_fn(r.nrows(), r.ncols(), |i, c| {
            targets[(i, c)] + T::from_f64_lossy(moved[(i, c)])
        }))
    }

    /// $f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹(I − e^{−ηtΘ})(Y − f_0(X))$, $M × k$.
    ///
    /// # Errors
    /// As [`train`](Self::train), and [`Error::ShapeMismatch`] if `f0_test` is not
    /// $M × k$ or `theta_test_train` not $M × N$, [`Error::NonFinite`] on their NaN or
    /// infinite entries.
    pub fn test(
        &self,
        t: T,
        f0_train: &DMatrix<T>,
        f0_test: &DMatrix<T>,
        theta_test_train: &DMatrix<T>,
    ) -> Result<DMatrix<T>> {
        let eta_t = self.eta_t(t)?;
        check_test_inputs(f0_test, theta_test_train, &self.problem.targets)?;
        let r = -self.residual(f0_train)?;
        let weights = self.function_times(|l| flow_integral(eta_t, l), &r)?;
        let moved = theta_test_train.map(|v| v.to_f64()) * weights;
        Ok(DMatrix::from_fn(f0_test.nrows(), r.ncols(), |i, c| {
            f0_test[(i, c)] + T::from_f64_lossy(moved[(i, c)])
        }))
    }

    /// $η t$, after checking $t$.
    fn eta_t(&self, t: T) -> Result<f64> {
        let t = t.to_f64();
        check_time("t", t)?;
        if !t.is_finite() {
            return Err(Error::InvalidParameter {
                parameter: "t",
                value: format!("{t}"),
                reason: "the Krylov path needs a finite time; use KernelRegression for t = ∞",
            });
        }
        Ok(self.problem.eta.to_f64() * t)
    }

    /// $f_0 − Y$ in f64, after checking $f_0$.
    fn residual(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<f64>> {
        let targets = &self.problem.targets;
        check_train_outputs(f0_train, targets)?;
        Ok(DMatrix::from_fn(
            f0_train.nrows(),
            f0_train.ncols(),
            |i, c| f0_train[(i, c)].to_f64() - targets[(i, c)].to_f64(),
        ))
    }

    /// $g(Θ) r$, column by column, by Lanczos.
    fn function_times(&self, g: impl Fn(f64) -> f64, r: &DMatrix<f64>) -> Result<DMatrix<f64>> {
        let mut out = DMatrix::zeros(r.nrows(), r.ncols());
        for c in 0..r.ncols() {
            let column = self.lanczos(&r.column(c).into_owned(), &g)?;
            out.set_column(c, &column);
        }
        Ok(out)
    }

    fn lanczos(&self, r: &DVector<f64>, g: &impl Fn(f64) -> f64) -> Result<DVector<f64>> {
        let n = r.len();
        let beta0 = r.norm();
        if beta0 == 0.0 || n == 0 {
            return Ok(DVector::zeros(n));
        }
        let scale = self.problem.theta.amax().max(f64::MIN_POSITIVE);
        let max_m = self.max_dimension.min(n);
        let mut basis: Vec<DVector<f64>> = vec![r / beta0];
        let mut alpha: Vec<f64> = Vec::new();
        let mut beta: Vec<f64> = Vec::new();
        let mut previous: Option<DVector<f64>> = None;
        loop {
            let j = basis.len() - 1;
            let mut w = &self.problem.theta * &basis[j];
            alpha.push(basis[j].dot(&w));
            // Full reorthogonalisation, twice ("twice is enough").
            for _ in 0..2 {
                for q in &basis {
                    let h = q.dot(&w);
                    w.axpy(-h, q, 1.0);
                }
            }
            let b = w.norm();
            let m = alpha.len();
            let invariant = b <= 1e-13 * scale;
            let last = invariant || m >= max_m;
            // Check convergence every step up to 32, then every 4 steps.
            if last || m <= 32 || m.is_multiple_of(4) {
                let coefficients = small_function::<T>(&alpha, &beta, g, n)?;
                let converged = previous.as_ref().is_some_and(|p| {
                    let mut diff = coefficients.clone();
                    diff.rows_mut(0, p.len()).axpy(-1.0, p, 1.0);
                    diff.norm() <= self.tolerance * coefficients.norm()
                });
                if converged || invariant || m >= n {
                    let mut y = DVector::zeros(n);
                    for (q, &c) in basis.iter().zip(coefficients.iter()) {
                        y.axpy(beta0 * c, q, 1.0);
                    }
                    return Ok(y);
                }
                if last {
                    return Err(Error::Factorization {
                        message: format!(
                            "Lanczos did not reach the relative tolerance {:e} within {m} \
                             steps; raise `max_dimension` or use GradientFlow (eigendecomposition)",
                            self.tolerance
                        ),
                    });
                }
                previous = Some(coefficients);
            }
            beta.push(b);
            basis.push(w / b);
        }
    }
}

/// $g(T) e₁$ for the symmetric tridiagonal $T$ with diagonal `alpha` and off-diagonal
/// `beta` (length alpha.len() − 1, or more: extra entries are ignored). $T$'s
/// eigenvalues (Ritz values, inside $Θ$'s spectrum, the extreme ones converging first)
/// are checked and cleaned as $Θ$'s would be: a clearly negative one means $Θ$ ($N × N$) is
/// not positive semi-definite, and those below $N·ε·λ_{max}$ count as 0.
fn small_function<T: Scalar>(
    alpha: &[f64],
    beta: &[f64],
    g: &impl Fn(f64) -> f64,
    n: usize,
) -> Result<DVector<f64>> {
    let m = alpha.len();
    let t = DMatrix::from_fn(m, m, |i, j| {
        if i == j {
            alpha[i]
        } else if i + 1 == j {
            beta[i]
        } else if j + 1 == i {
            beta[j]
        } else {
            0.0
        }
    });
    let Some(eig) = SymmetricEigen::try_new(t, f64::EPSILON, 0) else {
        return Err(Error::Factorization {
            message: format!(
                "the eigendecomposition of the {m} x {m} Lanczos matrix did not converge"
            ),
        });
    };
    let ritz = psd_spectrum::<T>("theta_train", &eig.eigenvalues, n)?;
    // S g(Λ) Sᵀ e₁ = S (g(λ) ⊙ first row of S).
    let weights = DVector::from_fn(m, |i, _| g(ritz[i]) * eig.eigenvectors[(0, i)]);
    Ok(&eig.eigenvectors * weights)
}
