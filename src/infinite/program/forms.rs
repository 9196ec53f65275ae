//! The symbolic side: what every variable of a program is in the limit (a combination
//! of atoms with per-sample coefficients), and what its gradient is.

use std::hash::Hash;
use std::rc::Rc;

use rustc_hash::FxHashMap as HashMap;

use crate::activation::Activation;
use crate::error::{Error, Result};
use crate::program::Width;

use super::Compiler;

/// Interns values: equal values get equal ids, and are shared, not copied.
pub(crate) struct Interner<T: Eq + Hash> {
    map: HashMap<Rc<T>, u32>,
    items: Vec<Rc<T>>,
}

impl<T: Eq + Hash> Interner<T> {
    pub(crate) fn new() -> Self {
        Interner {
            map: HashMap::default(),
            items: Vec::new(),
        }
    }

    pub(crate) fn id(&mut self, item: T) -> u32 {
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
    pub(crate) fn get(&self, id: u32) -> Rc<T> {
        Rc::clone(&self.items[id as usize])
    }
}

/// A coefficient as its bits (hashable); never zero in a combination.
pub(crate) type Coef = u64;

/// An interned product of per-sample scalars; [`ONE`] is the empty product.
pub(crate) type Mono = u32;

/// The empty monomial (the interner is seeded with it).
pub(crate) const ONE: Mono = 0;

/// A linear combination Σ c·m(x)·k: sorted by (key, monomial), equal ones merged,
/// zero coefficients dropped.
pub(crate) type Lin<K> = Vec<((K, Mono), Coef)>;

pub(crate) fn lin<K: Ord + Copy>(mut terms: Vec<((K, Mono), f64)>) -> Lin<K> {
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

pub(crate) fn coef(c: Coef) -> f64 {
    f64::from_bits(c)
}

/// A Gaussian base vector of the limit.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) enum Gauss {
    /// The output of a `dense` variable.
    Dense(usize),
    /// Block `1` of bias `0`.
    Bias(usize, usize),
}

/// An atom of a hidden vector: a Gaussian base, or φ of a Gaussian combination (an
/// interned (activation, combination) pair).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) enum Atom {
    Gauss(u32),
    Phi(u32),
}

/// A base vector of the backward pass: the readout vector (block k), or Wᵀ times the
/// output gradient of use `node` of `weight` (block k of the use's input).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) enum Base {
    Readout(usize),
    Transposed {
        weight: usize,
        node: usize,
        block: usize,
    },
}

/// A backward atom: a base times 1 or φ'(g) (the interned φ-atom (φ, g)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct BAtom {
    pub(crate) factor: Option<u32>,
    pub(crate) base: Base,
}

/// A deterministic per-sample scalar of the limit: scalar `index` of the variable
/// `node` that introduced it (a LayerNorm's scale, an attention weight), computed by
/// that variable's operation ([`LimitRule::sample_scalar`](crate::program::ops::LimitRule)).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct SampleScalar {
    pub(crate) node: usize,
    pub(crate) index: u32,
}

/// The limit form of a variable.
#[derive(Clone, Debug)]
pub(crate) enum Form {
    /// Input columns or a deterministic function of them: evaluated exactly.
    Fixed(usize),
    /// K blocks, each an interned combination of atoms.
    Blocks(Vec<u32>),
    /// A vector with no limit form (φ of a non-Gaussian vector), and the
    /// [`Error::OutsideLimit`] that says why.
    NotGaussian(Error),
}

impl Compiler<'_> {
    pub(crate) fn activation_id(&mut self, act: &Activation) -> u32 {
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

    pub(crate) fn gauss_atom(&mut self, g: Gauss) -> (Atom, Mono) {
        (Atom::Gauss(self.gauss.id(g)), ONE)
    }

    /// The monomial m·s.
    pub(crate) fn times(&mut self, m: Mono, s: SampleScalar) -> Mono {
        let s = self.scalars.id(s);
        let mut product = (*self.monos.get(m)).clone();
        let at = product.partition_point(|&x| x <= s);
        product.insert(at, s);
        self.monos.id(product)
    }

    /// The limit form of every variable, in order: input-width variables are
    /// evaluated exactly, every other one by its operation's limit rule.
    pub(crate) fn build_forms(&mut self) {
        let program = self.program;
        for (i, node) in program.nodes.iter().enumerate() {
            let form = match node.width {
                Width::Input(_) => Form::Fixed(i),
                Width::Hidden(_) => node.op.limit().form(self, i),
            };
            self.forms.push(form);
        }
    }

    /// The block with every term's monomial multiplied by `s`.
    pub(crate) fn scaled_block(&mut self, block: u32, s: SampleScalar) -> u32 {
        let mut terms = Vec::new();
        for (a, c) in self.hlin_terms(block) {
            let m = self.times(a.1, s);
            terms.push(((a.0, m), c));
        }
        self.hlin.id(lin(terms))
    }

    pub(crate) fn hlin_terms(&self, id: u32) -> Vec<((Atom, Mono), f64)> {
        self.hlin
            .get(id)
            .iter()
            .map(|&(a, c)| (a, coef(c)))
            .collect()
    }

    /// The form of `input` with every block mapped by `f(compiler, block index, block)`,
    /// or the first error of `f` as the form (outside the limit).
    pub(crate) fn map_blocks(
        &mut self,
        input: usize,
        mut f: impl FnMut(&mut Self, usize, u32) -> Result<u32>,
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
    pub(crate) fn combine(&mut self, parts: &[usize], scale: f64) -> Form {
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
    pub(crate) fn as_gaussian(&mut self, block: u32) -> Option<u32> {
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
    pub(crate) fn form(&self, v: usize) -> Result<&Form> {
        match &self.forms[v] {
            Form::NotGaussian(why) => Err(why.clone()),
            f => Ok(f),
        }
    }

    /// The error that keeps variable `i` (whose form is known) from having a limit.
    pub(crate) fn outside(&self, i: usize) -> Error {
        match &self.forms[i] {
            Form::NotGaussian(why) => why.clone(),
            _ => Error::OutsideLimit {
                variable: i,
                reason: "its gradient has no limit form".into(),
            },
        }
    }

    /// The backward combination of every variable that reaches the output, each
    /// variable sending its own to its inputs by its operation's limit rule.
    pub(crate) fn build_grads(&mut self, out: usize) -> Result<()> {
        let program = self.program;
        let nodes = &program.nodes;
        let mut grads = LimitGradients {
            blocks: nodes.iter().map(|n| n.width.hidden_blocks()).collect(),
            terms: vec![Vec::new(); nodes.len()],
        };
        for k in 0..grads.blocks[out] {
            grads.add(out, k, &[backward_atom(None, Base::Readout(k))], 1.0);
        }
        for i in (0..nodes.len()).rev() {
            let here = std::mem::take(&mut grads.terms[i]);
            if here.iter().all(Vec::is_empty) {
                continue;
            }
            // A variable the output depends on must have a limit form.
            self.form(i)?;
            nodes[i].op.limit().backward(self, i, &here, &mut grads)?;
            grads.terms[i] = here;
        }
        for (i, blocks) in grads.terms.into_iter().enumerate() {
            self.grads[i] = blocks.into_iter().map(|t| self.blin.id(lin(t))).collect();
        }
        Ok(())
    }

    /// Backward terms with their monomials multiplied by `s`.
    pub(crate) fn scale_terms(
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

/// The backward terms of one block: Σ c·m(x)·(factor · base).
pub(crate) type BackwardTerms = Vec<((BAtom, Mono), f64)>;

/// The single backward term `factor · base` with coefficient 1.
pub(crate) fn backward_atom(factor: Option<u32>, base: Base) -> ((BAtom, Mono), f64) {
    ((BAtom { factor, base }, ONE), 1.0)
}

impl BAtom {
    /// The atom multiplied by the derivative of φ-atom `p`.
    pub(crate) fn with_factor(self, p: u32) -> BAtom {
        BAtom {
            factor: Some(p),
            base: self.base,
        }
    }
}

/// The backward combinations being accumulated, per variable and block.
pub(crate) struct LimitGradients {
    /// Per variable, its number of hidden blocks (0: input columns, which take none).
    blocks: Vec<usize>,
    terms: Vec<Vec<BackwardTerms>>,
}

impl LimitGradients {
    /// Adds `scale` · `terms` to block `k` of variable `v`'s combination.
    pub(crate) fn add(&mut self, v: usize, k: usize, terms: &[((BAtom, Mono), f64)], scale: f64) {
        let blocks = self.blocks[v];
        if blocks == 0 {
            return;
        }
        let acc = &mut self.terms[v];
        if acc.is_empty() {
            *acc = vec![Vec::new(); blocks];
        }
        acc[k].extend(terms.iter().map(|&(a, c)| (a, scale * c)));
    }
}
