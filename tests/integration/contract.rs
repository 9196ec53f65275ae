//! The kernel contract: one set of checks that every model's empirical NTK, and every
//! kernel function, goes through (as statrs runs every distribution through
//! `check_continuous_distribution`). Tolerances come from [`prec`].
//!
//! A new model type goes through it with one call:
//!
//! ```ignore
//! let batches = contract::Batches::random(model.input_dim(), seed);
//! let report = contract::check_ntk_model(&model, &batches).expect("my model");
//! ```
//!
//! The model must be `NtkModel<f64> + Clone` (finite differences perturb a copy). If
//! it has kinks (ReLU, LeakyReLU, Abs), choose it so that no pre-activation lies
//! within [`prec::FD_STEP`] of one on [`Batches::finite_difference_batches`].
//!
//! [`check_kernel_fn`] holds the checks that apply to any kernel function
//! κ(x1, x2) (the infinite-width kernels go through it too).

use std::fmt;

use ntk::nalgebra::{DMatrix, DVector};
use ntk::{
    Error, GroupKernel, GroupTangent, NtkModel, empirical_ntk, empirical_ntk_block,
    empirical_ntk_full,
};

use crate::common::{self, rel_err};
use crate::prec;

/// Rows of the batch that spans several row blocks of the blocked computation
/// (blocks have at least 32 rows).
pub const LARGE_ROWS: usize = 70;

/// The inputs a model is checked on.
#[derive(Clone, Debug)]
pub struct Batches {
    /// x1: N1 × d.
    pub x1: DMatrix<f64>,
    /// x2: N2 × d with N2 ≠ N1.
    pub x2: DMatrix<f64>,
    /// x3: N1 × d, the size of x1 with other values (a batch must be told apart from
    /// another by its values, not its shape).
    pub x3: DMatrix<f64>,
    /// A batch spanning several row blocks (no finite differences on it).
    pub large: DMatrix<f64>,
}

impl Batches {
    /// Entries uniform in [−1, 1) from `seed`: N1 = 4, N2 = 3, [`LARGE_ROWS`] large.
    pub fn random(d: usize, seed: u64) -> Self {
        Self::with_large_rows(d, seed, LARGE_ROWS)
    }

    /// As [`Batches::random`], with `large_rows` rows in the large batch.
    pub fn with_large_rows(d: usize, seed: u64, large_rows: usize) -> Self {
        Batches {
            x1: common::inputs(4, d, seed),
            x2: common::inputs(3, d, seed.wrapping_add(1)),
            x3: common::inputs(4, d, seed.wrapping_add(2)),
            large: common::inputs(large_rows, d, seed.wrapping_add(3)),
        }
    }

    /// The batches finite differences are taken on: x1, x2, x3.
    pub fn finite_difference_batches(&self) -> [&DMatrix<f64>; 3] {
        [&self.x1, &self.x2, &self.x3]
    }
}

/// A failed check: which one, and by how much.
#[derive(Clone)]
pub struct Violation {
    /// The check that failed.
    pub check: String,
    /// What was observed.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.detail)
    }
}

impl fmt::Debug for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The worst relative errors seen by a passing contract.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Against finite differences (tolerance [`prec::FINITE_DIFFERENCE`]).
    pub finite_difference: f64,
    /// In exact identities (tolerance [`prec::EXACT_F64`] for the empirical NTK).
    pub exact: f64,
}

fn violation(check: impl Into<String>, detail: impl Into<String>) -> Violation {
    Violation {
        check: check.into(),
        detail: detail.into(),
    }
}

/// `result`, or a violation of `check` carrying the error.
fn ok<T>(check: &str, result: ntk::Result<T>) -> Result<T, Violation> {
    result.map_err(|e| violation(check, format!("returned an error: {e}")))
}

/// Errors unless `got` has the shape of `want` and ‖got − want‖_F ≤ tol ‖want‖_F;
/// records the relative error in `worst`.
fn compare(
    check: &str,
    got: &DMatrix<f64>,
    want: &DMatrix<f64>,
    tol: f64,
    worst: &mut f64,
) -> Result<(), Violation> {
    if got.shape() != want.shape() {
        return Err(violation(
            check,
            format!("shape {:?}, expected {:?}", got.shape(), want.shape()),
        ));
    }
    let e = rel_err(got, want);
    *worst = worst.max(e);
    if e <= tol {
        Ok(())
    } else {
        Err(violation(check, format!("relative error {e:e} > {tol:e}")))
    }
}

/// Errors unless the square `k` is symmetric to `tol` relative to its largest entry.
fn symmetric(check: &str, k: &DMatrix<f64>, tol: f64) -> Result<(), Violation> {
    if k.nrows() != k.ncols() {
        return Err(violation(check, format!("not square: {:?}", k.shape())));
    }
    let asym = (k - k.transpose()).amax() / k.amax().max(f64::MIN_POSITIVE);
    if asym <= tol {
        Ok(())
    } else {
        Err(violation(check, format!("asymmetry {asym:e} > {tol:e}")))
    }
}

/// Errors unless the smallest eigenvalue of the symmetric part of `k` is at least
/// −[`prec::PSD_TRACE_FRACTION`] · |trace|.
fn psd(check: &str, k: &DMatrix<f64>) -> Result<(), Violation> {
    let min = common::min_eigenvalue(k);
    let bound = -prec::PSD_TRACE_FRACTION * k.trace().abs().max(f64::MIN_POSITIVE);
    if min >= bound {
        Ok(())
    } else {
        Err(violation(
            check,
            format!("smallest eigenvalue {min:e} < {bound:e}"),
        ))
    }
}

/// Rows `a` above rows `b`.
fn stack(a: &DMatrix<f64>, b: &DMatrix<f64>) -> DMatrix<f64> {
    let mut s = DMatrix::zeros(a.nrows() + b.nrows(), a.ncols());
    s.rows_mut(0, a.nrows()).copy_from(a);
    s.rows_mut(a.nrows(), b.nrows()).copy_from(b);
    s
}

/// The samples `rows` × `cols` of a kernel with `m` rows and columns per sample.
fn block(
    k: &DMatrix<f64>,
    m: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> DMatrix<f64> {
    k.view(
        (rows.start * m, cols.start * m),
        (rows.len() * m, cols.len() * m),
    )
    .into_owned()
}

/// Named kernels between two batches.
pub type Named = Vec<(String, DMatrix<f64>)>;

/// The checks every kernel function κ(x1, x2) satisfies, on each of the kernels it
/// returns (each with `m` rows and columns per sample, e.g. m = k for a full NTK):
///
/// - shape (N1·m) × (N2·m);
/// - κ(x2, x1) = κ(x1, x2)ᵀ, computed separately;
/// - κ(x1, x1) is symmetric and PSD (also on the large batch);
/// - two different batches of equal size: κ(x1, x3), κ(x3, x1) and κ(x3, x3) are the
///   blocks of κ(S, S) for the stacked S = [x1; x3];
/// - subsets: κ(L\[r\], L\[c\]) is the block (r, c) of κ(L, L) for thirds r, c of the large
///   batch L (among them distinct subsets of equal size);
/// - the x1 = x2 path against the general path: κ(L, L) is the first columns of
///   κ(L, [L; x2]).
///
/// Where a path computes the upper triangle of κ(x, x) and mirrors it, the symmetry
/// check cannot fail; the transposition, equal-size and mirrored-vs-general checks
/// are the ones that can.
///
/// `tol` bounds every comparison (relative Frobenius) and the symmetry. Returns the
/// worst relative error.
pub fn check_kernel_fn(
    batches: &Batches,
    m: usize,
    tol: f64,
    kernel: impl Fn(&DMatrix<f64>, &DMatrix<f64>) -> ntk::Result<Named>,
) -> Result<f64, Violation> {
    let Batches { x1, x2, x3, large } = batches;
    let n1 = x1.nrows();
    let mut worst = 0.0_f64;
    let count = std::cell::Cell::new(None);
    let eval = |what: &str, a: &DMatrix<f64>, b: &DMatrix<f64>| -> Result<Named, Violation> {
        let ks = ok(what, kernel(a, b))?;
        let expected = count.get().unwrap_or(ks.len());
        count.set(Some(expected));
        if ks.len() != expected {
            return Err(violation(
                format!("number of kernels of {what}"),
                format!("{}, other batches give {expected}", ks.len()),
            ));
        }
        for (name, k) in &ks {
            if k.shape() != (a.nrows() * m, b.nrows() * m) {
                return Err(violation(
                    format!("{name}: shape of {what}"),
                    format!(
                        "{:?}, expected {:?}",
                        k.shape(),
                        (a.nrows() * m, b.nrows() * m)
                    ),
                ));
            }
        }
        Ok(ks)
    };

    let k12 = eval("κ(x1, x2)", x1, x2)?;
    let k21 = eval("κ(x2, x1)", x2, x1)?;
    let k11 = eval("κ(x1, x1)", x1, x1)?;
    for (((name, a), (_, b)), (_, s)) in k12.iter().zip(&k21).zip(&k11) {
        compare(
            &format!("{name}: κ(x2, x1) = κ(x1, x2)ᵀ"),
            &b.transpose(),
            a,
            tol,
            &mut worst,
        )?;
        symmetric(&format!("{name}: κ(x1, x1) symmetric"), s, tol)?;
        psd(&format!("{name}: κ(x1, x1) PSD"), s)?;
    }

    let s = stack(x1, x3);
    let kss = eval("κ([x1; x3], [x1; x3])", &s, &s)?;
    let k13 = eval("κ(x1, x3)", x1, x3)?;
    let k31 = eval("κ(x3, x1)", x3, x1)?;
    let k33 = eval("κ(x3, x3)", x3, x3)?;
    let (first, second) = (0..n1, n1..2 * n1);
    for (i, (name, whole)) in kss.iter().enumerate() {
        for (what, part, r, c) in [
            ("κ(x1, x3)", &k13[i].1, &first, &second),
            ("κ(x3, x1)", &k31[i].1, &second, &first),
            ("κ(x3, x3)", &k33[i].1, &second, &second),
            ("κ(x1, x1)", &k11[i].1, &first, &first),
        ] {
            compare(
                &format!("{name}: {what} (equal sizes) = block of κ([x1; x3], [x1; x3])"),
                part,
                &block(whole, m, r.clone(), c.clone()),
                tol,
                &mut worst,
            )?;
        }
    }

    let nl = large.nrows();
    let kll = eval("κ(L, L)", large, large)?;
    let wider = stack(large, x2);
    let kgen = eval("κ(L, [L; x2])", large, &wider)?;
    let cuts = [0, nl / 3, 2 * nl / 3, nl];
    let thirds: Vec<_> = cuts.windows(2).map(|w| w[0]..w[1]).collect();
    let mut subsets = Vec::new();
    for r in &thirds {
        for c in &thirds {
            let a = large.rows(r.start, r.len()).into_owned();
            let b = large.rows(c.start, c.len()).into_owned();
            subsets.push((r.clone(), c.clone(), eval("κ(L[r], L[c])", &a, &b)?));
        }
    }
    for (i, (name, whole)) in kll.iter().enumerate() {
        symmetric(&format!("{name}: κ(L, L) symmetric"), whole, tol)?;
        psd(&format!("{name}: κ(L, L) PSD"), whole)?;
        compare(
            &format!("{name}: κ(L, L) = first columns of κ(L, [L; x2])"),
            whole,
            &block(&kgen[i].1, m, 0..nl, 0..nl),
            tol,
            &mut worst,
        )?;
        for (r, c, part) in &subsets {
            compare(
                &format!("{name}: κ(L[{r:?}], L[{c:?}]) = block of κ(L, L)"),
                &part[i].1,
                &block(whole, m, r.clone(), c.clone()),
                tol,
                &mut worst,
            )?;
        }
    }
    Ok(worst)
}

/// The parameter count of each group's weights and bias, in the parameter order.
fn group_sizes(tangents: &[GroupTangent<f64>], k: usize) -> Result<Vec<(usize, usize)>, Violation> {
    tangents
        .iter()
        .map(|t| match t {
            GroupTangent::Dense {
                bias_scale, uses, ..
            } => Ok(uses.first().map_or((0, 0), |u| {
                let n_out = u.output_grad.ncols() / k.max(1);
                let bias = if bias_scale.is_some() { n_out } else { 0 };
                (n_out * u.input.ncols(), bias)
            })),
            GroupTangent::Jacobian(j) => Ok((j.ncols(), 0)),
            // The output layer: W (k × n_in) and b (k).
            GroupTangent::Readout {
                bias_scale, input, ..
            } => Ok((k * input.ncols(), if bias_scale.is_some() { k } else { 0 })),
            // A bias on its own: no weight term, n_out bias parameters.
            GroupTangent::Bias { output_grads, .. } => {
                Ok((0, output_grads.first().map_or(0, |g| g.ncols() / k.max(1))))
            }
            other => Err(violation(
                "group_tangents",
                format!("a tangent kind the contract does not know: {other:?}"),
            )),
        })
        .collect()
}

/// Σ_groups (weights + bias).
fn group_sum(parts: &[GroupKernel<f64>], n1: usize, n2: usize) -> DMatrix<f64> {
    parts
        .iter()
        .fold(DMatrix::zeros(n1, n2), |acc, p| acc + p.total())
}

/// `model` with [`NtkModel::group_tangents`] taken from
/// [`NtkModel::forward_with_tangents`], so that its Jacobian is built from the tangents
/// of the shared pass.
struct SharedPass<'a, M>(&'a M);

impl<M: NtkModel<f64>> NtkModel<f64> for SharedPass<'_, M> {
    fn input_dim(&self) -> usize {
        self.0.input_dim()
    }
    fn output_dim(&self) -> usize {
        self.0.output_dim()
    }
    fn parameter_count(&self) -> usize {
        self.0.parameter_count()
    }
    fn parameters(&self) -> DVector<f64> {
        self.0.parameters()
    }
    fn set_parameters(&mut self, _: &DVector<f64>) -> ntk::Result<()> {
        Err(Error::InvalidParameter {
            parameter: "params",
            value: "any".into(),
            reason: "the contract's shared-pass view is read-only",
        })
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        self.0.forward(x)
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        self.0.forward_with_tangents(x).map(|(_, t)| t)
    }
}

/// Runs every check of the contract on `model`:
///
/// 1. **Parameters**: `parameters()` has `parameter_count()` entries.
/// 2. **Jacobian**: `jacobian` is the finite-difference Jacobian J_fd of `forward`
///    (perturbing every parameter), on x1, x2 and x3.
/// 3. **One pass**: `forward_with_tangents` returns `forward`'s outputs, and tangents
///    whose Jacobian is J_fd.
/// 4. **VJP**: `vjp(x1, r)` = J_fdᵀ r (finite differences) and = Jᵀ r (exactly), for a
///    random cotangent r. This is the gradient training uses; shared weights and
///    biases must sum over their uses.
/// 5. **Kernel**: `empirical_ntk_full` = J_fd J_fdᵀ (finite differences) and = J Jᵀ
///    (exactly) for (x1, x2), (x1, x1) and the large batch (several row blocks).
/// 6. **Full vs traced**: `empirical_ntk` is the average of the k diagonal output
///    blocks of `empirical_ntk_full`.
/// 7. **Per group**: each group's `group_kernels` weight and bias terms are the
///    contraction of that group's columns of J (averaged over outputs; compared as
///    Θ + term, so that round-off is measured against the kernel), and they sum
///    to `empirical_ntk`, also on the large batch (blocked total, unblocked parts).
/// 8. **Kernel function**: [`check_kernel_fn`] on the traced kernel, the full kernel
///    and every group's terms (transposition, symmetric PSD, equal-size batches,
///    subsets, the x1 = x2 path against the general one).
/// 9. **Blocks**: `empirical_ntk_block` tiles of the large batch (cut after a third,
///    with a one-row strip) assemble into `empirical_ntk`, and a tile of (x1, x2) is
///    its block.
///
/// # Errors
/// The first violated check, naming it and the error observed.
pub fn check_ntk_model<M: NtkModel<f64> + Clone>(
    model: &M,
    batches: &Batches,
) -> Result<Report, Violation> {
    let mut report = Report::default();
    let Batches { x1, x2, x3, large } = batches;
    let (n1, n2, nl) = (x1.nrows(), x2.nrows(), large.nrows());
    let k = model.output_dim();
    let p = model.parameter_count();
    let fd = prec::FINITE_DIFFERENCE;
    let exact = prec::EXACT_F64;

    // 1. Parameters.
    if model.parameters().len() != p {
        return Err(violation(
            "parameters",
            format!(
                "{} entries, parameter_count() = {p}",
                model.parameters().len()
            ),
        ));
    }

    // 2. Jacobian, on x1, x2, x3 stacked (rows i·k + c).
    let s = stack(&stack(x1, x2), x3);
    let j_fd = common::finite_difference_jacobian(model, &s, prec::FD_STEP);
    let j = ok("jacobian", model.jacobian(&s))?;
    compare(
        "jacobian = finite differences",
        &j,
        &j_fd,
        fd,
        &mut report.finite_difference,
    )?;
    let rows = |m: &DMatrix<f64>, from: usize, len: usize| m.rows(from * k, len * k).into_owned();
    let (j1, j2) = (rows(&j, 0, n1), rows(&j, n1, n2));
    let (f1, f2) = (rows(&j_fd, 0, n1), rows(&j_fd, n1, n2));

    // 3. One pass.
    let (out, _) = ok("forward_with_tangents", model.forward_with_tangents(&s))?;
    let forward = ok("forward", model.forward(&s))?;
    compare(
        "forward_with_tangents outputs = forward",
        &out,
        &forward,
        exact,
        &mut report.exact,
    )?;
    let j_shared = ok(
        "jacobian from forward_with_tangents",
        SharedPass(model).jacobian(&s),
    )?;
    compare(
        "forward_with_tangents tangents: jacobian = finite differences",
        &j_shared,
        &j_fd,
        fd,
        &mut report.finite_difference,
    )?;

    // 4. VJP.
    let r = common::inputs(n1, k, 7);
    let flat = DVector::from_fn(n1 * k, |row, _| r[(row / k, row % k)]);
    let as_column = |v: DVector<f64>| DMatrix::from_column_slice(v.len(), 1, v.as_slice());
    let vjp = as_column(ok("vjp", model.vjp(x1, &r))?);
    compare(
        "vjp = J_fdᵀ r (finite differences)",
        &vjp,
        &as_column(f1.transpose() * &flat),
        fd,
        &mut report.finite_difference,
    )?;
    compare(
        "vjp = Jᵀ r",
        &vjp,
        &as_column(j1.transpose() * &flat),
        exact,
        &mut report.exact,
    )?;

    // 5, 6. The kernel against finite differences and the Jacobian; full vs traced.
    for (what, b, jb, fb) in [("(x1, x2)", x2, &j2, &f2), ("(x1, x1)", x1, &j1, &f1)] {
        let full = ok("empirical_ntk_full", empirical_ntk_full(model, x1, b))?;
        let traced = ok("empirical_ntk", empirical_ntk(model, x1, b))?;
        compare(
            &format!("empirical_ntk_full{what} = J_fd J_fdᵀ"),
            &full,
            &(&f1 * fb.transpose()),
            fd,
            &mut report.finite_difference,
        )?;
        compare(
            &format!("empirical_ntk_full{what} = J Jᵀ"),
            &full,
            &(&j1 * jb.transpose()),
            exact,
            &mut report.exact,
        )?;
        compare(
            &format!("empirical_ntk{what} = output average of empirical_ntk_full"),
            &traced,
            &common::trace_over_outputs(&full, k),
            exact,
            &mut report.exact,
        )?;
    }
    let jl = ok("jacobian", model.jacobian(large))?;
    let full_l = ok(
        "empirical_ntk_full",
        empirical_ntk_full(model, large, large),
    )?;
    compare(
        "empirical_ntk_full(L, L) = J Jᵀ over several row blocks",
        &full_l,
        &(&jl * jl.transpose()),
        exact,
        &mut report.exact,
    )?;

    // 7. Per group.
    let sizes = group_sizes(&ok("group_tangents", model.group_tangents(x1))?, k)?;
    let parts = ok("group_kernels", model.group_kernels(x1, x2))?;
    if parts.len() != sizes.len() {
        return Err(violation(
            "group_kernels",
            format!("{} groups, group_tangents has {}", parts.len(), sizes.len()),
        ));
    }
    let columns = |from: usize, len: usize| {
        let c1 = j1.columns(from, len);
        let c2 = j2.columns(from, len);
        common::trace_over_outputs(&(c1 * c2.transpose()), k)
    };
    // Each term is compared as Θ + term: its round-off is measured against the kernel's
    // size (a term that vanishes in exact arithmetic, e.g. a weight behind a saturated
    // softmax, is round-off of round-off relative to itself).
    let traced12 = ok("empirical_ntk", empirical_ntk(model, x1, x2))?;
    let with_theta = |term: &DMatrix<f64>| term + &traced12;
    let mut offset = 0;
    for (g, (part, &(w, b))) in parts.iter().zip(&sizes).enumerate() {
        compare(
            &format!("group {g} weight term = its Jacobian columns' contraction (plus Θ)"),
            &with_theta(&part.weights),
            &with_theta(&columns(offset, w)),
            exact,
            &mut report.exact,
        )?;
        offset += w;
        match (&part.bias, b) {
            (Some(kb), b) => {
                compare(
                    &format!("group {g} bias term = its Jacobian columns' contraction (plus Θ)"),
                    &with_theta(kb),
                    &with_theta(&columns(offset, b)),
                    exact,
                    &mut report.exact,
                )?;
                offset += b;
            }
            (None, 0) => {}
            (None, b) => {
                return Err(violation(
                    format!("group {g} bias term"),
                    format!("missing, with {b} bias parameters"),
                ));
            }
        }
    }
    if offset != p {
        return Err(violation(
            "groups",
            format!("cover {offset} parameters of {p}"),
        ));
    }
    compare(
        "Σ group_kernels(x1, x2) = empirical_ntk",
        &group_sum(&parts, n1, n2),
        &traced12,
        exact,
        &mut report.exact,
    )?;
    let traced_l = ok("empirical_ntk", empirical_ntk(model, large, large))?;
    let parts_l = ok("group_kernels", model.group_kernels(large, large))?;
    compare(
        "Σ group_kernels(L, L) = empirical_ntk over several row blocks",
        &group_sum(&parts_l, nl, nl),
        &traced_l,
        exact,
        &mut report.exact,
    )?;

    // 8. Kernel-function checks.
    let traced_and_groups = |a: &DMatrix<f64>, b: &DMatrix<f64>| -> ntk::Result<Named> {
        let mut all = vec![("empirical_ntk".to_string(), empirical_ntk(model, a, b)?)];
        for (g, part) in model.group_kernels(a, b)?.into_iter().enumerate() {
            all.push((format!("group {g} weights"), part.weights));
            if let Some(bias) = part.bias {
                all.push((format!("group {g} bias"), bias));
            }
        }
        Ok(all)
    };
    let e = check_kernel_fn(batches, 1, exact, traced_and_groups)?;
    report.exact = report.exact.max(e);
    let full = |a: &DMatrix<f64>, b: &DMatrix<f64>| -> ntk::Result<Named> {
        Ok(vec![(
            "empirical_ntk_full".to_string(),
            empirical_ntk_full(model, a, b)?,
        )])
    };
    let e = check_kernel_fn(batches, k, exact, full)?;
    report.exact = report.exact.max(e);

    // 9. Blocks.
    let cuts = [0, nl / 3, nl / 3 + 1, nl];
    let mut assembled = DMatrix::zeros(nl, nl);
    for r in cuts.windows(2) {
        for c in cuts.windows(2) {
            let tile = ok(
                "empirical_ntk_block",
                empirical_ntk_block(model, large, large, r[0]..r[1], c[0]..c[1]),
            )?;
            if tile.shape() != (r[1] - r[0], c[1] - c[0]) {
                return Err(violation(
                    "empirical_ntk_block",
                    format!("tile {r:?} × {c:?} has shape {:?}", tile.shape()),
                ));
            }
            assembled
                .view_mut((r[0], c[0]), tile.shape())
                .copy_from(&tile);
        }
    }
    compare(
        "empirical_ntk_block tiles assemble into empirical_ntk(L, L)",
        &assembled,
        &traced_l,
        exact,
        &mut report.exact,
    )?;
    let tile = ok(
        "empirical_ntk_block",
        empirical_ntk_block(model, x1, x2, 1..n1, 0..n2 - 1),
    )?;
    compare(
        "empirical_ntk_block(x1, x2) = block of empirical_ntk(x1, x2)",
        &tile,
        &traced12.view((1, 0), (n1 - 1, n2 - 1)).into_owned(),
        exact,
        &mut report.exact,
    )?;
    Ok(report)
}
