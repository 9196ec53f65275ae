//! The limit of convolutional programs as array operations (CNN-GP and CNTK; Novak et
//! al. 2019, Arora et al. 2019), for programs whose convolutions and poolings the
//! program recorded ([`GridLayer`]).
//!
//! For one pair of samples $(x, x̄)$, a layer of positions has the array
//! $M(p, q) = E[z_p(x) z_q(x̄)]$ over pairs of positions, and its NTK array $Θ(p, q)$. A chain
//! of these operations maps them:
//!
//! - **input** pixels: $M(p, q) = x_p · x̄_q / C$, $Θ = 0$;
//! - **convolution** $h = \mathrm{conv}(W, z)$ with $K$ taps: $M\'(p, q) = (σ_W^2/K) Σ_a M(w_a(p), w_a(q))$ and
//!   $Θ\'(p, q) = (c_W/K) Σ_a M(⋯) + (σ_W^2/K) Σ_a Θ(⋯)$, the same tap $a$ on both sides
//!   (the weights of different taps are independent), taps past a zero-padded edge
//!   contributing 0 (the [`Stencil`]);
//! - **bias**: $M\' = M + σ_b^2$, $Θ\' = Θ + c_b$ (one bias shared by all positions);
//! - **φ** of a Gaussian layer: $M\'(p, q) = E φ(u) φ(v)$ and $Θ\'(p, q) = Θ(p, q) · E φ\'(u) φ\'(v)$,
//!   $(u, v)$ with variances $M_{xx}(p, p)$, $M_{x̄x̄}(q, q)$ and covariance $M(p, q)$;
//! - **average pooling**: the mean over both windows of every pair ([`Pool`]);
//! - **readout** $f = (σ_v/\sqrt{n_{in}}) vᵀ r$: $Σ = σ_v^2 R(M) + σ_b^2$, $Θ̊ = c_v R(M) + σ_v^2 R(Θ) + c_b$, with
//!   $R$ the mean of all entries (global average pooling) or of the diagonal
//!   (flattening).
//!
//! This is Tensor Programs II's recursion for these programs, entry for entry (the
//! symbolic engine computes the same numbers, one instruction per pair of positions),
//! but its size does not grow with the number of positions: a pair of samples costs
//! $O(P^2 · \text{taps})$ time and $O(P^2)$ memory, and the plan only lists the layers.
//! The variances of each sample come from its own pair $(x, x)$, computed first.

mod arrays;
mod slices;

use std::sync::{Arc, Mutex};

use nalgebra::DMatrix;
use rustc_hash::FxHashMap as HashMap;

use crate::error::{Error, Result};
use crate::parallel;
use crate::program::{GridLayer, Group, Op, Program, Width};

use super::dual::{PairDual, Variances};
use super::quadrature::GaussHermite;
use arrays::{Pool, Stencil};
use slices::{Holders, Scratch, Shift, Sink, SliceRun, SliceStep, Source};

/// One layer of a convolutional chain.
#[derive(Clone, Debug)]
enum Step {
    /// A convolution: $σ_W^2$, the weight's NTK coefficient $c_W$ and its group.
    Conv {
        stencil: Stencil,
        /// Its taps along the rows and columns when they are translations (stride 1,
        /// zero padding or valid windows): then it keeps diagonal slices.
        shifts: Option<[Shift; 2]>,
        /// The input grid.
        grid: [usize; 2],
        sigma2: f64,
        coef: f64,
        group: usize,
    },
    /// A bias shared by every position.
    Bias {
        sigma2: f64,
        coef: f64,
        group: usize,
    },
    /// φ of a Gaussian layer; `layer` numbers the φ layers (the per-sample variances).
    Phi { dual: PairDual, layer: usize },
    /// Average pooling, and where each position of each axis goes.
    Pool(Pool, [Holders; 2]),
}

/// What the readout does to the last layer's arrays.
#[derive(Clone, Copy, Debug)]
enum Reduce {
    /// The mean (`scale` = 1/P²) or sum (1) of all entries: a global average or sum.
    All { scale: f64 },
    /// The mean of the diagonal: flattening (the readout's fan-in is P·n).
    Diagonal,
}

/// The compiled limit of a convolutional chain.
#[derive(Debug)]
pub(crate) struct GridPlan {
    /// Per input position, its first column; each is `channels` wide.
    starts: Vec<usize>,
    channels: usize,
    steps: Vec<Step>,
    reduce: Reduce,
    /// $σ_v^2$, $σ_b\'^2$ and the readout's NTK coefficients.
    readout: [f64; 4],
    /// Per program group, its result's index (when the group terms are computed).
    group_results: Option<Vec<usize>>,
    /// Per group (the readout last), whether it has a bias term among the results.
    layout: Vec<bool>,
    results: usize,
    phi_layers: usize,
    /// The largest number of positions of a layer.
    widest: usize,
    /// The steps as array operations and runs over diagonal slices (without groups).
    segments: Vec<Segment>,
    /// The largest number of positions whose arrays the segments store.
    stored: usize,
}

/// What kind of vectors a layer holds, for the φ rule's precondition.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Deterministic (the input pixels).
    Fixed,
    /// Centred Gaussian.
    Gaussian,
    /// Anything else (after φ).
    Other,
}

impl GridPlan {
    /// The plan of `program` when it is a chain of convolutions, biases, activations and
    /// poolings from the input pixels to a readout that averages or flattens (and at
    /// least one recorded convolution); `None` otherwise (the symbolic engine computes
    /// it then).
    pub(crate) fn of(
        program: &Program,
        rule: &Arc<GaussHermite>,
        with_groups: bool,
    ) -> Option<GridPlan> {
        let (out, readout) = program.readout_of().ok()?;
        let hidden_one = |v: usize| program.nodes[v].width == Width::Hidden(1);
        let (mut grid, reduce) = match &program.nodes[out].op {
            Op::Sum(s) => {
                let p = s.parts.len() as f64;
                let scale = if s.mean { 1.0 / (p * p) } else { 1.0 };
                (s.parts.clone(), Reduce::All { scale })
            }
            Op::Concat(c) => (c.parts.clone(), Reduce::Diagonal),
            _ => (vec![out], Reduce::All { scale: 1.0 }),
        };
        let by_output: HashMap<usize, &GridLayer> = program
            .grid_layers
            .iter()
            .map(|l| (l.output[0], l))
            .collect();
        let group_of = |g: Group| program.groups.iter().position(|&h| h == g);
        // From the readout back to the pixels.
        let mut backward: Vec<Step> = Vec::new();
        let mut widest = grid.len();
        let (starts, channels) = loop {
            widest = widest.max(grid.len());
            let first = grid[0];
            if let Some(layer) = by_output.get(&first).filter(|l| l.output == grid) {
                let columns = layer.input_dims[1];
                match layer.weight {
                    Some(w) => {
                        let decl = &program.weights[w];
                        if decl.uses.len() != grid.len() {
                            return None;
                        }
                        let [rows, cols] = &layer.axes;
                        let [height, width] = layer.input_dims;
                        let shifts = Shift::of(rows, height).zip(Shift::of(cols, width));
                        backward.push(Step::Conv {
                            stencil: Stencil::new(&layer.axes, columns),
                            shifts: shifts.map(|(r, c)| [r, c]),
                            grid: layer.input_dims,
                            sigma2: decl.std * decl.std,
                            coef: decl.ntk_coefficient(),
                            group: group_of(Group::Weight(w))?,
                        });
                    }
                    None => backward.push(Step::Pool(
                        Pool::new(&layer.axes, layer.input_dims),
                        [
                            Holders::of_windows(&layer.axes[0], layer.input_dims[0]),
                            Holders::of_windows(&layer.axes[1], layer.input_dims[1]),
                        ],
                    )),
                }
                if !grid.iter().all(|&v| hidden_one(v)) {
                    return None;
                }
                grid.clone_from(&layer.input);
                continue;
            }
            match &program.nodes[first].op {
                Op::Apply(a) => {
                    let inputs = grid
                        .iter()
                        .map(|&v| match &program.nodes[v].op {
                            Op::Apply(b)
                                if super::dual::same_activation(&a.activation, &b.activation)
                                    && hidden_one(v) =>
                            {
                                Some(b.input)
                            }
                            _ => None,
                        })
                        .collect::<Option<Vec<usize>>>()?;
                    backward.push(Step::Phi {
                        dual: PairDual::new(&a.activation, &a.activation, rule),
                        layer: 0,
                    });
                    grid = inputs;
                }
                Op::AddBias(b) => {
                    let decl = &program.biases[b.bias];
                    let inputs = grid
                        .iter()
                        .map(|&v| match &program.nodes[v].op {
                            Op::AddBias(c) if c.bias == b.bias && hidden_one(v) => Some(c.input),
                            _ => None,
                        })
                        .collect::<Option<Vec<usize>>>()?;
                    if decl.uses.len() != grid.len() {
                        return None;
                    }
                    backward.push(Step::Bias {
                        sigma2: decl.std * decl.std,
                        coef: decl.ntk_coefficient(),
                        group: group_of(Group::Bias(b.bias))?,
                    });
                    grid = inputs;
                }
                Op::Input(_) => {
                    let ranges = grid
                        .iter()
                        .map(|&v| match &program.nodes[v].op {
                            Op::Input(i) => Some(i.columns.clone()),
                            _ => None,
                        })
                        .collect::<Option<Vec<_>>>()?;
                    let channels = ranges[0].len();
                    if channels == 0 || ranges.iter().any(|r| r.len() != channels) {
                        return None;
                    }
                    break (ranges.iter().map(|r| r.start).collect::<Vec<_>>(), channels);
                }
                _ => return None,
            }
        };
        let mut steps: Vec<Step> = backward.into_iter().rev().collect();
        // The rules' preconditions, from the pixels forward.
        let (mut kind, mut convolutions, mut phi_layers) = (Kind::Fixed, 0, 0);
        for step in &mut steps {
            kind = match step {
                Step::Conv { .. } => {
                    convolutions += 1;
                    Kind::Gaussian
                }
                Step::Bias { .. } if kind == Kind::Fixed => return None,
                Step::Bias { .. } | Step::Pool(..) => kind,
                Step::Phi { layer, .. } => {
                    if kind != Kind::Gaussian {
                        return None;
                    }
                    *layer = phi_layers;
                    phi_layers += 1;
                    Kind::Other
                }
            };
        }
        if convolutions == 0 {
            return None;
        }
        let (segments, stored) = segments(&steps, reduce, starts.len(), SLICES_FROM);
        let sv2 = readout.weight_std_value().powi(2);
        let sb2 = readout.bias_std_value().powi(2);
        let (coef_v, coef_b) = program.readout_ntk_coef.unwrap_or((sv2, sb2));
        let mut layout: Vec<bool> = program
            .groups
            .iter()
            .map(|g| matches!(g, Group::Bias(_)))
            .collect();
        layout.push(sb2 > 0.0);
        let mut next = 2;
        let group_results = with_groups.then(|| {
            layout[..layout.len() - 1]
                .iter()
                .map(|&bias| {
                    next += 1 + usize::from(bias);
                    next - 1
                })
                .collect()
        });
        let results = if with_groups {
            next + 1 + usize::from(sb2 > 0.0)
        } else {
            2
        };
        if !with_groups {
            layout.clear();
        }
        Some(GridPlan {
            starts,
            channels,
            steps,
            reduce,
            readout: [sv2, sb2, coef_v, coef_b],
            group_results,
            layout,
            results,
            phi_layers,
            widest,
            segments,
            stored,
        })
    }

    /// Whether the arrays beat the symbolic tapes, which vectorise across pairs of
    /// samples: on grids of more than 16 positions. Measured (`benches/programs.rs`):
    /// at 16 positions (`programs/cnn_infinite/256`) the tapes take 71 ms against the
    /// arrays' 93 ms; at 64 (`programs/cnn2d_infinite/32`) the arrays take 19 ms against
    /// 57 ms, and their compiled size does not grow with the square of the positions.
    pub(crate) fn pays_off(&self) -> bool {
        self.widest > 16
    }

    /// The plan with runs over diagonal slices on grids of any size (for tests: by
    /// default only large grids take them).
    #[cfg(test)]
    fn slices_everywhere(mut self) -> GridPlan {
        (self.segments, self.stored) = segments(&self.steps, self.reduce, self.starts.len(), 1);
        self
    }

    /// Per group (the readout last), whether it has a bias term among the results.
    pub(crate) fn layout(&self) -> &[bool] {
        &self.layout
    }

    /// Σ, Θ̊ and (when planned) the group terms between the rows of `x1` and `x2`
    /// (`None`: x2 = x1, each pair computed once).
    ///
    /// # Errors
    /// [`Error::AllocationFailed`] if the arrays of a pair of samples do not fit in
    /// memory.
    pub(crate) fn run(
        &self,
        x1: &DMatrix<f64>,
        x2: Option<&DMatrix<f64>>,
    ) -> Result<Vec<DMatrix<f64>>> {
        self.check_memory()?;
        // Each sample's pixels (P × C) and their transpose.
        let rows = |x: &DMatrix<f64>| -> Vec<Pixels> {
            (0..x.nrows())
                .map(|i| {
                    let pixels = DMatrix::from_fn(self.starts.len(), self.channels, |p, k| {
                        x[(i, self.starts[p] + k)]
                    });
                    let transposed = pixels.transpose();
                    (pixels, transposed)
                })
                .collect()
        };
        let a = rows(x1);
        let b = x2.map(rows);
        // Each sample with itself: its variances, and the kernels' diagonal.
        // Each thread's arrays are reused from pair to pair: a pool of workspaces, at
        // most one per thread.
        let pool: Mutex<Vec<Workspace>> = Mutex::new(Vec::new());
        let with_workspace = |f: &mut dyn FnMut(&mut Workspace) -> Vec<f64>| {
            let taken = pool.lock().map(|mut p| p.pop()).unwrap_or(None);
            let mut work = taken.unwrap_or_default();
            let values = f(&mut work);
            if let Ok(mut p) = pool.lock() {
                p.push(work);
            }
            values
        };
        let own = |samples: &[Pixels]| {
            let items: Vec<usize> = (0..samples.len()).collect();
            parallel::map(&items, |&i| {
                let mut variances = Vec::with_capacity(self.phi_layers);
                let values = with_workspace(&mut |work| {
                    self.pair(&samples[i], &samples[i], Sides::Own(&mut variances), work)
                });
                (values, variances)
            })
        };
        let own_a = own(&a);
        let own_b = b.as_deref().map(own);
        let (n1, n2) = (a.len(), b.as_ref().map_or(a.len(), Vec::len));
        let mut out = vec![DMatrix::<f64>::zeros(n1, n2); self.results];
        let pairs: Vec<(usize, usize)> = match &b {
            None => (0..n1).flat_map(|j| (0..j).map(move |i| (i, j))).collect(),
            Some(_) => (0..n2).flat_map(|j| (0..n1).map(move |i| (i, j))).collect(),
        };
        let second = b.as_ref().unwrap_or(&a);
        let own_second = own_b.as_ref().unwrap_or(&own_a);
        let values = parallel::map(&pairs, |&(i, j)| {
            with_workspace(&mut |work| {
                let sides = Sides::Cross(&own_a[i].1, &own_second[j].1);
                self.pair(&a[i], &second[j], sides, work)
            })
        });
        for (&(i, j), v) in pairs.iter().zip(values) {
            for (o, value) in out.iter_mut().zip(v) {
                o[(i, j)] = value;
                if b.is_none() {
                    o[(j, i)] = value;
                }
            }
        }
        if b.is_none() {
            for (i, (v, _)) in own_a.iter().enumerate() {
                for (o, &value) in out.iter_mut().zip(v) {
                    o[(i, i)] = value;
                }
            }
        }
        Ok(out)
    }

    /// Errors unless a thread's arrays for one pair fit in memory.
    fn check_memory(&self) -> Result<()> {
        let tangents = self.group_results.as_ref().map_or(1, Vec::len);
        // M, the Θs, their next values and a spare; without groups, also the two
        // accumulators of a slice run's pooled slices.
        let accumulators = if self.group_results.is_some() { 0 } else { 2 };
        let arrays = 2 * (tangents + 1) + 1 + accumulators;
        let widest = if self.group_results.is_some() {
            self.widest
        } else {
            self.stored
        };
        let entries = widest
            .checked_mul(widest)
            .and_then(|e| e.checked_mul(arrays));
        let fits = entries.is_some_and(|e| {
            e <= isize::MAX as usize / 8 && Vec::<f64>::new().try_reserve_exact(e).is_ok()
        });
        if fits {
            Ok(())
        } else {
            Err(Error::AllocationFailed {
                what: format!(
                    "the covariance arrays of a convolutional kernel ({widest} positions)"
                ),
                size: format!("{arrays} arrays of {widest} × {widest} f64 per thread"),
            })
        }
    }

    /// The results at one pair of samples.
    fn pair(&self, a: &Pixels, b: &Pixels, mut sides: Sides<'_>, work: &mut Workspace) -> Vec<f64> {
        for (_, t) in work.thetas.drain(..) {
            work.free.give(t);
        }
        if self.group_results.is_some() {
            self.gram(a, b, work);
            self.steps(0..self.steps.len(), &mut sides, work);
            return self.readout_of_arrays(work);
        }
        for segment in &self.segments {
            match segment {
                Segment::Arrays(range) => {
                    if range.start == 0 {
                        self.gram(a, b, work);
                    }
                    self.steps(range.clone(), &mut sides, work);
                }
                Segment::Slices { run, from } => {
                    // A run that keeps its slices writes no arrays.
                    let n = if run.keeps_slices() {
                        0
                    } else {
                        run.output_positions().unwrap_or(0)
                    };
                    let mut out = [work.free.take(n, n), work.free.take(n, n)];
                    let source = match from {
                        SliceInput::Pixels => Source::Pixels(&a.0, &b.0),
                        SliceInput::Arrays => {
                            Source::Arrays(&work.m, work.thetas.first().map(|t| &t.1))
                        }
                        SliceInput::Slices => Source::Slices,
                    };
                    let [m, t] = run.run(source, &mut sides, &mut out, &mut work.slices);
                    if run.keeps_slices() {
                        continue;
                    }
                    if n == 0 {
                        // The readout's reductions: the last segment.
                        return self.readout(m, [(1, t)]);
                    }
                    let [om, ot] = out;
                    work.free.give(std::mem::replace(&mut work.m, om));
                    for (_, t) in work.thetas.drain(..) {
                        work.free.give(t);
                    }
                    work.thetas.push((1, ot));
                }
            }
        }
        self.readout_of_arrays(work)
    }

    /// The position Gram $M(p, q) = x_p · x̄_q / C$ into the workspace.
    fn gram(&self, a: &Pixels, b: &Pixels, work: &mut Workspace) {
        let c = self.channels;
        let positions = self.starts.len();
        work.free.fit(&mut work.m, positions, positions);
        work.m.gemm(1.0 / c as f64, &a.0, &b.1, 0.0);
    }

    /// The array operations of `range`, on the workspace's arrays (no group without
    /// groups: the weight's own terms fold into the one Θ).
    fn steps(&self, range: std::ops::Range<usize>, sides: &mut Sides<'_>, work: &mut Workspace) {
        let grouped = self.group_results.is_some();
        let steps = &self.steps[..range.end];
        let mut next = range.start;
        while let Some(step) = steps.get(next) {
            next += 1;
            match step {
                // Without groups, a convolution and the bias and φ after it run in one
                // pass over each output column, while it is in cache; an average pooling
                // after them takes each column as it is made, so the unpooled arrays
                // are never stored.
                Step::Conv {
                    stencil,
                    sigma2,
                    coef,
                    ..
                } if !grouped && matches!(fused_phi(steps, next), Some((_, _, _))) => {
                    let (bias, dual, layer) = fused_phi(steps, next).expect("checked");
                    next += 1 + usize::from(bias.is_some());
                    let (scale_m, scale_own) = (sigma2 * stencil.scale(), coef * stencil.scale());
                    let (bias_m, bias_t) = bias.unwrap_or((0.0, 0.0));
                    let (rows, cols) = match sides {
                        Sides::Own(record) => {
                            let diagonal = stencil
                                .diagonal(&work.m)
                                .into_iter()
                                .map(|d| scale_m * d + bias_m)
                                .collect();
                            record.push(Variances::new(diagonal));
                            let v = &record[layer];
                            (v, v)
                        }
                        Sides::Cross(ra, rb) => (&ra[layer], &rb[layer]),
                    };
                    let carried = work.thetas.len() == 1;
                    let n = stencil.outputs();
                    // Column q of S(M) and S(Θ) in, of φ's M and Θ out.
                    let layer_column = |q: usize, columns: &mut [&mut [f64]]| {
                        let [m, t] = columns else {
                            unreachable!("two outputs")
                        };
                        for (t, m) in t.iter_mut().zip(m.iter_mut()) {
                            let carried_t = if carried { scale_m * *t } else { 0.0 };
                            *t = carried_t + scale_own * *m + bias_t;
                            *m = scale_m * *m + bias_m;
                        }
                        dual.eval_column_then(rows, 0, m, cols, q, t, |c, cd, t| (c, t * cd));
                    };
                    let inputs: Vec<&DMatrix<f64>> = std::iter::once(&work.m)
                        .chain(work.thetas.iter().map(|t| &t.1))
                        .collect();
                    let [m, t] = match steps.get(next) {
                        Some(Step::Pool(pool, _)) => {
                            next += 1;
                            let (wide, narrow) = pool.shape();
                            let mut halves =
                                [work.free.take(wide, narrow), work.free.take(wide, narrow)];
                            for half in &mut halves {
                                pool.start(half);
                            }
                            stencil.apply_columns(&inputs, 2, |q, columns| {
                                layer_column(q, columns);
                                for (column, half) in columns.iter().zip(&mut halves) {
                                    pool.add_column(q, column, half);
                                }
                            });
                            halves.map(|half| {
                                let mut out = work.free.take(narrow, narrow);
                                pool.finish(&half, &mut out);
                                work.free.give(half);
                                out
                            })
                        }
                        _ => {
                            let mut outs = [work.free.take(n, n), work.free.take(n, n)];
                            stencil.apply(&inputs, &mut outs, layer_column);
                            outs
                        }
                    };
                    drop(inputs);
                    work.free.give(std::mem::replace(&mut work.m, m));
                    if carried {
                        work.free.give(std::mem::replace(&mut work.thetas[0].1, t));
                    } else {
                        work.thetas.push((1, t));
                    }
                }
                Step::Conv {
                    stencil,
                    sigma2,
                    coef,
                    group,
                    ..
                } => {
                    let (scale_m, scale_own) = (sigma2 * stencil.scale(), coef * stencil.scale());
                    let k = work.thetas.len();
                    // Without groups the weight's own term c_W·S(M) folds into the one
                    // Θ; otherwise it is a new array, the last output.
                    let fold = !grouped && k == 1;
                    let total = if fold { 1 + k } else { 2 + k };
                    let n = stencil.outputs();
                    let mut outs: Vec<DMatrix<f64>> =
                        (0..total).map(|_| work.free.take(n, n)).collect();
                    {
                        let inputs: Vec<&DMatrix<f64>> = std::iter::once(&work.m)
                            .chain(work.thetas.iter().map(|t| &t.1))
                            .collect();
                        stencil.apply(&inputs, &mut outs, |_, columns| {
                            let (m, thetas) = columns.split_first_mut().expect("M's column");
                            if fold {
                                for (t, &m) in thetas[0].iter_mut().zip(m.iter()) {
                                    *t = scale_m * *t + scale_own * m;
                                }
                            } else {
                                let (own, carried) = thetas.split_last_mut().expect("a new array");
                                for t in carried {
                                    t.iter_mut().for_each(|t| *t *= scale_m);
                                }
                                for (o, &m) in own.iter_mut().zip(m.iter()) {
                                    *o = scale_own * m;
                                }
                            }
                            m.iter_mut().for_each(|m| *m *= scale_m);
                        });
                    }
                    let mut outs = outs.into_iter();
                    let m = outs.next().expect("M");
                    work.free.give(std::mem::replace(&mut work.m, m));
                    for t in work.thetas.iter_mut() {
                        let new = outs.next().expect("a carried Θ");
                        work.free.give(std::mem::replace(&mut t.1, new));
                    }
                    if let Some(own) = outs.next() {
                        work.thetas.push((self.slot(*group), own));
                    }
                }
                Step::Bias {
                    sigma2,
                    coef,
                    group,
                } => {
                    work.m.add_scalar_mut(*sigma2);
                    if !grouped && work.thetas.len() == 1 {
                        work.thetas[0].1.add_scalar_mut(*coef);
                    } else {
                        let n = work.m.nrows();
                        let mut own = work.free.take(n, n);
                        own.fill(*coef);
                        work.thetas.push((self.slot(*group), own));
                    }
                }
                Step::Phi { dual, layer } => {
                    let (rows, cols) = match sides {
                        Sides::Own(record) => {
                            record
                                .push(Variances::new(work.m.diagonal().iter().copied().collect()));
                            let v = &record[*layer];
                            (v, v)
                        }
                        Sides::Cross(ra, rb) => (&ra[*layer], &rb[*layer]),
                    };
                    let n = work.m.nrows();
                    if let [(_, theta)] = work.thetas.as_mut_slice() {
                        for q in 0..work.m.ncols() {
                            let c = &mut work.m.as_mut_slice()[q * n..(q + 1) * n];
                            let t = &mut theta.as_mut_slice()[q * n..(q + 1) * n];
                            dual.eval_column_then(rows, 0, c, cols, q, t, |c, cd, t| (c, t * cd));
                        }
                    } else {
                        let mut cdot = DMatrix::<f64>::zeros(n, work.m.ncols());
                        for q in 0..work.m.ncols() {
                            let c = &mut work.m.as_mut_slice()[q * n..(q + 1) * n];
                            let d = &mut cdot.as_mut_slice()[q * n..(q + 1) * n];
                            dual.eval_column_then(rows, 0, c, cols, q, d, |c, cd, _| (c, cd));
                        }
                        for (_, t) in &mut work.thetas {
                            t.component_mul_assign(&cdot);
                        }
                    }
                }
                Step::Pool(pool, _) => {
                    let (inputs, outputs) = pool.shape();
                    let mut half = work.free.take(inputs, outputs);
                    for a in
                        std::iter::once(&mut work.m).chain(work.thetas.iter_mut().map(|t| &mut t.1))
                    {
                        let mut pooled = work.free.take(outputs, outputs);
                        pool.apply(a, &mut half, &mut pooled);
                        work.free.give(std::mem::replace(a, pooled));
                    }
                    work.free.give(half);
                }
            }
        }
    }

    /// The readout's results from the workspace's arrays.
    fn readout_of_arrays(&self, work: &Workspace) -> Vec<f64> {
        let reduce = |a: &DMatrix<f64>| match self.reduce {
            Reduce::All { scale } => a.sum() * scale,
            Reduce::Diagonal => a.trace() / a.nrows() as f64,
        };
        self.readout(
            reduce(&work.m),
            work.thetas.iter().map(|(slot, t)| (*slot, reduce(t))),
        )
    }

    /// The results from the readout's reduction $R$ of $M$ and of each Θ array (with its
    /// result index).
    fn readout(&self, m: f64, thetas: impl IntoIterator<Item = (usize, f64)>) -> Vec<f64> {
        let grouped = self.group_results.is_some();
        let [sv2, sb2, coef_v, coef_b] = self.readout;
        let mut values = vec![0.0; self.results];
        values[0] = sv2 * m + sb2;
        let readout_bias = if sb2 > 0.0 { coef_b } else { 0.0 };
        let mut ntk = coef_v * m + readout_bias;
        for (slot, t) in thetas {
            let term = sv2 * t;
            ntk += term;
            if grouped {
                values[slot] = term;
            }
        }
        values[1] = ntk;
        if grouped {
            let readout_slot = self.results - 1 - usize::from(sb2 > 0.0);
            values[readout_slot] = coef_v * m;
            if sb2 > 0.0 {
                values[readout_slot + 1] = readout_bias;
            }
        }
        values
    }

    /// The result index of a group's own NTK array (1, Θ̊ itself, without groups).
    fn slot(&self, group: usize) -> usize {
        self.group_results.as_ref().map_or(1, |slots| slots[group])
    }
}

/// The steps a convolution fuses with when `steps[next]` follows it: an optional bias
/// ($σ_b^2$, $c_b$), then φ (its dual and layer number).
fn fused_phi(steps: &[Step], next: usize) -> Option<FusedPhi<'_>> {
    let (bias, at) = match steps.get(next) {
        Some(Step::Bias { sigma2, coef, .. }) => (Some((*sigma2, *coef)), next + 1),
        _ => (None, next),
    };
    match steps.get(at) {
        Some(Step::Phi { dual, layer }) => Some((bias, dual, *layer)),
        _ => None,
    }
}

/// What a convolution fuses with: an optional bias ($σ_b^2$, $c_b$), then φ's dual and
/// its layer number.
type FusedPhi<'a> = (Option<(f64, f64)>, &'a PairDual, usize);

/// The fewest positions at which runs over diagonal slices are used (measured on
/// Myrtle-5, `benches/images.rs`: at 32 × 32 the slices take 29 ms where the array
/// operations took 75; at 16 × 16 the two are even, 10.5 against 11.0 ms, and a
/// 16 × 16 run read from arrays, as Myrtle-5's second stage at 32 × 32 is, makes that
/// network slower, 36 against 29 ms).
const SLICES_FROM: usize = 1024;

/// A stretch of a plan's steps, as the pair of samples runs through it (without groups).
#[derive(Debug)]
enum Segment {
    /// Array operations on the workspace's arrays.
    Arrays(std::ops::Range<usize>),
    /// A run over diagonal slices.
    Slices {
        run: Box<SliceRun>,
        from: SliceInput,
    },
}

/// What a [`Segment::Slices`] run reads.
#[derive(Debug, Clone, Copy, PartialEq)]
enum SliceInput {
    /// The pixels (the first step).
    Pixels,
    /// The workspace's arrays.
    Arrays,
    /// The slices that the run before it kept.
    Slices,
}

/// The plan's steps as segments: every stride-1 convolution (zero padding or valid)
/// on at least `slices_from` positions starts a run over diagonal slices that takes in
/// the biases, φ and further such convolutions after it, and ends in the average
/// pooling that follows, the readout, or arrays for the next step. A pooling of blocks
/// right before such a convolution, at any size, keeps its slices for the next run.
/// With the largest number of positions whose arrays are stored.
fn segments(
    steps: &[Step],
    reduce: Reduce,
    pixels: usize,
    slices_from: usize,
) -> (Vec<Segment>, usize) {
    let mut segments = Vec::new();
    let (mut k, mut plain) = (0, 0);
    let mut stored = 0;
    while k < steps.len() {
        let slices = match &steps[k] {
            Step::Conv {
                shifts: Some(_),
                grid,
                ..
            } => {
                let chained = plain == k
                    && matches!(segments.last(), Some(Segment::Slices { run, .. }) if run.pools_blocks());
                (chained || grid[0] * grid[1] >= slices_from).then_some((*grid, chained))
            }
            _ => None,
        };
        let Some((grid, chained)) = slices else {
            stored = stored.max(match &steps[k] {
                Step::Conv { stencil, .. } => stencil.outputs(),
                Step::Pool(pool, _) => pool.shape().1,
                _ => 0,
            });
            k += 1;
            continue;
        };
        if plain < k {
            if plain == 0 {
                stored = stored.max(pixels);
            }
            segments.push(Segment::Arrays(plain..k));
        }
        let from = if chained {
            if let Some(Segment::Slices { run, .. }) = segments.last_mut() {
                run.keep_slices();
            }
            SliceInput::Slices
        } else if k == 0 {
            SliceInput::Pixels
        } else {
            SliceInput::Arrays
        };
        let mut run = Vec::new();
        while let Some(step) = steps.get(k) {
            run.push(match step {
                Step::Conv {
                    stencil,
                    shifts: Some(shifts),
                    sigma2,
                    coef,
                    ..
                } => SliceStep::Conv {
                    shifts: shifts.clone(),
                    scale_m: sigma2 * stencil.scale(),
                    scale_own: coef * stencil.scale(),
                },
                Step::Bias { sigma2, coef, .. } => SliceStep::Bias {
                    m: *sigma2,
                    t: *coef,
                },
                Step::Phi { dual, layer } => SliceStep::Phi {
                    dual: dual.clone(),
                    layer: *layer,
                },
                _ => break,
            });
            k += 1;
        }
        let sink = match steps.get(k) {
            Some(Step::Pool(pool, [rows, cols])) => {
                k += 1;
                Sink::Arrays {
                    rows: rows.clone(),
                    cols: cols.clone(),
                    scale: pool.scale(),
                }
            }
            Some(_) => Sink::Arrays {
                rows: Holders::identity(grid[0]),
                cols: Holders::identity(grid[1]),
                scale: 1.0,
            },
            None => match reduce {
                Reduce::All { scale } => Sink::Sum { scale },
                Reduce::Diagonal => Sink::Diagonal,
            },
        };
        let run = SliceRun::new(grid, run, sink);
        stored = stored.max(run.output_positions().unwrap_or(0));
        segments.push(Segment::Slices {
            run: Box::new(run),
            from,
        });
        plain = k;
    }
    if plain < steps.len() {
        if plain == 0 {
            stored = stored.max(pixels);
        }
        segments.push(Segment::Arrays(plain..steps.len()));
    }
    (segments, stored)
}

/// A sample's pixels, one row per position and one column per channel, and their
/// transpose.
type Pixels = (DMatrix<f64>, DMatrix<f64>);

/// Where the variances of a pair's two samples come from.
enum Sides<'a> {
    /// The pair of a sample with itself: read off the arrays, and recorded.
    Own(&'a mut Vec<Variances>),
    /// Recorded earlier, per φ layer, for each sample.
    Cross(&'a [Variances], &'a [Variances]),
}

/// A thread's arrays, reused from pair to pair.
#[derive(Default)]
struct Workspace {
    m: DMatrix<f64>,
    thetas: Vec<(usize, DMatrix<f64>)>,
    /// The buffers of a run over diagonal slices.
    slices: Scratch,
    /// Arrays free for the next use.
    free: Buffers,
}

/// Arrays kept for reuse, taken back by shape: every pair needs the same shapes, so after
/// the first pair nothing is allocated or zeroed.
#[derive(Default)]
struct Buffers(Vec<DMatrix<f64>>);

impl Buffers {
    /// A `rows × cols` array with unspecified entries (the caller writes every one).
    fn take(&mut self, rows: usize, cols: usize) -> DMatrix<f64> {
        match self.0.iter().position(|m| m.shape() == (rows, cols)) {
            Some(i) => self.0.swap_remove(i),
            // `vec![0.0; n]` allocates zeroed memory (fresh pages, no memset).
            None => DMatrix::from_vec(rows, cols, vec![0.0; rows * cols]),
        }
    }

    /// Keeps `m` for a later [`Buffers::take`].
    fn give(&mut self, m: DMatrix<f64>) {
        if !m.is_empty() {
            self.0.push(m);
        }
    }

    /// Gives `m` a `rows × cols` array (unspecified entries), keeping the old one.
    fn fit(&mut self, m: &mut DMatrix<f64>, rows: usize, cols: usize) {
        if m.shape() != (rows, cols) {
            let new = self.take(rows, cols);
            self.give(std::mem::replace(m, new));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::infinite::program::compile_tapes;
    use crate::program::{Padding, Readout};
    use crate::zoo::{Cnn, ImageReadout, myrtle};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn images(n: usize, d: usize, seed: u64) -> DMatrix<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        DMatrix::from_fn(n, d, |_, _| rng.random_range(-1.0..1.0))
    }

    /// The array engine against the symbolic one (one instruction per pair of
    /// positions): every result, between two batches and within one.
    fn agrees_with_tapes(program: &Program) {
        let rule = GaussHermite::new(GaussHermite::DEFAULT_DEGREE).unwrap();
        let d = program.input_dim();
        let (x1, x2) = (images(3, d, 1), images(2, d, 2));
        for (groups, slices) in [(false, false), (false, true), (true, false)] {
            let plan = GridPlan::of(program, &rule, groups).expect("a convolutional chain");
            let plan = if slices {
                plan.slices_everywhere()
            } else {
                plan
            };
            let tapes = compile_tapes(program, &rule, groups).unwrap();
            assert_eq!(plan.layout(), tapes.layout());
            for second in [Some(&x2), None] {
                let fast = plan.run(&x1, second).unwrap();
                let slow = tapes.run(program, &x1, second);
                assert_eq!(fast.len(), slow.len());
                for (k, (f, s)) in fast.iter().zip(&slow).enumerate() {
                    let scale = s.norm().max(1e-300);
                    assert!(
                        (f - s).norm() <= 1e-12 * scale,
                        "result {k} (groups {groups}, slices {slices}): {f} against {s}"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_padded_erf_convolutions_with_biases_under_a_global_average() {
        let cnn = Cnn::new((4, 5), 2)
            .layers(2)
            .taps((3, 2))
            .padding(Padding::Same)
            .activation(Activation::Erf)
            .bias_std(0.3);
        agrees_with_tapes(&cnn.program().unwrap());
    }

    #[test]
    fn circular_tanh_convolutions_flattened() {
        let cnn = Cnn::new((3, 4), 2)
            .layers(2)
            .padding(Padding::Circular)
            .activation(Activation::Tanh)
            .readout(ImageReadout::Flatten);
        agrees_with_tapes(&cnn.program().unwrap());
    }

    #[test]
    fn valid_sequence_convolutions() {
        let cnn = Cnn::sequence(7, 3)
            .layers(2)
            .padding(Padding::Valid)
            .bias_std(0.2);
        agrees_with_tapes(&cnn.program().unwrap());
    }

    #[test]
    fn myrtle_on_small_images() {
        agrees_with_tapes(&myrtle(5, (8, 8), 2).unwrap());
    }

    #[test]
    fn strided_convolutions_pooling_windows_and_a_biased_readout() {
        let (h, w, c) = (6, 5, 2);
        let mut p = Program::new(h * w * c);
        let pixels: Vec<_> = (0..h * w)
            .map(|q| p.input(c * q..c * q + c).unwrap())
            .collect();
        let (w1, b1) = (p.weight(1.3).unwrap(), p.bias(0.4).unwrap());
        let (hs, shape) = p
            .conv2d_strided(w1, &pixels, (h, w), (3, 2), (2, 1), Padding::Same)
            .unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| {
                let v = p.add_bias(v, b1).unwrap();
                p.apply(Activation::Relu, v).unwrap()
            })
            .collect();
        let (z, shape) = p.avg_pool2d(&z, shape, (2, 2), (1, 2)).unwrap();
        let w2 = p.weight(0.9).unwrap();
        let (hs, _) = p.conv2d(w2, &z, shape, (1, 2), Padding::Valid).unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| p.apply(Activation::Gelu, v).unwrap())
            .collect();
        let pooled = p.mean(&z).unwrap();
        p.readout(pooled, Readout::new(1.1).bias_std(0.2).outputs(2))
            .unwrap();
        agrees_with_tapes(&p);
    }

    #[test]
    fn zero_padded_relu_convolutions_flattened() {
        let cnn = Cnn::new((4, 3), 2)
            .layers(2)
            .taps((3, 2))
            .padding(Padding::Same)
            .bias_std(0.1)
            .readout(ImageReadout::Flatten);
        agrees_with_tapes(&cnn.program().unwrap());
    }

    #[test]
    fn a_zero_padded_run_stored_for_a_strided_convolution() {
        let (h, w, c) = (5, 4, 2);
        let mut p = Program::new(h * w * c);
        let pixels: Vec<_> = (0..h * w)
            .map(|q| p.input(c * q..c * q + c).unwrap())
            .collect();
        let w1 = p.weight(1.2).unwrap();
        let (hs, shape) = p
            .conv2d(w1, &pixels, (h, w), (3, 3), Padding::Same)
            .unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| p.apply(Activation::Relu, v).unwrap())
            .collect();
        let w2 = p.weight(0.8).unwrap();
        let (hs, _) = p
            .conv2d_strided(w2, &z, shape, (2, 2), (2, 2), Padding::Same)
            .unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| p.apply(Activation::Erf, v).unwrap())
            .collect();
        let pooled = p.mean(&z).unwrap();
        p.readout(pooled, Readout::new(1.0)).unwrap();
        agrees_with_tapes(&p);
    }

    #[test]
    fn wide_and_single_row_filters_a_bias_after_phi_and_oblong_pooling_blocks() {
        // 5 × 3 and 1 × 5 zero-padded filters, leaky ReLU and |x| (the arc-cosine family
        // off ReLU), a bias between φ and the next convolution, and 2 × 3 pooling
        // blocks that tile the 4 × 6 grid.
        let (h, w, c) = (4, 6, 2);
        let mut p = Program::new(h * w * c);
        let pixels: Vec<_> = (0..h * w)
            .map(|q| p.input(c * q..c * q + c).unwrap())
            .collect();
        let (w1, b1) = (p.weight(1.3).unwrap(), p.bias(0.5).unwrap());
        let (hs, shape) = p
            .conv2d(w1, &pixels, (h, w), (5, 3), Padding::Same)
            .unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| {
                let v = p.apply(Activation::LeakyRelu(0.2), v).unwrap();
                p.add_bias(v, b1).unwrap()
            })
            .collect();
        let w2 = p.weight(0.9).unwrap();
        let (hs, shape) = p.conv2d(w2, &z, shape, (1, 5), Padding::Same).unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| p.apply(Activation::Abs, v).unwrap())
            .collect();
        let (z, shape) = p.avg_pool2d(&z, shape, (2, 3), (2, 3)).unwrap();
        let w3 = p.weight(1.1).unwrap();
        let (hs, _) = p.conv2d(w3, &z, shape, (3, 3), Padding::Same).unwrap();
        let z: Vec<_> = hs
            .into_iter()
            .map(|v| p.apply(Activation::Relu, v).unwrap())
            .collect();
        let pooled = p.mean(&z).unwrap();
        p.readout(pooled, Readout::new(1.0)).unwrap();
        agrees_with_tapes(&p);
    }

    #[test]
    fn other_structures_are_left_to_the_symbolic_engine() {
        let rule = GaussHermite::new(8).unwrap();
        // A residual connection around a convolution.
        let mut p = Program::new(4 * 2);
        let pixels: Vec<_> = (0..4).map(|q| p.input(2 * q..2 * q + 2).unwrap()).collect();
        let w = p.weight(1.0).unwrap();
        let hs = p.conv(w, &pixels, 3, Padding::Circular).unwrap();
        let z: Vec<_> = hs
            .iter()
            .map(|&v| p.apply(Activation::Relu, v).unwrap())
            .collect();
        let w2 = p.weight(1.0).unwrap();
        let hs2 = p.conv(w2, &z, 3, Padding::Circular).unwrap();
        let sums: Vec<_> = hs2
            .iter()
            .zip(&hs)
            .map(|(&a, &b)| p.add(&[a, b]).unwrap())
            .collect();
        let out = p.mean(&sums).unwrap();
        p.output(out, 1.0).unwrap();
        assert!(GridPlan::of(&p, &rule, false).is_none());
        // An MLP.
        let spec = crate::MlpSpec::new(3).hidden(8, Activation::Relu);
        let mlp = Program::try_from(&spec).unwrap();
        assert!(GridPlan::of(&mlp, &rule, false).is_none());
    }
}
