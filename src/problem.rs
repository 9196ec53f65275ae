//! The training problem of the linearised dynamics, checked once for every solver
//! ([`GradientFlow`](crate::GradientFlow), [`KrylovFlow`](crate::KrylovFlow),
//! [`KernelRegression`](crate::KernelRegression)): the kernel Θ on the N training
//! points and the targets Y (N × k); the checks of what predictions take; and the two
//! spectral functions of gradient flow that every solver applies to Θ.

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{
    Error, Result, check_cols, check_finite, check_rows, check_symmetric_kernel, shape,
};

/// A checked training problem: Θ (N × N, finite, symmetric) and Y (N × k, finite).
#[derive(Clone, Debug)]
pub(crate) struct TrainingProblem<T: Scalar> {
    /// Θ in f64, where the factorizations and the Lanczos process run.
    pub(crate) theta: DMatrix<f64>,
    /// Y, N × k.
    pub(crate) targets: DMatrix<T>,
}

impl<T: Scalar> TrainingProblem<T> {
    /// Checks `theta_train` (square, finite, symmetric) and `y_train` (finite, one row
    /// per training point).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`], [`Error::NonFinite`] or [`Error::NotSymmetric`]
    /// naming the argument.
    pub(crate) fn new(theta_train: &DMatrix<T>, y_train: &DMatrix<T>) -> Result<Self> {
        check_symmetric_kernel("theta_train", theta_train)?;
        let n = theta_train.nrows();
        check_rows("y_train", y_train, n, "one per row of theta_train")?;
        check_finite("y_train", y_train)?;
        Ok(TrainingProblem {
            theta: theta_train.map(|v| v.to_f64()),
            targets: y_train.clone(),
        })
    }
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

/// Checks the inputs of a prediction on M test points against targets Y (N × k):
/// `f0_test` M × k and `theta_test_train` M × N, both finite.
pub(crate) fn check_test_inputs<T: Scalar>(
    f0_test: &DMatrix<T>,
    theta_test_train: &DMatrix<T>,
    targets: &DMatrix<T>,
) -> Result<()> {
    let (n, k) = targets.shape();
    check_cols("f0_test", f0_test, k, "the outputs, as y_train")?;
    check_finite("f0_test", f0_test)?;
    check_rows(
        "theta_test_train",
        theta_test_train,
        f0_test.nrows(),
        "one per row of f0_test",
    )?;
    check_cols(
        "theta_test_train",
        theta_test_train,
        n,
        "one per training point",
    )?;
    check_finite("theta_test_train", theta_test_train)
}

/// e^{−ηtλ}, the factor of the residual along an eigenvalue λ ≥ 0 after gradient flow
/// for time t (`eta_t` = ηt): 1 at λ = 0, also for t = ∞.
pub(crate) fn flow_decay<T: Scalar>(eta_t: T, lambda: T) -> T {
    if lambda == T::zero() {
        T::one()
    } else {
        (-(eta_t * lambda)).exp()
    }
}

/// (1 − e^{−ηtλ})/λ = −expm1(−ηtλ)/λ, the eigenvalue of Θ⁻¹(I − e^{−ηtΘ}) along λ ≥ 0
/// (`eta_t` = ηt), without cancellation: ηt at λ = 0, and 0 there for t = ∞ (the
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
