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
//! A model lists its parameter groups as [`GroupTangent`]s: a weight matrix with the
//! inputs $X_u$ and output gradients $G_u$ of each of its uses, and optionally a bias at
//! the same places ([`GroupTangent::Dense`]); a bias on its own, at one or more
//! places ([`GroupTangent::Bias`]); or parameters of any other shape through their
//! Jacobian block ([`GroupTangent::Jacobian`]). The crate validates them once (every
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
//! ([`GroupTangent::Bias`]) is always pre-summed.

mod contraction;
mod jacobian;
mod normal_form;
#[cfg(test)]
mod test_support;

use nalgebra::DMatrix;

use crate::Scalar;

pub(crate) use contraction::{OutputLayout, Scratch, check_kernel_finite};
pub(crate) use normal_form::Tangents;

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
pub enum GroupTangent<T: Scalar> {
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
    /// its input is given: the same group as a [`GroupTangent::Dense`] with one use
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
pub struct GroupKernel<T: Scalar> {
    /// The weight term $s_w^2 Σ_{u,v} (X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ) / k$, $N_1 × N_2$
    /// (for a [`GroupTangent::Jacobian`] group, its $J_1 J_2ᵀ / k$; zero for a
    /// [`GroupTangent::Bias`] group).
    pub weights: DMatrix<T>,
    /// The bias term $s_b^2 Σ_{u,v} G_{1,u} G_{2,v}ᵀ / k$, $N_1 × N_2$; `None` without bias parameters.
    pub bias: Option<DMatrix<T>>,
}

impl<T: Scalar> GroupKernel<T> {
    /// weights + bias.
    #[must_use]
    pub fn total(&self) -> DMatrix<T> {
        match &self.bias {
            Some(b) => &self.weights + b,
            None => self.weights.clone(),
        }
    }
}

/// The old name of [`GroupTangent`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `GroupTangent` (one per parameter group)"
)]
pub type LayerTangent<T> = GroupTangent<T>;

/// The old name of [`GroupKernel`].
#[deprecated(
    since = "0.2.0",
    note = "renamed to `GroupKernel` (one per parameter group)"
)]
pub type LayerKernel<T> = GroupKernel<T>;
