//! A kernel too large to hold, computed tile by tile into a file, as a cluster job
//! array would: each task computes its tiles of Θ and writes them at their offsets.
//!
//! ```sh
//! # all tiles in this process (rayon runs the tiles' rows in parallel):
//! cargo run --release --example blockwise_kernel -- --n 4096 --tile 1024 --out target/theta.f64
//! # one task of a job array of 4 (e.g. --task "$SLURM_ARRAY_TASK_ID"):
//! cargo run --release --example blockwise_kernel -- --n 4096 --tile 1024 --tasks 4 --task 2
//! # the whole kernel in memory at once, to measure peak memory:
//! /usr/bin/time -v cargo run --release --example blockwise_kernel -- --n 16384 --direct
//! ```
//!
//! The file holds Θ as N × N little-endian `f64`, row-major. Tiles (I, J) with I ≤ J
//! are dealt round-robin to tasks; each writes its tile and, off the diagonal, the
//! mirrored tile. After all tasks, `--verify` recomputes a few tiles directly and
//! compares them with the file.

use std::error::Error;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Instant;

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, Mlp, MlpSpec, empirical_ntk, empirical_ntk_block};

struct Args {
    n: usize,
    tile: usize,
    tasks: usize,
    task: Option<usize>,
    out: String,
    direct: bool,
    verify: bool,
}

fn parse() -> Result<Args, Box<dyn Error>> {
    let mut a = Args {
        n: 4096,
        tile: 1024,
        tasks: 1,
        task: None,
        out: "target/theta.f64".into(),
        direct: false,
        verify: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = value()?.parse()?,
            "--tile" => a.tile = value()?.parse()?,
            "--tasks" => a.tasks = value()?.parse()?,
            "--task" => a.task = Some(value()?.parse()?),
            "--out" => a.out = value()?,
            "--direct" => a.direct = true,
            "--no-verify" => a.verify = false,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if a.tile == 0 || a.tasks == 0 {
        return Err("--tile and --tasks must be at least 1".into());
    }
    Ok(a)
}

/// The data set: N points on the sphere of radius √d in d = 32 dimensions.
fn inputs(n: usize) -> DMatrix<f64> {
    let d = 32;
    let mut x = DMatrix::from_fn(n, d, |i, j| ((i * 31 + j * 17) as f64 * 0.618).sin());
    for mut row in x.row_iter_mut() {
        let norm = row.norm();
        row *= (d as f64).sqrt() / norm;
    }
    x
}

/// Writes `tile` at rows `r0..`, columns `c0..` of the N × N row-major file.
fn write_tile(
    file: &mut std::fs::File,
    n: usize,
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
        file.seek(SeekFrom::Start((((r0 + i) * n + c0) * 8) as u64))?;
        file.write_all(&row)?;
    }
    Ok(())
}

/// Reads the tile at rows `r0..r0+h`, columns `c0..c0+w`.
fn read_tile(
    file: &mut std::fs::File,
    n: usize,
    (r0, c0): (usize, usize),
    (h, w): (usize, usize),
) -> std::io::Result<DMatrix<f64>> {
    let mut tile = DMatrix::zeros(h, w);
    let mut buf = vec![0u8; w * 8];
    for i in 0..h {
        file.seek(SeekFrom::Start((((r0 + i) * n + c0) * 8) as u64))?;
        file.read_exact(&mut buf)?;
        for (j, chunk) in buf.chunks_exact(8).enumerate() {
            tile[(i, j)] = f64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
    }
    Ok(tile)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse()?;
    let spec = MlpSpec::new(32)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Relu)
        .hidden(512, Activation::Relu);
    let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(42))?;
    let x = inputs(args.n);

    if args.direct {
        let start = Instant::now();
        let theta = empirical_ntk(&net, &x, &x)?;
        println!(
            "direct: N = {}, {:.2} s, trace {:.6e}, output {:.2} GB",
            args.n,
            start.elapsed().as_secs_f64(),
            theta.trace(),
            (args.n * args.n * 8) as f64 / 1e9
        );
        return Ok(());
    }

    let tiles = args.n.div_ceil(args.tile);
    let range = |t: usize| t * args.tile..((t + 1) * args.tile).min(args.n);
    let pairs: Vec<(usize, usize)> = (0..tiles)
        .flat_map(|i| (i..tiles).map(move |j| (i, j)))
        .collect();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&args.out)?;
    file.set_len((args.n * args.n * 8) as u64)?;

    let start = Instant::now();
    let mine: Vec<usize> = match args.task {
        Some(t) if t >= args.tasks => {
            return Err(format!("--task {t} >= --tasks {}", args.tasks).into());
        }
        Some(t) => (t..pairs.len()).step_by(args.tasks).collect(),
        None => (0..pairs.len()).collect(),
    };
    for &p in &mine {
        let (i, j) = pairs[p];
        let (ri, rj) = (range(i), range(j));
        let tile = empirical_ntk_block(&net, &x, &x, ri.clone(), rj.clone())?;
        write_tile(&mut file, args.n, ri.start, rj.start, &tile)?;
        if i != j {
            write_tile(&mut file, args.n, rj.start, ri.start, &tile.transpose())?;
        }
    }
    file.flush()?;
    println!(
        "wrote {} of {} tiles ({} × {} kernel, tile {}) to {} in {:.2} s",
        mine.len(),
        pairs.len(),
        args.n,
        args.n,
        args.tile,
        args.out,
        start.elapsed().as_secs_f64()
    );

    if args.verify && args.task.is_none() {
        // Spot-check: the first, last and a mirrored tile against a direct computation
        // on just their rows and columns (a different code path: one call, no file).
        let last = tiles - 1;
        for (i, j) in [(0, 0), (0, last), (last, 0), (last, last)] {
            let (ri, rj) = (range(i), range(j));
            let from_file = read_tile(
                &mut file,
                args.n,
                (ri.start, rj.start),
                (ri.len(), rj.len()),
            )?;
            let a = x.rows(ri.start, ri.len()).into_owned();
            let b = x.rows(rj.start, rj.len()).into_owned();
            let direct = empirical_ntk(&net, &a, &b)?;
            let err = (&from_file - &direct).amax() / direct.amax();
            println!("tile ({i}, {j}): max |file − direct| / max |direct| = {err:.1e}");
            if err > 1e-12 {
                return Err(format!("tile ({i}, {j}) differs by {err:e}").into());
            }
        }
        if args.n <= 4096 {
            // Small enough to hold: the whole file against the kernel computed at once.
            let whole = read_tile(&mut file, args.n, (0, 0), (args.n, args.n))?;
            let direct = empirical_ntk(&net, &x, &x)?;
            let err = (&whole - &direct).amax() / direct.amax();
            println!("whole file vs in-memory kernel: {err:.1e}");
            if err > 1e-12 {
                return Err(format!("assembled kernel differs by {err:e}").into());
            }
        }
    }
    Ok(())
}
