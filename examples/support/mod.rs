//! What the examples share: error reports as sentences, progress bars, log-log slopes,
//! SVG line and bar charts ([`plot`]) and the handwritten digits data set ([`digits`]).
//!
//! Each example includes it with `mod support;` and uses the part it needs.
#![allow(dead_code)]

pub mod digits;
pub mod plot;

use std::borrow::Cow;
use std::fmt::Display;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// An example's result: any error, reported by [`report`].
pub type Result<T = (), E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Prints an error as one line, `error: <message>: <cause>: …`, and exits with status 1.
///
/// `fn main() -> Result<(), E>` would print the error's `Debug` form instead.
pub fn report(result: Result) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut line = format!("error: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                line.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

/// Adds what was being done (and to which path) to an I/O error.
pub trait Context<T> {
    /// `Err(e)` becomes `"<what>: <e>"`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| format!("{}: {e}", what()).into())
    }
}

/// A progress bar over `len` steps on stderr; hidden when stderr is not a terminal.
///
/// Print with `bar.suspend(|| println!(..))` while it runs: `bar.println` prints
/// nothing when the bar is hidden.
pub fn progress(len: u64, message: impl Into<Cow<'static, str>>) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(message);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:32} [{bar:30}] {pos}/{len} {elapsed_precise} (about {eta} left)",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with the elapsed time, for one long call without intermediate steps.
pub fn spinner(message: impl Into<Cow<'static, str>>) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_message(message);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .expect("a valid spinner template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Least-squares slope of log y against log x.
pub fn log_slope(x: &[f64], y: &[f64]) -> f64 {
    let lx: Vec<f64> = x.iter().map(|v| v.ln()).collect();
    let ly: Vec<f64> = y.iter().map(|v| v.ln()).collect();
    let n = lx.len() as f64;
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let sxy: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = lx.iter().map(|a| (a - mx).powi(2)).sum();
    sxy / sxx
}
