//! A recurrent network defined outside the crate, described through shared weights
//! and a bias used at every step without a weight of its own
//! ([`GroupTangent::Bias`]): its Jacobian against central finite differences, and its
//! empirical NTK (averaged and with all output pairs, blocked, per group) against
//! J₁ J₂ᵀ. With many steps the input weight is contracted through its per-sample
//! gradients, with few through its uses: both must give the same kernel.

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{RngExt, SeedableRng, rngs::StdRng};
use ntk::{
    DenseUse, Error, GroupTangent, NtkModel, empirical_ntk, empirical_ntk_block, empirical_ntk_full,
};

use crate::common::{finite_difference_jacobian, inputs, rel_err, trace_over_outputs};
use crate::prec;

/// An Elman network over T tokens of dimension m (input d = T·m):
///
/// z_t = s_U x_t Uᵀ + s_W h_{t−1} Wᵀ + s_b 1 bᵀ,  h_t = tanh(z_t),  h_0 = 0,
/// f = s_v h_T vᵀ  (k outputs).
///
/// Parameters, in order: U (n × m), W (n × n), b (n), v (k × n), row-major. U and b
/// are used at every step, W at steps 2..T.
#[derive(Clone, Debug)]
struct Rnn {
    steps: usize,
    m: usize,
    n: usize,
    k: usize,
    theta: DVector<f64>,
}

impl Rnn {
    fn new(steps: usize, m: usize, n: usize, k: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let p = n * m + n * n + n + k * n;
        let theta = DVector::from_fn(p, |_, _| rng.random_range(-1.5..1.5));
        Rnn {
            steps,
            m,
            n,
            k,
            theta,
        }
    }

    /// (s_U, s_W, s_b, s_v).
    fn scales(&self) -> (f64, f64, f64, f64) {
        let (m, n) = (self.m as f64, self.n as f64);
        (1.0 / m.sqrt(), 0.9 / n.sqrt(), 0.4, 1.0 / n.sqrt())
    }

    /// (U, W, b, v).
    fn unpack(&self) -> (DMatrix<f64>, DMatrix<f64>, DVector<f64>, DMatrix<f64>) {
        let (m, n, k) = (self.m, self.n, self.k);
        let t = self.theta.as_slice();
        let u = DMatrix::from_row_slice(n, m, &t[..n * m]);
        let w = DMatrix::from_row_slice(n, n, &t[n * m..n * m + n * n]);
        let b = DVector::from_column_slice(&t[n * m + n * n..n * m + n * n + n]);
        let v = DMatrix::from_row_slice(k, n, &t[n * m + n * n + n..]);
        (u, w, b, v)
    }

    /// The inputs x_t (N × m) of every step and the pre-activations z_t.
    fn run(&self, x: &DMatrix<f64>) -> (Vec<DMatrix<f64>>, Vec<DMatrix<f64>>) {
        let (su, sw, sb, _) = self.scales();
        let (u, w, b, _) = self.unpack();
        let mut h = DMatrix::<f64>::zeros(x.nrows(), self.n);
        let (mut tokens, mut zs) = (Vec::new(), Vec::new());
        for t in 0..self.steps {
            let xt = x.columns(t * self.m, self.m).into_owned();
            let mut z = &xt * u.transpose() * su + &h * w.transpose() * sw;
            for mut row in z.row_iter_mut() {
                row += b.transpose() * sb;
            }
            h = z.map(f64::tanh);
            tokens.push(xt);
            zs.push(z);
        }
        (tokens, zs)
    }
}

impl NtkModel<f64> for Rnn {
    fn input_dim(&self) -> usize {
        self.steps * self.m
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
        self.theta.copy_from(params);
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        if x.ncols() != self.input_dim() {
            return Err(Error::ShapeMismatch {
                argument: "x",
                expected: format!("{} columns", self.input_dim()),
                found: format!("{} x {}", x.nrows(), x.ncols()),
            });
        }
        let (_, zs) = self.run(x);
        let (.., sv) = self.scales();
        let (.., v) = self.unpack();
        let h = zs.last().expect("at least one step").map(f64::tanh);
        Ok(h * v.transpose() * sv)
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        self.forward(x)?;
        let (tokens, zs) = self.run(x);
        let (su, sw, sb, sv) = self.scales();
        let (_, w, _, v) = self.unpack();
        let (nn, n, k) = (x.nrows(), self.n, self.k);
        let hs: Vec<DMatrix<f64>> = zs.iter().map(|z| z.map(f64::tanh)).collect();
        let dtanh = |z: &DMatrix<f64>| z.map(|a| 1.0 - a.tanh() * a.tanh());
        // G_t = ∂f/∂z_t, output c in column block c, from the last step backwards.
        let mut grads = vec![DMatrix::zeros(nn, k * n); self.steps];
        let last = self.steps - 1;
        for c in 0..k {
            let readout = DMatrix::from_fn(nn, n, |_, a| sv * v[(c, a)]);
            let mut g = readout.component_mul(&dtanh(&zs[last]));
            for t in (0..self.steps).rev() {
                grads[t].columns_mut(c * n, n).copy_from(&g);
                if t > 0 {
                    g = (&g * &w * sw).component_mul(&dtanh(&zs[t - 1]));
                }
            }
        }
        let readout_grad = DMatrix::from_fn(
            nn,
            k * k,
            |_, col| {
                if col / k == col % k { 1.0 } else { 0.0 }
            },
        );
        Ok(vec![
            GroupTangent::Dense {
                weight_scale: su,
                bias_scale: None,
                uses: tokens
                    .into_iter()
                    .zip(&grads)
                    .map(|(input, g)| DenseUse {
                        input,
                        output_grad: g.clone(),
                    })
                    .collect(),
            },
            GroupTangent::Dense {
                weight_scale: sw,
                bias_scale: None,
                uses: (1..self.steps)
                    .map(|t| DenseUse {
                        input: hs[t - 1].clone(),
                        output_grad: grads[t].clone(),
                    })
                    .collect(),
            },
            GroupTangent::Bias {
                scale: sb,
                output_grads: grads,
            },
            GroupTangent::Dense {
                weight_scale: sv,
                bias_scale: None,
                uses: vec![DenseUse {
                    input: hs[last].clone(),
                    output_grad: readout_grad,
                }],
            },
        ])
    }
}

/// (steps T, outputs k, width n). With T = 3, n = 16 the recurrent weight W (2 uses)
/// is contracted through its uses (per-sample k·n² = 256 multiply-adds per entry
/// against 2²·(n + k·n) = 128); with T = 12 through its per-sample gradients
/// (2·36 against 11²·18).
const CASES: [(usize, usize, usize); 2] = [(3, 1, 16), (12, 2, 6)];

/// The Jacobian of an RNN with shared weights and a bias used at every step agrees
/// with central finite differences, for few steps (weights contracted through their
/// uses) and many (the input weight through its per-sample gradients).
#[test]
fn rnn_jacobian_matches_finite_differences() {
    for (steps, k, n) in CASES {
        let rnn = Rnn::new(steps, 2, n, k, steps as u64);
        let x = inputs(5, steps * 2, 7);
        let fd = finite_difference_jacobian(&rnn, &x, prec::FD_STEP);
        let jac = rnn.jacobian(&x).expect("jacobian");
        assert!(rel_err(&jac, &fd) <= prec::FINITE_DIFFERENCE, "T = {steps}");
    }
}

/// Its empirical NTK, averaged and with all output pairs, equals J₁ J₂ᵀ, across row
/// blocks (x1 = x2 and not), and the per-group kernels sum to it.
#[test]
fn rnn_kernels_equal_the_jacobian_contraction() {
    for (steps, k, n) in CASES {
        let rnn = Rnn::new(steps, 2, n, k, 11 + steps as u64);
        let x1 = inputs(70, steps * 2, 1);
        let x2 = inputs(40, steps * 2, 2);
        let (j1, j2) = (rnn.jacobian(&x1).unwrap(), rnn.jacobian(&x2).unwrap());
        let full = &j1 * j2.transpose();
        let sym = &j1 * j1.transpose();
        assert!(rel_err(&empirical_ntk_full(&rnn, &x1, &x2).unwrap(), &full) <= prec::EXACT_F64);
        assert!(rel_err(&empirical_ntk_full(&rnn, &x1, &x1).unwrap(), &sym) <= prec::EXACT_F64);
        let traced = trace_over_outputs(&full, k);
        let theta = empirical_ntk(&rnn, &x1, &x2).unwrap();
        assert!(rel_err(&theta, &traced) <= prec::EXACT_F64, "T = {steps}");
        let sum = rnn
            .group_kernels(&x1, &x2)
            .unwrap()
            .iter()
            .fold(DMatrix::zeros(70, 40), |acc, l| acc + l.total());
        assert!(rel_err(&sum, &traced) <= prec::EXACT_F64);
        let block = empirical_ntk_block(&rnn, &x1, &x2, 3..9, 0..40).unwrap();
        assert!(rel_err(&block, &traced.rows(3, 6).into_owned()) <= prec::EXACT_F64);
        // A batch of one sample: its bias group is still N·k-row shaped.
        let one = x1.rows(0, 1).into_owned();
        let j = rnn.jacobian(&one).unwrap();
        let single = empirical_ntk_full(&rnn, &one, &one).unwrap();
        assert!(rel_err(&single, &(&j * j.transpose())) <= prec::EXACT_F64);
    }
}
