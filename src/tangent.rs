//! Tangent features: how a model describes the gradients of its parameters, and the
//! one validated form that its Jacobian, its vector–Jacobian products and its kernels
//! are computed from.
//!
//! The empirical NTK of a model $f$ with parameters $θ$ is
//!
//! $$Θ(x, x̄) = ⟨∇\_θ f(x), ∇\_θ f(x̄)⟩ = Σ_p ∂f(x)/∂θ_p · ∂f(x̄)/∂θ_p.$$
//!
//! For a dense layer $h = s_w W x + s_b b$ used once, with $G = ∂f/∂h$ (one row per
//! sample), the chain rule gives $∂f/∂W = s_w Gᵀ x$ and $∂f/∂b = s_b G$, so its share of $Θ$
//! is $s_w^2 (x · x̄)(g · \bar g) + s_b^2 (g · \bar g)$, and over a batch
//! $s_w^2 (X_1 X_2ᵀ) ⊙ (G_1 G_2ᵀ) + s_b^2 G_1 G_2ᵀ$: two Gram matrices and a Hadamard product,
//! never the $N × P$ Jacobian. A weight used at several places (shared across the steps
//! of a recurrent net, the positions of a convolution, or inside a residual block) has
//! $∂f/∂W = s_w Σ_u G_uᵀ X_u$, so its share is the double sum over uses
//! $s_w^2 Σ_{u,v} (X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ)$; a bias added at several places has
//! $∂f/∂b = s_b Σ_u G_u$ and the share $s_b^2 (Σ_u G_{1,u})(Σ_v G_{2,v})ᵀ$.
//!
//! A model lists its parameter groups as [`LayerTangent`]s: a weight matrix with the
//! inputs $X_u$ and output gradients $G_u$ of each of its uses, and optionally a bias at
//! the same places ([`LayerTangent::Dense`]); a bias on its own, at one or more
//! places ([`LayerTangent::Bias`]); or parameters of any other shape through their
//! Jacobian block ([`LayerTangent::Jacobian`]). The crate validates them once (every
//! shape against the batch's $N$ samples and $k$ outputs) and computes the Jacobian, the
//! vector–Jacobian product and the kernels from that one validated form.
//!
//! # A shared weight, two ways
//!
//! A weight $W$ ($n_{out} × n_{in}$) used $U$ times enters a kernel in one of two ways:
//! - through its uses: $U^2$ Gram pairs $(X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ)$, i.e.
//!   $U^2 (n_{in} + q·n_{out})$ multiply-adds per kernel entry, where $q = k$ when the $k$ outputs
//!   are averaged ([`empirical_ntk`](crate::empirical_ntk)) and $q = k^2$ when every pair
//!   of outputs is kept ([`empirical_ntk_full`](crate::empirical_ntk_full)); a bias at
//!   the same places comes at no extra GEMM, since $Σ_{u,v} G_{1,u} G_{2,v}ᵀ$ is formed anyway;
//! - through its per-sample gradients $D_i = s_w Σ_u G_u\[i\]ᵀ X_u\[i\]$ ($k·n_{out}·n_{in}$
//!   numbers per sample, formed in $O(N·U·k·n_{out}·n_{in})$): $q·n_{out}·n_{in}$ multiply-adds per
//!   kernel entry, plus $q·n_{out}$ for a bias (its gradients pre-summed, $Σ_u G_u$).
//!
//! The uses are the default: they need no conversion and no extra memory. The kernels
//! switch a weight to its per-sample gradients when that at least halves the work,
//! $2·q·n_{out}·(n_{in} + \[\text{bias}\]) ≤ U^2·(n_{in} + q·n_{out})$. An MLP layer ($U = 1$) therefore
//! always keeps its uses; a convolution filter used at 16 positions with $n_{in} = 384$
//! (3 taps × 128 channels), $n_{out} = 128$ and $k = 1$ switches (49 152 against 131 072).
//! When they are chosen, the per-sample gradients hold at most $U/2$ times as many
//! numbers as the uses they replace. A bias without a weight
//! ([`LayerTangent::Bias`]) is always pre-summed.

use nalgebra::{DMatrix, DMatrixViewMut, DVector, Dim, Dyn, MatrixViewMut};

use crate::Scalar;
use crate::error::{Error, Result, first_non_finite, first_non_finite_entry, shape};
use crate::linalg::{columns_transposed, gemm_nt, try_zeros};

/// One use of a dense layer's parameters on a batch of $N$ samples.
///
/// The layer computes $h = s_w W x + s_b b$ with $W$ of shape $n_{out} × n_{in}$.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseUse<T: Scalar> {
    /// $X$: $N × n_{in}$, the input the layer received at this use (one row per sample).
    pub input: DMatrix<T>,
    /// $G$: $N × (k·n_{out})$, the gradient of the model's outputs with respect to the
    /// layer's pre-activation $h$ at this use. Column block $c$ (columns
    /// $c·n_{out}$ up to $(c+1)·n_{out}$) holds $∂f_c/∂h$ for output $c$, $0 ≤ c < k$.
    pub output_grad: DMatrix<T>,
}

/// The tangent features of one parameter group on a batch: what its share of the
/// NTK and of the Jacobian is computed from.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LayerTangent<T: Scalar> {
    /// A dense layer $h = s_w W x + s_b b$ ($W$: $n_{out} × n_{in}$), possibly used several times
    /// (a shared weight; the bias, if any, is added at every use).
    ///
    /// Its parameters are laid out as $W$ row-major ($W\[a, b\]$ at $a·n_{in} + b$), then $b$
    /// if `bias_scale` is `Some`. Without uses the group has no parameters.
    Dense {
        /// $s_w$, the factor in front of $W x$ ($σ_w/\sqrt{n_{in}}$ in the NTK parameterization).
        weight_scale: T,
        /// $s_b$, the factor in front of $b$; `None` when the layer has no bias parameters.
        bias_scale: Option<T>,
        /// Every use of $W$ (and $b$) in the forward pass.
        uses: Vec<DenseUse<T>>,
    },
    /// A bias vector $b$ ($n_{out}$ entries) added as $s_b b$ at one or more places, without a
    /// weight matrix of its own (a recurrent net's bias added at every step, a bias
    /// added after a sum of several dense outputs): $∂f/∂b = s_b Σ_u G_uᵀ 1$.
    ///
    /// Its parameters are $b$. Without uses the group has no parameters.
    Bias {
        /// $s_b$, the factor in front of $b$.
        scale: T,
        /// $G_u$: $N × (k·n_{out})$ for every place $u$ where $b$ is added, the gradient of the
        /// outputs with respect to the vector $b$ is added to; output $c$ in column block
        /// $c$, as for [`DenseUse::output_grad`].
        output_grads: Vec<DMatrix<T>>,
    },
    /// Parameters of any other shape, given by their Jacobian block $∂f/∂θ$:
    /// $(N·k) × p$, row $i·k + c$ holds $∂f_c(x_i)/∂θ$.
    Jacobian(DMatrix<T>),
    /// The dense layer that produces the model's outputs, $f = s_w W x + s_b b$ with $W$ of
    /// shape $k × n_{in}$. Its output gradient is the identity ($∂f_c/∂f_a = δ_{ca}$), so only
    /// its input is given: the same group as a [`LayerTangent::Dense`] with one use
    /// whose `output_grad` is the $N × k^2$ matrix of unit rows, without that matrix (and
    /// its share of the kernel is $s_w^2 X_1 X_2ᵀ + s_b^2$ on every output).
    ///
    /// Parameters as for `Dense`: $W$ row-major, then $b$ if `bias_scale` is `Some`.
    Readout {
        /// $s_w$, the factor in front of $W x$.
        weight_scale: T,
        /// $s_b$, the factor in front of $b$; `None` without bias parameters.
        bias_scale: Option<T>,
        /// $X$: $N × n_{in}$, the layer's input (one row per sample).
        input: DMatrix<T>,
    },
}

/// One parameter group's share of the empirical NTK, averaged over the $k$ outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerKernel<T: Scalar> {
    /// The weight term $s_w^2 Σ_{u,v} (X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ) / k$, $N_1 × N_2$
    /// (for a [`LayerTangent::Jacobian`] group, its $J_1 J_2ᵀ / k$; zero for a
    /// [`LayerTangent::Bias`] group).
    pub weights: DMatrix<T>,
    /// The bias term $s_b^2 Σ_{u,v} G_{1,u} G_{2,v}ᵀ / k$, $N_1 × N_2$; `None` without bias parameters.
    pub bias: Option<DMatrix<T>>,
}

impl<T: Scalar> LayerKernel<T> {
    /// weights + bias.
    #[must_use]
    pub fn total(&self) -> DMatrix<T> {
        match &self.bias {
            Some(b) => &self.weights + b,
            None => self.weights.clone(),
        }
    }
}

/// How the $k$ outputs appear in a kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Layout {
    /// Averaged over the $k$ outputs: $N_1 × N_2$.
    Trace,
    /// All output pairs: $(N_1·k) × (N_2·k)$, row $i·k + c$ for output $c$ of sample $i$.
    Full,
}

impl Layout {
    /// Kernel rows (and columns) per sample: 1 or $k$.
    pub(crate) fn per_sample(self, k: usize) -> usize {
        match self {
            Layout::Trace => 1,
            Layout::Full => k,
        }
    }

    /// Output pairs contracted per pair of samples: the $k$ diagonal ones, or all $k^2$.
    fn output_pairs(self, k: usize) -> usize {
        k * self.per_sample(k)
    }

    /// The factor in front of every term: $1/k$ for the average over outputs, else 1.
    fn norm<T: Scalar>(self, k: usize) -> T {
        match self {
            Layout::Trace => T::one() / T::from_f64_lossy(k as f64),
            Layout::Full => T::one(),
        }
    }
}

/// One pair of outputs $(c, d)$ in the full layout: the kernel entries
/// $(i·k + c, j·k + d)$, from column block $c$ of the first batch's gradients and block $d$
/// of the second's.
#[derive(Clone, Copy, Debug)]
struct OutputPair {
    c: usize,
    d: usize,
}

impl OutputPair {
    /// All $k^2$ pairs.
    fn all(k: usize) -> impl Iterator<Item = OutputPair> {
        (0..k).flat_map(move |c| (0..k).map(move |d| OutputPair { c, d }))
    }

    /// The entries of this pair in a kernel tile with $k$ rows and columns per sample.
    fn entries<'b, T: Scalar>(
        self,
        tile: &'b mut DMatrixViewMut<'_, T>,
        k: usize,
    ) -> MatrixViewMut<'b, T, Dyn, Dyn, Dyn, Dyn> {
        let (rows, cols) = (tile.nrows() / k, tile.ncols() / k);
        tile.view_with_steps_mut((self.c, self.d), (rows, cols), (k - 1, k - 1))
    }
}

/// What a parameter group is, independent of how its features are stored: two
/// batches' groups contract only if their shapes agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// $W$ ($n_{out} × n_{in}$), and $b$ ($n_{out}$) if `bias`.
    Dense {
        n_in: usize,
        n_out: usize,
        bias: bool,
    },
    /// $b$ ($n_{out}$) alone.
    Bias { n_out: usize },
    /// $p$ parameters of any shape.
    Jacobian { parameters: usize },
    /// A group without uses: no parameters.
    Empty,
}

impl Shape {
    /// Number of (weight, bias) parameters, in this order in the parameter vector
    /// (saturating; [`Tangents::new`] checks that the total fits).
    fn parameters(self) -> (usize, usize) {
        match self {
            Shape::Dense { n_in, n_out, bias } => {
                (n_in.saturating_mul(n_out), if bias { n_out } else { 0 })
            }
            Shape::Bias { n_out } => (0, n_out),
            Shape::Jacobian { parameters } => (parameters, 0),
            Shape::Empty => (0, 0),
        }
    }
}

/// Gradients given per sample: $∂f_c(x_i)/∂θ_a$ = `scale` · `grads[(i, c·p + a)]` for the $p$
/// parameters $θ$ of a part of a group ($N × k·p$).
#[derive(Clone, Debug)]
struct PerSample<T: Scalar> {
    scale: T,
    grads: DMatrix<T>,
}

/// A weight kept as its uses, with the bias added at the same places.
#[derive(Clone, Debug)]
struct Uses<T: Scalar> {
    weight_scale: T,
    bias_scale: Option<T>,
    /// Validated: every input $N × n_{in}$, every output gradient $N × (k·n_{out})$.
    uses: Vec<DenseUse<T>>,
}

/// The output layer: its input, its output gradient being the identity.
#[derive(Clone, Debug)]
struct Readout<T: Scalar> {
    weight_scale: T,
    bias_scale: Option<T>,
    /// Validated: $N × n_{in}$.
    input: DMatrix<T>,
}

/// How a group's features are stored.
#[derive(Clone, Debug)]
enum Form<T: Scalar> {
    /// A weight (and its bias) through its uses: the Gram form.
    Uses(Uses<T>),
    /// The output layer, through its input alone.
    Readout(Readout<T>),
    /// The weight part and the bias part as per-sample gradients.
    PerSample {
        weights: Option<PerSample<T>>,
        bias: Option<PerSample<T>>,
    },
}

/// One parameter group in normal form.
#[derive(Clone, Debug)]
struct Group<T: Scalar> {
    shape: Shape,
    form: Form<T>,
}

/// Tangent features validated against a batch of $N$ samples and a model with $k$
/// outputs: the form the Jacobian, the vector–Jacobian product and the kernels are
/// computed from.
#[derive(Clone, Debug)]
pub(crate) struct Tangents<T: Scalar> {
    samples: usize,
    outputs: usize,
    groups: Vec<Group<T>>,
}

/// Errors unless `m` is `rows` × `cols`; `meaning` says what the shape stands for.
fn expect_shape<T: Scalar>(
    argument: &'static str,
    m: &DMatrix<T>,
    (rows, cols): (usize, usize),
    meaning: &str,
) -> Result<()> {
    if m.shape() == (rows, cols) {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            argument,
            expected: format!("{rows} x {cols} ({meaning})"),
            found: shape(m),
        })
    }
}

/// Errors unless the features `m` (`part` of parameter group `group`) are finite.
fn expect_finite<T: Scalar>(group: usize, part: &str, m: &DMatrix<T>) -> Result<()> {
    match first_non_finite_entry(m) {
        None => Ok(()),
        Some((row, col)) => Err(Error::NonFiniteResult {
            result: "layer_tangents",
            reason: format!(
                "parameter group {group}: {part} is {} at row {row}, column {col} (the \
                     model's gradients overflow, or one of its functions returns NaN)",
                m[(row, col)]
            ),
        }),
    }
}

impl<T: Scalar> Group<T> {
    /// Validates one group of a batch of `n` samples and `k` outputs and brings it to
    /// normal form: a bias without a weight pre-summed, a Jacobian block reshaped to
    /// per-sample rows. Nothing is copied otherwise.
    fn new(tangent: LayerTangent<T>, n: usize, k: usize) -> Result<Self> {
        let empty = Group {
            shape: Shape::Empty,
            form: Form::PerSample {
                weights: None,
                bias: None,
            },
        };
        match tangent {
            LayerTangent::Dense {
                weight_scale,
                bias_scale,
                uses,
            } => {
                let Some(first) = uses.first() else {
                    return Ok(empty);
                };
                let n_in = first.input.ncols();
                let n_out = first.output_grad.ncols() / k;
                for u in &uses {
                    expect_shape(
                        "DenseUse::input",
                        &u.input,
                        (n, n_in),
                        "N samples x the first use's fan-in",
                    )?;
                    expect_shape(
                        "DenseUse::output_grad",
                        &u.output_grad,
                        (n, k * n_out),
                        "N samples x k outputs · the first use's fan-out",
                    )?;
                }
                Ok(Group {
                    shape: Shape::Dense {
                        n_in,
                        n_out,
                        bias: bias_scale.is_some(),
                    },
                    form: Form::Uses(Uses {
                        weight_scale,
                        bias_scale,
                        uses,
                    }),
                })
            }
            LayerTangent::Bias {
                scale,
                output_grads,
            } => {
                let mut grads = output_grads.into_iter();
                let Some(mut sum) = grads.next() else {
                    return Ok(empty);
                };
                let n_out = sum.ncols() / k;
                let meaning = "N samples x k outputs · the first use's width";
                expect_shape("LayerTangent::Bias", &sum, (n, k * n_out), meaning)?;
                for g in grads {
                    expect_shape("LayerTangent::Bias", &g, (n, k * n_out), meaning)?;
                    sum += g;
                }
                Ok(Group {
                    shape: Shape::Bias { n_out },
                    form: Form::PerSample {
                        weights: None,
                        bias: Some(PerSample { scale, grads: sum }),
                    },
                })
            }
            LayerTangent::Readout {
                weight_scale,
                bias_scale,
                input,
            } => {
                let n_in = input.ncols();
                expect_shape(
                    "LayerTangent::Readout",
                    &input,
                    (n, n_in),
                    "N samples x fan-in",
                )?;
                Ok(Group {
                    shape: Shape::Dense {
                        n_in,
                        n_out: k,
                        bias: bias_scale.is_some(),
                    },
                    form: Form::Readout(Readout {
                        weight_scale,
                        bias_scale,
                        input,
                    }),
                })
            }
            LayerTangent::Jacobian(j) => {
                let p = j.ncols();
                let rows = n.checked_mul(k).ok_or_else(|| Error::ShapeMismatch {
                    argument: "LayerTangent::Jacobian",
                    expected: format!("{n} x {k} rows (N·k), more than usize counts"),
                    found: shape(&j),
                })?;
                expect_shape(
                    "LayerTangent::Jacobian",
                    &j,
                    (rows, p),
                    "N·k rows, row i·k + c for output c of sample i",
                )?;
                // Row i·k + c of J becomes row i, column block c.
                let grads = DMatrix::from_fn(n, k * p, |i, col| j[(i * k + col / p, col % p)]);
                Ok(Group {
                    shape: Shape::Jacobian { parameters: p },
                    form: Form::PerSample {
                        weights: Some(PerSample {
                            scale: T::one(),
                            grads,
                        }),
                        bias: None,
                    },
                })
            }
        }
    }

    /// Whether this group's kernels cost at most half as many multiply-adds through
    /// per-sample gradients as through its uses (the cost model in the module
    /// documentation).
    fn prefers_per_sample(&self, layout: Layout, k: usize) -> bool {
        let (Shape::Dense { n_in, n_out, bias }, Form::Uses(u)) = (self.shape, &self.form) else {
            return false;
        };
        let q = layout.output_pairs(k) as u128;
        let uses = u.uses.len() as u128;
        let (n_in, n_out) = (n_in as u128, n_out as u128);
        let per_sample = q * n_out * (n_in + u128::from(bias));
        let gram = uses * uses * (n_in + q * n_out);
        2 * per_sample <= gram
    }

    /// The same group with the per-sample form of its weight and bias.
    fn to_per_sample(&self) -> Self {
        match &self.form {
            Form::Uses(u) => Group {
                shape: self.shape,
                form: Form::PerSample {
                    // Only for two batches that disagree on the number of uses: allocated
                    // as any kernel buffer.
                    weights: u.weight_per_sample(self.shape, |rows, cols| {
                        Some(DMatrix::zeros(rows, cols))
                    }),
                    bias: u.bias_per_sample(),
                },
            },
            Form::Readout(r) => self.with_uses(r).to_per_sample(),
            Form::PerSample { .. } => self.clone(),
        }
    }

    /// The output layer `r` of this group as a dense group with one use, its output
    /// gradient the $N × k^2$ matrix of unit rows $e_c$.
    fn with_uses(&self, r: &Readout<T>) -> Self {
        let Shape::Dense { n_out: k, .. } = self.shape else {
            unreachable!("a readout is a dense group")
        };
        let unit = DMatrix::from_fn(r.input.nrows(), k * k, |_, col| {
            if col / k == col % k {
                T::one()
            } else {
                T::zero()
            }
        });
        Group {
            shape: self.shape,
            form: Form::Uses(Uses {
                weight_scale: r.weight_scale,
                bias_scale: r.bias_scale,
                uses: vec![DenseUse {
                    input: r.input.clone(),
                    output_grad: unit,
                }],
            }),
        }
    }

    /// Errors unless the features of this group (number `group`) are finite, naming the
    /// part that is not.
    fn check_finite(&self, group: usize) -> Result<()> {
        match &self.form {
            Form::Uses(u) => u.uses.iter().enumerate().try_for_each(|(i, used)| {
                expect_finite(group, &format!("DenseUse::input of use {i}"), &used.input)?;
                let part = format!("DenseUse::output_grad of use {i}");
                expect_finite(group, &part, &used.output_grad)
            }),
            Form::Readout(r) => expect_finite(group, "LayerTangent::Readout", &r.input),
            Form::PerSample { weights, bias } => {
                let (w, b) = match self.shape {
                    Shape::Jacobian { .. } => ("LayerTangent::Jacobian", ""),
                    Shape::Bias { .. } => ("", "LayerTangent::Bias (summed over its uses)"),
                    _ => (
                        "the weight's per-sample gradients (DenseUse inputs and gradients)",
                        "the bias's gradients (DenseUse::output_grad, summed)",
                    ),
                };
                weights
                    .iter()
                    .try_for_each(|d| expect_finite(group, w, &d.grads))?;
                bias.iter()
                    .try_for_each(|d| expect_finite(group, b, &d.grads))
            }
        }
    }

    /// Adds this group's kernel with `other` (the same group on another batch) to
    /// `weights` and `bias`, or all of it to `weights` when `bias` is `None`.
    fn add_kernel<'a>(
        &self,
        other: &Group<T>,
        weights: &mut DMatrixViewMut<'a, T>,
        bias: Option<&mut DMatrixViewMut<'a, T>>,
        layout: Layout,
        k: usize,
        scratch: &mut Scratch<T>,
    ) {
        match (&self.form, &other.form) {
            (Form::Uses(a), Form::Uses(b)) => add_uses(weights, bias, a, b, layout, k, scratch),
            (Form::Readout(a), Form::Readout(b)) => {
                let xx = input_gram(&mut scratch.xx, &a.input, &b.input);
                // Each diagonal output pair once; the average of the k identical ones in
                // the trace is one of them.
                let scales = |r: &Readout<T>| (r.weight_scale, r.bias_scale);
                let coefficients = scale_products(scales(a), scales(b), T::one());
                add_readout(weights, bias, xx, coefficients, layout, k);
            }
            // Another batch gave the same group in another form: contract as uses.
            (Form::Readout(r), _) => {
                self.with_uses(r)
                    .add_kernel(other, weights, bias, layout, k, scratch);
            }
            (_, Form::Readout(r)) => {
                self.add_kernel(&other.with_uses(r), weights, bias, layout, k, scratch);
            }
            (
                Form::PerSample {
                    weights: w1,
                    bias: b1,
                },
                Form::PerSample {
                    weights: w2,
                    bias: b2,
                },
            ) => {
                if let (Some(w1), Some(w2)) = (w1, w2) {
                    add_per_sample(weights, w1, w2, layout, k);
                }
                if let (Some(b1), Some(b2)) = (b1, b2) {
                    add_per_sample(bias.unwrap_or(weights), b1, b2, layout, k);
                }
            }
            // The two batches chose different forms (their numbers of uses differ):
            // contract through per-sample gradients.
            (Form::Uses(_), _) => {
                self.to_per_sample()
                    .add_kernel(other, weights, bias, layout, k, scratch);
            }
            (_, Form::Uses(_)) => {
                self.add_kernel(&other.to_per_sample(), weights, bias, layout, k, scratch);
            }
        }
    }
}

impl<T: Scalar> Uses<T> {
    /// $D$ with $D\[i, c·p + a·n_{in} + b\] = Σ_u G_u\[i, c·n_{out} + a\] X_u\[i, b\]$, scaled by
    /// $s_w$: the weight's gradients per sample ($W$ row-major within each output block).
    /// `allocate(rows, cols)` gives the zero $N × k·p$ matrix to accumulate $D$ in; `None`
    /// if it cannot.
    fn weight_per_sample(
        &self,
        shape: Shape,
        allocate: impl FnOnce(usize, usize) -> Option<DMatrix<T>>,
    ) -> Option<PerSample<T>> {
        let Shape::Dense { n_in, n_out, .. } = shape else {
            unreachable!("uses belong to a dense group")
        };
        let n = self.uses.first().map_or(0, |u| u.input.nrows());
        let k = self
            .uses
            .first()
            .map_or(0, |u| u.output_grad.ncols() / n_out.max(1));
        let p = n_in * n_out;
        let mut grads = allocate(n, k.checked_mul(p)?)?;
        let uses: Vec<(&[T], &[T])> = self
            .uses
            .iter()
            .map(|u| (u.output_grad.as_slice(), u.input.as_slice()))
            .collect();
        weight_gradients(grads.as_mut_slice(), n, (n_in, n_out), &uses);
        Some(PerSample {
            scale: self.weight_scale,
            grads,
        })
    }

    /// $Σ_u G_u$ scaled by $s_b$: the bias's gradients per sample.
    fn bias_per_sample(&self) -> Option<PerSample<T>> {
        let scale = self.bias_scale?;
        let mut uses = self.uses.iter();
        let mut grads = uses.next()?.output_grad.clone();
        for u in uses {
            grads += &u.output_grad;
        }
        Some(PerSample { scale, grads })
    }

    /// The form of [`Group::to_per_sample`], consuming the uses (the bias sum reuses
    /// the first output gradient's storage); the uses themselves if $D$ cannot be
    /// allocated.
    fn into_per_sample(self, shape: Shape) -> Form<T> {
        let allocate = |rows, cols| try_zeros(rows, cols, "", String::new).ok();
        let Some(weights) = self.weight_per_sample(shape, allocate) else {
            return Form::Uses(self);
        };
        let bias = self.bias_scale.and_then(|scale| {
            let mut uses = self.uses.into_iter();
            let mut grads = uses.next()?.output_grad;
            for u in uses {
                grads += u.output_grad;
            }
            Some(PerSample { scale, grads })
        });
        Form::PerSample {
            weights: Some(weights),
            bias,
        }
    }
}

/// Errors unless the kernel `m` (what `result` computed) is finite. Its tangent
/// features were checked finite, so a NaN or ∞ here is the kernel overflowing.
pub(crate) fn check_kernel_finite<T: Scalar>(result: &'static str, m: &DMatrix<T>) -> Result<()> {
    match first_non_finite_entry(m) {
        None => Ok(()),
        Some((row, col)) => Err(Error::NonFiniteResult {
            result,
            reason: format!(
                "entry ({row}, {col}) is {}: the kernel exceeds the range of the scalar \
                     type, although the model's tangent features are finite (its gradients \
                     are too large: σ_w, or the inputs)",
                m[(row, col)]
            ),
        }),
    }
}

/// Reused products of one tile: $X_1 X_2ᵀ$ and $G_1 G_2ᵀ$.
pub(crate) struct Scratch<T: Scalar> {
    xx: Option<DMatrix<T>>,
    gg: Option<DMatrix<T>>,
}

impl<T: Scalar> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { xx: None, gg: None }
    }
}

/// A buffer of shape `shape`, reused when it already has it (GEMMs with $β = 0$
/// overwrite it without reading).
fn buffer<T: Scalar>(slot: &mut Option<DMatrix<T>>, shape: (usize, usize)) -> &mut DMatrix<T> {
    if slot.as_ref().is_none_or(|m| m.shape() != shape) {
        *slot = Some(DMatrix::zeros(shape.0, shape.1));
    }
    slot.as_mut().expect("just set")
}

/// The weight term $c_w Σ_{u,v} (X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ)$ added to `weights`, and the
/// bias term $c_b Σ_{u,v} G_{1,u} G_{2,v}ᵀ$ to `bias`, or to `weights` too when `bias` is
/// `None` (one pass: $(c_w X_1X_2ᵀ + c_b) ⊙ G_1G_2ᵀ$).
fn add_uses<'a, T: Scalar>(
    weights: &mut DMatrixViewMut<'a, T>,
    mut bias: Option<&mut DMatrixViewMut<'a, T>>,
    a: &Uses<T>,
    b: &Uses<T>,
    layout: Layout,
    k: usize,
    scratch: &mut Scratch<T>,
) {
    let scales = |u: &Uses<T>| (u.weight_scale, u.bias_scale);
    let (cw, cb) = scale_products(scales(a), scales(b), layout.norm(k));
    for u in &a.uses {
        for v in &b.uses {
            let (n1, n2) = (u.input.nrows(), v.input.nrows());
            let xx = input_gram(&mut scratch.xx, &u.input, &v.input);
            let gg = buffer(&mut scratch.gg, (n1, n2));
            let (g1, g2) = (&u.output_grad, &v.output_grad);
            match layout {
                // One GEMM over all k output blocks sums the k diagonal pairs.
                Layout::Trace => {
                    gemm_nt(&mut gg.as_view_mut(), g1, 0, g2, 0, g1.ncols());
                    add_products_by_column(weights, bias.as_deref_mut(), xx, gg, (cw, cb));
                }
                Layout::Full => {
                    let m = g1.ncols() / k;
                    for pair in OutputPair::all(k) {
                        gemm_nt(&mut gg.as_view_mut(), g1, pair.c * m, g2, pair.d * m, m);
                        let mut w = pair.entries(weights, k);
                        let mut b = bias.as_deref_mut().map(|b| pair.entries(b, k));
                        add_products(&mut w, b.as_mut(), xx, gg, (cw, cb));
                    }
                }
            }
        }
    }
}

/// $(c_w, c_b) = (s_w \bar s_w, s_b \bar s_b) ·$ `norm` from the (weight, bias) scales of a group
/// on two batches; $c_b = 0$ without bias.
fn scale_products<T: Scalar>(a: (T, Option<T>), b: (T, Option<T>), norm: T) -> (T, T) {
    let cb = match (a.1, b.1) {
        (Some(s), Some(t)) => s * t * norm,
        _ => T::zero(),
    };
    (a.0 * b.0 * norm, cb)
}

/// $X_1 X_2ᵀ$, in the reused buffer `slot`.
fn input_gram<'s, T: Scalar>(
    slot: &'s mut Option<DMatrix<T>>,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> &'s DMatrix<T> {
    let xx = buffer(slot, (x1.nrows(), x2.nrows()));
    gemm_nt(&mut xx.as_view_mut(), x1, 0, x2, 0, x1.ncols());
    xx
}

/// The output layer's kernel from its inputs' Gram matrix `xx`: $c_w XX + c_b$ on every
/// output (the $k$ diagonal output pairs), added to `weights` and `bias`, or both to
/// `weights` when `bias` is `None`.
fn add_readout<'a, T: Scalar>(
    weights: &mut DMatrixViewMut<'a, T>,
    mut bias: Option<&mut DMatrixViewMut<'a, T>>,
    xx: &DMatrix<T>,
    (cw, cb): (T, T),
    layout: Layout,
    k: usize,
) {
    match layout {
        Layout::Trace => add_affine(weights, bias, xx, (cw, cb)),
        Layout::Full => {
            for c in 0..k {
                let pair = OutputPair { c, d: c };
                let mut w = pair.entries(weights, k);
                let mut b = bias.as_deref_mut().map(|b| pair.entries(b, k));
                add_affine(&mut w, b.as_mut(), xx, (cw, cb));
            }
        }
    }
}

/// `weights` += $c_w XX$ and `bias` += $c_b$, or `weights` += $c_w XX + c_b$ when `bias` is `None`.
fn add_affine<T: Scalar, RS: Dim, CS: Dim>(
    weights: &mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>,
    bias: Option<&mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>>,
    xx: &DMatrix<T>,
    (cw, cb): (T, T),
) {
    match bias {
        None => weights.zip_apply(xx, |w, x| *w += cw * x + cb),
        Some(bias) => {
            weights.zip_apply(xx, |w, x| *w += cw * x);
            bias.add_scalar_mut(cb);
        }
    }
}

/// [`add_products`] on tiles whose columns are contiguous (the averaged layout): column
/// by column over slices, a loop the compiler vectorises, where the strided version
/// indexes entry by entry.
fn add_products_by_column<T: Scalar>(
    weights: &mut DMatrixViewMut<'_, T>,
    mut bias: Option<&mut DMatrixViewMut<'_, T>>,
    xx: &DMatrix<T>,
    gg: &DMatrix<T>,
    (cw, cb): (T, T),
) {
    let n1 = weights.nrows();
    for j in 0..weights.ncols() {
        let x = &xx.as_slice()[j * n1..(j + 1) * n1];
        let g = &gg.as_slice()[j * n1..(j + 1) * n1];
        let mut column = weights.column_mut(j);
        let w = column.as_mut_slice();
        match bias.as_deref_mut() {
            None => {
                for ((w, &x), &g) in w.iter_mut().zip(x).zip(g) {
                    *w += (cw * x + cb) * g;
                }
            }
            Some(bias) => {
                for ((w, &x), &g) in w.iter_mut().zip(x).zip(g) {
                    *w += cw * x * g;
                }
                let mut column = bias.column_mut(j);
                for (b, &g) in column.as_mut_slice().iter_mut().zip(g) {
                    *b += cb * g;
                }
            }
        }
    }
}

/// `weights` += $c_w XX ⊙ GG$ and `bias` += $c_b GG$, or `weights` += $(c_w XX + c_b) ⊙ GG$ when
/// `bias` is `None`.
fn add_products<T: Scalar, RS: Dim, CS: Dim>(
    weights: &mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>,
    bias: Option<&mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>>,
    xx: &DMatrix<T>,
    gg: &DMatrix<T>,
    (cw, cb): (T, T),
) {
    match bias {
        None => weights.zip_zip_apply(xx, gg, |w, x, g| *w += (cw * x + cb) * g),
        Some(bias) => {
            weights.zip_zip_apply(xx, gg, |w, x, g| *w += cw * x * g);
            bias.zip_apply(gg, |b, g| *b += cb * g);
        }
    }
}

/// $D\[i, c·p + a·n_{in} + b\]$ += $Σ_u G_u\[i, c·n_{out} + a\] X_u\[i, b\]$ for the uses'
/// $(G_u, X_u)$ given as column-major slices of $N$ rows; $D$ is $N × k·p$, $p = n_{in}·n_{out}$.
/// Column by column of $D$, all uses at once, so that $D$ is written in one pass (its
/// columns are many; the uses' columns are few and stay in cache). Multiversioned
/// (AVX-512, AVX2, baseline; the same IEEE results).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn weight_gradients<T: Scalar>(
    d: &mut [T],
    n: usize,
    (n_in, n_out): (usize, usize),
    uses: &[(&[T], &[T])],
) {
    let p = n_in * n_out;
    if n == 0 || p == 0 {
        return;
    }
    for (block, column) in d.chunks_exact_mut(n).enumerate() {
        // Column block of D is output c, unit a, input b.
        let (c, a, b) = (block / p, block % p / n_in, block % n_in);
        for &(g, x) in uses {
            let g = &g[(c * n_out + a) * n..][..n];
            let x = &x[b * n..][..n];
            for ((d, &g), &x) in column.iter_mut().zip(g).zip(x) {
                *d += g * x;
            }
        }
    }
}

/// $c D_1 D_2ᵀ$ added to `out` for the per-sample gradients of one part on two batches,
/// $c = s_1 s_2$ (divided by $k$ for the average over outputs).
fn add_per_sample<T: Scalar>(
    out: &mut DMatrixViewMut<'_, T>,
    d1: &PerSample<T>,
    d2: &PerSample<T>,
    layout: Layout,
    k: usize,
) {
    let coef = d1.scale * d2.scale * layout.norm(k);
    let (g1, g2) = (&d1.grads, &d2.grads);
    match layout {
        Layout::Trace => {
            out.gemm(coef, g1, &columns_transposed(g2, 0, g2.ncols()), T::one());
        }
        Layout::Full => {
            let p = g1.ncols() / k;
            for pair in OutputPair::all(k) {
                pair.entries(out, k).gemm(
                    coef,
                    &g1.columns(pair.c * p, p),
                    &columns_transposed(g2, pair.d * p, p),
                    T::one(),
                );
            }
        }
    }
}

impl<T: Scalar> PerSample<T> {
    /// Writes its Jacobian columns: $J\[i·k + c, a\] = s D\[i, c·p + a\]$.
    fn write_jacobian(&self, mut jac: nalgebra::DMatrixViewMut<'_, T>, k: usize) {
        let p = jac.ncols();
        for (a, mut col) in jac.column_iter_mut().enumerate() {
            for (row, v) in col.iter_mut().enumerate() {
                *v = self.scale * self.grads[(row / k, (row % k) * p + a)];
            }
        }
    }

    /// Adds $Jᵀ r$ for its parameters: $s Σ_c D_cᵀ r_c$.
    fn add_vjp(&self, out: &mut nalgebra::DVectorViewMut<'_, T>, r: &DMatrix<T>) {
        let p = out.len();
        for c in 0..r.ncols() {
            out.gemv_tr(
                self.scale,
                &self.grads.columns(c * p, p),
                &r.column(c),
                T::one(),
            );
        }
    }
}

impl<T: Scalar> Tangents<T> {
    /// Validates the tangent features of a batch of `samples` rows for a model with
    /// `outputs` outputs, keeping every group in the form the model gave it.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `outputs` is 0; [`Error::ShapeMismatch`] naming
    /// the malformed part (`DenseUse::input`, `DenseUse::output_grad`,
    /// `LayerTangent::Bias`, `LayerTangent::Jacobian`).
    pub(crate) fn new(
        tangents: Vec<LayerTangent<T>>,
        samples: usize,
        outputs: usize,
    ) -> Result<Self> {
        if outputs == 0 {
            return Err(Error::InvalidParameter {
                parameter: "output_dim",
                value: "0".into(),
                reason: "a model needs at least one output",
            });
        }
        let groups: Vec<Group<T>> = tangents
            .into_iter()
            .map(|t| Group::new(t, samples, outputs))
            .collect::<Result<_>>()?;
        let total = groups.iter().try_fold(0_usize, |sum, g| {
            let (w, b) = g.shape.parameters();
            sum.checked_add(w)?.checked_add(b)
        });
        if total.is_none_or(|p| p == usize::MAX) {
            return Err(Error::ShapeMismatch {
                argument: "layer_tangents",
                expected: "fewer parameters than usize counts".into(),
                found: format!("{} parameter groups of more", groups.len()),
            });
        }
        Ok(Tangents {
            samples,
            outputs,
            groups,
        })
    }

    /// As [`Tangents::new`], with every weight in the form its kernels in `layout`
    /// cost least in (see the module documentation).
    ///
    /// # Errors
    /// As [`Tangents::new`].
    pub(crate) fn for_kernels(
        tangents: Vec<LayerTangent<T>>,
        samples: usize,
        outputs: usize,
        layout: Layout,
    ) -> Result<Self> {
        let mut t = Self::new(tangents, samples, outputs)?;
        for g in &mut t.groups {
            if g.prefers_per_sample(layout, outputs) {
                let form = std::mem::replace(
                    &mut g.form,
                    Form::PerSample {
                        weights: None,
                        bias: None,
                    },
                );
                if let Form::Uses(u) = form {
                    g.form = u.into_per_sample(g.shape);
                }
            }
        }
        Ok(t)
    }

    /// Errors unless every feature is finite, naming the group and part that is not.
    ///
    /// Not part of [`Tangents::new`]: a NaN or ∞ in a feature always reaches what is
    /// computed from it (products and sums propagate it, ∞ · 0 being NaN), so the
    /// kernels, the Jacobian and the VJP check their results, and search the features
    /// only when a result is not finite, to say which part of the model caused it.
    pub(crate) fn check_finite(&self) -> Result<()> {
        self.groups
            .iter()
            .enumerate()
            .try_for_each(|(group, g)| g.check_finite(group))
    }

    /// `result` (what `what` computed from these features, all finite if `finite`), or
    /// the error naming the non-finite feature (or, if all are finite, the overflow).
    fn finite_result<M>(&self, what: &'static str, result: M, finite: bool) -> Result<M> {
        if finite {
            return Ok(result);
        }
        self.check_finite()?;
        Err(Error::NonFiniteResult {
            result: what,
            reason: "the model's tangent features are finite but the result exceeds the range \
                     of the scalar type (its gradients are too large)"
                .into(),
        })
    }

    /// Number of parameters $P$ over all groups.
    pub(crate) fn parameter_count(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                let (w, b) = g.shape.parameters();
                w + b
            })
            .sum()
    }

    /// Errors unless `other` (another batch's features of the same model) has groups
    /// of the same shapes, so that the two contract.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming `layer_tangents`.
    pub(crate) fn check_compatible(&self, other: &Tangents<T>) -> Result<()> {
        if self.groups.len() != other.groups.len() {
            return Err(Error::ShapeMismatch {
                argument: "layer_tangents",
                expected: format!("{} parameter groups on both batches", self.groups.len()),
                found: format!("{} groups", other.groups.len()),
            });
        }
        for (l, (a, b)) in self.groups.iter().zip(&other.groups).enumerate() {
            if a.shape != b.shape {
                return Err(Error::ShapeMismatch {
                    argument: "layer_tangents",
                    expected: format!(
                        "parameter group {l} of the same shape on both batches: {:?}",
                        a.shape
                    ),
                    found: format!("{:?}", b.shape),
                });
            }
        }
        Ok(())
    }

    /// The explicit $(N·k) × P$ Jacobian, row $i·k + c$ holding $∂f_c(x_i)/∂θ$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] (`x`) if its $N·k·P$ numbers cannot be allocated.
    pub(crate) fn jacobian(&self) -> Result<DMatrix<T>> {
        let (n, k) = (self.samples, self.outputs);
        let p = self.parameter_count();
        let rows = n.saturating_mul(k);
        let mut jac = try_zeros::<T>(rows, p, "x", || {
            format!("{n} samples: the Jacobian of {k} outputs and {p} parameters")
        })?;
        let mut offset = 0;
        for g in &self.groups {
            let (pw, pb) = g.shape.parameters();
            match (&g.form, g.shape) {
                (Form::Uses(u), Shape::Dense { n_in, n_out, .. }) => {
                    for used in &u.uses {
                        // J is column-major: fill each parameter's column (rows i·k + c)
                        // in order, J[i·k + c, (a, b)] += s_w G[i, c·n_out + a] X[i, b].
                        for a in 0..n_out {
                            for b in 0..n_in {
                                let x_b = used.input.column(b);
                                let mut col = jac.column_mut(offset + a * n_in + b);
                                for c in 0..k {
                                    let g = used.output_grad.column(c * n_out + a);
                                    for i in 0..n {
                                        col[i * k + c] += u.weight_scale * g[i] * x_b[i];
                                    }
                                }
                            }
                            if let Some(sb) = u.bias_scale {
                                let mut col = jac.column_mut(offset + pw + a);
                                for c in 0..k {
                                    let g = used.output_grad.column(c * n_out + a);
                                    for i in 0..n {
                                        col[i * k + c] += sb * g[i];
                                    }
                                }
                            }
                        }
                    }
                }
                (Form::Readout(r), Shape::Dense { n_in, .. }) => {
                    // J[i·k + c, c·n_in + b] = s_w X[i, b], J[i·k + c, p_w + c] = s_b.
                    for c in 0..k {
                        for b in 0..n_in {
                            let mut col = jac.column_mut(offset + c * n_in + b);
                            for i in 0..n {
                                col[i * k + c] = r.weight_scale * r.input[(i, b)];
                            }
                        }
                        if let Some(sb) = r.bias_scale {
                            let mut col = jac.column_mut(offset + pw + c);
                            for i in 0..n {
                                col[i * k + c] = sb;
                            }
                        }
                    }
                }
                (Form::PerSample { weights, bias }, _) => {
                    if let Some(w) = weights {
                        w.write_jacobian(jac.columns_mut(offset, pw), k);
                    }
                    if let Some(b) = bias {
                        b.write_jacobian(jac.columns_mut(offset + pw, pb), k);
                    }
                }
                (Form::Uses(_) | Form::Readout(_), _) => {
                    unreachable!("uses and readouts belong to dense groups")
                }
            }
            offset += pw + pb;
        }
        let finite = first_non_finite(jac.as_slice()).is_none();
        self.finite_result("jacobian", jac, finite)
    }

    /// $Jᵀ r = Σ_{i,c} r_{i,c} ∂f_c(x_i)/∂θ$ for a cotangent $r$ of shape $N × k$ (checked
    /// by the caller), without forming $J$.
    ///
    /// # Errors
    /// [`Error::NonFiniteResult`] if it is not finite (naming the feature at fault).
    pub(crate) fn vjp(&self, r: &DMatrix<T>) -> Result<DVector<T>> {
        let (n, k) = (self.samples, self.outputs);
        debug_assert_eq!(r.shape(), (n, k));
        let mut grad = DVector::<T>::zeros(self.parameter_count());
        let mut offset = 0;
        for g in &self.groups {
            let (pw, pb) = g.shape.parameters();
            match (&g.form, g.shape) {
                (Form::Uses(u), Shape::Dense { n_in, n_out, .. }) => {
                    let mut b = DVector::<T>::zeros(n_out);
                    for used in &u.uses {
                        // M_u = Σ_c diag(r_c) G_{u,c}.
                        let mut m = DMatrix::<T>::zeros(n, n_out);
                        for (c, rc) in r.column_iter().enumerate() {
                            let g = used.output_grad.columns(c * n_out, n_out);
                            for (mut col, gc) in m.column_iter_mut().zip(g.column_iter()) {
                                col.zip_zip_apply(&gc, &rc, |m, g, r| *m += r * g);
                            }
                        }
                        // W row-major is Wᵀ column-major: accumulate s_w X_uᵀ M_u
                        // (n_in × n_out) in place, in one GEMM pass.
                        let mut w = DMatrixViewMut::from_slice(
                            grad.rows_mut(offset, pw).data.into_slice_mut(),
                            n_in,
                            n_out,
                        );
                        w.gemm(u.weight_scale, &used.input.transpose(), &m, T::one());
                        if u.bias_scale.is_some() {
                            for (a, col) in m.column_iter().enumerate() {
                                b[a] += col.sum();
                            }
                        }
                    }
                    if let Some(sb) = u.bias_scale {
                        grad.rows_mut(offset + pw, pb).copy_from(&(b * sb));
                    }
                }
                (Form::Readout(out), Shape::Dense { n_in, .. }) => {
                    // W row-major (k × n_in) is Wᵀ column-major: s_w Xᵀ r.
                    let mut w = DMatrixViewMut::from_slice(
                        grad.rows_mut(offset, pw).data.into_slice_mut(),
                        n_in,
                        k,
                    );
                    w.gemm(out.weight_scale, &out.input.transpose(), r, T::zero());
                    if let Some(sb) = out.bias_scale {
                        for (c, col) in r.column_iter().enumerate() {
                            grad[offset + pw + c] = sb * col.sum();
                        }
                    }
                }
                (Form::PerSample { weights, bias }, _) => {
                    if let Some(w) = weights {
                        w.add_vjp(&mut grad.rows_mut(offset, pw), r);
                    }
                    if let Some(b) = bias {
                        b.add_vjp(&mut grad.rows_mut(offset + pw, pb), r);
                    }
                }
                (Form::Uses(_) | Form::Readout(_), _) => {
                    unreachable!("uses and readouts belong to dense groups")
                }
            }
            offset += pw + pb;
        }
        let finite = first_non_finite(grad.as_slice()).is_none();
        self.finite_result("vjp", grad, finite)
    }

    /// Adds the kernel between this batch and `other` (checked compatible), summed
    /// over all groups, to `out`: $N_1 × N_2$ ([`Layout::Trace`]) or $(N_1·k) × (N_2·k)$.
    pub(crate) fn add_kernel(
        &self,
        other: &Tangents<T>,
        out: &mut DMatrixViewMut<'_, T>,
        layout: Layout,
        scratch: &mut Scratch<T>,
    ) {
        for (a, b) in self.groups.iter().zip(&other.groups) {
            a.add_kernel(b, out, None, layout, self.outputs, scratch);
        }
    }

    /// Each group's kernel between this batch and `other` (checked compatible),
    /// averaged over outputs.
    pub(crate) fn layer_kernels(&self, other: &Tangents<T>) -> Vec<LayerKernel<T>> {
        let (n1, n2) = (self.samples, other.samples);
        let mut scratch = Scratch::default();
        self.groups
            .iter()
            .zip(&other.groups)
            .map(|(a, b)| {
                let mut weights = DMatrix::zeros(n1, n2);
                let mut bias = (a.shape.parameters().1 > 0).then(|| DMatrix::zeros(n1, n2));
                let mut bias_view = bias.as_mut().map(|m| m.view_mut((0, 0), (n1, n2)));
                a.add_kernel(
                    b,
                    &mut weights.view_mut((0, 0), (n1, n2)),
                    bias_view.as_mut(),
                    Layout::Trace,
                    self.outputs,
                    &mut scratch,
                );
                LayerKernel { weights, bias }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ‖a − b‖_F / ‖b‖_F.
    fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
        (a - b).norm() / b.norm()
    }

    fn matrix(rows: usize, cols: usize, seed: f64) -> DMatrix<f64> {
        DMatrix::from_fn(rows, cols, |i, j| {
            (seed + 0.37 * i as f64 + 1.3 * j as f64 + 0.11 * (i * j) as f64).sin()
        })
    }

    /// A weight with `uses` uses (and a bias) on a batch of `n` samples, k outputs.
    fn shared(
        n: usize,
        n_in: usize,
        n_out: usize,
        k: usize,
        uses: usize,
        seed: f64,
    ) -> LayerTangent<f64> {
        LayerTangent::Dense {
            weight_scale: 0.7,
            bias_scale: Some(0.3),
            uses: (0..uses)
                .map(|u| DenseUse {
                    input: matrix(n, n_in, seed + u as f64),
                    output_grad: matrix(n, k * n_out, seed - 2.0 * u as f64),
                })
                .collect(),
        }
    }

    fn kernel(t1: &Tangents<f64>, t2: &Tangents<f64>, layout: Layout) -> DMatrix<f64> {
        let per = layout.per_sample(t1.outputs);
        let mut out = DMatrix::zeros(t1.samples * per, t2.samples * per);
        let shape = out.shape();
        t1.add_kernel(
            t2,
            &mut out.view_mut((0, 0), shape),
            layout,
            &mut Scratch::default(),
        );
        out
    }

    /// J₁ J₂ᵀ in the full layout; its diagonal output blocks averaged in the trace.
    fn reference(t1: &Tangents<f64>, t2: &Tangents<f64>, layout: Layout) -> DMatrix<f64> {
        let full = t1.jacobian().unwrap() * t2.jacobian().unwrap().transpose();
        let k = t1.outputs;
        match layout {
            Layout::Full => full,
            Layout::Trace => DMatrix::from_fn(t1.samples, t2.samples, |i, j| {
                (0..k).map(|c| full[(i * k + c, j * k + c)]).sum::<f64>() / k as f64
            }),
        }
    }

    /// A shared weight's kernel is the same through its uses (the U² Gram pairs) and
    /// through its per-sample gradients, in both layouts, and both equal J₁ J₂ᵀ.
    #[test]
    fn uses_and_per_sample_gradients_give_the_same_kernel() {
        for k in [1, 3] {
            for uses in [1, 4] {
                let (t1, t2) = (shared(7, 5, 4, k, uses, 0.2), shared(6, 5, 4, k, uses, 1.9));
                for layout in [Layout::Trace, Layout::Full] {
                    let a = Tangents::new(vec![t1.clone()], 7, k).unwrap();
                    let b = Tangents::new(vec![t2.clone()], 6, k).unwrap();
                    let (pa, pb) = (
                        Tangents {
                            groups: a.groups.iter().map(Group::to_per_sample).collect(),
                            ..a.clone()
                        },
                        Tangents {
                            groups: b.groups.iter().map(Group::to_per_sample).collect(),
                            ..b.clone()
                        },
                    );
                    assert!(matches!(pa.groups[0].form, Form::PerSample { .. }));
                    let expected = reference(&a, &b, layout);
                    assert!(rel(&kernel(&a, &b, layout), &expected) < 1e-13);
                    assert!(rel(&kernel(&pa, &pb, layout), &expected) < 1e-13);
                    // Mixed forms contract too.
                    assert!(rel(&kernel(&a, &pb, layout), &expected) < 1e-13);
                    assert!(rel(&kernel(&pa, &b, layout), &expected) < 1e-13);
                    // The Jacobian and the VJP do not depend on the form either.
                    assert!(rel(&pa.jacobian().unwrap(), &a.jacobian().unwrap()) < 1e-14);
                    let r = matrix(7, k, 4.0);
                    let (v, pv) = (a.vjp(&r).unwrap(), pa.vjp(&r).unwrap());
                    assert!((&v - &pv).norm() < 1e-13 * v.norm());
                    let flat = DVector::from_fn(7 * k, |row, _| r[(row / k, row % k)]);
                    assert!((a.jacobian().unwrap().tr_mul(&flat) - &v).norm() < 1e-13 * v.norm());
                }
            }
        }
    }

    /// The cost model: per-sample gradients for a convolution-like weight with many
    /// uses, the uses for an MLP layer; `for_kernels` applies it.
    #[test]
    fn the_cheaper_form_is_chosen_per_weight() {
        let conv = shared(2, 384, 128, 1, 16, 0.0);
        let mlp = shared(2, 512, 512, 1, 1, 0.0);
        let t = Tangents::for_kernels(vec![conv, mlp], 2, 1, Layout::Trace).unwrap();
        assert!(matches!(t.groups[0].form, Form::PerSample { .. }));
        assert!(matches!(t.groups[1].form, Form::Uses(_)));
        // With all k² output pairs a weight's per-sample gradients cost k times more
        // (n_in = 8, n_out = 1, k = 4, U = 3, bias: 2·36 ≤ 108 averaged, 2·144 > 216
        // in full).
        let narrow = shared(2, 8, 1, 4, 3, 0.0);
        let trace = Tangents::for_kernels(vec![narrow.clone()], 2, 4, Layout::Trace).unwrap();
        let full = Tangents::for_kernels(vec![narrow], 2, 4, Layout::Full).unwrap();
        assert!(matches!(trace.groups[0].form, Form::PerSample { .. }));
        assert!(matches!(full.groups[0].form, Form::Uses(_)));
    }

    /// A bias used at several places without a weight is the pre-summed Σ_u G_u:
    /// its kernel is s_b² (Σ G₁)(Σ G₂)ᵀ / k and its Jacobian s_b Σ_u G_u.
    #[test]
    fn a_bias_without_weight_is_its_summed_gradients() {
        let (n, k, m) = (5, 2, 3);
        let grads: Vec<_> = (0..3).map(|u| matrix(n, k * m, u as f64)).collect();
        let sum = grads
            .iter()
            .fold(DMatrix::zeros(n, k * m), |acc, g| acc + g);
        let t = Tangents::new(
            vec![LayerTangent::Bias {
                scale: 0.5,
                output_grads: grads,
            }],
            n,
            k,
        )
        .unwrap();
        assert_eq!(t.parameter_count(), m);
        let expected = &sum * sum.transpose() * (0.25 / k as f64);
        let parts = t.layer_kernels(&t);
        assert!(parts[0].weights.iter().all(|&v| v == 0.0));
        assert!(rel(parts[0].bias.as_ref().unwrap(), &expected) < 1e-14);
        assert!(rel(&kernel(&t, &t, Layout::Trace), &expected) < 1e-14);
        let j = t.jacobian().unwrap();
        for i in 0..n {
            for c in 0..k {
                for a in 0..m {
                    assert!((j[(i * k + c, a)] - 0.5 * sum[(i, c * m + a)]).abs() < 1e-15);
                }
            }
        }
    }

    /// The output layer given by its input alone is the dense group with one use whose
    /// output gradient is the N × k² matrix of unit rows: same kernels in both layouts,
    /// same Jacobian and VJP, and the two forms contract with each other.
    #[test]
    fn a_readout_is_a_dense_use_with_unit_gradients() {
        let (n, n_in, k) = (6, 4, 3);
        let input = matrix(n, n_in, 0.3);
        let unit = DMatrix::from_fn(
            n,
            k * k,
            |_, col| if col / k == col % k { 1.0 } else { 0.0 },
        );
        let readout = LayerTangent::Readout {
            weight_scale: 0.6,
            bias_scale: Some(0.2),
            input: input.clone(),
        };
        let dense = LayerTangent::Dense {
            weight_scale: 0.6,
            bias_scale: Some(0.2),
            uses: vec![DenseUse {
                input,
                output_grad: unit,
            }],
        };
        let r = Tangents::new(vec![readout], n, k).unwrap();
        let d = Tangents::new(vec![dense], n, k).unwrap();
        assert!(rel(&r.jacobian().unwrap(), &d.jacobian().unwrap()) < 1e-15);
        let cotangent = matrix(n, k, 2.0);
        assert!((r.vjp(&cotangent).unwrap() - d.vjp(&cotangent).unwrap()).norm() < 1e-14);
        for layout in [Layout::Trace, Layout::Full] {
            let expected = kernel(&d, &d, layout);
            assert!(rel(&kernel(&r, &r, layout), &expected) < 1e-14);
            assert!(rel(&kernel(&r, &d, layout), &expected) < 1e-14);
            assert!(rel(&kernel(&d, &r, layout), &expected) < 1e-14);
        }
        let (parts_r, parts_d) = (r.layer_kernels(&r), d.layer_kernels(&d));
        assert!(rel(&parts_r[0].weights, &parts_d[0].weights) < 1e-14);
        let (br, bd) = (
            parts_r[0].bias.as_ref().unwrap(),
            parts_d[0].bias.as_ref().unwrap(),
        );
        assert!(rel(br, bd) < 1e-14);
    }

    /// A NaN in a feature reaches the Jacobian and the VJP, whose errors then name the
    /// group and the part it is in.
    #[test]
    fn non_finite_features_are_named_where_they_surface() {
        let mut bad = shared(4, 3, 2, 1, 2, 0.0);
        if let LayerTangent::Dense { uses, .. } = &mut bad {
            uses[1].output_grad[(2, 1)] = f64::NAN;
        }
        let t = Tangents::new(vec![shared(4, 3, 2, 1, 1, 1.0), bad], 4, 1).unwrap();
        let named = |r: Result<()>| match r {
            Err(Error::NonFiniteResult { reason, .. }) => {
                reason.contains("parameter group 1") && reason.contains("output_grad of use 1")
            }
            _ => false,
        };
        assert!(named(t.check_finite()));
        assert!(named(t.jacobian().map(|_| ())));
        assert!(named(t.vjp(&DMatrix::zeros(4, 1)).map(|_| ())));
        let mut out = DMatrix::zeros(4, 4);
        t.add_kernel(
            &t,
            &mut out.view_mut((0, 0), (4, 4)),
            Layout::Trace,
            &mut Scratch::default(),
        );
        assert!(out.row(2).iter().any(|v| v.is_nan()));
    }

    #[test]
    fn malformed_features_name_the_part() {
        let named = |t: LayerTangent<f64>, n: usize, k: usize| match Tangents::new(vec![t], n, k) {
            Err(Error::ShapeMismatch { argument, .. }) => argument,
            other => panic!("expected a shape error, got {other:?}"),
        };
        let bias = LayerTangent::Bias {
            scale: 1.0,
            output_grads: vec![matrix(3, 4, 0.0), matrix(3, 6, 0.0)],
        };
        assert_eq!(named(bias, 3, 2), "LayerTangent::Bias");
        assert_eq!(
            named(LayerTangent::Jacobian(matrix(3, 2, 0.0)), 3, 2),
            "LayerTangent::Jacobian"
        );
        assert!(Tangents::<f64>::new(Vec::new(), 3, 0).is_err());
    }
}
