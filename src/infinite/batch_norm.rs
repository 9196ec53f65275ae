//! The infinite-width kernels of programs with batch normalisation: chains
//! `dense (+ add_bias) → batch_norm (→ apply φ) → … → readout` (Tensor Programs II,
//! Appendix; Yang 2020).
//!
//! ## The limit
//!
//! A batch-coupled network's kernel is a kernel between two batches (see
//! [`NtkModel::batch_coupled`](crate::NtkModel::batch_coupled)): each sample's output
//! is computed with the statistics of its own batch. As the width grows, each neuron's
//! pre-activations on the stacked batches, $h = (h_1, h_2) ∈ ℝ^{B_1 + B_2}$, are Gaussian
//! $N(0, K)$, i.i.d. across neurons, and batch normalisation followed by $φ$ is one
//! $B$-input nonlinearity per batch,
//!
//! $$ψ(h) = φ\Big(\sqrt B \, \frac{P h}{\lVert P h \rVert}\Big), \qquad P = I − 11^⊤/B,$$
//!
//! whose Jacobian is $J = ∂ψ/∂h = \sqrt B \operatorname{diag}(φ\'(z)) (I − ûû^⊤) P / \lVert u \rVert$
//! with $u = Ph$, $û = u/\lVert u \rVert$ and $z = \sqrt B û$ ($J$ is block-diagonal over the two
//! batches). A layer $h\' = (σ_W/\sqrt n) W ψ(h) + σ_b b$ then maps the second moments $K$
//! and the tangent moments $Θ$ of $h$ to
//!
//! $$K\' = σ_W^2 E[ψψ^⊤] + σ_b^2 11^⊤, \qquad Θ\' = c_W E[ψψ^⊤] + c_b 11^⊤ + σ_W^2 E[J Θ J^⊤]$$
//!
//! (the backward term by gradient independence, exact here as for every program whose
//! readout is used once; $c_W = σ_W^2$ and $c_b = σ_b^2$ in the NTK parameterization), the
//! first layer starts from $K = σ_W^2 G + σ_b^2 11^⊤$ and $Θ = c_W G + c_b 11^⊤$ with the input
//! Gram matrix $G = ZZ^⊤/d$, and the readout gives $Σ = σ_v^2 E[ψψ^⊤] + σ_b\'^2$ and
//! $Θ̊ = c_v E[ψψ^⊤] + c_b\' + σ_v^2 E[JΘJ^⊤]$. A layer without batch norm is the usual
//! pairwise recursion ($E[φφ]$ and $E[φ\'φ\'] ⊙ Θ$ from the duals of [`super::dual`]).
//!
//! Batch norm removes $σ_b 11^⊤$ exactly ($P1 = 0$) and is scale invariant, so neither
//! kernel depends on the $σ_W$ and $σ_b$ of the layers before it; both are proportional
//! to $σ_v^2$.
//!
//! ## How the expectations are computed
//!
//! In coordinates $g = Q^⊤h ∈ ℝ^{B−1}$ of the centred subspace ($Q$ an orthonormal basis
//! of $1^⊥$, $u = Qg$, $\lVert u \rVert = \lVert g \rVert$), $g ∼ N(0, S)$ with
//! $S = Q^⊤KQ$.
//!
//! **Positively homogeneous φ** (ReLU, LeakyReLU, Abs, the identity): with
//! $φ(x) = αx + β|x|$, $ψ(h) = \sqrt B φ(u)/\lVert u \rVert$, and every term of
//! $E[ψψ^⊤]$ and $E[JΘJ^⊤]$ is a Gaussian expectation of $φ(u_i)$, $φ\'(u_i)$, $u_k$
//! divided by a power of $\lVert u \rVert$. Writing
//! $\lVert u \rVert^{−2m} = Γ(m)^{−1}∫_0^∞ t^{m−1} e^{−t\lVert u \rVert^2} dt$ and absorbing
//! $e^{−t\lVert u \rVert^2}$ into the Gaussian,
//! $E[F(u) e^{−t\lVert u \rVert^2}] = \det(I + 2tS)^{−1/2} E_{N(0, S_t)}[F]$ with
//! $S_t = S(I + 2tS)^{−1}$, turns each into a 1-D integral over $t$ of closed forms of
//! pairs $(u_i, u_j)$: $E[φφ] = α^2c + β^2(2/π)(\sqrt{pq − c^2} + c \arcsin ρ)$,
//! $E[φ\'φ\'] = α^2 + β^2(2/π)\arcsin ρ$, $E[φ\'\'(u_i)φ(u_j)] = 2β^2\sqrt{pq − c^2}/(πp)$
//! (the factors $u_k$ by Stein's lemma, once and twice). Between two batches the two
//! norms $\lVert u \rVert$, $\lVert v \rVert$ (powers $1/2$ and $3/2$) give 2-D integrals
//! over $(s, t)$ under the joint Gaussian of both batches. The integrals run on a
//! trapezoid rule in $τ$ with $\ln t = c + a \sinh τ$ (double-exponential tails), and are
//! accepted when the rule of twice the step agrees to $10^{−8}$ relative (the step is
//! halved up to three times, otherwise an error); the trapezoid rule converging
//! exponentially, the accepted one is accurate to round-off at any $B$.
//!
//! **Smooth φ** (Erf, Tanh, Sin, GELU, Sigmoid, Softplus, custom), within one batch:
//! $ψ$ depends only on the direction of $g$, and $J$ is $1/\lVert g \rVert$ times a function
//! of it. In $S$'s eigenbasis write $g = Λ^{1/4} y$ with $y = ρθ ∼ N(0, Λ^{1/2})$;
//! integrating out $ρ$ leaves expectations over $θ$ uniform on the unit sphere of
//! $ℝ^{B−1}$, weighted by the angular density $(θ^⊤Λ^{−1/2}θ)^{−(B−1)/2}$ (and, for
//! $E[JΘJ^⊤]$, $E[1/ρ^2 \mid θ]$, which brings $1/(B − 3)$). A product rule over the
//! hyperspherical angles (Gauss–Gegenbauer in the cosines of the $B − 3$ polar angles,
//! the trapezoid rule in the azimuth) integrates them; splitting the anisotropy
//! between the map and the density halves the sharpness of both (see `sphere_rule`).
//! The result is accepted when a rule with three quarters of the points agrees to
//! $10^{−5}$ relative (an error otherwise); against an independent implementation
//! (`tests/data/batchnorm.json`, $B = 6$, eigenvalues of $S$ spread over a factor 22) it
//! is accurate to $5·10^{−12}$ (NNGP) and $2·10^{−9}$ (NTK). The cost grows like
//! $n^{B−2}$: smooth φ is refused at $B ≥ 7$, and between two batches.
//!
//! | | NNGP | NTK |
//! |---|---|---|
//! | homogeneous φ, any $B ≥ 4$, within or between batches | $≈ 10^{−15}$ | $≈ 10^{−15}$ |
//! | smooth φ, $B = 4$ (64 points per angle), $B = 5$ (40) | $≈ 10^{−15}$ | $≈ 10^{−15}$ |
//! | smooth φ, $B = 6$ (26 points per angle) | $10^{−13} … 10^{−11}$ | $10^{−11} … 2·10^{−9}$ |
//! | smooth φ, $B ≥ 7$, or between batches | refused | refused |
//! | $B ≤ 3$ | refused | refused: $E[1/\lVert Ph \rVert^2] = ∞$ |
//!
//! (Relative to the largest entry, against rules of a quarter of the step or 12 more
//! points per angle, on batches whose eigenvalues spread over factors of 6 to 26 (the
//! unit test `rules_reach_their_documented_accuracy`), and against the reference. A
//! more anisotropic batch needs more points at $B = 6$; the agreement checks turn a rule
//! that is not converged into an error rather than a wrong number.)
//!
//! **What is refused.** The NTK needs $E[1/\lVert u \rVert^2] < ∞$, i.e. $B ≥ 4$ (at
//! $B = 3$, $u$ is a 2-D Gaussian and the expectation diverges logarithmically): a batch
//! of $B ≤ 3$ is an error. So is a batch whose centred second moments are singular
//! ($S$ rank-deficient: two equal samples, or centred inputs spanning fewer than $B − 1$
//! dimensions, e.g. an input dimension $d < B − 1$ before the first batch norm).
//!
//! **Convergence of finite networks.** The limit holds at every $B ≥ 4$, but the rate
//! at which finite networks reach it depends on $B$. The NTK averages, over the $n$
//! neurons, terms of size $1/\lVert u \rVert^2$ whose tail is
//! $P(1/\lVert u \rVert^2 > s) ∼ s^{−(B−1)/2}$: their variance is finite only for $B ≥ 6$,
//! so the usual $n^{−1/2}$ holds from $B = 6$; at $B = 5$ it is lost by a logarithm, and at
//! $B = 4$ the fluctuations fall like $n^{−1/3}$ at best. Measured (two hidden ReLU
//! layers, widths $2^6 … 2^{12}$, 100 seeds, the slow test
//! `convergence_rate_against_batch_size`): fitted slopes $−0.23$ at $B = 4$, $−0.44$ at
//! $B = 5$, $−0.46$ at $B = 6$ and $−0.47$ at $B = 8$.

use std::f64::consts::PI;

use nalgebra::DMatrix;

use crate::activation::Activation;
use crate::error::{Error, Result};
use crate::parallel;
use crate::program::{Op, Program, Width};

use super::dual::{Closed, PairDual};
use super::quadrature::GaussHermite;

/// Eigenvalues of a batch's centred second moments below this fraction of the largest
/// are taken as zero: the batch is rank-deficient.
const RANK_TOLERANCE: f64 = 1e-12;
/// The trapezoid rules in $\ln t$ are accepted when the rule of twice the step agrees
/// to this, relative to the largest entry.
const LOG_RULE_AGREEMENT: f64 = 1e-8;
/// How many times the step of the rules in $\ln t$ is halved before giving up.
const LOG_RULE_REFINEMENTS: u32 = 3;
/// The sphere rule is accepted when a rule with three quarters of its points agrees to
/// this, relative to the largest entry.
const SPHERE_RULE_AGREEMENT: f64 = 1e-5;
/// The largest batch the sphere rule (smooth φ) integrates over.
const SPHERE_MAX_BATCH: usize = 6;

/// One layer of a chain: `dense(weight) (+ bias) (→ batch_norm) (→ apply)`.
#[derive(Clone, Debug)]
struct Layer {
    weight: usize,
    bias: Option<usize>,
    /// The batch-norm variable, if the layer has one.
    batch_norm: Option<usize>,
    activation: Option<Activation>,
    /// The layer's last variable.
    out: usize,
}

/// A program as a chain of layers from an input variable.
struct Chain {
    input: usize,
    layers: Vec<Layer>,
}

/// The error for a program that is not a chain, at variable `v`.
fn not_a_chain(v: usize, what: &str) -> Error {
    Error::OutsideLimit {
        variable: v,
        reason: format!(
            "{what}; the limit of a program with batch_norm is computed for chains \
             dense (+ add_bias) → batch_norm (→ apply) → … → readout (layers without \
             batch_norm allowed), each weight and bias used once"
        ),
    }
}

/// Reads `program` as a chain, from its readout back to its input.
fn chain(program: &Program) -> Result<Chain> {
    let (out, _) = program.readout_of()?;
    let nodes = &program.nodes;
    let mut layers = Vec::new();
    let mut v = out;
    loop {
        let last = v;
        let mut activation = None;
        let mut batch_norm = None;
        let mut bias = None;
        if let Op::Apply(a) = &nodes[v].op {
            activation = Some(a.activation.clone());
            v = a.input;
        }
        if let Op::BatchNorm(b) = &nodes[v].op {
            batch_norm = Some(v);
            v = b.input;
        }
        if let Op::AddBias(b) = &nodes[v].op {
            if program.biases[b.bias].uses.len() != 1 {
                return Err(not_a_chain(v, "its bias is used at several places"));
            }
            bias = Some(b.bias);
            v = b.input;
        }
        let Op::Dense(dense) = &nodes[v].op else {
            return Err(not_a_chain(
                v,
                "it is not the output of a dense layer (a batch norm's input must be \
                 dense (+ add_bias), Gaussian in the limit)",
            ));
        };
        if program.weights[dense.weight].uses.len() != 1 {
            return Err(not_a_chain(v, "its weight is used at several places"));
        }
        layers.push(Layer {
            weight: dense.weight,
            bias,
            batch_norm,
            activation,
            out: last,
        });
        let z = dense.input;
        match nodes[z].width {
            Width::Input(_) => {
                layers.reverse();
                return Ok(Chain { input: z, layers });
            }
            Width::Hidden(1) => v = z,
            Width::Hidden(_) => {
                return Err(not_a_chain(z, "it is a concatenation"));
            }
        }
    }
}

/// The kernels $(Σ, Θ̊)$ of a batch-coupled `program` between the batches `x1` and `x2`
/// (`None`: within `x1`), rows of the input matrix: $N_1 × N_2$ each. See the module
/// documentation.
pub(crate) fn kernels(
    program: &Program,
    x1: &DMatrix<f64>,
    x2: Option<&DMatrix<f64>>,
    rule: &std::sync::Arc<GaussHermite>,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let chain = chain(program)?;
    let sizes: Vec<usize> = std::iter::once(x1.nrows())
        .chain(x2.map(DMatrix::nrows))
        .collect();
    let first_bn = chain.layers.iter().find_map(|l| l.batch_norm);
    if let Some(bn) = first_bn
        && let Some(&b) = sizes.iter().find(|&&b| b <= 3)
    {
        return Err(Error::NonFiniteResult {
            result: "infinite_width",
            reason: format!(
                "variable {bn} is a batch norm over a batch of {b} sample(s): its limiting \
                 NTK needs E[1/|Ph|²] over the centred batch vector Ph, which is infinite \
                 for B ≤ 3 (Ph spans B − 1 ≤ 2 dimensions); use batches of at least 4"
            ),
        });
    }
    // The input values of both batches, stacked, and their Gram matrix z·z̄/d.
    let z1 = program.fixed_values(&[chain.input], x1).remove(0);
    let z = match x2 {
        Some(x2) => {
            let z2 = program.fixed_values(&[chain.input], x2).remove(0);
            let mut z = DMatrix::zeros(z1.nrows() + z2.nrows(), z1.ncols());
            z.rows_mut(0, z1.nrows()).copy_from(&z1);
            z.rows_mut(z1.nrows(), z2.nrows()).copy_from(&z2);
            z
        }
        None => z1,
    };
    let gram = &z * z.transpose() / z.ncols().max(1) as f64;
    let n = gram.nrows();
    let ones = DMatrix::from_element(n, n, 1.0);

    let (_, readout) = program.readout_of()?;
    let mut k = DMatrix::zeros(n, n);
    let mut theta = DMatrix::zeros(n, n);
    for (l, layer) in chain.layers.iter().enumerate() {
        let w = &program.weights[layer.weight];
        let (sw2, cw) = (w.std * w.std, w.ntk_coefficient());
        let (sb2, cb) = layer.bias.map_or((0.0, 0.0), |b| {
            let b = &program.biases[b];
            (b.std * b.std, b.ntk_coefficient())
        });
        if l == 0 {
            k = &gram * sw2 + &ones * sb2;
            theta = &gram * cw + &ones * cb;
        } else {
            let (c, jtj) = post(&chain.layers[l - 1], &k, &theta, &sizes, rule)?;
            k = &c * sw2 + &ones * sb2;
            theta = &c * cw + &ones * cb + jtj * sw2;
        }
    }
    let last = chain
        .layers
        .last()
        .ok_or_else(|| not_a_chain(0, "it has no layer"))?;
    let (c, jtj) = post(last, &k, &theta, &sizes, rule)?;
    let sv2 = readout.weight_std_value().powi(2);
    let sb2 = readout.bias_std_value().powi(2);
    let (cv, cb) = program.readout_ntk_coef.unwrap_or((sv2, sb2));
    let nngp = &c * sv2 + &ones * sb2;
    let ntk = &c * cv + &ones * cb + jtj * sv2;
    let (b1, b2) = (sizes[0], sizes.get(1).copied());
    let block = |m: DMatrix<f64>| match b2 {
        Some(b2) => m.view((0, b1), (b1, b2)).into_owned(),
        None => m,
    };
    Ok((block(nngp), block(ntk)))
}

/// The error for the per-group kernels of a batch-coupled program.
pub(crate) fn no_group_kernels(program: &Program) -> Error {
    let bn = program
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::BatchNorm(_)))
        .unwrap_or(0);
    Error::OutsideLimit {
        variable: bn,
        reason: "it is a batch norm: the per-group split of the limiting NTK is not                  computed for batch-coupled programs (`infinite_width` computes the whole                  kernels)"
            .into(),
    }
}

/// $E[ψψ^⊤]$ and $E[JΘJ^⊤]$ of `layer`'s nonlinearity on the stacked batches of `sizes`,
/// from the pre-activations' second moments `k` and tangent moments `theta`.
fn post(
    layer: &Layer,
    k: &DMatrix<f64>,
    theta: &DMatrix<f64>,
    sizes: &[usize],
    rule: &std::sync::Arc<GaussHermite>,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let Some(bn) = layer.batch_norm else {
        return pairwise(layer, k, theta, rule);
    };
    let n = k.nrows();
    let mut c = DMatrix::zeros(n, n);
    let mut jtj = DMatrix::zeros(n, n);
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &b| {
            let o = *acc;
            *acc += b;
            Some(o)
        })
        .collect();
    let homogeneous = Homogeneous::of(layer.activation.as_ref());
    let mut centred = Vec::with_capacity(sizes.len());
    for (r, (&b, &o)) in sizes.iter().zip(&offsets).enumerate() {
        let kr = k.view((o, o), (b, b)).into_owned();
        let tr = theta.view((o, o), (b, b)).into_owned();
        let batch = Centred::new(&kr, bn, r)?;
        let (cr, jr) = match homogeneous {
            Some(h) => h.within(&batch, &tr, bn)?,
            None => {
                let act = layer.activation.as_ref().unwrap_or(&Activation::Identity);
                sphere_within(act, &batch, &tr, bn)?
            }
        };
        c.view_mut((o, o), (b, b)).copy_from(&cr);
        jtj.view_mut((o, o), (b, b)).copy_from(&jr);
        centred.push(batch);
    }
    if let [first, second] = centred.as_slice() {
        let Some(h) = homogeneous else {
            return Err(Error::OutsideLimit {
                variable: layer.out,
                reason: format!(
                    "it applies {} after the batch norm of variable {bn}: between two \
                     batches, the limit of a smooth φ after batch norm is not computed \
                     (only ReLU, LeakyReLU, Abs or no activation; within one batch, x2 = \
                     x1, any φ up to B = {SPHERE_MAX_BATCH})",
                    layer.activation.as_ref().unwrap_or(&Activation::Identity)
                ),
            });
        };
        let (b1, b2) = (sizes[0], sizes[1]);
        let t12 = theta.view((0, b1), (b1, b2)).into_owned();
        let k12 = k.view((0, b1), (b1, b2)).into_owned();
        let (c12, j12) = h.between(first, second, &k12, &t12, bn)?;
        c.view_mut((0, b1), (b1, b2)).copy_from(&c12);
        c.view_mut((b1, 0), (b2, b1)).copy_from(&c12.transpose());
        jtj.view_mut((0, b1), (b1, b2)).copy_from(&j12);
        jtj.view_mut((b1, 0), (b2, b1)).copy_from(&j12.transpose());
    }
    Ok((c, jtj))
}

/// A layer without batch norm: $C = E[φ(h_i)φ(h_j)]$ and $Ċ ⊙ Θ$ pairwise.
fn pairwise(
    layer: &Layer,
    k: &DMatrix<f64>,
    theta: &DMatrix<f64>,
    rule: &std::sync::Arc<GaussHermite>,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let act = layer.activation.as_ref().unwrap_or(&Activation::Identity);
    let dual = PairDual::new(act, act, rule);
    let n = k.nrows();
    let mut c = DMatrix::zeros(n, n);
    let mut jtj = DMatrix::zeros(n, n);
    for j in 0..n {
        for i in 0..=j {
            let (q1, cov, q2) = (k[(i, i)], k[(i, j)], k[(j, j)]);
            if dual.needs_determinant().is_some() && Closed::determinant_is_lost(q1, cov, q2) {
                return Err(Error::NonFiniteResult {
                    result: "infinite_width",
                    reason: format!(
                        "variable {} applies {act} to nearly parallel pre-activations of \
                         variance {q1:e} (rows {i} and {j} of the stacked batches): the \
                         rounding of their second moments moves the kernel by more than \
                         1e-8 relative; scale the inputs down",
                        layer.out
                    ),
                });
            }
            let (cc, cdot) = dual.eval(q1, cov, q2);
            c[(i, j)] = cc;
            c[(j, i)] = cc;
            jtj[(i, j)] = cdot * theta[(i, j)];
            jtj[(j, i)] = cdot * theta[(j, i)];
        }
    }
    Ok((c, jtj))
}

/// $P A P$ for square or rectangular `a` ($P = I − 11^⊤/B$ on each side).
fn centre(a: &DMatrix<f64>) -> DMatrix<f64> {
    let mut out = a.clone();
    let (r, c) = out.shape();
    for mut row in out.row_iter_mut() {
        let m = row.sum() / c as f64;
        row.add_scalar_mut(-m);
    }
    for mut col in out.column_iter_mut() {
        let m = col.sum() / r as f64;
        col.add_scalar_mut(-m);
    }
    out
}

/// An orthonormal basis of $1^⊥ ⊂ ℝ^B$ (Helmert): $B × (B − 1)$.
fn helmert(b: usize) -> DMatrix<f64> {
    DMatrix::from_fn(b, b - 1, |i, k| {
        let norm = (((k + 1) * (k + 2)) as f64).sqrt();
        match i.cmp(&(k + 1)) {
            std::cmp::Ordering::Less => 1.0 / norm,
            std::cmp::Ordering::Equal => -((k + 1) as f64) / norm,
            std::cmp::Ordering::Greater => 0.0,
        }
    })
}

/// One batch's centred second moments, scaled to unit largest eigenvalue:
/// $K/s = E Λ E^⊤$ on $1^⊥$ ($E$: $B × (B − 1)$ orthonormal, $Λ$ the eigenvalues, the
/// largest 1), with the scale $s$ (the results' $E[JΘJ^⊤]$ scales as $1/s$).
struct Centred {
    b: usize,
    scale: f64,
    lambda: Vec<f64>,
    e: DMatrix<f64>,
}

impl Centred {
    /// Batch `r`'s moments `k` ($B × B$), at batch norm `bn`.
    fn new(k: &DMatrix<f64>, bn: usize, r: usize) -> Result<Self> {
        let b = k.nrows();
        let q = helmert(b);
        let s = q.transpose() * k * &q;
        let s = (&s + s.transpose()) * 0.5;
        let eig = nalgebra::SymmetricEigen::try_new(s, f64::EPSILON, 10_000).ok_or_else(|| {
            Error::Factorization {
                message: format!(
                    "batch norm (variable {bn}): the eigendecomposition of batch {}'s \
                     centred covariance did not converge",
                    r + 1
                ),
            }
        })?;
        let max = eig.eigenvalues.max();
        let min = eig.eigenvalues.min();
        if !(max > 0.0 && max.is_finite() && min > RANK_TOLERANCE * max) {
            return Err(Error::OutsideLimit {
                variable: bn,
                reason: format!(
                    "on batch {} of {b} samples, the centred pre-activations of this batch \
                     norm have a singular covariance (eigenvalues from {min:e} to {max:e} on \
                     the B − 1 centred directions): two samples of the batch are equal, or \
                     the centred inputs span fewer than B − 1 dimensions (an input dimension \
                     below B − 1 before the first batch norm); the limit's Gaussian is \
                     degenerate",
                    r + 1
                ),
            });
        }
        Ok(Centred {
            b,
            scale: max,
            lambda: eig.eigenvalues.iter().map(|l| l / max).collect(),
            e: q * eig.eigenvectors,
        })
    }

    /// $E \operatorname{diag}(f(λ)) E^⊤$.
    fn spectral(&self, f: impl Fn(f64) -> f64) -> DMatrix<f64> {
        let mut scaled = self.e.clone();
        for (mut col, &l) in scaled.column_iter_mut().zip(&self.lambda) {
            col *= f(l);
        }
        scaled * self.e.transpose()
    }
}

/// A positively homogeneous φ: $φ(x) = αx + β|x|$ (no activation: the identity), and
/// the first refinement of the rules in $\ln t$ to try (0; the tests start finer).
#[derive(Clone, Copy, Debug)]
struct Homogeneous {
    alpha: f64,
    beta: f64,
    refine: u32,
}

/// The pair expectations at one covariance $[[p, c], [c, q]]$.
#[derive(Clone, Copy)]
struct PairTerms {
    /// $E[φ(x)φ(y)]$.
    phi: f64,
    /// $E[φ\'(x)φ\'(y)]$.
    dphi: f64,
    /// $E[φ\'\'(x) φ(y)]$.
    ddx: f64,
    /// $E[φ(x) φ\'\'(y)]$.
    ddy: f64,
}

impl Homogeneous {
    fn of(activation: Option<&Activation>) -> Option<Self> {
        let (a, b) = match activation {
            None | Some(Activation::Identity) => (1.0, 1.0),
            Some(Activation::Relu) => (1.0, 0.0),
            Some(Activation::LeakyRelu(s)) => (1.0, *s),
            Some(Activation::Abs) => (1.0, -1.0),
            Some(_) => return None,
        };
        // φ(x) = a x (x > 0), b x (x < 0) = ((a + b)/2) x + ((a − b)/2) |x|.
        Some(Homogeneous {
            alpha: 0.5 * (a + b),
            beta: 0.5 * (a - b),
            refine: 0,
        })
    }

    #[inline]
    fn pair(self, p: f64, c: f64, q: f64) -> PairTerms {
        let (a2, b2) = (self.alpha * self.alpha, self.beta * self.beta);
        let pq = p * q;
        let root = pq.sqrt();
        let rho = if root > 0.0 {
            (c / root).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let det = (pq - c * c).max(0.0).sqrt();
        let asin = rho.asin();
        let two_pi = 2.0 / PI;
        PairTerms {
            phi: a2 * c + b2 * two_pi * (det + c * asin),
            dphi: a2 + b2 * two_pi * asin,
            ddx: if p > 0.0 { b2 * two_pi * det / p } else { 0.0 },
            ddy: if q > 0.0 { b2 * two_pi * det / q } else { 0.0 },
        }
    }

    /// The expectations at one tilt: $(u, v)$ Gaussian with blocks `muu`, `muv`, `mvv`,
    /// $A$ = `a` ($B_1 × B_2$). Returns $[Φ, X_1, X_2, X_3, X_4]$ ($B_1 × B_2$):
    /// $Φ = E[φ(u_i)φ(v_j)]$, $X_1 = A_{ij} E[φ\'_iφ\'_j]$, $X_2 = E[φ\'(u_i)(Av)_iφ(v_j)]$,
    /// $X_3 = E[φ(u_i)(u^⊤A)_jφ\'(v_j)]$, $X_4 = E[φ(u_i)φ(v_j)u^⊤Av]$ (Stein's lemma for
    /// the factors $u$, $v$).
    fn terms(
        self,
        muu: &DMatrix<f64>,
        muv: &DMatrix<f64>,
        mvv: &DMatrix<f64>,
        a: &DMatrix<f64>,
    ) -> [DMatrix<f64>; 5] {
        let (b1, b2) = muv.shape();
        let mvu = muv.transpose();
        let a_mvu = a * &mvu; // B1 × B1: diag (A Mvu)_ii
        let a_mvv = a * mvv; // B1 × B2
        let muu_a = muu * a; // B1 × B2
        let mvu_a = &mvu * a; // B2 × B2: diag (Mvu A)_jj
        let inner = a.dot(muv);
        let muu_a_mvu = &muu_a * &mvu; // B1 × B1: diag
        let mvu_a_mvv = &mvu_a * mvv; // B2 × B2: diag
        let muu_a_mvv = &muu_a * mvv; // B1 × B2
        let mvu_a_mvu = &mvu_a * &mvu; // B2 × B1: (j, i)
        let mut out = [
            DMatrix::zeros(b1, b2),
            DMatrix::zeros(b1, b2),
            DMatrix::zeros(b1, b2),
            DMatrix::zeros(b1, b2),
            DMatrix::zeros(b1, b2),
        ];
        for j in 0..b2 {
            for i in 0..b1 {
                let t = self.pair(muu[(i, i)], muv[(i, j)], mvv[(j, j)]);
                out[0][(i, j)] = t.phi;
                out[1][(i, j)] = a[(i, j)] * t.dphi;
                out[2][(i, j)] = a_mvu[(i, i)] * t.ddx + a_mvv[(i, j)] * t.dphi;
                out[3][(i, j)] = muu_a[(i, j)] * t.dphi + mvu_a[(j, j)] * t.ddy;
                out[4][(i, j)] = inner * t.phi
                    + muu_a_mvu[(i, i)] * t.ddx
                    + mvu_a_mvv[(j, j)] * t.ddy
                    + (muu_a_mvv[(i, j)] + mvu_a_mvu[(j, i)]) * t.dphi;
            }
        }
        out
    }

    /// $E[ψψ^⊤]$ and $E[JΘJ^⊤]$ within one batch: 1-D integrals over $t$.
    fn within(
        self,
        batch: &Centred,
        theta: &DMatrix<f64>,
        bn: usize,
    ) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
        let b = batch.b;
        let a = centre(theta);
        let node = |ln_t: f64| -> [DMatrix<f64>; 2] {
            let t = ln_t.exp();
            let log_w: f64 = batch
                .lambda
                .iter()
                .map(|&l| -0.5 * (2.0 * t * l).ln_1p())
                .sum();
            let w = log_w.exp();
            let m = batch.spectral(|l| l / (1.0 + 2.0 * t * l));
            let [phi, x1, x2, x3, x4] = self.terms(&m, &m, &m, &a);
            // ‖u‖^{−2m} = Γ(m)^{−1} ∫ t^{m−1} e^{−t‖u‖²} dt, and dt = t d(ln t).
            let nngp = phi * (t * w);
            let ntk = x1 * (t * w) - (x2 + x3) * (t * t * w) + x4 * (0.5 * t * t * t * w);
            [nngp, ntk]
        };
        let features = batch.lambda.clone();
        let [c, j] = integrate_1d(&features, node, bn, self.refine)?;
        let bf = b as f64;
        let c = symmetric(c * bf);
        let j = symmetric(j * (bf / batch.scale));
        Ok((c, j))
    }

    /// $E[ψ_1ψ_2^⊤]$ and $E[J_1Θ_{12}J_2^⊤]$ between two batches: 2-D integrals over
    /// $(s, t)$ under the joint Gaussian, `k12` and `theta12` the cross blocks.
    fn between(
        self,
        first: &Centred,
        second: &Centred,
        k12: &DMatrix<f64>,
        theta12: &DMatrix<f64>,
        bn: usize,
    ) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
        let (b1, b2) = (first.b, second.b);
        let (d1, d2) = (b1 - 1, b2 - 1);
        // Joint coordinates: each batch in its own eigenbasis, scaled to unit largest
        // eigenvalue: g = (E₁ᵀh₁/√s₁, E₂ᵀh₂/√s₂), covariance [[Λ₁, C], [Cᵀ, Λ₂]].
        let cross = first.e.transpose() * k12 * &second.e / (first.scale * second.scale).sqrt();
        let n = d1 + d2;
        let mut s = DMatrix::zeros(n, n);
        for (i, &l) in first.lambda.iter().enumerate() {
            s[(i, i)] = l;
        }
        for (i, &l) in second.lambda.iter().enumerate() {
            s[(d1 + i, d1 + i)] = l;
        }
        s.view_mut((0, d1), (d1, d2)).copy_from(&cross);
        s.view_mut((d1, 0), (d2, d1)).copy_from(&cross.transpose());
        // S = L Lᵀ on its range (the joint may be singular: batches sharing samples).
        let eig = nalgebra::SymmetricEigen::new(s);
        let top = eig.eigenvalues.max();
        let rank: Vec<usize> = (0..n)
            .filter(|&i| eig.eigenvalues[i] > 1e-14 * top)
            .collect();
        let r = rank.len();
        let mut l = DMatrix::zeros(n, r);
        for (c, &i) in rank.iter().enumerate() {
            l.set_column(c, &(eig.eigenvectors.column(i) * eig.eigenvalues[i].sqrt()));
        }
        // Original coordinates: u = E₁ g₁, v = E₂ g₂.
        let mut g = DMatrix::zeros(b1 + b2, r);
        g.rows_mut(0, b1).copy_from(&(&first.e * l.rows(0, d1)));
        g.rows_mut(b1, b2).copy_from(&(&second.e * l.rows(d1, d2)));
        let f1 = l.rows(0, d1).transpose() * l.rows(0, d1);
        let f2 = l.rows(d1, d2).transpose() * l.rows(d1, d2);
        let a = centre(theta12);
        let node = |ln_s: f64, ln_t: f64| -> [DMatrix<f64>; 2] {
            let (s, t) = (ln_s.exp(), ln_t.exp());
            // y ∼ N(0, I) tilted by e^{−s‖u‖² − t‖v‖²}: N(0, (I + H)⁻¹), H = 2s F₁ + 2t F₂.
            let mut h = &f1 * (2.0 * s) + &f2 * (2.0 * t);
            for i in 0..r {
                h[(i, i)] += 1.0;
            }
            let Some(chol) = nalgebra::Cholesky::new(h) else {
                return [DMatrix::zeros(b1, b2), DMatrix::zeros(b1, b2)];
            };
            let lc = chol.l();
            let log_det: f64 = (0..r).map(|i| lc[(i, i)].ln()).sum();
            let w = (-log_det).exp();
            let z = lc
                .solve_lower_triangular(&g.transpose())
                .unwrap_or_else(|| DMatrix::zeros(r, b1 + b2));
            let m = z.transpose() * z;
            let muu = m.view((0, 0), (b1, b1)).into_owned();
            let muv = m.view((0, b1), (b1, b2)).into_owned();
            let mvv = m.view((b1, b1), (b2, b2)).into_owned();
            let [phi, x1, x2, x3, x4] = self.terms(&muu, &muv, &mvv, &a);
            // 1/‖u‖ and 1/‖u‖³: Γ(1/2)⁻¹ s^{−1/2} and Γ(3/2)⁻¹ s^{1/2}, times s for d(ln s).
            let (rs, rt) = (s.sqrt(), t.sqrt());
            let base = w / PI;
            let nngp = phi * (base * rs * rt);
            let ntk = x1 * (base * rs * rt)
                - x2 * (2.0 * base * rs * rt * t)
                - x3 * (2.0 * base * rs * rt * s)
                + x4 * (4.0 * base * rs * rt * s * t);
            [nngp, ntk]
        };
        let [c, j] = integrate_2d(&first.lambda, &second.lambda, node, bn, self.refine)?;
        let root = ((b1 * b2) as f64).sqrt();
        let j = j * (root / (first.scale * second.scale).sqrt());
        Ok((c * root, j))
    }
}

/// `m` made exactly symmetric (its mean with its transpose).
fn symmetric(m: DMatrix<f64>) -> DMatrix<f64> {
    (&m + m.transpose()) * 0.5
}

/// The trapezoid rule in $τ$ for $\ln t = c + a \sinh τ$, covering the features
/// $\ln t ≈ −\ln(2λ)$ of the eigenvalues `lambda` (in $(0, 1]$) and tails of 80 beyond,
/// with step $0.3/2^{\text{refine}}$ in $\ln t$ at the edge of the features.
struct LogRule {
    nodes: Vec<(f64, f64)>,
}

impl LogRule {
    fn new(lambda: &[f64], refine: u32) -> Self {
        let feature = |l: f64| -(2.0 * l).ln();
        let lo = lambda
            .iter()
            .map(|&l| feature(l))
            .fold(f64::INFINITY, f64::min);
        let hi = lambda
            .iter()
            .map(|&l| feature(l))
            .fold(f64::NEG_INFINITY, f64::max);
        let centre = 0.5 * (lo + hi);
        let half = 0.5 * (hi - lo) + 1.0;
        let a = half.max(1.0);
        let tail = 80.0;
        let tau_max = ((half + tail) / a).asinh();
        let h = 0.3 / (a * a + half * half).sqrt() / f64::from(1_u32 << refine);
        let count = (tau_max / h).ceil() as i64;
        let nodes = (-count..=count)
            .map(|k| {
                let tau = k as f64 * h;
                (centre + a * tau.sinh(), h * a * tau.cosh())
            })
            .collect();
        LogRule { nodes }
    }
}

/// $Σ_k ω_k f(\ln t_k)$ on the rule for `lambda`, checked against the rule of twice the
/// step, refined until they agree.
fn integrate_1d(
    lambda: &[f64],
    f: impl Fn(f64) -> [DMatrix<f64>; 2] + Sync,
    bn: usize,
    start: u32,
) -> Result<[DMatrix<f64>; 2]> {
    let mut last = f64::NAN;
    for refine in start..=start + LOG_RULE_REFINEMENTS {
        let rule = LogRule::new(lambda, refine);
        let values = parallel::map(&rule.nodes, |&(x, _)| f(x));
        let (rows, cols) = values[0][0].shape();
        let mut fine = [DMatrix::zeros(rows, cols), DMatrix::zeros(rows, cols)];
        let mut coarse = fine.clone();
        let middle = rule.nodes.len() / 2;
        for (k, (v, &(_, w))) in values.iter().zip(&rule.nodes).enumerate() {
            for (acc, m) in fine.iter_mut().zip(v) {
                *acc += m * w;
            }
            if (k + middle).is_multiple_of(2) {
                for (acc, m) in coarse.iter_mut().zip(v) {
                    *acc += m * (2.0 * w);
                }
            }
        }
        last = relative_gap(&fine, &coarse);
        if last <= LOG_RULE_AGREEMENT {
            return Ok(fine);
        }
    }
    Err(not_converged(bn, "t", last))
}

/// As [`integrate_1d`] over $(\ln s, \ln t)$, on the product of the two batches' rules.
fn integrate_2d(
    lambda1: &[f64],
    lambda2: &[f64],
    f: impl Fn(f64, f64) -> [DMatrix<f64>; 2] + Sync,
    bn: usize,
    start: u32,
) -> Result<[DMatrix<f64>; 2]> {
    let mut last = f64::NAN;
    for refine in start..=start + LOG_RULE_REFINEMENTS {
        let (r1, r2) = (LogRule::new(lambda1, refine), LogRule::new(lambda2, refine));
        let (m1, m2) = (r1.nodes.len() / 2, r2.nodes.len() / 2);
        let indexed: Vec<(usize, (f64, f64))> = r1.nodes.iter().copied().enumerate().collect();
        let rows = parallel::map(&indexed, |&(k1, (x1, w1))| {
            let mut fine: Option<[DMatrix<f64>; 2]> = None;
            let mut coarse: Option<[DMatrix<f64>; 2]> = None;
            for (k2, &(x2, w2)) in r2.nodes.iter().enumerate() {
                let v = f(x1, x2);
                let w = w1 * w2;
                let add = |acc: &mut Option<[DMatrix<f64>; 2]>, scale: f64| match acc {
                    Some(a) => {
                        for (a, m) in a.iter_mut().zip(&v) {
                            *a += m * scale;
                        }
                    }
                    None => *acc = Some([&v[0] * scale, &v[1] * scale]),
                };
                add(&mut fine, w);
                if (k1 + m1).is_multiple_of(2) && (k2 + m2).is_multiple_of(2) {
                    add(&mut coarse, 4.0 * w);
                }
            }
            (fine, coarse)
        });
        let mut fine: Option<[DMatrix<f64>; 2]> = None;
        let mut coarse: Option<[DMatrix<f64>; 2]> = None;
        for (f_row, c_row) in rows {
            for (acc, row) in [(&mut fine, f_row), (&mut coarse, c_row)] {
                if let Some(row) = row {
                    match acc {
                        Some(a) => {
                            a[0] += &row[0];
                            a[1] += &row[1];
                        }
                        None => *acc = Some(row),
                    }
                }
            }
        }
        let (Some(fine), Some(coarse)) = (fine, coarse) else {
            break;
        };
        last = relative_gap(&fine, &coarse);
        if last <= LOG_RULE_AGREEMENT {
            return Ok(fine);
        }
    }
    Err(not_converged(bn, "(s, t)", last))
}

/// The largest difference of `fine` and `coarse` relative to the largest entry.
fn relative_gap(fine: &[DMatrix<f64>; 2], coarse: &[DMatrix<f64>; 2]) -> f64 {
    fine.iter()
        .zip(coarse)
        .map(|(f, c)| (f - c).amax() / f.amax().max(f64::MIN_POSITIVE))
        .fold(0.0, f64::max)
}

fn not_converged(bn: usize, over: &str, gap: f64) -> Error {
    Error::OutsideLimit {
        variable: bn,
        reason: format!(
            "the integral over {over} of this batch norm's expectations did not converge \
             (the last two rules differ by {gap:e} relative): the batch's covariance is too \
             ill-conditioned"
        ),
    }
}

/// Nodes and weights (summing to 1) of the $n$-point Gauss rule for the weight
/// $(1 − x^2)^{μ − 1/2}$ on $[−1, 1]$ (Gauss–Gegenbauer, $μ ≥ 1/2$), by Golub–Welsch.
fn gegenbauer(n: usize, mu: f64) -> (Vec<f64>, Vec<f64>) {
    let jacobi = DMatrix::from_fn(n, n, |i, j| {
        if i + 1 == j || j + 1 == i {
            let m = i.max(j) as f64;
            (m * (m + 2.0 * mu - 1.0) / (4.0 * (m + mu) * (m + mu - 1.0))).sqrt()
        } else {
            0.0
        }
    });
    let eig = nalgebra::SymmetricEigen::new(jacobi);
    let mut pairs: Vec<(f64, f64)> = (0..n)
        .map(|k| (eig.eigenvalues[k], eig.eigenvectors[(0, k)].powi(2)))
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    (
        pairs.iter().map(|p| p.0).collect(),
        pairs.iter().map(|p| p.1 / total).collect(),
    )
}

/// The number of points per polar angle of the sphere rule on $S^{d−1}$ (the azimuth
/// gets twice as many).
fn sphere_points(d: usize) -> usize {
    match d {
        0..=3 => 64,
        4 => 40,
        _ => 26,
    }
}

/// $E[ψψ^⊤]$ and $E[JΘJ^⊤]$ within one batch for any φ: the product rule on the sphere of
/// centred directions, checked against a rule with three quarters of the points.
fn sphere_within(
    act: &Activation,
    batch: &Centred,
    theta: &DMatrix<f64>,
    bn: usize,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    sphere_within_at(act, batch, theta, bn, sphere_points(batch.b - 1))
}

/// [`sphere_within`] with `n` points per polar angle.
fn sphere_within_at(
    act: &Activation,
    batch: &Centred,
    theta: &DMatrix<f64>,
    bn: usize,
    n: usize,
) -> Result<(DMatrix<f64>, DMatrix<f64>)> {
    let b = batch.b;
    if b > SPHERE_MAX_BATCH {
        return Err(Error::OutsideLimit {
            variable: bn,
            reason: format!(
                "it is followed by {act}, a smooth activation, on a batch of {b} samples: its \
                 expectations are integrated over the sphere of the B − 1 centred \
                 directions, at a cost growing like n^(B−2), and are computed up to B = \
                 {SPHERE_MAX_BATCH} (ReLU, LeakyReLU, Abs and no activation at any B)"
            ),
        });
    }
    let fine = sphere_rule(act, batch, theta, n);
    let coarse = sphere_rule(act, batch, theta, (3 * n).div_ceil(4));
    let gap = relative_gap(&fine, &coarse);
    if gap.is_nan() || gap > SPHERE_RULE_AGREEMENT {
        return Err(Error::OutsideLimit {
            variable: bn,
            reason: format!(
                "the sphere rule for {act} after this batch norm did not converge (rules of \
                 {n} and {} points per angle differ by {gap:e} relative, more than \
                 {SPHERE_RULE_AGREEMENT:e}): the batch's covariance is too anisotropic",
                (3 * n).div_ceil(4)
            ),
        });
    }
    let [c, j] = fine;
    Ok((symmetric(c), symmetric(j)))
}

/// The sphere rule with `n` points per polar angle: $[E[ψψ^⊤], E[JΘJ^⊤]]$.
///
/// With $g = Λ^{1/4} y$ (in $S$'s eigenbasis), $y ∼ N(0, Λ^{1/2})$ and $y = ρθ$, an
/// expectation of $F(g/\lVert g \rVert)/\lVert g \rVert^{2m}$ ($m = 0, 1$) is
/// $\frac{Γ(d/2 − m)}{2^m Γ(d/2)} |Λ^{1/2}|^{−1/2} E_θ[F(ω(θ)) a(θ)^{m − d/2} /
/// \lVert Λ^{1/4}θ \rVert^{2m}]$ with $θ$ uniform on $S^{d−1}$ and
/// $a(θ) = θ^⊤Λ^{−1/2}θ$ (integrating out $ρ$; the factor is $1$ and $1/(d − 2)$).
/// Splitting the anisotropy between the map $θ ↦ ω$ and the angular density this way
/// (rather than whitening, $g = Λ^{1/2}y$, or the angular central Gaussian density on
/// $ω$ itself) halves the sharpness of both: on `tests/data/batchnorm.json`
/// ($λ_{\min}/λ_{\max} ≈ 0.04$) it reaches $10^{−12}$ (NNGP) and $3·10^{−10}$ (NTK) with
/// 28 points per angle, where whitening is still at $10^{−8}$ and $10^{−6}$ with 40.
fn sphere_rule(
    act: &Activation,
    batch: &Centred,
    theta: &DMatrix<f64>,
    n: usize,
) -> [DMatrix<f64>; 2] {
    let b = batch.b;
    let d = b - 1;
    let bf = b as f64;
    let a = centre(theta);
    // Eigen-directions by decreasing eigenvalue (the first is the polar axis).
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| batch.lambda[j].total_cmp(&batch.lambda[i]));
    // u = E Λ^{1/4} θ, and y = ρθ has covariance Λ^{1/2}.
    let mut l = DMatrix::zeros(b, d);
    let mut inv_s = vec![0.0; d];
    let mut log_det = 0.0;
    for (k, &e) in order.iter().enumerate() {
        let lam = batch.lambda[e];
        l.set_column(k, &(batch.e.column(e) * lam.powf(0.25)));
        inv_s[k] = 1.0 / lam.sqrt();
        log_det += 0.5 * lam.ln();
    }
    let norm = (-0.5 * log_det).exp();
    // Polar angles k = 1 … d − 2: x = cos a_k with weight (1 − x²)^{(d−2−k)/2}.
    let polar: Vec<(Vec<f64>, Vec<f64>)> = (1..d.saturating_sub(1))
        .map(|k| gegenbauer(n, (d - 1 - k) as f64 / 2.0))
        .collect();
    let azimuth = 2 * n;
    let first: Vec<usize> = if polar.is_empty() {
        vec![0]
    } else {
        (0..n).collect()
    };
    let partial = parallel::map(&first, |&i0| {
        let mut c = vec![0.0; b * b];
        let mut j = vec![0.0; b * b];
        let mut theta_v = vec![0.0; d];
        let mut u = vec![0.0; b];
        let mut psi = vec![0.0; b];
        let mut dpsi = vec![0.0; b];
        let mut au = vec![0.0; b];
        let inner = polar.len().saturating_sub(1);
        let combos = n.pow(inner as u32);
        for combo in 0..combos {
            // The polar nodes: the first from the task, the rest from `combo`.
            let mut weight = 1.0;
            let mut radius = 1.0;
            let mut rest = combo;
            for (k, (nodes, weights)) in polar.iter().enumerate() {
                let idx = if k == 0 {
                    i0
                } else {
                    let idx = rest % n;
                    rest /= n;
                    idx
                };
                theta_v[k] = radius * nodes[idx];
                weight *= weights[idx];
                radius *= (1.0 - nodes[idx] * nodes[idx]).max(0.0).sqrt();
            }
            for m in 0..azimuth {
                let phi = 2.0 * PI * m as f64 / azimuth as f64;
                theta_v[d - 2] = radius * phi.cos();
                theta_v[d - 1] = radius * phi.sin();
                let quad: f64 = (0..d).map(|k| inv_s[k] * theta_v[k] * theta_v[k]).sum();
                let w0 = weight / azimuth as f64 * norm;
                // a^{−d/2} and a^{1 − d/2}.
                let wj = w0 * inverse_half_power(quad, d - 2);
                let w = wj / quad;
                for (i, ui) in u.iter_mut().enumerate() {
                    *ui = (0..d).map(|k| l[(i, k)] * theta_v[k]).sum();
                }
                let r2: f64 = u.iter().map(|x| x * x).sum();
                let r = r2.sqrt();
                for i in 0..b {
                    let zi = bf.sqrt() * u[i] / r;
                    psi[i] = act.phi(zi);
                    dpsi[i] = act.derivative(zi);
                    u[i] /= r;
                }
                // Ã = (I − ûûᵀ) A (I − ûûᵀ) = A − û(Aû)ᵀ − (Aû)ûᵀ + (ûᵀAû) ûûᵀ.
                for (i, x) in au.iter_mut().enumerate() {
                    *x = (0..b).map(|k| a[(i, k)] * u[k]).sum();
                }
                let uau: f64 = (0..b).map(|i| u[i] * au[i]).sum();
                let scale = wj * bf / r2;
                for q in 0..b {
                    for p in 0..=q {
                        c[q * b + p] += w * psi[p] * psi[q];
                        let at = a[(p, q)] - u[p] * au[q] - au[p] * u[q] + uau * u[p] * u[q];
                        j[q * b + p] += scale * dpsi[p] * dpsi[q] * at;
                    }
                }
            }
        }
        (c, j)
    });
    let mut c = DMatrix::zeros(b, b);
    let mut j = DMatrix::zeros(b, b);
    for (pc, pj) in partial {
        for q in 0..b {
            for p in 0..=q {
                c[(p, q)] += pc[q * b + p];
                j[(p, q)] += pj[q * b + p];
            }
        }
    }
    for q in 0..b {
        for p in 0..q {
            c[(q, p)] = c[(p, q)];
            j[(q, p)] = j[(p, q)];
        }
    }
    // E[1/‖y‖²] = 1/(d − 2) for y ∼ N(0, I_d), and the scale of K.
    let j = j / ((d as f64 - 2.0) * batch.scale);
    [c, j]
}

/// $q^{−m/2}$.
#[inline]
fn inverse_half_power(q: f64, m: usize) -> f64 {
    let whole = q.powi(-((m / 2) as i32));
    if m % 2 == 1 { whole / q.sqrt() } else { whole }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch's second moments: a Gram matrix of Gaussian rows of dimension b + 3 and
    /// a constant (a bias).
    fn batch_covariance(b: usize, seed: u64) -> DMatrix<f64> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let x = DMatrix::<f64>::from_fn(b, b + 3, |_, _| StandardNormal.sample(&mut rng));
        &x * x.transpose() / (b + 3) as f64 + DMatrix::from_element(b, b, 0.3)
    }

    /// The isotropic case in closed form: K = κP, identity φ. Then u/‖u‖ is uniform on
    /// the sphere of 1^⊥ (dimension d = B − 1), so E[ψψᵀ] = B P/d and
    /// E[JAJᵀ] = (B/(κ(d − 2))) (A − 2A/d + (tr A · P + 2A)/(d(d + 2))) for A = PΘP.
    #[test]
    fn isotropic_identity_matches_closed_form() {
        for b in [4, 5, 6, 8] {
            let kappa = 2.5;
            let p = DMatrix::<f64>::identity(b, b) - DMatrix::from_element(b, b, 1.0 / b as f64);
            let k = &p * kappa;
            let theta = batch_covariance(b, 3);
            let a = centre(&theta);
            let d = (b - 1) as f64;
            let bf = b as f64;
            let c_exact = &p * (bf / d);
            let e_a = &a - &a * (2.0 / d) + (&p * a.trace() + &a * 2.0) / (d * (d + 2.0));
            let j_exact = e_a * (bf / (kappa * (d - 2.0)));
            let batch = Centred::new(&k, 0, 0).unwrap();
            let h = Homogeneous::of(None).unwrap();
            let (c, j) = h.within(&batch, &theta, 0).unwrap();
            assert!(
                (&c - &c_exact).amax() < 1e-12,
                "B = {b}: {}",
                (&c - &c_exact).amax()
            );
            assert!((&j - &j_exact).amax() < 1e-12 * j_exact.amax(), "B = {b}");
            if b <= SPHERE_MAX_BATCH {
                let (c, j) = sphere_within(&Activation::Identity, &batch, &theta, 0).unwrap();
                assert!((&c - &c_exact).amax() < 1e-12, "sphere B = {b}");
                assert!(
                    (&j - &j_exact).amax() < 1e-12 * j_exact.amax(),
                    "sphere B = {b}"
                );
            }
        }
    }

    /// The 2-D integral between two batches, given the same batch twice (a singular
    /// joint covariance), is the 1-D integral within it: every homogeneous φ. (The two
    /// integrals share only the closed forms of pairs: the weights, the tilts and the
    /// Stein terms differ.)
    #[test]
    fn between_a_batch_and_itself_is_within() {
        for act in [
            None,
            Some(Activation::Relu),
            Some(Activation::LeakyRelu(-0.3)),
            Some(Activation::Abs),
        ] {
            let h = Homogeneous::of(act.as_ref()).unwrap();
            let k = batch_covariance(5, 1);
            let theta = batch_covariance(5, 9);
            let batch = Centred::new(&k, 0, 0).unwrap();
            let (c, j) = h.within(&batch, &theta, 0).unwrap();
            let (c12, j12) = h.between(&batch, &batch, &k, &theta, 0).unwrap();
            // Each sample meets itself across the two copies at correlation exactly 1,
            // where the arcsine and √(pq − c²) amplify round-off to about √ε (the
            // closed forms' known limit, as against neural-tangents): 1e-8.
            assert!(
                (&c12 - &c).amax() < 1e-8 * c.amax(),
                "{act:?}: {}",
                (&c12 - &c).amax()
            );
            assert!(
                (&j12 - &j).amax() < 1e-8 * j.amax(),
                "{act:?}: {}",
                (&j12 - &j).amax()
            );
        }
    }

    /// Relative max-entry difference.
    fn gap(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
        (a - b).amax() / b.amax()
    }

    /// The accuracy the module documentation states: each rule against a finer one
    /// (the rules in ln t at a quarter of the step, the sphere rule with 12 more points
    /// per angle), on batches whose eigenvalues spread over a factor of 6 to 26.
    #[test]
    fn rules_reach_their_documented_accuracy() {
        for b in [4, 5, 6, 8] {
            let k = batch_covariance(b, 5);
            let theta = batch_covariance(b, 6);
            let batch = Centred::new(&k, 0, 0).unwrap();
            for act in [Activation::Relu, Activation::LeakyRelu(0.2)] {
                let h = Homogeneous::of(Some(&act)).unwrap();
                let fine = Homogeneous { refine: 2, ..h };
                let (c, j) = h.within(&batch, &theta, 0).unwrap();
                let (cf, jf) = fine.within(&batch, &theta, 0).unwrap();
                assert!(
                    gap(&c, &cf) < 1e-12 && gap(&j, &jf) < 1e-12,
                    "{act} B = {b}"
                );
                if b <= 6 {
                    // Two batches of b and b + 1 samples, jointly Gaussian.
                    let (joint, tj) = (
                        batch_covariance(2 * b + 1, 7),
                        batch_covariance(2 * b + 1, 8),
                    );
                    let first =
                        Centred::new(&joint.view((0, 0), (b, b)).into_owned(), 0, 0).unwrap();
                    let other =
                        Centred::new(&joint.view((b, b), (b + 1, b + 1)).into_owned(), 0, 1)
                            .unwrap();
                    let k12 = joint.view((0, b), (b, b + 1)).into_owned();
                    let t12 = tj.view((0, b), (b, b + 1)).into_owned();
                    let (c, j) = h.between(&first, &other, &k12, &t12, 0).unwrap();
                    let (cf, jf) = fine.between(&first, &other, &k12, &t12, 0).unwrap();
                    assert!(
                        gap(&c, &cf) < 1e-12 && gap(&j, &jf) < 1e-12,
                        "{act} B = {b}"
                    );
                }
            }
            if b <= SPHERE_MAX_BATCH {
                let n = sphere_points(b - 1);
                let (c, j) = sphere_within(&Activation::Erf, &batch, &theta, 0).unwrap();
                let (cf, jf) =
                    sphere_within_at(&Activation::Erf, &batch, &theta, 0, n + 12).unwrap();
                // Measured: 2e-15 at B = 4, 5; 1e-13 and 2e-11 at B = 6.
                let (tc, tj) = if b < 6 { (1e-13, 1e-13) } else { (1e-11, 1e-9) };
                assert!(gap(&c, &cf) < tc && gap(&j, &jf) < tj, "erf B = {b}");
            }
        }
    }

    #[test]
    fn gegenbauer_integrates_polynomials() {
        // ∫ x² (1 − x²)^{1/2} dx / ∫ (1 − x²)^{1/2} dx = 1/4 (μ = 1).
        let (x, w) = gegenbauer(8, 1.0);
        let m2: f64 = x.iter().zip(&w).map(|(x, w)| x * x * w).sum();
        assert!((m2 - 0.25).abs() < 1e-15);
        // Legendre: the mean of x⁴ on [−1, 1] is 1/5.
        let (x, w) = gegenbauer(6, 0.5);
        let m4: f64 = x.iter().zip(&w).map(|(x, w)| x.powi(4) * w).sum();
        assert!((m4 - 0.2).abs() < 1e-15);
    }
}
