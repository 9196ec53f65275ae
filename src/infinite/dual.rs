//! Gaussian expectations of an activation: the "dual" of φ that the kernel recursion
//! applies at every hidden layer.
//!
//! For (u, v) ~ N(0, [[q₁, c], [c, q₂]]) the recursion needs
//!
//! C = E φ(u) φ(v)  and  Ċ = E φ'(u) φ'(v).
//!
//! With ρ = c/√(q₁q₂) clamped to [−1, 1] and θ = arccos ρ, the closed forms are:
//!
//! | φ | C | Ċ |
//! |---|---|---|
//! | a·min(x,0) + b·max(x,0) | √(q₁q₂)/(2π) [(a²+b²)(sin θ + (π−θ) ρ) − 2ab (sin θ − θ ρ)] | [(a²+b²)(π−θ) + 2ab θ]/(2π) |
//! | erf | (2/π) arcsin(2c/√((1+2q₁)(1+2q₂))) | (4/π) / √((1+2q₁)(1+2q₂) − 4c²) |
//! | x | c | 1 |
//! | sin | ½(e^{−(q₁+q₂−2c)/2} − e^{−(q₁+q₂+2c)/2}) = e^{−(q₁+q₂)/2} sinh c | e^{−(q₁+q₂)/2} cosh c |
//! | x Φ(x) | c/4 + c·A/(2π) + N/(2π D) | 1/4 + A/(2π) + c (2k − 1 + N/D²)/(2π D) |
//!
//! ReLU is (a, b) = (0, 1), LeakyReLU(α) is (α, 1), Abs is (−1, 1) (the arc-cosine
//! kernels of Cho & Saul 2009). For GELU, with s_i = 1 + q_i: D = √(s₁s₂ − c²),
//! A = arcsin(c/√(s₁s₂)), k = 1/s₁ + 1/s₂ and N = q₁q₂ − c² + k c²; it follows from
//! x Φ(x) = x P(z ≤ x) with an independent z ~ N(0, 1) and Gaussian integration by parts,
//! and Ċ = ∂C/∂c (Price's theorem). Every other activation (Tanh, Sigmoid, Softplus,
//! custom) is integrated by 2-D Gauss–Hermite quadrature after the Cholesky
//! factorisation (u, v) = (√q₁ z₁, (c/√q₁) z₁ + √(q₂ − c²/q₁) z₂).
//!
//! All forms are written to stay finite and accurate at ρ = ±1 (θ from a clamped ρ,
//! snapped to ±1 within four ulps of it, no division by 1 − ρ²) and at zero variance (a zero-norm input without bias): there
//! u ≡ 0 and the expectations use φ(0), φ'(0) as the network does.

use std::f64::consts::{FRAC_1_PI, PI};

use crate::activation::Activation;
use crate::error::{Error, Result};

use super::quadrature::GaussHermite;

/// 1/(2π).
const INV_2PI: f64 = 0.5 * FRAC_1_PI;

/// The Gaussian expectations of an activation at one pair of inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianMoments {
    /// C = E φ(u) φ(v).
    pub phi: f64,
    /// Ċ = E φ'(u) φ'(v).
    pub derivative: f64,
}

/// C and Ċ in closed form, or `None` for activations without one (Tanh, Sigmoid,
/// Softplus, custom).
///
/// (u, v) ~ N(0, [[`var1`, `cov`], [`cov`, `var2`]]); a correlation beyond ±1 (from
/// round-off) is clamped.
///
/// ```
/// use ntk::Activation;
/// use ntk::infinite::closed_form;
/// # fn main() -> Result<(), ntk::Error> {
/// // ReLU at correlation 0: C = √(q₁q₂)/(2π), Ċ = 1/4.
/// let m = closed_form(&Activation::Relu, 2.0, 0.0, 2.0)?.expect("ReLU has a closed form");
/// assert!((m.phi - 1.0 / std::f64::consts::PI).abs() < 1e-15);
/// assert!((m.derivative - 0.25).abs() < 1e-15);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] if a variance is negative or any argument is not finite.
pub fn closed_form(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
) -> Result<Option<GaussianMoments>> {
    check_covariance(var1, cov, var2)?;
    activation.validate()?;
    Ok(Dual::closed(activation).map(|d| d.eval(var1, cov, var2)))
}

/// C and Ċ by 2-D Gauss–Hermite quadrature with the given rule, for any activation.
///
/// Exact for polynomial φ of degree < n; on kinks (ReLU) it converges slowly.
///
/// ```
/// use ntk::Activation;
/// use ntk::infinite::{quadrature, closed_form, GaussHermite};
/// # fn main() -> Result<(), ntk::Error> {
/// let rule = GaussHermite::new(96)?;
/// let q = quadrature(&Activation::Erf, 1.0, 0.3, 2.0, &rule)?;
/// let exact = closed_form(&Activation::Erf, 1.0, 0.3, 2.0)?.unwrap();
/// assert!((q.phi - exact.phi).abs() < 1e-12);
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
    Ok(quadrature_moments(activation, var1, cov, var2, rule))
}

/// C and Ċ as the kernel recursion computes them: in closed form where there is one,
/// otherwise by quadrature with [`GaussHermite::DEFAULT_DEGREE`] nodes.
///
/// # Errors
/// As [`closed_form`].
pub fn gaussian_moments(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
) -> Result<GaussianMoments> {
    match closed_form(activation, var1, cov, var2)? {
        Some(m) => Ok(m),
        None => {
            let rule = GaussHermite::new(GaussHermite::DEFAULT_DEGREE)?;
            quadrature(activation, var1, cov, var2, &rule)
        }
    }
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
    Ok(())
}

/// The quadrature estimate of C and Ċ.
pub(crate) fn quadrature_moments(
    activation: &Activation,
    var1: f64,
    cov: f64,
    var2: f64,
    rule: &GaussHermite,
) -> GaussianMoments {
    // One monomorphised loop per activation, φ and φ' sharing their common factor.
    match activation {
        Activation::Tanh => integrate(
            |x: f64| {
                let t = x.tanh();
                (t, 1.0 - t * t)
            },
            var1,
            cov,
            var2,
            rule,
        ),
        Activation::Sigmoid => integrate(
            |x: f64| {
                let s = activation.phi(x);
                (s, s * (1.0 - s))
            },
            var1,
            cov,
            var2,
            rule,
        ),
        other => integrate(
            |x: f64| (other.phi(x), other.derivative(x)),
            var1,
            cov,
            var2,
            rule,
        ),
    }
}

/// Σ_{i,j} w_i w_j (φ(u_ij) φ(v_ij), φ'(u_ij) φ'(v_ij)) over the pruned tensor rule, with
/// `phi_and_derivative(x) = (φ(x), φ'(x))`.
#[inline]
fn integrate(
    phi_and_derivative: impl Fn(f64) -> (f64, f64),
    var1: f64,
    cov: f64,
    var2: f64,
    rule: &GaussHermite,
) -> GaussianMoments {
    // C and Ċ are symmetric in (u, v): factor the larger variance first, so that the
    // estimate does not depend on the argument order (and a kernel matrix built from
    // it is exactly symmetric).
    let (var1, var2) = if var2 > var1 {
        (var2.max(0.0), var1.max(0.0))
    } else {
        (var1.max(0.0), var2.max(0.0))
    };
    // (u, v) = (a z₁, l z₁ + m z₂).
    let a = var1.sqrt();
    let (l, m) = if a > 0.0 {
        let l = cov / a;
        (l, (var2 - l * l).max(0.0).sqrt())
    } else {
        (0.0, var2.sqrt())
    };
    let nodes = rule.nodes();
    let weights = rule.weights();
    let (mut c, mut cd) = (0.0, 0.0);
    for (i, (&zi, &wi)) in nodes.iter().zip(weights).enumerate() {
        let (lo, hi) = rule.pair_range(i);
        if lo >= hi {
            continue;
        }
        let (pu, du) = phi_and_derivative(a * zi);
        let (mut sp, mut sd) = (0.0, 0.0);
        for (&zj, &wj) in nodes[lo..hi].iter().zip(&weights[lo..hi]) {
            let (pv, dv) = phi_and_derivative(l * zi + m * zj);
            sp += wj * pv;
            sd += wj * dv;
        }
        c += wi * pu * sp;
        cd += wi * du * sd;
    }
    GaussianMoments {
        phi: c,
        derivative: cd,
    }
}

/// A layer's dual map, chosen once per layer: a closed form or a quadrature rule.
#[derive(Clone, Debug)]
pub(crate) enum Dual {
    /// φ = a·min(x, 0) + b·max(x, 0); `d0` = φ'(0) as the network evaluates it.
    ArcCos {
        a: f64,
        b: f64,
        d0: f64,
    },
    Erf,
    Identity,
    Sin,
    Gelu,
    Quadrature {
        activation: Activation,
        rule: std::sync::Arc<GaussHermite>,
    },
}

impl Dual {
    /// The closed-form dual of `activation`, if it has one.
    pub(crate) fn closed(activation: &Activation) -> Option<Dual> {
        let arccos = |a: f64, b: f64| Dual::ArcCos {
            a,
            b,
            d0: activation.derivative(0.0_f64),
        };
        match activation {
            Activation::Relu => Some(arccos(0.0, 1.0)),
            Activation::LeakyRelu(alpha) => Some(arccos(*alpha, 1.0)),
            Activation::Abs => Some(arccos(-1.0, 1.0)),
            Activation::Erf => Some(Dual::Erf),
            Activation::Identity => Some(Dual::Identity),
            Activation::Sin => Some(Dual::Sin),
            Activation::Gelu => Some(Dual::Gelu),
            _ => None,
        }
    }

    /// The dual of `activation`: closed form, else quadrature with `rule`.
    pub(crate) fn new(activation: &Activation, rule: &std::sync::Arc<GaussHermite>) -> Dual {
        Dual::closed(activation).unwrap_or_else(|| Dual::Quadrature {
            activation: activation.clone(),
            rule: std::sync::Arc::clone(rule),
        })
    }

    /// C and Ċ at one covariance.
    #[inline]
    pub(crate) fn eval(&self, q1: f64, c: f64, q2: f64) -> GaussianMoments {
        let (phi, derivative) = match self {
            Dual::ArcCos { a, b, d0 } => arccos_moments(*a, *b, *d0, q1, q2, c),
            Dual::Erf => erf_moments(q1, c, q2),
            Dual::Identity => (c, 1.0),
            Dual::Sin => sin_moments(q1, c, q2),
            Dual::Gelu => gelu_moments(q1, c, q2),
            Dual::Quadrature { activation, rule } => {
                let m = quadrature_moments(activation, q1, c, q2, rule);
                (m.phi, m.derivative)
            }
        };
        GaussianMoments { phi, derivative }
    }
}

/// The arc-cosine family. √(q₁q₂) is taken as one square root, so that ρ is exactly 1
/// for parallel inputs whose norms differ by a power of two.
#[inline]
pub(crate) fn arccos_moments(a: f64, b: f64, d0: f64, q1: f64, q2: f64, c: f64) -> (f64, f64) {
    let s = (q1 * q2).sqrt();
    if s > 0.0 {
        let rho = super::fastmath::correlation(c / s);
        let theta = super::fastmath::acos(rho);
        let sin = ((1.0 - rho) * (1.0 + rho)).sqrt();
        let (k1, k2) = (a * a + b * b, 2.0 * a * b);
        let phi = s * INV_2PI * (k1 * (sin + (PI - theta) * rho) - k2 * (sin - theta * rho));
        let derivative = INV_2PI * (k1 * (PI - theta) + k2 * theta);
        (phi, derivative)
    } else {
        (0.0, arccos_zero_norm(a, b, d0, q1, q2))
    }
}

/// Ċ when one of the variances is zero: that side is φ'(0) surely, the other has mean
/// E φ'(v) = (a + b)/2 (or φ'(0) if it is zero too).
#[inline]
fn arccos_zero_norm(a: f64, b: f64, d0: f64, q1: f64, q2: f64) -> f64 {
    let side = |q: f64| if q > 0.0 { 0.5 * (a + b) } else { d0 };
    side(q1) * side(q2)
}

#[inline]
pub(crate) fn erf_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (s1, s2) = (1.0 + 2.0 * q1, 1.0 + 2.0 * q2);
    let arg = (2.0 * c / (s1 * s2).sqrt()).clamp(-1.0, 1.0);
    // (1+2q₁)(1+2q₂) − 4c² = 1 + 2q₁ + 2q₂ + 4(q₁q₂ − c²) ≥ 1.
    let det = (1.0 + 2.0 * (q1 + q2) + 4.0 * (q1 * q2 - c * c)).max(1.0);
    (2.0 * FRAC_1_PI * arg.asin(), 4.0 * FRAC_1_PI / det.sqrt())
}

#[inline]
pub(crate) fn sin_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    // Var(u − v) and Var(u + v), both ≥ 0.
    let minus = (q1 + q2 - 2.0 * c).max(0.0);
    let plus = (q1 + q2 + 2.0 * c).max(0.0);
    let (em, ep) = ((-0.5 * minus).exp(), (-0.5 * plus).exp());
    (0.5 * (em - ep), 0.5 * (em + ep))
}

#[inline]
pub(crate) fn gelu_moments(q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let (s1, s2) = (1.0 + q1, 1.0 + q2);
    // s₁s₂ − c² = 1 + q₁ + q₂ + (q₁q₂ − c²) ≥ 1.
    let gap = (q1 * q2 - c * c).max(0.0);
    let d2 = 1.0 + q1 + q2 + gap;
    let d = d2.sqrt();
    let asin = (c / (s1 * s2).sqrt()).clamp(-1.0, 1.0).asin();
    let k = 1.0 / s1 + 1.0 / s2;
    let n = gap + k * c * c;
    let phi = 0.25 * c + INV_2PI * (c * asin + n / d);
    let derivative = 0.25 + INV_2PI * (asin + c * (2.0 * k - 1.0 + n / d2) / d);
    (phi, derivative)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(n: usize) -> std::sync::Arc<GaussHermite> {
        GaussHermite::new(n).unwrap()
    }

    /// Closed forms against high-degree quadrature, at several covariances.
    #[test]
    fn smooth_closed_forms_match_quadrature() {
        let r = rule(160);
        for act in [
            Activation::Erf,
            Activation::Gelu,
            Activation::Sin,
            Activation::Identity,
        ] {
            for &(q1, rho, q2) in &[
                (1.0, 0.3, 2.0),
                (0.5, -0.8, 0.7),
                (2.5, 0.99, 1.5),
                (1.2, 1.0, 1.2),
                (0.8, -1.0, 0.8),
                (0.0, 0.0, 1.3),
                (0.3, 0.0, 0.0),
            ] {
                let c = rho * f64::sqrt(q1 * q2);
                let exact = closed_form(&act, q1, c, q2).unwrap().unwrap();
                let quad = quadrature(&act, q1, c, q2, &r).unwrap();
                let scale = exact.phi.abs().max(1.0);
                assert!(
                    (exact.phi - quad.phi).abs() < 1e-12 * scale,
                    "{act:?} C at {q1}, {c}, {q2}: {} vs {}",
                    exact.phi,
                    quad.phi
                );
                assert!(
                    (exact.derivative - quad.derivative).abs() < 1e-12 * scale,
                    "{act:?} Ċ at {q1}, {c}, {q2}: {} vs {}",
                    exact.derivative,
                    quad.derivative
                );
            }
        }
    }

    /// ReLU-family closed forms against quadrature: loosely, quadrature is poor on kinks.
    #[test]
    fn arccos_closed_forms_match_quadrature_loosely() {
        let r = rule(GaussHermite::MAX_DEGREE);
        for act in [
            Activation::Relu,
            Activation::LeakyRelu(0.2),
            Activation::Abs,
        ] {
            for &(q1, rho, q2) in &[(1.0, 0.3, 2.0), (0.5, -0.8, 0.7), (2.0, 0.0, 2.0)] {
                let c = rho * f64::sqrt(q1 * q2);
                let exact = closed_form(&act, q1, c, q2).unwrap().unwrap();
                let quad = quadrature(&act, q1, c, q2, &r).unwrap();
                let (ec, ed) = (
                    (exact.phi - quad.phi).abs(),
                    (exact.derivative - quad.derivative).abs(),
                );
                // Gauss–Hermite converges like 1/n on a kink (~1e-3 at n = 256) and
                // worse on the jump of φ' across a line oblique to the grid (~2e-2).
                let scale = exact.phi.abs().max(1.0);
                assert!(
                    ec < 1e-2 * scale,
                    "{act:?} C: {} vs {}",
                    exact.phi,
                    quad.phi
                );
                assert!(
                    ed < 5e-2,
                    "{act:?} Ċ: {} vs {}",
                    exact.derivative,
                    quad.derivative
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
        assert!((relu.phi - q / 2.0).abs() < 1e-15);
        assert!((relu.derivative - 0.5).abs() < 1e-15);
        let abs = closed_form(&Activation::Abs, q, q, q).unwrap().unwrap();
        assert!((abs.phi - q).abs() < 1e-14);
        assert!((abs.derivative - 1.0).abs() < 1e-15);
        let sin = closed_form(&Activation::Sin, q, q, q).unwrap().unwrap();
        assert!((sin.phi - 0.5 * (1.0 - (-2.0 * q).exp())).abs() < 1e-15);
        let erf = closed_form(&Activation::Erf, q, q, q).unwrap().unwrap();
        let expected = 2.0 / PI * (2.0 * q / (1.0 + 2.0 * q)).asin();
        assert!((erf.phi - expected).abs() < 1e-15);
        // Anti-correlated: relu(u) relu(−u) = 0.
        let anti = closed_form(&Activation::Relu, q, -q, q).unwrap().unwrap();
        assert!(anti.phi.abs() < 1e-15 && anti.derivative.abs() < 1e-15);
    }

    #[test]
    fn zero_variance_uses_the_networks_derivative_at_zero() {
        let leaky = closed_form(&Activation::LeakyRelu(0.1), 0.0, 0.0, 2.0)
            .unwrap()
            .unwrap();
        assert!(leaky.phi.abs() < f64::MIN_POSITIVE);
        assert!((leaky.derivative - 0.1 * 0.55).abs() < 1e-15);
        let relu = closed_form(&Activation::Relu, 0.0, 0.0, 0.0)
            .unwrap()
            .unwrap();
        assert!(relu.phi.abs() < f64::MIN_POSITIVE && relu.derivative.abs() < f64::MIN_POSITIVE);
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
    }
}
