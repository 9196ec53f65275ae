//! The scalar types the crate computes in: `f32` and `f64` through one generic path.

use nalgebra::RealField;

/// A real floating-point scalar: `f32` or `f64`.
///
/// An alias over [`RealField`] (which brings nalgebra's fast GEMM for `f32`/`f64`)
/// with the error function the activations need and conversions to and from `f64`.
/// Sealed: only `f32` and `f64` implement it.
pub trait Scalar:
    RealField + Copy + Send + Sync + std::fmt::Debug + std::fmt::Display + sealed::Sealed + 'static
{
    /// `x` converted from `f64`: exact for `f64`, rounded to nearest for `f32` (as
    /// `String::from_utf8_lossy`, the name says the conversion may lose precision).
    fn from_f64_lossy(x: f64) -> Self;
    /// `self` converted to `f64` (exact).
    fn to_f64(self) -> f64;
    /// The error function $\mathrm{erf}(x) = 2/\sqrt{π} ∫₀ˣ e^{−t²} dt$.
    fn erf(self) -> Self;
}

impl Scalar for f64 {
    #[inline]
    fn from_f64_lossy(x: f64) -> Self {
        x
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erf(self)
    }
}

impl Scalar for f32 {
    #[inline]
    fn from_f64_lossy(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn erf(self) -> Self {
        libm::erff(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}
