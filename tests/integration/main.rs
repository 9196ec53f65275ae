//! Integration tests for `ntk`, in one binary (one link step for the whole suite).
//!
//! Every check compares against an independent reference: finite differences, the
//! explicit Jacobian, closed forms, pseudo-inverses and matrix exponentials computed
//! by nalgebra, or values computed by neural-tangents 0.6.5 (`tests/data/`). Every
//! model goes through one kernel contract (`contract.rs`); tolerances live in
//! `prec.rs`.

mod audit;
mod batch_norm;
mod cache;
mod common;
mod contract;
mod custom_model;
mod digits;
mod empirical;
mod flow;
mod images;
mod infinite;
mod never_silently_wrong;
mod parallel;
mod prec;
mod program;
mod program_guarantees;
mod random_programs;
mod shared_weights;
mod train;
mod training_dynamics;
mod transformer;
