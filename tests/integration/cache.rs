//! The process-wide cache of compiled programs behind `infinite_width`: repeated calls
//! give identical kernels, and structurally different programs never share a
//! compilation (checked against a scaling law the kernels must obey, not against the
//! cache itself).

use ntk::{Activation, InfiniteWidth, Padding, Program, infinite_width, infinite_width_groups};

use crate::common::{self, rel_err};
use crate::prec;

/// Two circular 3-tap convolutions over 6 positions of 2 channels, φ after each, average
/// pooling, readout σ_v = 1; both layers' weights have standard deviation `sigma_w`,
/// biases `sigma_b` (none when 0).
fn cnn(sigma_w: f64, sigma_b: f64, activation: Activation) -> Program {
    let mut p = Program::new(12);
    let mut z: Vec<_> = (0..6).map(|q| p.input(2 * q..2 * q + 2).unwrap()).collect();
    for _ in 0..2 {
        let w = p.weight(sigma_w).unwrap();
        let b = (sigma_b > 0.0).then(|| p.bias(sigma_b).unwrap());
        z = p
            .conv(w, &z, 3, Padding::Circular)
            .unwrap()
            .into_iter()
            .map(|h| {
                let h = b.map_or(h, |b| p.add_bias(h, b).unwrap());
                p.apply(activation.clone(), h).unwrap()
            })
            .collect();
    }
    let pooled = p.mean(&z).unwrap();
    p.output(pooled, 1.0).unwrap();
    p
}

/// Repeated calls, clones and programs built by the same calls give the same kernels
/// to the last bit, from one thread or several at once.
#[test]
fn repeated_calls_give_identical_kernels() {
    let p = cnn(1.3, 0.2, Activation::Erf);
    let x1 = common::inputs(5, 12, 1);
    let x2 = common::inputs(3, 12, 2);
    let first = infinite_width(&p, &x1, &x2).unwrap();
    let layers = infinite_width_groups(&p, &x1, &x2).unwrap();
    for q in [p.clone(), cnn(1.3, 0.2, Activation::Erf)] {
        assert_eq!(infinite_width(&q, &x1, &x2).unwrap(), first);
        assert_eq!(infinite_width_groups(&q, &x1, &x2).unwrap(), layers);
        let held = InfiniteWidth::new(&q).unwrap();
        assert_eq!(held.kernels(&x1, &x2).unwrap(), first);
        assert_eq!(held.kernels(&x1, &x2).unwrap(), first);
    }
    let per_thread: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| infinite_width(&cnn(1.3, 0.2, Activation::Erf), &x1, &x2)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for k in per_thread {
        assert_eq!(k.unwrap(), first);
    }
}

/// Programs of the same shape that differ in σ_W or φ are different compilations. For
/// a bias-free ReLU network every layer's covariance scales with σ_W², so with two
/// layers Σ and Θ̊ scale by σ_W⁴ (ReLU's dual is homogeneous of degree 1 and Ċ of
/// degree 0): the kernels at σ_W = 1.5, computed after those at σ_W = 1, must be
/// 1.5⁴ times them, which a shared compilation would not give.
#[test]
fn structurally_different_programs_do_not_collide() {
    let x = common::inputs(4, 12, 3);
    let unit = infinite_width(&cnn(1.0, 0.0, Activation::Relu), &x, &x).unwrap();
    let wider = infinite_width(&cnn(1.5, 0.0, Activation::Relu), &x, &x).unwrap();
    let s4 = 1.5f64.powi(4);
    assert!(rel_err(&wider.nngp, &(&unit.nngp * s4)) < prec::EXACT_F64);
    assert!(rel_err(&wider.ntk, &(&unit.ntk * s4)) < prec::EXACT_F64);
    // Another activation of the same shape: another kernel (Abs ≥ ReLU's dual entrywise
    // and not a multiple of it).
    let abs = infinite_width(&cnn(1.0, 0.0, Activation::Abs), &x, &x).unwrap();
    assert!(rel_err(&abs.nngp, &unit.nngp) > 0.1);
    // Both σ_W again, in the other order: still the scaling law.
    let wider_again = infinite_width(&cnn(1.5, 0.0, Activation::Relu), &x, &x).unwrap();
    let unit_again = infinite_width(&cnn(1.0, 0.0, Activation::Relu), &x, &x).unwrap();
    assert_eq!(wider_again, wider);
    assert_eq!(unit_again, unit);
}
