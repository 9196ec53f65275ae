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

/// `f` applied to every item for its side effects.
pub(crate) fn for_each<I: Sync>(items: &[I], f: impl Fn(&I) + Sync + Send) {
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        items.par_iter().for_each(f);
    }
    #[cfg(not(feature = "parallel"))]
    {
        items.iter().for_each(f);
    }
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

/// Runs `f` and `g`, in parallel with the `parallel` feature.
pub(crate) fn join<RF: Send, RG: Send>(
    f: impl FnOnce() -> RF + Send,
    g: impl FnOnce() -> RG + Send,
) -> (RF, RG) {
    #[cfg(feature = "parallel")]
    {
        rayon::join(f, g)
    }
    #[cfg(not(feature = "parallel"))]
    {
        (f(), g())
    }
}
