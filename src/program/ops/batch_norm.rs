//! BatchNorm without affine parameters or $ε$, with batch statistics:
//! $z_i = (x_i − \operatorname{mean}_j x_j) / \operatorname{std}_j x_j$ per neuron, the mean and
//! the standard deviation (with $1/B$) taken over the $B$ samples of the batch, as in
//! Tensor Programs II.
//!
//! - **Finite:** per neuron (a column of the batch), the column divided by its largest
//!   magnitude, centred, and divided by its standard deviation (exact at any scale);
//!   backward $dx = (dz − \operatorname{mean}(dz) − z \operatorname{mean}(dz ⊙ z)) / \operatorname{std}(x)$,
//!   the means over the batch. The operation couples the samples: $∂z_i/∂x_j ≠ 0$ for
//!   $i ≠ j$, so the network's backward pass carries, for every output sample, the
//!   gradient with respect to every sample of the batch (see
//!   [`FiniteRule::couples_samples`]). A neuron whose values are equal across the batch
//!   (to rounding: a batch of one sample, repeated samples, or an all-zero input without
//!   a bias) has no batch norm ($0/0$): the forward pass is an error naming why.
//! - **Limit:** not a per-pair rule. Each neuron's batch vector $h ∈ ℝ^B$ is Gaussian
//!   $N(0, Σ_B)$ and batch norm followed by $φ$ is one $B$-input nonlinearity of it; its
//!   expectations are computed, for chains `dense (+ add_bias) → batch_norm (→ apply) → …
//!   → readout`, by the batch engine of `src/infinite/batch_norm.rs`, which
//!   [`infinite_width`](crate::infinite_width) dispatches to. The per-pair recursion
//!   of programs (its compiler reaches this rule only through the per-group kernels)
//!   refuses it.

use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::{Error, Result};
use crate::infinite::cache::Writer;
use crate::infinite::program::{BackwardTerms, Compiler, Form, LimitGradients};
use crate::program::{Program, Var, Width};

use super::{Evaluated, FiniteBackward, FiniteForward, FiniteRule, Gradients, LimitRule, Op};

/// BatchNorm of variable `input`, one hidden vector, with the statistics of the batch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BatchNorm {
    pub(crate) input: usize,
}

impl Program {
    /// BatchNorm with batch statistics, without affine parameters or $ε$ (Tensor
    /// Programs II): per neuron $α$ and sample $i$ of a batch of $B$,
    ///
    /// $$z_{iα} = \frac{x_{iα} − μ_α}{s_α}, \qquad μ_α = \frac1B Σ_j x_{jα}, \qquad
    /// s_α^2 = \frac1B Σ_j (x_{jα} − μ_α)^2.$$
    ///
    /// A network with a batch norm is *batch-coupled* (see
    /// [`NtkModel::batch_coupled`](crate::NtkModel::batch_coupled)): its output on a
    /// sample depends on the whole batch, its kernel between two batches $x_1$, $x_2$ is
    /// $Θ(x_1, x_2)_{ij} = ⟨∇_θ f(x_{1,i}; x_1), ∇_θ f(x_{2,j}; x_2)⟩$ (each batch with its own
    /// statistics), and the kernels never split a batch. Its exact gradients go
    /// through the batch statistics: the backward pass holds, for each of the $N$
    /// samples and $k$ outputs, the gradient with respect to every sample, $N^2 k$
    /// numbers per hidden unit of each variable (against $N k$ without batch norm), and
    /// each weight's tangents are $N$ uses per use. That suits the batches batch norm's
    /// kernels are studied on (tens to hundreds of samples): the NTK of a two-layer
    /// width-1024 network on $N = 8$ takes 9 ms (`benches/batch_norm.rs`). Training
    /// (`GradientDescent`) uses the training batch's statistics, and predictions on a
    /// test batch that batch's.
    ///
    /// ```
    /// use ntk::nalgebra::DMatrix;
    /// use ntk::rand::{rngs::StdRng, SeedableRng};
    /// use ntk::{empirical_ntk, infinite_width, Activation, NtkModel, Program};
    /// # fn main() -> Result<(), ntk::Error> {
    /// let mut p = Program::new(8);
    /// let x = p.input(0..8)?;
    /// let w = p.weight(1.0)?;
    /// let h = p.dense(w, x)?;
    /// let z = p.batch_norm(h)?;
    /// let a = p.apply(Activation::Relu, z)?;
    /// p.output(a, 1.0)?;
    ///
    /// let x = DMatrix::from_fn(6, 8, |i, j| ((i + 1) as f64 * (j + 2) as f64 * 0.37).sin());
    /// let limit = infinite_width(&p, &x, &x)?; // the kernels of this one batch
    /// let net = p.init::<f64>(2048, &mut StdRng::seed_from_u64(0))?;
    /// assert!(net.batch_coupled());
    /// let theta = empirical_ntk(&net, &x, &x)?;
    /// assert!((&theta - &limit.ntk).norm() < 0.25 * limit.ntk.norm());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// The forward pass on a batch where a neuron takes equal values on every sample
    /// (to rounding: a batch of one sample, repeated samples, an all-zero input without
    /// a bias) is [`Error::NonFiniteResult`]: $(x − μ)/s$ is $0/0$ there.
    ///
    /// # Errors
    /// A foreign handle, or a variable that is not one hidden vector (input columns or
    /// a concatenation).
    pub fn batch_norm(&mut self, x: Var) -> Result<Var> {
        let x = self.check_var("batch_norm input", x)?;
        self.check_single_hidden("batch_norm input", x)?;
        Ok(self.push(Op::BatchNorm(BatchNorm { input: x }), Width::Hidden(1)))
    }
}

/// One neuron's batch statistics: its values divided by their largest magnitude and
/// centred, and the standard deviation of the result, with the scale. `None` when the
/// values are equal to rounding: a standard deviation within $8 B ε$ of the largest
/// magnitude is what the rounding of the mean alone can produce.
struct Neuron<T: Scalar> {
    centred: DVector<T>,
    sd: T,
    scale: T,
}

impl<T: Scalar> Neuron<T> {
    fn of(column: nalgebra::DVectorView<'_, T>) -> Option<Self> {
        let b = column.len();
        let bf = T::from_usize(b).unwrap_or_else(T::one);
        let scale = column.amax();
        if scale == T::zero() || b < 2 {
            return None;
        }
        let mut centred = column / scale;
        let mean = centred.sum() / bf;
        centred.add_scalar_mut(-mean);
        let var = centred.norm_squared() / bf;
        let floor = T::from_f64_lossy(8.0 * b as f64) * T::default_epsilon();
        if var.partial_cmp(&(floor * floor)) != Some(std::cmp::Ordering::Greater) {
            return None;
        }
        Some(Neuron {
            centred,
            sd: var.sqrt(),
            scale,
        })
    }
}

impl<T: Scalar> FiniteRule<T> for BatchNorm {
    fn forward(&self, at: &FiniteForward<'_, T>) -> Evaluated<T> {
        let x = &at.values[self.input];
        let mut z = DMatrix::<T>::zeros(x.nrows(), x.ncols());
        for (a, mut out) in z.column_iter_mut().enumerate() {
            match Neuron::of(x.column(a)) {
                Some(n) => out.copy_from(&(n.centred / n.sd)),
                // 0/0: the forward pass reports it with `non_finite_reason`.
                None => out.fill(T::from_f64_lossy(f64::NAN)),
            }
        }
        z.into()
    }

    fn backward(
        &self,
        at: &FiniteBackward<'_, T>,
        i: usize,
        g: &DMatrix<T>,
        grads: &mut Gradients<'_, T>,
    ) {
        let (x, z) = (&at.values[self.input], &at.values[i]);
        let (b, m) = x.shape();
        let bf = T::from_usize(b).unwrap_or_else(T::one);
        let mut dx = DMatrix::<T>::zeros(g.nrows(), g.ncols());
        for a in 0..m {
            // The forward pass succeeded, so every neuron has a spread.
            let Some(n) = Neuron::of(x.column(a)) else {
                continue;
            };
            let za = z.column(a);
            // std(x) = scale · sd, divided by in two steps so that neither underflows.
            for c in 0..grads.outputs {
                let dz = g.column(c * m + a);
                let mean_dz = dz.sum() / bf;
                let mean_dzz = dz.dot(&za) / bf;
                let mut out = dx.column_mut(c * m + a);
                for r in 0..b {
                    out[r] = (dz[r] - mean_dz - za[r] * mean_dzz) / n.sd / n.scale;
                }
            }
        }
        grads.add(self.input, &dx, T::one());
    }

    fn couples_samples(&self) -> bool {
        true
    }

    fn non_finite_reason(&self) -> String {
        format!(
            "it is the batch norm of variable {}, and a neuron of that variable takes the \
             same value on every sample of the batch (a batch of one sample, repeated \
             samples, or an all-zero input without a bias): (x − mean)/std is 0/0 there",
            self.input
        )
    }
}

impl LimitRule for BatchNorm {
    fn form(&self, _: &mut Compiler<'_>, i: usize) -> Form {
        Form::NotGaussian(Error::OutsideLimit {
            variable: i,
            reason: format!(
                "it is the batch norm of variable {}, which couples the samples of a batch: \
                 the per-pair recursion (and its per-group kernels) does not apply; \
                 `infinite_width` computes the kernels of chains dense (+ add_bias) → \
                 batch_norm (→ apply) → … → readout",
                self.input
            ),
        })
    }

    fn backward(
        &self,
        c: &mut Compiler<'_>,
        i: usize,
        _: &[BackwardTerms],
        _: &mut LimitGradients,
    ) -> Result<()> {
        Err(c.outside(i))
    }

    fn write_structure(&self, w: &mut Writer) {
        w.usize(self.input);
    }
}
