//! Infinite-width kernels (NNGP and NTK together) of a deep MLP, against the unavoidable
//! part of the work as an in-process baseline: the input Gram matrix X Xᵀ.
//!
//! `infinite_width/relu3/N`: three hidden ReLU layers (closed form), d = 32, x1 = x2.
//! `infinite_width/relu_tanh_relu/N`: a Tanh layer in the middle (no closed form:
//! numerical integration, here at pre-activation variance ~0.27, where Gauss–Hermite
//! rules of 48 nodes are accurate), at smaller N.
//! neural-tangents 0.6.5's jitted analytic `kernel_fn(x, x, ('nngp', 'ntk'))` takes
//! about 0.86 s for relu3 at N = 4096 (f64, CPU, a machine of CI's kind).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ntk::nalgebra::DMatrix;
use ntk::{Activation, MlpSpec, infinite_width};

fn inputs(n: usize, d: usize) -> DMatrix<f64> {
    DMatrix::from_fn(n, d, |i, j| ((i * 31 + j * 17) as f64 * 0.37).sin())
}

fn relu3(c: &mut Criterion) {
    let d = 32;
    let spec = MlpSpec::new(d)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Relu)
        .weight_std(1.4)
        .bias_std(0.1);
    let mut group = c.benchmark_group("infinite_width");
    group.sample_size(10);
    for n in [256, 1024, 4096] {
        let x = inputs(n, d);
        group.bench_with_input(BenchmarkId::new("relu3", n), &x, |b, x| {
            b.iter(|| infinite_width(&spec, black_box(x), black_box(x)).expect("kernels"));
        });
        group.bench_with_input(BenchmarkId::new("baseline_gram", n), &x, |b, x| {
            b.iter(|| black_box(x) * black_box(x).transpose());
        });
    }
    group.finish();
}

fn quadrature(c: &mut Criterion) {
    let d = 32;
    let spec = MlpSpec::new(d)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Tanh)
        .hidden(512, Activation::Relu)
        .bias_std(0.1);
    let mut group = c.benchmark_group("infinite_width");
    group.sample_size(10);
    for n in [64, 256] {
        let x = inputs(n, d);
        group.bench_with_input(BenchmarkId::new("relu_tanh_relu", n), &x, |b, x| {
            b.iter(|| infinite_width(&spec, black_box(x), black_box(x)).expect("kernels"));
        });
    }
    group.finish();
}

criterion_group!(benches, relu3, quadrature);
criterion_main!(benches);
