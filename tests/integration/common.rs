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

/// Deterministic test inputs: N × d, entries uniform in [−1, 1) from `seed`.
pub fn inputs(n: usize, d: usize, seed: u64) -> DMatrix<f64> {
    use ntk::rand::{RngExt, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    DMatrix::from_fn(n, d, |_, _| rng.random_range(-1.0..1.0))
}

/// The finite-difference NTK with all output pairs, J_fd(x1) J_fd(x2)ᵀ:
/// (N1·k) × (N2·k), entry (i·k + c, j·k + c'), central differences with step `h`.
pub fn finite_difference_ntk_full<M: NtkModel<f64> + Clone>(
    model: &M,
    x1: &DMatrix<f64>,
    x2: &DMatrix<f64>,
    h: f64,
) -> DMatrix<f64> {
    let j1 = finite_difference_jacobian(model, x1, h);
    let j2 = finite_difference_jacobian(model, x2, h);
    &j1 * j2.transpose()
}

/// The number of entries of `m` whose magnitude is below `threshold`, for checking that
/// no pre-activation sits within a finite-difference step of a kink.
pub fn count_below(m: &DMatrix<f64>, threshold: f64) -> usize {
    m.iter().filter(|v| v.abs() < threshold).count()
}

/// The pre-activations H^1, …, H^L of an [`ntk::Mlp`] on `x`, recomputed by hand from
/// its stored weights and biases and its spec (an independent forward pass; H^L is the
/// output).
pub fn mlp_pre_activations(net: &ntk::Mlp<f64>, x: &DMatrix<f64>) -> Vec<DMatrix<f64>> {
    let spec = net.spec();
    let (sigma_w, sigma_b) = (spec.sigma_w(), spec.sigma_b());
    let ntk_param = spec.parameterization_kind() == ntk::Parameterization::Ntk;
    let mut current = x.clone();
    let mut out = Vec::new();
    for l in 0..net.depth() {
        let w = net.weights(l).expect("layer in range");
        let b = net.bias(l).expect("layer in range");
        let n_in = w.ncols() as f64;
        let (sw, sb) = if ntk_param {
            (sigma_w / n_in.sqrt(), sigma_b)
        } else {
            (1.0, 1.0)
        };
        let mut h = DMatrix::from_fn(current.nrows(), w.nrows(), |i, a| {
            sw * (0..w.ncols())
                .map(|j| w[(a, j)] * current[(i, j)])
                .sum::<f64>()
        });
        if let Some(b) = b {
            for i in 0..h.nrows() {
                for a in 0..h.ncols() {
                    h[(i, a)] += sb * b[a];
                }
            }
        }
        if let Some((_, act)) = spec.hidden_layers().get(l) {
            current = h.map(|v| act.phi(v));
        }
        out.push(h);
    }
    out
}
