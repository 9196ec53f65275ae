//! The closed-form duals ($ψ = φ$): the arc-cosine kernels of the ReLU family, Erf,
//! Identity, Sin and GELU, each written without the cancellations listed in the
//! [module documentation](super), and the vectorised loops over the ReLU family.

use std::f64::consts::{FRAC_1_PI, FRAC_2_SQRT_PI};

use crate::activation::Activation;
use crate::infinite::fastmath;

/// 1/(2π).
const INV_2PI: f64 = 0.5 * FRAC_1_PI;

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

    /// Whether (C, Ċ) depend on the determinant $g = q_1q_2 − c^2$ beyond what the
    /// correlation gives: Erf's $Δ = 1 + 2q_1 + 2q_2 + 4g$ and GELU's $D^2 = 1 + q_1 + q_2 + g$,
    /// where at large nearly parallel inputs $g$ is a difference of nearly equal numbers.
    pub(crate) fn needs_determinant(self) -> bool {
        matches!(self, Closed::Erf | Closed::Gelu)
    }

    /// Whether the determinant $g = q_1q_2 − c^2$ (for the forms that
    /// [need it](Self::needs_determinant)) is lost in the rounding of $q_1, c, q_2$ beyond
    /// what the result may carry: second moments accurate to about $2^6 ε$ relative move
    /// $g$ by up to $2^8 ε q_1q_2$, which the forms read through $1/4 + (q_1 + q_2)/2 + g$;
    /// flagged where that moves (C, Ċ) by more than $10^{−8}$ relative (nearly parallel
    /// inputs with $q ≳ 10^6$). Identical samples ($c = q_1 = q_2$, whose $g = 0$ is exact)
    /// are never flagged.
    pub(crate) fn determinant_is_lost(q1: f64, c: f64, q2: f64) -> bool {
        #[allow(clippy::float_cmp)]
        let identical = c == q1 && q1 == q2;
        if identical {
            return false;
        }
        let (std, rho) = std_and_correlation(q1, c, q2);
        let g = std * std * ((1.0 - rho) * (1.0 + rho));
        256.0 * f64::EPSILON * std * std > 2e-8 * (0.25 + 0.5 * (q1 + q2) + g)
    }

    /// (C, Ċ) at one covariance with the determinant's root $r = \sqrt{q_1q_2 − c^2}$ given
    /// (computed from the inputs themselves, not from the rounded $q_1, c, q_2$), for the
    /// forms that [need it](Self::needs_determinant); [`eval`](Self::eval) otherwise.
    pub(crate) fn eval_with_determinant(self, q1: f64, c: f64, q2: f64, r: f64) -> (f64, f64) {
        let bound = q1.sqrt() * q2.sqrt();
        let c = c.clamp(-bound, bound);
        match self {
            Closed::Erf => erf_at(q1, c, q2, r),
            Closed::Gelu => gelu_at(q1, c, q2, r),
            _ => self.eval(q1, c, q2),
        }
    }

    /// $E φ\'(u)$ for $u ∼ N(0, q)$.
    pub(super) fn mean_derivative(self, q: f64) -> f64 {
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

/// The arc-cosine kernels at correlation $ρ = \cos θ$: $(C/(σ_1σ_2), \dot C)$ for
/// $φ = a·\min(x, 0) + b·\max(x, 0)$, with $k_1 = a^2 + b^2$ and $k_2 = 2ab$:
/// $\dot C = (k_1(π − θ) + k_2θ)/2π$ and $C/(σ_1σ_2) = (k_1 − k_2)\sin θ/2π + \dot C ρ$,
/// formed as $β_0 + β_1θ$ and $α \sin θ + \dot C ρ$ from constants of $(a, b)$ (five
/// operations: the loops over it are bound by arithmetic).
#[inline(always)]
fn arccos_unit(a: f64, b: f64, rho: f64) -> (f64, f64) {
    let (k1, k2) = (a * a + b * b, 2.0 * a * b);
    let (alpha, beta0, beta1) = (INV_2PI * (k1 - k2), 0.5 * k1, INV_2PI * (k2 - k1));
    let theta = fastmath::acos(rho);
    let sin = ((1.0 - rho) * (1.0 + rho)).sqrt();
    let cdot = beta0 + beta1 * theta;
    (alpha * sin + cdot * rho, cdot)
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
pub(super) fn arccos_slice(
    a: f64,
    b: f64,
    d0: f64,
    q1: &[f64],
    c: &mut [f64],
    q2: &[f64],
    cdot: &mut [f64],
) {
    let n = c.len();
    let (q1, q2, cdot) = (&q1[..n], &q2[..n], &mut cdot[..n]);
    for i in 0..n {
        (c[i], cdot[i]) = arccos_moments(a, b, d0, q1[i], c[i], q2[i]);
    }
}

/// One column of arc-cosine duals fused with the caller's per-entry step (see
/// [`PairDual::eval_column_then`](super::PairDual::eval_column_then)), multiversioned like [`arccos_slice`].
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(super) fn arccos_column<F: Fn(f64, f64, f64) -> (f64, f64)>(
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

/// [`arccos_column`] with both sides varying, over rows: row `r` gives the two sides
/// `(first, second)` and where its entries start in `c` and `aux`; entry `i` of the row
/// pairs position `i` of the first side with position `i` of the second (see
/// [`PairDual::eval_rows_then`](super::PairDual::eval_rows_then)). One call for many
/// short rows.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
pub(super) fn arccos_rows<'a, F, R>(
    (a, b, d0): (f64, f64, f64),
    rows: usize,
    row: R,
    c: &mut [f64],
    aux: &mut [f64],
    then: F,
) where
    F: Fn(f64, f64, f64) -> (f64, f64),
    R: Fn(usize) -> ([&'a [f64]; 3], [&'a [f64]; 3], usize),
{
    for r in 0..rows {
        let ([q1, sd1, inv_sd1], [q2, sd2, inv_sd2], start) = row(r);
        let n = q1.len();
        let (c, aux) = (&mut c[start..start + n], &mut aux[start..start + n]);
        let (sd1, inv_sd1) = (&sd1[..n], &inv_sd1[..n]);
        let (q2, sd2, inv_sd2) = (&q2[..n], &sd2[..n], &inv_sd2[..n]);
        for i in 0..n {
            let rho = fastmath::correlation((c[i] * inv_sd1[i]) * inv_sd2[i]);
            let (cc, cd) = arccos_at(a, b, d0, sd1[i] * sd2[i], rho, q1[i], q2[i]);
            (c[i], aux[i]) = then(cc, cd, aux[i]);
        }
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
    erf_at(q1, c, q2, r)
}

/// Erf's (C, Ċ) from the covariance and $r = \sqrt{q_1q_2 − c^2}$.
#[inline(always)]
fn erf_at(q1: f64, c: f64, q2: f64, r: f64) -> (f64, f64) {
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
    gelu_at(q1, c, q2, r)
}

/// GELU's (C, Ċ) from the covariance and $r = \sqrt{q_1q_2 − c^2}$.
#[inline(always)]
fn gelu_at(q1: f64, c: f64, q2: f64, r: f64) -> (f64, f64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infinite::dual::test_support::{assert_close, numerical};

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
}
