//! The finite network of a [`Program`]: forward and backward passes through the graph,
//! and its tangent features for the empirical NTK.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Scalar;
use crate::error::{Error, Result, check_cols, check_finite};
use crate::linalg::{columns_transposed, gemm, try_zeros};
use crate::model::NtkModel;
use crate::tangent::{DenseUse, LayerTangent};

use super::{Group, Op, Program, Readout, Width};

/// The network a [`Program`] describes, at a hidden width $n$, with its parameters.
///
/// Parameters are laid out group by group in the order the program declared its
/// weights and biases (each $W$ row-major, $n_{out} × n_{in}$; each $b$), then the readout $V$
/// ($k × n_{in}$, row-major) and its bias. [`NtkModel::layer_tangents`] returns one
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
/// let net = p.init::<f64, _>(64, &mut StdRng::seed_from_u64(1))?;
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
    /// $Wᵀ$ ($n_{in} × n$) per weight: its column-major storage is $W$ row-major.
    weights: Vec<DMatrix<T>>,
    /// $b$ per bias.
    biases: Vec<DVector<T>>,
    /// $Vᵀ$ ($n_{in} × k$).
    readout_weights: DMatrix<T>,
    /// $b\'$ ($k$), when the readout has a bias.
    readout_bias: Option<DVector<T>>,
}

/// The values of every variable on a batch ($N × \text{columns}$), the attention weights of
/// every attention block (per query, $N × \text{keys}$), and the outputs.
struct Forward<T: Scalar> {
    values: Vec<DMatrix<T>>,
    attention: Vec<Vec<DMatrix<T>>>,
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
        // Every buffer is allocated fallibly: a width too large for memory (or for
        // `usize`, K·n for a concatenation) is an error, not an abort.
        let wide = || format!("{width} (the hidden width of a program network)");
        let zeros = |w: Width, cols: usize| {
            let rows = w.columns(width).unwrap_or(usize::MAX);
            try_zeros::<T>(rows, cols, "width", wide)
        };
        let vector = |w: Width| zeros(w, 1).map(|m| DVector::from_vec(m.data.into()));
        let weights = program
            .weights
            .iter()
            .map(|w| zeros(w.fan_in.unwrap_or(Width::Hidden(1)), width))
            .collect::<Result<_>>()?;
        let biases = program
            .biases
            .iter()
            .map(|b| vector(b.width.unwrap_or(Width::Hidden(1))))
            .collect::<Result<_>>()?;
        let readout_weights = zeros(program.nodes[readout_var].width, readout.outputs)?;
        let mut net = ProgramNetwork {
            program: program.clone(),
            width,
            readout_var,
            readout,
            weights,
            biases,
            readout_weights,
            readout_bias: (readout.bias_std > 0.0).then(|| DVector::zeros(readout.outputs)),
        };
        let mut params = vector(Width::Input(net.parameter_count()))?;
        for p in params.iter_mut() {
            let z: f64 = StandardNormal.sample(rng);
            *p = T::from_f64_lossy(z);
        }
        net.set_parameters(&params)?;
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

    /// $s_W = σ_W/\sqrt{n_{in}}$ of weight `w`.
    fn weight_scale(&self, w: usize) -> T {
        T::from_f64_lossy(self.program.weights[w].std / (self.weights[w].nrows() as f64).sqrt())
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

    /// Every variable's value on `x` and the outputs.
    fn forward_pass(&self, x: &DMatrix<T>) -> Forward<T> {
        let n = x.nrows();
        let mut values: Vec<DMatrix<T>> = Vec::with_capacity(self.program.nodes.len());
        let mut attention: Vec<Vec<DMatrix<T>>> = vec![Vec::new(); self.program.attentions.len()];
        for node in &self.program.nodes {
            let value = match &node.op {
                Op::Input(cols) => x.columns(cols.start, cols.len()).into_owned(),
                Op::Dense { weight, input } => {
                    let wt = &self.weights[*weight];
                    let mut h = DMatrix::<T>::zeros(n, wt.ncols());
                    gemm(
                        &mut h,
                        self.weight_scale(*weight),
                        &values[*input],
                        wt,
                        T::zero(),
                    );
                    h
                }
                Op::AddBias { input, bias } => {
                    let mut h = values[*input].clone();
                    let s = T::from_f64_lossy(self.program.biases[*bias].std);
                    for (mut col, &b) in h.column_iter_mut().zip(self.biases[*bias].iter()) {
                        col.add_scalar_mut(s * b);
                    }
                    h
                }
                Op::Add(parts) => sum_of(parts, &values),
                Op::Mean(parts) => {
                    sum_of(parts, &values) * T::from_f64_lossy(1.0 / parts.len() as f64)
                }
                Op::Concat(parts) => {
                    let cols = parts.iter().map(|&p| values[p].ncols()).sum();
                    let mut c = DMatrix::<T>::zeros(n, cols);
                    let mut offset = 0;
                    for &p in parts {
                        let v = &values[p];
                        c.columns_mut(offset, v.ncols()).copy_from(v);
                        offset += v.ncols();
                    }
                    c
                }
                Op::Apply { activation, input } => activation.elementwise(&values[*input]),
                Op::LayerNorm { input } => layer_norm(&values[*input]),
                Op::Attend { block, query } => {
                    let decl = &self.program.attentions[*block];
                    if attention[*block].is_empty() {
                        attention[*block] = decl
                            .queries
                            .iter()
                            .map(|&q| attention_weights(&values[q], &decl.keys, &values))
                            .collect();
                    }
                    let a = &attention[*block][*query];
                    let mut y = DMatrix::<T>::zeros(n, values[decl.values[0]].ncols());
                    for (s, &v) in decl.values.iter().enumerate() {
                        let w = a.column(s);
                        for (mut yc, vc) in y.column_iter_mut().zip(values[v].column_iter()) {
                            yc.zip_zip_apply(&vc, &w, |y, v, w| *y += w * v);
                        }
                    }
                    y
                }
            };
            values.push(value);
        }
        let mut output = DMatrix::<T>::zeros(n, self.readout.outputs);
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
        Forward {
            values,
            attention,
            output,
        }
    }

    /// $∂f/∂(\text{every variable})$: $N × (k·\text{columns})$, column block $c$ for output
    /// $c$; `None` for variables that do not reach the output or hold input columns (no
    /// parameters lie before them).
    fn backward_pass(&self, fwd: &Forward<T>) -> Vec<Option<DMatrix<T>>> {
        let nodes = &self.program.nodes;
        let n = fwd.output.nrows();
        let k = self.readout.outputs;
        let mut grads: Vec<Option<DMatrix<T>>> = vec![None; nodes.len()];
        // ∂f_c/∂z = s_v V[c, :] for every sample.
        let fan_in = self.readout_weights.nrows();
        let sv = self.readout_scale();
        grads[self.readout_var] = Some(DMatrix::from_fn(n, k * fan_in, |_, col| {
            sv * self.readout_weights[(col % fan_in, col / fan_in)]
        }));
        for i in (0..nodes.len()).rev() {
            let Some(g) = grads[i].take() else { continue };
            match &nodes[i].op {
                Op::Input(_) => {}
                Op::Dense { weight, input } => {
                    if let Width::Hidden(_) = nodes[*input].width {
                        // ∂f/∂z = s_W (∂f/∂h) W, per output block.
                        let wt = &self.weights[*weight];
                        let (fan, m) = wt.shape();
                        let w = columns_transposed(wt, 0, m);
                        let s = self.weight_scale(*weight);
                        let acc = grad_slot(&mut grads[*input], n, k * fan);
                        for c in 0..k {
                            gemm(
                                &mut acc.columns_mut(c * fan, fan),
                                s,
                                &g.columns(c * m, m),
                                &w,
                                T::one(),
                            );
                        }
                    }
                }
                Op::AddBias { input, .. } => add_into(&mut grads[*input], &g, T::one()),
                Op::Add(parts) => {
                    for &p in parts {
                        add_into(&mut grads[p], &g, T::one());
                    }
                }
                Op::Mean(parts) => {
                    let s = T::from_f64_lossy(1.0 / parts.len() as f64);
                    for &p in parts {
                        add_into(&mut grads[p], &g, s);
                    }
                }
                Op::Concat(parts) => {
                    let total = g.ncols() / k;
                    let mut offset = 0;
                    for &p in parts {
                        let m = fwd.values[p].ncols();
                        if let Width::Hidden(_) = nodes[p].width {
                            let acc = grad_slot(&mut grads[p], n, k * m);
                            for c in 0..k {
                                let mut block = acc.columns_mut(c * m, m);
                                block += g.columns(c * total + offset, m);
                            }
                        }
                        offset += m;
                    }
                }
                Op::LayerNorm { input } => {
                    let dx = layer_norm_backward(&fwd.values[*input], &fwd.values[i], &g, k);
                    add_into(&mut grads[*input], &dx, T::one());
                }
                Op::Attend { block, query } => {
                    let decl = &self.program.attentions[*block];
                    let a = &fwd.attention[*block][*query];
                    let q = decl.queries[*query];
                    self.attention_backward(a, q, decl, fwd, &g, &mut grads);
                }
                Op::Apply { activation, input } => {
                    if let Width::Hidden(_) = nodes[*input].width {
                        let d = fwd.values[*input].map(|v| activation.derivative(v));
                        let m = d.ncols();
                        let acc = grad_slot(&mut grads[*input], n, k * m);
                        for c in 0..k {
                            let mut block = acc.columns_mut(c * m, m);
                            block += g.columns(c * m, m).component_mul(&d);
                        }
                    }
                }
            }
            grads[i] = Some(g);
        }
        grads
    }

    /// Adds what the output gradient `g` of one attention output (query `q`, weights
    /// `a`, $N × \text{keys}$) sends back to its values, its query and its keys, gradients
    /// through the softmax included: with $dA_s = g·v_s$ and $dL_s = A_s (dA_s − Σ_r A_r dA_r)$,
    /// $dv_s$ += $A_s g$, $dq$ += $Σ_s dL_s k_s / n$, $dk_s$ += $dL_s q / n$ (per sample and output).
    fn attention_backward(
        &self,
        a: &DMatrix<T>,
        q: usize,
        decl: &super::AttentionDecl,
        fwd: &Forward<T>,
        g: &DMatrix<T>,
        grads: &mut [Option<DMatrix<T>>],
    ) {
        let (n, k) = (a.nrows(), self.readout.outputs);
        let m = fwd.values[q].ncols();
        let inv_m = T::one() / T::from_usize(m).unwrap_or_else(T::one);
        let keys = decl.keys.len();
        for c in 0..k {
            let gc = g.columns(c * m, m);
            let mut dl = DMatrix::<T>::zeros(n, keys);
            for (s, &v) in decl.values.iter().enumerate() {
                for i in 0..n {
                    dl[(i, s)] = gc.row(i).dot(&fwd.values[v].row(i));
                }
            }
            for i in 0..n {
                let mean: T = (0..keys)
                    .map(|s| a[(i, s)] * dl[(i, s)])
                    .fold(T::zero(), |x, y| x + y);
                for s in 0..keys {
                    dl[(i, s)] = a[(i, s)] * (dl[(i, s)] - mean) * inv_m;
                }
            }
            for (s, (&v, &key)) in decl.values.iter().zip(&decl.keys).enumerate() {
                let dv = grad_slot(&mut grads[v], n, k * m);
                for i in 0..n {
                    let w = a[(i, s)];
                    for j in 0..m {
                        dv[(i, c * m + j)] += w * gc[(i, j)];
                    }
                }
                let dk = grad_slot(&mut grads[key], n, k * m);
                for i in 0..n {
                    let w = dl[(i, s)];
                    for j in 0..m {
                        dk[(i, c * m + j)] += w * fwd.values[q][(i, j)];
                    }
                }
                let dq = grad_slot(&mut grads[q], n, k * m);
                for i in 0..n {
                    let w = dl[(i, s)];
                    for j in 0..m {
                        dq[(i, c * m + j)] += w * fwd.values[key][(i, j)];
                    }
                }
            }
        }
    }

    /// The tangent features of every group from one forward and one backward pass.
    fn tangents(&self, fwd: &Forward<T>) -> Vec<LayerTangent<T>> {
        let n = fwd.output.nrows();
        let k = self.readout.outputs;
        let mut grads = self.backward_pass(fwd);
        let mut grad_of = |v: usize, cols: usize| {
            grads[v]
                .take()
                .unwrap_or_else(|| DMatrix::zeros(n, k * cols))
        };
        let mut out = Vec::with_capacity(self.program.groups.len() + 1);
        // A variable may be the input of several dense uses but is the output of one
        // node: take each gradient once, clone the (rare) repeated inputs.
        for group in &self.program.groups {
            match *group {
                Group::Weight(w) => {
                    let decl = &self.program.weights[w];
                    let uses = decl
                        .uses
                        .iter()
                        .map(|&u| {
                            let Op::Dense { input, .. } = self.program.nodes[u].op else {
                                unreachable!("weight uses are dense variables")
                            };
                            DenseUse {
                                input: fwd.values[input].clone(),
                                output_grad: grad_of(u, self.width),
                            }
                        })
                        .collect();
                    out.push(LayerTangent::Dense {
                        weight_scale: self.weight_scale(w),
                        bias_scale: None,
                        uses,
                    });
                }
                Group::Bias(b) => {
                    let decl = &self.program.biases[b];
                    let cols = self.biases[b].len();
                    out.push(LayerTangent::Bias {
                        scale: T::from_f64_lossy(decl.std),
                        output_grads: decl.uses.iter().map(|&u| grad_of(u, cols)).collect(),
                    });
                }
            }
        }
        // The readout's gradient is the unit row e_c per output: never stored.
        out.push(LayerTangent::Readout {
            weight_scale: self.readout_scale(),
            bias_scale: self
                .readout_bias
                .as_ref()
                .map(|_| T::from_f64_lossy(self.readout.bias_std)),
            input: fwd.values[self.readout_var].clone(),
        });
        out
    }
}

/// LayerNorm of every row: $(x − \operatorname{mean}) / \operatorname{std}$ (biased std, no $ε$).
fn layer_norm<T: Scalar>(x: &DMatrix<T>) -> DMatrix<T> {
    let m = T::from_usize(x.ncols()).unwrap_or_else(T::one);
    let mut z = x.clone();
    for mut row in z.row_iter_mut() {
        let mean = row.sum() / m;
        row.add_scalar_mut(-mean);
        let sd = (row.norm_squared() / m).sqrt();
        row /= sd;
    }
    z
}

/// $∂f/∂x$ from $∂f/∂z$ for $z = \operatorname{LayerNorm}(x)$, per row and output block:
/// $dx = (dz − \operatorname{mean}(dz) − z \operatorname{mean}(dz ⊙ z)) / \operatorname{std}(x)$.
fn layer_norm_backward<T: Scalar>(
    x: &DMatrix<T>,
    z: &DMatrix<T>,
    g: &DMatrix<T>,
    k: usize,
) -> DMatrix<T> {
    let m = x.ncols();
    let mf = T::from_usize(m).unwrap_or_else(T::one);
    let mut dx = DMatrix::<T>::zeros(g.nrows(), g.ncols());
    for i in 0..x.nrows() {
        let row = x.row(i);
        let mean = row.sum() / mf;
        let sd = (row.map(|v| (v - mean) * (v - mean)).sum() / mf).sqrt();
        for c in 0..k {
            let dz = g.view((i, c * m), (1, m));
            let zi = z.row(i);
            let mean_dz = dz.sum() / mf;
            let mean_dzz = dz.component_mul(&zi).sum() / mf;
            for j in 0..m {
                dx[(i, c * m + j)] = (dz[(0, j)] - mean_dz - zi[j] * mean_dzz) / sd;
            }
        }
    }
    dx
}

/// Softmax over the keys of $q·k_s / n$ for every sample: $N × \text{keys}$.
fn attention_weights<T: Scalar>(
    q: &DMatrix<T>,
    keys: &[usize],
    values: &[DMatrix<T>],
) -> DMatrix<T> {
    let n = q.ncols();
    let inv = T::one() / T::from_usize(n).unwrap_or_else(T::one);
    let mut a = DMatrix::<T>::zeros(q.nrows(), keys.len());
    for (s, &key) in keys.iter().enumerate() {
        for i in 0..q.nrows() {
            a[(i, s)] = q.row(i).dot(&values[key].row(i)) * inv;
        }
    }
    for mut row in a.row_iter_mut() {
        let max = row.max();
        row.apply(|v| *v = (*v - max).exp());
        let total = row.sum();
        row /= total;
    }
    a
}

/// The sum of the variables `parts`.
fn sum_of<T: Scalar>(parts: &[usize], values: &[DMatrix<T>]) -> DMatrix<T> {
    let mut s = values[parts[0]].clone();
    for &p in &parts[1..] {
        s += &values[p];
    }
    s
}

/// The gradient accumulator of a variable, created as zeros on first use.
fn grad_slot<T: Scalar>(slot: &mut Option<DMatrix<T>>, n: usize, cols: usize) -> &mut DMatrix<T> {
    slot.get_or_insert_with(|| DMatrix::zeros(n, cols))
}

/// `slot += scale · g`.
fn add_into<T: Scalar>(slot: &mut Option<DMatrix<T>>, g: &DMatrix<T>, scale: T) {
    match slot {
        Some(acc) => acc.zip_apply(g, |a, b| *a += scale * b),
        None => *slot = Some(g * scale),
    }
}

impl<T: Scalar> NtkModel<T> for ProgramNetwork<T> {
    fn input_dim(&self) -> usize {
        self.program.input_dim()
    }

    fn output_dim(&self) -> usize {
        self.readout.outputs
    }

    fn parameter_count(&self) -> usize {
        self.weights.iter().map(DMatrix::len).sum::<usize>()
            + self.biases.iter().map(DVector::len).sum::<usize>()
            + self.readout_weights.len()
            + self.readout_bias.as_ref().map_or(0, DVector::len)
    }

    fn parameters(&self) -> DVector<T> {
        let mut p = Vec::with_capacity(self.parameter_count());
        for group in &self.program.groups {
            match *group {
                Group::Weight(w) => p.extend_from_slice(self.weights[w].as_slice()),
                Group::Bias(b) => p.extend_from_slice(self.biases[b].as_slice()),
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
                Group::Weight(w) => take(self.weights[w].as_mut_slice()),
                Group::Bias(b) => take(self.biases[b].as_mut_slice()),
            }
        }
        take(self.readout_weights.as_mut_slice());
        if let Some(b) = self.readout_bias.as_mut() {
            take(b.as_mut_slice());
        }
        Ok(())
    }

    fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        self.check_x(x)?;
        Ok(self.forward_pass(x).output)
    }

    fn layer_tangents(&self, x: &DMatrix<T>) -> Result<Vec<LayerTangent<T>>> {
        self.check_x(x)?;
        let fwd = self.forward_pass(x);
        Ok(self.tangents(&fwd))
    }

    fn forward_with_tangents(&self, x: &DMatrix<T>) -> Result<(DMatrix<T>, Vec<LayerTangent<T>>)> {
        self.check_x(x)?;
        let fwd = self.forward_pass(x);
        let tangents = self.tangents(&fwd);
        Ok((fwd.output, tangents))
    }
}
