//! Runs of stride-1 convolutions, their biases and activations, computed one diagonal
//! slice of the arrays at a time.
//!
//! A convolution at stride 1 (zero-padded or valid) reads the pair of positions
//! $(p + a, q + a)$ for the output $(p, q)$: it keeps the difference $δ = q − p$. So do a
//! bias and φ, entry by entry. The array of a pair of samples therefore splits into
//! *slices* $A_δ(p) = A(p, p + δ)$, one per difference $δ = (d, e)$, each over the
//! rectangle of positions $p$ with $p$ and $p + δ$ both on the grid, and a run of these
//! layers acts on every slice alone:
//!
//! - a convolution is a box filter of the slice, zero past the rectangle's edges (tap
//!   $a$ reads $(p + a, q + a)$ exactly when $p + a$ is in the rectangle), separable into
//!   one pass along the columns and one along the rows;
//! - φ pairs entry $p$ with the variances at $p$ (first sample) and $p + δ$ (second).
//!
//! A slice holds at most one image's positions, so a whole run happens in the L1
//! cache, and the $P × P$ arrays of its resolution are never stored. The run ends in an
//! average pooling, in the readout (summed; flattening needs only δ = 0), or in arrays
//! for the next operation. A pooling whose windows tile the grid in $k_h × k_w$ blocks
//! (or none: $k = 1$) keeps slices too: fine slice δ sends each residue class of rows
//! modulo $k_h$ and of columns modulo $k_w$ to one coarse slice, so the run adds each
//! fine row into at most two coarse slices' rows. The coarse slices are then either
//! laid out as arrays once per pair, or, when a run on the coarse grid follows, kept
//! as they are for it to read ([`Source::Slices`]); other windows scatter the slices
//! entry by entry. For a sample with itself every array is symmetric and slice $−δ$ is slice
//! $δ$ transposed, so half of the slices are computed.

use std::ops::Range;

use nalgebra::DMatrix;

use crate::infinite::dual::{PairDual, Variances};
use crate::program::AxisWindows;

use super::Sides;

/// A stride-1 zero-padded convolution's taps along one axis: output $i$ reads input
/// $i + o$ for each offset $o$, zero past the axis (a tap that reads nothing anywhere
/// is dropped); the outputs are the inputs' positions.
#[derive(Clone, Debug)]
pub(super) struct Shift {
    offsets: Vec<isize>,
}

impl Shift {
    /// The shifts of `windows` over an axis of `inputs` positions, or `None` unless
    /// there is one output per input and every tap is a translation: tap $a$ of output
    /// $i$ is input $i + o_a$ whenever that is on the axis and padding otherwise (`'SAME'`
    /// padding at stride 1; not circular padding, valid windows or strides).
    pub(super) fn of(windows: &AxisWindows, inputs: usize) -> Option<Shift> {
        let taps = windows.first()?.len();
        if windows.len() != inputs {
            return None;
        }
        let mut offsets = Vec::with_capacity(taps);
        for a in 0..taps {
            let first = windows
                .iter()
                .enumerate()
                .find_map(|(i, w)| w.get(a)?.map(|j| j as isize - i as isize));
            let Some(offset) = first else { continue };
            for (i, w) in windows.iter().enumerate() {
                let j = i as isize + offset;
                let expected = (0..inputs as isize).contains(&j).then_some(j as usize);
                if w.len() != taps || w[a] != expected {
                    return None;
                }
            }
            offsets.push(offset);
        }
        Some(Shift { offsets })
    }

    /// The largest distance a tap reaches.
    fn reach(&self) -> usize {
        self.offsets
            .iter()
            .map(|o| o.unsigned_abs())
            .max()
            .unwrap_or(0)
    }
}

/// Where each position of an axis goes: the output positions whose windows hold it.
#[derive(Clone, Debug)]
pub(super) struct Holders {
    /// Per position, its first target in `targets` (and the next one's end).
    starts: Vec<usize>,
    targets: Vec<usize>,
    /// Per position its only target (`usize::MAX`: none), when none has two.
    single: Option<Vec<usize>>,
    outputs: usize,
}

impl Holders {
    /// Every position to itself.
    pub(super) fn identity(n: usize) -> Holders {
        Holders::new((0..n).map(|i| vec![i]).collect(), n)
    }

    /// The holders of an average pooling's `windows` over an axis of `inputs`.
    pub(super) fn of_windows(windows: &AxisWindows, inputs: usize) -> Holders {
        let mut lists = vec![Vec::new(); inputs];
        for (out, window) in windows.iter().enumerate() {
            for &i in window.iter().flatten() {
                lists[i].push(out);
            }
        }
        Holders::new(lists, windows.len())
    }

    fn new(lists: Vec<Vec<usize>>, outputs: usize) -> Holders {
        let mut starts = vec![0];
        let mut targets = Vec::new();
        for list in &lists {
            targets.extend_from_slice(list);
            starts.push(targets.len());
        }
        let single = lists.iter().all(|l| l.len() <= 1).then(|| {
            lists
                .iter()
                .map(|l| l.first().copied().unwrap_or(usize::MAX))
                .collect()
        });
        Holders {
            starts,
            targets,
            single,
            outputs,
        }
    }

    fn of(&self, i: usize) -> &[usize] {
        &self.targets[self.starts[i]..self.starts[i + 1]]
    }

    /// The block size $k$ when the windows tile the axis in blocks of $k$: position $i$
    /// goes to output $⌊i/k⌋$ alone, and every position to one (an average pooling with
    /// its window as its stride and a multiple of it as the axis, or the identity).
    fn blocks(&self) -> Option<usize> {
        let single = self.single.as_ref()?;
        if self.outputs == 0 || single.len() % self.outputs != 0 {
            return None;
        }
        let k = single.len() / self.outputs;
        single
            .iter()
            .enumerate()
            .all(|(i, &t)| t == i / k)
            .then_some(k)
    }
}

/// One layer of a run.
#[derive(Clone, Debug)]
pub(super) enum SliceStep {
    /// A convolution: $M\' = s_M S(M)$, $Θ\' = s_M S(Θ) + s_Θ S(M)$ (one Θ: the weight's own
    /// term folds into it), with the shifts along the rows and the columns.
    Conv {
        shifts: [Shift; 2],
        scale_m: f64,
        scale_own: f64,
    },
    /// A bias: $M\' = M + σ_b^2$, $Θ\' = Θ + c_b$.
    Bias { m: f64, t: f64 },
    /// φ: $M\' = C$, $Θ\' = Θ · \dot C$; `layer` numbers the φ layers.
    Phi { dual: PairDual, layer: usize },
}

/// Where a run's slices go.
#[derive(Clone, Debug)]
pub(super) enum Sink {
    /// Into arrays over the outputs of `rows` × `cols` (an average pooling's windows,
    /// or every position to itself), times `scale`.
    Arrays {
        rows: Holders,
        cols: Holders,
        scale: f64,
    },
    /// The sum of every entry, times `scale` (a global average or sum).
    Sum { scale: f64 },
    /// The mean of the diagonal (flattening): slice δ = 0 alone.
    Diagonal,
}

/// A run of stride-1 zero-padded convolutions, biases and φ on a grid of `grid`
/// positions.
#[derive(Clone, Debug)]
pub(super) struct SliceRun {
    grid: [usize; 2],
    steps: Vec<SliceStep>,
    sink: Sink,
    /// The zero border a slice needs along the rows and the columns: the farthest tap.
    pads: [usize; 2],
    /// The number of φ steps.
    phis: usize,
    /// For [`Sink::Arrays`] whose windows tile the grid in blocks (along the rows and
    /// the columns), their sizes: the run then accumulates the output's slices.
    blocks: Option<[usize; 2]>,
    /// Whether the output's slices stay as they are, for the next run to read
    /// ([`Source::Slices`]), instead of being laid out as arrays.
    keeps_slices: bool,
}

/// What a run starts from.
pub(super) enum Source<'a> {
    /// The two samples' pixels, one column per channel: $M(p, q) = x_p · x̄_q / C$.
    Pixels(&'a DMatrix<f64>, &'a DMatrix<f64>),
    /// Arrays over pairs of positions: $M$ and, after a convolution, $Θ$.
    Arrays(&'a DMatrix<f64>, Option<&'a DMatrix<f64>>),
    /// The slices of M and Θ that the previous run [kept](SliceRun::keep_slices), on
    /// this run's grid (in the scratch).
    Slices,
}

/// A thread's buffers for one run, reused from slice to slice (every buffer has the
/// run's [`Layout`]).
#[derive(Default)]
pub(super) struct Scratch {
    m: Vec<f64>,
    t: Vec<f64>,
    sm: Vec<f64>,
    st: Vec<f64>,
    tmp: Vec<f64>,
    /// Per φ step, the second sample's variances, square roots and inverse square
    /// roots, every row twice over, and whether they are this pair's yet (they are laid
    /// out at their first use in a pair, into buffers kept from pair to pair).
    second: Vec<([Vec<f64>; 3], bool)>,
    /// The output's slices of M and Θ (for a sink of [blocks](SliceRun::blocks)), slice
    /// $Δ = (D, E)$ at `(D · W' + E) · P'`, position $p$ after it.
    coarse: [Vec<f64>; 2],
    /// The previous run's output slices, for a run from [`Source::Slices`].
    input: [Vec<f64>; 2],
    /// For a run from the pixels, the second sample's, channel by channel, every row
    /// twice over.
    pixels: Vec<f64>,
}

/// The buffers of a run: the grid's positions row-major, in a border of `pads` rows
/// and columns (zero in the arrays, so that a box filter is a sum of shifted copies of
/// the whole buffer; 1 in the variances), `stride` entries a row.
#[derive(Clone, Copy)]
struct Layout {
    grid: [usize; 2],
    pads: [usize; 2],
    stride: usize,
    total: usize,
}

impl Layout {
    fn new(grid: [usize; 2], pads: [usize; 2]) -> Layout {
        let stride = grid[1] + 2 * pads[1];
        Layout {
            grid,
            pads,
            stride,
            total: (grid[0] + 2 * pads[0]) * stride,
        }
    }

    /// The grid's rows, border columns included.
    fn inner(&self) -> Range<usize> {
        self.pads[0] * self.stride..(self.pads[0] + self.grid[0]) * self.stride
    }

    /// Where position (i, j) is.
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> usize {
        (self.pads[0] + i) * self.stride + self.pads[1] + j
    }

    /// Grid row `i`.
    #[inline(always)]
    fn row(&self, i: usize) -> Range<usize> {
        let start = self.at(i, 0);
        start..start + self.grid[1]
    }

    /// Sets the border columns of the grid's rows to `value`.
    #[inline(always)]
    fn fill_columns(&self, buffer: &mut [f64], value: f64) {
        let pad = self.pads[1];
        for i in 0..self.grid[0] {
            let row = self.row(i);
            for k in 0..pad {
                buffer[row.start - pad + k] = value;
                buffer[row.end + k] = value;
            }
        }
    }

    /// Sets the whole border to `value`.
    fn fill_border(&self, buffer: &mut [f64], value: f64) {
        let inner = self.inner();
        buffer[..inner.start].fill(value);
        buffer[inner.end..self.total].fill(value);
        self.fill_columns(buffer, value);
    }
}

/// A circular difference δ = (d, e), 0 ≤ d < H, 0 ≤ e < W, and where its wraps are.
///
/// The slice of δ holds $A(p, p ⊕ δ)$ at every position $p$, $⊕$ modulo the grid: the
/// four true slices of differences $(d, e)$, $(d − H, e)$, $(d, e − W)$ and $(d − H, e − W)$
/// side by side, split by the seams before row $H − d$ and column $W − e$. A filter
/// treats a seam as the grid's edge.
#[derive(Clone, Copy)]
struct Difference {
    d: usize,
    e: usize,
    /// The first row and column past a seam (the grid's size when there is none).
    seams: [usize; 2],
}

impl Difference {
    fn new(d: usize, e: usize, [h, w]: [usize; 2]) -> Difference {
        Difference {
            d,
            e,
            seams: [h - d, w - e],
        }
    }

    /// The partner's row of row `i`.
    #[inline(always)]
    fn partner_row(&self, i: usize, h: usize) -> usize {
        (i + self.d) % h
    }

    /// Row `i`'s positions, as runs `(j, l, n)`: columns `j..j + n` pair with the
    /// partner row's columns `l..l + n`.
    #[inline(always)]
    fn pieces(&self, w: usize) -> [(usize, usize, usize); 2] {
        let cut = self.seams[1];
        [(0, self.e, cut), (cut, 0, w - cut)]
    }
}

impl SliceRun {
    /// The run of `steps` on a grid of `grid` positions into `sink`.
    pub(super) fn new(grid: [usize; 2], steps: Vec<SliceStep>, sink: Sink) -> SliceRun {
        let mut pads = [0, 0];
        let mut phis = 0;
        for step in &steps {
            match step {
                SliceStep::Conv { shifts, .. } => {
                    for (pad, shift) in pads.iter_mut().zip(shifts) {
                        *pad = (*pad).max(shift.reach());
                    }
                }
                SliceStep::Phi { .. } => phis += 1,
                SliceStep::Bias { .. } => {}
            }
        }
        let blocks = match &sink {
            Sink::Arrays { rows, cols, .. } => {
                rows.blocks().zip(cols.blocks()).map(|(r, c)| [r, c])
            }
            _ => None,
        };
        SliceRun {
            grid,
            steps,
            sink,
            pads,
            phis,
            blocks,
            keeps_slices: false,
        }
    }

    /// Whether the run ends in a pooling of blocks, whose output can stay as slices.
    pub(super) fn pools_blocks(&self) -> bool {
        self.blocks.is_some()
    }

    /// Keeps the output as slices for the next run (which must read
    /// [`Source::Slices`]); only for a run that [pools blocks](Self::pools_blocks).
    pub(super) fn keep_slices(&mut self) {
        debug_assert!(self.blocks.is_some());
        self.keeps_slices = self.blocks.is_some();
    }

    /// Whether the output stays as slices.
    pub(super) fn keeps_slices(&self) -> bool {
        self.keeps_slices
    }

    /// The number of output positions of a [`Sink::Arrays`] run.
    pub(super) fn output_positions(&self) -> Option<usize> {
        match &self.sink {
            Sink::Arrays { rows, cols, .. } => Some(rows.outputs * cols.outputs),
            _ => None,
        }
    }

    /// Runs every slice from `source`: into `out` (M and Θ, overwritten) for
    /// [`Sink::Arrays`] (or into the scratch's slices, for a run that
    /// [keeps them](Self::keep_slices); `out` unused), or the readout's reductions of M
    /// and Θ otherwise.
    pub(super) fn run(
        &self,
        source: Source<'_>,
        sides: &mut Sides<'_>,
        out: &mut [DMatrix<f64>; 2],
        scratch: &mut Scratch,
    ) -> [f64; 2] {
        let [h, w] = self.grid;
        let layout = Layout::new(self.grid, self.pads);
        for buffer in [
            &mut scratch.m,
            &mut scratch.t,
            &mut scratch.sm,
            &mut scratch.st,
            &mut scratch.tmp,
        ] {
            buffer.resize(layout.total, 0.0);
            layout.fill_border(buffer, 0.0);
        }
        if let Source::Pixels(_, b) = &source {
            scratch.pixels.clear();
            for c in 0..b.ncols() {
                for row in b.column(c).as_slice().chunks_exact(w) {
                    scratch.pixels.extend_from_slice(row);
                    scratch.pixels.extend_from_slice(row);
                }
            }
        }
        scratch.second.resize_with(self.phis, Default::default);
        for (_, ready) in &mut scratch.second {
            *ready = false;
        }
        if let (Sink::Arrays { .. }, None) = (&self.sink, self.blocks) {
            for o in out.iter_mut() {
                o.fill(0.0);
            }
        }
        if let Source::Slices = source {
            std::mem::swap(&mut scratch.input, &mut scratch.coarse);
        }
        if let Some(positions) = self.output_positions().filter(|_| self.blocks.is_some()) {
            for acc in &mut scratch.coarse {
                acc.clear();
                acc.resize(positions * positions, 0.0);
            }
        }
        let own = matches!(sides, Sides::Own(_));
        let mut sums = [0.0; 2];
        // δ = 0 first: a sample's own variances come from it.
        let at = |d, e| Difference::new(d, e, self.grid);
        let context = Context {
            run: self,
            layout,
            source: &source,
        };
        slice(&context, at(0, 0), false, sides, out, scratch, &mut sums);
        if !matches!(self.sink, Sink::Diagonal) {
            for d in 0..h {
                for e in 0..w {
                    // A sample with itself: δ and −δ are each other's transposes.
                    let negated = ((h - d) % h, (w - e) % w);
                    if (d, e) == (0, 0) || (own && (d, e) > negated) {
                        continue;
                    }
                    let mirrored = own && (d, e) != negated;
                    slice(&context, at(d, e), mirrored, sides, out, scratch, &mut sums);
                }
            }
        }
        match (&self.sink, self.blocks) {
            (Sink::Arrays { scale, .. }, Some(blocks)) => {
                let coarse = [self.grid[0] / blocks[0], self.grid[1] / blocks[1]];
                for acc in &mut scratch.coarse {
                    finish_slices(acc, coarse, own, *scale);
                }
                if !self.keeps_slices {
                    unfold(coarse, &scratch.coarse, out);
                }
                [0.0; 2]
            }
            (Sink::Arrays { scale, .. }, None) => {
                for o in out.iter_mut() {
                    *o *= *scale;
                }
                [0.0; 2]
            }
            (Sink::Sum { scale }, _) => sums.map(|s| s * scale),
            (Sink::Diagonal, _) => sums.map(|s| s / (h * w) as f64),
        }
    }
}

/// The slices $B_Δ(p)$ accumulated over a grid of `[h, w]` positions, made whole, times
/// `scale`, in place: for a sample with itself only half of the fine slices were taken
/// (those that are their own transposes at half weight), so the slice of $Δ$ is
/// $S_Δ(p) = B_Δ(p) + B_{−Δ}(p ⊕ Δ)$, which is also $S_{−Δ}(p ⊕ Δ)$: each such pair of
/// entries is set once.
fn finish_slices(acc: &mut [f64], [h, w]: [usize; 2], own: bool, scale: f64) {
    let n = h * w;
    if own {
        for (d, e) in (0..h).flat_map(|d| (0..w).map(move |e| (d, e))) {
            let delta = d * w + e;
            let negated = ((h - d) % h) * w + (w - e) % w;
            if delta > negated {
                continue;
            }
            for (i, j) in (0..h).flat_map(|i| (0..w).map(move |j| (i, j))) {
                let (p, q) = (i * w + j, ((i + d) % h) * w + (j + e) % w);
                if delta == negated && p > q {
                    continue;
                }
                let (x, y) = (delta * n + p, negated * n + q);
                let v = acc[x] + acc[y];
                acc[x] = v;
                acc[y] = v;
            }
        }
    }
    acc.iter_mut().for_each(|v| *v *= scale);
}

/// The arrays (column-major over pairs of positions of a `[h, w]` grid) of whole slices
/// $S_Δ(p)$: $A(p, q) = S_{q ⊖ p}(p)$.
fn unfold([h, w]: [usize; 2], slices: &[Vec<f64>; 2], out: &mut [DMatrix<f64>; 2]) {
    let n = h * w;
    let minus = |a: usize, b: usize, size: usize| if a >= b { a - b } else { a + size - b };
    for (acc, o) in slices.iter().zip(out.iter_mut()) {
        let o = o.as_mut_slice();
        for (k, l) in (0..h).flat_map(|k| (0..w).map(move |l| (k, l))) {
            let q = k * w + l;
            let column = &mut o[q * n..(q + 1) * n];
            for i in 0..h {
                let d = minus(k, i, h);
                for j in 0..w {
                    let p = i * w + j;
                    column[p] = acc[(d * w + minus(l, j, w)) * n + p];
                }
            }
        }
    }
}

/// What every slice of a run shares.
struct Context<'a> {
    run: &'a SliceRun,
    layout: Layout,
    source: &'a Source<'a>,
}

/// One slice through the run into the sink; `mirrored`: slice −δ is its transpose (a
/// sample with itself), stored or summed with it. Multiversioned (AVX-512, AVX2,
/// baseline; the same IEEE results).
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn slice(
    context: &Context<'_>,
    delta: Difference,
    mirrored: bool,
    sides: &mut Sides<'_>,
    out: &mut [DMatrix<f64>; 2],
    scratch: &mut Scratch,
    sums: &mut [f64; 2],
) {
    let Context {
        run,
        layout,
        source,
    } = context;
    let [h, w] = run.grid;
    let inner = layout.inner();
    let Scratch {
        m,
        t,
        sm,
        st,
        tmp,
        second,
        coarse,
        input,
        pixels,
    } = scratch;
    let mut has_t = false;
    match source {
        Source::Pixels(a, _) => {
            // $M(p, p ⊕ δ) = x_p · \bar x_{p ⊕ δ} / C$, channel by channel, the second
            // sample's rows doubled (a row's partners are one run of w from column e).
            let channels = a.ncols();
            let scale = 1.0 / channels as f64;
            let plane = h * 2 * w;
            for i in 0..h {
                let from = delta.partner_row(i, h) * 2 * w + delta.e;
                let dst = &mut m[layout.row(i)];
                for c in 0..channels {
                    let column = a.column(c);
                    let x = &column.as_slice()[i * w..(i + 1) * w];
                    let y = &pixels[c * plane + from..c * plane + from + w];
                    let terms = dst.iter_mut().zip(x).zip(y);
                    match (c == 0, c + 1 == channels) {
                        (true, true) => terms.for_each(|((o, x), y)| *o = x * y * scale),
                        (true, false) => terms.for_each(|((o, x), y)| *o = x * y),
                        (false, false) => terms.for_each(|((o, x), y)| *o += x * y),
                        (false, true) => terms.for_each(|((o, x), y)| *o = (*o + x * y) * scale),
                    }
                }
            }
        }
        Source::Slices => {
            // Row i of slice δ is a run of w entries.
            let n = h * w;
            let start = (delta.d * w + delta.e) * n;
            for i in 0..h {
                let from = start + i * w..start + (i + 1) * w;
                m[layout.row(i)].copy_from_slice(&input[0][from.clone()]);
                t[layout.row(i)].copy_from_slice(&input[1][from]);
            }
            has_t = true;
        }
        Source::Arrays(am, at) => {
            // Entry (p, q) of the column-major arrays; along a piece p and q both
            // step by one, the entry by one column and one row.
            let positions = am.nrows();
            let step = positions + 1;
            for i in 0..h {
                let k = delta.partner_row(i, h);
                let row = layout.row(i);
                for (j, l, n) in delta.pieces(w) {
                    let from = (k * w + l) * positions + i * w + j;
                    let dst = row.start + j..row.start + j + n;
                    for (x, o) in m[dst.clone()].iter_mut().enumerate() {
                        *o = am.as_slice()[from + x * step];
                    }
                    if let Some(at) = at {
                        for (x, o) in t[dst].iter_mut().enumerate() {
                            *o = at.as_slice()[from + x * step];
                        }
                    }
                }
            }
            has_t = at.is_some();
        }
    }
    layout.fill_columns(m, 0.0);
    layout.fill_columns(t, 0.0);
    // Whether Θ holds the next convolution's combination $s_M Θ + s_Θ M$ already.
    let mut combined = false;
    let mut phi = 0;
    for (k, step) in run.steps.iter().enumerate() {
        match step {
            SliceStep::Conv {
                shifts,
                scale_m,
                scale_own,
            } => {
                // $M' = s_M S(M)$ and $Θ' = S(s_M Θ + s_Θ M)$, S linear.
                if !has_t {
                    box_filter(shifts, layout, delta, m, sm, tmp, 1.0);
                    let sm = &sm[inner.clone()];
                    for (t, &sm) in t[inner.clone()].iter_mut().zip(sm) {
                        *t = scale_own * sm;
                    }
                    for (m, &sm) in m[inner.clone()].iter_mut().zip(sm) {
                        *m = scale_m * sm;
                    }
                } else {
                    if !combined {
                        for (t, &m) in t[inner.clone()].iter_mut().zip(&m[inner.clone()]) {
                            *t = scale_m * *t + scale_own * m;
                        }
                    }
                    box_filter(shifts, layout, delta, m, sm, tmp, *scale_m);
                    box_filter(shifts, layout, delta, t, st, tmp, 1.0);
                    std::mem::swap(m, sm);
                    std::mem::swap(t, st);
                }
                has_t = true;
                combined = false;
            }
            SliceStep::Bias { m: bm, t: bt } => {
                m[inner.clone()].iter_mut().for_each(|m| *m += bm);
                t[inner.clone()].iter_mut().for_each(|t| *t += bt);
                layout.fill_columns(m, 0.0);
                layout.fill_columns(t, 0.0);
            }
            SliceStep::Phi { dual, layer } => {
                let (one, other) = match sides {
                    Sides::Own(record) => {
                        if (delta.d, delta.e) == (0, 0) {
                            let q = (0..h).flat_map(|i| m[layout.row(i)].iter().copied());
                            record.push(Variances::new(q.collect()));
                        }
                        let v = &record[*layer];
                        (v, v)
                    }
                    Sides::Cross(ra, rb) => (&ra[*layer], &rb[*layer]),
                };
                // The second sample's variances with every row twice over, once per
                // pair, so that each position's partner in row i is the run of w
                // entries from column e of row i ⊕ d.
                let (twice, ready) = &mut second[phi];
                if !*ready {
                    let parts = [other.q(), other.sd(), other.inv_sd()];
                    for (buffer, part) in twice.iter_mut().zip(parts) {
                        buffer.clear();
                        for row in part.chunks_exact(w) {
                            buffer.extend_from_slice(row);
                            buffer.extend_from_slice(row);
                        }
                    }
                    *ready = true;
                }
                phi += 1;
                // The next convolution's combination, if one follows.
                let next = match run.steps.get(k + 1) {
                    Some(SliceStep::Conv {
                        scale_m, scale_own, ..
                    }) => Some((*scale_m, *scale_own)),
                    _ => None,
                };
                let mine = [one.q(), one.sd(), one.inv_sd()];
                let twice = &*twice;
                let row = |i: usize| {
                    let from = delta.partner_row(i, h) * 2 * w + delta.e;
                    (
                        mine.map(|part| &part[i * w..(i + 1) * w]),
                        [0, 1, 2].map(|x| &twice[x][from..from + w]),
                        layout.row(i).start,
                    )
                };
                match next {
                    Some((scale_m, scale_own)) => dual.eval_rows_then(h, row, m, t, |c, cd, t| {
                        (c, scale_m * (t * cd) + scale_own * c)
                    }),
                    None => dual.eval_rows_then(h, row, m, t, |c, cd, t| (c, t * cd)),
                }
                combined = next.is_some();
            }
        }
    }
    match &run.sink {
        Sink::Sum { .. } | Sink::Diagonal => {
            let weight = if mirrored { 2.0 } else { 1.0 };
            sums[0] += weight * m[inner.clone()].iter().sum::<f64>();
            sums[1] += weight * t[inner].iter().sum::<f64>();
        }
        Sink::Arrays { .. } if run.blocks.is_some() => {
            let blocks = run.blocks.unwrap_or([1, 1]);
            // A sample with itself: the slices that are their own transposes count half.
            if matches!(sides, Sides::Own(_)) && !mirrored {
                m[inner.clone()].iter_mut().for_each(|v| *v *= 0.5);
                t[inner.clone()].iter_mut().for_each(|v| *v *= 0.5);
            }
            for (buffer, acc) in [&*m, &*t].into_iter().zip(coarse.iter_mut()) {
                pool_blocks(buffer, layout, delta, blocks, acc);
            }
        }
        Sink::Arrays {
            rows: by_row,
            cols: by_col,
            ..
        } => {
            let [om, ot] = out;
            let positions = om.nrows();
            let out_width = by_col.outputs;
            let (om, ot) = (om.as_mut_slice(), ot.as_mut_slice());
            for i in 0..h {
                let k = delta.partner_row(i, h);
                let row = layout.row(i);
                let (mr, tr) = (&m[row.clone()], &t[row]);
                for &big_i in by_row.of(i) {
                    for &big_k in by_row.of(k) {
                        let (row_p, row_q) = (big_i * out_width, big_k * out_width);
                        let mut add = |j: usize, l: usize, mv: f64, tv: f64| {
                            let (p, q) = (row_p + j, row_q + l);
                            om[q * positions + p] += mv;
                            ot[q * positions + p] += tv;
                            if mirrored {
                                om[p * positions + q] += mv;
                                ot[p * positions + q] += tv;
                            }
                        };
                        for (j0, l0, n) in delta.pieces(w) {
                            for x in 0..n {
                                let (j, l) = (j0 + x, l0 + x);
                                let (mv, tv) = (mr[j], tr[j]);
                                match &by_col.single {
                                    Some(single) => {
                                        let (big_j, big_l) = (single[j], single[l]);
                                        if big_j != usize::MAX && big_l != usize::MAX {
                                            add(big_j, big_l, mv, tv);
                                        }
                                    }
                                    None => {
                                        for &big_j in by_col.of(j) {
                                            for &big_l in by_col.of(l) {
                                                add(big_j, big_l, mv, tv);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds a slice's entries into the output's slices, for average-pooling blocks of
/// `kh × kw` positions: fine position $(i, j)$ with partner $(i, j) ⊕ δ$ goes to coarse
/// position $(⌊i/k_h⌋, ⌊j/k_w⌋)$ with partner difference
/// $Δ = (⌊(i \bmod k_h + d)/k_h⌋, ⌊(j \bmod k_w + e)/k_w⌋)$ modulo the coarse grid. Each fine
/// row therefore adds into one row of at most two coarse slices, its entries summed
/// in runs of $k_w$ (split where the column's residue changes $Δ$).
#[inline(always)]
fn pool_blocks(
    buffer: &[f64],
    layout: &Layout,
    delta: Difference,
    [kh, kw]: [usize; 2],
    acc: &mut [f64],
) {
    let [h, w] = layout.grid;
    let [ch, cw] = [h / kh, w / kw];
    let n = ch * cw;
    let first = (delta.e / kw) % cw;
    let second = (first + 1) % cw;
    // Residues below `split` go to the first difference, the rest to the second.
    let split = if second == first {
        kw
    } else {
        kw - delta.e % kw
    };
    // A row of residue r goes to the coarse row difference ⌊(r + d)/k_h⌋: the lower one
    // while r + (d mod k_h) < k_h.
    let lower = (delta.d / kh) % ch;
    let upper = (lower + 1) % ch;
    let (mut r, mut big_i) = (0, 0);
    for i in 0..h {
        let row = &buffer[layout.row(i)];
        let big_d = if r + delta.d % kh < kh { lower } else { upper };
        let at = move |e: usize| (big_d * cw + e) * n + big_i * cw;
        r += 1;
        if r == kh {
            (r, big_i) = (0, big_i + 1);
        }
        if split == kw {
            let dst = &mut acc[at(first)..at(first) + cw];
            if kw == 2 {
                for (o, pair) in dst.iter_mut().zip(row.chunks_exact(2)) {
                    *o += pair[0] + pair[1];
                }
            } else {
                for (o, block) in dst.iter_mut().zip(row.chunks_exact(kw)) {
                    *o += block.iter().sum::<f64>();
                }
            }
        } else {
            let (a, b) = (at(first), at(second));
            let (one, other) = if a < b {
                let (lo, hi) = acc.split_at_mut(b);
                (&mut lo[a..a + cw], &mut hi[..cw])
            } else {
                let (lo, hi) = acc.split_at_mut(a);
                (&mut hi[..cw], &mut lo[b..b + cw])
            };
            if kw == 2 {
                // Four outputs at a time, so that the loads deinterleave in registers.
                let (ones, others) = (one.chunks_exact_mut(4), other.chunks_exact_mut(4));
                let ends = (ones.len() * 4, row.len() / 8 * 8);
                for ((o, u), x) in ones.zip(others).zip(row.chunks_exact(8)) {
                    let (o, u): (&mut [f64; 4], &mut [f64; 4]) = match (o.try_into(), u.try_into())
                    {
                        (Ok(o), Ok(u)) => (o, u),
                        _ => unreachable!("chunks of four"),
                    };
                    let evens = [x[0], x[2], x[4], x[6]];
                    let odds = [x[1], x[3], x[5], x[7]];
                    *o = [
                        o[0] + evens[0],
                        o[1] + evens[1],
                        o[2] + evens[2],
                        o[3] + evens[3],
                    ];
                    *u = [
                        u[0] + odds[0],
                        u[1] + odds[1],
                        u[2] + odds[2],
                        u[3] + odds[3],
                    ];
                }
                let rest = one[ends.0..].iter_mut().zip(&mut other[ends.0..]);
                for ((o, u), pair) in rest.zip(row[ends.1..].chunks_exact(2)) {
                    *o += pair[0];
                    *u += pair[1];
                }
            } else {
                for ((o, u), block) in one.iter_mut().zip(other).zip(row.chunks_exact(kw)) {
                    *o += block[..split].iter().sum::<f64>();
                    *u += block[split..].iter().sum::<f64>();
                }
            }
        }
    }
}

/// $\text{out}(i, j) = s · Σ_a Σ_b \text{input}(i + r_a, j + c_b)$ over the grid, taps past
/// its edge or across a seam of `delta` reading zero (the input's border is zero): the
/// column taps into `tmp` as sums of shifted copies of the whole buffer, the row taps
/// as shifts by whole rows, and the entries within a tap's reach of a seam summed
/// again without the taps that cross it. The output's border columns are zeroed.
/// Multiversioned (AVX-512, AVX2, baseline; the same IEEE results).
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn box_filter(
    shifts: &[Shift; 2],
    layout: &Layout,
    delta: Difference,
    input: &[f64],
    out: &mut [f64],
    tmp: &mut [f64],
    scale: f64,
) {
    let [by_row, by_col] = shifts;
    let [h, w] = layout.grid;
    let (pad, total, stride) = (layout.pads[1], layout.total, layout.stride);
    // Every entry but the first and last `pad` (border columns), whose sums are never
    // read into the grid.
    let columns = pad..total - pad;
    sum_shifted(
        &mut tmp[columns.clone()],
        input,
        (columns.start, 1),
        &by_col.offsets,
        1.0,
    );
    // Columns near the column seam, again.
    let cut = delta.seams[1];
    if cut < w {
        let reach = by_col.reach();
        let near = cut.saturating_sub(reach)..(cut + reach).min(w);
        for j in near {
            // The taps of column j that stay on its side of the seam and on the grid.
            let mut taps = [0usize; 8];
            let mut count = 0;
            let mut rest = Vec::new();
            for &offset in &by_col.offsets {
                let source = j as isize + offset;
                let same_side = (source < cut as isize) == (j < cut);
                if same_side && (0..w as isize).contains(&source) {
                    if count < taps.len() {
                        taps[count] = source as usize;
                        count += 1;
                    } else {
                        rest.push(source as usize);
                    }
                }
            }
            let taps = &taps[..count];
            for i in 0..h {
                let start = layout.at(i, 0);
                let mut sum = 0.0;
                for &source in taps.iter().chain(&rest) {
                    sum += input[start + source];
                }
                tmp[start + j] = sum;
            }
        }
    }
    let inner = layout.inner();
    let start = inner.start;
    sum_shifted(
        &mut out[inner],
        tmp,
        (start, stride),
        &by_row.offsets,
        scale,
    );
    // Rows near the row seam, again.
    let cut = delta.seams[0];
    if cut < h {
        let reach = by_row.reach();
        for i in cut.saturating_sub(reach)..(cut + reach).min(h) {
            let row = layout.row(i);
            out[row.clone()].fill(0.0);
            for &offset in &by_row.offsets {
                let source = i as isize + offset;
                let same_side = (source < cut as isize) == (i < cut);
                if same_side && (0..h as isize).contains(&source) {
                    let from = layout.at(source as usize, 0);
                    for (x, y) in out[row.clone()].iter_mut().zip(&tmp[from..]) {
                        *x += y;
                    }
                }
            }
            out[row].iter_mut().for_each(|x| *x *= scale);
        }
    }
    layout.fill_columns(out, 0.0);
}

/// $\text{out}[x] = s · Σ_k \text{input}[b + o_k t + x]$ for the offsets $o_k$ from `(b, t)`,
/// in one pass for up to three terms (a 3 × 3 filter's taps), further terms added in
/// more.
#[inline(always)]
fn sum_shifted(
    out: &mut [f64],
    input: &[f64],
    (base, step): (usize, usize),
    offsets: &[isize],
    scale: f64,
) {
    let n = out.len();
    let at = |k: usize| {
        let from = (base as isize + offsets[k] * step as isize) as usize;
        &input[from..from + n]
    };
    match offsets.len() {
        0 => out.fill(0.0),
        1 => {
            for (o, a) in out.iter_mut().zip(at(0)) {
                *o = scale * a;
            }
        }
        2 => {
            for ((o, a), b) in out.iter_mut().zip(at(0)).zip(at(1)) {
                *o = scale * (a + b);
            }
        }
        3 => {
            for (((o, a), b), c) in out.iter_mut().zip(at(0)).zip(at(1)).zip(at(2)) {
                *o = scale * (a + b + c);
            }
        }
        taps => {
            for (((o, a), b), c) in out.iter_mut().zip(at(0)).zip(at(1)).zip(at(2)) {
                *o = a + b + c;
            }
            for k in 3..taps {
                for (o, a) in out.iter_mut().zip(at(k)) {
                    *o += a;
                }
            }
            out.iter_mut().for_each(|o| *o *= scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_accept_zero_padding_and_valid_windows_only() {
        // SAME, 3 taps over 4 positions.
        let same: AxisWindows = (0..4)
            .map(|i: usize| {
                (0..3)
                    .map(|a| (i + a).checked_sub(1).filter(|&j| j < 4))
                    .collect()
            })
            .collect();
        assert_eq!(Shift::of(&same, 4).unwrap().offsets, vec![-1, 0, 1]);
        // Even filters split as TensorFlow does.
        let even: AxisWindows = (0..4)
            .map(|i: usize| {
                (0..2)
                    .map(|a| (i + a).checked_sub(0).filter(|&j| j < 4))
                    .collect()
            })
            .collect();
        assert_eq!(Shift::of(&even, 4).unwrap().offsets, vec![0, 1]);
        // Valid windows shrink the grid; circular wraps around; strides skip.
        let valid: AxisWindows = (0..3).map(|i| vec![Some(i), Some(i + 1)]).collect();
        assert!(Shift::of(&valid, 4).is_none());
        let circular: AxisWindows = (0..4).map(|i| vec![Some(i), Some((i + 1) % 4)]).collect();
        assert!(Shift::of(&circular, 4).is_none());
        let strided: AxisWindows = (0..2).map(|i| vec![Some(2 * i), Some(2 * i + 1)]).collect();
        assert!(Shift::of(&strided, 4).is_none());
    }
}
