//! Parallel and single-threaded runs give the same kernels, and infinite-width kernels
//! assembled from blocks equal the kernel computed at once (`empirical_ntk_block` is
//! checked by the kernel contract on every model).

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Mlp, MlpSpec, empirical_ntk, empirical_ntk_block, empirical_ntk_full,
    infinite_width, infinite_width_block,
};

use crate::common::rel_err;
use crate::prec;

fn net_and_data() -> (Mlp<f64>, DMatrix<f64>, DMatrix<f64>) {
    let spec = MlpSpec::new(5)
        .hidden(48, Activation::Gelu)
        .hidden(32, Activation::Relu)
        .bias_std(0.2)
        .outputs(2);
    let net = spec.init(&mut StdRng::seed_from_u64(11)).unwrap();
    let x1 = DMatrix::from_fn(700, 5, |i, j| ((i * 5 + j) as f64 * 0.013).sin());
    let x2 = DMatrix::from_fn(530, 5, |i, j| ((i + 3 * j) as f64 * 0.029).cos());
    (net, x1, x2)
}

fn single_threaded<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(f)
}

#[test]
fn one_thread_and_many_agree() {
    let (net, x1, x2) = net_and_data();
    let par = empirical_ntk(&net, &x1, &x2).unwrap();
    let seq = single_threaded(|| empirical_ntk(&net, &x1, &x2).unwrap());
    assert!(rel_err(&par, &seq) <= prec::EXACT_F64);
    let par = empirical_ntk_full(&net, &x1, &x1).unwrap();
    let seq = single_threaded(|| empirical_ntk_full(&net, &x1, &x1).unwrap());
    assert!(rel_err(&par, &seq) <= prec::EXACT_F64);
}

#[test]
fn infinite_width_blocks_assemble_into_the_kernels() {
    let (net, x1, _) = net_and_data();
    let spec = net.spec();
    let x = x1.rows(0, 90).into_owned();
    let whole = infinite_width(spec, &x, &x).unwrap();
    let (mut nngp, mut ntk) = (DMatrix::zeros(90, 90), DMatrix::zeros(90, 90));
    let cuts = [0, 29, 30, 90];
    for r in cuts.windows(2) {
        for c in cuts.windows(2) {
            let block = infinite_width_block(spec, &x, &x, r[0]..r[1], c[0]..c[1]).unwrap();
            let shape = (r[1] - r[0], c[1] - c[0]);
            nngp.view_mut((r[0], c[0]), shape).copy_from(&block.nngp);
            ntk.view_mut((r[0], c[0]), shape).copy_from(&block.ntk);
        }
    }
    assert!(rel_err(&nngp, &whole.nngp) <= prec::EXACT_F64);
    assert!(rel_err(&ntk, &whole.ntk) <= prec::EXACT_F64);
    assert!(infinite_width_block(spec, &x, &x, 0..91, 0..3).is_err());
}

#[test]
fn out_of_range_blocks_are_errors() {
    let (net, x1, x2) = net_and_data();
    let n = x1.nrows();
    assert!(empirical_ntk_block(&net, &x1, &x2, 0..n + 1, 0..3).is_err());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 5..2;
    let err = empirical_ntk_block(&net, &x1, &x2, 0..3, reversed).unwrap_err();
    assert!(err.to_string().contains("cols"), "{err}");
}
