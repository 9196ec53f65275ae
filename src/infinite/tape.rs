//! Straight-line tapes: the compiled recursion of a program as a list of vector
//! instructions, run on many samples (or pairs of samples) at once.
//!
//! The compiler emits instructions in single-assignment form on virtual slots;
//! [`Tape::finish`] removes what the kernels do not need, folds per-sample operands
//! of a cross tape into preloaded slots, and reuses physical slots once their last
//! reader has run, so that a tape over thousands of quantities needs only as many
//! buffers as are alive at once.

use crate::program::ops::softmax_in_place;
use rustc_hash::FxHashMap as HashMap;

use nalgebra::{DMatrix, DMatrixViewMut};

use crate::activation::Activation;

use super::dual::{Closed, PairDual, mean_derivative};
use super::quadrature::GaussHermite;

/// A value the compiler refers to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Val {
    /// Structurally zero.
    Zero,
    /// The same for every sample (pair).
    Const(f64),
    /// Slot of a diagonal tape.
    Diag(u32),
    /// Diagonal slot, read at a cross pair's batch-1 sample.
    Row(u32),
    /// Diagonal slot, read at a cross pair's batch-2 sample.
    Col(u32),
    /// Slot of a cross tape.
    Cross(u32),
}

/// A term c·a·b of a sum (b absent: 1).
pub(crate) type Term = (f64, Val, Option<Val>);

/// An instruction on virtual slots.
#[derive(Clone, Debug)]
pub(crate) enum Inst {
    /// out = constant + Σ c·a·b (b absent: 1).
    Poly {
        out: u32,
        constant: f64,
        terms: Vec<(f64, Val, Option<Val>)>,
    },
    /// (C, Ċ) of a dual at (q1, c, q2).
    Dual {
        pair: u32,
        q1: Val,
        c: Val,
        q2: Val,
        out_c: Option<u32>,
        out_d: Option<u32>,
    },
    /// E φ'(u), u ~ N(0, q).
    MeanDerivative { act: u32, q: Val, out: u32 },
    /// z_a · z̄_b / d for fixed variables a, b (indices into the fixed list).
    Gram { a: usize, b: usize, out: u32 },
    /// 1/√q (per sample: LayerNorm scales).
    InvSqrt { q: Val, out: u32 },
    /// softmax over the logits (per sample: attention weights).
    Softmax { logits: Vec<Val>, outs: Vec<u32> },
    /// acc += Σ c·a·b: part of a long sum, placed where its terms become available.
    AddTo {
        acc: u32,
        terms: Vec<(f64, Val, Option<Val>)>,
    },
}

/// Which pair of samples a quantity (and the tape that computes it) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub(crate) enum Mode {
    /// One sample with itself (run per sample).
    #[default]
    Diag,
    /// x from batch 1 with x̄ from batch 2.
    Cross,
}

/// A tape under construction.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tape {
    kind: Mode,
    insts: Vec<Inst>,
    next: u32,
    /// Diagonal slots read by a cross tape.
    exports: Vec<u32>,
}

impl Tape {
    pub(crate) fn new(kind: Mode) -> Tape {
        Tape {
            kind,
            ..Tape::default()
        }
    }

    fn slot(&mut self) -> (u32, Val) {
        let s = self.next;
        self.next += 1;
        let v = match self.kind {
            Mode::Diag => Val::Diag(s),
            Mode::Cross => Val::Cross(s),
        };
        (s, v)
    }

    /// Marks a diagonal slot as read by the cross tape.
    pub(crate) fn export(&mut self, s: u32) {
        if !self.exports.contains(&s) {
            self.exports.push(s);
        }
    }

    /// Emits `inst` with a fresh output slot (its `out` is overwritten).
    pub(crate) fn push(&mut self, mut inst: Inst) -> Val {
        let (s, v) = self.slot();
        match &mut inst {
            Inst::Poly { out, .. }
            | Inst::MeanDerivative { out, .. }
            | Inst::Gram { out, .. }
            | Inst::InvSqrt { out, .. } => {
                *out = s;
            }
            Inst::Dual { out_c, .. } => *out_c = Some(s),
            Inst::Softmax { .. } => unreachable!("softmax outputs come from `push_softmax`"),
            Inst::AddTo { .. } => unreachable!("accumulations are made by `schedule_sums`"),
        }
        self.insts.push(inst);
        v
    }

    pub(crate) fn push_gram(&mut self, a: usize, b: usize) -> Val {
        self.push(Inst::Gram { a, b, out: 0 })
    }

    pub(crate) fn push_inv_sqrt(&mut self, q: Val) -> Val {
        self.push(Inst::InvSqrt { q, out: 0 })
    }

    pub(crate) fn push_softmax(&mut self, logits: Vec<Val>) -> Vec<Val> {
        let (outs, vals): (Vec<u32>, Vec<Val>) = logits.iter().map(|_| self.slot()).unzip();
        self.insts.push(Inst::Softmax { logits, outs });
        vals
    }

    pub(crate) fn push_dual(&mut self, pair: u32, q1: Val, c: Val, q2: Val) -> (Val, Val) {
        let (sc, vc) = self.slot();
        let (sd, vd) = self.slot();
        self.insts.push(Inst::Dual {
            pair,
            q1,
            c,
            q2,
            out_c: Some(sc),
            out_d: Some(sd),
        });
        (vc, vd)
    }

    /// `constant + Σ c·a·b`, folded: zero terms dropped, constants multiplied out,
    /// a lone unit term returned as is.
    pub(crate) fn poly(&mut self, constant: f64, terms: Vec<(f64, Val, Option<Val>)>) -> Val {
        let mut k = constant;
        let mut out: Vec<(f64, Val, Option<Val>)> = Vec::with_capacity(terms.len());
        for (c, a, b) in terms {
            if c == 0.0 {
                continue;
            }
            match (a, b) {
                (Val::Zero, _) | (_, Some(Val::Zero)) => {}
                (Val::Const(x), None) => k += c * x,
                (Val::Const(x), Some(Val::Const(y))) => k += c * x * y,
                (Val::Const(x), Some(v)) | (v, Some(Val::Const(x))) => out.push((c * x, v, None)),
                (v, w) => out.push((c, v, w)),
            }
        }
        if out.is_empty() {
            return if k == 0.0 { Val::Zero } else { Val::Const(k) };
        }
        // Exactly one unit term: the value itself (an exact comparison on purpose).
        #[allow(clippy::float_cmp)]
        let unit = out.len() == 1 && out[0].0 == 1.0 && out[0].2.is_none();
        if k == 0.0 && unit {
            return out[0].1;
        }
        self.push(Inst::Poly {
            out: 0,
            constant: k,
            terms: out,
        })
    }
}

/// Fixed vectors of at most this many entries are multiplied by a plain loop.
const SMALL_GRAM: usize = 16;

/// An operand after slot allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src {
    Slot(u32),
    Const(f64),
}

/// An instruction on physical slots.
#[derive(Clone, Debug)]
enum Exec {
    Poly {
        out: u32,
        constant: f64,
        terms: Vec<(f64, u32, Option<u32>)>,
    },
    Dual {
        pair: u32,
        q1: Src,
        c: Src,
        q2: Src,
        out_c: Option<u32>,
        out_d: Option<u32>,
    },
    MeanDerivative {
        act: u32,
        q: Src,
        out: u32,
    },
    Gram {
        a: usize,
        b: usize,
        out: u32,
    },
    AddTo {
        acc: u32,
        terms: Vec<(f64, u32, Option<u32>)>,
    },
    InvSqrt {
        q: Src,
        out: u32,
    },
    Softmax {
        logits: Vec<Src>,
        outs: Vec<u32>,
    },
}

/// A runnable tape: physical instructions, the number of slots, and where its
/// results are.
#[derive(Clone, Debug)]
pub(crate) struct Runnable {
    execs: Vec<Exec>,
    /// Physical slots.
    pub(crate) slots: usize,
    /// Slots preloaded from the diagonal tables before running (cross tapes):
    /// (slot, side is batch 1, column of the table).
    preload: Vec<(u32, bool, usize)>,
    /// The results, in the order asked for.
    pub(crate) results: Vec<Src>,
}

fn inst_reads(inst: &Inst) -> Vec<Val> {
    let mut r = Vec::new();
    for_each_read(inst, |v| r.push(v));
    r
}

/// Calls `f` on every slot value `inst` reads (an accumulation reads its sum too).
fn for_each_read(inst: &Inst, mut f: impl FnMut(Val)) {
    let mut visit = |v: Val| {
        if !matches!(v, Val::Zero | Val::Const(_)) {
            f(v);
        }
    };
    match inst {
        Inst::Poly { terms, .. } | Inst::AddTo { terms, .. } => {
            if let Inst::AddTo { acc, .. } = inst {
                visit(Val::Cross(*acc));
            }
            for &(_, a, b) in terms {
                visit(a);
                if let Some(b) = b {
                    visit(b);
                }
            }
        }
        Inst::Dual { q1, c, q2, .. } => {
            visit(*q1);
            visit(*c);
            visit(*q2);
        }
        Inst::MeanDerivative { q, .. } | Inst::InvSqrt { q, .. } => visit(*q),
        Inst::Softmax { logits, .. } => logits.iter().copied().for_each(visit),
        Inst::Gram { .. } => {}
    }
}

fn inst_writes(inst: &Inst) -> Vec<u32> {
    match inst {
        Inst::Poly { out, .. }
        | Inst::MeanDerivative { out, .. }
        | Inst::Gram { out, .. }
        | Inst::InvSqrt { out, .. } => vec![*out],
        Inst::Softmax { outs, .. } => outs.clone(),
        Inst::Dual { out_c, out_d, .. } => out_c.iter().chain(out_d.iter()).copied().collect(),
        Inst::AddTo { .. } => Vec::new(),
    }
}

impl Tape {
    /// The diagonal slots this tape's instructions (after [`Tape::prune`]) and the
    /// values `roots` read.
    pub(crate) fn diagonal_reads(&self, roots: &[Val]) -> Vec<u32> {
        let mut out = Vec::new();
        let mut add = |v: &Val| {
            if let Val::Row(s) | Val::Col(s) = *v
                && !out.contains(&s)
            {
                out.push(s);
            }
        };
        roots.iter().for_each(&mut add);
        for inst in &self.insts {
            for_each_read(inst, |v| add(&v));
        }
        out
    }

    /// Removes instructions whose results nothing in `roots` depends on.
    pub(crate) fn prune(&mut self, roots: &[Val]) {
        let own = |v: Val| match v {
            Val::Diag(s) | Val::Cross(s) => Some(s),
            _ => None,
        };
        let mut live = vec![false; self.next as usize];
        for &r in roots {
            if let Some(s) = own(r) {
                live[s as usize] = true;
            }
        }
        let mut keep = vec![false; self.insts.len()];
        for (i, inst) in self.insts.iter_mut().enumerate().rev() {
            if let Inst::Dual { out_c, out_d, .. } = inst {
                *out_c = out_c.filter(|s| live[*s as usize]);
                *out_d = out_d.filter(|s| live[*s as usize]);
            }
            if inst_writes(inst).iter().any(|&s| live[s as usize]) {
                keep[i] = true;
                for v in inst_reads(inst) {
                    if let Some(s) = own(v) {
                        live[s as usize] = true;
                    }
                }
            }
        }
        let mut i = 0;
        self.insts.retain(|_| {
            let k = keep[i];
            i += 1;
            k
        });
    }

    /// Substitutes small single-use sums into the one sum that reads them: fewer
    /// instructions and buffers, the same arithmetic. A product c·a·b is expanded
    /// only when the substituted factor is linear (no products of its own).
    pub(crate) fn inline(&mut self, roots: &[Val]) {
        /// Largest sum substituted: larger ones would keep their inputs alive longer.
        const MAX_TERMS: usize = 4;
        let own = |v: Val| match v {
            Val::Diag(s) | Val::Cross(s) => Some(s as usize),
            _ => None,
        };
        let mut uses = vec![0u32; self.next as usize];
        for inst in &self.insts {
            for_each_read(inst, |v| {
                if let Some(s) = own(v) {
                    uses[s] += 1;
                }
            });
        }
        for &r in roots {
            if let Some(s) = own(r) {
                uses[s] += 1;
            }
        }
        // Small single-use sums that may be substituted: their instruction, by slot.
        let mut small = vec![usize::MAX; self.next as usize];
        let mut removed = vec![false; self.insts.len()];
        let linear = |terms: &[(f64, Val, Option<Val>)]| terms.iter().all(|t| t.2.is_none());
        for i in 0..self.insts.len() {
            let Inst::Poly { out, terms, .. } = &mut self.insts[i] else {
                continue;
            };
            let out = *out as usize;
            let terms = std::mem::take(terms);
            let mut k = 0.0;
            let mut expanded: Vec<(f64, Val, Option<Val>)> = Vec::with_capacity(terms.len());
            for (c, a, b) in terms {
                let candidate = |v: Val| own(v).map(|s| small[s]).filter(|&j| j != usize::MAX);
                // The sum substituted for `a` (any sum when b is absent, a linear one
                // when it multiplies b), or for `b` (linear sums only).
                let is_linear = |j: usize| match &self.insts[j] {
                    Inst::Poly { terms: t, .. } => linear(t),
                    _ => false,
                };
                let target = match (candidate(a), b) {
                    (Some(j), None) => Some((j, None)),
                    (Some(j), Some(b)) if is_linear(j) => Some((j, Some(b))),
                    _ => b
                        .and_then(candidate)
                        .filter(|&j| is_linear(j))
                        .map(|j| (j, Some(a))),
                };
                let Some((j, other)) = target else {
                    expanded.push((c, a, b));
                    continue;
                };
                let Inst::Poly {
                    out: sub_out,
                    constant: ks,
                    terms: ts,
                } = &mut self.insts[j]
                else {
                    unreachable!("small sums are sums")
                };
                let (ks, ts) = (*ks, std::mem::take(ts));
                small[*sub_out as usize] = usize::MAX;
                removed[j] = true;
                match other {
                    None => {
                        k += c * ks;
                        expanded.extend(ts.into_iter().map(|(ci, ai, bi)| (c * ci, ai, bi)));
                    }
                    Some(o) => {
                        if ks != 0.0 {
                            expanded.push((c * ks, o, None));
                        }
                        expanded.extend(ts.into_iter().map(|(ci, ai, _)| (c * ci, ai, Some(o))));
                    }
                }
            }
            let Inst::Poly {
                constant, terms, ..
            } = &mut self.insts[i]
            else {
                unreachable!("instruction {i} was matched as a sum above")
            };
            *constant += k;
            if expanded.len() <= MAX_TERMS && uses[out] == 1 {
                small[out] = i;
            }
            *terms = expanded;
        }
        let mut i = 0;
        self.insts.retain(|_| {
            let keep = !removed[i];
            i += 1;
            keep
        });
    }

    /// Splits long sums (pooling over positions or time) into an accumulation placed
    /// term by term where each term's operands are ready, so that the operands are
    /// released right away instead of all staying alive until the sum.
    pub(crate) fn schedule_sums(&mut self) {
        /// Sums with more terms than this are split.
        const SPLIT: usize = 16;
        let own = |v: Val| match v {
            Val::Diag(s) | Val::Cross(s) => Some(s as usize),
            _ => None,
        };
        let mut defined = vec![usize::MAX; self.next as usize];
        for (i, inst) in self.insts.iter().enumerate() {
            for s in inst_writes(inst) {
                defined[s as usize] = i;
            }
        }
        let ready = |v: Val| own(v).map(|s| defined[s]);
        let mut first: Vec<Inst> = Vec::new();
        let mut after: Vec<Vec<Inst>> = vec![Vec::new(); self.insts.len()];
        let mut split = vec![false; self.insts.len()];
        for (i, inst) in self.insts.iter().enumerate() {
            let Inst::Poly {
                out,
                constant,
                terms,
            } = inst
            else {
                continue;
            };
            if terms.len() <= SPLIT {
                continue;
            }
            split[i] = true;
            let mut groups: std::collections::BTreeMap<Option<usize>, Vec<Term>> =
                std::collections::BTreeMap::new();
            for &(c, a, b) in terms {
                let at = ready(a).max(b.and_then(ready));
                groups.entry(at).or_default().push((c, a, b));
            }
            for (n, (at, terms)) in groups.into_iter().enumerate() {
                let part = if n == 0 {
                    Inst::Poly {
                        out: *out,
                        constant: *constant,
                        terms,
                    }
                } else {
                    Inst::AddTo { acc: *out, terms }
                };
                match at {
                    None => first.push(part),
                    Some(p) => after[p].push(part),
                }
            }
        }
        let old = std::mem::take(&mut self.insts);
        self.insts = first;
        for ((inst, was_split), later) in old.into_iter().zip(split).zip(after) {
            if !was_split {
                self.insts.push(inst);
            }
            self.insts.extend(later);
        }
    }

    /// Allocates physical slots: every value gets a buffer from its definition to its
    /// last reader; `roots` live to the end. For a cross tape, the diagonal values it
    /// reads (`Row`/`Col`) are preloaded into slots of their own, from the columns
    /// `diag_columns` gives them in the diagonal tables.
    pub(crate) fn finish(&self, roots: &[Val], diag_columns: &HashMap<u32, usize>) -> Runnable {
        // Dense keys: own slots first, then each distinct preloaded value.
        let own = self.next as usize;
        let mut preloaded: HashMap<(bool, u32), usize> = HashMap::default();
        let mut preload_keys: Vec<(bool, u32)> = Vec::new();
        let mut note = |v: Val| {
            if let Val::Row(d) | Val::Col(d) = v {
                let k = (matches!(v, Val::Row(_)), d);
                preloaded.entry(k).or_insert_with(|| {
                    preload_keys.push(k);
                    own + preload_keys.len() - 1
                });
            }
        };
        for inst in &self.insts {
            for_each_read(inst, &mut note);
        }
        roots.iter().copied().for_each(&mut note);
        let key = |v: Val| -> usize {
            match v {
                Val::Diag(s) | Val::Cross(s) => s as usize,
                Val::Row(d) => preloaded[&(true, d)],
                Val::Col(d) => preloaded[&(false, d)],
                Val::Zero | Val::Const(_) => unreachable!("constants have no slot"),
            }
        };
        let keys = own + preload_keys.len();
        // Last reader of every value (roots: past the end).
        let end = self.insts.len();
        let mut last = vec![usize::MAX; keys];
        for (i, inst) in self.insts.iter().enumerate() {
            for_each_read(inst, |v| last[key(v)] = i);
        }
        for &r in roots {
            if !matches!(r, Val::Zero | Val::Const(_)) {
                last[key(r)] = end;
            }
        }
        let mut phys = vec![u32::MAX; keys];
        let mut free: Vec<u32> = Vec::new();
        let mut slots = 0u32;
        let mut alloc = |free: &mut Vec<u32>| {
            free.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            })
        };
        // Preloaded values live throughout.
        let mut preload = Vec::with_capacity(preload_keys.len());
        for (n, &(row, d)) in preload_keys.iter().enumerate() {
            let p = alloc(&mut free);
            phys[own + n] = p;
            preload.push((p, row, diag_columns[&d]));
        }
        let src = |phys: &[u32], v: Val| match v {
            Val::Zero => Src::Const(0.0),
            Val::Const(c) => Src::Const(c),
            v => Src::Slot(phys[key(v)]),
        };
        let slot_of = |phys: &[u32], v: Val| match src(phys, v) {
            Src::Slot(s) => s,
            Src::Const(_) => unreachable!("constants are folded out of sums"),
        };
        let sum_terms = |phys: &[u32], terms: &[(f64, Val, Option<Val>)]| {
            terms
                .iter()
                .map(|&(c, a, b)| (c, slot_of(phys, a), b.map(|b| slot_of(phys, b))))
                .collect::<Vec<_>>()
        };
        let mut execs = Vec::with_capacity(self.insts.len());
        for (i, inst) in self.insts.iter().enumerate() {
            // Outputs first, so that they never share a buffer with an input.
            let mut out = |phys: &mut Vec<u32>, free: &mut Vec<u32>, s: u32| {
                let p = alloc(free);
                phys[s as usize] = p;
                p
            };
            let exec = match inst {
                Inst::Poly {
                    out: o,
                    constant,
                    terms,
                } => {
                    let terms = sum_terms(&phys, terms);
                    Exec::Poly {
                        out: out(&mut phys, &mut free, *o),
                        constant: *constant,
                        terms,
                    }
                }
                Inst::AddTo { acc, terms } => Exec::AddTo {
                    acc: phys[*acc as usize],
                    terms: sum_terms(&phys, terms),
                },
                Inst::Dual {
                    pair,
                    q1,
                    c,
                    q2,
                    out_c,
                    out_d,
                } => {
                    let (q1, c, q2) = (src(&phys, *q1), src(&phys, *c), src(&phys, *q2));
                    let out_c = out_c.map(|s| out(&mut phys, &mut free, s));
                    let out_d = out_d.map(|s| out(&mut phys, &mut free, s));
                    Exec::Dual {
                        pair: *pair,
                        q1,
                        c,
                        q2,
                        out_c,
                        out_d,
                    }
                }
                Inst::MeanDerivative { act, q, out: o } => {
                    let q = src(&phys, *q);
                    Exec::MeanDerivative {
                        act: *act,
                        q,
                        out: out(&mut phys, &mut free, *o),
                    }
                }
                Inst::Gram { a, b, out: o } => Exec::Gram {
                    a: *a,
                    b: *b,
                    out: out(&mut phys, &mut free, *o),
                },
                Inst::InvSqrt { q, out: o } => {
                    let q = src(&phys, *q);
                    Exec::InvSqrt {
                        q,
                        out: out(&mut phys, &mut free, *o),
                    }
                }
                Inst::Softmax { logits, outs } => {
                    let logits = logits.iter().map(|&l| src(&phys, l)).collect();
                    Exec::Softmax {
                        logits,
                        outs: outs.iter().map(|&s| out(&mut phys, &mut free, s)).collect(),
                    }
                }
            };
            execs.push(exec);
            // Release the values read for the last time here (preloaded ones stay).
            for_each_read(inst, |v| {
                let k = key(v);
                if k < own && last[k] == i && phys[k] != u32::MAX {
                    free.push(phys[k]);
                    phys[k] = u32::MAX;
                }
            });
        }
        let results = roots.iter().map(|&r| src(&phys, r)).collect();
        Runnable {
            execs,
            slots: slots as usize,
            preload,
            results,
        }
    }
}

/// What instructions read besides slots: the duals, activations and fixed values.
pub(crate) struct Env<'a> {
    pub(crate) pairs: &'a [PairDual],
    pub(crate) activations: &'a [Activation],
    pub(crate) rule: &'a GaussHermite,
}

/// Where a run's entries are.
pub(crate) enum Entries<'a> {
    /// Samples `start .. start + len` of one batch (a diagonal tape), with that batch's
    /// fixed values.
    Samples {
        start: usize,
        fixed: &'a [DMatrix<f64>],
    },
    /// The tile rows × cols of a cross kernel (entry i + j·rows), with batch 1's fixed
    /// values and batch 2's transposed, and both batches' diagonal tables.
    Tile {
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        fixed1: &'a [DMatrix<f64>],
        fixed2_t: &'a [DMatrix<f64>],
        table1: &'a DMatrix<f64>,
        table2: &'a DMatrix<f64>,
    },
}

impl Runnable {
    /// Runs the tape on `len` entries, with `arena` holding at least `slots` buffers of
    /// at least `len` values each.
    pub(crate) fn run(
        &self,
        env: &Env<'_>,
        entries: &Entries<'_>,
        len: usize,
        arena: &mut [Vec<f64>],
    ) {
        if let Entries::Tile {
            rows,
            cols,
            table1,
            table2,
            ..
        } = entries
        {
            let tr = rows.len();
            for &(s, row, col) in &self.preload {
                let buf = &mut arena[s as usize][..len];
                if row {
                    let column = table1.column(col);
                    for chunk in buf.chunks_exact_mut(tr) {
                        chunk.copy_from_slice(&column.as_slice()[rows.start..rows.end]);
                    }
                } else {
                    let column = table2.column(col);
                    for (jj, chunk) in buf.chunks_exact_mut(tr).enumerate() {
                        chunk.fill(column[cols.start + jj]);
                    }
                }
            }
        }
        let mut t1 = Vec::new();
        let mut t2 = Vec::new();
        let mut t3 = Vec::new();
        let mut t4 = Vec::new();
        for exec in &self.execs {
            match exec {
                Exec::Poly { out, terms, .. } | Exec::AddTo { acc: out, terms } => {
                    let mut o = std::mem::take(&mut arena[*out as usize]);
                    let o_s = &mut o[..len];
                    if let Exec::Poly { constant, .. } = exec {
                        o_s.fill(*constant);
                    }
                    for &(c, a, b) in terms {
                        let a = &arena[a as usize][..len];
                        match b {
                            None => add_scaled(o_s, c, a),
                            Some(b) => add_product(o_s, c, a, &arena[b as usize][..len]),
                        }
                    }
                    arena[*out as usize] = o;
                }
                Exec::Dual {
                    pair,
                    q1,
                    c,
                    q2,
                    out_c,
                    out_d,
                } => {
                    let mut oc = match out_c {
                        Some(s) => std::mem::take(&mut arena[*s as usize]),
                        None => std::mem::take(&mut t1),
                    };
                    let mut od = match out_d {
                        Some(s) => std::mem::take(&mut arena[*s as usize]),
                        None => std::mem::take(&mut t2),
                    };
                    oc.resize(oc.len().max(len), 0.0);
                    od.resize(od.len().max(len), 0.0);
                    fill(&mut oc[..len], *c, arena);
                    let q1s = operand(*q1, arena, &mut t3, len);
                    let q2s = operand(*q2, arena, &mut t4, len);
                    let dual = &env.pairs[*pair as usize];
                    // Erf and GELU read q₁q₂ − c², which these second moments may no longer
                    // determine: such entries become NaN, reported by the caller.
                    let lost: Vec<usize> = if dual.needs_determinant().is_some() {
                        (0..len)
                            .filter(|&e| Closed::determinant_is_lost(q1s[e], oc[e], q2s[e]))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    dual.eval_slice(q1s, &mut oc[..len], q2s, &mut od[..len]);
                    for e in lost {
                        (oc[e], od[e]) = (f64::NAN, f64::NAN);
                    }
                    match out_c {
                        Some(s) => arena[*s as usize] = oc,
                        None => t1 = oc,
                    }
                    match out_d {
                        Some(s) => arena[*s as usize] = od,
                        None => t2 = od,
                    }
                }
                Exec::MeanDerivative { act, q, out } => {
                    let mut o = std::mem::take(&mut arena[*out as usize]);
                    let a = &env.activations[*act as usize];
                    let qs = operand(*q, arena, &mut t3, len);
                    for (o, &q) in o[..len].iter_mut().zip(qs) {
                        *o = mean_derivative(a, q, env.rule);
                    }
                    arena[*out as usize] = o;
                }
                Exec::InvSqrt { q, out } => {
                    let mut o = std::mem::take(&mut arena[*out as usize]);
                    let qs = operand(*q, arena, &mut t3, len);
                    for (o, &q) in o[..len].iter_mut().zip(qs) {
                        *o = 1.0 / q.sqrt();
                    }
                    arena[*out as usize] = o;
                }
                Exec::Softmax { logits, outs } => {
                    // Per entry, over the outputs.
                    let mut outs_v: Vec<Vec<f64>> = outs
                        .iter()
                        .map(|&s| std::mem::take(&mut arena[s as usize]))
                        .collect();
                    let mut l = vec![0.0; logits.len()];
                    for e in 0..len {
                        for (l, &s) in l.iter_mut().zip(logits) {
                            *l = match s {
                                Src::Slot(p) => arena[p as usize][e],
                                Src::Const(c) => c,
                            };
                        }
                        softmax_in_place(&mut l);
                        for (o, &w) in outs_v.iter_mut().zip(&l) {
                            o[e] = w;
                        }
                    }
                    for (&s, o) in outs.iter().zip(outs_v) {
                        arena[s as usize] = o;
                    }
                }
                Exec::Gram { a, b, out } => {
                    let o = &mut arena[*out as usize][..len];
                    match entries {
                        Entries::Samples { start, fixed } => {
                            let (fa, fb) = (&fixed[*a], &fixed[*b]);
                            let d = fa.ncols() as f64;
                            for (e, o) in o.iter_mut().enumerate() {
                                *o = fa.row(start + e).dot(&fb.row(start + e)) / d;
                            }
                        }
                        Entries::Tile {
                            rows,
                            cols,
                            fixed1,
                            fixed2_t,
                            ..
                        } => {
                            let (fa, fbt) = (&fixed1[*a], &fixed2_t[*b]);
                            let d = fa.ncols();
                            if d <= SMALL_GRAM {
                                // A few columns: a direct loop beats a GEMM call.
                                let scale = 1.0 / d as f64;
                                let tr = rows.len();
                                for (jj, col) in o.chunks_exact_mut(tr).enumerate() {
                                    let xb = fbt.column(cols.start + jj);
                                    for (ii, o) in col.iter_mut().enumerate() {
                                        let mut sum = 0.0;
                                        for k in 0..d {
                                            sum += fa[(rows.start + ii, k)] * xb[k];
                                        }
                                        *o = scale * sum;
                                    }
                                }
                                continue;
                            }
                            let mut view = DMatrixViewMut::from_slice(o, rows.len(), cols.len());
                            view.gemm(
                                1.0 / d as f64,
                                &fa.view((rows.start, 0), (rows.len(), d)),
                                &fbt.view((0, cols.start), (d, cols.len())),
                                0.0,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// o += c·a, multiversioned (AVX-512, AVX2, baseline; the same IEEE results).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn add_scaled(o: &mut [f64], c: f64, a: &[f64]) {
    for (o, &x) in o.iter_mut().zip(a) {
        *o += c * x;
    }
}

/// o += c·a·b, multiversioned like [`add_scaled`].
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn add_product(o: &mut [f64], c: f64, a: &[f64], b: &[f64]) {
    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
        *o += c * x * y;
    }
}

/// The operand's values over `len` entries (a constant is spread into `tmp`).
fn operand<'a>(s: Src, arena: &'a [Vec<f64>], tmp: &'a mut Vec<f64>, len: usize) -> &'a [f64] {
    match s {
        Src::Slot(p) => &arena[p as usize][..len],
        Src::Const(c) => {
            tmp.clear();
            tmp.resize(len, c);
            &tmp[..]
        }
    }
}

/// `out` ← the operand's values.
fn fill(out: &mut [f64], s: Src, arena: &[Vec<f64>]) {
    match s {
        Src::Slot(p) => out.copy_from_slice(&arena[p as usize][..out.len()]),
        Src::Const(c) => out.fill(c),
    }
}
