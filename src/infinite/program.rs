//! The infinite-width kernels of a [`Program`]: Tensor Programs II's recursion,
//! compiled once per program into two straight-line tapes and run on every pair of
//! samples.
//!
//! ## The limit (Yang 2020, Tensor Programs II, §5–6 and Appendix)
//!
//! As the hidden width n → ∞ (NTK parameterization, W, b, v ~ N(0, 1)):
//!
//! - **Gaussian vectors.** The outputs h_u = dense(W, z_u) of every use u of a weight,
//!   the biases, and their sums are jointly Gaussian coordinate-wise, with
//!   Cov(h_u(x), h_v(x̄)) = σ_W² E[z_u(x) z_v(x̄)] when u and v use the same W and 0
//!   otherwise, and Cov(b, b) = σ_b². A concatenation of K vectors is K blocks; a
//!   weight applied to it sees the average (1/K) Σ_k E[z_k z̄_k] (its fan-in is K·n).
//!   Input-width vectors are deterministic: E[z z̄] = z·z̄/d.
//! - **Every other vector** is a combination of atoms g (Gaussian) and φ(g), so every
//!   second moment reduces to 2-D Gaussian expectations: E[g ḡ] = Cov,
//!   E[φ(g) ψ(ḡ)] from the dual of (φ, ψ) (closed forms or quadrature), and
//!   E[φ(g) ḡ'] = Cov(g, ḡ') E[φ'(g)] (Stein's lemma).
//! - **Gradients**, under the gradient independence assumption (exact when the readout
//!   vector v is used only once, which a program guarantees): the gradient ∂f/∂a of a
//!   vector is a combination of backward atoms f·B where f is 1 or φ'(g) and B is the
//!   readout vector (block k) or Wᵀ applied to a use's output gradient (block k of the
//!   use's input). With D(a, ā) = lim Σ_α ∂f/∂a_α(x) ∂f/∂ā_α(x̄),
//!   Cov(readout block k, readout block k) = σ_v²/K and
//!   Cov(Wᵀ dh_u block k, Wᵀ dh̄_v block k) = (σ_W²/K_W) D(h_u, h̄_v), other pairs 0;
//!   E[φ'(g) ψ'(ḡ)] is the Ċ of the dual, E[φ'(g)] a 1-D expectation.
//! - **The kernels**: Σ(x, x̄) = σ_v² M(out) + σ_b'² and
//!   Θ̊ = Σ_W σ_W² Σ_{u,v} M(z_u, z̄_v) D(h_u, h̄_v) + Σ_b σ_b² Σ_{u,v} Σ_k D(h'_u, h̄'_v)_k
//!   \+ σ_v² M(out) + σ_b'², term by term the limit of the finite network's
//!   per-parameter kernels, where M(z, z̄) = (1/K) Σ_k E[z_k z̄_k] (or z·z̄/d for input
//!   columns).
//!
//! ## What is computed
//!
//! The recursion is expanded symbolically from the output, once per program, so only
//! the quantities the kernels need are computed: a last-state RNN needs the pairs of
//! time steps aligned from the end (O(T) per entry), a CNN read out by flattening only
//! equal positions. Quantities of one sample (variances, E φ'(g), the diagonal) form a
//! *diagonal tape* run once per sample; those of a pair form a *cross tape* run on
//! tiles of the kernel, vectorised over the tile's entries, in parallel.

use rustc_hash::FxHashMap as HashMap;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;

use nalgebra::DMatrix;

use crate::activation::Activation;
use crate::error::{Error, Result};
use crate::parallel;
use crate::program::{Group, Op, Program, Width};

use super::pair_tmp::{PairDual, same_activation};
use super::quadrature::GaussHermite;
use super::tape::{Entries, Env, Inst, Kind, Runnable, Src, Tape, Val};

/// Interns values: equal values get equal ids, and are shared, not copied.
struct Interner<T: Eq + Hash> {
    map: HashMap<Rc<T>, u32>,
    items: Vec<Rc<T>>,
}

impl<T: Eq + Hash> Interner<T> {
    fn new() -> Self {
        Interner {
            map: HashMap::default(),
            items: Vec::new(),
        }
    }

    fn id(&mut self, item: T) -> u32 {
        if let Some(&id) = self.map.get(&item) {
            return id;
        }
        let id = self.items.len() as u32;
        let item = Rc::new(item);
        self.items.push(Rc::clone(&item));
        self.map.insert(item, id);
        id
    }

    /// The value of `id`, shared.
    fn get(&self, id: u32) -> Rc<T> {
        Rc::clone(&self.items[id as usize])
    }
}

/// A coefficient as its bits (hashable); never zero in a combination.
type Coef = u64;

/// A linear combination: sorted by key, equal keys merged, zero coefficients dropped.
type Lin<K> = Vec<(K, Coef)>;

fn lin<K: Ord + Copy>(mut terms: Vec<(K, f64)>) -> Lin<K> {
    terms.sort_by_key(|t| t.0);
    let mut out: Vec<(K, f64)> = Vec::with_capacity(terms.len());
    for (k, c) in terms {
        match out.last_mut() {
            Some(last) if last.0 == k => last.1 += c,
            _ => out.push((k, c)),
        }
    }
    out.into_iter()
        .filter(|(_, c)| *c != 0.0)
        .map(|(k, c)| (k, c.to_bits()))
        .collect()
}

fn coef(c: Coef) -> f64 {
    f64::from_bits(c)
}

/// A Gaussian base vector of the limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Gauss {
    /// The output of a `dense` variable.
    Dense(usize),
    /// Block `1` of bias `0`.
    Bias(usize, usize),
}

/// An atom of a hidden vector: a Gaussian base, or φ of a Gaussian combination (an
/// interned (activation, combination) pair).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Atom {
    Gauss(u32),
    Phi(u32),
}

/// A base vector of the backward pass: the readout vector (block k), or Wᵀ times the
/// output gradient of use `node` of `weight` (block k of the use's input).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Base {
    Readout(usize),
    Transposed {
        weight: usize,
        node: usize,
        block: usize,
    },
}

/// A backward atom: a base times 1 or φ'(g) (the interned φ-atom (φ, g)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
struct BAtom {
    factor: Option<u32>,
    base: Base,
}

/// The limit form of a variable.
#[derive(Clone, Debug)]
enum Form {
    /// Input columns or a deterministic function of them: evaluated exactly.
    Fixed(usize),
    /// K blocks, each an interned combination of atoms.
    Blocks(Vec<u32>),
    /// φ of a vector that is not Gaussian in the limit: no 2-D reduction exists.
    NotGaussian(String),
}

/// Which pair of samples a quantity belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Mode {
    /// One sample with itself (run per sample).
    Diag,
    /// x from batch 1 with x̄ from batch 2.
    Cross,
}

/// Which sample of a cross pair a one-sample quantity belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Row,
    Col,
}

/// Memoised quantities.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Key {
    /// E[a b̄] of two interned atom combinations.
    Moment(u32, u32),
    /// Cov of two Gaussian bases.
    CovBase(u32, u32),
    /// Cov of two interned Gaussian combinations.
    CovLin(u32, u32),
    /// E φ'(g) of an interned φ-atom.
    MeanDerivative(u32),
    /// Fixed-vector Gram z_a · z̄_b / d.
    Gram(usize, usize),
    /// D of two interned backward combinations.
    Grad(u32, u32),
    /// T of two interned atom combinations.
    Tangent(u32, u32),
    /// T of two interned Gaussian combinations.
    TangentLin(u32, u32),
    /// T of two Gaussian bases.
    TangentBase(u32, u32),
}

/// The compiled recursion of one program.
pub(crate) struct Compiled {
    /// Per-sample quantities; its results are the columns of a batch's diagonal table.
    diag: Runnable,
    /// Per-pair quantities; its results are Σ, Θ̊ and, when asked, each group's
    /// weight term and bias term (see `layout`).
    cross: Runnable,
    /// Whether each group has a bias term among the results.
    layout: Vec<bool>,
    /// The fixed (input-width) variables the Gram instructions read.
    fixed: Vec<usize>,
    pairs: Vec<PairDual>,
    activations: Vec<Activation>,
    rule: Arc<GaussHermite>,
    input_dim: usize,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("diagonal_slots", &self.diag.slots)
            .field("cross_slots", &self.cross.slots)
            .field("groups", &self.layout.len())
            .finish_non_exhaustive()
    }
}

/// One parameter group's share of Θ̊: its weight term and its bias term.
#[derive(Clone, Copy, Debug)]
struct GroupTerms {
    weights: Val,
    bias: Option<Val>,
}

struct Compiler<'p> {
    program: &'p Program,
    rule: Arc<GaussHermite>,
    gauss: Interner<Gauss>,
    glin: Interner<Lin<u32>>,
    /// (activation id, Gaussian combination id).
    phi: Interner<(u32, u32)>,
    hlin: Interner<Lin<Atom>>,
    blin: Interner<Lin<BAtom>>,
    activations: Vec<Activation>,
    pairs: Vec<PairDual>,
    pair_ids: HashMap<(u32, u32), u32>,
    forms: Vec<Form>,
    /// Per variable, its backward combination per block (empty if it does not reach
    /// the output).
    grads: Vec<Vec<u32>>,
    memo: HashMap<(Key, Mode), Val>,
    duals: HashMap<(u32, u32, Mode), (Val, Val)>,
    diag: Tape,
    cross: Tape,
    fixed: Vec<usize>,
}

/// Compiles `program` (validated) with quadrature rule `rule`; per-group terms when
/// `with_groups`.
pub(crate) fn compile(
    program: &Program,
    rule: &Arc<GaussHermite>,
    with_groups: bool,
) -> Result<Compiled> {
    let (out, readout) = program.readout_of()?;
    let mut c = Compiler {
        program,
        rule: Arc::clone(rule),
        gauss: Interner::new(),
        glin: Interner::new(),
        phi: Interner::new(),
        hlin: Interner::new(),
        blin: Interner::new(),
        activations: Vec::new(),
        pairs: Vec::new(),
        pair_ids: HashMap::default(),
        forms: Vec::with_capacity(program.nodes.len()),
        grads: vec![Vec::new(); program.nodes.len()],
        memo: HashMap::default(),
        duals: HashMap::default(),
        diag: Tape::new(Kind::Diag),
        cross: Tape::new(Kind::Cross),
        fixed: Vec::new(),
    };
    c.build_forms();

    let form = c.forms[out].clone();
    let sv2 = readout.weight_std_value().powi(2);
    let sb2 = readout.bias_std_value().powi(2);
    let (coef_v, coef_b) = program.readout_ntk_coef.unwrap_or((sv2, sb2));
    // In forward mode the tangents go first (see `tangent`).
    let t_out = if with_groups {
        Val::Zero
    } else {
        c.tangent_of_forms(&form, &form)?
    };
    let m_out = c.moment_of_forms(&form, &form, Mode::Cross, out)?;
    let nngp = c.poly(Mode::Cross, sb2, vec![(sv2, m_out, None)]);
    let readout_bias = (sb2 > 0.0).then_some(Val::Const(coef_b));
    let (ntk, groups) = if with_groups {
        // Backward: each group's term from the gradient moments D.
        c.build_grads(out)?;
        let readout = GroupTerms {
            weights: c.poly(Mode::Cross, 0.0, vec![(coef_v, m_out, None)]),
            bias: readout_bias,
        };
        // Last group first: each layer's D is then consumed soon after it is made.
        let mut groups = Vec::with_capacity(program.groups.len() + 1);
        for group in program.groups.iter().rev() {
            groups.push(c.group_terms(*group)?);
        }
        groups.reverse();
        groups.push(readout);
        let mut all = Vec::new();
        for g in &groups {
            all.push((1.0, g.weights, None));
            if let Some(b) = g.bias {
                all.push((1.0, b, None));
            }
        }
        (c.poly(Mode::Cross, 0.0, all), groups)
    } else {
        // Forward: the tangent moments T alongside the second moments M.
        let ntk = c.poly(
            Mode::Cross,
            readout_bias.map_or(0.0, |_| coef_b),
            vec![(coef_v, m_out, None), (sv2, t_out, None)],
        );
        (ntk, Vec::new())
    };
    let mut roots = vec![nngp, ntk];
    for g in &groups {
        roots.push(g.weights);
        roots.extend(g.bias);
    }
    let mut cross = c.cross;
    cross.prune(&roots);
    cross.inline(&roots);
    cross.schedule_sums();
    let diag_slots = cross.diagonal_reads(&roots);
    let diag_roots: Vec<Val> = diag_slots.iter().map(|&s| Val::Diag(s)).collect();
    let mut diag = c.diag;
    diag.prune(&diag_roots);
    diag.inline(&diag_roots);
    diag.schedule_sums();
    let columns: HashMap<u32, usize> = diag_slots
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i))
        .collect();
    Ok(Compiled {
        diag: diag.finish(&diag_roots, &HashMap::default()),
        cross: cross.finish(&roots, &columns),
        layout: groups.iter().map(|g| g.bias.is_some()).collect(),
        fixed: c.fixed,
        pairs: c.pairs,
        activations: c.activations,
        rule: c.rule,
        input_dim: program.input_dim(),
    })
}

impl Compiler<'_> {
    // ---------------------------------------------------------------- forms

    fn activation_id(&mut self, act: &Activation) -> u32 {
        if let Some(i) = self
            .activations
            .iter()
            .position(|a| same_activation(a, act))
        {
            return i as u32;
        }
        self.activations.push(act.clone());
        (self.activations.len() - 1) as u32
    }

    fn gauss_atom(&mut self, g: Gauss) -> Atom {
        Atom::Gauss(self.gauss.id(g))
    }

    /// The limit form of every variable, in order.
    fn build_forms(&mut self) {
        let program = self.program;
        for (i, node) in program.nodes.iter().enumerate() {
            let form = if let Width::Input(_) = node.width {
                Form::Fixed(i)
            } else {
                match &node.op {
                    Op::Input(_) => Form::Fixed(i),
                    Op::Dense { .. } => {
                        let a = self.gauss_atom(Gauss::Dense(i));
                        Form::Blocks(vec![self.hlin.id(vec![(a, 1.0_f64.to_bits())])])
                    }
                    Op::AddBias { input, bias } => self.map_blocks(*input, |c, k, block| {
                        let a = c.gauss_atom(Gauss::Bias(*bias, k));
                        let mut terms = c.hlin_terms(block);
                        terms.push((a, 1.0));
                        Ok(c.hlin.id(lin(terms)))
                    }),
                    Op::Add(parts) => self.combine(parts, 1.0),
                    Op::Mean(parts) => self.combine(parts, 1.0 / parts.len() as f64),
                    Op::Concat(parts) => {
                        let mut blocks = Vec::new();
                        let mut bad = None;
                        for &p in parts {
                            match &self.forms[p] {
                                Form::Blocks(b) => blocks.extend_from_slice(b),
                                Form::NotGaussian(why) => bad = Some(why.clone()),
                                Form::Fixed(_) => {
                                    unreachable!("hidden concatenations have hidden parts")
                                }
                            }
                        }
                        bad.map_or(Form::Blocks(blocks), Form::NotGaussian)
                    }
                    Op::Apply { activation, input } => {
                        if let Activation::Identity = activation {
                            self.forms[*input].clone()
                        } else {
                            let act = self.activation_id(activation);
                            let name = format!("{activation}");
                            self.map_blocks(*input, |c, _, block| match c.as_gaussian(block) {
                                Some(g) => {
                                    let p = c.phi.id((act, g));
                                    Ok(c.hlin.id(vec![(Atom::Phi(p), 1.0_f64.to_bits())]))
                                }
                                None => Err(format!(
                                    "variable {i} applies {name} to variable {input}, which is \
                                     not Gaussian in the infinite-width limit (it contains a \
                                     nonlinearity's output): the limit of φ(ψ(h)) or φ(h + ψ(g)) \
                                     has no 2-D Gaussian reduction"
                                )),
                            })
                        }
                    }
                }
            };
            self.forms.push(form);
        }
    }

    fn hlin_terms(&self, id: u32) -> Vec<(Atom, f64)> {
        self.hlin
            .get(id)
            .iter()
            .map(|&(a, c)| (a, coef(c)))
            .collect()
    }

    /// The form of `input` with every block mapped by `f(compiler, block index, block)`.
    fn map_blocks(
        &mut self,
        input: usize,
        mut f: impl FnMut(&mut Self, usize, u32) -> std::result::Result<u32, String>,
    ) -> Form {
        match self.forms[input].clone() {
            Form::Blocks(blocks) => {
                let mut out = Vec::with_capacity(blocks.len());
                for (k, b) in blocks.into_iter().enumerate() {
                    match f(self, k, b) {
                        Ok(id) => out.push(id),
                        Err(why) => return Form::NotGaussian(why),
                    }
                }
                Form::Blocks(out)
            }
            other => other,
        }
    }

    /// Σ scale · parts, blockwise.
    fn combine(&mut self, parts: &[usize], scale: f64) -> Form {
        let first = match &self.forms[parts[0]] {
            Form::Blocks(b) => b.len(),
            other => return other.clone(),
        };
        let mut terms: Vec<Vec<(Atom, f64)>> = vec![Vec::new(); first];
        for &p in parts {
            match &self.forms[p] {
                Form::Blocks(blocks) => {
                    for (k, &b) in blocks.iter().enumerate() {
                        for (a, c) in self.hlin_terms(b) {
                            terms[k].push((a, scale * c));
                        }
                    }
                }
                other => return other.clone(),
            }
        }
        Form::Blocks(terms.into_iter().map(|t| self.hlin.id(lin(t))).collect())
    }

    /// The block as a Gaussian combination, if every atom is Gaussian.
    fn as_gaussian(&mut self, block: u32) -> Option<u32> {
        let mut g = Vec::new();
        for (a, c) in self.hlin_terms(block) {
            match a {
                Atom::Gauss(id) => g.push((id, c)),
                Atom::Phi(_) => return None,
            }
        }
        Some(self.glin.id(lin(g)))
    }

    /// The form of variable `v`, or the error that keeps it from having one.
    fn form(&self, v: usize) -> Result<&Form> {
        match &self.forms[v] {
            Form::NotGaussian(why) => Err(not_gaussian(why)),
            f => Ok(f),
        }
    }

    // ---------------------------------------------------------------- tangents

    /// T(a, b̄) = lim Σ_θ ∂a_α/∂θ ∂b̄_α/∂θ of two forms of equal width (the tangent
    /// moment; input columns have none): the forward-mode counterpart of the
    /// gradient moments, T(h_u, h̄_v) = c_W M(z_u, z̄_v) + σ_W² T(z_u, z̄_v) for uses of
    /// one weight, T(φ(g), ψ(h̄)) = E[φ'(g) ψ'(h̄)] T(g, h̄). It is the adjoint of the
    /// backward recursion (the same sums over the same paths), so Θ̊ = c_v M(out) +
    /// σ_v² T(out) + c_b' equals the sum of the group terms.
    fn tangent_of_forms(&mut self, a: &Form, b: &Form) -> Result<Val> {
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
            (Form::NotGaussian(why), _) | (_, Form::NotGaussian(why)) => Err(not_gaussian(why)),
            _ => Ok(Val::Zero),
        }
    }

    /// T of two atom combinations.
    fn tangent(&mut self, a: u32, b: u32) -> Result<Val> {
        let key = (Key::Tangent(a, b), Mode::Cross);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let ta = self.hlin.get(a);
        let tb = self.hlin.get(b);
        let mut terms = Vec::new();
        for &(x, cx) in ta.iter() {
            for &(y, cy) in tb.iter() {
                let c = coef(cx) * coef(cy);
                // Tangents first, then the duals: the recursion then emits each
                // layer's moments just before the tangents that read them.
                match (x, y) {
                    (Atom::Gauss(g), Atom::Gauss(h)) => {
                        let v = self.tangent_base(g, h)?;
                        terms.push((c, v, None));
                    }
                    (Atom::Phi(p), Atom::Phi(q)) => {
                        let (g, h) = (self.phi.get(p).1, self.phi.get(q).1);
                        let t = self.tangent_lin(g, h)?;
                        let f = self.dual(p, q, Mode::Cross).1;
                        terms.push((c, f, Some(t)));
                    }
                    (Atom::Phi(p), Atom::Gauss(h)) => {
                        let g = self.phi.get(p).1;
                        let h = self.glin.id(vec![(h, 1.0_f64.to_bits())]);
                        let t = self.tangent_lin(g, h)?;
                        let f = self.mean_derivative(p, Side::Row, Mode::Cross);
                        terms.push((c, f, Some(t)));
                    }
                    (Atom::Gauss(g), Atom::Phi(q)) => {
                        let h = self.phi.get(q).1;
                        let g = self.glin.id(vec![(g, 1.0_f64.to_bits())]);
                        let t = self.tangent_lin(g, h)?;
                        let f = self.mean_derivative(q, Side::Col, Mode::Cross);
                        terms.push((c, f, Some(t)));
                    }
                }
            }
        }
        let v = self.poly(Mode::Cross, 0.0, terms);
        self.memo.insert(key, v);
        Ok(v)
    }

    /// T of two Gaussian combinations.
    fn tangent_lin(&mut self, g: u32, h: u32) -> Result<Val> {
        let key = (Key::TangentLin(g, h), Mode::Cross);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let tg = self.glin.get(g);
        let th = self.glin.get(h);
        let mut terms = Vec::new();
        for &(x, cx) in tg.iter() {
            for &(y, cy) in th.iter() {
                let v = self.tangent_base(x, y)?;
                terms.push((coef(cx) * coef(cy), v, None));
            }
        }
        let v = self.poly(Mode::Cross, 0.0, terms);
        self.memo.insert(key, v);
        Ok(v)
    }

    /// T of two Gaussian bases: a weight's own derivative c_W M(z_u, z̄_v) plus what
    /// flows through its inputs, σ_W² T(z_u, z̄_v); a bias's c_b.
    fn tangent_base(&mut self, g: u32, h: u32) -> Result<Val> {
        let key = (Key::TangentBase(g, h), Mode::Cross);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let v = match (*self.gauss.get(g), *self.gauss.get(h)) {
            (Gauss::Dense(u), Gauss::Dense(v)) => {
                let (
                    Op::Dense {
                        weight: w1,
                        input: a,
                    },
                    Op::Dense {
                        weight: w2,
                        input: b,
                    },
                ) = (&self.program.nodes[u].op, &self.program.nodes[v].op)
                else {
                    unreachable!("dense atoms come from dense variables")
                };
                if w1 == w2 {
                    let decl = &self.program.weights[*w1];
                    let s2 = decl.std * decl.std;
                    let coef_w = decl.ntk_coef.unwrap_or(s2);
                    let (a, b) = (*a, *b);
                    let (fa, fb) = (self.form(a)?.clone(), self.form(b)?.clone());
                    let t = self.tangent_of_forms(&fa, &fb)?;
                    let m = self.fan_in_moment(u, v, Mode::Cross)?;
                    self.poly(Mode::Cross, 0.0, vec![(coef_w, m, None), (s2, t, None)])
                } else {
                    Val::Zero
                }
            }
            (Gauss::Bias(b1, k1), Gauss::Bias(b2, k2)) if b1 == b2 && k1 == k2 => {
                let decl = &self.program.biases[b1];
                Val::Const(decl.ntk_coef.unwrap_or(decl.std * decl.std))
            }
            _ => Val::Zero,
        };
        self.memo.insert(key, v);
        Ok(v)
    }

    // ---------------------------------------------------------------- gradients

    /// One group's weight and bias terms from the gradient moments.
    fn group_terms(&mut self, group: Group) -> Result<GroupTerms> {
        let program = self.program;
        Ok(match group {
            Group::Weight(w) => {
                let decl = &program.weights[w];
                let s2 = decl.ntk_coef.unwrap_or(decl.std * decl.std);
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
                let s2 = decl.ntk_coef.unwrap_or(decl.std * decl.std);
                let blocks = match decl.width {
                    Some(Width::Hidden(k)) => k,
                    _ => 1,
                };
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

    /// The backward combination of every variable that reaches the output.
    fn build_grads(&mut self, out: usize) -> Result<()> {
        let program = self.program;
        let nodes = &program.nodes;
        let mut acc: Vec<Vec<Vec<(BAtom, f64)>>> = vec![Vec::new(); nodes.len()];
        let blocks_of = |w: Width| match w {
            Width::Hidden(k) => k,
            Width::Input(_) => 0,
        };
        let k_out = blocks_of(nodes[out].width);
        acc[out] = (0..k_out)
            .map(|k| {
                vec![(
                    BAtom {
                        factor: None,
                        base: Base::Readout(k),
                    },
                    1.0,
                )]
            })
            .collect();
        for i in (0..nodes.len()).rev() {
            let here = std::mem::take(&mut acc[i]);
            if here.iter().all(Vec::is_empty) {
                continue;
            }
            // A variable the output depends on must have a limit form.
            self.form(i)?;
            let add = |acc: &mut Vec<Vec<Vec<(BAtom, f64)>>>,
                       v: usize,
                       k: usize,
                       terms: &[(BAtom, f64)],
                       s: f64| {
                let blocks = blocks_of(nodes[v].width);
                if blocks == 0 {
                    return;
                }
                if acc[v].is_empty() {
                    acc[v] = vec![Vec::new(); blocks];
                }
                acc[v][k].extend(terms.iter().map(|&(a, c)| (a, s * c)));
            };
            match &nodes[i].op {
                Op::Input(_) => {}
                Op::Dense { weight, input } => {
                    for k in 0..blocks_of(nodes[*input].width) {
                        let base = Base::Transposed {
                            weight: *weight,
                            node: i,
                            block: k,
                        };
                        add(
                            &mut acc,
                            *input,
                            k,
                            &[(BAtom { factor: None, base }, 1.0)],
                            1.0,
                        );
                    }
                }
                Op::AddBias { input, .. } => {
                    for (k, t) in here.iter().enumerate() {
                        add(&mut acc, *input, k, t, 1.0);
                    }
                }
                Op::Add(parts) | Op::Mean(parts) => {
                    let s = match &nodes[i].op {
                        Op::Mean(_) => 1.0 / parts.len() as f64,
                        _ => 1.0,
                    };
                    for &p in parts {
                        for (k, t) in here.iter().enumerate() {
                            add(&mut acc, p, k, t, s);
                        }
                    }
                }
                Op::Concat(parts) => {
                    let mut offset = 0;
                    for &p in parts {
                        let kp = blocks_of(nodes[p].width);
                        for k in 0..kp {
                            add(&mut acc, p, k, &here[offset + k], 1.0);
                        }
                        offset += kp;
                    }
                }
                Op::Apply { activation, input } => {
                    if let Activation::Identity = activation {
                        for (k, t) in here.iter().enumerate() {
                            add(&mut acc, *input, k, t, 1.0);
                        }
                    } else {
                        let Form::Blocks(blocks) = self.form(*input)?.clone() else {
                            continue;
                        };
                        let act = self.activation_id(activation);
                        for (k, t) in here.iter().enumerate() {
                            let g = self
                                .as_gaussian(blocks[k])
                                .ok_or_else(|| not_gaussian(&format!("variable {input}")))?;
                            let p = self.phi.id((act, g));
                            let mut scaled = Vec::with_capacity(t.len());
                            for &(a, c) in t {
                                if a.factor.is_some() {
                                    return Err(not_gaussian(&format!(
                                        "the gradient at variable {i} passes through two \
                                         nonlinearities of Gaussian vectors"
                                    )));
                                }
                                scaled.push((
                                    BAtom {
                                        factor: Some(p),
                                        base: a.base,
                                    },
                                    c,
                                ));
                            }
                            add(&mut acc, *input, k, &scaled, 1.0);
                        }
                    }
                }
            }
            acc[i] = here;
        }
        for (i, blocks) in acc.into_iter().enumerate() {
            self.grads[i] = blocks.into_iter().map(|t| self.blin.id(lin(t))).collect();
        }
        Ok(())
    }

    /// D of block `k` of variables u (batch 1) and v (batch 2).
    fn grad_of_nodes(&mut self, u: usize, v: usize, k: usize) -> Result<Val> {
        let (Some(&a), Some(&b)) = (self.grads[u].get(k), self.grads[v].get(k)) else {
            return Ok(Val::Zero);
        };
        self.grad_moment(a, b)
    }

    /// D(a, b̄) = Σ c c' E[f f̄'] Cov(B, B̄') of two backward combinations (cross mode).
    fn grad_moment(&mut self, a: u32, b: u32) -> Result<Val> {
        if let Some(&v) = self.memo.get(&(Key::Grad(a, b), Mode::Cross)) {
            return Ok(v);
        }
        let ta = self.blin.get(a);
        let tb = self.blin.get(b);
        let mut terms = Vec::new();
        for &(x, cx) in ta.iter() {
            for &(y, cy) in tb.iter() {
                let cov = self.base_cov(x.base, y.base)?;
                if cov == Val::Zero {
                    continue;
                }
                let f = self.factor_moment(x.factor, y.factor)?;
                terms.push((coef(cx) * coef(cy), f, Some(cov)));
            }
        }
        let v = self.poly(Mode::Cross, 0.0, terms);
        self.memo.insert((Key::Grad(a, b), Mode::Cross), v);
        Ok(v)
    }

    /// Cov of two backward bases.
    fn base_cov(&mut self, x: Base, y: Base) -> Result<Val> {
        match (x, y) {
            (Base::Readout(k), Base::Readout(l)) if k == l => {
                let (out, readout) = self.program.readout_of()?;
                let blocks = match self.program.nodes[out].width {
                    Width::Hidden(kk) => kk,
                    Width::Input(_) => 1,
                };
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
            ) if w1 == w2 && k == l => {
                let decl = &self.program.weights[w1];
                let blocks = match decl.fan_in {
                    Some(Width::Hidden(kk)) => kk,
                    _ => 1,
                };
                let s = decl.std * decl.std / blocks as f64;
                let d = self.grad_of_nodes(u, v, 0)?;
                Ok(self.poly(Mode::Cross, 0.0, vec![(s, d, None)]))
            }
            _ => Ok(Val::Zero),
        }
    }

    /// E[f(x) f̄'(x̄)] for backward factors: 1, E φ'(g), or the Ċ of the dual.
    fn factor_moment(&mut self, a: Option<u32>, b: Option<u32>) -> Result<Val> {
        Ok(match (a, b) {
            (None, None) => Val::Const(1.0),
            (Some(p), None) => self.mean_derivative(p, Side::Row, Mode::Cross),
            (None, Some(p)) => self.mean_derivative(p, Side::Col, Mode::Cross),
            (Some(p), Some(q)) => self.dual(p, q, Mode::Cross).1,
        })
    }

    // ---------------------------------------------------------------- forward moments

    /// M(z_u, z̄_v) of the inputs of two dense uses: (1/K) Σ_k E[z_k z̄_k] or z·z̄/d.
    fn fan_in_moment(&mut self, u: usize, v: usize, mode: Mode) -> Result<Val> {
        let input = |n: usize| match self.program.nodes[n].op {
            Op::Dense { input, .. } => input,
            _ => unreachable!("weight uses are dense variables"),
        };
        let (a, b) = (input(u), input(v));
        let (fa, fb) = (self.form(a)?.clone(), self.form(b)?.clone());
        self.moment_of_forms(&fa, &fb, mode, a)
    }

    /// M of two forms of equal width (`var` names the first in messages).
    fn moment_of_forms(&mut self, a: &Form, b: &Form, mode: Mode, var: usize) -> Result<Val> {
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
            (Form::NotGaussian(why), _) | (_, Form::NotGaussian(why)) => Err(not_gaussian(why)),
            _ => Err(Error::InvalidParameter {
                parameter: "program",
                value: format!("variable {var}"),
                reason: "a weight sees input columns at one use and hidden vectors at another",
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
        for x in [a, b] {
            if !self.fixed.contains(&x) {
                self.fixed.push(x);
            }
        }
        let fa = self.fixed.iter().position(|&f| f == a).unwrap_or(0);
        let fb = self.fixed.iter().position(|&f| f == b).unwrap_or(0);
        let v = self.tape(mode).push_gram(fa, fb);
        self.memo.insert(key, v);
        v
    }

    /// E[a(x) b̄(x̄)] for two atom combinations.
    fn moment(&mut self, a: u32, b: u32, mode: Mode) -> Result<Val> {
        let (a, b) = if mode == Mode::Diag && b < a {
            (b, a)
        } else {
            (a, b)
        };
        let key = (Key::Moment(a, b), mode);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let ta = self.hlin.get(a);
        let tb = self.hlin.get(b);
        let mut terms = Vec::new();
        for &(x, cx) in ta.iter() {
            for &(y, cy) in tb.iter() {
                let c = coef(cx) * coef(cy);
                match (x, y) {
                    (Atom::Gauss(g), Atom::Gauss(h)) => {
                        let v = self.base_gauss_cov(g, h, mode)?;
                        terms.push((c, v, None));
                    }
                    (Atom::Phi(p), Atom::Phi(q)) => {
                        let v = self.dual(p, q, mode).0;
                        terms.push((c, v, None));
                    }
                    (Atom::Phi(p), Atom::Gauss(h)) => {
                        // Stein: E φ(g) h̄ = Cov(g, h̄) E φ'(g).
                        let g = self.phi.get(p).1;
                        let hl = self.glin.id(vec![(h, 1.0_f64.to_bits())]);
                        let cov = self.cov(g, hl, mode)?;
                        let md = self.mean_derivative(p, Side::Row, mode);
                        terms.push((c, cov, Some(md)));
                    }
                    (Atom::Gauss(g), Atom::Phi(q)) => {
                        let h = self.phi.get(q).1;
                        let gl = self.glin.id(vec![(g, 1.0_f64.to_bits())]);
                        let cov = self.cov(gl, h, mode)?;
                        let md = self.mean_derivative(q, Side::Col, mode);
                        terms.push((c, cov, Some(md)));
                    }
                }
            }
        }
        let v = self.poly(mode, 0.0, terms);
        self.memo.insert(key, v);
        Ok(v)
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
            (Gauss::Dense(u), Gauss::Dense(v)) => {
                let (Op::Dense { weight: w1, .. }, Op::Dense { weight: w2, .. }) =
                    (&self.program.nodes[u].op, &self.program.nodes[v].op)
                else {
                    unreachable!("dense atoms come from dense variables")
                };
                if w1 == w2 {
                    let s2 = self.program.weights[*w1].std.powi(2);
                    let m = self.fan_in_moment(u, v, mode)?;
                    self.poly(mode, 0.0, vec![(s2, m, None)])
                } else {
                    Val::Zero
                }
            }
            (Gauss::Bias(b1, k1), Gauss::Bias(b2, k2)) if b1 == b2 && k1 == k2 => {
                Val::Const(self.program.biases[b1].std.powi(2))
            }
            _ => Val::Zero,
        };
        self.memo.insert(key, v);
        Ok(v)
    }

    /// Cov of two Gaussian combinations.
    fn cov(&mut self, g: u32, h: u32, mode: Mode) -> Result<Val> {
        let (g, h) = if mode == Mode::Diag && h < g {
            (h, g)
        } else {
            (g, h)
        };
        let key = (Key::CovLin(g, h), mode);
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let tg = self.glin.get(g);
        let th = self.glin.get(h);
        let mut terms = Vec::new();
        for &(x, cx) in tg.iter() {
            for &(y, cy) in th.iter() {
                let v = self.base_gauss_cov(x, y, mode)?;
                terms.push((coef(cx) * coef(cy), v, None));
            }
        }
        let v = self.poly(mode, 0.0, terms);
        self.memo.insert(key, v);
        Ok(v)
    }

    /// The variance of a Gaussian combination at the sample of `side`.
    fn variance(&mut self, g: u32, side: Side, mode: Mode) -> Val {
        // Variances were already compiled by the forward pass that created the atom;
        // errors there have been reported.
        let v = self.cov(g, g, Mode::Diag).unwrap_or(Val::Zero);
        self.on_side(v, side, mode)
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
    fn mean_derivative(&mut self, p: u32, side: Side, mode: Mode) -> Val {
        let key = (Key::MeanDerivative(p), Mode::Diag);
        let v = if let Some(&v) = self.memo.get(&key) {
            v
        } else {
            let (act, g) = *self.phi.get(p);
            let q = self.variance(g, Side::Row, Mode::Diag);
            let v = match q {
                Val::Zero => Val::Const(super::pair_tmp::mean_derivative(
                    &self.activations[act as usize],
                    0.0,
                    &self.rule,
                )),
                Val::Const(q) => Val::Const(super::pair_tmp::mean_derivative(
                    &self.activations[act as usize],
                    q,
                    &self.rule,
                )),
                q => self.diag.push(Inst::MeanDerivative { act, q, out: 0 }),
            };
            self.memo.insert(key, v);
            v
        };
        self.on_side(v, side, mode)
    }

    /// (E φ(g) ψ(h̄), E φ'(g) ψ'(h̄)) for φ-atoms p = (φ, g) and q = (ψ, h).
    fn dual(&mut self, p: u32, q: u32, mode: Mode) -> (Val, Val) {
        let (p, q) = if mode == Mode::Diag && q < p {
            (q, p)
        } else {
            (p, q)
        };
        if let Some(&v) = self.duals.get(&(p, q, mode)) {
            return v;
        }
        let (a, g) = *self.phi.get(p);
        let (b, h) = *self.phi.get(q);
        let pair = *self.pair_ids.entry((a, b)).or_insert_with(|| {
            self.pairs.push(PairDual::new(
                &self.activations[a as usize],
                &self.activations[b as usize],
                &self.rule,
            ));
            (self.pairs.len() - 1) as u32
        });
        let q1 = self.variance(g, Side::Row, mode);
        let q2 = self.variance(h, Side::Col, mode);
        let c = self.cov(g, h, mode).unwrap_or(Val::Zero);
        let v = match (q1.constant(), c.constant(), q2.constant()) {
            (Some(q1), Some(c), Some(q2)) => {
                let (m, d) = self.pairs[pair as usize].eval(q1, c, q2);
                (Val::constant_or_zero(m), Val::constant_or_zero(d))
            }
            _ => self.tape(mode).push_dual(pair, q1, c, q2),
        };
        self.duals.insert((p, q, mode), v);
        v
    }

    // ---------------------------------------------------------------- emission

    fn tape(&mut self, mode: Mode) -> &mut Tape {
        match mode {
            Mode::Diag => &mut self.diag,
            Mode::Cross => &mut self.cross,
        }
    }

    /// `constant + Σ c·a·b`, folded: zeros dropped, constants multiplied out, a lone
    /// unit term returned as is.
    fn poly(&mut self, mode: Mode, constant: f64, terms: Vec<(f64, Val, Option<Val>)>) -> Val {
        self.tape(mode).poly(constant, terms)
    }
}

impl Val {
    fn constant(self) -> Option<f64> {
        match self {
            Val::Zero => Some(0.0),
            Val::Const(c) => Some(c),
            _ => None,
        }
    }

    fn constant_or_zero(c: f64) -> Val {
        if c == 0.0 { Val::Zero } else { Val::Const(c) }
    }
}

fn not_gaussian(why: &str) -> Error {
    Error::InvalidParameter {
        parameter: "program",
        value: why.to_string(),
        reason: "infinite_width needs every nonlinearity to act on a Gaussian vector \
                 (dense outputs, biases and their sums); the finite network still works",
    }
}

/// Most bytes of slot buffers per thread: the tile size follows from it.
const ARENA_BYTES: usize = 1 << 20;

impl Compiled {
    /// The fixed values and the diagonal table (N × diagonal results) of a batch.
    fn diagonal(&self, program: &Program, x: &DMatrix<f64>) -> (Vec<DMatrix<f64>>, DMatrix<f64>) {
        let fixed = program.fixed_values(&self.fixed, x);
        let n = x.nrows();
        let cols = self.diag.results.len();
        let mut table = DMatrix::<f64>::zeros(n, cols);
        if cols == 0 || n == 0 {
            return (fixed, table);
        }
        let env = self.env();
        let chunk = (ARENA_BYTES / 8 / self.diag.slots.max(1)).clamp(16, 1024);
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        let parts = parallel::map(&starts, |&start| {
            let len = chunk.min(n - start);
            let mut arena = vec![vec![0.0; len]; self.diag.slots];
            self.diag.run(
                &env,
                &Entries::Samples {
                    start,
                    fixed: &fixed,
                },
                len,
                &mut arena,
            );
            self.diag
                .results
                .iter()
                .map(|&r| result(r, &arena, len))
                .collect::<Vec<_>>()
        });
        for (&start, part) in starts.iter().zip(parts) {
            for (c, values) in part.into_iter().enumerate() {
                table
                    .column_mut(c)
                    .rows_mut(start, values.len())
                    .copy_from_slice(&values);
            }
        }
        (fixed, table)
    }

    fn env(&self) -> Env<'_> {
        Env {
            pairs: &self.pairs,
            activations: &self.activations,
            rule: &self.rule,
        }
    }

    /// The cross tape's results (Σ, Θ̊, then the group terms) between the rows of
    /// `x1` and `x2` (`None`: x2 = x1, computed on the upper triangle and mirrored).
    pub(crate) fn run(
        &self,
        program: &Program,
        x1: &DMatrix<f64>,
        x2: Option<&DMatrix<f64>>,
    ) -> Vec<DMatrix<f64>> {
        debug_assert_eq!(x1.ncols(), self.input_dim);
        let symmetric = x2.is_none();
        let (fixed1, table1) = self.diagonal(program, x1);
        let second = x2.map(|x2| self.diagonal(program, x2));
        let (fixed2, table2) = second.as_ref().map_or((&fixed1, &table1), |(f, t)| (f, t));
        let fixed2_t: Vec<DMatrix<f64>> = fixed2.iter().map(DMatrix::transpose).collect();
        let (n1, n2) = (table1.nrows(), table2.nrows());
        let results = self.cross.results.len();
        let mut out = vec![DMatrix::<f64>::zeros(n1, n2); results];
        if n1 == 0 || n2 == 0 {
            return out;
        }
        let env = self.env();
        let entries = (ARENA_BYTES / 8 / self.cross.slots.max(1)).clamp(64, 4096);
        let tc = 16.min(n2);
        let tr = (entries / tc).clamp(4, n1.max(4));
        let starts: Vec<usize> = (0..n2).step_by(tc).collect();
        let blocks = parallel::map(&starts, |&c0| {
            let cols = c0..(c0 + tc).min(n2);
            let last_row = if symmetric { cols.end.min(n1) } else { n1 };
            let mut arena = vec![vec![0.0; tr * tc]; self.cross.slots];
            let mut block = vec![DMatrix::<f64>::zeros(last_row, cols.len()); results];
            for r0 in (0..last_row).step_by(tr) {
                let rows = r0..(r0 + tr).min(last_row);
                let len = rows.len() * cols.len();
                self.cross.run(
                    &env,
                    &Entries::Tile {
                        rows: rows.clone(),
                        cols: cols.clone(),
                        fixed1: &fixed1,
                        fixed2_t: &fixed2_t,
                        table1: &table1,
                        table2,
                    },
                    len,
                    &mut arena,
                );
                for (b, &r) in block.iter_mut().zip(&self.cross.results) {
                    let values = result(r, &arena, len);
                    b.view_mut((r0, 0), (rows.len(), cols.len()))
                        .copy_from_slice(&values);
                }
            }
            block
        });
        for (&c0, block) in starts.iter().zip(blocks) {
            for (o, b) in out.iter_mut().zip(block) {
                o.view_mut((0, c0), b.shape()).copy_from(&b);
            }
        }
        if symmetric {
            for o in &mut out {
                for j in 0..n2 {
                    for i in (j + 1)..n1 {
                        o[(i, j)] = o[(j, i)];
                    }
                }
            }
        }
        out
    }

    /// How the group terms follow Σ and Θ̊ among the results: per group, whether it
    /// has a bias term.
    pub(crate) fn layout(&self) -> &[bool] {
        &self.layout
    }
}

/// The values of a result over `len` entries.
fn result(r: Src, arena: &[Vec<f64>], len: usize) -> Vec<f64> {
    match r {
        Src::Slot(s) => arena[s as usize][..len].to_vec(),
        Src::Const(c) => vec![c; len],
    }
}
