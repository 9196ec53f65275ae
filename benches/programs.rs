//! Programs: a 1-D CNN's kernels, how an RNN's cost grows with its length, and what the
//! generality of the program engine costs on an MLP.
//!
//! `programs/cnn_infinite/N`: neural-tangents' `serial(Conv(·, (3,), 'CIRCULAR', W_std 1.4,
//! b_std 0.1), Relu)×3, GlobalAvgPool, Dense(1)` on 16 positions × 3 channels, x1 = x2,
//! f64. neural-tangents 0.6.5 (jit, a machine of CI's kind) takes 0.28 s at N = 128 and
//! 1.30 s at N = 256. Baseline: the MLP with the same number of ReLU dual evaluations per entry.
//! `programs/cnn2d_infinite/32`: a 2-D CNN (two circular 3 × 3 ReLU convolutions, global
//! average pooling) on N = 32 images of 8 × 8 pixels × 3 channels, its tapes compiled
//! once (`InfiniteWidth`); neural-tangents 0.6.5 (jit) takes 0.33–0.36 s. Baseline: the MLP
//! with as many ReLU dual evaluations per entry (depth 2·64² = 8192).
//! `programs/cnn_empirical/128`: its empirical NTK at width 128, N = 128, against the
//! explicit J Jᵀ (neural-tangents' structured derivatives: 0.72 s).
//! `programs/rnn_last/T` and `programs/rnn_mean/T`: an erf RNN over T tokens of
//! dimension 3, N = 64, read out at the last state (cost linear in T) or through the
//! mean of the states (quadratic).
//! `programs/mlp/1024`: `Program::try_from(&spec)` against the fused MLP engine on the
//! infinite-width benchmark's MLP.
//! `programs/transformer/T`: Tensor Programs II's one-layer ReLU Transformer (tied 1/n
//! attention, LayerNorm, an MLP block, mean pooling) on N = 128 sequences of T tokens
//! of dimension 3. Cost model: per pair of sequences O(T²) Gaussian expectations and
//! O(T³) for the attention products (C^y = (A+I) C^k (Ā+I)ᵀ, never a dense (NT)×(NT)
//! product), so T = 16 should take about 8× T = 8. Baseline: the Gram matrix of all
//! N·T tokens, the input work every method needs.
//! `programs/cnn16x16_repeat/{first_call, later_call, held_instance}/4`: a 2-D CNN (two
//! circular 3 × 3 ReLU convolutions on 16 × 16 pixels × 3 channels, pooling), N = 4: the
//! first `infinite_width` call on a program (compile and run), a later call on the same
//! program (the compilation comes from the process-wide cache), and the baseline, one
//! `InfiniteWidth` held across calls.
//!
//! Every other benchmark calls `infinite_width` repeatedly on one program, so it measures
//! the run: the compilation is made once, before the first timed iteration.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::zoo::{self, SequenceReadout};
use ntk::{Activation, MlpSpec, NtkModel, Program, empirical_ntk, infinite_width};

fn inputs(n: usize, d: usize) -> DMatrix<f64> {
    DMatrix::from_fn(n, d, |i, j| ((i * 31 + j * 17) as f64 * 0.37).sin())
}

/// The benchmark CNNs: `layers` circular ReLU convolutions with a `taps` filter over a
/// row-major `grid` of positions of 3 channels (σ_w 1.4, σ_b 0.1), global average
/// pooling. The 1-D CNN is the grid `(1, 16)` with taps `(1, 3)`.
fn cnn(grid: (usize, usize), taps: (usize, usize), layers: usize) -> Program {
    cnn_with_std(grid, taps, layers, 1.4)
}

/// [`cnn`] with weight standard deviation `sigma_w`.
fn cnn_with_std(
    grid: (usize, usize),
    taps: (usize, usize),
    layers: usize,
    sigma_w: f64,
) -> Program {
    zoo::Cnn::new(grid, 3)
        .taps(taps)
        .layers(layers)
        .weight_std(sigma_w)
        .bias_std(0.1)
        .program()
        .expect("a valid CNN")
}

/// Tensor Programs II's erf RNN over `steps` tokens of dimension 3.
fn rnn(steps: usize, mean_pool: bool) -> Program {
    let readout = if mean_pool {
        SequenceReadout::MeanState
    } else {
        SequenceReadout::LastState
    };
    zoo::Rnn::new(steps, 3)
        .readout(readout)
        .program()
        .expect("a valid RNN")
}

fn cnn_infinite(c: &mut Criterion) {
    let p = cnn((1, 16), (1, 3), 3);
    // Per entry the CNN evaluates 3 layers × 16² position pairs of the ReLU dual; an
    // MLP of depth 3·16² = 768 does the same number with the fused engine.
    let mut baseline = MlpSpec::new(48);
    for _ in 0..768 {
        baseline = baseline.hidden(1, Activation::Relu);
    }
    let baseline = baseline.weight_std(1.4).bias_std(0.1);
    let mut group = c.benchmark_group("programs");
    group.sample_size(10);
    for n in [128, 256] {
        let x = inputs(n, 48);
        group.bench_with_input(BenchmarkId::new("cnn_infinite", n), &x, |b, x| {
            b.iter(|| infinite_width(&p, black_box(x), black_box(x)).expect("kernels"));
        });
        group.bench_with_input(BenchmarkId::new("baseline_mlp768", n), &x, |b, x| {
            b.iter(|| infinite_width(&baseline, black_box(x), black_box(x)).expect("kernels"));
        });
    }
    group.finish();
}

fn cnn2d_infinite(c: &mut Criterion) {
    let p = cnn((8, 8), (3, 3), 2);
    // Per entry: 2 layers × 64² pixel pairs of the ReLU dual = 8192, as an MLP that deep.
    let mut baseline = MlpSpec::new(192);
    for _ in 0..8192 {
        baseline = baseline.hidden(1, Activation::Relu);
    }
    let baseline = baseline.weight_std(1.4).bias_std(0.1);
    let x = inputs(32, 192);
    let iw = ntk::InfiniteWidth::new(&p).expect("program");
    let mut group = c.benchmark_group("programs");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("cnn2d_infinite", 32), |b| {
        b.iter(|| iw.kernels(black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.bench_function(BenchmarkId::new("baseline_mlp8192", 32), |b| {
        b.iter(|| infinite_width(&baseline, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.finish();
}

fn cnn_empirical(c: &mut Criterion) {
    let p = cnn((1, 16), (1, 3), 3);
    let net = p
        .init::<f64>(128, &mut StdRng::seed_from_u64(0))
        .expect("network");
    let x = inputs(128, 48);
    let mut group = c.benchmark_group("programs");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("cnn_empirical", 128), |b| {
        b.iter(|| empirical_ntk(&net, black_box(&x), black_box(&x)).expect("kernel"));
    });
    group.bench_function(BenchmarkId::new("baseline_jacobian", 128), |b| {
        b.iter(|| {
            let j = net.jacobian(black_box(&x)).expect("jacobian");
            &j * j.transpose()
        });
    });
    group.finish();
}

fn rnn_length(c: &mut Criterion) {
    let n = 64;
    let mut group = c.benchmark_group("programs");
    group.sample_size(10);
    for steps in [16, 64] {
        let x = inputs(n, 3 * steps);
        for (name, mean) in [("rnn_last", false), ("rnn_mean", true)] {
            let p = rnn(steps, mean);
            group.bench_with_input(BenchmarkId::new(name, steps), &x, |b, x| {
                b.iter(|| infinite_width(&p, black_box(x), black_box(x)).expect("kernels"));
            });
        }
    }
    group.finish();
}

fn mlp(c: &mut Criterion) {
    let spec = MlpSpec::new(32)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Relu)
        .weight_std(1.4)
        .bias_std(0.1);
    let p = Program::try_from(&spec).expect("a valid spec");
    let x = inputs(1024, 32);
    let mut group = c.benchmark_group("programs");
    group.sample_size(10);
    group.bench_function(BenchmarkId::new("mlp_program", 1024), |b| {
        b.iter(|| infinite_width(&p, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.bench_function(BenchmarkId::new("mlp_fused", 1024), |b| {
        b.iter(|| infinite_width(&spec, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.finish();
}

/// Tensor Programs II's one-layer Transformer over `tokens` tokens of dimension 3.
fn transformer(tokens: usize) -> Program {
    zoo::Transformer::new(tokens, 3)
        .program()
        .expect("a valid Transformer")
}

fn transformer_length(c: &mut Criterion) {
    let n = 128;
    let mut group = c.benchmark_group("programs");
    group.sample_size(10);
    for tokens in [8, 16] {
        let p = transformer(tokens);
        let x = inputs(n, 3 * tokens);
        group.bench_with_input(BenchmarkId::new("transformer", tokens), &x, |b, x| {
            b.iter(|| infinite_width(&p, black_box(x), black_box(x)).expect("kernels"));
        });
        let all_tokens =
            DMatrix::from_fn(n * tokens, 3, |r, j| x[(r / tokens, (r % tokens) * 3 + j)]);
        group.bench_with_input(
            BenchmarkId::new("baseline_token_gram", tokens),
            &all_tokens,
            |b, t| {
                b.iter(|| black_box(t) * black_box(t).transpose());
            },
        );
    }
    group.finish();
}

/// The first call on a program compiles it; later calls find the compilation in the
/// process-wide cache. Each `first_call` iteration builds a program never seen before
/// (σ_w moved by 1e-9 per iteration, so its structure is new) and computes its kernels;
/// `later_call` calls `infinite_width` on one program again and again; the baseline,
/// `held_instance`, runs the tapes of one `InfiniteWidth` compiled before timing.
fn compile_once(c: &mut Criterion) {
    let (grid, taps, layers, n) = ((16, 16), (3, 3), 2, 4);
    let x = inputs(n, grid.0 * grid.1 * 3);
    let p = cnn(grid, taps, layers);
    let held = ntk::InfiniteWidth::new(&p).expect("program");
    held.kernels(&x, &x).expect("kernels");
    let mut group = c.benchmark_group("programs/cnn16x16_repeat");
    group.sample_size(10);
    let mut fresh = 0u32;
    group.bench_function(BenchmarkId::new("first_call", n), |b| {
        b.iter_batched(
            || {
                fresh += 1;
                cnn_with_std(grid, taps, layers, 1.4 + 1e-9 * f64::from(fresh))
            },
            |q| infinite_width(&q, black_box(&x), black_box(&x)).expect("kernels"),
            criterion::BatchSize::PerIteration,
        );
    });
    group.bench_function(BenchmarkId::new("later_call", n), |b| {
        b.iter(|| infinite_width(&p, black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.bench_function(BenchmarkId::new("held_instance", n), |b| {
        b.iter(|| held.kernels(black_box(&x), black_box(&x)).expect("kernels"));
    });
    group.finish();
}

criterion_group!(
    benches,
    compile_once,
    cnn_infinite,
    cnn2d_infinite,
    cnn_empirical,
    rnn_length,
    mlp,
    transformer_length
);
criterion_main!(benches);
