//! [`InfiniteEnsemble`]: the outputs of linearised networks trained by gradient flow,
//! as a Gaussian over their random initialisations.

use nalgebra::DMatrix;

use super::problem::psd_spectrum;
use super::{GradientFlow, Horizon};
use crate::Scalar;
use crate::error::{Result, check_matrix, check_rows, check_symmetric_kernel, check_time};
use crate::factor::symmetric_eigenvalues;

/// A Gaussian over outputs: mean $M × k$ and one $M × M$ covariance shared by the $k$
/// (independent) outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianPrediction<T: Scalar> {
    /// The mean, $M × k$.
    pub mean: DMatrix<T>,
    /// The covariance between the $M$ points, $M × M$ (the same for every output).
    pub covariance: DMatrix<T>,
}

/// The infinite ensemble of linearised networks trained by gradient flow: outputs
/// averaged over random initialisations (Lee et al. 2019, §2.3; neural-tangents'
/// `predict.gradient_descent_mse_ensemble`, `get='ntk'`).
///
/// At initialisation $f_0$ is a centred Gaussian process with the NNGP kernel $K$; the
/// flow with NTK $Θ$ is linear in $f_0$, so at time $t$ the outputs are Gaussian with, on
/// test points ($Θ_\* = Θ(x, X)$, $K_\* = K(x, X)$, $K_{\*\*} = K(x, x)$,
/// $A_t = Θ⁻¹(I − e^{−ηtΘ})$),
///
/// $$\text{mean} = Θ_\* A_t Y,$$
///
/// $$\text{cov} = K_{\*\*} − Θ_\* A_t K_\*ᵀ − K_\* A_t Θ_\*ᵀ + Θ_\* A_t K A_t Θ_\*ᵀ,$$
///
/// and on the training points $\text{mean} = (I − e^{−ηtΘ}) Y$, $\text{cov} = e^{−ηtΘ} K e^{−ηtΘ}$.
/// The kernels are matrices, so any source works: the infinite-width kernels, or
/// Monte Carlo estimates. Time units as for [`GradientFlow`].
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::InfiniteEnsemble;
///
/// # fn main() -> Result<(), ntk::Error> {
/// let ntk = DMatrix::from_row_slice(2, 2, &[2.0, 0.6, 0.6, 1.5]);
/// let nngp = DMatrix::from_row_slice(2, 2, &[1.0, 0.3, 0.3, 0.8]);
/// let y = DMatrix::from_column_slice(2, 1, &[1.0, -1.0]);
/// let ensemble = InfiniteEnsemble::new(&ntk, &nngp, &y, 1.0)?;
/// let at_start = ensemble.train(0.0)?;
/// assert!((at_start.covariance - &nngp).norm() < 1e-14); // f_0 ~ N(0, K)
/// let late = ensemble.train(100.0)?;
/// assert!((late.mean - &y).norm() < 1e-12 && late.covariance.norm() < 1e-12);
/// # Ok(())
/// # }
/// ```
///
/// With the infinite-width kernels of an architecture:
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{infinite_width, Activation, InfiniteEnsemble, MlpSpec};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(2).hidden(1, Activation::Erf).bias_std(0.1);
/// let x = DMatrix::from_fn(6, 2, |i, j| ((i + 2 * j) as f64).sin());
/// let x_test = DMatrix::from_fn(2, 2, |i, j| ((3 * i + j) as f64).cos());
/// let y = DMatrix::from_fn(6, 1, |i, _| (i as f64).cos());
/// let train = infinite_width(&spec, &x, &x)?;
/// let cross = infinite_width(&spec, &x_test, &x)?;
/// let test = infinite_width(&spec, &x_test, &x_test)?;
///
/// let ensemble = InfiniteEnsemble::new(&train.ntk, &train.nngp, &y, 1.0)?;
/// let p = ensemble.test(5.0, &cross.ntk, &cross.nngp, &test.nngp)?;
/// assert_eq!((p.mean.shape(), p.covariance.shape()), ((2, 1), (2, 2)));
/// assert!(p.covariance[(0, 0)] < test.nngp[(0, 0)]); // training reduces the spread
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct InfiniteEnsemble<T: Scalar> {
    flow: GradientFlow<T>,
    nngp_train: DMatrix<T>,
}

impl<T: Scalar> InfiniteEnsemble<T> {
    /// Prepares the ensemble from the train-train NTK $Θ$ and NNGP $K$ ($N × N$), targets
    /// `y_train` ($N × k$) and learning rate `eta` (one eigendecomposition of $Θ$, and the
    /// eigenvalues of $K$ to check that it is a covariance).
    ///
    /// # Errors
    /// As [`GradientFlow::new`]; the same checks (symmetric, positive semi-definite)
    /// apply to `nngp_train`, which must also be $N × N$.
    pub fn new(
        ntk_train: &DMatrix<T>,
        nngp_train: &DMatrix<T>,
        y_train: &DMatrix<T>,
        eta: T,
    ) -> Result<Self> {
        let flow = GradientFlow::new(ntk_train, y_train, eta)?;
        check_symmetric_kernel("nngp_train", nngp_train)?;
        check_rows(
            "nngp_train",
            nngp_train,
            ntk_train.nrows(),
            "as many as ntk_train",
        )?;
        // A covariance: positive semi-definite, or the predicted variances go negative.
        let values = symmetric_eigenvalues(&nngp_train.map(|v| v.to_f64()))?;
        psd_spectrum::<T>("nngp_train", &values, values.len())?;
        Ok(InfiniteEnsemble {
            flow,
            nngp_train: nngp_train.clone(),
        })
    }

    /// The gradient flow on the NTK.
    #[must_use]
    pub fn flow(&self) -> &GradientFlow<T> {
        &self.flow
    }

    /// $V \mathrm{diag}(g(λ)) Vᵀ$ for the horizon `h`.
    fn spectral(
        &self,
        h: Horizon<T>,
        g: impl Fn(&GradientFlow<T>, Horizon<T>, T) -> T,
    ) -> DMatrix<T> {
        let flow = &self.flow;
        let v = &flow.eigenvectors;
        let mut scaled = v.clone();
        for (j, mut col) in scaled.column_iter_mut().enumerate() {
            col *= g(flow, h, flow.eigenvalues[j]);
        }
        scaled * v.transpose()
    }

    /// Mean and covariance on the training points at time `t`:
    /// $(I − e^{−ηtΘ})Y$ and $e^{−ηtΘ} K e^{−ηtΘ}$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN.
    ///
    /// [`Error::InvalidParameter`]: crate::Error::InvalidParameter
    pub fn train(&self, t: T) -> Result<GaussianPrediction<T>> {
        check_time("t", t.to_f64())?;
        let decay = self.spectral(Horizon::Time(t), GradientFlow::decay);
        let y = &self.flow.targets;
        let mean = y - &decay * y;
        let covariance = &decay * &self.nngp_train * &decay;
        Ok(GaussianPrediction { mean, covariance })
    }

    /// The mean on $M$ test points at time `t`, $Θ_\* A_t Y$ ($M × k$), from
    /// `ntk_test_train` = $Θ(x, X)$ ($M × N$). $O(N²k + MNk)$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN; [`Error::ShapeMismatch`]
    /// or [`Error::NonFinite`] if `ntk_test_train` is not a finite $M × N$ matrix.
    ///
    /// [`Error::InvalidParameter`]: crate::Error::InvalidParameter
    /// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
    /// [`Error::NonFinite`]: crate::Error::NonFinite
    pub fn test_mean(&self, t: T, ntk_test_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        let zeros = DMatrix::zeros(ntk_test_train.nrows(), self.flow.k());
        let f0 = DMatrix::zeros(self.flow.n(), self.flow.k());
        self.flow.test(t, &f0, &zeros, ntk_test_train)
    }

    /// Mean and covariance on $M$ test points at time `t`, from the NTK `ntk_test_train`
    /// = $Θ(x, X)$ ($M × N$) and the NNGP kernels `nngp_test_train` = $K(x, X)$ ($M × N$) and
    /// `nngp_test_test` = $K(x, x)$ ($M × M$). $O(MN² + M²N)$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN; [`Error::ShapeMismatch`]
    /// if the kernels do not have the shapes above; [`Error::NonFinite`] on NaN or
    /// infinite entries; [`Error::NotSymmetric`] if `nngp_test_test` is not symmetric.
    ///
    /// [`Error::InvalidParameter`]: crate::Error::InvalidParameter
    /// [`Error::ShapeMismatch`]: crate::Error::ShapeMismatch
    /// [`Error::NonFinite`]: crate::Error::NonFinite
    /// [`Error::NotSymmetric`]: crate::Error::NotSymmetric
    pub fn test(
        &self,
        t: T,
        ntk_test_train: &DMatrix<T>,
        nngp_test_train: &DMatrix<T>,
        nngp_test_test: &DMatrix<T>,
    ) -> Result<GaussianPrediction<T>> {
        check_time("t", t.to_f64())?;
        let n = Some((self.flow.n(), "one per training point"));
        let m = ntk_test_train.nrows();
        check_matrix("ntk_test_train", ntk_test_train, None, n)?;
        let m_rows = Some((m, "as many as ntk_test_train"));
        check_matrix("nngp_test_train", nngp_test_train, m_rows, n)?;
        check_symmetric_kernel("nngp_test_test", nngp_test_test)?;
        check_rows(
            "nngp_test_test",
            nngp_test_test,
            m,
            "as many as ntk_test_train",
        )?;
        let a = self.spectral(Horizon::Time(t), GradientFlow::integral);
        // Θ_* A_t: M × N.
        let ta = ntk_test_train * a;
        let mean = &ta * &self.flow.targets;
        let cross = &ta * nngp_test_train.transpose();
        let mut covariance =
            nngp_test_test - &cross - cross.transpose() + &ta * &self.nngp_train * ta.transpose();
        // Symmetrise the round-off.
        covariance = (&covariance + covariance.transpose()) * T::from_f64_lossy(0.5);
        Ok(GaussianPrediction { mean, covariance })
    }
}
