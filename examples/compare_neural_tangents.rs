//! The crate's side of `bench/compare_neural_tangents.py`: the same configurations,
//! inputs and weights, checked for agreement and timed the same way.
//!
//! ```sh
//! /opt/ntvenv/bin/python bench/compare_neural_tangents.py target/nt-compare
//! cargo run --release --example compare_neural_tangents -- target/nt-compare
//! ```
//!
//! Reads the manifest and raw little-endian `f64` files the script wrote, recomputes
//! every kernel and prediction with `ntk`, prints the largest relative difference from
//! neural-tangents' (the comparison is only fair if it is ~1e-10 or less), the median
//! time of each side over the same number of runs, and the ratio.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ntk::nalgebra::{DMatrix, DVector};
use ntk::{
    Activation, GradientFlow, InfiniteWidth, Mlp, MlpSpec, NtkModel, Program, empirical_ntk,
    infinite_width, zoo,
};
use serde_json::Value;

mod support;
use support::{Context, Result};

const REPEATS: usize = 7;

/// Recomputes the kernels and predictions that bench/compare_neural_tangents.py wrote
/// with neural-tangents, checks that they agree, and compares the timings.
#[derive(Parser)]
struct Args {
    /// The directory the Python script wrote (manifest.json and raw f64 files).
    #[arg(default_value = "target/nt-compare")]
    dir: PathBuf,
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

/// The manifest entry `key` of `value` as a number, or an error naming it.
fn number(value: &Value, key: &str, manifest: &Path) -> Result<f64> {
    value[key]
        .as_f64()
        .ok_or_else(|| format!("{}: `{key}` is missing or not a number", manifest.display()).into())
}

/// The manifest entry `key` as a list.
fn list<'a>(value: &'a Value, key: &str, manifest: &Path) -> Result<&'a Vec<Value>> {
    value[key]
        .as_array()
        .ok_or_else(|| format!("{}: `{key}` is missing or not a list", manifest.display()).into())
}

/// Reads a `{file, shape}` entry of the manifest as a matrix (row-major on disk).
fn load(dir: &Path, entry: &Value) -> Result<DMatrix<f64>> {
    let manifest = dir.join("manifest.json");
    let file = entry["file"]
        .as_str()
        .ok_or_else(|| format!("{}: an entry has no `file`: {entry}", manifest.display()))?;
    let shape: Vec<usize> = list(entry, "shape", &manifest)?
        .iter()
        .map(|v| {
            v.as_u64().map(|u| u as usize).ok_or_else(|| {
                format!(
                    "{}: the shape of {file} is not a list of sizes",
                    manifest.display()
                )
            })
        })
        .collect::<std::result::Result<_, _>>()?;
    let path = dir.join(file);
    let bytes = std::fs::read(&path).context(|| format!("cannot read {}", path.display()))?;
    let values: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    let (rows, cols) = match shape.as_slice() {
        [n] => (*n, 1),
        [r, c] => (*r, *c),
        [r, c, rest @ ..] => (*r, c * rest.iter().product::<usize>()),
        [] => (1, 1),
    };
    if values.len() != rows * cols || bytes.len() % 8 != 0 {
        return Err(format!(
            "{} holds {} bytes, not {} f64 values for shape {shape:?}",
            path.display(),
            bytes.len(),
            rows * cols
        )
        .into());
    }
    Ok(DMatrix::from_row_slice(rows, cols, &values))
}

/// Median wall-clock seconds of `REPEATS` runs after one warm-up run.
fn median_seconds<R>(mut f: impl FnMut() -> R) -> f64 {
    std::hint::black_box(f());
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// max |a − b| / max |b|.
fn rel_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).amax() / b.amax()
}

/// max |a − b| / max |b| over the off-diagonal entries of square kernels.
///
/// On the diagonal every pair has correlation exactly 1, where arccos loses √ε to
/// round-off: neural-tangents' infinite-width NTK diagonal differs from the exact
/// value (for ReLU, Θ^{l+1}(x, x) = q^{l+1} + Θ^l(x, x)/2) by ~1.4e-8 relative on these
/// configurations, ours by ~1e-16; see tests/data/README.md. The diagonal is reported
/// separately.
fn off_diagonal_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    let mut d = a - b;
    d.fill_diagonal(0.0);
    d.amax() / b.amax()
}

/// neural-tangents' `serial(Conv(·, taps, 'CIRCULAR', W_std 1.4, b_std 0.1), Relu) × layers,
/// GlobalAvgPool, Dense(1))` on a `grid` of positions (row-major, `channels` columns
/// each) as a program (`ntk::zoo::Cnn`). A 1-D CNN is the grid `(1, positions)` with taps `(1, k)`.
fn cnn(
    grid: (usize, usize),
    taps: (usize, usize),
    channels: usize,
    layers: usize,
) -> Result<Program, ntk::Error> {
    zoo::Cnn::new(grid, channels)
        .taps(taps)
        .layers(layers)
        .weight_std(1.4)
        .bias_std(0.1)
        .program()
}

struct Row {
    what: String,
    n: usize,
    /// Largest relative difference (off the diagonal for infinite-width kernels).
    diff: f64,
    /// Largest relative difference on the diagonal of infinite-width kernels.
    diag: Option<f64>,
    ours: f64,
    theirs: f64,
}

fn run(args: Args) -> Result {
    let dir = args.dir;
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).context(|| {
        format!(
            "cannot read {} (run bench/compare_neural_tangents.py first)",
            manifest_path.display()
        )
    })?;
    let manifest: Value = serde_json::from_str(&text)
        .context(|| format!("{} is not valid JSON", manifest_path.display()))?;
    let m = &manifest_path;
    let dim = number(&manifest, "dim", m)? as usize;
    let width = number(&manifest, "width", m)? as usize;
    let depth = number(&manifest, "depth", m)? as usize;
    let mut spec = MlpSpec::new(dim);
    for _ in 0..depth {
        spec = spec.hidden(width, Activation::Relu);
    }
    let params: DVector<f64> = load(&dir, &manifest["params"])?.column(0).into_owned();
    let net = Mlp::from_parameters(&spec, &params)?;
    let mut rows = Vec::new();

    let (empirical, infinite, flow) = (
        list(&manifest, "empirical", m)?,
        list(&manifest, "infinite", m)?,
        list(&manifest, "flow", m)?,
    );
    let bar = support::progress(
        (empirical.len() + infinite.len() + flow.len()) as u64,
        "timing",
    );

    for case in empirical {
        let x = load(&dir, &case["x"])?;
        let reference = load(&dir, &case["ntk"])?;
        let theta = empirical_ntk(&net, &x, &x)?;
        rows.push(Row {
            what: "empirical NTK".into(),
            n: x.nrows(),
            diff: rel_diff(&theta, &reference),
            diag: None,
            ours: median_seconds(|| empirical_ntk(&net, &x, &x)),
            theirs: number(case, "seconds", m)?,
        });
        bar.inc(1);
    }

    for case in infinite {
        let x = load(&dir, &case["x"])?;
        let k = infinite_width(&spec, &x, &x)?;
        let (nngp, ntk) = (load(&dir, &case["nngp"])?, load(&dir, &case["ntk"])?);
        let diff = off_diagonal_diff(&k.nngp, &nngp).max(off_diagonal_diff(&k.ntk, &ntk));
        let diag = rel_diff(&k.nngp, &nngp).max(rel_diff(&k.ntk, &ntk));
        rows.push(Row {
            what: "infinite NNGP+NTK".into(),
            n: x.nrows(),
            diff,
            diag: Some(diag),
            ours: median_seconds(|| infinite_width(&spec, &x, &x)),
            theirs: number(case, "seconds", m)?,
        });
        bar.inc(1);
    }

    let t = number(&manifest, "flow_t", m)?;
    for case in flow {
        let theta = load(&dir, &case["ntk"])?;
        let y = load(&dir, &case["y"])?;
        let f0 = load(&dir, &case["f0"])?;
        let reference = load(&dir, &case["f_t"])?;
        // neural-tangents divides time by the number of target entries.
        let eta = number(case, "nt_learning_rate", m)? / y.len() as f64;
        let run = || -> std::result::Result<DMatrix<f64>, ntk::Error> {
            GradientFlow::new(&theta, &y, eta)?.train(t, &f0)
        };
        let f_t = run()?;
        rows.push(Row {
            what: "gradient flow (setup + 1 prediction)".into(),
            n: theta.nrows(),
            diff: rel_diff(&f_t, &reference),
            diag: None,
            ours: median_seconds(run),
            theirs: number(case, "seconds", m)?,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    if let Some(c) = manifest.get("cnn") {
        let field = |k: &str| c[k].as_u64().map(|v| v as usize).ok_or("cnn field");
        let program = cnn(
            (1, field("positions")?),
            (1, 3),
            field("channels")?,
            field("layers")?,
        )?;
        let mut net = program.init::<f64>(
            field("width")?,
            &mut <ntk::rand::rngs::StdRng as ntk::rand::SeedableRng>::seed_from_u64(0),
        )?;
        net.set_parameters(&load(&dir, &c["params"])?.column(0).into_owned())?;
        for case in c["infinite"].as_array().ok_or("cnn infinite")? {
            let x = load(&dir, &case["x"])?;
            let k = infinite_width(&program, &x, &x)?;
            let (nngp, ntk) = (load(&dir, &case["nngp"])?, load(&dir, &case["ntk"])?);
            rows.push(Row {
                what: "CNN infinite NNGP+NTK".into(),
                n: x.nrows(),
                diff: off_diagonal_diff(&k.nngp, &nngp).max(off_diagonal_diff(&k.ntk, &ntk)),
                diag: Some(rel_diff(&k.nngp, &nngp).max(rel_diff(&k.ntk, &ntk))),
                ours: median_seconds(|| infinite_width(&program, &x, &x)),
                theirs: case["seconds"].as_f64().ok_or("seconds")?,
            });
        }
        for case in c["empirical"].as_array().ok_or("cnn empirical")? {
            let x = load(&dir, &case["x"])?;
            let reference = load(&dir, &case["ntk"])?;
            let theta = empirical_ntk(&net, &x, &x)?;
            rows.push(Row {
                what: "CNN empirical NTK (width 128)".into(),
                n: x.nrows(),
                diff: rel_diff(&theta, &reference),
                diag: None,
                ours: median_seconds(|| empirical_ntk(&net, &x, &x)),
                theirs: case["seconds"].as_f64().ok_or("seconds")?,
            });
        }
    }

    if let Some(c) = manifest.get("cnn2d") {
        let field = |k: &str| c[k].as_u64().map(|v| v as usize).ok_or("cnn2d field");
        let side = field("side")?;
        let program = cnn((side, side), (3, 3), field("channels")?, 2)?;
        // Compiled once, as neural-tangents' kernel function is jitted once.
        let prepared = InfiniteWidth::new(&program)?;
        for case in c["infinite"].as_array().ok_or("cnn2d infinite")? {
            let x = load(&dir, &case["x"])?;
            let k = prepared.kernels(&x, &x)?;
            let (nngp, ntk) = (load(&dir, &case["nngp"])?, load(&dir, &case["ntk"])?);
            rows.push(Row {
                what: "CNN 2-D (8×8) infinite NNGP+NTK".into(),
                n: x.nrows(),
                diff: off_diagonal_diff(&k.nngp, &nngp).max(off_diagonal_diff(&k.ntk, &ntk)),
                diag: Some(rel_diff(&k.nngp, &nngp).max(rel_diff(&k.ntk, &ntk))),
                ours: median_seconds(|| prepared.kernels(&x, &x)),
                theirs: case["seconds"].as_f64().ok_or("seconds")?,
            });
        }
    }

    if let Some(c) = manifest.get("myrtle5") {
        let field = |k: &str| c[k].as_u64().map(|v| v as usize).ok_or("myrtle5 field");
        let side = field("side")?;
        let program = ntk::zoo::myrtle(5, (side, side), field("channels")?)?;
        let prepared = InfiniteWidth::new(&program)?;
        for case in c["infinite"].as_array().ok_or("myrtle5 infinite")? {
            let x = load(&dir, &case["x"])?;
            let k = prepared.kernels(&x, &x)?;
            let (nngp, ntk) = (load(&dir, &case["nngp"])?, load(&dir, &case["ntk"])?);
            rows.push(Row {
                what: format!("Myrtle-5 ({side}×{side}) infinite NNGP+NTK"),
                n: x.nrows(),
                diff: off_diagonal_diff(&k.nngp, &nngp).max(off_diagonal_diff(&k.ntk, &ntk)),
                diag: Some(rel_diff(&k.nngp, &nngp).max(rel_diff(&k.ntk, &ntk))),
                ours: median_seconds(|| prepared.kernels(&x, &x)),
                theirs: case["seconds"].as_f64().ok_or("seconds")?,
            });
        }
    }

    println!(
        "neural-tangents {} (jax {}), f64, median of {REPEATS} runs each\n",
        manifest["neural_tangents"].as_str().unwrap_or("?"),
        manifest["jax"].as_str().unwrap_or("?")
    );
    println!(
        "| {:<38} | {:>5} | {:>9} | {:>12} | {:>14} | {:>7} |",
        "computation", "N", "max diff", "ntk (ms)", "n-t (ms)", "speedup"
    );
    println!(
        "|{:-<40}|{:->7}|{:->11}|{:->14}|{:->16}|{:->9}|",
        "", "", "", "", "", ""
    );
    let mut worst: f64 = 0.0;
    for r in &rows {
        // NaN counts as the worst difference (f64::max would drop it).
        if r.diff.is_nan() || r.diff > worst {
            worst = r.diff;
        }
        println!(
            "| {:<38} | {:>5} | {:>9.1e} | {:>12.2} | {:>14.2} | {:>6.2}x |",
            r.what,
            r.n,
            r.diff,
            r.ours * 1e3,
            r.theirs * 1e3,
            r.theirs / r.ours
        );
    }
    if let Some(diag) = rows.iter().filter_map(|r| r.diag).reduce(f64::max) {
        println!(
            "\ninfinite-width diagonals (correlation exactly 1): max difference {diag:.1e}, \
             neural-tangents' round-off in arccos near 1 (ours matches the exact diagonal)"
        );
    }
    if worst.is_nan() || worst > 1e-10 {
        return Err(
            format!("the results differ from neural-tangents' by {worst:e} > 1e-10").into(),
        );
    }
    Ok(())
}
