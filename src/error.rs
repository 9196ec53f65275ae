//! The crate's one error type.
//!
//! Every public function that takes user data returns [`Result<_, Error>`](Result).
//! Messages name the offending argument and its shape or value.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when calling into `ntk` with user data.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A matrix or vector has the wrong shape.
    ShapeMismatch {
        /// The argument, e.g. `"x1"`.
        argument: &'static str,
        /// What was expected, e.g. `"3 columns (the input dimension)"`.
        expected: String,
        /// What was found, e.g. `"5 x 4"`.
        found: String,
    },
    /// An entry is NaN or infinite.
    NonFinite {
        /// The argument holding the entry.
        argument: &'static str,
        /// Row of the first offending entry.
        row: usize,
        /// Column of the first offending entry.
        col: usize,
    },
    /// A hyperparameter is out of its domain (negative std, zero width, $η ≤ 0$, …).
    InvalidParameter {
        /// The parameter, e.g. `"weight_std"`.
        parameter: &'static str,
        /// Its value, formatted.
        value: String,
        /// The rule it breaks, e.g. `"must be finite and >= 0"`.
        reason: &'static str,
    },
    /// A kernel that must be symmetric is not.
    NotSymmetric {
        /// The argument, e.g. `"theta"`.
        argument: &'static str,
        /// $\max_{i,j} |K_{ij} − K_{ji}| / \sqrt{|K_{ii} K_{jj}|}$ ($∞$ where the asymmetric pair has a
        /// zero diagonal entry).
        relative_asymmetry: f64,
    },
    /// A kernel that must be positive semi-definite has a clearly negative eigenvalue.
    NotPositiveSemidefinite {
        /// The argument, e.g. `"theta_train"`.
        argument: &'static str,
        /// Its smallest eigenvalue.
        smallest_eigenvalue: f64,
        /// Its largest eigenvalue magnitude $\max |λ|$, the scale of the first.
        largest_magnitude: f64,
    },
    /// A result would be NaN or infinite: the computation overflows the scalar type for
    /// these arguments, or a user-supplied function (a custom activation, a model's
    /// tangents) returned NaN or $∞$.
    NonFiniteResult {
        /// What was being computed, e.g. `"empirical_ntk"`.
        result: &'static str,
        /// Where and why, naming the argument or the part of the model responsible.
        reason: String,
    },
    /// A factorisation failed (e.g. Cholesky of a kernel that is not positive definite).
    Factorization {
        /// Which factorisation failed and what to try instead.
        message: String,
    },
    /// A program is valid (its finite network works) but outside what the
    /// infinite-width engine computes, e.g. a nonlinearity of a vector that is not
    /// Gaussian in the limit.
    OutsideLimit {
        /// The variable whose limit cannot be computed.
        variable: usize,
        /// Why, as a clause: e.g. `"it applies Tanh to variable 2, which is not Gaussian
        /// in the limit"`.
        reason: String,
    },
    /// Memory for a result or a network could not be allocated, or its size overflows
    /// `usize`.
    AllocationFailed {
        /// What was being allocated, naming the argument that sized it, e.g.
        /// `"the weights of a program network of width 1e12"`.
        what: String,
        /// Its size, e.g. `"1000000 x 1000000 numbers"`.
        size: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ShapeMismatch {
                argument,
                expected,
                found,
            } => write!(f, "`{argument}` has shape {found}, expected {expected}"),
            Error::NonFinite { argument, row, col } => write!(
                f,
                "`{argument}` has a NaN or infinite entry at row {row}, column {col}"
            ),
            Error::InvalidParameter {
                parameter,
                value,
                reason,
            } => write!(f, "`{parameter}` = {value} is invalid: {reason}"),
            Error::NotSymmetric {
                argument,
                relative_asymmetry,
            } => write!(
                f,
                "`{argument}` is not symmetric: max |K_ij - K_ji| / sqrt|K_ii K_jj| = \
                 {relative_asymmetry:e}"
            ),
            Error::NotPositiveSemidefinite {
                argument,
                smallest_eigenvalue,
                largest_magnitude,
            } => write!(
                f,
                "`{argument}` is not positive semi-definite: its smallest eigenvalue is \
                 {smallest_eigenvalue:e} ({:e} of its largest magnitude {largest_magnitude:e}); \
                 a kernel must be symmetric positive semi-definite",
                smallest_eigenvalue / largest_magnitude
            ),
            Error::NonFiniteResult { result, reason } => {
                write!(f, "`{result}` would not be finite: {reason}")
            }
            Error::Factorization { message } => write!(f, "{message}"),
            Error::OutsideLimit { variable, reason } => write!(
                f,
                "the infinite-width limit of variable {variable} cannot be computed: \
                 {reason}; the finite network (`Program::init`) still works"
            ),
            Error::AllocationFailed { what, size } => write!(
                f,
                "cannot allocate {what}: {size} needs more memory than can be allocated"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Shape of a matrix as `"rows x cols"`, for messages.
pub(crate) fn shape<T: nalgebra::Scalar>(m: &nalgebra::DMatrix<T>) -> String {
    format!("{} x {}", m.nrows(), m.ncols())
}

/// The index of the first NaN or infinite entry of `data`, if any. One vectorised pass
/// ($x − x$ is $0$ for finite $x$ and NaN otherwise, summed in independent lanes) says
/// whether there is one; only then is it looked for.
pub(crate) fn first_non_finite<T: crate::Scalar>(data: &[T]) -> Option<usize> {
    const LANES: usize = 8;
    let mut lanes = [T::zero(); LANES];
    let chunks = data.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            // 0 for finite v, NaN for ±∞ and NaN: the point of the subtraction.
            #[allow(clippy::eq_op)]
            {
                *lane += v - v;
            }
        }
    }
    if lanes.iter().chain(rest).all(|v| v.is_finite()) {
        None
    } else {
        data.iter().position(|v| !v.is_finite())
    }
}

/// (row, column) of the first NaN or infinite entry of `m` (column-major order).
pub(crate) fn first_non_finite_entry<T: crate::Scalar>(
    m: &nalgebra::DMatrix<T>,
) -> Option<(usize, usize)> {
    let rows = m.nrows().max(1);
    first_non_finite(m.as_slice()).map(|k| (k % rows, k / rows))
}

/// Errors unless every entry of `m` is finite.
pub(crate) fn check_finite<T: crate::Scalar>(
    argument: &'static str,
    m: &nalgebra::DMatrix<T>,
) -> Result<()> {
    match first_non_finite_entry(m) {
        None => Ok(()),
        Some((row, col)) => Err(Error::NonFinite { argument, row, col }),
    }
}

/// Errors unless `params` is a finite vector of `count` entries (the argument of
/// [`crate::NtkModel::set_parameters`]).
pub(crate) fn check_parameter_vector<T: crate::Scalar>(
    params: &nalgebra::DVector<T>,
    count: usize,
) -> Result<()> {
    if params.len() != count {
        return Err(Error::ShapeMismatch {
            argument: "params",
            expected: format!("{count} entries (the parameter count)"),
            found: format!("{} entries", params.len()),
        });
    }
    match first_non_finite(params.as_slice()) {
        None => Ok(()),
        Some(row) => Err(Error::NonFinite {
            argument: "params",
            row,
            col: 0,
        }),
    }
}

/// Errors unless `m` has `expected` columns; `what` says what the columns are.
pub(crate) fn check_cols<T: nalgebra::Scalar>(
    argument: &'static str,
    m: &nalgebra::DMatrix<T>,
    expected: usize,
    what: &str,
) -> Result<()> {
    if m.ncols() == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            argument,
            expected: format!("{expected} columns ({what})"),
            found: shape(m),
        })
    }
}

/// Errors unless `x1` and `x2` both have `input_dim` columns and finite entries: the
/// two batches of samples a kernel is computed between.
pub(crate) fn check_inputs<T: crate::Scalar>(
    input_dim: usize,
    x1: &nalgebra::DMatrix<T>,
    x2: &nalgebra::DMatrix<T>,
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

/// The samples `range` of `x`, or an error naming `argument` if the range does not fit.
pub(crate) fn select_rows<T: crate::Scalar>(
    argument: &'static str,
    x: &nalgebra::DMatrix<T>,
    range: std::ops::Range<usize>,
) -> Result<nalgebra::DMatrix<T>> {
    if range.start > range.end || range.end > x.nrows() {
        return Err(Error::InvalidParameter {
            parameter: argument,
            value: format!("{}..{}", range.start, range.end),
            reason: "must be an increasing range within the samples (rows) of its matrix",
        });
    }
    Ok(x.rows(range.start, range.len()).into_owned())
}

/// Errors unless the matrix argument `m` has the expected rows and columns (each
/// `None` for any number, or the number and what it counts) and finite entries.
pub(crate) fn check_matrix<T: crate::Scalar>(
    argument: &'static str,
    m: &nalgebra::DMatrix<T>,
    rows: Option<(usize, &str)>,
    cols: Option<(usize, &str)>,
) -> Result<()> {
    if let Some((expected, what)) = rows {
        check_rows(argument, m, expected, what)?;
    }
    if let Some((expected, what)) = cols {
        check_cols(argument, m, expected, what)?;
    }
    check_finite(argument, m)
}

/// Errors unless `value` is finite and `>= 0` (a standard deviation).
pub(crate) fn check_std(parameter: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            parameter,
            value: format!("{value}"),
            reason: "a standard deviation must be finite and >= 0",
        })
    }
}

/// Errors unless `m` has `expected` rows; `what` says what the rows are.
pub(crate) fn check_rows<T: nalgebra::Scalar>(
    argument: &'static str,
    m: &nalgebra::DMatrix<T>,
    expected: usize,
    what: &str,
) -> Result<()> {
    if m.nrows() == expected {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            argument,
            expected: format!("{expected} rows ({what})"),
            found: shape(m),
        })
    }
}

/// Largest relative asymmetry $|K_{ij} − K_{ji}| / \sqrt{|K_{ii} K_{jj}|}$ accepted for a symmetric
/// kernel.
pub(crate) const SYMMETRY_TOLERANCE: f64 = 1e-8;

/// Errors unless `k` is square, finite and symmetric: every pair within
/// [`SYMMETRY_TOLERANCE`] of the scale of its own entries,
/// $|K_{ij} − K_{ji}| ≤ \text{tolerance} · \sqrt{|K_{ii} K_{jj}|}$ (for a positive semi-definite kernel
/// $|K_{ij}| ≤ \sqrt{K_{ii} K_{jj}}$, so an asymmetry cannot hide under a large diagonal entry
/// elsewhere).
pub(crate) fn check_symmetric_kernel<T: crate::Scalar>(
    argument: &'static str,
    k: &nalgebra::DMatrix<T>,
) -> Result<()> {
    if k.nrows() != k.ncols() {
        return Err(Error::ShapeMismatch {
            argument,
            expected: "a square matrix".into(),
            found: shape(k),
        });
    }
    check_finite(argument, k)?;
    let n = k.nrows();
    let diagonal: Vec<f64> = (0..n).map(|i| k[(i, i)].to_f64().abs().sqrt()).collect();
    // Compare K[i, j] with K[j, i] tile by tile, so both reads stay in cache.
    const TILE: usize = 32;
    let mut relative_asymmetry = 0.0_f64;
    for jb in (0..n).step_by(TILE) {
        for ib in (jb..n).step_by(TILE) {
            for j in jb..(jb + TILE).min(n) {
                for i in ib.max(j + 1)..(ib + TILE).min(n) {
                    let gap = (k[(i, j)].to_f64() - k[(j, i)].to_f64()).abs();
                    if gap > 0.0 {
                        // ∞ when the scale is 0: nothing is symmetric to within 0.
                        relative_asymmetry =
                            relative_asymmetry.max(gap / (diagonal[i] * diagonal[j]));
                    }
                }
            }
        }
    }
    if relative_asymmetry > SYMMETRY_TOLERANCE {
        return Err(Error::NotSymmetric {
            argument,
            relative_asymmetry,
        });
    }
    Ok(())
}

/// Errors unless `value` is finite and `> 0` (a learning rate).
pub(crate) fn check_positive(parameter: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            parameter,
            value: format!("{value}"),
            reason: "must be finite and > 0",
        })
    }
}

/// Errors unless `value` is a time `>= 0` (`+∞` allowed, NaN not).
pub(crate) fn check_time(parameter: &'static str, value: f64) -> Result<()> {
    if value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            parameter,
            value: format!("{value}"),
            reason: "a time must be >= 0 (and not NaN)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised pass finds the first NaN or ∞ wherever it is (in the lanes or
    /// the remainder), and nothing in finite data, huge values included.
    #[test]
    fn first_non_finite_finds_the_first() {
        let mut data: Vec<f64> = (0..37).map(|i| (i as f64 - 18.0) * 1e306).collect();
        data[0] = f64::MAX;
        assert_eq!(first_non_finite(&data), None);
        for (at, bad) in [(0, f64::NAN), (13, f64::INFINITY), (36, f64::NEG_INFINITY)] {
            let mut d = data.clone();
            d[at] = bad;
            d[(at + 5).min(36)] = f64::NAN;
            assert_eq!(first_non_finite(&d), Some(at));
        }
        assert_eq!(first_non_finite::<f32>(&[]), None);
        let m = nalgebra::DMatrix::from_row_slice(2, 2, &[1.0, 2.0, f32::NAN, 4.0]);
        assert_eq!(first_non_finite_entry(&m), Some((1, 0)));
    }
}
