//! TEMPORARY adapter until the numerics branch provides `PairDual` and
//! `mean_derivative` in dual.rs. Same signatures.

use std::sync::Arc;

use crate::activation::Activation;

use super::dual::Dual;
use super::quadrature::GaussHermite;

/// E φ(u)ψ(v) and E φ'(u)ψ'(v) for (u, v) ~ N(0, [[q1, c], [c, q2]]).
#[derive(Clone, Debug)]
pub(crate) enum PairDual {
    Same(Dual),
    Mixed {
        phi: Activation,
        psi: Activation,
        rule: Arc<GaussHermite>,
    },
}

pub(crate) fn same_activation(a: &Activation, b: &Activation) -> bool {
    match (a, b) {
        (Activation::LeakyRelu(x), Activation::LeakyRelu(y)) => x.to_bits() == y.to_bits(),
        (Activation::Custom(x), Activation::Custom(y)) => x.name() == y.name(),
        _ => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

impl PairDual {
    pub(crate) fn new(phi: &Activation, psi: &Activation, rule: &Arc<GaussHermite>) -> PairDual {
        if same_activation(phi, psi) {
            PairDual::Same(Dual::new(phi, rule))
        } else {
            PairDual::Mixed {
                phi: phi.clone(),
                psi: psi.clone(),
                rule: Arc::clone(rule),
            }
        }
    }

    pub(crate) fn eval(&self, q1: f64, c: f64, q2: f64) -> (f64, f64) {
        match self {
            PairDual::Same(d) => {
                let m = d.eval(q1, c, q2);
                (m.phi, m.derivative)
            }
            PairDual::Mixed { phi, psi, rule } => {
                let a = q1.max(0.0).sqrt();
                let (l, m) = if a > 0.0 {
                    let l = c / a;
                    (l, (q2 - l * l).max(0.0).sqrt())
                } else {
                    (0.0, q2.max(0.0).sqrt())
                };
                let (mut s, mut sd) = (0.0, 0.0);
                for (&zi, &wi) in rule.nodes().iter().zip(rule.weights()) {
                    let u = a * zi;
                    let (pu, du) = (phi.phi(u), phi.derivative(u));
                    for (&zj, &wj) in rule.nodes().iter().zip(rule.weights()) {
                        let v = l * zi + m * zj;
                        s += wi * wj * pu * psi.phi(v);
                        sd += wi * wj * du * psi.derivative(v);
                    }
                }
                (s, sd)
            }
        }
    }

    pub(crate) fn eval_slice(&self, q1: &[f64], c: &mut [f64], q2: &[f64], cdot: &mut [f64]) {
        if let PairDual::Same(Dual::ArcCos { a, b, d0 }) = self {
            let (a, b, d0) = (*a, *b, *d0);
            let n = c.len();
            let (q1, q2, cdot) = (&q1[..n], &q2[..n], &mut cdot[..n]);
            let (k1, k2) = (a * a + b * b, 2.0 * a * b);
            let mean = 0.5 * (a + b);
            const INV_2PI: f64 = 0.5 * std::f64::consts::FRAC_1_PI;
            for i in 0..n {
                let s = q1[i].sqrt() * q2[i].sqrt();
                let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                let rho = super::fastmath::correlation(c[i] * inv);
                let theta = super::fastmath::acos(rho);
                let sin = ((1.0 - rho) * (1.0 + rho)).sqrt();
                let cc = s
                    * INV_2PI
                    * (k1 * (sin + (std::f64::consts::PI - theta) * rho)
                        - k2 * (sin - theta * rho));
                let d = INV_2PI * (k1 * (std::f64::consts::PI - theta) + k2 * theta);
                let s1 = if q1[i] > 0.0 { mean } else { d0 };
                let s2 = if q2[i] > 0.0 { mean } else { d0 };
                c[i] = cc;
                cdot[i] = if s > 0.0 { d } else { s1 * s2 };
            }
            return;
        }
        for i in 0..c.len() {
            let (a, b) = self.eval(q1[i], c[i], q2[i]);
            c[i] = a;
            cdot[i] = b;
        }
    }
}

/// E φ'(u), u ~ N(0, q).
pub(crate) fn mean_derivative(act: &Activation, q: f64, rule: &GaussHermite) -> f64 {
    if q <= 0.0 {
        return act.derivative(0.0_f64);
    }
    let s = q.sqrt();
    rule.expect(|z| act.derivative(s * z))
}
