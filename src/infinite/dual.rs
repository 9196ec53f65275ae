//! Gaussian expectations of activations: the "dual" of $φ$ that the kernel recursion
//! applies at every hidden layer.
//!
//! For $(u, v) ∼ N(0, [[q_1, c], [c, q_2]])$ the recursion needs
//!
//! $$C = E φ(u) ψ(v) \quad \text{and} \quad \dot C = E φ\'(u) ψ\'(v)$$
//!
//! ($ψ = φ$ in an MLP). With $σ_i = \sqrt{q_i}$, $ρ = c/(σ_1σ_2)$ (clamped to $[−1, 1]$, snapped to $±1$
//! within four ulps) and $θ = \arccos ρ$, the closed forms for $ψ = φ$ are:
//!
//! | $φ$ | $C$ | $\dot C$ |
//! |---|---|---|
//! | $a·\min(x,0) + b·\max(x,0)$ | $σ_1σ_2/(2π) [(a^2+b^2)(\sin θ + (π−θ) ρ) − 2ab (\sin θ − θ ρ)]$ | $[(a^2+b^2)(π−θ) + 2ab θ]/(2π)$ |
//! | $\operatorname{erf}$ | $(2/π) \operatorname{atan2}(2c, \sqrt{Δ})$ | $(4/π)/\sqrt{Δ}$ |
//! | $x$ | $c$ | $1$ |
//! | $\sin$ | $\tfrac12(e^{−m_−/2} − e^{−m_+/2})$ | $\tfrac12(e^{−m_−/2} + e^{−m_+/2})$ |
//! | $x Φ(x)$ | $c/4 + (c A + G/D)/(2π)$ | $1/4 + A/(2π) + c (2k − M/(s_1s_2D^2))/(2π D)$ |
//!
//! ReLU is $(a, b) = (0, 1)$, LeakyReLU($α$) is $(α, 1)$, Abs is $(−1, 1)$ (the arc-cosine
//! kernels of Cho & Saul 2009). Every difference of nearly equal numbers is written
//! out of these forms through $g = q_1q_2 − c^2 = (σ_1σ_2)^2(1 − ρ)(1 + ρ) ≥ 0$:
//! Erf's $Δ = (1+2q_1)(1+2q_2) − 4c^2 = 1 + 2q_1 + 2q_2 + 4g$ (and
//! $(2/π) \arcsin(2c/\sqrt{(1+2q_1)(1+2q_2)})$ is the atan2 above); Sin's
//! $m_∓ = \operatorname{Var}(u ∓ v) = (σ_1 − σ_2)^2 + 2σ_1σ_2(1 ∓ ρ)$. For GELU, with
//! $s_i = 1 + q_i$: $D = \sqrt{s_1s_2 − c^2} = \sqrt{1 + q_1 + q_2 + g}$,
//! $A = \arcsin(c/\sqrt{s_1s_2}) = \operatorname{atan2}(c, D)$, $k = 1/s_1 + 1/s_2$,
//! $G = g + k c^2$, $M = s_1q_1 + s_2q_2 + s_1s_2 + g(s_1 + s_2)$
//! (so that $2k − M/(s_1s_2D^2) = 2k − 1 + G/D^2$, the form of the derivation, without its
//! cancellation); it follows from $x Φ(x) = x P(z ≤ x)$ with an independent $z ∼ N(0, 1)$
//! and Gaussian integration by parts, and $\dot C = ∂C/∂c$ (Price's theorem).
//!
//! If one of $φ$, $ψ$ is the identity, Stein's lemma gives $E u ψ(v) = c E ψ\'(v)$ and
//! $E 1·ψ\'(v) = E ψ\'(v)$ ([`mean_derivative`]). Every other pair (Tanh, Sigmoid,
//! Softplus, custom, or two different activations) is integrated numerically, accurate
//! at any variance (see [`super::expectation`] and the table at
//! [`GaussHermite::DEFAULT_DEGREE`]).
//!
//! At zero variance (a zero-norm input without bias) $u ≡ 0$ and the expectations use
//! $φ(0)$, $φ\'(0)$ as the network does.

use std::f64::consts::{FRAC_1_PI, FRAC_2_SQRT_PI, PI};
use std::sync::Arc;

use crate::activation::Activation;
use crate::error::{Error, Result};

use super::expectation::{Rules, Side, Smoothness, mean_moments, pair_moments};
use super::fastmath;
use super::quadrature::GaussHermite;

/// 1/(2π).
const INV_2PI: f64 = 0.5 * FRAC_1_PI;

/// Relative slack on the Cauchy–Schwarz bound $|c| ≤ \sqrt{q_1q_2}$ for covariances computed
/// in floating point.
const COVARIANCE_SLACK: f64 = 1e-10;

/// The Gaussian expectations of an activation at one pair of inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianMoments {
    /// $C = E φ(u) φ(v)$.
    pub phi_phi: f64,
    /// $\dot C = E φ\'(u) φ\'(v)$.
    pub dphi_dphi: f64,
}

impl From<(f64, f64)> for GaussianMoments {
    fn from((phi_phi, dphi_dphi): (f64, f64)) -> Self {
        GaussianMoments { phi_phi, dphi_dphi }
    }
}

/// $C$ and $\dot C$ in closed form, or `None` for activations without one (Tanh, Sigmoid,
/// Softplus, custom).
///
/// $(u, v) ∼ N(0, [[q_1, c], [c, q_2]])$ with $q_1$ = `var1`, $c$ = `cov` and $q_2$ = `var2`.
///
/// ```
/// use ntk::Activation;
/// use ntk::infinite::closed_form;
/// # fn main() -> Result<(), ntk::Error> {
/// // ReLU at correlation 0: C = √(q₁q₂)/(2π), Ċ = 1/4.
/// let m = closed_form(&Activation::Relu, 2.0, 0.0, 2.0)?.expect("ReLU has a closed form");
/// assert!((m.phi_phi - 1.0 / std::f64::consts::PI).abs() < 1e-15);
/// assert!((m.dphi_dphi - 0.25).abs() < 1e-15);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] if a variance is negative, any argument is not finite,
/// or $|c|$ exceeds $\sqrt{q_1 q_2}$ by more than round-off (a relative $10^{−10}$).
pub fn closed_form(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
) -> Result<Option<GaussianMoments>> {
    check_covariance(var1, cov, var2)?;
    activation.validate()?;
    Ok(Closed::of(activation).map(|d| d.eval(var1, cov, var2).into()))
}

/// $C$ and $\dot C$ by the fixed 2-D tensor Gauss–Hermite rule `rule`, for any activation.
///
/// Exact for polynomial $φ$ of degree $< n$; accurate for smooth $φ$ only while the
/// variances are small (see the table at [`GaussHermite::DEFAULT_DEGREE`]); on kinks
/// (ReLU) it converges slowly. [`gaussian_moments`] is accurate at any variance.
///
/// ```
/// use ntk::Activation;
/// use ntk::infinite::{quadrature, closed_form, GaussHermite};
/// # fn main() -> Result<(), ntk::Error> {
/// let rule = GaussHermite::new(96)?;
/// let q = quadrature(&Activation::Erf, 1.0, 0.3, 2.0, &rule)?;
/// let exact = closed_form(&Activation::Erf, 1.0, 0.3, 2.0)?.unwrap();
/// assert!((q.phi_phi - exact.phi_phi).abs() < 1e-12);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`closed_form`].
pub fn quadrature(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
    rule: &GaussHermite,
) -> Result<GaussianMoments> {
    check_covariance(var1, cov, var2)?;
    activation.validate()?;
    Ok(tensor_quadrature(activation, var1, cov, var2, rule).into())
}

/// $C$ and $\dot C$ as the kernel recursion computes them: in closed form where there is one,
/// otherwise numerically, accurate to about $10^{−12}$ relative at any variance (see the
/// table at [`GaussHermite::DEFAULT_DEGREE`]).
///
/// ```
/// use ntk::Activation;
/// use ntk::infinite::gaussian_moments;
/// # fn main() -> Result<(), ntk::Error> {
/// // Tanh at variance 100 and correlation 1: E tanh(u)² is close to 1.
/// let m = gaussian_moments(&Activation::Tanh, 100.0, 100.0, 100.0)?;
/// assert!(m.phi_phi > 0.9 && m.phi_phi < 1.0);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`closed_form`], and [`Error::InvalidParameter`] if a custom $φ$ or $φ\'$ is not
/// finite where the integration evaluates it.
pub fn gaussian_moments(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
) -> Result<GaussianMoments> {
    check_covariance(var1, cov, var2)?;
    activation.validate()?;
    let rule = GaussHermite::new(GaussHermite::DEFAULT_DEGREE)?;
    let (c, cdot) = PairDual::new(activation, activation, &rule).eval(var1, cov, var2);
    if !(c.is_finite() && cdot.is_finite()) {
        return Err(Error::InvalidParameter {
            parameter: "activation",
            value: format!("{activation}: E φφ = {c}, E φ'φ' = {cdot}"),
            reason: "the Gaussian expectations are not finite (φ or φ' is NaN or grows too fast)",
        });
    }
    Ok((c, cdot).into())
}

fn check_covariance(var1: f64, cov: f64, var2: f64) -> Result<()> {
    for (parameter, v) in [("var1", var1), ("var2", var2)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(Error::InvalidParameter {
                parameter,
                value: format!("{v}"),
                reason: "a variance must be finite and >= 0",
            });
        }
    }
    if !cov.is_finite() {
        return Err(Error::InvalidParameter {
            parameter: "cov",
            value: format!("{cov}"),
            reason: "must be finite",
        });
    }
    if cov.abs() > var1.sqrt() * var2.sqrt() * (1.0 + COVARIANCE_SLACK) {
        return Err(Error::InvalidParameter {
            parameter: "cov",
            value: format!("{cov} (var1 = {var1}, var2 = {var2})"),
            reason: "a covariance must satisfy |cov| <= sqrt(var1 var2)",
        });
    }
    Ok(())
}

/// $Σ_{i,j} w_i w_j (φ(u_{ij}) φ(v_{ij}), φ\'(u_{ij}) φ\'(v_{ij}))$ over the pruned tensor rule in
/// the Cholesky coordinates $(u, v) = (a z_1, l z_1 + m z_2)$.
fn tensor_quadrature(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
    rule: &GaussHermite,
) -> (f64, f64) {
    // Factor the larger variance first, so that the estimate does not depend on the
    // argument order.
    let (var1, var2) = if var2 > var1 {
        (var2, var1)
    } else {
        (var1, var2)
    };
    let a = var1.sqrt();
    let (l, m) = if a > 0.0 {
        let l = cov / a;
        (l, (var2 - l * l).max(0.0).sqrt())
    } else {
        (0.0, var2.sqrt())
    };
    let (nodes, weights) = (rule.nodes(), rule.weights());
    let (mut c, mut cd) = (0.0, 0.0);
    for (i, (&zi, &wi)) in nodes.iter().zip(weights).enumerate() {
        let (lo, hi) = rule.pair_range(i);
        let (pu, du) = phi_and_derivative(activation, a * zi);
        let (mut sp, mut sd) = (0.0, 0.0);
        for (&zj, &wj) in nodes[lo..hi].iter().zip(&weights[lo..hi]) {
            let (pv, dv) = phi_and_derivative(activation, l * zi + m * zj);
            sp += wj * pv;
            sd += wj * dv;
        }
        c += wi * pu * sp;
        cd += wi * du * sd;
    }
    (c, cd)
}

/// $(φ(x), φ\'(x))$, sharing the work where $φ\'$ is a function of $φ$.
#[inline]
fn phi_and_derivative(activation: &Activation, x: f64) -> (f64, f64) {
    match activation {
        Activation::Tanh => {
            let t = x.tanh();
            (t, (1.0 - t) * (1.0 + t))
        }
        Activation::Sigmoid => {
            let s = activation.phi(x);
            (s, s * (1.0 - s))
        }
        other => (other.phi(x), other.derivative(x)),
    }
}

/// How $φ$ varies, as the numerical integration assumes: analytic within $π/2$ of the real
/// line for Tanh (its poles at ±iπ/2), π for Sigmoid and Softplus; 0 for the kinked
/// ReLU family (never integrated by Gauss–Hermite); 1 for a custom $φ$ and the entire but
/// fast-varying Erf, Sin and GELU; Sin oscillates everywhere, so no composite panel
/// is wider than 1.
fn smoothness(activation: &Activation) -> Smoothness {
    let distance = match activation {
        Activation::Identity => f64::INFINITY,
        Activation::Relu | Activation::LeakyRelu(_) | Activation::Abs => 0.0,
        Activation::Tanh => 0.5 * PI,
        Activation::Sigmoid | Activation::Softplus => PI,
        _ => 1.0,
    };
    let max_width = if matches!(activation, Activation::Sin) {
        1.0
    } else {
        f64::INFINITY
    };
    Smoothness {
        distance,
        max_width,
    }
}

/// Whether `a` and `b` are the same function: the same variant with the same
/// parameter, or custom activations sharing their $φ$ and $φ\'$ closures.
pub(crate) fn same_activation(a: &Activation, b: &Activation) -> bool {
    match (a, b) {
        (Activation::LeakyRelu(x), Activation::LeakyRelu(y)) => x.to_bits() == y.to_bits(),
        (Activation::Custom(x), Activation::Custom(y)) => x.same_functions(y),
        (Activation::Custom(_), _) | (_, Activation::Custom(_)) => false,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

/// The closed-form duals ($ψ = φ$).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Closed {
    /// $φ = a·\min(x, 0) + b·\max(x, 0)$; `d0` = $φ\'(0)$ as the network evaluates it.
    ArcCos {
        a: f64,
        b: f64,
        d0: f64,
    },
    Erf,
    Identity,
    Sin,
    Gelu,
}

impl Closed {
    /// The closed-form dual of `activation`, if it has one.
    pub(crate) fn of(activation: &Activation) -> Option<Closed> {
        let arccos = |a: f64, b: f64| Closed::ArcCos {
            a,
            b,
            d0: activation.derivative(0.0_f64),
        };
        match activation {
            Activation::Relu => Some(arccos(0.0, 1.0)),
            Activation::LeakyRelu(alpha) => Some(arccos(*alpha, 1.0)),
            Activation::Abs => Some(arccos(-1.0, 1.0)),
            Activation::Erf => Some(Closed::Erf),
            Activation::Identity => Some(Closed::Identity),
            Activation::Sin => Some(Closed::Sin),
            Activation::Gelu => Some(Closed::Gelu),
            _ => None,
        }
    }

    /// (C, Ċ) at one covariance.
    #[inline(always)]
    pub(crate) fn eval(self, q1: f64, c: f64, q2: f64) -> (f64, f64) {
        match self {
            Closed::ArcCos { a, b, d0 } => arccos_moments(a, b, d0, q1, c, q2),
            Closed::Erf => erf_moments(q1, c, q2),
            Closed::Identity => (c, 1.0),
            Closed::Sin => sin_moments(q1, c, q2),
            Closed::Gelu => gelu_moments(q1, c, q2),
        }
    }

    /// $E φ\'(u)$ for $u ∼ N(0, q)$.
    fn mean_derivative(self, q: f64) -> f64 {
        match self {
            Closed::ArcCos { a, b, d0 } => arccos_side(a, b, d0, q),
            Closed::Erf => FRAC_2_SQRT_PI / (1.0 + 2.0 * q).sqrt(),
            Closed::Identity => 1.0,
            Closed::Sin => (-0.5 * q).exp(),
            // E Φ(u) = 1/2 and E u N(u) = 0 by symmetry.
            Closed::Gelu => 0.5,
        }
    }
}

/// $σ_1σ_2 = \sqrt{q_1}·\sqrt{q_2}$ (never $\sqrt{q_1q_2}$, which under- or overflows where
/// $σ_1σ_2$ does not) and $ρ = c/σ_1σ_2$, clamped and snapped ([`fastmath::correlation`]).
/// The division is unconditional so that loops over it vectorise: a zero $σ_1σ_2$ comes with
/// $c = 0$, hence $ρ = 0$, and below 2e-308 (where the kernels underflow anyway) $ρ$ is only
/// approximate.
#[inline(always)]
fn std_and_correlation(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let std = q1.sqrt() * q2.sqrt();
    (std, fastmath::correlation(c / std.max(f64::MIN_POSITIVE)))
}

/// The arc-cosine kernels at correlation $ρ$: $(C/(σ_1σ_2), \dot C)$ for
/// $φ = a·\min(x, 0) + b·\max(x, 0)$.
#[inline(always)]
fn arccos_unit(a: f64, b: f64, rho: f64) -> (f64, f64) {
    let (k1, k2) = (a * a + b * b, 2.0 * a * b);
    let theta = fastmath::acos(rho);
    let sin = ((1.0 - rho) * (1.0 + rho)).sqrt();
    let c = INV_2PI * (k1 * (sin + (PI - theta) * rho) - k2 * (sin - theta * rho));
    let cdot = INV_2PI * (k1 * (PI - theta) + k2 * theta);
    (c, cdot)
}

/// $E φ\'(u)$ of the arc-cosine family for $u ∼ N(0, q)$: $(a + b)/2$, or $φ\'(0)$ at $q = 0$.
#[inline(always)]
fn arccos_side(a: f64, b: f64, d0: f64, q: f64) -> f64 {
    if q > 0.0 { 0.5 * (a + b) } else { d0 }
}

/// The arc-cosine family's $(C, \dot C)$: $C = σ_1σ_2 ×$ the unit kernel; with a zero variance
/// that side is $φ\'(0)$ surely, so $\dot C = E φ\'(u) E φ\'(v)$. Straight-line code (the
/// branch-free arccos, selects) so that loops over it vectorise.
#[inline(always)]
fn arccos_moments(a: f64, b: f64, d0: f64, q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (std, rho) = std_and_correlation(q1, c, q2);
    arccos_at(a, b, d0, std, rho, q1, q2)
}

/// [`arccos_moments`] from $σ_1σ_2$ and $ρ$.
#[inline(always)]
fn arccos_at(a: f64, b: f64, d0: f64, std: f64, rho: f64, q1: f64, q2: f64) -> (f64, f64) {
    let (unit, d) = arccos_unit(a, b, rho);
    let zero_norm = arccos_side(a, b, d0, q1) * arccos_side(a, b, d0, q2);
    (std * unit, if std > 0.0 { d } else { zero_norm })
}

/// [`arccos_moments`] over slices: a loop that vectorises, compiled for AVX-512 and
/// AVX2 as well as the baseline and chosen at run time (the same IEEE results on
/// every path: no fused multiply-adds are introduced). About 2× faster than SSE2
/// where AVX-512 is available (a circular CNN's kernel at N = 256: 0.50 → 0.24 s CPU).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn arccos_slice(a: f64, b: f64, d0: f64, q1: &[f64], c: &mut [f64], q2: &[f64], cdot: &mut [f64]) {
    let n = c.len();
    let (q1, q2, cdot) = (&q1[..n], &q2[..n], &mut cdot[..n]);
    for i in 0..n {
        (c[i], cdot[i]) = arccos_moments(a, b, d0, q1[i], c[i], q2[i]);
    }
}

/// One column of arc-cosine duals fused with the caller's per-entry step (see
/// [`PairDual::eval_column_then`]), multiversioned like [`arccos_slice`].
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn arccos_column<F: Fn(f64, f64, f64) -> (f64, f64)>(
    (a, b, d0): (f64, f64, f64),
    (q, sd, inv_sd): (&[f64], &[f64], &[f64]),
    (qj, sdj, inv_sdj): (f64, f64, f64),
    c: &mut [f64],
    aux: &mut [f64],
    then: F,
) {
    let n = c.len();
    let (q, sd, inv_sd, aux) = (&q[..n], &sd[..n], &inv_sd[..n], &mut aux[..n]);
    for i in 0..n {
        let rho = fastmath::correlation((c[i] * inv_sd[i]) * inv_sdj);
        let (cc, cd) = arccos_at(a, b, d0, sd[i] * sdj, rho, q[i], qj);
        (c[i], aux[i]) = then(cc, cd, aux[i]);
    }
}

/// $(c, \sqrt g)$ with $c = ρσ_1σ_2$ (the covariance clamped to Cauchy–Schwarz) and
/// $\sqrt g = \sqrt{q_1q_2 − c^2} = σ_1σ_2 \sqrt{(1 − ρ)(1 + ρ)}$, without the cancellation of the
/// difference (and without forming $q_1q_2$, which overflows first).
#[inline(always)]
fn covariance_gap_root(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (std, rho) = std_and_correlation(q1, c, q2);
    (rho * std, std * ((1.0 - rho) * (1.0 + rho)).sqrt())
}

#[inline(always)]
fn erf_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (c, r) = covariance_gap_root(q1, c, q2);
    // √Δ/2 = √(1/4 + q₁/2 + q₂/2 + g) ≥ 1/2, halved so that nothing overflows.
    let half_root = (0.25 + 0.5 * q1 + 0.5 * q2).sqrt().hypot(r);
    (
        2.0 * FRAC_1_PI * c.atan2(half_root),
        2.0 * FRAC_1_PI / half_root,
    )
}

#[inline(always)]
fn sin_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (std, rho) = std_and_correlation(q1, c, q2);
    let diff = (q1.sqrt() - q2.sqrt()).powi(2);
    let minus = diff + 2.0 * std * (1.0 - rho);
    let plus = diff + 2.0 * std * (1.0 + rho);
    let (em, ep) = ((-0.5 * minus).exp(), (-0.5 * plus).exp());
    (0.5 * (em - ep), 0.5 * (em + ep))
}

/// GELU's (C, Ċ), every term formed as a ratio of comparable numbers so that nothing
/// overflows before C does: G/D = r(r/D) + (kc)(c/D) and
/// $M/(s_1s_2D^2) = (q_1/s_2 + q_2/s_1 + 1)/D^2 + k (r/D)^2$, with $r = \sqrt g$.
#[inline(always)]
fn gelu_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (c, r) = covariance_gap_root(q1, c, q2);
    let (s1, s2) = (1.0 + q1, 1.0 + q2);
    let d = (1.0 + q1 + q2).sqrt().hypot(r);
    let (r_d, c_d) = (r / d, c / d);
    let asin = c.atan2(d);
    let k = 1.0 / s1 + 1.0 / s2;
    let phi = 0.25 * c + INV_2PI * (c * asin + r * r_d + (k * c) * c_d);
    let m_ratio = (q1 / s2 + q2 / s1 + 1.0) / d / d + k * r_d * r_d;
    let derivative = 0.25 + INV_2PI * (asin + c_d * (2.0 * k - m_ratio));
    (phi, derivative)
}

/// Per-sample variances $q$ with $\sqrt q$ and $1/\sqrt q$ (0 for $q = 0$), for
/// [`PairDual::eval_column_then`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Variances {
    q: Vec<f64>,
    sd: Vec<f64>,
    inv_sd: Vec<f64>,
}

impl Variances {
    pub(crate) fn new(q: Vec<f64>) -> Variances {
        let sd: Vec<f64> = q.iter().map(|v| v.sqrt()).collect();
        let inv_sd = sd
            .iter()
            .map(|&v| if v > 0.0 { 1.0 / v } else { 0.0 })
            .collect();
        Variances { q, sd, inv_sd }
    }
}

/// $E φ(u) ψ(v)$ and $E φ\'(u) ψ\'(v)$ for $(u, v) ∼ N(0, [[q_1, c], [c, q_2]])$, $φ$ and $ψ$
/// possibly different: the "dual" of a pair of activations, chosen once and evaluated
/// at many covariances.
#[derive(Clone, Debug)]
pub(crate) struct PairDual {
    kind: PairKind,
}

#[derive(Clone, Debug)]
enum PairKind {
    /// $ψ = φ$ with a closed form.
    Closed(Closed),
    /// One side is the identity, the `other` not: $E u ψ(v) = c E ψ\'(v)$, $E ψ\'(v)$, with
    /// $ψ$ = `other` on the second side (`identity_first`) or the first.
    Stein {
        other: Activation,
        closed: Option<Closed>,
        identity_first: bool,
        rules: Rules,
    },
    /// Numerical integration.
    Numeric {
        phi: Activation,
        psi: Activation,
        rules: Rules,
    },
}

impl PairDual {
    /// Closed form when $φ$ and $ψ$ are the same activation with one (or one of them is
    /// Identity: Stein's lemma, $E u ψ(v) = c E ψ\'(v)$, $E 1·ψ\'(v) = E ψ\'(v)$), accurate
    /// numerical integration otherwise, using `rule` (and smaller Gauss–Hermite rules)
    /// where the variances are small enough for it and composite Gauss–Legendre
    /// elsewhere.
    pub(crate) fn new(phi: &Activation, psi: &Activation, rule: &Arc<GaussHermite>) -> PairDual {
        let kind = if same_activation(phi, psi)
            && let Some(closed) = Closed::of(phi)
        {
            PairKind::Closed(closed)
        } else if matches!(phi, Activation::Identity) || matches!(psi, Activation::Identity) {
            let identity_first = matches!(phi, Activation::Identity);
            let other = if identity_first { psi } else { phi };
            PairKind::Stein {
                other: other.clone(),
                closed: Closed::of(other),
                identity_first,
                rules: Rules::up_to(rule),
            }
        } else {
            PairKind::Numeric {
                phi: phi.clone(),
                psi: psi.clone(),
                rules: Rules::up_to(rule),
            }
        };
        PairDual { kind }
    }

    /// $(C, \dot C) = (E φ(u) ψ(v), E φ\'(u) ψ\'(v))$ at $u$'s variance `q1`, the covariance `c`
    /// and $v$'s variance `q2` ($|c| ≤ \sqrt{q_1 q_2}$; the correlation is clamped to $[−1, 1]$).
    #[inline]
    pub(crate) fn eval(&self, q1: f64, c: f64, q2: f64) -> (f64, f64) {
        match &self.kind {
            PairKind::Closed(closed) => closed.eval(q1, c, q2),
            PairKind::Stein {
                other,
                closed,
                identity_first,
                rules,
            } => {
                let q = if *identity_first { q2 } else { q1 };
                let m = match closed {
                    Some(cl) => cl.mean_derivative(q),
                    None => numeric_mean_derivative(other, q, rules),
                };
                (c * m, m)
            }
            PairKind::Numeric { phi, psi, rules } => numeric_pair(phi, psi, q1, c, q2, rules),
        }
    }

    /// Column `j` of a kernel: `c[i]` holds $\operatorname{Cov}(u_{\text{first}+i}, v_j)$ on
    /// entry (rows `first..first + c.len()` of `rows`); $v_j$ has variance `cols.q()[j]`.
    /// For each row, `(c[i], aux[i]) = then(C, Ċ, aux[i])` in the same pass (the kernel
    /// recursion updates $Σ$ and $Θ$ here; a separate pass over the column costs ~15% on
    /// ReLU kernels). As [`PairDual::eval_slice`] with q1 = rows, q2 = the column's, but
    /// on precomputed square roots: the ReLU family then needs no square root or
    /// division per entry (a three-layer ReLU kernel at N = 1024: 47 ms, against 62 ms
    /// through `eval_slice`).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn eval_column_then(
        &self,
        rows: &Variances,
        first: usize,
        c: &mut [f64],
        cols: &Variances,
        j: usize,
        aux: &mut [f64],
        then: impl Fn(f64, f64, f64) -> (f64, f64),
    ) {
        let n = c.len();
        let r = first..first + n;
        let (q, sd, inv_sd, aux) = (
            &rows.q[r.clone()],
            &rows.sd[r.clone()],
            &rows.inv_sd[r],
            &mut aux[..n],
        );
        let (qj, sdj, inv_sdj) = (cols.q[j], cols.sd[j], cols.inv_sd[j]);
        match &self.kind {
            PairKind::Closed(Closed::ArcCos { a, b, d0 }) => {
                arccos_column(
                    (*a, *b, *d0),
                    (q, sd, inv_sd),
                    (qj, sdj, inv_sdj),
                    c,
                    aux,
                    then,
                );
            }
            PairKind::Closed(closed) => {
                for i in 0..n {
                    let (cc, cd) = closed.eval(q[i], c[i], qj);
                    (c[i], aux[i]) = then(cc, cd, aux[i]);
                }
            }
            _ => {
                for i in 0..n {
                    let (cc, cd) = self.eval(q[i], c[i], qj);
                    (c[i], aux[i]) = then(cc, cd, aux[i]);
                }
            }
        }
    }

    /// Entry-wise over equal-length slices: `c` holds covariances on entry and C on exit,
    /// `cdot` receives Ċ. The ReLU family runs the branch-free arccos, so the loop
    /// vectorises.
    pub(crate) fn eval_slice(&self, q1: &[f64], c: &mut [f64], q2: &[f64], cdot: &mut [f64]) {
        let n = c.len();
        assert!(
            q1.len() == n && q2.len() == n && cdot.len() == n,
            "eval_slice: slices of different lengths"
        );
        match &self.kind {
            PairKind::Closed(Closed::ArcCos { a, b, d0 }) => {
                arccos_slice(*a, *b, *d0, q1, c, q2, cdot);
            }
            PairKind::Closed(Closed::Identity) => cdot.fill(1.0),
            PairKind::Closed(closed) => {
                for i in 0..n {
                    (c[i], cdot[i]) = closed.eval(q1[i], c[i], q2[i]);
                }
            }
            _ => {
                for i in 0..n {
                    (c[i], cdot[i]) = self.eval(q1[i], c[i], q2[i]);
                }
            }
        }
    }
}

/// The numerical (C, Ċ) of a pair.
fn numeric_pair(
    phi: &Activation,
    psi: &Activation,
    q1: f64,
    c: f64,
    q2: f64,
    rules: &Rules,
) -> (f64, f64) {
    fn side(act: &Activation) -> Side<impl Fn(f64) -> (f64, f64) + '_> {
        Side {
            eval: move |x: f64| phi_and_derivative(act, x),
            smoothness: smoothness(act),
        }
    }
    // One monomorphised loop for the common activations (φ and φ' share their work).
    match (phi, psi) {
        (Activation::Tanh, Activation::Tanh) => {
            let tanh = |x: f64| {
                let t = x.tanh();
                (t, (1.0 - t) * (1.0 + t))
            };
            let s = Side {
                eval: tanh,
                smoothness: smoothness(phi),
            };
            pair_moments(&s, &s, q1, c, q2, rules)
        }
        _ => pair_moments(&side(phi), &side(psi), q1, c, q2, rules),
    }
}

/// $E φ\'(u)$, $u ∼ N(0, q)$, numerically.
fn numeric_mean_derivative(activation: &Activation, q: f64, rules: &Rules) -> f64 {
    mean_moments(
        |x| phi_and_derivative(activation, x),
        smoothness(activation),
        q,
        rules,
    )
    .1
}

/// $E φ\'(u)$ for $u ∼ N(0, q)$ ($φ\'(0)$ at $q = 0$), as accurate as the pair moments: in
/// closed form where $φ$ has one, else by the same numerical integration.
pub(crate) fn mean_derivative(act: &Activation, q: f64, rule: &GaussHermite) -> f64 {
    match Closed::of(act) {
        Some(closed) => closed.mean_derivative(q),
        None => numeric_mean_derivative(act, q, &Rules::up_to(rule)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::up_to(&GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap())
    }

    fn default_rule() -> Arc<GaussHermite> {
        GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap()
    }

    /// (C, Ċ) of any pair by numerical integration, whatever closed form it has: the
    /// integrator is checked against an independent trapezoidal rule in
    /// `tests/integration/infinite.rs`.
    fn numerical(phi: &Activation, psi: &Activation, q1: f64, c: f64, q2: f64) -> (f64, f64) {
        fn side(act: &Activation) -> Side<impl Fn(f64) -> (f64, f64) + '_> {
            Side {
                eval: move |x: f64| phi_and_derivative(act, x),
                smoothness: smoothness(act),
            }
        }
        pair_moments(&side(phi), &side(psi), q1, c, q2, &rules())
    }

    /// |a − b| ≤ tol · scale, with a message.
    fn assert_close(what: &str, a: f64, b: f64, scale: f64, tol: f64) {
        assert!(
            (a - b).abs() <= tol * scale,
            "{what}: {a} vs {b} (error {:e} of {scale:e})",
            (a - b).abs()
        );
    }

    /// Every closed form against numerical integration (which splits at the kink of the
    /// ReLU family), from tiny to large variances, relative to the Cauchy–Schwarz scale
    /// √(C(x,x) C(x̄,x̄)).
    #[test]
    fn closed_forms_match_numerical_integration() {
        let cases = [
            (Activation::Relu, 1e4),
            (Activation::LeakyRelu(0.2), 1e4),
            (Activation::LeakyRelu(-0.5), 1e4),
            (Activation::Abs, 1e4),
            (Activation::Erf, 1e4),
            (Activation::Gelu, 1e4),
            (Activation::Identity, 1e4),
            // sin oscillates everywhere: panels of width ≤ 1 resolve it, at a cost
            // proportional to σ.
            (Activation::Sin, 100.0),
        ];
        for (act, largest) in cases {
            for q in [0.01, 0.7, 3.0, 100.0, 1e4]
                .into_iter()
                .filter(|&q| q <= largest)
            {
                for (q1, q2) in [(q, q), (q, 2.5 * q), (0.4 * q, q)] {
                    let (d1, e1) = Closed::of(&act).unwrap().eval(q1, q1, q1);
                    let (d2, e2) = Closed::of(&act).unwrap().eval(q2, q2, q2);
                    for rho in [-1.0, -0.95, -0.3, 0.0, 0.5, 0.99, 1.0] {
                        let c = rho * q1.sqrt() * q2.sqrt();
                        let (cc, cd) = Closed::of(&act).unwrap().eval(q1, c, q2);
                        let (nc, nd) = numerical(&act, &act, q1, c, q2);
                        let at = format!("{act:?} at ({q1}, {rho}, {q2})");
                        assert_close(&format!("{at} C"), cc, nc, (d1 * d2).sqrt(), 1e-12);
                        assert_close(&format!("{at} Ċ"), cd, nd, (e1 * e2).sqrt(), 1e-12);
                    }
                }
            }
        }
    }

    /// Erf at input norms ~1e8 (q ~ 1e16): the diagonal against its own closed form
    /// written independently, E erf(u)² = 1 − (4/π) arcsin(1/√(2 + 4q)) and
    /// E erf'(u)² = (4/π)/√(1 + 4q); nearby pairs stay PSD.
    #[test]
    fn erf_is_accurate_at_huge_variance() {
        let erf = Closed::Erf;
        for q in [1e8, 1e16, 1e100, 1e300] {
            let (c, cd) = erf.eval(q, q, q);
            let exact_c = 1.0 - 4.0 * FRAC_1_PI * (1.0 / (2.0 + 4.0 * q).sqrt()).asin();
            let exact_cd = 4.0 * FRAC_1_PI / (1.0 + 4.0 * q).sqrt();
            assert_close(&format!("C at {q}"), c, exact_c, exact_c, 4e-16);
            assert_close(&format!("Ċ at {q}"), cd, exact_cd, exact_cd, 4e-15);
            for rho in [1.0 - 1e-12, 1.0 - 1e-6, 0.5] {
                for (q1, q2) in [(q, q), (q, 3.0 * q)] {
                    let (x, xd) = erf.eval(q1, q1, q1);
                    let (y, yd) = erf.eval(q2, q2, q2);
                    let (xy, xyd) = erf.eval(q1, rho * q1.sqrt() * q2.sqrt(), q2);
                    assert!(x * y - xy * xy >= -1e-15 * x * y, "C not PSD at {q}, {rho}");
                    assert!(
                        xd * yd - xyd * xyd >= -1e-15 * xd * yd,
                        "Ċ not PSD at {q}, {rho}"
                    );
                }
            }
        }
        // Against numerical integration at 1e16 and correlations below 1.
        for rho in [0.3, 0.999] {
            let q = 1e16;
            let (c, cd) = erf.eval(q, rho * q, q);
            let (nc, nd) = numerical(&Activation::Erf, &Activation::Erf, q, rho * q, q);
            assert_close("C", c, nc, 1.0, 1e-12);
            assert_close("Ċ", cd, nd, erf.eval(q, q, q).1, 1e-10);
        }
    }

    /// GELU's diagonal NTK term Ċ(x, x) = E φ'(u)² stays positive and accurate (it tends
    /// to E 1{u > 0} = 1/2) up to huge variances.
    #[test]
    fn gelu_is_accurate_at_huge_variance() {
        for q in [1e8, 1e16, 1e18, 1e100, 1e300] {
            let (c, cd) = Closed::Gelu.eval(q, q, q);
            assert!(cd > 0.49 && cd < 0.51, "Ċ(x, x) = {cd} at {q}");
            // E (uΦ(u))² → E u² 1{u > 0} = q/2.
            assert_close(&format!("C at {q}"), c, 0.5 * q, 0.5 * q, 1e-6);
        }
        for q in [1e8, 1e16] {
            for rho in [-0.5, 0.3, 0.999, 1.0] {
                let (c, cd) = Closed::Gelu.eval(q, rho * q, q);
                let (nc, nd) = numerical(&Activation::Gelu, &Activation::Gelu, q, rho * q, q);
                assert_close(&format!("C at {q}, {rho}"), c, nc, q, 1e-12);
                assert_close(&format!("Ċ at {q}, {rho}"), cd, nd, 0.5, 1e-11);
            }
        }
    }

    /// C(x, x̄) = σ₁σ₂ × a function of ρ for the ReLU family: exact at 1e-300 and 1e300
    /// (no product q₁q₂ under- or overflows).
    #[test]
    fn relu_family_scales_exactly() {
        for act in [
            Activation::Relu,
            Activation::LeakyRelu(0.1),
            Activation::Abs,
        ] {
            let dual = Closed::of(&act).unwrap();
            for rho in [-1.0, 0.3, 1.0] {
                let (unit, unit_d) = dual.eval(1.0, rho, 1.0);
                for (s1, s2) in [
                    (1e-300_f64, 1e-300_f64),
                    (1e300, 1e300),
                    (1e-300, 1e300),
                    (1e-160, 1e-160),
                ] {
                    let (c, d) = dual.eval(s1, rho * s1.sqrt() * s2.sqrt(), s2);
                    let expected = unit * s1.sqrt() * s2.sqrt();
                    assert_close(
                        &format!("{act:?} C at {s1}, {s2}"),
                        c,
                        expected,
                        expected.abs().max(f64::MIN_POSITIVE),
                        1e-14,
                    );
                    assert_close(&format!("{act:?} Ċ at {s1}, {s2}"), d, unit_d, 1.0, 1e-15);
                }
            }
        }
    }

    #[test]
    fn covariances_beyond_cauchy_schwarz_are_errors() {
        assert!(closed_form(&Activation::Gelu, 1.0, 1.5, 1.0).is_err());
        assert!(closed_form(&Activation::Relu, 4.0, -2.1, 1.0).is_err());
        assert!(gaussian_moments(&Activation::Tanh, 1.0, 1.01, 1.0).is_err());
        assert!(quadrature(&Activation::Tanh, 0.0, 1e-3, 1.0, &default_rule()).is_err());
        // Round-off beyond the bound is accepted.
        assert!(closed_form(&Activation::Relu, 2.0, 2.0 * (1.0 + 1e-14), 2.0).is_ok());
    }

    #[test]
    fn identifies_the_same_activation() {
        let cube = Activation::custom("cube", |x| x * x * x, |x| 3.0 * x * x);
        let other = Activation::custom("cube", |x| x * x * x, |x| 3.0 * x * x);
        assert!(same_activation(&cube, &cube.clone()));
        assert!(!same_activation(&cube, &other));
        assert!(same_activation(&Activation::Relu, &Activation::Relu));
        assert!(same_activation(
            &Activation::LeakyRelu(0.1),
            &Activation::LeakyRelu(0.1)
        ));
        assert!(!same_activation(
            &Activation::LeakyRelu(0.1),
            &Activation::LeakyRelu(0.2)
        ));
        assert!(!same_activation(
            &Activation::Relu,
            &Activation::LeakyRelu(0.0)
        ));
        assert!(!same_activation(&Activation::Tanh, &cube));
    }

    /// Mixed pairs with closed forms derived by hand: E relu(u) erf(v) = (c/2) E erf'(v)
    /// (relu(u) = (u + |u|)/2, |u| erf(v) is odd) and E 1{u > 0} erf'(v) = E erf'(v)/2,
    /// with E erf'(v) = (2/√π)/√(1 + 2q₂); E |u| tanh(v) = E sign(u) tanh'(v) = 0.
    #[test]
    fn mixed_pairs_match_hand_derived_forms() {
        let rule = default_rule();
        for (q1, q2) in [(0.3_f64, 2.0_f64), (50.0, 0.7), (1e4, 1e4)] {
            for rho in [-1.0, -0.4, 0.2, 0.97, 1.0] {
                let c = rho * q1.sqrt() * q2.sqrt();
                let mean = FRAC_2_SQRT_PI / (1.0 + 2.0 * q2).sqrt();
                let (rc, rd) =
                    PairDual::new(&Activation::Relu, &Activation::Erf, &rule).eval(q1, c, q2);
                assert_close("relu·erf C", rc, 0.5 * c * mean, q1.sqrt(), 1e-12);
                assert_close("relu·erf Ċ", rd, 0.5 * mean, 1.0, 1e-12);
                // The swapped pair is the same expectation.
                let (sc, sd) =
                    PairDual::new(&Activation::Erf, &Activation::Relu, &rule).eval(q2, c, q1);
                assert_close("erf·relu C", sc, rc, q1.sqrt(), 1e-12);
                assert_close("erf·relu Ċ", sd, rd, 1.0, 1e-12);
                let (ac, ad) =
                    PairDual::new(&Activation::Abs, &Activation::Tanh, &rule).eval(q1, c, q2);
                assert_close("abs·tanh C", ac, 0.0, q1.sqrt(), 1e-12);
                assert_close("abs·tanh Ċ", ad, 0.0, 1.0, 1e-12);
            }
        }
    }

    /// Stein's lemma pairs against numerical integration of the same expectation.
    #[test]
    fn identity_pairs_follow_steins_lemma() {
        let rule = default_rule();
        for other in [
            Activation::Tanh,
            Activation::Relu,
            Activation::Gelu,
            Activation::Softplus,
        ] {
            for (q1, q2) in [(0.5_f64, 2.0_f64), (30.0, 1.0)] {
                for rho in [-0.7, 0.1, 1.0] {
                    let c = rho * q1.sqrt() * q2.sqrt();
                    let (sc, sd) =
                        PairDual::new(&Activation::Identity, &other, &rule).eval(q1, c, q2);
                    let (nc, nd) = numerical(&Activation::Identity, &other, q1, c, q2);
                    let scale = (q1 * q2).sqrt().max(1.0);
                    assert_close(&format!("id·{other:?} C"), sc, nc, scale, 1e-12);
                    assert_close(&format!("id·{other:?} Ċ"), sd, nd, 1.0, 1e-12);
                    let (tc, td) =
                        PairDual::new(&other, &Activation::Identity, &rule).eval(q2, c, q1);
                    assert_close("swapped C", tc, sc, scale, 1e-14);
                    assert_close("swapped Ċ", td, sd, 1.0, 1e-14);
                }
            }
        }
    }

    /// E φ'(u) in closed form against its numerical integral.
    #[test]
    fn mean_derivative_closed_forms_match_integration() {
        let rule = default_rule();
        for act in Activation::builtins() {
            for q in [0.0, 0.2, 3.0, 400.0] {
                if matches!(act, Activation::Sin) && q > 3.0 {
                    // cos has E = e^{−q/2} = 1e-87 here: its integral is all cancellation.
                    continue;
                }
                let m = mean_derivative(&act, q, &rule);
                let n = numeric_mean_derivative(&act, q, &rules());
                assert_close(&format!("{act:?} at {q}"), m, n, 1.0, 1e-13);
            }
            assert_close(
                "q = 0",
                mean_derivative(&act, 0.0, &rule),
                act.derivative(0.0),
                1.0,
                0.0,
            );
        }
    }

    /// Zero variance: u ≡ 0 uses φ(0) and φ'(0), as the network does.
    #[test]
    fn zero_variances_use_the_value_at_zero() {
        let rule = default_rule();
        let (tanh, sigmoid) = (Activation::Tanh, Activation::Sigmoid);
        let pair = PairDual::new(&tanh, &sigmoid, &rule);
        let (c, cd) = pair.eval(0.0, 0.0, 2.0);
        assert_close("C", c, 0.0, 1.0, 1e-16);
        assert_close("Ċ", cd, mean_derivative(&sigmoid, 2.0, &rule), 1.0, 1e-14);
        let (c, cd) = pair.eval(0.0, 0.0, 0.0);
        assert_close("C", c, 0.0, 1.0, 0.0);
        assert_close("Ċ", cd, 0.25, 1.0, 1e-16);
        let (c, cd) = PairDual::new(&sigmoid, &sigmoid, &rule).eval(1.5, 0.0, 0.0);
        assert_close("C", c, 0.5 * 0.5, 1.0, 1e-14);
        assert_close(
            "Ċ",
            cd,
            0.25 * mean_derivative(&sigmoid, 1.5, &rule),
            1.0,
            1e-14,
        );
    }

    #[test]
    fn eval_slice_and_eval_column_then_are_eval_entrywise() {
        let rule = default_rule();
        let q1 = [0.0_f64, 0.5, 2.0, 1e-200, 40.0];
        let q2 = [1.0_f64, 0.5, 0.0, 1e200, 40.0];
        let rho = [0.0, 1.0, 0.0, -0.3, 0.9];
        for (phi, psi) in [
            (Activation::Relu, Activation::Relu),
            (Activation::LeakyRelu(-0.5), Activation::LeakyRelu(-0.5)),
            (Activation::Erf, Activation::Erf),
            (Activation::Gelu, Activation::Gelu),
            (Activation::Sin, Activation::Sin),
            (Activation::Identity, Activation::Identity),
            (Activation::Tanh, Activation::Tanh),
            (Activation::Identity, Activation::Softplus),
            (Activation::Tanh, Activation::Relu),
        ] {
            let pair = PairDual::new(&phi, &psi, &rule);
            let mut c: Vec<f64> = (0..5)
                .map(|i| rho[i] * q1[i].sqrt() * q2[i].sqrt())
                .collect();
            let expected: Vec<(f64, f64)> = (0..5).map(|i| pair.eval(q1[i], c[i], q2[i])).collect();
            let mut cdot = vec![0.0; 5];
            let mut column = c.clone();
            pair.eval_slice(&q1, &mut c, &q2, &mut cdot);
            // Column 2 of a kernel whose rows are q1 and columns q2, against eval.
            let (rows, cols) = (Variances::new(q1.to_vec()), Variances::new(q2.to_vec()));
            column
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = rho[i] * q1[i].sqrt() * q2[2].sqrt());
            let mut column_dot = vec![0.0; 5];
            pair.eval_column_then(
                &rows,
                0,
                &mut column,
                &cols,
                2,
                &mut column_dot,
                |c, d, _| (c, d),
            );
            for i in 0..5 {
                let (ec, ed) = pair.eval(q1[i], rho[i] * q1[i].sqrt() * q2[2].sqrt(), q2[2]);
                assert_close(
                    &format!("{phi:?}·{psi:?} column C[{i}]"),
                    column[i],
                    ec,
                    ec.abs(),
                    1e-15,
                );
                assert_close(
                    &format!("{phi:?}·{psi:?} column Ċ[{i}]"),
                    column_dot[i],
                    ed,
                    ed.abs(),
                    1e-15,
                );
            }
            for i in 0..5 {
                assert_close(
                    &format!("{phi:?}·{psi:?} C[{i}]"),
                    c[i],
                    expected[i].0,
                    expected[i].0.abs(),
                    1e-15,
                );
                assert_close(
                    &format!("{phi:?}·{psi:?} Ċ[{i}]"),
                    cdot[i],
                    expected[i].1,
                    expected[i].1.abs(),
                    1e-15,
                );
            }
        }
    }

    /// Diagonal values with known closed forms: E relu(u)² = q/2, E |u|² = q,
    /// E sin²u = (1 − e^{−2q})/2, E erf(u)² = (2/π) arcsin(2q/(1+2q)).
    #[test]
    fn diagonal_values() {
        let q: f64 = 1.7;
        let relu = closed_form(&Activation::Relu, q, q, q).unwrap().unwrap();
        assert!((relu.phi_phi - q / 2.0).abs() < 1e-15);
        assert!((relu.dphi_dphi - 0.5).abs() < 1e-15);
        let abs = closed_form(&Activation::Abs, q, q, q).unwrap().unwrap();
        assert!((abs.phi_phi - q).abs() < 1e-14);
        assert!((abs.dphi_dphi - 1.0).abs() < 1e-15);
        let sin = closed_form(&Activation::Sin, q, q, q).unwrap().unwrap();
        assert!((sin.phi_phi - 0.5 * (1.0 - (-2.0 * q).exp())).abs() < 1e-15);
        let erf = closed_form(&Activation::Erf, q, q, q).unwrap().unwrap();
        let expected = 2.0 / PI * (2.0 * q / (1.0 + 2.0 * q)).asin();
        assert!((erf.phi_phi - expected).abs() < 1e-15);
        // Anti-correlated: relu(u) relu(−u) = 0.
        let anti = closed_form(&Activation::Relu, q, -q, q).unwrap().unwrap();
        assert!(anti.phi_phi.abs() < 1e-15 && anti.dphi_dphi.abs() < 1e-15);
    }

    #[test]
    fn zero_variance_uses_the_networks_derivative_at_zero() {
        let leaky = closed_form(&Activation::LeakyRelu(0.1), 0.0, 0.0, 2.0)
            .unwrap()
            .unwrap();
        assert!(leaky.phi_phi.abs() < f64::MIN_POSITIVE);
        assert!((leaky.dphi_dphi - 0.1 * 0.55).abs() < 1e-15);
        let relu = closed_form(&Activation::Relu, 0.0, 0.0, 0.0)
            .unwrap()
            .unwrap();
        assert!(relu.phi_phi.abs() < f64::MIN_POSITIVE && relu.dphi_dphi.abs() < f64::MIN_POSITIVE);
    }

    #[test]
    fn invalid_covariances_are_errors() {
        assert!(closed_form(&Activation::Relu, -1.0, 0.0, 1.0).is_err());
        assert!(closed_form(&Activation::Relu, 1.0, f64::NAN, 1.0).is_err());
        assert!(gaussian_moments(&Activation::Tanh, 1.0, 0.0, f64::INFINITY).is_err());
        assert!(
            closed_form(&Activation::Tanh, 1.0, 0.5, 1.0)
                .unwrap()
                .is_none()
        );
        let nan_past_three = Activation::custom(
            "nan",
            |x: f64| x.tanh(),
            |x: f64| if x.abs() > 3.0 { f64::NAN } else { 1.0 },
        );
        assert!(gaussian_moments(&nan_past_three, 4.0, 1.0, 4.0).is_err());
    }
}
