//! Conversions between Python objects and nalgebra matrices, errors, and the wrapper
//! that runs a computation with the GIL released.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ntk::nalgebra::{DMatrix, DVector};
use numpy::ndarray::{Array1, Array2, ArrayD, Ix2, ShapeBuilder};
use numpy::{PyArray1, PyArray2, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

/// A scalar type of the networks: `f32` or `f64`, a numpy element type.
pub trait Elem: ntk::Scalar + numpy::Element {
    /// numpy's name of the type.
    const NAME: &'static str;
}

impl Elem for f32 {
    const NAME: &'static str = "float32";
}

impl Elem for f64 {
    const NAME: &'static str = "float64";
}

/// The Python exception for an `ntk` error: `MemoryError` for an allocation that
/// cannot be made, `ValueError` (bad shapes, values, hyperparameters) otherwise, with
/// the Rust message.
pub fn error(e: ntk::Error) -> PyErr {
    match e {
        ntk::Error::AllocationFailed { .. } => PyMemoryError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// Runs `f` with the GIL released (other Python threads run meanwhile), mapping its
/// error to a Python exception and a panic, which would be a bug in `ntk`, to a
/// `RuntimeError` instead of unwinding into Python.
pub fn compute<R: Send>(py: Python<'_>, f: impl FnOnce() -> ntk::Result<R> + Send) -> PyResult<R> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(error(e)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in ntk (a bug, please report it): {message}"
            )))
        }
    }
}

/// Maps an `ntk` result to a Python one (for cheap calls that keep the GIL).
pub fn checked<R>(r: ntk::Result<R>) -> PyResult<R> {
    r.map_err(error)
}

/// A shape as Python prints it: `(3, 4)`, `(5,)`, `()`.
pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `obj` as a numpy array of `T`: itself when it already is one, else converted by
/// `numpy.asarray` (lists, other real dtypes, any array-like). Arrays that do not hold
/// real numbers (strings, objects, complex numbers) are a `TypeError`.
fn float_array<'py, T: Elem>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    if let Ok(a) = obj.cast::<PyArrayDyn<T>>() {
        return Ok(a.clone());
    }
    let py = obj.py();
    let arr = py
        .import("numpy")?
        .call_method1("asarray", (obj,))
        .map_err(|e| PyErr::from_type(e.get_type(py), format!("`{name}`: {}", e.value(py))))?;
    let dtype = arr.getattr("dtype")?;
    let kind: String = dtype.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "b" | "i" | "u" | "f") {
        return Err(PyTypeError::new_err(format!(
            "`{name}` must hold real numbers, got {} of dtype {}",
            obj.get_type().name()?,
            dtype.str()?
        )));
    }
    Ok(arr.call_method1("astype", (T::NAME,))?.cast_into()?)
}

/// A 2-D array-like (one row per sample) as a matrix: one copy, whatever the layout
/// (C- or Fortran-ordered, strided) or the real dtype.
pub fn matrix<T: Elem>(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<DMatrix<T>> {
    let a = float_array::<T>(obj, name)?;
    let ro = a.readonly();
    let v = ro.as_array();
    if v.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "`{name}` has shape {}, expected a 2-D array (one row per sample)",
            shape_str(v.shape())
        )));
    }
    let v = v
        .into_dimensionality::<Ix2>()
        .map_err(|e| PyValueError::new_err(format!("`{name}`: {e}")))?;
    let (r, c) = v.dim();
    Ok(if let Some(s) = v.as_slice() {
        DMatrix::from_row_slice(r, c, s)
    } else if let Some(s) = v.t().as_slice() {
        DMatrix::from_column_slice(r, c, s)
    } else {
        DMatrix::from_fn(r, c, |i, j| v[(i, j)])
    })
}

/// A 1-D array-like as a vector.
pub fn vector<T: Elem>(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<DVector<T>> {
    let a = float_array::<T>(obj, name)?;
    let ro = a.readonly();
    let v = ro.as_array();
    if v.ndim() != 1 {
        return Err(PyValueError::new_err(format!(
            "`{name}` has shape {}, expected a 1-D array",
            shape_str(v.shape())
        )));
    }
    Ok(DVector::from_iterator(v.len(), v.iter().copied()))
}

/// The matrix as a numpy array without a copy: it takes over the matrix's buffer
/// (column-major, so the array is Fortran-ordered).
pub fn matrix_out<'py, T: Elem>(py: Python<'py>, m: DMatrix<T>) -> Bound<'py, PyArray2<T>> {
    let (r, c) = m.shape();
    let data: Vec<T> = m.data.into();
    let a = Array2::from_shape_vec((r, c).f(), data).expect("r x c entries");
    PyArray2::from_owned_array(py, a)
}

/// The vector as a 1-D numpy array without a copy.
pub fn vector_out<'py, T: Elem>(py: Python<'py>, v: DVector<T>) -> Bound<'py, PyArray1<T>> {
    let data: Vec<T> = v.data.into();
    PyArray1::from_owned_array(py, Array1::from_vec(data))
}

/// Matrices of shape `(n, k)` stacked into an array of shape `lead + (n, k)` (`lead`
/// multiplies out to the number of matrices); a single matrix with an empty `lead` is
/// returned without a copy.
pub fn stacked_out<'py, T: Elem>(
    py: Python<'py>,
    mats: Vec<DMatrix<T>>,
    lead: &[usize],
    (n, k): (usize, usize),
) -> PyResult<Bound<'py, PyAny>> {
    if lead.is_empty() && mats.len() == 1 {
        let m = mats.into_iter().next().expect("one matrix");
        return Ok(matrix_out(py, m).into_any());
    }
    let mut data = Vec::with_capacity(mats.len() * n * k);
    for m in &mats {
        for i in 0..n {
            data.extend(m.row(i).iter().copied());
        }
    }
    let mut shape = lead.to_vec();
    shape.extend([n, k]);
    let a = ArrayD::from_shape_vec(shape, data)
        .map_err(|e| PyValueError::new_err(format!("stacking the results: {e}")))?;
    Ok(PyArrayDyn::from_owned_array(py, a).into_any())
}

/// Values of `lead` shape as a numpy array (a Python float for an empty `lead`).
pub fn values_out<'py, T: Elem>(
    py: Python<'py>,
    values: Vec<T>,
    lead: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    if lead.is_empty() && values.len() == 1 {
        return Ok(values[0].to_f64().into_pyobject(py)?.into_any());
    }
    let a = ArrayD::from_shape_vec(lead.to_vec(), values)
        .map_err(|e| PyValueError::new_err(format!("stacking the results: {e}")))?;
    Ok(PyArrayDyn::from_owned_array(py, a).into_any())
}

/// Times: a number or an array-like of any shape, flattened, with its shape.
pub fn times(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<(Vec<f64>, Vec<usize>)> {
    if let Ok(t) = obj.extract::<f64>() {
        return Ok((vec![t], Vec::new()));
    }
    let a = float_array::<f64>(obj, name)?;
    let ro = a.readonly();
    let v = ro.as_array();
    Ok((v.iter().copied().collect(), v.shape().to_vec()))
}

/// Step counts: an integer or an array-like of integers of any shape, flattened, with
/// its shape.
pub fn step_counts(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<(Vec<usize>, Vec<usize>)> {
    let py = obj.py();
    let arr = py.import("numpy")?.call_method1("asarray", (obj,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "i" | "u") {
        return Err(PyTypeError::new_err(format!(
            "`{name}` must be an integer or an array of integers, got {}",
            obj.get_type().name()?
        )));
    }
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    let flat: Vec<i128> = arr
        .call_method0("ravel")?
        .call_method0("tolist")?
        .extract()?;
    let steps = flat
        .into_iter()
        .map(|s| {
            usize::try_from(s).map_err(|_| {
                PyValueError::new_err(format!("`{name}` = {s} is invalid: a step count is >= 0"))
            })
        })
        .collect::<PyResult<_>>()?;
    Ok((steps, shape))
}

/// A count (width, dimension, number of steps) from a Python integer: a negative one is
/// a `ValueError` naming the argument.
pub fn count(value: i64, name: &str) -> PyResult<usize> {
    usize::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("`{name}` = {value} is invalid: must be >= 0")))
}

/// A seed: `None` draws one from the operating system.
pub fn seed(value: Option<i128>) -> PyResult<u64> {
    match value {
        None => Ok(ntk::rand::random()),
        Some(s) => u64::try_from(s).map_err(|_| {
            PyValueError::new_err(format!(
                "`seed` = {s} is invalid: must be an integer in 0 ..= 2**64 - 1"
            ))
        }),
    }
}

/// A range of samples `rows` out of `len`: `range(a, b)`, `slice(a, b)` or a pair
/// `(a, b)`, with step 1.
pub fn sample_range(
    obj: &Bound<'_, PyAny>,
    name: &str,
    len: usize,
) -> PyResult<std::ops::Range<usize>> {
    let py = obj.py();
    let builtins = py.import("builtins")?;
    let (start, stop, step): (i64, i64, i64) = if obj.is_instance(&builtins.getattr("slice")?)? {
        obj.call_method1("indices", (len,))?.extract()?
    } else if obj.is_instance(&builtins.getattr("range")?)? {
        (
            obj.getattr("start")?.extract()?,
            obj.getattr("stop")?.extract()?,
            obj.getattr("step")?.extract()?,
        )
    } else if let Ok((a, b)) = obj.extract::<(i64, i64)>() {
        (a, b, 1)
    } else {
        return Err(PyTypeError::new_err(format!(
            "`{name}` must be a range, a slice or a pair (start, stop), got {}",
            obj.get_type().name()?
        )));
    };
    if step != 1 {
        return Err(PyValueError::new_err(format!(
            "`{name}` has step {step}: a block is a contiguous range of samples (step 1)"
        )));
    }
    Ok(count(start, name)?..count(stop, name)?)
}

/// The scalar type named by `dtype` (`numpy.float32`, `"float64"`, a `numpy.dtype`):
/// `true` for float32, `false` for float64.
pub fn is_f32(dtype: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = dtype.py();
    let d = py
        .import("numpy")?
        .call_method1("dtype", (dtype,))
        .map_err(|e| PyTypeError::new_err(format!("`dtype`: {}", e.value(py))))?;
    let name: String = d.getattr("name")?.extract()?;
    match name.as_str() {
        "float32" => Ok(true),
        "float64" => Ok(false),
        other => Err(PyValueError::new_err(format!(
            "`dtype` = {other} is invalid: networks compute in float32 or float64"
        ))),
    }
}
