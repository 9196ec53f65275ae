//! [`GradientFlow`]: the closed-form dynamics from one eigendecomposition of $Θ$, at
//! any list of [`Horizon`]s.

use nalgebra::{DMatrix, DVector};

use super::problem::{
    TrainingProblem, check_test_inputs, check_train_outputs, flow_decay, flow_integral,
    psd_spectrum,
};
use crate::Scalar;
use crate::error::{Error, Result, check_time, first_non_finite};
use crate::factor::symmetric_eigen;

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
    pub(super) targets: DMatrix<T>,
    pub(super) eigenvalues: DVector<T>,
    pub(super) eigenvectors: DMatrix<T>,
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
    /// spectrum; [`KernelRegression`](super::KernelRegression) does it without the
    /// eigendecomposition.
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
    pub(super) fn n(&self) -> usize {
        self.targets.nrows()
    }

    /// Number of outputs $k$.
    pub(super) fn k(&self) -> usize {
        self.targets.ncols()
    }

    /// $Vᵀ(f_0 − Y)$, $N × k$.
    fn project(&self, f0_train: &DMatrix<T>) -> Result<DMatrix<T>> {
        check_train_outputs(f0_train, &self.targets)?;
        Ok(self.eigenvectors.tr_mul(&(f0_train - &self.targets)))
    }

    /// The factor of the residual along eigenvalue $λ$: $e^{−ηtλ}$ or $(1 − ηλ)^s$.
    pub(super) fn decay(&self, h: Horizon<T>, lambda: T) -> T {
        match h {
            Horizon::Time(t) => flow_decay(self.eta * t, lambda),
            Horizon::Steps(s) => power(T::one() - self.eta * lambda, s),
        }
    }

    /// The eigenvalue of $Θ⁻¹(I − \text{decay})$: $(1 − e^{−ηtλ})/λ$ or $(1 − (1 − ηλ)^s)/λ$,
    /// continuous at $λ = 0$ ($ηt$, $ηs$); $0$ at $λ = 0$ for $t = ∞$ (pseudo-inverse).
    pub(super) fn integral(&self, h: Horizon<T>, lambda: T) -> T {
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
