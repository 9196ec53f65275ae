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
//! - **Per-sample coefficients** (Tensor Programs II, Appendix, Transformer): the
//!   LayerNorm of a Gaussian g is g/√E\[g²\] (its mean over the coordinates vanishes),
//!   and attention with 1/n logits has deterministic weights A_ts = softmax_s E[q_t k_s]
//!   per sample, so y_t = Σ_s A_ts v_s. Combinations carry these scalars as monomials
//!   m(x), a second moment picks up m(x) m'(x̄), and the gradients are scaled alike
//!   (LayerNorm's projection terms and the logits' gradients vanish in the limit).
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

mod forms;
mod moments;

use std::sync::Arc;

use nalgebra::DMatrix;
use rustc_hash::FxHashMap as HashMap;

use crate::activation::Activation;
use crate::error::Result;
use crate::linalg::mirror_upper;
use crate::parallel;
use crate::program::Program;

use super::dual::{PairDual, mean_derivative, same_activation};
use super::grid::GridPlan;
use super::quadrature::GaussHermite;
pub(crate) use super::tape::Mode;
use super::tape::{Entries, Env, Runnable, Src, Tape, Val};
pub(crate) use forms::{
    Atom, BackwardTerms, Base, Form, Gauss, LimitGradients, ONE, SampleScalar, backward_atom, lin,
};
use forms::{BAtom, Interner, Lin};

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
    /// An interned per-sample scalar.
    Scalar(u32),
    /// An interned monomial of per-sample scalars.
    Monomial(u32),
}

/// The compiled recursion of one program: straight-line tapes, or, for a chain of
/// recorded convolutions and poolings, array operations over pairs of positions.
#[derive(Debug)]
pub(crate) enum Compiled {
    /// The symbolic engine's tapes.
    Tapes(Tapes),
    /// The array engine of convolutional chains.
    Grid(GridPlan),
}

impl Compiled {
    /// The results (Σ, Θ̊, then the group terms) between the rows of `x1` and `x2`
    /// (`None`: x2 = x1).
    ///
    /// # Errors
    /// [`Error::AllocationFailed`](crate::Error::AllocationFailed) if the arrays of a
    /// convolutional chain do not fit in memory.
    pub(crate) fn run(
        &self,
        program: &Program,
        x1: &DMatrix<f64>,
        x2: Option<&DMatrix<f64>>,
    ) -> Result<Vec<DMatrix<f64>>> {
        match self {
            Compiled::Tapes(t) => Ok(t.run(program, x1, x2)),
            Compiled::Grid(g) => g.run(x1, x2),
        }
    }

    /// Per group, whether it has a bias term among the results.
    pub(crate) fn layout(&self) -> &[bool] {
        match self {
            Compiled::Tapes(t) => t.layout(),
            Compiled::Grid(g) => g.layout(),
        }
    }
}

/// The compiled tapes of one program.
pub(crate) struct Tapes {
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

impl std::fmt::Debug for Tapes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tapes")
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

/// The compiler of one program's limit: interned forms, memoised moments, and the two
/// tapes being written. Operations reach it through their
/// [`LimitRule`](crate::program::ops::LimitRule).
pub(crate) struct Compiler<'p> {
    pub(crate) program: &'p Program,
    rule: Arc<GaussHermite>,
    gauss: Interner<Gauss>,
    glin: Interner<Lin<u32>>,
    /// (activation id, Gaussian combination id).
    pub(crate) phi: Interner<(u32, u32)>,
    pub(crate) hlin: Interner<Lin<Atom>>,
    blin: Interner<Lin<BAtom>>,
    scalars: Interner<SampleScalar>,
    /// Sorted lists of scalar ids; id 0 is the empty product.
    monos: Interner<Vec<u32>>,
    activations: Vec<Activation>,
    pairs: Vec<PairDual>,
    pair_ids: HashMap<(u32, u32), u32>,
    /// The limit form of every variable built so far.
    pub(crate) forms: Vec<Form>,
    /// Per variable, its backward combination per block (empty if it does not reach
    /// the output).
    grads: Vec<Vec<u32>>,
    memo: HashMap<(Key, Mode), Val>,
    duals: HashMap<(u32, u32, Mode), (Val, Val)>,
    /// The per-sample tape.
    pub(crate) diag: Tape,
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
    program.readout_of()?;
    if let Some(plan) = GridPlan::of(program, rule, with_groups).filter(GridPlan::pays_off) {
        return Ok(Compiled::Grid(plan));
    }
    compile_tapes(program, rule, with_groups).map(Compiled::Tapes)
}

/// Compiles `program` (validated) into tapes, whatever its structure.
pub(crate) fn compile_tapes(
    program: &Program,
    rule: &Arc<GaussHermite>,
    with_groups: bool,
) -> Result<Tapes> {
    let (out, readout) = program.readout_of()?;
    let mut c = Compiler {
        program,
        rule: Arc::clone(rule),
        gauss: Interner::new(),
        glin: Interner::new(),
        phi: Interner::new(),
        hlin: Interner::new(),
        blin: Interner::new(),
        scalars: Interner::new(),
        monos: Interner::new(),
        activations: Vec::new(),
        pairs: Vec::new(),
        pair_ids: HashMap::default(),
        forms: Vec::with_capacity(program.nodes.len()),
        grads: vec![Vec::new(); program.nodes.len()],
        memo: HashMap::default(),
        duals: HashMap::default(),
        diag: Tape::new(Mode::Diag),
        cross: Tape::new(Mode::Cross),
        fixed: Vec::new(),
    };
    c.monos.id(Vec::new());
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
    Ok(Tapes {
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

impl Val {
    pub(crate) fn constant(self) -> Option<f64> {
        match self {
            Val::Zero => Some(0.0),
            Val::Const(c) => Some(c),
            _ => None,
        }
    }

    pub(crate) fn constant_or_zero(c: f64) -> Val {
        if c == 0.0 { Val::Zero } else { Val::Const(c) }
    }
}

/// Most bytes of slot buffers per thread: the tile size follows from it.
const ARENA_BYTES: usize = 1 << 20;

impl Tapes {
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
            out.iter_mut().for_each(mirror_upper);
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
