//! The empirical NTK of [`Mlp`]: every architecture and activation through the kernel
//! contract (finite differences, the explicit Jacobian, per-layer sums, blocks; see
//! `contract.rs`), hand-written closed forms, the blocked computation at sizes with
//! full row blocks, f32 against f64, random architectures (proptest), and every bad
//! input.

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, Mlp, MlpSpec, NtkModel, Parameterization, empirical_ntk, empirical_ntk_full,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::common::{self, rel_err};
use crate::contract::{self, Batches, Report};
use crate::prec;

/// No hidden pre-activation may lie closer than this to 0 (the kink of ReLU,
/// LeakyReLU and Abs), so that neither a finite-difference step nor f32 round-off
/// crosses it.
const KINK_MARGIN: f64 = 1e-4;

/// Every built-in activation plus a custom one (swish, x σ(x)).
fn all_activations() -> Vec<Activation> {
    let mut acts = Activation::builtins();
    acts.push(Activation::LeakyRelu(-0.4));
    acts.push(Activation::custom(
        "swish",
        |x| x / (1.0 + (-x).exp()),
        |x| {
            let s = 1.0 / (1.0 + (-x).exp());
            s + x * s * (1.0 - s)
        },
    ));
    acts
}

/// An architecture for the sweeps.
#[derive(Clone, Copy, Debug)]
struct Arch {
    hidden_layers: usize,
    width: usize,
    weight_std: f64,
    bias_std: f64,
    outputs: usize,
    parameterization: Parameterization,
}

/// Depth 1–3, with and without bias, k = 1 and 3, both parameterizations.
const ARCHS: [Arch; 4] = [
    Arch {
        hidden_layers: 1,
        width: 8,
        weight_std: 1.0,
        bias_std: 0.3,
        outputs: 1,
        parameterization: Parameterization::Ntk,
    },
    Arch {
        hidden_layers: 2,
        width: 6,
        weight_std: 1.4,
        bias_std: 0.0,
        outputs: 3,
        parameterization: Parameterization::Ntk,
    },
    Arch {
        hidden_layers: 3,
        width: 5,
        weight_std: 1.2,
        bias_std: 0.2,
        outputs: 3,
        parameterization: Parameterization::Standard,
    },
    Arch {
        hidden_layers: 3,
        width: 7,
        weight_std: 0.9,
        bias_std: 0.0,
        outputs: 1,
        parameterization: Parameterization::Standard,
    },
];

impl Arch {
    fn spec(&self, input_dim: usize, act: &Activation) -> MlpSpec {
        let mut spec = MlpSpec::new(input_dim)
            .weight_std(self.weight_std)
            .bias_std(self.bias_std)
            .outputs(self.outputs)
            .parameterization(self.parameterization);
        for _ in 0..self.hidden_layers {
            spec = spec.hidden(self.width, act.clone());
        }
        spec
    }
}

/// The first network drawn from seeds `seed, seed + 1, …` whose hidden
/// pre-activations on every batch in `xs` stay at least [`KINK_MARGIN`] away from 0.
fn init_away_from_kinks(spec: &MlpSpec, xs: &[&DMatrix<f64>], seed: u64) -> Mlp<f64> {
    for s in (0..100).map(|i| seed.wrapping_add(i)) {
        let net: Mlp<f64> = spec
            .init(&mut StdRng::seed_from_u64(s))
            .expect("valid spec");
        let clear = xs.iter().all(|x| {
            let pre = common::mlp_pre_activations(&net, x);
            pre[..pre.len() - 1]
                .iter()
                .all(|h| common::count_below(h, KINK_MARGIN) == 0)
        });
        if clear {
            return net;
        }
    }
    panic!("none of the 100 seeds from {seed} avoids the kinks");
}

/// The sum of the per-layer kernels (computed without row blocks).
fn layer_sum<T: ntk::Scalar>(
    net: &impl NtkModel<T>,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> DMatrix<T> {
    net.group_kernels(x1, x2)
        .expect("layer kernels")
        .iter()
        .fold(DMatrix::zeros(x1.nrows(), x2.nrows()), |acc, p| {
            acc + p.total()
        })
}

/// Runs the contract on `net`, panicking with `label` and the violated check.
fn check(net: &Mlp<f64>, batches: &Batches, label: &str) -> Report {
    contract::check_ntk_model(net, batches).unwrap_or_else(|v| panic!("{label}: {v}"))
}

/// Every architecture of the sweep (depth 1–3, with and without bias, k = 1 and 3,
/// NTK and standard parameterization) with every activation, and a network mixing
/// activations, satisfy the kernel contract.
#[test]
fn every_mlp_satisfies_the_kernel_contract() {
    let mut worst = Report::default();
    let mut record = |r: Report| {
        worst.finite_difference = worst.finite_difference.max(r.finite_difference);
        worst.exact = worst.exact.max(r.exact);
    };
    for (a, arch) in ARCHS.iter().enumerate() {
        for (i, act) in all_activations().iter().enumerate() {
            let seed = 100 * a as u64 + 10 * i as u64;
            let batches = Batches::random(3, seed);
            let net = init_away_from_kinks(
                &arch.spec(3, act),
                &batches.finite_difference_batches(),
                seed,
            );
            record(check(&net, &batches, &format!("{arch:?}, {act:?}")));
        }
    }
    let mixed = MlpSpec::new(2)
        .hidden(6, Activation::Relu)
        .hidden(5, Activation::Erf)
        .hidden(4, Activation::Gelu)
        .weight_std(1.3)
        .bias_std(0.1)
        .outputs(2);
    let batches = Batches::random(2, 7);
    let net = init_away_from_kinks(&mixed, &batches.finite_difference_batches(), 7);
    record(check(&net, &batches, "mixed activations"));
    eprintln!(
        "MLP contract: worst relative error {:.1e} against finite differences, {:.1e} in exact identities",
        worst.finite_difference, worst.exact
    );
}

/// A one-hidden-layer network's NTK written out with explicit loops from the stored
/// parameter vector (in its documented order), without any of the crate's kernels,
/// activations or layer code.
#[test]
fn one_hidden_layer_closed_form_by_hand() {
    type Phi = fn(f64) -> (f64, f64);
    let tanh: Phi = |z| (z.tanh(), 1.0 - z.tanh() * z.tanh());
    let relu: Phi = |z| if z > 0.0 { (z, 1.0) } else { (0.0, 0.0) };
    let (d, n, k) = (3, 4, 2);
    let (sigma_w, sigma_b) = (1.3, 0.4);
    for (act, phi) in [(Activation::Tanh, tanh), (Activation::Relu, relu)] {
        let spec = MlpSpec::new(d)
            .hidden(n, act)
            .weight_std(sigma_w)
            .bias_std(sigma_b)
            .outputs(k);
        let x1 = common::inputs(3, d, 41);
        let x2 = common::inputs(2, d, 42);
        let net = init_away_from_kinks(&spec, &[&x1, &x2], 5);
        let theta = net.parameters();
        assert_eq!(theta.len(), n * d + n + k * n + k);
        // Documented order: W1 (n × d) row-major, b1, W2 (k × n) row-major, b2.
        let w1 = |a: usize, i: usize| theta[a * d + i];
        let b1 = |a: usize| theta[n * d + a];
        let w2 = |c: usize, a: usize| theta[n * d + n + c * n + a];
        let b2 = |c: usize| theta[n * d + n + k * n + c];
        let (s1, s2) = (sigma_w / (d as f64).sqrt(), sigma_w / (n as f64).sqrt());

        // ∇θ f_c(x) by hand, and f(x) by hand.
        let grad = |x: &DMatrix<f64>, row: usize, c: usize| -> (f64, Vec<f64>) {
            let mut g = vec![0.0; theta.len()];
            let mut f = sigma_b * b2(c);
            g[n * d + n + k * n + c] = sigma_b;
            for a in 0..n {
                let z = s1 * (0..d).map(|i| w1(a, i) * x[(row, i)]).sum::<f64>() + sigma_b * b1(a);
                let (p, dp) = phi(z);
                f += s2 * w2(c, a) * p;
                g[n * d + n + c * n + a] = s2 * p;
                let back = s2 * w2(c, a) * dp;
                for i in 0..d {
                    g[a * d + i] = back * s1 * x[(row, i)];
                }
                g[n * d + a] = back * sigma_b;
            }
            (f, g)
        };

        let out = net.forward(&x1).expect("forward");
        let full = empirical_ntk_full(&net, &x1, &x2).expect("full");
        let mut expected = DMatrix::zeros(3 * k, 2 * k);
        for i in 0..3 {
            for c in 0..k {
                let (f, gi) = grad(&x1, i, c);
                approx::assert_relative_eq!(out[(i, c)], f, max_relative = prec::EXACT_F64);
                for j in 0..2 {
                    for e in 0..k {
                        let (_, gj) = grad(&x2, j, e);
                        expected[(i * k + c, j * k + e)] =
                            gi.iter().zip(&gj).map(|(u, v)| u * v).sum::<f64>();
                    }
                }
            }
        }
        let e = rel_err(&full, &expected);
        assert!(e <= prec::EXACT_F64, "{spec:?}: {e:e}");
        // The stored parameters are what weights() / bias() return.
        let w = net.weights(0).expect("layer 0");
        assert_eq!(w.shape(), (n, d));
        approx::assert_relative_eq!(w[(2, 1)], w1(2, 1));
        approx::assert_relative_eq!(net.bias(1).expect("layer 1").expect("bias")[1], b2(1));
    }
}

/// With no hidden layer the network is linear, f = s_w W x + s_b b, and its NTK is
/// s_w² x · x̄ + s_b² for every output (0 between different outputs).
///
/// "No layers" is therefore not an error for an MLP: `MlpSpec::new(d)` always has its
/// output layer. (A custom model with no parameter groups has the zero kernel; see
/// `custom_model.rs`.)
#[test]
fn linear_model_closed_form() {
    let x1 = common::inputs(4, 5, 3);
    let x2 = common::inputs(3, 5, 4);
    let dot = &x1 * x2.transpose();
    for (param, bias_std) in [
        (Parameterization::Ntk, 0.3),
        (Parameterization::Ntk, 0.0),
        (Parameterization::Standard, 0.3),
        (Parameterization::Standard, 0.0),
    ] {
        let spec = MlpSpec::new(5)
            .outputs(2)
            .weight_std(1.7)
            .bias_std(bias_std)
            .parameterization(param);
        let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(1)).expect("valid");
        assert_eq!(net.depth(), 1);
        // NTK parameterization: s_w = σ_w/√d, s_b = σ_b; standard: s_w = s_b = 1.
        let (sw2, sb2) = match param {
            Parameterization::Ntk => (1.7 * 1.7 / 5.0, bias_std * bias_std),
            _ => (1.0, if bias_std > 0.0 { 1.0 } else { 0.0 }),
        };
        let expected = dot.map(|v| sw2 * v + sb2);
        let theta = empirical_ntk(&net, &x1, &x2).expect("kernel");
        assert!(
            rel_err(&theta, &expected) <= prec::EXACT_F64,
            "{param:?}, σ_b = {bias_std}"
        );
        let full = empirical_ntk_full(&net, &x1, &x2).expect("full");
        let full_expected = DMatrix::from_fn(8, 6, |r, c| {
            if r % 2 == c % 2 {
                expected[(r / 2, c / 2)]
            } else {
                0.0
            }
        });
        assert!(rel_err(&full, &full_expected) <= prec::EXACT_F64);
    }
}

#[test]
fn forward_matches_hand_forward_pass() {
    for act in all_activations() {
        let spec = MlpSpec::new(3)
            .hidden(6, act.clone())
            .hidden(5, act)
            .bias_std(0.5)
            .outputs(2);
        let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(9)).expect("valid");
        let x = common::inputs(7, 3, 9);
        let hand = common::mlp_pre_activations(&net, &x);
        let out = net.forward(&x).expect("forward");
        assert!(rel_err(&out, hand.last().expect("output layer")) <= prec::EXACT_F64);
    }
}

/// Sample counts spanning several full row blocks (128 rows each; the contract's
/// batches have smaller blocks): the multi-block and mirrored paths agree with the
/// unblocked per-layer sum, the Jacobian, and kernels of row subsets (among them two
/// different halves of equal size).
#[test]
fn blocked_computation_matches_unblocked_and_subsets() {
    let spec = MlpSpec::new(5)
        .hidden(16, Activation::Tanh)
        .hidden(12, Activation::Relu)
        .bias_std(0.2)
        .outputs(2);
    let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(3)).expect("valid");
    let x = common::inputs(600, 5, 30);

    for &n in &[257, 300, 513, 600] {
        let xs = x.rows(0, n).into_owned();
        let theta = empirical_ntk(&net, &xs, &xs).expect("kernel");
        let e = rel_err(&theta, &layer_sum(&net, &xs, &xs));
        assert!(e <= prec::EXACT_F64, "N = {n}, x1 = x2: {e:e}");
    }

    // Different batches: 300 × 520 (2 × 3 blocks).
    let x1 = x.rows(0, 300).into_owned();
    let x2 = common::inputs(520, 5, 31);
    let theta12 = empirical_ntk(&net, &x1, &x2).expect("kernel");
    assert!(rel_err(&theta12, &layer_sum(&net, &x1, &x2)) <= prec::EXACT_F64);

    // Blocks of the kernel straddling the row-block boundaries are kernels of subsets.
    let theta = empirical_ntk(&net, &x, &x).expect("kernel");
    for &(i0, i1, j0, j1) in &[
        (140, 310, 250, 520),
        (0, 600, 199, 201),
        (399, 600, 0, 401),
        (255, 257, 255, 257),
        (0, 300, 300, 600),
    ] {
        let a = x.rows(i0, i1 - i0).into_owned();
        let b = x.rows(j0, j1 - j0).into_owned();
        let sub = empirical_ntk(&net, &a, &b).expect("kernel");
        let block = theta.view((i0, j0), (i1 - i0, j1 - j0)).into_owned();
        assert!(
            rel_err(&block, &sub) <= prec::EXACT_F64,
            "rows {i0}..{i1} x {j0}..{j1}"
        );
    }
    for &(i0, i1, j0, j1) in &[(100, 300, 200, 520), (250, 290, 0, 260), (0, 300, 519, 520)] {
        let a = x1.rows(i0, i1 - i0).into_owned();
        let b = x2.rows(j0, j1 - j0).into_owned();
        let sub = empirical_ntk(&net, &a, &b).expect("kernel");
        let block = theta12.view((i0, j0), (i1 - i0, j1 - j0)).into_owned();
        assert!(
            rel_err(&block, &sub) <= prec::EXACT_F64,
            "x1 rows {i0}..{i1} x x2 rows {j0}..{j1}"
        );
    }

    // The full (N·k) × (N·k) kernel over several blocks, against J Jᵀ, both paths.
    let j1 = net.jacobian(&x1).expect("jacobian");
    let full = empirical_ntk_full(&net, &x1, &x1).expect("full");
    assert!(rel_err(&full, &(&j1 * j1.transpose())) <= prec::EXACT_F64);
    let x3 = x2.rows(0, 270).into_owned();
    let j3 = net.jacobian(&x3).expect("jacobian");
    let full13 = empirical_ntk_full(&net, &x1, &x3).expect("full");
    assert!(rel_err(&full13, &(&j1 * j3.transpose())) <= prec::EXACT_F64);
    let theta13 = empirical_ntk(&net, &x1, &x3).expect("kernel");
    assert!(rel_err(&theta13, &common::trace_over_outputs(&full13, 2)) <= prec::EXACT_F64);
}

/// Zero-row batches are not errors: the kernel is empty.
#[test]
fn empty_batches_give_empty_kernels() {
    let spec = MlpSpec::new(3)
        .hidden(4, Activation::Tanh)
        .bias_std(0.1)
        .outputs(2);
    let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(0)).expect("valid");
    let empty = DMatrix::<f64>::zeros(0, 3);
    let x = common::inputs(3, 3, 0);
    assert_eq!(empirical_ntk(&net, &empty, &x).expect("ok").shape(), (0, 3));
    assert_eq!(empirical_ntk(&net, &x, &empty).expect("ok").shape(), (3, 0));
    assert_eq!(
        empirical_ntk(&net, &empty, &empty).expect("ok").shape(),
        (0, 0)
    );
    assert_eq!(
        empirical_ntk_full(&net, &empty, &x).expect("ok").shape(),
        (0, 6)
    );
    assert_eq!(
        net.jacobian(&empty).expect("ok").shape(),
        (0, net.parameter_count())
    );
    assert_eq!(net.forward(&empty).expect("ok").shape(), (0, 2));
    for part in net.group_kernels(&empty, &x).expect("ok") {
        assert_eq!(part.total().shape(), (0, 3));
    }
}

#[test]
fn f32_agrees_with_f64() {
    let mut worst: f64 = 0.0;
    for (i, act) in all_activations().iter().enumerate() {
        let spec = MlpSpec::new(4)
            .hidden(32, act.clone())
            .hidden(24, act.clone())
            .weight_std(1.2)
            .bias_std(0.2)
            .outputs(2);
        let x1 = common::inputs(9, 4, 50 + i as u64);
        let x2 = common::inputs(6, 4, 70 + i as u64);
        let net = init_away_from_kinks(&spec, &[&x1, &x2], 50);
        let net32: Mlp<f32> =
            Mlp::from_parameters(&spec, &net.parameters().map(|v| v as f32)).expect("same spec");
        let (y1, y2) = (x1.map(|v| v as f32), x2.map(|v| v as f32));

        let pairs = [
            (
                empirical_ntk(&net, &x1, &x2).expect("f64"),
                empirical_ntk(&net32, &y1, &y2).expect("f32"),
            ),
            (
                empirical_ntk_full(&net, &x1, &x1).expect("f64"),
                empirical_ntk_full(&net32, &y1, &y1).expect("f32"),
            ),
            (layer_sum(&net, &x2, &x1), layer_sum(&net32, &y2, &y1)),
        ];
        for (k64, k32) in &pairs {
            let e = rel_err(&k32.map(f64::from), k64);
            assert!(e <= prec::F32_VS_F64, "{act:?}: f32 vs f64 {e:e}");
            worst = worst.max(e);
        }
        common::assert_psd(
            &empirical_ntk(&net32, &y1, &y1).expect("f32"),
            prec::F32_VS_F64,
        );
    }
    eprintln!("f32 vs f64: worst relative error {worst:.2e}");
}

/// `(hidden layers as (width, activation index), input dim, bias?, outputs, standard
/// parameterization?, seed)`.
type RandomArch = (Vec<(usize, usize)>, usize, bool, usize, bool, u64);

fn random_arch() -> impl Strategy<Value = RandomArch> {
    (
        prop::collection::vec((1usize..=16, 0usize..Activation::builtins().len()), 0..=4),
        1usize..=4,
        any::<bool>(),
        1usize..=3,
        any::<bool>(),
        any::<u64>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        rng_seed: RngSeed::Fixed(0x6e74_6b32),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random architectures satisfy the kernel contract: 1–5 Dense layers (0–4
    /// hidden), widths 1–16, all built-in activations, with and without bias, k = 1..3,
    /// both parameterizations.
    #[test]
    fn random_architectures_satisfy_the_kernel_contract(
        (hidden, d, bias, k, standard, seed) in random_arch()
    ) {
        let acts = Activation::builtins();
        let mut spec = MlpSpec::new(d)
            .outputs(k)
            .weight_std(1.1)
            .bias_std(if bias { 0.3 } else { 0.0 })
            .parameterization(if standard {
                Parameterization::Standard
            } else {
                Parameterization::Ntk
            });
        for &(width, a) in &hidden {
            spec = spec.hidden(width, acts[a].clone());
        }
        let batches = Batches::random(d, seed);
        let net = init_away_from_kinks(&spec, &batches.finite_difference_batches(), seed);
        prop_assert_eq!(net.parameter_count(), spec.parameter_count());
        if let Err(v) = contract::check_ntk_model(&net, &batches) {
            prop_assert!(false, "{:?}: {}", spec, v);
        }
    }
}

// ---------------------------------------------------------------------------------
// Bad input: always an error naming the argument, never a panic.
// ---------------------------------------------------------------------------------

/// Panics unless `result` is an error for which `is_expected` holds and whose message
/// names `name` in backticks.
#[track_caller]
fn assert_error<T: std::fmt::Debug>(
    result: ntk::Result<T>,
    name: &str,
    is_expected: impl Fn(&Error) -> bool,
) {
    let err = result.expect_err("bad input must be an error");
    assert!(is_expected(&err), "unexpected error variant: {err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("`{name}`")),
        "message {msg:?} does not name `{name}`"
    );
}

fn shape_error(argument: &'static str) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::ShapeMismatch { argument: a, .. } if *a == argument)
}

fn non_finite(argument: &'static str, r: usize, c: usize) -> impl Fn(&Error) -> bool {
    move |e| {
        matches!(e, Error::NonFinite { argument: a, row, col }
            if *a == argument && *row == r && *col == c)
    }
}

fn invalid(parameter: &'static str) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::InvalidParameter { parameter: p, .. } if *p == parameter)
}

fn small_net() -> Mlp<f64> {
    MlpSpec::new(3)
        .hidden(4, Activation::Relu)
        .bias_std(0.1)
        .outputs(2)
        .init(&mut StdRng::seed_from_u64(0))
        .expect("valid spec")
}

#[test]
fn wrong_input_widths_are_errors() {
    let net = small_net();
    let good = common::inputs(3, 3, 0);
    let wide = common::inputs(3, 4, 0);
    let narrow = common::inputs(2, 2, 0);
    let none = DMatrix::<f64>::zeros(3, 0);

    for bad in [&wide, &narrow, &none] {
        let w = bad.ncols();
        // x1 and x2 both of the wrong width: x1 is named.
        let bad2 = common::inputs(2, w, 1);
        assert_error(empirical_ntk(&net, bad, &bad2), "x1", shape_error("x1"));
        assert_error(empirical_ntk_full(&net, bad, bad), "x1", shape_error("x1"));
        assert_error(net.group_kernels(bad, &bad2), "x1", shape_error("x1"));
        // Only one of them wrong: x1 and x2 differ in width, x2 is named.
        assert_error(empirical_ntk(&net, &good, bad), "x2", shape_error("x2"));
        assert_error(
            empirical_ntk_full(&net, &good, bad),
            "x2",
            shape_error("x2"),
        );
        assert_error(net.group_kernels(&good, bad), "x2", shape_error("x2"));
        assert!(empirical_ntk(&net, bad, &good).is_err());
        // Single-batch functions name their argument `x`.
        assert_error(net.forward(bad), "x", shape_error("x"));
        assert_error(net.jacobian(bad), "x", shape_error("x"));
        assert_error(net.group_tangents(bad), "x", shape_error("x"));
    }
    let msg = empirical_ntk(&net, &wide, &wide)
        .expect_err("error")
        .to_string();
    assert!(msg.contains("3 x 4") && msg.contains('3'), "{msg}");
}

#[test]
fn non_finite_inputs_are_errors() {
    let net = small_net();
    let good = common::inputs(3, 3, 0);
    for bad_value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut bad = good.clone();
        bad[(1, 2)] = bad_value;
        assert_error(
            empirical_ntk(&net, &bad, &good),
            "x1",
            non_finite("x1", 1, 2),
        );
        assert_error(
            empirical_ntk(&net, &good, &bad),
            "x2",
            non_finite("x2", 1, 2),
        );
        assert_error(
            empirical_ntk(&net, &bad, &bad),
            "x1",
            non_finite("x1", 1, 2),
        );
        assert_error(
            empirical_ntk_full(&net, &good, &bad),
            "x2",
            non_finite("x2", 1, 2),
        );
        assert_error(net.group_kernels(&bad, &good), "x1", non_finite("x1", 1, 2));
        assert_error(net.group_kernels(&good, &bad), "x2", non_finite("x2", 1, 2));
        assert_error(net.forward(&bad), "x", non_finite("x", 1, 2));
        assert_error(net.jacobian(&bad), "x", non_finite("x", 1, 2));
    }
    let mut bad32 = good.map(|v| v as f32);
    bad32[(2, 0)] = f32::NAN;
    let net32: Mlp<f32> = MlpSpec::new(3)
        .init(&mut StdRng::seed_from_u64(0))
        .expect("ok");
    assert_error(
        empirical_ntk(&net32, &good.map(|v| v as f32), &bad32),
        "x2",
        non_finite("x2", 2, 0),
    );
}

#[test]
fn invalid_specs_are_errors() {
    let base = || MlpSpec::new(3).hidden(4, Activation::Tanh);
    let cases: Vec<(MlpSpec, &'static str)> = vec![
        (MlpSpec::new(0).hidden(4, Activation::Tanh), "input_dim"),
        (MlpSpec::new(0), "input_dim"),
        (base().hidden(0, Activation::Relu), "hidden width"),
        (base().outputs(0), "outputs"),
        (base().weight_std(-1.0), "weight_std"),
        (base().weight_std(f64::NAN), "weight_std"),
        (base().weight_std(f64::INFINITY), "weight_std"),
        (base().bias_std(-0.1), "bias_std"),
        (base().bias_std(f64::NAN), "bias_std"),
        (base().bias_std(f64::INFINITY), "bias_std"),
        (
            base().hidden(4, Activation::LeakyRelu(f64::NAN)),
            "LeakyRelu slope",
        ),
        (
            base().hidden(4, Activation::custom("log", f64::ln, |x| 1.0 / x)),
            "custom activation",
        ),
    ];
    for (spec, name) in cases {
        assert_error(spec.validate(), name, invalid(name));
        assert_error(
            spec.init::<f64>(&mut StdRng::seed_from_u64(0)),
            name,
            invalid(name),
        );
        assert_error(
            spec.init::<f32>(&mut StdRng::seed_from_u64(0)),
            name,
            invalid(name),
        );
        let params = DVector::<f64>::zeros(spec.parameter_count());
        assert_error(Mlp::from_parameters(&spec, &params), name, invalid(name));
    }
    // The boundary values are valid: σ = 0 and a linear model (no hidden layers).
    assert!(base().weight_std(0.0).bias_std(0.0).validate().is_ok());
    assert!(MlpSpec::new(1).validate().is_ok());
}

#[test]
fn bad_parameter_vectors_are_errors() {
    let mut net = small_net();
    let p = net.parameter_count();
    let before = net.parameters();
    for len in [0, p - 1, p + 1] {
        let params = DVector::<f64>::from_element(len, 0.5);
        assert_error(net.set_parameters(&params), "params", shape_error("params"));
        assert_error(
            Mlp::from_parameters(net.spec(), &params),
            "params",
            shape_error("params"),
        );
    }
    for bad_value in [f64::NAN, f64::INFINITY] {
        let mut params = before.clone();
        params[5] = bad_value;
        assert_error(
            net.set_parameters(&params),
            "params",
            non_finite("params", 5, 0),
        );
        assert_error(
            Mlp::from_parameters(net.spec(), &params),
            "params",
            non_finite("params", 5, 0),
        );
    }
    // A failed call leaves the network untouched.
    assert_eq!(net.parameters(), before);
    // A good vector round-trips.
    let new = before.map(|v| 2.0 * v);
    net.set_parameters(&new).expect("right length");
    assert_eq!(net.parameters(), new);
}

#[test]
fn layer_index_out_of_range_is_an_error() {
    let net = small_net();
    assert_eq!(net.depth(), 2);
    for l in [2, 3, usize::MAX] {
        assert_error(net.weights(l), "layer", invalid("layer"));
        assert_error(net.bias(l), "layer", invalid("layer"));
    }
    assert!(net.weights(1).is_ok() && net.bias(1).expect("ok").is_some());
}
