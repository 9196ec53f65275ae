//! # ntk: the Neural Tangent Kernel, exact and fast
//!
//! A network $f(x; θ)$ trained by gradient flow on the loss
//! $L = \tfrac12 Σ_i \lVert f(x_i) − y_i \rVert^2$ moves as
//! $df_t/dt = −η Θ_t (f_t − y)$, where
//!
//! $$Θ(x, x̄) = ⟨∇\_θ f(x), ∇\_θ f(x̄)⟩$$
//!
//! is the **neural tangent kernel** (Jacot, Gabriel & Hongler 2018). This crate computes
//! the three objects wide networks are studied through: the empirical NTK of a finite
//! network, exactly, from per-layer gradient inner products; its infinite-width limit
//! $Θ̊$ with the NNGP kernel $Σ$; and the gradient-flow dynamics
//! $f_t − y = e^{−ηtΘ}(f_0 − y)$ they imply, with real gradient-descent training to
//! compare against.
//!
//! <p class="ntk-katex-fallback">(The formulas are written for KaTeX, which renders
//! them on docs.rs; here they show as their source between dollar signs.)</p>
//!
//! ## The empirical NTK, layer by layer
//!
//! For a Dense layer $h^l = (σ_w/\sqrt{n^{l−1}}) W^l x^{l−1} + σ_b b^l$ with
//! pre-activation gradients $g = ∂f/∂h^l$, the layer contributes
//!
//! $$(σ_w^2/n^{l−1}) (x^{l−1} · x̄^{l−1}) (g · \bar g) \quad \text{(weights)} \quad + \quad σ_b^2 (g · \bar g) \quad \text{(bias)}$$
//!
//! to $Θ(x, x̄)$. Over a batch (rows are samples) that is
//! $(σ_w^2/n^{l−1}) (X₁ X₂ᵀ) ⊙ (G₁ G₂ᵀ) + σ_b^2 G₁ G₂ᵀ$: one forward and one backward
//! pass, Gram matrices and a Hadamard product, never the $N × P$ Jacobian.
//!
//! ```
//! use ntk::nalgebra::DMatrix;
//! use ntk::rand::{rngs::StdRng, SeedableRng};
//! use ntk::{empirical_ntk, Activation, Mlp, MlpSpec, NtkModel};
//!
//! # fn main() -> Result<(), ntk::Error> {
//! let spec = MlpSpec::new(3)
//!     .hidden(256, Activation::Relu)
//!     .hidden(256, Activation::Erf)
//!     .weight_std(1.5)
//!     .bias_std(0.05);
//! let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(0))?;
//! let x = DMatrix::from_fn(8, 3, |i, j| ((i + 2 * j) as f64).sin());
//!
//! let theta = empirical_ntk(&net, &x, &x)?;           // 8 × 8
//! let parts = net.group_kernels(&x, &x)?;             // one per parameter group (Dense layer)
//! let sum = parts.iter().fold(DMatrix::zeros(8, 8), |acc, p| acc + p.total());
//! assert!((&theta - &sum).norm() <= 1e-12 * theta.norm());
//! # Ok(())
//! # }
//! ```
//!
//! ## Infinite-width kernels
//!
//! As the hidden widths grow, the network at initialisation becomes a Gaussian process
//! with covariance $Σ$ (the NNGP kernel) and $Θ$ converges to a deterministic $Θ̊$. Both
//! follow a layer recursion: with $C = E[φ(u) φ(v)]$ and $\dot C = E[φ\'(u) φ\'(v)]$ for
//! $(u, v)$ Gaussian with the previous layer's covariance,
//!
//! $$Σ^{l+1} = σ_w^2 C + σ_b^2, \qquad Θ^{l+1} = Σ^{l+1} + σ_w^2 \dot C Θ^l$$
//!
//! ([`infinite_width`], module [`infinite`]).
//!
//! ```
//! use ntk::nalgebra::DMatrix;
//! use ntk::{infinite_width, infinite_width_groups, Activation, InfiniteWidth, MlpSpec};
//!
//! # fn main() -> Result<(), ntk::Error> {
//! let spec = MlpSpec::new(3)
//!     .hidden(512, Activation::Relu)   // closed form (arc-cosine kernel)
//!     .hidden(512, Activation::Tanh)   // no closed form: 2-D Gauss–Hermite quadrature
//!     .weight_std(1.5)
//!     .bias_std(0.05);
//! let x1 = DMatrix::from_fn(10, 3, |i, j| ((i + j) as f64).sin());
//! let x2 = DMatrix::from_fn(4, 3, |i, j| ((i * j) as f64).cos());
//!
//! let k = infinite_width(&spec, &x1, &x2)?;              // k.nngp, k.ntk: 10 × 4
//! let layers = infinite_width_groups(&spec, &x1, &x2)?;  // per parameter group, sums to k.ntk
//! let finer = InfiniteWidth::new(&spec)?.quadrature_degree(240)?.kernels(&x1, &x2)?;
//! assert_eq!(layers.len(), 3);
//! assert!((&finer.ntk - &k.ntk).norm() < 1e-6 * k.ntk.norm());
//! # Ok(())
//! # }
//! ```
//!
//! ## Conventions
//!
//! - Data are [`nalgebra::DMatrix`] with **one row per sample**.
//! - The NTK parameterization of neural-tangents' `stax.Dense(W_std, b_std)`:
//!   $h = (σ_w/\sqrt{n_{in}}) W x + σ_b b$ with $W, b ∼ N(0, 1)$; $σ_b = 0$ means no
//!   bias parameters. The standard parameterization is [`Parameterization::Standard`].
//! - With $k > 1$ outputs, [`empirical_ntk`] averages over outputs (neural-tangents'
//!   default trace); [`empirical_ntk_full`] keeps the $(N_1 k) × (N_2 k)$ blocks.
//!
//! ## Bring your own model
//!
//! [`empirical_ntk`] takes any [`NtkModel`]: a model lists, per parameter group, the
//! inputs and output gradients of each use of its weights ([`GroupTangent`]); shared
//! weights contribute the double sum over their uses.
//!
//! ## Gradient flow
//!
//! A network that stays close to its linearisation (a wide one) follows
//! $f_t − Y = e^{−ηtΘ}(f_0 − Y)$ on its $N$ training points under gradient flow on
//! $L = \tfrac12 Σ_i \lVert f(x_i) − y_i \rVert^2$, and
//!
//! $$f_t(x) = f_0(x) + Θ(x, X) Θ^{−1} (I − e^{−ηtΘ}) (Y − f_0)$$
//!
//! on test points. [`GradientFlow`] eigendecomposes $Θ$ once and then predicts at any
//! time (or after any number of gradient-descent steps) in $O(N^2 k)$;
//! [`KernelRegression`] is the $t = ∞$ limit by Cholesky; [`KrylovFlow`] predicts at
//! one time by Lanczos without the eigendecomposition; [`InfiniteEnsemble`] is the
//! mean and covariance over random initialisations from the NTK and NNGP kernels;
//! [`GradientDescent`] trains the real network by backpropagation
//! ([`NtkModel::vjp`]) to compare.
//!
//! ```
//! use ntk::nalgebra::DMatrix;
//! use ntk::rand::{rngs::StdRng, SeedableRng};
//! use ntk::{empirical_ntk, Activation, GradientDescent, GradientFlow, MlpSpec, NtkModel};
//!
//! # fn main() -> Result<(), ntk::Error> {
//! let mut net = MlpSpec::new(2).hidden(1024, Activation::Erf)
//!     .init::<f64>(&mut StdRng::seed_from_u64(0))?;
//! let x = DMatrix::from_fn(8, 2, |i, j| ((i + 3 * j) as f64).sin());
//! let y = DMatrix::from_fn(8, 1, |i, _| (i as f64).cos());
//!
//! let theta = empirical_ntk(&net, &x, &x)?;
//! let flow = GradientFlow::new(&theta, &y, 0.1)?;   // η = 0.1 on the sum loss
//! let f0 = net.forward(&x)?;
//! let predicted = flow.train_gd(100, &f0)?;          // 100 steps of the linear model
//!
//! let run = GradientDescent::new(0.1, 100)?.fit(&mut net, &x, &y, &DMatrix::zeros(0, 2))?;
//! let moved = (&predicted - &f0).amax();
//! assert!((&run.train_outputs[1] - &predicted).amax() < 0.05 * moved);
//! # Ok(())
//! # }
//! ```
//!
//! neural-tangents' `predict.gradient_descent_mse` uses the mean loss: its
//! `learning_rate` is $η$ · `y.len()` here (see [`flow`]).
//!
//! ## Scalars and parallelism
//!
//! Everything is generic over [`Scalar`] (`f32`, `f64`). With the default `parallel`
//! feature, row blocks run on rayon's pool (`RAYON_NUM_THREADS` sets its size).

pub use nalgebra;
pub use rand;

pub mod activation;
mod empirical;
pub mod error;
mod factor;
pub mod flow;
pub mod infinite;
mod linalg;
pub mod mlp;
pub mod model;
mod parallel;
pub mod program;
mod scalar;
pub mod tangent;
pub mod train;
pub mod zoo;

pub use activation::Activation;
pub use empirical::{empirical_ntk, empirical_ntk_block, empirical_ntk_full};
pub use error::{Error, Result};
pub use flow::KrylovFlow;
/// [`KrylovFlow`] and the Lanczos method, at their path before the flow family was
/// gathered in [`flow`]: the same module as [`flow::krylov`].
pub use flow::krylov;
pub use flow::{GaussianPrediction, GradientFlow, Horizon, InfiniteEnsemble, KernelRegression};
#[allow(deprecated)]
pub use infinite::infinite_width_layers;
pub use infinite::{
    Architecture, InfiniteWidth, Kernels, WidthPoint, WidthStudy, infinite_width,
    infinite_width_block, infinite_width_groups, width_convergence,
};
pub use mlp::{Mlp, MlpSpec, Parameterization};
pub use model::NtkModel;
pub use program::{Bias, Padding, Program, ProgramNetwork, Readout, Var, Weight};
pub use scalar::Scalar;
pub use tangent::{DenseUse, GroupKernel, GroupTangent};
#[allow(deprecated)]
pub use tangent::{LayerKernel, LayerTangent};
pub use train::{GradientDescent, Trajectory};
