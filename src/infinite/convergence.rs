//! How fast a finite network's NTK approaches the infinite-width limit.
//!
//! At initialisation the empirical NTK $Θ_n$ of a width-$n$ network fluctuates around $Θ̊$
//! with standard deviation $O(n^{−1/2})$ (Yang 2020, Tensor Programs II, Figure 1), so
//! the relative Frobenius error $\lVert Θ_n − Θ̊ \rVert_F / \lVert Θ̊ \rVert_F$ averaged over
//! seeds falls like $n^{−1/2}$: a slope of $−1/2$ on a log-log plot.

use nalgebra::DMatrix;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::empirical::empirical_ntk;
use crate::error::{Error, Result, check_matrix};

use super::{Architecture, InfiniteWidth};

/// The relative NTK error of one width, over seeds.
#[derive(Clone, Debug, PartialEq)]
pub struct WidthPoint {
    /// The hidden width $n$ (every hidden layer).
    pub width: usize,
    /// $\lVert Θ_n − Θ̊ \rVert_F / \lVert Θ̊ \rVert_F$ for each seed, in the order of the seeds.
    pub errors: Vec<f64>,
    /// Mean of `errors`.
    pub mean: f64,
    /// Sample standard deviation of `errors` (0 for a single seed).
    pub std: f64,
}

/// The result of [`width_convergence`]: the error at every width and the fitted power law.
#[derive(Clone, Debug, PartialEq)]
pub struct WidthStudy {
    /// One point per width, in the order given.
    pub points: Vec<WidthPoint>,
    /// The least-squares slope of $\ln(\text{mean error})$ against $\ln(\text{width})$: about $−1/2$.
    pub slope: f64,
    /// The fit's intercept: mean error $≈ e^{\text{intercept}} · \text{width}^{\text{slope}}$.
    pub intercept: f64,
}

/// Measures $\lVert Θ_n − Θ̊ \rVert_F / \lVert Θ̊ \rVert_F$ for networks of each hidden width
/// in `widths` (every hidden layer of `spec` set to that width), one network per seed
/// (`StdRng::seed_from_u64(seed)`), on the inputs `x` ($N × d$), and fits the log-log
/// slope of the mean error against the width.
///
/// $Θ̊$ is [`infinite_width`](crate::infinite_width)'s NTK, computed once per width
/// (it depends on the width only in the standard parameterization).
///
/// For a [batch-coupled](crate::NtkModel::batch_coupled) program (with
/// [`batch_norm`](crate::Program::batch_norm)), `x` is one batch: $Θ_n$ and $Θ̊$ are
/// the kernels within it, every sample computed with the statistics of the whole of `x`
/// (the finite kernel is never split into row blocks). Its rate is $n^{−1/2}$ for
/// batches of $B ≥ 6$ samples and slower at $B = 4, 5$, where the batch norm's
/// $1/\lVert Ph \rVert^2$ has heavy tails (the module `infinite::batch_norm`'s source
/// documents the measured slopes); the limit's NTK does not exist at $B ≤ 3$ (an error).
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{width_convergence, Activation, Program};
/// # fn main() -> Result<(), ntk::Error> {
/// // Tensor Programs II's BatchNorm network on one batch of 8.
/// let mut p = Program::new(10);
/// let x = p.input(0..10)?;
/// let w = p.weight(1.0)?;
/// let h = p.dense(w, x)?;
/// let z = p.batch_norm(h)?;
/// let a = p.apply(Activation::Relu, z)?;
/// p.output(a, 1.0)?;
/// let x = DMatrix::from_fn(8, 10, |i, j| ((i + 1) as f64 * (j + 2) as f64 * 0.37).sin());
/// let study = width_convergence(&p, &x, &[128, 2048], &[1, 2, 3, 4])?;
/// assert!(study.points[1].mean < study.points[0].mean);
/// # Ok(())
/// # }
/// ```
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::{width_convergence, Activation, MlpSpec};
/// # fn main() -> Result<(), ntk::Error> {
/// let spec = MlpSpec::new(3).hidden(1, Activation::Relu).hidden(1, Activation::Relu);
/// let x = DMatrix::from_fn(6, 3, |i, j| ((i * 3 + j) as f64 * 0.7).sin());
/// let study = width_convergence(&spec, &x, &[64, 256, 1024], &[1, 2, 3, 4])?;
/// assert_eq!(study.points.len(), 3);
/// assert!(study.points[2].mean < study.points[0].mean);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] if `spec` is invalid, fewer than two distinct widths
/// are given, a width is 0, or `seeds` is empty; [`Error::ShapeMismatch`] or
/// [`Error::NonFinite`] for bad inputs `x`; [`Error::NonFiniteResult`] for inputs on
/// which the relative error or its logarithm is undefined ($Θ̊ = 0$, or a mean error of
/// $0$ or $∞$).
pub fn width_convergence<A: Architecture + ?Sized>(
    architecture: &A,
    x: &DMatrix<f64>,
    widths: &[usize],
    seeds: &[u64],
) -> Result<WidthStudy> {
    architecture.describe(None)?;
    let inputs = (architecture.input_dim(), "the network's input dimension");
    check_matrix("x", x, None, Some(inputs))?;
    if seeds.is_empty() {
        return Err(Error::InvalidParameter {
            parameter: "seeds",
            value: "[]".into(),
            reason: "at least one seed is needed",
        });
    }
    if widths.contains(&0) {
        return Err(Error::InvalidParameter {
            parameter: "widths",
            value: format!("{widths:?}"),
            reason: "widths must be at least 1",
        });
    }
    let mut distinct = widths.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 2 {
        return Err(Error::InvalidParameter {
            parameter: "widths",
            value: format!("{widths:?}"),
            reason: "at least two distinct widths are needed to fit a slope",
        });
    }

    let mut points = Vec::with_capacity(widths.len());
    for &width in widths {
        let limit = InfiniteWidth::described(architecture.describe(Some(width))?)?
            .kernels(x, x)?
            .ntk;
        let norm = limit.norm();
        if !(norm > 0.0 && norm.is_finite()) {
            return Err(Error::NonFiniteResult {
                result: "width_convergence",
                reason: format!(
                    "the infinite-width NTK on x has norm {norm:e} at width {width}: relative \
                     errors are undefined (zero inputs without biases give Θ̊ = 0)"
                ),
            });
        }
        let errors = seeds
            .iter()
            .map(|&seed| {
                let net: A::Network<f64> =
                    architecture.init_with_width(width, &mut StdRng::seed_from_u64(seed))?;
                let theta = empirical_ntk(&net, x, x)?;
                Ok((&theta - &limit).norm() / norm)
            })
            .collect::<Result<Vec<f64>>>()?;
        let mean = errors.iter().sum::<f64>() / errors.len() as f64;
        let std = if errors.len() > 1 {
            let ss: f64 = errors.iter().map(|e| (e - mean).powi(2)).sum();
            (ss / (errors.len() - 1) as f64).sqrt()
        } else {
            0.0
        };
        points.push(WidthPoint {
            width,
            errors,
            mean,
            std,
        });
    }
    if let Some(p) = points
        .iter()
        .find(|p| !(p.mean > 0.0 && p.mean.is_finite()))
    {
        return Err(Error::NonFiniteResult {
            result: "width_convergence",
            reason: format!(
                "the mean error at width {} is {:e}: a power law cannot be fitted to it \
                 (on these inputs the finite networks' NTK equals the limit, or overflows)",
                p.width, p.mean
            ),
        });
    }
    let (slope, intercept) = fit_line(
        &points
            .iter()
            .map(|p| ((p.width as f64).ln(), p.mean.ln()))
            .collect::<Vec<_>>(),
    );
    Ok(WidthStudy {
        points,
        slope,
        intercept,
    })
}

/// Least-squares line $y = \text{slope}·x + \text{intercept}$ through `(x, y)` points.
fn fit_line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_line_recovers_a_power_law() {
        let pts: Vec<(f64, f64)> = [64.0_f64, 128.0, 512.0]
            .iter()
            .map(|w| (w.ln(), (3.0 * w.powf(-0.5)).ln()))
            .collect();
        let (slope, intercept) = fit_line(&pts);
        assert!((slope + 0.5).abs() < 1e-12);
        assert!((intercept - 3.0_f64.ln()).abs() < 1e-12);
    }
}
