//! `Program`: any architecture as a computation graph with shared weights, and its
//! handles.

use ntk::Padding;
use ntk::program::Readout;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{checked, compute, count, is_f32, seed};
use crate::network::{Model, Network, new_program_network};
use crate::spec::{MlpSpec, activation};

/// A variable of a Program: a vector per sample. Valid only in the program that made
/// it (and its copies).
#[pyclass(module = "ntk", frozen, from_py_object)]
#[derive(Clone, Copy)]
pub struct Var {
    inner: ntk::Var,
}

#[pymethods]
impl Var {
    /// The variable's position in the program, in order of creation.
    #[getter]
    fn index(&self) -> usize {
        self.inner.index()
    }

    fn __repr__(&self) -> String {
        format!("Var({})", self.inner.index())
    }
}

/// A weight matrix W ~ N(0, 1) of a Program, applied by ``dense`` as (σ_W/√n_in) W z,
/// possibly at many places.
#[pyclass(module = "ntk", frozen, from_py_object)]
#[derive(Clone, Copy)]
pub struct Weight {
    inner: ntk::Weight,
}

#[pymethods]
impl Weight {
    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// A bias vector b ~ N(0, 1) of a Program, added by ``add_bias`` as σ_b b, possibly at
/// many places.
#[pyclass(module = "ntk", frozen, from_py_object)]
#[derive(Clone, Copy)]
pub struct Bias {
    inner: ntk::Bias,
}

#[pymethods]
impl Bias {
    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

fn vars(parts: &[Var]) -> Vec<ntk::Var> {
    parts.iter().map(|v| v.inner).collect()
}

fn var_list(vs: Vec<ntk::Var>) -> Vec<Var> {
    vs.into_iter().map(|inner| Var { inner }).collect()
}

pub fn padding(name: &str) -> PyResult<Padding> {
    match name.to_ascii_lowercase().as_str() {
        "circular" => Ok(Padding::Circular),
        "valid" => Ok(Padding::Valid),
        "same" => Ok(Padding::Same),
        _ => Err(PyValueError::new_err(format!(
            "`padding` = '{name}' is invalid: 'circular', 'valid' or 'same'"
        ))),
    }
}

/// A network described as a computation graph: dense layers with shared weights,
/// biases, elementwise activations, sums, means, concatenations, LayerNorm and 1/n
/// attention (a tensor program, Yang 2020). Build it step by step; every method checks
/// its arguments (a ValueError names what is wrong).
///
/// >>> p = ntk.Program(6)                      # inputs of 6 columns: 3 tokens of 2
/// >>> u, w, b = p.weight(1.4), p.weight(1.0), p.bias(0.3)
/// >>> s = None
/// >>> for t in range(3):                      # an RNN: the same W at every step
/// ...     h = p.dense(u, p.input(2 * t, 2 * t + 2))
/// ...     if s is not None:
/// ...         h = p.add([h, p.dense(w, s)])
/// ...     s = p.apply("erf", p.add_bias(h, b))
/// >>> p.output(s, 1.0)
/// >>> k = ntk.infinite_width(p, x)            # k.nngp, k.ntk
/// >>> net = p.init(1024, seed=0)              # a finite network of width 1024
#[pyclass(module = "ntk", from_py_object)]
#[derive(Clone)]
pub struct Program {
    pub inner: ntk::Program,
}

#[pymethods]
impl Program {
    /// An empty program whose inputs have `input_dim` columns (rows are samples).
    #[new]
    fn new(input_dim: i64) -> PyResult<Self> {
        Ok(Program {
            inner: ntk::Program::new(count(input_dim, "input_dim")?),
        })
    }

    /// The program of an MLP (NTK parameterization): its kernels equal the spec's.
    /// Raises ValueError for a spec in the standard parameterization.
    #[staticmethod]
    fn from_mlp(spec: PyRef<'_, MlpSpec>) -> PyResult<Self> {
        Ok(Program {
            inner: ntk::Program::try_from(&spec.inner).map_err(crate::convert::error)?,
        })
    }

    /// The input dimension d.
    #[getter]
    fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }

    /// The number of outputs k (1 until an output is set).
    #[getter]
    fn output_dim(&self) -> usize {
        self.inner.output_dim()
    }

    /// The number of variables.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// The variable holding input columns start, ..., stop − 1 (a token, or one
    /// position's channels).
    fn input(&mut self, start: i64, stop: i64) -> PyResult<Var> {
        let range = count(start, "start")?..count(stop, "stop")?;
        Ok(Var {
            inner: checked(self.inner.input(range))?,
        })
    }

    /// A new weight matrix with standard deviation σ_W = `weight_std`.
    fn weight(&mut self, weight_std: f64) -> PyResult<Weight> {
        Ok(Weight {
            inner: checked(self.inner.weight(weight_std))?,
        })
    }

    /// A new bias vector with standard deviation σ_b = `bias_std`.
    fn bias(&mut self, bias_std: f64) -> PyResult<Bias> {
        Ok(Bias {
            inner: checked(self.inner.bias(bias_std))?,
        })
    }

    /// (σ_W/√n_in) W z: a hidden vector of width n. A weight may be used many times,
    /// always with the same fan-in.
    fn dense(&mut self, weight: Weight, z: Var) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.dense(weight.inner, z.inner))?,
        })
    }

    /// h + σ_b b.
    fn add_bias(&mut self, h: Var, bias: Bias) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.add_bias(h.inner, bias.inner))?,
        })
    }

    /// The sum of `parts` (a list of variables of one width).
    fn add(&mut self, parts: Vec<Var>) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.add(&vars(&parts)))?,
        })
    }

    /// The average of `parts` (pooling over time or positions).
    fn mean(&mut self, parts: Vec<Var>) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.mean(&vars(&parts)))?,
        })
    }

    /// The parts stacked into one vector (a convolution's window, or a flattening).
    fn concat(&mut self, parts: Vec<Var>) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.concat(&vars(&parts)))?,
        })
    }

    /// A 1-D convolution over `positions` (one variable each) with a `taps`-tap filter,
    /// one shared weight; padding 'circular' (one output per position), 'valid' or
    /// 'same' (zero padding, `stax.Conv(padding='SAME')`).
    /// Returns the pre-activations, one per output position.
    #[pyo3(signature = (weight, positions, taps, padding="circular"))]
    fn conv(
        &mut self,
        weight: Weight,
        positions: Vec<Var>,
        taps: i64,
        padding: &str,
    ) -> PyResult<Vec<Var>> {
        let out = self.inner.conv(
            weight.inner,
            &vars(&positions),
            count(taps, "taps")?,
            self::padding(padding)?,
        );
        Ok(var_list(checked(out)?))
    }

    /// A 2-D convolution over a `shape` = (height, width) grid of positions (row-major)
    /// with a `taps` = (rows, columns) filter; returns the outputs row-major and their
    /// grid's shape.
    #[pyo3(signature = (weight, positions, shape, taps, padding="circular"))]
    fn conv2d(
        &mut self,
        weight: Weight,
        positions: Vec<Var>,
        shape: (i64, i64),
        taps: (i64, i64),
        padding: &str,
    ) -> PyResult<(Vec<Var>, (usize, usize))> {
        let grid = (count(shape.0, "shape")?, count(shape.1, "shape")?);
        let filter = (count(taps.0, "taps")?, count(taps.1, "taps")?);
        let (out, dims) = checked(self.inner.conv2d(
            weight.inner,
            &vars(&positions),
            grid,
            filter,
            self::padding(padding)?,
        ))?;
        Ok((var_list(out), dims))
    }

    /// `conv2d` with `strides` = (rows, columns): `stax.Conv(strides=...)`; the outputs
    /// row-major and their grid's shape.
    #[pyo3(signature = (weight, positions, shape, taps, strides, padding="circular"))]
    fn conv2d_strided(
        &mut self,
        weight: Weight,
        positions: Vec<Var>,
        shape: (i64, i64),
        taps: (i64, i64),
        strides: (i64, i64),
        padding: &str,
    ) -> PyResult<(Vec<Var>, (usize, usize))> {
        let grid = (count(shape.0, "shape")?, count(shape.1, "shape")?);
        let filter = (count(taps.0, "taps")?, count(taps.1, "taps")?);
        let steps = (count(strides.0, "strides")?, count(strides.1, "strides")?);
        let (out, dims) = checked(self.inner.conv2d_strided(
            weight.inner,
            &vars(&positions),
            grid,
            filter,
            steps,
            self::padding(padding)?,
        ))?;
        Ok((var_list(out), dims))
    }

    /// Average pooling over `window` = (rows, columns) windows moved by `strides`, VALID
    /// windows only (`stax.AvgPool`'s default); the outputs row-major and their shape.
    fn avg_pool2d(
        &mut self,
        positions: Vec<Var>,
        shape: (i64, i64),
        window: (i64, i64),
        strides: (i64, i64),
    ) -> PyResult<(Vec<Var>, (usize, usize))> {
        let grid = (count(shape.0, "shape")?, count(shape.1, "shape")?);
        let window = (count(window.0, "window")?, count(window.1, "window")?);
        let steps = (count(strides.0, "strides")?, count(strides.1, "strides")?);
        let (out, dims) = checked(
            self.inner
                .avg_pool2d(&vars(&positions), grid, window, steps),
        )?;
        Ok((var_list(out), dims))
    }

    /// φ(h) entrywise, φ by name: 'relu', 'erf', 'tanh', 'gelu', 'leaky_relu(0.1)', ...
    fn apply(&mut self, activation: &Bound<'_, PyAny>, h: Var) -> PyResult<Var> {
        let act = self::activation(activation)?;
        Ok(Var {
            inner: checked(self.inner.apply(act, h.inner))?,
        })
    }

    /// LayerNorm without affine parameters: (x − mean(x))/std(x) over the coordinates.
    fn layer_norm(&mut self, x: Var) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.layer_norm(x.inner))?,
        })
    }

    /// BatchNorm with batch statistics, without affine parameters or ε: per neuron,
    /// (x − mean)/std over the samples of the batch (std with 1/B). The network then
    /// couples the samples of a batch: its kernel between two batches computes each
    /// sample with its own batch's statistics, and a batch is never split.
    fn batch_norm(&mut self, x: Var) -> PyResult<Var> {
        Ok(Var {
            inner: checked(self.inner.batch_norm(x.inner))?,
        })
    }

    /// Softmax attention with 1/n logits, one output per query:
    /// y_t = Σ_s softmax_s(q_t·k_s/n) v_s. Returns the list of outputs.
    fn attention(
        &mut self,
        queries: Vec<Var>,
        keys: Vec<Var>,
        values: Vec<Var>,
    ) -> PyResult<Vec<Var>> {
        let out = self
            .inner
            .attention(&vars(&queries), &vars(&keys), &vars(&values));
        Ok(var_list(checked(out)?))
    }

    /// The readout f = (σ_v/√n_in) vᵀ z (one output, no bias), σ_v = `readout_std`.
    #[pyo3(signature = (z, readout_std=1.0))]
    fn output(&mut self, z: Var, readout_std: f64) -> PyResult<()> {
        checked(self.inner.output(z.inner, readout_std))
    }

    /// The readout f = (σ_v/√n_in) V z + σ_b' b' with `outputs` outputs.
    #[pyo3(signature = (z, weight_std=1.0, bias_std=0.0, outputs=1))]
    fn readout(&mut self, z: Var, weight_std: f64, bias_std: f64, outputs: i64) -> PyResult<()> {
        let r = Readout::new(weight_std)
            .bias_std(bias_std)
            .outputs(count(outputs, "outputs")?);
        checked(self.inner.readout(z.inner, r))
    }

    /// Checks that the program is complete: an output, every weight and bias used.
    fn validate(&self) -> PyResult<()> {
        checked(self.inner.validate())
    }

    /// The finite network of hidden width `width`, W, b, v ~ N(0, 1) drawn from `seed`
    /// (the Rust crate's ``StdRng::seed_from_u64(seed)``; None draws a seed), in `dtype`
    /// float64 (default) or float32.
    #[pyo3(signature = (width, seed=None, dtype=None))]
    fn init(
        &self,
        py: Python<'_>,
        width: i64,
        seed: Option<i128>,
        dtype: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<crate::network::ProgramNetwork>> {
        use ntk::rand::SeedableRng;
        let width = count(width, "width")?;
        let mut rng = ntk::rand::rngs::StdRng::seed_from_u64(self::seed(seed)?);
        let f32 = dtype.map(is_f32).transpose()?.unwrap_or(false);
        let model = if f32 {
            Model::Program32(compute(py, || self.inner.init(width, &mut rng))?)
        } else {
            Model::Program64(compute(py, || self.inner.init(width, &mut rng))?)
        };
        new_program_network(py, Network::new(model))
    }

    fn __repr__(&self) -> String {
        format!(
            "Program(input_dim={}, variables={}, output_dim={})",
            self.inner.input_dim(),
            self.inner.len(),
            self.inner.output_dim()
        )
    }
}
