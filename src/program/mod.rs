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
//! let net = p.init::<f64>(1024, &mut StdRng::seed_from_u64(0))?;
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
//! | [`batch_norm`](Program::batch_norm)`(x)` | $(x − \operatorname{mean})/\operatorname{std}$ per neuron, over the samples of the batch (batch-coupled) |
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

mod conv;
mod network;
pub(crate) mod ops;

use std::sync::atomic::{AtomicU64, Ordering};

use nalgebra::DMatrix;

use crate::error::{Error, Result, check_std};

pub use conv::Padding;
pub(crate) use conv::{AxisWindows, GridLayer};
pub use network::ProgramNetwork;
use ops::FiniteForward;
pub(crate) use ops::Op;

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
    /// The number of columns at hidden width `n`, `None` if it overflows.
    pub(crate) fn checked_columns(self, n: usize) -> Option<usize> {
        match self {
            Width::Input(d) => Some(d),
            Width::Hidden(k) => k.checked_mul(n),
        }
    }

    /// The number of hidden blocks $K$ (0 for input columns).
    pub(crate) fn hidden_blocks(self) -> usize {
        match self {
            Width::Input(_) => 0,
            Width::Hidden(k) => k,
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

impl WeightDecl {
    /// $c_W$, the weight's coefficient in the NTK: $σ_W²$ unless set.
    pub(crate) fn ntk_coefficient(&self) -> f64 {
        self.ntk_coef.unwrap_or(self.std * self.std)
    }
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

impl BiasDecl {
    /// $c_b$, the bias's coefficient in the NTK: $σ_b²$ unless set.
    pub(crate) fn ntk_coefficient(&self) -> f64 {
        self.ntk_coef.unwrap_or(self.std * self.std)
    }
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
    pub(crate) output: Option<(usize, Readout)>,
    /// The readout's weight and bias coefficients in the NTK when they are not $σ^2$
    /// (an MLP in the standard parameterization).
    pub(crate) readout_ntk_coef: Option<(f64, f64)>,
    /// The convolutions and poolings, as the grids they map (for the infinite-width
    /// engine's array operations).
    pub(crate) grid_layers: Vec<GridLayer>,
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
            output: None,
            readout_ntk_coef: None,
            grid_layers: Vec::new(),
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

    /// Checks that the program is complete: it has an output, and every weight and bias
    /// is used.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming what is missing.
    pub fn validate(&self) -> Result<()> {
        if self.output.is_none() {
            return Err(Error::InvalidParameter {
                parameter: "program",
                value: format!("{} variables without an output", self.nodes.len()),
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
                reason: "is never added to a vector, so its width is unknown",
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
    pub fn init<T: crate::Scalar>(
        &self,
        width: usize,
        rng: &mut (impl rand::Rng + ?Sized),
    ) -> Result<ProgramNetwork<T>> {
        ProgramNetwork::init(self, width, rng)
    }

    /// Whether the program couples the samples of a batch (it has a
    /// [`batch_norm`](Program::batch_norm)): its network's output on a sample depends on
    /// the whole batch, and its kernels are kernels between batches (see
    /// [`NtkModel::batch_coupled`](crate::NtkModel::batch_coupled)).
    #[must_use]
    pub fn batch_coupled(&self) -> bool {
        self.nodes
            .iter()
            .any(|node| node.op.finite::<f64>().couples_samples())
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
    /// they are. Each is computed by its operation's finite rule, in f64.
    pub(crate) fn fixed_values(&self, vars: &[usize], x: &DMatrix<f64>) -> Vec<DMatrix<f64>> {
        let last = vars.iter().max().map_or(0, |&v| v + 1);
        let mut values: Vec<DMatrix<f64>> = Vec::with_capacity(last);
        for node in &self.nodes[..last] {
            let value = match node.width {
                Width::Input(_) => {
                    let at = FiniteForward {
                        program: self,
                        x,
                        values: &values,
                        parameters: None,
                    };
                    node.op.finite::<f64>().forward(&at).value
                }
                Width::Hidden(_) => DMatrix::zeros(0, 0),
            };
            values.push(value);
        }
        vars.iter().map(|&v| values[v].clone()).collect()
    }

    /// Sets weight `w`'s coefficient in the NTK (an MLP in the standard
    /// parameterization: its fan-in).
    pub(crate) fn set_weight_ntk_coefficient(&mut self, w: Weight, coefficient: f64) {
        self.weights[w.index].ntk_coef = Some(coefficient);
    }

    /// Sets bias `b`'s coefficient in the NTK.
    pub(crate) fn set_bias_ntk_coefficient(&mut self, b: Bias, coefficient: f64) {
        self.biases[b.index].ntk_coef = Some(coefficient);
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

pub(crate) fn empty(op: &'static str) -> Error {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::mlp::{MlpSpec, Parameterization};

    #[test]
    fn standard_specs_are_refused() {
        let spec = MlpSpec::new(2)
            .hidden(8, Activation::Relu)
            .parameterization(Parameterization::Standard);
        assert!(Program::try_from(&spec).is_err());
        let ok =
            Program::try_from(&MlpSpec::new(2).hidden(8, Activation::Relu).bias_std(0.1)).unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.groups.len(), 2);
    }
}
