//! Infinite-width kernels: against neural-tangents 0.6.5 (ReLU, Erf, identity,
//! LeakyReLU, Abs, GELU; NTK and standard parameterization), through the kernel
//! contract's checks for kernel functions (transposition, PSD, equal-size batches,
//! blocks), against finite networks of growing width (the empirical NTK and the
//! output covariance converge), and PSD over random specs.

use ntk::infinite::{GaussHermite, closed_form, gaussian_moments, quadrature};
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, InfiniteWidth, Mlp, MlpSpec, NtkModel, Parameterization, empirical_ntk,
    infinite_width, infinite_width_groups, width_convergence,
};

use crate::common::{self, rel_err};
use crate::contract::{self, Batches, Named};
use crate::prec;

/// The spec of a neural-tangents reference case (`parameterization` defaults to NTK).
fn reference_spec(case: &serde_json::Value) -> MlpSpec {
    let hidden = case["hidden"].as_array().expect("hidden");
    let acts = case["activations"].as_array().expect("activations");
    let parameterization = match case["parameterization"].as_str() {
        None | Some("ntk") => Parameterization::Ntk,
        Some("standard") => Parameterization::Standard,
        Some(other) => panic!("unknown parameterization {other}"),
    };
    let mut spec = MlpSpec::new(case["input_dim"].as_u64().expect("input_dim") as usize)
        .weight_std(case["weight_std"].as_f64().expect("weight_std"))
        .bias_std(case["bias_std"].as_f64().expect("bias_std"))
        .parameterization(parameterization);
    for (w, a) in hidden.iter().zip(acts) {
        let name = a.as_str().expect("activation name");
        let act = match name {
            "relu" => Activation::Relu,
            "erf" => Activation::Erf,
            "identity" => Activation::Identity,
            "abs" => Activation::Abs,
            "gelu" => Activation::Gelu,
            _ => match name.strip_prefix("leaky_relu_") {
                Some(slope) => Activation::LeakyRelu(slope.parse().expect("slope")),
                None => panic!("unknown activation {name}"),
            },
        };
        spec = spec.hidden(w.as_u64().expect("width") as usize, act);
    }
    spec
}

/// Compares every reference case of `data` with `infinite_width`: entry by entry,
/// relative to the largest entry, to [`prec::NEURAL_TANGENTS_ROUND_OFF`], except
/// on the pair of rows 0 and 1 of `x`, whose correlation is exactly ±1 (arccos
/// amplifies round-off there; the README), to [`prec::NEURAL_TANGENTS`]. Returns the
/// number of cases.
fn check_reference_cases(data: &serde_json::Value) -> usize {
    let cases = data["cases"].as_array().expect("cases");
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let spec = reference_spec(case);
        let x = common::matrix(&case["x"]);
        let x2 = common::matrix(&case["x2"]);
        let k = infinite_width(&spec, &x, &x).expect("kernels x, x");
        let k2 = infinite_width(&spec, &x2, &x).expect("kernels x2, x");
        for (what, ours, theirs, same_batch) in [
            ("nngp", &k.nngp, common::matrix(&case["nngp"]), true),
            ("ntk", &k.ntk, common::matrix(&case["ntk"]), true),
            (
                "nngp_x2_x",
                &k2.nngp,
                common::matrix(&case["nngp_x2_x"]),
                false,
            ),
            (
                "ntk_x2_x",
                &k2.ntk,
                common::matrix(&case["ntk_x2_x"]),
                false,
            ),
        ] {
            assert_eq!(ours.shape(), theirs.shape(), "{name} {what}");
            let scale = theirs.amax();
            let (mut worst, mut worst_parallel) = (0.0_f64, 0.0_f64);
            for i in 0..theirs.nrows() {
                for j in 0..theirs.ncols() {
                    let e = (ours[(i, j)] - theirs[(i, j)]).abs() / scale;
                    if same_batch && i != j && i < 2 && j < 2 {
                        worst_parallel = worst_parallel.max(e);
                    } else {
                        worst = worst.max(e);
                    }
                }
            }
            println!("{name} {what}: {worst:.1e} (correlation ±1 pair: {worst_parallel:.1e})");
            assert!(
                worst <= prec::NEURAL_TANGENTS_ROUND_OFF,
                "{name} {what}: relative error {worst:e}"
            );
            assert!(
                worst_parallel <= prec::NEURAL_TANGENTS,
                "{name} {what}: relative error {worst_parallel:e} on the correlation ±1 pair"
            );
        }
    }
    cases.len()
}

#[test]
fn matches_neural_tangents_on_every_case() {
    assert_eq!(check_reference_cases(&common::reference()), 4);
}

/// LeakyReLU (slopes 0.2 and −0.5), Abs, and the standard parameterization with
/// ReLU, Erf and GELU, against neural-tangents.
#[test]
fn matches_neural_tangents_on_leaky_relu_abs_and_standard_parameterization() {
    assert_eq!(check_reference_cases(&common::more_mlps()), 5);
}

/// C and Ċ by the trapezoidal rule in standardised coordinates, written independently
/// of the library's rules: v ~ N(0, q2) outside (z₁ ∈ [−11, 11]) and
/// u | v ~ N(c v/q2, q1 − c²/q2) inside (z₂ ∈ [−11, 11]), each with a step small
/// enough for φ's features at scale 1/σ (the trapezoidal rule is exponentially accurate
/// for integrands analytic in a strip: for Tanh at step 0.2/σ its error is ~e^{−49}).
fn trapezoid_moments(act: &Activation, q1: f64, c: f64, q2: f64) -> (f64, f64) {
    let density = |z: f64| (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let nodes = |sd: f64| {
        let h = 0.2 / sd.max(1.0);
        let k = (11.0 / h).ceil() as i64;
        (-k..=k).map(move |i| (i as f64 * h, h * density(i as f64 * h)))
    };
    let sd2 = q2.sqrt();
    let kappa = if q2 > 0.0 { c / q2 } else { 0.0 };
    let s = (q1 - kappa * c).max(0.0).sqrt();
    let (mut phi, mut der) = (0.0, 0.0);
    for (z1, w1) in nodes(sd2) {
        let v = sd2 * z1;
        let (mut sp, mut sd) = (0.0, 0.0);
        if s > 0.0 {
            for (z2, w2) in nodes(s) {
                let u = kappa * v + s * z2;
                sp += w2 * act.phi(u);
                sd += w2 * act.derivative(u);
            }
        } else {
            sp = act.phi(kappa * v);
            sd = act.derivative(kappa * v);
        }
        phi += w1 * act.phi(v) * sp;
        der += w1 * act.derivative(v) * sd;
    }
    (phi, der)
}

/// Largest error of [`gaussian_moments`] against the trapezoidal reference at variances
/// (q, q) and (q, 4q), relative to the Cauchy–Schwarz scale √(C(x,x) C(x̄,x̄)) (the same
/// for Ċ), over correlations from −1 to 1.
fn moments_error(act: &Activation, q: f64) -> f64 {
    let mut worst: f64 = 0.0;
    for (q1, q2) in [(q, q), (q, 4.0 * q)] {
        let (d1, e1) = trapezoid_moments(act, q1, q1, q1);
        let (d2, e2) = trapezoid_moments(act, q2, q2, q2);
        let (sc, sd) = ((d1 * d2).sqrt(), (e1 * e2).sqrt());
        for rho in [-1.0, -0.9, 0.0, 0.5, 0.9, 0.99, 0.9999, 1.0] {
            let c = rho * q1.sqrt() * q2.sqrt();
            let (rc, rd) = trapezoid_moments(act, q1, c, q2);
            let g = gaussian_moments(act, q1, c, q2).expect("moments");
            worst = worst
                .max((g.phi_phi - rc).abs() / sc)
                .max((g.dphi_dphi - rd).abs() / sd);
        }
    }
    worst
}

/// The Gaussian expectations of activations without a closed form are accurate to
/// 1e-11 at every variance (the fixed Gauss–Hermite rule is off by 59% for Tanh at
/// variance 100).
#[test]
fn numerical_moments_are_accurate_at_any_variance() {
    for act in common::numerical_activations() {
        for q in [0.01, 0.3, 1.0, 4.0, 25.0, 100.0] {
            let err = moments_error(&act, q);
            println!("{act} q = {q}: {err:.1e}");
            assert!(
                err <= prec::QUADRATURE_SMOOTH,
                "{act} at variance {q}: {err:e}"
            );
        }
    }
}

/// The fixed Gauss–Hermite tensor rule converges fast at small variance, slowly at
/// large (the reason `gaussian_moments` does not use it alone there).
#[test]
fn fixed_rule_is_accurate_only_at_small_variance() {
    let rule = GaussHermite::new(GaussHermite::DEFAULT_DEGREE).expect("rule");
    let error = |q: f64| {
        let (r, _) = trapezoid_moments(&Activation::Tanh, q, 0.3 * q, q);
        let g = quadrature(&Activation::Tanh, q, 0.3 * q, q, &rule).expect("quadrature");
        (g.phi_phi - r).abs() / trapezoid_moments(&Activation::Tanh, q, q, q).0
    };
    assert!(error(0.5) < prec::ROUND_OFF_DEEP);
    assert!(error(25.0) > 1e-6, "{}", error(25.0));
}

/// A small batch of inputs with varied norms and a parallel pair.
fn inputs(n: usize, d: usize, seed: u64) -> DMatrix<f64> {
    use ntk::rand::RngExt;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = DMatrix::from_fn(n, d, |_, _| rng.random_range(-1.0..1.0));
    if n > 1 {
        let first = x.row(0).clone_owned() * 1.5;
        x.set_row(1, &first);
    }
    x
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let spec = MlpSpec::new(3).hidden(16, Activation::Tanh);
    let x = inputs(4, 3, 1);
    let wrong = inputs(4, 2, 1);
    assert!(matches!(
        infinite_width(&spec, &wrong, &wrong),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        infinite_width(&spec, &x, &wrong),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut nan = x.clone();
    nan[(2, 1)] = f64::NAN;
    assert!(matches!(
        infinite_width(&spec, &x, &nan),
        Err(Error::NonFinite {
            argument: "x2",
            row: 2,
            col: 1
        })
    ));
    let mut inf = x.clone();
    inf[(0, 0)] = f64::INFINITY;
    assert!(matches!(
        infinite_width(&spec, &inf, &x),
        Err(Error::NonFinite { .. })
    ));
    let huge = x.map(|v| v * 1e200);
    assert!(matches!(
        infinite_width(&spec, &huge, &huge),
        Err(Error::NonFiniteResult {
            result: "infinite_width",
            ..
        })
    ));
    for bad in [
        spec.clone().weight_std(-1.0),
        spec.clone().bias_std(f64::NAN),
        MlpSpec::new(0).hidden(4, Activation::Relu),
        MlpSpec::new(3).hidden(0, Activation::Relu),
        MlpSpec::new(3).hidden(4, Activation::LeakyRelu(f64::INFINITY)),
    ] {
        assert!(matches!(
            infinite_width(&bad, &x, &x),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(infinite_width_groups(&bad, &x, &x).is_err());
        assert!(width_convergence(&bad, &x, &[4, 8], &[0]).is_err());
    }
    let config = InfiniteWidth::new(&spec).expect("valid spec");
    assert!(config.clone().quadrature_degree(0).is_err());
    assert!(config.clone().quadrature_degree(100_000).is_err());
    assert!(width_convergence(&spec, &x, &[8], &[0]).is_err());
    assert!(width_convergence(&spec, &x, &[8, 16], &[]).is_err());
    assert!(width_convergence(&spec, &x, &[0, 16], &[1]).is_err());
}

#[test]
fn zero_norm_inputs_give_finite_kernels() {
    let x = DMatrix::from_row_slice(3, 2, &[0.0, 0.0, 1.0, -0.5, 0.0, 0.0]);
    for act in Activation::builtins() {
        for sb in [0.0, 0.3] {
            let spec = MlpSpec::new(2)
                .hidden(8, act.clone())
                .hidden(8, act.clone())
                .bias_std(sb);
            let k: ntk::Kernels = infinite_width(&spec, &x, &x).expect("kernels");
            assert!(k.nngp.iter().chain(k.ntk.iter()).all(|v| v.is_finite()));
            common::assert_psd(&k.ntk, prec::PSD_TRACE_FRACTION);
            common::assert_psd(&k.nngp, prec::PSD_TRACE_FRACTION);
        }
    }
}

/// Σ and Θ̊ (and every layer's share) go through the contract's checks for kernel
/// functions: κ(x2, x1) = κ(x1, x2)ᵀ, symmetric PSD on one batch, two different
/// batches of equal size and subsets of a large batch (three column blocks) against
/// blocks of one kernel, the mirrored path against the general one. The layer shares
/// sum to Θ̊. Closed forms agree to round-off; quadrature (Tanh) only to its accuracy
/// where the two inputs swap roles, and on a smaller large batch (its cost per entry
/// is the square of the degree).
#[test]
fn infinite_width_kernels_satisfy_the_kernel_contract() {
    let closed = [
        MlpSpec::new(4)
            .hidden(8, Activation::Relu)
            .hidden(8, Activation::Erf)
            .bias_std(0.2)
            .weight_std(1.3),
        MlpSpec::new(3)
            .hidden(8, Activation::LeakyRelu(-0.5))
            .hidden(8, Activation::Abs)
            .weight_std(1.1),
        MlpSpec::new(3)
            .hidden(16, Activation::Gelu)
            .hidden(32, Activation::Sin)
            .bias_std(0.3)
            .parameterization(Parameterization::Standard),
    ];
    let quadrature = MlpSpec::new(3)
        .hidden(8, Activation::Tanh)
        .hidden(8, Activation::Relu)
        .bias_std(0.1);
    let cases = closed
        .iter()
        .map(|s| (s, prec::EXACT_F64, contract::LARGE_ROWS))
        .chain([(&quadrature, prec::QUADRATURE, 12)]);
    for (seed, (spec, tol, large)) in cases.enumerate() {
        let batches = Batches::with_large_rows(spec.input_dim(), 80 + seed as u64, large);
        let kernels = |a: &DMatrix<f64>, b: &DMatrix<f64>| -> ntk::Result<Named> {
            let k = infinite_width(spec, a, b)?;
            let mut all = vec![("nngp".to_string(), k.nngp), ("ntk".to_string(), k.ntk)];
            for (l, layer) in infinite_width_groups(spec, a, b)?.into_iter().enumerate() {
                all.push((format!("layer {l} weights"), layer.weights));
                if let Some(bias) = layer.bias {
                    all.push((format!("layer {l} bias"), bias));
                }
            }
            Ok(all)
        };
        let worst = contract::check_kernel_fn(&batches, 1, tol, kernels)
            .unwrap_or_else(|v| panic!("{spec:?}: {v}"));
        for (a, b) in [(&batches.x1, &batches.x2), (&batches.x1, &batches.x3)] {
            let ntk = infinite_width(spec, a, b).expect("kernels").ntk;
            let sum = infinite_width_groups(spec, a, b)
                .expect("layers")
                .iter()
                .fold(DMatrix::zeros(a.nrows(), b.nrows()), |acc, l| {
                    acc + l.total()
                });
            assert!(
                rel_err(&sum, &ntk) <= prec::EXACT_F64,
                "{spec:?}: the layer shares do not sum to the NTK"
            );
        }
        println!("{spec:?}: worst relative error {worst:.1e}");
    }
}

/// The kernels are computed in f64 and rounded: what an f32 user gets is exactly the
/// f64 kernels of the same (f32) inputs, rounded to f32 — this checks that the inputs
/// are read exactly and the results rounded once, not an f32 computation.
#[test]
fn f32_kernels_are_the_f64_kernels_rounded() {
    let spec = MlpSpec::new(3)
        .hidden(8, Activation::Erf)
        .hidden(8, Activation::Relu)
        .bias_std(0.1);
    let x32 = inputs(6, 3, 4).map(|v| v as f32);
    let k32 = infinite_width(&spec, &x32, &x32).expect("f32");
    let k64 = infinite_width(&spec, &x32.map(f64::from), &x32.map(f64::from)).expect("f64");
    assert_eq!(k32.ntk, k64.ntk.map(|v| v as f32));
    assert_eq!(k32.nngp, k64.nngp.map(|v| v as f32));
}

/// Kernels beyond f32's range are an error naming the entry, not ∞.
#[test]
fn f32_overflow_is_an_error() {
    let spec = MlpSpec::new(3).hidden(8, Activation::Relu);
    let x = inputs(4, 3, 4).map(|v| (v * 1e20) as f32);
    let err = infinite_width(&spec, &x, &x).expect_err("overflows f32");
    assert!(err.to_string().contains("f32"), "{err}");
    // The same inputs in f64 are fine.
    assert!(infinite_width(&spec, &x.map(f64::from), &x.map(f64::from)).is_ok());
}

/// Bias-free networks of the ReLU family are positively homogeneous, so
/// Θ̊(sx, sx̄) = s²Θ̊(x, x̄) and Σ(sx, sx̄) = s²Σ(x, x̄): at s = 1e±100 too.
#[test]
fn relu_networks_are_homogeneous_at_extreme_scales() {
    let x = inputs(5, 3, 21);
    for act in [
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Abs,
    ] {
        let spec = MlpSpec::new(3)
            .hidden(8, act.clone())
            .hidden(8, act.clone())
            .weight_std(1.3);
        let k = infinite_width(&spec, &x, &x).expect("unit scale");
        for s in [1e-100, 1e100] {
            let ks = infinite_width(&spec, &x.map(|v| v * s), &x.map(|v| v * s)).expect("scaled");
            // Compared at unit scale: the Frobenius norm of a 1e200 matrix overflows.
            let e_ntk = rel_err(&ks.ntk.map(|v| v / s / s), &k.ntk);
            let e_nngp = rel_err(&ks.nngp.map(|v| v / s / s), &k.nngp);
            assert!(
                e_ntk <= prec::ROUND_OFF,
                "{act:?} NTK at scale {s:e}: {e_ntk:e}"
            );
            assert!(
                e_nngp <= prec::ROUND_OFF,
                "{act:?} NNGP at scale {s:e}: {e_nngp:e}"
            );
        }
    }
}

/// Deep bias-free ReLU networks: at σ_w = 1 each layer halves the variance,
/// Σ(x, x) = q/2^L and Θ̊(x, x) = (L + 1) q/2^L with q = |x|²/d, representable far
/// beyond depth 540; at σ_w = 2 it doubles, Σ = 2^L σ_w² q and Θ̊ = (L + 1) Σ, until
/// that overflows, which is then an error.
#[test]
fn deep_relu_networks_give_the_exact_diagonal() {
    let x = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, -0.5, 0.25]);
    let q: Vec<f64> = (0..2).map(|i| x.row(i).norm_squared() / 2.0).collect();
    let deep = |depth: usize, sw: f64| {
        (0..depth)
            .fold(MlpSpec::new(2), |s, _| s.hidden(4, Activation::Relu))
            .weight_std(sw)
    };
    for depth in [540, 1000] {
        let k = infinite_width(&deep(depth, 1.0), &x, &x).expect("representable");
        for (i, &qi) in q.iter().enumerate() {
            let sigma = qi * 0.5_f64.powi(depth as i32);
            let theta = (depth + 1) as f64 * sigma;
            assert!(
                (k.nngp[(i, i)] - sigma).abs() <= prec::ROUND_OFF_DEEP * sigma,
                "Σ at depth {depth}"
            );
            assert!(
                (k.ntk[(i, i)] - theta).abs() <= prec::ROUND_OFF_DEEP * theta,
                "Θ̊ at depth {depth}"
            );
        }
    }
    let k = infinite_width(&deep(520, 2.0), &x, &x).expect("6.9e156 is representable");
    for (i, &qi) in q.iter().enumerate() {
        let sigma = 4.0 * qi * 2.0_f64.powi(520);
        let theta = 521.0 * sigma;
        assert!((k.nngp[(i, i)] - sigma).abs() <= prec::ROUND_OFF_DEEP * sigma);
        assert!((k.ntk[(i, i)] - theta).abs() <= prec::ROUND_OFF_DEEP * theta);
    }
    let err = infinite_width(&deep(1100, 2.0), &x, &x).expect_err("2^1100 overflows");
    assert!(err.to_string().contains("overflows"), "{err}");
}

/// Erf and GELU at input norms ~1e8 and ~1e9: finite, PSD kernels, and GELU's NTK
/// diagonal positive (their closed forms used to cancel there).
#[test]
fn erf_and_gelu_kernels_at_huge_inputs_are_valid() {
    let mut x = inputs(6, 3, 22);
    let near = x.row(0).map(|v| v * (1.0 + 1e-9));
    x.set_row(2, &near);
    for (act, scale) in [(Activation::Erf, 1e8), (Activation::Gelu, 1e9)] {
        let spec = MlpSpec::new(3)
            .hidden(8, act.clone())
            .hidden(8, act.clone());
        let k =
            infinite_width(&spec, &x.map(|v| v * scale), &x.map(|v| v * scale)).expect("kernels");
        common::assert_psd(&k.nngp, prec::PSD_TRACE_FRACTION);
        common::assert_psd(&k.ntk, prec::PSD_TRACE_FRACTION);
        assert!((0..6).all(|i| k.ntk[(i, i)] > 0.0), "{act:?}");
    }
}

/// One Tanh layer at σ_w = 5 (pre-activation variance 25): the kernels agree with the
/// independent trapezoidal reference (the fixed 160-point rule was 6% off here).
#[test]
fn tanh_kernels_at_large_variance_match_the_reference() {
    let x = DMatrix::from_row_slice(3, 2, &[1.0, 1.0, 1.4, 0.2, -0.6, 1.3]);
    let spec = MlpSpec::new(2).hidden(8, Activation::Tanh).weight_std(5.0);
    let k = infinite_width(&spec, &x, &x).expect("kernels");
    let gram = &x * x.transpose() * (25.0 / 2.0);
    for i in 0..3 {
        for j in 0..3 {
            let (c, cdot) =
                trapezoid_moments(&Activation::Tanh, gram[(i, i)], gram[(i, j)], gram[(j, j)]);
            let nngp = 25.0 * c;
            let ntk = nngp + 25.0 * cdot * gram[(i, j)];
            assert!(
                (k.nngp[(i, j)] - nngp).abs() <= prec::QUADRATURE_SMOOTH * 25.0,
                "Σ({i}, {j})"
            );
            assert!(
                (k.ntk[(i, j)] - ntk).abs() <= prec::QUADRATURE_SMOOTH * 25.0,
                "Θ̊({i}, {j})"
            );
        }
    }
}

/// A custom φ' that is NaN past |x| > 3 is an error naming the activation and layer.
#[test]
fn nan_from_a_custom_activation_is_named() {
    let bad = Activation::custom(
        "clipped",
        |x: f64| x.tanh(),
        |x: f64| {
            if x.abs() > 3.0 {
                f64::NAN
            } else {
                1.0 - x.tanh().powi(2)
            }
        },
    );
    let spec = MlpSpec::new(2).hidden(8, Activation::Relu).hidden(8, bad);
    let x = DMatrix::from_row_slice(2, 2, &[1.0, 0.5, -0.3, 0.8]);
    let err = infinite_width(&spec, &x, &x).expect_err("NaN");
    let message = err.to_string();
    assert!(
        message.contains("clipped")
            && message.contains("hidden layer 2")
            && message.contains("NaN"),
        "{message}"
    );
    assert!(!message.contains("norm is too large"), "{message}");
}

/// Per-layer limits: they sum to Θ̊, and each is the large-width limit of the finite
/// network's per-layer kernels (weights and biases separately).
#[test]
fn layer_decomposition_is_the_limit_of_layer_kernels() {
    for parameterization in [Parameterization::Ntk, Parameterization::Standard] {
        let spec = MlpSpec::new(3)
            .hidden(2048, Activation::Relu)
            .hidden(2048, Activation::Erf)
            .weight_std(1.4)
            .bias_std(0.3)
            .outputs(4)
            .parameterization(parameterization);
        let x = inputs(5, 3, 6);
        let limits = infinite_width_groups(&spec, &x, &x).expect("layers");
        let total = infinite_width(&spec, &x, &x).expect("kernels").ntk;
        let sum = limits
            .iter()
            .fold(DMatrix::zeros(5, 5), |acc, l| acc + l.total());
        assert!(rel_err(&sum, &total) <= prec::EXACT_F64);

        let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(11)).expect("init");
        let finite = net.group_kernels(&x, &x).expect("layer kernels");
        assert_eq!(finite.len(), limits.len());
        for (l, (f, lim)) in finite.iter().zip(&limits).enumerate() {
            let ew = rel_err(&f.weights, &lim.weights);
            let eb = rel_err(
                f.bias.as_ref().expect("finite bias"),
                lim.bias.as_ref().expect("limit bias"),
            );
            println!("{parameterization:?} layer {l}: weights {ew:.3}, bias {eb:.3}");
            // Width 2048 with 4 outputs averaged: fluctuations of a few percent.
            assert!(ew < 0.1 && eb < 0.1, "layer {l}: {ew}, {eb}");
        }
        let theta = empirical_ntk(&net, &x, &x).expect("empirical");
        let err = rel_err(&theta, &total);
        println!("{parameterization:?} total: {err:.4}");
        assert!(err < 0.08);
    }
}

/// Tensor Programs II, Figure 1: the relative NTK error falls like n^{−1/2}.
#[test]
fn empirical_ntk_converges_at_rate_one_over_sqrt_width() {
    let x = inputs(10, 4, 7);
    let widths = [64, 128, 256, 512, 1024, 2048];
    let seeds = [1, 2, 3, 4, 5, 6, 7, 8];
    for spec in [
        MlpSpec::new(4)
            .hidden(1, Activation::Relu)
            .hidden(1, Activation::Relu)
            .bias_std(0.1),
        MlpSpec::new(4)
            .hidden(1, Activation::Erf)
            .hidden(1, Activation::Erf)
            .weight_std(1.5),
    ] {
        let study = width_convergence(&spec, &x, &widths, &seeds).expect("study");
        for p in &study.points {
            println!("width {:5}: mean {:.4} ± {:.4}", p.width, p.mean, p.std);
        }
        println!("slope {:.3}", study.slope);
        common::assert_root_width_rate(&study, 0.2);
    }
}

/// The output covariance over random initialisations is the NNGP kernel Σ: the sample
/// mean of f_c(x_i) f_c(x_j) over seeds and outputs c lies within 4.5 standard errors
/// of Σ(x_i, x_j) at every entry.
#[test]
fn output_covariance_over_seeds_is_the_nngp_kernel() {
    let k = 25;
    let spec = MlpSpec::new(3)
        .hidden(512, Activation::Tanh)
        .hidden(512, Activation::Relu)
        .weight_std(1.3)
        .bias_std(0.2)
        .outputs(k);
    let x = inputs(5, 3, 8);
    let sigma = infinite_width(&spec, &x, &x).expect("kernels").nngp;
    let seeds = 80;
    let n = x.nrows();
    let mut sum = DMatrix::<f64>::zeros(n, n);
    let mut sum_sq = DMatrix::<f64>::zeros(n, n);
    for seed in 0..seeds {
        let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(seed)).expect("init");
        let f = net.forward(&x).expect("forward");
        for c in 0..k {
            let col = f.column(c);
            let outer = col * col.transpose();
            sum_sq += outer.map(|v| v * v);
            sum += outer;
        }
    }
    let samples = (seeds as usize * k) as f64;
    let mean = &sum / samples;
    for i in 0..n {
        for j in 0..n {
            let var = (sum_sq[(i, j)] / samples - mean[(i, j)].powi(2)) * samples / (samples - 1.0);
            let se = (var / samples).sqrt();
            let z = (mean[(i, j)] - sigma[(i, j)]) / se;
            assert!(
                z.abs() < 4.5,
                "entry ({i}, {j}): mean {} vs Σ {} ({z:.2} standard errors)",
                mean[(i, j)],
                sigma[(i, j)]
            );
        }
    }
    assert!(rel_err(&mean, &sigma) < 0.1);
}

mod properties {
    //! Property tests with a fixed seed and small sizes.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    fn config(cases: u32) -> Config {
        Config {
            cases,
            rng_seed: RngSeed::Fixed(0x5eed),
            failure_persistence: None,
            ..Config::default()
        }
    }

    fn activation() -> impl Strategy<Value = Activation> {
        prop_oneof![
            (0usize..10).prop_map(|i| Activation::builtins()[i].clone()),
            Just(Activation::custom(
                "sin x + x/2",
                |x| x.sin() + 0.5 * x,
                |x| x.cos() + 0.5
            )),
        ]
    }

    fn spec() -> impl Strategy<Value = MlpSpec> {
        (
            2usize..4,
            prop::collection::vec(activation(), 1..4),
            0.5f64..1.5,
            prop_oneof![Just(0.0), 0.05f64..0.5],
            any::<bool>(),
        )
            .prop_map(|(d, acts, sw, sb, standard)| {
                let p = if standard {
                    Parameterization::Standard
                } else {
                    Parameterization::Ntk
                };
                acts.into_iter()
                    .enumerate()
                    .fold(MlpSpec::new(d), |s, (i, a)| s.hidden(16 + 8 * i, a))
                    .weight_std(sw)
                    .bias_std(sb)
                    .parameterization(p)
            })
    }

    proptest! {
        #![proptest_config(config(24))]

        /// Σ and Θ̊ on one batch are PSD, and the mirrored x1 = x2 path agrees with the
        /// general one. (Quadrature kernels are PSD up to the quadrature error, which
        /// grows with the pre-activation variance: the specs keep variances moderate
        /// and use 200 nodes.)
        #[test]
        fn kernels_are_psd_and_paths_agree(spec in spec(), n in 2usize..8, seed in 0u64..1000) {
            let x = inputs(n, spec.input_dim(), seed);
            let config = InfiniteWidth::new(&spec).expect("spec").quadrature_degree(200).expect("degree");
            let k = config.kernels(&x, &x).expect("kernels");
            common::assert_psd(&k.nngp, prec::PSD_TRACE_FRACTION);
            common::assert_psd(&k.ntk, prec::PSD_TRACE_FRACTION);
            // The x1 ≠ x2 path gives the same numbers.
            let y = x.clone().insert_row(n, 0.25);
            let k2 = config.kernels(&x, &y).expect("kernels");
            prop_assert!(rel_err(&k2.ntk.columns(0, n).into_owned(), &k.ntk) <= prec::EXACT_F64);
            prop_assert!(rel_err(&k2.nngp.columns(0, n).into_owned(), &k.nngp) <= prec::EXACT_F64);
        }
    }

    proptest! {
        #![proptest_config(config(12))]

        /// At extreme σ_w (up to 6, the chaotic phase, pre-activation variances in the
        /// hundreds), σ_b and depths, every kernel is finite, symmetric and PSD.
        #[test]
        fn kernels_are_valid_at_extreme_scales(
            acts in prop::collection::vec(activation(), 1..6),
            sw in prop_oneof![0.3f64..1.0, 1.0f64..6.0],
            sb in prop_oneof![Just(0.0), 0.0f64..2.0],
            scale in prop_oneof![Just(1.0), Just(1e-3), Just(1e3)],
            n in 2usize..6,
            seed in 0u64..1000,
        ) {
            let spec = acts
                .into_iter()
                .fold(MlpSpec::new(3), |s, a| s.hidden(8, a))
                .weight_std(sw)
                .bias_std(sb);
            let x = inputs(n, 3, seed).map(|v| v * scale);
            let k = infinite_width(&spec, &x, &x).expect("kernels");
            prop_assert!(k.nngp.iter().chain(k.ntk.iter()).all(|v| v.is_finite()));
            common::assert_psd(&k.nngp, prec::PSD_TRACE_FRACTION);
            common::assert_psd(&k.ntk, prec::PSD_TRACE_FRACTION);
        }
    }

    proptest! {
        #![proptest_config(config(32))]

        /// Closed forms against 2-D Gauss–Hermite quadrature: tightly for the smooth
        /// activations, loosely for ReLU (quadrature converges like 1/n on a kink).
        #[test]
        fn closed_forms_match_quadrature(
            q1 in 0.05f64..3.0,
            q2 in 0.05f64..3.0,
            rho in -1.0f64..=1.0,
        ) {
            let c = rho * (q1 * q2).sqrt();
            let rule = GaussHermite::new(160).expect("rule");
            for (act, tol) in [
                (Activation::Erf, prec::QUADRATURE_SMOOTH),
                (Activation::Gelu, prec::QUADRATURE_SMOOTH),
                (Activation::Sin, prec::QUADRATURE_SMOOTH),
                (Activation::Relu, 1e-2),
            ] {
                let exact = closed_form(&act, q1, c, q2).expect("valid").expect("closed form");
                let quad = quadrature(&act, q1, c, q2, &rule).expect("valid");
                let scale_c = closed_form(&act, q1, q1, q1).expect("valid").expect("cf").phi_phi
                    .max(closed_form(&act, q2, q2, q2).expect("valid").expect("cf").phi_phi);
                prop_assert!(
                    (exact.phi_phi - quad.phi_phi).abs() <= tol * scale_c,
                    "{:?} C: {} vs {}", act, exact.phi_phi, quad.phi_phi
                );
                prop_assert!(
                    (exact.dphi_dphi - quad.dphi_dphi).abs() <= tol.max(prec::QUADRATURE_SMOOTH) * 5.0,
                    "{:?} Ċ: {} vs {}", act, exact.dphi_dphi, quad.dphi_dphi
                );
            }
        }
    }
}

/// Without hidden layers the network is linear: Σ = σ_w² x·x̄/d + σ_b² and Θ̊ = Σ (NTK
/// parameterization) or x·x̄ + 1 (standard, with biases).
#[test]
fn no_hidden_layers_is_a_linear_model() {
    let x = inputs(4, 3, 9);
    let y = inputs(3, 3, 10);
    let gram = &x * y.transpose();
    let spec = MlpSpec::new(3).weight_std(1.3).bias_std(0.4);
    let k = infinite_width(&spec, &x, &y).expect("kernels");
    let sigma = gram.map(|g| 1.69 * g / 3.0 + 0.16);
    assert!(rel_err(&k.nngp, &sigma) <= prec::EXACT_F64);
    assert!(rel_err(&k.ntk, &sigma) <= prec::EXACT_F64);
    let standard = spec.parameterization(Parameterization::Standard);
    let ks = infinite_width(&standard, &x, &y).expect("kernels");
    assert!(rel_err(&ks.nngp, &sigma) <= prec::EXACT_F64);
    assert!(rel_err(&ks.ntk, &gram.map(|g| g + 1.0)) <= prec::EXACT_F64);
}

/// Zero-norm inputs without biases: the first pre-activations are exactly 0. For φ with
/// φ(0) = 0 the input's row of Θ̊ is 0, as for any finite network; for Sigmoid
/// (φ(0) = ½) the next layers see a constant and the row is not 0. Both agree with a
/// wide network.
#[test]
fn zero_norm_inputs_match_a_wide_network() {
    let mut x = inputs(4, 3, 12);
    x.row_mut(2).fill(0.0);
    for act in [
        Activation::LeakyRelu(0.3),
        Activation::Sigmoid,
        Activation::Erf,
    ] {
        let spec = MlpSpec::new(3)
            .hidden(4096, act.clone())
            .hidden(4096, act.clone())
            .outputs(2);
        let limit = infinite_width(&spec, &x, &x).expect("kernels").ntk;
        let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(5)).expect("init");
        let theta = empirical_ntk(&net, &x, &x).expect("empirical");
        let err = rel_err(&theta, &limit);
        let row = (theta.row(2) - limit.row(2)).norm() / limit.amax();
        println!(
            "{act:?}: relative error {err:.4}, zero row {row:.4}, row norm {:.4}",
            limit.row(2).norm()
        );
        assert!(err < 0.05 && row < 0.05, "{act:?}: {err}, {row}");
        if matches!(act, Activation::Sigmoid) {
            assert!(limit.row(2).norm() > 0.1 * limit.amax());
        } else {
            assert!(limit.row(2).amax() < f64::MIN_POSITIVE);
        }
    }
}
