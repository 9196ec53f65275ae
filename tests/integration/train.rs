//! Training: gradient-descent steps against updates with the finite-difference
//! gradient of the loss, validation, and real gradient descent on a wide network
//! against its linearisation (`GradientFlow` on the empirical NTK at initialisation).
//! (`NtkModel::vjp` itself is checked by the kernel contract on every model.)

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, GradientDescent, GradientFlow, Horizon, Mlp, MlpSpec, NtkModel,
    empirical_ntk,
};

use crate::common::{gaussian, rel_err};
use crate::prec;

/// ∇θ ½‖f(X) − Y‖² by central differences of the loss, one parameter at a time.
fn loss_gradient_fd<M: NtkModel<f64> + Clone>(
    model: &M,
    x: &DMatrix<f64>,
    y: &DMatrix<f64>,
    h: f64,
) -> DVector<f64> {
    let p0 = model.parameters();
    let mut probe = model.clone();
    let mut loss = |p: &DVector<f64>| {
        probe.set_parameters(p).unwrap();
        0.5 * (probe.forward(x).unwrap() - y).norm_squared()
    };
    DVector::from_fn(p0.len(), |i, _| {
        let mut plus = p0.clone();
        plus[i] += h;
        let mut minus = p0.clone();
        minus[i] -= h;
        (loss(&plus) - loss(&minus)) / (2.0 * h)
    })
}

fn small_mlp(outputs: usize, bias: f64) -> Mlp<f64> {
    MlpSpec::new(3)
        .hidden(7, Activation::Tanh)
        .hidden(5, Activation::Gelu)
        .bias_std(bias)
        .weight_std(1.3)
        .outputs(outputs)
        .init(&mut StdRng::seed_from_u64(3))
        .unwrap()
}

#[test]
fn vjp_rejects_bad_cotangents() {
    let net = small_mlp(2, 0.0);
    let x = gaussian(3, 3, 14);
    assert!(matches!(
        net.vjp(&x, &DMatrix::zeros(3, 1)),
        Err(Error::ShapeMismatch {
            argument: "cotangent",
            ..
        })
    ));
    let mut r = DMatrix::zeros(3, 2);
    r[(1, 1)] = f64::NAN;
    assert!(matches!(
        net.vjp(&x, &r),
        Err(Error::NonFinite {
            argument: "cotangent",
            ..
        })
    ));
    assert!(net.vjp(&gaussian(3, 2, 1), &DMatrix::zeros(3, 2)).is_err());
}

#[test]
fn gradient_descent_steps_are_plain_updates() {
    // Two steps by hand with the finite-difference gradient.
    let net = small_mlp(1, 0.1);
    let x = gaussian(5, 3, 15);
    let y = gaussian(5, 1, 16);
    let eta = 0.05;
    let mut by_hand = net.clone();
    for _ in 0..2 {
        let g = loss_gradient_fd(&by_hand, &x, &y, prec::FD_STEP);
        let p = by_hand.parameters() - g * eta;
        by_hand.set_parameters(&p).unwrap();
    }
    let mut trained = net.clone();
    let run = GradientDescent::new(eta, 2)
        .unwrap()
        .fit(&mut trained, &x, &y, &DMatrix::zeros(0, 3))
        .unwrap();
    // Relative to how far the parameters moved.
    let diff = (trained.parameters() - by_hand.parameters()).norm();
    let moved = (by_hand.parameters() - net.parameters()).norm();
    assert!(
        diff <= prec::FINITE_DIFFERENCE * moved,
        "{diff:e} of {moved:e}"
    );
    assert_eq!(run.steps, vec![0, 2]);
    assert_eq!(run.test_outputs[0].shape(), (0, 1));
    assert!(rel_err(&run.train_outputs[1], &trained.forward(&x).unwrap()) <= prec::EXACT_F64);
    let loss = 0.5 * (trained.forward(&x).unwrap() - &y).norm_squared();
    assert!((run.losses[1] - loss).abs() <= prec::EXACT_F64 * loss);
}

#[test]
fn gradient_descent_validates() {
    let mut net = small_mlp(1, 0.0);
    let x = gaussian(4, 3, 17);
    let y = gaussian(4, 1, 18);
    let none = DMatrix::zeros(0, 3);
    for lr in [0.0, -0.1, f64::NAN] {
        assert!(matches!(
            GradientDescent::new(lr, 3),
            Err(Error::InvalidParameter {
                parameter: "learning_rate",
                ..
            })
        ));
    }
    let gd = GradientDescent::new(0.1, 3).unwrap();
    assert!(gd.clone().record_every(0).is_err());
    assert!(gd.clone().record_at(&[4]).is_err());
    assert!(matches!(
        gd.fit(&mut net, &x, &gaussian(3, 1, 1), &none),
        Err(Error::ShapeMismatch {
            argument: "y_train",
            ..
        })
    ));
    assert!(matches!(
        gd.fit(&mut net, &x, &gaussian(4, 2, 1), &none),
        Err(Error::ShapeMismatch {
            argument: "y_train",
            ..
        })
    ));
    assert!(matches!(
        gd.fit(&mut net, &x, &y, &DMatrix::zeros(2, 2)),
        Err(Error::ShapeMismatch {
            argument: "x_test",
            ..
        })
    ));
    assert!(matches!(
        gd.fit(&mut net, &gaussian(4, 2, 1), &y, &none),
        Err(Error::ShapeMismatch {
            argument: "x_train",
            ..
        })
    ));
    let mut bad_y = y.clone();
    bad_y[0] = f64::INFINITY;
    assert!(matches!(
        gd.fit(&mut net, &x, &bad_y, &none),
        Err(Error::NonFinite {
            argument: "y_train",
            ..
        })
    ));
    // Far above 2/λ_max: divergence is reported, not a panic or NaN outputs.
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    let limit = GradientFlow::new(&theta, &y, 1.0)
        .unwrap()
        .max_stable_learning_rate();
    let diverging = GradientDescent::new(50.0 * limit, 2_000).unwrap();
    assert!(matches!(
        diverging.fit(&mut net, &x, &y, &none),
        Err(Error::InvalidParameter {
            parameter: "learning_rate",
            ..
        })
    ));
}

/// Relative deviation of real gradient descent from its linearisation over the whole
/// run: max over recorded steps and points of |f_NN − f_lin|, divided by the largest
/// change of the linearised outputs |f_lin,s − f_0|.
fn deviation_from_linearisation(width: usize, seed: u64) -> f64 {
    let spec = MlpSpec::new(2).hidden(width, Activation::Erf).bias_std(0.1);
    let mut net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(seed)).unwrap();
    let x = DMatrix::from_fn(6, 2, |i, j| ((1 + i) as f64 * (0.9 + j as f64)).sin());
    let x_test = DMatrix::from_fn(3, 2, |i, j| ((2 * i + j) as f64 * 0.7).cos());
    let y = DMatrix::from_fn(6, 1, |i, _| (2.0 * x[(i, 0)]).sin() + x[(i, 1)]);
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    let theta_test = empirical_ntk(&net, &x_test, &x).unwrap();
    let f0 = net.forward(&x).unwrap();
    let f0_test = net.forward(&x_test).unwrap();
    let probe = GradientFlow::new(&theta, &y, 1.0).unwrap();
    let eta = 0.5 * probe.max_stable_learning_rate(); // η λ_max = 1
    let steps = 400; // η λ_min · steps ≫ 1 for this kernel: trained to convergence
    let run = GradientDescent::new(eta, steps)
        .unwrap()
        .record_every(20)
        .unwrap()
        .fit(&mut net, &x, &y, &x_test)
        .unwrap();
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    let lin = flow.train_at(&Horizon::steps(&run.steps), &f0).unwrap();
    let lin_test = flow
        .test_at(&Horizon::steps(&run.steps), &f0, &f0_test, &theta_test)
        .unwrap();
    let mut deviation = 0.0_f64;
    let mut motion = 0.0_f64;
    for s in 0..run.steps.len() {
        deviation = deviation
            .max((&run.train_outputs[s] - &lin[s]).amax())
            .max((&run.test_outputs[s] - &lin_test[s]).amax());
        motion = motion
            .max((&lin[s] - &f0).amax())
            .max((&lin_test[s] - &f0_test).amax());
    }
    assert!(run.losses.last().unwrap() < &(1e-3 * run.losses[0]));
    deviation / motion
}

#[test]
fn wide_network_training_follows_its_linearisation() {
    let wide = deviation_from_linearisation(2048, 21);
    let narrow = deviation_from_linearisation(32, 21);
    eprintln!(
        "relative deviation from the linearised dynamics: width 2048 {wide:.4}, width 32 {narrow:.4}"
    );
    assert!(wide <= 0.02, "width 2048 deviates by {wide}");
    // The deviation is a finite-width effect: much larger when narrow.
    assert!(narrow >= 3.0 * wide, "narrow {narrow} vs wide {wide}");
}
