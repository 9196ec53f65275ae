//! Pointwise nonlinearities $φ$ and their derivatives $φ\'$.
//!
//! The network applies $φ$ after every hidden Dense layer; the backward pass uses $φ\'$.
//! Gaussian expectations $E φ(u)φ(v)$ and $E φ\'(u)φ\'(v)$, needed for the
//! infinite-width kernels, live in [`crate::infinite`].

use std::f64::consts::{FRAC_2_SQRT_PI, SQRT_2};
use std::fmt;
use std::sync::Arc;

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result};

/// A scalar function `f64 -> f64` shared between threads (for [`Activation::custom`]).
pub type ScalarFn = Arc<dyn Fn(f64) -> f64 + Send + Sync>;

/// A pointwise activation function $φ$.
///
/// | variant | $φ(x)$ | $φ\'(x)$ |
/// |---|---|---|
/// | `Identity` | $x$ | $1$ |
/// | `Relu` | $\max(x, 0)$ | $1$ if $x > 0$ else $0$ |
/// | `LeakyRelu(α)` | $x$ if $x > 0$ else $αx$ | $1$ if $x > 0$ else $α$ |
/// | `Abs` | $\|x\|$ | $\mathrm{sign}(x)$ ($0$ at $0$) |
/// | `Erf` | $\mathrm{erf}(x)$ | $(2/\sqrt{π}) e^{−x²}$ |
/// | `Tanh` | $\tanh(x)$ | $1 − \tanh²(x)$ |
/// | `Sin` | $\sin(x)$ | $\cos(x)$ |
/// | `Gelu` | $x Φ(x)$, $Φ$ the standard normal CDF (exact, not the tanh approximation) | $Φ(x) + x e^{−x²/2}/\sqrt{2π}$ |
/// | `Sigmoid` | $1/(1 + e^{−x})$ | $σ(x)(1 − σ(x))$ |
/// | `Softplus` | $\ln(1 + eˣ)$ | $1/(1 + e^{−x})$ |
/// | `Custom` | user's $φ$ | user's $φ\'$ |
///
/// These match neural-tangents' `stax.Relu()`, `stax.LeakyRelu(α)`, `stax.Abs()`,
/// `stax.Erf()`, `stax.Sin()`, `stax.Gelu(approximate=False)` and friends with their
/// default arguments.
#[derive(Clone)]
#[non_exhaustive]
pub enum Activation {
    /// $φ(x) = x$.
    Identity,
    /// $φ(x) = \max(x, 0)$.
    Relu,
    /// $φ(x) = x$ for $x > 0$, $αx$ otherwise.
    LeakyRelu(f64),
    /// $φ(x) = |x|$.
    Abs,
    /// $φ(x) = \mathrm{erf}(x)$.
    Erf,
    /// $φ(x) = \tanh(x)$.
    Tanh,
    /// $φ(x) = \sin(x)$.
    Sin,
    /// $φ(x) = x Φ(x)$ (exact GELU).
    Gelu,
    /// $φ(x) = 1/(1 + e^{−x})$.
    Sigmoid,
    /// $φ(x) = \ln(1 + eˣ)$.
    Softplus,
    /// A user-supplied $φ$ with its derivative $φ\'$; build it with [`Activation::custom`].
    Custom(CustomActivation),
}

/// A user-defined activation: a name, $φ$ and $φ\'$ (evaluated in `f64`).
#[derive(Clone)]
pub struct CustomActivation {
    name: String,
    phi: ScalarFn,
    derivative: ScalarFn,
}

impl CustomActivation {
    /// The name given at construction.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
    /// $φ(x)$.
    #[must_use]
    pub fn phi(&self, x: f64) -> f64 {
        (self.phi)(x)
    }
    /// $φ\'(x)$.
    #[must_use]
    pub fn derivative(&self, x: f64) -> f64 {
        (self.derivative)(x)
    }

    /// Whether `other` shares this activation's $φ$ and $φ\'$ closures (clones of one
    /// [`Activation::custom`]): then it is the same function.
    pub(crate) fn same_functions(&self, other: &CustomActivation) -> bool {
        Arc::ptr_eq(&self.phi, &other.phi) && Arc::ptr_eq(&self.derivative, &other.derivative)
    }
}

impl fmt::Debug for CustomActivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Custom({:?})", self.name)
    }
}

impl fmt::Debug for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Identity => write!(f, "Identity"),
            Activation::Relu => write!(f, "Relu"),
            Activation::LeakyRelu(a) => write!(f, "LeakyRelu({a})"),
            Activation::Abs => write!(f, "Abs"),
            Activation::Erf => write!(f, "Erf"),
            Activation::Tanh => write!(f, "Tanh"),
            Activation::Sin => write!(f, "Sin"),
            Activation::Gelu => write!(f, "Gelu"),
            Activation::Sigmoid => write!(f, "Sigmoid"),
            Activation::Softplus => write!(f, "Softplus"),
            Activation::Custom(c) => c.fmt(f),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Custom(c) => write!(f, "{}", c.name),
            other => fmt::Debug::fmt(other, f),
        }
    }
}

/// Entries per parallel work item of [`Activation::elementwise`] (large batches of wide
/// layers are split across threads; a transcendental $φ$ costs ~10 ns an entry).
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// $1/\sqrt{2π}$.
pub(crate) const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

impl Activation {
    /// A custom activation from $φ$ and its derivative $φ\'$ (both `f64 -> f64`).
    ///
    /// The network evaluates them in `f64` and rounds to the model's scalar;
    /// the infinite-width kernels integrate them by Gauss–Hermite quadrature.
    ///
    /// ```
    /// use ntk::Activation;
    /// let cube = Activation::custom("cube", |x| x * x * x, |x| 3.0 * x * x);
    /// assert_eq!(cube.phi(2.0_f64), 8.0);
    /// assert_eq!(cube.derivative(2.0_f64), 12.0);
    /// ```
    pub fn custom(
        name: impl Into<String>,
        phi: impl Fn(f64) -> f64 + Send + Sync + 'static,
        derivative: impl Fn(f64) -> f64 + Send + Sync + 'static,
    ) -> Self {
        Activation::Custom(CustomActivation {
            name: name.into(),
            phi: Arc::new(phi),
            derivative: Arc::new(derivative),
        })
    }

    /// Checks the activation's own parameters: the slope of `LeakyRelu` must be finite,
    /// and a custom $φ$ and $φ\'$ finite on a grid of step $1/8$ over $\[−10, 10\]$, where the
    /// pre-activations of standardised inputs live. Beyond it, the network and the
    /// kernels check the values they meet and name the activation if one is not finite.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the parameter and its value.
    pub fn validate(&self) -> Result<()> {
        match self {
            Activation::LeakyRelu(a) if !a.is_finite() => Err(Error::InvalidParameter {
                parameter: "LeakyRelu slope",
                value: format!("{a}"),
                reason: "must be finite",
            }),
            Activation::Custom(c) => {
                for x in (-80..=80).map(|i| f64::from(i) / 8.0) {
                    let (p, d) = (c.phi(x), c.derivative(x));
                    if !p.is_finite() || !d.is_finite() {
                        return Err(Error::InvalidParameter {
                            parameter: "custom activation",
                            value: format!("{}: φ({x}) = {p}, φ'({x}) = {d}", c.name),
                            reason: "φ and φ' must be finite",
                        });
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether $φ$ and $φ\'$ are finite wherever $x$ is (every built-in activation; a custom
    /// one is checked where it is used).
    pub(crate) fn finite_on_finite_inputs(&self) -> bool {
        !matches!(self, Activation::Custom(_))
    }

    /// $φ(x)$.
    #[must_use]
    #[inline]
    pub fn phi<T: Scalar>(&self, x: T) -> T {
        let zero = T::zero();
        let one = T::one();
        match self {
            Activation::Identity => x,
            Activation::Relu => {
                if x > zero {
                    x
                } else {
                    zero
                }
            }
            Activation::LeakyRelu(a) => {
                if x > zero {
                    x
                } else {
                    T::from_f64_lossy(*a) * x
                }
            }
            Activation::Abs => x.abs(),
            Activation::Erf => x.erf(),
            Activation::Tanh => x.tanh(),
            Activation::Sin => x.sin(),
            Activation::Gelu => {
                let half = T::from_f64_lossy(0.5);
                half * x * (one + (x / T::from_f64_lossy(SQRT_2)).erf())
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::Softplus => {
                // ln(1 + eˣ) = max(x, 0) + ln(1 + e^{−|x|}), stable for large |x|.
                x.max(zero) + (-x.abs()).exp().ln_1p()
            }
            Activation::Custom(c) => T::from_f64_lossy(c.phi(x.to_f64())),
        }
    }

    /// $φ\'(x)$.
    #[must_use]
    #[inline]
    pub fn derivative<T: Scalar>(&self, x: T) -> T {
        let zero = T::zero();
        let one = T::one();
        match self {
            Activation::Identity => one,
            Activation::Relu => {
                if x > zero {
                    one
                } else {
                    zero
                }
            }
            Activation::LeakyRelu(a) => {
                if x > zero {
                    one
                } else {
                    T::from_f64_lossy(*a)
                }
            }
            Activation::Abs => {
                if x > zero {
                    one
                } else if x < zero {
                    -one
                } else {
                    zero
                }
            }
            Activation::Erf => T::from_f64_lossy(FRAC_2_SQRT_PI) * (-x * x).exp(),
            Activation::Tanh => {
                let t = x.tanh();
                one - t * t
            }
            Activation::Sin => x.cos(),
            Activation::Gelu => {
                let half = T::from_f64_lossy(0.5);
                let cdf = half * (one + (x / T::from_f64_lossy(SQRT_2)).erf());
                cdf + x * T::from_f64_lossy(FRAC_1_SQRT_2PI) * (-half * x * x).exp()
            }
            Activation::Sigmoid => {
                let s = sigmoid(x);
                s * (one - s)
            }
            Activation::Softplus => sigmoid(x),
            Activation::Custom(c) => T::from_f64_lossy(c.derivative(x.to_f64())),
        }
    }

    /// $φ$ and $φ\'$ of every entry of `h`: `(φ(h), φ'(h))`.
    #[must_use]
    pub fn elementwise_with_derivative<T: Scalar>(
        &self,
        h: &DMatrix<T>,
    ) -> (DMatrix<T>, DMatrix<T>) {
        let (mut phi, mut derivative) = (h.clone(), h.clone());
        crate::parallel::for_each_chunk_pair(
            phi.as_mut_slice(),
            ELEMENTWISE_CHUNK,
            derivative.as_mut_slice(),
            ELEMENTWISE_CHUNK,
            |_, phi, derivative| {
                for (p, d) in phi.iter_mut().zip(derivative) {
                    let x = *p;
                    *p = self.phi(x);
                    *d = self.derivative(x);
                }
            },
        );
        (phi, derivative)
    }

    /// $φ$ of every entry of `h`.
    #[must_use]
    pub fn elementwise<T: Scalar>(&self, h: &DMatrix<T>) -> DMatrix<T> {
        let mut phi = h.clone();
        crate::parallel::for_each_chunk(phi.as_mut_slice(), ELEMENTWISE_CHUNK, |phi| {
            for p in phi.iter_mut() {
                *p = self.phi(*p);
            }
        });
        phi
    }

    /// Every built-in activation (with `LeakyRelu(0.1)`), for tests and sweeps.
    #[must_use]
    pub fn builtins() -> Vec<Activation> {
        vec![
            Activation::Identity,
            Activation::Relu,
            Activation::LeakyRelu(0.1),
            Activation::Abs,
            Activation::Erf,
            Activation::Tanh,
            Activation::Sin,
            Activation::Gelu,
            Activation::Sigmoid,
            Activation::Softplus,
        ]
    }
}

/// The logistic function, evaluated without overflow for large $|x|$.
#[inline]
fn sigmoid<T: Scalar>(x: T) -> T {
    let one = T::one();
    if x >= T::zero() {
        one / (one + (-x).exp())
    } else {
        let e = x.exp();
        e / (one + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    /// φ' agrees with a central finite difference of φ away from kinks.
    #[test]
    fn derivative_matches_finite_difference() {
        let h = 1e-6;
        for act in Activation::builtins() {
            for &x in &[-2.3, -0.7, 0.31, 1.9] {
                let fd = (act.phi(x + h) - act.phi(x - h)) / (2.0 * h);
                assert_relative_eq!(act.derivative(x), fd, epsilon = 1e-8, max_relative = 1e-7);
            }
        }
    }

    #[test]
    fn closed_values() {
        assert_relative_eq!(
            Activation::Gelu.phi(1.0),
            0.841_344_746_068_542_9,
            epsilon = 1e-15
        );
        assert_relative_eq!(
            Activation::Softplus.phi(0.0),
            std::f64::consts::LN_2,
            epsilon = 1e-15
        );
        assert_relative_eq!(Activation::Softplus.phi(800.0), 800.0);
        assert_relative_eq!(Activation::Sigmoid.phi(-800.0), 0.0);
        assert_relative_eq!(
            Activation::Erf.phi(0.5),
            0.520_499_877_813_046_5,
            epsilon = 1e-15
        );
    }

    #[test]
    fn invalid_parameters_are_errors() {
        assert!(Activation::LeakyRelu(f64::NAN).validate().is_err());
        assert!(
            Activation::custom("log", f64::ln, |x| 1.0 / x)
                .validate()
                .is_err()
        );
        assert!(
            Activation::custom("sq", |x| x * x, |x| 2.0 * x)
                .validate()
                .is_ok()
        );
        // φ' NaN only beyond |x| > 3, where unit inputs rarely go.
        let clipped = Activation::custom("clipped", f64::tanh, |x: f64| {
            if x.abs() > 3.0 {
                f64::NAN
            } else {
                1.0 - x.tanh().powi(2)
            }
        });
        assert!(clipped.validate().is_err());
    }
}
