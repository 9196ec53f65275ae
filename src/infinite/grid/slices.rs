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
//! average pooling (its slices scattered into the coarser grid's arrays), in the
//! readout (summed; flattening needs only δ = 0), or in arrays for the next operation.
//! For a sample with itself every array is symmetric and slice $−δ$ is slice $δ$
//! transposed, so half of the slices are computed.

use std::ops::Range;

use nalgebra::DMatrix;

use crate::infinite::dual::{PairDual, Variances};
use crate::program::AxisWindows;

use super::Sides;

/// The positions of an axis of `n` whose partner at difference `d` is on it too.
fn span(n: usize, d: isize) -> Range<usize> {
    let n = n as isize;
    let (lo, hi) = ((-d).max(0), (n - d).min(n));
    if hi <= lo {
        0..0
    } else {
        lo as usize..hi as usize
    }
}

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
        let single = lists
            .iter()
            .all(|l| l.len() <= 1)
            .then(|| {
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
}

/// What a run starts from.
pub(super) enum Source<'a> {
    /// The two samples' pixels, one column per channel: $M(p, q) = x_p · x̄_q / C$.
    Pixels(&'a DMatrix<f64>, &'a DMatrix<f64>),
    /// Arrays over pairs of positions: $M$ and, after a convolution, $Θ$.
    Arrays(&'a DMatrix<f64>, Option<&'a DMatrix<f64>>),
}

/// A thread's slice buffers, reused from slice to slice.
#[derive(Default)]
pub(super) struct Scratch {
    m: Vec<f64>,
    t: Vec<f64>,
    sm: Vec<f64>,
    st: Vec<f64>,
    tmp: Vec<f64>,
    /// The two sides' variances, square roots and inverse square roots.
    variances: [Vec<f64>; 6],
}

/// Where a slice's entries are in its buffers: its rectangle of rows × columns of the
/// grid, with a zero border of `pads` rows and columns (so that a box filter is a sum
/// of shifted copies of the whole buffer), row-major with `stride` entries a row.
struct Layout {
    rows: usize,
    cols: usize,
    pads: [usize; 2],
    stride: usize,
    total: usize,
}

impl Layout {
    fn new(rows: usize, cols: usize, pads: [usize; 2]) -> Layout {
        let stride = cols + 2 * pads[1];
        Layout {
            rows,
            cols,
            pads,
            stride,
            total: (rows + 2 * pads[0]) * stride,
        }
    }

    /// The rows of the rectangle, border columns included.
    fn inner(&self) -> Range<usize> {
        self.pads[0] * self.stride..(self.pads[0] + self.rows) * self.stride
    }

    /// Row `r` of the rectangle.
    fn row(&self, r: usize) -> Range<usize> {
        let start = (self.pads[0] + r) * self.stride + self.pads[1];
        start..start + self.cols
    }

    /// Zeroes the border columns of the rectangle's rows.
    fn clear_columns(&self, buffer: &mut [f64]) {
        self.fill_columns(buffer, 0.0);
    }

    /// Sets the border columns of the rectangle's rows to `value`.
    #[inline(always)]
    fn fill_columns(&self, buffer: &mut [f64], value: f64) {
        let pad = self.pads[1];
        if pad == 0 {
            return;
        }
        for r in 0..self.rows {
            let row = self.row(r);
            for k in 0..pad {
                buffer[row.start - pad + k] = value;
                buffer[row.end + k] = value;
            }
        }
    }

    /// Zeroes the whole border.
    fn clear(&self, buffer: &mut [f64]) {
        let inner = self.inner();
        buffer[..inner.start].fill(0.0);
        buffer[inner.end..self.total].fill(0.0);
        self.clear_columns(buffer);
    }
}

impl SliceRun {
    /// The run of `steps` on a grid of `grid` positions into `sink`.
    pub(super) fn new(grid: [usize; 2], steps: Vec<SliceStep>, sink: Sink) -> SliceRun {
        let mut pads = [0, 0];
        for step in &steps {
            if let SliceStep::Conv { shifts, .. } = step {
                for (pad, shift) in pads.iter_mut().zip(shifts) {
                    *pad = (*pad).max(shift.reach());
                }
            }
        }
        SliceRun {
            grid,
            steps,
            sink,
            pads,
        }
    }

    /// The number of output positions of a [`Sink::Arrays`] run.
    pub(super) fn output_positions(&self) -> Option<usize> {
        match &self.sink {
            Sink::Arrays { rows, cols, .. } => Some(rows.outputs * cols.outputs),
            _ => None,
        }
    }

    /// Runs every slice from `source`: into `out` (M and Θ, overwritten) for
    /// [`Sink::Arrays`], or the readout's reductions of M and Θ otherwise.
    pub(super) fn run(
        &self,
        source: Source<'_>,
        sides: &mut Sides<'_>,
        out: &mut [DMatrix<f64>; 2],
        scratch: &mut Scratch,
    ) -> [f64; 2] {
        let [h, w] = self.grid;
        let size = Layout::new(h, w, self.pads).total;
        for buffer in [
            &mut scratch.m,
            &mut scratch.t,
            &mut scratch.sm,
            &mut scratch.st,
            &mut scratch.tmp,
        ]
        .into_iter()
        .chain(scratch.variances.iter_mut())
        {
            buffer.resize(size, 0.0);
        }
        if let Sink::Arrays { .. } = self.sink {
            for o in out.iter_mut() {
                o.fill(0.0);
            }
        }
        let own = matches!(sides, Sides::Own(_));
        let mut sums = [0.0; 2];
        // δ = 0 first: a sample's own variances come from it.
        slice(self, (0, 0), false, &source, sides, out, scratch, &mut sums);
        if !matches!(self.sink, Sink::Diagonal) {
            let (h, w) = (h as isize, w as isize);
            for d in 1 - h..h {
                for e in 1 - w..w {
                    let upper = d > 0 || (d == 0 && e > 0);
                    if (d, e) == (0, 0) || (own && !upper) {
                        continue;
                    }
                    slice(self, (d, e), own, &source, sides, out, scratch, &mut sums);
                }
            }
        }
        match &self.sink {
            Sink::Arrays { scale, .. } => {
                for o in out.iter_mut() {
                    *o *= *scale;
                }
                [0.0; 2]
            }
            Sink::Sum { scale } => sums.map(|s| s * scale),
            Sink::Diagonal => sums.map(|s| s / (h * w) as f64),
        }
    }
}

/// One slice through the run into the sink; `mirrored`: slice −δ is its transpose
/// (a sample with itself), stored or summed with it. Multiversioned (AVX-512, AVX2,
/// baseline; the same IEEE results).
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn slice(
    run: &SliceRun,
    (d, e): (isize, isize),
    mirrored: bool,
    source: &Source<'_>,
    sides: &mut Sides<'_>,
    out: &mut [DMatrix<f64>; 2],
    scratch: &mut Scratch,
    sums: &mut [f64; 2],
) {
    let [h, w] = run.grid;
    let (rows, cols) = (span(h, d), span(w, e));
    if rows.is_empty() || cols.is_empty() {
        return;
    }
    let layout = Layout::new(rows.len(), cols.len(), run.pads);
    let inner = layout.inner();
    let Scratch {
        m,
        t,
        sm,
        st,
        tmp,
        variances,
    } = scratch;
    // Grid position of the first sample at the start of rectangle row r, and its
    // partner's.
    let first = |r: usize| (rows.start + r) * w + cols.start;
    let partner = |p: usize| (p as isize + d * w as isize + e) as usize;
    let mut has_t = false;
    match source {
        Source::Pixels(a, b) => {
            let channels = a.ncols();
            let scale = 1.0 / channels as f64;
            for r in 0..layout.rows {
                let (p, dst) = (first(r), &mut m[layout.row(r)]);
                let q = partner(p);
                for k in 0..channels {
                    let (x, y) = (a.column(k), b.column(k));
                    let (x, y) = (&x.as_slice()[p..p + dst.len()], &y.as_slice()[q..]);
                    if k == 0 {
                        for ((o, x), y) in dst.iter_mut().zip(x).zip(y) {
                            *o = x * y;
                        }
                    } else {
                        for ((o, x), y) in dst.iter_mut().zip(x).zip(y) {
                            *o += x * y;
                        }
                    }
                }
                dst.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Source::Arrays(am, at) => {
            // Entry (p, p + δ) of the column-major arrays, p along a row: a step
            // of one column and one row.
            let positions = am.nrows();
            for r in 0..layout.rows {
                let p = first(r);
                let at_p = partner(p) * positions + p;
                let row = layout.row(r);
                let step = positions + 1;
                for (k, o) in m[row.clone()].iter_mut().enumerate() {
                    *o = am.as_slice()[at_p + k * step];
                }
                if let Some(at) = at {
                    for (k, o) in t[row].iter_mut().enumerate() {
                        *o = at.as_slice()[at_p + k * step];
                    }
                }
            }
            has_t = at.is_some();
        }
    }
    layout.clear(m);
    layout.clear(t);
    for step in &run.steps {
        match step {
            SliceStep::Conv {
                shifts,
                scale_m,
                scale_own,
            } => {
                box_filter(shifts, &layout, m, sm, tmp);
                if has_t {
                    box_filter(shifts, &layout, t, st, tmp);
                }
                let (m, sm) = (&mut m[inner.clone()], &sm[inner.clone()]);
                let t = &mut t[inner.clone()];
                if has_t {
                    for ((t, &st), &sm) in t.iter_mut().zip(&st[inner.clone()]).zip(sm) {
                        *t = scale_m * st + scale_own * sm;
                    }
                } else {
                    for (t, &sm) in t.iter_mut().zip(sm) {
                        *t = scale_own * sm;
                    }
                }
                for (m, &sm) in m.iter_mut().zip(sm) {
                    *m = scale_m * sm;
                }
                has_t = true;
            }
            SliceStep::Bias { m: bm, t: bt } => {
                m[inner.clone()].iter_mut().for_each(|m| *m += bm);
                t[inner.clone()].iter_mut().for_each(|t| *t += bt);
                layout.clear_columns(m);
                layout.clear_columns(t);
            }
            SliceStep::Phi { dual, layer } => {
                let (one, other) = match sides {
                    Sides::Own(record) => {
                        if (d, e) == (0, 0) {
                            let q = (0..layout.rows).flat_map(|r| m[layout.row(r)].to_vec());
                            record.push(Variances::new(q.collect()));
                        }
                        let v = &record[*layer];
                        (v, v)
                    }
                    Sides::Cross(ra, rb) => (&ra[*layer], &rb[*layer]),
                };
                // What the duals need of both sides, in the slice's layout (finite
                // on the border), so that they run over the whole slice at once.
                let [x, y, z, ..] = variances;
                let arc_cosine = dual.arc_cosine();
                for r in 0..layout.rows {
                    let (p, row) = (first(r), layout.row(r));
                    let (q, n) = (partner(p), row.len());
                    let (x, y, z) = (&mut x[row.clone()], &mut y[row.clone()], &mut z[row]);
                    match arc_cosine {
                        Some(family) => {
                            let (sd1, sd2) = (&one.sd()[p..p + n], &other.sd()[q..q + n]);
                            let (inv1, inv2) =
                                (&one.inv_sd()[p..p + n], &other.inv_sd()[q..q + n]);
                            let (q1, q2) = (&one.q()[p..p + n], &other.q()[q..q + n]);
                            for k in 0..n {
                                x[k] = sd1[k] * sd2[k];
                                y[k] = inv1[k] * inv2[k];
                                z[k] = family.mean_derivative(q1[k])
                                    * family.mean_derivative(q2[k]);
                            }
                        }
                        None => {
                            let (q1, q2) = (&one.q()[p..p + n], &other.q()[q..q + n]);
                            for k in 0..n {
                                (x[k], y[k]) = (q1[k], q2[k]);
                            }
                        }
                    }
                }
                for v in [&mut *x, &mut *y, &mut *z] {
                    layout.fill_columns(v, 1.0);
                }
                let i = inner.clone();
                let then = |c, cd, t: f64| (c, t * cd);
                let (mi, ti) = (&mut m[i.clone()], &mut t[i.clone()]);
                match arc_cosine {
                    Some(family) => {
                        family.eval_products([&x[i.clone()], &y[i.clone()], &z[i]], mi, ti, then)
                    }
                    None => dual.eval_pairs_then(&x[i.clone()], &y[i], mi, ti, then),
                }
                layout.clear_columns(m);
                layout.clear_columns(t);
            }
        }
    }
    match &run.sink {
        Sink::Sum { .. } | Sink::Diagonal => {
            let weight = if mirrored { 2.0 } else { 1.0 };
            sums[0] += weight * m[inner.clone()].iter().sum::<f64>();
            sums[1] += weight * t[inner].iter().sum::<f64>();
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
            for r in 0..layout.rows {
                let i = rows.start + r;
                let k = (i as isize + d) as usize;
                let (mr, tr) = (&m[layout.row(r)], &t[layout.row(r)]);
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
                        match &by_col.single {
                            Some(single) => {
                                for (jj, (&mv, &tv)) in mr.iter().zip(tr).enumerate() {
                                    let j = cols.start + jj;
                                    let l = (j as isize + e) as usize;
                                    let (big_j, big_l) = (single[j], single[l]);
                                    if big_j != usize::MAX && big_l != usize::MAX {
                                        add(big_j, big_l, mv, tv);
                                    }
                                }
                            }
                            None => {
                                for (jj, (&mv, &tv)) in mr.iter().zip(tr).enumerate() {
                                    let j = cols.start + jj;
                                    let l = (j as isize + e) as usize;
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

/// $\text{out}(i, j) = Σ_a Σ_b \text{input}(i + r_a, j + c_b)$ on the rectangle's rows, the
/// input zero on its border: the column taps into `tmp` as shifted copies of the whole
/// buffer, then the row taps (shifts by whole rows); the output's border columns are
/// zeroed. Multiversioned (AVX-512, AVX2, baseline; the same IEEE results).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn box_filter(
    shifts: &[Shift; 2],
    layout: &Layout,
    input: &[f64],
    out: &mut [f64],
    tmp: &mut [f64],
) {
    let [by_row, by_col] = shifts;
    let (pad, total, stride) = (layout.pads[1], layout.total, layout.stride);
    // Every entry but the first and last `pad` (border columns), whose sums are never
    // read into the rectangle.
    let columns = pad..total - pad;
    let tmp = &mut tmp[..total];
    tmp[columns.clone()].fill(0.0);
    for &offset in &by_col.offsets {
        let from = (columns.start as isize + offset) as usize;
        for (x, y) in tmp[columns.clone()].iter_mut().zip(&input[from..]) {
            *x += y;
        }
    }
    let inner = layout.inner();
    let out = &mut out[inner.clone()];
    out.fill(0.0);
    for &offset in &by_row.offsets {
        let from = (inner.start as isize + offset * stride as isize) as usize;
        for (x, y) in out.iter_mut().zip(&tmp[from..]) {
            *x += y;
        }
    }
    for r in 0..layout.rows {
        let row = r * stride;
        for k in 0..pad {
            out[row + k] = 0.0;
            out[row + stride - pad + k] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_keep_both_partners_on_the_axis() {
        assert_eq!(span(5, 0), 0..5);
        assert_eq!(span(5, 2), 0..3);
        assert_eq!(span(5, -2), 2..5);
        assert_eq!(span(5, 5), 0..0);
    }

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
            .map(|i: usize| (0..2).map(|a| (i + a).checked_sub(0).filter(|&j| j < 4)).collect())
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
