//! Fixtures shared by the unit tests of the duals: the default rules, and any pair's
//! moments by numerical integration.

use std::sync::Arc;

use crate::activation::Activation;
use crate::infinite::expectation::{Rules, Side, pair_moments};
use crate::infinite::quadrature::GaussHermite;

use super::pair::{phi_and_derivative, smoothness};

pub(super) fn rules() -> Rules {
    Rules::up_to(&GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap())
}

pub(super) fn default_rule() -> Arc<GaussHermite> {
    GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap()
}

/// (C, Ċ) of any pair by numerical integration, whatever closed form it has: the
/// integrator is checked against an independent trapezoidal rule in
/// `tests/integration/infinite.rs`.
pub(super) fn numerical(
    phi: &Activation,
    psi: &Activation,
    q1: f64,
    c: f64,
    q2: f64,
) -> (f64, f64) {
    fn side(act: &Activation) -> Side<impl Fn(f64) -> (f64, f64) + '_> {
        Side {
            eval: move |x: f64| phi_and_derivative(act, x),
            smoothness: smoothness(act),
        }
    }
    pair_moments(&side(phi), &side(psi), q1, c, q2, &rules())
}

/// |a − b| ≤ tol · scale, with a message.
pub(super) fn assert_close(what: &str, a: f64, b: f64, scale: f64, tol: f64) {
    assert!(
        (a - b).abs() <= tol * scale,
        "{what}: {a} vs {b} (error {:e} of {scale:e})",
        (a - b).abs()
    );
}
