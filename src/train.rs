//! Full-batch gradient descent on the MSE loss, by backpropagation: the real training
//! that [`GradientFlow`](crate::GradientFlow) predicts for wide networks.
//!
//! Each step computes the residual $r = f(X) − Y$, the gradient of
//! $L = \tfrac12 \lVert f(X) − Y \rVert_F^2$ through [`NtkModel::vjp`] ($∇\_θ L = Jᵀ r$) and updates
//! $θ ← θ − η ∇\_θ L$. Linearised around $θ_0$, $s$ such steps give
//! $f_s − Y = (I − ηΘ_0)^s (f_0 − Y)$ with the empirical NTK $Θ_0 = J Jᵀ$ at
//! initialisation: [`GradientFlow::train_gd`](crate::GradientFlow::train_gd).

use nalgebra::{DMatrix, DVector};

use crate::Scalar;
use crate::error::{
    Error, Result, check_cols, check_matrix, check_positive, check_rows, first_non_finite,
};
use crate::model::NtkModel;
use crate::tangent::Tangents;

/// Full-batch gradient descent with a fixed learning rate, recording outputs at
/// chosen steps.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::rand::{rngs::StdRng, SeedableRng};
/// use ntk::{Activation, GradientDescent, MlpSpec};
///
/// # fn main() -> Result<(), ntk::Error> {
/// let mut net = MlpSpec::new(2).hidden(64, Activation::Tanh).init::<f64>(&mut StdRng::seed_from_u64(0))?;
/// let x = DMatrix::from_fn(5, 2, |i, j| ((i + 2 * j) as f64).sin());
/// let y = DMatrix::from_fn(5, 1, |i, _| (i as f64).cos());
/// let x_test = DMatrix::from_fn(2, 2, |i, j| ((i * j) as f64).cos());
///
/// let run = GradientDescent::new(0.1, 200)?.record_every(50)?.fit(&mut net, &x, &y, &x_test)?;
/// assert_eq!(run.steps, vec![0, 50, 100, 150, 200]);
/// assert!(run.losses[4] < run.losses[0]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct GradientDescent<T: Scalar> {
    learning_rate: T,
    steps: usize,
    record: Vec<usize>,
}

/// What [`GradientDescent::train`] records.
#[derive(Clone, Debug, PartialEq)]
pub struct Trajectory<T: Scalar> {
    /// The recorded step counts, increasing (0 = initialisation).
    pub steps: Vec<usize>,
    /// $f(X_{train})$ at each recorded step, $N × k$.
    pub train_outputs: Vec<DMatrix<T>>,
    /// $f(X_{test})$ at each recorded step, $M × k$.
    pub test_outputs: Vec<DMatrix<T>>,
    /// The loss $\tfrac12 \lVert f(X_{train}) − Y \rVert_F^2$ at each recorded step.
    pub losses: Vec<T>,
}

impl<T: Scalar> GradientDescent<T> {
    /// `steps` steps with learning rate `learning_rate` on the sum loss
    /// $\tfrac12 Σ_i \lVert f(x_i) − y_i \rVert^2$, recording the start and the end.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `learning_rate` is finite and $> 0$.
    pub fn new(learning_rate: T, steps: usize) -> Result<Self> {
        check_positive("learning_rate", learning_rate.to_f64())?;
        Ok(GradientDescent {
            learning_rate,
            steps,
            record: vec![0, steps],
        })
    }

    /// Records at every multiple of `every` (and at the last step).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `every` is 0.
    pub fn record_every(mut self, every: usize) -> Result<Self> {
        if every == 0 {
            return Err(Error::InvalidParameter {
                parameter: "every",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        self.record = (0..=self.steps).step_by(every).collect();
        self.record.push(self.steps);
        self.record.dedup();
        Ok(self)
    }

    /// Records exactly at the given step counts (sorted and deduplicated).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if a step exceeds the number of steps.
    pub fn record_at(mut self, steps: &[usize]) -> Result<Self> {
        if let Some(&bad) = steps.iter().find(|&&s| s > self.steps) {
            return Err(Error::InvalidParameter {
                parameter: "record_at",
                value: format!("{bad}"),
                reason: "a recorded step must not exceed the number of steps",
            });
        }
        self.record = steps.to_vec();
        self.record.sort_unstable();
        self.record.dedup();
        Ok(self)
    }

    /// The learning rate $η$.
    #[must_use]
    pub fn learning_rate(&self) -> T {
        self.learning_rate
    }

    /// [`fit`](Self::fit), under its old name.
    ///
    /// # Errors
    /// As [`fit`](Self::fit).
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `fit` (training a network fits it)"
    )]
    pub fn train<M: NtkModel<T> + ?Sized>(
        &self,
        model: &mut M,
        x_train: &DMatrix<T>,
        y_train: &DMatrix<T>,
        x_test: &DMatrix<T>,
    ) -> Result<Trajectory<T>> {
        self.fit(model, x_train, y_train, x_test)
    }

    /// Fits `model` in place to (`x_train`, `y_train`) by gradient descent and records
    /// its outputs on `x_train` and `x_test` (which may have 0 rows) at the chosen
    /// steps. (The flows *predict* outputs on the training and test sets, with
    /// methods named after the set; training a network is *fitting* it.)
    ///
    /// On error the model is restored to the parameters it had at the call.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] if `x_train` or `x_test` does not have the model's
    /// input dimension or `y_train` is not $N × k$; [`Error::NonFinite`] on NaN or
    /// infinite entries; [`Error::NonFiniteResult`] if the model's outputs or tangents
    /// are not finite before any step (nothing to do with the learning rate);
    /// [`Error::InvalidParameter`] (`learning_rate`) if training diverges to
    /// non-finite values after some steps ($η$ above the stable $2/λ_{max}(Θ)$).
    pub fn fit<M: NtkModel<T> + ?Sized>(
        &self,
        model: &mut M,
        x_train: &DMatrix<T>,
        y_train: &DMatrix<T>,
        x_test: &DMatrix<T>,
    ) -> Result<Trajectory<T>> {
        let inputs = Some((model.input_dim(), "the model's input dimension"));
        check_matrix("x_train", x_train, None, inputs)?;
        check_matrix("x_test", x_test, None, inputs)?;
        check_matrix(
            "y_train",
            y_train,
            Some((x_train.nrows(), "one per row of x_train")),
            Some((model.output_dim(), "the model's outputs")),
        )?;
        let start = model.parameters();
        let run = self.run(model, x_train, y_train, x_test, start.clone());
        if run.is_err() {
            model.set_parameters(&start)?;
        }
        run
    }

    /// The steps of [`train`](Self::train) from the parameters `theta`.
    fn run<M: NtkModel<T> + ?Sized>(
        &self,
        model: &mut M,
        x_train: &DMatrix<T>,
        y_train: &DMatrix<T>,
        x_test: &DMatrix<T>,
        mut theta: DVector<T>,
    ) -> Result<Trajectory<T>> {
        let mut run = Trajectory {
            steps: Vec::with_capacity(self.record.len()),
            train_outputs: Vec::with_capacity(self.record.len()),
            test_outputs: Vec::with_capacity(self.record.len()),
            losses: Vec::with_capacity(self.record.len()),
        };
        let mut next = self.record.iter().peekable();
        let mut loss = T::zero();
        for step in 0..=self.steps {
            // After a step, values that stop being finite are the divergence of the
            // training; before any, they are the model's.
            let last_loss = loss;
            let diverged = |e: Error| match e {
                Error::NonFiniteResult { .. } if step > 0 => self.diverged(step, last_loss),
                e => e,
            };
            // One forward pass gives both the outputs and the tangents for Jᵀ r.
            let (f, tangents) = model.forward_with_tangents(x_train).map_err(diverged)?;
            check_rows(
                "forward(x_train)",
                &f,
                y_train.nrows(),
                "one per row of y_train",
            )?;
            check_cols(
                "forward(x_train)",
                &f,
                y_train.ncols(),
                "the outputs, as y_train",
            )?;
            if let Some(i) = first_non_finite(f.as_slice()) {
                return Err(diverged(Error::NonFiniteResult {
                    result: "GradientDescent",
                    reason: format!(
                        "the model's outputs on x_train are not finite before any step \
                         (entry {} of row {}): check the model and its parameters",
                        i / f.nrows().max(1),
                        i % f.nrows().max(1)
                    ),
                }));
            }
            let residual = &f - y_train;
            loss = T::from_f64_lossy(0.5) * residual.norm_squared();
            if next.peek() == Some(&&step) {
                let _ = next.next();
                run.steps.push(step);
                run.losses.push(loss);
                run.test_outputs
                    .push(model.forward(x_test).map_err(diverged)?);
                run.train_outputs.push(f);
            }
            if step == self.steps {
                break;
            }
            let grad = Tangents::new(tangents, x_train.nrows(), model.output_dim())
                .and_then(|t| t.vjp(&residual))
                .map_err(diverged)?;
            theta.axpy(-self.learning_rate, &grad, T::one());
            if first_non_finite(theta.as_slice()).is_some() {
                return Err(self.diverged(step + 1, loss));
            }
            model.set_parameters(&theta)?;
        }
        Ok(run)
    }

    /// The error of a run that diverged at `step`, the loss before it being `loss`.
    fn diverged(&self, step: usize, loss: T) -> Error {
        Error::InvalidParameter {
            parameter: "learning_rate",
            value: format!(
                "{} (the values overflowed at step {step}, after a loss of {:e})",
                self.learning_rate,
                loss.to_f64()
            ),
            reason: "training diverged to non-finite values; use a learning rate below \
                     2/λ_max of the empirical NTK (GradientFlow::max_stable_learning_rate)",
        }
    }
}
