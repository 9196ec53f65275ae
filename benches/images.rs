//! Image kernels at real size: Myrtle networks on 32 × 32 × 3 images, the workload of
//! the infinite-width image literature (Shankar et al. 2020; neural-tangents' README
//! quotes 316 V100-hours for the Myrtle-5 kernel of CIFAR-10).
//!
//! `images/myrtle5_32x32/N`: the NNGP and NTK of `zoo::myrtle(5, (32, 32), 3)` between
//! N images and themselves (N² entries), f64. neural-tangents 0.6.5 (jax 0.4.23, jit,
//! CPU, 2 cores, f64) takes about 0.31 s per entry at N = 4. Baseline: the input work
//! every method needs, the P × P position Gram X_i X_jᵀ (P = 1024 pixels, 3 channels)
//! of every pair, as one nalgebra product each.
//! `images/myrtle5_16x16/N`: the same network on 16 × 16 images.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ntk::infinite_width;
use ntk::nalgebra::DMatrix;
use ntk::zoo;

fn images(n: usize, d: usize) -> DMatrix<f64> {
    DMatrix::from_fn(n, d, |i, j| ((i * 31 + j * 17) as f64 * 0.37).sin())
}

/// Every pair's P × P position Gram of N images of P pixels × `channels`.
fn position_grams(x: &DMatrix<f64>, channels: usize) -> f64 {
    let pixels = x.ncols() / channels;
    let rows: Vec<DMatrix<f64>> = (0..x.nrows())
        .map(|i| DMatrix::from_fn(pixels, channels, |p, c| x[(i, p * channels + c)]))
        .collect();
    let mut total = 0.0;
    for a in &rows {
        for b in &rows {
            total += (a * b.transpose())[(0, 0)];
        }
    }
    total
}

fn myrtle(c: &mut Criterion) {
    let mut group = c.benchmark_group("images");
    group.sample_size(10);
    for (side, n) in [(16usize, 8usize), (32, 4)] {
        let program = zoo::myrtle(5, (side, side), 3).expect("a Myrtle network");
        let x = images(n, side * side * 3);
        let name = format!("myrtle5_{side}x{side}");
        group.bench_with_input(BenchmarkId::new(&name, n), &x, |b, x| {
            b.iter(|| infinite_width(black_box(&program), x, x).expect("finite kernels"))
        });
        group.bench_with_input(
            BenchmarkId::new(format!("{name}_position_grams"), n),
            &x,
            |b, x| b.iter(|| position_grams(black_box(x), 3)),
        );
    }
    group.finish();
}

criterion_group!(benches, myrtle);
criterion_main!(benches);
