//! The compiled recursions of programs, kept for later calls.
//!
//! Compiling a [`Program`] (expanding Tensor Programs II's rules from the output into
//! two straight-line tapes) depends only on the program's structure, the quadrature
//! degree and whether the per-group terms are asked for, never on the inputs; it can
//! cost far more than running the tapes on a batch. [`InfiniteWidth`](super::InfiniteWidth)
//! keeps its compilations for its lifetime, and every instance, and so every call of
//! the free functions [`infinite_width`](super::infinite_width),
//! [`infinite_width_block`](super::infinite_width_block) and
//! [`infinite_width_layers`](super::infinite_width_layers), looks in one process-wide
//! cache first: the [`CAPACITY`] most recently used compilations, keyed by the
//! program's [`Structure`].

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use crate::activation::Activation;
use crate::error::Result;
use crate::program::ops::Op;
use crate::program::{BiasDecl, Group, Node, Program, WeightDecl, Width};

use super::dual::same_activation;
use super::program::{self, Compiled};
use super::quadrature::GaussHermite;

/// How many compilations the process-wide cache keeps (least recently used out first).
/// A compilation holds the program's tapes, a few times the size of the program.
pub(crate) const CAPACITY: usize = 8;

/// Everything a program's compiled recursion depends on: its variables (attention
/// blocks included), weights, biases, groups and readout with every standard deviation and
/// activation, but not its identity (a clone, or a program built by the same calls, has
/// the same structure). Two structures are equal exactly when the programs compute the
/// same function of the same parameters.
#[derive(Clone, Debug)]
pub(crate) struct Structure {
    /// The program, written out as numbers (floats by their bits).
    tokens: Vec<u64>,
    /// The custom activations, in order of appearance (a token holds the index):
    /// equal only when they share their $φ$ and $φ'$ closures. Holding them keeps the
    /// closures alive, so a cached structure never matches a later closure that
    /// happens to reuse a freed one's address.
    custom: Vec<Activation>,
    /// A hash of the tokens, to tell most structures apart at once.
    hash: u64,
}

impl PartialEq for Structure {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && self.tokens == other.tokens
            && self.custom.len() == other.custom.len()
            && self
                .custom
                .iter()
                .zip(&other.custom)
                .all(|(a, b)| same_activation(a, b))
    }
}

impl Structure {
    /// The structure of `program`.
    pub(crate) fn of(program: &Program) -> Self {
        let mut w = Writer::default();
        w.usize(program.input_dim());
        w.usize(program.nodes.len());
        for Node { op, width } in &program.nodes {
            w.width(*width);
            w.op(op);
        }
        w.usize(program.weights.len());
        for WeightDecl {
            std,
            ntk_coef,
            fan_in,
            uses,
        } in &program.weights
        {
            w.f64(*std);
            w.option_f64(*ntk_coef);
            match fan_in {
                None => w.usize(0),
                Some(width) => {
                    w.usize(1);
                    w.width(*width);
                }
            }
            w.list(uses);
        }
        w.usize(program.biases.len());
        for BiasDecl {
            std,
            ntk_coef,
            width,
            uses,
        } in &program.biases
        {
            w.f64(*std);
            w.option_f64(*ntk_coef);
            match width {
                None => w.usize(0),
                Some(width) => {
                    w.usize(1);
                    w.width(*width);
                }
            }
            w.list(uses);
        }
        w.usize(program.groups.len());
        for group in &program.groups {
            match *group {
                Group::Weight(i) => w.pair(0, i),
                Group::Bias(i) => w.pair(1, i),
            }
        }
        match &program.output {
            None => w.usize(0),
            Some((var, readout)) => {
                w.pair(1, *var);
                w.f64(readout.weight_std_value());
                w.f64(readout.bias_std_value());
                w.usize(readout.output_dim());
            }
        }
        match program.readout_ntk_coef {
            None => w.usize(0),
            Some((v, b)) => {
                w.usize(1);
                w.f64(v);
                w.f64(b);
            }
        }
        let mut hasher = rustc_hash::FxHasher::default();
        w.tokens.hash(&mut hasher);
        Structure {
            hash: hasher.finish(),
            tokens: w.tokens,
            custom: w.custom,
        }
    }
}

/// Writes a program's parts as numbers (each operation writes its own fields through
/// [`LimitRule::write_structure`](crate::program::ops::LimitRule::write_structure)).
#[derive(Default)]
pub(crate) struct Writer {
    tokens: Vec<u64>,
    custom: Vec<Activation>,
}

impl Writer {
    pub(crate) fn usize(&mut self, v: usize) {
        self.tokens.push(v as u64);
    }

    pub(crate) fn pair(&mut self, tag: usize, v: usize) {
        self.usize(tag);
        self.usize(v);
    }

    pub(crate) fn f64(&mut self, v: f64) {
        self.tokens.push(v.to_bits());
    }

    fn option_f64(&mut self, v: Option<f64>) {
        match v {
            None => self.usize(0),
            Some(v) => {
                self.usize(1);
                self.f64(v);
            }
        }
    }

    pub(crate) fn list(&mut self, vs: &[usize]) {
        self.usize(vs.len());
        for &v in vs {
            self.usize(v);
        }
    }

    fn width(&mut self, width: Width) {
        match width {
            Width::Input(d) => self.pair(0, d),
            Width::Hidden(k) => self.pair(1, k),
        }
    }

    /// The operation's tag (its place in the registry), then its fields as the
    /// operation writes them.
    fn op(&mut self, op: &Op) {
        self.usize(op.tag());
        op.limit().write_structure(self);
    }

    pub(crate) fn activation(&mut self, activation: &Activation) {
        match activation {
            Activation::Identity => self.usize(0),
            Activation::Relu => self.usize(1),
            Activation::LeakyRelu(slope) => {
                self.usize(2);
                self.f64(*slope);
            }
            Activation::Abs => self.usize(3),
            Activation::Erf => self.usize(4),
            Activation::Tanh => self.usize(5),
            Activation::Sin => self.usize(6),
            Activation::Gelu => self.usize(7),
            Activation::Sigmoid => self.usize(8),
            Activation::Softplus => self.usize(9),
            Activation::Custom(_) => {
                self.pair(10, self.custom.len());
                self.custom.push(activation.clone());
            }
        }
    }
}

/// What a compilation depends on.
#[derive(Clone, Debug, PartialEq)]
struct Key {
    structure: Structure,
    degree: usize,
    groups: bool,
}

/// A bounded cache of compilations, most recently used last.
#[derive(Debug)]
pub(crate) struct Cache {
    entries: Mutex<Vec<(Key, Arc<Compiled>)>>,
    capacity: usize,
}

impl Cache {
    /// An empty cache of at most `capacity` compilations.
    pub(crate) fn new(capacity: usize) -> Self {
        Cache {
            entries: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// The compilation of `program` with `rule` (per-group terms when `groups`): from
    /// the cache when a structurally equal program was compiled with a rule of the same
    /// degree, else compiled now and kept. Compiling runs outside the lock, so threads
    /// compiling different programs do not wait for each other (two threads compiling
    /// the same program at once both compile, and the first result is kept).
    ///
    /// # Errors
    /// As [`program::compile`] (errors are not cached).
    pub(crate) fn compiled(
        &self,
        program: &Program,
        rule: &Arc<GaussHermite>,
        groups: bool,
    ) -> Result<Arc<Compiled>> {
        let key = Key {
            structure: Structure::of(program),
            degree: rule.degree(),
            groups,
        };
        if let Some(hit) = self.lookup(&key) {
            return Ok(hit);
        }
        let compiled = Arc::new(compile_with_stack(program, rule, groups)?);
        Ok(self.insert(key, compiled))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Key, Arc<Compiled>)>> {
        // A panic elsewhere cannot leave the list inconsistent: every update is one push
        // or one remove.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, key: &Key) -> Option<Arc<Compiled>> {
        let mut entries = self.lock();
        let i = entries.iter().position(|(k, _)| k == key)?;
        let entry = entries.remove(i);
        let hit = Arc::clone(&entry.1);
        entries.push(entry);
        Some(hit)
    }

    fn insert(&self, key: Key, compiled: Arc<Compiled>) -> Arc<Compiled> {
        let mut entries = self.lock();
        if let Some((_, existing)) = entries.iter().find(|(k, _)| *k == key) {
            return Arc::clone(existing);
        }
        if self.capacity == 0 {
            return compiled;
        }
        if entries.len() >= self.capacity {
            entries.remove(0);
        }
        entries.push((key, Arc::clone(&compiled)));
        compiled
    }
}

/// Stack bytes per variable for compiling: the compiler's expansions recurse along the
/// program's chains of variables (about 2 KiB per step of a recurrence, measured), so a
/// recurrence of a few thousand steps needs more than a thread's default 2 MiB.
const STACK_PER_VARIABLE: usize = 4 << 10;

/// Bounds of the compiling thread's stack (virtual memory, committed only as used).
const STACK_RANGE: (usize, usize) = (8 << 20, 4 << 30);

/// [`program::compile`] on a scoped thread whose stack grows with the program, so that
/// long recurrences compile on any caller's thread (a test's or rayon's 2 MiB included);
/// on the calling thread if no such thread can be started.
fn compile_with_stack(
    program: &Program,
    rule: &Arc<GaussHermite>,
    groups: bool,
) -> Result<Compiled> {
    let stack = program
        .nodes
        .len()
        .saturating_mul(STACK_PER_VARIABLE)
        .clamp(STACK_RANGE.0, STACK_RANGE.1);
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("ntk-compile".into())
            .stack_size(stack)
            .spawn_scoped(scope, || program::compile(program, rule, groups));
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => program::compile(program, rule, groups),
        }
    })
}

/// The process-wide cache (see the module documentation).
pub(crate) fn global() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Cache::new(CAPACITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x → φ(W x + b) → readout, with the given σ_W and φ.
    fn one_layer(sigma_w: f64, activation: Activation) -> Program {
        let mut p = Program::new(3);
        let x = p.input(0..3).unwrap();
        let (w, b) = (p.weight(sigma_w).unwrap(), p.bias(0.1).unwrap());
        let h = p.dense(w, x).unwrap();
        let h = p.add_bias(h, b).unwrap();
        let z = p.apply(activation, h).unwrap();
        p.output(z, 1.0).unwrap();
        p
    }

    #[test]
    fn structures_are_equal_exactly_for_the_same_network() {
        let a = one_layer(1.2, Activation::Erf);
        assert_eq!(Structure::of(&a), Structure::of(&a.clone()));
        // The same calls on a new program: another identity, the same structure.
        assert_eq!(
            Structure::of(&a),
            Structure::of(&one_layer(1.2, Activation::Erf))
        );
        for other in [
            one_layer(1.3, Activation::Erf),
            one_layer(1.2, Activation::Tanh),
            one_layer(1.2, Activation::LeakyRelu(0.1)),
        ] {
            assert_ne!(Structure::of(&a), Structure::of(&other));
        }
        assert_ne!(
            Structure::of(&one_layer(1.0, Activation::LeakyRelu(0.1))),
            Structure::of(&one_layer(1.0, Activation::LeakyRelu(0.2)))
        );
        // Custom activations are the same only as clones of one `Activation::custom`.
        let cube = Activation::custom("cube", |x| x * x * x, |x| 3.0 * x * x);
        let twin = Activation::custom("cube", |x| x * x * x, |x| 3.0 * x * x);
        let c = one_layer(1.0, cube.clone());
        assert_eq!(Structure::of(&c), Structure::of(&one_layer(1.0, cube)));
        assert_ne!(Structure::of(&c), Structure::of(&one_layer(1.0, twin)));
        // The readout counts too.
        let mut d = Program::new(3);
        let x = d.input(0..3).unwrap();
        d.readout(x, crate::program::Readout::new(1.0).outputs(2))
            .unwrap();
        let mut e = Program::new(3);
        let x = e.input(0..3).unwrap();
        e.output(x, 1.0).unwrap();
        assert_ne!(Structure::of(&d), Structure::of(&e));
    }

    #[test]
    fn the_cache_compiles_once_and_forgets_the_least_recently_used() {
        let cache = Cache::new(2);
        let rule = GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap();
        let a = one_layer(1.2, Activation::Erf);
        let first = cache.compiled(&a, &rule, false).unwrap();
        let again = cache
            .compiled(&one_layer(1.2, Activation::Erf), &rule, false)
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "compiled twice");
        // Groups, another degree and another σ are other compilations.
        let groups = cache.compiled(&a, &rule, true).unwrap();
        assert!(!Arc::ptr_eq(&first, &groups));
        let coarse = GaussHermite::new(16).unwrap();
        let b = cache.compiled(&a, &coarse, false).unwrap();
        assert!(!Arc::ptr_eq(&first, &b));
        // Capacity 2: `first` was the least recently used and is gone; `b` is kept.
        let recompiled = cache.compiled(&a, &rule, false).unwrap();
        assert!(!Arc::ptr_eq(&first, &recompiled));
        assert!(Arc::ptr_eq(
            &b,
            &cache.compiled(&a, &coarse, false).unwrap()
        ));
        assert!(cache.lock().len() <= 2);
        // Errors are not cached.
        let mut bad = Program::new(3);
        let x = bad.input(0..3).unwrap();
        let w = bad.weight(1.0).unwrap();
        let h = bad.dense(w, x).unwrap();
        let t = bad.apply(Activation::Tanh, h).unwrap();
        let tt = bad.apply(Activation::Tanh, t).unwrap();
        bad.output(tt, 1.0).unwrap();
        assert!(cache.compiled(&bad, &rule, false).is_err());
        assert!(cache.compiled(&bad, &rule, false).is_err());
    }
}
