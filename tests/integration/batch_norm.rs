//! Batch normalisation in programs (issue 19): the finite network's exact gradients
//! through the batch statistics against finite differences, the kernels of whole
//! batches, and the infinite-width limit against a Monte Carlo estimate written here,
//! the reference case of `tests/data/batchnorm.json` (an independent implementation),
//! its invariances, what it refuses, and the finite networks' convergence to it.

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, NtkModel, Program, empirical_ntk, empirical_ntk_block, empirical_ntk_full,
    infinite_width, infinite_width_block, width_convergence,
};
use rand_distr::{Distribution, StandardNormal};
use serde_json::Value;

use super::common::{self, rel_err};
use super::prec;

/// A chain of `layers` hidden layers on inputs of dimension `d`: each
/// dense(σ_w) + bias(σ_b) → batch_norm → φ, then the readout σ_v.
fn bn_mlp(d: usize, layers: &[Activation], sw: f64, sb: f64, sv: f64) -> Program {
    let mut p = Program::new(d);
    let mut z = p.input(0..d).unwrap();
    for act in layers {
        let w = p.weight(sw).unwrap();
        let h = p.dense(w, z).unwrap();
        let h = if sb > 0.0 {
            let b = p.bias(sb).unwrap();
            p.add_bias(h, b).unwrap()
        } else {
            h
        };
        let n = p.batch_norm(h).unwrap();
        z = p.apply(act.clone(), n).unwrap();
    }
    p.output(z, sv).unwrap();
    p
}

/// The Jacobian (one output) by central differences of the forward pass on the whole
/// batch: the perturbed parameters change the batch statistics too.
fn fd_jacobian<M: NtkModel<f64> + Clone>(model: &M, x: &DMatrix<f64>) -> DMatrix<f64> {
    common::finite_difference_jacobian(model, x, prec::FD_STEP)
}

/// The exact gradients of a two-layer batch-norm network (biases, two outputs, a
/// readout bias) are the finite differences of its forward pass on the whole batch;
/// its kernels between two batches are the contractions of the two batches' finite
/// difference Jacobians, each with its own statistics; and its vjp, group kernels and
/// one-pass tangents agree.
#[test]
fn gradients_go_through_the_batch_statistics() {
    let mut p = Program::new(3);
    let x = p.input(0..3).unwrap();
    let (w1, w2, b1, b2) = (
        p.weight(1.3).unwrap(),
        p.weight(0.9).unwrap(),
        p.bias(0.4).unwrap(),
        p.bias(0.2).unwrap(),
    );
    let h = p.dense(w1, x).unwrap();
    let h = p.add_bias(h, b1).unwrap();
    let z = p.batch_norm(h).unwrap();
    let a = p.apply(Activation::Tanh, z).unwrap();
    let h = p.dense(w2, a).unwrap();
    let h = p.add_bias(h, b2).unwrap();
    let z = p.batch_norm(h).unwrap();
    let a = p.apply(Activation::Erf, z).unwrap();
    p.readout(a, ntk::program::Readout::new(1.1).bias_std(0.3).outputs(2))
        .unwrap();
    let net = p.init::<f64>(7, &mut StdRng::seed_from_u64(3)).unwrap();
    assert!(net.batch_coupled());
    let (x1, x2) = (common::gaussian(5, 3, 1), common::gaussian(4, 3, 2));
    let (j1, j2) = (fd_jacobian(&net, &x1), fd_jacobian(&net, &x2));
    let fd = prec::FINITE_DIFFERENCE;
    assert!(rel_err(&net.jacobian(&x1).unwrap(), &j1) < fd);
    assert!(rel_err(&net.jacobian(&x2).unwrap(), &j2) < fd);
    // Every output row depends on every sample: the Jacobian of one sample alone is
    // not the batch's row (a check that can fail if the coupling were dropped).
    let alone = net.jacobian(&x1.rows(0, 1).into_owned());
    assert!(alone.is_err(), "a batch of one sample has no batch norm");
    let two = net.jacobian(&x1.rows(0, 2).into_owned()).unwrap();
    assert!(rel_err(&two.rows(0, 2).into_owned(), &j1.rows(0, 2).into_owned()) > 1e-3);

    let full = empirical_ntk_full(&net, &x1, &x2).unwrap();
    assert!(rel_err(&full, &(&j1 * j2.transpose())) < fd);
    let traced = empirical_ntk(&net, &x1, &x2).unwrap();
    assert!(rel_err(&traced, &common::trace_over_outputs(&full, 2)) < prec::EXACT_F64);
    let within = empirical_ntk_full(&net, &x1, &x1).unwrap();
    assert!(rel_err(&within, &(&j1 * j1.transpose())) < fd);

    let r = common::inputs(5, 2, 7);
    let flat = DVector::from_fn(10, |row, _| r[(row / 2, row % 2)]);
    let vjp = net.vjp(&x1, &r).unwrap();
    let expected = j1.transpose() * flat;
    assert!((&vjp - &expected).norm() < fd * expected.norm());

    let groups = net.group_kernels(&x1, &x2).unwrap();
    let sum = groups
        .iter()
        .fold(DMatrix::zeros(5, 4), |acc, g| acc + g.total());
    assert!(rel_err(&sum, &traced) < prec::EXACT_F64);
    let (out, _) = net.forward_with_tangents(&x1).unwrap();
    assert!(rel_err(&out, &net.forward(&x1).unwrap()) < prec::ROUND_OFF);
}

/// A batch larger than the row blocks of `empirical_ntk` is never split: its kernel
/// is J Jᵀ of the whole batch's Jacobian, and a block of it (from
/// `empirical_ntk_block`) is cut from the whole batches' kernel.
#[test]
fn kernels_never_split_a_batch() {
    let p = bn_mlp(4, &[Activation::Relu], 1.0, 0.0, 1.0);
    let net = p.init::<f64>(16, &mut StdRng::seed_from_u64(5)).unwrap();
    let large = common::gaussian(150, 4, 9);
    let j = net.jacobian(&large).unwrap();
    let theta = empirical_ntk(&net, &large, &large).unwrap();
    assert!(rel_err(&theta, &(&j * j.transpose())) < prec::EXACT_F64);
    let other = common::gaussian(70, 4, 10);
    let cross = empirical_ntk(&net, &large, &other).unwrap();
    let jo = net.jacobian(&other).unwrap();
    assert!(rel_err(&cross, &(&j * jo.transpose())) < prec::EXACT_F64);
    let block = empirical_ntk_block(&net, &large, &other, 40..90, 10..30).unwrap();
    let expected = cross.view((40, 10), (50, 20)).into_owned();
    assert!(rel_err(&block, &expected) < prec::ROUND_OFF);
    assert!(empirical_ntk_block(&net, &large, &other, 40..90, 10..80).is_err());

    // The limit likewise: a block of the kernels between whole batches.
    let p = bn_mlp(8, &[Activation::Relu], 1.0, 0.0, 1.0);
    let (b1, b2) = (common::gaussian(7, 8, 11), common::gaussian(6, 8, 12));
    let whole = infinite_width(&p, &b1, &b2).unwrap();
    let block = infinite_width_block(&p, &b1, &b2, 2..5, 1..4).unwrap();
    assert!(rel_err(&block.ntk, &whole.ntk.view((2, 1), (3, 3)).into_owned()) < prec::ROUND_OFF);
}

/// f32 runs the same exact gradients.
#[test]
fn f32_agrees_with_f64() {
    let p = bn_mlp(3, &[Activation::Tanh, Activation::Relu], 1.2, 0.3, 1.0);
    let net64 = p.init::<f64>(32, &mut StdRng::seed_from_u64(1)).unwrap();
    let net32 = p.init::<f32>(32, &mut StdRng::seed_from_u64(1)).unwrap();
    let x = common::gaussian(6, 3, 4);
    let k64 = empirical_ntk(&net64, &x, &x).unwrap();
    let k32 = empirical_ntk(&net32, &x.map(|v| v as f32), &x.map(|v| v as f32)).unwrap();
    assert!(rel_err(&k32.map(f64::from), &k64) < prec::F32_VS_F64);
}

/// A neuron without spread across the batch (one sample, repeated samples, zero
/// inputs without a bias) has no batch norm: an error that says why, not NaN.
#[test]
fn a_neuron_without_spread_is_an_error() {
    let p = bn_mlp(3, &[Activation::Relu], 1.0, 0.0, 1.0);
    let net = p.init::<f64>(8, &mut StdRng::seed_from_u64(2)).unwrap();
    let row = common::gaussian(1, 3, 3);
    let repeated = DMatrix::from_fn(4, 3, |_, j| row[(0, j)]);
    for x in [row.clone(), repeated, DMatrix::zeros(4, 3)] {
        match net.forward(&x) {
            Err(Error::NonFiniteResult { reason, .. }) => {
                assert!(reason.contains("same value on every sample"), "{reason}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(empirical_ntk(&net, &x, &x).is_err());
    }
}

/// `Σ` and `E[J Θ Jᵀ]` of batch norm + φ over `h ∼ N(0, K)` by plain Monte Carlo:
/// batch norm written literally, its Jacobian by central differences of it. Each
/// batch (rows `ranges`) is normalised with its own statistics. Returns the means
/// of ψ_a ψ_bᵀ and J_a Θ_ab J_bᵀ for the block (a, b) = (first, last) range, and their
/// standard errors.
struct MonteCarlo {
    psi: DMatrix<f64>,
    psi_se: DMatrix<f64>,
    jtj: DMatrix<f64>,
    jtj_se: DMatrix<f64>,
}

fn batch_norm_literal(h: &[f64]) -> Vec<f64> {
    let b = h.len() as f64;
    let mean = h.iter().sum::<f64>() / b;
    let var = h.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / b;
    h.iter().map(|v| (v - mean) / var.sqrt()).collect()
}

fn monte_carlo(
    act: &Activation,
    k: &DMatrix<f64>,
    theta: &DMatrix<f64>,
    ranges: &[std::ops::Range<usize>],
    samples: usize,
    seed: u64,
) -> MonteCarlo {
    let n = k.nrows();
    let l = k.clone().cholesky().expect("K positive definite").l();
    let (ra, rb) = (ranges[0].clone(), ranges[ranges.len() - 1].clone());
    let (na, nb) = (ra.len(), rb.len());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sums = [DMatrix::zeros(na, nb), DMatrix::zeros(na, nb)];
    let mut squares = [DMatrix::zeros(na, nb), DMatrix::zeros(na, nb)];
    let step = 1e-5;
    let psi_and_jacobian = |h: &[f64]| {
        let z = batch_norm_literal(h);
        let psi: Vec<f64> = z.iter().map(|&v| act.phi(v)).collect();
        let b = h.len();
        let mut jac = DMatrix::zeros(b, b);
        for c in 0..b {
            let (mut plus, mut minus) = (h.to_vec(), h.to_vec());
            plus[c] += step;
            minus[c] -= step;
            let (zp, zm) = (batch_norm_literal(&plus), batch_norm_literal(&minus));
            for r in 0..b {
                jac[(r, c)] = act.derivative(z[r]) * (zp[r] - zm[r]) / (2.0 * step);
            }
        }
        (DVector::from_vec(psi), jac)
    };
    let theta_ab = theta.view((ra.start, rb.start), (na, nb)).into_owned();
    for _ in 0..samples {
        let g = DVector::from_fn(n, |_, _| StandardNormal.sample(&mut rng));
        let h = &l * g;
        let (pa, ja) = psi_and_jacobian(&h.as_slice()[ra.clone()]);
        let (pb, jb) = psi_and_jacobian(&h.as_slice()[rb.clone()]);
        let values = [&pa * pb.transpose(), &ja * &theta_ab * jb.transpose()];
        for ((s, q), v) in sums.iter_mut().zip(squares.iter_mut()).zip(values) {
            *s += &v;
            *q += v.map(|x| x * x);
        }
    }
    let m = samples as f64;
    let mean = |s: &DMatrix<f64>| s / m;
    let se = |s: &DMatrix<f64>, q: &DMatrix<f64>| {
        DMatrix::from_fn(na, nb, |i, j| {
            let mu = s[(i, j)] / m;
            ((q[(i, j)] / m - mu * mu).max(0.0) / (m - 1.0)).sqrt()
        })
    };
    MonteCarlo {
        psi: mean(&sums[0]),
        psi_se: se(&sums[0], &squares[0]),
        jtj: mean(&sums[1]),
        jtj_se: se(&sums[1], &squares[1]),
    }
}

/// Panics unless every entry of `limit` is within 4.5 standard errors of `mc`.
fn within_standard_errors(what: &str, limit: &DMatrix<f64>, mc: &DMatrix<f64>, se: &DMatrix<f64>) {
    for ((l, m), s) in limit.iter().zip(mc.iter()).zip(se.iter()) {
        assert!(
            (l - m).abs() <= 4.5 * s + 1e-12,
            "{what}: limit {l} vs Monte Carlo {m} ± {s} ({:.1} standard errors)",
            (l - m).abs() / s
        );
    }
}

/// The limit of a one-hidden-layer network, Σ = E[ψψᵀ] and Θ̊ − Σ = E[J Θ¹ Jᵀ] (σ_v = 1),
/// against the Monte Carlo estimate: ReLU within a batch and between two batches of
/// different sizes (the 2-D integrals under the joint Gaussian), Erf within a batch
/// (the sphere rule). B ≥ 6, where J Θ Jᵀ ∼ 1/‖Ph‖² has a finite variance.
#[test]
fn the_limit_matches_monte_carlo() {
    // d ≥ B₁ + B₂: the stacked batches' covariance is positive definite.
    let (d, sw, sb) = (14, 1.3, 0.4);
    for (act, sizes, seed) in [
        (Activation::Relu, vec![6], 1),
        (Activation::Relu, vec![6, 7], 2),
        (Activation::Erf, vec![6], 3),
        (Activation::LeakyRelu(-0.4), vec![7, 6], 4),
    ] {
        let p = bn_mlp(d, std::slice::from_ref(&act), sw, sb, 1.0);
        let batches: Vec<DMatrix<f64>> = sizes
            .iter()
            .enumerate()
            .map(|(r, &b)| common::gaussian(b, d, seed * 10 + r as u64))
            .collect();
        let x1 = &batches[0];
        let x2 = batches.last().unwrap();
        let limit = infinite_width(&p, x1, x2).unwrap();
        // The first layer's K = Θ¹ = σ_w² z·z̄/d + σ_b² on the stacked batches.
        let total: usize = sizes.iter().sum();
        let z = DMatrix::from_fn(total, d, |i, j| {
            if i < sizes[0] {
                x1[(i, j)]
            } else {
                x2[(i - sizes[0], j)]
            }
        });
        let k = (&z * z.transpose()) * (sw * sw / d as f64)
            + DMatrix::from_element(total, total, sb * sb);
        let ranges: Vec<_> = sizes
            .iter()
            .scan(0, |o, &b| {
                *o += b;
                Some(*o - b..*o)
            })
            .collect();
        let mc = monte_carlo(&act, &k, &k, &ranges, 200_000, seed);
        let what = format!("{act} on batches {sizes:?}");
        within_standard_errors(&format!("{what} NNGP"), &limit.nngp, &mc.psi, &mc.psi_se);
        let backward = &limit.ntk - &limit.nngp;
        within_standard_errors(&format!("{what} NTK"), &backward, &mc.jtj, &mc.jtj_se);
    }
}

/// The reference case of `tests/data/batchnorm.json` (Erf, B = 6, one hidden layer),
/// computed by an independent implementation (a sphere rule in another
/// parametrisation, converged to about 1e-10; see `tests/data/README.md`).
#[test]
fn matches_the_independent_reference() {
    let data: Value =
        serde_json::from_str(include_str!("../data/batchnorm.json")).expect("batchnorm.json");
    let c = common::reference_case(&data, "bn_erf_depth1");
    let a = &c["architecture"];
    assert_eq!(a["depth"], 1);
    assert_eq!(a["activation"], "erf");
    let p = bn_mlp(
        a["input_dim"].as_u64().unwrap() as usize,
        &[Activation::Erf],
        a["weight_std"].as_f64().unwrap(),
        a["bias_std"].as_f64().unwrap(),
        a["readout_std"].as_f64().unwrap(),
    );
    let x = common::matrix(&c["x"]);
    let k = infinite_width(&p, &x, &x).unwrap();
    let nngp = rel_err(&k.nngp, &common::matrix(&c["nngp"]));
    let ntk = rel_err(&k.ntk, &common::matrix(&c["ntk"]));
    // Measured: 5e-12 and 2e-9 (the reference is converged to about 1e-10).
    assert!(nngp < 1e-10, "NNGP relative error {nngp:e}");
    assert!(ntk < 1e-8, "NTK relative error {ntk:e}");
}

/// Batch norm removes the bias exactly and is scale invariant: neither kernel depends
/// on the σ_w, σ_b of the layers before it, and both are proportional to σ_v². Two
/// layers, homogeneous and smooth φ, within a batch and between two.
#[test]
fn kernels_are_invariant_to_sigma_w_and_sigma_b_and_scale_with_sigma_v() {
    let x1 = common::gaussian(6, 8, 21);
    let x2 = common::gaussian(5, 8, 22);
    for (acts, cross) in [
        (vec![Activation::Relu, Activation::Abs], true),
        (vec![Activation::Tanh, Activation::Erf], false),
    ] {
        let base = bn_mlp(8, &acts, 1.0, 0.0, 1.0);
        let b = if cross { &x2 } else { &x1 };
        let k0 = infinite_width(&base, &x1, b).unwrap();
        for (sw, sb, sv) in [(0.3, 0.0, 1.0), (2.5, 1.7, 1.0), (1.0, 0.5, 3.0)] {
            let p = bn_mlp(8, &acts, sw, sb, sv);
            let k = infinite_width(&p, &x1, b).unwrap();
            let s = sv * sv;
            assert!(
                rel_err(&(k.nngp / s), &k0.nngp) < 1e-10,
                "{acts:?} {sw} {sb} {sv}"
            );
            assert!(
                rel_err(&(k.ntk / s), &k0.ntk) < 1e-10,
                "{acts:?} {sw} {sb} {sv}"
            );
        }
    }
}

/// What the limit refuses, each with an error that says why: the NTK at B ≤ 3 (where
/// E[1/‖Ph‖²] diverges), a rank-deficient batch, a smooth φ at B ≥ 7 and between
/// batches, the per-group split, and a batch norm that is not in a chain.
#[test]
fn the_limit_refuses_what_it_cannot_compute() {
    let relu = bn_mlp(8, &[Activation::Relu], 1.0, 0.1, 1.0);
    for b in [2, 3] {
        let x = common::gaussian(b, 8, 1);
        match infinite_width(&relu, &x, &x) {
            Err(Error::NonFiniteResult { reason, .. }) => {
                assert!(reason.contains("infinite for B ≤ 3"), "{reason}");
            }
            other => panic!("B = {b}: expected an error, got {other:?}"),
        }
    }
    let x = common::gaussian(4, 8, 1);
    assert!(infinite_width(&relu, &x, &x).is_ok());
    // Two equal samples: the centred covariance is singular.
    let mut repeated = common::gaussian(6, 8, 2);
    let first = repeated.row(0).into_owned();
    repeated.row_mut(3).copy_from(&first);
    let err = infinite_width(&relu, &repeated, &repeated).unwrap_err();
    assert!(err.to_string().contains("singular"), "{err}");
    // Input dimension below B − 1.
    let narrow = bn_mlp(3, &[Activation::Relu], 1.0, 0.0, 1.0);
    let x = common::gaussian(6, 3, 3);
    assert!(matches!(
        infinite_width(&narrow, &x, &x),
        Err(Error::OutsideLimit { .. })
    ));
    // Smooth φ: B ≥ 7, and between two batches.
    let erf = bn_mlp(8, &[Activation::Erf], 1.0, 0.0, 1.0);
    let x7 = common::gaussian(7, 8, 4);
    let err = infinite_width(&erf, &x7, &x7).unwrap_err();
    assert!(err.to_string().contains("up to B = 6"), "{err}");
    let (a, b) = (common::gaussian(5, 8, 5), common::gaussian(4, 8, 6));
    let err = infinite_width(&erf, &a, &b).unwrap_err();
    assert!(err.to_string().contains("between two batches"), "{err}");
    // Per-group kernels.
    assert!(matches!(
        ntk::infinite_width_groups(&relu, &a, &a),
        Err(Error::OutsideLimit { .. })
    ));
    // Batch norm after the activation: its input is not Gaussian in the limit.
    let mut p = Program::new(8);
    let z = p.input(0..8).unwrap();
    let w = p.weight(1.0).unwrap();
    let h = p.dense(w, z).unwrap();
    let a1 = p.apply(Activation::Relu, h).unwrap();
    let n = p.batch_norm(a1).unwrap();
    p.output(n, 1.0).unwrap();
    let err = infinite_width(&p, &x7, &x7).unwrap_err();
    assert!(err.to_string().contains("dense"), "{err}");
    // The finite network of every refused program still works.
    let net = p.init::<f64>(16, &mut StdRng::seed_from_u64(1)).unwrap();
    assert!(empirical_ntk(&net, &x7, &x7).is_ok());
}

/// Finite networks approach the limit at about n^{−1/2} for B ≥ 6: a BatchNorm-ReLU
/// network on a batch of 8, widths 256 … 4096 (the B = 4, 5 exceptions are measured
/// by the slow test below and documented in `infinite::batch_norm`).
#[test]
fn finite_networks_converge_at_root_width() {
    let p = bn_mlp(10, &[Activation::Relu], 1.0, 0.2, 1.0);
    let x = common::gaussian(8, 10, 31);
    let seeds: Vec<u64> = (0..24).collect();
    let study = width_convergence(&p, &x, &[256, 1024, 4096], &seeds).unwrap();
    common::assert_root_width_rate(&study, 0.12);
    // Between two batches: the cross kernel of a wide network is close to the limit.
    let x2 = common::gaussian(7, 10, 32);
    let limit = infinite_width(&p, &x, &x2).unwrap().ntk;
    let net = p
        .init::<f64>(16_384, &mut StdRng::seed_from_u64(7))
        .unwrap();
    let theta = empirical_ntk(&net, &x, &x2).unwrap();
    assert!(
        rel_err(&theta, &limit) < 0.05,
        "{}",
        rel_err(&theta, &limit)
    );
}

/// The convergence rate against B, two layers: about −1/2 at B = 6 and 8, slower at
/// B = 4 and 5 (slow: `cargo test --release -- --ignored`).
#[test]
#[ignore = "slow: the convergence rate against the batch size"]
fn convergence_rate_against_batch_size() {
    let widths = [64, 128, 256, 512, 1024, 2048, 4096];
    let seeds: Vec<u64> = (0..100).collect();
    for b in [4, 5, 6, 8] {
        let p = bn_mlp(12, &[Activation::Relu, Activation::Relu], 1.0, 0.0, 1.0);
        let x = common::gaussian(b, 12, 40 + b as u64);
        let study = width_convergence(&p, &x, &widths, &seeds).unwrap();
        eprintln!("B = {b}: slope {:.3}", study.slope);
        if b >= 6 {
            common::assert_root_width_rate(&study, 0.1);
        } else {
            assert!(
                study.slope > -0.5 && study.slope < -0.1,
                "B = {b}: {}",
                study.slope
            );
        }
    }
}
