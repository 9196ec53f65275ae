//! Programs are never silently wrong (issue 9's guarantees for MLPs, for programs):
//! sizes that cannot be allocated are errors; NaN and ∞ data are errors in every entry
//! point of the finite network; a value that overflows is an error naming the variable;
//! LayerNorm of a constant vector has a documented value and its gradient is an error;
//! saturated softmax is exact at any logit size; recurrences of thousands of steps
//! neither overflow the stack nor lose accuracy (against an independent recursion);
//! ReLU programs are homogeneous at 1e±100, LayerNorm programs scale-free at 1e±200.

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, GradientDescent, NtkModel, Padding, Program, Readout, Var, empirical_ntk,
    empirical_ntk_block, empirical_ntk_full, infinite_width, infinite_width_block,
    infinite_width_groups, width_convergence,
};

use crate::common::{self, rel_err};
use crate::prec;

/// A small circular 1-D CNN with a flattening readout of 2 outputs and a Transformer:
/// every kind of finite-network variable.
fn programs() -> Vec<Program> {
    let mut cnn = Program::new(8);
    let z: Vec<Var> = (0..4)
        .map(|q| cnn.input(2 * q..2 * q + 2).unwrap())
        .collect();
    let (w, b) = (cnn.weight(1.3).unwrap(), cnn.bias(0.2).unwrap());
    let h: Vec<Var> = cnn
        .conv(w, &z, 3, Padding::Circular)
        .unwrap()
        .into_iter()
        .map(|h| {
            let h = cnn.add_bias(h, b).unwrap();
            cnn.apply(Activation::Tanh, h).unwrap()
        })
        .collect();
    let flat = cnn.concat(&h).unwrap();
    cnn.readout(flat, Readout::new(1.0).outputs(2)).unwrap();
    vec![
        cnn,
        crate::transformer::transformer(3, 2, Activation::Gelu, (1.0, 1.2, 1.0)),
    ]
}

/// The first error of `result`, which must be `Error::NonFinite` at (row, col) of
/// `argument`.
fn assert_non_finite<T: std::fmt::Debug>(
    what: &str,
    result: ntk::Result<T>,
    argument: &str,
    at: (usize, usize),
) {
    match result {
        Err(Error::NonFinite {
            argument: a,
            row,
            col,
        }) => {
            assert_eq!(a, argument, "{what}");
            assert_eq!((row, col), at, "{what}");
        }
        other => panic!("{what}: expected NonFinite({argument}), got {other:?}"),
    }
}

#[test]
fn program_networks_too_wide_to_allocate_are_errors() {
    // A hidden-to-hidden weight at width 2^40 overflows usize; an input-to-hidden one
    // at width 2^44 is 2^45 numbers (256 TB).
    let mut p = Program::new(2);
    let x = p.input(0..2).unwrap();
    let (w0, w1) = (p.weight(1.0).unwrap(), p.weight(1.0).unwrap());
    let h = p.dense(w0, x).unwrap();
    let z = p.apply(Activation::Relu, h).unwrap();
    let h = p.dense(w1, z).unwrap();
    p.output(h, 1.0).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    for width in [1_usize << 44, 1 << 40, usize::MAX] {
        match p.init::<f64>(width, &mut rng) {
            Err(Error::AllocationFailed { what, size }) => {
                assert!(what.contains(&format!("`width` = {width}")), "{what}");
                assert!(size.contains("numbers"), "{size}");
            }
            other => panic!("width {width}: expected AllocationFailed, got {other:?}"),
        }
    }
    // A concatenation of 3 hidden vectors at width usize::MAX / 2: 3·n overflows.
    let mut c = Program::new(1);
    let x = c.input(0..1).unwrap();
    let w = c.weight(1.0).unwrap();
    let h = c.dense(w, x).unwrap();
    let flat = c.concat(&[h, h, h]).unwrap();
    c.output(flat, 1.0).unwrap();
    assert!(matches!(
        c.init::<f64>(usize::MAX / 2, &mut rng),
        Err(Error::AllocationFailed { .. })
    ));
    // A readout of usize::MAX outputs, an input of usize::MAX columns.
    let mut r = Program::new(1);
    let x = r.input(0..1).unwrap();
    let w = r.weight(1.0).unwrap();
    let h = r.dense(w, x).unwrap();
    r.readout(h, Readout::new(1.0).outputs(usize::MAX)).unwrap();
    assert!(matches!(
        r.init::<f64>(4, &mut rng),
        Err(Error::AllocationFailed { .. })
    ));
    let mut wide = Program::new(usize::MAX);
    let x = wide.input(0..usize::MAX).unwrap();
    let w = wide.weight(1.0).unwrap();
    let h = wide.dense(w, x).unwrap();
    wide.output(h, 1.0).unwrap();
    assert!(matches!(
        wide.init::<f64>(4, &mut rng),
        Err(Error::AllocationFailed { .. })
    ));
    // The same programs at a small width work, with the parameter draws of before.
    assert_eq!(
        p.init::<f64>(3, &mut rng).unwrap().parameter_count(),
        6 + 9 + 3
    );
}

#[test]
fn convolutions_too_large_to_lay_out_are_errors() {
    let mut p = Program::new(4);
    let z: Vec<Var> = (0..4).map(|q| p.input(q..q + 1).unwrap()).collect();
    let w = p.weight(1.0).unwrap();
    for taps in [usize::MAX, 1 << 62, 1 << 44] {
        match p.conv(w, &z, taps, Padding::Circular) {
            Err(Error::AllocationFailed { what, .. }) => {
                assert!(what.contains("taps"), "{what}");
            }
            other => panic!("{taps} taps: expected AllocationFailed, got {other:?}"),
        }
    }
    let (_, grid) = p
        .conv2d(w, &z, (2, 2), (1, 1), Padding::Valid)
        .expect("a 1 × 1 filter");
    assert_eq!(grid, (2, 2));
    let v = p.weight(1.0).unwrap();
    assert!(matches!(
        p.conv2d(v, &z, (2, 2), (usize::MAX, 3), Padding::Circular),
        Err(Error::AllocationFailed { .. })
    ));
    // Input widths that add up beyond usize.
    let mut q = Program::new(usize::MAX);
    let a = q.input(0..usize::MAX).unwrap();
    assert!(matches!(
        q.concat(&[a, a]),
        Err(Error::AllocationFailed { .. })
    ));
}

/// NaN and ∞ in the data are `Error::NonFinite` at their row and column in every entry
/// point of a program's finite network, and of the limit.
#[test]
fn nan_and_infinite_data_are_errors_in_every_entry_point() {
    for (i, p) in programs().iter().enumerate() {
        let mut net = p
            .init::<f64>(4, &mut StdRng::seed_from_u64(i as u64))
            .unwrap();
        let d = p.input_dim();
        let good = common::inputs(3, d, 1);
        for bad_value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut bad = good.clone();
            bad[(1, 2)] = bad_value;
            let at = (1, 2);
            assert_non_finite("forward", net.forward(&bad), "x", at);
            assert_non_finite("layer_tangents", net.group_tangents(&bad), "x", at);
            assert_non_finite(
                "forward_with_tangents",
                net.forward_with_tangents(&bad),
                "x",
                at,
            );
            assert_non_finite("jacobian", net.jacobian(&bad), "x", at);
            let r = DMatrix::from_element(3, p.output_dim(), 0.5);
            assert_non_finite("vjp", net.vjp(&bad, &r), "x", at);
            let mut bad_r = r.clone();
            bad_r[(2, 0)] = bad_value;
            assert_non_finite("vjp cotangent", net.vjp(&good, &bad_r), "cotangent", (2, 0));
            assert_non_finite(
                "empirical_ntk x1",
                empirical_ntk(&net, &bad, &good),
                "x1",
                at,
            );
            assert_non_finite(
                "empirical_ntk x2",
                empirical_ntk(&net, &good, &bad),
                "x2",
                at,
            );
            assert_non_finite(
                "empirical_ntk_full",
                empirical_ntk_full(&net, &bad, &good),
                "x1",
                at,
            );
            assert!(empirical_ntk_block(&net, &bad, &bad, 0..3, 0..3).is_err());
            assert_non_finite("layer_kernels", net.group_kernels(&bad, &good), "x1", at);
            let y = DMatrix::from_element(3, p.output_dim(), 0.1);
            let gd = GradientDescent::new(0.1, 3).unwrap();
            let before = net.parameters();
            assert_non_finite(
                "fit x_train",
                gd.fit(&mut net, &bad, &y, &good),
                "x_train",
                at,
            );
            assert_non_finite(
                "fit x_test",
                gd.fit(&mut net, &good, &y, &bad),
                "x_test",
                at,
            );
            let mut bad_y = y.clone();
            bad_y[(0, 0)] = bad_value;
            assert_non_finite(
                "fit y_train",
                gd.fit(&mut net, &good, &bad_y, &good),
                "y_train",
                (0, 0),
            );
            assert_eq!(
                net.parameters(),
                before,
                "a failed training moved the model"
            );
            let mut params = before.clone();
            params[5] = bad_value;
            assert_non_finite(
                "set_parameters",
                net.set_parameters(&params),
                "params",
                (5, 0),
            );
            // The limit.
            assert_non_finite("infinite_width", infinite_width(p, &bad, &good), "x1", at);
            assert!(infinite_width_block(p, &good, &bad, 0..3, 0..3).is_err());
            assert_non_finite(
                "infinite_width_groups",
                infinite_width_groups(p, &good, &bad),
                "x2",
                at,
            );
            assert!(width_convergence(p, &bad, &[4, 8], &[1]).is_err());
        }
    }
}

/// A value that overflows inside the network is an error naming the variable (the
/// output of a dense layer with σ_W = 1e10 on inputs near 1e300), where it used to be
/// an `Ok` holding ∞ or NaN; so is a custom φ that returns NaN where it is evaluated.
#[test]
fn values_that_overflow_inside_a_program_network_are_errors() {
    let mut p = Program::new(3);
    let x = p.input(0..3).unwrap();
    let w = p.weight(1e10).unwrap();
    let h = p.dense(w, x).unwrap();
    let z = p.apply(Activation::Relu, h).unwrap();
    p.output(z, 1.0).unwrap();
    let net = p.init::<f64>(8, &mut StdRng::seed_from_u64(0)).unwrap();
    let huge = common::inputs(2, 3, 5) * 1e300;
    for result in [
        net.forward(&huge).map(|_| ()),
        empirical_ntk(&net, &huge, &huge).map(|_| ()),
    ] {
        match result {
            Err(Error::NonFiniteResult { reason, .. }) => {
                assert!(
                    reason.contains(&format!("variable {}", h.index())),
                    "{reason}"
                );
            }
            other => panic!("expected NonFiniteResult, got {other:?}"),
        }
    }
    // A custom φ that is NaN beyond 20 (its validation grid stops at 10).
    let clipped = Activation::custom(
        "nan_above_20",
        |x| if x > 20.0 { f64::NAN } else { x.tanh() },
        |x| {
            if x > 20.0 {
                f64::NAN
            } else {
                1.0 - x.tanh().powi(2)
            }
        },
    );
    let mut q = Program::new(3);
    let x = q.input(0..3).unwrap();
    let w = q.weight(1.0).unwrap();
    let h = q.dense(w, x).unwrap();
    let z = q.apply(clipped, h).unwrap();
    q.output(z, 1.0).unwrap();
    let net = q.init::<f64>(16, &mut StdRng::seed_from_u64(0)).unwrap();
    match net.forward(&(common::inputs(2, 3, 5) * 1e3)) {
        Err(Error::NonFiniteResult { reason, .. }) => {
            assert!(reason.contains("nan_above_20"), "{reason}");
            assert!(
                reason.contains(&format!("variable {}", z.index())),
                "{reason}"
            );
        }
        other => panic!("expected NonFiniteResult, got {other:?}"),
    }
}

/// x → LayerNorm(W x) → readout, without biases: an all-zero input makes the
/// LayerNorm's input the zero vector.
fn layer_norm_of_dense(input_dim: usize) -> (Program, Var) {
    let mut p = Program::new(input_dim);
    let x = p.input(0..input_dim).unwrap();
    let w = p.weight(1.2).unwrap();
    let h = p.dense(w, x).unwrap();
    let z = p.layer_norm(h).unwrap();
    let v = p.weight(1.0).unwrap();
    let g = p.dense(v, z).unwrap();
    let a = p.apply(Activation::Relu, g).unwrap();
    p.output(a, 1.0).unwrap();
    (p, z)
}

/// LayerNorm of a constant vector (zero variance): the value is 0, as LayerNorm with any
/// ε > 0 gives, and the gradients, kernels and limits at that sample are errors that
/// say why; other samples are unaffected.
#[test]
fn layer_norm_of_a_constant_vector_is_zero_and_has_no_gradient() {
    let (p, z) = layer_norm_of_dense(3);
    let net = p.init::<f64>(16, &mut StdRng::seed_from_u64(2)).unwrap();
    let mut x = common::inputs(3, 3, 4);
    x.row_mut(1).fill(0.0);
    let f = net.forward(&x).unwrap();
    assert!(f.iter().all(|v| v.is_finite()));
    // LN = 0 there, so the ReLU layer after it sees 0 and the output is 0.
    assert!(f[(1, 0)].abs() <= f64::MIN_POSITIVE, "{}", f[(1, 0)]);
    for result in [
        empirical_ntk(&net, &x, &x).map(|_| ()),
        net.vjp(&x, &DMatrix::from_element(3, 1, 1.0)).map(|_| ()),
        net.group_tangents(&x).map(|_| ()),
    ] {
        match result {
            Err(Error::NonFiniteResult { reason, .. }) => {
                assert!(
                    reason.contains("LayerNorm")
                        && reason.contains("row 1")
                        && reason.contains(&format!("variable {}", z.index())),
                    "{reason}"
                );
            }
            other => panic!("expected NonFiniteResult, got {other:?}"),
        }
    }
    // The limit: an error that names the cause.
    let err = infinite_width(&p, &x, &x).unwrap_err().to_string();
    assert!(
        err.contains("LayerNorm") && err.contains("zero variance"),
        "{err}"
    );
    // Without the zero row, all is well.
    let ok = x.clone().remove_row(1);
    assert!(empirical_ntk(&net, &ok, &ok).is_ok());
    assert!(infinite_width(&p, &ok, &ok).is_ok());
}

/// Regression (random program 33 of `random_programs`, written out): at width 3 the
/// ReLU units after the first convolution are all dead for the first sample of the
/// contract's batch, so the LayerNorm (variable 12) sees the zero vector. Its gradient
/// was NaN, reported as an overflow; now the forward value is finite and the gradient's
/// error names the LayerNorm.
#[test]
fn regression_random_program_33_layer_norm_after_dead_relu_units() {
    let mut p = Program::new(4);
    let t: Vec<Var> = (0..2).map(|i| p.input(2 * i..2 * i + 2).unwrap()).collect();
    let w0 = p.weight(0.81).unwrap();
    let h = p.conv(w0, &t, 2, Padding::Valid).unwrap()[0];
    let b0 = p.bias(0.12).unwrap();
    let h = p.add_bias(h, b0).unwrap();
    let r = p.apply(Activation::Relu, h).unwrap();
    let (wq, wk, wv) = (
        p.weight(0.55).unwrap(),
        p.weight(1.29).unwrap(),
        p.weight(0.71).unwrap(),
    );
    let (q, k, v) = (
        p.dense(wq, r).unwrap(),
        p.dense(wk, r).unwrap(),
        p.dense(wv, r).unwrap(),
    );
    let y = p.attention(&[q], &[k], &[v]).unwrap()[0];
    let s = p.add(&[y, r]).unwrap();
    let w4 = p.weight(0.86).unwrap();
    let g = p.dense(w4, s).unwrap();
    let n = p.layer_norm(g).unwrap();
    assert_eq!(n.index(), 12);
    let (w5, b1, w6) = (
        p.weight(1.19).unwrap(),
        p.bias(0.38).unwrap(),
        p.weight(1.32).unwrap(),
    );
    let u = p.dense(w6, n).unwrap();
    let u = p.apply(Activation::Sin, u).unwrap();
    let u = p.dense(w5, u).unwrap();
    let u = p.add_bias(u, b1).unwrap();
    let out = p.add(&[n, u]).unwrap();
    let out = p.mean(&[out]).unwrap();
    p.readout(out, Readout::new(1.04).bias_std(0.43)).unwrap();

    let net = p.init::<f64>(3, &mut StdRng::seed_from_u64(33)).unwrap();
    let b = crate::contract::Batches::random(4, 1033);
    let f = net.forward(&b.x1).unwrap();
    assert!(f.iter().all(|v| v.is_finite()));
    let err = empirical_ntk(&net, &b.x1, &b.x1).unwrap_err().to_string();
    assert!(
        err.contains("variable 12 is the LayerNorm") && err.contains("row 0"),
        "{err}"
    );
    // At width 32 some unit lives for every sample, and the whole contract holds.
    let wide = p.init::<f64>(32, &mut StdRng::seed_from_u64(33)).unwrap();
    crate::contract::check_ntk_model(&wide, &b).unwrap();
}

/// LayerNorm is scale-free: without biases before it, the network and its NTK do not
/// change when the inputs are scaled (the gradient through LayerNorm carries 1/‖x‖,
/// the weight's input carries ‖x‖). At 1e±200 the squares of the entries are not
/// representable; the forward pass must still be exact (it used to return 0 above
/// 1e154 and NaN below 1e-154). The kernels, made of Grams of inputs and gradients,
/// are exact at 1e±150 and errors (never wrong) beyond.
#[test]
fn layer_norm_programs_are_scale_free_at_extreme_scales() {
    let (p, _) = layer_norm_of_dense(3);
    let net = p.init::<f64>(32, &mut StdRng::seed_from_u64(7)).unwrap();
    let x = common::inputs(4, 3, 8);
    let f = net.forward(&x).unwrap();
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    for c in [1e200, 1e-200, 1e-300] {
        let fc = net.forward(&(&x * c)).unwrap();
        assert!(
            rel_err(&fc, &f) < 1e-13,
            "forward at {c:e}: {}",
            rel_err(&fc, &f)
        );
    }
    // The empirical NTK is formed from per-layer Grams (X₁X₂ᵀ) ⊙ (G₁G₂ᵀ), whose factors
    // scale like c² and c⁻²: exact while both are representable, an error beyond.
    for c in [1e150, 1e-150, 1e200, 1e-200] {
        let xc = &x * c;
        match empirical_ntk(&net, &xc, &xc) {
            Ok(tc) => assert!(
                rel_err(&tc, &theta) < 1e-12,
                "NTK at {c:e}: {}",
                rel_err(&tc, &theta)
            ),
            Err(e) => assert!(c.abs().log10().abs() > 150.0, "NTK at {c:e}: {e}"),
        }
    }
    let k = infinite_width(&p, &x, &x).unwrap();
    for c in [1e150, 1e-150] {
        let kc = infinite_width(&p, &(&x * c), &(&x * c)).unwrap();
        assert!(rel_err(&kc.nngp, &k.nngp) < 1e-13, "NNGP at {c:e}");
        assert!(rel_err(&kc.ntk, &k.ntk) < 1e-13, "NTK at {c:e}");
    }
}

/// Tied self-attention over tokens that each point along their own axis: at large
/// scale every query's largest logit is its own key's, the softmax saturates to the
/// identity, and the network equals the same program without attention (y_t = k_t),
/// exactly, finite and infinite; at 1e160 the logits q·k/n overflow f64 and the
/// forward pass must still be exact (the weights are 1 and 0).
#[test]
fn saturated_softmax_is_exact_at_any_logit_size() {
    let tokens = 3;
    let build = |attend: bool| {
        let mut p = Program::new(tokens * tokens);
        let u = p.weight(1.0).unwrap();
        let keys: Vec<Var> = (0..tokens)
            .map(|t| {
                let x = p.input(t * tokens..(t + 1) * tokens).unwrap();
                p.dense(u, x).unwrap()
            })
            .collect();
        let ys = if attend {
            p.attention(&keys, &keys, &keys).unwrap()
        } else {
            keys.clone()
        };
        let w = p.weight(1.0).unwrap();
        let outs: Vec<Var> = ys
            .iter()
            .map(|&y| {
                let h = p.dense(w, y).unwrap();
                p.apply(Activation::Relu, h).unwrap()
            })
            .collect();
        let pooled = p.mean(&outs).unwrap();
        p.output(pooled, 1.0).unwrap();
        p
    };
    let (attention, identity) = (build(true), build(false));
    // Token t of sample i: e_t + 0.1 noise.
    let noise = common::inputs(3, tokens * tokens, 9);
    let x = DMatrix::from_fn(3, tokens * tokens, |i, j| {
        let (t, c) = (j / tokens, j % tokens);
        f64::from(u8::from(t == c)) + 0.1 * noise[(i, j)]
    });
    let a = attention
        .init::<f64>(256, &mut StdRng::seed_from_u64(4))
        .unwrap();
    let b = identity
        .init::<f64>(256, &mut StdRng::seed_from_u64(4))
        .unwrap();
    assert_eq!(a.parameters(), b.parameters());
    // Unsaturated at scale 1: attention changes the network.
    assert!(rel_err(&a.forward(&x).unwrap(), &b.forward(&x).unwrap()) > 1e-3);
    for c in [1e60, 1e160] {
        let xc = &x * c;
        let (fa, fb) = (a.forward(&xc).unwrap(), b.forward(&xc).unwrap());
        assert!(fa.iter().all(|v| v.is_finite()));
        assert!(
            rel_err(&fa, &fb) < 1e-15,
            "forward at {c:e}: {}",
            rel_err(&fa, &fb)
        );
    }
    let xc = &x * 1e60;
    let (ka, kb) = (
        empirical_ntk(&a, &xc, &xc).unwrap(),
        empirical_ntk(&b, &xc, &xc).unwrap(),
    );
    assert!(rel_err(&ka, &kb) < 1e-14, "NTK: {}", rel_err(&ka, &kb));
    let (la, lb) = (
        infinite_width(&attention, &xc, &xc).unwrap(),
        infinite_width(&identity, &xc, &xc).unwrap(),
    );
    assert!(rel_err(&la.nngp, &lb.nngp) < 1e-14);
    assert!(rel_err(&la.ntk, &lb.ntk) < 1e-14);
}

/// E relu(u) relu(v) and E relu'(u) relu'(v) for (u, v) ~ N(0, [[a, c], [c, b]]): the
/// arc-cosine kernel, written here independently of the crate.
fn relu_moments(a: f64, c: f64, b: f64) -> (f64, f64) {
    let s = a.sqrt() * b.sqrt();
    let rho = if s > 0.0 {
        (c / s).clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let rho = if (1.0 - rho).abs() < 4.0 * f64::EPSILON {
        1.0
    } else {
        rho
    };
    let theta = rho.acos();
    let pi = std::f64::consts::PI;
    (
        s * ((1.0 - rho * rho).max(0.0).sqrt() + (pi - theta) * rho) / (2.0 * pi),
        (pi - theta) / (2.0 * pi),
    )
}

/// A last-state ReLU RNN over `steps` scalar tokens: s_t = relu(W s_{t−1} + U x_t + b).
fn long_rnn(steps: usize, (sw, su, sb, sv): (f64, f64, f64, f64), mean: bool) -> Program {
    let mut p = Program::new(steps);
    let (u, w, b) = (
        p.weight(su).unwrap(),
        p.weight(sw).unwrap(),
        p.bias(sb).unwrap(),
    );
    let mut states: Vec<Var> = Vec::with_capacity(steps);
    for t in 0..steps {
        let x = p.input(t..t + 1).unwrap();
        let mut h = p.dense(u, x).unwrap();
        if let Some(&s) = states.last() {
            let r = p.dense(w, s).unwrap();
            h = p.add(&[h, r]).unwrap();
        }
        let h = p.add_bias(h, b).unwrap();
        states.push(p.apply(Activation::Relu, h).unwrap());
    }
    let out = if mean {
        p.mean(&states).unwrap()
    } else {
        *states.last().unwrap()
    };
    p.output(out, sv).unwrap();
    p
}

/// The limit of the last-state RNN by its own recursion (Tensor Programs II; for
/// sequences of equal length only time steps aligned from the end correlate):
/// Σ^h_t = σ_W² C_{t−1} + σ_U² x_t x̄_t + σ_b², Θ^h_t = Σ^h_t + σ_W² Ċ_{t−1} Θ^h_{t−1},
/// Σ = σ_v² C_T, Θ̊ = Σ + σ_v² Ċ_T Θ^h_T.
fn rnn_recursion(x: &[f64], y: &[f64], (sw, su, sb, sv): (f64, f64, f64, f64)) -> (f64, f64) {
    let (sw2, su2, sb2) = (sw * sw, su * su, sb * sb);
    // (xx, xy, yy) moments of the previous state, and Θ^h of the previous step.
    let (mut c, mut cd) = ((0.0, 0.0, 0.0), 0.0);
    let mut theta = 0.0;
    let mut first = true;
    for (&a, &b) in x.iter().zip(y) {
        let q = |cc: f64, u: f64, v: f64| {
            if first {
                su2 * u * v + sb2
            } else {
                sw2 * cc + su2 * u * v + sb2
            }
        };
        let (qxx, qxy, qyy) = (q(c.0, a, a), q(c.1, a, b), q(c.2, b, b));
        theta = if first { qxy } else { qxy + sw2 * cd * theta };
        let (cxx, _) = relu_moments(qxx, qxx, qxx);
        let (cxy, dxy) = relu_moments(qxx, qxy, qyy);
        let (cyy, _) = relu_moments(qyy, qyy, qyy);
        c = (cxx, cxy, cyy);
        cd = dxy;
        first = false;
    }
    let nngp = sv * sv * c.1;
    (nngp, nngp + sv * sv * cd * theta)
}

/// A recurrence of 3000 steps compiles on a thread with a 512 KiB stack (the
/// compiler's expansions are iterative), and its kernels agree with the recursion
/// written out above to 1e-12 (no loss of accuracy over the steps).
#[test]
fn long_recurrences_neither_overflow_the_stack_nor_lose_accuracy() {
    let steps = 3000;
    let sigmas = (1.0, 1.3, 0.3, 1.1);
    let x = common::inputs(3, steps, 12);
    let (nngp, ntk) = std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            let p = long_rnn(steps, sigmas, false);
            let k = infinite_width(&p, &x, &x).unwrap();
            let mut want = (DMatrix::zeros(3, 3), DMatrix::zeros(3, 3));
            for i in 0..3 {
                for j in 0..3 {
                    let xi: Vec<f64> = x.row(i).iter().copied().collect();
                    let xj: Vec<f64> = x.row(j).iter().copied().collect();
                    (want.0[(i, j)], want.1[(i, j)]) = rnn_recursion(&xi, &xj, sigmas);
                }
            }
            (rel_err(&k.nngp, &want.0), rel_err(&k.ntk, &want.1))
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
    assert!(nngp < 1e-12 && ntk < 1e-12, "NNGP {nngp:e}, NTK {ntk:e}");
}

/// The finite network of a 2000-step recurrence on a 512 KiB stack: its forward pass,
/// empirical NTK and vector–Jacobian product run (passes are loops, not recursion),
/// and the VJP agrees with a central difference along a random direction.
#[test]
fn long_recurrences_in_the_finite_network() {
    let steps = 2000;
    std::thread::Builder::new()
        .stack_size(512 << 10)
        .spawn(move || {
            let p = long_rnn(steps, (1.0, 1.3, 0.3, 1.1), true);
            let mut net = p.init::<f64>(16, &mut StdRng::seed_from_u64(1)).unwrap();
            let x = common::inputs(2, steps, 13);
            let theta = empirical_ntk(&net, &x, &x).unwrap();
            common::assert_psd(&theta, prec::PSD_TRACE_FRACTION);
            let r = DMatrix::from_row_slice(2, 1, &[0.7, -0.4]);
            let g = net.vjp(&x, &r).unwrap();
            let p0 = net.parameters();
            let dir = common::gaussian(p0.len(), 1, 3).column(0).into_owned();
            let h = prec::FD_STEP;
            net.set_parameters(&(&p0 + &dir * h)).unwrap();
            let plus = net.forward(&x).unwrap();
            net.set_parameters(&(&p0 - &dir * h)).unwrap();
            let minus = net.forward(&x).unwrap();
            let fd = ((plus - minus).transpose() * &r)[(0, 0)] / (2.0 * h);
            let exact = g.dot(&dir);
            assert!(
                (fd - exact).abs() < prec::FINITE_DIFFERENCE * exact.abs().max(1.0),
                "{fd} vs {exact}"
            );
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

/// Bias-free programs of ReLU and Abs through dense layers,
/// sums, means, concatenations and convolutions are positively homogeneous of degree 1
/// in x, so every kernel scales by c²: the limit and the finite network at c = 1e±100
/// (the MLP engine's guarantee, through programs).
#[test]
fn relu_programs_are_homogeneous_at_extreme_scales() {
    let mut programs = Vec::new();
    // A CNN with a residual connection and a concatenated readout.
    let mut p = Program::new(8);
    let z: Vec<Var> = (0..4).map(|q| p.input(2 * q..2 * q + 2).unwrap()).collect();
    let w = p.weight(1.4).unwrap();
    let h: Vec<Var> = p
        .conv(w, &z, 3, Padding::Circular)
        .unwrap()
        .into_iter()
        .map(|h| p.apply(Activation::Relu, h).unwrap())
        .collect();
    let v = p.weight(1.1).unwrap();
    let g: Vec<Var> = p.conv(v, &h, 2, Padding::Valid).unwrap();
    let r: Vec<Var> = g
        .iter()
        .zip(&h)
        .map(|(&g, &h)| {
            let a = p.apply(Activation::Relu, g).unwrap();
            p.add(&[a, h]).unwrap()
        })
        .collect();
    let m = p.mean(&r[..2]).unwrap();
    let flat = p.concat(&[m, r[2]]).unwrap();
    p.readout(flat, Readout::new(1.0).outputs(2)).unwrap();
    programs.push(p);
    // A bias-free Abs RNN, mean-pooled.
    let mut q = Program::new(6);
    let (u, w) = (q.weight(1.2).unwrap(), q.weight(0.9).unwrap());
    let mut states: Vec<Var> = Vec::new();
    for t in 0..3 {
        let x = q.input(2 * t..2 * t + 2).unwrap();
        let mut h = q.dense(u, x).unwrap();
        if let Some(&s) = states.last() {
            let r = q.dense(w, s).unwrap();
            h = q.add(&[h, r]).unwrap();
        }
        states.push(q.apply(Activation::Abs, h).unwrap());
    }
    let pooled = q.mean(&states).unwrap();
    q.output(pooled, 1.0).unwrap();
    programs.push(q);

    for (i, p) in programs.iter().enumerate() {
        let x = common::inputs(4, p.input_dim(), 20 + i as u64);
        let k = infinite_width(p, &x, &x).unwrap();
        let net = p
            .init::<f64>(8, &mut StdRng::seed_from_u64(i as u64))
            .unwrap();
        let theta = empirical_ntk(&net, &x, &x).unwrap();
        for c in [1e100, 1e-100] {
            let xc = &x * c;
            let kc = infinite_width(p, &xc, &xc).unwrap();
            assert!(
                rel_err(&(&kc.nngp / (c * c)), &k.nngp) < 1e-13,
                "program {i} NNGP at {c:e}"
            );
            assert!(
                rel_err(&(&kc.ntk / (c * c)), &k.ntk) < 1e-13,
                "program {i} NTK at {c:e}"
            );
            let tc = empirical_ntk(&net, &xc, &xc).unwrap();
            assert!(
                rel_err(&(&tc / (c * c)), &theta) < 1e-13,
                "program {i} finite at {c:e}"
            );
        }
    }
}
