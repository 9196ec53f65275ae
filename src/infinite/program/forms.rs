//! The symbolic side: what every variable of a program is in the limit (a combination
//! of atoms with per-sample coefficients), and what its gradient is.

use std::hash::Hash;
use std::rc::Rc;

use rustc_hash::FxHashMap as HashMap;

use crate::activation::Activation;
use crate::error::Result;
use crate::program::{Op, Width};

use super::{Compiler, not_gaussian};

/// Interns values: equal values get equal ids, and are shared, not copied.
pub(super) struct Interner<T: Eq + Hash> {
    map: HashMap<Rc<T>, u32>,
    items: Vec<Rc<T>>,
}

impl<T: Eq + Hash> Interner<T> {
    pub(super) fn new() -> Self {
        Interner {
            map: HashMap::default(),
            items: Vec::new(),
        }
    }

    pub(super) fn id(&mut self, item: T) -> u32 {
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
    pub(super) fn get(&self, id: u32) -> Rc<T> {
        Rc::clone(&self.items[id as usize])
    }
}

/// A coefficient as its bits (hashable); never zero in a combination.
pub(super) type Coef = u64;

/// An interned product of per-sample scalars; [`ONE`] is the empty product.
pub(super) type Mono = u32;

/// The empty monomial (the interner is seeded with it).
pub(super) const ONE: Mono = 0;

/// A linear combination Σ c·m(x)·k: sorted by (key, monomial), equal ones merged,
/// zero coefficients dropped.
pub(super) type Lin<K> = Vec<((K, Mono), Coef)>;

pub(super) fn lin<K: Ord + Copy>(mut terms: Vec<((K, Mono), f64)>) -> Lin<K> {
    terms.sort_by_key(|t| t.0);
    let mut out: Vec<((K, Mono), f64)> = Vec::with_capacity(terms.len());
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

pub(super) fn coef(c: Coef) -> f64 {
    f64::from_bits(c)
}

/// A Gaussian base vector of the limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(super) enum Gauss {
    /// The output of a `dense` variable.
    Dense(usize),
    /// Block `1` of bias `0`.
    Bias(usize, usize),
}

/// An atom of a hidden vector: a Gaussian base, or φ of a Gaussian combination (an
/// interned (activation, combination) pair).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(super) enum Atom {
    Gauss(u32),
    Phi(u32),
}

/// A base vector of the backward pass: the readout vector (block k), or Wᵀ times the
/// output gradient of use `node` of `weight` (block k of the use's input).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(super) enum Base {
    Readout(usize),
    Transposed {
        weight: usize,
        node: usize,
        block: usize,
    },
}

/// A backward atom: a base times 1 or φ'(g) (the interned φ-atom (φ, g)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(super) struct BAtom {
    pub(super) factor: Option<u32>,
    pub(super) base: Base,
}

/// A deterministic per-sample scalar of the limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(super) enum SampleScalar {
    /// 1/√Var(g) of an interned Gaussian combination: LayerNorm's scale.
    InvStd(u32),
    /// softmax over the keys of E[q·k_s] for one query of an attention block.
    Attention {
        block: usize,
        query: usize,
        key: usize,
    },
}

/// The limit form of a variable.
#[derive(Clone, Debug)]
pub(super) enum Form {
    /// Input columns or a deterministic function of them: evaluated exactly.
    Fixed(usize),
    /// K blocks, each an interned combination of atoms.
    Blocks(Vec<u32>),
    /// A vector with no limit form (φ of a non-Gaussian vector), and why.
    NotGaussian(String),
}

impl Compiler<'_> {
    pub(super) fn activation_id(&mut self, act: &Activation) -> u32 {
        if let Some(i) = self
            .activations
            .iter()
            .position(|a| super::same_activation(a, act))
        {
            return i as u32;
        }
        self.activations.push(act.clone());
        (self.activations.len() - 1) as u32
    }

    fn gauss_atom(&mut self, g: Gauss) -> (Atom, Mono) {
        (Atom::Gauss(self.gauss.id(g)), ONE)
    }

    /// The monomial m·s.
    pub(super) fn times(&mut self, m: Mono, s: SampleScalar) -> Mono {
        let s = self.scalars.id(s);
        let mut product = (*self.monos.get(m)).clone();
        let at = product.partition_point(|&x| x <= s);
        product.insert(at, s);
        self.monos.id(product)
    }

    /// The limit form of every variable, in order.
    pub(super) fn build_forms(&mut self) {
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
                                    Ok(c.hlin.id(vec![((Atom::Phi(p), ONE), 1.0_f64.to_bits())]))
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
                    Op::LayerNorm { input } => self.map_blocks(*input, |c, _, block| {
                        // LayerNorm of a Gaussian g: g / √E[g²] (its mean over the
                        // coordinates vanishes), a per-sample scale.
                        let g = c.as_gaussian(block).ok_or_else(|| {
                            format!(
                                "variable {i} is the LayerNorm of variable {input}, which is \
                                 not Gaussian in the infinite-width limit (its mean over the \
                                 coordinates does not vanish)"
                            )
                        })?;
                        Ok(c.scaled_block(block, SampleScalar::InvStd(g)))
                    }),
                    Op::Attend { block, query } => {
                        // y_t = Σ_s A_ts v_s with A_ts = softmax_s E[q_t k_s] per sample.
                        let decl = &program.attentions[*block];
                        let mut terms = Vec::new();
                        let mut bad = None;
                        for (key, &v) in decl.values.iter().enumerate() {
                            match self.forms[v].clone() {
                                Form::Blocks(b) => {
                                    let s = SampleScalar::Attention {
                                        block: *block,
                                        query: *query,
                                        key,
                                    };
                                    for (a, c) in self.hlin_terms(b[0]) {
                                        let m = self.times(a.1, s);
                                        terms.push(((a.0, m), c));
                                    }
                                }
                                Form::NotGaussian(why) => bad = Some(why),
                                Form::Fixed(_) => unreachable!("attention values are hidden"),
                            }
                        }
                        match bad {
                            Some(why) => Form::NotGaussian(why),
                            None => Form::Blocks(vec![self.hlin.id(lin(terms))]),
                        }
                    }
                }
            };
            self.forms.push(form);
        }
    }

    /// The block with every term's monomial multiplied by `s`.
    fn scaled_block(&mut self, block: u32, s: SampleScalar) -> u32 {
        let mut terms = Vec::new();
        for (a, c) in self.hlin_terms(block) {
            let m = self.times(a.1, s);
            terms.push(((a.0, m), c));
        }
        self.hlin.id(lin(terms))
    }

    pub(super) fn hlin_terms(&self, id: u32) -> Vec<((Atom, Mono), f64)> {
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
        let mut terms: Vec<Vec<((Atom, Mono), f64)>> = vec![Vec::new(); first];
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
    pub(super) fn as_gaussian(&mut self, block: u32) -> Option<u32> {
        let mut g = Vec::new();
        for ((a, m), c) in self.hlin_terms(block) {
            match a {
                Atom::Gauss(id) => g.push(((id, m), c)),
                Atom::Phi(_) => return None,
            }
        }
        Some(self.glin.id(lin(g)))
    }

    /// The form of variable `v`, or the error that keeps it from having one.
    pub(super) fn form(&self, v: usize) -> Result<&Form> {
        match &self.forms[v] {
            Form::NotGaussian(why) => Err(not_gaussian(why)),
            f => Ok(f),
        }
    }

    /// The backward combination of every variable that reaches the output.
    pub(super) fn build_grads(&mut self, out: usize) -> Result<()> {
        type Terms = Vec<((BAtom, Mono), f64)>;
        let program = self.program;
        let nodes = &program.nodes;
        let mut acc: Vec<Vec<Terms>> = vec![Vec::new(); nodes.len()];
        let blocks_of = |w: Width| match w {
            Width::Hidden(k) => k,
            Width::Input(_) => 0,
        };
        let readout = |k| {
            let base = Base::Readout(k);
            vec![((BAtom { factor: None, base }, ONE), 1.0)]
        };
        acc[out] = (0..blocks_of(nodes[out].width)).map(readout).collect();
        let add = |acc: &mut Vec<Vec<Terms>>,
                   v: usize,
                   k: usize,
                   terms: &[((BAtom, Mono), f64)],
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
        for i in (0..nodes.len()).rev() {
            let here = std::mem::take(&mut acc[i]);
            if here.iter().all(Vec::is_empty) {
                continue;
            }
            // A variable the output depends on must have a limit form.
            self.form(i)?;
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
                            &[((BAtom { factor: None, base }, ONE), 1.0)],
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
                        continue;
                    }
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
                        for &((a, m), c) in t {
                            if a.factor.is_some() {
                                return Err(not_gaussian(&format!(
                                    "the gradient at variable {i} passes through two \
                                     nonlinearities of Gaussian vectors"
                                )));
                            }
                            let a = BAtom {
                                factor: Some(p),
                                base: a.base,
                            };
                            scaled.push(((a, m), c));
                        }
                        add(&mut acc, *input, k, &scaled, 1.0);
                    }
                }
                Op::LayerNorm { input } => {
                    // The projection terms of LayerNorm's Jacobian vanish in the limit:
                    // the gradient is divided by the same per-sample scale.
                    let Form::Blocks(blocks) = self.form(*input)?.clone() else {
                        continue;
                    };
                    let g = self
                        .as_gaussian(blocks[0])
                        .ok_or_else(|| not_gaussian(&format!("variable {input}")))?;
                    let scaled = self.scale_terms(&here[0], SampleScalar::InvStd(g));
                    add(&mut acc, *input, 0, &scaled, 1.0);
                }
                Op::Attend { block, query } => {
                    // The values receive Σ_t A_ts dy_t; the logits' gradients vanish.
                    let decl = &program.attentions[*block];
                    for (key, &v) in decl.values.iter().enumerate() {
                        let s = SampleScalar::Attention {
                            block: *block,
                            query: *query,
                            key,
                        };
                        let scaled = self.scale_terms(&here[0], s);
                        add(&mut acc, v, 0, &scaled, 1.0);
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

    /// Backward terms with their monomials multiplied by `s`.
    fn scale_terms(
        &mut self,
        terms: &[((BAtom, Mono), f64)],
        s: SampleScalar,
    ) -> Vec<((BAtom, Mono), f64)> {
        terms
            .iter()
            .map(|&((a, m), c)| ((a, self.times(m, s)), c))
            .collect()
    }
}
