//! Infinite-width kernels of an `MlpSpec` or a `Program`.

use ntk::nalgebra::DMatrix;
use numpy::PyArray2;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::convert::{checked, compute, count, matrix, matrix_out, sample_range};
use crate::network::{GroupKernel, pair};
use crate::program::Program;
use crate::spec::MlpSpec;

/// An architecture argument: an `MlpSpec` or a `Program`.
pub enum Arch<'py> {
    /// An MLP.
    Mlp(PyRef<'py, MlpSpec>),
    /// A program.
    Program(PyRef<'py, Program>),
}

impl<'py> Arch<'py> {
    /// `obj` as an architecture, or a `TypeError`.
    pub fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.extract::<PyRef<'py, MlpSpec>>() {
            return Ok(Arch::Mlp(s));
        }
        if let Ok(p) = obj.extract::<PyRef<'py, Program>>() {
            return Ok(Arch::Program(p));
        }
        Err(PyTypeError::new_err(format!(
            "`architecture` must be an MlpSpec or a Program, got {}",
            obj.get_type().name()?
        )))
    }
}

/// Runs `$body` with `$a` bound to the Rust architecture (`&MlpSpec` or `&Program`).
macro_rules! with_arch {
    ($arch:expr, |$a:ident| $body:expr) => {
        match &$arch {
            $crate::infinite::Arch::Mlp(s) => {
                let $a = &s.inner;
                $body
            }
            $crate::infinite::Arch::Program(p) => {
                let $a = &p.inner;
                $body
            }
        }
    };
}
pub(crate) use with_arch;

/// The infinite-width kernels between two batches: ``nngp`` (Σ) and ``ntk`` (Θ̊), both
/// float64 arrays of shape N1 × N2 (per output). Unpacks as ``nngp, ntk = kernels``.
#[pyclass(module = "ntk", frozen)]
pub struct Kernels {
    /// The NNGP kernel Σ(x1_i, x2_j).
    #[pyo3(get)]
    nngp: Py<PyArray2<f64>>,
    /// The limiting NTK Θ̊(x1_i, x2_j).
    #[pyo3(get)]
    ntk: Py<PyArray2<f64>>,
}

impl Kernels {
    fn new(py: Python<'_>, k: ntk::Kernels<f64>) -> Self {
        Kernels {
            nngp: matrix_out(py, k.nngp).unbind(),
            ntk: matrix_out(py, k.ntk).unbind(),
        }
    }
}

#[pymethods]
impl Kernels {
    fn __iter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let pair = (self.nngp.clone_ref(py), self.ntk.clone_ref(py)).into_pyobject(py)?;
        Ok(pair.try_iter()?.into_any().unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let shape = self.nngp.bind(py).getattr("shape")?;
        Ok(format!("Kernels(nngp, ntk: shape {})", shape.str()?))
    }
}

/// `x1`, `x2` (None: `x1`) in float64.
fn inputs(
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<(DMatrix<f64>, Option<DMatrix<f64>>)> {
    pair::<f64>(x1, x2)
}

/// The NNGP kernel Σ and the infinite-width NTK Θ̊ of `architecture` (an MlpSpec or a
/// Program) between the rows of x1 (N1 × d) and x2 (N2 × d; None: x1, only half
/// computed). Returns a Kernels with float64 arrays ``nngp`` and ``ntk``, N1 × N2.
///
/// For an MLP, neural-tangents' analytic ``kernel_fn(x1, x2, ('nngp', 'ntk'))`` of
/// ``stax.serial(Dense, φ, ..., Dense)``.
#[pyfunction]
#[pyo3(signature = (architecture, x1, x2=None))]
pub fn infinite_width(
    py: Python<'_>,
    architecture: &Bound<'_, PyAny>,
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<Kernels> {
    let arch = Arch::extract(architecture)?;
    let (a, b) = inputs(x1, x2)?;
    let k = with_arch!(arch, |s| compute(py, || ntk::infinite_width(
        s,
        &a,
        b.as_ref().unwrap_or(&a)
    )))?;
    Ok(Kernels::new(py, k))
}

/// The block of ``infinite_width`` with rows `rows` of x1 and columns `cols` of x2
/// (ranges, slices or (start, stop) pairs), from those samples only.
#[pyfunction]
pub fn infinite_width_block(
    py: Python<'_>,
    architecture: &Bound<'_, PyAny>,
    x1: &Bound<'_, PyAny>,
    x2: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
    cols: &Bound<'_, PyAny>,
) -> PyResult<Kernels> {
    let arch = Arch::extract(architecture)?;
    let a = matrix::<f64>(x1, "x1")?;
    let b = matrix::<f64>(x2, "x2")?;
    let rows = sample_range(rows, "rows", a.nrows())?;
    let cols = sample_range(cols, "cols", b.nrows())?;
    let k = with_arch!(arch, |s| compute(py, || ntk::infinite_width_block(
        s, &a, &b, rows, cols
    )))?;
    Ok(Kernels::new(py, k))
}

/// Θ̊ split by parameter group (for an MLP: per Dense layer, weight and bias terms),
/// the infinite-width counterpart of ``Network.group_kernels``; they sum to
/// ``infinite_width(...).ntk``.
#[pyfunction]
#[pyo3(signature = (architecture, x1, x2=None))]
pub fn infinite_width_groups(
    py: Python<'_>,
    architecture: &Bound<'_, PyAny>,
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<GroupKernel>> {
    let arch = Arch::extract(architecture)?;
    let (a, b) = inputs(x1, x2)?;
    let layers = with_arch!(arch, |s| compute(py, || ntk::infinite_width_groups(
        s,
        &a,
        b.as_ref().unwrap_or(&a)
    )))?;
    GroupKernel::list(py, layers)
}

/// The infinite-width kernels of an architecture, prepared once (a program's recursion
/// is compiled on first use and reused), with the quadrature degree for activations
/// without a closed form.
#[pyclass(module = "ntk", frozen)]
pub struct InfiniteWidth {
    inner: ntk::InfiniteWidth,
}

#[pymethods]
impl InfiniteWidth {
    /// The kernels of `architecture` (an MlpSpec or a Program).
    #[new]
    fn new(architecture: &Bound<'_, PyAny>) -> PyResult<Self> {
        let arch = Arch::extract(architecture)?;
        let inner = with_arch!(arch, |s| checked(ntk::InfiniteWidth::new(s)))?;
        Ok(InfiniteWidth { inner })
    }

    /// The same with Gauss–Hermite rules of at most `degree` points for activations
    /// without a closed form (the accuracy is the same at every degree).
    fn quadrature_degree(&self, degree: i64) -> PyResult<Self> {
        let inner = self
            .inner
            .clone()
            .quadrature_degree(count(degree, "degree")?);
        Ok(InfiniteWidth {
            inner: checked(inner)?,
        })
    }

    /// Σ and Θ̊ between x1 and x2 (None: x1), as ``infinite_width``.
    #[pyo3(signature = (x1, x2=None))]
    fn kernels(
        &self,
        py: Python<'_>,
        x1: &Bound<'_, PyAny>,
        x2: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Kernels> {
        let (a, b) = inputs(x1, x2)?;
        let k = compute(py, || self.inner.kernels(&a, b.as_ref().unwrap_or(&a)))?;
        Ok(Kernels::new(py, k))
    }

    /// Θ̊ per parameter group, as ``infinite_width_groups``.
    #[pyo3(signature = (x1, x2=None))]
    fn group_kernels(
        &self,
        py: Python<'_>,
        x1: &Bound<'_, PyAny>,
        x2: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<GroupKernel>> {
        let (a, b) = inputs(x1, x2)?;
        let layers = compute(py, || {
            self.inner.group_kernels(&a, b.as_ref().unwrap_or(&a))
        })?;
        GroupKernel::list(py, layers)
    }

    /// The MLP, when the architecture is one (else None).
    #[getter]
    fn spec(&self) -> Option<MlpSpec> {
        self.inner.spec().map(|s| MlpSpec { inner: s.clone() })
    }

    /// The program, when the architecture is one (else None).
    #[getter]
    fn program(&self) -> Option<Program> {
        self.inner.program().map(|p| Program { inner: p.clone() })
    }
}

/// The relative NTK error of one width, over seeds.
#[pyclass(module = "ntk", frozen, get_all)]
pub struct WidthPoint {
    /// The hidden width n.
    width: usize,
    /// ‖Θ_n − Θ̊‖_F / ‖Θ̊‖_F for each seed.
    errors: Vec<f64>,
    /// Mean of the errors.
    mean: f64,
    /// Sample standard deviation of the errors.
    std: f64,
}

#[pymethods]
impl WidthPoint {
    fn __repr__(&self) -> String {
        format!(
            "WidthPoint(width={}, mean={:.4}, std={:.4})",
            self.width, self.mean, self.std
        )
    }
}

/// The result of ``width_convergence``: ``points`` (one per width) and the fitted power
/// law, mean error ≈ exp(intercept) · width^slope.
#[pyclass(module = "ntk", frozen, get_all)]
pub struct WidthStudy {
    /// One WidthPoint per width, in the order given.
    points: Vec<Py<WidthPoint>>,
    /// The least-squares log-log slope (theory: −1/2).
    slope: f64,
    /// The fit's intercept.
    intercept: f64,
}

#[pymethods]
impl WidthStudy {
    fn __repr__(&self) -> String {
        format!(
            "WidthStudy({} widths, slope={:.3}, intercept={:.3})",
            self.points.len(),
            self.slope,
            self.intercept
        )
    }
}

/// ‖Θ_n − Θ̊‖_F / ‖Θ̊‖_F for networks of each hidden width in `widths`, one per seed in
/// `seeds`, on the inputs x, with the log-log slope of the mean error (about −1/2).
#[pyfunction]
pub fn width_convergence(
    py: Python<'_>,
    architecture: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    widths: Vec<i64>,
    seeds: Vec<i128>,
) -> PyResult<WidthStudy> {
    let arch = Arch::extract(architecture)?;
    let x = matrix::<f64>(x, "x")?;
    let widths = widths
        .into_iter()
        .map(|w| count(w, "widths"))
        .collect::<PyResult<Vec<_>>>()?;
    let seeds = seeds
        .into_iter()
        .map(|s| crate::convert::seed(Some(s)))
        .collect::<PyResult<Vec<_>>>()?;
    let study = with_arch!(arch, |s| compute(py, || ntk::width_convergence(
        s, &x, &widths, &seeds
    )))?;
    let points = study
        .points
        .into_iter()
        .map(|p| {
            Py::new(
                py,
                WidthPoint {
                    width: p.width,
                    errors: p.errors,
                    mean: p.mean,
                    std: p.std,
                },
            )
        })
        .collect::<PyResult<_>>()?;
    Ok(WidthStudy {
        points,
        slope: study.slope,
        intercept: study.intercept,
    })
}
