//! `ntk.zoo`: the standard architectures of `ntk::zoo` as functions returning a
//! `Program`, with the Rust builders' settings as keyword arguments. A keyword left out
//! keeps the builder's default (the paper's or library's setting).

use ntk::zoo::{self, ImageReadout, SequenceReadout};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{count, error};
use crate::program::{Program, padding};
use crate::spec::activation;

/// Applies the setter `$set` to `$builder` when the keyword `$value` was given,
/// converting it with `$convert`.
macro_rules! set {
    ($builder:ident, $value:expr, $set:ident, $convert:expr) => {
        if let Some(v) = $value {
            $builder = $builder.$set($convert(v)?);
        }
    };
}

fn float(v: f64) -> PyResult<f64> {
    Ok(v)
}

fn program(built: ntk::Result<ntk::Program>) -> PyResult<Program> {
    Ok(Program {
        inner: built.map_err(error)?,
    })
}

/// Tensor Programs II's RNN over `steps` tokens of `token_dim` entries:
/// s_t = φ(W s_{t−1} + U x_t + b), f = vᵀ mean_t s_t (or vᵀ s_T with readout='last').
/// Defaults: erf, input_std √2, weight_std 1, bias_std √0.2, readout_std 1, 'mean'.
#[pyfunction]
#[pyo3(signature = (steps, token_dim, *, activation=None, input_std=None, weight_std=None,
                    bias_std=None, readout_std=None, readout=None))]
#[allow(clippy::too_many_arguments)]
pub fn rnn(
    steps: i64,
    token_dim: i64,
    activation: Option<&Bound<'_, PyAny>>,
    input_std: Option<f64>,
    weight_std: Option<f64>,
    bias_std: Option<f64>,
    readout_std: Option<f64>,
    readout: Option<&str>,
) -> PyResult<Program> {
    let mut b = zoo::Rnn::new(count(steps, "steps")?, count(token_dim, "token_dim")?);
    set!(b, activation, activation, self::activation);
    set!(b, input_std, input_std, float);
    set!(b, weight_std, weight_std, float);
    set!(b, bias_std, bias_std, float);
    set!(b, readout_std, readout_std, float);
    set!(b, readout, readout, sequence_readout);
    program(b.program())
}

/// Tensor Programs II's one-layer Transformer over `tokens` tokens of `token_dim`
/// entries (tied 1/n attention, LayerNorm without affine parameters). Defaults: relu
/// and every σ = 1.
#[pyfunction]
#[pyo3(signature = (tokens, token_dim, *, activation=None, input_std=None, weight_std=None,
                    readout_std=None))]
pub fn transformer(
    tokens: i64,
    token_dim: i64,
    activation: Option<&Bound<'_, PyAny>>,
    input_std: Option<f64>,
    weight_std: Option<f64>,
    readout_std: Option<f64>,
) -> PyResult<Program> {
    let mut b = zoo::Transformer::new(count(tokens, "tokens")?, count(token_dim, "token_dim")?);
    set!(b, activation, activation, self::activation);
    set!(b, input_std, input_std, float);
    set!(b, weight_std, weight_std, float);
    set!(b, readout_std, readout_std, float);
    program(b.program())
}

/// A residual MLP: h_0 = W_0 x + b_0, then `blocks` blocks h ← h + W φ(h) + b, and
/// f = vᵀ φ(h). Defaults: relu, weight_std 1, bias_std 0.1, readout_std 1.
#[pyfunction]
#[pyo3(signature = (input_dim, blocks, *, activation=None, weight_std=None, bias_std=None,
                    readout_std=None))]
pub fn residual_mlp(
    input_dim: i64,
    blocks: i64,
    activation: Option<&Bound<'_, PyAny>>,
    weight_std: Option<f64>,
    bias_std: Option<f64>,
    readout_std: Option<f64>,
) -> PyResult<Program> {
    let mut b = zoo::ResidualMlp::new(count(input_dim, "input_dim")?, count(blocks, "blocks")?);
    set!(b, activation, activation, self::activation);
    set!(b, weight_std, weight_std, float);
    set!(b, bias_std, bias_std, float);
    set!(b, readout_std, readout_std, float);
    program(b.program())
}

/// A CNN on `shape = (height, width)` images of `channels` channels (NHWC rows):
/// `layers` convolutions with φ, then 'global_average' pooling or 'flatten', and a
/// readout; neural-tangents' Conv stacks. Defaults: 1 layer of 3×3 'circular' relu
/// convolutions, weight_std √2, bias_std 0.1, readout_std 1, 'global_average'.
#[pyfunction]
#[pyo3(signature = (shape, channels, *, layers=None, taps=None, padding=None, activation=None,
                    weight_std=None, bias_std=None, readout_std=None, readout=None))]
#[allow(clippy::too_many_arguments)]
pub fn cnn(
    shape: (i64, i64),
    channels: i64,
    layers: Option<i64>,
    taps: Option<(i64, i64)>,
    padding: Option<&str>,
    activation: Option<&Bound<'_, PyAny>>,
    weight_std: Option<f64>,
    bias_std: Option<f64>,
    readout_std: Option<f64>,
    readout: Option<&str>,
) -> PyResult<Program> {
    let grid = (count(shape.0, "shape")?, count(shape.1, "shape")?);
    let mut b = zoo::Cnn::new(grid, count(channels, "channels")?);
    set!(b, layers, layers, |v| count(v, "layers"));
    set!(b, taps, taps, |(h, w)| Ok::<_, PyErr>((
        count(h, "taps")?,
        count(w, "taps")?
    )));
    set!(b, padding, padding, self::padding);
    set!(b, activation, activation, self::activation);
    set!(b, weight_std, weight_std, float);
    set!(b, bias_std, bias_std, float);
    set!(b, readout_std, readout_std, float);
    set!(b, readout, readout, image_readout);
    program(b.program())
}

/// neural-tangents' Myrtle network of `depth` 5, 7 or 10 on `shape` = (h, w) images of
/// `channels` (h and w divisible by 4): SAME 3 × 3 ReLU convolutions (W_std √2, no
/// biases), 2 × 2 average pools after the first two stages, a global average, a
/// Dense(1) readout (W_std √2).
#[pyfunction]
pub fn myrtle(depth: i64, shape: (i64, i64), channels: i64) -> PyResult<Program> {
    let grid = (count(shape.0, "shape")?, count(shape.1, "shape")?);
    program(zoo::myrtle(
        count(depth, "depth")?,
        grid,
        count(channels, "channels")?,
    ))
}

fn sequence_readout(name: &str) -> PyResult<SequenceReadout> {
    match name {
        "mean" => Ok(SequenceReadout::MeanState),
        "last" => Ok(SequenceReadout::LastState),
        _ => Err(PyValueError::new_err(format!(
            "`readout` = '{name}' is invalid: 'mean' or 'last'"
        ))),
    }
}

fn image_readout(name: &str) -> PyResult<ImageReadout> {
    match name {
        "global_average" => Ok(ImageReadout::GlobalAverage),
        "flatten" => Ok(ImageReadout::Flatten),
        _ => Err(PyValueError::new_err(format!(
            "`readout` = '{name}' is invalid: 'global_average' or 'flatten'"
        ))),
    }
}

/// Registers the submodule `ntk._ntk.zoo`.
pub fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let m = PyModule::new(parent.py(), "zoo")?;
    m.add_function(wrap_pyfunction!(rnn, &m)?)?;
    m.add_function(wrap_pyfunction!(transformer, &m)?)?;
    m.add_function(wrap_pyfunction!(residual_mlp, &m)?)?;
    m.add_function(wrap_pyfunction!(cnn, &m)?)?;
    m.add_function(wrap_pyfunction!(myrtle, &m)?)?;
    parent.add_submodule(&m)
}
