//! Programs: networks with shared weights described as computation graphs. Their
//! finite networks against finite differences and the MLP they describe; their
//! infinite-width kernels against neural-tangents (residual MLP, CNN), an independent
//! RNN recursion (`tests/data/programs.json`), Tensor Programs II's closed value, the
//! MLP engine, and the n^{−1/2} convergence of finite networks.

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::zoo::{self, ImageReadout, SequenceReadout};
use ntk::{
    Activation, Error, InfiniteWidth, MlpSpec, NtkModel, Padding, Program, Var, Weight,
    empirical_ntk, infinite_width, infinite_width_groups, width_convergence,
};
use serde_json::Value;

use crate::common::{self, rel_err};
use crate::contract;
use crate::prec;

/// The reference data of `tests/data/programs.json` (see tests/data/README.md).
fn reference() -> Value {
    serde_json::from_str(include_str!("../data/programs.json")).expect("programs.json parses")
}

/// An RNN over `steps` tokens of `token_dim` entries (`ntk::zoo::Rnn`): s_t = φ(W s_{t−1} + U x_t + b),
/// s_0 = 0, read out at the last state or through the mean of the states.
pub fn rnn(
    steps: usize,
    token_dim: usize,
    activation: Activation,
    (sigma_w, sigma_u, sigma_b, sigma_v): (f64, f64, f64, f64),
    mean_pool: bool,
) -> Program {
    zoo::Rnn::new(steps, token_dim)
        .activation(activation)
        .weight_std(sigma_w)
        .input_std(sigma_u)
        .bias_std(sigma_b)
        .readout_std(sigma_v)
        .readout(if mean_pool {
            SequenceReadout::MeanState
        } else {
            SequenceReadout::LastState
        })
        .program()
        .unwrap()
}

/// A 1-D CNN (`ntk::zoo::Cnn::sequence`): `layers` circular 3-tap convolutions (one
/// weight and bias per layer, shared over positions) with φ, then global average
/// pooling (or flattening) and a readout.
pub fn cnn(
    positions: usize,
    channels: usize,
    layers: usize,
    activation: Activation,
    (sigma_w, sigma_b, sigma_v): (f64, f64, f64),
    flatten: bool,
) -> Program {
    zoo::Cnn::sequence(positions, channels)
        .layers(layers)
        .activation(activation)
        .weight_std(sigma_w)
        .bias_std(sigma_b)
        .readout_std(sigma_v)
        .readout(if flatten {
            ImageReadout::Flatten
        } else {
            ImageReadout::GlobalAverage
        })
        .program()
        .unwrap()
}

/// neural-tangents' `serial(Dense(n, 1, b), FanOut(2), parallel(serial(φ, Dense(n, 1, b)),
/// Identity()), FanInSum(), φ, Dense(1, σ_v))`: one residual block (`ntk::zoo::ResidualMlp`).
pub fn resnet(input_dim: usize, activation: Activation, sigma_b: f64, sigma_v: f64) -> Program {
    zoo::ResidualMlp::new(input_dim, 1)
        .activation(activation)
        .weight_std(1.0)
        .bias_std(sigma_b)
        .readout_std(sigma_v)
        .program()
        .unwrap()
}

#[test]
fn residual_mlp_matches_neural_tangents() {
    let data = reference();
    let c = common::reference_case(&data, "resnet_relu1");
    let a = &c["architecture"];
    let p = resnet(
        a["input_dim"].as_u64().unwrap() as usize,
        Activation::Relu,
        a["bias_std"].as_f64().unwrap(),
        a["readout_std"].as_f64().unwrap(),
    );
    common::assert_matches_reference(&p, c, prec::NEURAL_TANGENTS);
}

#[test]
fn circular_cnn_with_pooling_matches_neural_tangents() {
    let data = reference();
    let c = common::reference_case(&data, "cnn_erf_pool");
    let a = &c["architecture"];
    let p = cnn(
        a["positions"].as_u64().unwrap() as usize,
        a["channels"].as_u64().unwrap() as usize,
        a["layers"].as_u64().unwrap() as usize,
        Activation::Erf,
        (
            a["weight_std"].as_f64().unwrap(),
            a["bias_std"].as_f64().unwrap(),
            a["readout_std"].as_f64().unwrap(),
        ),
        false,
    );
    common::assert_matches_reference(&p, c, prec::NEURAL_TANGENTS);
}

/// The reference CNN of `tests/data/conv_paddings.json` on `positions` inputs of
/// `channels` columns: two convolutions (`conv` turns a layer's weight and inputs into
/// pre-activations), ReLU (σ_w 1.3, σ_b 0.2) then Erf (1.2, 0.1), average pooling,
/// readout σ_v 1.1.
fn reference_cnn(
    positions: usize,
    channels: usize,
    mut conv: impl FnMut(&mut Program, Weight, &[Var]) -> Vec<Var>,
) -> Program {
    let mut p = Program::new(positions * channels);
    let mut z: Vec<Var> = (0..positions)
        .map(|q| p.input(q * channels..(q + 1) * channels).unwrap())
        .collect();
    for (sigma_w, sigma_b, activation) in
        [(1.3, 0.2, Activation::Relu), (1.2, 0.1, Activation::Erf)]
    {
        let (w, b) = (p.weight(sigma_w).unwrap(), p.bias(sigma_b).unwrap());
        z = conv(&mut p, w, &z)
            .into_iter()
            .map(|h| {
                let h = p.add_bias(h, b).unwrap();
                p.apply(activation.clone(), h).unwrap()
            })
            .collect();
    }
    let pooled = p.mean(&z).unwrap();
    p.output(pooled, 1.1).unwrap();
    p
}

/// Asserts that `p`'s kernels on `x` are those of the reference case `c`.
fn assert_matches_conv_reference(p: &Program, x: &DMatrix<f64>, c: &Value) {
    let k = infinite_width(p, x, x).expect("kernels");
    for (got, key) in [(&k.nngp, "nngp"), (&k.ntk, "ntk")] {
        let err = rel_err(got, &common::matrix(&c[key]));
        assert!(
            err < prec::NEURAL_TANGENTS_ROUND_OFF,
            "{} taps, {}, {key}: relative error {err:e}",
            c["taps"],
            c["padding"]
        );
    }
}

/// The padding a reference case names.
fn conv_padding(c: &Value) -> Padding {
    match c["padding"].as_str().unwrap() {
        "circular" => Padding::Circular,
        "valid" => Padding::Valid,
        other => panic!("unknown padding {other}"),
    }
}

/// Asserts that two programs on `x` draw the same parameters at width 16 and give the
/// same finite network: outputs and empirical NTK.
fn assert_same_finite_network(a: &Program, b: &Program, x: &DMatrix<f64>) {
    let a = a.init::<f64>(16, &mut StdRng::seed_from_u64(1)).unwrap();
    let b = b.init::<f64>(16, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(a.parameters(), b.parameters());
    assert!(rel_err(&a.forward(x).unwrap(), &b.forward(x).unwrap()) < prec::EXACT_F64);
    let (ka, kb) = (
        empirical_ntk(&a, x, x).unwrap(),
        empirical_ntk(&b, x, x).unwrap(),
    );
    assert!(rel_err(&ka, &kb) < prec::EXACT_F64);
}

/// One width-1 input per position, one weight σ 1.5 turned into pre-activations by
/// `pre`, tanh, and a readout of the flattened positions (so that every position's
/// place is seen: a window shifted by one changes the network).
fn flattened_tanh_conv(
    positions: usize,
    pre: impl FnOnce(&mut Program, Weight, &[Var]) -> Vec<Var>,
) -> Program {
    let mut p = Program::new(positions);
    let z: Vec<Var> = (0..positions).map(|q| p.input(q..q + 1).unwrap()).collect();
    let w = p.weight(1.5).unwrap();
    let h: Vec<Var> = pre(&mut p, w, &z)
        .into_iter()
        .map(|d| p.apply(Activation::Tanh, d).unwrap())
        .collect();
    let flat = p.concat(&h).unwrap();
    p.output(flat, 1.0).unwrap();
    p
}

/// `dense(w, concat(window))` for each written-out window of positions.
fn dense_on_windows(p: &mut Program, w: Weight, z: &[Var], windows: &[Vec<usize>]) -> Vec<Var> {
    windows
        .iter()
        .map(|window| {
            let parts: Vec<Var> = window.iter().map(|&q| z[q]).collect();
            let c = p.concat(&parts).unwrap();
            p.dense(w, c).unwrap()
        })
        .collect()
}

/// `Program::conv` is neural-tangents' `Conv` for every filter size and both paddings
/// (`tests/data/conv_paddings.json`): the fan-in normalisation, the windows' overlaps,
/// and valid convolutions shrinking the sequence layer by layer (7 → 4 → 1 at 4 taps).
#[test]
fn conv_matches_neural_tangents_for_every_filter_size_and_padding() {
    let data: Value =
        serde_json::from_str(include_str!("../data/conv_paddings.json")).expect("parses");
    let positions = data["positions"].as_u64().unwrap() as usize;
    let channels = data["channels"].as_u64().unwrap() as usize;
    let x = common::matrix(&data["x"]);
    for c in data["cases"].as_array().unwrap() {
        let taps = c["taps"].as_u64().unwrap() as usize;
        let padding = conv_padding(c);
        let p = reference_cnn(positions, channels, |p, w, z| {
            let pre = p.conv(w, z, taps, padding).unwrap();
            let expected = if padding == Padding::Circular {
                z.len()
            } else {
                z.len() + 1 - taps
            };
            assert_eq!(pre.len(), expected, "{taps} taps, {padding:?}");
            pre
        });
        assert_matches_conv_reference(&p, &x, c);
    }
}

/// A convolution is one weight on stacked windows: its finite network equals the one
/// with the windows written out, parameter for parameter. Circular windows start
/// ⌊(taps − 1)/2⌋ positions to the left, as JAX pads (`'CIRCULAR'`, 4 taps over 5
/// positions: (4, 0, 1, 2), (0, 1, 2, 3), …); valid ones at the output's position. The
/// readout flattens the positions, so a window shifted by one would change the network
/// (the infinite-width kernels, which average over positions, cannot see such a shift).
#[test]
fn conv_is_one_shared_weight_on_stacked_windows() {
    let circular: Vec<Vec<usize>> = vec![
        vec![4, 0, 1, 2],
        vec![0, 1, 2, 3],
        vec![1, 2, 3, 4],
        vec![2, 3, 4, 0],
        vec![3, 4, 0, 1],
    ];
    let valid: Vec<Vec<usize>> = vec![vec![0, 1, 2], vec![1, 2, 3], vec![2, 3, 4]];
    let x = common::inputs(4, 5, 3);
    for (taps, padding, windows) in [(4, Padding::Circular, circular), (3, Padding::Valid, valid)] {
        let by_hand = flattened_tanh_conv(5, |p, w, z| dense_on_windows(p, w, z, &windows));
        let with_conv = flattened_tanh_conv(5, |p, w, z| p.conv(w, z, taps, padding).unwrap());
        assert_same_finite_network(&by_hand, &with_conv, &x);
    }
}

/// `Program::conv2d` is neural-tangents' 2-D `Conv` on NHWC images (4 × 5 pixels, 2
/// channels; `tests/data/conv_paddings.json`): 3 × 3 and 2 × 3 circular filters, and
/// 2 × 2 valid ones shrinking the image 4 × 5 → 3 × 4 → 2 × 3.
#[test]
fn conv2d_matches_neural_tangents() {
    let data: Value =
        serde_json::from_str(include_str!("../data/conv_paddings.json")).expect("parses");
    let (height, width) = (
        data["height"].as_u64().unwrap() as usize,
        data["width"].as_u64().unwrap() as usize,
    );
    let channels = data["channels"].as_u64().unwrap() as usize;
    let x = common::matrix(&data["images"]);
    for c in data["cases_2d"].as_array().unwrap() {
        let taps = (
            c["taps"][0].as_u64().unwrap() as usize,
            c["taps"][1].as_u64().unwrap() as usize,
        );
        let padding = conv_padding(c);
        let mut shape = (height, width);
        let p = reference_cnn(height * width, channels, |p, w, z| {
            let (pre, next) = p.conv2d(w, z, shape, taps, padding).unwrap();
            assert_eq!(pre.len(), next.0 * next.1);
            shape = next;
            pre
        });
        if padding == Padding::Valid {
            assert_eq!(shape, (2, 3));
        }
        assert_matches_conv_reference(&p, &x, c);
    }
}

/// A 2-D convolution's windows, written out: on a 3 × 3 grid a circular 3 × 2 filter at
/// output (r, c) reads rows r − 1, r, r + 1 and columns c, c + 1 (mod 3), row-major;
/// the finite networks agree parameter for parameter (flattening readout, so a shifted
/// window would show).
#[test]
fn conv2d_is_one_shared_weight_on_stacked_windows() {
    let mut windows = Vec::new();
    for r in 0..3 {
        for c in 0..3 {
            let mut window = Vec::new();
            for row in [(r + 2) % 3, r, (r + 1) % 3] {
                for col in [c, (c + 1) % 3] {
                    window.push(row * 3 + col);
                }
            }
            windows.push(window);
        }
    }
    let by_hand = flattened_tanh_conv(9, |p, w, z| dense_on_windows(p, w, z, &windows));
    let with_conv = flattened_tanh_conv(9, |p, w, z| {
        p.conv2d(w, z, (3, 3), (3, 2), Padding::Circular).unwrap().0
    });
    assert_same_finite_network(&by_hand, &with_conv, &common::inputs(4, 9, 5));
}

/// Bad convolutions are errors naming the argument.
#[test]
fn bad_convolutions_are_errors() {
    let mut p = Program::new(4);
    let z: Vec<Var> = (0..4).map(|q| p.input(q..q + 1).unwrap()).collect();
    let w = p.weight(1.0).unwrap();
    let message = |r: ntk::Result<Vec<Var>>| format!("{}", r.unwrap_err());
    assert!(message(p.conv(w, &[], 3, Padding::Circular)).contains("conv"));
    assert!(message(p.conv(w, &z, 0, Padding::Circular)).contains("taps"));
    assert!(message(p.conv(w, &z, 5, Padding::Valid)).contains("5 taps over 4 positions"));
    let wide = p.input(0..2).unwrap();
    assert!(message(p.conv(w, &[z[0], wide], 1, Padding::Valid)).contains("conv positions"));
    // The weight's fan-in is fixed by its first use: 3 taps, then 2.
    p.conv(w, &z, 3, Padding::Circular).unwrap();
    assert!(message(p.conv(w, &z, 2, Padding::Circular)).contains("fan-in"));
    let mut other = Program::new(4);
    let foreign = other.input(0..1).unwrap();
    assert!(message(p.conv(w, &[foreign], 1, Padding::Valid)).contains("another program"));
    let grid = p.conv2d(w, &z, (3, 2), (1, 1), Padding::Valid);
    assert!(format!("{}", grid.unwrap_err()).contains("4 variables for a 3 × 2 grid"));
    let square = p.weight(1.0).unwrap();
    let valid = p.conv2d(square, &z, (2, 2), (3, 1), Padding::Valid);
    assert!(format!("{}", valid.unwrap_err()).contains("3 taps over 2 positions"));
    let zero = p.conv2d(square, &z, (2, 2), (1, 0), Padding::Circular);
    assert!(format!("{}", zero.unwrap_err()).contains("taps"));
    // Circular filters longer than the sequence wrap around it.
    let long = p.weight(1.0).unwrap();
    assert_eq!(p.conv(long, &z, 6, Padding::Circular).unwrap().len(), 4);
}

#[test]
fn last_state_rnn_matches_independent_recursion() {
    let data = reference();
    let c = common::reference_case(&data, "rnn_relu_last");
    let a = &c["architecture"];
    let p = rnn(
        a["steps"].as_u64().unwrap() as usize,
        a["token_dim"].as_u64().unwrap() as usize,
        Activation::Relu,
        (
            a["hidden_std"].as_f64().unwrap(),
            a["input_std"].as_f64().unwrap(),
            a["bias_std"].as_f64().unwrap(),
            a["readout_std"].as_f64().unwrap(),
        ),
        false,
    );
    common::assert_matches_reference(&p, c, prec::NEURAL_TANGENTS);
}

/// Tensor Programs II: a 2-hidden-layer ReLU MLP with σ_w = σ_b = σ_v = 1 has
/// Θ̊(x, x) = (3/4)‖x‖²/d + 7/4.
#[test]
fn two_layer_relu_mlp_has_the_papers_unit_value() {
    let d = 3;
    let mut p = Program::new(d);
    let mut z = p.input(0..d).unwrap();
    for _ in 0..2 {
        let (w, b) = (p.weight(1.0).unwrap(), p.bias(1.0).unwrap());
        let h = p.dense(w, z).unwrap();
        let h = p.add_bias(h, b).unwrap();
        z = p.apply(Activation::Relu, h).unwrap();
    }
    p.output(z, 1.0).unwrap();
    let x = common::inputs(5, d, 3);
    let k = infinite_width(&p, &x, &x).unwrap();
    for i in 0..5 {
        let q = x.row(i).norm_squared() / d as f64;
        let expected = 0.75 * q + 1.75;
        assert!(
            (k.ntk[(i, i)] - expected).abs() < prec::ROUND_OFF * expected,
            "row {i}"
        );
    }
}

/// The program of an MLP has the MLP's kernels, on equal and on different batches, with
/// and without biases, one and several outputs, closed forms and quadrature.
#[test]
fn the_program_of_an_mlp_has_its_kernels() {
    let specs = [
        MlpSpec::new(3).hidden(64, Activation::Relu),
        MlpSpec::new(3)
            .hidden(64, Activation::Erf)
            .hidden(32, Activation::Relu)
            .weight_std(1.3)
            .bias_std(0.2)
            .outputs(2),
        MlpSpec::new(3)
            .hidden(16, Activation::Tanh)
            .hidden(16, Activation::Gelu)
            .hidden(16, Activation::LeakyRelu(0.2))
            .bias_std(0.5),
    ];
    let x1 = common::inputs(7, 3, 11);
    let x2 = common::inputs(5, 3, 12);
    for spec in &specs {
        let p = Program::try_from(spec).unwrap();
        for (a, b) in [(&x1, &x1), (&x1, &x2)] {
            let want = infinite_width(spec, a, b).unwrap();
            let got = infinite_width(&p, a, b).unwrap();
            assert!(
                rel_err(&got.nngp, &want.nngp) < prec::ROUND_OFF,
                "{spec:?} nngp"
            );
            assert!(
                rel_err(&got.ntk, &want.ntk) < prec::ROUND_OFF,
                "{spec:?} ntk"
            );
        }
    }
}

/// The program's network of an MLP draws the MLP's parameters in the same order: the
/// same function, the same empirical NTK.
#[test]
fn the_program_network_of_an_mlp_is_the_mlp() {
    let spec = MlpSpec::new(3)
        .hidden(24, Activation::Tanh)
        .hidden(24, Activation::Relu)
        .bias_std(0.3)
        .outputs(2);
    let p = Program::try_from(&spec).unwrap();
    let mlp = spec.init::<f64>(&mut StdRng::seed_from_u64(4)).unwrap();
    let net = p.init::<f64>(24, &mut StdRng::seed_from_u64(4)).unwrap();
    assert_eq!(net.parameters(), mlp.parameters());
    let x = common::inputs(6, 3, 2);
    assert!(rel_err(&net.forward(&x).unwrap(), &mlp.forward(&x).unwrap()) < prec::EXACT_F64);
    let a = empirical_ntk(&net, &x, &x).unwrap();
    let b = empirical_ntk(&mlp, &x, &x).unwrap();
    assert!(rel_err(&a, &b) < prec::EXACT_F64);
}

/// Programs with shared weights used by the contract's checks: an RNN (mean-pooled),
/// a CNN (flattened), a residual block, a weight used twice on the same input with a
/// shared bias and a two-output readout with a bias, and a Transformer.
fn shared_weight_programs() -> Vec<Program> {
    let mut twice = Program::new(4);
    let x = twice.input(0..4).unwrap();
    let (w, b) = (twice.weight(1.1).unwrap(), twice.bias(0.4).unwrap());
    let h = twice.dense(w, x).unwrap();
    let h1 = twice.add_bias(h, b).unwrap();
    let z = twice.apply(Activation::Sin, h1).unwrap();
    let h2 = twice.dense(w, x).unwrap(); // the same W on the same input, again
    let h2 = twice.add_bias(h2, b).unwrap();
    let s = twice.add(&[z, h2]).unwrap();
    twice
        .readout(s, ntk::Readout::new(0.9).bias_std(0.2).outputs(2))
        .unwrap();
    // Closed-form activations, so that the limits' checks are exact to round-off.
    vec![
        rnn(3, 2, Activation::Erf, (1.0, 1.5, 0.5, 1.0), true),
        cnn(4, 2, 2, Activation::Erf, (1.2, 0.3, 1.0), true),
        resnet(3, Activation::Gelu, 0.2, 1.0),
        twice,
        crate::transformer::transformer(3, 2, Activation::Gelu, (1.0, 1.2, 1.0)),
    ]
}

/// Finite networks of programs through the kernel contract: finite differences
/// through shared weights (Jacobian, vjp, kernel), groups, blocks, batches.
#[test]
fn program_networks_satisfy_the_kernel_contract() {
    for (i, program) in shared_weight_programs().iter().enumerate() {
        let net = program
            .init::<f64>(5, &mut StdRng::seed_from_u64(i as u64))
            .unwrap();
        let batches = contract::Batches::random(program.input_dim(), 20 + i as u64);
        contract::check_ntk_model(&net, &batches).unwrap_or_else(|v| panic!("program {i}: {v}"));
    }
}

/// Infinite-width kernels of programs (Σ, Θ̊ and every group's term) through the
/// contract's kernel-function checks: transposition, PSD, equal-size batches against
/// the stacked batch, subsets, the x1 = x2 path against the general one.
#[test]
fn program_limits_satisfy_the_kernel_contract() {
    let mut programs = shared_weight_programs();
    programs.push(cnn(4, 2, 2, Activation::Relu, (1.4, 0.1, 1.0), false));
    for (i, p) in programs.iter().enumerate() {
        // One configuration: the program is compiled once and its tapes reused.
        let limit = InfiniteWidth::new(p).unwrap();
        let kernels = |a: &DMatrix<f64>, b: &DMatrix<f64>| -> ntk::Result<contract::Named> {
            let k = limit.kernels(a, b)?;
            let mut all = vec![("nngp".to_string(), k.nngp), ("ntk".to_string(), k.ntk)];
            for (g, group) in limit.group_kernels(a, b)?.into_iter().enumerate() {
                all.push((format!("group {g} weights"), group.weights));
                if let Some(bias) = group.bias {
                    all.push((format!("group {g} bias"), bias));
                }
            }
            Ok(all)
        };
        let batches =
            contract::Batches::with_large_rows(p.input_dim(), 60 + i as u64, contract::LARGE_ROWS);
        contract::check_kernel_fn(&batches, 1, prec::EXACT_F64, kernels)
            .unwrap_or_else(|v| panic!("program {i}: {v}"));
    }
}

/// The limit per parameter group sums to Θ̊, and each group of a wide network is near
/// its limit.
#[test]
fn group_kernels_sum_to_the_limit_and_approach_it() {
    let p = rnn(3, 2, Activation::Erf, (1.0, 1.4, 0.3, 1.0), true);
    let x = common::inputs(4, 6, 5);
    let limit = infinite_width(&p, &x, &x).unwrap();
    let groups = infinite_width_groups(&p, &x, &x).unwrap();
    let sum = groups
        .iter()
        .fold(DMatrix::zeros(4, 4), |acc, l| acc + l.total());
    assert!(rel_err(&sum, &limit.ntk) < prec::EXACT_F64);
    let net = p.init::<f64>(1024, &mut StdRng::seed_from_u64(9)).unwrap();
    let finite = net.group_kernels(&x, &x).unwrap();
    assert_eq!(finite.len(), groups.len());
    for (g, (a, b)) in finite.iter().zip(&groups).enumerate() {
        let err = rel_err(&a.total(), &b.total());
        assert!(err < 0.15, "group {g}: {err}");
    }
}

/// Empirical NTKs of programs converge to Θ̊ at rate n^{−1/2}.
#[test]
fn finite_programs_converge_at_rate_one_over_root_width() {
    for p in [
        rnn(
            4,
            2,
            Activation::Erf,
            (1.0, 2f64.sqrt(), 0.2f64.sqrt(), 1.0),
            true,
        ),
        cnn(3, 2, 1, Activation::Relu, (1.4, 0.1, 1.0), false),
    ] {
        let x = common::inputs(3, p.input_dim(), 1);
        let study = width_convergence(&p, &x, &[64, 256, 1024], &[1, 2, 3, 4]).unwrap();
        common::assert_root_width_rate(&study, 0.15);
    }
}

/// φ of a non-Gaussian vector has no infinite-width reduction: an error naming the
/// variable, while the finite network works.
#[test]
fn nonlinearity_of_a_non_gaussian_vector_is_an_error_in_the_limit_only() {
    let mut p = Program::new(2);
    let x = p.input(0..2).unwrap();
    let w = p.weight(1.0).unwrap();
    let h = p.dense(w, x).unwrap();
    let z = p.apply(Activation::Tanh, h).unwrap();
    let zz = p.apply(Activation::Relu, z).unwrap();
    p.output(zz, 1.0).unwrap();
    let x = common::inputs(3, 2, 0);
    let err = infinite_width(&p, &x, &x).unwrap_err();
    assert!(
        matches!(err, Error::OutsideLimit { variable, .. } if variable == zz.index()),
        "{err:?}"
    );
    // One sentence: which variable, why, and what still works.
    assert_eq!(
        err.to_string(),
        format!(
            "the infinite-width limit of variable {} cannot be computed: it applies Relu to \
             variable {}, which is not Gaussian in the limit because it holds the output of a \
             nonlinearity (φ(ψ(h)) and φ(h + ψ(g)) have no 2-D Gaussian reduction); the \
             finite network (`Program::init`) still works",
            zz.index(),
            z.index()
        )
    );
    let net = p.init::<f64>(8, &mut StdRng::seed_from_u64(0)).unwrap();
    assert!(empirical_ntk(&net, &x, &x).is_ok());
}

/// Incomplete programs and bad arguments are errors.
#[test]
fn incomplete_programs_are_errors() {
    let mut p = Program::new(2);
    let x = p.input(0..2).unwrap();
    let x2 = common::inputs(3, 2, 0);
    assert!(infinite_width(&p, &x2, &x2).is_err(), "no output");
    assert!(p.init::<f64>(4, &mut StdRng::seed_from_u64(0)).is_err());
    p.output(x, 1.0).unwrap();
    assert!(
        p.init::<f64>(0, &mut StdRng::seed_from_u64(0)).is_err(),
        "width 0"
    );
    let wrong = common::inputs(3, 3, 0);
    assert!(infinite_width(&p, &wrong, &wrong).is_err());
    // A linear model of the input: Σ = σ_v² x·x̄/d.
    let k = infinite_width(&p, &x2, &x2).unwrap();
    let expected = &x2 * x2.transpose() / 2.0;
    assert!(rel_err(&k.nngp, &expected) < prec::EXACT_F64);
    assert!(InfiniteWidth::new(&p).unwrap().program().is_some());
}

/// A width too large for memory, or whose K·n overflows `usize` (a concatenation of
/// hidden vectors), is an allocation error, not an abort.
#[test]
fn networks_too_wide_for_memory_are_errors() {
    let mut p = Program::new(3);
    let (w, v) = (p.weight(1.0).unwrap(), p.weight(1.0).unwrap());
    let x = p.input(0..3).unwrap();
    let h = p.dense(w, x).unwrap();
    let h = p.apply(Activation::Relu, h).unwrap();
    let c = p.concat(&[h, h]).unwrap();
    let out = p.dense(v, c).unwrap();
    p.output(out, 1.0).unwrap();
    for width in [1 << 40, usize::MAX / 2 + 1] {
        let err = p
            .init::<f64>(width, &mut StdRng::seed_from_u64(0))
            .expect_err("too wide");
        assert!(
            matches!(err, ntk::Error::AllocationFailed { .. }),
            "{width}: {err}"
        );
    }
}

/// Θ̊ two ways: forward (tangent moments, `infinite_width`) and backward (gradient
/// moments per group, `infinite_width_groups`) are adjoint recursions over the same
/// paths, so they agree to round-off on every architecture, attention included (a
/// Transformer, and an attention block with unequal weights).
#[test]
fn forward_and_backward_limits_agree() {
    let mut mixed = Program::new(4);
    let x = mixed.input(0..4).unwrap();
    let (w, v, b) = (
        mixed.weight(1.3).unwrap(),
        mixed.weight(0.8).unwrap(),
        mixed.bias(0.4).unwrap(),
    );
    let g1 = mixed.dense(w, x).unwrap();
    let g2 = mixed.dense(w, x).unwrap();
    let g2 = mixed.add_bias(g2, b).unwrap();
    let a = mixed.apply(Activation::Tanh, g1).unwrap();
    let e = mixed.apply(Activation::Erf, g2).unwrap();
    let s = mixed.add(&[a, e, g1]).unwrap();
    let h = mixed.dense(v, s).unwrap();
    let z = mixed.apply(Activation::Relu, h).unwrap();
    let out = mixed.concat(&[z, s]).unwrap();
    mixed.output(out, 1.1).unwrap();
    let programs = [
        rnn(4, 2, Activation::Relu, (1.0, 1.5, 0.5, 1.0), true),
        rnn(3, 2, Activation::Erf, (1.2, 1.0, 0.0, 1.0), false),
        cnn(4, 2, 2, Activation::Relu, (1.4, 0.1, 1.0), true),
        cnn(3, 2, 2, Activation::Gelu, (1.0, 0.2, 1.0), false),
        resnet(3, Activation::Relu, 0.2, 1.0),
        mixed,
        // Attention: the values' gradients carry the attention weights.
        crate::transformer::transformer(3, 2, Activation::Gelu, (1.0, 1.2, 1.0)),
        crate::audit::attention_block(),
    ];
    for (i, p) in programs.iter().enumerate() {
        let x1 = common::inputs(4, p.input_dim(), 30 + i as u64);
        let x2 = common::inputs(3, p.input_dim(), 40 + i as u64);
        for (a, b) in [(&x1, &x1), (&x1, &x2)] {
            let forward = infinite_width(p, a, b).unwrap().ntk;
            let backward = infinite_width_groups(p, a, b)
                .unwrap()
                .iter()
                .fold(DMatrix::zeros(a.nrows(), b.nrows()), |acc, l| {
                    acc + l.total()
                });
            let err = rel_err(&backward, &forward);
            assert!(err < prec::ROUND_OFF, "program {i}: {err:e}");
        }
    }
}

/// Every builder call checks its arguments: malformed programs are errors, not panics.
#[test]
fn building_checks_its_arguments() {
    let mut p = Program::new(4);
    assert!(p.input(0..5).is_err());
    assert!(p.input(2..2).is_err());
    let x = p.input(0..2).unwrap();
    let y = p.input(2..4).unwrap();
    assert!(p.weight(-1.0).is_err());
    assert!(p.bias(f64::NAN).is_err());
    let w = p.weight(1.0).unwrap();
    let h = p.dense(w, x).unwrap();
    // The same weight on a hidden vector: a different fan-in.
    assert!(p.dense(w, h).is_err());
    assert!(p.add(&[]).is_err());
    assert!(p.add(&[h, x]).is_err());
    assert!(p.concat(&[h, y]).is_err());
    let b = p.bias(0.1).unwrap();
    assert!(p.add_bias(x, b).is_err());
    let mut other = Program::new(4);
    let foreign = other.input(0..1).unwrap();
    assert!(p.apply(Activation::Relu, foreign).is_err());
    assert!(p.validate().is_err(), "no output yet");
    p.output(h, 1.0).unwrap();
    assert!(p.output(h, 1.0).is_err(), "a second output");
    assert!(p.validate().is_err(), "bias never used");
    p.add_bias(h, b).unwrap();
    p.validate().unwrap();
}
