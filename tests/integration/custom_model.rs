//! Models defined outside the crate get their empirical NTK through the `NtkModel`
//! trait: a weight-tied residual network (a weight and a bias used twice), a square
//! weight used twice, a model given by a Jacobian block and a model without
//! parameters all go through the kernel contract, with a control showing that the
//! cross-use terms Σ_{u≠v} are needed. Also: models whose tangent features are
//! malformed (errors, not panics).

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{RngExt, SeedableRng, rngs::StdRng};
use ntk::{DenseUse, Error, GroupTangent, NtkModel, empirical_ntk, empirical_ntk_full};

use crate::common::{self, rel_err};
use crate::contract::{self, Batches, Report};
use crate::prec;

/// A weight-tied residual network with a learned output gain:
///
/// H1 = tanh(s_A X Aᵀ),
/// H2 = H1 + tanh(s_B H1 Bᵀ + s_c 1 cᵀ),
/// H3 = H2 + tanh(s_B H2 Bᵀ + s_c 1 cᵀ)   (the same B and c again),
/// f  = γ · s_V H3 Vᵀ.
///
/// Parameters, in order: A (n × d) row-major, B (n × n) row-major, c (n),
/// V (k × n) row-major, γ. B and c are used twice; γ is given to the crate as an
/// explicit Jacobian block.
#[derive(Clone, Debug)]
struct TiedResidual {
    d: usize,
    n: usize,
    k: usize,
    theta: DVector<f64>,
}

/// Scale of B (with 1/√n).
const B_GAIN: f64 = 0.8;
/// Scale of the bias c.
const C_SCALE: f64 = 0.5;

/// What a forward pass keeps: inputs of each use and the pre-activations.
struct Trace {
    h1: DMatrix<f64>,
    h2: DMatrix<f64>,
    h3: DMatrix<f64>,
    z0: DMatrix<f64>,
    z1: DMatrix<f64>,
    z2: DMatrix<f64>,
    u: DMatrix<f64>,
}

impl TiedResidual {
    fn new(d: usize, n: usize, k: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = n * d + n * n + n + k * n + 1;
        let mut theta = DVector::from_fn(p, |_, _| rng.random_range(-1.7..1.7));
        theta[p - 1] = 1.3;
        TiedResidual { d, n, k, theta }
    }

    fn scales(&self) -> (f64, f64, f64, f64) {
        let (d, n) = (self.d as f64, self.n as f64);
        (1.0 / d.sqrt(), B_GAIN / n.sqrt(), C_SCALE, 1.0 / n.sqrt())
    }

    /// (A, B, c, V, γ) from the parameter vector.
    fn unpack(&self) -> (DMatrix<f64>, DMatrix<f64>, DVector<f64>, DMatrix<f64>, f64) {
        let (d, n, k) = (self.d, self.n, self.k);
        let t = self.theta.as_slice();
        let mut o = 0;
        let mut take = |len: usize| {
            let s = &t[o..o + len];
            o += len;
            s
        };
        let a = DMatrix::from_row_slice(n, d, take(n * d));
        let b = DMatrix::from_row_slice(n, n, take(n * n));
        let c = DVector::from_column_slice(take(n));
        let v = DMatrix::from_row_slice(k, n, take(k * n));
        let gamma = take(1)[0];
        (a, b, c, v, gamma)
    }

    fn check(&self, x: &DMatrix<f64>) -> ntk::Result<()> {
        if x.ncols() != self.d {
            return Err(Error::ShapeMismatch {
                argument: "x",
                expected: format!("{} columns", self.d),
                found: format!("{} x {}", x.nrows(), x.ncols()),
            });
        }
        Ok(())
    }

    fn trace(&self, x: &DMatrix<f64>) -> Trace {
        let (sa, sb, sc, sv) = self.scales();
        let (a, b, c, v, _) = self.unpack();
        let step = |h: &DMatrix<f64>| {
            let mut z = h * b.transpose() * sb;
            for mut row in z.row_iter_mut() {
                row += c.transpose() * sc;
            }
            z
        };
        let z0 = x * a.transpose() * sa;
        let h1 = z0.map(f64::tanh);
        let z1 = step(&h1);
        let h2 = &h1 + z1.map(f64::tanh);
        let z2 = step(&h2);
        let h3 = &h2 + z2.map(f64::tanh);
        let u = &h3 * v.transpose() * sv;
        Trace {
            h1,
            h2,
            h3,
            z0,
            z1,
            z2,
            u,
        }
    }
}

/// 1 − tanh²(z), entrywise.
fn dtanh(z: &DMatrix<f64>) -> DMatrix<f64> {
    z.map(|v| 1.0 - v.tanh() * v.tanh())
}

impl NtkModel<f64> for TiedResidual {
    fn input_dim(&self) -> usize {
        self.d
    }
    fn output_dim(&self) -> usize {
        self.k
    }
    fn parameter_count(&self) -> usize {
        self.theta.len()
    }
    fn parameters(&self) -> DVector<f64> {
        self.theta.clone()
    }
    fn set_parameters(&mut self, params: &DVector<f64>) -> ntk::Result<()> {
        if params.len() != self.theta.len() {
            return Err(Error::ShapeMismatch {
                argument: "params",
                expected: format!("{} entries", self.theta.len()),
                found: format!("{} entries", params.len()),
            });
        }
        self.theta.copy_from(params);
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        self.check(x)?;
        let gamma = self.unpack().4;
        Ok(self.trace(x).u * gamma)
    }

    /// Hand-written backprop, output by output: G = ∂f_c/∂Z for every use.
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        self.check(x)?;
        let (sa, sb, sc, sv) = self.scales();
        let (_, b, _, v, gamma) = self.unpack();
        let (rows, n, k) = (x.nrows(), self.n, self.k);
        let t = self.trace(x);
        let (d0, d1, d2) = (dtanh(&t.z0), dtanh(&t.z1), dtanh(&t.z2));

        let mut g_z0 = DMatrix::zeros(rows, k * n);
        let mut g_z1 = DMatrix::zeros(rows, k * n);
        let mut g_z2 = DMatrix::zeros(rows, k * n);
        let mut g_u = DMatrix::zeros(rows, k * k);
        for c in 0..k {
            // f_c = γ U_c: ∂f_c/∂U = γ e_c; ∂f_c/∂H3 = γ s_V V[c, :].
            for i in 0..rows {
                g_u[(i, c * k + c)] = gamma;
            }
            let g_h3 = DMatrix::from_fn(rows, n, |_, a| gamma * sv * v[(c, a)]);
            let gz2 = g_h3.component_mul(&d2);
            let g_h2 = &g_h3 + &gz2 * &b * sb;
            let gz1 = g_h2.component_mul(&d1);
            let g_h1 = &g_h2 + &gz1 * &b * sb;
            let gz0 = g_h1.component_mul(&d0);
            g_z0.columns_mut(c * n, n).copy_from(&gz0);
            g_z1.columns_mut(c * n, n).copy_from(&gz1);
            g_z2.columns_mut(c * n, n).copy_from(&gz2);
        }
        // ∂f_c/∂γ = U_c: row i·k + c.
        let j_gamma = DMatrix::from_fn(rows * k, 1, |r, _| t.u[(r / k, r % k)]);
        Ok(vec![
            GroupTangent::Dense {
                weight_scale: sa,
                bias_scale: None,
                uses: vec![DenseUse {
                    input: x.clone(),
                    output_grad: g_z0,
                }],
            },
            GroupTangent::Dense {
                weight_scale: sb,
                bias_scale: Some(sc),
                uses: vec![
                    DenseUse {
                        input: t.h1,
                        output_grad: g_z1,
                    },
                    DenseUse {
                        input: t.h2,
                        output_grad: g_z2,
                    },
                ],
            },
            GroupTangent::Dense {
                weight_scale: sv,
                bias_scale: None,
                uses: vec![DenseUse {
                    input: t.h3,
                    output_grad: g_u,
                }],
            },
            GroupTangent::Jacobian(j_gamma),
        ])
    }
}

/// The shape, parameter and forward methods of a wrapper model, passed to the model it
/// wraps (`self.0`): the wrong models below change only their tangents or gradients.
macro_rules! delegate_parameters_and_forward {
    () => {
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
        fn set_parameters(&mut self, params: &DVector<f64>) -> ntk::Result<()> {
            self.0.set_parameters(params)
        }
        fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
            self.0.forward(x)
        }
    };
}

/// The same model, but every use of a shared weight reported as its own parameter
/// group: this drops the cross-use terms Σ_{u≠v} from the kernel (a wrong model).
#[derive(Clone)]
struct WithoutCrossTerms(TiedResidual);

impl NtkModel<f64> for WithoutCrossTerms {
    delegate_parameters_and_forward!();
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        let mut split = Vec::new();
        for t in self.0.group_tangents(x)? {
            match t {
                GroupTangent::Dense {
                    weight_scale,
                    bias_scale,
                    uses,
                } => split.extend(uses.into_iter().map(|u| GroupTangent::Dense {
                    weight_scale,
                    bias_scale,
                    uses: vec![u],
                })),
                other => split.push(other),
            }
        }
        Ok(split)
    }
}

/// f(x) = 1ᵀ (s W tanh(s W x)): one square weight used twice, no bias.
#[derive(Clone)]
struct Tied {
    w: DMatrix<f64>,
}

impl Tied {
    fn scale(&self) -> f64 {
        1.0 / (self.w.ncols() as f64).sqrt()
    }
}

impl NtkModel<f64> for Tied {
    fn input_dim(&self) -> usize {
        self.w.ncols()
    }
    fn output_dim(&self) -> usize {
        1
    }
    fn parameter_count(&self) -> usize {
        self.w.len()
    }
    fn parameters(&self) -> DVector<f64> {
        // W row-major.
        DVector::from_iterator(self.w.len(), self.w.transpose().iter().copied())
    }
    fn set_parameters(&mut self, p: &DVector<f64>) -> ntk::Result<()> {
        let n = self.w.nrows();
        self.w = DMatrix::from_row_slice(n, n, p.as_slice());
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        let s = self.scale();
        let h1 = x * self.w.transpose() * s;
        let h2 = h1.map(f64::tanh) * self.w.transpose() * s;
        Ok(DMatrix::from_fn(x.nrows(), 1, |i, _| h2.row(i).sum()))
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        let s = self.scale();
        let n = self.w.nrows();
        let h1 = x * self.w.transpose() * s;
        let x1 = h1.map(f64::tanh);
        let g2 = DMatrix::from_element(x.nrows(), n, 1.0);
        let g1 = (&g2 * &self.w * s).component_mul(&dtanh(&h1));
        Ok(vec![GroupTangent::Dense {
            weight_scale: s,
            bias_scale: None,
            uses: vec![
                DenseUse {
                    input: x.clone(),
                    output_grad: g1,
                },
                DenseUse {
                    input: x1,
                    output_grad: g2,
                },
            ],
        }])
    }
}

/// f_c(x) = Σ_b θ_{b,c} sin(x_b), described by an explicit Jacobian block.
#[derive(Clone)]
struct SineFeatures {
    theta: DMatrix<f64>, // d × k
}

impl NtkModel<f64> for SineFeatures {
    fn input_dim(&self) -> usize {
        self.theta.nrows()
    }
    fn output_dim(&self) -> usize {
        self.theta.ncols()
    }
    fn parameter_count(&self) -> usize {
        self.theta.len()
    }
    fn parameters(&self) -> DVector<f64> {
        // θ row-major: index b·k + c.
        DVector::from_iterator(self.theta.len(), self.theta.transpose().iter().copied())
    }
    fn set_parameters(&mut self, p: &DVector<f64>) -> ntk::Result<()> {
        let (d, k) = self.theta.shape();
        self.theta = DMatrix::from_row_slice(d, k, p.as_slice());
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        Ok(x.map(f64::sin) * &self.theta)
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        let (d, k) = self.theta.shape();
        let n = x.nrows();
        let j = DMatrix::from_fn(n * k, d * k, |row, col| {
            let (i, c) = (row / k, row % k);
            let (b, c2) = (col / k, col % k);
            if c == c2 { x[(i, b)].sin() } else { 0.0 }
        });
        Ok(vec![GroupTangent::Jacobian(j)])
    }
}

/// Every custom model satisfies the kernel contract: the tied residual network (a
/// weight and a bias used twice, and an explicit Jacobian block; k = 1 and 3), a
/// square weight used twice, a model given wholly by a Jacobian block, and a model
/// without parameters. Among the contract's checks, `vjp` against the
/// finite-difference Jacobian is the one that sees a shared bias's gradient summed
/// over its uses.
#[test]
fn custom_models_satisfy_the_kernel_contract() {
    let check = |label: &str, report: Result<Report, contract::Violation>| {
        let r = report.unwrap_or_else(|v| panic!("{label}: {v}"));
        eprintln!(
            "{label}: contract passed, worst relative error {:.1e} against finite differences, {:.1e} exact",
            r.finite_difference, r.exact
        );
    };
    for (k, seed) in [(1, 1), (3, 2)] {
        let model = TiedResidual::new(3, 6, k, seed);
        let batches = Batches::random(3, 10 + seed);
        check(
            &format!("tied residual, k = {k}"),
            contract::check_ntk_model(&model, &batches),
        );
    }
    let tied = Tied {
        w: common::gaussian(4, 4, 8),
    };
    check(
        "square weight used twice",
        contract::check_ntk_model(&tied, &Batches::random(4, 9)),
    );
    let sine = SineFeatures {
        theta: common::gaussian(3, 2, 11),
    };
    check(
        "Jacobian block",
        contract::check_ntk_model(&sine, &Batches::random(3, 12)),
    );
    check(
        "no parameters",
        contract::check_ntk_model(&NoParameters, &Batches::random(2, 13)),
    );
}

/// The tied residual network with a wrong gradient: the shared bias c keeps only its
/// last use's term (what `b = …` for `b += …` over the uses would give).
#[derive(Clone)]
struct LastUseBiasGradient(TiedResidual);

impl NtkModel<f64> for LastUseBiasGradient {
    delegate_parameters_and_forward!();
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        self.0.group_tangents(x)
    }
    fn vjp(&self, x: &DMatrix<f64>, cotangent: &DMatrix<f64>) -> ntk::Result<DVector<f64>> {
        let mut grad = self.0.vjp(x, cotangent)?;
        let (d, n, k) = (self.0.d, self.0.n, self.0.k);
        let (_, _, sc, _) = self.0.scales();
        let tangents = self.0.group_tangents(x)?;
        let GroupTangent::Dense { uses, .. } = &tangents[1] else {
            unreachable!("group 1 is B and c")
        };
        // c follows A (n × d) and B (n × n); remove every use's term but the last.
        for u in &uses[..uses.len() - 1] {
            for a in 0..n {
                let term: f64 = (0..x.nrows())
                    .flat_map(|i| (0..k).map(move |c| (i, c)))
                    .map(|(i, c)| cotangent[(i, c)] * u.output_grad[(i, c * n + a)])
                    .sum();
                grad[n * d + n * n + a] -= sc * term;
            }
        }
        Ok(grad)
    }
}

/// The contract can fail where the suite once could not: it rejects a shared bias
/// whose gradient keeps only its last use, through its `vjp` check.
#[test]
fn contract_rejects_a_shared_bias_gradient_from_one_use() {
    let wrong = LastUseBiasGradient(TiedResidual::new(3, 6, 2, 5));
    let violation = contract::check_ntk_model(&wrong, &Batches::random(3, 50))
        .expect_err("a wrong gradient must violate the contract");
    assert!(violation.check.starts_with("vjp"), "{violation}");
}

/// The control: without the cross-use terms of the shared B and c the kernel is
/// wrong by far more than the finite-difference tolerance, so the test above is
/// sensitive to them.
#[test]
fn dropping_cross_use_terms_is_detected() {
    for k in [1, 2] {
        let model = TiedResidual::new(3, 6, k, 4);
        let x1 = common::inputs(5, 3, 40);
        let x2 = common::inputs(4, 3, 41);
        let j1 = common::finite_difference_jacobian(&model, &x1, prec::FD_STEP);
        let j2 = common::finite_difference_jacobian(&model, &x2, prec::FD_STEP);
        let fd = &j1 * j2.transpose();
        let wrong = empirical_ntk_full(&WithoutCrossTerms(model.clone()), &x1, &x2).expect("ok");
        let e = rel_err(&wrong, &fd);
        assert!(
            e > 1e3 * prec::FINITE_DIFFERENCE,
            "k = {k}: cross terms only {e:e}"
        );

        // And the difference is exactly the cross terms of B's two uses:
        // s_B² [(X1_1 X2_2ᵀ) ⊙ (G1_1 G2_2ᵀ) + (X1_2 X2_1ᵀ) ⊙ (G1_2 G2_1ᵀ)] + s_c² (…).
        let right = empirical_ntk_full(&model, &x1, &x2).expect("ok");
        let (t1, t2) = (
            model.group_tangents(&x1).expect("ok"),
            model.group_tangents(&x2).expect("ok"),
        );
        let uses = |t: &[GroupTangent<f64>]| match &t[1] {
            GroupTangent::Dense { uses, .. } => uses.clone(),
            _ => unreachable!("group 1 is B"),
        };
        let (u1, u2) = (uses(&t1), uses(&t2));
        let (_, sb, sc, _) = model.scales();
        let n = 6;
        let mut cross = DMatrix::zeros(5 * k, 4 * k);
        for (a, b) in [(0, 1), (1, 0)] {
            let xx = &u1[a].input * u2[b].input.transpose();
            for c in 0..k {
                for e in 0..k {
                    let gg = u1[a].output_grad.columns(c * n, n)
                        * u2[b].output_grad.columns(e * n, n).transpose();
                    for i in 0..5 {
                        for j in 0..4 {
                            cross[(i * k + c, j * k + e)] +=
                                (sb * sb * xx[(i, j)] + sc * sc) * gg[(i, j)];
                        }
                    }
                }
            }
        }
        assert!(rel_err(&(&right - &wrong), &cross) <= prec::EXACT_F64);
        eprintln!("tied residual, k = {k}: kernel without cross-use terms is off by {e:.2}");
    }
}

/// A model without parameters, f(x) = (Σ_j x_j) 1ₖ: its NTK is zero.
#[derive(Clone)]
struct NoParameters;

impl NtkModel<f64> for NoParameters {
    fn input_dim(&self) -> usize {
        2
    }
    fn output_dim(&self) -> usize {
        2
    }
    fn parameter_count(&self) -> usize {
        0
    }
    fn parameters(&self) -> DVector<f64> {
        DVector::zeros(0)
    }
    fn set_parameters(&mut self, _: &DVector<f64>) -> ntk::Result<()> {
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        Ok(DMatrix::from_fn(x.nrows(), 2, |i, _| x.row(i).sum()))
    }
    fn group_tangents(&self, _: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        Ok(Vec::new())
    }
}

#[test]
fn model_without_parameters_has_zero_kernel() {
    let x1 = common::inputs(3, 2, 0);
    let x2 = common::inputs(300, 2, 1);
    assert_eq!(
        empirical_ntk(&NoParameters, &x1, &x2).expect("ok"),
        DMatrix::zeros(3, 300)
    );
    assert_eq!(
        empirical_ntk(&NoParameters, &x2, &x2).expect("ok"),
        DMatrix::zeros(300, 300)
    );
    assert_eq!(
        empirical_ntk_full(&NoParameters, &x1, &x2).expect("ok"),
        DMatrix::zeros(6, 600)
    );
    assert_eq!(NoParameters.jacobian(&x1).expect("ok").shape(), (6, 0));
    assert!(NoParameters.group_kernels(&x1, &x2).expect("ok").is_empty());
    // Input checks still apply.
    assert!(empirical_ntk(&NoParameters, &x1, &common::inputs(2, 3, 0)).is_err());
}

/// The ways a model's tangent features can be malformed.
#[derive(Clone, Copy, Debug)]
enum Defect {
    /// A use whose input has the wrong number of rows.
    InputRows,
    /// A second use whose input has a different width from the first.
    SecondUseWidth,
    /// An output gradient whose width is not a multiple of k.
    GradWidth,
    /// A Jacobian block with the wrong number of rows.
    JacobianRows,
    /// A dense group with no uses at all (no parameters: contributes nothing).
    NoUses,
    /// Tangents whose shape depends on the batch: a wider input on 2-row batches.
    WidthDependsOnBatch,
    /// Tangents whose group count depends on the batch: one group fewer on 2-row batches.
    GroupsDependOnBatch,
}

/// A linear model f_c(x) = w · x for both outputs c (k = 2, d = 3, w = 1) that
/// reports defective tangents.
#[derive(Clone)]
struct Malformed(Defect);

impl NtkModel<f64> for Malformed {
    fn input_dim(&self) -> usize {
        3
    }
    fn output_dim(&self) -> usize {
        2
    }
    fn parameter_count(&self) -> usize {
        3
    }
    fn parameters(&self) -> DVector<f64> {
        DVector::from_element(3, 1.0)
    }
    fn set_parameters(&mut self, _: &DVector<f64>) -> ntk::Result<()> {
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        Ok(DMatrix::from_fn(x.nrows(), 2, |i, _| x.row(i).sum()))
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        let n = x.nrows();
        // One unit (n_out = 1) read by both outputs: ∂f_c/∂h = 1, G is N × (k·1).
        let grad = DMatrix::from_fn(n, 2, |_, _| 1.0);
        let good = DenseUse {
            input: x.clone(),
            output_grad: grad.clone(),
        };
        let dense = |uses: Vec<DenseUse<f64>>| GroupTangent::Dense {
            weight_scale: 1.0,
            bias_scale: None,
            uses,
        };
        Ok(match self.0 {
            Defect::InputRows => vec![dense(vec![DenseUse {
                input: DMatrix::zeros(n + 1, 3),
                output_grad: grad,
            }])],
            Defect::SecondUseWidth => vec![dense(vec![
                good,
                DenseUse {
                    input: DMatrix::zeros(n, 4),
                    output_grad: grad,
                },
            ])],
            Defect::GradWidth => vec![dense(vec![DenseUse {
                input: x.clone(),
                output_grad: DMatrix::zeros(n, 3),
            }])],
            Defect::JacobianRows => vec![
                dense(vec![good]),
                GroupTangent::Jacobian(DMatrix::zeros(n, 2)),
            ],
            Defect::NoUses => vec![dense(vec![good]), dense(Vec::new())],
            Defect::WidthDependsOnBatch if n == 2 => vec![dense(vec![DenseUse {
                input: DMatrix::zeros(n, 4),
                output_grad: grad,
            }])],
            Defect::GroupsDependOnBatch if n == 2 => vec![dense(vec![good])],
            Defect::WidthDependsOnBatch => vec![dense(vec![good])],
            Defect::GroupsDependOnBatch => vec![
                dense(vec![good]),
                GroupTangent::Jacobian(DMatrix::zeros(2 * n, 1)),
            ],
        })
    }
}

#[test]
fn malformed_tangents_are_errors_not_panics() {
    let x1 = common::inputs(3, 3, 0);
    let x2 = common::inputs(2, 3, 1);
    let big = common::inputs(300, 3, 2);
    for (defect, argument) in [
        (Defect::InputRows, "DenseUse::input"),
        (Defect::SecondUseWidth, "DenseUse::input"),
        (Defect::GradWidth, "DenseUse::output_grad"),
        (Defect::JacobianRows, "GroupTangent::Jacobian"),
    ] {
        let m = Malformed(defect);
        let is_expected = |r: ntk::Result<DMatrix<f64>>| match r {
            Err(Error::ShapeMismatch { argument: a, .. }) => a == argument,
            _ => false,
        };
        assert!(is_expected(empirical_ntk(&m, &x1, &x2)), "{defect:?}");
        assert!(is_expected(empirical_ntk(&m, &big, &big)), "{defect:?}");
        assert!(is_expected(empirical_ntk_full(&m, &x1, &x2)), "{defect:?}");
        assert!(is_expected(m.jacobian(&x1)), "{defect:?}");
        assert!(m.group_kernels(&x1, &x2).is_err(), "{defect:?}");
    }
    // Tangents that differ between the two batches (x2 has 2 rows) cannot be
    // contracted: an error naming `group_tangents`.
    for defect in [Defect::WidthDependsOnBatch, Defect::GroupsDependOnBatch] {
        let m = Malformed(defect);
        let named = |r: ntk::Result<DMatrix<f64>>| match r {
            Err(Error::ShapeMismatch { argument, .. }) => argument == "group_tangents",
            _ => false,
        };
        assert!(named(empirical_ntk(&m, &x1, &x2)), "{defect:?}");
        assert!(named(empirical_ntk_full(&m, &x2, &big)), "{defect:?}");
        assert!(m.group_kernels(&x1, &x2).is_err(), "{defect:?}");
        // Each batch on its own is consistent.
        assert!(empirical_ntk(&m, &x1, &big).is_ok(), "{defect:?}");
    }
    // A group without uses has no parameters and adds nothing.
    let m = Malformed(Defect::NoUses);
    let theta = empirical_ntk(&m, &x1, &x2).expect("a group without uses is empty");
    let expected = &x1 * x2.transpose();
    assert!(rel_err(&theta, &expected) <= prec::EXACT_F64);
    assert_eq!(m.jacobian(&x1).expect("ok").shape(), (6, 3));
}

/// A model written against the deprecated `layer_tangents` still works for one release
/// (its kernel equals the same model's under the new name), and one that implements
/// neither name is an error, not a recursion.
#[test]
#[allow(deprecated)]
fn models_written_against_the_old_name_still_work() {
    struct OldName(SineFeatures);
    impl NtkModel<f64> for OldName {
        delegate_parameters_and_forward!();
        fn layer_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<ntk::LayerTangent<f64>>> {
            self.0.group_tangents(x)
        }
    }
    struct Neither(SineFeatures);
    impl NtkModel<f64> for Neither {
        delegate_parameters_and_forward!();
    }
    let theta = DMatrix::from_fn(3, 2, |b, c| (b as f64 - c as f64 * 0.7).sin());
    let x = common::gaussian(5, 3, 4);
    let new = empirical_ntk(
        &SineFeatures {
            theta: theta.clone(),
        },
        &x,
        &x,
    )
    .unwrap();
    let old = OldName(SineFeatures {
        theta: theta.clone(),
    });
    assert_eq!(empirical_ntk(&old, &x, &x).unwrap(), new);
    assert_eq!(old.layer_kernels(&x, &x).unwrap().len(), 1);
    let err = empirical_ntk(&Neither(SineFeatures { theta }), &x, &x).unwrap_err();
    assert!(err.to_string().contains("group_tangents"), "{err}");
}
