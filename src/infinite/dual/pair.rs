//! Pair integrals: the dual of a pair of activations $(φ, ψ)$ chosen once (a closed
//! form, Stein's lemma when one side is the identity, or numerical integration) and
//! evaluated at many covariances, and the numerical integrals themselves.

use std::f64::consts::PI;
use std::sync::Arc;

use crate::activation::Activation;
use crate::infinite::expectation::{Rules, Side, Smoothness, mean_moments, pair_moments};
use crate::infinite::quadrature::GaussHermite;

use super::closed_forms::{Closed, arccos_column, arccos_rows, arccos_slice};

/// $Σ_{i,j} w_i w_j (φ(u_{ij}) φ(v_{ij}), φ\'(u_{ij}) φ\'(v_{ij}))$ over the pruned tensor rule in
/// the Cholesky coordinates $(u, v) = (a z_1, l z_1 + m z_2)$.
pub(super) fn tensor_quadrature(
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
pub(super) fn phi_and_derivative(activation: &Activation, x: f64) -> (f64, f64) {
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
pub(super) fn smoothness(activation: &Activation) -> Smoothness {
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

/// Per-sample variances $q$ with $\sqrt q$ and $1/\sqrt q$ (0 for $q = 0$), for
/// [`PairDual::eval_column_then`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Variances {
    q: Vec<f64>,
    sd: Vec<f64>,
    inv_sd: Vec<f64>,
}

impl Variances {
    /// The variances.
    pub(crate) fn q(&self) -> &[f64] {
        &self.q
    }

    /// The square roots $\sqrt q$.
    pub(crate) fn sd(&self) -> &[f64] {
        &self.sd
    }

    /// The inverse square roots $1/\sqrt q$ (0 for $q = 0$).
    pub(crate) fn inv_sd(&self) -> &[f64] {
        &self.inv_sd
    }

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

    /// The closed form, when it [needs the determinant](Closed::needs_determinant)
    /// $q_1q_2 − c^2$ beyond what the correlation gives.
    pub(crate) fn needs_determinant(&self) -> Option<Closed> {
        match self.kind {
            PairKind::Closed(closed) if closed.needs_determinant() => Some(closed),
            _ => None,
        }
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

    /// As [`PairDual::eval_column_then`] with both sides varying, over `rows` rows:
    /// row `r` gives `(first, second, start)`, the two sides' variances, their square
    /// roots and inverse square roots (0 for a zero variance) over the row, and where
    /// the row starts in `c` and `aux`; `c[start + i]` holds
    /// $\operatorname{Cov}(u_i, v_i)$ on entry, and `(c, aux)[start + i] = then(C, Ċ, aux)`.
    pub(crate) fn eval_rows_then<'a>(
        &self,
        rows: usize,
        row: impl Fn(usize) -> ([&'a [f64]; 3], [&'a [f64]; 3], usize),
        c: &mut [f64],
        aux: &mut [f64],
        then: impl Fn(f64, f64, f64) -> (f64, f64),
    ) {
        if let PairKind::Closed(Closed::ArcCos { a, b, d0 }) = &self.kind {
            arccos_rows((*a, *b, *d0), rows, row, c, aux, then);
            return;
        }
        for r in 0..rows {
            let ([q1, ..], [q2, ..], start) = row(r);
            for (i, (&q1, &q2)) in q1.iter().zip(q2).enumerate() {
                let (cc, cd) = self.eval(q1, c[start + i], q2);
                (c[start + i], aux[start + i]) = then(cc, cd, aux[start + i]);
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
    use std::f64::consts::FRAC_2_SQRT_PI;

    use super::*;
    use crate::infinite::dual::test_support::{assert_close, default_rule, numerical, rules};

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
}
