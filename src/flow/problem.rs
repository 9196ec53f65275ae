//! The training problem of the linearised dynamics, checked once for every solver
//! ([`GradientFlow`](crate::GradientFlow), [`KrylovFlow`](crate::KrylovFlow),
//! [`KernelRegression`](crate::KernelRegression)): the kernel $Θ$ on the $N$ training
//! points, the targets $Y$ ($N × k$) and the learning rate $η$; the checks of what predictions
//! take; and the two
//! spectral functions of gradient flow that every solver applies to $Θ$.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{
    Error, Result, check_finite, check_matrix, check_positive, check_symmetric_kernel, shape,
};

/// A checked training problem of the flows: $Θ$ ($N × N$, finite, symmetric), $Y$ ($N × k$,
/// finite) and the learning rate $η$ (finite, $> 0$).
#[derive(Clone, Debug)]
pub(crate) struct TrainingProblem<T: Scalar> {
    /// $Θ$ in f64, where the factorizations and the Lanczos process run.
    pub(crate) theta: DMatrix<f64>,
    /// $Y$, $N × k$.
    pub(crate) targets: DMatrix<T>,
    /// $η$.
    pub(crate) eta: T,
}

impl<T: Scalar> TrainingProblem<T> {
    /// Checks `theta_train`, `y_train` (as [`kernel_and_targets`]) and `eta`.
    ///
    /// # Errors
    /// As [`kernel_and_targets`]; [`Error::InvalidParameter`] unless `eta` is finite
    /// and $> 0$.
    pub(crate) fn new(theta_train: &DMatrix<T>, y_train: &DMatrix<T>, eta: T) -> Result<Self> {
        let (theta, targets) = kernel_and_targets(theta_train, y_train)?;
        check_positive("eta", eta.to_f64())?;
        Ok(TrainingProblem {
            theta,
            targets,
            eta,
        })
    }
}

/// Checks `theta_train` (square, finite, symmetric) and `y_train` (finite, one row per
/// training point): $Θ$ in f64 and $Y$.
///
/// # Errors
/// [`Error::ShapeMismatch`], [`Error::NonFinite`] or [`Error::NotSymmetric`] naming
/// the argument.
pub(crate) fn kernel_and_targets<T: Scalar>(
    theta_train: &DMatrix<T>,
    y_train: &DMatrix<T>,
) -> Result<(DMatrix<f64>, DMatrix<T>)> {
    check_symmetric_kernel("theta_train", theta_train)?;
    let n = theta_train.nrows();
    check_matrix(
        "y_train",
        y_train,
        Some((n, "one per row of theta_train")),
        None,
    )?;
    Ok((theta_train.map(|v| v.to_f64()), y_train.clone()))
}

/// The relative size below which a kernel's eigenvalues are round-off: $N·ε$, with $ε$ the
/// machine epsilon of the scalar type the kernel was given in. Entries accurate to
/// $ε$ move eigenvalues by up to about $N·ε·λ_{max}$, so eigenvalues below $N·ε·λ_{max}$ cannot be
/// told from 0: the solvers treat them as 0 (the null space of $Θ$, where the exact flow
/// never moves and $t = ∞$ is the pseudo-inverse limit).
pub(crate) fn null_space_fraction<T: Scalar>(n: usize) -> f64 {
    n.max(1) as f64 * T::default_epsilon().to_f64()
}

/// The relative size beyond which a negative eigenvalue is not round-off:
/// $\max(10⁻⁸, N·ε)$. A kernel with $λ_{min} < −\text{that} · \max |λ|$ is not positive
/// semi-definite. $10⁻⁸$ leaves room for kernels accurate to about that (quadrature,
/// [`SYMMETRY_TOLERANCE`](crate::error::SYMMETRY_TOLERANCE)).
fn indefinite_fraction<T: Scalar>(n: usize) -> f64 {
    null_space_fraction::<T>(n).max(1e-8)
}

/// Checks that the eigenvalues `values` of the symmetric $N × N$ kernel `argument` are
/// those of a positive semi-definite one, and returns them with the round-off ones
/// (below $N·ε·λ_{max}$, negatives included) set to 0.
///
/// # Errors
/// [`Error::NotPositiveSemidefinite`] if $λ_{min} < −\max(10⁻⁸, N·ε)·\max |λ|$.
pub(crate) fn psd_spectrum<T: Scalar>(
    argument: &'static str,
    values: &nalgebra::DVector<f64>,
    n: usize,
) -> Result<nalgebra::DVector<f64>> {
    let largest_magnitude = values.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let smallest = values.iter().copied().fold(f64::INFINITY, f64::min);
    if smallest < -indefinite_fraction::<T>(n) * largest_magnitude {
        return Err(Error::NotPositiveSemidefinite {
            argument,
            smallest_eigenvalue: smallest,
            largest_magnitude,
        });
    }
    let floor = null_space_fraction::<T>(n) * largest_magnitude;
    Ok(values.map(|v| if v < floor { 0.0 } else { v }))
}

/// Checks initial training outputs `f0_train`: finite, of the shape of the targets.
pub(crate) fn check_train_outputs<T: Scalar>(
    f0_train: &DMatrix<T>,
    targets: &DMatrix<T>,
) -> Result<()> {
    if f0_train.shape() != targets.shape() {
        return Err(Error::ShapeMismatch {
            argument: "f0_train",
            expected: format!("{} (the shape of y_train)", shape(targets)),
            found: shape(f0_train),
        });
    }
    check_finite("f0_train", f0_train)
}

/// Checks the inputs of a prediction on $M$ test points against targets $Y$ ($N × k$):
/// `f0_test` $M × k$ and `theta_test_train` $M × N$, both finite.
pub(crate) fn check_test_inputs<T: Scalar>(
    f0_test: &DMatrix<T>,
    theta_test_train: &DMatrix<T>,
    targets: &DMatrix<T>,
) -> Result<()> {
    let (n, k) = targets.shape();
    check_matrix(
        "f0_test",
        f0_test,
        None,
        Some((k, "the outputs, as y_train")),
    )?;
    check_matrix(
        "theta_test_train",
        theta_test_train,
        Some((f0_test.nrows(), "one per row of f0_test")),
        Some((n, "one per training point")),
    )
}

/// $e^{−ηtλ}$, the factor of the residual along an eigenvalue $λ ≥ 0$ after gradient flow
/// for time $t$ (`eta_t` = $ηt$): $1$ at $λ = 0$, also for $t = ∞$.
pub(crate) fn flow_decay<T: Scalar>(eta_t: T, lambda: T) -> T {
    if lambda == T::zero() {
        T::one()
    } else {
        (-(eta_t * lambda)).exp()
    }
}

/// $(1 − e^{−ηtλ})/λ = −\mathrm{expm1}(−ηtλ)/λ$, the eigenvalue of $Θ⁻¹(I − e^{−ηtΘ})$ along $λ ≥ 0$
/// (`eta_t` = $ηt$), without cancellation: $ηt$ at $λ = 0$, and $0$ there for $t = ∞$ (the
/// pseudo-inverse: directions without curvature never move).
pub(crate) fn flow_integral<T: Scalar>(eta_t: T, lambda: T) -> T {
    if lambda != T::zero() {
        -(-(eta_t * lambda)).exp_m1() / lambda
    } else if eta_t.is_finite() {
        eta_t
    } else {
        T::zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (1 − e^{−ηtλ})/λ against its series ηt − (ηt)²λ/2 + (ηt)³λ²/6 for small λ,
    /// its limits at λ = 0 (ηt, and 0 for t = ∞) and 1/λ for t = ∞; e^{−ηtλ} keeps
    /// directions with λ = 0 fixed at any time.
    #[test]
    #[allow(clippy::float_cmp, reason = "the limits are exact")]
    fn flow_functions_match_their_limits() {
        let eta_t = 2.5_f64;
        for lambda in [1e-12, 1e-8, 1e-5] {
            let series =
                eta_t - eta_t * eta_t * lambda / 2.0 + eta_t.powi(3) * lambda * lambda / 6.0;
            assert!((flow_integral(eta_t, lambda) - series).abs() <= 1e-15 * eta_t);
        }
        assert_eq!(flow_integral(eta_t, 0.0), eta_t);
        assert_eq!(flow_integral(f64::INFINITY, 0.0), 0.0);
        assert_eq!(flow_integral(f64::INFINITY, 4.0), 0.25);
        assert_eq!(flow_decay(f64::INFINITY, 0.0), 1.0);
        assert_eq!(flow_decay(f64::INFINITY, 1e-3), 0.0);
        assert!((flow_decay(eta_t, 0.4) - (-1.0_f64).exp()).abs() < 1e-16);
    }
}
