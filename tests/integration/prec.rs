//! Tolerances, in one place (as statrs' `prec`): every comparison in the suite names
//! one of these instead of a literal, with the reason for its size.

// Three tiers: round-off (two exact routes to one number), quadrature (a numerical
// integral against a closed form or a finer integral), and Monte Carlo (a statistical
// bound, in `common::assert_root_width_rate` and the width tests). The constants below
// refine them; every comparison names one.

/// Round-off, tight: the same number by two exact routes through a few f64 operations
/// (a closed form against the recursion it unrolls, a rescaled input against the
/// original, a program against the engine it equals), relative.
pub const ROUND_OFF: f64 = 1e-13;

/// Round-off through a deep recursion or a long sum (hundreds of layers, a
/// pseudo-inverse limit), relative.
pub const ROUND_OFF_DEEP: f64 = 1e-12;

/// Quadrature of a smooth φ at moderate variance (Gauss–Hermite of degree 160 or the
/// composite rule) against a closed form or a fine trapezoid: the documented accuracy
/// of the Gaussian expectations, with a margin.
pub const QUADRATURE_SMOOTH: f64 = 1e-11;

/// Exact identities in f64 (Jacobian contraction, per-group sums, blocks of a kernel,
/// a formula against the same formula written out by hand): round-off only.
pub const EXACT_F64: f64 = 1e-10;

/// Step of the central finite differences in the parameters (of order 1), in time,
/// and in the inputs.
pub const FD_STEP: f64 = 1e-6;

/// Central finite differences in f64 with step [`FD_STEP`]: truncation O(h²) plus
/// round-off O(ε/h).
pub const FINITE_DIFFERENCE: f64 = 1e-6;

/// f32 against f64 on the same network or kernel.
pub const F32_VS_F64: f64 = 1e-4;

/// Closed-form kernels against neural-tangents on pairs of inputs with correlation
/// ±1, where θ = arccos ρ amplifies round-off in ρ to ~√ε (the references' README:
/// ~1e-9 there).
pub const NEURAL_TANGENTS: f64 = 1e-9;

/// Closed-form kernels against neural-tangents everywhere else (the README: ~1e-15),
/// relative to the largest entry, with a margin for the recursion's depth.
pub const NEURAL_TANGENTS_ROUND_OFF: f64 = 1e-13;

/// Gauss–Hermite quadrature at the default degree on moderate pre-activation
/// variances (the table at `GaussHermite::DEFAULT_DEGREE`): the same kernel entry
/// computed with the two inputs in swapped roles.
pub const QUADRATURE: f64 = 1e-8;

/// Predictions through one symmetric eigendecomposition (or Cholesky) against a
/// reference through another route (Padé exponential, LU, pseudo-inverse, iteration):
/// both carry round-off amplified by the kernel's condition number (≲ 1e4 here).
pub const SPECTRAL: f64 = 1e-9;

/// PSD: the smallest eigenvalue may dip below zero by this fraction of the trace.
pub const PSD_TRACE_FRACTION: f64 = 1e-10;

/// Kernel regression with a tiny relative ridge (1e-9 … 1e-10) against the noise-free
/// targets it interpolates or the linear rule it recovers: the ridge's bias
/// (ρ/λ_min ≲ 1e-8) plus the round-off of a solve with condition number up to ~1e10
/// (observed: 5e-11 and 3e-9).
pub const RIDGE_RECOVERY: f64 = 1e-7;
