//! The [`NtkModel`] trait: what a model must expose for its empirical NTK.
//!
//! The empirical NTK of a model f with parameters θ is
//!
//! Θ(x, x̄) = ⟨∇θ f(x), ∇θ f(x̄)⟩ = Σ_p ∂f(x)/∂θ_p · ∂f(x̄)/∂θ_p.
//!
//! For a dense layer h = s_w W x + s_b b used once, with G = ∂f/∂h (one row per sample),
//! the chain rule gives ∂f/∂W = s_w Gᵀ x and ∂f/∂b = s_b G, so its share of Θ is
//!
//! s_w² (x · x̄)(g · ḡ) + s_b² (g · ḡ),
//!
//! and over a batch, s_w² (X₁ X₂ᵀ) ⊙ (G₁ G₂ᵀ) + s_b² G₁ G₂ᵀ: two Gram matrices and a
//! Hadamard product, never the N × P Jacobian. A parameter used at several places
//! (a weight shared across the steps of a recurrent net, or inside a residual block)
//! has ∂f/∂W = Σ_u s_w G_uᵀ X_u, so its share is the double sum over uses
//! s_w² Σ_{u,v} (X₁_u X₂_vᵀ) ⊙ (G₁_u G₂_vᵀ).
//!
//! A model describes itself through [`NtkModel::layer_tangents`]: for each parameter
//! group, the inputs X_u and output gradients G_u of every use ([`LayerTangent::Dense`]),
//! or an explicit Jacobian block for parameters of any other shape
//! ([`LayerTangent::Jacobian`]). Everything else (the Jacobian, per-layer kernels,
//! [`empirical_ntk`](crate::empirical_ntk)) follows from that.

use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::{Error, Result, check_cols, check_finite, shape};

/// One use of a dense layer's parameters on a batch of N samples.
///
/// The layer computes h = s_w W x + s_b b with W of shape n_out × n_in.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseUse<T: Scalar> {
    /// X: N × n_in, the input the layer received at this use (one row per sample).
    pub input: DMatrix<T>,
    /// G: N × (k·n_out), the gradient of the model's outputs with respect to the
    /// layer's pre-activation h at this use. Column block c (columns
    /// c·n_out .. (c+1)·n_out) holds ∂f_c/∂h for output c = 0..k.
    pub output_grad: DMatrix<T>,
}

/// The tangent features of one parameter group on a batch: what its share of the
/// NTK and of the Jacobian is computed from.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LayerTangent<T: Scalar> {
    /// A dense layer h = s_w W x + s_b b (W: n_out × n_in), possibly used several times.
    ///
    /// Its parameters are laid out as W row-major (W\[a, b\] at a·n_in + b), then b
    /// if `bias_scale` is `Some`.
    Dense {
        /// s_w, the factor in front of W x (σ_w/√n_in in the NTK parameterization).
        weight_scale: T,
        /// s_b, the factor in front of b; `None` when the layer has no bias parameters.
        bias_scale: Option<T>,
        /// Every use of W (and b) in the forward pass.
        uses: Vec<DenseUse<T>>,
    },
    /// Parameters of any other shape, given by their Jacobian block ∂f/∂θ:
    /// (N·k) × p, row i·k + c holds ∂f_c(x_i)/∂θ.
    Jacobian(DMatrix<T>),
}

impl<T: Scalar> LayerTangent<T> {
    /// Number of parameters in this group.
    #[must_use]
    pub fn parameter_count(&self, outputs: usize) -> usize {
        match self {
            LayerTangent::Dense {
                bias_scale, uses, ..
            } => uses.first().map_or(0, |u| {
                let n_out = u.output_grad.ncols() / outputs.max(1);
                n_out * u.input.ncols() + if bias_scale.is_some() { n_out } else { 0 }
            }),
            LayerTangent::Jacobian(j) => j.ncols(),
        }
    }
}

/// One layer's share of the empirical NTK, averaged over the k outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerKernel<T: Scalar> {
    /// The weight term s_w² Σ_{u,v} (X₁_u X₂_vᵀ) ⊙ (G₁_u G₂_vᵀ) / k, N1 × N2
    /// (for a [`LayerTangent::Jacobian`] group, its J₁ J₂ᵀ / k).
    pub weights: DMatrix<T>,
    /// The bias term s_b² Σ_{u,v} G₁_u G₂_vᵀ / k, N1 × N2; `None` without bias parameters.
    pub bias: Option<DMatrix<T>>,
}

impl<T: Scalar> LayerKernel<T> {
    /// weights + bias.
    #[must_use]
    pub fn total(&self) -> DMatrix<T> {
        match &self.bias {
            Some(b) => &self.weights + b,
            None => self.weights.clone(),
        }
    }
}

/// A differentiable model whose empirical NTK `ntk` can compute.
///
/// Implementors provide the forward pass, the parameter vector and, through
/// [`layer_tangents`](NtkModel::layer_tangents), the per-layer inputs and output
/// gradients of one forward and one backward pass. The Jacobian and the per-layer
/// kernels have default implementations built from those.
///
/// Parameter order: layer by layer, in the order `layer_tangents` lists them; within a
/// dense layer, W row-major then b (see [`LayerTangent::Dense`]).
///
/// Rows of every input matrix are samples; outputs are N × k.
pub trait NtkModel<T: Scalar>: Sync {
    /// Input dimension d (columns of x).
    fn input_dim(&self) -> usize;

    /// Output dimension k (columns of f(x)).
    fn output_dim(&self) -> usize;

    /// Number of parameters P.
    fn parameter_count(&self) -> usize;

    /// All parameters, in the documented order.
    fn parameters(&self) -> DVector<T>;

    /// Replaces all parameters.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `params.len() != parameter_count()`,
    /// [`Error::NonFinite`] on NaN or infinite entries.
    fn set_parameters(&mut self, params: &DVector<T>) -> Result<()>;

    /// f(x): N × k.
    ///
    /// # Errors
    /// On inputs of the wrong width or with non-finite entries.
    fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>>;

    /// The tangent features of every parameter group on the batch `x` (one forward and
    /// one backward pass).
    ///
    /// # Errors
    /// On inputs of the wrong width or with non-finite entries.
    fn layer_tangents(&self, x: &DMatrix<T>) -> Result<Vec<LayerTangent<T>>>;

    /// f(x) (N × k) and the tangent features of the same batch, from one forward
    /// pass where the model can share it (the default runs
    /// [`forward`](NtkModel::forward) and [`layer_tangents`](NtkModel::layer_tangents)).
    /// Training uses it: the outputs give the residual, the tangents its gradient.
    ///
    /// # Errors
    /// As [`layer_tangents`](NtkModel::layer_tangents).
    fn forward_with_tangents(&self, x: &DMatrix<T>) -> Result<(DMatrix<T>, Vec<LayerTangent<T>>)> {
        Ok((self.forward(x)?, self.layer_tangents(x)?))
    }

    /// The Jacobian ∂f/∂θ: (N·k) × P, row i·k + c holds ∂f_c(x_i)/∂θ.
    ///
    /// This materialises N·k·P numbers: it is the explicit reference, not the way
    /// kernels are computed.
    ///
    /// # Errors
    /// As [`layer_tangents`](NtkModel::layer_tangents).
    fn jacobian(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        let tangents = self.layer_tangents(x)?;
        jacobian_from_tangents(&tangents, x.nrows(), self.output_dim())
    }

    /// The vector–Jacobian product Jᵀ r = Σ_{i,c} r_{i,c} ∂f_c(x_i)/∂θ (length P, in the
    /// parameter order), for a cotangent `cotangent` = r of shape N × k.
    ///
    /// With r = f(X) − Y this is the gradient of the loss ½ ‖f(X) − Y‖²_F, what
    /// gradient descent needs. It is computed from
    /// [`layer_tangents`](NtkModel::layer_tangents) without forming J: a dense group
    /// contributes s_w Σ_u X_uᵀ M_u to W (n_in × n_out, i.e. W row-major) and s_b
    /// Σ_u 1ᵀ M_u to b, where M_u = Σ_c diag(r_c) G_{u,c} (N × n_out), and a Jacobian
    /// group its Jᵀ vec(r) (rows i·k + c).
    ///
    /// # Errors
    /// As [`layer_tangents`](NtkModel::layer_tangents);
    /// [`Error::ShapeMismatch`] if `cotangent` is not N × k, [`Error::NonFinite`] if
    /// it has NaN or infinite entries.
    fn vjp(&self, x: &DMatrix<T>, cotangent: &DMatrix<T>) -> Result<DVector<T>> {
        let (n, k) = (x.nrows(), self.output_dim());
        if cotangent.shape() != (n, k) {
            return Err(Error::ShapeMismatch {
                argument: "cotangent",
                expected: format!("{n} x {k} (one row per row of x, one column per output)"),
                found: shape(cotangent),
            });
        }
        check_finite("cotangent", cotangent)?;
        let tangents = self.layer_tangents(x)?;
        vjp_from_tangents(&tangents, cotangent, n, k)
    }

    /// Each layer's share of the empirical NTK between `x1` (N1 × d) and `x2` (N2 × d),
    /// averaged over outputs; they sum to [`empirical_ntk`](crate::empirical_ntk).
    ///
    /// # Errors
    /// If `x1` or `x2` does not have d columns or has non-finite entries.
    fn layer_kernels(&self, x1: &DMatrix<T>, x2: &DMatrix<T>) -> Result<Vec<LayerKernel<T>>> {
        check_inputs(self.input_dim(), x1, x2)?;
        let t1 = self.layer_tangents(x1)?;
        let t2 = if x1 == x2 {
            None
        } else {
            Some(self.layer_tangents(x2)?)
        };
        let t2 = t2.as_ref().unwrap_or(&t1);
        crate::empirical::layer_kernels_from_tangents(
            &t1,
            t2,
            x1.nrows(),
            x2.nrows(),
            self.output_dim(),
        )
    }
}

/// Checks that `x1` and `x2` both have `input_dim` columns and finite entries.
pub(crate) fn check_inputs<T: Scalar>(
    input_dim: usize,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<()> {
    if x1.ncols() != x2.ncols() {
        return Err(Error::ShapeMismatch {
            argument: "x2",
            expected: format!("{} columns, as many as x1 ({})", x1.ncols(), shape(x1)),
            found: shape(x2),
        });
    }
    check_cols("x1", x1, input_dim, "the model's input dimension")?;
    check_finite("x1", x1)?;
    check_finite("x2", x2)
}

/// The explicit (N·k) × P Jacobian from tangent features.
pub(crate) fn jacobian_from_tangents<T: Scalar>(
    tangents: &[LayerTangent<T>],
    n: usize,
    k: usize,
) -> Result<DMatrix<T>> {
    let p: usize = tangents.iter().map(|t| t.parameter_count(k)).sum();
    let mut jac = DMatrix::<T>::zeros(n * k, p);
    let mut offset = 0;
    for t in tangents {
        match t {
            LayerTangent::Dense {
                weight_scale,
                bias_scale,
                uses,
            } => {
                let Some(first) = uses.first() else { continue };
                let n_in = first.input.ncols();
                let n_out = first.output_grad.ncols() / k;
                for u in uses {
                    check_tangent_shape(u, n, n_in, n_out, k)?;
                    // J is column-major: fill each parameter's column (rows i·k + c)
                    // in order, J[i·k + c, (a, b)] += s_w G[i, c·n_out + a] X[i, b].
                    for a in 0..n_out {
                        for b in 0..n_in {
                            let x_b = u.input.column(b);
                            let mut col = jac.column_mut(offset + a * n_in + b);
                            for c in 0..k {
                                let g = u.output_grad.column(c * n_out + a);
                                for i in 0..n {
                                    col[i * k + c] += *weight_scale * g[i] * x_b[i];
                                }
                            }
                        }
                        if let Some(sb) = bias_scale {
                            let mut col = jac.column_mut(offset + n_out * n_in + a);
                            for c in 0..k {
                                let g = u.output_grad.column(c * n_out + a);
                                for i in 0..n {
                                    col[i * k + c] += *sb * g[i];
                                }
                            }
                        }
                    }
                }
                offset += t.parameter_count(k);
            }
            LayerTangent::Jacobian(j) => {
                if j.nrows() != n * k {
                    return Err(Error::ShapeMismatch {
                        argument: "LayerTangent::Jacobian",
                        expected: format!("{} rows (N·k)", n * k),
                        found: shape(j),
                    });
                }
                jac.columns_mut(offset, j.ncols()).copy_from(j);
                offset += j.ncols();
            }
        }
    }
    Ok(jac)
}

/// Jᵀ r from tangent features, r: N × k (see [`NtkModel::vjp`]).
pub(crate) fn vjp_from_tangents<T: Scalar>(
    tangents: &[LayerTangent<T>],
    r: &DMatrix<T>,
    n: usize,
    k: usize,
) -> Result<DVector<T>> {
    let p: usize = tangents.iter().map(|t| t.parameter_count(k)).sum();
    let mut grad = DVector::<T>::zeros(p);
    let mut offset = 0;
    for t in tangents {
        match t {
            LayerTangent::Dense {
                weight_scale,
                bias_scale,
                uses,
            } => {
                let Some(first) = uses.first() else { continue };
                let n_in = first.input.ncols();
                let n_out = first.output_grad.ncols() / k.max(1);
                let len = n_in * n_out;
                let mut b = DVector::<T>::zeros(n_out);
                for u in uses {
                    check_tangent_shape(u, n, n_in, n_out, k)?;
                    // M_u = Σ_c diag(r_c) G_{u,c}.
                    let mut m = DMatrix::<T>::zeros(n, n_out);
                    for c in 0..k {
                        let g = u.output_grad.columns(c * n_out, n_out);
                        for (a, mut col) in m.column_iter_mut().enumerate() {
                            for i in 0..n {
                                col[i] += r[(i, c)] * g[(i, a)];
                            }
                        }
                    }
                    // W row-major is Wᵀ column-major: accumulate s_w X_uᵀ M_u
                    // (n_in × n_out) in place, in one GEMM pass.
                    let mut w = nalgebra::DMatrixViewMut::from_slice(
                        grad.rows_mut(offset, len).data.into_slice_mut(),
                        n_in,
                        n_out,
                    );
                    w.gemm(*weight_scale, &u.input.transpose(), &m, T::one());
                    if bias_scale.is_some() {
                        for (a, col) in m.column_iter().enumerate() {
                            b[a] += col.sum();
                        }
                    }
                }
                if let Some(sb) = bias_scale {
                    grad.rows_mut(offset + len, n_out).copy_from(&(b * *sb));
                }
                offset += t.parameter_count(k);
            }
            LayerTangent::Jacobian(j) => {
                if j.nrows() != n * k {
                    return Err(Error::ShapeMismatch {
                        argument: "LayerTangent::Jacobian",
                        expected: format!("{} rows (N·k)", n * k),
                        found: shape(j),
                    });
                }
                let flat = DVector::from_fn(n * k, |row, _| r[(row / k, row % k)]);
                grad.rows_mut(offset, j.ncols()).copy_from(&j.tr_mul(&flat));
                offset += j.ncols();
            }
        }
    }
    Ok(grad)
}

/// Checks that a model's [`DenseUse`] has the shapes its layer declares.
pub(crate) fn check_tangent_shape<T: Scalar>(
    u: &DenseUse<T>,
    n: usize,
    n_in: usize,
    n_out: usize,
    k: usize,
) -> Result<()> {
    if u.input.nrows() != n || u.input.ncols() != n_in {
        return Err(Error::ShapeMismatch {
            argument: "DenseUse::input",
            expected: format!("{n} x {n_in}"),
            found: shape(&u.input),
        });
    }
    if u.output_grad.nrows() != n || u.output_grad.ncols() != n_out * k {
        return Err(Error::ShapeMismatch {
            argument: "DenseUse::output_grad",
            expected: format!("{n} x {}", n_out * k),
            found: shape(&u.output_grad),
        });
    }
    Ok(())
}
