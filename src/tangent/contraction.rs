//! The kernel contraction: a group's share of $Θ$ between two batches, from the Gram
//! pairs of its uses or the products of its per-sample gradients, written into a tile
//! of the kernel in either output layout.

use nalgebra::{DMatrix, DMatrixViewMut, Dim, Dyn, MatrixViewMut};

use super::GroupKernel;
use super::normal_form::{GroupForm, PerSample, ReadoutTangent, TangentGroup, Tangents, Uses};
use crate::Scalar;
use crate::error::{Error, Result, first_non_finite_entry};
use crate::linalg::{columns_transposed, gemm_nt};

/// How the $k$ outputs appear in a kernel.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum OutputLayout {
    /// Averaged over the $k$ outputs: $N_1 × N_2$.
    Trace,
    /// All output pairs: $(N_1·k) × (N_2·k)$, row $i·k + c$ for output $c$ of sample $i$.
    Full,
}

impl OutputLayout {
    /// Kernel rows (and columns) per sample: 1 or $k$.
    pub(crate) fn per_sample(self, k: usize) -> usize {
        match self {
            OutputLayout::Trace => 1,
            OutputLayout::Full => k,
        }
    }

    /// Output pairs contracted per pair of samples: the $k$ diagonal ones, or all $k^2$.
    pub(super) fn output_pairs(self, k: usize) -> usize {
        k * self.per_sample(k)
    }

    /// The factor in front of every term: $1/k$ for the average over outputs, else 1.
    fn norm<T: Scalar>(self, k: usize) -> T {
        match self {
            OutputLayout::Trace => T::one() / T::from_f64_lossy(k as f64),
            OutputLayout::Full => T::one(),
        }
    }
}

/// One pair of outputs $(c, d)$ in the full layout: the kernel entries
/// $(i·k + c, j·k + d)$, from column block $c$ of the first batch's gradients and block $d$
/// of the second's.
#[derive(Clone, Copy, Debug)]
struct OutputPair {
    c: usize,
    d: usize,
}

impl OutputPair {
    /// All $k^2$ pairs.
    fn all(k: usize) -> impl Iterator<Item = OutputPair> {
        (0..k).flat_map(move |c| (0..k).map(move |d| OutputPair { c, d }))
    }

    /// The entries of this pair in a kernel tile with $k$ rows and columns per sample.
    fn entries<'b, T: Scalar>(
        self,
        tile: &'b mut DMatrixViewMut<'_, T>,
        k: usize,
    ) -> MatrixViewMut<'b, T, Dyn, Dyn, Dyn, Dyn> {
        let (rows, cols) = (tile.nrows() / k, tile.ncols() / k);
        tile.view_with_steps_mut((self.c, self.d), (rows, cols), (k - 1, k - 1))
    }
}

impl<T: Scalar> TangentGroup<T> {
    /// Adds this group's kernel with `other` (the same group on another batch) to
    /// `weights` and `bias`, or all of it to `weights` when `bias` is `None`.
    fn add_kernel<'a>(
        &self,
        other: &TangentGroup<T>,
        weights: &mut DMatrixViewMut<'a, T>,
        bias: Option<&mut DMatrixViewMut<'a, T>>,
        layout: OutputLayout,
        k: usize,
        scratch: &mut Scratch<T>,
    ) {
        match (&self.form, &other.form) {
            (GroupForm::Uses(a), GroupForm::Uses(b)) => {
                add_uses(weights, bias, a, b, layout, k, scratch)
            }
            (GroupForm::Readout(a), GroupForm::Readout(b)) => {
                let xx = input_gram(&mut scratch.xx, &a.input, &b.input);
                // Each diagonal output pair once; the average of the k identical ones in
                // the trace is one of them.
                let scales = |r: &ReadoutTangent<T>| (r.weight_scale, r.bias_scale);
                let coefficients = scale_products(scales(a), scales(b), T::one());
                add_readout(weights, bias, xx, coefficients, layout, k);
            }
            // Another batch gave the same group in another form: contract as uses.
            (GroupForm::Readout(r), _) => {
                self.with_uses(r)
                    .add_kernel(other, weights, bias, layout, k, scratch);
            }
            (_, GroupForm::Readout(r)) => {
                self.add_kernel(&other.with_uses(r), weights, bias, layout, k, scratch);
            }
            (
                GroupForm::PerSample {
                    weights: w1,
                    bias: b1,
                },
                GroupForm::PerSample {
                    weights: w2,
                    bias: b2,
                },
            ) => {
                if let (Some(w1), Some(w2)) = (w1, w2) {
                    add_per_sample(weights, w1, w2, layout, k);
                }
                if let (Some(b1), Some(b2)) = (b1, b2) {
                    add_per_sample(bias.unwrap_or(weights), b1, b2, layout, k);
                }
            }
            // The two batches chose different forms (their numbers of uses differ):
            // contract through per-sample gradients.
            (GroupForm::Uses(_), _) => {
                self.to_per_sample()
                    .add_kernel(other, weights, bias, layout, k, scratch);
            }
            (_, GroupForm::Uses(_)) => {
                self.add_kernel(&other.to_per_sample(), weights, bias, layout, k, scratch);
            }
        }
    }
}

/// Errors unless the kernel `m` (what `result` computed) is finite. Its tangent
/// features were checked finite, so a NaN or ∞ here is the kernel overflowing.
pub(crate) fn check_kernel_finite<T: Scalar>(result: &'static str, m: &DMatrix<T>) -> Result<()> {
    match first_non_finite_entry(m) {
        None => Ok(()),
        Some((row, col)) => Err(Error::NonFiniteResult {
            result,
            reason: format!(
                "entry ({row}, {col}) is {}: the kernel exceeds the range of the scalar \
                     type, although the model's tangent features are finite (its gradients \
                     are too large: σ_w, or the inputs)",
                m[(row, col)]
            ),
        }),
    }
}

/// Reused products of one tile: $X_1 X_2ᵀ$ and $G_1 G_2ᵀ$.
pub(crate) struct Scratch<T: Scalar> {
    xx: Option<DMatrix<T>>,
    gg: Option<DMatrix<T>>,
}

impl<T: Scalar> Default for Scratch<T> {
    fn default() -> Self {
        Scratch { xx: None, gg: None }
    }
}

/// A buffer of shape `shape`, reused when it already has it (GEMMs with $β = 0$
/// overwrite it without reading).
fn buffer<T: Scalar>(slot: &mut Option<DMatrix<T>>, shape: (usize, usize)) -> &mut DMatrix<T> {
    if slot.as_ref().is_none_or(|m| m.shape() != shape) {
        *slot = Some(DMatrix::zeros(shape.0, shape.1));
    }
    slot.as_mut().expect("just set")
}

/// The weight term $c_w Σ_{u,v} (X_{1,u} X_{2,v}ᵀ) ⊙ (G_{1,u} G_{2,v}ᵀ)$ added to `weights`, and the
/// bias term $c_b Σ_{u,v} G_{1,u} G_{2,v}ᵀ$ to `bias`, or to `weights` too when `bias` is
/// `None` (one pass: $(c_w X_1X_2ᵀ + c_b) ⊙ G_1G_2ᵀ$).
fn add_uses<'a, T: Scalar>(
    weights: &mut DMatrixViewMut<'a, T>,
    mut bias: Option<&mut DMatrixViewMut<'a, T>>,
    a: &Uses<T>,
    b: &Uses<T>,
    layout: OutputLayout,
    k: usize,
    scratch: &mut Scratch<T>,
) {
    let scales = |u: &Uses<T>| (u.weight_scale, u.bias_scale);
    let (cw, cb) = scale_products(scales(a), scales(b), layout.norm(k));
    for u in &a.uses {
        for v in &b.uses {
            let (n1, n2) = (u.input.nrows(), v.input.nrows());
            let xx = input_gram(&mut scratch.xx, &u.input, &v.input);
            let gg = buffer(&mut scratch.gg, (n1, n2));
            let (g1, g2) = (&u.output_grad, &v.output_grad);
            match layout {
                // One GEMM over all k output blocks sums the k diagonal pairs.
                OutputLayout::Trace => {
                    gemm_nt(&mut gg.as_view_mut(), g1, 0, g2, 0, g1.ncols());
                    add_products_by_column(weights, bias.as_deref_mut(), xx, gg, (cw, cb));
                }
                OutputLayout::Full => {
                    let m = g1.ncols() / k;
                    for pair in OutputPair::all(k) {
                        gemm_nt(&mut gg.as_view_mut(), g1, pair.c * m, g2, pair.d * m, m);
                        let mut w = pair.entries(weights, k);
                        let mut b = bias.as_deref_mut().map(|b| pair.entries(b, k));
                        add_products(&mut w, b.as_mut(), xx, gg, (cw, cb));
                    }
                }
            }
        }
    }
}

/// $(c_w, c_b) = (s_w \bar s_w, s_b \bar s_b) ·$ `norm` from the (weight, bias) scales of a group
/// on two batches; $c_b = 0$ without bias.
fn scale_products<T: Scalar>(a: (T, Option<T>), b: (T, Option<T>), norm: T) -> (T, T) {
    let cb = match (a.1, b.1) {
        (Some(s), Some(t)) => s * t * norm,
        _ => T::zero(),
    };
    (a.0 * b.0 * norm, cb)
}

/// $X_1 X_2ᵀ$, in the reused buffer `slot`.
fn input_gram<'s, T: Scalar>(
    slot: &'s mut Option<DMatrix<T>>,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> &'s DMatrix<T> {
    let xx = buffer(slot, (x1.nrows(), x2.nrows()));
    gemm_nt(&mut xx.as_view_mut(), x1, 0, x2, 0, x1.ncols());
    xx
}

/// The output layer's kernel from its inputs' Gram matrix `xx`: $c_w XX + c_b$ on every
/// output (the $k$ diagonal output pairs), added to `weights` and `bias`, or both to
/// `weights` when `bias` is `None`.
fn add_readout<'a, T: Scalar>(
    weights: &mut DMatrixViewMut<'a, T>,
    mut bias: Option<&mut DMatrixViewMut<'a, T>>,
    xx: &DMatrix<T>,
    (cw, cb): (T, T),
    layout: OutputLayout,
    k: usize,
) {
    match layout {
        OutputLayout::Trace => add_affine(weights, bias, xx, (cw, cb)),
        OutputLayout::Full => {
            for c in 0..k {
                let pair = OutputPair { c, d: c };
                let mut w = pair.entries(weights, k);
                let mut b = bias.as_deref_mut().map(|b| pair.entries(b, k));
                add_affine(&mut w, b.as_mut(), xx, (cw, cb));
            }
        }
    }
}

/// `weights` += $c_w XX$ and `bias` += $c_b$, or `weights` += $c_w XX + c_b$ when `bias` is `None`.
fn add_affine<T: Scalar, RS: Dim, CS: Dim>(
    weights: &mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>,
    bias: Option<&mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>>,
    xx: &DMatrix<T>,
    (cw, cb): (T, T),
) {
    match bias {
        None => weights.zip_apply(xx, |w, x| *w += cw * x + cb),
        Some(bias) => {
            weights.zip_apply(xx, |w, x| *w += cw * x);
            bias.add_scalar_mut(cb);
        }
    }
}

/// [`add_products`] on tiles whose columns are contiguous (the averaged layout): column
/// by column over slices, a loop the compiler vectorises, where the strided version
/// indexes entry by entry.
fn add_products_by_column<T: Scalar>(
    weights: &mut DMatrixViewMut<'_, T>,
    mut bias: Option<&mut DMatrixViewMut<'_, T>>,
    xx: &DMatrix<T>,
    gg: &DMatrix<T>,
    (cw, cb): (T, T),
) {
    let n1 = weights.nrows();
    for j in 0..weights.ncols() {
        let x = &xx.as_slice()[j * n1..(j + 1) * n1];
        let g = &gg.as_slice()[j * n1..(j + 1) * n1];
        let mut column = weights.column_mut(j);
        let w = column.as_mut_slice();
        match bias.as_deref_mut() {
            None => {
                for ((w, &x), &g) in w.iter_mut().zip(x).zip(g) {
                    *w += (cw * x + cb) * g;
                }
            }
            Some(bias) => {
                for ((w, &x), &g) in w.iter_mut().zip(x).zip(g) {
                    *w += cw * x * g;
                }
                let mut column = bias.column_mut(j);
                for (b, &g) in column.as_mut_slice().iter_mut().zip(g) {
                    *b += cb * g;
                }
            }
        }
    }
}

/// `weights` += $c_w XX ⊙ GG$ and `bias` += $c_b GG$, or `weights` += $(c_w XX + c_b) ⊙ GG$ when
/// `bias` is `None`.
fn add_products<T: Scalar, RS: Dim, CS: Dim>(
    weights: &mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>,
    bias: Option<&mut MatrixViewMut<'_, T, Dyn, Dyn, RS, CS>>,
    xx: &DMatrix<T>,
    gg: &DMatrix<T>,
    (cw, cb): (T, T),
) {
    match bias {
        None => weights.zip_zip_apply(xx, gg, |w, x, g| *w += (cw * x + cb) * g),
        Some(bias) => {
            weights.zip_zip_apply(xx, gg, |w, x, g| *w += cw * x * g);
            bias.zip_apply(gg, |b, g| *b += cb * g);
        }
    }
}

/// $c D_1 D_2ᵀ$ added to `out` for the per-sample gradients of one part on two batches,
/// $c = s_1 s_2$ (divided by $k$ for the average over outputs).
fn add_per_sample<T: Scalar>(
    out: &mut DMatrixViewMut<'_, T>,
    d1: &PerSample<T>,
    d2: &PerSample<T>,
    layout: OutputLayout,
    k: usize,
) {
    let coef = d1.scale * d2.scale * layout.norm(k);
    let (g1, g2) = (&d1.grads, &d2.grads);
    match layout {
        OutputLayout::Trace => {
            out.gemm(coef, g1, &columns_transposed(g2, 0, g2.ncols()), T::one());
        }
        OutputLayout::Full => {
            let p = g1.ncols() / k;
            for pair in OutputPair::all(k) {
                pair.entries(out, k).gemm(
                    coef,
                    &g1.columns(pair.c * p, p),
                    &columns_transposed(g2, pair.d * p, p),
                    T::one(),
                );
            }
        }
    }
}

impl<T: Scalar> Tangents<T> {
    /// Adds the kernel between this batch and `other` (checked compatible), summed
    /// over all groups, to `out`: $N_1 × N_2$ ([`OutputLayout::Trace`]) or $(N_1·k) × (N_2·k)$.
    pub(crate) fn add_kernel(
        &self,
        other: &Tangents<T>,
        out: &mut DMatrixViewMut<'_, T>,
        layout: OutputLayout,
        scratch: &mut Scratch<T>,
    ) {
        for (a, b) in self.groups.iter().zip(&other.groups) {
            a.add_kernel(b, out, None, layout, self.outputs, scratch);
        }
    }

    /// Each group's kernel between this batch and `other` (checked compatible),
    /// averaged over outputs.
    pub(crate) fn group_kernels(&self, other: &Tangents<T>) -> Vec<GroupKernel<T>> {
        let (n1, n2) = (self.samples, other.samples);
        let mut scratch = Scratch::default();
        self.groups
            .iter()
            .zip(&other.groups)
            .map(|(a, b)| {
                let mut weights = DMatrix::zeros(n1, n2);
                let mut bias = (a.shape.parameters().1 > 0).then(|| DMatrix::zeros(n1, n2));
                let mut bias_view = bias.as_mut().map(|m| m.view_mut((0, 0), (n1, n2)));
                a.add_kernel(
                    b,
                    &mut weights.view_mut((0, 0), (n1, n2)),
                    bias_view.as_mut(),
                    OutputLayout::Trace,
                    self.outputs,
                    &mut scratch,
                );
                GroupKernel { weights, bias }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use nalgebra::DVector;

    use super::*;
    use crate::tangent::test_support::{kernel, matrix, reference, rel, shared};
    use crate::tangent::{DenseUse, GroupTangent};

    /// A shared weight's kernel is the same through its uses (the U² Gram pairs) and
    /// through its per-sample gradients, in both layouts, and both equal J₁ J₂ᵀ.
    #[test]
    fn uses_and_per_sample_gradients_give_the_same_kernel() {
        for k in [1, 3] {
            for uses in [1, 4] {
                let (t1, t2) = (shared(7, 5, 4, k, uses, 0.2), shared(6, 5, 4, k, uses, 1.9));
                for layout in [OutputLayout::Trace, OutputLayout::Full] {
                    let a = Tangents::new(vec![t1.clone()], 7, k).unwrap();
                    let b = Tangents::new(vec![t2.clone()], 6, k).unwrap();
                    let (pa, pb) = (
                        Tangents {
                            groups: a.groups.iter().map(TangentGroup::to_per_sample).collect(),
                            ..a.clone()
                        },
                        Tangents {
                            groups: b.groups.iter().map(TangentGroup::to_per_sample).collect(),
                            ..b.clone()
                        },
                    );
                    assert!(matches!(pa.groups[0].form, GroupForm::PerSample { .. }));
                    let expected = reference(&a, &b, layout);
                    assert!(rel(&kernel(&a, &b, layout), &expected) < 1e-13);
                    assert!(rel(&kernel(&pa, &pb, layout), &expected) < 1e-13);
                    // Mixed forms contract too.
                    assert!(rel(&kernel(&a, &pb, layout), &expected) < 1e-13);
                    assert!(rel(&kernel(&pa, &b, layout), &expected) < 1e-13);
                    // The Jacobian and the VJP do not depend on the form either.
                    assert!(rel(&pa.jacobian().unwrap(), &a.jacobian().unwrap()) < 1e-14);
                    let r = matrix(7, k, 4.0);
                    let (v, pv) = (a.vjp(&r).unwrap(), pa.vjp(&r).unwrap());
                    assert!((&v - &pv).norm() < 1e-13 * v.norm());
                    let flat = DVector::from_fn(7 * k, |row, _| r[(row / k, row % k)]);
                    assert!((a.jacobian().unwrap().tr_mul(&flat) - &v).norm() < 1e-13 * v.norm());
                }
            }
        }
    }

    /// The output layer given by its input alone is the dense group with one use whose
    /// output gradient is the N × k² matrix of unit rows: same kernels in both layouts,
    /// same Jacobian and VJP, and the two forms contract with each other.
    #[test]
    fn a_readout_is_a_dense_use_with_unit_gradients() {
        let (n, n_in, k) = (6, 4, 3);
        let input = matrix(n, n_in, 0.3);
        let unit = DMatrix::from_fn(
            n,
            k * k,
            |_, col| if col / k == col % k { 1.0 } else { 0.0 },
        );
        let readout = GroupTangent::Readout {
            weight_scale: 0.6,
            bias_scale: Some(0.2),
            input: input.clone(),
        };
        let dense = GroupTangent::Dense {
            weight_scale: 0.6,
            bias_scale: Some(0.2),
            uses: vec![DenseUse {
                input,
                output_grad: unit,
            }],
        };
        let r = Tangents::new(vec![readout], n, k).unwrap();
        let d = Tangents::new(vec![dense], n, k).unwrap();
        assert!(rel(&r.jacobian().unwrap(), &d.jacobian().unwrap()) < 1e-15);
        let cotangent = matrix(n, k, 2.0);
        assert!((r.vjp(&cotangent).unwrap() - d.vjp(&cotangent).unwrap()).norm() < 1e-14);
        for layout in [OutputLayout::Trace, OutputLayout::Full] {
            let expected = kernel(&d, &d, layout);
            assert!(rel(&kernel(&r, &r, layout), &expected) < 1e-14);
            assert!(rel(&kernel(&r, &d, layout), &expected) < 1e-14);
            assert!(rel(&kernel(&d, &r, layout), &expected) < 1e-14);
        }
        let (parts_r, parts_d) = (r.group_kernels(&r), d.group_kernels(&d));
        assert!(rel(&parts_r[0].weights, &parts_d[0].weights) < 1e-14);
        let (br, bd) = (
            parts_r[0].bias.as_ref().unwrap(),
            parts_d[0].bias.as_ref().unwrap(),
        );
        assert!(rel(br, bd) < 1e-14);
    }
}
