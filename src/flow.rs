//! Gradient-flow dynamics of a model linearised around its initialisation.
//!
//! Under gradient flow on the loss $L = \tfrac12 Σ_i \lVert f(x_i) − y_i \rVert^2$ with learning rate $η$, a
//! model whose tangent kernel stays at $Θ$ (a linearised network; a wide one, by Jacot et
//! al. 2018 and Lee et al. 2019) obeys $df_t/dt = −η Θ (f_t − Y)$ on the $N$ training
//! points, so
//!
//! $$f_t(X) = Y + e^{−ηtΘ} (f_0(X) − Y),$$
//!
//! and on test points $x$ (kernel $Θ(x, X)$, $M × N$)
//!
//! $$f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − e^{−ηtΘ}) (Y − f_0(X)).$$
//!
//! With $Θ = V Λ Vᵀ$ (computed once, in [`GradientFlow::new`]), $e^{−ηtΘ} = V e^{−ηtΛ} Vᵀ$
//! and $Θ⁻¹(I − e^{−ηtΘ}) = V \mathrm{diag}((1 − e^{−ηtλ_i})/λ_i) Vᵀ$, where
//! $(1 − e^{−ηtλ})/λ = −\mathrm{expm1}(−ηtλ)/λ$ is evaluated without cancellation and tends to
//! $ηt$ as $λ → 0$ (so $Θ$ need not be invertible). Each prediction then costs $O(N²k)$ (test:
//! $O(N²k + MNk)$).
//!
//! # The null space
//!
//! A kernel with repeated (or linearly dependent) training inputs is singular, and in
//! floating point its zero eigenvalues come out as round-off of either sign. The exact
//! flow never moves the component of $f_0 − Y$ in $Θ$'s null space, so at $t = ∞$ the
//! training outputs keep it and the test outputs use the pseudo-inverse $Θ⁺$. Every
//! solver here therefore treats eigenvalues below **$N·ε·λ_{max}$** as exactly 0 ($ε$ the
//! machine epsilon of the scalar type: entries accurate to $ε$ move eigenvalues by up to
//! about $N·ε·λ_{max}$, so smaller ones cannot be told from 0), and rejects a kernel whose
//! smallest eigenvalue is below $−\max(10⁻⁸, N·ε)·\max |λ|$ as not positive semi-definite
//! ([`Error::NotPositiveSemidefinite`]).
//!
//! Discrete gradient descent with step $η$ gives $f_s − Y = (I − ηΘ)^s (f_0 − Y)$ after $s$
//! steps, and $f_s(x) = f_0(x) + Θ(x, X) Θ⁻¹ (I − (I − ηΘ)^s)(Y − f_0(X))$; it is stable
//! iff $η < 2/λ_{max}$ ([`GradientFlow::max_stable_learning_rate`]).
//!
//! # Time units
//!
//! The loss here is the **sum** $\tfrac12 Σ \lVert f − y \rVert^2$. neural-tangents'
//! `predict.gradient_descent_mse(k, y, learning_rate)` uses the mean over the
//! `y.size` target entries, so its time $t_{nt}$ corresponds to ours through
//! $η t$ = `learning_rate` · $t_{nt}$ / `y.size`: pass `eta = learning_rate / y.len()` here and
//! the same $t$.
//!
//! # More outputs
//!
//! With $k > 1$ outputs, $Y$ is $N × k$ and $Θ$ acts on each column (the $Θ ⊗ I$ limit, and
//! what [`empirical_ntk`](crate::empirical_ntk) returns). For the exact linearisation
//! of a finite network with $k > 1$, pass the $(N·k) × (N·k)$
//! [`empirical_ntk_full`](crate::empirical_ntk_full) and $Y$ reshaped to $(N·k) × 1$, row
//! $i·k + c$ holding $y_c(x_i)$.

use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::{
    Error, Result, check_matrix, check_rows, check_symmetric_kernel, check_time, first_non_finite,
};
use crate::factor::{Cholesky, symmetric_eigen, symmetric_eigenvalues};
use crate::problem::{
    TrainingProblem, check_test_inputs, check_train_outputs, flow_decay, flow_integral,
    kernel_and_targets, null_space_fraction, psd_spectrum,
};

/// Where along the dynamics a prediction is made: after a time of gradient flow, or
/// after a number of gradient-descent steps with step $η$.
///
/// [`GradientFlow::train_at`], [`test_at`](GradientFlow::test_at) and
/// [`loss_at`](GradientFlow::loss_at) take a slice of them and share one projection
/// and one GEMM over all of them.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{GradientFlow, Horizon};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let theta = DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 1.0]);
/// let y = DMatrix::from_column_slice(2, 1, &[1.0, -1.0]);
/// let f0 = DMatrix::zeros(2, 1);
/// let flow = GradientFlow::new(&theta, &y, 0.1)?;
/// let losses = flow.loss_at(&Horizon::times(&[0.0, 1.0, f64::INFINITY]), &f0)?;
/// assert!(losses[0] > losses[1] && losses[2] < 1e-20);
/// let after = flow.train_at(&[Horizon::Steps(10), Horizon::Time(1.0)], &f0)?;
/// assert_eq!(after[0], flow.train_gd(10, &f0)?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Horizon<T> {
    /// Gradient flow for a time $t ≥ 0$ (`+∞` allowed: the limit): $e^{−ηtΘ}$.
    Time(T),
    /// $s$ steps of gradient descent: $(I − ηΘ)^s$.
    Steps(usize),
}

impl<T: Scalar> Horizon<T> {
    /// One [`Horizon::Time`] per time in `ts`.
    #[must_use]
    pub fn times(ts: &[T]) -> Vec<Self> {
        ts.iter().map(|&t| Horizon::Time(t)).collect()
    }

    /// One [`Horizon::Steps`] per step count in `steps`.
    #[must_use]
    pub fn steps(steps: &[usize]) -> Vec<Self> {
        steps.iter().map(|&s| Horizon::Steps(s)).collect()
    }

    /// Errors unless a time is $≥ 0$ (`+∞` allowed, NaN not).
    fn check(self) -> Result<Self> {
        if let Horizon::Time(t) = self {
            check_time("t", t.to_f64())?;
        }
        Ok(self)
    }
}

/// The closed-form gradient-flow (and gradient-descent) dynamics of a linearised model
/// on the MSE loss $\tfrac12 Σ_i \lVert f(x_i) − y_i \rVert^2$, from the eigendecomposition of its kernel.
///
/// See the [module documentation](crate::flow) for the formulas and the time units
/// (neural-tangents' time: `eta = learning_rate / y.len()`). [`train`](Self::train),
/// [`test`](Self::test) and [`train_gd`](Self::train_gd) predict at one time or step
/// count; [`train_at`](Self::train_at), [`test_at`](Self::test_at) and
/// [`loss_at`](Self::loss_at) at any list of [`Horizon`]s at once.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::rand::{rngs::StdRng, SeedableRng};
/// use ntk::{empirical_ntk, Activation, GradientFlow, Horizon, MlpSpec, NtkModel};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let net = MlpSpec::new(2).hidden(128, Activation::Erf).init::<f64>(&mut StdRng::seed_from_u64(1))?;
/// let x = DMatrix::from_fn(6, 2, |i, j| ((i + 3 * j) as f64).sin());
/// let x_test = DMatrix::from_fn(3, 2, |i, j| ((2 * i + j) as f64).cos());
/// let y = DMatrix::from_fn(6, 1, |i, _| (i as f64 * 0.7).cos());
///
/// let theta = empirical_ntk(&net, &x, &x)?;
/// let flow = GradientFlow::new(&theta, &y, 0.5)?;
/// let (f0, f0_test) = (net.forward(&x)?, net.forward(&x_test)?);
/// let f_train = flow.train(10.0, &f0)?;                                     // 6 × 1
/// let f_test = flow.test(10.0, &f0, &f0_test, &empirical_ntk(&net, &x_test, &x)?)?; // 3 × 1
/// let losses = flow.loss_at(&Horizon::times(&[0.0, 10.0]), &f0)?;
/// assert!(losses[1] < losses[0]);
/// assert_eq!((f_train.nrows(), f_test.nrows()), (6, 3));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GradientFlow<T: Scalar> {
    eta: T,
    targets: DMatrix<T>,
    eigenvalues: DVector<T>,
    eigenvectors: DMatrix<T>,
}

impl<T: Scalar> GradientFlow<T> {
    /// Prepares the dynamics on the $N × N$ training kernel `theta_train` with targets
    /// `y_train` ($N × k$) and learning rate `eta`: one symmetric eigendecomposition,
    /// $O(N³)$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `theta_train` is not square or `y_train` does not
    /// have $N$ rows; [`Error::NonFinite`] on NaN or infinite entries;
    /// [`Error::NotSymmetric`] if some $|Θ_{ij} − Θ_{ji}| > 10⁻⁸ \sqrt{|Θ_{ii} Θ_{jj}|}$;
    /// [`Error::NotPositiveSemidefinite`] if $λ_{min}(Θ) < −\max(10⁻⁸, N·ε)·\max |λ|$
    /// (see [the null space](crate::flow#the-null-space));
    /// [`Error::InvalidParameter`] unless `eta` is finite and $> 0$;
    /// [`Error::Factorization`] if the eigensolver does not converge.
    pub fn new(theta_train: &DMatrix<T>, y_train: &DMatrix<T>, eta: T) -> Result<Self> {
        let problem = TrainingProblem::new(theta_train, y_train, eta)?;
        // Symmetric (checked): the eigensolver reads the lower triangle.
        let (values, vectors) = symmetric_eigen(&problem.theta)?;
        let values = psd_spectrum::<T>("theta_train", &values, values.len())?;
        Ok(GradientFlow {
            eta: problem.eta,
            targets: problem.targets,
            eigenvalues: values.map(T::from_f64_lossy),
            eigenvectors: vectors,
        })
    }

    /// The learning rate $η$.
    #[must_use]
    pub fn eta(&self) -> T {
        self.eta
    }

    /// The targets $Y$ ($N × k$).
    #[must_use]
    pub fn targets(&self) -> &DMatrix<T> {
        &self.targets
    }

    /// The eigenvalues $λ_1 ≥ … ≥ λ_N ≥ 0$ of $Θ$, those below $N·ε·λ_{max}$ set to 0 (see
    /// [the null space](crate::flow#the-null-space)).
    #[must_use]
    pub fn eigenvalues(&self) -> &DVector<T> {
        &self.eigenvalues
    }

    /// The orthonormal eigenvectors of $Θ$, column $i$ for [`eigenvalues`](Self::eigenvalues)`[i]`.
    #[must_use]
    pub fn eigenvectors(&self) -> &DMatrix<T> {
        &self.eigenvectors
    }

    /// The largest stable gradient-descent step, $2/λ_{max}$: with $η < 2/λ_{max}$ every
    /// factor $|1 − ηλ_i|$ of $(I − ηΘ)^s$ is below 1. Infinite when $Θ = 0$.
    ///
    /// In neural-tangents' units (mean loss) this is `2 * y.len() / λ_max`.
    #[must_use]
    pub fn max_stable_learning_rate(&self) -> T {
        let top = self.eigenvalues.iter().copied().fold(T::zero(), T::max);
        T::from_f64_lossy(2.0) / top
    }

    /// $f_t(X) = Y + e^{−ηtΘ}(f_0(X) − Y)$: the training outputs at time `t`, $N × k$.
    ///
    /// `t = +∞` gives the limit ($Y$ on the range of $Θ$; directions with $λ = 0$ keep
    /// their initial residual).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN; [`Error::ShapeMismatch`]
    /// or [`Error::NonFinite`] if `f0_train` is not a finite $N × k$ matrix;
    /// [`Error::NonFiniteResult`] if the outputs exceed the scalar type's range.
    pub fn train(&self, t: T, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        Ok(self.train_at(&[Horizon::Time(t)], f0_train)?.remove(0))
    }

    /// After `steps` steps of gradient descent with step $η$:
    /// $f_s(X) = Y + (I − ηΘ)^s (f_0(X) − Y)$, $N × k$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`] if `f0_train` is not a finite
    /// $N × k$ matrix; [`Error::NonFiniteResult`] if the outputs overflow: above the
    /// stable rate $2/λ_{max}$ the residual grows like $|1 − ηλ_{max}|^s$.
    pub fn train_gd(&self, steps: usize, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        Ok(self.train_at(&[Horizon::Steps(steps)], f0_train)?.remove(0))
    }

    /// The training outputs $f(X)$ ($N × k$) at every horizon in `horizons`:
    /// $Y + e^{−ηtΘ}(f_0(X) − Y)$ after time $t$, $Y + (I − ηΘ)^s (f_0(X) − Y)$ after $s$
    /// steps. One projection and one GEMM for all of them.
    ///
    /// # Errors
    /// As [`train`](Self::train) and [`train_gd`](Self::train_gd), for any of the
    /// horizons.
    pub fn train_at(
        &self,
        horizons: &[Horizon<T>],
        f0_train: &DMatrix<T>,
    ) -> Result<Vec<DMatrix<T>>> {
        let horizons = checked(horizons)?;
        let coefficients = self.project(f0_train)?;
        let moved = self.expand(&horizons, &coefficients, |h, l| self.decay(h, l));
        horizons
            .iter()
            .enumerate()
            .map(|(i, &h)| self.finite(h, &self.targets + moved.columns(i * self.k(), self.k())))
            .collect()
    }

    /// $f_t(x) = f_0(x) + Θ(x, X) Θ⁻¹(I − e^{−ηtΘ})(Y − f_0(X))$: the outputs at time
    /// `t` on $M$ test points, $M × k$. `theta_test_train` is $Θ(x, X)$, $M × N$.
    ///
    /// At `t = +∞` this is kernel regression with the pseudo-inverse of the clipped
    /// spectrum; [`KernelRegression`] does it without the eigendecomposition.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN; [`Error::ShapeMismatch`]
    /// if `f0_train` is not $N × k$, `f0_test` not $M × k$ or `theta_test_train` not
    /// $M × N$; [`Error::NonFinite`] on NaN or infinite entries;
    /// [`Error::NonFiniteResult`] if the outputs exceed the scalar type's range.
    pub fn test(
        &self,
        t: T,
        f0_train: &DMatrix<T>,
        f0_test: &DMatrix<T>,
        theta_test_train: &DMatrix<T>,
    ) -> Result<DMatrix<T>> {
        let at = [Horizon::Time(t)];
        Ok(self
            .test_at(&at, f0_train, f0_test, theta_test_train)?
            .remove(0))
    }

    /// The outputs on $M$ test points ($M × k$) at every horizon in `horizons`:
    /// $f_0(x) + Θ(x, X) Θ⁻¹(I − D)(Y − f_0(X))$ with $D = e^{−ηtΘ}$ after time $t$ and
    /// $D = (I − ηΘ)^s$ after $s$ steps, where $Θ⁻¹(I − (I − ηΘ)^s) = η Σ_{j<s} (I − ηΘ)^j$
    /// has eigenvalues $(1 − (1 − ηλ)^s)/λ → ηs$ as $λ → 0$.
    ///
    /// # Errors
    /// As [`test`](Self::test), for any of the horizons.
    pub fn test_at(
        &self,
        horizons: &[Horizon<T>],
        f0_train: &DMatrix<T>,
        f0_test: &DMatrix<T>,
        theta_test_train: &DMatrix<T>,
    ) -> Result<Vec<DMatrix<T>>> {
        let horizons = checked(horizons)?;
        check_test_inputs(f0_test, theta_test_train, &self.targets)?;
        // Vᵀ(Y − f_0) = −Vᵀ(f_0 − Y).
        let coefficients = -self.project(f0_train)?;
        let weights = self.expand(&horizons, &coefficients, |h, l| self.integral(h, l));
        let moved = theta_test_train * weights;
        horizons
            .iter()
            .enumerate()
            .map(|(i, &h)| self.finite(h, f0_test + moved.columns(i * self.k(), self.k())))
            .collect()
    }

    /// The training loss $\tfrac12 \lVert f(X) − Y \rVert_F^2 = \tfrac12 Σ_i d_i² \lVert v_iᵀ(f_0 − Y) \rVert^2$ at every
    /// horizon in `horizons` ($d_i = e^{−ηtλ_i}$ or $(1 − ηλ_i)^s$): one $O(N²k)$
    /// projection, then $O(Nk)$ per horizon.
    ///
    /// # Errors
    /// As [`train_at`](Self::train_at).
    pub fn loss_at(&self, horizons: &[Horizon<T>], f0_train: &DMatrix<T>) -> Result<Vec<T>> {
        let horizons = checked(horizons)?;
        let coefficients = self.project(f0_train)?;
        horizons
            .iter()
            .map(|&h| {
                let mut sum = T::zero();
                for (i, row) in coefficients.row_iter().enumerate() {
                    let d = self.decay(h, self.eigenvalues[i]);
                    sum += d * d * row.norm_squared();
                }
                let loss = DMatrix::from_element(1, 1, T::from_f64_lossy(0.5) * sum);
                Ok(self.finite(h, loss)?[(0, 0)])
            })
            .collect()
    }

    /// The residual at `horizon` in the eigenbasis of $Θ$: row $i$ is
    /// $v_iᵀ(f(X) − Y) = d_i v_iᵀ(f_0(X) − Y)$, $N × k$, for the eigenvalue
    /// [`eigenvalues`](Self::eigenvalues)`[i]` (largest first), with $d_i = e^{−ηtλ_i}$
    /// or $(1 − ηλ_i)^s$.
    ///
    /// Directions with large $λ$ are learned first (after $t ≈ 1/(ηλ)$); small-$λ$
    /// directions stay unlearned for a long time: the spectral bias of kernel
    /// gradient descent, made visible.
    ///
    /// # Errors
    /// As [`train_at`](Self::train_at).
    pub fn residual_in_eigenbasis(
        &self,
        horizon: Horizon<T>,
        f0_train: &DMatrix<T>,
    ) -> Result<DMatrix<T>> {
        let horizon = horizon.check()?;
        let mut coefficients = self.project(f0_train)?;
        for (i, mut row) in coefficients.row_iter_mut().enumerate() {
            row *= self.decay(horizon, self.eigenvalues[i]);
        }
        Ok(coefficients)
    }

    /// `prediction` at `horizon`, or the error that says why it is not finite: gradient
    /// descent above the stable rate, whose residual grows like $|1 − ηλ_{max}|^s$.
    fn finite(&self, horizon: Horizon<T>, prediction: DMatrix<T>) -> Result<DMatrix<T>> {
        if first_non_finite(prediction.as_slice()).is_none() {
            return Ok(prediction);
        }
        let reason = match horizon {
            Horizon::Steps(s) => {
                let top = self.eigenvalues.iter().copied().fold(T::zero(), T::max);
                format!(
                    "after {s} gradient-descent steps with η = {} above the stable \
                     2/λ_max = {}, the residual grows like |1 − ηλ_max|^s = {:e} and \
                     overflows; use a learning rate below 2/λ_max or fewer steps",
                    self.eta,
                    self.max_stable_learning_rate(),
                    power(T::one() - self.eta * top, s).abs().to_f64()
                )
            }
            Horizon::Time(t) => format!(
                "the prediction at t = {t} exceeds the range of the scalar type \
                 (f0_train, y_train or theta_test_train too large)"
            ),
        };
        Err(Error::NonFiniteResult {
            result: "GradientFlow prediction",
            reason,
        })
    }

    /// Number of training points $N$.
    fn n(&self) -> usize {
        self.targets.nrows()
    }

    /// Number of outputs $k$.
    fn k(&self) -> usize {
        self.targets.ncols()
    }

    /// $Vᵀ(f_0 − Y)$, $N × k$.
    fn project(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        check_train_outputs(f0_train, &self.targets)?;
        Ok(self.eigenvectors.tr_mul(&(f0_train - &self.targets)))
    }

    /// The factor of the residual along eigenvalue $λ$: $e^{−ηtλ}$ or $(1 − ηλ)^s$.
    fn decay(&self, h: Horizon<T>, lambda: T) -> T {
        match h {
            Horizon::Time(t) => flow_decay(self.eta * t, lambda),
            Horizon::Steps(s) => power(T::one() - self.eta * lambda, s),
        }
    }

    /// The eigenvalue of $Θ⁻¹(I − \text{decay})$: $(1 − e^{−ηtλ})/λ$ or $(1 − (1 − ηλ)^s)/λ$,
    /// continuous at $λ = 0$ ($ηt$, $ηs$); $0$ at $λ = 0$ for $t = ∞$ (pseudo-inverse).
    fn integral(&self, h: Horizon<T>, lambda: T) -> T {
        let eta = self.eta;
        match h {
            Horizon::Time(t) => flow_integral(eta * t, lambda),
            Horizon::Steps(s) if lambda == T::zero() => eta * T::from_f64_lossy(s as f64),
            Horizon::Steps(s) => {
                let x = eta * lambda;
                if x < T::one() {
                    // 1 − (1 − x)^s = −expm1(s · ln(1 − x)), accurate for small x.
                    -(T::from_f64_lossy(s as f64) * (-x).ln_1p()).exp_m1() / lambda
                } else {
                    (T::one() - power(T::one() - x, s)) / lambda
                }
            }
        }
    }

    /// $V [g(h, λ) ⊙ C \text{ for each horizon } h]$, $N × (k · \text{horizons})$, in one GEMM.
    fn expand(
        &self,
        horizons: &[Horizon<T>],
        coefficients: &DMatrix<T>,
        g: impl Fn(Horizon<T>, T) -> T,
    ) -> DMatrix<T> {
        let (n, k) = (self.n(), self.k());
        let mut scaled = DMatrix::<T>::zeros(n, k * horizons.len());
        for (h, horizon) in horizons.iter().enumerate() {
            for i in 0..n {
                let factor = g(*horizon, self.eigenvalues[i]);
                for c in 0..k {
                    scaled[(i, h * k + c)] = factor * coefficients[(i, c)];
                }
            }
        }
        &self.eigenvectors * scaled
    }
}

/// The horizons, after checking every time.
fn checked<T: Scalar>(horizons: &[Horizon<T>]) -> Result<Vec<Horizon<T>>> {
    horizons.iter().map(|h| h.check()).collect()
}

/// $q^s$ for any real $q$, without overflow of the exponent type.
fn power<T: Scalar>(q: T, s: usize) -> T {
    let magnitude = q.abs().powf(T::from_f64_lossy(s as f64));
    if q < T::zero() && s % 2 == 1 {
        -magnitude
    } else {
        magnitude
    }
}

/// Kernel regression, the $t → ∞$ limit of gradient flow, through a Cholesky solve (no
/// eigendecomposition), with an optional ridge $ρ$ (`diag_reg`):
///
/// $$f_∞(x) = f_0(x) + Θ(x, X) (Θ + ρI)⁻¹ (Y − f_0(X)),$$
///
/// and on the training points $f_0(X) + Θ(Θ + ρI)⁻¹(Y − f_0(X)) = Y − ρ (Θ + ρI)⁻¹(Y − f_0(X))$
/// ($= Y$ without ridge).
///
/// `diag_reg` is absolute. neural-tangents' `diag_reg` is by default relative to the
/// mean diagonal (`diag_reg_absolute_scale=False`): pass `diag_reg · trace(Θ)/N` to
/// match it.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{GradientFlow, KernelRegression};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let theta = DMatrix::from_row_slice(3, 3, &[2.0, 0.5, 0.1, 0.5, 1.5, 0.3, 0.1, 0.3, 1.0]);
/// let y = DMatrix::from_column_slice(3, 1, &[1.0, -1.0, 0.5]);
/// let f0 = DMatrix::zeros(3, 1);
/// let theta_test = DMatrix::from_row_slice(1, 3, &[0.4, 0.2, 0.7]);
/// let f0_test = DMatrix::zeros(1, 1);
///
/// let regression = KernelRegression::new(&theta, &y, 0.0)?;
/// let limit = regression.test(&f0, &f0_test, &theta_test)?;
/// let flow = GradientFlow::new(&theta, &y, 1.0)?;
/// let late = flow.test(200.0, &f0, &f0_test, &theta_test)?;
/// assert!((limit - late).norm() < 1e-12);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct KernelRegression<T: Scalar> {
    cholesky: Cholesky,
    targets: DMatrix<T>,
    diag_reg: T,
}

impl<T: Scalar> KernelRegression<T> {
    /// Factors $Θ + ρI$ ($ρ$ = `diag_reg` $≥ 0$) for the targets `y_train` ($N × k$).
    ///
    /// # Errors
    /// As [`GradientFlow::new`] for `theta_train` and `y_train` (except the eigenvalue
    /// check); [`Error::InvalidParameter`] unless `diag_reg` is finite and $≥ 0$;
    /// [`Error::Factorization`] if $Θ + ρI$ is not positive definite to working
    /// precision: the factorization fails, or a pivot is below $N·ε$ of the largest
    /// diagonal entry (singular: repeated training inputs, say; see
    /// [the null space](crate::flow#the-null-space)). The message suggests a
    /// `diag_reg`, or [`GradientFlow`] at $t = ∞$ for the pseudo-inverse limit.
    pub fn new(theta_train: &DMatrix<T>, y_train: &DMatrix<T>, diag_reg: T) -> Result<Self> {
        let (theta, targets) = kernel_and_targets(theta_train, y_train)?;
        let n = targets.nrows();
        let rho = diag_reg.to_f64();
        if !(rho.is_finite() && rho >= 0.0) {
            return Err(Error::InvalidParameter {
                parameter: "diag_reg",
                value: format!("{rho}"),
                reason: "a ridge must be finite and >= 0",
            });
        }
        // Symmetric (checked): the factorization reads the lower triangle.
        let mut a = theta;
        for i in 0..n {
            a[(i, i)] += rho;
        }
        // A pivot at round-off level means Θ + ρI is singular to working precision:
        // its solve would be noise.
        let floor = null_space_fraction::<T>(n);
        let factored = Cholesky::new(&a).filter(|c| c.smallest_relative_pivot(&a) > floor);
        let Some(cholesky) = factored else {
            let mean_diag = (a.trace() / n.max(1) as f64).abs();
            let message = if rho == 0.0 && a.amax() == 0.0 {
                "`theta_train` is zero: kernel regression has nothing to invert (the flow \
                 never moves: f_∞ = f_0); any `diag_reg` > 0 returns f_0, as does \
                 GradientFlow at t = ∞"
                    .to_string()
            } else if rho == 0.0 {
                format!(
                    "Cholesky factorization of `theta_train` ({n} x {n}) failed: the kernel is \
                     singular (repeated or dependent training inputs) or not positive \
                     definite to working precision. GradientFlow at t = ∞ gives the \
                     pseudo-inverse limit (eigenvalues below N·ε·λ_max count as 0); or pass a \
                     small ridge `diag_reg` (e.g. {:e}, 1e-10 of its mean diagonal)",
                    1e-10 * mean_diag
                )
            } else {
                format!(
                    "Cholesky factorization of `theta_train` + {rho:e} I ({n} x {n}) failed: \
                     not positive definite to working precision; increase `diag_reg` or check \
                     that `theta_train` is positive semi-definite"
                )
            };
            return Err(Error::Factorization { message });
        };
        Ok(KernelRegression {
            cholesky,
            targets,
            diag_reg,
        })
    }

    /// The ridge $ρ$.
    #[must_use]
    pub fn diag_reg(&self) -> T {
        self.diag_reg
    }

    /// $(Θ + ρI)⁻¹ (Y − f_0(X))$, the dual coefficients, $N × k$.
    fn dual(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<f64>> {
        check_train_outputs(f0_train, &self.targets)?;
        let r = (&self.targets - f0_train).map(|v| v.to_f64());
        Ok(self.cholesky.solve(&r))
    }

    /// The training outputs at $t = ∞$: $Y − ρ(Θ + ρI)⁻¹(Y − f_0(X))$, $N × k$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] or [`Error::NonFinite`] if `f0_train` is not a finite
    /// $N × k$ matrix.
    pub fn train(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        let w = self.dual(f0_train)?;
        let rho = self.diag_reg.to_f64();
        Ok(DMatrix::from_fn(
            self.targets.nrows(),
            self.targets.ncols(),
            |i, c| self.targets[(i, c)] - T::from_f64_lossy(rho * w[(i, c)]),
        ))
    }

    /// The test outputs at $t = ∞$: $f_0(x) + Θ(x, X)(Θ + ρI)⁻¹(Y − f_0(X))$, $M × k$.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `f0_train` is not $N × k$, `f0_test` not $M × k$ or
    /// `theta_test_train` not $M × N$; [`Error::NonFinite`] on NaN or infinite entries.
    pub fn test(
        &self,
        f0_train: &DMatrix<T>,
        f0_test: &DMatrix<T>,
        theta_test_train: &DMatrix<T>,
    ) -> Result<DMatrix<T>> {
        check_test_inputs(f0_test, theta_test_train, &self.targets)?;
        let w = self.dual(f0_train)?;
        Ok(f0_test + theta_test_train * w.map(T::from_f64_lossy))
    }
}

/// A Gaussian over outputs: mean $M × k$ and one $M × M$ covariance shared by the $k$
/// (independent) outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianPrediction<T: Scalar> {
    /// The mean, $M × k$.
    pub mean: DMatrix<T>,
    /// The covariance between the $M$ points, $M × M$ (the same for every output).
    pub covariance: DMatrix<T>,
}

/// The infinite ensemble of linearised networks trained by gradient flow: outputs
/// averaged over random initialisations (Lee et al. 2019, §2.3; neural-tangents'
/// `predict.gradient_descent_mse_ensemble`, `get='ntk'`).
///
/// At initialisation $f_0$ is a centred Gaussian process with the NNGP kernel $K$; the
/// flow with NTK $Θ$ is linear in $f_0$, so at time $t$ the outputs are Gaussian with, on
/// test points ($Θ_\* = Θ(x, X)$, $K_\* = K(x, X)$, $K_{\*\*} = K(x, x)$,
/// $A_t = Θ⁻¹(I − e^{−ηtΘ})$),
///
/// $$\text{mean} = Θ_\* A_t Y,$$
///
/// $$\text{cov} = K_{\*\*} − Θ_\* A_t K_\*ᵀ − K_\* A_t Θ_\*ᵀ + Θ_\* A_t K A_t Θ_\*ᵀ,$$
///
/// and on the training points $\text{mean} = (I − e^{−ηtΘ}) Y$, $\text{cov} = e^{−ηtΘ} K e^{−ηtΘ}$.
/// The kernels are matrices, so any source works: the infinite-width kernels, or
/// Monte Carlo estimates. Time units as for [`GradientFlow`].
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::InfiniteEnsemble;
///
/// # fn main() -> Result<(), ntk::Error> {
/// let ntk = DMatrix::from_row_slice(2, 2, &[2.0, 0.6, 0.6, 1.5]);
/// let nngp = DMatrix::from_row_slice(2, 2, &[1.0, 0.3, 0.3, 0.8]);
/// let y = DMatrix::from_column_slice(2, 1, &[1.0, -1.0]);
/// let ensemble = InfiniteEnsemble::new(&ntk, &nngp, &y, 1.0)?;
/// let at_start = ensemble.train(0.0)?;
/// assert!((at_start.covariance - &nngp).norm() < 1e-14); // f_0 ~ N(0, K)
/// let late = ensemble.train(100.0)?;
/// assert!((late.mean - &y).norm() < 1e-12 && late.covariance.norm() < 1e-12);
/// # Ok(())
/// # }
/// ```
///
/// With the infinite-width kernels of an architecture:
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{infinite_width, Activation, InfiniteEnsemble, MlpSpec};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(2).hidden(1, Activation::Erf).bias_std(0.1);
/// let x = DMatrix::from_fn(6, 2, |i, j| ((i + 2 * j) as f64).sin());
/// let x_test = DMatrix::from_fn(2, 2, |i, j| ((3 * i + j) as f64).cos());
/// let y = DMatrix::from_fn(6, 1, |i, _| (i as f64).cos());
/// let train = infinite_width(&spec, &x, &x)?;
/// let cross = infinite_width(&spec, &x_test, &x)?;
/// let test = infinite_width(&spec, &x_test, &x_test)?;
///
/// let ensemble = InfiniteEnsemble::new(&train.ntk, &train.nngp, &y, 1.0)?;
/// let p = ensemble.test(5.0, &cross.ntk, &cross.nngp, &test.nngp)?;
/// assert_eq!((p.mean.shape(), p.covariance.shape()), ((2, 1), (2, 2)));
/// assert!(p.covariance[(0, 0)] < test.nngp[(0, 0)]); // training reduces the spread
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct InfiniteEnsemble<T: Scalar> {
    flow: GradientFlow<T>,
    nngp_train: DMatrix<T>,
}

impl<T: Scalar> InfiniteEnsemble<T> {
    /// Prepares the ensemble from the train-train NTK $Θ$ and NNGP $K$ ($N × N$), targets
    /// `y_train` ($N × k$) and learning rate `eta` (one eigendecomposition of $Θ$, and the
    /// eigenvalues of $K$ to check that it is a covariance).
    ///
    /// # Errors
    /// As [`GradientFlow::new`]; the same checks (symmetric, positive semi-definite)
    /// apply to `nngp_train`, which must also be $N × N$.
    pub fn new(
        ntk_train: &DMatrix<T>,
        nngp_train: &DMatrix<T>,
        y_train: &DMatrix<T>,
        eta: T,
    ) -> Result<Self> {
        let flow = GradientFlow::new(ntk_train, y_train, eta)?;
        check_symmetric_kernel("nngp_train", nngp_train)?;
        check_rows(
            "nngp_train",
            nngp_train,
            ntk_train.nrows(),
            "as many as ntk_train",
        )?;
        // A covariance: positive semi-definite, or the predicted variances go negative.
        let values = symmetric_eigenvalues(&nngp_train.map(|v| v.to_f64()))?;
        psd_spectrum::<T>("nngp_train", &values, values.len())?;
        Ok(InfiniteEnsemble {
            flow,
            nngp_train: nngp_train.clone(),
        })
    }

    /// The gradient flow on the NTK.
    #[must_use]
    pub fn flow(&self) -> &GradientFlow<T> {
        &self.flow
    }

    /// $V \mathrm{diag}(g(λ)) Vᵀ$ for the horizon `h`.
    fn spectral(
        &self,
        h: Horizon<T>,
        g: impl Fn(&GradientFlow<T>, Horizon<T>, T) -> T,
    ) -> DMatrix<T> {
        let flow = &self.flow;
        let v = &flow.eigenvectors;
        let mut scaled = v.clone();
        for (j, mut col) in scaled.column_iter_mut().enumerate() {
            col *= g(flow, h, flow.eigenvalues[j]);
        }
        scaled * v.transpose()
    }

    /// Mean and covariance on the training points at time `t`:
    /// $(I − e^{−ηtΘ})Y$ and $e^{−ηtΘ} K e^{−ηtΘ}$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN.
    pub fn train(&self, t: T) -> Result<GaussianPrediction<T>> {
        check_time("t", t.to_f64())?;
        let decay = self.spectral(Horizon::Time(t), GradientFlow::decay);
        let y = &self.flow.targets;
        let mean = y - &decay * y;
        let covariance = &decay * &self.nngp_train * &decay;
        Ok(GaussianPrediction { mean, covariance })
    }

    /// The mean on $M$ test points at time `t`, $Θ_\* A_t Y$ ($M × k$), from
    /// `ntk_test_train` = $Θ(x, X)$ ($M × N$). $O(N²k + MNk)$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN; [`Error::ShapeMismatch`]
    /// or [`Error::NonFinite`] if `ntk_test_train` is not a finite $M × N$ matrix.
    pub fn test_mean(&self, t: T, ntk_test_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        let zeros = DMatrix::zeros(ntk_test_train.nrows(), self.flow.k());
        let f0 = DMatrix::zeros(self.flow.n(), self.flow.k());
        self.flow.test(t, &f0, &zeros, ntk_test_train)
    }

    /// Mean and covariance on $M$ test points at time `t`, from the NTK `ntk_test_train`
    /// = $Θ(x, X)$ ($M × N$) and the NNGP kernels `nngp_test_train` = $K(x, X)$ ($M × N$) and
    /// `nngp_test_test` = $K(x, x)$ ($M × M$). $O(MN² + M²N)$.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t` is negative or NaN; [`Error::ShapeMismatch`]
    /// if the kernels do not have the shapes above; [`Error::NonFinite`] on NaN or
    /// infinite entries; [`Error::NotSymmetric`] if `nngp_test_test` is not symmetric.
    pub fn test(
        &self,
        t: T,
        ntk_test_train: &DMatrix<T>,
        nngp_test_train: &DMatrix<T>,
        nngp_test_test: &DMatrix<T>,
    ) -> Result<GaussianPrediction<T>> {
        check_time("t", t.to_f64())?;
        let n = Some((self.flow.n(), "one per training point"));
        let m = ntk_test_train.nrows();
        check_matrix("ntk_test_train", ntk_test_train, None, n)?;
        let m_rows = Some((m, "as many as ntk_test_train"));
        check_matrix("nngp_test_train", nngp_test_train, m_rows, n)?;
        check_symmetric_kernel("nngp_test_test", nngp_test_test)?;
        check_rows(
            "nngp_test_test",
            nngp_test_test,
            m,
            "as many as ntk_test_train",
        )?;
        let a = self.spectral(Horizon::Time(t), GradientFlow::integral);
        // Θ_* A_t: M × N.
        let ta = ntk_test_train * a;
        let mean = &ta * &self.flow.targets;
        let cross = &ta * nngp_test_train.transpose();
        let mut covariance =
            nngp_test_test - &cross - cross.transpose() + &ta * &self.nngp_train * ta.transpose();
        // Symmetrise the round-off.
        covariance = (&covariance + covariance.transpose()) * T::from_f64_lossy(0.5);
        Ok(GaussianPrediction { mean, covariance })
    }
}
