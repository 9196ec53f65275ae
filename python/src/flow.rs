//! Gradient-flow predictions: `GradientFlow`, `KernelRegression`, `InfiniteEnsemble`,
//! `KrylovFlow` (float64).
//!
//! Time units are the Rust crate's: the loss is the sum ½ Σ ‖f(x_i) − y_i‖², so
//! neural-tangents' time t with learning rate lr is η t = lr · t / y.size here
//! (``ntk.predict.gradient_descent_mse`` does that conversion).

use ntk::Horizon;
use numpy::PyArray2;
use pyo3::prelude::*;

use crate::convert::{
    checked, compute, count, matrix, matrix_out, stacked_out, step_counts, times, values_out,
    vector_out,
};

/// The closed-form gradient-flow (and gradient-descent) dynamics of a linearised model
/// on the loss ½ Σ_i ‖f(x_i) − y_i‖² with learning rate η, from one eigendecomposition
/// of the training kernel Θ:
///
/// f_t(X) = Y + exp(−ηtΘ)(f_0(X) − Y),
/// f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹(I − exp(−ηtΘ))(Y − f_0(X)).
///
/// Times `t` and step counts may be numbers or arrays of any shape: the results then
/// have those leading dimensions (one GEMM for all of them). t = inf is the limit.
/// neural-tangents' mean-loss time: η = learning_rate / y_train.size.
#[pyclass(module = "ntk", frozen)]
pub struct GradientFlow {
    inner: ntk::GradientFlow<f64>,
}

impl GradientFlow {
    fn shape(&self) -> (usize, usize) {
        self.inner.targets().shape()
    }

    fn train_at<'py>(
        &self,
        py: Python<'py>,
        horizons: Vec<Horizon<f64>>,
        lead: &[usize],
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let out = compute(py, || self.inner.train_at(&horizons, &f0))?;
        stacked_out(py, out, lead, self.shape())
    }

    fn test_at<'py>(
        &self,
        py: Python<'py>,
        horizons: Vec<Horizon<f64>>,
        lead: &[usize],
        (f0_train, f0_test, theta_test_train): (
            &Bound<'py, PyAny>,
            &Bound<'py, PyAny>,
            &Bound<'py, PyAny>,
        ),
    ) -> PyResult<Bound<'py, PyAny>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let f0_test = matrix::<f64>(f0_test, "f0_test")?;
        let theta = matrix::<f64>(theta_test_train, "theta_test_train")?;
        let out = compute(py, || self.inner.test_at(&horizons, &f0, &f0_test, &theta))?;
        let shape = (f0_test.nrows(), self.shape().1);
        stacked_out(py, out, lead, shape)
    }

    fn loss_at<'py>(
        &self,
        py: Python<'py>,
        horizons: Vec<Horizon<f64>>,
        lead: &[usize],
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let out = compute(py, || self.inner.loss_at(&horizons, &f0))?;
        values_out(py, out, lead)
    }
}

fn time_horizons(t: &Bound<'_, PyAny>) -> PyResult<(Vec<Horizon<f64>>, Vec<usize>)> {
    let (ts, lead) = times(t, "t")?;
    Ok((Horizon::times(&ts), lead))
}

fn step_horizons(steps: &Bound<'_, PyAny>) -> PyResult<(Vec<Horizon<f64>>, Vec<usize>)> {
    let (s, lead) = step_counts(steps, "steps")?;
    Ok((Horizon::steps(&s), lead))
}

#[pymethods]
impl GradientFlow {
    /// Prepares the dynamics on the N × N training kernel `theta_train` with targets
    /// `y_train` (N × k) and learning rate `eta` (one eigendecomposition, O(N³)).
    #[new]
    fn new(
        py: Python<'_>,
        theta_train: &Bound<'_, PyAny>,
        y_train: &Bound<'_, PyAny>,
        eta: f64,
    ) -> PyResult<Self> {
        let theta = matrix::<f64>(theta_train, "theta_train")?;
        let y = matrix::<f64>(y_train, "y_train")?;
        Ok(GradientFlow {
            inner: compute(py, || ntk::GradientFlow::new(&theta, &y, eta))?,
        })
    }

    /// The learning rate η.
    #[getter]
    fn eta(&self) -> f64 {
        self.inner.eta()
    }

    /// The targets Y (N × k).
    #[getter]
    fn targets<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        matrix_out(py, self.inner.targets().clone())
    }

    /// The eigenvalues λ_1 ≥ ... ≥ λ_N ≥ 0 of Θ (those below N·ε·λ_max set to 0).
    #[getter]
    fn eigenvalues<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        vector_out(py, self.inner.eigenvalues().clone()).into_any()
    }

    /// The orthonormal eigenvectors of Θ, column i for eigenvalue i.
    #[getter]
    fn eigenvectors<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f64>> {
        matrix_out(py, self.inner.eigenvectors().clone())
    }

    /// The largest stable gradient-descent step 2/λ_max (in neural-tangents' units:
    /// 2 · y.size / λ_max).
    fn max_stable_learning_rate(&self) -> f64 {
        self.inner.max_stable_learning_rate()
    }

    /// f_t(X) = Y + exp(−ηtΘ)(f_0(X) − Y) at time(s) `t`: N × k, with t's shape in front.
    fn train<'py>(
        &self,
        py: Python<'py>,
        t: &Bound<'py, PyAny>,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (h, lead) = time_horizons(t)?;
        self.train_at(py, h, &lead, f0_train)
    }

    /// After `steps` gradient-descent steps (an integer or an array of them):
    /// Y + (I − ηΘ)^s (f_0(X) − Y).
    fn train_gd<'py>(
        &self,
        py: Python<'py>,
        steps: &Bound<'py, PyAny>,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (h, lead) = step_horizons(steps)?;
        self.train_at(py, h, &lead, f0_train)
    }

    /// f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹(I − exp(−ηtΘ))(Y − f_0(X)) on M test points at
    /// time(s) `t`: M × k, with t's shape in front. `theta_test_train` is Θ(x, X), M × N.
    fn test<'py>(
        &self,
        py: Python<'py>,
        t: &Bound<'py, PyAny>,
        f0_train: &Bound<'py, PyAny>,
        f0_test: &Bound<'py, PyAny>,
        theta_test_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (h, lead) = time_horizons(t)?;
        self.test_at(py, h, &lead, (f0_train, f0_test, theta_test_train))
    }

    /// The test outputs after `steps` gradient-descent steps.
    fn test_gd<'py>(
        &self,
        py: Python<'py>,
        steps: &Bound<'py, PyAny>,
        f0_train: &Bound<'py, PyAny>,
        f0_test: &Bound<'py, PyAny>,
        theta_test_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (h, lead) = step_horizons(steps)?;
        self.test_at(py, h, &lead, (f0_train, f0_test, theta_test_train))
    }

    /// The training loss ½‖f_t(X) − Y‖² at time(s) `t` (a float, or an array of t's shape).
    fn loss<'py>(
        &self,
        py: Python<'py>,
        t: &Bound<'py, PyAny>,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (h, lead) = time_horizons(t)?;
        self.loss_at(py, h, &lead, f0_train)
    }

    /// The training loss after `steps` gradient-descent steps.
    fn loss_gd<'py>(
        &self,
        py: Python<'py>,
        steps: &Bound<'py, PyAny>,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (h, lead) = step_horizons(steps)?;
        self.loss_at(py, h, &lead, f0_train)
    }

    /// The residual at time `t` in the eigenbasis of Θ: row i is
    /// v_iᵀ(f_t(X) − Y) = exp(−ηtλ_i) v_iᵀ(f_0(X) − Y), N × k (large λ learned first).
    fn residual_in_eigenbasis<'py>(
        &self,
        py: Python<'py>,
        t: f64,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let r = compute(py, || {
            self.inner.residual_in_eigenbasis(Horizon::Time(t), &f0)
        })?;
        Ok(matrix_out(py, r))
    }

    /// The residual after `steps` gradient-descent steps in the eigenbasis of Θ.
    fn residual_in_eigenbasis_gd<'py>(
        &self,
        py: Python<'py>,
        steps: i64,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let s = count(steps, "steps")?;
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let r = compute(py, || {
            self.inner.residual_in_eigenbasis(Horizon::Steps(s), &f0)
        })?;
        Ok(matrix_out(py, r))
    }

    fn __repr__(&self) -> String {
        let (n, k) = self.shape();
        format!("GradientFlow(N={n}, k={k}, eta={})", self.inner.eta())
    }
}

/// Kernel regression, the t → ∞ limit of gradient flow, through a Cholesky solve, with
/// an optional absolute ridge ρ = `diag_reg`:
/// f_∞(x) = f_0(x) + Θ(x, X)(Θ + ρI)⁻¹(Y − f_0(X)).
#[pyclass(module = "ntk", frozen)]
pub struct KernelRegression {
    inner: ntk::KernelRegression<f64>,
}

#[pymethods]
impl KernelRegression {
    /// Factors Θ + ρI (ρ = `diag_reg` ≥ 0, absolute) for the targets `y_train` (N × k).
    #[new]
    #[pyo3(signature = (theta_train, y_train, diag_reg=0.0))]
    fn new(
        py: Python<'_>,
        theta_train: &Bound<'_, PyAny>,
        y_train: &Bound<'_, PyAny>,
        diag_reg: f64,
    ) -> PyResult<Self> {
        let theta = matrix::<f64>(theta_train, "theta_train")?;
        let y = matrix::<f64>(y_train, "y_train")?;
        Ok(KernelRegression {
            inner: compute(py, || ntk::KernelRegression::new(&theta, &y, diag_reg))?,
        })
    }

    /// The ridge ρ.
    #[getter]
    fn diag_reg(&self) -> f64 {
        self.inner.diag_reg()
    }

    /// The training outputs at t = ∞: Y − ρ(Θ + ρI)⁻¹(Y − f_0(X)), N × k.
    fn train<'py>(
        &self,
        py: Python<'py>,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        Ok(matrix_out(py, compute(py, || self.inner.train(&f0))?))
    }

    /// The test outputs at t = ∞: f_0(x) + Θ(x, X)(Θ + ρI)⁻¹(Y − f_0(X)), M × k.
    fn test<'py>(
        &self,
        py: Python<'py>,
        f0_train: &Bound<'py, PyAny>,
        f0_test: &Bound<'py, PyAny>,
        theta_test_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let f0_test = matrix::<f64>(f0_test, "f0_test")?;
        let theta = matrix::<f64>(theta_test_train, "theta_test_train")?;
        let out = compute(py, || self.inner.test(&f0, &f0_test, &theta))?;
        Ok(matrix_out(py, out))
    }
}

/// A Gaussian over outputs: ``mean`` (M × k) and one ``covariance`` (M × M) shared by
/// the k outputs.
#[pyclass(module = "ntk", frozen, get_all)]
pub struct GaussianPrediction {
    /// The mean, M × k.
    mean: Py<PyArray2<f64>>,
    /// The covariance between the M points, M × M.
    covariance: Py<PyArray2<f64>>,
}

impl GaussianPrediction {
    fn new(py: Python<'_>, p: ntk::GaussianPrediction<f64>) -> Self {
        GaussianPrediction {
            mean: matrix_out(py, p.mean).unbind(),
            covariance: matrix_out(py, p.covariance).unbind(),
        }
    }
}

#[pymethods]
impl GaussianPrediction {
    fn __iter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let pair = (self.mean.clone_ref(py), self.covariance.clone_ref(py)).into_pyobject(py)?;
        Ok(pair.try_iter()?.into_any().unbind())
    }
}

/// The infinite ensemble of linearised networks trained by gradient flow: mean and
/// covariance of the outputs over random initialisations (neural-tangents'
/// ``predict.gradient_descent_mse_ensemble``, get='ntk'), from the NTK and NNGP kernels.
#[pyclass(module = "ntk", frozen)]
pub struct InfiniteEnsemble {
    inner: ntk::InfiniteEnsemble<f64>,
}

#[pymethods]
impl InfiniteEnsemble {
    /// From the train-train NTK Θ and NNGP K (N × N), targets `y_train` (N × k) and
    /// learning rate `eta`.
    #[new]
    fn new(
        py: Python<'_>,
        ntk_train: &Bound<'_, PyAny>,
        nngp_train: &Bound<'_, PyAny>,
        y_train: &Bound<'_, PyAny>,
        eta: f64,
    ) -> PyResult<Self> {
        let theta = matrix::<f64>(ntk_train, "ntk_train")?;
        let k = matrix::<f64>(nngp_train, "nngp_train")?;
        let y = matrix::<f64>(y_train, "y_train")?;
        Ok(InfiniteEnsemble {
            inner: compute(py, || ntk::InfiniteEnsemble::new(&theta, &k, &y, eta))?,
        })
    }

    /// The gradient flow on the NTK.
    #[getter]
    fn flow(&self) -> GradientFlow {
        GradientFlow {
            inner: self.inner.flow().clone(),
        }
    }

    /// Mean (I − exp(−ηtΘ))Y and covariance exp(−ηtΘ) K exp(−ηtΘ) on the training points.
    fn train(&self, py: Python<'_>, t: f64) -> PyResult<GaussianPrediction> {
        let p = compute(py, || self.inner.train(t))?;
        Ok(GaussianPrediction::new(py, p))
    }

    /// The mean on M test points at time t, from `ntk_test_train` = Θ(x, X) (M × N).
    fn test_mean<'py>(
        &self,
        py: Python<'py>,
        t: f64,
        ntk_test_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let theta = matrix::<f64>(ntk_test_train, "ntk_test_train")?;
        Ok(matrix_out(
            py,
            compute(py, || self.inner.test_mean(t, &theta))?,
        ))
    }

    /// Mean and covariance on M test points at time t, from Θ(x, X), K(x, X) (M × N) and
    /// K(x, x) (M × M).
    fn test(
        &self,
        py: Python<'_>,
        t: f64,
        ntk_test_train: &Bound<'_, PyAny>,
        nngp_test_train: &Bound<'_, PyAny>,
        nngp_test_test: &Bound<'_, PyAny>,
    ) -> PyResult<GaussianPrediction> {
        let a = matrix::<f64>(ntk_test_train, "ntk_test_train")?;
        let b = matrix::<f64>(nngp_test_train, "nngp_test_train")?;
        let c = matrix::<f64>(nngp_test_test, "nngp_test_test")?;
        let p = compute(py, || self.inner.test(t, &a, &b, &c))?;
        Ok(GaussianPrediction::new(py, p))
    }
}

/// Gradient-flow predictions by Lanczos iterations (no eigendecomposition): for large N
/// and a few times. Same formulas and units as GradientFlow.
#[pyclass(module = "ntk", frozen)]
pub struct KrylovFlow {
    inner: ntk::KrylovFlow<f64>,
}

#[pymethods]
impl KrylovFlow {
    /// The flow on `theta_train` (N × N) with targets `y_train` (N × k), learning rate `eta`.
    #[new]
    fn new(theta_train: &Bound<'_, PyAny>, y_train: &Bound<'_, PyAny>, eta: f64) -> PyResult<Self> {
        let theta = matrix::<f64>(theta_train, "theta_train")?;
        let y = matrix::<f64>(y_train, "y_train")?;
        Ok(KrylovFlow {
            inner: checked(ntk::KrylovFlow::new(&theta, &y, eta))?,
        })
    }

    /// The same with relative tolerance `tolerance` for the Lanczos iterations.
    fn tolerance(&self, tolerance: f64) -> PyResult<Self> {
        Ok(KrylovFlow {
            inner: checked(self.inner.clone().tolerance(tolerance))?,
        })
    }

    /// The same with at most `max_dimension` Lanczos vectors.
    fn max_dimension(&self, max_dimension: i64) -> PyResult<Self> {
        let m = count(max_dimension, "max_dimension")?;
        Ok(KrylovFlow {
            inner: checked(self.inner.clone().max_dimension(m))?,
        })
    }

    /// The training outputs at time t, N × k.
    fn train<'py>(
        &self,
        py: Python<'py>,
        t: f64,
        f0_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        Ok(matrix_out(py, compute(py, || self.inner.train(t, &f0))?))
    }

    /// The test outputs at time t, M × k.
    fn test<'py>(
        &self,
        py: Python<'py>,
        t: f64,
        f0_train: &Bound<'py, PyAny>,
        f0_test: &Bound<'py, PyAny>,
        theta_test_train: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let f0 = matrix::<f64>(f0_train, "f0_train")?;
        let f0_test = matrix::<f64>(f0_test, "f0_test")?;
        let theta = matrix::<f64>(theta_test_train, "theta_test_train")?;
        let out = compute(py, || self.inner.test(t, &f0, &f0_test, &theta))?;
        Ok(matrix_out(py, out))
    }
}
