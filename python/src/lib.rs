//! Python bindings of `ntk`: the compiled module `ntk._ntk`, re-exported by the Python
//! package `ntk` (`python/ntk/__init__.py`).
//!
//! Arrays come in as any numpy array-like (converted with one copy to nalgebra
//! matrices in the network's dtype) and go out as numpy arrays that own the Rust
//! buffers (no copy). Rust errors become `ValueError` (`MemoryError` for an allocation
//! that cannot be made), wrong types `TypeError`; a panic would become `RuntimeError`.
//! Every computation runs with the GIL released.

mod bench;
mod convert;
mod flow;
mod infinite;
mod network;
mod program;
mod spec;
mod train;
mod zoo;

use pyo3::prelude::*;

/// The compiled part of the `ntk` package: the Neural Tangent Kernel, computed in Rust.
#[pymodule]
fn _ntk(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<spec::MlpSpec>()?;
    m.add_class::<network::Network>()?;
    m.add_class::<network::Mlp>()?;
    m.add_class::<network::ProgramNetwork>()?;
    m.add_class::<network::GroupKernel>()?;
    m.add_class::<program::Program>()?;
    m.add_class::<program::Var>()?;
    m.add_class::<program::Weight>()?;
    m.add_class::<program::Bias>()?;
    m.add_class::<infinite::Kernels>()?;
    m.add_class::<infinite::InfiniteWidth>()?;
    m.add_class::<infinite::WidthPoint>()?;
    m.add_class::<infinite::WidthStudy>()?;
    m.add_class::<flow::GradientFlow>()?;
    m.add_class::<flow::KernelRegression>()?;
    m.add_class::<flow::GaussianPrediction>()?;
    m.add_class::<flow::InfiniteEnsemble>()?;
    m.add_class::<flow::KrylovFlow>()?;
    m.add_class::<train::GradientDescent>()?;
    m.add_class::<train::Trajectory>()?;
    m.add_function(wrap_pyfunction!(network::empirical_ntk, m)?)?;
    m.add_function(wrap_pyfunction!(network::empirical_ntk_full, m)?)?;
    m.add_function(wrap_pyfunction!(network::empirical_ntk_block, m)?)?;
    m.add_function(wrap_pyfunction!(infinite::infinite_width, m)?)?;
    m.add_function(wrap_pyfunction!(infinite::infinite_width_block, m)?)?;
    m.add_function(wrap_pyfunction!(infinite::infinite_width_groups, m)?)?;
    m.add_function(wrap_pyfunction!(infinite::width_convergence, m)?)?;
    m.add_function(wrap_pyfunction!(bench::_bench_rust, m)?)?;
    zoo::register(m)?;
    Ok(())
}
