//! The numeric side, emitted as tape instructions: second moments M, tangent moments
//! T, gradient moments D, and the per-sample scalars (LayerNorm scales, attention
//! weights) their combinations carry.

use crate::error::{Error, Result};
use crate::program::Group;

use super::forms::{Atom, Base, Form, Gauss, Mono, ONE, SampleScalar, coef};
use super::{Compiler, GroupTerms, Key, Mode, Side};
use crate::infinite::tape::{Tape, Term, Val};

/// A term c·a·b of a sum whose two factors carry the monomials m(x) and m'(x̄).
type Scaled = (f64, Mono, Mono, Val, Option<Val>);

/// When both combinations of a pair have at least this many terms, the pair is
/// expanded one side at a time: M(a, Σ_j c_j m_j b_j) = Σ_j c_j m_j(x̄) M(a, b_j), with
/// M(a, b_j) memoised. Attention's outputs share their value atoms, so this turns the
/// T² terms of each of the T² token pairs into T² shared halves of T terms each:
/// O(T³) per sample pair, the cost of the matrix products C^y = (A+I) C^k (Ā+I)ᵀ.
const FACTOR: usize = 3;

impl Compiler<'_> {
    /// B(a, b̄) = Σ_{x ∈ a, y ∈ b} c_x c_y m_x(x) m_y(x̄) β(x, y) of two linear
    /// combinations, memoised under `key`; `pair(x, y)` gives β as a product of one or
    /// two tape values (`None`: the pair contributes nothing). When both combinations
    /// are long (see [`FACTOR`]) the sum is expanded one side at a time,
    /// B(a, b̄) = Σ_y c_y m_y(x̄) `column(y)` with `column(y)` = B(a, ȳ) memoised.
    fn bilinear<K: Copy>(
        &mut self,
        key: (Key, Mode),
        a: &[((K, Mono), super::forms::Coef)],
        b: &[((K, Mono), super::forms::Coef)],
        mut column: impl FnMut(&mut Self, K) -> Result<Val>,
        mut pair: impl FnMut(&mut Self, K, K) -> Result<Option<(Val, Option<Val>)>>,
    ) -> Result<Val> {
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let mode = key.1;
        let mut items: Vec<Scaled> = Vec::new();
        if a.len() >= FACTOR && b.len() >= FACTOR {
            for &((y, my), cy) in b {
                let v = column(self, y)?;
                items.push((coef(cy), ONE, my, v, None));
            }
        } else {
            for &((x, mx), cx) in a {
                for &((y, my), cy) in b {
                    if let Some((v, w)) = pair(self, x, y)? {
                        items.push((coef(cx) * coef(cy), mx, my, v, w));
                    }
                }
            }
        }
        let v = self.scaled_sum(mode, items)?;
        self.memo.insert(key, v);
        Ok(v)
    }

    // ---------------------------------------------------------------- tangents

    /// T(a, b̄) = lim Σ_θ ∂a_α/∂θ ∂b̄_α/∂θ of two forms of equal width (the tangent
    /// moment; input columns have none): the forward-mode counterpart of the
    /// gradient moments, T(h_u, h̄_v) = c_W M(z_u, z̄_v) + σ_W² T(z_u, z̄_v) for uses of
    /// one weight, T(φ(g), ψ(h̄)) = E[φ'(g) ψ'(h̄)] T(g, h̄), per-sample coefficients
    /// carried along (the derivatives of LayerNorm scales and attention weights vanish
    /// in the limit). It is the adjoint of the backward recursion (the same sums over
    /// the same paths), so Θ̊ = c_v M(out) + σ_v² T(out) + c_b' equals the sum of the
    /// group terms.
    pub(crate) fn tangent_of_forms(&mut self, a: &Form, b: &Form) -> Result<Val> {
        match (a, b) {
            (Form::Blocks(x), Form::Blocks(y)) => {
                let k = x.len();
                let mut terms = Vec::with_capacity(k);
                for (&p, &q) in x.iter().zip(y) {
                    let t = self.tangent(p, q)?;
                    terms.push((1.0 / k as f64, t, None));
                }
                Ok(self.poly(Mode::Cross, 0.0, terms))
            }
            (Form::NotGaussian(why), _) | (_, Form::NotGaussian(why)) => Err(why.clone()),
            _ => Ok(Val::Zero),
        }
    }

    /// T of two atom combinations.
    fn tangent(&mut self, a: u32, b: u32) -> Result<Val> {
        let (ta, tb) = (self.hlin.get(a), self.hlin.get(b));
        let column = |c: &mut Self, y| {
            let single = c.hlin.id(vec![((y, ONE), 1.0_f64.to_bits())]);
            c.tangent(a, single)
        };
        // Tangents first, then the duals: the recursion then emits each layer's
        // moments just before the tangents that read them.
        self.bilinear(
            (Key::Tangent(a, b), Mode::Cross),
            &ta,
            &tb,
            column,
            |c, x, y| {
                Ok(Some(match (x, y) {
                    (Atom::Gauss(g), Atom::Gauss(h)) => (c.tangent_base(g, h)?, None),
                    (Atom::Phi(p), Atom::Phi(q)) => {
                        let (g, h) = (c.phi.get(p).1, c.phi.get(q).1);
                        let t = c.tangent_lin(g, h)?;
                        (c.dual(p, q, Mode::Cross)?.1, Some(t))
                    }
                    (Atom::Phi(p), Atom::Gauss(h)) => {
                        let (g, h) = (c.phi.get(p).1, c.single(h));
                        let t = c.tangent_lin(g, h)?;
                        (c.mean_derivative(p, Side::Row, Mode::Cross)?, Some(t))
                    }
                    (Atom::Gauss(g), Atom::Phi(q)) => {
                        let (g, h) = (c.single(g), c.phi.get(q).1);
                        let t = c.tangent_lin(g, h)?;
                        (c.mean_derivative(q, Side::Col, Mode::Cross)?, Some(t))
                    }
                }))
            },
        )
    }

    /// T of two Gaussian combinations.
    fn tangent_lin(&mut self, g: u32, h: u32) -> Result<Val> {
        let (tg, th) = (self.glin.get(g), self.glin.get(h));
        let column = |c: &mut Self, y| {
            let single = c.single(y);
            c.tangent_lin(g, single)
        };
        self.bilinear(
            (Key::TangentLin(g, h), Mode::Cross),
            &tg,
            &th,
            column,
            |c, x, y| Ok(Some((c.tangent_base(x, y)?, None))),
        )
    }

    /// T of two Gaussian bases: a weight's own derivative c_W M(z_u, z̄_v) plus what
    /// flows through its inputs, σ_W² T(z_u, z̄_v); a bias's c_b.
    fn tangent_base(&mut self, g: u32, h: u32) -> Result<Val> {
        let key = (Key::TangentBase(g, h), Mode::Cross);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let v = match (*self.gauss.get(g), *self.gauss.get(h)) {
            (Gauss::Dense(u), Gauss::Dense(v)) => self.dense_tangent(u, v)?,
            (Gauss::Bias(b1, k1), Gauss::Bias(b2, k2)) => self.bias_tangent((b1, k1), (b2, k2)),
            _ => Val::Zero,
        };
        self.memo.insert(key, v);
        Ok(v)
    }

    // ---------------------------------------------------------------- gradients

    /// One group's weight and bias terms from the gradient moments.
    pub(super) fn group_terms(&mut self, group: Group) -> Result<GroupTerms> {
        let program = self.program;
        Ok(match group {
            Group::Weight(w) => {
                let decl = &program.weights[w];
                let s2 = decl.ntk_coefficient();
                let mut terms = Vec::new();
                for &u in &decl.uses {
                    for &v in &decl.uses {
                        let d = self.grad_of_nodes(u, v, 0)?;
                        if d == Val::Zero {
                            continue;
                        }
                        let m = self.fan_in_moment(u, v, Mode::Cross)?;
                        terms.push((s2, m, Some(d)));
                    }
                }
                GroupTerms {
                    weights: self.poly(Mode::Cross, 0.0, terms),
                    bias: None,
                }
            }
            Group::Bias(b) => {
                let decl = &program.biases[b];
                let s2 = decl.ntk_coefficient();
                let blocks = decl.width.map_or(1, |w| w.hidden_blocks().max(1));
                let mut terms = Vec::new();
                for &u in &decl.uses {
                    for &v in &decl.uses {
                        for k in 0..blocks {
                            let d = self.grad_of_nodes(u, v, k)?;
                            if d != Val::Zero {
                                terms.push((s2, d, None));
                            }
                        }
                    }
                }
                GroupTerms {
                    weights: Val::Zero,
                    bias: Some(self.poly(Mode::Cross, 0.0, terms)),
                }
            }
        })
    }

    /// D of block `k` of variables u (batch 1) and v (batch 2).
    pub(crate) fn grad_of_nodes(&mut self, u: usize, v: usize, k: usize) -> Result<Val> {
        let (Some(&a), Some(&b)) = (self.grads[u].get(k), self.grads[v].get(k)) else {
            return Ok(Val::Zero);
        };
        self.grad_moment(a, b)
    }

    /// D(a, b̄) = Σ c c' m(x) m'(x̄) E[f f̄'] Cov(B, B̄') of two backward combinations.
    fn grad_moment(&mut self, a: u32, b: u32) -> Result<Val> {
        let (ta, tb) = (self.blin.get(a), self.blin.get(b));
        let column = |c: &mut Self, y| {
            let single = c.blin.id(vec![((y, ONE), 1.0_f64.to_bits())]);
            c.grad_moment(a, single)
        };
        self.bilinear(
            (Key::Grad(a, b), Mode::Cross),
            &ta,
            &tb,
            column,
            |c, x, y| {
                let cov = c.base_cov(x.base, y.base)?;
                if cov == Val::Zero {
                    return Ok(None);
                }
                Ok(Some((c.factor_moment(x.factor, y.factor)?, Some(cov))))
            },
        )
    }

    /// Cov of two backward bases.
    fn base_cov(&mut self, x: Base, y: Base) -> Result<Val> {
        match (x, y) {
            (Base::Readout(k), Base::Readout(l)) if k == l => {
                let (out, readout) = self.program.readout_of()?;
                let blocks = self.program.nodes[out].width.hidden_blocks().max(1);
                Ok(Val::Const(
                    readout.weight_std_value().powi(2) / blocks as f64,
                ))
            }
            (
                Base::Transposed {
                    weight: w1,
                    node: u,
                    block: k,
                },
                Base::Transposed {
                    weight: w2,
                    node: v,
                    block: l,
                },
            ) => self.transposed_covariance((w1, u, k), (w2, v, l)),
            _ => Ok(Val::Zero),
        }
    }

    /// E[f(x) f̄'(x̄)] for backward factors: 1, E φ'(g), or the Ċ of the dual.
    fn factor_moment(&mut self, a: Option<u32>, b: Option<u32>) -> Result<Val> {
        Ok(match (a, b) {
            (None, None) => Val::Const(1.0),
            (Some(p), None) => self.mean_derivative(p, Side::Row, Mode::Cross)?,
            (None, Some(p)) => self.mean_derivative(p, Side::Col, Mode::Cross)?,
            (Some(p), Some(q)) => self.dual(p, q, Mode::Cross)?.1,
        })
    }

    // ---------------------------------------------------------------- forward moments

    /// M of two forms of equal width (`var` names the first in messages).
    pub(crate) fn moment_of_forms(
        &mut self,
        a: &Form,
        b: &Form,
        mode: Mode,
        var: usize,
    ) -> Result<Val> {
        match (a, b) {
            (Form::Fixed(x), Form::Fixed(y)) => Ok(self.gram(*x, *y, mode)),
            (Form::Blocks(x), Form::Blocks(y)) => {
                let k = x.len();
                let mut terms = Vec::with_capacity(k);
                for (&p, &q) in x.iter().zip(y) {
                    let m = self.moment(p, q, mode)?;
                    terms.push((1.0 / k as f64, m, None));
                }
                Ok(self.poly(mode, 0.0, terms))
            }
            (Form::NotGaussian(why), _) | (_, Form::NotGaussian(why)) => Err(why.clone()),
            _ => Err(Error::OutsideLimit {
                variable: var,
                reason: "a weight sees input columns at one use and hidden vectors at another"
                    .into(),
            }),
        }
    }

    /// z_a · z̄_b / d for fixed variables.
    fn gram(&mut self, a: usize, b: usize, mode: Mode) -> Val {
        let (a, b) = if mode == Mode::Diag && b < a {
            (b, a)
        } else {
            (a, b)
        };
        let key = (Key::Gram(a, b), mode);
        if let Some(&v) = self.memo.get(&key) {
            return v;
        }
        let index = |fixed: &mut Vec<usize>, x: usize| {
            fixed.iter().position(|&f| f == x).unwrap_or_else(|| {
                fixed.push(x);
                fixed.len() - 1
            })
        };
        let (fa, fb) = (index(&mut self.fixed, a), index(&mut self.fixed, b));
        let v = self.tape(mode).push_gram(fa, fb);
        self.memo.insert(key, v);
        v
    }

    /// The Gaussian combination of one base.
    fn single(&mut self, g: u32) -> u32 {
        self.glin.id(vec![((g, ONE), 1.0_f64.to_bits())])
    }

    /// E[a(x) b̄(x̄)] for two atom combinations.
    fn moment(&mut self, a: u32, b: u32, mode: Mode) -> Result<Val> {
        let (a, b) = if mode == Mode::Diag && b < a {
            (b, a)
        } else {
            (a, b)
        };
        let (ta, tb) = (self.hlin.get(a), self.hlin.get(b));
        let column = |c: &mut Self, y| {
            let single = c.hlin.id(vec![((y, ONE), 1.0_f64.to_bits())]);
            c.moment(a, single, mode)
        };
        self.bilinear((Key::Moment(a, b), mode), &ta, &tb, column, |c, x, y| {
            Ok(Some(match (x, y) {
                (Atom::Gauss(g), Atom::Gauss(h)) => (c.base_gauss_cov(g, h, mode)?, None),
                (Atom::Phi(p), Atom::Phi(q)) => (c.dual(p, q, mode)?.0, None),
                (Atom::Phi(p), Atom::Gauss(h)) => {
                    // Stein: E φ(g) h̄ = Cov(g, h̄) E φ'(g).
                    let (g, h) = (c.phi.get(p).1, c.single(h));
                    let cov = c.cov(g, h, mode)?;
                    (cov, Some(c.mean_derivative(p, Side::Row, mode)?))
                }
                (Atom::Gauss(g), Atom::Phi(q)) => {
                    let (g, h) = (c.single(g), c.phi.get(q).1);
                    let cov = c.cov(g, h, mode)?;
                    (cov, Some(c.mean_derivative(q, Side::Col, mode)?))
                }
            }))
        })
    }

    /// Cov of two Gaussian bases.
    fn base_gauss_cov(&mut self, g: u32, h: u32, mode: Mode) -> Result<Val> {
        let (g, h) = if mode == Mode::Diag && h < g {
            (h, g)
        } else {
            (g, h)
        };
        let key = (Key::CovBase(g, h), mode);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let v = match (*self.gauss.get(g), *self.gauss.get(h)) {
            (Gauss::Dense(u), Gauss::Dense(v)) => self.dense_covariance(u, v, mode)?,
            (Gauss::Bias(b1, k1), Gauss::Bias(b2, k2)) => self.bias_covariance((b1, k1), (b2, k2)),
            _ => Val::Zero,
        };
        self.memo.insert(key, v);
        Ok(v)
    }

    /// Cov of two Gaussian combinations.
    pub(crate) fn cov(&mut self, g: u32, h: u32, mode: Mode) -> Result<Val> {
        let (g, h) = if mode == Mode::Diag && h < g {
            (h, g)
        } else {
            (g, h)
        };
        let (tg, th) = (self.glin.get(g), self.glin.get(h));
        let column = |c: &mut Self, y| {
            let single = c.single(y);
            c.cov(g, single, mode)
        };
        self.bilinear((Key::CovLin(g, h), mode), &tg, &th, column, |c, x, y| {
            Ok(Some((c.base_gauss_cov(x, y, mode)?, None)))
        })
    }

    /// The variance of a Gaussian combination at the sample of `side`.
    fn variance(&mut self, g: u32, side: Side, mode: Mode) -> Result<Val> {
        let v = self.cov(g, g, Mode::Diag)?;
        Ok(self.on_side(v, side, mode))
    }

    /// A per-sample value as seen from `mode`.
    fn on_side(&mut self, v: Val, side: Side, mode: Mode) -> Val {
        match (mode, v) {
            (Mode::Cross, Val::Diag(s)) => {
                self.diag.export(s);
                match side {
                    Side::Row => Val::Row(s),
                    Side::Col => Val::Col(s),
                }
            }
            _ => v,
        }
    }

    /// E φ'(g) for the φ-atom `p`, at the sample of `side`.
    fn mean_derivative(&mut self, p: u32, side: Side, mode: Mode) -> Result<Val> {
        let key = (Key::MeanDerivative(p), Mode::Diag);
        let v = if let Some(&v) = self.memo.get(&key) {
            v
        } else {
            let (act, g) = *self.phi.get(p);
            let q = self.variance(g, Side::Row, Mode::Diag)?;
            let activation = &self.activations[act as usize];
            let v = match q.constant() {
                Some(q) => Val::Const(super::mean_derivative(activation, q, &self.rule)),
                None => {
                    self.diag
                        .push(crate::infinite::tape::Inst::MeanDerivative { act, q, out: 0 })
                }
            };
            self.memo.insert(key, v);
            v
        };
        Ok(self.on_side(v, side, mode))
    }

    /// (E φ(g) ψ(h̄), E φ'(g) ψ'(h̄)) for φ-atoms p = (φ, g) and q = (ψ, h).
    pub(super) fn dual(&mut self, p: u32, q: u32, mode: Mode) -> Result<(Val, Val)> {
        let (p, q) = if mode == Mode::Diag && q < p {
            (q, p)
        } else {
            (p, q)
        };
        if let Some(&v) = self.duals.get(&(p, q, mode)) {
            return Ok(v);
        }
        let (a, g) = *self.phi.get(p);
        let (b, h) = *self.phi.get(q);
        let pair = match self.pair_ids.get(&(a, b)) {
            Some(&id) => id,
            None => {
                self.pairs.push(super::PairDual::new(
                    &self.activations[a as usize],
                    &self.activations[b as usize],
                    &self.rule,
                ));
                let id = (self.pairs.len() - 1) as u32;
                self.pair_ids.insert((a, b), id);
                id
            }
        };
        let q1 = self.variance(g, Side::Row, mode)?;
        let q2 = self.variance(h, Side::Col, mode)?;
        let c = self.cov(g, h, mode)?;
        let v = match (q1.constant(), c.constant(), q2.constant()) {
            (Some(q1), Some(c), Some(q2)) => {
                let (m, d) = self.pairs[pair as usize].eval(q1, c, q2);
                (Val::constant_or_zero(m), Val::constant_or_zero(d))
            }
            _ => self.tape(mode).push_dual(pair, q1, c, q2),
        };
        self.duals.insert((p, q, mode), v);
        Ok(v)
    }

    // ---------------------------------------------------------------- per-sample scalars

    /// Σ c·m(x)·m'(x̄)·a·b over `items`, the terms of equal monomial pairs summed first.
    fn scaled_sum(&mut self, mode: Mode, items: Vec<Scaled>) -> Result<Val> {
        let mut order: Vec<(Mono, Mono)> = Vec::new();
        let mut groups: rustc_hash::FxHashMap<(Mono, Mono), Vec<Term>> = Default::default();
        for (c, ma, mb, a, b) in items {
            let terms = groups.entry((ma, mb)).or_insert_with(|| {
                order.push((ma, mb));
                Vec::new()
            });
            terms.push((c, a, b));
        }
        let mut outer = Vec::with_capacity(order.len());
        for key in order {
            let terms = groups.remove(&key).unwrap_or_default();
            let inner = self.poly(mode, 0.0, terms);
            let scaled = self.scaled(inner, key.0, key.1, mode)?;
            outer.push((1.0, scaled, None));
        }
        Ok(self.poly(mode, 0.0, outer))
    }

    /// v·m(x)·m'(x̄).
    fn scaled(&mut self, v: Val, ma: Mono, mb: Mono, mode: Mode) -> Result<Val> {
        let mut v = v;
        if v == Val::Zero {
            return Ok(v);
        }
        for (m, side) in [(ma, Side::Row), (mb, Side::Col)] {
            if m != ONE {
                let factor = self.monomial(m, side, mode)?;
                v = self.poly(mode, 0.0, vec![(1.0, v, Some(factor))]);
            }
        }
        Ok(v)
    }

    /// The value of a monomial at the sample of `side`.
    fn monomial(&mut self, m: Mono, side: Side, mode: Mode) -> Result<Val> {
        let key = (Key::Monomial(m), Mode::Diag);
        let v = if let Some(&v) = self.memo.get(&key) {
            v
        } else {
            let factors = self.monos.get(m);
            let mut v = Val::Const(1.0);
            for &s in factors.iter() {
                let x = self.sample_scalar(s)?;
                v = self.poly(Mode::Diag, 0.0, vec![(1.0, v, Some(x))]);
            }
            self.memo.insert(key, v);
            v
        };
        Ok(self.on_side(v, side, mode))
    }

    /// A per-sample scalar (diagonal tape).
    fn sample_scalar(&mut self, s: u32) -> Result<Val> {
        let key = (Key::Scalar(s), Mode::Diag);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let scalar = *self.scalars.get(s);
        let program = self.program;
        let v =
            program.nodes[scalar.node]
                .op
                .limit()
                .sample_scalar(self, scalar.node, scalar.index)?;
        self.memo.insert(key, v);
        Ok(v)
    }

    /// Records the value of a per-sample scalar computed alongside another (an
    /// attention block's weights are computed together).
    pub(crate) fn remember_scalar(&mut self, s: SampleScalar, v: Val) {
        let id = self.scalars.id(s);
        self.memo.insert((Key::Scalar(id), Mode::Diag), v);
    }

    // ---------------------------------------------------------------- emission

    fn tape(&mut self, mode: Mode) -> &mut Tape {
        match mode {
            Mode::Diag => &mut self.diag,
            Mode::Cross => &mut self.cross,
        }
    }

    /// `constant + Σ c·a·b`, folded (see [`Tape::poly`]).
    pub(crate) fn poly(&mut self, mode: Mode, constant: f64, terms: Vec<Term>) -> Val {
        self.tape(mode).poly(constant, terms)
    }
}
