//! A branch-free arccos that the compiler can vectorise.
//!
//! The arc-cosine kernels need θ = arccos ρ at every entry of an N × N kernel, for every
//! ReLU-family layer. A libm call per entry is opaque to the vectoriser; this version is
//! straight-line code (selects instead of branches) built from +, ×, ÷ and √, so a loop
//! over a column compiles to SIMD.
//!
//! With x = |ρ|:
//! - x ≤ ½: arccos x = π/2 − arcsin x;
//! - x > ½: arccos x = 2 arcsin √((1 − x)/2);
//!
//! and arccos(−x) = π − arccos x. Both branches need arcsin y for y ≤ ½, i.e.
//! t = y² ≤ ¼, where arcsin y = y (1 + t P(t)). P is the degree-12 polynomial that
//! interpolates (arcsin √t/√t − 1)/t at the 13 Chebyshev nodes of [0, ¼], computed in
//! 60-digit arithmetic by `scripts/asin_coefficients.py`: its truncation error adds at
//! most 0.03 ε to arccos (the Taylor series needs 24 terms for the same). P is evaluated
//! as four interleaved Horner chains in t⁴ (Estrin's idea), which shortens the dependency
//! chain fourfold. The result agrees with libm's `acos` to a few ulps (see the tests).

use std::f64::consts::{FRAC_PI_2, PI};

/// Number of coefficients of P.
const TERMS: usize = 13;

/// P's coefficients, from `scripts/asin_coefficients.py`.
#[allow(clippy::excessive_precision)]
const COEFFS: [f64; TERMS] = [
    0.16666666666666669,
    0.07499999999998433,
    0.04464285714635543,
    0.030381944138531247,
    0.02237217294214989,
    0.017352392720869973,
    0.013971212973552933,
    0.011479177415184906,
    0.01032281435018578,
    0.005457506718640358,
    0.01740087944269402,
    -0.014851887071247204,
    0.028757851367421566,
];

/// ρ clamped to [−1, 1], and snapped to ±1 within four ulps of it.
///
/// Near ρ = 1, θ = arccos ρ ≈ √(2(1 − ρ)): one rounding error in a covariance moves θ
/// by ~1e-8. Correlations that round-off cannot tell from ±1 (duplicated or parallel
/// inputs, the diagonal of a kernel) are therefore taken as exactly ±1, so that every
/// code path gives them θ = 0 (or π).
#[inline(always)]
pub(crate) fn correlation(rho: f64) -> f64 {
    let rho = rho.clamp(-1.0, 1.0);
    if rho.abs() >= 1.0 - 4.0 * f64::EPSILON {
        1.0_f64.copysign(rho)
    } else {
        rho
    }
}

/// arccos ρ for ρ ∈ [−1, 1] (the caller clamps), branch-free.
#[inline(always)]
pub(crate) fn acos(rho: f64) -> f64 {
    let x = rho.abs();
    let small = x <= 0.5;
    let t_big = 0.5 * (1.0 - x);
    let t = if small { x * x } else { t_big };
    let y = if small { x } else { t_big.sqrt() };
    // P(t) = P₀(t⁴) + t P₁(t⁴) + t² P₂(t⁴) + t³ P₃(t⁴): four independent Horner
    // chains of at most four steps instead of one of thirteen (the chain's latency, not the
    // arithmetic, is what limits the loop).
    let t2 = t * t;
    let t4 = t2 * t2;
    let mut chains = [0.0; 4];
    for (r, chain) in chains.iter_mut().enumerate() {
        // The coefficients of the powers ≡ r (mod 4), highest first.
        let mut k = r + (TERMS - 1 - r) / 4 * 4;
        let mut acc = COEFFS[k];
        while k >= 4 {
            k -= 4;
            acc = acc * t4 + COEFFS[k];
        }
        *chain = acc;
    }
    let p = (chains[0] + t * chains[1]) + t2 * (chains[2] + t * chains[3]);
    let asin = y + y * t * p;
    let r = if small { FRAC_PI_2 - asin } else { 2.0 * asin };
    if rho < 0.0 { PI - r } else { r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_libm_to_a_few_ulps() {
        let n = 200_001;
        let mut worst: f64 = 0.0;
        for i in 0..n {
            let rho = -1.0 + 2.0 * i as f64 / (n - 1) as f64;
            let exact = libm::acos(rho);
            let err = (acos(rho) - exact).abs();
            worst = worst.max(err / f64::EPSILON);
        }
        // Absolute error in units of ε (θ ≤ π).
        assert!(worst <= 3.0, "max error {worst} ε");
        for rho in [
            -1.0,
            -0.5,
            0.0,
            0.5,
            1.0,
            1e-300,
            -1e-17,
            1.0 - 1e-16,
            0.5 + 1e-16,
        ] {
            assert!(
                (acos(rho) - libm::acos(rho)).abs() <= 4.0 * f64::EPSILON,
                "{rho}"
            );
        }
        assert!(acos(1.0).abs() < f64::MIN_POSITIVE, "arccos 1 is exactly 0");
    }

    #[test]
    fn correlations_next_to_one_snap() {
        assert!((correlation(1.0 - f64::EPSILON) - 1.0).abs() < f64::MIN_POSITIVE);
        assert!((correlation(-1.0 - 1e-12) + 1.0).abs() < f64::MIN_POSITIVE);
        assert!((correlation(0.999) - 0.999).abs() < f64::MIN_POSITIVE);
    }

    #[test]
    fn the_polynomial_starts_as_the_arcsin_series() {
        // arcsin y = y + y³/6 + 3y⁵/40 + 15y⁷/336 + …: P(t) = 1/6 + 3t/40 + 15t²/336 + ….
        assert!((COEFFS[0] - 1.0 / 6.0).abs() < 1e-16);
        assert!((COEFFS[1] - 3.0 / 40.0).abs() < 1e-13);
        assert!((COEFFS[2] - 15.0 / 336.0).abs() < 1e-11);
    }
}
