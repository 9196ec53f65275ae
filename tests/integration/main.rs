//! Integration tests for `ntk`, in one binary (one link step for the whole suite).
//!
//! Every check compares against an independent reference: finite differences, the
//! explicit Jacobian, closed forms, or values computed by neural-tangents 0.6.5
//! (`tests/data/neural_tangents.json`).

mod common;
mod custom_model;
mod empirical;
mod flow;
mod infinite;
mod never_silently_wrong;
mod parallel;
mod shared_weights;
mod train;
