//! `MlpSpec` and activations by name.

use ntk::{Activation, Parameterization};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::convert::{checked, compute, count, is_f32, seed};
use crate::network::{Model, Network, new_mlp};

/// The activation named `obj`: `"identity"`, `"relu"`, `"leaky_relu(0.1)"`, `"abs"`,
/// `"erf"`, `"tanh"`, `"sin"`, `"gelu"` (exact), `"sigmoid"` or `"softplus"`.
pub fn activation(obj: &Bound<'_, PyAny>) -> PyResult<Activation> {
    let Ok(name) = obj.extract::<String>() else {
        return Err(PyTypeError::new_err(format!(
            "an activation is a name such as 'relu' or 'leaky_relu(0.1)', got {}",
            obj.get_type().name()?
        )));
    };
    let key: String = name
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    let unknown = || {
        PyValueError::new_err(format!(
            "unknown activation '{name}': expected one of 'identity', 'relu', \
             'leaky_relu(slope)', 'abs', 'erf', 'tanh', 'sin', 'gelu', 'sigmoid', 'softplus'"
        ))
    };
    let act = match key.as_str() {
        "identity" | "linear" => Activation::Identity,
        "relu" => Activation::Relu,
        "abs" => Activation::Abs,
        "erf" => Activation::Erf,
        "tanh" => Activation::Tanh,
        "sin" => Activation::Sin,
        "gelu" => Activation::Gelu,
        "sigmoid" => Activation::Sigmoid,
        "softplus" => Activation::Softplus,
        "leaky_relu" | "leakyrelu" => {
            return Err(PyValueError::new_err(format!(
                "activation '{name}' needs its slope, e.g. 'leaky_relu(0.1)'"
            )));
        }
        other => {
            let arg = other
                .strip_prefix("leaky_relu(")
                .or_else(|| other.strip_prefix("leakyrelu("))
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(unknown)?;
            let slope: f64 = arg.parse().map_err(|_| {
                PyValueError::new_err(format!(
                    "activation '{name}': the slope '{arg}' is not a number"
                ))
            })?;
            Activation::LeakyRelu(slope)
        }
    };
    checked(act.validate())?;
    Ok(act)
}

/// The name of a built-in activation, as `activation` reads it.
pub fn activation_name(a: &Activation) -> String {
    match a {
        Activation::LeakyRelu(s) => format!("leaky_relu({s})"),
        other => format!("{other}").to_ascii_lowercase(),
    }
}

/// The architecture of a fully connected network, without its parameters.
///
/// A builder: every method returns a new spec, checked on the spot.
///
/// >>> spec = ntk.MlpSpec(3).hidden(512, "relu").hidden(512, "erf").weight_std(1.5).bias_std(0.05)
/// >>> spec.widths
/// [3, 512, 512, 1]
///
/// Layer l computes h = (σ_w/√n_in) W x + σ_b b with W, b ~ N(0, 1) (neural-tangents'
/// ``stax.Dense(W_std=σ_w, b_std=σ_b, parameterization='ntk')``), then the activation;
/// the output layer is Dense without activation. σ_b = 0 means no bias parameters.
#[pyclass(module = "ntk", from_py_object)]
#[derive(Clone)]
pub struct MlpSpec {
    pub inner: ntk::MlpSpec,
}

impl MlpSpec {
    fn checked(inner: ntk::MlpSpec) -> PyResult<Self> {
        checked(inner.validate())?;
        Ok(MlpSpec { inner })
    }
}

#[pymethods]
impl MlpSpec {
    /// An MLP on inputs of `input_dim` columns, with no hidden layer yet, σ_w = 1,
    /// σ_b = 0 and one output.
    #[new]
    fn new(input_dim: i64) -> PyResult<Self> {
        Self::checked(ntk::MlpSpec::new(count(input_dim, "input_dim")?))
    }

    /// Adds a hidden layer of `width` units followed by `activation` (a name: 'relu',
    /// 'erf', 'tanh', 'gelu', 'leaky_relu(0.1)', ...).
    fn hidden(&self, width: i64, activation: &Bound<'_, PyAny>) -> PyResult<Self> {
        let act = self::activation(activation)?;
        Self::checked(self.inner.clone().hidden(count(width, "width")?, act))
    }

    /// Sets the number of outputs k.
    fn outputs(&self, k: i64) -> PyResult<Self> {
        Self::checked(self.inner.clone().outputs(count(k, "outputs")?))
    }

    /// Sets σ_w of every layer.
    fn weight_std(&self, sigma_w: f64) -> PyResult<Self> {
        Self::checked(self.inner.clone().weight_std(sigma_w))
    }

    /// Sets σ_b of every layer (0: no biases).
    fn bias_std(&self, sigma_b: f64) -> PyResult<Self> {
        Self::checked(self.inner.clone().bias_std(sigma_b))
    }

    /// Sets the parameterization: 'ntk' (the default) or 'standard' (neural-tangents'
    /// ``parameterization='standard'``: W ~ N(0, σ_w²/n_in) stored as is, h = W x + b).
    fn parameterization(&self, kind: &str) -> PyResult<Self> {
        let p = match kind.to_ascii_lowercase().as_str() {
            "ntk" => Parameterization::Ntk,
            "standard" => Parameterization::Standard,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "`parameterization` = '{kind}' is invalid: 'ntk' or 'standard'"
                )));
            }
        };
        Self::checked(self.inner.clone().parameterization(p))
    }

    /// The same spec with every hidden layer of width `width`.
    fn with_hidden_width(&self, width: i64) -> PyResult<Self> {
        Self::checked(self.inner.with_hidden_width(count(width, "width")?))
    }

    /// The input dimension d.
    #[getter]
    fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }

    /// The number of outputs k.
    #[getter]
    fn output_dim(&self) -> usize {
        self.inner.output_dim()
    }

    /// The hidden layers as (width, activation name) pairs.
    #[getter]
    fn hidden_layers(&self) -> Vec<(usize, String)> {
        self.inner
            .hidden_layers()
            .iter()
            .map(|(w, a)| (*w, activation_name(a)))
            .collect()
    }

    /// σ_w, set by ``weight_std``.
    #[getter]
    fn weight_std_value(&self) -> f64 {
        self.inner.weight_std_value()
    }

    /// σ_b, set by ``bias_std``.
    #[getter]
    fn bias_std_value(&self) -> f64 {
        self.inner.bias_std_value()
    }

    /// 'ntk' or 'standard', set by ``parameterization``.
    #[getter]
    fn parameterization_value(&self) -> &'static str {
        match self.inner.parameterization_value() {
            Parameterization::Standard => "standard",
            _ => "ntk",
        }
    }

    /// Whether the layers have bias parameters (σ_b > 0).
    #[getter]
    fn has_bias(&self) -> bool {
        self.inner.has_bias()
    }

    /// The layer widths [d, n_1, ..., n_L, k].
    #[getter]
    fn widths(&self) -> Vec<usize> {
        self.inner.widths()
    }

    /// The number of parameters P.
    #[getter]
    fn parameter_count(&self) -> usize {
        self.inner.parameter_count()
    }

    /// The finite network with W, b ~ N(0, 1) drawn from `seed` (the Rust crate's
    /// ``StdRng::seed_from_u64(seed)``: the same network as in Rust; None draws a seed),
    /// in `dtype` float64 (default) or float32.
    #[pyo3(signature = (seed=None, dtype=None))]
    fn init(
        &self,
        py: Python<'_>,
        seed: Option<i128>,
        dtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<crate::network::Mlp>> {
        use ntk::rand::SeedableRng;
        let mut rng = ntk::rand::rngs::StdRng::seed_from_u64(self::seed(seed)?);
        let f32 = dtype.map(is_f32).transpose()?.unwrap_or(false);
        let model = if f32 {
            Model::Mlp32(compute(py, || self.inner.init(&mut rng))?)
        } else {
            Model::Mlp64(compute(py, || self.inner.init(&mut rng))?)
        };
        new_mlp(py, Network::new(model))
    }

    fn __repr__(&self) -> String {
        let mut s = format!("MlpSpec({})", self.inner.input_dim());
        for (w, a) in self.inner.hidden_layers() {
            s += &format!(".hidden({w}, {:?})", activation_name(a));
        }
        if self.inner.output_dim() != 1 {
            s += &format!(".outputs({})", self.inner.output_dim());
        }
        s += &format!(
            ".weight_std({}).bias_std({})",
            self.inner.weight_std_value(),
            self.inner.bias_std_value()
        );
        if self.inner.parameterization_value() != Parameterization::Ntk {
            s += ".parameterization('standard')";
        }
        s
    }
}
