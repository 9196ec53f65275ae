//! Images: zero (`'SAME'`) padding, strides and average pooling windows, against
//! neural-tangents' `kernel_fn` (`tests/data/images.json`), finite differences through
//! the padded windows, and the n^{−1/2} convergence of a finite zero-padded CNN to its
//! limit.

use ntk::nalgebra::DMatrix;
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{Activation, Padding, Program, Var, width_convergence, zoo};
use serde_json::Value;

use crate::common;
use crate::contract;
use crate::prec;

fn reference() -> Value {
    serde_json::from_str(include_str!("../data/images.json")).expect("parses")
}

/// The network a reference case's `layers` describe, on its images (NHWC rows).
fn network(a: &Value) -> Program {
    let image: Vec<usize> = a["image"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (w_std, b_std) = (a["W_std"].as_f64().unwrap(), a["b_std"].as_f64().unwrap());
    let (mut shape, channels) = ((image[0], image[1]), image[2]);
    let mut p = Program::new(shape.0 * shape.1 * channels);
    let mut z: Vec<Var> = (0..shape.0 * shape.1)
        .map(|q| p.input(q * channels..(q + 1) * channels).unwrap())
        .collect();
    let usize_at = |l: &Value, i: usize| l[i].as_u64().unwrap() as usize;
    for layer in a["layers"].as_array().unwrap() {
        match layer[0].as_str().unwrap() {
            "conv" => {
                let padding = match layer[5].as_str().unwrap() {
                    "SAME" => Padding::Same,
                    "VALID" => Padding::Valid,
                    "CIRCULAR" => Padding::Circular,
                    other => panic!("padding {other}"),
                };
                let w = p.weight(w_std).unwrap();
                let b = (b_std > 0.0).then(|| p.bias(b_std).unwrap());
                let taps = (usize_at(layer, 1), usize_at(layer, 2));
                let strides = (usize_at(layer, 3), usize_at(layer, 4));
                let (hs, out) = p
                    .conv2d_strided(w, &z, shape, taps, strides, padding)
                    .unwrap();
                shape = out;
                z = hs
                    .into_iter()
                    .map(|h| b.map_or(h, |b| p.add_bias(h, b).unwrap()))
                    .collect();
            }
            "relu" | "erf" => {
                let act = if layer[0] == "relu" {
                    Activation::Relu
                } else {
                    Activation::Erf
                };
                z = z
                    .into_iter()
                    .map(|h| p.apply(act.clone(), h).unwrap())
                    .collect();
            }
            "avgpool" => {
                let window = (usize_at(layer, 1), usize_at(layer, 2));
                let strides = (usize_at(layer, 3), usize_at(layer, 4));
                (z, shape) = p.avg_pool2d(&z, shape, window, strides).unwrap();
            }
            "gap" => z = vec![p.mean(&z).unwrap()],
            "flatten" => z = vec![p.concat(&z).unwrap()],
            other => panic!("layer {other}"),
        }
    }
    assert_eq!(
        z.len(),
        1,
        "the description ends in a readout of one variable"
    );
    p.output(z[0], w_std).unwrap();
    p
}

/// SAME 3×3 and 3×2 convolutions with biases, a 2×2 stride-1 pooling window and
/// global average pooling, as neural-tangents computes them.
#[test]
fn same_padding_and_pooling_windows_match_neural_tangents() {
    let data = reference();
    let c = common::reference_case(&data, "public_same_relu_gap");
    common::assert_matches_reference(
        &network(&c["architecture"]),
        c,
        prec::NEURAL_TANGENTS_ROUND_OFF,
    );
}

/// A strided SAME convolution into Flatten.
#[test]
fn strided_same_convolution_matches_neural_tangents() {
    let data = reference();
    let c = common::reference_case(&data, "public_strided_flatten");
    common::assert_matches_reference(
        &network(&c["architecture"]),
        c,
        prec::NEURAL_TANGENTS_ROUND_OFF,
    );
}

/// neural-tangents' Myrtle-5 on 8×8×3 images is `zoo::myrtle(5, (8, 8), 3)`.
#[test]
fn myrtle5_matches_neural_tangents() {
    let data = reference();
    let c = common::reference_case(&data, "public_myrtle5_8");
    assert_eq!(c["myrtle_depth"], 5);
    common::assert_matches_reference(
        &zoo::myrtle(5, (8, 8), 3).unwrap(),
        c,
        prec::NEURAL_TANGENTS_ROUND_OFF,
    );
}

/// Our own cases from neural-tangents' `kernel_fn` (`bench/images_reference.py`): SAME
/// with odd and even filters, strided SAME and VALID convolutions, pooling windows,
/// Flatten and global-average readouts, and Myrtle-5 on 16 × 16 and 32 × 32 images
/// (computed by the array engine: 1,024 positions per side of a pair).
#[test]
fn padding_strides_pooling_and_myrtle_at_full_size_match_neural_tangents() {
    let data: Value = serde_json::from_str(include_str!("../data/images_nt.json")).expect("parses");
    let cases = data["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6, "every case is run");
    for c in cases {
        let program = match c["myrtle_depth"].as_u64() {
            Some(depth) => {
                let image = &c["architecture"]["image"];
                let dim = |i: usize| image[i].as_u64().unwrap() as usize;
                zoo::myrtle(depth as usize, (dim(0), dim(1)), dim(2)).unwrap()
            }
            None => network(&c["architecture"]),
        };
        // Flatten reads only the pairs of a position with itself: within one image
        // their correlation is 1, where neural-tangents' arccos carries ~√ε round-off.
        let flattened = c["architecture"]["layers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|layer| layer[0] == "flatten"));
        let within = if flattened {
            prec::NEURAL_TANGENTS
        } else {
            prec::NEURAL_TANGENTS_ROUND_OFF
        };
        let (x, x2) = (common::matrix(&c["x"]), common::matrix(&c["x2"]));
        let k = ntk::infinite_width(&program, &x, &x).unwrap();
        let cross = ntk::infinite_width(&program, &x2, &x).unwrap();
        for (got, key, tol) in [
            (&k.nngp, "nngp", within),
            (&k.ntk, "ntk", within),
            (&cross.nngp, "nngp_x2_x", prec::NEURAL_TANGENTS_ROUND_OFF),
            (&cross.ntk, "ntk_x2_x", prec::NEURAL_TANGENTS_ROUND_OFF),
        ] {
            let err = common::rel_err(got, &common::matrix(&c[key]));
            assert!(err < tol, "{} {key}: relative error {err:e}", c["name"]);
        }
    }
}

/// Zero padding, strides and pooling in the finite network: its Jacobian, VJP and
/// kernels against finite differences and explicit contractions (the kernel contract),
/// with three outputs.
#[test]
fn padded_strided_pooled_networks_satisfy_the_kernel_contract() {
    let (h, w, c) = (5, 4, 2);
    let mut p = Program::new(h * w * c);
    let pixels: Vec<Var> = (0..h * w)
        .map(|q| p.input(q * c..(q + 1) * c).unwrap())
        .collect();
    let (w1, b1) = (p.weight(1.4).unwrap(), p.bias(0.2).unwrap());
    let (hs, shape) = p
        .conv2d_strided(w1, &pixels, (h, w), (3, 2), (2, 1), Padding::Same)
        .unwrap();
    let zs: Vec<Var> = hs
        .into_iter()
        .map(|x| {
            let x = p.add_bias(x, b1).unwrap();
            p.apply(Activation::Tanh, x).unwrap()
        })
        .collect();
    let (pooled, shape) = p.avg_pool2d(&zs, shape, (2, 2), (1, 1)).unwrap();
    let w2 = p.weight(1.1).unwrap();
    let (ys, _) = p.conv2d(w2, &pooled, shape, (2, 2), Padding::Same).unwrap();
    let flat = p.concat(&ys).unwrap();
    p.readout(flat, ntk::Readout::new(1.0).outputs(3)).unwrap();
    let net = p.init::<f64>(6, &mut StdRng::seed_from_u64(5)).unwrap();
    let report = contract::check_ntk_model(&net, &contract::Batches::random(h * w * c, 9));
    assert!(report.is_ok(), "{report:?}");
}

/// A finite CNN with zero padding converges to its limit at rate n^{−1/2}.
#[test]
fn finite_zero_padded_cnns_converge_at_rate_one_over_root_width() {
    let p = zoo::Cnn::sequence(5, 2)
        .padding(Padding::Same)
        .layers(2)
        .activation(Activation::Erf)
        .program()
        .unwrap();
    let x = common::inputs(3, 10, 7);
    let study = width_convergence(&p, &x, &[128, 512, 2048], &[1, 2, 3, 4, 5, 6]).unwrap();
    common::assert_root_width_rate(&study, 0.15);
}

/// Bad windows are errors.
#[test]
fn bad_windows_are_errors() {
    let mut p = Program::new(4 * 2);
    let z: Vec<Var> = (0..4).map(|q| p.input(2 * q..2 * q + 2).unwrap()).collect();
    let w = p.weight(1.0).unwrap();
    assert!(
        p.conv2d_strided(w, &z, (2, 2), (2, 2), (0, 1), Padding::Same)
            .is_err()
    );
    assert!(p.conv2d(w, &z, (2, 3), (2, 2), Padding::Same).is_err());
    assert!(p.avg_pool2d(&z, (2, 2), (3, 1), (1, 1)).is_err());
    assert!(p.avg_pool2d(&z, (2, 2), (1, 1), (1, 0)).is_err());
    assert!(zoo::myrtle(6, (8, 8), 3).is_err());
    assert!(zoo::myrtle(5, (6, 8), 3).is_err());
    let _ = DMatrix::<f64>::zeros(0, 0);
}

/// The array engine's arrays are P × P per pair: a grid whose arrays cannot be
/// allocated is `AllocationFailed`, before any work and without an abort.
#[test]
fn arrays_too_large_to_allocate_are_an_error() {
    let program = zoo::Cnn::sequence(200_000, 1).layers(1).program().unwrap();
    let x = DMatrix::from_element(1, 200_000, 0.5);
    let err = ntk::infinite_width(&program, &x, &x).unwrap_err();
    assert!(matches!(err, ntk::Error::AllocationFailed { .. }), "{err}");
    assert!(err.to_string().contains("200000 positions"), "{err}");
}
