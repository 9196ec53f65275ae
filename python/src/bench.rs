//! The Rust side of `bench/python_overhead.py`: the same computations called from Rust
//! on matrices already converted, timed in the same process, so that the binding's
//! overhead (conversions, the GIL, wrapping the results) is what the script measures.

use std::time::Instant;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{compute, count, matrix};
use crate::infinite::{Arch, with_arch};
use crate::network::{Network, with_model};

/// Seconds of each of `repeats` runs of the Rust call `what` ('empirical_ntk' of the
/// Network `target`, or 'infinite_width' of the MlpSpec or Program `target`) on x vs x.
/// Not part of the API: a benchmark hook.
#[pyfunction]
pub fn _bench_rust(
    py: Python<'_>,
    what: &str,
    target: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    repeats: i64,
) -> PyResult<Vec<f64>> {
    let repeats = count(repeats, "repeats")?;
    match what {
        "empirical_ntk" => {
            let net = target.extract::<PyRef<'_, Network>>()?;
            with_model!(&net.model, |m, T| {
                let x = matrix::<T>(x, "x")?;
                compute(py, || {
                    (0..repeats)
                        .map(|_| {
                            let start = Instant::now();
                            std::hint::black_box(ntk::empirical_ntk(m, &x, &x)?);
                            Ok(start.elapsed().as_secs_f64())
                        })
                        .collect()
                })
            })
        }
        "infinite_width" => {
            let arch = Arch::extract(target)?;
            let x = matrix::<f64>(x, "x")?;
            with_arch!(arch, |a| compute(py, || {
                (0..repeats)
                    .map(|_| {
                        let start = Instant::now();
                        std::hint::black_box(ntk::infinite_width(a, &x, &x)?);
                        Ok(start.elapsed().as_secs_f64())
                    })
                    .collect()
            }))
        }
        other => Err(PyValueError::new_err(format!(
            "unknown computation {other:?}: 'empirical_ntk' or 'infinite_width'"
        ))),
    }
}
