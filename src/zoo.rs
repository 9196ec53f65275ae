//! Standard architectures as [`Program`]s: the one place where they are written.
//!
//! Each is a builder that starts from the settings of the paper or library it comes
//! from, takes setters for the rest, and returns its program with `program()`:
//!
//! ```
//! use ntk::nalgebra::DMatrix;
//! use ntk::{infinite_width, zoo, Activation};
//! # fn main() -> Result<(), ntk::Error> {
//! let rnn = zoo::Rnn::new(4, 3).program()?; // Tensor Programs II's RNN, 4 tokens of 3
//! let cnn = zoo::Cnn::new((4, 4), 3).layers(2).activation(Activation::Erf).program()?;
//! let x = DMatrix::from_fn(2, 12, |i, j| ((i * 12 + j) as f64 * 0.3).sin());
//! let limit = infinite_width(&rnn, &x, &x)?;
//! assert_eq!(limit.ntk.shape(), (2, 2));
//! assert_eq!(cnn.input_dim(), 4 * 4 * 3);
//! # Ok(())
//! # }
//! ```
//!
//! | builder | network | neural-tangents |
//! |---|---|---|
//! | [`Program::try_from`]`(&MlpSpec)` | the MLP of a spec, parameter for parameter | `Dense` and activations |
//! | [`Rnn`] | $s_t = φ(W s_{t−1} + U x_t + b)$, read out from the mean or the last state | none (no weight sharing) |
//! | [`Transformer`] | Tensor Programs II's one-layer Transformer | none (its attention draws independent queries and keys) |
//! | [`ResidualMlp`] | $h ← h + W φ(h) + b$ | `Dense`, `FanOut(2)`, `parallel(serial(φ, Dense), Identity())`, `FanInSum()` |
//! | [`Cnn`] | convolutions with $φ$, then global average pooling or flattening | `Conv`, `GlobalAvgPool` or `Flatten` |
//! | [`myrtle`] | Shankar et al.'s Myrtle network: SAME $3×3$ ReLU convolutions and $2×2$ average pools | `MyrtleNetwork` (its notebook's) |
//!
//! Inputs are rows of tokens or pixels in order, each token's or pixel's entries
//! contiguous (NHWC for images). Every $σ$ follows the NTK parameterization
//! ([`Program::dense`]); a bias standard deviation of 0 means no bias parameters.

use crate::activation::Activation;
use crate::error::{Error, Result};
use crate::mlp::{MlpSpec, Parameterization};
use crate::program::{Padding, Program, Readout, Var};

/// How a sequence model is read out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SequenceReadout {
    /// From the mean of the states over time (Tensor Programs II's RNN).
    MeanState,
    /// From the last state.
    LastState,
}

/// How a CNN is read out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageReadout {
    /// From the average over positions (neural-tangents' `GlobalAvgPool`).
    GlobalAverage,
    /// From all positions stacked (neural-tangents' `Flatten`).
    Flatten,
}

/// Builder setters: `name: Type;` with its doc makes `fn name(mut self, name: Type) -> Self`.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

/// The columns of token (or pixel) `t` of `dim` entries each, for every `t < count`.
fn tokens(p: &mut Program, count: usize, dim: usize) -> Result<Vec<Var>> {
    (0..count)
        .map(|t| p.input(t * dim..(t + 1) * dim))
        .collect()
}

/// `h + σ_b b` when the bias exists.
fn with_bias(p: &mut Program, h: Var, bias: Option<crate::program::Bias>) -> Result<Var> {
    match bias {
        Some(b) => p.add_bias(h, b),
        None => Ok(h),
    }
}

/// A bias of standard deviation `std`, none when `std` is 0.
fn bias_if(p: &mut Program, std: f64) -> Result<Option<crate::program::Bias>> {
    if std == 0.0 {
        Ok(None)
    } else {
        p.bias(std).map(Some)
    }
}

fn at_least_one(parameter: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::InvalidParameter {
            parameter,
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// A recurrent network over `steps` tokens of `token_dim` entries, one weight $W$ shared
/// by every step:
/// $s_t = φ(W s_{t−1} + U x_t + b)$, $s_0 = 0$, $f = vᵀ \operatorname{mean}_t s_t$ (or $vᵀ s_T$).
///
/// [`Rnn::new`] is Tensor Programs II's RNN (Fig. 1): erf, $σ_U² = 2$, $σ_W² = 1$,
/// $σ_b² = 0.2$, $σ_v = 1$, mean of the states. neural-tangents has no equivalent (its
/// layers cannot share weights).
#[derive(Clone, Debug)]
pub struct Rnn {
    steps: usize,
    token_dim: usize,
    activation: Activation,
    input_std: f64,
    weight_std: f64,
    bias_std: f64,
    readout_std: f64,
    readout: SequenceReadout,
}

impl Rnn {
    /// Tensor Programs II's RNN over `steps` tokens of `token_dim` entries.
    #[must_use]
    pub fn new(steps: usize, token_dim: usize) -> Self {
        Rnn {
            steps,
            token_dim,
            activation: Activation::Erf,
            input_std: 2f64.sqrt(),
            weight_std: 1.0,
            bias_std: 0.2f64.sqrt(),
            readout_std: 1.0,
            readout: SequenceReadout::MeanState,
        }
    }

    setters! {
        /// $φ$.
        activation: Activation;
        /// $σ_U$, of the input-to-hidden weight.
        input_std: f64;
        /// $σ_W$, of the hidden-to-hidden weight.
        weight_std: f64;
        /// $σ_b$ (0: no bias).
        bias_std: f64;
        /// $σ_v$, of the readout.
        readout_std: f64;
        /// The mean or the last state.
        readout: SequenceReadout;
    }

    /// The program. Parameters in the order $U$, $W$, $b$, then the readout.
    ///
    /// # Errors
    /// Zero steps or token entries, or an invalid $σ$ or activation.
    pub fn program(&self) -> Result<Program> {
        at_least_one("steps", self.steps)?;
        at_least_one("token_dim", self.token_dim)?;
        let mut p = Program::new(self.steps * self.token_dim);
        let u = p.weight(self.input_std)?;
        let w = p.weight(self.weight_std)?;
        let b = bias_if(&mut p, self.bias_std)?;
        let mut states: Vec<Var> = Vec::with_capacity(self.steps);
        for x_t in tokens(&mut p, self.steps, self.token_dim)? {
            let mut h = p.dense(u, x_t)?;
            if let Some(&s) = states.last() {
                let recurrent = p.dense(w, s)?; // the same W at every step
                h = p.add(&[h, recurrent])?;
            }
            let h = with_bias(&mut p, h, b)?;
            states.push(p.apply(self.activation.clone(), h)?);
        }
        let out = match self.readout {
            SequenceReadout::MeanState => p.mean(&states)?,
            SequenceReadout::LastState => states[states.len() - 1],
        };
        p.output(out, self.readout_std)?;
        Ok(p)
    }
}

/// Tensor Programs II's one-layer Transformer over `tokens` tokens of `token_dim`
/// entries, with $1/n$ softmax attention whose queries, keys and values are tied, and
/// LayerNorm without affine parameters:
/// $k_t = U x_t$, $y = \operatorname{attention}(k, k, k)$, $z_t = \operatorname{LN}(y_t + k_t)$,
/// $o_t = \operatorname{LN}(W_2 φ(W_1 z_t) + z_t)$, $f = vᵀ \operatorname{mean}_t o_t$.
///
/// [`Transformer::new`] is the paper's: ReLU and every $σ = 1$. neural-tangents'
/// `GlobalSelfAttention` draws independent queries and keys, so its limit attention
/// is uniform: it has no equivalent.
#[derive(Clone, Debug)]
pub struct Transformer {
    tokens: usize,
    token_dim: usize,
    activation: Activation,
    input_std: f64,
    weight_std: f64,
    readout_std: f64,
}

impl Transformer {
    /// Tensor Programs II's Transformer over `tokens` tokens of `token_dim` entries.
    #[must_use]
    pub fn new(tokens: usize, token_dim: usize) -> Self {
        Transformer {
            tokens,
            token_dim,
            activation: Activation::Relu,
            input_std: 1.0,
            weight_std: 1.0,
            readout_std: 1.0,
        }
    }

    setters! {
        /// $φ$ of the feed-forward block.
        activation: Activation;
        /// $σ_U$, of the embedding.
        input_std: f64;
        /// $σ_W$ of $W_1$ and $W_2$.
        weight_std: f64;
        /// $σ_v$, of the readout.
        readout_std: f64;
    }

    /// The program. Parameters in the order $U$, $W_1$, $W_2$, then the readout.
    ///
    /// # Errors
    /// Zero tokens or token entries, or an invalid $σ$ or activation.
    pub fn program(&self) -> Result<Program> {
        at_least_one("tokens", self.tokens)?;
        at_least_one("token_dim", self.token_dim)?;
        let mut p = Program::new(self.tokens * self.token_dim);
        let u = p.weight(self.input_std)?;
        let w1 = p.weight(self.weight_std)?;
        let w2 = p.weight(self.weight_std)?;
        let keys = tokens(&mut p, self.tokens, self.token_dim)?
            .into_iter()
            .map(|x_t| p.dense(u, x_t))
            .collect::<Result<Vec<Var>>>()?;
        let attended = p.attention(&keys, &keys, &keys)?;
        let mut outs = Vec::with_capacity(self.tokens);
        for (y, k) in attended.into_iter().zip(&keys) {
            let y = p.add(&[y, *k])?;
            let z = p.layer_norm(y)?;
            let g = p.dense(w1, z)?;
            let a = p.apply(self.activation.clone(), g)?;
            let h = p.dense(w2, a)?;
            let s = p.add(&[h, z])?;
            outs.push(p.layer_norm(s)?);
        }
        let pooled = p.mean(&outs)?;
        p.output(pooled, self.readout_std)?;
        Ok(p)
    }
}

/// A residual MLP: $h_0 = W_0 x + b_0$, then `blocks` residual blocks
/// $h ← h + W φ(h) + b$, and $f = vᵀ φ(h)$.
///
/// One block is neural-tangents' `serial(Dense(n, σ_W, σ_b), FanOut(2),
/// parallel(serial(φ, Dense(n, σ_W, σ_b)), Identity()), FanInSum(), φ, Dense(1, σ_v))`.
/// [`ResidualMlp::new`] has ReLU, $σ_W = 1$, $σ_b = 0.1$, $σ_v = 1$.
#[derive(Clone, Debug)]
pub struct ResidualMlp {
    input_dim: usize,
    blocks: usize,
    activation: Activation,
    weight_std: f64,
    bias_std: f64,
    readout_std: f64,
}

impl ResidualMlp {
    /// `blocks` residual blocks on inputs of `input_dim` entries.
    #[must_use]
    pub fn new(input_dim: usize, blocks: usize) -> Self {
        ResidualMlp {
            input_dim,
            blocks,
            activation: Activation::Relu,
            weight_std: 1.0,
            bias_std: 0.1,
            readout_std: 1.0,
        }
    }

    setters! {
        /// $φ$.
        activation: Activation;
        /// $σ_W$, of every weight.
        weight_std: f64;
        /// $σ_b$, of every bias (0: no biases).
        bias_std: f64;
        /// $σ_v$, of the readout.
        readout_std: f64;
    }

    /// The program. Parameters in the order $W_0$, $b_0$, then $W$, $b$ per block, then
    /// the readout.
    ///
    /// # Errors
    /// A zero input dimension, or an invalid $σ$ or activation.
    pub fn program(&self) -> Result<Program> {
        at_least_one("input_dim", self.input_dim)?;
        let mut p = Program::new(self.input_dim);
        let x = p.input(0..self.input_dim)?;
        let w0 = p.weight(self.weight_std)?;
        let b0 = bias_if(&mut p, self.bias_std)?;
        let h = p.dense(w0, x)?;
        let mut h = with_bias(&mut p, h, b0)?;
        for _ in 0..self.blocks {
            let w = p.weight(self.weight_std)?;
            let b = bias_if(&mut p, self.bias_std)?;
            let a = p.apply(self.activation.clone(), h)?;
            let r = p.dense(w, a)?;
            let r = with_bias(&mut p, r, b)?;
            h = p.add(&[h, r])?;
        }
        let out = p.apply(self.activation.clone(), h)?;
        p.output(out, self.readout_std)?;
        Ok(p)
    }
}

/// The Myrtle network of depth 5, 7 or 10 (Shankar et al. 2020, as in neural-tangents'
/// notebook) on `grid = (height, width)` images of `channels` channels:
/// three stages of SAME $3×3$ convolutions with ReLU ($σ_W = \sqrt 2$, no biases),
/// 2, 1, 1 convolutions per stage at depth 5, 2, 2, 2 at depth 7 and 3, 3, 3 at depth
/// 10, with `AvgPool((2, 2), strides=(2, 2))` after the first and second stages, then a
/// global average (on 32 × 32 images the notebook's three $2×2$ pools and `Flatten`,
/// to round-off) and the readout `Dense(1, W_std=√2, b_std=0)`.
///
/// ```
/// # fn main() -> Result<(), ntk::Error> {
/// let myrtle = ntk::zoo::myrtle(5, (8, 8), 3)?;
/// assert_eq!(myrtle.input_dim(), 8 * 8 * 3);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// A depth other than 5, 7 or 10, a grid whose sides are not positive multiples of 4,
/// or zero channels.
pub fn myrtle(depth: usize, grid: (usize, usize), channels: usize) -> Result<Program> {
    let stages: [usize; 3] = match depth {
        5 => [2, 1, 1],
        7 => [2, 2, 2],
        10 => [3, 3, 3],
        _ => {
            return Err(Error::InvalidParameter {
                parameter: "depth",
                value: depth.to_string(),
                reason: "a Myrtle network has depth 5, 7 or 10",
            });
        }
    };
    if grid.0 == 0 || grid.1 == 0 || !grid.0.is_multiple_of(4) || !grid.1.is_multiple_of(4) {
        return Err(Error::InvalidParameter {
            parameter: "grid",
            value: format!("{} x {}", grid.0, grid.1),
            reason: "a Myrtle network pools twice by 2: its sides must be positive multiples of 4",
        });
    }
    at_least_one("channels", channels)?;
    let sigma = 2f64.sqrt();
    let mut p = Program::new(grid.0 * grid.1 * channels);
    let mut z = tokens(&mut p, grid.0 * grid.1, channels)?;
    let mut shape = grid;
    for (stage, &convolutions) in stages.iter().enumerate() {
        if stage > 0 {
            (z, shape) = p.avg_pool2d(&z, shape, (2, 2), (2, 2))?;
        }
        for _ in 0..convolutions {
            let w = p.weight(sigma)?;
            let (hs, out) = p.conv2d(w, &z, shape, (3, 3), Padding::Same)?;
            shape = out;
            z = hs
                .into_iter()
                .map(|h| p.apply(Activation::Relu, h))
                .collect::<Result<_>>()?;
        }
    }
    let pooled = p.mean(&z)?;
    p.output(pooled, sigma)?;
    Ok(p)
}

/// A CNN on a row-major `grid` of positions (an image, or a sequence as a grid of one
/// row) with `channels` entries each: `layers` convolutions, each one weight and one
/// bias shared over positions followed by $φ$, then global average pooling or
/// flattening, and a readout.
///
/// It is neural-tangents' `serial(*[Conv(n, taps, padding=…, W_std=σ_W, b_std=σ_b), φ] ×
/// layers, GlobalAvgPool() | Flatten(), Dense(1, σ_v))` on NHWC images.
/// [`Cnn::new`] has one layer of $3×3$ circular ReLU convolutions with $σ_W = \sqrt 2$,
/// $σ_b = 0.1$, global average pooling and $σ_v = 1$; [`Cnn::sequence`] a 1-D CNN with 3
/// taps.
#[derive(Clone, Debug)]
pub struct Cnn {
    grid: (usize, usize),
    channels: usize,
    layers: usize,
    taps: (usize, usize),
    padding: Padding,
    activation: Activation,
    weight_std: f64,
    bias_std: f64,
    readout_std: f64,
    readout: ImageReadout,
}

impl Cnn {
    /// A CNN on `grid = (height, width)` images with `channels` channels.
    #[must_use]
    pub fn new(grid: (usize, usize), channels: usize) -> Self {
        Cnn {
            grid,
            channels,
            layers: 1,
            taps: (3, 3),
            padding: Padding::Circular,
            activation: Activation::Relu,
            weight_std: 2f64.sqrt(),
            bias_std: 0.1,
            readout_std: 1.0,
            readout: ImageReadout::GlobalAverage,
        }
    }

    /// A 1-D CNN on sequences of `positions` positions with `channels` channels: the
    /// grid $(1, \text{positions})$ with 3-tap filters.
    #[must_use]
    pub fn sequence(positions: usize, channels: usize) -> Self {
        Cnn::new((1, positions), channels).taps((1, 3))
    }

    setters! {
        /// The number of convolutions.
        layers: usize;
    }

    /// The filter's shape, (rows, columns).
    #[must_use]
    pub fn taps(mut self, taps: (usize, usize)) -> Self {
        self.taps = taps;
        self
    }

    setters! {
        /// How the filters treat the edges.
        padding: Padding;
        /// $φ$.
        activation: Activation;
        /// $σ_W$, of every filter.
        weight_std: f64;
        /// $σ_b$, of every bias (0: no biases).
        bias_std: f64;
        /// $σ_v$, of the readout.
        readout_std: f64;
        /// Global average pooling or flattening.
        readout: ImageReadout;
    }

    /// The program. Parameters in the order $W$, $b$ per layer, then the readout.
    ///
    /// # Errors
    /// An empty grid, zero channels, or what [`Program::conv2d`] refuses (more taps
    /// than positions with [`Padding::Valid`]), or an invalid $σ$ or activation.
    pub fn program(&self) -> Result<Program> {
        at_least_one("grid height", self.grid.0)?;
        at_least_one("grid width", self.grid.1)?;
        at_least_one("channels", self.channels)?;
        let mut grid = self.grid;
        let mut p = Program::new(grid.0 * grid.1 * self.channels);
        let mut z = tokens(&mut p, grid.0 * grid.1, self.channels)?;
        for _ in 0..self.layers {
            let w = p.weight(self.weight_std)?;
            let b = bias_if(&mut p, self.bias_std)?;
            let (hs, shape) = p.conv2d(w, &z, grid, self.taps, self.padding)?;
            grid = shape;
            z = hs
                .into_iter()
                .map(|h| {
                    let h = with_bias(&mut p, h, b)?;
                    p.apply(self.activation.clone(), h)
                })
                .collect::<Result<_>>()?;
        }
        let out = match self.readout {
            ImageReadout::GlobalAverage => p.mean(&z)?,
            ImageReadout::Flatten => p.concat(&z)?,
        };
        p.output(out, self.readout_std)?;
        Ok(p)
    }
}

/// The program of an MLP: `dense`, `add_bias` and `apply` per hidden layer, then a
/// readout with the spec's $σ_w$, $σ_b$ and $k$ outputs. Its kernels equal the spec's, and
/// its network at a width $n$ draws the same parameters, in the same order, as the
/// spec's with every hidden width $n$.
///
/// ```
/// use ntk::{Activation, MlpSpec, Program};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(3).hidden(64, Activation::Relu).bias_std(0.1);
/// let program = Program::try_from(&spec)?;
/// assert_eq!(program.output_dim(), 1);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// An invalid spec ([`MlpSpec::validate`]), or one in the standard parameterization
/// (programs use the NTK parameterization).
impl TryFrom<&MlpSpec> for Program {
    type Error = Error;

    fn try_from(spec: &MlpSpec) -> Result<Program> {
        if spec.parameterization_value() != Parameterization::Ntk {
            return Err(Error::InvalidParameter {
                parameter: "parameterization",
                value: "Standard".into(),
                reason: "programs use the NTK parameterization",
            });
        }
        Program::mlp(spec, false)
    }
}

impl Program {
    /// The program of `spec` whose NTK coefficients follow the spec's
    /// parameterization and hidden widths (for the per-layer limit of an MLP in
    /// either parameterization; its finite network is not the spec's in the standard
    /// parameterization).
    pub(crate) fn with_widths_of(spec: &MlpSpec) -> Result<Program> {
        Program::mlp(spec, spec.parameterization_value() != Parameterization::Ntk)
    }

    fn mlp(spec: &MlpSpec, standard: bool) -> Result<Program> {
        spec.validate()?;
        let mut p = Program::new(spec.input_dim());
        let (sw, sb) = (spec.weight_std_value(), spec.bias_std_value());
        let widths = spec.widths();
        let mut z = p.input(0..spec.input_dim())?;
        for (l, (_, activation)) in spec.hidden_layers().iter().enumerate() {
            let w = p.weight(sw)?;
            let mut h = p.dense(w, z)?;
            if standard {
                p.set_weight_ntk_coefficient(w, widths[l] as f64);
            }
            if spec.has_bias() {
                let b = p.bias(sb)?;
                h = p.add_bias(h, b)?;
                if standard {
                    p.set_bias_ntk_coefficient(b, 1.0);
                }
            }
            z = p.apply(activation.clone(), h)?;
        }
        p.readout(
            z,
            Readout::new(sw)
                .bias_std(if spec.has_bias() { sb } else { 0.0 })
                .outputs(spec.output_dim()),
        )?;
        if standard {
            let last = widths[widths.len() - 2] as f64;
            p.readout_ntk_coef = Some((last, 1.0));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_architectures_are_errors() {
        assert!(Rnn::new(0, 3).program().is_err());
        assert!(Transformer::new(2, 0).program().is_err());
        assert!(ResidualMlp::new(0, 1).program().is_err());
        assert!(Cnn::new((0, 4), 3).program().is_err());
        assert!(
            Cnn::new((2, 2), 1)
                .padding(Padding::Valid)
                .program()
                .is_err(),
            "a 3×3 valid filter on a 2×2 grid"
        );
        assert!(Rnn::new(2, 2).weight_std(-1.0).program().is_err());
    }

    #[test]
    fn shapes_follow_the_settings() {
        let cnn = Cnn::new((5, 6), 2)
            .padding(Padding::Valid)
            .layers(2)
            .readout(ImageReadout::Flatten)
            .program()
            .unwrap();
        assert_eq!(cnn.input_dim(), 60);
        let rnn = Rnn::new(5, 3).program().unwrap();
        assert_eq!(rnn.input_dim(), 15);
        let without_bias = Rnn::new(5, 3).bias_std(0.0).program().unwrap();
        assert_eq!(rnn.len(), without_bias.len() + 5, "one add_bias per step");
        let last = Rnn::new(5, 3).readout(SequenceReadout::LastState);
        assert_eq!(last.program().unwrap().len() + 1, rnn.len(), "no mean");
    }
}
