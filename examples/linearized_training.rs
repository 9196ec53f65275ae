//! Wide networks train like their linearisation (Lee et al. 2019).
//!
//! On a small regression task on the circle (16 training points, 48 test points),
//! MLPs with one hidden Erf layer of width n ∈ {64, 256, 1024, 4096} are trained by
//! full-batch gradient descent (backpropagation, [`GradientDescent`]) for 2000 steps,
//! and each trajectory is compared with [`GradientFlow::train_at`] /
//! [`GradientFlow::test_at`] after the same steps ([`Horizon::Steps`]): the same
//! gradient descent on the linearised model,
//! f_s − Y = (I − ηΘ)^s (f_0 − Y), with
//!
//! - Θ = the network's own empirical NTK at initialisation, and
//! - Θ = Θ̊, the infinite-width NTK from [`infinite_width`] (the deviation then also
//!   contains the O(n^{-1/2}) fluctuation of Θ_0 around Θ̊).
//!
//! It prints, per width (mean over `--seeds` initialisations, default 3), the maximum deviation
//! max_s max_x |f_s^NN(x) − f_s^lin(x)| over the run (train and test points), relative
//! to the largest change of the linearised outputs, with the fitted slope of
//! log(deviation) against log(n) (Lee et al. 2019 bound the deviation by O(n^{-1/2})),
//! and the relative change ‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F of the empirical NTK during
//! training. It writes two SVG plots into `out/` (`--out-dir`): trajectories of three
//! test outputs, and deviation against width on log-log axes.
//!
//! ```sh
//! cargo run --release --example linearized_training          # about 20 s
//! cargo run --release --example linearized_training -- --help
//! ```

use std::f64::consts::PI;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, GradientDescent, GradientFlow, Horizon, Mlp, MlpSpec, NtkModel, empirical_ntk,
    infinite_width,
};
use plotters::prelude::{BLACK, BLUE, Color, GREEN, Palette, Palette99, RED, SeriesLabelPosition};

mod support;
use support::plot::{Chart, Scale, Series};

/// Gradient descent on one-hidden-layer Erf networks of width 64 … 4096 against the
/// same descent on their linearisations (own Θ₀ and the infinite-width Θ̊), on a small
/// regression task on the circle.
#[derive(Parser)]
struct Args {
    /// Random initialisations per width.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    seeds: u64,
    /// Directory for the two SVG plots.
    #[arg(long, default_value = "out")]
    out_dir: PathBuf,
}

const WIDTHS: [usize; 4] = [64, 256, 1024, 4096];
const STEPS: usize = 2000;
const RECORD_EVERY: usize = 10;
const N_TRAIN: usize = 16;
const N_TEST: usize = 48;
/// Test points whose trajectories are plotted.
const SHOWN: [usize; 3] = [5, 20, 37];

type Error = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

fn spec(width: usize) -> MlpSpec {
    MlpSpec::new(2)
        .hidden(width, Activation::Erf)
        .weight_std(1.5)
        .bias_std(0.1)
}

/// Points on the unit circle at the given angles, as rows (cos φ, sin φ).
fn circle(angles: &[f64]) -> DMatrix<f64> {
    DMatrix::from_fn(angles.len(), 2, |i, j| {
        if j == 0 {
            angles[i].cos()
        } else {
            angles[i].sin()
        }
    })
}

fn target(phi: f64) -> f64 {
    (2.0 * phi).sin() + 0.5 * (3.0 * phi).cos()
}

/// The kernel blocks (train-train, test-train) of an NTK on the joint inputs.
fn blocks(joint: &DMatrix<f64>) -> (DMatrix<f64>, DMatrix<f64>) {
    (
        joint.view((0, 0), (N_TRAIN, N_TRAIN)).into_owned(),
        joint.view((N_TRAIN, 0), (N_TEST, N_TRAIN)).into_owned(),
    )
}

/// One training run against both linearisations.
struct Run {
    steps: Vec<usize>,
    /// f(x_test) of the network at each recorded step.
    network: Vec<DMatrix<f64>>,
    /// The linearisation on its own Θ_0.
    own: Vec<DMatrix<f64>>,
    /// The linearisation on Θ̊.
    reference: Vec<DMatrix<f64>>,
    deviation_own: f64,
    deviation_reference: f64,
    kernel_change: f64,
    /// ½‖f(X) − Y‖² after the last step.
    final_loss: f64,
}

/// max over steps and points of |a − b|, over the largest |lin_s − lin_0|.
fn relative_deviation(
    network: &[DMatrix<f64>],
    linear: &[DMatrix<f64>],
    network_train: &[DMatrix<f64>],
    linear_train: &[DMatrix<f64>],
) -> f64 {
    let mut deviation = 0.0_f64;
    let mut motion = 0.0_f64;
    for s in 0..network.len() {
        deviation = deviation
            .max((&network[s] - &linear[s]).amax())
            .max((&network_train[s] - &linear_train[s]).amax());
        motion = motion
            .max((&linear[s] - &linear[0]).amax())
            .max((&linear_train[s] - &linear_train[0]).amax());
    }
    deviation / motion
}

#[allow(clippy::too_many_arguments)]
fn train_and_compare(
    width: usize,
    seed: u64,
    x: &DMatrix<f64>,
    x_test: &DMatrix<f64>,
    joint_x: &DMatrix<f64>,
    y: &DMatrix<f64>,
    reference: &DMatrix<f64>,
    eta: f64,
) -> Result<Run, Error> {
    let mut net: Mlp<f64> = spec(width).init(&mut StdRng::seed_from_u64(seed))?;
    let theta0 = empirical_ntk(&net, joint_x, joint_x)?;
    let (theta, theta_test) = blocks(&theta0);
    let (f0, f0_test) = (net.forward(x)?, net.forward(x_test)?);

    let trained = GradientDescent::new(eta, STEPS)?
        .record_every(RECORD_EVERY)?
        .fit(&mut net, x, y, x_test)?;
    let theta_end = empirical_ntk(&net, joint_x, joint_x)?;

    let steps = Horizon::steps(&trained.steps);
    let own = GradientFlow::new(&theta, y, eta)?;
    let own_train = own.train_at(&steps, &f0)?;
    let own_test = own.test_at(&steps, &f0, &f0_test, &theta_test)?;
    let (ref_train_kernel, ref_test_kernel) = blocks(reference);
    let limit = GradientFlow::new(&ref_train_kernel, y, eta)?;
    let ref_train = limit.train_at(&steps, &f0)?;
    let ref_test = limit.test_at(&steps, &f0, &f0_test, &ref_test_kernel)?;

    Ok(Run {
        deviation_own: relative_deviation(
            &trained.test_outputs,
            &own_test,
            &trained.train_outputs,
            &own_train,
        ),
        deviation_reference: relative_deviation(
            &trained.test_outputs,
            &ref_test,
            &trained.train_outputs,
            &ref_train,
        ),
        kernel_change: (&theta_end - &theta0).norm() / theta0.norm(),
        final_loss: *trained.losses.last().unwrap_or(&f64::NAN),
        steps: trained.steps,
        network: trained.test_outputs,
        own: own_test,
        reference: ref_test,
    })
}

/// Trajectories of the `SHOWN` test outputs, one panel per run.
fn plot_trajectories(path: &std::path::Path, runs: &[(usize, &Run)], eta: f64) -> support::Result {
    let charts: Vec<Chart> = runs
        .iter()
        .map(|(width, run)| {
            let mut chart = Chart::new(
                format!(
                    "width {width}: test outputs during training \
                     (colour: network; thin black: linearised on own Θ₀; wide pale: on Θ̊)"
                ),
                "η · step",
                "f(x)",
            )
            .legend(SeriesLabelPosition::UpperRight);
            for (c, &i) in SHOWN.iter().enumerate() {
                let color = Palette99::pick(c).to_rgba();
                let series = |outputs: &[DMatrix<f64>]| -> Vec<(f64, f64)> {
                    run.steps
                        .iter()
                        .zip(outputs)
                        .map(|(&s, m)| (eta * s as f64, m[(i, 0)]))
                        .collect()
                };
                chart = chart
                    .series(
                        Series::line("", series(&run.reference), color.mix(0.35))
                            .width(7)
                            .unlabelled(),
                    )
                    .series(Series::line(
                        format!("test point {i}"),
                        series(&run.network),
                        color,
                    ))
                    .series(
                        Series::line("", series(&run.own), BLACK)
                            .width(1)
                            .unlabelled(),
                    );
            }
            chart
        })
        .collect();
    Chart::save_stacked(&charts, path, (1200, 420))
}

/// Deviation and kernel change against width, log-log, with n^{-1/2} and n^{-1}.
fn plot_deviation(
    path: &std::path::Path,
    widths: &[f64],
    own: &[f64],
    reference: &[f64],
    change: &[f64],
) -> support::Result {
    let mut chart = Chart::new(
        "Deviation of gradient descent from its linearisation vs width",
        "hidden width n",
        "relative deviation",
    )
    .scales(Scale::Log2, Scale::Log)
    .legend(SeriesLabelPosition::LowerLeft);
    let curves: [(&str, &[f64], _); 3] = [
        ("max |f_NN − f_lin| (own Θ₀)", own, BLUE),
        ("max |f_NN − f_lin| (Θ̊, infinite width)", reference, RED),
        ("‖Θ_T − Θ₀‖ / ‖Θ₀‖", change, GREEN),
    ];
    for (name, values, color) in curves {
        let points = widths.iter().copied().zip(values.iter().copied()).collect();
        let slope = support::log_slope(widths, values);
        chart = chart
            .series(Series::line(format!("{name}: slope {slope:.2}"), points, color).markers());
    }
    // n^{-1/2} and n^{-1} through the first Θ̊ point, for reference.
    for (power, color) in [(-0.5, BLACK.to_rgba()), (-1.0, BLACK.mix(0.4))] {
        let line = widths
            .iter()
            .map(|&w| (w, reference[0] * (w / widths[0]).powf(power)))
            .collect();
        chart = chart.series(
            Series::line(format!("n^{power}"), line, color)
                .width(1)
                .dashed(),
        );
    }
    chart.save(path, (900, 600))
}

fn run(args: Args) -> Result<(), Error> {
    let train_angles: Vec<f64> = (0..N_TRAIN)
        .map(|i| 2.0 * PI * (i as f64 + 0.3 * (i % 3) as f64) / N_TRAIN as f64)
        .collect();
    let test_angles: Vec<f64> = (0..N_TEST)
        .map(|i| 2.0 * PI * (i as f64 + 0.5) / N_TEST as f64)
        .collect();
    let x = circle(&train_angles);
    let x_test = circle(&test_angles);
    let joint_x = circle(&[train_angles.clone(), test_angles].concat());
    let y = DMatrix::from_fn(N_TRAIN, 1, |i, _| target(train_angles[i]));

    // Θ̊: the infinite-width NTK of the same architecture (the width is irrelevant).
    let reference = infinite_width(&spec(1), &joint_x, &joint_x)?.ntk;
    let (ref_train, _) = blocks(&reference);
    let probe = GradientFlow::new(&ref_train, &y, 1.0)?;
    let eigenvalues = probe.eigenvalues();
    // η λ̊_max = 1: half the stable limit, so every width's own Θ₀ is stable too.
    let eta = 0.5 * probe.max_stable_learning_rate();
    println!(
        "task: {N_TRAIN} training / {N_TEST} test points on the circle, y = sin 2φ + cos(3φ)/2; \
         MLP 2 → n (Erf) → 1, σ_w = 1.5, σ_b = 0.1"
    );
    println!(
        "Θ̊ (infinite width): λ_max = {:.4}, λ_min = {:.3e}; η = 1/λ_max = {eta:.4}, {STEPS} steps (η λ_min · steps = {:.2})",
        eigenvalues[0],
        eigenvalues[N_TRAIN - 1],
        eta * eigenvalues[N_TRAIN - 1] * STEPS as f64
    );
    println!();
    println!(
        "{:>7} {:>22} {:>22} {:>20} {:>12}",
        "width", "deviation (own Θ₀)", "deviation (Θ̊)", "‖ΔΘ‖/‖Θ₀‖", "final loss (mean)"
    );
    let mut own = Vec::new();
    let mut limit = Vec::new();
    let mut change = Vec::new();
    let mut shown = Vec::new();
    let seeds = args.seeds;
    // The cost of a run grows like its width.
    let bar = support::progress(WIDTHS.iter().sum::<usize>() as u64 * seeds, "training");
    for &width in &WIDTHS {
        bar.set_message(format!("training width {width}"));
        let (mut d_own, mut d_ref, mut d_kernel, mut loss) = (0.0, 0.0, 0.0, 0.0);
        for seed in 0..seeds {
            let r = train_and_compare(width, seed, &x, &x_test, &joint_x, &y, &reference, eta)?;
            d_own += r.deviation_own / seeds as f64;
            d_ref += r.deviation_reference / seeds as f64;
            d_kernel += r.kernel_change / seeds as f64;
            loss += r.final_loss / seeds as f64;
            if seed == 0 && (width == WIDTHS[0] || width == WIDTHS[WIDTHS.len() - 1]) {
                shown.push((width, r));
            }
            bar.inc(width as u64);
        }
        bar.suspend(|| {
            println!("{width:>7} {d_own:>22.3e} {d_ref:>22.3e} {d_kernel:>20.3e} {loss:>12.3e}");
        });
        own.push(d_own);
        limit.push(d_ref);
        change.push(d_kernel);
    }
    bar.finish_and_clear();
    let widths: Vec<f64> = WIDTHS.iter().map(|&w| w as f64).collect();
    println!();
    println!(
        "fitted slopes of log(value) vs log(n): deviation (own Θ₀) {:.2}, deviation (Θ̊) {:.2}, \
         NTK change {:.2}  (Lee et al. 2019: at most -0.5 up to constants)",
        support::log_slope(&widths, &own),
        support::log_slope(&widths, &limit),
        support::log_slope(&widths, &change)
    );

    let dir = &args.out_dir;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create --out-dir {}: {e}", dir.display()))?;
    let refs: Vec<(usize, &Run)> = shown.iter().map(|(w, r)| (*w, r)).collect();
    let trajectories = dir.join("linearized_training_trajectories.svg");
    let deviation = dir.join("linearized_training_deviation.svg");
    plot_trajectories(&trajectories, &refs, eta)?;
    plot_deviation(&deviation, &widths, &own, &limit, &change)?;
    println!(
        "wrote {} and {}",
        trajectories.display(),
        deviation.display()
    );
    Ok(())
}
