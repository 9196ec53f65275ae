//! Infinite-width kernels: the NNGP kernel $Σ$ and the limiting NTK $Θ̊$ of an
//! [`Architecture`]: an [`MlpSpec`] or any [`Program`].
//!
//! As every hidden width grows, a randomly initialised network converges to a Gaussian
//! process with covariance $Σ$ (the NNGP kernel), and its empirical NTK converges to a
//! deterministic kernel $Θ̊$ (Jacot et al. 2018; Yang 2020). For an MLP both follow a
//! layer recursion. With $C^0 = x·x̄/n^0$ and, at hidden layer $l$ with activation $φ_l$ and
//! $(u, v) ∼ N(0, [[Σ^l(x,x), Σ^l(x,x̄)], [Σ^l(x,x̄), Σ^l(x̄,x̄)]])$,
//!
//! $$C^l = E φ_l(u) φ_l(v), \qquad \dot C^l = E φ_l\'(u) φ_l\'(v),$$
//!
//! each Dense layer $l = 1, …, L+1$ (the last one is the output) gives, in the NTK
//! parameterization (neural-tangents' `stax.Dense(..., parameterization='ntk')`),
//!
//! $$Σ^l = σ_w^2 C^{l−1} + σ_b^2, \qquad Θ^l = Σ^l + σ_w^2 \dot C^{l−1} Θ^{l−1}, \qquad Θ^1 = Σ^1,$$
//!
//! and in the standard parameterization, where the NTK depends on the widths $n^{l−1}$,
//!
//! $$Σ^l = σ_w^2 C^{l−1} + σ_b^2, \qquad Θ^l = n^{l−1} C^{l−1} + 1_{σ_b > 0} + σ_w^2 \dot C^{l−1} Θ^{l−1}$$
//!
//! (the bias term $1$ is there when the layers have bias parameters, $σ_b > 0$; this is
//! neural-tangents' `parameterization='standard'`, whose `b_std=None` is our $σ_b = 0$).
//!
//! The network's kernels are $Σ = Σ^{L+1}$ and $Θ̊ = Θ^{L+1}$; with $k$ outputs they are
//! $Σ ⊗ I_k$ and $Θ̊ ⊗ I_k$, and this module returns the $N_1 × N_2$ factors. $C$ and $\dot C$ come in
//! closed form for ReLU, LeakyReLU, Abs, Erf, Identity, Sin and GELU, and from
//! numerical integration accurate at any variance for every other activation (see
//! [`closed_form`], [`gaussian_moments`] and [`GaussHermite`]).
//!
//! Unrolling the recursion splits $Θ̊$ into the limits of each layer's share of the
//! empirical NTK (what [`NtkModel::group_kernels`](crate::NtkModel::group_kernels)
//! returns for a finite network): with $B^l = Π_{m=l}^{L} σ_w^2 \dot C^m$ ($B^{L+1} = 1$),
//! Dense layer $l$ contributes $σ_w^2 C^{l−1} B^l$ through its weights and $σ_b^2 B^l$ through
//! its bias ($n^{l−1} C^{l−1} B^l$ and $B^l$ in the standard parameterization). See
//! [`infinite_width_groups`].
//!
//! ## Programs
//!
//! For a [`Program`] (weights shared across uses, residual sums, pooling,
//! concatenations) the same functions compute Tensor Programs II's limit: every
//! second moment reduces to the Gaussian expectations above (and Stein's lemma), and
//! $Θ̊$ to tangent moments carried alongside them, compiled once per program into a
//! straight-line recursion that only visits what the output needs (see
//! [`InfiniteWidth::group_kernels`] for the per-parameter split and the module
//! `program` source for the rules). $Σ ⊗ I_k$ and $Θ̊ ⊗ I_k$ again for $k$ outputs.
//!
//! The MLP path keeps its fused recursion (faster on MLPs; `benches/programs.rs`
//! measures both); an MLP's per-layer split goes through the program recursion, so
//! there is one general recursion and one fast path.
//!
//! ## Batch normalisation
//!
//! A program with [`batch_norm`](Program::batch_norm) couples the samples of a batch:
//! its kernels are kernels between two batches, each sample computed with the
//! statistics of its own batch ($x_2 = x_1$: within one batch). Each neuron's batch
//! vector is Gaussian in the limit and batch norm followed by $φ$ is a $B$-input
//! nonlinearity of it; [`infinite_width`] computes the kernels of chains
//! `dense (+ add_bias) → batch_norm (→ apply) → … → readout` from its expectations:
//! 1-D and 2-D integrals for ReLU, LeakyReLU, Abs and no activation (any batch size
//! $B ≥ 4$, within and between batches), a quadrature on the sphere of centred
//! directions for smooth φ (within one batch, $B ≤ 6$). The NTK of a batch of $B ≤ 3$
//! is infinite and an error; so is a batch whose centred second moments are singular.
//! The source file `infinite/batch_norm.rs` has the derivation and the accuracy
//! against $B$. [`infinite_width_block`] keeps the batches whole, and
//! [`InfiniteWidth::group_kernels`] is not computed for such programs (an error).
//!
//! The distance between a finite network's NTK and $Θ̊$ shrinks like $n^{−1/2}$;
//! [`width_convergence`] measures it, for MLPs and programs alike.

mod architecture;
mod batch_norm;
pub(crate) mod cache;
mod convergence;
mod dual;
mod engine;
mod expectation;
mod fastmath;
mod grid;
pub(crate) mod program;
mod quadrature;
pub(crate) mod tape;

use std::sync::{Arc, OnceLock};

use nalgebra::DMatrix;

use crate::Scalar;
use crate::error::{Error, Result, check_inputs, first_non_finite_entry, select_rows};
use crate::mlp::MlpSpec;
use crate::program::Program;
use crate::tangent::GroupKernel;

pub use architecture::Architecture;
use architecture::Described;
pub use convergence::{WidthPoint, WidthStudy, width_convergence};
pub use dual::{GaussianMoments, closed_form, gaussian_moments, quadrature};
pub use quadrature::GaussHermite;

/// The infinite-width kernels between two batches: $N_1 × N_2$ each.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernels<T: Scalar = f64> {
    /// The NNGP kernel $Σ(x_{1,i}, x_{2,j})$: the covariance of the network's outputs at
    /// initialisation, per output.
    pub nngp: DMatrix<T>,
    /// The limiting NTK $Θ̊(x_{1,i}, x_{2,j})$, per output.
    pub ntk: DMatrix<T>,
}

/// The infinite-width kernels of an [`Architecture`] (an [`MlpSpec`] or a
/// [`Program`]), with the quadrature degree to use for activations without a closed
/// form.
///
/// A program's recursion is compiled on the first call of [`kernels`](Self::kernels)
/// (and, separately, of [`layer_kernels`](Self::layer_kernels)) and kept by the
/// instance for every later call, on any batches; a compilation of a structurally equal
/// program with the same degree made anywhere in the process is reused (see
/// [`infinite_width`]). Changing the degree discards it.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{Activation, InfiniteWidth, MlpSpec};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(2).hidden(512, Activation::Tanh).bias_std(0.1);
/// let x = DMatrix::from_row_slice(3, 2, &[1.0, 0.0, 0.0, 1.0, 0.6, 0.8]);
/// let coarse = InfiniteWidth::new(&spec)?.quadrature_degree(64)?.kernels(&x, &x)?;
/// let fine = InfiniteWidth::new(&spec)?.quadrature_degree(200)?.kernels(&x, &x)?;
/// assert!((&coarse.ntk - &fine.ntk).norm() < 1e-8 * fine.ntk.norm());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct InfiniteWidth {
    described: Described,
    rule: Arc<GaussHermite>,
    /// A program's compiled recursion, for the kernels and for the group terms,
    /// compiled on first use and reused by every later call.
    compiled: [OnceLock<Arc<program::Compiled>>; 2],
}

impl InfiniteWidth {
    /// The kernels of `architecture`, with [`GaussHermite::DEFAULT_DEGREE`] quadrature
    /// nodes.
    ///
    /// # Errors
    /// If the architecture is invalid ([`MlpSpec::validate`], [`Program::validate`]).
    pub fn new<A: Architecture + ?Sized>(architecture: &A) -> Result<Self> {
        Self::described(architecture.describe(None)?)
    }

    pub(crate) fn described(described: Described) -> Result<Self> {
        Ok(InfiniteWidth {
            described,
            rule: GaussHermite::new(GaussHermite::DEFAULT_DEGREE)?,
            compiled: Default::default(),
        })
    }

    /// Uses Gauss–Hermite rules of at most $n$ points (per dimension) for activations
    /// without a closed form, where the pre-activation variance is small enough for
    /// them to be accurate, and composite Gauss–Legendre elsewhere (see
    /// [`GaussHermite::DEFAULT_DEGREE`]). The accuracy is the same at every degree; a
    /// larger $n$ uses Gauss–Hermite at larger variances (the cheaper rule there) at a
    /// cost per kernel entry that grows like $n$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless
    /// $1 ≤$ `degree` $≤$ [`GaussHermite::MAX_DEGREE`].
    pub fn quadrature_degree(mut self, degree: usize) -> Result<Self> {
        self.rule = GaussHermite::new(degree)?;
        self.compiled = Default::default();
        Ok(self)
    }

    /// The compiled recursion of `program`, with the group terms when `groups`: this
    /// instance's, else the process-wide cache's (see [`infinite_width`]), else compiled
    /// now.
    fn compiled(&self, program: &Program, groups: bool) -> Result<Arc<program::Compiled>> {
        let cell = &self.compiled[usize::from(groups)];
        if let Some(c) = cell.get() {
            return Ok(Arc::clone(c));
        }
        let c = cache::global().compiled(program, &self.rule, groups)?;
        Ok(Arc::clone(cell.get_or_init(|| c)))
    }

    /// The MLP, when the architecture is one.
    #[must_use]
    pub fn spec(&self) -> Option<&MlpSpec> {
        match &self.described {
            Described::Mlp(spec) => Some(spec),
            Described::Program(_) => None,
        }
    }

    /// The program, when the architecture is one.
    #[must_use]
    pub fn program(&self) -> Option<&Program> {
        match &self.described {
            Described::Program(p) => Some(p),
            Described::Mlp(_) => None,
        }
    }

    /// The largest Gauss–Hermite rule used for activations without a closed form.
    #[must_use]
    pub fn rule(&self) -> &GaussHermite {
        &self.rule
    }

    fn input_dim(&self) -> usize {
        match &self.described {
            Described::Mlp(spec) => spec.input_dim(),
            Described::Program(p) => p.input_dim(),
        }
    }

    /// $Σ$ and $Θ̊$ between the rows of `x1` ($N_1 × d$) and `x2` ($N_2 × d$).
    ///
    /// Computed in f64 and rounded to `T`: f32 users get the f64 kernels to f32's
    /// precision. When `x1 == x2` only the upper triangle is computed and the rest
    /// mirrored.
    ///
    /// # Errors
    /// If `x1` or `x2` does not have $d$ columns or has NaN or infinite entries; if the
    /// kernel overflows f64 (inputs of enormous norm, a huge $σ_w$ or depth; the message
    /// names the row and layer) or `T` (e.g. f32 beyond 3.4e38); or if an activation's
    /// Gaussian expectations are NaN (a custom $φ$ or $φ\'$ that returns NaN; the message
    /// names the activation and layer); or, for a program,
    /// if a nonlinearity acts on a vector that is not Gaussian in the limit.
    pub fn kernels<T: Scalar>(&self, x1: &DMatrix<T>, x2: &DMatrix<T>) -> Result<Kernels<T>> {
        check_inputs(self.input_dim(), x1, x2)?;
        let x1f = to_f64(x1);
        let x2f = (x1 != x2).then(|| to_f64(x2));
        let (nngp, ntk) = match &self.described {
            Described::Mlp(spec) => {
                engine::Plan::new(spec, &self.rule).kernels(&x1f, x2f.as_ref())?
            }
            Described::Program(p) if p.batch_coupled() => {
                let (nngp, ntk) = batch_norm::kernels(p, &x1f, x2f.as_ref(), &self.rule)?;
                check_kernel(&nngp, "nngp", p)?;
                check_kernel(&ntk, "ntk", p)?;
                (nngp, ntk)
            }
            Described::Program(p) => {
                let compiled = self.compiled(p, false)?;
                let mut out = compiled.run(p, &x1f, x2f.as_ref())?.into_iter();
                let nngp = out.next().unwrap_or_default();
                let ntk = out.next().unwrap_or_default();
                check_kernel(&nngp, "nngp", p)?;
                check_kernel(&ntk, "ntk", p)?;
                (nngp, ntk)
            }
        };
        Ok(Kernels {
            nngp: to_scalar("NNGP", nngp)?,
            ntk: to_scalar("NTK", ntk)?,
        })
    }

    /// The limit of each parameter group's share of the NTK: the infinite-width
    /// counterpart of [`NtkModel::group_kernels`](crate::NtkModel::group_kernels),
    /// group for group. For an MLP, Dense layer $l$'s weight term is $σ_w^2 C^{l−1} B^l$ and
    /// its bias term $σ_b^2 B^l$ (`None` when $σ_b = 0$), with $B^l = Π_{m ≥ l} σ_w^2 \dot C^m$; for
    /// a program, each weight $W$ gives $σ_W^2 Σ_{u,v} M(z_u, z̄_v) D(h_u, h̄_v)$, each bias
    /// $σ_b^2 Σ_{u,v} D(h_u, h̄_v)$ (as a bias term), and the readout comes last (see
    /// [`crate::infinite`]). They sum to $Θ̊$.
    ///
    /// # Errors
    /// As [`InfiniteWidth::kernels`].
    pub fn group_kernels<T: Scalar>(
        &self,
        x1: &DMatrix<T>,
        x2: &DMatrix<T>,
    ) -> Result<Vec<GroupKernel<T>>> {
        check_inputs(self.input_dim(), x1, x2)?;
        let x1f = to_f64(x1);
        let x2f = (x1 != x2).then(|| to_f64(x2));
        let (program, mlp_bias) = match &self.described {
            Described::Mlp(spec) => (Program::with_widths_of(spec)?, Some(spec.has_bias())),
            Described::Program(p) => (p.clone(), None),
        };
        if program.batch_coupled() {
            return Err(batch_norm::no_group_kernels(&program));
        }
        let compiled = self.compiled(&program, true)?;
        let mut out = compiled
            .run(&program, &x1f, x2f.as_ref())?
            .into_iter()
            .skip(2);
        let mut groups = Vec::with_capacity(compiled.layout().len());
        for &has_bias in compiled.layout() {
            let weights = out.next().unwrap_or_default();
            let bias = if has_bias { out.next() } else { None };
            check_kernel(&weights, "layer kernel", &program)?;
            if let Some(b) = &bias {
                check_kernel(b, "layer kernel", &program)?;
            }
            groups.push((weights, bias));
        }
        let layers = match mlp_bias {
            // An MLP's program declares W¹, b¹, W², b², … and ends with the readout
            // (W^{L+1}, b^{L+1}): a layer is a weight with the bias that follows it.
            Some(true) => {
                let readout = groups.pop();
                let mut layers: Vec<_> = groups
                    .chunks_exact(2)
                    .map(|pair| (pair[0].0.clone(), pair[1].1.clone()))
                    .collect();
                layers.extend(readout);
                layers
            }
            _ => groups,
        };
        layers
            .into_iter()
            .map(|(weights, bias)| {
                Ok(GroupKernel {
                    weights: to_scalar("layer weight term", weights)?,
                    bias: bias.map(|b| to_scalar("layer bias term", b)).transpose()?,
                })
            })
            .collect()
    }

    /// [`group_kernels`](Self::group_kernels), under its old name.
    ///
    /// # Errors
    /// As [`group_kernels`](Self::group_kernels).
    #[deprecated(since = "0.2.0", note = "renamed to `group_kernels`")]
    pub fn layer_kernels<T: Scalar>(
        &self,
        x1: &DMatrix<T>,
        x2: &DMatrix<T>,
    ) -> Result<Vec<GroupKernel<T>>> {
        self.group_kernels(x1, x2)
    }
}

/// Errors unless every entry of a computed kernel of `program` is finite.
fn check_kernel(k: &DMatrix<f64>, what: &'static str, program: &Program) -> Result<()> {
    match first_non_finite_entry(k) {
        None => Ok(()),
        Some((row, col)) => {
            let mut causes =
                vec!["it overflows f64 (inputs or standard deviations too large for the depth)"];
            for node in &program.nodes {
                if let Some(cause) = node.op.limit().non_finite_cause()
                    && !causes.contains(&cause)
                {
                    causes.push(cause);
                }
            }
            Err(Error::NonFiniteResult {
                result: "infinite_width",
                reason: format!(
                    "the {what} entry ({row}, {col}) = {} is not finite: {}",
                    k[(row, col)],
                    causes.join(", or ")
                ),
            })
        }
    }
}

/// The NNGP kernel $Σ$ and the infinite-width NTK $Θ̊$ of `spec` between the rows of `x1`
/// ($N_1 × d$) and `x2` ($N_2 × d$): $N_1 × N_2$ each (per output; the full kernels are $⊗ I_k$).
///
/// This is neural-tangents' analytic `kernel_fn(x1, x2, ('nngp', 'ntk'))` for
/// `stax.serial(Dense, φ, …, Dense)`. Activations without a closed form use
/// [`GaussHermite::DEFAULT_DEGREE`] quadrature nodes; choose another degree with
/// [`InfiniteWidth::quadrature_degree`].
///
/// Accuracy: closed-form layers are exact to round-off ($≤ 6·10^{−16}$ relative against
/// neural-tangents), in forms that stay accurate from tiny to huge input norms.
/// Activations without a closed form (Tanh, Sigmoid, Softplus, custom $φ$) are
/// integrated to about $10^{−13}$ relative at any pre-activation variance (see the table at
/// [`GaussHermite::DEFAULT_DEGREE`]), for $φ$ smooth away from 0 on the scale of $|x|$, as
/// every common activation is.
///
/// Erf and GELU read the determinant $q_1q_2 − c^2$ of a pair's covariance, which at nearly
/// parallel inputs of large norm is a difference of nearly equal numbers that the
/// rounded second moments no longer determine (at $q ≈ 10^{16}$ it is all rounding). For
/// an [`MlpSpec`] the first layer's determinant is computed from the inputs themselves
/// (the Lagrange identity, by compensated projections), so these kernels stay exact to
/// round-off. For a [`Program`] the second moments are all the limit has: where the
/// rounding could move the result by more than $10^{−8}$ relative ($q ≳ 10^6$ and nearly
/// parallel), the call is an error that says so (and so is an MLP's per-layer split,
/// [`infinite_width_groups`], which runs the program recursion).
///
/// **What is computed once.** For a [`Program`], the first call compiles its recursion:
/// Tensor Programs II's rules expanded from the output into two straight-line tapes,
/// which depend on the program's structure (its operations, standard deviations and
/// activations), the quadrature degree and nothing else — not on `x1` or `x2`. A chain
/// of convolutions, shared biases, φ, average poolings and a pooled or flattened
/// readout on a grid of more than 16 positions compiles instead to a short plan of
/// array operations on each pair's $P × P$ position covariance (a stencil per
/// convolution, the dual entry by entry per φ, window means per pooling): its cost
/// per pair is $O(P^2 · \text{taps})$ and nothing compiled grows with $P^2$, so
/// Myrtle networks on 32 × 32 images take milliseconds per kernel entry. Compilations are kept in a process-wide cache of the 8 most recently used,
/// keyed by that structure, so a later call on the same program, a clone of it, or one
/// built by the same calls (any batches, e.g. the tiles of
/// [`infinite_width_block`] in a loop) runs the tapes only. To keep a compilation
/// regardless of what else the process compiles, hold one [`InfiniteWidth`]: it
/// compiles on its first call and keeps its tapes as long as it lives (it also sets the
/// quadrature degree). An [`MlpSpec`] has nothing to compile: its layer recursion runs
/// directly.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{infinite_width, Activation, MlpSpec};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(2).hidden(512, Activation::Relu);
/// let x = DMatrix::from_row_slice(2, 2, &[1.0_f64, 0.0, 0.0, 2.0]);
/// let k = infinite_width(&spec, &x, &x)?;
/// // One ReLU layer, σ_w = 1, σ_b = 0: Σ(x, x) = |x|²/(2d) and Θ̊(x, x) = |x|²/d.
/// assert!((k.nngp[(1, 1)] - 1.0).abs() < 1e-15);
/// assert!((k.ntk[(1, 1)] - 2.0).abs() < 1e-15);
/// // Orthogonal inputs: Σ = √(q₁q₂)/(2π) with q = |x|²/d, Θ̊ = Σ + Σ¹ Ċ = Σ + 0.
/// assert!((k.nngp[(0, 1)] - 1.0 / (2.0 * std::f64::consts::PI)).abs() < 1e-15);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// If the spec is invalid, or `x1` or `x2` does not have $d$ columns, has NaN or
/// infinite entries, or has entries so large that the kernel overflows.
pub fn infinite_width<T: Scalar, A: Architecture + ?Sized>(
    architecture: &A,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<Kernels<T>> {
    InfiniteWidth::new(architecture)?.kernels(x1, x2)
}

/// The block of [`infinite_width`] with rows `rows` (samples of `x1`) and columns
/// `cols` (samples of `x2`): $Σ$ and $Θ̊$ between $x_1\[\text{rows}\]$ and $x_2\[\text{cols}\]$.
///
/// As with [`empirical_ntk_block`](crate::empirical_ntk_block), every entry depends
/// only on its two samples, so a large kernel can be computed tile by tile by any
/// scheduler (threads, or the tasks of a cluster job array).
/// A [batch-coupled](Program::batch_coupled) program is the exception: its rows keep
/// the statistics of their whole batches, so the call computes the kernels between
/// the whole `x1` and `x2` and returns the block of them.
///
/// A program is compiled on the first call only (see [`infinite_width`]): the tiles of
/// a loop share one compilation through the process-wide cache. A task that computes
/// many tiles can also hold one [`InfiniteWidth`] and call
/// [`kernels`](InfiniteWidth::kernels) on each tile's rows and columns, which keeps
/// the compilation for as long as the task runs:
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{Activation, InfiniteWidth, Padding, Program};
/// # fn main() -> Result<(), ntk::Error> {
/// // A circular 1-D CNN over 6 positions of 2 channels, with average pooling.
/// let mut p = Program::new(12);
/// let z = (0..6).map(|q| p.input(2 * q..2 * q + 2)).collect::<Result<Vec<_>, _>>()?;
/// let w = p.weight(1.4)?;
/// let h = p.conv(w, &z, 3, Padding::Circular)?;
/// let a = h.into_iter().map(|h| p.apply(Activation::Relu, h)).collect::<Result<Vec<_>, _>>()?;
/// let pooled = p.mean(&a)?;
/// p.output(pooled, 1.0)?;
///
/// let x = DMatrix::from_fn(8, 12, |i, j| ((i * 12 + j) as f64 * 0.3).sin());
/// let limit = InfiniteWidth::new(&p)?; // compiles on its first call, then reuses it
/// let rows = |r: std::ops::Range<usize>| x.rows(r.start, r.len()).into_owned();
/// for (r, c) in [(0..4, 0..4), (0..4, 4..8), (4..8, 4..8)] {
///     let tile = limit.kernels(&rows(r.clone()), &rows(c.clone()))?;
///     let block = ntk::infinite_width_block(&p, &x, &x, r, c)?;
///     assert!((tile.ntk - block.ntk).amax() < 1e-14);
/// }
/// # Ok(())
/// # }
/// ```
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{infinite_width, infinite_width_block, Activation, MlpSpec};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(2).hidden(512, Activation::Erf).bias_std(0.1);
/// let x = DMatrix::from_fn(9, 2, |i, j| (i as f64 * 0.7 + j as f64).sin());
/// let whole = infinite_width(&spec, &x, &x)?;
/// let block = infinite_width_block(&spec, &x, &x, 1..4, 5..9)?;
/// assert!((block.ntk - whole.ntk.view((1, 5), (3, 4))).amax() < 1e-14);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`infinite_width`], and [`Error::InvalidParameter`]
/// if a range is reversed or reaches past the last sample.
pub fn infinite_width_block<T: Scalar, A: Architecture + ?Sized>(
    architecture: &A,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Result<Kernels<T>> {
    let a = select_rows("rows", x1, rows.clone())?;
    let b = select_rows("cols", x2, cols.clone())?;
    if let Described::Program(p) = architecture.describe(None)?
        && p.batch_coupled()
    {
        // The rows keep the statistics of their whole batches: the whole kernel, cut.
        let whole = infinite_width(architecture, x1, x2)?;
        let cut = |m: DMatrix<T>| {
            m.view((rows.start, cols.start), (rows.len(), cols.len()))
                .into_owned()
        };
        return Ok(Kernels {
            nngp: cut(whole.nngp),
            ntk: cut(whole.ntk),
        });
    }
    infinite_width(architecture, &a, &b)
}

/// The per-group decomposition of $Θ̊$ (see [`InfiniteWidth::group_kernels`]): one
/// [`GroupKernel`] per parameter group (per Dense layer for an MLP), summing to
/// [`infinite_width`]'s `ntk`.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{infinite_width, infinite_width_groups, Activation, MlpSpec};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(3).hidden(64, Activation::Erf).hidden(64, Activation::Relu).bias_std(0.2);
/// let x = DMatrix::from_fn(4, 3, |i, j| ((i + 2 * j) as f64).cos());
/// let layers = infinite_width_groups(&spec, &x, &x)?;
/// assert_eq!(layers.len(), 3);
/// let sum = layers.iter().fold(DMatrix::zeros(4, 4), |acc, l| acc + l.total());
/// let ntk = infinite_width(&spec, &x, &x)?.ntk;
/// assert!((&sum - &ntk).norm() < 1e-12 * ntk.norm());
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// As [`infinite_width`].
pub fn infinite_width_groups<T: Scalar, A: Architecture + ?Sized>(
    architecture: &A,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<Vec<GroupKernel<T>>> {
    InfiniteWidth::new(architecture)?.group_kernels(x1, x2)
}

/// [`infinite_width_groups`], under its old name.
///
/// # Errors
/// As [`infinite_width`].
#[deprecated(since = "0.2.0", note = "renamed to `infinite_width_groups`")]
pub fn infinite_width_layers<T: Scalar, A: Architecture + ?Sized>(
    architecture: &A,
    x1: &DMatrix<T>,
    x2: &DMatrix<T>,
) -> Result<Vec<GroupKernel<T>>> {
    infinite_width_groups(architecture, x1, x2)
}

/// `m` as a `DMatrix<T>`, or an error naming the first entry that `T` cannot hold.
fn to_scalar<T: Scalar>(what: &str, m: DMatrix<f64>) -> Result<DMatrix<T>> {
    // In f64 the engine's result is the answer: returned as it is, not copied (at
    // N = 4096 a copy is 134 MB of fresh pages per kernel).
    let m = match (Box::new(m) as Box<dyn std::any::Any>).downcast::<DMatrix<T>>() {
        Ok(same) => return Ok(*same),
        Err(other) => *other
            .downcast::<DMatrix<f64>>()
            .expect("the box holds the f64 matrix it was given"),
    };
    // The engine's results are finite f64: only a narrower T can overflow.
    let narrower = T::max_value().is_some_and(|max| max.to_f64() < f64::MAX);
    if narrower && let Some(k) = m.iter().position(|&v| !T::from_f64_lossy(v).is_finite()) {
        let n = m.nrows().max(1);
        return Err(crate::Error::NonFiniteResult {
            result: "infinite_width",
            reason: format!(
                "the {what} entry ({}, {}) = {:e} overflows {}: compute in f64 or scale the \
                 inputs down",
                k % n,
                k / n,
                m.as_slice()[k],
                std::any::type_name::<T>()
            ),
        });
    }
    Ok(from_f64(&m))
}

/// `m` in f64.
fn to_f64<T: Scalar>(m: &DMatrix<T>) -> DMatrix<f64> {
    m.map(|v| v.to_f64())
}

/// `m` rounded to `T` (a copy when `T` is `f64`: $O(N^2)$ beside the $O(N^2 L)$ recursion).
fn from_f64<T: Scalar>(m: &DMatrix<f64>) -> DMatrix<T> {
    m.map(T::from_f64_lossy)
}
