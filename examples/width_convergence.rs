//! The empirical NTK converges to the infinite-width NTK like n^{−1/2}.
//!
//! For a deep ReLU MLP and an Erf MLP, measures the relative Frobenius distance
//! ‖Θ_n − Θ̊‖_F / ‖Θ̊‖_F between the empirical NTK of width-n networks (several seeds)
//! and the infinite-width limit, prints the table with the fitted log-log slope, and
//! writes a log-log plot with an n^{−1/2} reference line to `out/width_convergence.svg`
//! (Tensor Programs II, Figure 1).
//!
//! ```sh
//! cargo run --release --example width_convergence            # about 30 s
//! cargo run --release --example width_convergence -- --help
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ntk::nalgebra::DMatrix;
use ntk::{Activation, MlpSpec, WidthStudy, width_convergence};
use plotters::prelude::{BLACK, BLUE, RED, SeriesLabelPosition};

mod support;
use support::plot::{Chart, Scale, Series};

/// The empirical NTK of finite networks against its infinite-width limit: the relative
/// Frobenius error over widths and seeds, with the fitted log-log slope (theory: -1/2).
#[derive(Parser)]
struct Args {
    /// Where to write the log-log plot (SVG).
    #[arg(long, default_value = "out/width_convergence.svg")]
    plot: PathBuf,
    /// Number of random initialisations per width.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

fn run(args: Args) -> support::Result {
    let d = 8;
    let x = DMatrix::from_fn(16, d, |i, j| ((i * d + j) as f64 * 0.61).sin());
    let widths = [32, 64, 128, 256, 512, 1024, 2048, 4096];
    let seeds: Vec<u64> = (0..args.seeds).collect();

    let relu = (0..4)
        .fold(MlpSpec::new(d), |s, _| s.hidden(1, Activation::Relu))
        .weight_std(1.4)
        .bias_std(0.1);
    let erf = (0..2)
        .fold(MlpSpec::new(d), |s, _| s.hidden(1, Activation::Erf))
        .weight_std(1.5)
        .bias_std(0.1);

    let mut studies = Vec::new();
    for (name, spec) in [
        ("ReLU, 4 hidden layers", &relu),
        ("Erf, 2 hidden layers", &erf),
    ] {
        let spinner = support::spinner(format!(
            "{name}: {} widths x {} seeds",
            widths.len(),
            seeds.len()
        ));
        let study = width_convergence(spec, &x, &widths, &seeds)?;
        spinner.finish_and_clear();
        println!("{name}");
        println!("{:>8}  {:>10}  {:>10}", "width", "mean error", "std");
        for p in &study.points {
            println!("{:>8}  {:>10.4}  {:>10.4}", p.width, p.mean, p.std);
        }
        println!("fitted slope {:.3} (theory: -0.5)\n", study.slope);
        studies.push((name, study));
    }

    if let Some(dir) = args.plot.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    plot(&args.plot, &studies)?;
    println!("plot written to {}", args.plot.display());
    Ok(())
}

fn plot(path: &std::path::Path, studies: &[(&str, WidthStudy)]) -> support::Result {
    let mut chart = Chart::new(
        "Empirical NTK vs infinite width: relative Frobenius error",
        "hidden width n",
        "mean ‖Θ_n − Θ̊‖ / ‖Θ̊‖ over seeds",
    )
    .scales(Scale::Log2, Scale::Log)
    .legend(SeriesLabelPosition::LowerLeft);
    for ((name, study), color) in studies.iter().zip([RED, BLUE]) {
        let points = study.points.iter().map(|p| (p.width as f64, p.mean));
        // ± one standard deviation over seeds (clipped at a quarter of the mean).
        let bars = study.points.iter().map(|p| {
            let w = p.width as f64;
            (w, (p.mean - p.std).max(p.mean / 4.0), p.mean + p.std)
        });
        chart = chart.series(
            Series::line(
                format!("{name} (slope {:.2})", study.slope),
                points.collect(),
                color,
            )
            .markers()
            .error_bars(bars.collect()),
        );
    }
    // The n^{−1/2} reference through the first ReLU point.
    let points = &studies[0].1.points;
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let c = first.mean * (first.width as f64).sqrt();
        let line = [first.width, last.width].map(|w| (w as f64, c / (w as f64).sqrt()));
        chart = chart.series(Series::line("reference n^(-1/2)", line.to_vec(), BLACK).width(1));
    }
    chart.save(path, (900, 600))
}
