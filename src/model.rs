//! The [`NtkModel`] trait: what a model must expose for its empirical NTK.
//!
//! A model describes its parameters' gradients on a batch through
//! [`NtkModel::group_tangents`], one [`GroupTangent`] per parameter group (see the
//! [`tangent`](crate::tangent) module for the math); the Jacobian, the
//! vector–Jacobian product, the per-group kernels and
//! [`empirical_ntk`](crate::empirical_ntk) follow from them.

use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::{Error, Result, check_finite, check_inputs, first_non_finite, shape};
use crate::tangent::{GroupKernel, GroupTangent, OutputLayout, Tangents, check_kernel_finite};

/// A differentiable model whose empirical NTK `ntk` can compute.
///
/// Implementors provide the forward pass, the parameter vector and, through
/// [`group_tangents`](NtkModel::group_tangents), the per-group inputs and output
/// gradients of one forward and one backward pass. The Jacobian and the per-group
/// kernels have default implementations built from those.
///
/// Parameter order: group by group, in the order `group_tangents` lists them; within a
/// dense group, W row-major then b (see [`GroupTangent::Dense`]).
///
/// Rows of every input matrix are samples; outputs are $N × k$.
///
/// # Parameter groups and layers
///
/// The kernels are sums over *parameter groups*: a weight matrix with the bias at the
/// same places, a bias on its own, or any other block of parameters. For an MLP a group
/// is a layer, which is where the names `group_tangents` and `group_kernels` come from;
/// for a program it is one `Weight`, `Bias` or the readout, however many places use it.
///
/// # Samples are independent, unless the model is batch-coupled
///
/// A model's output on a sample usually depends on that sample and the parameters only,
/// so a kernel entry $Θ(x_i, x̄_j)$ depends on $x_i$ and $x̄_j$ alone. The kernels rely on
/// it: [`empirical_ntk`](crate::empirical_ntk) calls `group_tangents` on row blocks of
/// the batch (and on the two batches separately), and
/// [`empirical_ntk_block`](crate::empirical_ntk_block) on the rows it is asked for.
///
/// A model whose outputs couple the samples of a batch (batch normalisation with batch
/// statistics, [`Program::batch_norm`](crate::Program::batch_norm)) declares itself by
/// returning `true` from [`batch_coupled`](NtkModel::batch_coupled). Its tangents of a
/// batch are then the gradients of each sample's output *with the statistics of the
/// whole batch* (row $i$ of `group_tangents(x)` is $∇_θ f(x_i; x)$), and its kernel
/// between two batches is
///
/// $$Θ(x_1, x_2)_{ij} = ⟨∇_θ f(x_{1,i}; x_1), ∇_θ f(x_{2,j}; x_2)⟩,$$
///
/// each batch with its own statistics ($x_2 = x_1$ gives the kernel within one batch).
/// The row-block machinery never splits its batches: `empirical_ntk` computes the
/// tangents of each batch whole, and `empirical_ntk_block` computes the kernel of the
/// whole batches and cuts out the block asked for (so a block costs as much as the
/// whole kernel). [`infinite_width_block`](crate::infinite_width_block) does the same
/// for a batch-coupled [`Program`](crate::Program).
pub trait NtkModel<T: Scalar>: Sync {
    /// Input dimension $d$ (columns of $x$).
    fn input_dim(&self) -> usize;

    /// Output dimension $k$ (columns of $f(x)$).
    fn output_dim(&self) -> usize;

    /// Number of parameters $P$.
    fn parameter_count(&self) -> usize;

    /// All parameters, in the documented order.
    fn parameters(&self) -> DVector<T>;

    /// Replaces all parameters.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `params.len() != parameter_count()`,
    /// [`Error::NonFinite`] on NaN or infinite entries.
    fn set_parameters(&mut self, params: &DVector<T>) -> Result<()>;

    /// Whether the model's output on a sample depends on the other samples of its batch
    /// (batch normalisation with batch statistics). `false` by default. A batch-coupled
    /// model's tangents, kernels and gradients are those of whole batches, which the
    /// kernels never split (see [the trait documentation](NtkModel)).
    fn batch_coupled(&self) -> bool {
        false
    }

    /// $f(x)$: $N × k$.
    ///
    /// # Errors
    /// On inputs of the wrong width or with non-finite entries.
    fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>>;

    /// The tangent features of every parameter group on the batch `x` (one forward and
    /// one backward pass).
    ///
    /// Every model implements this method. (Its default calls the deprecated
    /// [`layer_tangents`](NtkModel::layer_tangents), so that a model written against
    /// that name works for one more release.)
    ///
    /// # Errors
    /// On inputs of the wrong width or with non-finite entries.
    fn group_tangents(&self, x: &DMatrix<T>) -> Result<Vec<GroupTangent<T>>> {
        #[allow(deprecated)]
        self.layer_tangents(x)
    }

    /// The old name of [`group_tangents`](NtkModel::group_tangents), whose default
    /// calls it.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] (`model`) unless the model implements one of the two
    /// names.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `group_tangents`: implement and call that"
    )]
    fn layer_tangents(&self, x: &DMatrix<T>) -> Result<Vec<GroupTangent<T>>> {
        let _ = x;
        Err(Error::InvalidParameter {
            parameter: "model",
            value: std::any::type_name::<Self>().into(),
            reason: "implements neither `group_tangents` nor its deprecated name \
                     `layer_tangents`",
        })
    }

    /// $f(x)$ ($N × k$) and the tangent features of the same batch, from one forward
    /// pass where the model can share it (the default runs
    /// [`forward`](NtkModel::forward) and [`group_tangents`](NtkModel::group_tangents)).
    /// Training uses it: the outputs give the residual, the tangents its gradient.
    ///
    /// # Errors
    /// As [`group_tangents`](NtkModel::group_tangents).
    fn forward_with_tangents(&self, x: &DMatrix<T>) -> Result<(DMatrix<T>, Vec<GroupTangent<T>>)> {
        Ok((self.forward(x)?, self.group_tangents(x)?))
    }

    /// The Jacobian $∂f/∂θ$: $(N·k) × P$, row $i·k + c$ holds $∂f_c(x_i)/∂θ$.
    ///
    /// This materialises $N·k·P$ numbers: it is the explicit reference, not the way
    /// kernels are computed.
    ///
    /// # Errors
    /// As [`group_tangents`](NtkModel::group_tangents).
    fn jacobian(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        let tangents = Tangents::new(self.group_tangents(x)?, x.nrows(), self.output_dim())?;
        tangents.jacobian()
    }

    /// The vector–Jacobian product $Jᵀ r = Σ_{i,c} r_{i,c} ∂f_c(x_i)/∂θ$ (length $P$, in the
    /// parameter order), for a cotangent `cotangent` = $r$ of shape $N × k$.
    ///
    /// With $r = f(X) − Y$ this is the gradient of the loss $\tfrac12 \lVert f(X) − Y \rVert_F^2$, what
    /// gradient descent needs. It is computed from
    /// [`group_tangents`](NtkModel::group_tangents) without forming $J$: a dense group
    /// contributes $s_w Σ_u X_uᵀ M_u$ to $W$ ($n_{in} × n_{out}$, i.e. $W$ row-major) and
    /// $s_b Σ_u 1ᵀ M_u$ to $b$, where $M_u = Σ_c \mathrm{diag}(r_c) G_{u,c}$ ($N × n_{out}$), and a Jacobian
    /// group its $Jᵀ \mathrm{vec}(r)$ (rows $i·k + c$).
    ///
    /// # Errors
    /// As [`group_tangents`](NtkModel::group_tangents);
    /// [`Error::ShapeMismatch`] if `cotangent` is not $N × k$, [`Error::NonFinite`] if
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
        let tangents = Tangents::new(self.group_tangents(x)?, n, k)?;
        tangents.vjp(cotangent)
    }

    /// Each parameter group's share of the empirical NTK between `x1` ($N_1 × d$) and `x2` ($N_2 × d$),
    /// averaged over outputs; they sum to [`empirical_ntk`](crate::empirical_ntk).
    ///
    /// # Errors
    /// If `x1` or `x2` does not have $d$ columns or has non-finite entries.
    fn group_kernels(&self, x1: &DMatrix<T>, x2: &DMatrix<T>) -> Result<Vec<GroupKernel<T>>> {
        check_inputs(self.input_dim(), x1, x2)?;
        let k = self.output_dim();
        let features = |x: &DMatrix<T>| {
            Tangents::for_kernels(self.group_tangents(x)?, x.nrows(), k, OutputLayout::Trace)
        };
        let t1 = features(x1)?;
        let t2 = if x1 == x2 { None } else { Some(features(x2)?) };
        let t2 = t2.as_ref().unwrap_or(&t1);
        t1.check_compatible(t2)?;
        let kernels = t1.group_kernels(t2);
        let finite = |m: &DMatrix<T>| first_non_finite(m.as_slice()).is_none();
        if !kernels
            .iter()
            .all(|l| finite(&l.weights) && l.bias.as_ref().is_none_or(finite))
        {
            t1.check_finite()?;
            t2.check_finite()?;
            for kernel in &kernels {
                check_kernel_finite("group_kernels", &kernel.weights)?;
                if let Some(b) = &kernel.bias {
                    check_kernel_finite("group_kernels", b)?;
                }
            }
        }
        Ok(kernels)
    }

    /// [`group_kernels`](NtkModel::group_kernels), under its old name.
    ///
    /// # Errors
    /// As [`group_kernels`](NtkModel::group_kernels).
    #[deprecated(since = "0.2.0", note = "renamed to `group_kernels`")]
    fn layer_kernels(&self, x1: &DMatrix<T>, x2: &DMatrix<T>) -> Result<Vec<GroupKernel<T>>> {
        self.group_kernels(x1, x2)
    }
}
