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
