//! Gauss–Hermite quadrature for Gaussian expectations, by Golub–Welsch.
//!
//! For $z ∼ N(0, 1)$, $E f(z) ≈ Σ_i w_i f(z_i)$, exact for polynomials of degree $< 2n$.
//! The nodes $z_i$ are the eigenvalues of the $n × n$ symmetric tridiagonal Jacobi matrix of
//! the probabilists' Hermite polynomials (zero diagonal, off-diagonal $\sqrt 1, …, \sqrt{n−1}$);
//! the weights are the squared first components of its unit eigenvectors (Golub &
//! Welsch 1969). Each node is then polished by one Newton step on the orthonormal
//! Hermite polynomial $p_n$, and the weight recomputed by the Christoffel formula
//! $w_i = 1 / Σ_{k < n} p_k(z_i)^2$, which keeps full *relative* accuracy for the tiny
//! weights in the tails (the eigenvector components only have absolute accuracy).
//!
//! Rules are computed once per degree and cached for the life of the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use nalgebra::DMatrix;

use crate::error::{Error, Result};

/// Product weights $w_i w_j$ below this are dropped from 2-D rules: their nodes lie beyond
/// $|z| ≈ 9.5$, where the Gaussian density is below $10^{−20}$ and any integrand of polynomial
/// growth contributes less than round-off.
pub(crate) const PRUNE: f64 = 1e-22;

/// An $n$-point Gauss–Hermite rule for the standard normal: $E f(z) ≈ Σ w_i f(z_i)$.
///
/// ```
/// use ntk::infinite::GaussHermite;
/// # fn main() -> Result<(), ntk::Error> {
/// let rule = GaussHermite::new(20)?;
/// // E z⁴ = 3, exact for degree ≥ 3.
/// let m4: f64 = rule.expect(|z| z.powi(4));
/// assert!((m4 - 3.0).abs() < 1e-13);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GaussHermite {
    nodes: Vec<f64>,
    weights: Vec<f64>,
    /// For node $i$, the range of $j$ with $w_i w_j ≥$ [`PRUNE`] (weights are unimodal in $j$).
    pair_ranges: Vec<(usize, usize)>,
    /// The range of nodes with weight $≥$ [`PRUNE`] (the 1-D rule's effective nodes).
    core: (usize, usize),
}

impl GaussHermite {
    /// The largest Gauss–Hermite rule the infinite-width kernels use unless configured
    /// otherwise ([`InfiniteWidth::quadrature_degree`](crate::InfiniteWidth::quadrature_degree)).
    ///
    /// For an activation without a closed form the kernels integrate
    /// $E φ(u) φ(v) = E_u \[φ(u) E_w φ(κu + s w)\]$ (conditioning on the variable with the
    /// larger variance), each 1-D expectation by the smallest Gauss–Hermite rule of
    /// 24, 32, 48, 64, 96, 128, 192 nodes (up to this degree) that is accurate at its
    /// standard deviation $σ$, and otherwise by composite 12-point Gauss–Legendre graded
    /// towards 0 (breakpoints $0, ±1, ±2, ±4, …$, panels at most $2σ$ wide), whose cost
    /// grows only like $\log σ$. Measured against an independent adaptive Gauss–Kronrod
    /// integral with compensated sums (`tests/integration/audit.rs`, which asserts the
    /// columns from 10 on): the largest error of $C$ and $\dot C$ relative to
    /// $\sqrt{C(x,x) C(x̄,x̄)}$ (resp. $\dot C$) over correlations
    /// $−1, −0.9, 0, 0.5, 0.9, 0.99, 0.9999, 1$ and variances $(q, q)$ and $(q, 4q)$:
    ///
    /// | $φ$, variance $q$ | 0.01 | 0.1 | 1 | 10 | 100 | 1e3 | 1e4 |
    /// |---|---|---|---|---|---|---|---|
    /// | Tanh | 7e-16 | 8e-16 | 5e-16 | 1e-15 | 8e-15 | 8e-15 | 1e-13 |
    /// | Sigmoid | 6e-16 | 6e-16 | 3e-13 | 9e-16 | 2e-15 | 3e-15 | 9e-14 |
    /// | Softplus | 4e-16 | 6e-16 | 2e-15 | 1e-15 | 6e-16 | 9e-16 | 7e-16 |
    /// | custom (swish, $x σ(x)$) | 7e-16 | 6e-16 | 8e-16 | 9e-16 | 1e-15 | 8e-16 | 1e-15 |
    ///
    /// Between these variances the largest error seen is 2.6e-13 (Tanh at correlation
    /// 0.9999, variance 7.4e3; a grid of ratio 1.37 from 10 to 1e4). The fixed
    /// 160-point tensor rule ([`quadrature`](fn@crate::infinite::quadrature)) is off by 6%
    /// for Tanh at variance 25 and by 59% at 100. The accuracy assumes $φ$ is smooth
    /// away from 0 on the scale of $|x|$ (singularities at distance ≥ ~1 from the real
    /// line, and ≥ ~$|x|$ from large $x$), as every common activation is; a kink at 0 (as in
    /// `LeakyRelu` paired with another activation) is split at. A larger degree uses
    /// Gauss–Hermite up to larger $σ$.
    pub const DEFAULT_DEGREE: usize = 160;
    /// The largest supported degree.
    pub const MAX_DEGREE: usize = 256;

    /// The $n$-point rule (computed on first use, then shared from a cache).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless $1 ≤$ `degree` $≤$ [`GaussHermite::MAX_DEGREE`],
    /// [`Error::Factorization`] if the eigenvalue iteration fails to converge.
    pub fn new(degree: usize) -> Result<Arc<GaussHermite>> {
        check_degree(degree)?;
        static CACHE: OnceLock<Mutex<HashMap<usize, Arc<GaussHermite>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(rule) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&degree) {
            return Ok(Arc::clone(rule));
        }
        let rule = Arc::new(golub_welsch(degree)?);
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(map.entry(degree).or_insert(rule)))
    }

    /// Number of nodes $n$.
    #[must_use]
    pub fn degree(&self) -> usize {
        self.nodes.len()
    }

    /// The nodes $z_i$, ascending.
    #[must_use]
    pub fn nodes(&self) -> &[f64] {
        &self.nodes
    }

    /// The weights $w_i$ (positive, summing to 1).
    #[must_use]
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// $Σ_i w_i f(z_i) ≈ E f(z)$, $z ∼ N(0, 1)$.
    pub fn expect(&self, mut f: impl FnMut(f64) -> f64) -> f64 {
        self.nodes
            .iter()
            .zip(&self.weights)
            .map(|(&z, &w)| w * f(z))
            .sum()
    }

    /// The 2-D tensor rule for $(z_1, z_2) ∼ N(0, I)$: calls `f(w_i w_j, z_i, z_j)` for every
    /// pair whose product weight is at least $10^{−22}$.
    #[cfg(test)]
    pub(crate) fn for_each_pair(&self, mut f: impl FnMut(f64, f64, f64)) {
        for (i, &(lo, hi)) in self.pair_ranges.iter().enumerate() {
            let (zi, wi) = (self.nodes[i], self.weights[i]);
            for j in lo..hi {
                f(wi * self.weights[j], zi, self.nodes[j]);
            }
        }
    }

    /// For node $i$, the range of $j$ kept by the 2-D rule.
    pub(crate) fn pair_range(&self, i: usize) -> (usize, usize) {
        self.pair_ranges[i]
    }

    /// The range of nodes whose weight is at least $10^{−22}$: the others lie where the
    /// Gaussian density is below round-off.
    #[cfg(test)]
    pub(crate) fn core(&self) -> (usize, usize) {
        self.core
    }

    /// The nodes $i$ of [`GaussHermite::core`] with $w_i ≥$ `min_weight` (weights rise
    /// then fall, so they form a range).
    pub(crate) fn range_above(&self, min_weight: f64) -> (usize, usize) {
        let (lo, hi) = self.core;
        let half = lo + (hi - lo) / 2;
        let first = lo + self.weights[lo..half].partition_point(|&w| w < min_weight);
        let last = half + self.weights[half..hi].partition_point(|&w| w >= min_weight);
        (first, last.max(first))
    }

    /// The largest standard deviation $σ$ at which the accurate Gaussian expectations
    /// use this rule directly, $x = m + σ z_i$ (beyond it composite Gauss–Legendre), for
    /// an integrand analytic within `distance` of the real line: the rule's error falls
    /// like $e^{−2τ\sqrt n}$ for an integrand analytic in the strip $|\operatorname{Im} z| < τ$,
    /// $τ$ = `distance`$/σ$, and this keeps it near $10^{−14}$ (measured on Tanh, Sigmoid and
    /// their derivatives: $10^{−14}$ at $σ = 0.08 (π/2) \sqrt n$ for $n ≥ 48$; smaller rules
    /// reach the asymptotic rate later, hence the factor $\sqrt{n/48}$ below 48 nodes).
    pub(crate) fn max_sd(&self, distance: f64) -> f64 {
        let n = self.degree() as f64;
        MAX_SD_PER_SQRT_DEGREE * distance * n.sqrt() * (n / 48.0).min(1.0).sqrt()
    }
}

/// See [`GaussHermite::max_sd`].
const MAX_SD_PER_SQRT_DEGREE: f64 = 0.05;

/// Errors unless `degree` is a supported number of nodes.
pub(crate) fn check_degree(degree: usize) -> Result<()> {
    if (1..=GaussHermite::MAX_DEGREE).contains(&degree) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            parameter: "quadrature_degree",
            value: format!("{degree}"),
            reason: "the number of Gauss–Hermite nodes must be between 1 and 256",
        })
    }
}

/// The orthonormal probabilists' Hermite polynomials $p_{n−1}(x)$, $p_n(x)$ and
/// $Σ_{k < n} p_k(x)^2$, by the three-term recurrence
/// $p_{k+1} = (x p_k − \sqrt k p_{k−1}) / \sqrt{k+1}$.
fn hermite(n: usize, x: f64) -> (f64, f64, f64) {
    let (mut prev, mut cur) = (0.0, 1.0);
    let mut sum_sq = 0.0;
    for k in 0..n {
        sum_sq += cur * cur;
        let next = (x * cur - (k as f64).sqrt() * prev) / ((k + 1) as f64).sqrt();
        prev = cur;
        cur = next;
    }
    (prev, cur, sum_sq)
}

/// Nodes and weights of the n-point rule: Golub–Welsch, polished.
fn golub_welsch(n: usize) -> Result<GaussHermite> {
    let jacobi = DMatrix::<f64>::from_fn(n, n, |i, j| {
        if i + 1 == j || j + 1 == i {
            (i.max(j) as f64).sqrt()
        } else {
            0.0
        }
    });
    let eig =
        nalgebra::SymmetricEigen::try_new(jacobi, f64::EPSILON, 100_000).ok_or_else(|| {
            Error::Factorization {
                message: format!(
                    "Gauss–Hermite: the {n} x {n} Jacobi eigenproblem did not converge"
                ),
            }
        })?;
    let mut pairs: Vec<(f64, f64)> = (0..n)
        .map(|k| {
            let v0 = eig.eigenvectors[(0, k)];
            (eig.eigenvalues[k], v0 * v0)
        })
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));

    let mut nodes = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for &(z0, w_gw) in &pairs {
        // One Newton step on p_n, using p_n' = √n p_{n−1}.
        let (p_prev, p_n, _) = hermite(n, z0);
        let step = if n > 0 && p_prev != 0.0 {
            p_n / ((n as f64).sqrt() * p_prev)
        } else {
            0.0
        };
        let z = if step.is_finite() && step.abs() < 1e-6 {
            z0 - step
        } else {
            z0
        };
        let (_, _, sum_sq) = hermite(n, z);
        let w = if sum_sq.is_finite() && sum_sq > 0.0 {
            1.0 / sum_sq
        } else {
            w_gw
        };
        nodes.push(z);
        weights.push(w);
    }
    // The rule is symmetric: enforce it exactly so that odd moments vanish.
    for i in 0..n / 2 {
        let j = n - 1 - i;
        let z = 0.5 * (nodes[j] - nodes[i]);
        let w = 0.5 * (weights[i] + weights[j]);
        nodes[i] = -z;
        nodes[j] = z;
        weights[i] = w;
        weights[j] = w;
    }
    if n % 2 == 1 {
        nodes[n / 2] = 0.0;
    }
    // Normalise: Σ w = 1 (removes the last rounding in the Christoffel sums).
    let total: f64 = weights.iter().sum();
    for w in &mut weights {
        *w /= total;
    }
    let pair_ranges = weights
        .iter()
        .map(|&wi| {
            let keep = |wj: f64| wi * wj >= PRUNE;
            let lo = weights.iter().position(|&wj| keep(wj)).unwrap_or(0);
            let hi = weights
                .iter()
                .rposition(|&wj| keep(wj))
                .map_or(0, |p| p + 1);
            (lo, hi.max(lo))
        })
        .collect();
    let core = (
        weights.iter().position(|&w| w >= PRUNE).unwrap_or(0),
        weights
            .iter()
            .rposition(|&w| w >= PRUNE)
            .map_or(0, |p| p + 1),
    );
    Ok(GaussHermite {
        nodes,
        weights,
        pair_ranges,
        core,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (2k − 1)!!, the 2k-th moment of N(0, 1).
    fn double_factorial_odd(k: u32) -> f64 {
        (1..=k).map(|i| f64::from(2 * i - 1)).product()
    }

    #[test]
    fn moments_are_exact_up_to_degree_2n_minus_1() {
        for n in [1, 2, 5, 10, 20, 40] {
            let rule = GaussHermite::new(n).unwrap();
            for k in 0..(n as u32) {
                let m = rule.expect(|z| z.powi(2 * k as i32));
                let exact = double_factorial_odd(k);
                assert!(
                    (m - exact).abs() <= 1e-12 * exact,
                    "n = {n}, E z^{} = {m}, expected {exact}",
                    2 * k
                );
                let odd = rule.expect(|z| z.powi(2 * k as i32 + 1));
                assert!(odd.abs() <= 1e-12 * exact * f64::from(2 * k + 1).sqrt());
            }
        }
    }

    /// The orthonormal probabilists' Hermite polynomials p_{n−1}(x) and p_n(x), from
    /// the physicists' recurrence H_{k+1} = 2x H_k − 2k H_{k−1} at x/√2, normalised on
    /// the way (p_k = H_k(x/√2)/√(2^k k!)): a second route to the same values.
    fn hermite_pair(n: usize, x: f64) -> (f64, f64) {
        let y = x / std::f64::consts::SQRT_2;
        let (mut prev, mut cur) = (0.0, 1.0); // p_{−1}, p_0
        for k in 0..n {
            let k = k as f64;
            // p_{k+1} √(2(k+1)) = 2y p_k − 2k p_{k−1} / √(2k)
            let back = if k > 0.0 {
                2.0 * k * prev / (2.0 * k).sqrt()
            } else {
                0.0
            };
            let next = (2.0 * y * cur - back) / (2.0 * (k + 1.0)).sqrt();
            prev = cur;
            cur = next;
        }
        (prev, cur)
    }

    /// Every node is a root of p_n to within a few ulps: |p_n(z)| / |p_n'(z)| (the
    /// distance Newton's method would still move it, p_n' = √n p_{n−1}) is at most
    /// 4 ε max(|z|, 1).
    #[test]
    fn nodes_are_roots_of_the_hermite_polynomial() {
        for n in [2, 5, 20, 60, 160, GaussHermite::MAX_DEGREE] {
            let rule = GaussHermite::new(n).unwrap();
            let mut worst: f64 = 0.0;
            for &z in rule.nodes() {
                let (p_prev, p_n) = hermite_pair(n, z);
                let distance = (p_n / ((n as f64).sqrt() * p_prev)).abs();
                worst = worst.max(distance / (f64::EPSILON * z.abs().max(1.0)));
            }
            println!("n = {n}: worst node {worst:.2} ulps from a root");
            assert!(
                worst <= 4.0,
                "n = {n}: a node is {worst} ulps from a root of p_n"
            );
        }
    }

    /// The weights against the Christoffel–Darboux form w_i = 1/(n p_{n−1}(z_i)²)
    /// (equal to 1/Σ_{k<n} p_k(z_i)² at a root of p_n), to 1e-12 relative even where
    /// they are tiny.
    #[test]
    fn weights_match_the_christoffel_darboux_formula() {
        for n in [3, 20, 60, 160, GaussHermite::MAX_DEGREE] {
            let rule = GaussHermite::new(n).unwrap();
            for (i, (&z, &w)) in rule.nodes().iter().zip(rule.weights()).enumerate() {
                let (p_prev, _) = hermite_pair(n, z);
                let expected = 1.0 / (n as f64 * p_prev * p_prev);
                assert!(
                    (w - expected).abs() <= 1e-12 * expected,
                    "n = {n}, weight {i}: {w} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn gaussian_expectations_of_smooth_functions() {
        let rule = GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap();
        // E cos(a z) = e^{−a²/2}; E e^{a z} = e^{a²/2}.
        for a in [0.5, 1.0, 2.0, 3.0] {
            let c = rule.expect(|z| (a * z).cos());
            assert!((c - (-a * a / 2.0_f64).exp()).abs() < 1e-14);
            let e = rule.expect(|z| (a * z).exp());
            let exact = (a * a / 2.0_f64).exp();
            assert!((e - exact).abs() < 1e-13 * exact);
        }
    }

    #[test]
    fn pruned_pairs_keep_the_mass() {
        let rule = GaussHermite::new(150).unwrap();
        let mut mass = 0.0;
        let mut count = 0;
        rule.for_each_pair(|w, _, _| {
            mass += w;
            count += 1;
        });
        assert!((mass - 1.0).abs() < 1e-15);
        assert!(count < 150 * 150 / 2, "pruning kept {count} pairs");
    }

    #[test]
    fn invalid_degrees_are_errors() {
        assert!(GaussHermite::new(0).is_err());
        assert!(GaussHermite::new(GaussHermite::MAX_DEGREE + 1).is_err());
        assert!(GaussHermite::new(GaussHermite::MAX_DEGREE).is_ok());
    }
}
