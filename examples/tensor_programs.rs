//! Tensor Programs II, Figure 1: the NTK of any architecture converges like n^{−1/2}.
//!
//! For five networks described as [`Program`]s, measures the relative Frobenius
//! distance ‖Θ_n − Θ̊‖_F / ‖Θ̊‖_F between the empirical NTK of width-n networks (one per
//! seed) and the program's infinite-width NTK, for n = 2^6 … 2^12, prints a table per
//! architecture with the fitted log-log slope, and writes a log-log plot with an
//! n^{−1/2} reference line to `out/tensor_programs.svg` (`--docs`: to the README's copy,
//! `docs/tensor_programs.svg`, at the paper's range of widths). The networks, in the NTK
//! parameterization, on inputs drawn once from a fixed seed (N(0, 1) entries; rows are
//! samples, a sequence is its tokens in order):
//!
//! - **RNN** (the paper's): s_t = erf(W s_{t−1} + U x_t + b), s_0 = 0, over 5 tokens of
//!   dimension 3, f = vᵀ mean_t s_t / √n; σ_W = 1, σ_U = √2, σ_b = √0.2, σ_v = 1;
//!   two sequences, as in the paper.
//! - **Transformer** (the paper's one-layer one, ReLU, every σ = 1, no biases): over 5
//!   tokens of dimension 3, k_t = U x_t, y = attention(k, k, k) (tied queries, keys and
//!   values, 1/n logits), z_t = LN(y_t + k_t), o_t = LN(W₂ relu(W₁ z_t) + z_t),
//!   f = readout(mean_t o_t); two sequences.
//! - **Residual MLP**: h₀ = W₀ x + b₀ on x of dimension 3, then two blocks
//!   h_l = h_{l−1} + W_l relu(h_{l−1}) + b_l, f = readout(relu(h₂)); ReLU, σ_W = 1,
//!   σ_b = 0.1, σ_v = 1; eight inputs.
//! - **CNN**: 8 positions × 3 channels, two circular 3-tap ReLU convolutions (one
//!   weight per layer on the concatenation of neighbouring positions, σ_W = √2,
//!   σ_b = 0.1), global average pooling, readout σ_v = 1; eight inputs.
//! - **BatchNorm MLP** (the paper's third curve): one hidden layer h = W x/√13,
//!   z = relu(batch_norm(h)) with the statistics of each batch, f = vᵀz/√n, no biases;
//!   two batches of 7 and 5 inputs of dimension 13 (the paper: 12 CIFAR-10 images under a
//!   random projection), and the error of the whole 12 × 12 NTK, its cross-batch block
//!   included (each batch's samples computed with their own batch's statistics), over
//!   `--batchnorm-seeds` seeds (default 100, as in the paper).
//!
//! (With two inputs the error of the residual MLP is dominated by one kernel entry and
//! varies more from seed to seed; eight make its curve smoother.)
//!
//! Θ̊ is computed once per architecture (in the NTK parameterization it does not depend
//! on n); each network is drawn with `StdRng::seed_from_u64(seed)`, seeds 0, 1, … (what
//! [`ntk::width_convergence`] does, here one network at a time so that the progress bar
//! moves).
//!
//! ```sh
//! cargo run --release --example tensor_programs                        # a few minutes
//! cargo run --release --example tensor_programs -- --max-width 8192    # the paper's range
//! cargo run --release --example tensor_programs -- --docs   # regenerate the README's figure
//! cargo run --release --example tensor_programs -- --help
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, Program, empirical_ntk, infinite_width, zoo};
use plotters::prelude::{BLACK, BLUE, CYAN, GREEN, MAGENTA, RED, SeriesLabelPosition};
use rand_distr::{Distribution, StandardNormal};

mod support;
use support::plot::{Chart, Scale, Series};

/// Tensor Programs II, Figure 1: the relative Frobenius error of the empirical NTK of
/// an RNN, a Transformer, a residual MLP, a CNN and a BatchNorm MLP against their
/// infinite-width NTK,
/// over widths 64 … --max-width and several seeds, with fitted log-log slopes
/// (theory: -1/2).
#[derive(Parser)]
struct Args {
    /// The largest width (a power of two, at least 128): widths 64, 128, …, max-width
    /// [default: 4096; with --docs, 8192]. The paper goes to 8192 (about four times the
    /// default run's time, and a few GB).
    #[arg(long, value_parser = power_of_two)]
    max_width: Option<usize>,
    /// Random initialisations per width.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Random initialisations per width of the BatchNorm MLP (cheap: one hidden layer).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    batchnorm_seeds: u64,
    /// Where to write the log-log plot (SVG).
    #[arg(long, default_value = "out/tensor_programs.svg")]
    plot: PathBuf,
    /// Regenerate the README's figure: write the plot to docs/tensor_programs.svg (a
    /// tracked file) instead of --plot, with widths up to 8192 unless --max-width says
    /// otherwise.
    #[arg(long, conflicts_with = "plot")]
    docs: bool,
}

/// The README's copy of the figure, rewritten only with `--docs`.
const DOCS_PLOT: &str = "docs/tensor_programs.svg";

fn power_of_two(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("expected a whole number, got {s:?}"))?;
    if n.is_power_of_two() && (128..=1 << 16).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "the largest width must be a power of two from 128 to 65536, got {n}"
        ))
    }
}

/// One curve of the figure.
struct Architecture {
    name: &'static str,
    program: Program,
    /// The inputs, rows are samples (a sequence is its tokens in order): one batch, or
    /// several for a batch-coupled network (each sample computed with its own batch's
    /// statistics; the kernel is the block matrix over all pairs of batches).
    batches: Vec<DMatrix<f64>>,
    /// Random initialisations per width.
    seeds: u64,
    /// What Tensor Programs II's Figure 1 reports.
    paper: Option<&'static str>,
}

/// The kernel over all pairs of batches, from `kernel(x_a, x_b)`: block (a, b).
fn whole_kernel(
    batches: &[DMatrix<f64>],
    kernel: impl Fn(&DMatrix<f64>, &DMatrix<f64>) -> ntk::Result<DMatrix<f64>>,
) -> ntk::Result<DMatrix<f64>> {
    let total: usize = batches.iter().map(DMatrix::nrows).sum();
    let mut out = DMatrix::zeros(total, total);
    let mut row = 0;
    for (a, xa) in batches.iter().enumerate() {
        let mut col = row;
        for xb in &batches[a..] {
            let block = kernel(xa, xb)?;
            out.view_mut((row, col), block.shape()).copy_from(&block);
            out.view_mut((col, row), (block.ncols(), block.nrows()))
                .copy_from(&block.transpose());
            col += xb.nrows();
        }
        row += xa.nrows();
    }
    Ok(out)
}

/// The relative error at one width, over seeds.
struct Point {
    width: usize,
    mean: f64,
    std: f64,
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

fn run(args: Args) -> support::Result {
    let started = Instant::now();
    let max_width = args
        .max_width
        .unwrap_or(if args.docs { 8192 } else { 4096 });
    let plot_path = if args.docs {
        PathBuf::from(DOCS_PLOT)
    } else {
        args.plot.clone()
    };
    let widths: Vec<usize> = (6..=max_width.trailing_zeros()).map(|k| 1 << k).collect();
    let architectures = architectures(args.seeds, args.batchnorm_seeds)?;

    // Per architecture, the limit once; then one network per width and seed.
    let mut limits = Vec::new();
    for a in &architectures {
        let limit = whole_kernel(&a.batches, |x1, x2| {
            Ok(infinite_width(&a.program, x1, x2)?.ntk)
        })
        .map_err(|e| format!("the infinite-width NTK of the {}: {e}", a.name))?;
        limits.push(limit);
    }
    let jobs: u64 = architectures.iter().map(|a| a.seeds).sum::<u64>() * widths.len() as u64;
    let bar = support::progress(jobs, "networks");
    let mut curves = Vec::new();
    for (a, limit) in architectures.iter().zip(&limits) {
        let timer = Instant::now();
        let mut points = Vec::new();
        for &width in &widths {
            bar.set_message(format!("{}, width {width}", a.name));
            let errors = (0..a.seeds)
                .map(|seed| {
                    let net = a
                        .program
                        .init::<f64>(width, &mut StdRng::seed_from_u64(seed))?;
                    let theta = whole_kernel(&a.batches, |x1, x2| empirical_ntk(&net, x1, x2))?;
                    bar.inc(1);
                    Ok((&theta - limit).norm() / limit.norm())
                })
                .collect::<Result<Vec<f64>, ntk::Error>>()?;
            points.push(mean_and_std(width, &errors));
        }
        let slope = support::log_slope(
            &points.iter().map(|p| p.width as f64).collect::<Vec<_>>(),
            &points.iter().map(|p| p.mean).collect::<Vec<_>>(),
        );
        let seconds = timer.elapsed().as_secs_f64();
        bar.suspend(|| print_curve(a, &points, slope, seconds));
        curves.push((a, points, slope));
    }
    bar.finish_and_clear();

    if let Some(dir) = plot_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    plot(&plot_path, &curves)?;
    println!("plot written to {}", plot_path.display());
    println!(
        "{} networks in {:.0} s",
        jobs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn mean_and_std(width: usize, errors: &[f64]) -> Point {
    let k = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / k;
    let std = if errors.len() > 1 {
        (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt()
    } else {
        0.0
    };
    Point { width, mean, std }
}

fn print_curve(a: &Architecture, points: &[Point], slope: f64, seconds: f64) {
    println!("{} ({} seeds, {seconds:.0} s)", a.name, a.seeds);
    println!("{:>8}  {:>10}  {:>10}", "width", "mean error", "std");
    for p in points {
        println!("{:>8}  {:>10.4}  {:>10.4}", p.width, p.mean, p.std);
    }
    match a.paper {
        Some(paper) => println!("fitted slope {slope:.3} (theory -0.5; the paper: {paper})\n"),
        None => println!("fitted slope {slope:.3} (theory -0.5)\n"),
    }
}

/// The five networks of the figure and their inputs.
fn architectures(seeds: u64, batchnorm_seeds: u64) -> ntk::Result<Vec<Architecture>> {
    Ok(vec![
        Architecture {
            name: "RNN",
            program: zoo::Rnn::new(5, 3).program()?,
            batches: vec![inputs(2, 5 * 3, 1)],
            seeds,
            paper: Some("0.220 at width 64, 0.0195 at 8192, slope -0.50"),
        },
        Architecture {
            name: "Transformer",
            program: zoo::Transformer::new(5, 3).program()?,
            batches: vec![inputs(2, 5 * 3, 2)],
            seeds,
            paper: Some("0.118 at width 64, 0.0118 at 8192, slope -0.52"),
        },
        Architecture {
            name: "residual MLP",
            program: zoo::ResidualMlp::new(3, 2).program()?,
            batches: vec![inputs(8, 3, 3)],
            seeds,
            paper: None,
        },
        Architecture {
            name: "CNN",
            program: zoo::Cnn::sequence(8, 3).layers(2).program()?,
            batches: vec![inputs(8, 8 * 3, 4)],
            seeds,
            paper: None,
        },
        Architecture {
            name: "BatchNorm MLP",
            program: batch_norm_mlp(13)?,
            batches: vec![inputs(7, 13, 5), inputs(5, 13, 6)],
            seeds: batchnorm_seeds,
            paper: Some("0.422 at width 64, 0.046 at 8192, slope -0.46"),
        },
    ])
}

/// Tensor Programs II's BatchNorm network: f = vᵀ relu(batch_norm(W x/√d))/√n, no biases.
fn batch_norm_mlp(d: usize) -> ntk::Result<Program> {
    let mut p = Program::new(d);
    let x = p.input(0..d)?;
    let w = p.weight(1.0)?;
    let h = p.dense(w, x)?;
    let z = p.batch_norm(h)?;
    let a = p.apply(Activation::Relu, z)?;
    p.output(a, 1.0)?;
    Ok(p)
}

/// `rows` × `cols` standard normal entries from a fixed seed.
fn inputs(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    let mut rng = StdRng::seed_from_u64(2020 + seed);
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
}

fn plot(path: &Path, curves: &[(&Architecture, Vec<Point>, f64)]) -> support::Result {
    let mut chart = Chart::new(
        "Tensor Programs II, Fig. 1: empirical NTK vs its infinite-width limit",
        "width n",
        "mean ‖Θ_n − Θ̊‖_F / ‖Θ̊‖_F over seeds (± standard error)",
    )
    .scales(Scale::Log2, Scale::Log)
    .legend(SeriesLabelPosition::LowerLeft);
    for ((a, points, slope), color) in curves.iter().zip([RED, BLUE, GREEN, MAGENTA, CYAN]) {
        // ± one standard error of the mean, std/√seeds.
        let bars = points.iter().map(|p| {
            let se = p.std / (a.seeds as f64).sqrt();
            (p.width as f64, p.mean - se, p.mean + se)
        });
        chart = chart.series(
            Series::line(
                format!("{} (slope {slope:.2})", a.name),
                points.iter().map(|p| (p.width as f64, p.mean)).collect(),
                color,
            )
            .markers()
            .error_bars(bars.collect()),
        );
    }
    // The n^{−1/2} reference through the geometric mean of the curves at the first width.
    let first: Vec<&Point> = curves.iter().filter_map(|c| c.1.first()).collect();
    if let (Some(p0), Some(last)) = (first.first(), curves[0].1.last()) {
        let level = (first.iter().map(|p| p.mean.ln()).sum::<f64>() / first.len() as f64).exp();
        let c = level * (p0.width as f64).sqrt();
        let line = [p0.width, last.width].map(|w| (w as f64, c / (w as f64).sqrt()));
        chart = chart.series(
            Series::line("reference n^(-1/2)", line.to_vec(), BLACK)
                .width(1)
                .dashed(),
        );
    }
    chart.save(path, (900, 600))
}
