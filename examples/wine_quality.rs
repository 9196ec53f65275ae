//! Infinite-width kernels and trained networks on real data: the UCI red wine quality
//! data set (Cortez et al. 2009; 1599 wines, 11 physico-chemical features, quality
//! scores 3–8), shipped in `examples/data/` (see the README there for source and
//! licence).
//!
//! The wines are shuffled with a fixed seed into 1000 training, 300 validation and 299
//! test wines; features are standardised with the training split's mean and standard
//! deviation, and the quality with the training mean and standard deviation (RMSEs are
//! reported in quality points). The example compares, on the test wines:
//!
//! - predicting the training mean;
//! - NNGP and NTK kernel regression with the infinite-width kernels
//!   ([`infinite_width`], [`KernelRegression`]) of MLPs with 1–3 hidden ReLU or Erf
//!   layers, the ridge chosen on the validation wines;
//! - one-hidden-layer Erf networks of width 64 … 2048 trained by full-batch gradient
//!   descent ([`GradientDescent`]) with learning rate η = 1/λ_max(Θ̊), stopped at the
//!   step that is best on the validation wines; the same networks linearised
//!   ([`GradientFlow`] on their own empirical NTK Θ₀ from [`empirical_ntk`]); and
//!   gradient descent on the infinite-width NTK Θ̊ itself, which both approach as the
//!   width grows.
//!
//! The networks are trained *centred*: the prediction is f(x; θ) − f(x; θ₀), i.e. the
//! network is trained on the targets y + f(x; θ₀). This is the same gradient descent
//! but starts from the prediction 0, like the kernel methods; without it the random
//! function at initialisation (the NNGP prior) would add its variance to every
//! prediction. Its linearisation is then exactly
//! f_s(x) = Θ₀(x, X) Θ₀⁻¹(I − (I − ηΘ₀)^s) Y.
//!
//! It prints both tables, the line `best test RMSE: X (predicting the mean: Y)`, and
//! writes test RMSE against width (kernel methods as horizontal lines) to
//! `out/wine_quality.svg`.
//!
//! ```sh
//! cargo run --release --example wine_quality              # about 2 minutes on 2 cores
//! cargo run --release --example wine_quality -- --help
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use ntk::{
    Activation, GradientDescent, GradientFlow, Horizon, KernelRegression, MlpSpec, NtkModel,
    empirical_ntk, infinite_width,
};
use plotters::prelude::{BLACK, BLUE, RED, RGBColor, SeriesLabelPosition};

mod support;
use support::Result;
use support::plot::{Chart, Scale, Series};

/// The red wine quality data: a header line, then 11 features and the quality per line.
const DATA: &str = include_str!("data/winequality-red.csv");
const FEATURES: usize = 11;
const N_TRAIN: usize = 1000;
const N_VALIDATION: usize = 300;
/// Relative ridges tried: ρ = r · tr(K)/N for r in 10^-4, 10^-3.5, …, 10^1.
const RIDGES: Range<i32> = -8..3;

/// Infinite-width NNGP/NTK kernel regression and trained networks of growing width on
/// the UCI red wine quality data (1599 wines; 1000 train, 300 validation, 299 test),
/// against predicting the mean. Prints test RMSEs and writes a plot.
#[derive(Parser)]
struct Args {
    /// Hidden widths of the trained one-hidden-layer Erf networks, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = [64, 128, 256, 512, 1024, 2048],
        value_parser = clap::value_parser!(u32).range(1..=65536)
    )]
    widths: Vec<u32>,
    /// Gradient-descent steps (the stopping step is chosen on the validation wines).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    steps: u32,
    /// Seed of the train/validation/test split and of the networks' initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "out/wine_quality.svg")]
    plot: PathBuf,
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

/// The wines, standardised, rows ordered train | validation | test.
struct Wines {
    x: DMatrix<f64>,
    /// Standardised quality, one column.
    y: DMatrix<f64>,
    /// Standard deviation of the training quality: RMSE in quality points = this × RMSE.
    y_scale: f64,
}

impl Wines {
    fn train(&self) -> Range<usize> {
        0..N_TRAIN
    }
    fn validation(&self) -> Range<usize> {
        N_TRAIN..N_TRAIN + N_VALIDATION
    }
    fn test(&self) -> Range<usize> {
        N_TRAIN + N_VALIDATION..self.x.nrows()
    }
    /// Validation and test: the points every method predicts.
    fn held_out(&self) -> Range<usize> {
        N_TRAIN..self.x.nrows()
    }
}

/// Rows `range` of `m`.
fn rows(m: &DMatrix<f64>, range: Range<usize>) -> DMatrix<f64> {
    m.rows(range.start, range.len()).into_owned()
}

/// Parses the CSV into features (one row per wine) and quality.
fn parse(csv: &str) -> Result<(DMatrix<f64>, DVector<f64>)> {
    let mut values = Vec::new();
    for (i, line) in csv.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != FEATURES + 1 {
            return Err(format!(
                "line {} of the wine data has {} fields, expected {}",
                i + 1,
                fields.len(),
                FEATURES + 1
            )
            .into());
        }
        for field in fields {
            let value: f64 = field.trim().parse().map_err(|e| {
                format!(
                    "line {} of the wine data: {field:?} is not a number ({e})",
                    i + 1
                )
            })?;
            values.push(value);
        }
    }
    let n = values.len() / (FEATURES + 1);
    let table = DMatrix::from_row_slice(n, FEATURES + 1, &values);
    Ok((
        table.columns(0, FEATURES).into_owned(),
        table.column(FEATURES).into_owned(),
    ))
}

/// Shuffles, splits and standardises with the training split's statistics.
fn prepare(seed: u64) -> Result<Wines> {
    let (features, quality) = parse(DATA)?;
    let n = features.nrows();
    if n <= N_TRAIN + N_VALIDATION {
        return Err(format!("the wine data has only {n} rows").into());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let x = features.select_rows(&order);
    let q = quality.select_rows(&order);

    let mean_std = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / v.len() as f64;
        (m, var.sqrt())
    };
    let mut standardised = x.clone();
    for j in 0..FEATURES {
        let train: Vec<f64> = x.column(j).rows(0, N_TRAIN).iter().copied().collect();
        let (m, s) = mean_std(&train);
        standardised.column_mut(j).apply(|v| *v = (*v - m) / s);
    }
    let (m, s) = mean_std(&q.as_slice()[..N_TRAIN]);
    Ok(Wines {
        x: standardised,
        y: DMatrix::from_fn(n, 1, |i, _| (q[i] - m) / s),
        y_scale: s,
    })
}

/// One method's result: what was chosen on validation, and the RMSEs in quality points.
struct Fit {
    name: String,
    chosen: String,
    validation: f64,
    test: f64,
}

/// The RMS error of `prediction` (one row per held-out wine) on the wines `range`, in
/// quality points.
fn rmse(wines: &Wines, prediction: &DMatrix<f64>, range: Range<usize>) -> f64 {
    let p = prediction.rows(range.start - N_TRAIN, range.len());
    let y = wines.y.rows(range.start, range.len());
    wines.y_scale * ((p - y).norm_squared() / range.len() as f64).sqrt()
}

/// Picks, among predictions on the held-out wines, the one best on validation.
fn select(
    wines: &Wines,
    name: String,
    candidates: impl IntoIterator<Item = (String, DMatrix<f64>)>,
) -> Result<Fit> {
    let mut best = Fit {
        name,
        chosen: "-".into(),
        validation: f64::INFINITY,
        test: f64::NAN,
    };
    for (chosen, prediction) in candidates {
        let validation = rmse(wines, &prediction, wines.validation());
        if validation < best.validation {
            best.validation = validation;
            best.test = rmse(wines, &prediction, wines.test());
            best.chosen = chosen;
        }
    }
    if best.test.is_finite() {
        Ok(best)
    } else {
        Err(format!("{}: no prediction has a finite validation error", best.name).into())
    }
}

/// Kernel regression with `kernel` (all wines × training wines) from the prior mean 0,
/// the ridge chosen on validation.
fn kernel_regression(wines: &Wines, name: String, kernel: &DMatrix<f64>) -> Result<Fit> {
    let k_train = rows(kernel, wines.train());
    let k_held_out = rows(kernel, wines.held_out());
    let y = rows(&wines.y, wines.train());
    let mean_diagonal = k_train.trace() / N_TRAIN as f64;
    let (zero_train, zero_held_out) = (
        DMatrix::zeros(N_TRAIN, 1),
        DMatrix::zeros(k_held_out.nrows(), 1),
    );
    let mut candidates = Vec::new();
    for r in RIDGES.map(|e| 10f64.powf(f64::from(e) / 2.0)) {
        let fit = KernelRegression::new(&k_train, &y, r * mean_diagonal)?;
        let prediction = fit.test(&zero_train, &zero_held_out, &k_held_out)?;
        candidates.push((format!("ridge {r:.1e}·tr/N"), prediction));
    }
    select(wines, name, candidates)
}

/// The architectures of the kernel study: (name, spec) with width 1 (irrelevant).
fn architectures() -> Vec<(String, MlpSpec)> {
    let mut out = Vec::new();
    for (name, activation, weight_std) in [
        ("ReLU", Activation::Relu, 2f64.sqrt()),
        ("Erf", Activation::Erf, 1.5),
    ] {
        for depth in 1..=3 {
            let spec = (0..depth)
                .fold(MlpSpec::new(FEATURES), |s, _| {
                    s.hidden(1, activation.clone())
                })
                .weight_std(weight_std)
                .bias_std(0.1);
            let layers = if depth == 1 { "layer" } else { "layers" };
            out.push((format!("{name}, {depth} hidden {layers}"), spec));
        }
    }
    out
}

/// The trained networks: one hidden Erf layer, as the last Erf architecture's first.
fn trained_spec(width: usize) -> MlpSpec {
    MlpSpec::new(FEATURES)
        .hidden(width, Activation::Erf)
        .weight_std(1.5)
        .bias_std(0.1)
}

/// About 16 step counts from 1 to `steps`, roughly evenly spaced in log(step).
fn recorded_steps(steps: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (0..=16)
        .map(|i| (steps as f64).powf(f64::from(i) / 16.0).round() as usize)
        .collect();
    out.dedup();
    out
}

/// One width's trained network against its linearisation and Θ̊.
struct WidthResult {
    width: usize,
    trained: Fit,
    linearised: Fit,
    /// RMS over the test wines of f_NN − f_lin after the last step, quality points.
    from_linearised: f64,
    /// The same for f_NN − f_Θ̊.
    from_limit: f64,
}

/// Trains one centred network of `width` and predicts with its linearisation.
fn train_width(
    wines: &Wines,
    width: usize,
    seed: u64,
    eta: f64,
    steps: &[usize],
    limit: &[DMatrix<f64>],
    bar: &indicatif::ProgressBar,
) -> Result<WidthResult> {
    let (x_train, x_held_out) = (
        rows(&wines.x, wines.train()),
        rows(&wines.x, wines.held_out()),
    );
    let y = rows(&wines.y, wines.train());
    let mut net = trained_spec(width).init::<f64>(&mut StdRng::seed_from_u64(seed))?;
    let (f0_train, f0_held_out) = (net.forward(&x_train)?, net.forward(&x_held_out)?);

    // The linearisation on the network's own Θ₀, from the centred start 0.
    let theta0 = empirical_ntk(&net, &wines.x, &x_train)?;
    let own = GradientFlow::new(&rows(&theta0, wines.train()), &y, eta)?;
    if eta >= own.max_stable_learning_rate() {
        return Err(format!(
            "η = {eta:.3e} is above 2/λ_max = {:.3e} of the width-{width} network's NTK; \
             gradient descent would diverge",
            own.max_stable_learning_rate()
        )
        .into());
    }
    let linear = own.test_at(
        &Horizon::steps(steps),
        &DMatrix::zeros(N_TRAIN, 1),
        &DMatrix::zeros(x_held_out.nrows(), 1),
        &rows(&theta0, wines.held_out()),
    )?;

    // The network, trained on y + f(X; θ₀) between the recorded steps.
    let shifted = &y + &f0_train;
    let mut trained = Vec::with_capacity(steps.len());
    let mut done = 0;
    for &step in steps {
        let run = GradientDescent::new(eta, step - done)?.fit(
            &mut net,
            &x_train,
            &shifted,
            &x_held_out,
        )?;
        let outputs = run
            .test_outputs
            .last()
            .ok_or("gradient descent recorded nothing")?;
        trained.push(outputs - &f0_held_out);
        bar.inc(((step - done) * width) as u64);
        done = step;
    }

    let test = wines.test();
    let last = |m: &[DMatrix<f64>]| rows(&m[m.len() - 1], test.start - N_TRAIN..test.end - N_TRAIN);
    let rms = |a: DMatrix<f64>| wines.y_scale * (a.norm_squared() / a.len() as f64).sqrt();
    let label = |s: &usize| format!("{s} steps");
    Ok(WidthResult {
        width,
        from_linearised: rms(last(&trained) - last(&linear)),
        from_limit: rms(last(&trained) - last(limit)),
        trained: select(
            wines,
            format!("trained network, width {width}"),
            steps.iter().map(label).zip(trained),
        )?,
        linearised: select(
            wines,
            format!("linearised network (own Θ₀), width {width}"),
            steps.iter().map(label).zip(linear),
        )?,
    })
}

fn run(args: Args) -> Result {
    let wines = prepare(args.seed)?;
    let widths: Vec<usize> = args.widths.iter().map(|&w| w as usize).collect();
    let steps = recorded_steps(args.steps as usize);
    println!(
        "UCI red wine quality (Cortez et al. 2009): {} wines, {FEATURES} features; \
         {N_TRAIN} train / {N_VALIDATION} validation / {} test (seed {}). \
         RMSE in quality points.\n",
        wines.x.nrows(),
        wines.test().len(),
        args.seed
    );

    // Predicting the training mean: 0 in standardised units.
    let zero = DMatrix::zeros(wines.held_out().len(), 1);
    let mean = select(
        &wines,
        "predicting the training mean".into(),
        [("-".to_string(), zero)],
    )?;

    // Kernel regression with the infinite-width kernels.
    let x_train = rows(&wines.x, wines.train());
    let archs = architectures();
    let bar = support::progress(archs.len() as u64, "infinite-width kernels");
    let mut kernels = Vec::new();
    let mut trained_limit = None;
    for (i, (name, spec)) in archs.iter().enumerate() {
        let k = infinite_width(spec, &wines.x, &x_train)?;
        kernels.push(kernel_regression(
            &wines,
            format!("NNGP kernel regression, {name}"),
            &k.nngp,
        )?);
        kernels.push(kernel_regression(
            &wines,
            format!("NTK kernel regression, {name}"),
            &k.ntk,
        )?);
        if i == 3 {
            trained_limit = Some((name.clone(), k.ntk));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (limit_name, ntk_limit) = trained_limit.ok_or("no Erf architecture")?;

    // Gradient descent on Θ̊ of the trained architecture, η = 1/λ_max(Θ̊).
    let y = rows(&wines.y, wines.train());
    let limit_flow = GradientFlow::new(&rows(&ntk_limit, wines.train()), &y, 1.0)?;
    let eta = 0.5 * limit_flow.max_stable_learning_rate();
    let limit_flow = GradientFlow::new(&rows(&ntk_limit, wines.train()), &y, eta)?;
    let limit = limit_flow.test_at(
        &Horizon::steps(&steps),
        &DMatrix::zeros(N_TRAIN, 1),
        &DMatrix::zeros(wines.held_out().len(), 1),
        &rows(&ntk_limit, wines.held_out()),
    )?;
    let limit_fit = select(
        &wines,
        format!("NTK gradient descent (infinite width), {limit_name}"),
        steps
            .iter()
            .map(|s| format!("{s} steps"))
            .zip(limit.iter().cloned()),
    )?;

    // Trained networks and their linearisations.
    let work: usize = widths.iter().sum::<usize>() * args.steps as usize;
    let bar = support::progress(work as u64, "training networks");
    let mut per_width = Vec::new();
    for (i, &width) in widths.iter().enumerate() {
        bar.set_message(format!("training width {width}"));
        let seed = args.seed.wrapping_mul(1000).wrapping_add(i as u64 + 1);
        per_width.push(train_width(&wines, width, seed, eta, &steps, &limit, &bar)?);
    }
    bar.finish_and_clear();

    print_tables(&mean, &kernels, &limit_fit, &per_width, eta, &steps);

    let all = kernels
        .iter()
        .chain([&limit_fit])
        .chain(per_width.iter().flat_map(|r| [&r.trained, &r.linearised]));
    let best = all
        .min_by(|a, b| a.test.total_cmp(&b.test))
        .ok_or("no method was run")?;
    println!("\nlowest test RMSE: {} ({})", best.name, best.chosen);
    println!(
        "best test RMSE: {:.4} (predicting the mean: {:.4})",
        best.test, mean.test
    );

    if let Some(dir) = args.plot.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    }
    plot(&args.plot, &mean, &kernels, &limit_fit, &per_width)?;
    println!("plot written to {}", args.plot.display());
    Ok(())
}

fn print_tables(
    mean: &Fit,
    kernels: &[Fit],
    limit: &Fit,
    per_width: &[WidthResult],
    eta: f64,
    steps: &[usize],
) {
    println!(
        "| {:<58} | {:<20} | {:>10} | {:>9} |",
        "method", "chosen on validation", "validation", "test"
    );
    println!("|{:-<60}|{:-<22}|{:->12}|{:->11}|", "", "", "", "");
    for fit in [mean].into_iter().chain(kernels).chain([limit]) {
        println!(
            "| {:<58} | {:<20} | {:>10.4} | {:>9.4} |",
            fit.name, fit.chosen, fit.validation, fit.test
        );
    }
    println!(
        "\nOne hidden Erf layer, σ_w = 1.5, σ_b = 0.1, trained centred by full-batch gradient \
         descent, η = 1/λ_max(Θ̊) = {eta:.3e}, up to {} steps:\n",
        steps.last().copied().unwrap_or(0)
    );
    println!(
        "| {:>6} | {:>13} | {:>10} | {:>16} | {:>10} | {:>12} | {:>12} |",
        "width", "trained: test", "steps", "linearised: test", "steps", "|f − f_lin|", "|f − f_Θ̊|"
    );
    println!(
        "|{:->8}|{:->15}|{:->12}|{:->18}|{:->12}|{:->14}|{:->14}|",
        "", "", "", "", "", "", ""
    );
    for r in per_width {
        println!(
            "| {:>6} | {:>13.4} | {:>10} | {:>16.4} | {:>10} | {:>12.2e} | {:>12.2e} |",
            r.width,
            r.trained.test,
            r.trained.chosen.trim_end_matches(" steps"),
            r.linearised.test,
            r.linearised.chosen.trim_end_matches(" steps"),
            r.from_linearised,
            r.from_limit
        );
    }
    if per_width.len() >= 2 {
        let w: Vec<f64> = per_width.iter().map(|r| r.width as f64).collect();
        let lin: Vec<f64> = per_width.iter().map(|r| r.from_linearised).collect();
        let lim: Vec<f64> = per_width.iter().map(|r| r.from_limit).collect();
        println!(
            "(|·|: RMS over the test wines after the last step, quality points; \
             log-log slopes against width {:.2} and {:.2})",
            support::log_slope(&w, &lin),
            support::log_slope(&w, &lim)
        );
    }
}

fn plot(
    path: &Path,
    mean: &Fit,
    kernels: &[Fit],
    limit: &Fit,
    per_width: &[WidthResult],
) -> Result {
    let points = |f: fn(&WidthResult) -> f64| -> Vec<(f64, f64)> {
        per_width.iter().map(|r| (r.width as f64, f(r))).collect()
    };
    let find = |name: &str| kernels.iter().find(|k| k.name == name);
    let best_kernel = kernels
        .iter()
        .min_by(|a, b| a.validation.total_cmp(&b.validation))
        .ok_or("no kernel method was run")?;
    let mut rmse = Chart::new(
        format!(
            "UCI red wine quality: test RMSE against width (predicting the mean: {:.3})",
            mean.test
        ),
        "hidden width n (one Erf layer)",
        "test RMSE (quality points)",
    )
    .scales(Scale::Log2, Scale::Linear)
    .headroom(0.8)
    .legend(SeriesLabelPosition::UpperRight)
    .series(Series::line("trained network", points(|r| r.trained.test), RED).markers())
    .series(
        Series::line(
            "linearised network (own Θ₀)",
            points(|r| r.linearised.test),
            BLUE,
        )
        .markers()
        .dashed(),
    )
    .series(Series::horizontal(
        format!("NTK gradient descent, infinite width ({})", limit.chosen),
        limit.test,
        BLACK,
    ));
    let green = RGBColor(0, 140, 70);
    let orange = RGBColor(220, 120, 0);
    let violet = RGBColor(130, 60, 170);
    for (name, color) in [
        ("NTK kernel regression, Erf, 1 hidden layer", orange),
        ("NNGP kernel regression, Erf, 1 hidden layer", violet),
    ] {
        if let Some(fit) = find(name) {
            rmse = rmse.series(
                Series::horizontal(format!("{name} ({})", fit.chosen), fit.test, color).dashed(),
            );
        }
    }
    rmse = rmse.series(
        Series::horizontal(
            format!(
                "best on validation: {} ({})",
                best_kernel.name, best_kernel.chosen
            ),
            best_kernel.test,
            green,
        )
        .dashed(),
    );

    let from_linearised = points(|r| r.from_linearised);
    let mut deviation = Chart::new(
        "Distance of the trained network from its linearisations (test wines, last step)",
        "hidden width n (one Erf layer)",
        "RMS difference (quality points)",
    )
    .scales(Scale::Log2, Scale::Log)
    .headroom(0.6)
    .legend(SeriesLabelPosition::UpperRight)
    .series(Series::line("|f_NN − f_lin| (own Θ₀)", from_linearised.clone(), BLUE).markers())
    .series(
        Series::line(
            "|f_NN − f_lin| (Θ̊, infinite width)",
            points(|r| r.from_limit),
            BLACK,
        )
        .markers(),
    );
    if let (Some(&(w0, d0)), Some(&(w1, _))) = (from_linearised.first(), from_linearised.last()) {
        let reference = [w0, w1].map(|w| (w, d0 * (w0 / w).sqrt()));
        deviation = deviation.series(
            Series::line("n^(-1/2)", reference.to_vec(), RGBColor(120, 120, 120))
                .width(1)
                .dashed(),
        );
    }
    Chart::save_stacked(&[rmse, deviation], path, (1000, 560))
}
