//! Benchmark: the empirical NTK Θ(x, x) of an MLP with three hidden ReLU layers of
//! width 512 on d = 32 inputs, N ∈ {64, 256, 1024}, in f64 and f32.
//!
//! Baselines in the same group:
//! - `naive_jjt`: the explicit Jacobian J (N × P, P = 541 184) from `jacobian`, then
//!   J Jᵀ (only N ≤ 256: at N = 256, J alone is 1.1 GB). J Jᵀ is summed over column
//!   chunks, Σ_c J_c J_cᵀ with 1024 columns each, which runs at GEMM speed: nalgebra's
//!   transpose of the whole N × 541k matrix alone takes longer than the product;
//! - `gemm_equal_flops`: one plain GEMM `a * bᵀ` (a, b: N × m, bᵀ stored) with as
//!   many floating-point operations as the kernel's minimal work (see [`kernel_flops`]),
//!   split over the same number of threads as the kernel's row blocks. The ratio
//!   kernel / GEMM says how close to the hardware's GEMM rate the kernel runs.
//!
//! Every benchmark's throughput is the kernel's FLOP count, so criterion's
//! "elem/s" is the effective FLOP/s (for `gemm_equal_flops` its true FLOP/s).
//!
//! Run with `cargo bench --bench empirical_ntk`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ntk::nalgebra::DMatrix;
use ntk::rand::{RngExt, SeedableRng, rngs::StdRng};
use ntk::{Activation, Mlp, MlpSpec, NtkModel, Scalar, empirical_ntk};

/// Input dimension.
const D: usize = 32;
/// Width of each hidden layer.
const WIDTH: usize = 512;
/// Sample counts.
const SIZES: [usize; 3] = [64, 256, 1024];

fn spec() -> MlpSpec {
    MlpSpec::new(D)
        .hidden(WIDTH, Activation::Relu)
        .hidden(WIDTH, Activation::Relu)
        .hidden(WIDTH, Activation::Relu)
}

fn inputs<T: Scalar>(n: usize) -> DMatrix<T> {
    let mut rng = StdRng::seed_from_u64(n as u64);
    DMatrix::from_fn(n, D, |_, _| T::from_f64_lossy(rng.random_range(-1.0..1.0)))
}

/// The floating-point work of Θ(x, x) at N samples (k = 1, layer widths n⁰ = 32,
/// n¹ = n² = n³ = 512, n⁴ = 1), counted as the minimum any method needs:
/// - forward H^l = X^{l−1} W^{lᵀ}: 2 N n^{l−1} n^l per layer;
/// - backward G^{l−1} = G^l W^l: 2 N n^l n^{l−1} for l = 2..4;
/// - Gram matrices X Xᵀ and G Gᵀ per layer, each counted once by symmetry:
///   N² (n^{l−1} + n^l).
///
/// At N = 1024 this is 5.4 GFLOP. The code computes somewhat more (whole diagonal
/// blocks), so a kernel / GEMM time ratio of 1 would mean running faster than GEMM on
/// the extra work. Entrywise work (activations, Hadamard products, sums) is
/// O(N² L + N Σ n) and left out.
fn kernel_flops(n: usize) -> f64 {
    let widths = spec().widths();
    let n_f = n as f64;
    let mut flops = 0.0;
    for w in widths.windows(2) {
        flops += 2.0 * n_f * w[0] as f64 * w[1] as f64; // forward
    }
    for w in widths.windows(2).skip(1) {
        flops += 2.0 * n_f * w[0] as f64 * w[1] as f64; // backward
    }
    let gram_width: usize = widths.windows(2).map(|w| w[0] + w[1]).sum();
    flops + n_f * n_f * gram_width as f64
}

/// J Jᵀ as Σ over chunks of 1024 columns of J_c J_cᵀ (each a GEMM).
fn gram_by_column_chunks(j: &DMatrix<f64>) -> DMatrix<f64> {
    const CHUNK: usize = 1024;
    let mut gram = DMatrix::zeros(j.nrows(), j.nrows());
    for start in (0..j.ncols()).step_by(CHUNK) {
        let c = j.columns(start, CHUNK.min(j.ncols() - start));
        gram += c * c.transpose();
    }
    gram
}

/// `&a * b.transpose()`, the rows of `a` split over `threads` scoped threads.
fn gemm<T: Scalar>(a: &DMatrix<T>, bt: &DMatrix<T>, threads: usize) -> Vec<DMatrix<T>> {
    let chunk = a.nrows().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = (t * chunk).min(a.nrows());
                let len = chunk.min(a.nrows() - start);
                s.spawn(move || a.rows(start, len) * bt)
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("GEMM thread"))
            .collect()
    })
}

fn bench(c: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let net64: Mlp<f64> = spec()
        .init(&mut StdRng::seed_from_u64(0))
        .expect("valid spec");
    let net32: Mlp<f32> = Mlp::from_parameters(net64.spec(), &net64.parameters().map(|v| v as f32))
        .expect("same spec");

    let mut group = c.benchmark_group("empirical_ntk");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for n in SIZES {
        let flops = kernel_flops(n);
        // The GEMM baseline: a, b of N × m with 2 N² m = flops.
        let m = (flops / (2.0 * (n * n) as f64)).round() as usize;
        eprintln!(
            "N = {n}: kernel GEMM work {:.3} GFLOP; baseline GEMM {n} x {m} x {n} on {threads} threads",
            flops / 1e9
        );
        group.throughput(Throughput::Elements(flops as u64));

        let x64 = inputs::<f64>(n);
        let x32 = inputs::<f32>(n);
        group.bench_with_input(BenchmarkId::new("mlp3x512", n), &x64, |b, x| {
            b.iter(|| empirical_ntk(&net64, black_box(x), black_box(x)).expect("kernel"));
        });
        group.bench_with_input(BenchmarkId::new("mlp3x512_f32", n), &x32, |b, x| {
            b.iter(|| empirical_ntk(&net32, black_box(x), black_box(x)).expect("kernel"));
        });

        let a64 = DMatrix::<f64>::from_fn(n, m, |i, j| ((i * 7 + j * 3) % 11) as f64 - 5.0);
        let bt64 = a64.map(|v| 0.5 * v).transpose();
        group.bench_function(BenchmarkId::new("gemm_equal_flops", n), |b| {
            b.iter(|| gemm(black_box(&a64), black_box(&bt64), threads));
        });
        let a32 = a64.map(|v| v as f32);
        let bt32 = bt64.map(|v| v as f32);
        group.bench_function(BenchmarkId::new("gemm_equal_flops_f32", n), |b| {
            b.iter(|| gemm(black_box(&a32), black_box(&bt32), threads));
        });

        if n == SIZES[0] {
            // The baselines compute the same kernel (checked once, untimed).
            let theta = empirical_ntk(&net64, &x64, &x64).expect("kernel");
            let naive = gram_by_column_chunks(&net64.jacobian(&x64).expect("jacobian"));
            let err = (&theta - &naive).norm() / naive.norm();
            assert!(err < 1e-10, "kernel vs J Jᵀ: {err:e}");
        }
        if n <= 256 {
            group.bench_with_input(BenchmarkId::new("naive_jjt", n), &x64, |b, x| {
                b.iter(|| {
                    let j = net64.jacobian(black_box(x)).expect("jacobian");
                    gram_by_column_chunks(&j)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
