//! The empirical NTK converges to the infinite-width NTK like n^{−1/2}.
//!
//! For a deep ReLU MLP and an Erf MLP, measures the relative Frobenius distance
//! ‖Θ_n − Θ̊‖_F / ‖Θ̊‖_F between the empirical NTK of width-n networks (several seeds)
//! and the infinite-width limit, prints the table with the fitted log-log slope, and
//! writes a log-log plot with an n^{−1/2} reference line to `out/width_convergence.svg`
//! (Tensor Programs II, Figure 1).
//!
//! ```sh
//! cargo run --release --example width_convergence
//! ```

use std::error::Error;
use std::path::PathBuf;

use ntk::nalgebra::DMatrix;
use ntk::{Activation, MlpSpec, WidthStudy, width_convergence};
use plotters::prelude::*;

fn main() -> Result<(), Box<dyn Error>> {
    let d = 8;
    let x = DMatrix::from_fn(16, d, |i, j| ((i * d + j) as f64 * 0.61).sin());
    let widths = [32, 64, 128, 256, 512, 1024, 2048, 4096];
    let seeds: Vec<u64> = (0..8).collect();

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
        let study = width_convergence(spec, &x, &widths, &seeds)?;
        println!("{name}");
        println!("{:>8}  {:>10}  {:>10}", "width", "mean error", "std");
        for p in &study.points {
            println!("{:>8}  {:>10.4}  {:>10.4}", p.width, p.mean, p.std);
        }
        println!("fitted slope {:.3} (theory: -0.5)\n", study.slope);
        studies.push((name, study));
    }

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("out");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("width_convergence.svg");
    plot(&path, &studies)?;
    println!("plot written to {}", path.display());
    Ok(())
}

fn plot(path: &PathBuf, studies: &[(&str, WidthStudy)]) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = studies.iter().flat_map(|(_, s)| s.points.iter()).fold(
        (f64::INFINITY, 0.0_f64),
        |(lo, hi), p| {
            (
                (p.mean - p.std).max(p.mean / 4.0).min(lo),
                (p.mean + p.std).max(hi),
            )
        },
    );
    let w_min = studies[0].1.points.first().map_or(1.0, |p| p.width as f64);
    let w_max = studies[0].1.points.last().map_or(2.0, |p| p.width as f64);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Empirical NTK vs infinite width: relative Frobenius error",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (w_min / 1.5..w_max * 1.5).log_scale(),
            (lo / 1.5..hi * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("hidden width n")
        .y_desc("mean ‖Θ_n − Θ̊‖ / ‖Θ̊‖ over seeds")
        .draw()?;

    let colors = [RED, BLUE];
    for ((name, study), color) in studies.iter().zip(colors) {
        let pts: Vec<(f64, f64)> = study
            .points
            .iter()
            .map(|p| (p.width as f64, p.mean))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(format!("{name} (slope {:.2})", study.slope))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            pts.iter()
                .map(|&(w, m)| Circle::new((w, m), 4, color.filled())),
        )?;
        // ± one standard deviation over seeds.
        chart.draw_series(study.points.iter().map(|p| {
            let w = p.width as f64;
            PathElement::new(
                vec![(w, (p.mean - p.std).max(lo / 1.5)), (w, p.mean + p.std)],
                color,
            )
        }))?;
    }
    // The n^{−1/2} reference through the first ReLU point.
    let first = &studies[0].1.points[0];
    let c = first.mean * (first.width as f64).sqrt();
    chart
        .draw_series(LineSeries::new(
            [w_min, w_max].map(|w| (w, c / w.sqrt())),
            BLACK.stroke_width(1),
        ))?
        .label("reference n^(-1/2)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
