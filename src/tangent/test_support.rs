//! Fixtures shared by the unit tests of the tangent module: features of a shared
//! weight, and a batch pair's kernel next to its reference $J_1 J_2ᵀ$.

use nalgebra::DMatrix;

use super::contraction::{OutputLayout, Scratch};
use super::normal_form::Tangents;
use super::{DenseUse, GroupTangent};

/// ‖a − b‖_F / ‖b‖_F.
pub(super) fn rel(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    (a - b).norm() / b.norm()
}

pub(super) fn matrix(rows: usize, cols: usize, seed: f64) -> DMatrix<f64> {
    DMatrix::from_fn(rows, cols, |i, j| {
        (seed + 0.37 * i as f64 + 1.3 * j as f64 + 0.11 * (i * j) as f64).sin()
    })
}

/// A weight with `uses` uses (and a bias) on a batch of `n` samples, k outputs.
pub(super) fn shared(
    n: usize,
    n_in: usize,
    n_out: usize,
    k: usize,
    uses: usize,
    seed: f64,
) -> GroupTangent<f64> {
    GroupTangent::Dense {
        weight_scale: 0.7,
        bias_scale: Some(0.3),
        uses: (0..uses)
            .map(|u| DenseUse {
                input: matrix(n, n_in, seed + u as f64),
                output_grad: matrix(n, k * n_out, seed - 2.0 * u as f64),
            })
            .collect(),
    }
}

pub(super) fn kernel(t1: &Tangents<f64>, t2: &Tangents<f64>, layout: OutputLayout) -> DMatrix<f64> {
    let per = layout.per_sample(t1.outputs);
    let mut out = DMatrix::zeros(t1.samples * per, t2.samples * per);
    let shape = out.shape();
    t1.add_kernel(
        t2,
        &mut out.view_mut((0, 0), shape),
        layout,
        &mut Scratch::default(),
    );
    out
}

/// J₁ J₂ᵀ in the full layout; its diagonal output blocks averaged in the trace.
pub(super) fn reference(
    t1: &Tangents<f64>,
    t2: &Tangents<f64>,
    layout: OutputLayout,
) -> DMatrix<f64> {
    let full = t1.jacobian().unwrap() * t2.jacobian().unwrap().transpose();
    let k = t1.outputs;
    match layout {
        OutputLayout::Full => full,
        OutputLayout::Trace => DMatrix::from_fn(t1.samples, t2.samples, |i, j| {
            (0..k).map(|c| full[(i * k + c, j * k + c)]).sum::<f64>() / k as f64
        }),
    }
}
