//! A kernel too large to hold, computed tile by tile into a file, as a cluster job
//! array would: each task computes its tiles of Θ and writes them at their offsets.
//!
//! ```sh
//! # all tiles in this process (rayon runs the tiles' rows in parallel):
//! cargo run --release --example blockwise_kernel -- --n 4096 --tile 1024 --out target/theta.npy
//! # one task of a job array of 4 (e.g. --task "$SLURM_ARRAY_TASK_ID"), then a check:
//! cargo run --release --example blockwise_kernel -- --n 4096 --tile 1024 --tasks 4 --task 2
//! cargo run --release --example blockwise_kernel -- --n 4096 --tile 1024 --check
//! # the whole kernel in memory at once, to measure peak memory:
//! /usr/bin/time -v cargo run --release --example blockwise_kernel -- --n 16384 --direct
//! # the infinite-width NTK of a 1-D CNN instead (compiled once per process):
//! cargo run --release --example blockwise_kernel -- --kernel infinite --n 1024 --tile 256
//! # the Myrtle-5 NTK of 32 × 32 × 3 images (random images), tile by tile:
//! cargo run --release --example blockwise_kernel -- --arch myrtle5 --image 32x32 --n 64 --tile 16
//! ```
//!
//! `--kernel empirical` (the default) is the empirical NTK of a fixed-seed MLP;
//! `--kernel infinite` is the infinite-width NTK Θ̊ of a program, a 1-D CNN over the
//! inputs read as 8 positions × 4 channels (two circular 3-tap ReLU convolutions with
//! biases, average pooling). `--arch myrtle5` (or `myrtle7`, `myrtle10`) is the
//! infinite-width NTK of neural-tangents' Myrtle network (`zoo::myrtle`) on `--image`
//! H×W × 3 images (default 32x32), the inputs fixed pseudo-random images; it prints
//! the cost per kernel entry, from which the cost of a whole data set's kernel follows.
//! A program's recursion is compiled once, by the first tile a process computes, and
//! every later tile of the task (and the check) reuses it: the task holds one
//! `InfiniteWidth`.
//!
//! The file is a NumPy `.npy` file (format version 1.0: a 128-byte header, then Θ as
//! N × N little-endian `f64` in C order), which `numpy.load(path, mmap_mode='r')` opens
//! without reading it; `--format raw` writes the values alone. Tiles (I, J) with I ≤ J
//! are dealt round-robin to tasks; each task writes the same header (so the tasks
//! may start in any order) and its tiles and, off the diagonal, their mirrors. When
//! one process computes every tile, or with `--check` after all tasks, the corner tiles
//! are recomputed directly and compared with the file (and, up to N = 4096, the whole
//! file with the kernel computed at once).
//!
//! Every flag is checked before the output file is opened, and a task never truncates
//! a file another task is writing: an existing file is only written into if its header
//! (or, for raw output, its length) matches this run's N.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, InfiniteWidth, Mlp, MlpSpec, Padding, Program, empirical_ntk, empirical_ntk_block,
};

mod support;
use support::{Context, Result};

/// The empirical NTK of a 32 → 512 → 512 → 512 → 1 ReLU MLP (fixed seed), or the
/// infinite-width NTK of a 1-D CNN, on N points, computed tile by tile into a .npy file,
/// as the tasks of a cluster job array would.
#[derive(Parser)]
struct Args {
    /// Which kernel: the empirical NTK of an MLP, or the infinite-width NTK of a CNN.
    #[arg(long, value_enum, default_value_t = Kernel::Empirical)]
    kernel: Kernel,
    /// A Myrtle network's infinite-width NTK on images instead (overrides --kernel).
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// The images' height × width for --arch, e.g. 32x32 (3 channels; divisible by 4).
    #[arg(long, default_value = "32x32", value_parser = image_size)]
    image: (usize, usize),
    /// Number of points N; the kernel is N × N.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    n: usize,
    /// Rows and columns per tile.
    #[arg(long, default_value_t = 1024, value_parser = at_least_one)]
    tile: usize,
    /// Number of tasks the tiles are dealt to.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    tasks: usize,
    /// This task's index, 0 ≤ TASK < TASKS (e.g. "$SLURM_ARRAY_TASK_ID"). Without it,
    /// this process computes every tile.
    #[arg(long)]
    task: Option<usize>,
    /// The output file [default: target/theta.npy; with --direct, none].
    #[arg(long)]
    out: Option<PathBuf>,
    /// File format: npy (header, then C-order float64) or raw (float64 only).
    #[arg(long, value_enum, default_value_t = Format::Npy)]
    format: Format,
    /// Only check an existing file against direct computations (after all tasks).
    #[arg(long, conflicts_with_all = ["task", "direct"])]
    check: bool,
    /// Skip the check after computing every tile in this process.
    #[arg(long)]
    no_check: bool,
    /// Compute the whole kernel in memory at once (to measure peak memory, or as the
    /// reference for a tiled file); writes it only if --out is given.
    #[arg(long, conflicts_with_all = ["task", "tasks", "tile"])]
    direct: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kernel {
    /// The empirical NTK of a 32 → 512 → 512 → 512 → 1 ReLU MLP drawn from seed 42.
    Empirical,
    /// The infinite-width NTK Θ̊ of a 1-D CNN on 8 positions × 4 channels.
    Infinite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Arch {
    /// neural-tangents' Myrtle-5 (`zoo::myrtle(5, image, 3)`).
    Myrtle5,
    /// Myrtle-7.
    Myrtle7,
    /// Myrtle-10.
    Myrtle10,
}

/// The kernel's model: a finite network, or a program's limit compiled once.
enum Model {
    Empirical(Mlp<f64>),
    Infinite(Box<InfiniteWidth>),
}

impl Model {
    fn new(kernel: Kernel, arch: Option<Arch>, image: (usize, usize)) -> ntk::Result<Self> {
        if let Some(arch) = arch {
            let depth = match arch {
                Arch::Myrtle5 => 5,
                Arch::Myrtle7 => 7,
                Arch::Myrtle10 => 10,
            };
            let program = ntk::zoo::myrtle(depth, image, 3)?;
            return Ok(Model::Infinite(Box::new(InfiniteWidth::new(&program)?)));
        }
        Ok(match kernel {
            Kernel::Empirical => {
                let spec = MlpSpec::new(32)
                    .hidden(512, Activation::Relu)
                    .hidden(512, Activation::Relu)
                    .hidden(512, Activation::Relu);
                Model::Empirical(spec.init(&mut StdRng::seed_from_u64(42))?)
            }
            // Compiles on its first call and keeps the tapes for every later tile.
            Kernel::Infinite => Model::Infinite(Box::new(InfiniteWidth::new(&cnn()?)?)),
        })
    }

    /// The kernel between the rows of `a` and `b`.
    fn kernel(&self, a: &DMatrix<f64>, b: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        match self {
            Model::Empirical(net) => empirical_ntk(net, a, b),
            Model::Infinite(limit) => Ok(limit.kernels(a, b)?.ntk),
        }
    }

    /// The tile `rows` × `cols` of the kernel of `x` with itself, from those samples only.
    fn tile(
        &self,
        x: &DMatrix<f64>,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> ntk::Result<DMatrix<f64>> {
        match self {
            Model::Empirical(net) => empirical_ntk_block(net, x, x, rows, cols),
            Model::Infinite(_) => {
                let a = x.rows(rows.start, rows.len()).into_owned();
                let b = x.rows(cols.start, cols.len()).into_owned();
                self.kernel(&a, &b)
            }
        }
    }
}

/// The program of `--kernel infinite`: the 32 input columns as 8 positions × 4
/// channels, two circular 3-tap ReLU convolutions (σ_w 1.4, σ_b 0.1), average pooling.
fn cnn() -> ntk::Result<Program> {
    let mut p = Program::new(32);
    let mut z = (0..8)
        .map(|q| p.input(4 * q..4 * q + 4))
        .collect::<ntk::Result<Vec<_>>>()?;
    for _ in 0..2 {
        let (w, b) = (p.weight(1.4)?, p.bias(0.1)?);
        z = p
            .conv(w, &z, 3, Padding::Circular)?
            .into_iter()
            .map(|h| {
                let h = p.add_bias(h, b)?;
                p.apply(Activation::Relu, h)
            })
            .collect::<ntk::Result<_>>()?;
    }
    let pooled = p.mean(&z)?;
    p.output(pooled, 1.0)?;
    Ok(p)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// NumPy .npy, version 1.0: `numpy.load(path, mmap_mode='r')`.
    Npy,
    /// N × N little-endian f64, row-major, no header:
    /// `numpy.memmap(path, dtype='<f8', mode='r', shape=(n, n))`.
    Raw,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Npy => "npy",
            Format::Raw => "raw",
        })
    }
}

/// `HxW`, e.g. `32x32`.
fn image_size(text: &str) -> std::result::Result<(usize, usize), String> {
    let parse = |v: &str| v.trim().parse::<usize>().ok().filter(|&v| v > 0);
    match text.split_once(['x', 'X', '×']) {
        Some((h, w)) => parse(h)
            .zip(parse(w))
            .ok_or_else(|| format!("'{text}' is not HxW with positive whole numbers")),
        None => Err(format!("'{text}' is not HxW, e.g. 32x32")),
    }
}

fn at_least_one(text: &str) -> std::result::Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("must be a whole number ({e})")),
    }
}

fn main() -> ExitCode {
    support::report(run(Args::parse()))
}

/// Where the kernel's values start and how many bytes the file has.
struct Layout {
    n: usize,
    header: Vec<u8>,
    len: u64,
}

impl Layout {
    /// Checks that an N × N f64 kernel fits in a file and builds its header.
    fn new(n: usize, format: Format) -> Result<Self> {
        let bytes = n
            .checked_mul(n)
            .and_then(|v| v.checked_mul(8))
            .ok_or_else(|| format!("--n {n} is too large: N × N × 8 bytes overflow"))?;
        let header = match format {
            Format::Npy => npy_header(n, n),
            Format::Raw => Vec::new(),
        };
        Ok(Layout {
            n,
            len: (header.len() + bytes) as u64,
            header,
        })
    }

    /// Byte offset of entry (row, col).
    fn offset(&self, row: usize, col: usize) -> u64 {
        (self.header.len() + (row * self.n + col) * 8) as u64
    }
}

/// The header of a NumPy .npy file, format version 1.0, for a C-order `rows × cols`
/// array of little-endian f64: the magic string, the version, the header length, and
/// a Python dict literal padded with spaces and a newline so that the values start at
/// a multiple of 64 bytes (numpy's `lib.format` specification).
fn npy_header(rows: usize, cols: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    let unpadded = 6 + 2 + 2 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut header = Vec::with_capacity(total);
    header.extend_from_slice(b"\x93NUMPY\x01\x00");
    let dict_len = u16::try_from(total - 10).expect("a 2-D shape fits in a v1.0 header");
    header.extend_from_slice(&dict_len.to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header.resize(total - 1, b' ');
    header.push(b'\n');
    header
}

/// The data set: N points on the sphere of radius √d in d dimensions (32, or an
/// image's pixels × channels). An allocation that cannot succeed is an error naming
/// `--n`, not an abort.
fn inputs(n: usize, d: usize) -> Result<DMatrix<f64>> {
    let mut values = Vec::new();
    values.try_reserve_exact(n.saturating_mul(d)).map_err(|_| {
        format!(
            "--n {n}: cannot allocate the {n} × {d} inputs ({:.1} GB)",
            (n * d) as f64 * 8e-9
        )
    })?;
    values.extend((0..n * d).map(|k| (((k % n) * 31 + (k / n) * 17) as f64 * 0.618).sin()));
    let mut x = DMatrix::from_vec(n, d, values);
    for mut row in x.row_iter_mut() {
        let norm = row.norm();
        row *= (d as f64).sqrt() / norm;
    }
    Ok(x)
}

/// The output's directory must exist and the output must not be a directory.
fn check_out_path(out: &Path) -> Result {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(format!(
            "the directory of --out {} does not exist: {}",
            out.display(),
            dir.display()
        )
        .into());
    }
    if out.is_dir() {
        return Err(format!("--out {} is a directory", out.display()).into());
    }
    Ok(())
}

/// Refuses to write into an existing file that holds something else: a task must not
/// destroy another run's output, and all tasks of one run write the same header.
fn check_existing(path: &Path, layout: &Layout, format: Format) -> Result {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // does not exist yet
    };
    if meta.len() == 0 {
        return Ok(());
    }
    let what = match format {
        Format::Npy => "a .npy file of this run's shape",
        Format::Raw => "a raw kernel of this run's size",
    };
    let refuse = || -> Result {
        Err(format!(
            "--out {} exists and is not {what} ({} × {} f64); remove it or choose another path",
            path.display(),
            layout.n,
            layout.n
        )
        .into())
    };
    match format {
        Format::Raw if meta.len() != layout.len => refuse(),
        Format::Raw => Ok(()),
        Format::Npy => {
            // Another task may be writing the header right now: what is there must
            // be a prefix of ours.
            let mut start = vec![0; layout.header.len().min(meta.len() as usize)];
            File::open(path)
                .and_then(|mut f| f.read_exact(&mut start))
                .context(|| format!("cannot read --out {}", path.display()))?;
            if meta.len() > layout.len || !layout.header.starts_with(&start) {
                refuse()
            } else {
                Ok(())
            }
        }
    }
}

/// Writes `tile` at rows `r0..`, columns `c0..`.
fn write_tile(
    file: &mut File,
    layout: &Layout,
    r0: usize,
    c0: usize,
    tile: &DMatrix<f64>,
) -> std::io::Result<()> {
    let mut row = Vec::with_capacity(tile.ncols() * 8);
    for i in 0..tile.nrows() {
        row.clear();
        for v in tile.row(i).iter() {
            row.extend_from_slice(&v.to_le_bytes());
        }
        file.seek(SeekFrom::Start(layout.offset(r0 + i, c0)))?;
        file.write_all(&row)?;
    }
    Ok(())
}

/// Reads the tile at rows `r0..r0+h`, columns `c0..c0+w`.
fn read_tile(
    file: &mut File,
    layout: &Layout,
    (r0, c0): (usize, usize),
    (h, w): (usize, usize),
) -> std::io::Result<DMatrix<f64>> {
    let mut tile = DMatrix::zeros(h, w);
    let mut buf = vec![0u8; w * 8];
    for i in 0..h {
        file.seek(SeekFrom::Start(layout.offset(r0 + i, c0)))?;
        file.read_exact(&mut buf)?;
        for (j, chunk) in buf.chunks_exact(8).enumerate() {
            tile[(i, j)] = f64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
    }
    Ok(tile)
}

fn run(args: Args) -> Result {
    // Every flag is checked before the output is touched.
    if let Some(t) = args.task
        && t >= args.tasks
    {
        return Err(format!(
            "--task {t} is out of range: with --tasks {} the tasks are numbered 0 to {}",
            args.tasks,
            args.tasks - 1
        )
        .into());
    }
    let layout = Layout::new(args.n, args.format)?;
    let model = Model::new(args.kernel, args.arch, args.image)?;
    let dim = match args.arch {
        Some(_) => args.image.0 * args.image.1 * 3,
        None => 32,
    };
    let x = inputs(args.n, dim)?;

    let out = match (&args.out, args.direct) {
        (Some(path), _) => path.clone(),
        (None, false) => PathBuf::from("target/theta.npy"),
        (None, true) => PathBuf::new(),
    };
    let out = &out;
    let writes = !args.direct || args.out.is_some();
    if writes {
        check_out_path(out)?;
    }

    if args.direct {
        let start = Instant::now();
        let spinner = support::spinner(format!("{0} × {0} kernel in memory", args.n));
        let theta = model.kernel(&x, &x)?;
        spinner.finish_and_clear();
        println!(
            "direct: N = {}, {:.2} s, trace {:.6e}, output {:.2} GB",
            args.n,
            start.elapsed().as_secs_f64(),
            theta.trace(),
            (args.n * args.n * 8) as f64 / 1e9
        );
        if writes {
            let mut file =
                File::create(out).context(|| format!("cannot create --out {}", out.display()))?;
            file.write_all(&layout.header)
                .and_then(|()| file.set_len(layout.len))
                .and_then(|()| write_tile(&mut file, &layout, 0, 0, &theta))
                .context(|| format!("cannot write --out {}", out.display()))?;
            println!("wrote the kernel to {}", out.display());
        }
        return Ok(());
    }

    let tiles = args.n.div_ceil(args.tile);
    // The check recomputes the corner tiles and, where that is cheap, the whole kernel.
    let whole = args.arch.is_none() && args.n <= 4096;
    let range = |t: usize| t * args.tile..((t + 1) * args.tile).min(args.n);

    if args.check {
        let mut file = File::open(out)
            .context(|| format!("cannot open --out {} to check it", out.display()))?;
        let len = file
            .metadata()
            .context(|| format!("cannot read --out {}", out.display()))?
            .len();
        let mut header = vec![0; layout.header.len()];
        file.read_exact(&mut header)
            .context(|| format!("cannot read the header of --out {}", out.display()))?;
        if len != layout.len || header != layout.header {
            return Err(format!(
                "--out {} does not hold a {} × {} kernel in the {} format",
                out.display(),
                args.n,
                args.n,
                args.format
            )
            .into());
        }
        return check(&mut file, &layout, &model, &x, tiles, &range, out, whole);
    }

    check_existing(out, &layout, args.format)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(out)
        .context(|| format!("cannot open --out {} for writing", out.display()))?;
    file.write_all(&layout.header)
        .and_then(|()| {
            if file.metadata()?.len() < layout.len {
                file.set_len(layout.len)?;
            }
            Ok(())
        })
        .context(|| format!("cannot write --out {}", out.display()))?;

    let pairs: Vec<(usize, usize)> = (0..tiles)
        .flat_map(|i| (i..tiles).map(move |j| (i, j)))
        .collect();
    let mine: Vec<usize> = match args.task {
        Some(t) => (t..pairs.len()).step_by(args.tasks).collect(),
        None => (0..pairs.len()).collect(),
    };
    let start = Instant::now();
    let bar = support::progress(mine.len() as u64, format!("tiles of {}", args.tile));
    for &p in &mine {
        let (i, j) = pairs[p];
        let (ri, rj) = (range(i), range(j));
        let tile = model.tile(&x, ri.clone(), rj.clone())?;
        write_tile(&mut file, &layout, ri.start, rj.start, &tile)
            .and_then(|()| {
                if i == j {
                    return Ok(());
                }
                write_tile(&mut file, &layout, rj.start, ri.start, &tile.transpose())
            })
            .context(|| format!("cannot write tile ({i}, {j}) to --out {}", out.display()))?;
        bar.inc(1);
    }
    file.flush()
        .context(|| format!("cannot write --out {}", out.display()))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let entries: usize = mine
        .iter()
        .map(|&p| range(pairs[p].0).len() * range(pairs[p].1).len())
        .sum();
    println!(
        "wrote {} of {} tiles ({} × {} kernel, tile {}) to {} in {seconds:.2} s: {:.3} ms per entry computed",
        mine.len(),
        pairs.len(),
        args.n,
        args.n,
        args.tile,
        out.display(),
        seconds * 1e3 / entries.max(1) as f64
    );

    if args.task.is_none() && !args.no_check {
        check(&mut file, &layout, &model, &x, tiles, &range, out, whole)?;
    }
    Ok(())
}

/// A block of the kernel to check: its name, first row and column, and shape.
struct Block {
    name: String,
    origin: (usize, usize),
    shape: (usize, usize),
}

/// The corner tiles (and, when `whole`, the whole kernel) from the file against a
/// direct computation on just their rows and columns: one call, no file.
#[allow(clippy::too_many_arguments)]
fn check(
    file: &mut File,
    layout: &Layout,
    model: &Model,
    x: &DMatrix<f64>,
    tiles: usize,
    range: &dyn Fn(usize) -> std::ops::Range<usize>,
    out: &Path,
    whole: bool,
) -> Result {
    let last = tiles - 1;
    let mut blocks: Vec<Block> = [(0, 0), (0, last), (last, 0), (last, last)]
        .into_iter()
        .map(|(i, j)| {
            let (ri, rj) = (range(i), range(j));
            Block {
                name: format!("tile ({i}, {j})"),
                origin: (ri.start, rj.start),
                shape: (ri.len(), rj.len()),
            }
        })
        .collect();
    if whole {
        blocks.push(Block {
            name: "whole kernel".into(),
            origin: (0, 0),
            shape: (layout.n, layout.n),
        });
    }
    for Block {
        name,
        origin: (r0, c0),
        shape: (h, w),
    } in blocks
    {
        let from_file = read_tile(file, layout, (r0, c0), (h, w))
            .context(|| format!("cannot read {name} from --out {}", out.display()))?;
        let a = x.rows(r0, h).into_owned();
        let b = x.rows(c0, w).into_owned();
        let direct = model.kernel(&a, &b)?;
        let err = (&from_file - &direct).amax() / direct.amax();
        println!("{name}: max |file − direct| / max |direct| = {err:.1e}");
        if err.is_nan() || err > 1e-12 {
            return Err(format!(
                "{name} of --out {} differs from the direct computation by {err:e} (relative)",
                out.display()
            )
            .into());
        }
    }
    Ok(())
}
