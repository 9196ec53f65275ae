//! Gradient-flow dynamics of a model linearised around its initialisation.
//!
//! Under gradient flow on the loss $L = \tfrac12 Σ_i \lVert f(x_i) − y_i \rVert^2$ with learning rate $η$, a
//! model whose tangent kernel stays at $Θ$ (a linearised network; a wide one, by Jacot et
//! al. 2018 and Lee et al. 2019) obeys $df_t/dt = −η Θ (f_t − Y)$ on the $N$ training
//! points, so
//!
//! $$f_t(X) = Y + e^{−ηtΘ} (f_0(X) − Y),$$
//!
//! and on test points $x$ (kernel $Θ(x, X)$, $M × N$)
//!
//! $$f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − e^{−ηtΘ}) (Y − f_0(X)).$$
//!
//! With $Θ = V Λ Vᵀ$ (computed once, in [`GradientFlow::new`]), $e^{−ηtΘ} = V e^{−ηtΛ} Vᵀ$
//! and $Θ⁻¹(I − e^{−ηtΘ}) = V \mathrm{diag}((1 − e^{−ηtλ_i})/λ_i) Vᵀ$, where
//! $(1 − e^{−ηtλ})/λ = −\mathrm{expm1}(−ηtλ)/λ$ is evaluated without cancellation and tends to
//! $ηt$ as $λ → 0$ (so $Θ$ need not be invertible). Each prediction then costs $O(N²k)$ (test:
//! $O(N²k + MNk)$).
//!
//! # The null space
//!
//! A kernel with repeated (or linearly dependent) training inputs is singular, and in
//! floating point its zero eigenvalues come out as round-off of either sign. The exact
//! flow never moves the component of $f_0 − Y$ in $Θ$'s null space, so at $t = ∞$ the
//! training outputs keep it and the test outputs use the pseudo-inverse $Θ⁺$. Every
//! solver here therefore treats eigenvalues below **$N·ε·λ_{max}$** as exactly 0 ($ε$ the
//! machine epsilon of the scalar type: entries accurate to $ε$ move eigenvalues by up to
//! about $N·ε·λ_{max}$, so smaller ones cannot be told from 0), and rejects a kernel whose
//! smallest eigenvalue is below $−\max(10⁻⁸, N·ε)·\max |λ|$ as not positive semi-definite
//! ([`Error::NotPositiveSemidefinite`](crate::Error::NotPositiveSemidefinite)).
//!
//! Discrete gradient descent with step $η$ gives $f_s − Y = (I − ηΘ)^s (f_0 − Y)$ after $s$
//! steps, and $f_s(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − (I − ηΘ)^s)(Y − f_0(X))$; it is stable
//! iff $η < 2/λ_{max}$ ([`GradientFlow::max_stable_learning_rate`]).
//!
//! # Time units
//!
//! The loss here is the **sum** $\tfrac12 Σ \lVert f − y \rVert^2$. neural-tangents'
//! `predict.gradient_descent_mse(k, y, learning_rate)` uses the mean over the
//! `y.size` target entries, so its time $t_{nt}$ corresponds to ours through
//! $η t$ = `learning_rate` · $t_{nt}$ / `y.size`: pass `eta = learning_rate / y.len()` here and
//! the same $t$.
//!
//! # More outputs
//!
//! With $k > 1$ outputs, $Y$ is $N × k$ and $Θ$ acts on each column (the $Θ ⊗ I$ limit, and
//! what [`empirical_ntk`](crate::empirical_ntk) returns). For the exact linearisation
//! of a finite network with $k > 1$, pass the $(N·k) × (N·k)$
//! [`empirical_ntk_full`](crate::empirical_ntk_full) and $Y$ reshaped to $(N·k) × 1$, row
//! $i·k + c$ holding $y_c(x_i)$.
//!
//! # The solvers
//!
//! All four take the training kernel $Θ$ as a matrix and check it ($N × N$, finite,
//! symmetric) and the targets $Y$ ($N × k$, finite) in the same way:
//! - [`GradientFlow`]: one eigendecomposition of $Θ$, then predictions at any times or
//!   step counts ([`Horizon`]), $O(N²k)$ each;
//! - [`KrylovFlow`]: Lanczos approximations at a single time, $O(mN²)$ per prediction
//!   without the $O(N³)$ eigendecomposition ([`krylov`]);
//! - [`KernelRegression`]: the $t = ∞$ limit through a Cholesky solve, with an optional
//!   ridge;
//! - [`InfiniteEnsemble`]: the mean and covariance of the outputs over random
//!   initialisations ([`GaussianPrediction`]).

mod ensemble;
mod gradient_flow;
mod kernel_regression;
pub mod krylov;
mod problem;

pub use ensemble::{GaussianPrediction, InfiniteEnsemble};
pub use gradient_flow::{GradientFlow, Horizon};
pub use kernel_regression::KernelRegression;
pub use krylov::KrylovFlow;
