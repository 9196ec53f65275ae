//! Data parallelism over independent work items: rayon's pool with the `parallel`
//! feature (the default), a plain loop without it.
//!
//! The thread count is rayon's: `RAYON_NUM_THREADS`, or run the call inside
//! `rayon::ThreadPool::install` to choose it per call. GEMMs inside each work item run
//! single-threaded, so the two never compete for cores.

/// `f` applied to every item, results in order.
pub(crate) fn map<I: Sync, R: Send>(items: &[I], f: impl Fn(&I) -> R + Sync + Send) -> Vec<R> {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        items.par_iter().map(f).collect()
    }
    #[cfg(not(feature = "parallel"))]
    {
        items.iter().map(f).collect()
    }
}

/// `f(chunk)` for every chunk of `chunk` consecutive elements of `a` (the last one
/// possibly shorter), in parallel with the `parallel` feature.
pub(crate) fn for_each_chunk<A: Send>(
    a: &mut [A],
    chunk: usize,
    f: impl Fn(&mut [A]) + Sync + Send,
) {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        a.par_chunks_mut(chunk).for_each(f);
    }
    #[cfg(not(feature = "parallel"))]
    a.chunks_mut(chunk).for_each(f);
}

/// `f(k, a_k, b_k)` for the k-th pair of disjoint chunks of `a` and `b` (`chunk`
/// elements of `a`, `chunk_b` of `b`, the last ones possibly shorter), in parallel
/// with the `parallel` feature: each chunk is written by exactly one call.
pub(crate) fn for_each_chunk_pair<A: Send, B: Send>(
    a: &mut [A],
    chunk: usize,
    b: &mut [B],
    chunk_b: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        a.par_chunks_mut(chunk)
            .zip(b.par_chunks_mut(chunk_b))
            .enumerate()
            .for_each(|(k, (a, b))| f(k, a, b));
    }
    #[cfg(not(feature = "parallel"))]
    {
        a.chunks_mut(chunk)
            .zip(b.chunks_mut(chunk_b))
            .enumerate()
            .for_each(|(k, (a, b))| f(k, a, b));
    }
}

/// `f(b, block)` for every block of `width` consecutive columns of `m` (the last one
/// may be narrower): disjoint mutable views of the column-major storage, handed to
/// rayon's `par_chunks_mut` with the `parallel` feature and to `chunks_mut` without.
pub(crate) fn for_each_column_block<T: nalgebra::Scalar + Send>(
    m: &mut nalgebra::DMatrix<T>,
    width: usize,
    f: impl Fn(usize, nalgebra::DMatrixViewMut<'_, T>) + Sync + Send,
) {
    let rows = m.nrows();
    if m.is_empty() || width == 0 {
        return;
    }
    let block = |(b, data): (usize, &mut [T])| {
        let cols = data.len() / rows;
        f(b, nalgebra::DMatrixViewMut::from_slice(data, rows, cols));
    };
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        m.as_mut_slice()
            .par_chunks_mut(rows * width)
            .enumerate()
            .for_each(block);
    }
    #[cfg(not(feature = "parallel"))]
    m.as_mut_slice()
        .chunks_mut(rows * width)
        .enumerate()
        .for_each(block);
}

/// `a()` and `b()`: in parallel (`rayon::join`) with the `parallel` feature, one after
/// the other without.
pub(crate) fn join<RA: Send, RB: Send>(
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    #[cfg(feature = "parallel")]
    {
        rayon::join(a, b)
    }
    #[cfg(not(feature = "parallel"))]
    {
        (a(), b())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every column is handed out exactly once, in blocks of `width` (the last one
    /// narrower), with the block's index.
    #[test]
    #[allow(clippy::float_cmp, reason = "small integers, exact")]
    fn column_blocks_cover_every_column_once() {
        for (cols, width) in [(10, 3), (9, 3), (1, 4), (0, 2)] {
            let mut m = nalgebra::DMatrix::<f64>::zeros(4, cols);
            for_each_column_block(&mut m, width, |b, mut block| {
                assert!(block.ncols() <= width);
                for (j, mut col) in block.column_iter_mut().enumerate() {
                    col.add_scalar_mut((b * width + j) as f64 + 1.0);
                }
            });
            for (j, col) in m.column_iter().enumerate() {
                assert!(col.iter().all(|&v| v == (j + 1) as f64), "{cols} {width}");
            }
        }
    }
}
