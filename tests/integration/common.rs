//! Shared test machinery: tolerances in one place, the invariant checks every kernel
//! goes through, finite-difference references and the neural-tangents reference data.

#![allow(dead_code)]

use ntk::nalgebra::{DMatrix, DVector};
use ntk::{NtkModel, Scalar};
use serde_json::Value;

/// Tolerances, in one place.
pub mod prec {
    /// Exact identities in f64 (Jacobian contraction, per-layer sums): round-off only.
    pub const EXACT_F64: f64 = 1e-10;
    /// Central finite differences in f64 (step 1e-6 on parameters of order 1).
    pub const FINITE_DIFFERENCE: f64 = 1e-6;
    /// f32 against f64 on the same network.
    pub const F32_VS_F64: f64 = 1e-4;
    /// Closed-form kernels against neural-tangents (its README: ~1e-15, and ~1e-9 on
    /// the pair at correlation exactly 1).
    pub const NEURAL_TANGENTS: f64 = 1e-9;
    /// PSD: smallest eigenvalue may dip below zero by this fraction of the trace.
    pub const PSD_TRACE_FRACTION: f64 = 1e-10;
}

/// ‖a − b‖_F / max(‖b‖_F, tiny).
pub fn rel_err<T: Scalar>(a: &DMatrix<T>, b: &DMatrix<T>) -> f64 {
    let diff = (a - b).map(|v| v.to_f64()).norm();
    let norm = b.map(|v| v.to_f64()).norm();
    diff / norm.max(f64::MIN_POSITIVE)
}

/// Panics unless `k` is square and symmetric to `tol` relative to its largest entry.
pub fn assert_symmetric<T: Scalar>(k: &DMatrix<T>, tol: f64) {
    assert_eq!(
        k.nrows(),
        k.ncols(),
        "kernel is not square: {:?}",
        k.shape()
    );
    let k = k.map(|v| v.to_f64());
    let scale = k.amax().max(f64::MIN_POSITIVE);
    let asym = (&k - k.transpose()).amax() / scale;
    assert!(asym <= tol, "kernel asymmetry {asym:e} > {tol:e}");
}

/// Panics unless the smallest eigenvalue of the symmetric `k` is ≥ −fraction·trace.
pub fn assert_psd<T: Scalar>(k: &DMatrix<T>, fraction: f64) {
    let k = k.map(|v| v.to_f64());
    let sym = (&k + k.transpose()) * 0.5;
    let trace = sym.trace().abs();
    let min = sym
        .symmetric_eigenvalues()
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    assert!(
        min >= -fraction * trace.max(f64::MIN_POSITIVE),
        "smallest eigenvalue {min:e} < -{fraction:e} * trace {trace:e}"
    );
}

/// The invariants every kernel Θ(x, x) must satisfy: symmetric and PSD.
pub fn assert_valid_gram<T: Scalar>(k: &DMatrix<T>, symmetry_tol: f64) {
    assert_symmetric(k, symmetry_tol);
    assert_psd(k, prec::PSD_TRACE_FRACTION.max(symmetry_tol));
}

/// The Jacobian ∂f/∂θ by central finite differences with step `h`:
/// (N·k) × P, row i·k + c. Perturbs one parameter at a time.
pub fn finite_difference_jacobian<M: NtkModel<f64> + Clone>(
    model: &M,
    x: &DMatrix<f64>,
    h: f64,
) -> DMatrix<f64> {
    let p0 = model.parameters();
    let k = model.output_dim();
    let mut jac = DMatrix::zeros(x.nrows() * k, p0.len());
    let mut probe = model.clone();
    for p in 0..p0.len() {
        let mut plus: DVector<f64> = p0.clone();
        plus[p] += h;
        probe.set_parameters(&plus).expect("parameters");
        let f_plus = probe.forward(x).expect("forward");
        let mut minus = p0.clone();
        minus[p] -= h;
        probe.set_parameters(&minus).expect("parameters");
        let f_minus = probe.forward(x).expect("forward");
        for i in 0..x.nrows() {
            for c in 0..k {
                jac[(i * k + c, p)] = (f_plus[(i, c)] - f_minus[(i, c)]) / (2.0 * h);
            }
        }
    }
    jac
}

/// The NTK averaged over outputs, from a full (N1·k) × (N2·k) sample-major kernel.
pub fn trace_over_outputs(full: &DMatrix<f64>, k: usize) -> DMatrix<f64> {
    DMatrix::from_fn(full.nrows() / k, full.ncols() / k, |i, j| {
        (0..k).map(|c| full[(i * k + c, j * k + c)]).sum::<f64>() / k as f64
    })
}

/// The reference data computed by neural-tangents 0.6.5 (see `tests/data/README.md`).
pub fn reference() -> Value {
    let text = include_str!("../data/neural_tangents.json");
    serde_json::from_str(text).expect("tests/data/neural_tangents.json parses")
}

/// A JSON array of arrays of numbers as a matrix (rows are rows).
pub fn matrix(v: &Value) -> DMatrix<f64> {
    let rows: Vec<Vec<f64>> = v
        .as_array()
        .expect("array of rows")
        .iter()
        .map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number"))
                .collect()
        })
        .collect();
    let ncols = rows.first().map_or(0, Vec::len);
    DMatrix::from_fn(rows.len(), ncols, |i, j| rows[i][j])
}
