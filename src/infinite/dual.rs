//! Gaussian expectations of activations: the "dual" of φ that the kernel recursion
//! applies at every hidden layer.
//!
//! For (u, v) ~ N(0, [[q₁, c], [c, q₂]]) the recursion needs
//!
//! C = E φ(u) ψ(v)  and  Ċ = E φ'(u) ψ'(v)
//!
//! (ψ = φ in an MLP). With σᵢ = √qᵢ, ρ = c/(σ₁σ₂) (clamped to [−1, 1], snapped to ±1
//! within four ulps) and θ = arccos ρ, the closed forms for ψ = φ are:
//!
//! | φ | C | Ċ |
//! |---|---|---|
//! | a·min(x,0) + b·max(x,0) | σ₁σ₂/(2π) [(a²+b²)(sin θ + (π−θ) ρ) − 2ab (sin θ − θ ρ)] | [(a²+b²)(π−θ) + 2ab θ]/(2π) |
//! | erf | (2/π) atan2(2c, √Δ) | (4/π)/√Δ |
//! | x | c | 1 |
//! | sin | ½(e^{−m₋/2} − e^{−m₊/2}) | ½(e^{−m₋/2} + e^{−m₊/2}) |
//! | x Φ(x) | c/4 + (c A + G/D)/(2π) | 1/4 + A/(2π) + c (2k − M/(s₁s₂D²))/(2π D) |
//!
//! ReLU is (a, b) = (0, 1), LeakyReLU(α) is (α, 1), Abs is (−1, 1) (the arc-cosine
//! kernels of Cho & Saul 2009). Every difference of nearly equal numbers is written
//! out of these forms through g = q₁q₂ − c² = (σ₁σ₂)²(1 − ρ)(1 + ρ) ≥ 0:
//! Erf's Δ = (1+2q₁)(1+2q₂) − 4c² = 1 + 2q₁ + 2q₂ + 4g (and (2/π) arcsin(2c/√((1+2q₁)(1+2q₂)))
//! is the atan2 above); Sin's m∓ = Var(u ∓ v) = (σ₁ − σ₂)² + 2σ₁σ₂(1 ∓ ρ). For GELU,
//! with sᵢ = 1 + qᵢ: D = √(s₁s₂ − c²) = √(1 + q₁ + q₂ + g), A = arcsin(c/√(s₁s₂)) =
//! atan2(c, D), k = 1/s₁ + 1/s₂, G = g + k c², M = s₁q₁ + s₂q₂ + s₁s₂ + g(s₁ + s₂)
//! (so that 2k − M/(s₁s₂D²) = 2k − 1 + G/D², the form of the derivation, without its
//! cancellation); it follows from x Φ(x) = x P(z ≤ x) with an independent z ~ N(0, 1)
//! and Gaussian integration by parts, and Ċ = ∂C/∂c (Price's theorem).
//!
//! If one of φ, ψ is the identity, Stein's lemma gives E u ψ(v) = c E ψ'(v) and
//! E 1·ψ'(v) = E ψ'(v) ([`mean_derivative`]). Every other pair (Tanh, Sigmoid,
//! Softplus, custom, or two different activations) is integrated numerically, accurate
//! at any variance (see [`super::expectation`] and the table at
//! [`GaussHermite::DEFAULT_DEGREE`]).
//!
//! At zero variance (a zero-norm input without bias) u ≡ 0 and the expectations use
//! φ(0), φ'(0) as the network does.

use std::f64::consts::{FRAC_1_PI, FRAC_2_SQRT_PI, PI};
use std::sync::Arc;

use crate::activation::Activation;
use crate::error::{Error, Result};

use super::expectation::{Rules, Side, Smoothness, mean_moments, pair_moments};
use super::fastmath;
use super::quadrature::GaussHermite;

/// 1/(2π).
const INV_2PI: f64 = 0.5 * FRAC_1_PI;

/// Relative slack on the Cauchy–Schwarz bound |c| ≤ √(q₁q₂) for covariances computed
/// in floating point.
const COVARIANCE_SLACK: f64 = 1e-10;

/// The Gaussian expectations of an activation at one pair of inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianMoments {
    /// C = E φ(u) φ(v).
    pub phi_phi: f64,
    /// Ċ = E φ'(u) φ'(v).
    pub dphi_dphi: f64,
}

impl From<(f64, f64)> for GaussianMoments {
    fn from((phi_phi, dphi_dphi): (f64, f64)) -> Self {
        GaussianMoments {
            phi_phi,
            dphi_dphi,
        }
    }
}

/// C and Ċ in closed form, or `None` for activations without one (Tanh, Sigmoid,
/// Softplus, custom).
///
/// (u, v) ~ N(0, [[`var1`, `cov`], [`cov`, `var2`]]).
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
/// or |`cov`| exceeds √(`var1` `var2`) by more than round-off (a relative 1e-10).
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

/// C and Ċ by the fixed 2-D tensor Gauss–Hermite rule `rule`, for any activation.
///
/// Exact for polynomial φ of degree < n; accurate for smooth φ only while the
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

/// C and Ċ as the kernel recursion computes them: in closed form where there is one,
/// otherwise numerically, accurate to about 1e-12 relative at any variance (see the
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
/// As [`closed_form`], and [`Error::InvalidParameter`] if a custom φ or φ' is not
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

/// Σ_{i,j} w_i w_j (φ(u_ij) φ(v_ij), φ'(u_ij) φ'(v_ij)) over the pruned tensor rule in
/// the Cholesky coordinates (u, v) = (a z₁, l z₁ + m z₂).
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

/// (φ(x), φ'(x)), sharing the work where φ' is a function of φ.
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

/// How far from the real line φ is analytic, as the numerical integration assumes:
/// the poles of Tanh at ±iπ/2, of Sigmoid and Softplus at ±iπ; 0 for the kinked ReLU
/// family (never integrated by Gauss–Hermite); 1 for a custom φ and the entire but
/// fast-varying Erf, Sin and GELU.
fn smoothness(activation: &Activation) -> Smoothness {
    Smoothness(match activation {
        Activation::Identity => f64::INFINITY,
        Activation::Relu | Activation::LeakyRelu(_) | Activation::Abs => 0.0,
        Activation::Tanh => 0.5 * PI,
        Activation::Sigmoid | Activation::Softplus => PI,
        _ => 1.0,
    })
}

/// Whether `a` and `b` are the same function: the same variant with the same
/// parameter, or custom activations sharing their φ and φ' closures.
pub(crate) fn same_activation(a: &Activation, b: &Activation) -> bool {
    match (a, b) {
        (Activation::LeakyRelu(x), Activation::LeakyRelu(y)) => x.to_bits() == y.to_bits(),
        (Activation::Custom(x), Activation::Custom(y)) => x.same_functions(y),
        (Activation::Custom(_), _) | (_, Activation::Custom(_)) => false,
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

/// The closed-form duals (ψ = φ).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Closed {
    /// φ = a·min(x, 0) + b·max(x, 0); `d0` = φ'(0) as the network evaluates it.
    ArcCos { a: f64, b: f64, d0: f64 },
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

    /// E φ'(u) for u ~ N(0, q).
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

/// σ₁σ₂ = √q₁·√q₂ (never √(q₁q₂), which under- or overflows where σ₁σ₂ does not)
/// and ρ = c/σ₁σ₂, clamped and snapped ([`fastmath::correlation`]). The division is
/// unconditional so that loops over it vectorise: a zero σ₁σ₂ comes with c = 0, hence
/// ρ = 0, and below 2e-308 (where the kernels underflow anyway) ρ is only approximate.
#[inline(always)]
fn std_and_correlation(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let std = q1.sqrt() * q2.sqrt();
    (std, fastmath::correlation(c / std.max(f64::MIN_POSITIVE)))
}

/// The arc-cosine kernels at correlation ρ: (C/(σ₁σ₂), Ċ) for
/// φ = a·min(x, 0) + b·max(x, 0).
#[inline(always)]
fn arccos_unit(a: f64, b: f64, rho: f64) -> (f64, f64) {
    let (k1, k2) = (a * a + b * b, 2.0 * a * b);
    let theta = fastmath::acos(rho);
    let sin = ((1.0 - rho) * (1.0 + rho)).sqrt();
    let c = INV_2PI * (k1 * (sin + (PI - theta) * rho) - k2 * (sin - theta * rho));
    let cdot = INV_2PI * (k1 * (PI - theta) + k2 * theta);
    (c, cdot)
}

/// E φ'(u) of the arc-cosine family for u ~ N(0, q): (a + b)/2, or φ'(0) at q = 0.
#[inline(always)]
fn arccos_side(a: f64, b: f64, d0: f64, q: f64) -> f64 {
    if q > 0.0 { 0.5 * (a + b) } else { d0 }
}

/// The arc-cosine family's (C, Ċ): C = σ₁σ₂ × the unit kernel; with a zero variance
/// that side is φ'(0) surely, so Ċ = E φ'(u) E φ'(v). Straight-line code (the
/// branch-free arccos, selects) so that loops over it vectorise.
#[inline(always)]
fn arccos_moments(a: f64, b: f64, d0: f64, q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (std, rho) = std_and_correlation(q1, c, q2);
    let (unit, d) = arccos_unit(a, b, rho);
    let zero_norm = arccos_side(a, b, d0, q1) * arccos_side(a, b, d0, q2);
    (std * unit, if std > 0.0 { d } else { zero_norm })
}

/// [`arccos_moments`] over slices (a loop that vectorises).
#[inline(never)]
fn arccos_slice(a: f64, b: f64, d0: f64, q1: &[f64], c: &mut [f64], q2: &[f64], cdot: &mut [f64]) {
    let n = c.len();
    let (q1, q2, cdot) = (&q1[..n], &q2[..n], &mut cdot[..n]);
    for i in 0..n {
        (c[i], cdot[i]) = arccos_moments(a, b, d0, q1[i], c[i], q2[i]);
    }
}

/// (c, g) with c = ρσ₁σ₂ (the covariance clamped to Cauchy–Schwarz) and
/// g = q₁q₂ − c² = (σ₁σ₂)²(1 − ρ)(1 + ρ) ≥ 0, without the cancellation of the difference.
#[inline(always)]
fn covariance_gap(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (std, rho) = std_and_correlation(q1, c, q2);
    (rho * std, std * std * ((1.0 - rho) * (1.0 + rho)))
}

#[inline(always)]
fn erf_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (c, gap) = covariance_gap(q1, c, q2);
    // √Δ = √(1 + 2q₁ + 2q₂ + 4g) ≥ 1.
    let root = (1.0 + 2.0 * (q1 + q2) + 4.0 * gap).sqrt();
    (2.0 * FRAC_1_PI * (2.0 * c).atan2(root), 4.0 * FRAC_1_PI / root)
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

#[inline(always)]
fn gelu_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (c, gap) = covariance_gap(q1, c, q2);
    let (s1, s2) = (1.0 + q1, 1.0 + q2);
    let d2 = 1.0 + q1 + q2 + gap;
    let d = d2.sqrt();
    let asin = c.atan2(d);
    let k = 1.0 / s1 + 1.0 / s2;
    let g = gap + k * c * c;
    let m = s1 * q1 + s2 * q2 + s1 * s2 + gap * (s1 + s2);
    let phi = 0.25 * c + INV_2PI * (c * asin + g / d);
    let derivative = 0.25 + INV_2PI * (asin + c * (2.0 * k - (m / s1) / (s2 * d2)) / d);
    (phi, derivative)
}

/// E φ(u) ψ(v) and E φ'(u) ψ'(v) for (u, v) ~ N(0, [[q1, c], [c, q2]]), φ and ψ
/// possibly different: the "dual" of a pair of activations, chosen once and evaluated
/// at many covariances.
#[derive(Clone, Debug)]
pub(crate) struct PairDual {
    kind: PairKind,
}

#[derive(Clone, Debug)]
enum PairKind {
    /// ψ = φ with a closed form.
    Closed(Closed),
    /// One side is the identity, the `other` not: E u ψ(v) = c E ψ'(v), E ψ'(v), with
    /// ψ = `other` on the second side (`identity_first`) or the first.
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
    /// Closed form when φ and ψ are the same activation with one (or one of them is
    /// Identity: Stein's lemma, E u ψ(v) = c E ψ'(v), E 1·ψ'(v) = E ψ'(v)), accurate
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

    /// (C, Ċ) = (E φ(u) ψ(v), E φ'(u) ψ'(v)) at u's variance `q1`, the covariance `c`
    /// and v's variance `q2` (|c| ≤ √(q1 q2); the correlation is clamped to [−1, 1]).
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

/// E φ'(u), u ~ N(0, q), numerically.
fn numeric_mean_derivative(activation: &Activation, q: f64, rules: &Rules) -> f64 {
    mean_moments(
        |x| phi_and_derivative(activation, x),
        smoothness(activation),
        q,
        rules,
    )
    .1
}

/// E φ'(u) for u ~ N(0, q) (φ'(0) at q = 0), as accurate as the pair moments: in
/// closed form where φ has one, else by the same numerical integration.
#[allow(dead_code)] // For the tensor-program engine, which is being written.
pub(crate) fn mean_derivative(act: &Activation, q: f64, rule: &GaussHermite) -> f64 {
    match Closed::of(act) {
        Some(closed) => closed.mean_derivative(q),
        None => numeric_mean_derivative(act, q, &Rules::up_to(rule)),
    }
}
