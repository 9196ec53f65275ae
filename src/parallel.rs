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
