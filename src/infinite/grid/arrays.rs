//! The array operations of a convolutional limit: what a convolution, an average pooling
//! and a readout do to a covariance over pairs of positions.
//!
//! Arrays are column-major $P × Q$ matrices, entry $(p, q)$ a quantity of position $p$ of
//! the first sample and position $q$ of the second (positions row-major over the grid).

use nalgebra::DMatrix;

use crate::program::AxisWindows;

/// A run of a window map: outputs `out..out + len` read inputs `inp, inp + step, …`.
#[derive(Clone, Copy, Debug)]
struct Run {
    out: usize,
    inp: usize,
    len: usize,
    step: usize,
}

/// For each tap of a filter, the input position of every output position that has one,
/// as runs (row-major positions on both sides).
#[derive(Clone, Debug)]
struct TapMaps {
    /// Per tap, the runs.
    runs: Vec<Vec<Run>>,
    /// Per tap, per output position, the input position (`None`: zero padding).
    index: Vec<Vec<Option<usize>>>,
}

impl TapMaps {
    /// The maps of a filter whose windows along the rows and columns are `axes`, over an
    /// input grid `columns` wide.
    fn new(axes: &[AxisWindows; 2], columns: usize) -> TapMaps {
        let [rows, cols] = axes;
        let (taps_r, taps_c) = (rows[0].len(), cols[0].len());
        let mut runs = Vec::with_capacity(taps_r * taps_c);
        let mut index = Vec::with_capacity(taps_r * taps_c);
        for ar in 0..taps_r {
            for ac in 0..taps_c {
                let map: Vec<Option<usize>> = rows
                    .iter()
                    .flat_map(|r| {
                        cols.iter()
                            .map(move |c| r[ar].zip(c[ac]).map(|(i, j)| i * columns + j))
                    })
                    .collect();
                runs.push(runs_of(&map));
                index.push(map);
            }
        }
        TapMaps { runs, index }
    }
}

/// The runs of a position map.
fn runs_of(map: &[Option<usize>]) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (out, inp) in map.iter().enumerate() {
        let Some(inp) = *inp else { continue };
        if let Some(last) = runs.last_mut()
            && last.out + last.len == out
        {
            let next = last.inp + last.len * last.step;
            if last.len == 1 && inp > last.inp {
                last.step = inp - last.inp;
                last.len = 2;
                continue;
            }
            if inp == next {
                last.len += 1;
                continue;
            }
        }
        runs.push(Run {
            out,
            inp,
            len: 1,
            step: 1,
        });
    }
    runs
}

/// `out[run] += column[inputs of run]` for every run of every tap: one output column
/// of a stencil, `taps` pairing each tap's runs with its input column. Multiversioned
/// (AVX-512, AVX2, baseline; the same IEEE results).
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512vl+avx512dq+avx2+fma",
    "x86_64+avx2+fma"
))]
fn add_runs(taps: &[(&[Run], &[f64])], out: &mut [f64]) {
    for &(runs, column) in taps {
        for r in runs {
            let dst = &mut out[r.out..r.out + r.len];
            if r.step == 1 {
                for (d, s) in dst.iter_mut().zip(&column[r.inp..r.inp + r.len]) {
                    *d += s;
                }
            } else {
                for (k, d) in dst.iter_mut().enumerate() {
                    *d += column[r.inp + k * r.step];
                }
            }
        }
    }
}

/// A convolution's action on arrays: $A\'(p, q) = \text{scale} · Σ_a A(w_a(p), w_a(q))$,
/// the same tap $a$ on both sides (the weights of different taps are independent), taps
/// past a zero-padded edge contributing 0.
#[derive(Clone, Debug)]
pub(crate) struct Stencil {
    maps: TapMaps,
    outputs: usize,
    scale: f64,
}

impl Stencil {
    /// The stencil of a filter with windows `axes` over an input grid `columns` wide,
    /// averaging over its taps.
    pub(crate) fn new(axes: &[AxisWindows; 2], columns: usize) -> Stencil {
        let maps = TapMaps::new(axes, columns);
        let taps = maps.runs.len();
        Stencil {
            outputs: axes[0].len() * axes[1].len(),
            maps,
            scale: 1.0 / taps as f64,
        }
    }

    /// The unscaled diagonal of `S(a)`, $Σ_a A(w_a(p), w_a(p))$, summed in the order
    /// [`Stencil::apply`] sums (so equal to its diagonal to the last bit).
    pub(crate) fn diagonal(&self, a: &DMatrix<f64>) -> Vec<f64> {
        (0..self.outputs)
            .map(|p| {
                let mut sum = 0.0;
                for index in &self.maps.index {
                    if let Some(i) = index[p] {
                        sum += a[(i, i)];
                    }
                }
                sum
            })
            .collect()
    }

    /// The number of output positions.
    pub(crate) fn outputs(&self) -> usize {
        self.outputs
    }

    /// The averaging factor 1/taps.
    pub(crate) fn scale(&self) -> f64 {
        self.scale
    }

    /// `out_k = S(a_k)` (unscaled: the sum over taps) for every input array, output
    /// column by output column; `finish` then receives that column of every output,
    /// including outputs past the inputs (left zero for it to fill), while it is hot in
    /// cache. The outputs are n × n, n the stencil's output positions (entries overwritten).
    pub(crate) fn apply(
        &self,
        arrays: &[&DMatrix<f64>],
        outs: &mut [DMatrix<f64>],
        mut finish: impl FnMut(usize, &mut [&mut [f64]]),
    ) {
        let n = self.outputs;
        debug_assert!(outs.len() >= arrays.len());
        for out in outs.iter() {
            assert_eq!(out.shape(), (n, n), "a stencil's outputs are n × n");
        }
        let mut taps = Vec::with_capacity(self.maps.runs.len());
        let mut chunks: Vec<_> = outs
            .iter_mut()
            .map(|o| o.as_mut_slice().chunks_exact_mut(n.max(1)))
            .collect();
        let mut columns: Vec<&mut [f64]> = Vec::with_capacity(chunks.len());
        for q_out in 0..n {
            columns.clear();
            columns.extend(
                chunks
                    .iter_mut()
                    .map(|c| c.next().expect("an output column")),
            );
            self.column(q_out, arrays, &mut columns, &mut taps);
            finish(q_out, &mut columns);
        }
    }

    /// [`Stencil::apply`] into `count` columns of scratch: `finish` receives each output
    /// column of every output and stores what it needs (nothing is kept).
    pub(crate) fn apply_columns(
        &self,
        arrays: &[&DMatrix<f64>],
        count: usize,
        mut finish: impl FnMut(usize, &mut [&mut [f64]]),
    ) {
        let n = self.outputs;
        let mut scratch = vec![0.0; n * count];
        let mut taps = Vec::with_capacity(self.maps.runs.len());
        for q_out in 0..n {
            let mut columns: Vec<&mut [f64]> = scratch.chunks_exact_mut(n.max(1)).collect();
            self.column(q_out, arrays, &mut columns, &mut taps);
            finish(q_out, &mut columns);
        }
    }

    /// Output column `q_out` of `S(a_k)` into `columns[k]` (zero past the arrays).
    fn column<'a>(
        &'a self,
        q_out: usize,
        arrays: &[&'a DMatrix<f64>],
        columns: &mut [&mut [f64]],
        taps: &mut Vec<(&'a [Run], &'a [f64])>,
    ) {
        for (k, column) in columns.iter_mut().enumerate() {
            column.fill(0.0);
            let Some(a) = arrays.get(k) else { continue };
            let m = a.nrows();
            taps.clear();
            for (runs, index) in self.maps.runs.iter().zip(&self.maps.index) {
                if let Some(q_in) = index[q_out] {
                    taps.push((runs, &a.as_slice()[q_in * m..(q_in + 1) * m]));
                }
            }
            add_runs(taps, column);
        }
    }
}

/// An average pooling's action on arrays: $A\'(P, Q) = \frac{1}{|w|^2} Σ_{p ∈ w(P)} Σ_{q ∈ w(Q)} A(p, q)$,
/// every pair of positions of the two windows (a mean of vectors, not a filter).
#[derive(Clone, Debug)]
pub(crate) struct Pool {
    /// Per output position, its window's input positions.
    windows: Vec<Vec<usize>>,
    /// Per input position, the output positions whose windows hold it.
    holders: Vec<Vec<usize>>,
    inputs: usize,
}

impl Pool {
    /// The pooling with windows `axes` over an input grid of shape `dims`.
    pub(crate) fn new(axes: &[AxisWindows; 2], dims: [usize; 2]) -> Pool {
        let [rows, cols] = axes;
        let windows: Vec<Vec<usize>> = rows
            .iter()
            .flat_map(|r| {
                cols.iter().map(move |c| {
                    r.iter()
                        .flatten()
                        .flat_map(|&i| c.iter().flatten().map(move |&j| i * dims[1] + j))
                        .collect()
                })
            })
            .collect();
        let inputs = dims[0] * dims[1];
        let mut holders = vec![Vec::new(); inputs];
        for (out, window) in windows.iter().enumerate() {
            for &i in window {
                holders[i].push(out);
            }
        }
        Pool {
            windows,
            holders,
            inputs,
        }
    }

    /// The numbers of input and output positions.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.inputs, self.windows.len())
    }

    /// The averaging factor $1/|w|^2$.
    pub(crate) fn scale(&self) -> f64 {
        let size: usize = self.windows.iter().map(Vec::len).max().unwrap_or(1);
        1.0 / (size * size) as f64
    }

    /// The pooled array into `out`, through `half` (pooled along the second side only).
    pub(crate) fn apply(&self, a: &DMatrix<f64>, half: &mut DMatrix<f64>, out: &mut DMatrix<f64>) {
        debug_assert_eq!(a.shape(), (self.inputs, self.inputs));
        let m = self.inputs;
        // Along the second side (columns), then the first (rows).
        self.start(half);
        for q in 0..m {
            self.add_column(q, &a.as_slice()[q * m..(q + 1) * m], half);
        }
        self.finish(half, out);
    }

    /// Zeroes `half`, the array pooled along the second side, for [`Pool::add_column`].
    pub(crate) fn start(&self, half: &mut DMatrix<f64>) {
        assert_eq!(
            half.shape(),
            (self.inputs, self.windows.len()),
            "half-pooled shape"
        );
        half.fill(0.0);
    }

    /// Adds column `q` of the array being pooled into the columns of `half` whose
    /// windows hold `q` (columns taken in increasing order sum as [`Pool::apply`] does).
    pub(crate) fn add_column(&self, q: usize, column: &[f64], half: &mut DMatrix<f64>) {
        let m = self.inputs;
        for &out in &self.holders[q] {
            let target = &mut half.as_mut_slice()[out * m..(out + 1) * m];
            for (o, v) in target.iter_mut().zip(column) {
                *o += v;
            }
        }
    }

    /// The pooled array from `half`: window means along the first side, scaled by
    /// 1/|w|².
    pub(crate) fn finish(&self, half: &DMatrix<f64>, out: &mut DMatrix<f64>) {
        let (m, n) = (self.inputs, self.windows.len());
        let scale = self.scale();
        assert_eq!(out.shape(), (n, n), "pooled shape");
        for q in 0..n {
            let column = &half.as_slice()[q * m..(q + 1) * m];
            for (p, window) in self.windows.iter().enumerate() {
                out[(p, q)] = scale * window.iter().map(|&i| column[i]).sum::<f64>();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_consecutive_and_strided_positions() {
        let map = [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(5),
            Some(7),
            Some(9),
            None,
        ];
        let runs = runs_of(&map);
        let expanded: Vec<Option<usize>> = (0..map.len())
            .map(|o| {
                runs.iter()
                    .find(|r| (r.out..r.out + r.len).contains(&o))
                    .map(|r| r.inp + (o - r.out) * r.step)
            })
            .collect();
        assert_eq!(expanded, map);
        assert!(runs.len() <= 3, "{runs:?}");
    }
}
