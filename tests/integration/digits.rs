//! The handwritten digits of `examples/digits.rs` (`examples/support/digits.rs`, included
//! here): the shipped data against counts taken from the file independently, the split,
//! kernel regression against its primal form and a known rule, and an accuracy floor.

#[path = "../../examples/support/digits.rs"]
mod data;

use ntk::nalgebra::DMatrix;
use ntk::{Activation, MlpSpec, infinite_width, zoo};

use crate::common::gaussian;
use crate::prec;

/// Counted from `examples/data/digits.csv` with Python's `csv` module (see
/// `examples/data/README.md`).
const LABEL_COUNTS: [usize; 10] = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180];
const PIXEL_SUM: u64 = 561_718;
/// The first line of the file.
const FIRST_IMAGE: [u8; 64] = [
    0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0,
    8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6,
    13, 10, 0, 0, 0,
];

#[test]
fn digits_load_with_the_counts_of_the_file() {
    let d = data::load().unwrap();
    assert_eq!(d.pixels.shape(), (1797, 64));
    assert_eq!(d.labels.len(), 1797);
    let mut counts = [0; 10];
    for &l in &d.labels {
        counts[l] += 1;
    }
    assert_eq!(counts, LABEL_COUNTS);
    // Integers (the parser reads u8), so the conversions are exact.
    assert_eq!(d.pixels.iter().map(|&v| v as u64).sum::<u64>(), PIXEL_SUM);
    assert_eq!((d.pixels.min() as u8, d.pixels.max() as u8), (0, 16));
    let first: Vec<f64> = FIRST_IMAGE.iter().map(|&v| f64::from(v)).collect();
    assert_eq!(d.pixels.row(0).iter().copied().collect::<Vec<_>>(), first);
    assert_eq!(d.labels[0], 0);
    assert_eq!(d.labels[1796], 8);
}

#[test]
fn digits_parse_rejects_malformed_lines_naming_them() {
    let good = format!("{}7", "1,".repeat(64));
    assert_eq!(data::parse(&good).unwrap().labels, vec![7]);
    let cases = [
        (format!("{good}\n{}7", "1,".repeat(63)), "line 2", "fields"),
        (
            format!("{}3", "17,".repeat(64)),
            "line 1, field 1",
            "at most 16",
        ),
        (format!("{}10", "1,".repeat(64)), "field 65", "at most 9"),
        (
            format!("{good}\n{}x", "1,".repeat(64)),
            "line 2, field 65",
            "integer",
        ),
        (format!("{}-1,2", "1,".repeat(63)), "field 64", "integer"),
        (String::new(), "no lines", "no lines"),
    ];
    for (csv, place, reason) in cases {
        let message = data::parse(&csv).unwrap_err().to_string();
        assert!(
            message.contains(place) && message.contains(reason),
            "{message}"
        );
    }
}

#[test]
fn digits_split_is_deterministic_disjoint_and_complete() {
    let a = data::split(1797, data::N_TRAIN, data::N_TEST, 0).unwrap();
    assert_eq!(
        a,
        data::split(1797, data::N_TRAIN, data::N_TEST, 0).unwrap()
    );
    assert_eq!((a.train.len(), a.test.len()), (1000, 797));
    let mut all: Vec<usize> = a.train.iter().chain(&a.test).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..1797).collect::<Vec<_>>());
    // Shuffled: not the identity order, and another seed gives another split.
    assert_ne!(a.train, (0..1000).collect::<Vec<_>>());
    let b = data::split(1797, data::N_TRAIN, data::N_TEST, 1).unwrap();
    assert_ne!(a.train, b.train);
    // A smaller split draws the same order: its training images lead the larger one's.
    let small = data::split(1797, 300, 100, 0).unwrap();
    assert_eq!(small.train, a.train[..300]);
    assert_eq!(small.test, a.train[300..400]);
    assert!(data::split(10, 8, 3, 0).is_err());
    assert!(data::split(10, 0, 3, 0).is_err());
}

#[test]
fn digits_standardise_uses_the_training_pixels() {
    let d = data::load().unwrap();
    let split = data::split(1797, 500, 100, 3).unwrap();
    let x = data::standardise(&d.pixels, &split.train).unwrap();
    let train = x.select_rows(&split.train);
    let n = train.len() as f64;
    let mean = train.sum() / n;
    let var = train.map(|v| (v - mean).powi(2)).sum() / n;
    assert!(mean.abs() < prec::EXACT_F64, "{mean}");
    assert!((var - 1.0).abs() < prec::EXACT_F64, "{var}");
    // An affine map of every pixel: two pixel values fix it for all.
    let (a, b) = (d.pixels[(0, 2)], d.pixels[(0, 3)]);
    let scale = (x[(0, 3)] - x[(0, 2)]) / (b - a);
    for (raw, std) in d.pixels.iter().zip(x.iter()) {
        assert!((x[(0, 2)] + scale * (raw - a) - std).abs() < prec::EXACT_F64);
    }
    assert!(data::standardise(&DMatrix::zeros(3, 64), &[0, 1]).is_err());
}

#[test]
fn digits_classes_and_accuracy() {
    let scores = DMatrix::from_row_slice(3, 3, &[0.1, 0.7, 0.2, 0.5, 0.5, -1.0, -3.0, -2.0, -1.0]);
    // Ties go to the first class.
    assert_eq!(data::classes(&scores).unwrap(), vec![1, 0, 2]);
    let accuracy = data::accuracy(&scores, &[1, 1, 2]).unwrap();
    assert!((accuracy - 2.0 / 3.0).abs() < prec::ROUND_OFF, "{accuracy}");
    assert!(data::accuracy(&scores, &[1, 1]).is_err());
    let mut bad = scores.clone();
    bad[(2, 1)] = f64::NAN;
    assert!(data::accuracy(&bad, &[1, 0, 2]).is_err());
    let mut y = DMatrix::zeros(2, 10);
    (y[(0, 2)], y[(1, 0)]) = (1.0, 1.0);
    assert_eq!(data::one_hot(&[2, 0]), y);
}

#[test]
fn digits_kernel_regression_is_primal_ridge_regression() {
    // K*(K + ρI)⁻¹Y = X*(XᵀX + ρI)⁻¹XᵀY with ρ = r tr(K)/N: the primal solve, by LU.
    let (x, x_test, y) = (gaussian(40, 12, 5), gaussian(7, 12, 6), gaussian(40, 3, 7));
    let (k, k_test) = (&x * x.transpose(), &x_test * x.transpose());
    let r = 0.3;
    let rho = r * k.trace() / 40.0;
    let gram = x.transpose() * &x + DMatrix::identity(12, 12) * rho;
    let beta = gram.lu().solve(&(x.transpose() * &y)).unwrap();
    let expected = &x_test * beta;
    let got = data::predict(&k, &y, &k_test, r).unwrap();
    assert!(
        (&got - &expected).norm() < prec::EXACT_F64 * expected.norm(),
        "{got} {expected}"
    );
}

#[test]
fn digits_kernel_regression_recovers_a_linear_rule() {
    // Noise-free targets Y = X B, more points than dimensions: a tiny ridge recovers B,
    // so new points get X* B, and classes by argmax follow the rule.
    let (x, x_test, b) = (
        gaussian(200, 10, 8),
        gaussian(50, 10, 9),
        gaussian(10, 10, 10),
    );
    let (k, k_test) = (&x * x.transpose(), &x_test * x.transpose());
    let got = data::predict(&k, &(&x * &b), &k_test, 1e-9).unwrap();
    let expected = &x_test * &b;
    let error = (&got - &expected).norm() / expected.norm();
    assert!(error < prec::RIDGE_RECOVERY, "{error}");
    let labels = data::classes(&expected).unwrap();
    assert_eq!(data::classes(&got).unwrap(), labels);
}

#[test]
fn digits_tiny_ridge_fits_the_training_images() {
    let d = data::load().unwrap();
    let rows: Vec<usize> = (0..150).collect();
    let x = data::standardise(&d.pixels, &rows)
        .unwrap()
        .select_rows(&rows);
    let labels = d.labels_of(&rows);
    let spec = MlpSpec::new(64)
        .hidden(1, Activation::Relu)
        .weight_std(2f64.sqrt())
        .bias_std(0.1);
    let k = infinite_width(&spec, &x, &x).unwrap();
    let y = data::one_hot(&labels);
    for kernel in [&k.nngp, &k.ntk] {
        let fitted = data::predict(kernel, &y, kernel, 1e-10).unwrap();
        let error = (&fitted - &y).amax();
        assert!(error < prec::RIDGE_RECOVERY, "{error}");
        assert_eq!(data::classes(&fitted).unwrap(), labels);
        // A huge ridge ρ = r tr(K)/N: (K + ρI)⁻¹ = ρ⁻¹(I − K/ρ + …), so f → K Y/ρ, to
        // a relative λ_max/ρ ≤ N/r = 1.5e-4.
        let r = 1e6;
        let rho = r * kernel.trace() / 150.0;
        let shrunk = data::predict(kernel, &y, kernel, r).unwrap();
        let limit = kernel * &y / rho;
        let error = (&shrunk - &limit).norm() / limit.norm();
        assert!(error < 150.0 / r, "{error}");
    }
}

/// The standardised first `n_train` and next `n_test` images of the seed-0 split, and
/// their labels.
fn subset(n_train: usize, n_test: usize) -> (DMatrix<f64>, DMatrix<f64>, Vec<usize>, Vec<usize>) {
    let d = data::load().unwrap();
    let split = data::split(1797, n_train, n_test, 0).unwrap();
    let x = data::standardise(&d.pixels, &split.train).unwrap();
    (
        x.select_rows(&split.train),
        x.select_rows(&split.test),
        d.labels_of(&split.train),
        d.labels_of(&split.test),
    )
}

#[test]
fn digits_mlp_ntk_classifies_most_test_images() {
    let (x_train, x_test, train_labels, test_labels) = subset(300, 500);
    let spec = MlpSpec::new(64)
        .hidden(1, Activation::Relu)
        .weight_std(2f64.sqrt())
        .bias_std(0.1);
    let k_train = infinite_width(&spec, &x_train, &x_train).unwrap();
    let k_test = infinite_width(&spec, &x_test, &x_train).unwrap();
    let ridges = data::ridges();
    let fit = data::classify(
        &k_train.ntk,
        &k_test.ntk,
        &train_labels,
        &test_labels,
        60,
        &ridges,
    )
    .unwrap();
    assert!(fit.test >= 0.9, "{fit:?}");
    assert!(fit.validation >= 0.9, "{fit:?}");
    assert!(ridges.contains(&fit.ridge));
    // The refit is kernel regression on all training images with the chosen ridge.
    let direct = data::predict(
        &k_train.ntk,
        &data::one_hot(&train_labels),
        &k_test.ntk,
        fit.ridge,
    )
    .unwrap();
    let accuracy = data::accuracy(&direct, &test_labels).unwrap();
    assert!(
        (accuracy - fit.test).abs() < prec::ROUND_OFF,
        "{accuracy} {fit:?}"
    );
    // A ridge far too large predicts almost the class frequencies: much worse.
    let flat = data::classify(
        &k_train.ntk,
        &k_test.ntk,
        &train_labels,
        &test_labels,
        60,
        &[1e6],
    )
    .unwrap();
    assert!(flat.test < fit.test - 0.1, "{flat:?} {fit:?}");
    assert!(
        data::classify(
            &k_train.ntk,
            &k_test.ntk,
            &train_labels,
            &test_labels,
            300,
            &ridges
        )
        .is_err()
    );
}

#[test]
fn digits_myrtle_kernels_classify_most_test_images() {
    // About 2 s: the Myrtle kernels cost ~50 µs per entry (on 8 × 8 images).
    let (x_train, x_test, train_labels, test_labels) = subset(150, 100);
    let myrtle = zoo::myrtle(5, (data::SIDE, data::SIDE), 1).unwrap();
    let k_train = infinite_width(&myrtle, &x_train, &x_train).unwrap();
    let k_test = infinite_width(&myrtle, &x_test, &x_train).unwrap();
    for (a, b) in [(&k_train.nngp, &k_test.nngp), (&k_train.ntk, &k_test.ntk)] {
        let fit = data::classify(a, b, &train_labels, &test_labels, 30, &data::ridges()).unwrap();
        assert!(fit.test >= 0.9, "{fit:?}");
    }
}
