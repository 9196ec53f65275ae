//! The explicit Jacobian and the vector–Jacobian product of a batch's tangent
//! features, each group written from the form it is stored in.

use nalgebra::{DMatrix, DMatrixViewMut, DVector};

use super::normal_form::{GroupForm, GroupShape, PerSample, Tangents};
use crate::Scalar;
use crate::error::{Result, first_non_finite};
use crate::linalg::try_zeros;

impl<T: Scalar> PerSample<T> {
    /// Writes its Jacobian columns: $J\[i·k + c, a\] = s D\[i, c·p + a\]$.
    fn write_jacobian(&self, mut jac: nalgebra::DMatrixViewMut<'_, T>, k: usize) {
        let p = jac.ncols();
        for (a, mut col) in jac.column_iter_mut().enumerate() {
            for (row, v) in col.iter_mut().enumerate() {
                *v = self.scale * self.grads[(row / k, (row % k) * p + a)];
            }
        }
    }

    /// Adds $Jᵀ r$ for its parameters: $s Σ_c D_cᵀ r_c$.
    fn add_vjp(&self, out: &mut nalgebra::DVectorViewMut<'_, T>, r: &DMatrix<T>) {
        let p = out.len();
        for c in 0..r.ncols() {
            out.gemv_tr(
                self.scale,
                &self.grads.columns(c * p, p),
                &r.column(c),
                T::one(),
            );
        }
    }
}

impl<T: Scalar> Tangents<T> {
    /// The explicit $(N·k) × P$ Jacobian, row $i·k + c$ holding $∂f_c(x_i)/∂θ$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`](crate::Error::InvalidParameter) (`x`) if its $N·k·P$
    /// numbers cannot be allocated.
    pub(crate) fn jacobian(&self) -> Result<DMatrix<T>> {
        let (n, k) = (self.samples, self.outputs);
        let p = self.parameter_count();
        let rows = n.saturating_mul(k);
        let mut jac = try_zeros::<T>(rows, p, "x", || {
            format!("{n} samples: the Jacobian of {k} outputs and {p} parameters")
        })?;
        let mut offset = 0;
        for g in &self.groups {
            let (pw, pb) = g.shape.parameters();
            match (&g.form, g.shape) {
                (GroupForm::Uses(u), GroupShape::Dense { n_in, n_out, .. }) => {
                    for used in &u.uses {
                        // J is column-major: fill each parameter's column (rows i·k + c)
                        // in order, J[i·k + c, (a, b)] += s_w G[i, c·n_out + a] X[i, b].
                        for a in 0..n_out {
                            for b in 0..n_in {
                                let x_b = used.input.column(b);
                                let mut col = jac.column_mut(offset + a * n_in + b);
                                for c in 0..k {
                                    let g = used.output_grad.column(c * n_out + a);
                                    for i in 0..n {
                                        col[i * k + c] += u.weight_scale * g[i] * x_b[i];
                                    }
                                }
                            }
                            if let Some(sb) = u.bias_scale {
                                let mut col = jac.column_mut(offset + pw + a);
                                for c in 0..k {
                                    let g = used.output_grad.column(c * n_out + a);
                                    for i in 0..n {
                                        col[i * k + c] += sb * g[i];
                                    }
                                }
                            }
                        }
                    }
                }
                (GroupForm::Readout(r), GroupShape::Dense { n_in, .. }) => {
                    // J[i·k + c, c·n_in + b] = s_w X[i, b], J[i·k + c, p_w + c] = s_b.
                    for c in 0..k {
                        for b in 0..n_in {
                            let mut col = jac.column_mut(offset + c * n_in + b);
                            for i in 0..n {
                                col[i * k + c] = r.weight_scale * r.input[(i, b)];
                            }
                        }
                        if let Some(sb) = r.bias_scale {
                            let mut col = jac.column_mut(offset + pw + c);
                            for i in 0..n {
                                col[i * k + c] = sb;
                            }
                        }
                    }
                }
                (GroupForm::PerSample { weights, bias }, _) => {
                    if let Some(w) = weights {
                        w.write_jacobian(jac.columns_mut(offset, pw), k);
                    }
                    if let Some(b) = bias {
                        b.write_jacobian(jac.columns_mut(offset + pw, pb), k);
                    }
                }
                (GroupForm::Uses(_) | GroupForm::Readout(_), _) => {
                    unreachable!("uses and readouts belong to dense groups")
                }
            }
            offset += pw + pb;
        }
        let finite = first_non_finite(jac.as_slice()).is_none();
        self.finite_result("jacobian", jac, finite)
    }

    /// $Jᵀ r = Σ_{i,c} r_{i,c} ∂f_c(x_i)/∂θ$ for a cotangent $r$ of shape $N × k$ (checked
    /// by the caller), without forming $J$.
    ///
    /// # Errors
    /// [`Error::NonFiniteResult`](crate::Error::NonFiniteResult) if it is not finite (naming
    /// the feature at fault).
    pub(crate) fn vjp(&self, r: &DMatrix<T>) -> Result<DVector<T>> {
        let (n, k) = (self.samples, self.outputs);
        debug_assert_eq!(r.shape(), (n, k));
        let mut grad = DVector::<T>::zeros(self.parameter_count());
        let mut offset = 0;
        for g in &self.groups {
            let (pw, pb) = g.shape.parameters();
            match (&g.form, g.shape) {
                (GroupForm::Uses(u), GroupShape::Dense { n_in, n_out, .. }) => {
                    let mut b = DVector::<T>::zeros(n_out);
                    for used in &u.uses {
                        // M_u = Σ_c diag(r_c) G_{u,c}.
                        let mut m = DMatrix::<T>::zeros(n, n_out);
                        for (c, rc) in r.column_iter().enumerate() {
                            let g = used.output_grad.columns(c * n_out, n_out);
                            for (mut col, gc) in m.column_iter_mut().zip(g.column_iter()) {
                                col.zip_zip_apply(&gc, &rc, |m, g, r| *m += r * g);
                            }
                        }
                        // W row-major is Wᵀ column-major: accumulate s_w X_uᵀ M_u
                        // (n_in × n_out) in place, in one GEMM pass.
                        let mut w = DMatrixViewMut::from_slice(
                            grad.rows_mut(offset, pw).data.into_slice_mut(),
                            n_in,
                            n_out,
                        );
                        w.gemm(u.weight_scale, &used.input.transpose(), &m, T::one());
                        if u.bias_scale.is_some() {
                            for (a, col) in m.column_iter().enumerate() {
                                b[a] += col.sum();
                            }
                        }
                    }
                    if let Some(sb) = u.bias_scale {
                        grad.rows_mut(offset + pw, pb).copy_from(&(b * sb));
                    }
                }
                (GroupForm::Readout(out), GroupShape::Dense { n_in, .. }) => {
                    // W row-major (k × n_in) is Wᵀ column-major: s_w Xᵀ r.
                    let mut w = DMatrixViewMut::from_slice(
                        grad.rows_mut(offset, pw).data.into_slice_mut(),
                        n_in,
                        k,
                    );
                    w.gemm(out.weight_scale, &out.input.transpose(), r, T::zero());
                    if let Some(sb) = out.bias_scale {
                        for (c, col) in r.column_iter().enumerate() {
                            grad[offset + pw + c] = sb * col.sum();
                        }
                    }
                }
                (GroupForm::PerSample { weights, bias }, _) => {
                    if let Some(w) = weights {
                        w.add_vjp(&mut grad.rows_mut(offset, pw), r);
                    }
                    if let Some(b) = bias {
                        b.add_vjp(&mut grad.rows_mut(offset + pw, pb), r);
                    }
                }
                (GroupForm::Uses(_) | GroupForm::Readout(_), _) => {
                    unreachable!("uses and readouts belong to dense groups")
                }
            }
            offset += pw + pb;
        }
        let finite = first_non_finite(grad.as_slice()).is_none();
        self.finite_result("vjp", grad, finite)
    }
}
