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

mod closed_forms;
mod pair;
#[cfg(test)]
mod test_support;

use crate::activation::Activation;
use crate::error::{Error, Result};

use super::quadrature::GaussHermite;

pub(crate) use closed_forms::Closed;
use pair::tensor_quadrature;
pub(crate) use pair::{PairDual, Variances, mean_derivative, same_activation};

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

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use super::test_support::default_rule;
    use super::*;

    #[test]
    fn covariances_beyond_cauchy_schwarz_are_errors() {
        assert!(closed_form(&Activation::Gelu, 1.0, 1.5, 1.0).is_err());
        assert!(closed_form(&Activation::Relu, 4.0, -2.1, 1.0).is_err());
        assert!(gaussian_moments(&Activation::Tanh, 1.0, 1.01, 1.0).is_err());
        assert!(quadrature(&Activation::Tanh, 0.0, 1e-3, 1.0, &default_rule()).is_err());
        // Round-off beyond the bound is accepted.
        assert!(closed_form(&Activation::Relu, 2.0, 2.0 * (1.0 + 1e-14), 2.0).is_ok());
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
