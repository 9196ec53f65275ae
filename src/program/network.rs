//! The finite network of a [`Program`]: forward and backward passes through the graph,
//! and its tangent features for the empirical NTK.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Scalar;
use crate::error::{Error, Result, check_cols, check_finite, first_non_finite_entry};
use crate::linalg::try_zeros;
use crate::model::NtkModel;
use crate::tangent::{DenseUse, GroupTangent};

use super::ops::{FiniteBackward, FiniteForward, Gradients, Parameters};
use super::{Group, Op, Program, Readout, Width};

/// The network a [`Program`] describes, at a hidden width $n$, with its parameters.
///
/// Parameters are laid out group by group in the order the program declared its
/// weights and biases (each $W$ row-major, $n_{out} × n_{in}$; each $b$), then the readout $V$
/// ($k × n_{in}$, row-major) and its bias. [`NtkModel::group_tangents`] returns one
/// group per weight (one use per `dense`), one per bias (one use per `add_bias`) and
/// the readout last.
///
/// ```
/// use ntk::nalgebra::DMatrix;
/// use ntk::rand::{rngs::StdRng, SeedableRng};
/// use ntk::{empirical_ntk, Activation, NtkModel, Program};
/// # fn main() -> Result<(), ntk::Error> {
/// // A residual block: s + W₂ relu(s), s = W₁ x + b.
/// let mut p = Program::new(3);
/// let x = p.input(0..3)?;
/// let (w1, w2, b) = (p.weight(1.0)?, p.weight(1.0)?, p.bias(0.2)?);
/// let h = p.dense(w1, x)?;
/// let s = p.add_bias(h, b)?;
/// let r = p.apply(Activation::Relu, s)?;
/// let r = p.dense(w2, r)?;
/// let out = p.add(&[s, r])?;
/// p.output(out, 1.0)?;
/// let net = p.init::<f64>(64, &mut StdRng::seed_from_u64(1))?;
/// assert_eq!(net.parameter_count(), 64 * 3 + 64 * 64 + 64 + 64);
/// let x = DMatrix::from_fn(5, 3, |i, j| (i as f64 - j as f64).sin());
/// assert_eq!(empirical_ntk(&net, &x, &x)?.shape(), (5, 5));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ProgramNetwork<T: Scalar> {
    program: Program,
    width: usize,
    readout_var: usize,
    readout: Readout,
    /// $Wᵀ$ per weight and $b$ per bias.
    parameters: Parameters<T>,
    /// $Vᵀ$ ($n_{in} × k$).
    readout_weights: DMatrix<T>,
    /// $b\'$ ($k$), when the readout has a bias.
    readout_bias: Option<DVector<T>>,
}

/// The values of every variable on a batch ($N × \text{columns}$), what each operation
/// kept for its backward pass, and the outputs.
struct Forward<T: Scalar> {
    values: Vec<DMatrix<T>>,
    saved: Vec<Option<DMatrix<T>>>,
    output: DMatrix<T>,
}

impl<T: Scalar> ProgramNetwork<T> {
    pub(super) fn init<R: Rng + ?Sized>(
        program: &Program,
        width: usize,
        rng: &mut R,
    ) -> Result<Self> {
        let (readout_var, readout) = program.readout_of()?;
        if width == 0 {
            return Err(Error::InvalidParameter {
                parameter: "width",
                value: "0".into(),
                reason: "the hidden width must be at least 1",
            });
        }
        let describe = || format!("{width} (a program network's parameters)");
        let columns = |w: Width| {
            w.checked_columns(width)
                .ok_or_else(|| Error::AllocationFailed {
                    what: format!("`width` = {}", describe()),
                    size: format!("{} times {width} columns", w.describe()),
                })
        };
        let weights = program
            .weights
            .iter()
            .map(|w| {
                let rows = columns(w.fan_in.unwrap_or(Width::Hidden(1)))?;
                try_zeros(rows, width, "width", describe)
            })
            .collect::<Result<_>>()?;
        let biases = program
            .biases
            .iter()
            .map(|b| {
                let rows = columns(b.width.unwrap_or(Width::Hidden(1)))?;
                Ok(DVector::from_column_slice(
                    try_zeros::<T>(rows, 1, "width", describe)?.as_slice(),
                ))
            })
            .collect::<Result<_>>()?;
        let fan_in = columns(program.nodes[readout_var].width)?;
        let readout_weights = try_zeros(fan_in, readout.outputs, "width", describe)?;
        let mut net = ProgramNetwork {
            program: program.clone(),
            width,
            readout_var,
            readout,
            parameters: Parameters {
                width,
                weights,
                biases,
            },
            readout_weights,
            readout_bias: (readout.bias_std > 0.0).then(|| DVector::zeros(readout.outputs)),
        };
        // N(0, 1) in parameter order (see `parameters`), drawn in place: no second copy
        // of a wide network's parameters.
        let mut draw = |values: &mut [T]| {
            for v in values {
                let z: f64 = StandardNormal.sample(rng);
                *v = T::from_f64_lossy(z);
            }
        };
        for group in &program.groups {
            match *group {
                Group::Weight(w) => draw(net.parameters.weights[w].as_mut_slice()),
                Group::Bias(b) => draw(net.parameters.biases[b].as_mut_slice()),
            }
        }
        draw(net.readout_weights.as_mut_slice());
        if let Some(b) = net.readout_bias.as_mut() {
            draw(b.as_mut_slice());
        }
        Ok(net)
    }

    /// The program this network was drawn from.
    #[must_use]
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The hidden width $n$.
    #[must_use]
    pub fn width(&self) -> usize {
        self.width
    }

    /// $s_v = σ_v/\sqrt{n_{in}}$ of the readout.
    fn readout_scale(&self) -> T {
        T::from_f64_lossy(self.readout.weight_std / (self.readout_weights.nrows() as f64).sqrt())
    }

    fn check_x(&self, x: &DMatrix<T>) -> Result<()> {
        check_cols(
            "x",
            x,
            self.program.input_dim(),
            "the program's input dimension",
        )?;
        check_finite("x", x)
    }

    /// Every variable's value on `x` and the outputs, each variable by its operation's
    /// finite rule.
    ///
    /// # Errors
    /// [`Error::NonFiniteResult`] naming the first variable (or the output) whose value is
    /// not finite: it overflows the scalar type, or a custom φ returns NaN or ∞.
    fn forward_pass(&self, x: &DMatrix<T>) -> Result<Forward<T>> {
        let count = self.program.nodes.len();
        let mut values: Vec<DMatrix<T>> = Vec::with_capacity(count);
        let mut saved: Vec<Option<DMatrix<T>>> = Vec::with_capacity(count);
        for node in &self.program.nodes {
            let at = FiniteForward {
                program: &self.program,
                x,
                values: &values,
                parameters: Some(&self.parameters),
            };
            let evaluated = node.op.finite::<T>().forward(&at);
            if let Some((row, col)) = first_non_finite_entry(&evaluated.value) {
                return Err(Error::NonFiniteResult {
                    result: "program network forward pass",
                    reason: format!(
                        "variable {} is {} at row {row}: {}",
                        values.len(),
                        evaluated.value[(row, col)],
                        node.op.finite::<T>().non_finite_reason()
                    ),
                });
            }
            values.push(evaluated.value);
            saved.push(evaluated.saved);
        }
        let mut output = DMatrix::<T>::zeros(x.nrows(), self.readout.outputs);
        output.gemm(
            self.readout_scale(),
            &values[self.readout_var],
            &self.readout_weights,
            T::zero(),
        );
        if let Some(b) = &self.readout_bias {
            let s = T::from_f64_lossy(self.readout.bias_std);
            for (mut col, &bc) in output.column_iter_mut().zip(b.iter()) {
                col.add_scalar_mut(s * bc);
            }
        }
        if let Some((i, c)) = first_non_finite_entry(&output) {
            return Err(Error::NonFiniteResult {
                result: "program network forward pass",
                reason: format!(
                    "output {c} is {} at row {i}: the readout exceeds the range of the \
                     scalar type",
                    output[(i, c)]
                ),
            });
        }
        Ok(Forward {
            values,
            saved,
            output,
        })
    }

    /// $∂f/∂(\text{every variable})$: $N × (k·\text{columns})$, column block $c$ for output
    /// $c$; `None` for variables that do not reach the output or hold input columns (no
    /// parameters lie before them). Each variable sends its gradient to its inputs by
    /// its operation's finite rule.
    ///
    /// # Errors
    /// Where an operation has no derivative at the batch (LayerNorm of a vector whose
    /// coordinates are all equal).
    ///
    /// In a batch-coupled network ([`Program::batch_coupled`]) the outputs are the $N·k$
    /// pairs (sample $i$, output $c$), block $i·k + c$, and row $j$ of a gradient holds
    /// $∂f_c(x_i)/∂v(x_j)$ (see [`Gradients`]): one pass carries every sample's gradient
    /// through the batch statistics.
    fn backward_pass(&self, fwd: &Forward<T>) -> Result<Vec<Option<DMatrix<T>>>> {
        let nodes = &self.program.nodes;
        let n = fwd.output.nrows();
        let k = self.readout.outputs;
        let coupled = self.program.batch_coupled();
        let mut grads = Gradients {
            nodes,
            slots: vec![None; nodes.len()],
            samples: n,
            outputs: if coupled { n * k } else { k },
        };
        // ∂f_c(x_i)/∂z(x_j) = δ_ij s_v V[c, :] (without coupling, row i alone).
        let fan_in = self.readout_weights.nrows();
        let sv = self.readout_scale();
        let v = |col: usize| sv * self.readout_weights[(col % fan_in, (col / fan_in) % k)];
        grads.slots[self.readout_var] = Some(if coupled {
            DMatrix::from_fn(n, n * k * fan_in, |j, col| {
                if col / (k * fan_in) == j {
                    v(col)
                } else {
                    T::zero()
                }
            })
        } else {
            DMatrix::from_fn(n, k * fan_in, |_, col| v(col))
        });
        let at = FiniteBackward {
            program: &self.program,
            values: &fwd.values,
            saved: &fwd.saved,
            parameters: &self.parameters,
        };
        for i in (0..nodes.len()).rev() {
            let Some(g) = grads.slots[i].take() else {
                continue;
            };
            let rule = nodes[i].op.finite::<T>();
            rule.differentiable(&at, i)?;
            rule.backward(&at, i, &g, &mut grads);
            grads.slots[i] = Some(g);
        }
        Ok(grads.slots)
    }

    /// The tangent features of every group from one forward and one backward pass.
    ///
    /// In a batch-coupled network the gradient of $f(x_i)$ with respect to a weight used
    /// at $h = s_W z W^⊤$ is $s_W Σ_j ∂f(x_i)/∂h(x_j)^⊤ z(x_j)$, a sum over the batch: each
    /// use becomes $N$ uses, use $j$ with input $z(x_j)$ on every row and output gradient
    /// $∂f(x_i)/∂h(x_j)$ in row $i$; a bias's gradient is $Σ_j ∂f(x_i)/∂h(x_j)$.
    fn tangents(&self, fwd: &Forward<T>) -> Result<Vec<GroupTangent<T>>> {
        let n = fwd.output.nrows();
        let k = self.readout.outputs;
        let coupled = self.program.batch_coupled();
        let blocks = if coupled { n * k } else { k };
        let mut grads = self.backward_pass(fwd)?;
        let mut grad_of = |v: usize, cols: usize| {
            grads[v]
                .take()
                .unwrap_or_else(|| DMatrix::zeros(n, blocks * cols))
        };
        let mut out = Vec::with_capacity(self.program.groups.len() + 1);
        // A variable may be the input of several dense uses but is the output of one
        // node: take each gradient once, clone the (rare) repeated inputs.
        for group in &self.program.groups {
            match *group {
                Group::Weight(w) => {
                    let decl = &self.program.weights[w];
                    let mut uses = Vec::with_capacity(decl.uses.len());
                    for &u in &decl.uses {
                        let Op::Dense(dense) = &self.program.nodes[u].op else {
                            unreachable!("weight uses are dense variables")
                        };
                        let input = &fwd.values[dense.input];
                        let g = grad_of(u, self.width);
                        if coupled {
                            for (j, output_grad) in by_source(&g, n).into_iter().enumerate() {
                                uses.push(DenseUse {
                                    input: DMatrix::from_fn(n, input.ncols(), |_, a| input[(j, a)]),
                                    output_grad,
                                });
                            }
                        } else {
                            uses.push(DenseUse {
                                input: input.clone(),
                                output_grad: g,
                            });
                        }
                    }
                    out.push(GroupTangent::Dense {
                        weight_scale: self.parameters.weight_scale(&self.program, w),
                        bias_scale: None,
                        uses,
                    });
                }
                Group::Bias(b) => {
                    let decl = &self.program.biases[b];
                    let cols = self.parameters.biases[b].len();
                    out.push(GroupTangent::Bias {
                        scale: T::from_f64_lossy(decl.std),
                        output_grads: decl
                            .uses
                            .iter()
                            .map(|&u| {
                                let g = grad_of(u, cols);
                                if coupled {
                                    by_source(&g, n)
                                        .into_iter()
                                        .fold(DMatrix::zeros(n, k * cols), |acc, g| acc + g)
                                } else {
                                    g
                                }
                            })
                            .collect(),
                    });
                }
            }
        }
        // The readout's gradient is the unit row e_c per output: never stored.
        out.push(GroupTangent::Readout {
            weight_scale: self.readout_scale(),
            bias_scale: self
                .readout_bias
                .as_ref()
                .map(|_| T::from_f64_lossy(self.readout.bias_std)),
            input: fwd.values[self.readout_var].clone(),
        });
        Ok(out)
    }
}

/// A batch-coupled gradient `g` ($N$ rows $j$ × blocks $i·k + c$ of $m$ columns, holding
/// $∂f_c(x_i)/∂v(x_j)$) split by source sample: entry $j$ is the $N × k·m$ matrix whose row
/// $i$ holds $∂f(x_i)/∂v(x_j)$, output $c$ in column block $c$.
fn by_source<T: Scalar>(g: &DMatrix<T>, n: usize) -> Vec<DMatrix<T>> {
    let km = g.ncols() / n.max(1);
    (0..n)
        .map(|j| DMatrix::from_fn(n, km, |i, col| g[(j, i * km + col)]))
        .collect()
}

impl<T: Scalar> NtkModel<T> for ProgramNetwork<T> {
    fn input_dim(&self) -> usize {
        self.program.input_dim()
    }

    fn output_dim(&self) -> usize {
        self.readout.outputs
    }

    fn parameter_count(&self) -> usize {
        self.parameters
            .weights
            .iter()
            .map(DMatrix::len)
            .sum::<usize>()
            + self
                .parameters
                .biases
                .iter()
                .map(DVector::len)
                .sum::<usize>()
            + self.readout_weights.len()
            + self.readout_bias.as_ref().map_or(0, DVector::len)
    }

    fn parameters(&self) -> DVector<T> {
        let mut p = Vec::with_capacity(self.parameter_count());
        for group in &self.program.groups {
            match *group {
                Group::Weight(w) => p.extend_from_slice(self.parameters.weights[w].as_slice()),
                Group::Bias(b) => p.extend_from_slice(self.parameters.biases[b].as_slice()),
            }
        }
        p.extend_from_slice(self.readout_weights.as_slice());
        if let Some(b) = &self.readout_bias {
            p.extend_from_slice(b.as_slice());
        }
        DVector::from_vec(p)
    }

    fn set_parameters(&mut self, params: &DVector<T>) -> Result<()> {
        crate::error::check_parameter_vector(params, self.parameter_count())?;
        let mut offset = 0;
        let mut take = |dst: &mut [T]| {
            dst.copy_from_slice(&params.as_slice()[offset..offset + dst.len()]);
            offset += dst.len();
        };
        for group in &self.program.groups {
            match *group {
                Group::Weight(w) => take(self.parameters.weights[w].as_mut_slice()),
                Group::Bias(b) => take(self.parameters.biases[b].as_mut_slice()),
            }
        }
        take(self.readout_weights.as_mut_slice());
        if let Some(b) = self.readout_bias.as_mut() {
            take(b.as_mut_slice());
        }
        Ok(())
    }

    /// True when the program has a [`batch_norm`](Program::batch_norm).
    fn batch_coupled(&self) -> bool {
        self.program.batch_coupled()
    }

    fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        self.check_x(x)?;
        Ok(self.forward_pass(x)?.output)
    }

    fn layer_tangents(&self, x: &DMatrix<T>) -> Result<Vec<GroupTangent<T>>> {
        self.group_tangents(x)
    }

    fn group_tangents(&self, x: &DMatrix<T>) -> Result<Vec<GroupTangent<T>>> {
        self.check_x(x)?;
        let fwd = self.forward_pass(x)?;
        self.tangents(&fwd)
    }

    fn forward_with_tangents(&self, x: &DMatrix<T>) -> Result<(DMatrix<T>, Vec<GroupTangent<T>>)> {
        self.check_x(x)?;
        let fwd = self.forward_pass(x)?;
        let tangents = self.tangents(&fwd)?;
        Ok((fwd.output, tangents))
    }
}
