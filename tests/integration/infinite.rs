//! Infinite-width kernels: against neural-tangents 0.6.5, against finite networks of
//! growing width (the empirical NTK and the output covariance converge), and the
//! kernel invariants (symmetric, PSD) over random specs.

use ntk::infinite::{GaussHermite, closed_form, quadrature};
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, InfiniteWidth, Mlp, MlpSpec, NtkModel, Parameterization, empirical_ntk,
    infinite_width, infinite_width_layers, width_convergence,
};

use crate::common::{self, prec, rel_err};

/// The spec of a neural-tangents reference case.
fn reference_spec(case: &serde_json::Value) -> MlpSpec {
    let hidden = case["hidden"].as_array().expect("hidden");
    let acts = case["activations"].as_array().expect("activations");
    let mut spec = MlpSpec::new(case["input_dim"].as_u64().expect("input_dim") as usize)
        .weight_std(case["weight_std"].as_f64().expect("weight_std"))
        .bias_std(case["bias_std"].as_f64().expect("bias_std"));
    for (w, a) in hidden.iter().zip(acts) {
        let act = match a.as_str().expect("activation name") {
            "relu" => Activation::Relu,
            "erf" => Activation::Erf,
            "identity" => Activation::Identity,
            other => panic!("unknown activation {other}"),
        };
        spec = spec.hidden(w.as_u64().expect("width") as usize, act);
    }
    spec
}

/// Largest entrywise relative error max |a − b| / max |b|.
fn max_rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).amax() / b.amax()
}

#[test]
fn matches_neural_tangents_on_every_case() {
    let reference = common::reference();
    let cases = reference["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let spec = reference_spec(case);
        let x = common::matrix(&case["x"]);
        let x2 = common::matrix(&case["x2"]);
        let k = infinite_width(&spec, &x, &x).expect("kernels x, x");
        let k2 = infinite_width(&spec, &x2, &x).expect("kernels x2, x");
        for (what, ours, theirs) in [
            ("nngp", &k.nngp, common::matrix(&case["nngp"])),
            ("ntk", &k.ntk, common::matrix(&case["ntk"])),
            ("nngp_x2_x", &k2.nngp, common::matrix(&case["nngp_x2_x"])),
            ("ntk_x2_x", &k2.ntk, common::matrix(&case["ntk_x2_x"])),
        ] {
            let fro = rel_err(ours, &theirs);
            let ent = max_rel(ours, &theirs);
            println!("{name} {what}: Frobenius {fro:.2e}, max entry {ent:.2e}");
            assert!(
                fro <= prec::NEURAL_TANGENTS && ent <= prec::NEURAL_TANGENTS,
                "{name} {what}: relative error {fro:e} (max entry {ent:e})"
            );
        }
    }
}

/// C and Ċ by the 2-D trapezoidal rule with step `h` on [−10, 10]² in the Cholesky
/// coordinates: an independent reference, exponentially accurate for analytic φ.
fn trapezoid_moments(act: &Activation, q1: f64, c: f64, q2: f64, h: f64) -> (f64, f64) {
    let a = q1.sqrt();
    let l = c / a;
    let m = (q2 - l * l).max(0.0).sqrt();
    let k = (10.0 / h).round() as i64;
    let w = |z: f64| h * (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let (mut phi, mut der) = (0.0, 0.0);
    for i in -k..=k {
        let zi = i as f64 * h;
        let (mut sp, mut sd) = (0.0, 0.0);
        for j in -k..=k {
            let zj = j as f64 * h;
            let v = l * zi + m * zj;
            sp += w(zj) * act.phi(v);
            sd += w(zj) * act.derivative(v);
        }
        phi += w(zi) * act.phi(a * zi) * sp;
        der += w(zi) * act.derivative(a * zi) * sd;
    }
    (phi, der)
}

/// Largest error of the n-point Gauss–Hermite rule against the trapezoidal reference,
/// relative to the Cauchy–Schwarz scale √(C(x,x) C(x̄,x̄)) (same for Ċ), at variance
/// `q` and correlations −0.9, 0.3, 0.99, 1.
fn quadrature_error(act: &Activation, q: f64, degree: usize) -> f64 {
    let rule = GaussHermite::new(degree).expect("rule");
    let (dc, dd) = trapezoid_moments(act, q, q, q, 0.1);
    let mut worst: f64 = 0.0;
    for rho in [-0.9, 0.3, 0.99, 1.0] {
        let (rc, rd) = trapezoid_moments(act, q, rho * q, q, 0.1);
        let g = quadrature(act, q, rho * q, q, &rule).expect("quadrature");
        worst = worst
            .max((g.phi - rc).abs() / dc)
            .max((g.derivative - rd).abs() / dd);
    }
    worst
}

/// The default degree reaches ~1e-9 on Tanh up to variance 1 and on Sigmoid and
/// Softplus up to variance 4 (σ(x) = (1 + tanh(x/2))/2, so Sigmoid at q is Tanh at
/// q/4); 25 nodes leave errors of 1e-4..1e-3 there. Tanh at larger variances needs more
/// nodes (its poles at ±iπ/2 come closer to the real line in z as q grows).
#[test]
fn quadrature_accuracy_on_smooth_activations() {
    let default = GaussHermite::DEFAULT_DEGREE;
    for (act, q) in [
        (Activation::Tanh, 0.5),
        (Activation::Tanh, 1.0),
        (Activation::Sigmoid, 4.0),
        (Activation::Softplus, 4.0),
    ] {
        let coarse = quadrature_error(&act, q, 25);
        let fine = quadrature_error(&act, q, default);
        println!("{act:?} q = {q}: 25 nodes {coarse:.1e}, {default} nodes {fine:.1e}");
        assert!(fine <= 1e-8, "{act:?} q = {q}: {fine:e} with {default} nodes");
    }
    let tanh2 = quadrature_error(&Activation::Tanh, 2.0, 200);
    println!("Tanh q = 2: 200 nodes {tanh2:.1e}");
    assert!(tanh2 <= 1e-8);
}
