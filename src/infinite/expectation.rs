//! Gaussian expectations of activations without a closed form, accurate at any variance.
//!
//! A fixed tensor Gauss–Hermite rule integrates E φ(u) ψ(v) well only while φ varies
//! slowly on the scale of the Gaussian: Tanh's poles at ±iπ/2 sit at a distance
//! π/(2√q) from the real axis in the standardised variable, so at variance q = 100 the
//! 256-point rule is off by 59%. Here both dimensions are integrated by a rule fitted to
//! the Gaussian *and* to φ:
//!
//! 1. Condition on the variable with the larger variance: with ρ = c/(√q₁√q₂),
//!    u ~ N(0, q₁) and v | u ~ N(κu, s²), κ = ρ √q₂/√q₁, s = √q₂ √((1 − ρ)(1 + ρ)), so
//!    E φ(u) ψ(v) = E_u [φ(u) E_w ψ(κu + s w)]: an outer and an inner 1-D expectation
//!    of the same kind, E f(x) for x ~ N(m, σ²). At ρ = ±1 the inner one is a point.
//! 2. Each 1-D expectation uses the n-point Gauss–Hermite rule x = m + σ zᵢ when σ is
//!    small enough for it ([`GaussHermite::max_sd`]: φ then varies slowly across the
//!    rule; far from 0, where φ's singularities are at least |x| away, larger σ
//!    qualify), and otherwise composite Gauss–Legendre in x on [m − 9σ, m + 9σ], with
//!    breakpoints at 0 and ±2ʲ (j ≥ 0) where φ has its features (the kink of the ReLU
//!    family at 0, the poles of Tanh, Sigmoid and Softplus on the imaginary axis, at
//!    distance ≥ π/2 from every real point and ≥ |x| from x), each panel cut further to
//!    at most [`PANEL_SDS`] σ so that the Gaussian density is resolved too (and to
//!    width 1 for the oscillating Sin). The panels are graded towards 0, so the cost
//!    grows only like log σ. When ψ has a kink, the inner expectation E ψ(κu + sw)
//!    varies on the scale s/|κ| around u = 0: the outer grid is then graded on down to
//!    that scale (breakpoints ±2ʲ for negative j too).
//!
//! The rule is accurate for φ, ψ analytic on the real line except possibly at 0, with
//! singularities no closer than ~1 to any real point and ~|x| to large x (every common
//! activation), and of at most polynomial growth: see the accuracy table at
//! [`GaussHermite::DEFAULT_DEGREE`]. A custom φ with a kink away from 0, or one that
//! oscillates, is integrated less accurately.

use std::sync::{Arc, OnceLock};

use crate::activation::FRAC_1_SQRT_2PI;

use super::quadrature::{GaussHermite, PRUNE};

/// Gauss–Hermite degrees tried, smallest first, up to the configured one.
const LADDER: [usize; 7] = [24, 32, 48, 64, 96, 128, 192];

/// The Gauss–Hermite rules the expectations may use: for each standard deviation the
/// smallest one accurate there ([`GaussHermite::max_sd`]), up to a largest one.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    /// Ascending degree; the last is the configured rule.
    ladder: Vec<Arc<GaussHermite>>,
}

impl Rules {
    /// The rules up to `largest` (the smaller ones from the cache of
    /// [`GaussHermite::new`]).
    pub(crate) fn up_to(largest: &GaussHermite) -> Rules {
        let mut ladder: Vec<Arc<GaussHermite>> = LADDER
            .iter()
            .filter(|&&n| n < largest.degree())
            .filter_map(|&n| GaussHermite::new(n).ok())
            .collect();
        let top = GaussHermite::new(largest.degree()).unwrap_or_else(|_| Arc::new(largest.clone()));
        ladder.push(top);
        Rules { ladder }
    }

    /// The smallest rule accurate at standard deviation `sd`, if any.
    #[inline]
    fn for_sd(&self, sd: f64, distance: f64) -> Option<&GaussHermite> {
        self.ladder
            .iter()
            .find(|r| sd <= r.max_sd(distance))
            .map(|r| &**r)
    }
}

/// Gauss–Legendre points per panel.
const LEGENDRE_POINTS: usize = 12;

/// Half-width, in standard deviations, of the interval the composite rule covers: the
/// Gaussian mass outside is 2e-19.
const HALF_WIDTH_SDS: f64 = 9.0;

/// Largest panel width of the composite rule, in standard deviations.
pub(crate) const PANEL_SDS: f64 = 2.0;

/// The `LEGENDRE_POINTS`-point Gauss–Legendre rule on [−1, 1]: (nodes, weights).
fn legendre() -> &'static ([f64; LEGENDRE_POINTS], [f64; LEGENDRE_POINTS]) {
    static RULE: OnceLock<([f64; LEGENDRE_POINTS], [f64; LEGENDRE_POINTS])> = OnceLock::new();
    RULE.get_or_init(|| {
        let n = LEGENDRE_POINTS;
        let mut nodes = [0.0; LEGENDRE_POINTS];
        let mut weights = [0.0; LEGENDRE_POINTS];
        for i in 0..n {
            // Newton on P_n from the Tricomi estimate of its i-th largest root.
            let mut x = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
            let mut dp = 1.0;
            for _ in 0..100 {
                let (p, d) = legendre_and_derivative(n, x);
                dp = d;
                let step = p / d;
                x -= step;
                if step.abs() < 1e-17 {
                    break;
                }
            }
            let (_, d) = legendre_and_derivative(n, x);
            if d.is_finite() {
                dp = d;
            }
            nodes[i] = x;
            weights[i] = 2.0 / ((1.0 - x * x) * dp * dp);
        }
        (nodes, weights)
    })
}

/// P_n(x) and P_n'(x) by the three-term recurrence.
fn legendre_and_derivative(n: usize, x: f64) -> (f64, f64) {
    let (mut prev, mut cur) = (1.0, x);
    for k in 1..n {
        let k = k as f64;
        let next = ((2.0 * k + 1.0) * x * cur - k * prev) / (k + 1.0);
        prev = cur;
        cur = next;
    }
    let d = n as f64 * (x * cur - prev) / (x * x - 1.0);
    (cur, d)
}

/// The smallest breakpoint above `a` of the grid {0} ∪ {±2ʲ : 2ʲ ≥ `fine`}, for
/// `fine` a power of two ≤ 1.
fn next_breakpoint(a: f64, fine: f64) -> f64 {
    // The power of two p with p ≤ |a| < 2p (|a| ≥ fine).
    let floor_power = |x: f64| {
        let mut p = 2.0_f64.powi(x.log2().floor() as i32);
        while p > x {
            p *= 0.5;
        }
        while 2.0 * p <= x {
            p *= 2.0;
        }
        p
    };
    if a < 0.0 {
        if -a <= fine {
            return 0.0;
        }
        let p = floor_power(-a);
        let p = if p >= -a { 0.5 * p } else { p };
        if p < fine { 0.0 } else { -p }
    } else if a < fine {
        fine
    } else {
        2.0 * floor_power(a)
    }
}

/// How an integrand varies: decides where the Gauss–Hermite rule is accurate enough
/// ([`GaussHermite::max_sd`]) and how wide a composite panel may be.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Smoothness {
    /// How far from the real line it is analytic (0: it has a kink at 0).
    pub(crate) distance: f64,
    /// The widest panel that resolves it (∞ unless it oscillates everywhere).
    pub(crate) max_width: f64,
}

impl Smoothness {
    /// Whether it has a kink (a jump in φ or φ') at 0.
    fn kinked(self) -> bool {
        self.distance <= 0.0
    }

    /// How far from the real line it is analytic as a Gauss–Hermite rule for
    /// N(`mean`, `sd`²) sees it, on [m − 10σ, m + 10σ]: away from 0 its singularities
    /// are at least as far as that interval is from 0 (unless it oscillates).
    fn distance_on(self, mean: f64, sd: f64) -> f64 {
        if self.max_width.is_finite() {
            self.distance
        } else {
            self.distance.max(mean.abs() - 10.0 * sd)
        }
    }

    /// The roughness of a product of two.
    fn min(self, other: Smoothness) -> Smoothness {
        Smoothness {
            distance: self.distance.min(other.distance),
            max_width: self.max_width.min(other.max_width),
        }
    }
}

/// Calls `f(x, w)` for the nodes and weights of a rule with Σ w f(x) ≈ E f(x),
/// x ~ N(`mean`, `sd`²) (see the module docs); `sd` = 0 gives the single node `mean`.
/// Gauss–Hermite nodes with weight below `min_weight` are skipped (their share is
/// below round-off in a product rule whose other factor has weight ≤ 1); the
/// composite rule's grid is graded down to `fine` (≤ 1) around 0.
#[inline]
pub(crate) fn for_each_node(
    mean: f64,
    sd: f64,
    smoothness: Smoothness,
    fine: f64,
    min_weight: f64,
    rules: &Rules,
    mut f: impl FnMut(f64, f64),
) {
    if sd <= 0.0 {
        f(mean, 1.0);
        return;
    }
    let distance = smoothness.distance_on(mean, sd);
    if let Some(gh) = rules.for_sd(sd, distance) {
        let (lo, hi) = gh.range_above(min_weight);
        for (&z, &w) in gh.nodes()[lo..hi].iter().zip(&gh.weights()[lo..hi]) {
            f(mean + sd * z, w);
        }
        return;
    }
    let inv_sd = 1.0 / sd;
    let scale = FRAC_1_SQRT_2PI * inv_sd;
    let (lo, hi) = (mean - HALF_WIDTH_SDS * sd, mean + HALF_WIDTH_SDS * sd);
    let max_width = (PANEL_SDS * sd).min(smoothness.max_width);
    composite_nodes(lo, hi, max_width, fine, |x, w| {
        let z = (x - mean) * inv_sd;
        f(x, w * scale * (-0.5 * z * z).exp());
    });
}

/// Calls `f(x, w)`, x ascending, for composite Gauss–Legendre on [`lo`, `hi`] with
/// breakpoints at 0 and ±2ʲ (2ʲ ≥ `fine`, rounded down to a power of two) and panels
/// at most `max_width` wide: Σ w f(x) ≈ ∫ f.
fn composite_nodes(lo: f64, hi: f64, max_width: f64, fine: f64, mut f: impl FnMut(f64, f64)) {
    let (t, omega) = legendre();
    // A power of two, not so small that the grid gets long.
    let fine = 2.0_f64.powi(fine.clamp(1e-12, 1.0).log2().floor() as i32);
    let mut a = lo;
    while a < hi {
        let b = next_breakpoint(a, fine).min(hi);
        let pieces = ((b - a) / max_width).ceil().max(1.0);
        let h = (b - a) / pieces;
        for p in 0..pieces as usize {
            let half = 0.5 * h;
            let mid = a + (p as f64 + 0.5) * h;
            // The Legendre nodes are stored descending.
            for (&ti, &wi) in t.iter().zip(omega).rev() {
                f(mid - half * ti, half * wi);
            }
        }
        a = b;
    }
}

/// ψ and ψ' tabulated once per pair on one composite grid that serves the inner
/// expectation E ψ(μ + s w) at every μ of the outer rule: the Gaussian weight is
/// applied per μ to the nodes within 9s of it (whole panels, so the rule on each
/// window is the composite rule of [`for_each_node`] with its panels cut at the same
/// breakpoints).
struct InnerGrid {
    x: Vec<f64>,
    /// Gauss–Legendre weight × (ψ(x), ψ'(x)).
    values: Vec<(f64, f64)>,
}

impl InnerGrid {
    fn new(lo: f64, hi: f64, s: f64, psi: &Side<impl Fn(f64) -> (f64, f64)>) -> InnerGrid {
        let (mut x, mut values) = (Vec::new(), Vec::new());
        let max_width = (PANEL_SDS * s).min(psi.smoothness.max_width);
        composite_nodes(lo, hi, max_width, 1.0, |v, w| {
            let (p, d) = (psi.eval)(v);
            x.push(v);
            values.push((w * p, w * d));
        });
        InnerGrid { x, values }
    }

    /// (E ψ(μ + s w), E ψ'(μ + s w)).
    fn expect(&self, mu: f64, s: f64) -> (f64, f64) {
        let reach = (HALF_WIDTH_SDS + PANEL_SDS) * s;
        let first = self.x.partition_point(|&v| v < mu - reach);
        let last = self.x.partition_point(|&v| v <= mu + reach);
        let inv_s = 1.0 / s;
        let scale = FRAC_1_SQRT_2PI * inv_s;
        let (mut g, mut gd) = (0.0, 0.0);
        for (&v, &(p, d)) in self.x[first..last].iter().zip(&self.values[first..last]) {
            let z = (v - mu) * inv_s;
            let w = scale * (-0.5 * z * z).exp();
            g += w * p;
            gd += w * d;
        }
        (g, gd)
    }
}

/// E f(x) for x ~ N(0, `q`) where `f(x)` = (φ(x), φ'(x)): returns (E φ, E φ').
pub(crate) fn mean_moments(
    f: impl Fn(f64) -> (f64, f64),
    smoothness: Smoothness,
    q: f64,
    rules: &Rules,
) -> (f64, f64) {
    let (mut m0, mut m1) = (0.0, 0.0);
    for_each_node(
        0.0,
        q.max(0.0).sqrt(),
        smoothness,
        1.0,
        PRUNE,
        rules,
        |x, w| {
            let (p, d) = f(x);
            m0 += w * p;
            m1 += w * d;
        },
    );
    (m0, m1)
}

/// One side of a pair: `eval(x)` = (φ(x), φ'(x)) and φ's smoothness.
pub(crate) struct Side<F> {
    pub(crate) eval: F,
    pub(crate) smoothness: Smoothness,
}

/// (E φ(u) ψ(v), E φ'(u) ψ'(v)) for (u, v) ~ N(0, [[q1, c], [c, q2]]); the caller has
/// checked the covariance. The larger variance is the outer variable.
pub(crate) fn pair_moments<F, G>(
    phi: &Side<F>,
    psi: &Side<G>,
    q1: f64,
    c: f64,
    q2: f64,
    rules: &Rules,
) -> (f64, f64)
where
    F: Fn(f64) -> (f64, f64),
    G: Fn(f64) -> (f64, f64),
{
    if q2 > q1 {
        // The moments are symmetric in (φ, u) ↔ (ψ, v).
        return pair_moments(psi, phi, q2, c, q1, rules);
    }
    let (sd1, sd2) = (q1.max(0.0).sqrt(), q2.max(0.0).sqrt());
    let (kappa, s) = if sd1 > 0.0 && sd2 > 0.0 {
        let rho = super::fastmath::correlation((c / sd1) / sd2);
        (rho * (sd2 / sd1), sd2 * ((1.0 - rho) * (1.0 + rho)).sqrt())
    } else {
        (0.0, sd2)
    };
    // The outer integrand φ(u) E_w ψ(κu + sw) is analytic where both factors are
    // (|κ| ≤ 1: smoothing by the inner Gaussian does not narrow ψ's strip); a kink of
    // ψ at 0 is smoothed to the scale s/|κ| in u.
    let outer = phi.smoothness.min(psi.smoothness);
    let fine = if psi.smoothness.kinked() && kappa != 0.0 {
        (s / kappa.abs()).min(1.0)
    } else {
        1.0
    };
    // ψ on one grid for every outer node whose inner Gaussian is too wide for a
    // Gauss–Hermite rule (built on first use).
    let mut grid: Option<InnerGrid> = None;
    let reach =
        kappa.abs() * (HALF_WIDTH_SDS + PANEL_SDS) * sd1 + (2.0 * HALF_WIDTH_SDS + PANEL_SDS) * s;
    let (mut cc, mut cd) = (0.0, 0.0);
    for_each_node(0.0, sd1, outer, fine, PRUNE, rules, |u, wu| {
        let (pu, du) = (phi.eval)(u);
        let mu = kappa * u;
        let (mut g, mut gd) = (0.0, 0.0);
        let distance = psi.smoothness.distance_on(mu, s);
        if s > 0.0 && rules.for_sd(s, distance).is_none() {
            (g, gd) = grid
                .get_or_insert_with(|| InnerGrid::new(-reach, reach, s, psi))
                .expect(mu, s);
        } else {
            for_each_node(mu, s, psi.smoothness, 1.0, PRUNE / wu, rules, |v, wv| {
                let (pv, dv) = (psi.eval)(v);
                g += wv * pv;
                gd += wv * dv;
            });
        }
        cc += wu * pu * g;
        cd += wu * du * gd;
    });
    (cc, cd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legendre_rule_integrates_polynomials_of_degree_below_2n() {
        let (t, w) = legendre();
        for k in 0..(2 * LEGENDRE_POINTS) {
            let sum: f64 = t.iter().zip(w).map(|(&x, &w)| w * x.powi(k as i32)).sum();
            let exact = if k % 2 == 0 {
                2.0 / (k as f64 + 1.0)
            } else {
                0.0
            };
            assert!((sum - exact).abs() < 1e-15, "x^{k}: {sum} vs {exact}");
        }
    }

    #[test]
    fn breakpoints_are_the_graded_grid() {
        for (a, next) in [
            (-5.0, -4.0),
            (-4.0, -2.0),
            (-1.5, -1.0),
            (-1.0, 0.0),
            (-0.3, 0.0),
            (0.0, 1.0),
            (1.0, 2.0),
            (3.0, 4.0),
            (4.0, 8.0),
            (1e6, 1_048_576.0),
        ] {
            assert!((next_breakpoint(a, 1.0) - next).abs() < 1e-12, "{a}");
        }
        for (a, next) in [
            (-0.3, -0.25),
            (-0.25, -0.125),
            (-0.1, 0.0),
            (0.0, 0.125),
            (0.2, 0.25),
            (0.5, 1.0),
        ] {
            assert!(
                (next_breakpoint(a, 0.125) - next).abs() < 1e-15,
                "{a} (fine)"
            );
        }
    }

    /// E x^k for x ~ N(m, σ²) through both branches and across the grid.
    #[test]
    fn gaussian_moments_of_polynomials() {
        let rules = Rules::up_to(&GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap());
        for &(m, sd) in &[(0.0, 0.3), (1.7, 0.2), (0.0, 3.0), (-40.0, 7.0), (0.5, 1e4)] {
            let mut moments = [0.0; 5];
            for_each_node(
                m,
                sd,
                Smoothness {
                    distance: 1.0,
                    max_width: f64::INFINITY,
                },
                1.0,
                0.0,
                &rules,
                |x, w| {
                    for (k, mk) in moments.iter_mut().enumerate() {
                        *mk += w * x.powi(k as i32);
                    }
                },
            );
            let v = sd * sd;
            let exact = [
                1.0,
                m,
                m * m + v,
                m * m * m + 3.0 * m * v,
                m.powi(4) + 6.0 * m * m * v + 3.0 * v * v,
            ];
            for (k, (got, want)) in moments.iter().zip(exact).enumerate() {
                let scale = (m.abs() + sd).powi(k as i32);
                assert!(
                    (got - want).abs() <= 1e-13 * scale,
                    "E x^{k} at N({m}, {sd}²): {got} vs {want}"
                );
            }
        }
    }
}

#[cfg(test)]
mod calibration {
    //! [`GaussHermite::max_sd`] against an independent reference.

    use super::*;

    /// E f(x), x ~ N(m, σ²), by the trapezoidal rule with a tiny step.
    fn trapezoid(f: &dyn Fn(f64) -> f64, m: f64, sd: f64) -> f64 {
        let h = (sd / 200.0).min(0.005);
        let k = (10.0 * sd / h) as i64;
        (-k..=k)
            .map(|i| {
                let z = i as f64 * h / sd;
                h * FRAC_1_SQRT_2PI / sd * (-0.5 * z * z).exp() * f(m + i as f64 * h)
            })
            .sum()
    }

    /// Every rule of the ladder, at the largest σ it is used for, integrates Tanh,
    /// Sigmoid, their derivatives and swish (a custom-like φ, `distance` 1) to 1e-13.
    #[test]
    fn each_rule_is_accurate_up_to_its_max_sd() {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let half_pi = std::f64::consts::FRAC_PI_2;
        type Case<'a> = (&'a str, f64, &'a dyn Fn(f64) -> f64);
        let cases: [Case<'_>; 5] = [
            ("tanh", half_pi, &|x: f64| x.tanh()),
            ("tanh'", half_pi, &|x: f64| 1.0 - x.tanh().powi(2)),
            ("sigmoid", std::f64::consts::PI, &sigmoid),
            ("sigmoid'", std::f64::consts::PI, &|x: f64| {
                sigmoid(x) * (1.0 - sigmoid(x))
            }),
            ("swish", 1.0, &|x: f64| x * sigmoid(x)),
        ];
        for n in LADDER.into_iter().chain([GaussHermite::DEFAULT_DEGREE]) {
            let gh = GaussHermite::new(n).unwrap();
            let (lo, hi) = gh.core();
            for (name, distance, f) in cases {
                let sd = gh.max_sd(distance);
                for m in [0.0, 0.3, 0.7, 1.5, 3.0] {
                    let rule: f64 = gh.nodes()[lo..hi]
                        .iter()
                        .zip(&gh.weights()[lo..hi])
                        .map(|(&z, &w)| w * f(m + sd * z))
                        .sum();
                    let exact = trapezoid(f, m, sd);
                    assert!(
                        (rule - exact).abs() < 1e-13,
                        "{name}, n = {n}, σ = {sd}, m = {m}: {rule} vs {exact}"
                    );
                }
            }
        }
    }
}
