//! The validated normal form of a batch's tangent features: every group's shape
//! checked against the batch's $N$ samples and $k$ outputs, and its features kept as
//! uses, as the output layer's input, or as per-sample gradients (the choice between
//! the two forms of a shared weight is the cost model in the [module
//! documentation](super)).

use nalgebra::DMatrix;

use super::contraction::OutputLayout;
use super::{DenseUse, GroupTangent};
use crate::Scalar;
use crate::error::{Error, Result, first_non_finite_entry, shape};
use crate::linalg::try_zeros;

/// What a parameter group is, independent of how its features are stored: two
/// batches' groups contract only if their shapes agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum GroupShape {
    /// $W$ ($n_{out} × n_{in}$), and $b$ ($n_{out}$) if `bias`.
    Dense {
        n_in: usize,
        n_out: usize,
        bias: bool,
    },
    /// $b$ ($n_{out}$) alone.
    Bias { n_out: usize },
    /// $p$ parameters of any shape.
    Jacobian { parameters: usize },
    /// A group without uses: no parameters.
    Empty,
}

impl GroupShape {
    /// Number of (weight, bias) parameters, in this order in the parameter vector
    /// (saturating; [`Tangents::new`] checks that the total fits).
    pub(super) fn parameters(self) -> (usize, usize) {
        match self {
            GroupShape::Dense { n_in, n_out, bias } => {
                (n_in.saturating_mul(n_out), if bias { n_out } else { 0 })
            }
            GroupShape::Bias { n_out } => (0, n_out),
            GroupShape::Jacobian { parameters } => (parameters, 0),
            GroupShape::Empty => (0, 0),
        }
    }
}

/// Gradients given per sample: $∂f_c(x_i)/∂θ_a$ = `scale` · `grads[(i, c·p + a)]` for the $p$
/// parameters $θ$ of a part of a group ($N × k·p$).
#[derive(Clone, Debug)]
pub(super) struct PerSample<T: Scalar> {
    pub(super) scale: T,
    pub(super) grads: DMatrix<T>,
}

/// A weight kept as its uses, with the bias added at the same places.
#[derive(Clone, Debug)]
pub(super) struct Uses<T: Scalar> {
    pub(super) weight_scale: T,
    pub(super) bias_scale: Option<T>,
    /// Validated: every input $N × n_{in}$, every output gradient $N × (k·n_{out})$.
    pub(super) uses: Vec<DenseUse<T>>,
}

/// The output layer: its input, its output gradient being the identity.
#[derive(Clone, Debug)]
pub(super) struct ReadoutTangent<T: Scalar> {
    pub(super) weight_scale: T,
    pub(super) bias_scale: Option<T>,
    /// Validated: $N × n_{in}$.
    pub(super) input: DMatrix<T>,
}

/// How a group's features are stored.
#[derive(Clone, Debug)]
pub(super) enum GroupForm<T: Scalar> {
    /// A weight (and its bias) through its uses: the Gram form.
    Uses(Uses<T>),
    /// The output layer, through its input alone.
    Readout(ReadoutTangent<T>),
    /// The weight part and the bias part as per-sample gradients.
    PerSample {
        weights: Option<PerSample<T>>,
        bias: Option<PerSample<T>>,
    },
}

/// One parameter group in normal form.
#[derive(Clone, Debug)]
pub(super) struct TangentGroup<T: Scalar> {
    pub(super) shape: GroupShape,
    pub(super) form: GroupForm<T>,
}

/// Tangent features validated against a batch of $N$ samples and a model with $k$
/// outputs: the form the Jacobian, the vector–Jacobian product and the kernels are
/// computed from.
#[derive(Clone, Debug)]
pub(crate) struct Tangents<T: Scalar> {
    pub(super) samples: usize,
    pub(super) outputs: usize,
    pub(super) groups: Vec<TangentGroup<T>>,
}

/// Errors unless `m` is `rows` × `cols`; `meaning` says what the shape stands for.
fn expect_shape<T: Scalar>(
    argument: &'static str,
    m: &DMatrix<T>,
    (rows, cols): (usize, usize),
    meaning: &str,
) -> Result<()> {
    if m.shape() == (rows, cols) {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            argument,
            expected: format!("{rows} x {cols} ({meaning})"),
            found: shape(m),
        })
    }
}

/// Errors unless the features `m` (`part` of parameter group `group`) are finite.
fn expect_finite<T: Scalar>(group: usize, part: &str, m: &DMatrix<T>) -> Result<()> {
    match first_non_finite_entry(m) {
        None => Ok(()),
        Some((row, col)) => Err(Error::NonFiniteResult {
            result: "group_tangents",
            reason: format!(
                "parameter group {group}: {part} is {} at row {row}, column {col} (the \
                     model's gradients overflow, or one of its functions returns NaN)",
                m[(row, col)]
            ),
        }),
    }
}

impl<T: Scalar> TangentGroup<T> {
    /// Validates one group of a batch of `n` samples and `k` outputs and brings it to
    /// normal form: a bias without a weight pre-summed, a Jacobian block reshaped to
    /// per-sample rows. Nothing is copied otherwise.
    fn new(tangent: GroupTangent<T>, n: usize, k: usize) -> Result<Self> {
        let empty = TangentGroup {
            shape: GroupShape::Empty,
            form: GroupForm::PerSample {
                weights: None,
                bias: None,
            },
        };
        match tangent {
            GroupTangent::Dense {
                weight_scale,
                bias_scale,
                uses,
            } => {
                let Some(first) = uses.first() else {
                    return Ok(empty);
                };
                let n_in = first.input.ncols();
                let n_out = first.output_grad.ncols() / k;
                for u in &uses {
                    expect_shape(
                        "DenseUse::input",
                        &u.input,
                        (n, n_in),
                        "N samples x the first use's fan-in",
                    )?;
                    expect_shape(
                        "DenseUse::output_grad",
                        &u.output_grad,
                        (n, k * n_out),
                        "N samples x k outputs · the first use's fan-out",
                    )?;
                }
                Ok(TangentGroup {
                    shape: GroupShape::Dense {
                        n_in,
                        n_out,
                        bias: bias_scale.is_some(),
                    },
                    form: GroupForm::Uses(Uses {
                        weight_scale,
                        bias_scale,
                        uses,
                    }),
                })
            }
            GroupTangent::Bias {
                scale,
                output_grads,
            } => {
                let mut grads = output_grads.into_iter();
                let Some(mut sum) = grads.next() else {
                    return Ok(empty);
                };
                let n_out = sum.ncols() / k;
                let meaning = "N samples x k outputs · the first use's width";
                expect_shape("GroupTangent::Bias", &sum, (n, k * n_out), meaning)?;
                for g in grads {
                    expect_shape("GroupTangent::Bias", &g, (n, k * n_out), meaning)?;
                    sum += g;
                }
                Ok(TangentGroup {
                    shape: GroupShape::Bias { n_out },
                    form: GroupForm::PerSample {
                        weights: None,
                        bias: Some(PerSample { scale, grads: sum }),
                    },
                })
            }
            GroupTangent::Readout {
                weight_scale,
                bias_scale,
                input,
            } => {
                let n_in = input.ncols();
                expect_shape(
                    "GroupTangent::Readout",
                    &input,
                    (n, n_in),
                    "N samples x fan-in",
                )?;
                Ok(TangentGroup {
                    shape: GroupShape::Dense {
                        n_in,
                        n_out: k,
                        bias: bias_scale.is_some(),
                    },
                    form: GroupForm::Readout(ReadoutTangent {
                        weight_scale,
                        bias_scale,
                        input,
                    }),
                })
            }
            GroupTangent::Jacobian(j) => {
                let p = j.ncols();
                let rows = n.checked_mul(k).ok_or_else(|| Error::ShapeMismatch {
                    argument: "GroupTangent::Jacobian",
                    expected: format!("{n} x {k} rows (N·k), more than usize counts"),
                    found: shape(&j),
                })?;
                expect_shape(
                    "GroupTangent::Jacobian",
                    &j,
                    (rows, p),
                    "N·k rows, row i·k + c for output c of sample i",
                )?;
                // Row i·k + c of J becomes row i, column block c.
                let grads = DMatrix::from_fn(n, k * p, |i, col| j[(i * k + col / p, col % p)]);
                Ok(TangentGroup {
                    shape: GroupShape::Jacobian { parameters: p },
                    form: GroupForm::PerSample {
                        weights: Some(PerSample {
                            scale: T::one(),
                            grads,
                        }),
                        bias: None,
                    },
                })
            }
        }
    }

    /// Whether this group's kernels cost at most half as many multiply-adds through
    /// per-sample gradients as through its uses (the cost model in the module
    /// documentation).
    fn prefers_per_sample(&self, layout: OutputLayout, k: usize) -> bool {
        let (GroupShape::Dense { n_in, n_out, bias }, GroupForm::Uses(u)) =
            (self.shape, &self.form)
        else {
            return false;
        };
        let q = layout.output_pairs(k) as u128;
        let uses = u.uses.len() as u128;
        let (n_in, n_out) = (n_in as u128, n_out as u128);
        let per_sample = q * n_out * (n_in + u128::from(bias));
        let gram = uses * uses * (n_in + q * n_out);
        2 * per_sample <= gram
    }

    /// The same group with the per-sample form of its weight and bias.
    pub(super) fn to_per_sample(&self) -> Self {
        match &self.form {
            GroupForm::Uses(u) => TangentGroup {
                shape: self.shape,
                form: GroupForm::PerSample {
                    // Only for two batches that disagree on the number of uses: allocated
                    // as any kernel buffer.
                    weights: u.weight_per_sample(self.shape, |rows, cols| {
                        Some(DMatrix::zeros(rows, cols))
                    }),
                    bias: u.bias_per_sample(),
                },
            },
            GroupForm::Readout(r) => self.with_uses(r).to_per_sample(),
            GroupForm::PerSample { .. } => self.clone(),
        }
    }

    /// The output layer `r` of this group as a dense group with one use, its output
    /// gradient the $N × k^2$ matrix of unit rows $e_c$.
    pub(super) fn with_uses(&self, r: &ReadoutTangent<T>) -> Self {
        let GroupShape::Dense { n_out: k, .. } = self.shape else {
            unreachable!("a readout is a dense group")
        };
        let unit = DMatrix::from_fn(r.input.nrows(), k * k, |_, col| {
            if col / k == col % k {
                T::one()
            } else {
                T::zero()
            }
        });
        TangentGroup {
            shape: self.shape,
            form: GroupForm::Uses(Uses {
                weight_scale: r.weight_scale,
                bias_scale: r.bias_scale,
                uses: vec![DenseUse {
                    input: r.input.clone(),
                    output_grad: unit,
                }],
            }),
        }
    }

    /// Errors unless the features of this group (number `group`) are finite, naming the
    /// part that is not.
    fn check_finite(&self, group: usize) -> Result<()> {
        match &self.form {
            GroupForm::Uses(u) => u.uses.iter().enumerate().try_for_each(|(i, used)| {
                expect_finite(group, &format!("DenseUse::input of use {i}"), &used.input)?;
                let part = format!("DenseUse::output_grad of use {i}");
                expect_finite(group, &part, &used.output_grad)
            }),
            GroupForm::Readout(r) => expect_finite(group, "GroupTangent::Readout", &r.input),
            GroupForm::PerSample { weights, bias } => {
                let (w, b) = match self.shape {
                    GroupShape::Jacobian { .. } => ("GroupTangent::Jacobian", ""),
                    GroupShape::Bias { .. } => ("", "GroupTangent::Bias (summed over its uses)"),
                    _ => (
                        "the weight's per-sample gradients (DenseUse inputs and gradients)",
                        "the bias's gradients (DenseUse::output_grad, summed)",
                    ),
                };
                weights
                    .iter()
                    .try_for_each(|d| expect_finite(group, w, &d.grads))?;
                bias.iter()
                    .try_for_each(|d| expect_finite(group, b, &d.grads))
            }
        }
    }
}

impl<T: Scalar> Uses<T> {
    /// $D$ with $D\[i, c·p + a·n_{in} + b\] = Σ_u G_u\[i, c·n_{out} + a\] X_u\[i, b\]$, scaled by
    /// $s_w$: the weight's gradients per sample ($W$ row-major within each output block).
    /// `allocate(rows, cols)` gives the zero $N × k·p$ matrix to accumulate $D$ in; `None`
    /// if it cannot.
    fn weight_per_sample(
        &self,
        shape: GroupShape,
        allocate: impl FnOnce(usize, usize) -> Option<DMatrix<T>>,
    ) -> Option<PerSample<T>> {
        let GroupShape::Dense { n_in, n_out, .. } = shape else {
            unreachable!("uses belong to a dense group")
        };
        let n = self.uses.first().map_or(0, |u| u.input.nrows());
        let k = self
            .uses
            .first()
            .map_or(0, |u| u.output_grad.ncols() / n_out.max(1));
        let p = n_in * n_out;
        let mut grads = allocate(n, k.checked_mul(p)?)?;
        let uses: Vec<(&[T], &[T])> = self
            .uses
            .iter()
            .map(|u| (u.output_grad.as_slice(), u.input.as_slice()))
            .collect();
        weight_gradients(grads.as_mut_slice(), n, (n_in, n_out), &uses);
        Some(PerSample {
            scale: self.weight_scale,
            grads,
        })
    }

    /// $Σ_u G_u$ scaled by $s_b$: the bias's gradients per sample.
    fn bias_per_sample(&self) -> Option<PerSample<T>> {
        let scale = self.bias_scale?;
        let mut uses = self.uses.iter();
        let mut grads = uses.next()?.output_grad.clone();
        for u in uses {
            grads += &u.output_grad;
        }
        Some(PerSample { scale, grads })
    }

    /// The form of [`TangentGroup::to_per_sample`], consuming the uses (the bias sum reuses
    /// the first output gradient's storage); the uses themselves if $D$ cannot be
    /// allocated.
    fn into_per_sample(self, shape: GroupShape) -> GroupForm<T> {
        let allocate = |rows, cols| try_zeros(rows, cols, "", String::new).ok();
        let Some(weights) = self.weight_per_sample(shape, allocate) else {
            return GroupForm::Uses(self);
        };
        let bias = self.bias_scale.and_then(|scale| {
            let mut uses = self.uses.into_iter();
            let mut grads = uses.next()?.output_grad;
            for u in uses {
                grads += u.output_grad;
            }
            Some(PerSample { scale, grads })
        });
        GroupForm::PerSample {
            weights: Some(weights),
            bias,
        }
    }
}

/// $D\[i, c·p + a·n_{in} + b\]$ += $Σ_u G_u\[i, c·n_{out} + a\] X_u\[i, b\]$ for the uses'
/// $(G_u, X_u)$ given as column-major slices of $N$ rows; $D$ is $N × k·p$, $p = n_{in}·n_{out}$.
/// Column by column of $D$, all uses at once, so that $D$ is written in one pass (its
/// columns are many; the uses' columns are few and stay in cache). Multiversioned
/// (AVX-512, AVX2, baseline; the same IEEE results).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn weight_gradients<T: Scalar>(
    d: &mut [T],
    n: usize,
    (n_in, n_out): (usize, usize),
    uses: &[(&[T], &[T])],
) {
    let p = n_in * n_out;
    if n == 0 || p == 0 {
        return;
    }
    for (block, column) in d.chunks_exact_mut(n).enumerate() {
        // Column block of D is output c, unit a, input b.
        let (c, a, b) = (block / p, block % p / n_in, block % n_in);
        for &(g, x) in uses {
            let g = &g[(c * n_out + a) * n..][..n];
            let x = &x[b * n..][..n];
            for ((d, &g), &x) in column.iter_mut().zip(g).zip(x) {
                *d += g * x;
            }
        }
    }
}

impl<T: Scalar> Tangents<T> {
    /// Validates the tangent features of a batch of `samples` rows for a model with
    /// `outputs` outputs, keeping every group in the form the model gave it.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `outputs` is 0; [`Error::ShapeMismatch`] naming
    /// the malformed part (`DenseUse::input`, `DenseUse::output_grad`,
    /// `GroupTangent::Bias`, `GroupTangent::Jacobian`).
    pub(crate) fn new(
        tangents: Vec<GroupTangent<T>>,
        samples: usize,
        outputs: usize,
    ) -> Result<Self> {
        if outputs == 0 {
            return Err(Error::InvalidParameter {
                parameter: "output_dim",
                value: "0".into(),
                reason: "a model needs at least one output",
            });
        }
        let groups: Vec<TangentGroup<T>> = tangents
            .into_iter()
            .map(|t| TangentGroup::new(t, samples, outputs))
            .collect::<Result<_>>()?;
        let total = groups.iter().try_fold(0_usize, |sum, g| {
            let (w, b) = g.shape.parameters();
            sum.checked_add(w)?.checked_add(b)
        });
        if total.is_none_or(|p| p == usize::MAX) {
            return Err(Error::ShapeMismatch {
                argument: "group_tangents",
                expected: "fewer parameters than usize counts".into(),
                found: format!("{} parameter groups of more", groups.len()),
            });
        }
        Ok(Tangents {
            samples,
            outputs,
            groups,
        })
    }

    /// As [`Tangents::new`], with every weight in the form its kernels in `layout`
    /// cost least in (see the module documentation).
    ///
    /// # Errors
    /// As [`Tangents::new`].
    pub(crate) fn for_kernels(
        tangents: Vec<GroupTangent<T>>,
        samples: usize,
        outputs: usize,
        layout: OutputLayout,
    ) -> Result<Self> {
        let mut t = Self::new(tangents, samples, outputs)?;
        for g in &mut t.groups {
            if g.prefers_per_sample(layout, outputs) {
                let form = std::mem::replace(
                    &mut g.form,
                    GroupForm::PerSample {
                        weights: None,
                        bias: None,
                    },
                );
                if let GroupForm::Uses(u) = form {
                    g.form = u.into_per_sample(g.shape);
                }
            }
        }
        Ok(t)
    }

    /// Errors unless every feature is finite, naming the group and part that is not.
    ///
    /// Not part of [`Tangents::new`]: a NaN or ∞ in a feature always reaches what is
    /// computed from it (products and sums propagate it, ∞ · 0 being NaN), so the
    /// kernels, the Jacobian and the VJP check their results, and search the features
    /// only when a result is not finite, to say which part of the model caused it.
    pub(crate) fn check_finite(&self) -> Result<()> {
        self.groups
            .iter()
            .enumerate()
            .try_for_each(|(group, g)| g.check_finite(group))
    }

    /// `result` (what `what` computed from these features, all finite if `finite`), or
    /// the error naming the non-finite feature (or, if all are finite, the overflow).
    pub(super) fn finite_result<M>(
        &self,
        what: &'static str,
        result: M,
        finite: bool,
    ) -> Result<M> {
        if finite {
            return Ok(result);
        }
        self.check_finite()?;
        Err(Error::NonFiniteResult {
            result: what,
            reason: "the model's tangent features are finite but the result exceeds the range \
                     of the scalar type (its gradients are too large)"
                .into(),
        })
    }

    /// Number of parameters $P$ over all groups.
    pub(crate) fn parameter_count(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                let (w, b) = g.shape.parameters();
                w + b
            })
            .sum()
    }

    /// Errors unless `other` (another batch's features of the same model) has groups
    /// of the same shapes, so that the two contract.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming `group_tangents`.
    pub(crate) fn check_compatible(&self, other: &Tangents<T>) -> Result<()> {
        if self.groups.len() != other.groups.len() {
            return Err(Error::ShapeMismatch {
                argument: "group_tangents",
                expected: format!("{} parameter groups on both batches", self.groups.len()),
                found: format!("{} groups", other.groups.len()),
            });
        }
        for (l, (a, b)) in self.groups.iter().zip(&other.groups).enumerate() {
            if a.shape != b.shape {
                return Err(Error::ShapeMismatch {
                    argument: "group_tangents",
                    expected: format!(
                        "parameter group {l} of the same shape on both batches: {:?}",
                        a.shape
                    ),
                    found: format!("{:?}", b.shape),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tangent::contraction::Scratch;
    use crate::tangent::test_support::{kernel, matrix, rel, shared};

    /// The cost model: per-sample gradients for a convolution-like weight with many
    /// uses, the uses for an MLP layer; `for_kernels` applies it.
    #[test]
    fn the_cheaper_form_is_chosen_per_weight() {
        let conv = shared(2, 384, 128, 1, 16, 0.0);
        let mlp = shared(2, 512, 512, 1, 1, 0.0);
        let t = Tangents::for_kernels(vec![conv, mlp], 2, 1, OutputLayout::Trace).unwrap();
        assert!(matches!(t.groups[0].form, GroupForm::PerSample { .. }));
        assert!(matches!(t.groups[1].form, GroupForm::Uses(_)));
        // With all k² output pairs a weight's per-sample gradients cost k times more
        // (n_in = 8, n_out = 1, k = 4, U = 3, bias: 2·36 ≤ 108 averaged, 2·144 > 216
        // in full).
        let narrow = shared(2, 8, 1, 4, 3, 0.0);
        let trace = Tangents::for_kernels(vec![narrow.clone()], 2, 4, OutputLayout::Trace).unwrap();
        let full = Tangents::for_kernels(vec![narrow], 2, 4, OutputLayout::Full).unwrap();
        assert!(matches!(trace.groups[0].form, GroupForm::PerSample { .. }));
        assert!(matches!(full.groups[0].form, GroupForm::Uses(_)));
    }

    /// A bias used at several places without a weight is the pre-summed Σ_u G_u:
    /// its kernel is s_b² (Σ G₁)(Σ G₂)ᵀ / k and its Jacobian s_b Σ_u G_u.
    #[test]
    fn a_bias_without_weight_is_its_summed_gradients() {
        let (n, k, m) = (5, 2, 3);
        let grads: Vec<_> = (0..3).map(|u| matrix(n, k * m, u as f64)).collect();
        let sum = grads
            .iter()
            .fold(DMatrix::zeros(n, k * m), |acc, g| acc + g);
        let t = Tangents::new(
            vec![GroupTangent::Bias {
                scale: 0.5,
                output_grads: grads,
            }],
            n,
            k,
        )
        .unwrap();
        assert_eq!(t.parameter_count(), m);
        let expected = &sum * sum.transpose() * (0.25 / k as f64);
        let parts = t.group_kernels(&t);
        assert!(parts[0].weights.iter().all(|&v| v == 0.0));
        assert!(rel(parts[0].bias.as_ref().unwrap(), &expected) < 1e-14);
        assert!(rel(&kernel(&t, &t, OutputLayout::Trace), &expected) < 1e-14);
        let j = t.jacobian().unwrap();
        for i in 0..n {
            for c in 0..k {
                for a in 0..m {
                    assert!((j[(i * k + c, a)] - 0.5 * sum[(i, c * m + a)]).abs() < 1e-15);
                }
            }
        }
    }

    /// A NaN in a feature reaches the Jacobian and the VJP, whose errors then name the
    /// group and the part it is in.
    #[test]
    fn non_finite_features_are_named_where_they_surface() {
        let mut bad = shared(4, 3, 2, 1, 2, 0.0);
        if let GroupTangent::Dense { uses, .. } = &mut bad {
            uses[1].output_grad[(2, 1)] = f64::NAN;
        }
        let t = Tangents::new(vec![shared(4, 3, 2, 1, 1, 1.0), bad], 4, 1).unwrap();
        let named = |r: Result<()>| match r {
            Err(Error::NonFiniteResult { reason, .. }) => {
                reason.contains("parameter group 1") && reason.contains("output_grad of use 1")
            }
            _ => false,
        };
        assert!(named(t.check_finite()));
        assert!(named(t.jacobian().map(|_| ())));
        assert!(named(t.vjp(&DMatrix::zeros(4, 1)).map(|_| ())));
        let mut out = DMatrix::zeros(4, 4);
        t.add_kernel(
            &t,
            &mut out.view_mut((0, 0), (4, 4)),
            OutputLayout::Trace,
            &mut Scratch::default(),
        );
        assert!(out.row(2).iter().any(|v| v.is_nan()));
    }

    #[test]
    fn malformed_features_name_the_part() {
        let named = |t: GroupTangent<f64>, n: usize, k: usize| match Tangents::new(vec![t], n, k) {
            Err(Error::ShapeMismatch { argument, .. }) => argument,
            other => panic!("expected a shape error, got {other:?}"),
        };
        let bias = GroupTangent::Bias {
            scale: 1.0,
            output_grads: vec![matrix(3, 4, 0.0), matrix(3, 6, 0.0)],
        };
        assert_eq!(named(bias, 3, 2), "GroupTangent::Bias");
        assert_eq!(
            named(GroupTangent::Jacobian(matrix(3, 2, 0.0)), 3, 2),
            "GroupTangent::Jacobian"
        );
        assert!(Tangents::<f64>::new(Vec::new(), 3, 0).is_err());
    }
}
