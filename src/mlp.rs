//! Fully connected networks: [`MlpSpec`] describes one, [`Mlp`] is one.
//!
//! With inputs as rows, layer $l = 1..L$ computes
//!
//! $$H^l = s_w X^{l−1} W^{lᵀ} + s_b 1 b^{lᵀ}, \qquad X^l = φ_l(H^l),$$
//!
//! $X⁰ = x$, and the network's output is $H^L$ (the last layer is linear).
//! The scales depend on the [`Parameterization`]:
//!
//! | | $s_w$ | $s_b$ | $W, b$ drawn from |
//! |---|---|---|---|
//! | NTK (default) | $σ_w/\sqrt{n^{l−1}}$ | $σ_b$ | $N(0, 1)$ |
//! | Standard | $1$ | $1$ | $W ∼ N(0, σ_w²/n^{l−1})$, $b ∼ N(0, σ_b²)$ |
//!
//! These are neural-tangents' `stax.Dense(n, W_std=σ_w, b_std=σ_b, parameterization=…)`.
//! Both give the same distribution of networks at initialisation; their NTKs differ,
//! since the gradient with respect to a stored parameter carries its scale. With
//! $σ_b = 0$ the layers have no bias parameters.

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::Scalar;
use crate::activation::Activation;
use crate::error::{Error, Result, check_matrix, check_std, first_non_finite_entry};
use crate::linalg::{columns_transposed, gemm, try_zeros};
use crate::model::NtkModel;
use crate::tangent::{DenseUse, GroupTangent};

/// How stored parameters map to the network's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Parameterization {
    /// $h = (σ_w/\sqrt{n_{in}}) W x + σ_b b$ with $W, b ∼ N(0, 1)$ (Jacot et al. 2018; neural-tangents' default).
    #[default]
    Ntk,
    /// $h = W x + b$ with $W ∼ N(0, σ_w²/n_{in})$, $b ∼ N(0, σ_b²)$: the NTK grows with width.
    Standard,
}

/// The architecture of a fully connected network, without its parameters.
///
/// ```
/// use ntk::{Activation, MlpSpec};
/// let spec = MlpSpec::new(3)
///     .hidden(512, Activation::Relu)
///     .hidden(512, Activation::Erf)
///     .weight_std(1.5)
///     .bias_std(0.05)
///     .outputs(2);
/// assert_eq!(spec.widths(), vec![3, 512, 512, 2]);
/// ```
#[derive(Clone, Debug)]
pub struct MlpSpec {
    input_dim: usize,
    hidden: Vec<(usize, Activation)>,
    outputs: usize,
    weight_std: f64,
    bias_std: f64,
    parameterization: Parameterization,
}

impl MlpSpec {
    /// A network with input dimension `input_dim`, no hidden layers, one output,
    /// $σ_w = 1$, $σ_b = 0$ (no biases), NTK parameterization.
    #[must_use]
    pub fn new(input_dim: usize) -> Self {
        MlpSpec {
            input_dim,
            hidden: Vec::new(),
            outputs: 1,
            weight_std: 1.0,
            bias_std: 0.0,
            parameterization: Parameterization::Ntk,
        }
    }

    /// Appends a hidden Dense layer of `width` units followed by `activation`.
    #[must_use]
    pub fn hidden(mut self, width: usize, activation: Activation) -> Self {
        self.hidden.push((width, activation));
        self
    }

    /// Sets the output dimension $k$ (default 1).
    #[must_use]
    pub fn outputs(mut self, k: usize) -> Self {
        self.outputs = k;
        self
    }

    /// Sets $σ_w$ for every layer (default 1).
    #[must_use]
    pub fn weight_std(mut self, sigma_w: f64) -> Self {
        self.weight_std = sigma_w;
        self
    }

    /// Sets $σ_b$ for every layer (default 0: no bias parameters).
    #[must_use]
    pub fn bias_std(mut self, sigma_b: f64) -> Self {
        self.bias_std = sigma_b;
        self
    }

    /// Sets the parameterization (default [`Parameterization::Ntk`]).
    #[must_use]
    pub fn parameterization(mut self, p: Parameterization) -> Self {
        self.parameterization = p;
        self
    }

    /// Input dimension $d$.
    #[must_use]
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// Output dimension $k$.
    #[must_use]
    pub fn output_dim(&self) -> usize {
        self.outputs
    }

    /// The hidden layers as (width, activation).
    #[must_use]
    pub fn hidden_layers(&self) -> &[(usize, Activation)] {
        &self.hidden
    }

    /// $σ_w$, set by [`weight_std`](Self::weight_std). (A getter whose name a builder
    /// method takes is that name with `_value`, here and in [`Readout`](crate::Readout).)
    #[must_use]
    pub fn weight_std_value(&self) -> f64 {
        self.weight_std
    }

    /// $σ_b$, set by [`bias_std`](Self::bias_std).
    #[must_use]
    pub fn bias_std_value(&self) -> f64 {
        self.bias_std
    }

    /// The parameterization, set by [`parameterization`](Self::parameterization).
    #[must_use]
    pub fn parameterization_value(&self) -> Parameterization {
        self.parameterization
    }

    /// $σ_w$.
    #[deprecated(since = "0.2.0", note = "renamed to `weight_std_value`")]
    #[must_use]
    pub fn sigma_w(&self) -> f64 {
        self.weight_std
    }

    /// $σ_b$.
    #[deprecated(since = "0.2.0", note = "renamed to `bias_std_value`")]
    #[must_use]
    pub fn sigma_b(&self) -> f64 {
        self.bias_std
    }

    /// The parameterization.
    #[deprecated(since = "0.2.0", note = "renamed to `parameterization_value`")]
    #[must_use]
    pub fn parameterization_kind(&self) -> Parameterization {
        self.parameterization
    }

    /// Whether the layers carry bias parameters ($σ_b > 0$).
    #[must_use]
    pub fn has_bias(&self) -> bool {
        self.bias_std > 0.0
    }

    /// Layer widths $n⁰ = d, n¹, …, n^L = k$.
    #[must_use]
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(self.input_dim)
            .chain(self.hidden.iter().map(|(w, _)| *w))
            .chain(std::iter::once(self.outputs))
            .collect()
    }

    /// The same architecture with every hidden layer's width replaced by `width`.
    #[must_use]
    pub fn with_hidden_width(&self, width: usize) -> Self {
        let mut s = self.clone();
        for layer in &mut s.hidden {
            layer.0 = width;
        }
        s
    }

    /// Number of parameters $P = Σ_l n^l (n^{l−1} + \[σ_b > 0\])$; `usize::MAX` for a
    /// spec too large to count, which [`validate`](Self::validate) rejects.
    #[must_use]
    pub fn parameter_count(&self) -> usize {
        self.checked_parameter_count().unwrap_or(usize::MAX)
    }

    /// $P$, or `None` if it overflows `usize`.
    fn checked_parameter_count(&self) -> Option<usize> {
        let bias = usize::from(self.has_bias());
        self.widths().windows(2).try_fold(0_usize, |sum, p| {
            sum.checked_add(p[1].checked_mul(p[0].checked_add(bias)?)?)
        })
    }

    /// Checks dimensions, standard deviations and activations.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a zero input dimension, width or output
    /// dimension, more parameters than `usize` counts, a negative or non-finite $σ$, or
    /// an invalid activation.
    pub fn validate(&self) -> Result<()> {
        let positive = |parameter: &'static str, v: usize| {
            if v == 0 {
                Err(Error::InvalidParameter {
                    parameter,
                    value: "0".into(),
                    reason: "must be at least 1",
                })
            } else {
                Ok(())
            }
        };
        positive("input_dim", self.input_dim)?;
        positive("outputs", self.outputs)?;
        for (l, (width, act)) in self.hidden.iter().enumerate() {
            if *width == 0 {
                return Err(Error::InvalidParameter {
                    parameter: "hidden width",
                    value: format!("0 (hidden layer {})", l + 1),
                    reason: "must be at least 1",
                });
            }
            act.validate().map_err(|e| match e {
                Error::InvalidParameter {
                    parameter,
                    value,
                    reason,
                } => Error::InvalidParameter {
                    parameter,
                    value: format!("{value} (hidden layer {})", l + 1),
                    reason,
                },
                other => other,
            })?;
        }
        if self.checked_parameter_count().is_none() {
            return Err(Error::InvalidParameter {
                parameter: "widths",
                value: format!("{:?}", self.widths()),
                reason: "the network has more parameters than usize counts",
            });
        }
        check_std("weight_std", self.weight_std)?;
        check_std("bias_std", self.bias_std)
    }

    /// Draws a network: $W, b ∼ N(0, 1)$ (NTK parameterization) or
    /// $W ∼ N(0, σ_w²/n_{in})$, $b ∼ N(0, σ_b²)$ (standard), layer by layer, $W$ row-major
    /// then $b$, from `rng`.
    ///
    /// # Errors
    /// If the spec is invalid ([`MlpSpec::validate`]); [`Error::AllocationFailed`]
    /// (naming `widths`) if the weights need more memory than can be allocated.
    pub fn init<T: Scalar>(&self, rng: &mut (impl Rng + ?Sized)) -> Result<Mlp<T>> {
        self.validate()?;
        let widths = self.widths();
        let mut net = Mlp::zeros(self.clone())?;
        // In the parameter order: W^l row-major (Wᵀ column-major), then b^l.
        let mut draw = |v: &mut T| {
            let z: f64 = StandardNormal.sample(rng);
            *v = T::from_f64_lossy(z);
        };
        for layer in &mut net.layers {
            layer.weights_t.iter_mut().for_each(&mut draw);
            if let Some(b) = layer.bias.as_mut() {
                b.iter_mut().for_each(&mut draw);
            }
        }
        if self.parameterization == Parameterization::Standard {
            for (layer, n_in) in net.layers.iter_mut().zip(&widths) {
                layer.weights_t *= T::from_f64_lossy(self.weight_std / (*n_in as f64).sqrt());
                if let Some(b) = layer.bias.as_mut() {
                    *b *= T::from_f64_lossy(self.bias_std);
                }
            }
        }
        Ok(net)
    }
}

/// One Dense layer. Stores $Wᵀ$ ($n_{in} × n_{out}$), whose column-major storage is $W$ row-major.
#[derive(Clone, Debug, PartialEq)]
struct Dense<T: Scalar> {
    weights_t: DMatrix<T>,
    bias: Option<DVector<T>>,
    weight_scale: T,
    bias_scale: T,
}

/// A fully connected network with parameters, generic over `f32`/`f64`.
///
/// Build one with [`MlpSpec::init`]. Parameters are laid out layer by layer,
/// $W^l$ row-major ($n^l × n^{l−1}$) then $b^l$ ($n^l$, when $σ_b > 0$).
#[derive(Clone, Debug)]
pub struct Mlp<T: Scalar> {
    spec: MlpSpec,
    layers: Vec<Dense<T>>,
}

/// What the forward pass keeps for the backward pass.
struct Trace<T: Scalar> {
    /// $X^{l−1}$, the input of each layer.
    inputs: Vec<DMatrix<T>>,
    /// $φ_l\'(H^l)$ for each hidden layer.
    derivatives: Vec<DMatrix<T>>,
    /// $H^L$.
    output: DMatrix<T>,
}

impl<T: Scalar> Mlp<T> {
    /// The network of a valid `spec` with all parameters 0.
    ///
    /// # Errors
    /// [`Error::AllocationFailed`] (naming `widths`) if a layer's weights cannot be allocated.
    fn zeros(spec: MlpSpec) -> Result<Self> {
        let widths = spec.widths();
        let (sw, sb) = match spec.parameterization {
            Parameterization::Ntk => (spec.weight_std, spec.bias_std),
            Parameterization::Standard => (1.0, 1.0),
        };
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(l, p)| {
                let weights_t = try_zeros(p[0], p[1], "widths", || {
                    format!("{widths:?}: Dense layer {l}'s {} x {} weights", p[1], p[0])
                })?;
                Ok(Dense {
                    weights_t,
                    bias: spec.has_bias().then(|| DVector::zeros(p[1])),
                    weight_scale: T::from_f64_lossy(match spec.parameterization {
                        Parameterization::Ntk => sw / (p[0] as f64).sqrt(),
                        Parameterization::Standard => sw,
                    }),
                    bias_scale: T::from_f64_lossy(sb),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { spec, layers })
    }

    /// A network of the given architecture with the given parameters (in the
    /// documented order).
    ///
    /// # Errors
    /// If the spec is invalid or `params` has the wrong length or non-finite entries.
    pub fn from_parameters(spec: &MlpSpec, params: &DVector<T>) -> Result<Self> {
        spec.validate()?;
        let mut net = Mlp::zeros(spec.clone())?;
        net.set_parameters(params)?;
        Ok(net)
    }

    /// The architecture.
    #[must_use]
    pub fn spec(&self) -> &MlpSpec {
        &self.spec
    }

    /// Number of Dense layers $L$ (hidden layers + the output layer).
    #[must_use]
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// $W^l$ for $l = 0..L$ ($n^l × n^{l−1}$), as stored.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `layer >= depth()`.
    pub fn weights(&self, layer: usize) -> Result<DMatrix<T>> {
        self.layer(layer).map(|d| d.weights_t.transpose())
    }

    /// $b^l$ for $l = 0..L$, as stored; `None` without biases.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `layer >= depth()`.
    pub fn bias(&self, layer: usize) -> Result<Option<DVector<T>>> {
        self.layer(layer).map(|d| d.bias.clone())
    }

    fn layer(&self, layer: usize) -> Result<&Dense<T>> {
        self.layers
            .get(layer)
            .ok_or_else(|| Error::InvalidParameter {
                parameter: "layer",
                value: format!("{layer}"),
                reason: "must be less than the number of Dense layers",
            })
    }

    fn check_x(&self, x: &DMatrix<T>) -> Result<()> {
        let inputs = (self.spec.input_dim, "the network's input dimension");
        check_matrix("x", x, None, Some(inputs))
    }

    /// Dense layer `l` applied to `input`: $H^l = s_w X W^{lᵀ} + s_b 1 b^{lᵀ}$ and, for a
    /// hidden layer, $φ(H^l)$ and (if `with_derivative`) $φ\'(H^l)$. Checked: the error
    /// names the layer, and the activation, where a value stops being finite.
    fn apply_layer(
        &self,
        l: usize,
        input: &DMatrix<T>,
        with_derivative: bool,
    ) -> Result<(DMatrix<T>, Option<DMatrix<T>>)> {
        let h = self.layers[l].pre_activation(input);
        let overflow = |(i, j): (usize, usize)| Error::NonFiniteResult {
            result: "Mlp forward pass",
            reason: format!(
                "Dense layer {}'s pre-activation s_w W x + s_b b is {} at row {i}: it exceeds \
                 the range of the scalar type (σ_w = {}, σ_b = {} or the inputs are too large)",
                l + 1,
                h[(i, j)],
                self.spec.weight_std,
                self.spec.bias_std
            ),
        };
        // Checked even where φ would hide it: ReLU maps NaN to 0.
        if let Some(at) = first_non_finite_entry(&h) {
            return Err(overflow(at));
        }
        let Some((_, act)) = self.spec.hidden.get(l) else {
            return Ok((h, None));
        };
        let (out, derivative) = if with_derivative {
            let (out, d) = act.elementwise_with_derivative(&h);
            (out, Some(d))
        } else {
            (act.elementwise(&h), None)
        };
        if act.finite_on_finite_inputs() {
            return Ok((out, derivative));
        }
        for (values, name) in [(Some(&out), "φ"), (derivative.as_ref(), "φ'")] {
            if let Some((i, j)) = values.and_then(first_non_finite_entry) {
                return Err(Error::NonFiniteResult {
                    result: "Mlp forward pass",
                    reason: format!(
                        "activation {act} of hidden layer {} gives {name}({}) = {} (row {i})",
                        l + 1,
                        h[(i, j)],
                        values.map_or(h[(i, j)], |v| v[(i, j)])
                    ),
                });
            }
        }
        Ok((out, derivative))
    }

    /// Forward pass keeping what the backward pass needs.
    fn trace(&self, x: &DMatrix<T>) -> Result<Trace<T>> {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut derivatives = Vec::with_capacity(self.layers.len().saturating_sub(1));
        let mut current = x.clone();
        for l in 0..self.layers.len() {
            let (out, derivative) = self.apply_layer(l, &current, true)?;
            inputs.push(std::mem::replace(&mut current, out));
            derivatives.extend(derivative);
        }
        Ok(Trace {
            inputs,
            derivatives,
            output: current,
        })
    }

    /// The output gradients $G^l = ∂f/∂H^l$ ($N × k·n^l$, output $c$ in column block $c$) of
    /// the hidden layers, first to last. The output layer's is the identity,
    /// $∂f_c/∂H^L = e_c$, so the last hidden layer's is $G^{L−1}_c = s_w W^L\[c, :\] ⊙ φ\'(H^{L−1})$,
    /// and then $G^{l−1} = (G^l s_w W^l) ⊙ φ\'(H^{l−1})$.
    fn backward(&self, trace: &Trace<T>) -> Vec<DMatrix<T>> {
        let n = trace.output.nrows();
        let k = self.spec.outputs;
        let depth = self.layers.len();
        let mut grads = Vec::with_capacity(depth.saturating_sub(1));
        if depth < 2 {
            return grads;
        }
        let readout = &self.layers[depth - 1];
        let d = &trace.derivatives[depth - 2];
        let n_last = readout.weights_t.nrows();
        let mut g = DMatrix::<T>::zeros(n, k * n_last);
        for c in 0..k {
            // Column c of W^Lᵀ is row c of W^L.
            let w = readout.weights_t.column(c);
            for a in 0..n_last {
                let s = readout.weight_scale * w[a];
                g.column_mut(c * n_last + a)
                    .zip_apply(&d.column(a), |v, da| *v = s * da);
            }
        }
        for l in (1..depth - 1).rev() {
            let layer = &self.layers[l];
            let (n_prev, n_here) = layer.weights_t.shape();
            let w = columns_transposed(&layer.weights_t, 0, n_here);
            let d = &trace.derivatives[l - 1];
            let mut prev = DMatrix::<T>::zeros(n, k * n_prev);
            for c in 0..k {
                let mut block = prev.columns_mut(c * n_prev, n_prev);
                gemm(
                    &mut block,
                    layer.weight_scale,
                    &g.columns(c * n_here, n_here),
                    &w,
                    T::zero(),
                );
                block.component_mul_assign(d);
            }
            grads.push(std::mem::replace(&mut g, prev));
        }
        grads.push(g);
        grads.reverse();
        grads
    }
}

impl<T: Scalar> Dense<T> {
    /// $H = s_w X Wᵀ + s_b 1 bᵀ$.
    fn pre_activation(&self, x: &DMatrix<T>) -> DMatrix<T> {
        let mut h = DMatrix::<T>::zeros(x.nrows(), self.weights_t.ncols());
        gemm(&mut h, self.weight_scale, x, &self.weights_t, T::zero());
        if let Some(b) = &self.bias {
            for (mut col, bj) in h.column_iter_mut().zip(b.iter()) {
                col.add_scalar_mut(self.bias_scale * *bj);
            }
        }
        h
    }
}

impl<T: Scalar> NtkModel<T> for Mlp<T> {
    fn input_dim(&self) -> usize {
        self.spec.input_dim
    }

    fn output_dim(&self) -> usize {
        self.spec.outputs
    }

    fn parameter_count(&self) -> usize {
        self.spec.parameter_count()
    }

    fn parameters(&self) -> DVector<T> {
        let mut p = Vec::with_capacity(self.parameter_count());
        for layer in &self.layers {
            p.extend_from_slice(layer.weights_t.as_slice());
            if let Some(b) = &layer.bias {
                p.extend_from_slice(b.as_slice());
            }
        }
        DVector::from_vec(p)
    }

    fn set_parameters(&mut self, params: &DVector<T>) -> Result<()> {
        crate::error::check_parameter_vector(params, self.parameter_count())?;
        let mut offset = 0;
        for layer in &mut self.layers {
            let len = layer.weights_t.len();
            layer
                .weights_t
                .as_mut_slice()
                .copy_from_slice(&params.as_slice()[offset..offset + len]);
            offset += len;
            if let Some(b) = layer.bias.as_mut() {
                let len = b.len();
                b.as_mut_slice()
                    .copy_from_slice(&params.as_slice()[offset..offset + len]);
                offset += len;
            }
        }
        Ok(())
    }

    fn forward(&self, x: &DMatrix<T>) -> Result<DMatrix<T>> {
        self.check_x(x)?;
        let mut current = x.clone();
        for l in 0..self.layers.len() {
            current = self.apply_layer(l, &current, false)?.0;
        }
        Ok(current)
    }

    fn layer_tangents(&self, x: &DMatrix<T>) -> Result<Vec<GroupTangent<T>>> {
        self.group_tangents(x)
    }

    fn group_tangents(&self, x: &DMatrix<T>) -> Result<Vec<GroupTangent<T>>> {
        self.forward_with_tangents(x).map(|(_, tangents)| tangents)
    }

    fn forward_with_tangents(&self, x: &DMatrix<T>) -> Result<(DMatrix<T>, Vec<GroupTangent<T>>)> {
        self.check_x(x)?;
        let trace = self.trace(x)?;
        let grads = self.backward(&trace);
        let Trace { inputs, output, .. } = trace;
        let mut inputs = inputs.into_iter();
        // The hidden layers first (grads leads, so the output layer's input stays).
        let mut tangents: Vec<_> = grads
            .into_iter()
            .zip(&self.layers)
            .zip(inputs.by_ref())
            .map(|((output_grad, layer), input)| GroupTangent::Dense {
                weight_scale: layer.weight_scale,
                bias_scale: layer.bias.as_ref().map(|_| layer.bias_scale),
                uses: vec![DenseUse { input, output_grad }],
            })
            .collect();
        let readout = self.layers.last().expect("an MLP has an output layer");
        tangents.push(GroupTangent::Readout {
            weight_scale: readout.weight_scale,
            bias_scale: readout.bias.as_ref().map(|_| readout.bias_scale),
            input: inputs.next().expect("the output layer's input"),
        });
        Ok((output, tangents))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The shared pass is right on both halves, each against an independent
    /// reference: its outputs are `forward`'s (a separate pass), and its tangents
    /// describe the finite-difference Jacobian of `forward`. The Jacobian is written out
    /// from the documented layout, J[i·k + c, (a, b)] = Σ_u s_w G_u[i, c·n_out + a]
    /// X_u[i, b] and J[i·k + c, b_a] = Σ_u s_b G_u[i, c·n_out + a], without the crate's
    /// own contraction.
    #[test]
    fn forward_with_tangents_gives_the_outputs_and_the_jacobian() {
        let (d, k, h) = (3, 2, 1e-6);
        let net: Mlp<f64> = MlpSpec::new(d)
            .hidden(7, Activation::Gelu)
            .hidden(4, Activation::Tanh)
            .bias_std(0.3)
            .outputs(k)
            .init(&mut StdRng::seed_from_u64(5))
            .unwrap();
        let x = DMatrix::from_fn(4, d, |i, j| (i as f64 - j as f64).sin());
        let n = x.nrows();
        let (f, tangents) = net.forward_with_tangents(&x).unwrap();
        assert!((&f - net.forward(&x).unwrap()).amax() <= 1e-14 * f.amax());

        let p = net.parameter_count();
        let mut jac = DMatrix::<f64>::zeros(n * k, p);
        let mut offset = 0;
        for t in &tangents {
            // The output layer's gradient is the unit row e_c (k outputs): written out
            // as a dense use with that gradient.
            let identity;
            let (weight_scale, bias_scale, uses) = match t {
                GroupTangent::Dense {
                    weight_scale,
                    bias_scale,
                    uses,
                } => (weight_scale, bias_scale, uses.as_slice()),
                GroupTangent::Readout {
                    weight_scale,
                    bias_scale,
                    input,
                } => {
                    let output_grad = DMatrix::from_fn(n, k * k, |_, col| {
                        f64::from(u8::from(col / k == col % k))
                    });
                    identity = [DenseUse {
                        input: input.clone(),
                        output_grad,
                    }];
                    (weight_scale, bias_scale, identity.as_slice())
                }
                _ => panic!("an MLP reports dense layers and a readout"),
            };
            let (n_in, n_out) = (uses[0].input.ncols(), uses[0].output_grad.ncols() / k);
            for u in uses {
                for i in 0..n {
                    for c in 0..k {
                        for a in 0..n_out {
                            let g = u.output_grad[(i, c * n_out + a)];
                            for b in 0..n_in {
                                jac[(i * k + c, offset + a * n_in + b)] +=
                                    weight_scale * g * u.input[(i, b)];
                            }
                            if let Some(sb) = bias_scale {
                                jac[(i * k + c, offset + n_out * n_in + a)] += sb * g;
                            }
                        }
                    }
                }
            }
            offset += n_out * n_in + if bias_scale.is_some() { n_out } else { 0 };
        }
        assert_eq!(offset, p);

        let theta = net.parameters();
        let mut probe = net.clone();
        let mut fd = DMatrix::<f64>::zeros(n * k, p);
        for q in 0..p {
            let mut shifted = theta.clone();
            shifted[q] += h;
            probe.set_parameters(&shifted).unwrap();
            let plus = probe.forward(&x).unwrap();
            shifted[q] -= 2.0 * h;
            probe.set_parameters(&shifted).unwrap();
            let minus = probe.forward(&x).unwrap();
            for i in 0..n {
                for c in 0..k {
                    fd[(i * k + c, q)] = (plus[(i, c)] - minus[(i, c)]) / (2.0 * h);
                }
            }
        }
        let err = (&jac - &fd).norm() / fd.norm();
        assert!(err <= 1e-6, "tangents vs finite differences: {err:e}");
    }
}
