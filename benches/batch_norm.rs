//! Batch normalisation (issue 19): the infinite-width kernels of batch-norm chains and
//! the empirical NTK of their finite networks, each against the same network without
//! batch norm (the pairwise recursion, the per-sample backward pass).
//!
//! `batch_norm/relu_infinite/8`: two hidden layers dense → batch_norm → ReLU on one batch
//! of B = 8 inputs of dimension 12, Σ and Θ̊ (1-D integrals over t; target < 1 s).
//! `batch_norm/relu_between/7x5`: Tensor Programs II's one-layer BatchNorm-ReLU network
//! between two batches of 7 and 5 inputs of dimension 13 (the 2-D integrals of the
//! cross block, and both batches' own).
//! `batch_norm/erf_infinite/6`: two erf layers on B = 6 (the sphere rule, 26 points per
//! polar angle and a check at 20; target < 1 s).
//! `batch_norm/finite_ntk/1024`: the empirical NTK of the two-layer ReLU network at width
//! 1024 on B = 8 (one backward pass carries every sample's gradient through the batch
//! statistics; target < 1 s).
//! Baselines (`baseline_*`): the same programs without batch norm.
//!
//! Measured (2 shared cores): relu_infinite 0.69 ms, relu_between 11 ms, erf_infinite
//! 0.55 s, finite_ntk 9.1 ms; baselines 3 µs, 2.5 µs, 4.8 µs (compiled recursions) and
//! 1.3 ms.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, Program, empirical_ntk, infinite_width};

fn inputs(n: usize, d: usize, seed: usize) -> DMatrix<f64> {
    DMatrix::from_fn(n, d, |i, j| {
        (((i * 7919 + j * 104_729 + seed * 13) as f64) * 0.618_033_988_7).fract() - 0.5
    })
}

/// `acts.len()` hidden layers dense (+ bias 0.1) (→ batch_norm) → φ, readout σ_v = 1.
fn network(d: usize, acts: &[Activation], batch_norm: bool) -> Program {
    let mut p = Program::new(d);
    let mut z = p.input(0..d).expect("input");
    for act in acts {
        let w = p.weight(1.2).expect("weight");
        let b = p.bias(0.1).expect("bias");
        let h = p.dense(w, z).expect("dense");
        let mut h = p.add_bias(h, b).expect("bias");
        if batch_norm {
            h = p.batch_norm(h).expect("batch norm");
        }
        z = p.apply(act.clone(), h).expect("apply");
    }
    p.output(z, 1.0).expect("output");
    p
}

fn infinite(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm");
    group.sample_size(10);
    let relu = [Activation::Relu, Activation::Relu];
    let x = inputs(8, 12, 1);
    let (bn, plain) = (network(12, &relu, true), network(12, &relu, false));
    group.bench_function(BenchmarkId::new("relu_infinite", 8), |b| {
        b.iter(|| infinite_width(&bn, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.bench_function(BenchmarkId::new("baseline_relu_infinite", 8), |b| {
        b.iter(|| infinite_width(&plain, black_box(&x), black_box(&x)).expect("kernels"));
    });

    let tp2 = network(13, &[Activation::Relu], true);
    let tp2_plain = network(13, &[Activation::Relu], false);
    let (x1, x2) = (inputs(7, 13, 2), inputs(5, 13, 3));
    group.bench_function(BenchmarkId::new("relu_between", "7x5"), |b| {
        b.iter(|| infinite_width(&tp2, black_box(&x1), black_box(&x2)).expect("kernels"));
    });
    group.bench_function(BenchmarkId::new("baseline_relu_between", "7x5"), |b| {
        b.iter(|| infinite_width(&tp2_plain, black_box(&x1), black_box(&x2)).expect("kernels"));
    });

    let erf = [Activation::Erf, Activation::Erf];
    let x = inputs(6, 12, 4);
    let (bn, plain) = (network(12, &erf, true), network(12, &erf, false));
    group.bench_function(BenchmarkId::new("erf_infinite", 6), |b| {
        b.iter(|| infinite_width(&bn, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.bench_function(BenchmarkId::new("baseline_erf_infinite", 6), |b| {
        b.iter(|| infinite_width(&plain, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.finish();
}

fn finite(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm");
    group.sample_size(10);
    let relu = [Activation::Relu, Activation::Relu];
    let x = inputs(8, 12, 5);
    let mut rng = StdRng::seed_from_u64(0);
    let bn = network(12, &relu, true)
        .init::<f64>(1024, &mut rng)
        .expect("network");
    let plain = network(12, &relu, false)
        .init::<f64>(1024, &mut rng)
        .expect("network");
    group.bench_function(BenchmarkId::new("finite_ntk", 1024), |b| {
        b.iter(|| empirical_ntk(&bn, black_box(&x), black_box(&x)).expect("kernel"));
    });
    group.bench_function(BenchmarkId::new("baseline_finite_ntk", 1024), |b| {
        b.iter(|| empirical_ntk(&plain, black_box(&x), black_box(&x)).expect("kernel"));
    });
    group.finish();
}

criterion_group!(benches, infinite, finite);
criterion_main!(benches);
