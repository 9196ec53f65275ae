//! Any architecture: a [`Program`] describes a network built from matrix
//! multiplications (a weight may be used many times), biases, elementwise
//! nonlinearities, sums, averages and concatenations: what Tensor Programs II (Yang
//! 2020) calls a tensor program (a Netsor program with its readout).
//!
//! ```
//! use ntk::nalgebra::DMatrix;
//! use ntk::rand::{rngs::StdRng, SeedableRng};
//! use ntk::{empirical_ntk, infinite_width, Activation, Program};
//!
//! # fn main() -> Result<(), ntk::Error> {
//! // An RNN over 3 tokens of dimension 2: s_t = erf(W s_{t−1} + U x_t + b), averaged.
//! let mut p = Program::new(6);
//! let (u, w, b) = (p.weight(1.4)?, p.weight(1.0)?, p.bias(0.3)?);
//! let mut states = Vec::new();
//! for t in 0..3 {
//!     let x_t = p.input(2 * t..2 * t + 2)?;
//!     let mut h = p.dense(u, x_t)?;
//!     if let Some(&s) = states.last() {
//!         let recurrent = p.dense(w, s)?; // the same W at every step
//!         h = p.add(&[h, recurrent])?;
//!     }
//!     let h = p.add_bias(h, b)?;
//!     states.push(p.apply(Activation::Erf, h)?);
//! }
//! let pooled = p.mean(&states)?;
//! p.output(pooled, 1.0)?;
//!
//! let x = DMatrix::from_fn(4, 6, |i, j| ((i * 6 + j) as f64 * 0.37).sin());
//! let limit = infinite_width(&p, &x, &x)?;               // Σ and Θ̊, 4 × 4
//! let net = p.init::<f64, _>(1024, &mut StdRng::seed_from_u64(0))?;
//! let theta = empirical_ntk(&net, &x, &x)?;             // Θ of a width-1024 network
//! assert!((&theta - &limit.ntk).norm() < 0.2 * limit.ntk.norm());
//! # Ok(())
//! # }
//! ```
//!
//! ## The network a program describes
//!
//! Every variable holds, per sample, a vector: an input variable the columns
//! [`Program::input`] names (a finite width), every other variable $n$ numbers for a
//! hidden width $n$ chosen at [`Program::init`], or $K·n$ for a concatenation of $K$ such
//! vectors. In the NTK parameterization, with $W, b, v ∼ N(0, 1)$:
//!
//! | operation | value |
//! |---|---|
//! | [`dense`](Program::dense)`(W, z)` | $(σ_W/\sqrt{n_{in}}) W z$, $n_{in}$ the width of $z$ (the same at every use of $W$) |
//! | [`add_bias`](Program::add_bias)`(h, b)` | $h + σ_b b$ |
//! | [`add`](Program::add)`(&[a, …])` | $a + …$ |
//! | [`mean`](Program::mean)`(&[a₁, …, a_K])` | $(a_1 + … + a_K)/K$ |
//! | [`concat`](Program::concat)`(&[a₁, …, a_K])` | $(a_1; …; a_K)$, width $Σ$ widths |
//! | [`apply`](Program::apply)`(φ, h)` | $φ(h)$ entrywise |
//! | [`layer_norm`](Program::layer_norm)`(x)` | $(x − \operatorname{mean}(x))/\operatorname{std}(x)$ over the coordinates |
//! | [`attention`](Program::attention)`(&qs, &ks, &vs)` | $y_t = Σ_s \operatorname{softmax}\_s(q_t·k_s/n) v_s$, one per query |
//! | [`output`](Program::output)`(z, σ_v)` | $f = (σ_v/\sqrt{n_{in}}) vᵀ z$ (+ $σ_b\' b\'$ with a readout bias) |
//!
//! With these, a 1-D convolution with a 3-tap filter is one `Weight` used at every
//! position $p$ on `concat(&[x_{p−1}, x_p, x_{p+1}])` (neural-tangents' `Conv`
//! normalisation, fan-in $3·\text{channels}$; [`conv`](Program::conv) builds these windows
//! for any filter size, circular or valid, and [`conv2d`](Program::conv2d) on images),
//! global average pooling is `mean`, flattening is `concat`, a residual block is
//! `add(&[s, dense(W, φ(s))])`, and an RNN uses one hidden-to-hidden `Weight` at every
//! step.
//!
//! ## Its kernels
//!
//! [`Program::init`] draws the finite network, an [`NtkModel`](crate::NtkModel):
//! its empirical NTK, per-parameter kernels, gradients and training work as for any
//! model. [`infinite_width`](crate::infinite_width) computes the NNGP kernel $Σ$ and
//! the limiting NTK $Θ̊$ of the program as $n → ∞$ (see [`crate::infinite`] for the
//! recursion and its conditions).

mod network;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use nalgebra::DMatrix;

use crate::activation::Activation;
use crate::error::{Error, Result, check_std};
use crate::mlp::{MlpSpec, Parameterization};

pub use network::ProgramNetwork;

/// A source of distinct program identities, so that a handle from one program is
/// recognised as foreign by another.
static NEXT_PROGRAM: AtomicU64 = AtomicU64::new(1);

/// A variable of a [`Program`]: a vector per sample. `Copy`; valid only in the
/// program that made it (and its clones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var {
    program: u64,
    index: usize,
}

impl Var {
    /// The variable's position in the program, in order of creation (used in messages).
    #[must_use]
    pub fn index(self) -> usize {
        self.index
    }
}

/// A weight matrix $W ∼ N(0, 1)$ of a [`Program`], applied by [`Program::dense`] as
/// $(σ_W/\sqrt{n_{in}}) W z$, possibly at many places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Weight {
    program: u64,
    index: usize,
}

/// A bias vector $b ∼ N(0, 1)$ of a [`Program`], added by [`Program::add_bias`] as $σ_b b$,
/// possibly at many places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bias {
    program: u64,
    index: usize,
}

/// The readout $f = (σ_v/\sqrt{n_{in}}) V z + σ_b\' b\'$ of a [`Program`]: its standard
/// deviations and number of outputs.
///
/// ```
/// use ntk::program::Readout;
/// let readout = Readout::new(1.0).bias_std(0.1).outputs(3);
/// assert_eq!(readout.output_dim(), 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Readout {
    weight_std: f64,
    bias_std: f64,
    outputs: usize,
}

impl Readout {
    /// One output, $f = (σ_v/\sqrt{n_{in}}) vᵀ z$, without a bias.
    #[must_use]
    pub fn new(weight_std: f64) -> Self {
        Readout {
            weight_std,
            bias_std: 0.0,
            outputs: 1,
        }
    }

    /// Adds a readout bias $σ_b\' b\'$ ($b\' ∼ N(0, 1)$); 0 (the default) means none.
    #[must_use]
    pub fn bias_std(mut self, bias_std: f64) -> Self {
        self.bias_std = bias_std;
        self
    }

    /// $k$ outputs: $V$ is $k × n_{in}$ (default 1). The kernels are then $Σ ⊗ I_k$ and
    /// $Θ̊ ⊗ I_k$, as for an MLP.
    #[must_use]
    pub fn outputs(mut self, k: usize) -> Self {
        self.outputs = k;
        self
    }

    /// $σ_v$.
    #[must_use]
    pub fn weight_std_value(&self) -> f64 {
        self.weight_std
    }

    /// $σ_b\'$ (0 without a readout bias).
    #[must_use]
    pub fn bias_std_value(&self) -> f64 {
        self.bias_std
    }

    /// The number of outputs $k$.
    #[must_use]
    pub fn output_dim(&self) -> usize {
        self.outputs
    }
}

/// The width of a variable: a number of input columns, or a multiple of the hidden
/// width $n$ ($K$ for a concatenation of $K$ hidden vectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Width {
    /// $d$ input columns (or a deterministic function of them): finite as $n → ∞$.
    Input(usize),
    /// $K·n$.
    Hidden(usize),
}

impl Width {
    /// The number of columns at hidden width `n` (`None` if it overflows `usize`).
    pub(crate) fn columns(self, n: usize) -> Option<usize> {
        match self {
            Width::Input(d) => Some(d),
            Width::Hidden(k) => k.checked_mul(n),
        }
    }

    fn describe(self) -> String {
        match self {
            Width::Input(d) => format!("{d} (input columns)"),
            Width::Hidden(1) => "n (the hidden width)".into(),
            Width::Hidden(k) => format!("{k}·n ({k} hidden vectors)"),
        }
    }
}

/// What a variable computes.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Columns of the input.
    Input(Range<usize>),
    /// $(σ_W/\sqrt{n_{in}}) W z$.
    Dense { weight: usize, input: usize },
    /// $h + σ_b b$.
    AddBias { input: usize, bias: usize },
    /// The sum of the parts.
    Add(Vec<usize>),
    /// The mean of the parts.
    Mean(Vec<usize>),
    /// The parts stacked; no part is itself a concatenation.
    Concat(Vec<usize>),
    /// $φ$ entrywise.
    Apply {
        activation: Activation,
        input: usize,
    },
    /// $(x − \operatorname{mean}(x)) / \operatorname{std}(x)$ over the coordinates.
    LayerNorm { input: usize },
    /// Output `query` of attention block `block`: $Σ_s \operatorname{softmax}\_s(q·k_s / n) v_s$.
    Attend { block: usize, query: usize },
}

/// An attention block: its queries, keys and values (variables of hidden width).
#[derive(Clone, Debug)]
pub(crate) struct AttentionDecl {
    pub(crate) queries: Vec<usize>,
    pub(crate) keys: Vec<usize>,
    pub(crate) values: Vec<usize>,
}

/// A variable: its operation and its width.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) op: Op,
    pub(crate) width: Width,
}

/// A weight: $σ_W$, its fan-in (known from its first use) and the `Dense` variables
/// that use it.
#[derive(Clone, Debug)]
pub(crate) struct WeightDecl {
    pub(crate) std: f64,
    /// The weight's coefficient in the NTK when it is not $σ_W^2$ (an MLP in the
    /// standard parameterization: its fan-in).
    pub(crate) ntk_coef: Option<f64>,
    pub(crate) fan_in: Option<Width>,
    pub(crate) uses: Vec<usize>,
}

/// A bias: $σ_b$, its width (known from its first use) and the `AddBias` variables that
/// use it.
#[derive(Clone, Debug)]
pub(crate) struct BiasDecl {
    pub(crate) std: f64,
    /// The bias's coefficient in the NTK when it is not $σ_b^2$ (1 in the standard
    /// parameterization).
    pub(crate) ntk_coef: Option<f64>,
    pub(crate) width: Option<Width>,
    pub(crate) uses: Vec<usize>,
}

/// A parameter group, in the order of declaration (the parameter order of the
/// finite network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// A weight, by index.
    Weight(usize),
    /// A bias, by index.
    Bias(usize),
}

/// How a convolution ([`Program::conv`], [`Program::conv2d`]) treats the ends of the
/// sequence or the edges of the image. (Zero padding, neural-tangents' `'SAME'`, is
/// not offered yet; the enum is non-exhaustive so that it can be.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Padding {
    /// Positions wrap around (neural-tangents' `'CIRCULAR'`): one output per position.
    Circular,
    /// Only full windows (`'VALID'`): $P − \text{taps} + 1$ outputs for $P$ positions.
    Valid,
}

/// A network described as a computation graph with shared weights. See the
/// [module documentation](self).
///
/// Every builder method checks its arguments: a handle from another program, an
/// input range outside the input, sums of different widths, an empty sum, a weight
/// used with two fan-ins, or a negative or non-finite $σ$ is an error, never a panic.
#[derive(Clone, Debug)]
pub struct Program {
    id: u64,
    input_dim: usize,
    pub(crate) nodes: Vec<Node>,
    pub(crate) weights: Vec<WeightDecl>,
    pub(crate) biases: Vec<BiasDecl>,
    pub(crate) groups: Vec<Group>,
    pub(crate) attentions: Vec<AttentionDecl>,
    pub(crate) output: Option<(usize, Readout)>,
    /// The readout's weight and bias coefficients in the NTK when they are not $σ^2$
    /// (an MLP in the standard parameterization).
    pub(crate) readout_ntk_coef: Option<(f64, f64)>,
    /// An error found while building from another description (e.g.
    /// `From<&MlpSpec>`), reported by every consumer.
    deferred: Option<Error>,
}

impl Program {
    /// An empty program whose inputs have `input_dim` columns (rows are samples).
    #[must_use]
    pub fn new(input_dim: usize) -> Self {
        Program {
            id: NEXT_PROGRAM.fetch_add(1, Ordering::Relaxed),
            input_dim,
            nodes: Vec::new(),
            weights: Vec::new(),
            biases: Vec::new(),
            groups: Vec::new(),
            attentions: Vec::new(),
            output: None,
            readout_ntk_coef: None,
            deferred: None,
        }
    }

    /// The input dimension $d$.
    #[must_use]
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// The number of outputs $k$ (1 until an output is set).
    #[must_use]
    pub fn output_dim(&self) -> usize {
        self.output.map_or(1, |(_, r)| r.outputs)
    }

    /// The number of variables.
    #[must_use]
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the program has no variables.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The variable holding columns `columns` of the input (a token, or one
    /// position's channels).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if the range is empty or reaches past the input.
    pub fn input(&mut self, columns: Range<usize>) -> Result<Var> {
        if columns.start >= columns.end || columns.end > self.input_dim {
            return Err(Error::InvalidParameter {
                parameter: "input columns",
                value: format!(
                    "{}..{} (the input has {} columns)",
                    columns.start, columns.end, self.input_dim
                ),
                reason: "must be a non-empty range within the input's columns",
            });
        }
        let width = Width::Input(columns.len());
        Ok(self.push(Op::Input(columns), width))
    }

    /// A new weight matrix with standard deviation $σ_W$ (applied as
    /// $(σ_W/\sqrt{n_{in}}) W z$, $W ∼ N(0, 1)$).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `weight_std` is negative or not finite.
    pub fn weight(&mut self, weight_std: f64) -> Result<Weight> {
        check_std("weight_std", weight_std)?;
        self.weights.push(WeightDecl {
            std: weight_std,
            ntk_coef: None,
            fan_in: None,
            uses: Vec::new(),
        });
        self.groups.push(Group::Weight(self.weights.len() - 1));
        Ok(Weight {
            program: self.id,
            index: self.weights.len() - 1,
        })
    }

    /// A new bias vector with standard deviation $σ_b$ (added as $σ_b b$, $b ∼ N(0, 1)$).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `bias_std` is negative or not finite.
    pub fn bias(&mut self, bias_std: f64) -> Result<Bias> {
        check_std("bias_std", bias_std)?;
        self.biases.push(BiasDecl {
            std: bias_std,
            ntk_coef: None,
            width: None,
            uses: Vec::new(),
        });
        self.groups.push(Group::Bias(self.biases.len() - 1));
        Ok(Bias {
            program: self.id,
            index: self.biases.len() - 1,
        })
    }

    /// $(σ_W/\sqrt{n_{in}}) W z$: a hidden vector of width $n$. A weight may be used many times,
    /// always with the same fan-in.
    ///
    /// # Errors
    /// A handle from another program, or a fan-in different from the weight's earlier
    /// uses.
    pub fn dense(&mut self, weight: Weight, z: Var) -> Result<Var> {
        let w = self.check_weight(weight)?;
        let z = self.check_var("dense input", z)?;
        let fan_in = self.nodes[z].width;
        match self.weights[w].fan_in {
            Some(previous) if previous != fan_in => {
                return Err(Error::InvalidParameter {
                    parameter: "dense input",
                    value: format!("variable {z} of width {}", fan_in.describe()),
                    reason: "a weight must be used with the same fan-in at every use",
                });
            }
            _ => self.weights[w].fan_in = Some(fan_in),
        }
        let var = self.push(
            Op::Dense {
                weight: w,
                input: z,
            },
            Width::Hidden(1),
        );
        self.weights[w].uses.push(var.index);
        Ok(var)
    }

    /// $h + σ_b b$. A bias may be added at many places, always to vectors of the same
    /// hidden width.
    ///
    /// # Errors
    /// A handle from another program, a variable of input width (a bias belongs to a
    /// hidden vector), or a width different from the bias's earlier uses.
    pub fn add_bias(&mut self, h: Var, bias: Bias) -> Result<Var> {
        let b = self.check_bias(bias)?;
        let h = self.check_var("add_bias input", h)?;
        let width = self.nodes[h].width;
        if let Width::Input(_) = width {
            return Err(Error::InvalidParameter {
                parameter: "add_bias input",
                value: format!("variable {h} of width {}", width.describe()),
                reason: "a bias is added to a hidden vector (the output of a dense layer)",
            });
        }
        match self.biases[b].width {
            Some(previous) if previous != width => {
                return Err(Error::InvalidParameter {
                    parameter: "add_bias input",
                    value: format!("variable {h} of width {}", width.describe()),
                    reason: "a bias must be added to vectors of the same width at every use",
                });
            }
            _ => self.biases[b].width = Some(width),
        }
        let var = self.push(Op::AddBias { input: h, bias: b }, width);
        self.biases[b].uses.push(var.index);
        Ok(var)
    }

    /// The sum of `parts` (all of the same width): residual connections, or a
    /// recurrent step's input and state.
    ///
    /// # Errors
    /// An empty list, a foreign handle, or parts of different widths.
    pub fn add(&mut self, parts: &[Var]) -> Result<Var> {
        let (parts, width) = self.same_width("add", parts)?;
        Ok(self.push(Op::Add(parts), width))
    }

    /// The average of `parts` (all of the same width): pooling over time or positions.
    ///
    /// # Errors
    /// An empty list, a foreign handle, or parts of different widths.
    pub fn mean(&mut self, parts: &[Var]) -> Result<Var> {
        let (parts, width) = self.same_width("mean", parts)?;
        Ok(self.push(Op::Mean(parts), width))
    }

    /// The parts stacked into one vector (a convolution's window, or a flattening):
    /// $K$ hidden vectors of width $n$ make one of width $K·n$, which a weight then sees as
    /// its fan-in.
    ///
    /// # Errors
    /// An empty list, a foreign handle, or a mix of input-width and hidden parts (a
    /// fan-in is either finite or grows with $n$).
    pub fn concat(&mut self, parts: &[Var]) -> Result<Var> {
        if parts.is_empty() {
            return Err(empty("concat"));
        }
        let mut flat = Vec::with_capacity(parts.len());
        for &v in parts {
            let v = self.check_var("concat part", v)?;
            match &self.nodes[v].op {
                Op::Concat(inner) => flat.extend_from_slice(inner),
                _ => flat.push(v),
            }
        }
        let mut input = 0;
        let mut hidden = 0;
        for &v in &flat {
            match self.nodes[v].width {
                Width::Input(d) => input += d,
                Width::Hidden(k) => hidden += k,
            }
        }
        let width = match (input, hidden) {
            (d, 0) => Width::Input(d),
            (0, k) => Width::Hidden(k),
            _ => {
                return Err(Error::InvalidParameter {
                    parameter: "concat parts",
                    value: format!("{input} input columns and {hidden} hidden vectors"),
                    reason: "a concatenation cannot mix input columns with hidden vectors",
                });
            }
        };
        Ok(self.push(Op::Concat(flat), width))
    }

    /// A 1-D convolution over a sequence of positions (one variable each, all of the
    /// same width): output $q$ is `dense(weight, concat(window_q))`, the same weight at
    /// every position, so its fan-in is `taps` times a position's width
    /// (neural-tangents' `Conv` normalisation). Window $q$ holds the positions
    /// $q − ⌊(\text{taps} − 1)/2⌋, …, q + ⌈(\text{taps} − 1)/2⌉$, taken modulo the length
    /// with [`Padding::Circular`]; with [`Padding::Valid`] it holds $q, …, q + \text{taps} − 1$
    /// and there are $P − \text{taps} + 1$ outputs for $P$ positions. Returns the
    /// pre-activations, one per output position (add a bias and apply $φ$ to each). For
    /// images, [`conv2d`](Program::conv2d).
    ///
    /// ```
    /// use ntk::{Activation, Padding, Program};
    /// # fn main() -> Result<(), ntk::Error> {
    /// // 8 positions × 3 channels, two circular 3-tap ReLU convolutions, average pooling.
    /// let mut p = Program::new(8 * 3);
    /// let mut z = (0..8).map(|q| p.input(3 * q..3 * q + 3)).collect::<Result<Vec<_>, _>>()?;
    /// for _ in 0..2 {
    ///     let (w, b) = (p.weight(1.4)?, p.bias(0.1)?);
    ///     z = p
    ///         .conv(w, &z, 3, Padding::Circular)?
    ///         .into_iter()
    ///         .map(|h| p.add_bias(h, b).and_then(|h| p.apply(Activation::Relu, h)))
    ///         .collect::<Result<_, _>>()?;
    /// }
    /// let pooled = p.mean(&z)?;
    /// p.output(pooled, 1.0)?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// No positions, zero taps, more taps than positions with [`Padding::Valid`], a
    /// foreign handle, positions of different widths, or a fan-in different from the
    /// weight's earlier uses.
    pub fn conv(
        &mut self,
        weight: Weight,
        positions: &[Var],
        taps: usize,
        padding: Padding,
    ) -> Result<Vec<Var>> {
        let (out, _) = self.conv_nd(weight, positions, &[positions.len()], &[taps], padding)?;
        Ok(out)
    }

    /// A 2-D convolution over a `height × width` grid of positions (an image, one
    /// variable per pixel, row-major, all of the same width) with a `taps.0 × taps.1`
    /// filter: output $(r, c)$ is `dense(weight, concat(window_{r,c}))`, the window's
    /// pixels row-major, so the fan-in is $\text{taps}_0 · \text{taps}_1$ times a pixel's
    /// width. Along each axis the windows are those of [`conv`](Program::conv) (circular:
    /// starting $⌊(\text{taps} − 1)/2⌋$ before the output's position, modulo the length;
    /// valid: full windows only). Returns the outputs row-major, with their grid's shape:
    /// `(height, width)` for [`Padding::Circular`], `(height − taps.0 + 1, width − taps.1 + 1)`
    /// for [`Padding::Valid`]; neural-tangents' `Conv(·, taps, 'CIRCULAR' | 'VALID')` on
    /// NHWC images.
    ///
    /// # Errors
    /// As [`conv`](Program::conv), and [`Error::InvalidParameter`] if `positions` does
    /// not hold `height · width` variables.
    pub fn conv2d(
        &mut self,
        weight: Weight,
        positions: &[Var],
        (height, width): (usize, usize),
        taps: (usize, usize),
        padding: Padding,
    ) -> Result<(Vec<Var>, (usize, usize))> {
        if height.checked_mul(width) != Some(positions.len()) {
            return Err(Error::InvalidParameter {
                parameter: "conv2d positions",
                value: format!(
                    "{} variables for a {height} × {width} grid",
                    positions.len()
                ),
                reason: "a grid needs one variable per pixel, row-major",
            });
        }
        let (out, shape) = self.conv_nd(
            weight,
            positions,
            &[height, width],
            &[taps.0, taps.1],
            padding,
        )?;
        Ok((out, (shape[0], shape[1])))
    }

    /// The convolution over a row-major grid of shape `dims` with a filter of shape
    /// `taps`: one `dense(weight, concat(window))` per output position, row-major, and
    /// the outputs' grid shape.
    fn conv_nd(
        &mut self,
        weight: Weight,
        positions: &[Var],
        dims: &[usize],
        taps: &[usize],
        padding: Padding,
    ) -> Result<(Vec<Var>, Vec<usize>)> {
        if positions.is_empty() {
            return Err(empty("conv"));
        }
        self.same_width("conv positions", positions)?;
        // Per axis: the number of outputs, and the input index of tap j at output q.
        let mut axes: Vec<(usize, Vec<Vec<usize>>)> = Vec::with_capacity(dims.len());
        for (&count, &taps) in dims.iter().zip(taps) {
            if taps == 0 {
                return Err(Error::InvalidParameter {
                    parameter: "taps",
                    value: "0".into(),
                    reason: "a filter needs at least one tap",
                });
            }
            let outputs = match padding {
                Padding::Circular => count,
                Padding::Valid if taps <= count => count - taps + 1,
                Padding::Valid => {
                    return Err(Error::InvalidParameter {
                        parameter: "taps",
                        value: format!("{taps} taps over {count} positions"),
                        reason: "a valid convolution needs at least as many positions as taps",
                    });
                }
            };
            // Circular windows start (taps − 1)/2 positions to the left (as JAX pads:
            // ⌊(taps − 1)/2⌋ before, the rest after).
            let start = ((taps - 1) / 2) % count;
            let windows = (0..outputs)
                .map(|q| {
                    (0..taps)
                        .map(|j| match padding {
                            Padding::Circular => (q + j % count + count - start) % count,
                            Padding::Valid => q + j,
                        })
                        .collect()
                })
                .collect();
            axes.push((outputs, windows));
        }
        // Row-major products over the axes: output positions, and each one's window.
        let mut outputs: Vec<Vec<usize>> = vec![Vec::new()];
        for (count, _) in &axes {
            outputs = outputs
                .iter()
                .flat_map(|o| (0..*count).map(move |q| [o.as_slice(), &[q]].concat()))
                .collect();
        }
        let shape = axes.iter().map(|(count, _)| *count).collect();
        let vars = outputs
            .iter()
            .map(|out| {
                let mut window: Vec<usize> = vec![0];
                for (axis, &q) in out.iter().enumerate() {
                    let (dim, taps) = (dims[axis], &axes[axis].1[q]);
                    window = window
                        .iter()
                        .flat_map(|&flat| taps.iter().map(move |&i| flat * dim + i))
                        .collect();
                }
                let parts: Vec<Var> = window.iter().map(|&i| positions[i]).collect();
                let stacked = self.concat(&parts)?;
                self.dense(weight, stacked)
            })
            .collect::<Result<_>>()?;
        Ok((vars, shape))
    }

    /// $φ(h)$ entrywise.
    ///
    /// # Errors
    /// A foreign handle, or an invalid activation ([`Activation::validate`]).
    pub fn apply(&mut self, activation: Activation, h: Var) -> Result<Var> {
        activation.validate()?;
        let h = self.check_var("apply input", h)?;
        let width = self.nodes[h].width;
        Ok(self.push(
            Op::Apply {
                activation,
                input: h,
            },
            width,
        ))
    }

    /// LayerNorm without affine parameters or $ε$:
    /// $(x − \operatorname{mean}(x)) / \operatorname{std}(x)$, the mean and the (biased)
    /// standard deviation taken over the $n$ coordinates of each sample.
    ///
    /// # Errors
    /// A foreign handle, or a variable that is not one hidden vector (input columns or
    /// a concatenation).
    pub fn layer_norm(&mut self, x: Var) -> Result<Var> {
        let x = self.check_var("layer_norm input", x)?;
        self.check_single_hidden("layer_norm input", x)?;
        Ok(self.push(Op::LayerNorm { input: x }, Width::Hidden(1)))
    }

    /// Softmax attention with $1/n$ logits, one output per query:
    /// $y_t = Σ_s \operatorname{softmax}\_s(q_t·k_s / n) v_s$, $n$ the width of the queries and keys (not
    /// $1/\sqrt n$: Tensor Programs II's scaling, whose limit is non-trivial when queries and
    /// keys are tied). Queries, keys and values may be the same variables.
    ///
    /// # Errors
    /// An empty list, keys and values of different lengths, a foreign handle, or a
    /// variable that is not one hidden vector.
    pub fn attention(&mut self, queries: &[Var], keys: &[Var], values: &[Var]) -> Result<Vec<Var>> {
        if queries.is_empty() || keys.is_empty() {
            return Err(empty("attention"));
        }
        if keys.len() != values.len() {
            return Err(Error::InvalidParameter {
                parameter: "attention values",
                value: format!("{} values for {} keys", values.len(), keys.len()),
                reason: "every key needs one value",
            });
        }
        let mut lists = [Vec::new(), Vec::new(), Vec::new()];
        for (list, (name, vars)) in lists.iter_mut().zip([
            ("attention query", queries),
            ("attention key", keys),
            ("attention value", values),
        ]) {
            for &v in vars {
                let v = self.check_var(name, v)?;
                self.check_single_hidden(name, v)?;
                list.push(v);
            }
        }
        let [queries, keys, values] = lists;
        let block = self.attentions.len();
        let count = queries.len();
        self.attentions.push(AttentionDecl {
            queries,
            keys,
            values,
        });
        Ok((0..count)
            .map(|query| self.push(Op::Attend { block, query }, Width::Hidden(1)))
            .collect())
    }

    /// The readout $f = (σ_v/\sqrt{n_{in}}) vᵀ z$ with $v ∼ N(0, 1)$: one output, no bias.
    /// A program has one readout, and its vector $v$ is used only there (the condition
    /// under which Tensor Programs II's infinite-width NTK is exact).
    ///
    /// # Errors
    /// A foreign handle, an invalid $σ_v$, or a second output.
    pub fn output(&mut self, z: Var, readout_std: f64) -> Result<()> {
        self.readout(z, Readout::new(readout_std))
    }

    /// The readout $f = (σ_v/\sqrt{n_{in}}) V z + σ_b\' b\'$ with $k$ outputs (see [`Readout`]).
    ///
    /// # Errors
    /// A foreign handle, an invalid $σ$, zero outputs, or a second output.
    pub fn readout(&mut self, z: Var, readout: Readout) -> Result<()> {
        let z = self.check_var("output", z)?;
        check_std("readout weight_std", readout.weight_std)?;
        check_std("readout bias_std", readout.bias_std)?;
        if readout.outputs == 0 {
            return Err(Error::InvalidParameter {
                parameter: "outputs",
                value: "0".into(),
                reason: "a readout needs at least one output",
            });
        }
        if let Some((previous, _)) = self.output {
            return Err(Error::InvalidParameter {
                parameter: "output",
                value: format!("variable {z} (variable {previous} is already the output)"),
                reason: "a program has one readout",
            });
        }
        self.output = Some((z, readout));
        Ok(())
    }

    /// Checks that the program is complete: it has an output, every weight and bias
    /// is used, and nothing deferred went wrong.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming what is missing.
    pub fn validate(&self) -> Result<()> {
        if let Some(e) = &self.deferred {
            return Err(e.clone());
        }
        if self.output.is_none() {
            return Err(Error::InvalidParameter {
                parameter: "program",
                value: format!("{} variables, no output", self.nodes.len()),
                reason: "call `output` (or `readout`) to say what the network computes",
            });
        }
        if let Some(w) = self.weights.iter().position(|w| w.uses.is_empty()) {
            return Err(Error::InvalidParameter {
                parameter: "weight",
                value: format!("weight {w}"),
                reason: "is never used by `dense`, so its shape is unknown",
            });
        }
        if let Some(b) = self.biases.iter().position(|b| b.uses.is_empty()) {
            return Err(Error::InvalidParameter {
                parameter: "bias",
                value: format!("bias {b}"),
                reason: "is never used by `add_bias`, so its width is unknown",
            });
        }
        Ok(())
    }

    /// The finite network of hidden width `width`: $W, b, v ∼ N(0, 1)$ drawn from `rng`
    /// in parameter order (groups in order of declaration, $W$ row-major, then the
    /// readout $V$ row-major and its bias).
    ///
    /// # Errors
    /// If the program is incomplete ([`Program::validate`]) or `width` is 0.
    pub fn init<T: crate::Scalar, R: rand::Rng + ?Sized>(
        &self,
        width: usize,
        rng: &mut R,
    ) -> Result<ProgramNetwork<T>> {
        ProgramNetwork::init(self, width, rng)
    }

    /// The readout variable and its [`Readout`] (after [`Program::validate`]).
    pub(crate) fn readout_of(&self) -> Result<(usize, Readout)> {
        self.validate()?;
        self.output.ok_or_else(|| Error::InvalidParameter {
            parameter: "program",
            value: "no output".into(),
            reason: "call `output` to say what the network computes",
        })
    }

    /// The values of the input-width variables `vars` on the batch `x` (rows are
    /// samples): they are deterministic, and the infinite-width kernels use them as
    /// they are.
    pub(crate) fn fixed_values(&self, vars: &[usize], x: &DMatrix<f64>) -> Vec<DMatrix<f64>> {
        let mut memo: HashMap<usize, DMatrix<f64>> = HashMap::new();
        vars.iter()
            .map(|&v| self.fixed_value(v, x, &mut memo))
            .collect()
    }

    fn fixed_value(
        &self,
        v: usize,
        x: &DMatrix<f64>,
        memo: &mut HashMap<usize, DMatrix<f64>>,
    ) -> DMatrix<f64> {
        if let Some(value) = memo.get(&v) {
            return value.clone();
        }
        let sum = |parts: &[usize], memo: &mut HashMap<usize, DMatrix<f64>>| {
            let mut s = self.fixed_value(parts[0], x, memo);
            for &p in &parts[1..] {
                s += self.fixed_value(p, x, memo);
            }
            s
        };
        let value = match &self.nodes[v].op {
            Op::Input(cols) => x.columns(cols.start, cols.len()).into_owned(),
            Op::Add(parts) => sum(parts, memo),
            Op::Mean(parts) => sum(parts, memo) / parts.len() as f64,
            Op::Concat(parts) => {
                let values: Vec<DMatrix<f64>> = parts
                    .iter()
                    .map(|&p| self.fixed_value(p, x, memo))
                    .collect();
                let cols = values.iter().map(DMatrix::ncols).sum();
                let mut c = DMatrix::zeros(x.nrows(), cols);
                let mut offset = 0;
                for part in values {
                    c.columns_mut(offset, part.ncols()).copy_from(&part);
                    offset += part.ncols();
                }
                c
            }
            Op::Apply { activation, input } => {
                activation.elementwise(&self.fixed_value(*input, x, memo))
            }
            Op::Dense { .. } | Op::AddBias { .. } | Op::LayerNorm { .. } | Op::Attend { .. } => {
                unreachable!("dense, bias, layer-norm and attention outputs have hidden width")
            }
        };
        memo.insert(v, value.clone());
        value
    }

    fn push(&mut self, op: Op, width: Width) -> Var {
        self.nodes.push(Node { op, width });
        Var {
            program: self.id,
            index: self.nodes.len() - 1,
        }
    }

    fn check_var(&self, parameter: &'static str, v: Var) -> Result<usize> {
        if v.program != self.id || v.index >= self.nodes.len() {
            return Err(foreign(parameter, "variable", v.index));
        }
        Ok(v.index)
    }

    fn check_weight(&self, w: Weight) -> Result<usize> {
        if w.program != self.id || w.index >= self.weights.len() {
            return Err(foreign("weight", "weight", w.index));
        }
        Ok(w.index)
    }

    fn check_bias(&self, b: Bias) -> Result<usize> {
        if b.program != self.id || b.index >= self.biases.len() {
            return Err(foreign("bias", "bias", b.index));
        }
        Ok(b.index)
    }

    /// Errors unless variable `v` is one hidden vector (width $n$).
    fn check_single_hidden(&self, parameter: &'static str, v: usize) -> Result<()> {
        match self.nodes[v].width {
            Width::Hidden(1) => Ok(()),
            other => Err(Error::InvalidParameter {
                parameter,
                value: format!("variable {v} of width {}", other.describe()),
                reason: "must be one hidden vector (width n)",
            }),
        }
    }

    fn same_width(&self, op: &'static str, parts: &[Var]) -> Result<(Vec<usize>, Width)> {
        if parts.is_empty() {
            return Err(empty(op));
        }
        let mut out = Vec::with_capacity(parts.len());
        for &v in parts {
            out.push(self.check_var(op, v)?);
        }
        let width = self.nodes[out[0]].width;
        if let Some(&bad) = out.iter().find(|&&v| self.nodes[v].width != width) {
            return Err(Error::InvalidParameter {
                parameter: op,
                value: format!(
                    "variable {} of width {} and variable {bad} of width {}",
                    out[0],
                    width.describe(),
                    self.nodes[bad].width.describe()
                ),
                reason: "all parts must have the same width",
            });
        }
        Ok((out, width))
    }
}

fn empty(op: &'static str) -> Error {
    Error::InvalidParameter {
        parameter: op,
        value: "[]".into(),
        reason: "needs at least one part",
    }
}

fn foreign(parameter: &'static str, what: &str, index: usize) -> Error {
    Error::InvalidParameter {
        parameter,
        value: format!("{what} {index}"),
        reason: "belongs to another program",
    }
}

/// The program of an MLP: `dense`, `add_bias` and `apply` per hidden layer, then a
/// readout with the spec's $σ_w$, $σ_b$ and $k$ outputs. Its kernels equal the spec's, and
/// its network at a width $n$ draws the same parameters, in the same order, as the
/// spec's with every hidden width $n$.
///
/// Programs use the NTK parameterization: a spec in the standard parameterization (or
/// an invalid one) gives a program whose every use reports that error.
impl From<&MlpSpec> for Program {
    fn from(spec: &MlpSpec) -> Program {
        let standard = spec.parameterization_kind() != Parameterization::Ntk;
        let built = if standard {
            Err(Error::InvalidParameter {
                parameter: "parameterization",
                value: "Standard".into(),
                reason: "programs use the NTK parameterization",
            })
        } else {
            Program::mlp(spec, false)
        };
        built.unwrap_or_else(|e| {
            let mut p = Program::new(spec.input_dim());
            p.deferred = Some(e);
            p
        })
    }
}

impl Program {
    /// The program of `spec` whose NTK coefficients follow the spec's
    /// parameterization and hidden widths (for the per-layer limit of an MLP in
    /// either parameterization; its finite network is not the spec's in the standard
    /// parameterization).
    pub(crate) fn with_widths_of(spec: &MlpSpec) -> Result<Program> {
        Program::mlp(spec, spec.parameterization_kind() != Parameterization::Ntk)
    }

    fn mlp(spec: &MlpSpec, standard: bool) -> Result<Program> {
        spec.validate()?;
        let mut p = Program::new(spec.input_dim());
        let (sw, sb) = (spec.sigma_w(), spec.sigma_b());
        let widths = spec.widths();
        let mut z = p.input(0..spec.input_dim())?;
        for (l, (_, activation)) in spec.hidden_layers().iter().enumerate() {
            let w = p.weight(sw)?;
            let mut h = p.dense(w, z)?;
            if standard {
                p.weights[w.index].ntk_coef = Some(widths[l] as f64);
            }
            if spec.has_bias() {
                let b = p.bias(sb)?;
                h = p.add_bias(h, b)?;
                if standard {
                    p.biases[b.index].ntk_coef = Some(1.0);
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
    fn building_checks_its_arguments() {
        let mut p = Program::new(4);
        assert!(p.input(0..5).is_err());
        assert!(p.input(2..2).is_err());
        let x = p.input(0..2).unwrap();
        let y = p.input(2..4).unwrap();
        assert!(p.weight(-1.0).is_err());
        assert!(p.bias(f64::NAN).is_err());
        let w = p.weight(1.0).unwrap();
        let h = p.dense(w, x).unwrap();
        // The same weight on a hidden vector: a different fan-in.
        assert!(p.dense(w, h).is_err());
        assert!(p.add(&[]).is_err());
        assert!(p.add(&[h, x]).is_err());
        assert!(p.concat(&[h, y]).is_err());
        let b = p.bias(0.1).unwrap();
        assert!(p.add_bias(x, b).is_err());
        let mut other = Program::new(4);
        let foreign = other.input(0..1).unwrap();
        assert!(p.apply(Activation::Relu, foreign).is_err());
        assert!(p.validate().is_err(), "no output yet");
        p.output(h, 1.0).unwrap();
        assert!(p.output(h, 1.0).is_err(), "a second output");
        assert!(p.validate().is_err(), "bias never used");
        p.add_bias(h, b).unwrap();
        p.validate().unwrap();
    }

    #[test]
    fn concatenations_flatten_and_add_widths() {
        let mut p = Program::new(6);
        let parts: Vec<Var> = (0..3).map(|t| p.input(2 * t..2 * t + 2).unwrap()).collect();
        let inner = p.concat(&parts[..2]).unwrap();
        let c = p.concat(&[inner, parts[2]]).unwrap();
        assert_eq!(p.nodes[c.index].width, Width::Input(6));
        match &p.nodes[c.index].op {
            Op::Concat(flat) => assert_eq!(flat.len(), 3),
            other => panic!("{other:?}"),
        }
        let w = p.weight(1.0).unwrap();
        let h = p.dense(w, c).unwrap();
        let hh = p.concat(&[h, h]).unwrap();
        assert_eq!(p.nodes[hh.index].width, Width::Hidden(2));
    }

    #[test]
    fn standard_specs_defer_their_error() {
        let spec = MlpSpec::new(2)
            .hidden(8, Activation::Relu)
            .parameterization(Parameterization::Standard);
        let p = Program::from(&spec);
        assert!(p.validate().is_err());
        let ok = Program::from(&MlpSpec::new(2).hidden(8, Activation::Relu).bias_std(0.1));
        ok.validate().unwrap();
        assert_eq!(ok.groups.len(), 2);
    }
}
