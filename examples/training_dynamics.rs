//! Training follows the limit, for any architecture (Tensor Programs IIb).
//!
//! Four networks described as [`Program`]s — Tensor Programs II's RNN, its one-layer
//! Transformer, a 1-D CNN and a residual MLP — are trained by full-batch gradient
//! descent ([`GradientDescent`], loss ½Σ‖f − y‖², a sum) at widths 64 … `--max-width`,
//! `--seeds` initialisations each, on a small synthetic sequence regression task:
//! 16 training and 8 test sequences of 5 tokens of dimension 3, N(0, 1) entries from a
//! fixed seed, target y = sin(s) + s/2 with s = Σ_t (x_{t,1} − x_{t,2}) / √10 (a smooth
//! function of the whole sequence). The residual MLP reads the same 15 numbers as one
//! flat input.
//!
//! Each trained network is compared, at the recorded steps, with the discrete-step
//! prediction from the same f₀ (the network's own initial outputs),
//! f_s(x) = f₀(x) + Θ(x, X) Θ⁻¹ (I − (I − ηΘ)^s)(Y − f₀(X))
//! ([`GradientFlow::train_at`] / [`GradientFlow::test_at`] with [`Horizon::Steps`]),
//! with Θ = Θ̊, the architecture's infinite-width NTK ([`infinite_width`]), and with
//! Θ = Θ₀, the network's own empirical NTK at initialisation (its linearisation). The
//! deviation is the relative error on the test points
//! ‖f_s^net(X_test) − f_s^pred(X_test)‖ / ‖f_s^pred(X_test) − f₀(X_test)‖ (Frobenius
//! norms; the denominator is how far the prediction moved), averaged over seeds.
//! Theory: O(n^{−1/2}) against the limit (Θ₀ − Θ̊ and the kernel's motion are both
//! O(n^{−1/2})), faster against the linearisation (about n^{−1}).
//!
//! η = 1/λ_max(Θ̊) on the training block (half the stable rate 2/λ_max), and the number
//! of steps is `--steps`.
//!
//! ```sh
//! cargo run --release --example training_dynamics                      # about 2 minutes
//! cargo run --release --example training_dynamics -- --max-width 4096   # about 8 minutes (estimated)
//! cargo run --release --example training_dynamics -- --help
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{GradientDescent, GradientFlow, Horizon, Program, empirical_ntk, infinite_width, zoo};
use plotters::prelude::{BLACK, BLUE, Color, GREEN, MAGENTA, RED, SeriesLabelPosition};
use rand_distr::{Distribution, StandardNormal};

mod support;
use support::plot::{Chart, Scale, Series};

/// Gradient descent on an RNN, a Transformer, a CNN and a residual MLP of widths
/// 64 … --max-width against the infinite-width prediction from the same initial outputs
/// (and against each network's own linearisation), with fitted log-log slopes
/// (theory: -1/2 against the limit).
#[derive(Parser)]
struct Args {
    /// The largest width (a power of two from 128 to 8192): widths 64, 128, …, max-width.
    /// 4096 should take about four times as long as the default (estimated from the
    /// cost per width; the Transformer dominates).
    #[arg(long, default_value_t = 2048, value_parser = power_of_two)]
    max_width: usize,
    /// Random initialisations per width.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Gradient-descent steps, at η = 1/λ_max(Θ̊).
    #[arg(long, default_value_t = STEPS, value_parser = clap::value_parser!(u64).range(4..=100_000))]
    steps: u64,
    /// Where to write the log-log plot (SVG).
    #[arg(long, default_value = "out/training_dynamics.svg")]
    plot: PathBuf,
    /// Write the plot to docs/training_dynamics.svg (the copy shown in the README).
    #[arg(long, conflicts_with = "plot")]
    docs: bool,
}

const STEPS: u64 = 64;
const TOKENS: usize = 5;
const TOKEN_DIM: usize = 3;
const N_TRAIN: usize = 16;
const N_TEST: usize = 8;

fn power_of_two(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("expected a whole number, got {s:?}"))?;
    if n.is_power_of_two() && (128..=8192).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "the largest width must be a power of two from 128 to 8192, got {n}"
        ))
    }
}

/// One architecture and its infinite-width NTK on the joint inputs.
struct Architecture {
    name: &'static str,
    program: Program,
    /// Θ̊ on [X_train; X_test].
    limit: DMatrix<f64>,
}

/// Deviations of one trained network, test points, at each recorded step.
struct Run {
    /// Against the infinite-width prediction.
    limit: Vec<f64>,
    /// Against the network's own linearisation.
    linear: Vec<f64>,
    /// The same on the training points, at the last step (against the limit).
    limit_train: f64,
    /// loss at the last step / loss at initialisation.
    loss_ratio: f64,
    /// ‖Θ₀ − Θ̊‖_F / ‖Θ̊‖_F on [X_train; X_test].
    kernel: f64,
}

/// One row of the table: means over seeds.
struct Row {
    width: usize,
    limit: f64,
    limit_std: f64,
    linear: f64,
    limit_train: f64,
    limit_mid: f64,
    loss_ratio: f64,
    kernel: f64,
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

/// `rows` × `cols` standard normal entries from a fixed seed.
fn inputs(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
}

/// y = sin(s) + s/2, s = Σ_t (x_{t,1} − x_{t,2}) / √(2T): a smooth function of the sequence.
fn targets(x: &DMatrix<f64>) -> DMatrix<f64> {
    DMatrix::from_fn(x.nrows(), 1, |i, _| {
        let s = (0..TOKENS)
            .map(|t| x[(i, t * TOKEN_DIM)] - x[(i, t * TOKEN_DIM + 1)])
            .sum::<f64>()
            / ((2 * TOKENS) as f64).sqrt();
        s.sin() + 0.5 * s
    })
}

/// The train-train and test-train blocks of a kernel on [X_train; X_test].
fn blocks(joint: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    (
        joint.view((0, 0), (N_TRAIN, N_TRAIN)).into_owned(),
        joint.view((N_TRAIN, 0), (N_TEST, N_TRAIN)).into_owned(),
    )
}

/// ‖a − b‖ / ‖b − f₀‖.
fn relative(a: &DMatrix<f64>, b: &DMatrix<f64>, f0: &DMatrix<f64>) -> f64 {
    (a - b).norm() / (b - f0).norm()
}

#[allow(clippy::too_many_arguments)]
fn train_one(
    a: &Architecture,
    width: usize,
    seed: u64,
    x: &DMatrix<f64>,
    x_test: &DMatrix<f64>,
    joint: &DMatrix<f64>,
    y: &DMatrix<f64>,
    eta: f64,
    record: &[usize],
) -> Result<Run, ntk::Error> {
    let mut net = a
        .program
        .init::<f64>(width, &mut StdRng::seed_from_u64(seed))?;
    let theta0 = empirical_ntk(&net, joint, joint)?;
    let steps = *record.last().unwrap_or(&0);
    let trained = GradientDescent::new(eta, steps)?
        .record_at(record)?
        .fit(&mut net, x, y, x_test)?;
    let (f0, f0_test) = (&trained.train_outputs[0], &trained.test_outputs[0]);
    let horizons = Horizon::steps(&trained.steps);
    let predict = |kernel: &DMatrix<f64>| -> Result<_, ntk::Error> {
        let (train, test) = blocks(kernel);
        let flow = GradientFlow::new(&train, y, eta)?;
        Ok((
            flow.train_at(&horizons, f0)?,
            flow.test_at(&horizons, f0, f0_test, &test)?,
        ))
    };
    let (limit_train, limit_test) = predict(&a.limit)?;
    let (_, linear_test) = predict(&theta0)?;
    // Step 0 is f₀ itself: nothing has moved yet, so it is left out.
    let deviations = |pred: &[DMatrix<f64>]| -> Vec<f64> {
        (1..pred.len())
            .map(|s| relative(&trained.test_outputs[s], &pred[s], f0_test))
            .collect()
    };
    let last = trained.steps.len() - 1;
    Ok(Run {
        limit: deviations(&limit_test),
        linear: deviations(&linear_test),
        limit_train: relative(&trained.train_outputs[last], &limit_train[last], f0),
        loss_ratio: trained.losses[last] / trained.losses[0],
        kernel: (&theta0 - &a.limit).norm() / a.limit.norm(),
    })
}

fn mean(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.collect();
    let k = v.len() as f64;
    let m = v.iter().sum::<f64>() / k;
    let std = if v.len() > 1 {
        (v.iter().map(|e| (e - m).powi(2)).sum::<f64>() / (k - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, std)
}

fn run(args: Args) -> support::Result {
    let started = Instant::now();
    let plot_path = if args.docs {
        PathBuf::from("docs/training_dynamics.svg")
    } else {
        args.plot.clone()
    };
    let widths: Vec<usize> = (6..=args.max_width.trailing_zeros())
        .map(|k| 1 << k)
        .collect();
    let steps = args.steps as usize;
    // Recorded steps: a quarter, a half and all of the run (0 for f₀).
    let record = [0, steps / 4, steps / 2, steps];

    let x = inputs(N_TRAIN, TOKENS * TOKEN_DIM, 2026);
    let x_test = inputs(N_TEST, TOKENS * TOKEN_DIM, 2027);
    let joint = DMatrix::from_fn(N_TRAIN + N_TEST, x.ncols(), |i, j| {
        if i < N_TRAIN {
            x[(i, j)]
        } else {
            x_test[(i - N_TRAIN, j)]
        }
    });
    let y = targets(&x);

    let programs: [(&'static str, Program); 4] = [
        ("RNN", zoo::Rnn::new(TOKENS, TOKEN_DIM).program()?),
        (
            "Transformer",
            zoo::Transformer::new(TOKENS, TOKEN_DIM).program()?,
        ),
        ("CNN", zoo::Cnn::sequence(TOKENS, TOKEN_DIM).program()?),
        (
            "residual MLP",
            zoo::ResidualMlp::new(TOKENS * TOKEN_DIM, 2).program()?,
        ),
    ];
    let mut architectures = Vec::new();
    for (name, program) in programs {
        let limit = infinite_width(&program, &joint, &joint)
            .map_err(|e| format!("the infinite-width NTK of the {name}: {e}"))?
            .ntk;
        architectures.push(Architecture {
            name,
            program,
            limit,
        });
    }

    println!(
        "task: {N_TRAIN} training / {N_TEST} test sequences of {TOKENS} tokens × {TOKEN_DIM}, \
         N(0, 1) entries; y = sin s + s/2, s = Σ_t (x_t1 − x_t2)/√{}",
        2 * TOKENS
    );
    println!(
        "full-batch gradient descent on ½Σ‖f − y‖², {steps} steps at η = 1/λ_max(Θ̊), \
         {} seeds per width",
        args.seeds
    );
    println!(
        "deviation = ‖f_t^net − f_t^pred‖ / ‖f_t^pred − f_0‖ on the test points (mean over seeds), \
         f^pred from the same f_0 with Θ̊ (limit) or the network's own Θ_0 (linearisation)\n"
    );

    // The cost of a run grows about like its width squared.
    let cost: u64 = widths.iter().map(|&w| (w * w) as u64).sum::<u64>() * args.seeds;
    let bar = support::progress(cost * architectures.len() as u64, "training");
    let mut curves = Vec::new();
    for a in &architectures {
        let timer = Instant::now();
        let (train_block, _) = blocks(&a.limit);
        let probe = GradientFlow::new(&train_block, &y, 1.0)?;
        let eta = 0.5 * probe.max_stable_learning_rate();
        let eigenvalues = probe.eigenvalues();
        let mut rows = Vec::new();
        for &width in &widths {
            bar.set_message(format!("{}, width {width}", a.name));
            let mut runs = Vec::new();
            for seed in 0..args.seeds {
                runs.push(
                    train_one(a, width, seed, &x, &x_test, &joint, &y, eta, &record)
                        .map_err(|e| format!("the {} at width {width}: {e}", a.name))?,
                );
                bar.inc((width * width) as u64);
            }
            let last = runs[0].limit.len() - 1;
            let (limit, limit_std) = mean(runs.iter().map(|r| r.limit[last]));
            rows.push(Row {
                width,
                limit,
                limit_std,
                linear: mean(runs.iter().map(|r| r.linear[last])).0,
                limit_train: mean(runs.iter().map(|r| r.limit_train)).0,
                limit_mid: mean(runs.iter().map(|r| r.limit[0])).0,
                loss_ratio: mean(runs.iter().map(|r| r.loss_ratio)).0,
                kernel: mean(runs.iter().map(|r| r.kernel)).0,
            });
        }
        let w: Vec<f64> = rows.iter().map(|r| r.width as f64).collect();
        let slope = support::log_slope(&w, &rows.iter().map(|r| r.limit).collect::<Vec<_>>());
        let slope_linear =
            support::log_slope(&w, &rows.iter().map(|r| r.linear).collect::<Vec<_>>());
        let seconds = timer.elapsed().as_secs_f64();
        bar.suspend(|| {
            println!(
                "{} (η = {eta:.4}: λ_max(Θ̊) = {:.3}, λ_min = {:.3e}; {seconds:.0} s)",
                a.name,
                eigenvalues[0],
                eigenvalues[eigenvalues.len() - 1]
            );
            println!(
                "{:>7} {:>14} {:>10} {:>14} {:>14} {:>14} {:>11} {:>13}",
                "width",
                "test vs Θ̊",
                "± std",
                "test vs Θ₀",
                "train vs Θ̊",
                format!("test vs Θ̊ @{}", steps / 4),
                "loss ratio",
                "‖Θ₀−Θ̊‖/‖Θ̊‖"
            );
            for r in &rows {
                println!(
                    "{:>7} {:>14.4e} {:>10.2e} {:>14.4e} {:>14.4e} {:>14.4e} {:>11.2e} {:>13.3e}",
                    r.width,
                    r.limit,
                    r.limit_std,
                    r.linear,
                    r.limit_train,
                    r.limit_mid,
                    r.loss_ratio,
                    r.kernel
                );
            }
            println!(
                "fitted slopes: against the limit {slope:.2} (theory -0.5), \
                 against the linearisation {slope_linear:.2}\n"
            );
        });
        curves.push((a.name, rows, slope, slope_linear));
    }
    bar.finish_and_clear();

    if let Some(dir) = plot_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    plot(&plot_path, &curves, steps, args.seeds)?;
    println!("plot written to {}", plot_path.display());
    println!(
        "{} networks trained in {:.0} s",
        architectures.len() * widths.len() * args.seeds as usize,
        started.elapsed().as_secs_f64()
    );
    let slopes: Vec<String> = curves
        .iter()
        .map(|(name, _, slope, _)| format!("{name} slope {slope:.2}"))
        .collect();
    println!("training follows the limit: {}", slopes.join(", "));
    Ok(())
}

type Curve = (&'static str, Vec<Row>, f64, f64);

fn plot(path: &Path, curves: &[Curve], steps: usize, seeds: u64) -> support::Result {
    let mut chart = Chart::new(
        format!(
            "Gradient descent ({steps} steps) vs its infinite-width prediction (solid) \
             and its linearisation (dashed)"
        ),
        "width n",
        format!("‖f_net − f_pred‖ / ‖f_pred − f_0‖ on test points, mean of {seeds} seeds"),
    )
    .scales(Scale::Log2, Scale::Log)
    .legend(SeriesLabelPosition::LowerLeft);
    for ((name, rows, slope, slope_linear), color) in curves.iter().zip([RED, BLUE, GREEN, MAGENTA])
    {
        let points = |f: fn(&Row) -> f64| -> Vec<(f64, f64)> {
            rows.iter().map(|r| (r.width as f64, f(r))).collect()
        };
        chart = chart
            .series(
                Series::line(
                    format!("{name} vs Θ̊ (slope {slope:.2})"),
                    points(|r| r.limit),
                    color,
                )
                .markers(),
            )
            .series(
                Series::line(
                    format!("{name} vs own Θ₀ (slope {slope_linear:.2})"),
                    points(|r| r.linear),
                    color.mix(0.6),
                )
                .width(1)
                .dashed(),
            );
    }
    // n^{−1/2} through the geometric mean of the limit curves at the first width.
    let first: Vec<&Row> = curves.iter().filter_map(|c| c.1.first()).collect();
    if let (Some(r0), Some(last)) = (first.first(), curves[0].1.last()) {
        let level = (first.iter().map(|r| r.limit.ln()).sum::<f64>() / first.len() as f64).exp();
        let c = level * (r0.width as f64).sqrt();
        let line = [r0.width, last.width].map(|w| (w as f64, c / (w as f64).sqrt()));
        chart = chart.series(
            Series::line("reference n^(-1/2)", line.to_vec(), BLACK)
                .width(1)
                .dashed(),
        );
    }
    chart.save(path, (1000, 650))
}
