//! Shared test machinery: deterministic inputs, finite-difference references, the
//! neural-tangents reference data and a hand-written MLP forward pass. (Tolerances are
//! in `prec`, the checks every kernel goes through in `contract`.)

use ntk::nalgebra::{DMatrix, DVector};
use ntk::{NtkModel, Scalar};
use serde_json::Value;

/// ‖a − b‖_F / max(‖b‖_F, tiny).
pub fn rel_err<T: Scalar>(a: &DMatrix<T>, b: &DMatrix<T>) -> f64 {
    let diff = (a - b).map(|v| v.to_f64()).norm();
    let norm = b.map(|v| v.to_f64()).norm();
    diff / norm.max(f64::MIN_POSITIVE)
}

/// The smallest eigenvalue of the symmetric part of the square `k`.
pub fn min_eigenvalue<T: Scalar>(k: &DMatrix<T>) -> f64 {
    let k = k.map(|v| v.to_f64());
    ((&k + k.transpose()) * 0.5)
        .symmetric_eigenvalues()
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
}

/// Panics unless the smallest eigenvalue of the symmetric part of `k` is
/// ≥ −fraction·|trace|.
pub fn assert_psd<T: Scalar>(k: &DMatrix<T>, fraction: f64) {
    let min = min_eigenvalue(k);
    let trace = k.map(|v| v.to_f64()).trace().abs();
    assert!(
        min >= -fraction * trace.max(f64::MIN_POSITIVE),
        "smallest eigenvalue {min:e} < -{fraction:e} * trace {trace:e}"
    );
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

/// More MLPs computed by neural-tangents 0.6.5: LeakyReLU, Abs and the standard
/// parameterization (see `tests/data/README.md`).
pub fn more_mlps() -> Value {
    let text = include_str!("../data/more_mlps.json");
    serde_json::from_str(text).expect("tests/data/more_mlps.json parses")
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

/// Deterministic standard normal entries: rows × cols from `seed`.
pub fn gaussian(rows: usize, cols: usize, seed: u64) -> DMatrix<f64> {
    use ntk::rand::{SeedableRng, rngs::StdRng};
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = StdRng::seed_from_u64(seed);
    DMatrix::from_fn(rows, cols, |_, _| StandardNormal.sample(&mut rng))
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
    let (sigma_w, sigma_b) = (spec.weight_std_value(), spec.bias_std_value());
    let ntk_param = spec.parameterization_value() == ntk::Parameterization::Ntk;
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

/// The theorem's rate: the relative deviation of the empirical NTK from the limit
/// falls as n^{−1/2}, so the study's log-log slope is −1/2 within `tolerance`.
pub fn assert_root_width_rate(study: &ntk::WidthStudy, tolerance: f64) {
    assert!(
        (study.slope + 0.5).abs() < tolerance,
        "slope {} not within {tolerance} of -1/2 (means {:?})",
        study.slope,
        study.points.iter().map(|q| q.mean).collect::<Vec<_>>()
    );
}

/// The case named `name` of a reference file's `cases`.
pub fn reference_case<'a>(data: &'a Value, name: &str) -> &'a Value {
    data["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|c| c["name"] == name)
        .expect("case present")
}

/// Asserts that `program`'s kernels match a reference case (`x` vs `x` and `x2` vs `x`:
/// `nngp`, `ntk`, `nngp_x2_x`, `ntk_x2_x`) to relative error `tol`.
pub fn assert_matches_reference(program: &ntk::Program, c: &Value, tol: f64) {
    let x = matrix(&c["x"]);
    let x2 = matrix(&c["x2"]);
    let k = ntk::infinite_width(program, &x, &x).expect("kernels");
    let cross = ntk::infinite_width(program, &x2, &x).expect("cross kernels");
    for (got, key) in [
        (&k.nngp, "nngp"),
        (&k.ntk, "ntk"),
        (&cross.nngp, "nngp_x2_x"),
        (&cross.ntk, "ntk_x2_x"),
    ] {
        let err = rel_err(got, &matrix(&c[key]));
        assert!(err < tol, "{} {key}: relative error {err:e}", c["name"]);
    }
}

/// The activations without a closed form, and a custom one (swish, x σ(x)).
pub fn numerical_activations() -> Vec<ntk::Activation> {
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    vec![
        ntk::Activation::Tanh,
        ntk::Activation::Sigmoid,
        ntk::Activation::Softplus,
        ntk::Activation::custom(
            "swish",
            move |x| x * sigmoid(x),
            move |x| sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))),
        ),
    ]
}
