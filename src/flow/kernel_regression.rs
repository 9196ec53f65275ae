//! [`KernelRegression`]: the $t → ∞$ limit of gradient flow by a Cholesky solve.

use nalgebra::DMatrix;

use super::problem::{
    check_test_inputs, check_train_outputs, kernel_and_targets, null_space_fraction,
};
use crate::Scalar;
use crate::error::{Error, Result};
use crate::factor::Cholesky;

/// Kernel regression, the $t → ∞$ limit of gradient flow, through a Cholesky solve (no
/// eigendecomposition), with an optional ridge $ρ$ (`diag_reg`):
///
/// $$f_∞(x) = f_0(x) + Θ(x, X) (Θ + ρI)⁻¹ (Y − f_0(X)),$$
///
/// and on the training points $f_0(X) + Θ(Θ + ρI)⁻¹(Y − f_0(X)) = Y − ρ (Θ + ρI)⁻¹(Y − f_0(X))$
/// ($= Y$ without ridge).
///
/// `diag_reg` is absolute. neural-tangents' `diag_reg` is by default relative to the
/// mean diagonal (`diag_reg_absolute_scale=False`): pass `diag_reg · trace(Θ)/N` to
/// match it.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{GradientFlow, KernelRegression};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let theta = DMatrix::from_row_slice(3, 3, &[2.0, 0.5, 0.1, 0.5, 1.5, 0.3, 0.1, 0.3, 1.0]);
/// let y = DMatrix::from_column_slice(3, 1, &[1.0, -1.0, 0.5]);
/// let f0 = DMatrix::zeros(3, 1);
/// let theta_test = DMatrix::from_row_slice(1, 3, &[0.4, 0.2, 0.7]);
/// let f0_test = DMatrix::zeros(1, 1);
///
/// let regression = KernelRegression::new(&theta, &y, 0.0)?;
/// let limit = regression.test(&f0, &f0_test, &theta_test)?;
/// let flow = GradientFlow::new(&theta, &y, 1.0)?;
/// let late = flow.test(200.0, &f0, &f0_test, &theta_test)?;
/// assert!((limit - late).norm() < 1e-12);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct KernelRegression<T: Scalar> {
    cholesky: Cholesky,
    targets: DMatrix<T>,
    diag_reg: T,
}

impl<T: Scalar> KernelRegression<T> {
    /// Factors $Θ + ρI$ ($ρ$ = `diag_reg` $≥ 0$) for the targets `y_train` ($N × k$).
    ///
    /// # Errors
    /// As [`GradientFlow::new`](crate::GradientFlow::new) for `theta_train` and `y_train`
    /// (except the eigenvalue check); [`Error::InvalidParameter`] unless `diag_reg` is
    /// finite and $≥ 0$;
    /// [`Error::Factorization`] if $Θ + ρI$ is not positive definite to working
    /// precision: the factorization fails, or a pivot is below $N·ε$ of the largest
    /// diagonal entry (singular: repeated training inputs, say; see
    /// [the null space](crate::flow#the-null-space)). The message suggests a
    /// `diag_reg`, or [`GradientFlow`](crate::GradientFlow) at $t = ∞$ for the
    /// pseudo-inverse limit.
    pub fn new(theta_train: &DMatrix<T>, y_train: &DMatrix<T>, diag_reg: T) -> Result<Self> {
        let (theta, targets) = kernel_and_targets(theta_train, y_train)?;
        let n = targets.nrows();
        let rho = diag_reg.to_f64();
        if !(rho.is_finite() && rho >= 0.0) {
            return Err(Error::InvalidParameter {
                parameter: "diag_reg",
                value: format!("{rho}"),
                reason: "a ridge must be finite and >= 0",
            });
        }
        // Symmetric (checked): the factorization reads the lower triangle.
        let mut a = theta;
        for i in 0..n {
            a[(i, i)] += rho;
        }
        // A pivot at round-off level means Θ + ρI is singular to working precision:
        // its solve would be noise.
        let floor = null_space_fraction::<T>(n);
        let factored = Cholesky::new(&a).filter(|c| c.smallest_relative_pivot(&a) > floor);
        let Some(cholesky) = factored else {
            let mean_diag = (a.trace() / n.max(1) as f64).abs();
            let message = if rho == 0.0 && a.amax() == 0.0 {
                "`theta_train` is zero: kernel regression has nothing to invert (the flow \
                 never moves: f_∞ = f_0); any `diag_reg` > 0 returns f_0, as does \
                 GradientFlow at t = ∞"
                    .to_string()
            } else if rho == 0.0 {
                format!(
                    "Cholesky factorization of `theta_train` ({n} x {n}) failed: the kernel is \
                     singular (repeated or dependent training inputs) or not positive \
                     definite to working precision. GradientFlow at t = ∞ gives the \
                     pseudo-inverse limit (eigenvalues below N·ε·λ_max count as 0); or pass a \
                     small ridge `diag_reg` (e.g. {:e}, 1e-10 of its mean diagonal)",
                    1e-10 * mean_diag
                )
            } else {
                format!(
                    "Cholesky factorization of `theta_train` + {rho:e} I ({n} x {n}) failed: \
                     not positive definite to working precision; increase `diag_reg` or check \
                     that `theta_train` is positive semi-definite"
                )
            };
            return Err(Error::Factorization { message });
        };
        Ok(KernelRegression {
            cholesky,
            targets,
            diag_reg,
        })
    }

    /// The ridge $ρ$.
    #[must_use]
    pub fn diag_reg(&self) -> T {
        self.diag_reg
    }

    /// $(Θ + ρI)⁻¹ (Y − f_0(X))$, the dual coefficients, $N × k$.
    fn dual(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<f64>> {
        check_train_outputs(f0_train, &self.targets)?;
        let r = (&self.targets - f0_train).map(|v| v.to_f64());
        Ok(self.cholesky.solve(&r))
    }

    /// The training outputs at $t = ∞$: $Y − ρ(Θ + ρI)⁻¹(Y − f_0(X))$, $N × k$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`] if `f0_train` is not a finite
    /// $N × k$ matrix.
    pub fn train(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        let w = self.dual(f0_train)?;
        let rho = self.diag_reg.to_f64();
        Ok(DMatrix::from_fn(
            self.targets.nrows(),
            self.targets.ncols(),
            |i, c| self.targets[(i, c)] - T::from_f64_lossy(rho * w[(i, c)]),
        ))
    }

    /// The test outputs at $t = ∞$: $f_0(x) + Θ(x, X)(Θ + ρI)⁻¹(Y − f_0(X))$, $M × k$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `f0_train` is not $N × k$, `f0_test` not $M × k$ or
    /// `theta_test_train` not $M × N$; [`Error::NonFinite`] on NaN or infinite entries.
    pub fn test(
        &self,
        f0_train: &DMatrix<T>,
        f0_test: &DMatrix<T>,
        theta_test_train: &DMatrix<T>,
    ) -> Result<DMatrix<T>> {
        check_test_inputs(f0_test, theta_test_train, &self.targets)?;
        let w = self.dual(f0_train)?;
        Ok(f0_test + theta_test_train * w.map(T::from_f64_lossy))
    }
}
