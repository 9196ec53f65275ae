//! Random programs against independent oracles: compilers are tested by generating
//! programs and running them against something that does not share their code. Every
//! program drawn here (fixed seeds) goes through:
//!
//! - **the finite network** against finite differences: the whole kernel contract
//!   (`contract::check_ntk_model`: Jacobian, VJP and kernel by finite differences
//!   through every parameter group, shared weights included; per-group kernels summing
//!   to the NTK; blocks; batches), with k = 1, 2 or 3 outputs;
//! - **the limit** as a kernel function (`contract::check_kernel_fn` on Σ, Θ̊ and every
//!   group's term: symmetric, PSD, transposition, blocks of stacked batches, subsets),
//!   its forward (tangent moments) against its backward (per-group gradient moments)
//!   recursion, and `infinite_width_block` tiles against `infinite_width`;
//! - **width convergence** (slow, `--ignored`): the mean of finite networks' NTKs at
//!   growing width against the limit, within a statistical bound that shrinks like
//!   n^{−1/2};
//! - **the MLP engine**: `Program::from` of a random `MlpSpec` against the fused MLP
//!   recursion (limit) and the MLP network (finite), parameter for parameter;
//! - **the builder**: random call sequences, valid or not (foreign handles, empty lists,
//!   mismatched widths, huge sizes), never panic, and what they build never panics
//!   downstream.
//!
//! A program that finds a bug is kept below as a named regression test.

use std::panic::{AssertUnwindSafe, catch_unwind};

use ntk::nalgebra::DMatrix;
use ntk::rand::{RngExt, SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Bias, InfiniteWidth, MlpSpec, NtkModel, Padding, Program, Readout, Var, Weight,
    empirical_ntk, infinite_width, infinite_width_block, infinite_width_groups,
};

use crate::common::{self, rel_err};
use crate::contract;
use crate::prec;

/// The activations programs draw from: closed forms (ReLU family, Erf, GELU, Sin,
/// identity) and quadrature (Tanh, Sigmoid, Softplus).
fn activations() -> Vec<Activation> {
    vec![
        Activation::Relu,
        Activation::Erf,
        Activation::Tanh,
        Activation::Gelu,
        Activation::Sin,
        Activation::Identity,
        Activation::LeakyRelu(0.2),
        Activation::Abs,
        Activation::Sigmoid,
        Activation::Softplus,
    ]
}

/// Whether the limit of φ needs numerical integration (then the kernel-function checks
/// compare the same entry computed with its samples in swapped roles to quadrature
/// accuracy).
fn numerical(a: &Activation) -> bool {
    matches!(
        a,
        Activation::Tanh | Activation::Sigmoid | Activation::Softplus
    )
}

/// A hidden vector of a program under construction, and whether it is Gaussian in the
/// limit (a combination of dense outputs and biases, so that φ and LayerNorm of it have
/// a limit).
#[derive(Clone, Copy, Debug)]
struct Stream {
    var: Var,
    gaussian: bool,
}

/// A random program and how it was built.
pub struct Drawn {
    pub program: Program,
    /// The builder calls, one per line: printed when a check fails, so that the program
    /// can be kept as a named regression test.
    pub log: String,
    /// Whether the program may need numerical integration in the limit.
    pub numerical: bool,
}

/// Draws programs: `limit` keeps nonlinearities on Gaussian vectors (so that the
/// infinite-width limit exists); otherwise φ(ψ(h)) and LayerNorm of anything hidden
/// may appear (finite networks only).
struct Generator {
    p: Program,
    rng: StdRng,
    log: Vec<String>,
    limit: bool,
    numerical: bool,
    activations: Vec<Activation>,
}

impl Generator {
    fn new(seed: u64, input_dim: usize, limit: bool, activations: Vec<Activation>) -> Self {
        Generator {
            p: Program::new(input_dim),
            rng: StdRng::seed_from_u64(seed),
            log: vec![format!("Program::new({input_dim})")],
            limit,
            numerical: false,
            activations,
        }
    }

    fn coin(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn upto(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n)
    }

    fn sigma(&mut self, lo: f64, hi: f64) -> f64 {
        // Two decimals, so that the log reproduces the program exactly.
        (self.rng.random_range(lo..hi) * 100.0).round() / 100.0
    }

    fn note(&mut self, line: String) {
        self.log.push(line);
    }

    fn weight(&mut self) -> Weight {
        let s = self.sigma(0.5, 1.6);
        let w = self.p.weight(s).expect("weight");
        self.note(format!("{w:?} = weight({s})"));
        w
    }

    fn bias(&mut self) -> Bias {
        let s = self.sigma(0.1, 0.6);
        let b = self.p.bias(s).expect("bias");
        self.note(format!("{b:?} = bias({s})"));
        b
    }

    fn activation(&mut self) -> Activation {
        let i = self.upto(self.activations.len());
        let a = self.activations[i].clone();
        self.numerical |= numerical(&a);
        a
    }

    fn dense(&mut self, w: Weight, z: Var) -> Stream {
        let v = self.p.dense(w, z).expect("dense");
        self.note(format!("v{} = dense({w:?}, v{})", v.index(), z.index()));
        Stream {
            var: v,
            gaussian: true,
        }
    }

    fn add_bias(&mut self, s: Stream, b: Bias) -> Stream {
        let v = self.p.add_bias(s.var, b).expect("add_bias");
        self.note(format!(
            "v{} = add_bias(v{}, {b:?})",
            v.index(),
            s.var.index()
        ));
        Stream {
            var: v,
            gaussian: s.gaussian,
        }
    }

    /// φ(s), first projecting s through `project` (made on first use) if φ needs a
    /// Gaussian vector.
    fn apply(&mut self, a: Activation, s: Stream, project: &mut Option<Weight>) -> Stream {
        let s = self.gaussian(s, project);
        let v = self.p.apply(a.clone(), s.var).expect("apply");
        self.note(format!("v{} = apply({a:?}, v{})", v.index(), s.var.index()));
        Stream {
            var: v,
            gaussian: matches!(a, Activation::Identity) && s.gaussian,
        }
    }

    /// `s`, or (when the limit needs a Gaussian vector and `s` is not one)
    /// dense(W, s) with W = `project`, made on first use.
    fn gaussian(&mut self, s: Stream, project: &mut Option<Weight>) -> Stream {
        if s.gaussian || !self.limit {
            return s;
        }
        let w = match *project {
            Some(w) => w,
            None => {
                let w = self.weight();
                *project = Some(w);
                w
            }
        };
        self.dense(w, s.var)
    }

    fn add(&mut self, parts: &[Stream], mean: bool) -> Stream {
        let vars: Vec<Var> = parts.iter().map(|s| s.var).collect();
        let v = if mean {
            self.p.mean(&vars)
        } else {
            self.p.add(&vars)
        }
        .expect("add");
        let name = if mean { "mean" } else { "add" };
        let idx: Vec<usize> = vars.iter().map(|v| v.index()).collect();
        self.note(format!("v{} = {name}({idx:?})", v.index()));
        Stream {
            var: v,
            gaussian: parts.iter().all(|s| s.gaussian),
        }
    }

    fn layer_norm(&mut self, s: Stream, project: &mut Option<Weight>) -> Stream {
        let s = self.gaussian(s, project);
        let v = self.p.layer_norm(s.var).expect("layer_norm");
        self.note(format!("v{} = layer_norm(v{})", v.index(), s.var.index()));
        // g/√E[g²] in the limit: a Gaussian scaled per sample, but not a Gaussian vector
        // that another LayerNorm's or φ's 2-D reduction takes.
        Stream {
            var: v,
            gaussian: false,
        }
    }

    /// Embeds the tokens (input slices): one shared weight, or a circular or valid
    /// convolution over them, with an optional shared bias.
    fn embed(&mut self, tokens: usize, token_dim: usize) -> Vec<Stream> {
        let inputs: Vec<Var> = (0..tokens)
            .map(|t| {
                let v = self
                    .p
                    .input(t * token_dim..(t + 1) * token_dim)
                    .expect("input");
                self.log.push(format!(
                    "v{} = input({}..{})",
                    v.index(),
                    t * token_dim,
                    (t + 1) * token_dim
                ));
                v
            })
            .collect();
        let w = self.weight();
        let mut out: Vec<Stream> = if tokens > 1 && self.coin(0.4) {
            let taps = 1 + self.upto(tokens.min(3));
            let padding = if self.coin(0.5) {
                Padding::Circular
            } else {
                Padding::Valid
            };
            let vars = self.p.conv(w, &inputs, taps, padding).expect("conv");
            self.note(format!(
                "{:?} = conv({w:?}, inputs, {taps}, {padding:?})",
                vars.iter().map(|v| v.index()).collect::<Vec<_>>()
            ));
            vars.into_iter()
                .map(|var| Stream {
                    var,
                    gaussian: true,
                })
                .collect()
        } else {
            inputs.iter().map(|&x| self.dense(w, x)).collect()
        };
        if self.coin(0.6) {
            let b = self.bias();
            out = out.into_iter().map(|s| self.add_bias(s, b)).collect();
        }
        out
    }

    /// One random block on the streams.
    fn block(&mut self, streams: Vec<Stream>) -> Vec<Stream> {
        match self.upto(9) {
            // φ on every stream.
            0 | 1 => {
                let a = self.activation();
                let mut project = None;
                streams
                    .into_iter()
                    .map(|s| self.apply(a.clone(), s, &mut project))
                    .collect()
            }
            // A dense layer shared over the streams (or one per stream), maybe a bias.
            2 => {
                let shared = self.coin(0.7);
                let mut w = self.weight();
                let b = self.coin(0.5).then(|| self.bias());
                streams
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        if i > 0 && !shared {
                            w = self.weight();
                        }
                        let h = self.dense(w, s.var);
                        match b {
                            Some(b) => self.add_bias(h, b),
                            None => h,
                        }
                    })
                    .collect()
            }
            // A residual block: s + W φ(s) (+ b), one W for all streams.
            3 => {
                let a = self.activation();
                let w = self.weight();
                let mut project = None;
                let b = self.coin(0.5).then(|| self.bias());
                streams
                    .into_iter()
                    .map(|s| {
                        let z = self.apply(a.clone(), s, &mut project);
                        let mut h = self.dense(w, z.var);
                        if let Some(b) = b {
                            h = self.add_bias(h, b);
                        }
                        self.add(&[s, h], false)
                    })
                    .collect()
            }
            // A recurrence over the streams: s_t = φ(W s_{t−1} + h_t (+ b)).
            4 => {
                let a = self.activation();
                let w = (streams.len() > 1).then(|| self.weight());
                let mut project = None;
                let b = self.coin(0.5).then(|| self.bias());
                let mut states: Vec<Stream> = Vec::new();
                for s in streams {
                    let mut h = self.gaussian(s, &mut project);
                    if let (Some(&prev), Some(w)) = (states.last(), w) {
                        let r = self.dense(w, prev.var);
                        h = self.add(&[h, r], false);
                    }
                    if let Some(b) = b {
                        h = self.add_bias(h, b);
                    }
                    states.push(self.apply(a.clone(), h, &mut project));
                }
                states
            }
            // A convolution over the streams.
            5 => {
                let w = self.weight();
                let len = streams.len();
                let taps = 1 + self.upto(len.min(3));
                let padding = if self.coin(0.5) {
                    Padding::Circular
                } else {
                    Padding::Valid
                };
                let vars: Vec<Var> = streams.iter().map(|s| s.var).collect();
                let out = self.p.conv(w, &vars, taps, padding).expect("conv");
                self.note(format!(
                    "{:?} = conv({w:?}, {:?}, {taps}, {padding:?})",
                    out.iter().map(|v| v.index()).collect::<Vec<_>>(),
                    vars.iter().map(|v| v.index()).collect::<Vec<_>>()
                ));
                let mut out: Vec<Stream> = out
                    .into_iter()
                    .map(|var| Stream {
                        var,
                        gaussian: true,
                    })
                    .collect();
                if self.coin(0.5) {
                    let b = self.bias();
                    out = out.into_iter().map(|s| self.add_bias(s, b)).collect();
                }
                out
            }
            // Attention: tied (the streams themselves) or through projections, then
            // maybe a residual connection and LayerNorm.
            6 => {
                let tied = self.coin(0.5);
                let (qs, ks, vs): (Vec<Var>, Vec<Var>, Vec<Var>) = if tied {
                    let v: Vec<Var> = streams.iter().map(|s| s.var).collect();
                    (v.clone(), v.clone(), v)
                } else {
                    let (wq, wk, wv) = (self.weight(), self.weight(), self.weight());
                    let mut q = Vec::new();
                    let mut k = Vec::new();
                    let mut v = Vec::new();
                    for s in &streams {
                        q.push(self.dense(wq, s.var).var);
                        k.push(self.dense(wk, s.var).var);
                        v.push(self.dense(wv, s.var).var);
                    }
                    (q, k, v)
                };
                let ys = self.p.attention(&qs, &ks, &vs).expect("attention");
                let ix = |v: &[Var]| v.iter().map(|v| v.index()).collect::<Vec<_>>();
                self.note(format!(
                    "{:?} = attention({:?}, {:?}, {:?})",
                    ix(&ys),
                    ix(&qs),
                    ix(&ks),
                    ix(&vs)
                ));
                let values_gaussian = !tied || streams.iter().all(|s| s.gaussian);
                let residual = self.coin(0.5);
                let norm = self.coin(0.5);
                let mut project = None;
                ys.into_iter()
                    .zip(&streams)
                    .map(|(y, &s)| {
                        let mut y = Stream {
                            var: y,
                            gaussian: values_gaussian,
                        };
                        if residual {
                            y = self.add(&[y, s], false);
                        }
                        if norm {
                            y = self.layer_norm(y, &mut project);
                        }
                        y
                    })
                    .collect()
            }
            // LayerNorm of every stream.
            7 => {
                let mut project = None;
                streams
                    .into_iter()
                    .map(|s| self.layer_norm(s, &mut project))
                    .collect()
            }
            // Neighbouring streams concatenated into one weight's input (fan-in 2n), or a
            // mean of neighbours.
            _ => {
                if streams.len() < 2 {
                    return streams;
                }
                if self.coin(0.5) {
                    let pairs: Vec<Stream> =
                        streams.windows(2).map(|w| self.add(w, true)).collect();
                    return pairs;
                }
                let w = self.weight();
                streams
                    .windows(2)
                    .map(|pair| {
                        let c = self.p.concat(&[pair[0].var, pair[1].var]).expect("concat");
                        self.note(format!(
                            "v{} = concat([v{}, v{}])",
                            c.index(),
                            pair[0].var.index(),
                            pair[1].var.index()
                        ));
                        self.dense(w, c)
                    })
                    .collect()
            }
        }
    }

    /// The readout: the mean of the streams, their concatenation (flattening) or the
    /// last, with 1 to 3 outputs and maybe a bias.
    fn finish(mut self, streams: Vec<Stream>) -> Drawn {
        let vars: Vec<Var> = streams.iter().map(|s| s.var).collect();
        let out = match self.upto(3) {
            0 => self.add(&streams, true).var,
            1 => {
                let c = self.p.concat(&vars).expect("concat");
                self.note(format!(
                    "v{} = concat({:?})",
                    c.index(),
                    vars.iter().map(|v| v.index()).collect::<Vec<_>>()
                ));
                c
            }
            _ => *vars.last().expect("a stream"),
        };
        let k = 1 + self.upto(3);
        let sv = self.sigma(0.5, 1.5);
        let sb = if self.coin(0.4) {
            self.sigma(0.1, 0.5)
        } else {
            0.0
        };
        self.p
            .readout(out, Readout::new(sv).bias_std(sb).outputs(k))
            .expect("readout");
        self.note(format!(
            "readout(v{}, Readout::new({sv}).bias_std({sb}).outputs({k}))",
            out.index()
        ));
        Drawn {
            program: self.p,
            log: self.log.join("\n"),
            numerical: self.numerical,
        }
    }
}

/// A random program from `seed`: 1 to 3 tokens of 1 to 3 columns, embedded, then 1 to
/// `max_blocks` random blocks, then a readout.
pub fn draw(seed: u64, limit: bool, max_blocks: usize, activations: Vec<Activation>) -> Drawn {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let tokens = rng.random_range(1..4);
    let token_dim = rng.random_range(1..4);
    let blocks = rng.random_range(1..=max_blocks);
    let mut g = Generator::new(seed, tokens * token_dim, limit, activations);
    let mut streams = g.embed(tokens, token_dim);
    for _ in 0..blocks {
        streams = g.block(streams);
    }
    g.finish(streams)
}

/// Runs `check` on `drawn`, and on failure panics with the program's builder calls.
fn expect_ok(what: &str, seed: u64, drawn: &Drawn, result: Result<(), String>) {
    if let Err(e) = result {
        panic!(
            "{what}, random program of seed {seed}: {e}\nthe program:\n{}",
            drawn.log
        );
    }
}

/// What the finite network's check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finite {
    /// The whole contract holds.
    Checked,
    /// A LayerNorm's input has zero variance at a sample of the batches (at width 3 a
    /// ReLU layer can be dead for a sample): the documented error, and finite outputs.
    LayerNormOfAConstant,
}

/// The finite network of `drawn` at width `width` through the kernel contract.
fn check_finite(drawn: &Drawn, seed: u64, width: usize) -> Result<Finite, String> {
    let p = &drawn.program;
    let net = p
        .init::<f64>(width, &mut StdRng::seed_from_u64(seed))
        .map_err(|e| format!("init: {e}"))?;
    let batches = contract::Batches::random(p.input_dim(), 1000 + seed);
    match contract::check_ntk_model(&net, &batches) {
        Ok(_) => Ok(Finite::Checked),
        Err(v) if v.detail.contains("LayerNorm") && v.detail.contains("no derivative") => {
            for x in batches.finite_difference_batches() {
                let f = net.forward(x).map_err(|e| format!("forward: {e}"))?;
                if f.iter().any(|v| !v.is_finite()) {
                    return Err("forward: an Ok output that is not finite".into());
                }
            }
            Ok(Finite::LayerNormOfAConstant)
        }
        Err(v) => Err(v.to_string()),
    }
}

/// The limit of `drawn` as a kernel function, forward against backward, and blocks.
fn check_limit(drawn: &Drawn, seed: u64) -> Result<(), String> {
    let p = &drawn.program;
    let limit = InfiniteWidth::new(p).map_err(|e| e.to_string())?;
    let tol = if drawn.numerical {
        prec::QUADRATURE
    } else {
        prec::EXACT_F64
    };
    // Each group's term is checked as Θ̊ + term: a kernel function like the term, whose
    // round-off is measured against Θ̊'s size (a group whose term vanishes exactly,
    // e.g. a weight before a LayerNorm of a rank-one vector, gives round-off of
    // round-off).
    let kernels = |a: &DMatrix<f64>, b: &DMatrix<f64>| -> ntk::Result<contract::Named> {
        let k = limit.kernels(a, b)?;
        let mut all = vec![
            ("nngp".to_string(), k.nngp),
            ("ntk".to_string(), k.ntk.clone()),
        ];
        for (g, group) in limit.group_kernels(a, b)?.into_iter().enumerate() {
            all.push((format!("Θ̊ + group {g} weights"), &k.ntk + group.weights));
            if let Some(bias) = group.bias {
                all.push((format!("Θ̊ + group {g} bias"), &k.ntk + bias));
            }
        }
        Ok(all)
    };
    let batches = contract::Batches::with_large_rows(p.input_dim(), 2000 + seed, 10);
    contract::check_kernel_fn(&batches, 1, tol, kernels).map_err(|v| v.to_string())?;
    // Forward (tangent moments) against backward (gradient moments per group).
    let (x1, x2) = (&batches.x1, &batches.x2);
    for (a, b) in [(x1, x1), (x1, x2)] {
        let forward = limit.kernels(a, b).map_err(|e| e.to_string())?.ntk;
        let backward = limit
            .group_kernels(a, b)
            .map_err(|e| e.to_string())?
            .iter()
            .fold(DMatrix::zeros(a.nrows(), b.nrows()), |acc, l| {
                acc + l.total()
            });
        let err = rel_err(&backward, &forward);
        if err > 1e-12 {
            return Err(format!(
                "Σ group terms (backward) against Θ̊ (forward): relative error {err:e}"
            ));
        }
    }
    // infinite_width_block tiles assemble infinite_width.
    let large = &batches.large;
    let whole = infinite_width(p, large, large).map_err(|e| e.to_string())?;
    let n = large.nrows();
    for (r, c) in [(0..4, 0..n), (4..n, 0..7), (4..n, 7..n)] {
        let tile = infinite_width_block(p, large, large, r.clone(), c.clone())
            .map_err(|e| e.to_string())?;
        for (got, want, name) in [
            (&tile.nngp, &whole.nngp, "nngp"),
            (&tile.ntk, &whole.ntk, "ntk"),
        ] {
            let want = want
                .view((r.start, c.start), (r.len(), c.len()))
                .into_owned();
            let err = rel_err(got, &want);
            if err > tol {
                return Err(format!(
                    "infinite_width_block {name} {r:?} × {c:?}: relative error {err:e}"
                ));
            }
        }
    }
    Ok(())
}

/// Seeds of the fast part: every one of them is checked on every run.
const FAST_SEEDS: std::ops::Range<u64> = 0..150;

/// Runs the finite network of each program of `seeds` through the contract; returns how
/// many hit a LayerNorm of a constant vector (which must stay rare: the check would
/// otherwise test little).
fn finite_networks(seeds: std::ops::Range<u64>, limit: bool) -> usize {
    let mut degenerate = 0;
    let count = seeds.end - seeds.start;
    for seed in seeds {
        let drawn = draw(seed, limit, 3, activations());
        match check_finite(&drawn, seed, 3) {
            Ok(Finite::Checked) => {}
            Ok(Finite::LayerNormOfAConstant) => degenerate += 1,
            Err(e) => expect_ok("finite network", seed, &drawn, Err(e)),
        }
    }
    assert!(
        degenerate * 10 <= count as usize,
        "{degenerate} of {count} programs hit a LayerNorm of a constant vector"
    );
    degenerate
}

/// Random programs with a limit: their finite networks through the kernel contract.
#[test]
fn random_programs_satisfy_the_kernel_contract() {
    finite_networks(FAST_SEEDS, true);
}

/// Random programs with a limit: their limits through the kernel-function checks,
/// forward against backward, blocks against the whole.
#[test]
fn random_program_limits_satisfy_the_kernel_function_checks() {
    for seed in FAST_SEEDS {
        let drawn = draw(seed, true, 3, activations());
        expect_ok("limit", seed, &drawn, check_limit(&drawn, seed));
    }
}

/// Random programs without the limit's restrictions (φ(ψ(h)), LayerNorm of anything
/// hidden): their finite networks through the kernel contract, and their limits are
/// either finite kernels or errors that name a variable (never a panic or a NaN).
#[test]
fn random_finite_only_programs_satisfy_the_kernel_contract() {
    finite_networks(FAST_SEEDS, false);
    for seed in FAST_SEEDS {
        let drawn = draw(seed, false, 3, activations());
        let x = common::inputs(3, drawn.program.input_dim(), seed);
        match infinite_width(&drawn.program, &x, &x) {
            Ok(k) => assert!(
                k.nngp.iter().chain(k.ntk.iter()).all(|v| v.is_finite()),
                "seed {seed}: a kernel that is not finite\n{}",
                drawn.log
            ),
            Err(e) => assert!(
                e.to_string().contains("variable"),
                "seed {seed}: an error that names no variable: {e}\n{}",
                drawn.log
            ),
        }
    }
}

// ------------------------------------------------------------------ MLP programs

/// A random MLP: input dimension 1 to 4, 1 to 3 hidden layers of width `width`, any
/// activation, biases or not, 1 to 3 outputs, NTK parameterization.
fn random_spec(seed: u64, width: usize) -> MlpSpec {
    let mut rng = StdRng::seed_from_u64(seed);
    let acts = activations();
    let mut spec = MlpSpec::new(rng.random_range(1..5));
    for _ in 0..rng.random_range(1..4) {
        spec = spec.hidden(width, acts[rng.random_range(0..acts.len())].clone());
    }
    let sw = (rng.random_range(0.5..2.0_f64) * 100.0).round() / 100.0;
    spec = spec.weight_std(sw).outputs(rng.random_range(1..4));
    if rng.random_bool(0.6) {
        spec = spec.bias_std((rng.random_range(0.1..0.6_f64) * 100.0).round() / 100.0);
    }
    spec
}

/// `Program::from` of random MLPs against the MLP engine on both sides: the limit
/// (the fused layer recursion, another code path) with its per-layer split, and the
/// finite network parameter for parameter (outputs, empirical NTK, per-layer kernels).
#[test]
fn programs_of_random_mlps_are_the_mlps() {
    let width = 6;
    for seed in 0..40 {
        let spec = random_spec(seed, width);
        let p = Program::try_from(&spec).unwrap();
        let d = spec.input_dim();
        let (x1, x2) = (common::inputs(5, d, seed), common::inputs(3, d, seed + 1));
        let numerical = spec.hidden_layers().iter().any(|(_, a)| numerical(a));
        let tol = if numerical { 1e-12 } else { 1e-13 };
        for (a, b) in [(&x1, &x1), (&x1, &x2)] {
            let want = infinite_width(&spec, a, b).unwrap();
            let got = infinite_width(&p, a, b).unwrap();
            assert!(rel_err(&got.nngp, &want.nngp) < tol, "{spec:?}: NNGP");
            assert!(rel_err(&got.ntk, &want.ntk) < tol, "{spec:?}: NTK");
            // Dense layer l of the spec is the program's W_l (and b_l): groups pair up.
            let layers = infinite_width_groups(&spec, a, b).unwrap();
            let groups = infinite_width_groups(&p, a, b).unwrap();
            let per_layer = if spec.has_bias() { 2 } else { 1 };
            assert_eq!(groups.len(), per_layer * (layers.len() - 1) + 1, "{spec:?}");
            for (l, layer) in layers.iter().enumerate() {
                let g = &groups[(per_layer * l).min(groups.len() - 1)];
                assert!(
                    rel_err(&g.weights, &layer.weights) < tol,
                    "{spec:?}: layer {l}"
                );
                let bias = if l + 1 == layers.len() {
                    g.bias.clone()
                } else if spec.has_bias() {
                    groups[per_layer * l + 1].bias.clone()
                } else {
                    None
                };
                match (bias, &layer.bias) {
                    (Some(got), Some(want)) => {
                        assert!(rel_err(&got, want) < tol, "{spec:?}: layer {l} bias");
                    }
                    (None, None) => {}
                    other => panic!("{spec:?}: layer {l} bias terms {other:?}"),
                }
            }
        }
        let mlp = spec.init::<f64>(&mut StdRng::seed_from_u64(seed)).unwrap();
        let net = p
            .init::<f64>(width, &mut StdRng::seed_from_u64(seed))
            .unwrap();
        assert_eq!(net.parameters(), mlp.parameters(), "{spec:?}");
        let exact = prec::EXACT_F64;
        assert!(rel_err(&net.forward(&x1).unwrap(), &mlp.forward(&x1).unwrap()) < exact);
        let (a, b) = (
            empirical_ntk(&net, &x1, &x2).unwrap(),
            empirical_ntk(&mlp, &x1, &x2).unwrap(),
        );
        assert!(rel_err(&a, &b) < exact, "{spec:?}: empirical NTK");
    }
    // The standard parameterization has no program: an error, no panic.
    let standard = random_spec(7, width).parameterization(ntk::Parameterization::Standard);
    assert!(Program::try_from(&standard).is_err());
}

// ------------------------------------------------------------------ builder fuzz

/// Handles of one program under construction.
#[derive(Default)]
struct Handles {
    vars: Vec<Var>,
    weights: Vec<Weight>,
    biases: Vec<Bias>,
}

/// `f()`, which must not panic; `None` if it returned an error.
fn no_panic<T>(what: &str, log: &[String], f: impl FnOnce() -> ntk::Result<T>) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.ok(),
        Err(_) => panic!("{what} panicked after:\n{}", log.join("\n")),
    }
}

/// Random builder calls on two programs, with arguments drawn to be valid or not:
/// handles from the other program, empty lists, mismatched widths, huge sizes, bad σ,
/// zero outputs, zero or huge taps. No call may panic; invalid ones are errors. Then
/// everything downstream of what was built (validation, networks of small and huge
/// width, their kernels, the limit) must not panic either.
#[test]
fn no_builder_call_sequence_panics() {
    let sizes = [0_usize, 1, 2, 3, 5, usize::MAX / 2, usize::MAX];
    let stds = [1.0, 0.3, 0.0, -1.0, f64::NAN, f64::INFINITY, 1e300];
    let mut built = 0;
    for seed in 0..600_u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dims = [rng.random_range(1..5), rng.random_range(1..5)];
        let mut ps = [Program::new(dims[0]), Program::new(dims[1])];
        let mut hs = [Handles::default(), Handles::default()];
        let mut log = vec![format!("programs of input dimensions {dims:?}")];
        for _ in 0..rng.random_range(5..30) {
            let me = usize::from(rng.random_bool(0.2));
            // Mostly the program's own handles, sometimes the other's.
            let pick_var = |rng: &mut StdRng, hs: &[Handles; 2]| {
                let h = &hs[if rng.random_bool(0.9) { me } else { 1 - me }];
                (!h.vars.is_empty()).then(|| h.vars[rng.random_range(0..h.vars.len())])
            };
            let list = |rng: &mut StdRng, hs: &[Handles; 2]| -> Vec<Var> {
                (0..rng.random_range(0..4))
                    .filter_map(|_| pick_var(rng, hs))
                    .collect()
            };
            let op = rng.random_range(0..14);
            log.push(format!("program {me}: op {op}"));
            let p = &mut ps[me];
            match op {
                0 | 1 => {
                    let (a, b) = (
                        sizes[rng.random_range(0..sizes.len())].min(dims[me] + 1),
                        sizes[rng.random_range(0..sizes.len())],
                    );
                    let b = if rng.random_bool(0.7) {
                        (a + 1).min(dims[me])
                    } else {
                        b
                    };
                    if let Some(v) = no_panic("input", &log, || p.input(a..b)) {
                        hs[me].vars.push(v);
                    }
                }
                2 => {
                    let s = stds[rng.random_range(0..stds.len())];
                    if let Some(w) = no_panic("weight", &log, || p.weight(s)) {
                        hs[me].weights.push(w);
                    }
                }
                3 => {
                    let s = stds[rng.random_range(0..stds.len())];
                    if let Some(b) = no_panic("bias", &log, || p.bias(s)) {
                        hs[me].biases.push(b);
                    }
                }
                4 => {
                    let h = &hs[if rng.random_bool(0.9) { me } else { 1 - me }];
                    let w = (!h.weights.is_empty())
                        .then(|| h.weights[rng.random_range(0..h.weights.len())]);
                    if let (Some(w), Some(z)) = (w, pick_var(&mut rng, &hs))
                        && let Some(v) = no_panic("dense", &log, || p.dense(w, z))
                    {
                        hs[me].vars.push(v);
                    }
                }
                5 => {
                    let h = &hs[if rng.random_bool(0.9) { me } else { 1 - me }];
                    let b = (!h.biases.is_empty())
                        .then(|| h.biases[rng.random_range(0..h.biases.len())]);
                    if let (Some(b), Some(z)) = (b, pick_var(&mut rng, &hs))
                        && let Some(v) = no_panic("add_bias", &log, || p.add_bias(z, b))
                    {
                        hs[me].vars.push(v);
                    }
                }
                6..=8 => {
                    let parts = list(&mut rng, &hs);
                    let r = match op {
                        6 => no_panic("add", &log, || p.add(&parts)),
                        7 => no_panic("mean", &log, || p.mean(&parts)),
                        _ => no_panic("concat", &log, || p.concat(&parts)),
                    };
                    hs[me].vars.extend(r);
                }
                9 => {
                    let acts = activations();
                    let a = if rng.random_bool(0.1) {
                        Activation::LeakyRelu(f64::NAN)
                    } else {
                        acts[rng.random_range(0..acts.len())].clone()
                    };
                    if let Some(z) = pick_var(&mut rng, &hs) {
                        hs[me]
                            .vars
                            .extend(no_panic("apply", &log, || p.apply(a, z)));
                    }
                }
                10 => {
                    if let Some(z) = pick_var(&mut rng, &hs) {
                        hs[me]
                            .vars
                            .extend(no_panic("layer_norm", &log, || p.layer_norm(z)));
                    }
                }
                11 => {
                    let (q, k, v) = (
                        list(&mut rng, &hs),
                        list(&mut rng, &hs),
                        list(&mut rng, &hs),
                    );
                    let out = no_panic("attention", &log, || p.attention(&q, &k, &v));
                    hs[me].vars.extend(out.into_iter().flatten());
                }
                12 => {
                    let h = &hs[me];
                    let w = (!h.weights.is_empty())
                        .then(|| h.weights[rng.random_range(0..h.weights.len())]);
                    let positions = list(&mut rng, &hs);
                    let taps = sizes[rng.random_range(0..sizes.len())];
                    let pad = if rng.random_bool(0.5) {
                        Padding::Circular
                    } else {
                        Padding::Valid
                    };
                    if let Some(w) = w {
                        let out = if rng.random_bool(0.5) {
                            no_panic("conv", &log, || p.conv(w, &positions, taps, pad))
                        } else {
                            let grid = (
                                sizes[rng.random_range(0..sizes.len())],
                                sizes[rng.random_range(0..sizes.len())],
                            );
                            no_panic("conv2d", &log, || {
                                p.conv2d(w, &positions, grid, (taps, 2), pad).map(|r| r.0)
                            })
                        };
                        hs[me].vars.extend(out.into_iter().flatten());
                    }
                }
                _ => {
                    let s = stds[rng.random_range(0..stds.len())];
                    let k = sizes[rng.random_range(0..sizes.len())];
                    if let Some(z) = pick_var(&mut rng, &hs) {
                        no_panic("readout", &log, || {
                            p.readout(z, Readout::new(s).bias_std(0.1).outputs(k))
                        });
                    }
                }
            }
        }
        // Mostly complete the programs: use every weight and bias somewhere it fits (its
        // earlier uses fix its fan-in), then read out.
        for (p, h) in ps.iter_mut().zip(&hs) {
            if !rng.random_bool(0.8) {
                continue;
            }
            let mut vars = h.vars.clone();
            for &w in &h.weights {
                if let Some(v) = vars.iter().find_map(|&z| p.dense(w, z).ok()) {
                    vars.push(v);
                }
            }
            for &b in &h.biases {
                if let Some(v) = vars.iter().find_map(|&z| p.add_bias(z, b).ok()) {
                    vars.push(v);
                }
            }
            if let Some(&z) = vars.last() {
                no_panic("readout", &log, || p.output(z, 1.0));
            }
        }
        for (i, p) in ps.iter().enumerate() {
            if no_panic("validate", &log, || p.validate()).is_none() {
                continue;
            }
            built += 1;
            let x = common::inputs(2, p.input_dim(), seed);
            no_panic("infinite_width", &log, || infinite_width(p, &x, &x));
            for width in [3, 1 << 40] {
                let net = no_panic("init", &log, || {
                    p.init::<f64>(width, &mut StdRng::seed_from_u64(seed))
                });
                if let Some(net) = net {
                    no_panic("forward", &log, || net.forward(&x));
                    no_panic("empirical_ntk", &log, || empirical_ntk(&net, &x, &x));
                }
            }
            log.push(format!("program {i} validated"));
        }
    }
    // Enough random sequences build complete programs for the downstream calls to mean
    // something.
    assert!(built >= 200, "only {built} complete programs");
}

// ------------------------------------------------------------------ width convergence

/// The mean of `seeds` finite networks' NTKs at width `n` against the limit: the
/// Frobenius distance ‖Θ̄_n − Θ̊‖ and its standard error ŝ_n = √(Σ_entries var_seeds(Θ_n)
/// / seeds), both relative to ‖Θ̊‖.
fn mean_kernel_error(
    p: &Program,
    x: &DMatrix<f64>,
    limit: &DMatrix<f64>,
    n: usize,
    seeds: u64,
) -> (f64, f64) {
    let kernels: Vec<DMatrix<f64>> = (0..seeds)
        .map(|s| {
            let net = p.init::<f64>(n, &mut StdRng::seed_from_u64(s)).unwrap();
            empirical_ntk(&net, x, x).unwrap()
        })
        .collect();
    let count = seeds as f64;
    let mean = kernels
        .iter()
        .fold(DMatrix::zeros(x.nrows(), x.nrows()), |a, k| a + k)
        / count;
    let var = kernels
        .iter()
        .map(|k| (k - &mean).norm_squared())
        .sum::<f64>()
        / (count - 1.0);
    let scale = limit.norm();
    ((&mean - limit).norm() / scale, (var / count).sqrt() / scale)
}

/// Seeds of the slow part's programs.
const CONVERGENCE_SEEDS: std::ops::Range<u64> = 0..24;

/// Width convergence of random programs (the slow part: `cargo test --release --
/// --ignored slow_`). For each program, at widths 128, 512
/// and 2048 the mean NTK of 12 networks must lie within 4 standard errors of Θ̊
/// (plus 2/n for the O(1/n) bias of the mean), and the standard errors must shrink
/// about as fast as n^{−1/2} or faster (fitted log-log slope below −0.3): a limit off by
/// a fixed amount fails at the largest width, where the bound is 1.5 to 5 percent.
#[test]
#[ignore = "slow: width convergence of random programs (about a minute); CI runs it once"]
fn slow_random_program_networks_converge_to_their_limits() {
    let widths = [128, 512, 2048];
    let mut checked = 0;
    for seed in CONVERGENCE_SEEDS {
        let drawn = draw(seed, true, 2, activations());
        let p = &drawn.program;
        let x = common::inputs(3, p.input_dim(), 500 + seed);
        let limit = infinite_width(p, &x, &x).unwrap().ntk;
        let mut ses = Vec::new();
        for &n in &widths {
            let (err, se) = mean_kernel_error(p, &x, &limit, n, 12);
            let bound = 4.0 * se + 2.0 / n as f64;
            assert!(
                err <= bound,
                "seed {seed}, width {n}: ‖mean Θ_n − Θ̊‖/‖Θ̊‖ = {err:.4} > {bound:.4} \
                 (4 standard errors + 2/n)\nthe program:\n{}",
                drawn.log
            );
            ses.push(se);
        }
        let logs: Vec<(f64, f64)> = widths
            .iter()
            .zip(&ses)
            .map(|(&n, &se)| ((n as f64).ln(), se.ln()))
            .collect();
        let (mx, my) = (
            logs.iter().map(|l| l.0).sum::<f64>() / 3.0,
            logs.iter().map(|l| l.1).sum::<f64>() / 3.0,
        );
        let slope = logs.iter().map(|l| (l.0 - mx) * (l.1 - my)).sum::<f64>()
            / logs.iter().map(|l| (l.0 - mx).powi(2)).sum::<f64>();
        // n^{−1/2} is the rate of the fluctuations in general; a program whose kernel is
        // partly deterministic at every width (e.g. a readout of LayerNorm(W x) with a
        // scalar x) fluctuates less, and faster is fine.
        assert!(
            slope < -0.3,
            "seed {seed}: standard errors {ses:?} fall with slope {slope:.3}\n{}",
            drawn.log
        );
        checked += 1;
    }
    assert_eq!(checked, CONVERGENCE_SEEDS.end - CONVERGENCE_SEEDS.start);
}
