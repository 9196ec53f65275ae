//! The 8 × 8 handwritten digits (scikit-learn's `load_digits`, the UCI optdigits test
//! partition; `examples/data/digits.csv`, see the README there) and kernel regression
//! on one-hot labels, shared by `examples/digits.rs` and `tests/integration/digits.rs`
//! (which includes this file with `#[path]`).
//!
//! Classification follows neural-tangents' `predict.gradient_descent_mse_ensemble` at
//! $t = ∞$ with the prior mean 0: for a kernel $K$ (the NNGP $Σ$ or the NTK $Θ̊$), one-hot
//! training labels $Y$ ($N × 10$) and the relative ridge $r$
//! (`diag_reg`, `diag_reg_absolute_scale=False`),
//!
//! $$f(x) = K(x, X)\,\bigl(K(X, X) + r\,\tfrac{\operatorname{tr} K(X, X)}{N} I\bigr)^{-1} Y,$$
//!
//! and the predicted class is $\arg\max_c f_c(x)$ (one-hot or centred one-hot labels give
//! the same classes: a constant added to $Y$ adds the same to every $f_c$). The ridge
//! $r$ is chosen on a validation split of the training images: fit on the first
//! $N − V$, score the last $V$ (highest accuracy, then lowest squared error), then refit
//! on all $N$ with that $r$.
#![allow(dead_code)]

use std::error::Error;

use ntk::KernelRegression;
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

/// What the loaders and the classifier return.
pub type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The data: no header, 64 pixels (row by row) then the label on each line.
pub const DATA: &str = include_str!("../data/digits.csv");
/// The images' side: 8 × 8 pixels.
pub const SIDE: usize = 8;
/// Pixels per image.
pub const PIXELS: usize = SIDE * SIDE;
/// The largest pixel value (the number of set pixels in a 4 × 4 block).
pub const MAX_PIXEL: u8 = 16;
/// The classes, digits 0–9.
pub const CLASSES: usize = 10;
/// Images in the data.
pub const IMAGES: usize = 1797;
/// The example's split: training images (of which [`N_VALIDATION`] choose the ridge)…
pub const N_TRAIN: usize = 1000;
/// … and test images: all the others.
pub const N_TEST: usize = IMAGES - N_TRAIN;
/// The last training images of the split, held out to choose the ridge.
pub const N_VALIDATION: usize = 200;
/// Relative ridges tried: $r = 10^{e/2}$ for $e$ in −12 … 2 ($10^{-6}$ … $10$).
pub const RIDGES: std::ops::RangeInclusive<i32> = -12..=2;

/// Every relative ridge of [`RIDGES`].
pub fn ridges() -> Vec<f64> {
    RIDGES.map(|e| 10f64.powf(f64::from(e) / 2.0)).collect()
}

/// Images and labels.
#[derive(Clone, Debug)]
pub struct Digits {
    /// One image per row, 64 pixels 0..=16, row by row (one channel: NHWC with C = 1).
    pub pixels: DMatrix<f64>,
    /// The digit of each image, 0–9.
    pub labels: Vec<usize>,
}

impl Digits {
    /// The images `rows` (in that order).
    pub fn images(&self, rows: &[usize]) -> DMatrix<f64> {
        self.pixels.select_rows(rows)
    }

    /// The labels of `rows`.
    pub fn labels_of(&self, rows: &[usize]) -> Vec<usize> {
        rows.iter().map(|&i| self.labels[i]).collect()
    }
}

/// Parses the CSV: each line 64 integer pixels in 0..=16 and a label in 0..=9.
///
/// # Errors
/// A line with another number of fields, a field that is not such an integer, or no
/// lines; the message names the line.
pub fn parse(csv: &str) -> Result<Digits> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in csv.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != PIXELS + 1 {
            return Err(format!(
                "line {} of the digits data has {} fields, expected {} (64 pixels and a label)",
                i + 1,
                fields.len(),
                PIXELS + 1
            )
            .into());
        }
        for (j, field) in fields.iter().enumerate() {
            let value: u8 = field.trim().parse().map_err(|e| {
                format!(
                    "line {}, field {} of the digits data: {field:?} is not an integer ({e})",
                    i + 1,
                    j + 1
                )
            })?;
            let (max, what) = if j < PIXELS {
                (MAX_PIXEL, "a pixel")
            } else {
                (CLASSES as u8 - 1, "a label")
            };
            if value > max {
                return Err(format!(
                    "line {}, field {} of the digits data: {what} is at most {max}, got {value}",
                    i + 1,
                    j + 1
                )
                .into());
            }
            if j < PIXELS {
                pixels.push(f64::from(value));
            } else {
                labels.push(usize::from(value));
            }
        }
    }
    if labels.is_empty() {
        return Err("the digits data has no lines".into());
    }
    Ok(Digits {
        pixels: DMatrix::from_row_slice(labels.len(), PIXELS, &pixels),
        labels,
    })
}

/// The shipped data set, checked to have all [`IMAGES`] images.
///
/// # Errors
/// As [`parse`], or another number of images.
pub fn load() -> Result<Digits> {
    let digits = parse(DATA)?;
    if digits.labels.len() != IMAGES {
        return Err(format!(
            "the digits data has {} images, expected {IMAGES}",
            digits.labels.len()
        )
        .into());
    }
    Ok(digits)
}

/// A train/test split: indices into the images, disjoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Training images; the last [`N_VALIDATION`] of the example's split choose the ridge.
    pub train: Vec<usize>,
    /// Test images.
    pub test: Vec<usize>,
}

/// Shuffles `0..n` with `StdRng::seed_from_u64(seed)` and takes the first `n_train`
/// for training and the next `n_test` for testing.
///
/// # Errors
/// `n_train + n_test > n`, or `n_train == 0`.
pub fn split(n: usize, n_train: usize, n_test: usize, seed: u64) -> Result<Split> {
    if n_train == 0 || n_train + n_test > n {
        return Err(format!(
            "cannot split {n} images into {n_train} training (at least 1) and {n_test} test images"
        )
        .into());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    Ok(Split {
        train: order[..n_train].to_vec(),
        test: order[n_train..n_train + n_test].to_vec(),
    })
}

/// The pixels as one channel, standardised by the mean and standard deviation of all
/// pixels of the `train` images: $(x − μ)/σ$ for every pixel of every image.
///
/// # Errors
/// No training images, or training pixels that are all equal.
pub fn standardise(pixels: &DMatrix<f64>, train: &[usize]) -> Result<DMatrix<f64>> {
    let values: Vec<f64> = train
        .iter()
        .flat_map(|&i| pixels.row(i).iter().copied().collect::<Vec<_>>())
        .collect();
    if values.is_empty() {
        return Err("standardise: no training images".into());
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    if !(std.is_finite() && std > 0.0) {
        return Err(format!("standardise: the training pixels are all {mean}").into());
    }
    Ok(pixels.map(|v| (v - mean) / std))
}

/// One-hot rows: `labels.len() × 10`, 1 in the label's column.
pub fn one_hot(labels: &[usize]) -> DMatrix<f64> {
    DMatrix::from_fn(labels.len(), CLASSES, |i, c| f64::from(labels[i] == c))
}

/// The class of each row of `scores` (its largest entry, the first on ties).
///
/// # Errors
/// A non-finite score.
pub fn classes(scores: &DMatrix<f64>) -> Result<Vec<usize>> {
    scores
        .row_iter()
        .enumerate()
        .map(|(i, row)| {
            if row.iter().any(|v| !v.is_finite()) {
                return Err(format!("the scores of row {i} are not all finite").into());
            }
            Ok((0..row.len()).fold(0, |best, c| if row[c] > row[best] { c } else { best }))
        })
        .collect()
}

/// The fraction of rows of `scores` whose class is `labels`'.
///
/// # Errors
/// As [`classes`]; `labels` of another length than the rows, or no rows.
pub fn accuracy(scores: &DMatrix<f64>, labels: &[usize]) -> Result<f64> {
    if scores.nrows() != labels.len() || labels.is_empty() {
        return Err(format!(
            "accuracy: {} rows of scores for {} labels",
            scores.nrows(),
            labels.len()
        )
        .into());
    }
    let predicted = classes(scores)?;
    let right = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(right as f64 / labels.len() as f64)
}

/// Kernel regression from the prior mean 0 with the relative ridge `ridge`:
/// $K_{*X}(K_{XX} + r\,\operatorname{tr}(K_{XX})/N\,I)^{-1} Y$.
///
/// # Errors
/// As [`KernelRegression::new`] and [`KernelRegression::test`] (shapes, non-finite
/// entries, a kernel that is not positive definite with this ridge), or a non-positive
/// trace.
pub fn predict(
    k_train: &DMatrix<f64>,
    y_train: &DMatrix<f64>,
    k_test_train: &DMatrix<f64>,
    ridge: f64,
) -> Result<DMatrix<f64>> {
    let n = k_train.nrows();
    let mean_diagonal = k_train.trace() / n as f64;
    if !(mean_diagonal.is_finite() && mean_diagonal > 0.0) {
        return Err(
            format!("predict: the training kernel's mean diagonal is {mean_diagonal}").into(),
        );
    }
    let fit = KernelRegression::new(k_train, y_train, ridge * mean_diagonal)?;
    let zeros = |rows| DMatrix::zeros(rows, y_train.ncols());
    Ok(fit.test(&zeros(n), &zeros(k_test_train.nrows()), k_test_train)?)
}

/// A classifier's result.
#[derive(Clone, Debug)]
pub struct Fit {
    /// The relative ridge chosen on validation.
    pub ridge: f64,
    /// Its accuracy on the validation images (fit on the others).
    pub validation: f64,
    /// The accuracy on the test images after refitting on all training images.
    pub test: f64,
}

/// Chooses the relative ridge among `ridges` on the last `n_validation` training
/// images, refits on all training images and scores the test images.
///
/// `k_train` is $K(X, X)$ over the training images ($N × N$), `k_test_train` is
/// $K(X_*, X)$ ($M × N$); `train_labels` and `test_labels` their digits. A ridge whose
/// kernel is singular is skipped; an error only if none is usable.
///
/// # Errors
/// Inconsistent shapes, `n_validation` not in `1..N`, no ridges, or no ridge that fits.
pub fn classify(
    k_train: &DMatrix<f64>,
    k_test_train: &DMatrix<f64>,
    train_labels: &[usize],
    test_labels: &[usize],
    n_validation: usize,
    ridges: &[f64],
) -> Result<Fit> {
    let n = train_labels.len();
    if k_train.shape() != (n, n) || k_test_train.shape() != (test_labels.len(), n) {
        return Err(format!(
            "classify: kernels {:?} and {:?} for {n} training and {} test labels",
            k_train.shape(),
            k_test_train.shape(),
            test_labels.len()
        )
        .into());
    }
    if n_validation == 0 || n_validation >= n || ridges.is_empty() {
        return Err(format!(
            "classify: {n_validation} validation images of {n}, {} ridges",
            ridges.len()
        )
        .into());
    }
    let fit_n = n - n_validation;
    let k_fit = k_train.view((0, 0), (fit_n, fit_n)).into_owned();
    let k_validation = k_train.view((fit_n, 0), (n_validation, fit_n)).into_owned();
    let y_fit = one_hot(&train_labels[..fit_n]);
    let validation_labels = &train_labels[fit_n..];
    let y_validation = one_hot(validation_labels);

    // (right, squared error, ridge): the most right, then the smallest error.
    let mut best: Option<(usize, f64, f64)> = None;
    let mut last_error = None;
    for &ridge in ridges {
        match predict(&k_fit, &y_fit, &k_validation, ridge) {
            Ok(scores) => {
                let right = classes(&scores)?
                    .iter()
                    .zip(validation_labels)
                    .filter(|(p, l)| p == l)
                    .count();
                let error = (&scores - &y_validation).norm_squared();
                if best.is_none_or(|(r, e, _)| right > r || (right == r && error < e)) {
                    best = Some((right, error, ridge));
                }
            }
            Err(e) => last_error = Some(e),
        }
    }
    let Some((right, _, ridge)) = best else {
        return Err(format!(
            "classify: no ridge fits the validation split (the last: {})",
            last_error.map_or_else(String::new, |e| e.to_string())
        )
        .into());
    };
    let validation = right as f64 / n_validation as f64;
    let scores = predict(k_train, &one_hot(train_labels), k_test_train, ridge)?;
    Ok(Fit {
        ridge,
        validation,
        test: accuracy(&scores, test_labels)?,
    })
}
