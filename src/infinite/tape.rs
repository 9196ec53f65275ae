//! Straight-line tapes: the compiled recursion of a program as a list of vector
//! instructions, run on many samples (or pairs of samples) at once.
//!
//! The compiler emits instructions in single-assignment form on virtual slots;
//! [`Tape::finish`] removes what the kernels do not need, folds per-sample operands
//! of a cross tape into preloaded slots, and reuses physical slots once their last
//! reader has run, so that a tape over thousands of quantities needs only as many
//! buffers as are alive at once.

use std::collections::HashMap;

use nalgebra::{DMatrix, DMatrixViewMut};

use crate::activation::Activation;

use super::pair_tmp::{PairDual, mean_derivative};
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
}

/// Whether a tape's slots are per sample or per pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    #[default]
    Diag,
    Cross,
}

/// A tape under construction.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tape {
    kind: Kind,
    insts: Vec<Inst>,
    next: u32,
    /// Diagonal slots read by a cross tape.
    exports: Vec<u32>,
}

impl Tape {
    pub(crate) fn new(kind: Kind) -> Tape {
        Tape {
            kind,
            ..Tape::default()
        }
    }

    fn slot(&mut self) -> (u32, Val) {
        let s = self.next;
        self.next += 1;
        let v = match self.kind {
            Kind::Diag => Val::Diag(s),
            Kind::Cross => Val::Cross(s),
        };
        (s, v)
    }

    pub(crate) fn len(&self) -> usize {
        self.insts.len()
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
            Inst::Poly { out, .. } | Inst::MeanDerivative { out, .. } | Inst::Gram { out, .. } => {
                *out = s;
            }
            Inst::Dual { out_c, .. } => *out_c = Some(s),
        }
        self.insts.push(inst);
        v
    }

    pub(crate) fn push_gram(&mut self, a: usize, b: usize) -> Val {
        self.push(Inst::Gram { a, b, out: 0 })
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
        if k == 0.0 && out.len() == 1 && out[0].0 == 1.0 && out[0].2.is_none() {
            return out[0].1;
        }
        self.push(Inst::Poly {
            out: 0,
            constant: k,
            terms: out,
        })
    }
}

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

/// Every slot a value reads.
fn reads(v: Val, out: &mut Vec<Val>) {
    if !matches!(v, Val::Zero | Val::Const(_)) {
        out.push(v);
    }
}

fn inst_reads(inst: &Inst) -> Vec<Val> {
    let mut r = Vec::new();
    match inst {
        Inst::Poly { terms, .. } => {
            for &(_, a, b) in terms {
                reads(a, &mut r);
                if let Some(b) = b {
                    reads(b, &mut r);
                }
            }
        }
        Inst::Dual { q1, c, q2, .. } => {
            reads(*q1, &mut r);
            reads(*c, &mut r);
            reads(*q2, &mut r);
        }
        Inst::MeanDerivative { q, .. } => reads(*q, &mut r),
        Inst::Gram { .. } => {}
    }
    r
}

fn inst_writes(inst: &Inst) -> Vec<u32> {
    match inst {
        Inst::Poly { out, .. } | Inst::MeanDerivative { out, .. } | Inst::Gram { out, .. } => {
            vec![*out]
        }
        Inst::Dual { out_c, out_d, .. } => out_c.iter().chain(out_d.iter()).copied().collect(),
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
            inst_reads(inst).iter().for_each(&mut add);
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
        let mut uses = vec![0usize; self.next as usize];
        for inst in &self.insts {
            for v in inst_reads(inst) {
                if let Some(s) = own(v) {
                    uses[s] += 1;
                }
            }
        }
        for &r in roots {
            if let Some(s) = own(r) {
                uses[s] += 1;
            }
        }
        // The small sums that may be substituted, by output slot.
        let mut sums: HashMap<usize, (f64, Vec<(f64, Val, Option<Val>)>)> = HashMap::new();
        let mut removed = vec![false; self.insts.len()];
        let mut index_of: HashMap<usize, usize> = HashMap::new();
        for i in 0..self.insts.len() {
            let Inst::Poly {
                out,
                constant,
                terms,
            } = &self.insts[i]
            else {
                continue;
            };
            let (out, constant) = (*out as usize, *constant);
            let mut k = constant;
            let mut expanded: Vec<(f64, Val, Option<Val>)> = Vec::with_capacity(terms.len());
            for &(c, a, b) in terms {
                let linear =
                    |s: &(f64, Vec<(f64, Val, Option<Val>)>)| s.1.iter().all(|t| t.2.is_none());
                let candidate = |v: Val| own(v).filter(|&s| uses[s] == 1 && sums.contains_key(&s));
                match (candidate(a), b) {
                    (Some(sa), None) => {
                        let (ka, ta) = sums.remove(&sa).expect("candidate");
                        k += c * ka;
                        expanded.extend(ta.into_iter().map(|(ci, ai, bi)| (c * ci, ai, bi)));
                        removed[index_of[&sa]] = true;
                        continue;
                    }
                    (Some(sa), Some(b)) if linear(&sums[&sa]) => {
                        let (ka, ta) = sums.remove(&sa).expect("candidate");
                        if ka != 0.0 {
                            expanded.push((c * ka, b, None));
                        }
                        expanded.extend(ta.into_iter().map(|(ci, ai, _)| (c * ci, ai, Some(b))));
                        removed[index_of[&sa]] = true;
                        continue;
                    }
                    _ => {}
                }
                if let Some(b) = b
                    && let Some(sb) = candidate(b)
                    && linear(&sums[&sb])
                {
                    let (kb, tb) = sums.remove(&sb).expect("candidate");
                    if kb != 0.0 {
                        expanded.push((c * kb, a, None));
                    }
                    expanded.extend(tb.into_iter().map(|(ci, bi, _)| (c * ci, a, Some(bi))));
                    removed[index_of[&sb]] = true;
                    continue;
                }
                expanded.push((c, a, b));
            }
            if expanded.len() <= MAX_TERMS && uses[out] == 1 {
                sums.insert(out, (k, expanded.clone()));
                index_of.insert(out, i);
            }
            self.insts[i] = Inst::Poly {
                out: out as u32,
                constant: k,
                terms: expanded,
            };
        }
        let mut i = 0;
        self.insts.retain(|_| {
            let keep = !removed[i];
            i += 1;
            keep
        });
    }

    /// Allocates physical slots: every value gets a buffer from its definition to its
    /// last reader; `roots` live to the end. For a cross tape, the diagonal values it
    /// reads (`Row`/`Col`) are preloaded into slots of their own, from the columns
    /// `diag_columns` gives them in the diagonal tables.
    pub(crate) fn finish(&self, roots: &[Val], diag_columns: &HashMap<u32, usize>) -> Runnable {
        // Last reader of every value.
        let mut last: HashMap<ValKey, usize> = HashMap::new();
        let end = self.insts.len();
        for (i, inst) in self.insts.iter().enumerate() {
            for v in inst_reads(inst) {
                last.insert(ValKey::of(v), i);
            }
        }
        for &r in roots {
            if !matches!(r, Val::Zero | Val::Const(_)) {
                last.insert(ValKey::of(r), end);
            }
        }
        let mut free: Vec<u32> = Vec::new();
        let mut slots = 0u32;
        let mut alloc = |free: &mut Vec<u32>| {
            free.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            })
        };
        let mut map: HashMap<ValKey, u32> = HashMap::new();
        // Preloaded diagonal values live throughout.
        let mut preload = Vec::new();
        for inst in &self.insts {
            for v in inst_reads(inst) {
                if let Val::Row(_) | Val::Col(_) = v {
                    map.entry(ValKey::of(v)).or_insert_with(|| {
                        let s = alloc(&mut free);
                        let (d, row) = match v {
                            Val::Row(d) => (d, true),
                            Val::Col(d) => (d, false),
                            _ => unreachable!(),
                        };
                        preload.push((s, row, diag_columns[&d]));
                        s
                    });
                }
            }
        }
        for &r in roots {
            if let Val::Row(_) | Val::Col(_) = r {
                map.entry(ValKey::of(r)).or_insert_with(|| {
                    let s = alloc(&mut free);
                    let (d, row) = match r {
                        Val::Row(d) => (d, true),
                        Val::Col(d) => (d, false),
                        _ => unreachable!(),
                    };
                    preload.push((s, row, diag_columns[&d]));
                    s
                });
            }
        }
        let preloaded: std::collections::HashSet<ValKey> = map.keys().copied().collect();
        let src = |map: &HashMap<ValKey, u32>, v: Val| match v {
            Val::Zero => Src::Const(0.0),
            Val::Const(c) => Src::Const(c),
            v => Src::Slot(map[&ValKey::of(v)]),
        };
        let mut execs = Vec::with_capacity(self.insts.len());
        for (i, inst) in self.insts.iter().enumerate() {
            // Outputs first, so that they never share a buffer with an input.
            let mut out_slot = |map: &mut HashMap<ValKey, u32>, free: &mut Vec<u32>, s: u32| {
                let key = ValKey::Own(s);
                let p = alloc(free);
                map.insert(key, p);
                p
            };
            let exec = match inst {
                Inst::Poly {
                    out,
                    constant,
                    terms,
                } => {
                    let o = out_slot(&mut map, &mut free, *out);
                    Exec::Poly {
                        out: o,
                        constant: *constant,
                        terms: terms
                            .iter()
                            .map(|&(c, a, b)| {
                                let slot = |v: Val| match src(&map, v) {
                                    Src::Slot(s) => s,
                                    Src::Const(_) => unreachable!("constants are folded"),
                                };
                                (c, slot(a), b.map(slot))
                            })
                            .collect(),
                    }
                }
                Inst::Dual {
                    pair,
                    q1,
                    c,
                    q2,
                    out_c,
                    out_d,
                } => {
                    let oc = out_c.map(|s| out_slot(&mut map, &mut free, s));
                    let od = out_d.map(|s| out_slot(&mut map, &mut free, s));
                    Exec::Dual {
                        pair: *pair,
                        q1: src(&map, *q1),
                        c: src(&map, *c),
                        q2: src(&map, *q2),
                        out_c: oc,
                        out_d: od,
                    }
                }
                Inst::MeanDerivative { act, q, out } => {
                    let o = out_slot(&mut map, &mut free, *out);
                    Exec::MeanDerivative {
                        act: *act,
                        q: src(&map, *q),
                        out: o,
                    }
                }
                Inst::Gram { a, b, out } => {
                    let o = out_slot(&mut map, &mut free, *out);
                    Exec::Gram {
                        a: *a,
                        b: *b,
                        out: o,
                    }
                }
            };
            execs.push(exec);
            // Release the inputs read for the last time here (preloaded ones stay).
            for v in inst_reads(inst) {
                let key = ValKey::of(v);
                if last.get(&key) == Some(&i) && !preloaded.contains(&key) {
                    if let Some(p) = map.remove(&key) {
                        free.push(p);
                    }
                }
            }
        }
        let results = roots.iter().map(|&r| src(&map, r)).collect();
        if std::env::var("NTK_TAPE_STATS").is_ok() {
            let mut counts = [0usize; 4];
            let mut terms = 0;
            for e in &execs {
                match e {
                    Exec::Poly { terms: t, .. } => {
                        counts[0] += 1;
                        terms += t.len();
                    }
                    Exec::Dual { .. } => counts[1] += 1,
                    Exec::MeanDerivative { .. } => counts[2] += 1,
                    Exec::Gram { .. } => counts[3] += 1,
                }
            }
            eprintln!(
                "slots {} preload {} poly {} (terms {}) dual {} meander {} gram {}",
                slots,
                preload.len(),
                counts[0],
                terms,
                counts[1],
                counts[2],
                counts[3]
            );
        }
        Runnable {
            execs,
            slots: slots as usize,
            preload,
            results,
        }
    }
}

/// A value as a map key (f64 constants never are).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum ValKey {
    Own(u32),
    Row(u32),
    Col(u32),
}

impl ValKey {
    fn of(v: Val) -> ValKey {
        match v {
            Val::Diag(s) | Val::Cross(s) => ValKey::Own(s),
            Val::Row(s) => ValKey::Row(s),
            Val::Col(s) => ValKey::Col(s),
            Val::Zero | Val::Const(_) => unreachable!("constants have no slot"),
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
                Exec::Poly {
                    out,
                    constant,
                    terms,
                } => {
                    let mut o = std::mem::take(&mut arena[*out as usize]);
                    let o_s = &mut o[..len];
                    o_s.fill(*constant);
                    for &(c, a, b) in terms {
                        let a = &arena[a as usize][..len];
                        match b {
                            None => {
                                for (o, &x) in o_s.iter_mut().zip(a) {
                                    *o += c * x;
                                }
                            }
                            Some(b) => {
                                let b = &arena[b as usize][..len];
                                for ((o, &x), &y) in o_s.iter_mut().zip(a).zip(b) {
                                    *o += c * x * y;
                                }
                            }
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
                    env.pairs[*pair as usize].eval_slice(q1s, &mut oc[..len], q2s, &mut od[..len]);
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
