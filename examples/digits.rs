//! Infinite-width kernels on a real image data set: scikit-learn's 8 × 8 handwritten
//! digits (the UCI optdigits test partition, Alpaydin & Kaynak 1998; 1797 images,
//! pixels 0..16, digits 0–9), shipped in `examples/data/` (see the README there for
//! source, licence and citation).
//!
//! The images are shuffled with a fixed seed into 1000 training and 797 test images; the
//! pixels are one channel, standardised by the mean and standard deviation of all
//! training pixels. Each kernel classifies by kernel regression on one-hot labels, as
//! neural-tangents' `predict.gradient_descent_mse_ensemble` at t = ∞ (the NNGP
//! posterior mean, or the mean of infinitely wide networks trained to convergence),
//! with the relative ridge chosen on the last 200 training images (fit on the other
//! 800), then refit on all 1000 (`support/digits.rs`). It compares:
//!
//! - the NNGP and NTK of MLPs with 1, 2 and 3 hidden ReLU layers (σ_w = √2, σ_b = 0.1),
//!   [`infinite_width`] of an [`MlpSpec`];
//! - the CNN-GP and CNTK of neural-tangents' Myrtle-5 network on 8 × 8 images
//!   ([`zoo::myrtle`]`(5, (8, 8), 1)`: SAME 3 × 3 ReLU convolutions, 2 × 2 average
//!   pooling, global average, σ_w = √2, no biases), [`infinite_width`] of a [`Program`].
//!
//! It prints a table of test accuracies and kernel times, writes a bar chart to
//! `out/digits.svg` (the copy in the README is `docs/digits.svg`), and its last line is
//! `best test accuracy: X (MLP NTK: Y)`.
//!
//! A finite CNN trained by gradient descent is left out: see the README.
//!
//! ```sh
//! cargo run --release --example digits              # about 1.5 minutes on 2 cores
//! cargo run --release --example digits -- --help
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ntk::nalgebra::DMatrix;
use ntk::{Activation, Kernels, MlpSpec, Program, infinite_width, zoo};
use plotters::prelude::{RGBColor, SeriesLabelPosition};

mod support;
use support::Result;
use support::digits::{self as data, Fit};
use support::plot::BarChart;

/// NNGP/NTK kernel regression with MLP and Myrtle-5 CNN kernels on scikit-learn's 8 × 8
/// handwritten digits (1797 images; 1000 train, of which 200 choose the ridge, 797
/// test). Prints test accuracies and writes a bar chart.
#[derive(Parser)]
struct Args {
    /// Seed of the train/test split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Training images (the test images are all the others).
    #[arg(long, default_value_t = data::N_TRAIN as u32,
          value_parser = clap::value_parser!(u32).range(2 * data::N_VALIDATION as i64..data::IMAGES as i64))]
    train: u32,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "out/digits.svg")]
    plot: PathBuf,
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

/// One architecture's two kernels and their classifiers.
struct Row {
    name: String,
    nngp: Fit,
    ntk: Fit,
    /// Wall time of both kernels (train × train and test × train), seconds.
    seconds: f64,
}

/// The MLPs: (name, spec) with width 1 (irrelevant in the limit).
fn mlps() -> Vec<(String, MlpSpec)> {
    (1..=3)
        .map(|depth| {
            let spec = (0..depth)
                .fold(MlpSpec::new(data::PIXELS), |s, _| {
                    s.hidden(1, Activation::Relu)
                })
                .weight_std(2f64.sqrt())
                .bias_std(0.1);
            let layers = if depth == 1 { "layer" } else { "layers" };
            (format!("MLP, {depth} hidden ReLU {layers}"), spec)
        })
        .collect()
}

/// K(train, train) and K(test, train) of one architecture.
fn kernels(
    name: &str,
    compute: impl Fn(&DMatrix<f64>, &DMatrix<f64>) -> ntk::Result<Kernels>,
    x_train: &DMatrix<f64>,
    x_test: &DMatrix<f64>,
) -> Result<(Kernels, Kernels, f64)> {
    let bar = support::spinner(format!("kernels of the {name}"));
    let start = Instant::now();
    let train = compute(x_train, x_train)?;
    let test = compute(x_test, x_train)?;
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok((train, test, seconds))
}

fn run(args: Args) -> Result {
    let total = Instant::now();
    let digits = data::load()?;
    let n_train = args.train as usize;
    let split = data::split(data::IMAGES, n_train, data::IMAGES - n_train, args.seed)?;
    let x = data::standardise(&digits.pixels, &split.train)?;
    let (x_train, x_test) = (x.select_rows(&split.train), x.select_rows(&split.test));
    let (train_labels, test_labels) = (
        digits.labels_of(&split.train),
        digits.labels_of(&split.test),
    );
    println!(
        "scikit-learn's 8 × 8 handwritten digits (UCI optdigits, Alpaydin & Kaynak 1998): \
         {} images; {} train ({} of them choose the ridge) / {} test (seed {}).\n",
        data::IMAGES,
        n_train,
        data::N_VALIDATION,
        split.test.len(),
        args.seed
    );

    let ridges = data::ridges();
    let classify = |k_train: &Kernels, k_test: &Kernels| -> Result<(Fit, Fit)> {
        let fit = |a: &DMatrix<f64>, b: &DMatrix<f64>| {
            data::classify(
                a,
                b,
                &train_labels,
                &test_labels,
                data::N_VALIDATION,
                &ridges,
            )
        };
        Ok((
            fit(&k_train.nngp, &k_test.nngp)?,
            fit(&k_train.ntk, &k_test.ntk)?,
        ))
    };

    let mut rows = Vec::new();
    for (name, spec) in mlps() {
        let (k_train, k_test, seconds) =
            kernels(&name, |a, b| infinite_width(&spec, a, b), &x_train, &x_test)?;
        let (nngp, ntk) = classify(&k_train, &k_test)?;
        rows.push(Row {
            name,
            nngp,
            ntk,
            seconds,
        });
    }
    let myrtle: Program = zoo::myrtle(5, (data::SIDE, data::SIDE), 1)?;
    let name = "Myrtle-5 CNN (CNN-GP / CNTK)".to_string();
    let (k_train, k_test, seconds) = kernels(
        &name,
        |a, b| infinite_width(&myrtle, a, b),
        &x_train,
        &x_test,
    )?;
    let (nngp, ntk) = classify(&k_train, &k_test)?;
    rows.push(Row {
        name,
        nngp,
        ntk,
        seconds,
    });

    println!(
        "| {:<30} | {:>10} | {:>9} | {:>10} | {:>9} | {:>10} |",
        "kernel", "NNGP: test", "ridge", "NTK: test", "ridge", "kernels, s"
    );
    println!(
        "|{:-<32}|{:->12}|{:->11}|{:->12}|{:->11}|{:->12}|",
        "", "", "", "", "", ""
    );
    for r in &rows {
        println!(
            "| {:<30} | {:>10.3} | {:>9.0e} | {:>10.3} | {:>9.0e} | {:>10.1} |",
            r.name, r.nngp.test, r.nngp.ridge, r.ntk.test, r.ntk.ridge, r.seconds
        );
    }
    println!(
        "(test accuracy on {} images; ridge: relative, × tr(K)/N, chosen on validation)",
        split.test.len()
    );

    if let Some(dir) = args.plot.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    plot(&args.plot, &rows, split.test.len())?;
    println!("plot written to {}", args.plot.display());
    println!("total time: {:.0} s", total.elapsed().as_secs_f64());

    let best = rows
        .iter()
        .flat_map(|r| [r.nngp.test, r.ntk.test])
        .fold(f64::NEG_INFINITY, f64::max);
    let best_mlp_ntk = rows
        .iter()
        .filter(|r| r.name.starts_with("MLP"))
        .map(|r| r.ntk.test)
        .fold(f64::NEG_INFINITY, f64::max);
    println!("best test accuracy: {best:.3} (MLP NTK: {best_mlp_ntk:.3})");
    Ok(())
}

fn plot(path: &std::path::Path, rows: &[Row], n_test: usize) -> Result {
    let values = |f: fn(&Row) -> f64| rows.iter().map(|r| Some(f(r))).collect::<Vec<_>>();
    let lowest = rows
        .iter()
        .flat_map(|r| [r.nngp.test, r.ntk.test])
        .fold(1.0, f64::min);
    // Bars rise from a round floor below the lowest accuracy.
    let bottom = ((lowest - 0.005) * 100.0).floor() / 100.0;
    let categories = rows
        .iter()
        .map(|r| {
            r.name
                .replace(" hidden ReLU layers", " hidden layers")
                .replace(" hidden ReLU layer", " hidden layer")
                .replace(" (CNN-GP / CNTK)", "")
        })
        .collect();
    BarChart::new(
        format!("8 × 8 handwritten digits: test accuracy of kernel regression ({n_test} images)"),
        format!("test accuracy (axis from {bottom})"),
        categories,
        (bottom, 1.0),
    )
    .series(
        "NNGP / CNN-GP",
        values(|r| r.nngp.test),
        RGBColor(40, 90, 200),
    )
    .series("NTK / CNTK", values(|r| r.ntk.test), RGBColor(210, 60, 40))
    .legend(SeriesLabelPosition::UpperLeft)
    .save(path, (900, 520))
}
