//! Benchmark: the gradient-flow solver on an N × N kernel, N ∈ {256, 1024, 2048}.
//!
//! Group `gradient_flow/setup_and_predict` (the target: a fresh predictor
//! with its eigendecomposition, then one prediction on 256 test points, against
//! neural-tangents' `gradient_descent_mse` at N = 2048, ~0.91 s on LAPACK):
//! - `ntk`: `GradientFlow::new` + one `test` call;
//! - `krylov`: `KrylovFlow::new` + one `test` call (Lanczos, no eigendecomposition;
//!   the bench kernel has η t λ_max ≈ 3, so a few dozen steps suffice);
//! - `faer_eigen`: faer's self-adjoint eigendecomposition alone, called directly;
//! - `nalgebra_symmetric_eigen`: nalgebra's `SymmetricEigen::try_new` (N ≤ 1024; at
//!   N = 2048 a single run takes ~10 s, see the README);
//! - `gemm`: one N × N × N GEMM `a * b` through nalgebra (matrixmultiply), the
//!   hardware yardstick: setup / GEMM says how many GEMMs the setup is worth.
//!
//! Group `gradient_flow/predict`: one train + test prediction on a prepared flow
//! (O(N² + MN)), and `train_at` 100 times (one GEMM; id `train_many_100`).
//!
//! Group `gradient_flow/after_eigen`: a scalar libm loop (SSE code, as in the
//! activations) timed right after an eigendecomposition at N = 256: after nothing,
//! after faer called sequentially on this thread (`Par::Seq`), and after
//! `GradientFlow::new` (which runs faer on threads that end with it). faer's AVX-512
//! kernels can leave the upper register halves dirty, which slows later SSE code on
//! the same thread, for as long as the thread lives (so that variant runs last).
//!
//! Group `gradient_flow/kernel_regression`: t = ∞ by Cholesky vs the eigen path.
//!
//! Run with `cargo bench --bench gradient_flow`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ntk::nalgebra::{DMatrix, SymmetricEigen};
use ntk::rand::{RngExt, SeedableRng, rngs::StdRng};
use ntk::{GradientFlow, Horizon, KernelRegression, KrylovFlow};

const SIZES: [usize; 3] = [256, 1024, 2048];
const TEST_POINTS: usize = 256;

/// A kernel like an NTK on N inputs: a Gram matrix of N random features plus a small
/// ridge, with a spread-out spectrum.
fn kernel(n: usize) -> DMatrix<f64> {
    let mut rng = StdRng::seed_from_u64(n as u64);
    let m = n / 2;
    let a = DMatrix::from_fn(n, m, |_, _| rng.random_range(-1.0..1.0));
    &a * a.transpose() / m as f64 + DMatrix::identity(n, n) * 1e-3
}

fn random(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| rng.random_range(-1.0..1.0))
}

/// faer's eigendecomposition with faer's global parallelism (rayon's pool).
fn faer_eigen(a: &DMatrix<f64>) -> DMatrix<f64> {
    faer_eigen_with(a, faer::get_global_parallelism())
}

/// faer's eigendecomposition with parallelism `par` (`Par::Seq`: on this thread).
fn faer_eigen_with(a: &DMatrix<f64>, par: faer::Par) -> DMatrix<f64> {
    use faer::dyn_stack::{MemBuffer, MemStack};
    let n = a.nrows();
    let mut u = DMatrix::<f64>::zeros(n, n);
    let mut s = faer::diag::Diag::<f64>::zeros(n);
    let mut mem = MemBuffer::new(faer::linalg::evd::self_adjoint_evd_scratch::<f64>(
        n,
        faer::linalg::evd::ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    faer::linalg::evd::self_adjoint_evd(
        faer::MatRef::from_column_major_slice(a.as_slice(), n, n),
        s.as_mut(),
        Some(faer::MatMut::from_column_major_slice_mut(
            u.as_mut_slice(),
            n,
            n,
        )),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    )
    .expect("eigendecomposition");
    u
}

fn setup_and_predict(c: &mut Criterion) {
    let mut group = c.benchmark_group("gradient_flow/setup_and_predict");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let theta = kernel(n);
        let y = random(n, 1, 1);
        let f0 = random(n, 1, 2) * 0.1;
        let f0_test = random(TEST_POINTS, 1, 3) * 0.1;
        let theta_test = random(TEST_POINTS, n, 4) * 0.1;
        group.measurement_time(Duration::from_secs(if n >= 2048 { 30 } else { 8 }));
        group.bench_with_input(BenchmarkId::new("ntk", n), &n, |b, _| {
            b.iter(|| {
                let flow = GradientFlow::new(&theta, &y, 0.5).expect("flow");
                black_box(flow.test(1.0, &f0, &f0_test, &theta_test).expect("test"))
            });
        });
        group.bench_with_input(BenchmarkId::new("krylov", n), &n, |b, _| {
            b.iter(|| {
                let flow = KrylovFlow::new(&theta, &y, 0.5).expect("krylov");
                black_box(flow.test(1.0, &f0, &f0_test, &theta_test).expect("test"))
            });
        });
        group.bench_with_input(BenchmarkId::new("faer_eigen", n), &n, |b, _| {
            b.iter(|| black_box(faer_eigen(&theta)));
        });
        if n <= 1024 {
            group.bench_with_input(
                BenchmarkId::new("nalgebra_symmetric_eigen", n),
                &n,
                |b, _| {
                    b.iter(|| black_box(SymmetricEigen::try_new(theta.clone(), 1e-14, 0)));
                },
            );
        }
        let other = random(n, n, 5);
        group.bench_with_input(BenchmarkId::new("gemm", n), &n, |b, _| {
            b.iter(|| black_box(&theta * &other));
        });
    }
    group.finish();
}

fn predict(c: &mut Criterion) {
    let mut group = c.benchmark_group("gradient_flow/predict");
    group.sample_size(20);
    for n in SIZES {
        let theta = kernel(n);
        let y = random(n, 1, 1);
        let f0 = random(n, 1, 2) * 0.1;
        let f0_test = random(TEST_POINTS, 1, 3) * 0.1;
        let theta_test = random(TEST_POINTS, n, 4) * 0.1;
        let flow = GradientFlow::new(&theta, &y, 0.5).expect("flow");
        group.bench_with_input(BenchmarkId::new("train_and_test", n), &n, |b, _| {
            b.iter(|| {
                black_box(flow.train(1.0, &f0).expect("train"));
                black_box(flow.test(1.0, &f0, &f0_test, &theta_test).expect("test"))
            });
        });
        let times: Vec<f64> = (0..100).map(|i| 0.1 * i as f64).collect();
        let horizons = Horizon::times(&times);
        group.bench_with_input(BenchmarkId::new("train_many_100", n), &n, |b, _| {
            b.iter(|| black_box(flow.train_at(&horizons, &f0).expect("train_at")));
        });
        // Baseline: one matrix-vector product with the N × N kernel.
        group.bench_with_input(BenchmarkId::new("gemv", n), &n, |b, _| {
            b.iter(|| black_box(&theta * &f0));
        });
    }
    group.finish();
}

/// A scalar loop of libm calls (compiled as SSE, like the activations).
fn scalar_loop(v: &[f64]) -> f64 {
    v.iter()
        .map(|x| libm::erf(*x) + libm::exp(-x.abs()) + libm::log1p(x.abs()))
        .sum()
}

fn after_eigen(c: &mut Criterion) {
    let mut group = c.benchmark_group("gradient_flow/after_eigen");
    group.sample_size(20);
    let theta = kernel(256);
    let y = random(256, 1, 1);
    let v: Vec<f64> = (0..200_000).map(|i| (i as f64 * 1e-3).sin()).collect();
    let mut timed = |name: &str, before: &dyn Fn()| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    before();
                    let start = Instant::now();
                    black_box(scalar_loop(black_box(&v)));
                    total += start.elapsed();
                }
                total
            });
        });
    };
    timed("loop_alone", &|| {});
    timed("loop_after_gradient_flow_new", &|| {
        black_box(GradientFlow::new(&theta, &y, 0.5).expect("flow"));
    });
    // Last: once faer has run on this thread, the thread stays slow for SSE code.
    timed("loop_after_faer_same_thread", &|| {
        black_box(faer_eigen_with(&theta, faer::Par::Seq));
    });
    group.finish();
}

fn kernel_regression(c: &mut Criterion) {
    let mut group = c.benchmark_group("gradient_flow/kernel_regression");
    group.sample_size(10);
    for n in [1024, 2048] {
        let theta = kernel(n);
        let y = random(n, 1, 1);
        let f0 = random(n, 1, 2) * 0.1;
        let f0_test = random(TEST_POINTS, 1, 3) * 0.1;
        let theta_test = random(TEST_POINTS, n, 4) * 0.1;
        group.bench_with_input(BenchmarkId::new("cholesky", n), &n, |b, _| {
            b.iter(|| {
                let reg = KernelRegression::new(&theta, &y, 0.0).expect("regression");
                black_box(reg.test(&f0, &f0_test, &theta_test).expect("test"))
            });
        });
        group.bench_with_input(BenchmarkId::new("nalgebra_cholesky", n), &n, |b, _| {
            b.iter(|| black_box(theta.clone().cholesky().expect("spd").solve(&y)));
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    setup_and_predict,
    predict,
    after_eigen,
    kernel_regression
);
criterion_main!(benches);
