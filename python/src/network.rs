//! Finite networks (`Mlp`, `ProgramNetwork`, both a `Network`) and their empirical
//! kernels.

use ntk::nalgebra::DMatrix;
use ntk::{NtkModel, ProgramNetwork as RustProgramNetwork};
use pyo3::prelude::*;

use crate::convert::{
    Elem, checked, compute, count, matrix, matrix_out, sample_range, vector, vector_out,
};
use crate::program::Program;
use crate::spec::MlpSpec;

/// A network's parameters in float32 or float64.
pub enum Model {
    /// An MLP in float32.
    Mlp32(ntk::Mlp<f32>),
    /// An MLP in float64.
    Mlp64(ntk::Mlp<f64>),
    /// A program's network in float32.
    Program32(RustProgramNetwork<f32>),
    /// A program's network in float64.
    Program64(RustProgramNetwork<f64>),
}

/// Runs `$body` with `$m` bound to the model and `$t` to its scalar type.
macro_rules! with_model {
    ($model:expr, |$m:ident, $t:ident| $body:expr) => {
        match $model {
            $crate::network::Model::Mlp32($m) => {
                #[allow(dead_code)]
                type $t = f32;
                $body
            }
            $crate::network::Model::Mlp64($m) => {
                #[allow(dead_code)]
                type $t = f64;
                $body
            }
            $crate::network::Model::Program32($m) => {
                #[allow(dead_code)]
                type $t = f32;
                $body
            }
            $crate::network::Model::Program64($m) => {
                #[allow(dead_code)]
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use with_model;

/// A finite network: its parameters, forward pass, Jacobian and per-layer kernels. Made
/// by ``MlpSpec.init`` (an ``Mlp``) or ``Program.init`` (a ``ProgramNetwork``), in float64
/// or float32; every input is converted to that dtype and every result has it.
#[pyclass(module = "ntk", subclass)]
pub struct Network {
    pub model: Model,
}

impl Network {
    /// A network holding `model`.
    pub fn new(model: Model) -> Self {
        Network { model }
    }
}

/// `Py<Mlp>` for an MLP model.
pub fn new_mlp(py: Python<'_>, net: Network) -> PyResult<Py<Mlp>> {
    Py::new(py, PyClassInitializer::from(net).add_subclass(Mlp))
}

/// `Py<ProgramNetwork>` for a program's model.
pub fn new_program_network(py: Python<'_>, net: Network) -> PyResult<Py<ProgramNetwork>> {
    Py::new(
        py,
        PyClassInitializer::from(net).add_subclass(ProgramNetwork),
    )
}

/// One parameter group's share of a kernel: ``weights`` (its weight term) and ``bias``
/// (its bias term, or None); ``total()`` is their sum.
#[pyclass(module = "ntk", frozen)]
pub struct GroupKernel {
    /// The weight term, N1 × N2.
    #[pyo3(get)]
    weights: Py<PyAny>,
    /// The bias term, N1 × N2, or None.
    #[pyo3(get)]
    bias: Option<Py<PyAny>>,
}

impl GroupKernel {
    /// The Python list of `kernels`.
    pub fn list<T: Elem>(py: Python<'_>, kernels: Vec<ntk::GroupKernel<T>>) -> PyResult<Vec<Self>> {
        Ok(kernels
            .into_iter()
            .map(|k| GroupKernel {
                weights: matrix_out(py, k.weights).into_any().unbind(),
                bias: k.bias.map(|b| matrix_out(py, b).into_any().unbind()),
            })
            .collect())
    }
}

#[pymethods]
impl GroupKernel {
    /// ``weights + bias`` (``weights`` without a bias).
    fn total(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let w = self.weights.bind(py);
        match &self.bias {
            None => Ok(w.call_method0("copy")?.unbind()),
            Some(b) => Ok(w.add(b.bind(py))?.unbind()),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let shape = self.weights.bind(py).getattr("shape")?;
        Ok(format!(
            "GroupKernel(shape={}, bias={})",
            shape.str()?,
            if self.bias.is_some() { "True" } else { "False" }
        ))
    }
}

/// `x1` and `x2` (None: `x1`) as matrices of `T`.
pub fn pair<T: Elem>(
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<(DMatrix<T>, Option<DMatrix<T>>)> {
    let a = matrix::<T>(x1, "x1")?;
    let b = x2.map(|x| matrix::<T>(x, "x2")).transpose()?;
    Ok((a, b))
}

fn group_kernels<T: Elem, M: NtkModel<T>>(
    py: Python<'_>,
    m: &M,
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<Vec<GroupKernel>> {
    let (a, b) = pair::<T>(x1, x2)?;
    let kernels = compute(py, || m.group_kernels(&a, b.as_ref().unwrap_or(&a)))?;
    GroupKernel::list(py, kernels)
}

#[pymethods]
impl Network {
    /// The scalar type of the parameters, inputs and results (numpy.float32 or
    /// numpy.float64).
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let name = with_model!(&self.model, |_m, T| <T as Elem>::NAME);
        py.import("numpy")?.call_method1("dtype", (name,))
    }

    /// The input dimension d.
    #[getter]
    fn input_dim(&self) -> usize {
        with_model!(&self.model, |m, T| NtkModel::<T>::input_dim(m))
    }

    /// The number of outputs k.
    #[getter]
    fn output_dim(&self) -> usize {
        with_model!(&self.model, |m, T| NtkModel::<T>::output_dim(m))
    }

    /// The number of parameters P.
    #[getter]
    fn parameter_count(&self) -> usize {
        with_model!(&self.model, |m, T| NtkModel::<T>::parameter_count(m))
    }

    /// The parameter vector (length P; for an MLP layer by layer, W row-major then b).
    fn parameters(&self, py: Python<'_>) -> Py<PyAny> {
        with_model!(&self.model, |m, T| vector_out(
            py,
            NtkModel::<T>::parameters(m)
        )
        .into_any()
        .unbind())
    }

    /// Replaces the parameters by `params` (a 1-D array-like of length P).
    fn set_parameters(&mut self, params: &Bound<'_, PyAny>) -> PyResult<()> {
        with_model!(&mut self.model, |m, T| {
            let p = vector::<T>(params, "params")?;
            checked(m.set_parameters(&p))
        })
    }

    /// The outputs f(x): N × k for inputs x (N × d, one row per sample).
    fn forward(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        with_model!(&self.model, |m, T| {
            let x = matrix::<T>(x, "x")?;
            let f = compute(py, || m.forward(&x))?;
            Ok(matrix_out(py, f).into_any().unbind())
        })
    }

    /// The Jacobian ∂f/∂θ: (N·k) × P, row i·k + c holding ∂f_c(x_i)/∂θ (materialised:
    /// the explicit reference, not how kernels are computed).
    fn jacobian(&self, py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        with_model!(&self.model, |m, T| {
            let x = matrix::<T>(x, "x")?;
            let j = compute(py, || m.jacobian(&x))?;
            Ok(matrix_out(py, j).into_any().unbind())
        })
    }

    /// The vector–Jacobian product Jᵀ r (length P) for a cotangent r of shape N × k:
    /// with r = f(x) − y, the gradient of ½‖f(x) − y‖².
    fn vjp(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        cotangent: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        with_model!(&self.model, |m, T| {
            let x = matrix::<T>(x, "x")?;
            let r = matrix::<T>(cotangent, "cotangent")?;
            let g = compute(py, || m.vjp(&x, &r))?;
            Ok(vector_out(py, g).into_any().unbind())
        })
    }

    /// Each parameter group's share of the empirical NTK between x1 and x2 (None: x1),
    /// averaged over outputs: a list of GroupKernel summing to ``empirical_ntk``.
    #[pyo3(signature = (x1, x2=None))]
    fn group_kernels(
        &self,
        py: Python<'_>,
        x1: &Bound<'_, PyAny>,
        x2: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<GroupKernel>> {
        with_model!(&self.model, |m, T| group_kernels::<T, _>(py, m, x1, x2))
    }

    fn __repr__(&self) -> String {
        let (kind, name) = match &self.model {
            Model::Mlp32(_) => ("Mlp", "float32"),
            Model::Mlp64(_) => ("Mlp", "float64"),
            Model::Program32(_) => ("ProgramNetwork", "float32"),
            Model::Program64(_) => ("ProgramNetwork", "float64"),
        };
        let (d, k, p) = with_model!(&self.model, |m, T| (
            NtkModel::<T>::input_dim(m),
            NtkModel::<T>::output_dim(m),
            NtkModel::<T>::parameter_count(m)
        ));
        format!("{kind}(input_dim={d}, output_dim={k}, parameters={p}, dtype={name})")
    }
}

/// A finite MLP (``MlpSpec.init``); a Network.
#[pyclass(module = "ntk", extends = Network)]
pub struct Mlp;

#[pymethods]
impl Mlp {
    /// The MLP of `spec` with the parameters `params` (1-D, length P, layer by layer, W
    /// row-major then b), in params' dtype if it is float32, else float64.
    #[staticmethod]
    fn from_parameters(
        py: Python<'_>,
        spec: PyRef<'_, MlpSpec>,
        params: &Bound<'_, PyAny>,
    ) -> PyResult<Py<Mlp>> {
        let f32 = params.cast::<numpy::PyArrayDyn<f32>>().is_ok();
        let model = if f32 {
            let p = vector::<f32>(params, "params")?;
            Model::Mlp32(checked(ntk::Mlp::from_parameters(&spec.inner, &p))?)
        } else {
            let p = vector::<f64>(params, "params")?;
            Model::Mlp64(checked(ntk::Mlp::from_parameters(&spec.inner, &p))?)
        };
        new_mlp(py, Network::new(model))
    }

    /// The architecture.
    #[getter]
    fn spec(slf: PyRef<'_, Self>) -> MlpSpec {
        let inner = match &slf.as_super().model {
            Model::Mlp32(m) => m.spec().clone(),
            Model::Mlp64(m) => m.spec().clone(),
            _ => unreachable!("an Mlp holds an MLP"),
        };
        MlpSpec { inner }
    }

    /// The number of Dense layers L (hidden layers + the output layer).
    #[getter]
    fn depth(slf: PyRef<'_, Self>) -> usize {
        match &slf.as_super().model {
            Model::Mlp32(m) => m.depth(),
            Model::Mlp64(m) => m.depth(),
            _ => unreachable!("an Mlp holds an MLP"),
        }
    }

    /// W of layer `layer` (n_out × n_in), as stored.
    fn weights(slf: PyRef<'_, Self>, py: Python<'_>, layer: i64) -> PyResult<Py<PyAny>> {
        let l = count(layer, "layer")?;
        Ok(match &slf.as_super().model {
            Model::Mlp32(m) => matrix_out(py, checked(m.weights(l))?).into_any().unbind(),
            Model::Mlp64(m) => matrix_out(py, checked(m.weights(l))?).into_any().unbind(),
            _ => unreachable!("an Mlp holds an MLP"),
        })
    }

    /// b of layer `layer`, as stored (None without biases).
    fn bias(slf: PyRef<'_, Self>, py: Python<'_>, layer: i64) -> PyResult<Option<Py<PyAny>>> {
        let l = count(layer, "layer")?;
        Ok(match &slf.as_super().model {
            Model::Mlp32(m) => checked(m.bias(l))?.map(|b| vector_out(py, b).into_any().unbind()),
            Model::Mlp64(m) => checked(m.bias(l))?.map(|b| vector_out(py, b).into_any().unbind()),
            _ => unreachable!("an Mlp holds an MLP"),
        })
    }
}

/// The finite network of a Program at a hidden width (``Program.init``); a Network.
#[pyclass(module = "ntk", extends = Network)]
pub struct ProgramNetwork;

#[pymethods]
impl ProgramNetwork {
    /// The program (a copy; its handles are those of the original).
    #[getter]
    fn program(slf: PyRef<'_, Self>) -> Program {
        let inner = match &slf.as_super().model {
            Model::Program32(m) => m.program().clone(),
            Model::Program64(m) => m.program().clone(),
            _ => unreachable!("a ProgramNetwork holds a program's network"),
        };
        Program { inner }
    }

    /// The hidden width n.
    #[getter]
    fn width(slf: PyRef<'_, Self>) -> usize {
        match &slf.as_super().model {
            Model::Program32(m) => m.width(),
            Model::Program64(m) => m.width(),
            _ => unreachable!("a ProgramNetwork holds a program's network"),
        }
    }
}

fn empirical<T: Elem, M: NtkModel<T>>(
    py: Python<'_>,
    m: &M,
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
    full: bool,
) -> PyResult<Py<PyAny>> {
    let (a, b) = pair::<T>(x1, x2)?;
    let b = b.as_ref().unwrap_or(&a);
    let theta = compute(py, || {
        if full {
            ntk::empirical_ntk_full(m, &a, b)
        } else {
            ntk::empirical_ntk(m, &a, b)
        }
    })?;
    Ok(matrix_out(py, theta).into_any().unbind())
}

/// The empirical NTK Θ(x1, x2) = ⟨∇_θ f(x1), ∇_θ f(x2)⟩ of `net`, averaged over its k
/// outputs: N1 × N2 in the network's dtype (x2=None: x2 = x1, only half computed).
///
/// Computed exactly from per-layer Gram matrices, never the Jacobian. neural-tangents'
/// ``empirical_ntk_fn(f, trace_axes=(-1,))(x1, x2, params)`` on the same network.
#[pyfunction]
#[pyo3(signature = (net, x1, x2=None))]
pub fn empirical_ntk(
    py: Python<'_>,
    net: PyRef<'_, Network>,
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    with_model!(&net.model, |m, T| empirical::<T, _>(py, m, x1, x2, false))
}

/// The full empirical NTK with output blocks: (N1·k) × (N2·k), entry (i·k + c, j·k + c')
/// = ∇_θ f_c(x1_i) · ∇_θ f_c'(x2_j) (neural-tangents' ``trace_axes=()``, sample-major).
#[pyfunction]
#[pyo3(signature = (net, x1, x2=None))]
pub fn empirical_ntk_full(
    py: Python<'_>,
    net: PyRef<'_, Network>,
    x1: &Bound<'_, PyAny>,
    x2: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    with_model!(&net.model, |m, T| empirical::<T, _>(py, m, x1, x2, true))
}

/// The block Θ(x1[rows], x2[cols]) of ``empirical_ntk``, computed from those samples
/// only (tiles of a kernel too large for one machine). `rows` and `cols` are ranges,
/// slices or (start, stop) pairs.
#[pyfunction]
pub fn empirical_ntk_block(
    py: Python<'_>,
    net: PyRef<'_, Network>,
    x1: &Bound<'_, PyAny>,
    x2: &Bound<'_, PyAny>,
    rows: &Bound<'_, PyAny>,
    cols: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    with_model!(&net.model, |m, T| {
        let a = matrix::<T>(x1, "x1")?;
        let b = matrix::<T>(x2, "x2")?;
        let rows = sample_range(rows, "rows", a.nrows())?;
        let cols = sample_range(cols, "cols", b.nrows())?;
        let theta = compute(py, || ntk::empirical_ntk_block(m, &a, &b, rows, cols))?;
        Ok(matrix_out(py, theta).into_any().unbind())
    })
}
