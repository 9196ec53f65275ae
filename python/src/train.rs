//! `GradientDescent`: real training of a finite network, to compare with its
//! linearisation.

use pyo3::prelude::*;

use crate::convert::{Elem, checked, compute, count, matrix, stacked_out, values_out};
use crate::network::{Network, with_model};

/// Which steps a run records.
#[derive(Clone)]
enum Record {
    /// The start and the end.
    Ends,
    /// Every multiple of this and the end.
    Every(usize),
    /// Exactly these.
    At(Vec<usize>),
}

/// Full-batch gradient descent by backpropagation on the sum loss
/// ½ Σ_i ‖f(x_i) − y_i‖², recording outputs and losses at chosen steps: the real
/// training that GradientFlow predicts for a linearised network.
#[pyclass(module = "ntk", frozen)]
#[derive(Clone)]
pub struct GradientDescent {
    learning_rate: f64,
    steps: usize,
    record: Record,
}

impl GradientDescent {
    /// The Rust run for scalar `T`, validated.
    fn rust<T: Elem>(&self) -> ntk::Result<ntk::GradientDescent<T>> {
        let gd = ntk::GradientDescent::new(T::from_f64_lossy(self.learning_rate), self.steps)?;
        match &self.record {
            Record::Ends => Ok(gd),
            Record::Every(n) => gd.record_every(*n),
            Record::At(s) => gd.record_at(s),
        }
    }

    fn with(&self, record: Record) -> PyResult<Self> {
        let next = GradientDescent {
            record,
            ..self.clone()
        };
        checked(next.rust::<f64>())?;
        Ok(next)
    }
}

/// What ``GradientDescent.train`` records: ``steps`` (list), ``train_outputs``
/// (R × N × k), ``test_outputs`` (R × M × k) and ``losses`` (R) at the R recorded steps.
#[pyclass(module = "ntk", frozen, get_all)]
pub struct Trajectory {
    /// The recorded step counts, increasing (0 = initialisation).
    steps: Vec<usize>,
    /// f(x_train) at each recorded step.
    train_outputs: Py<PyAny>,
    /// f(x_test) at each recorded step.
    test_outputs: Py<PyAny>,
    /// ½‖f(x_train) − y‖² at each recorded step.
    losses: Py<PyAny>,
}

fn trajectory<T: Elem>(
    py: Python<'_>,
    run: ntk::Trajectory<T>,
    (n, m, k): (usize, usize, usize),
) -> PyResult<Trajectory> {
    let r = run.steps.len();
    Ok(Trajectory {
        train_outputs: stacked_out(py, run.train_outputs, &[r], (n, k))?.unbind(),
        test_outputs: stacked_out(py, run.test_outputs, &[r], (m, k))?.unbind(),
        losses: values_out(py, run.losses, &[r])?.unbind(),
        steps: run.steps,
    })
}

#[pymethods]
impl GradientDescent {
    /// `steps` steps with learning rate `learning_rate`, recording the start and the end.
    #[new]
    fn new(learning_rate: f64, steps: i64) -> PyResult<Self> {
        let gd = GradientDescent {
            learning_rate,
            steps: count(steps, "steps")?,
            record: Record::Ends,
        };
        checked(gd.rust::<f64>())?;
        Ok(gd)
    }

    /// The same, recording at every multiple of `every` (and at the last step).
    fn record_every(&self, every: i64) -> PyResult<Self> {
        self.with(Record::Every(count(every, "every")?))
    }

    /// The same, recording exactly at the given step counts.
    fn record_at(&self, steps: Vec<i64>) -> PyResult<Self> {
        let s = steps
            .into_iter()
            .map(|s| count(s, "record_at"))
            .collect::<PyResult<_>>()?;
        self.with(Record::At(s))
    }

    /// The learning rate η.
    #[getter]
    fn learning_rate(&self) -> f64 {
        self.learning_rate
    }

    /// Trains `net` in place on (x_train, y_train), recording its outputs on x_train and
    /// x_test (None: no test points) at the chosen steps. On error the network keeps the
    /// parameters it had.
    #[pyo3(signature = (net, x_train, y_train, x_test=None))]
    fn train(
        &self,
        py: Python<'_>,
        mut net: PyRefMut<'_, Network>,
        x_train: &Bound<'_, PyAny>,
        y_train: &Bound<'_, PyAny>,
        x_test: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Trajectory> {
        with_model!(&mut net.model, |m, T| {
            let x = matrix::<T>(x_train, "x_train")?;
            let y = matrix::<T>(y_train, "y_train")?;
            let xt = match x_test {
                Some(xt) => matrix::<T>(xt, "x_test")?,
                None => ntk::nalgebra::DMatrix::zeros(0, x.ncols()),
            };
            let gd = checked(self.rust::<T>())?;
            let run = compute(py, || gd.fit(m, &x, &y, &xt))?;
            trajectory(py, run, (x.nrows(), xt.nrows(), y.ncols()))
        })
    }
}
