//! Never silently wrong (issue 9): an `Ok` holds the right finite number, or the call
//! returns an error that says why. Each class is checked against an independent
//! reference: the pseudo-inverse limit for singular kernels, eigenvalues for
//! indefinite ones, explicit iteration for gradient descent, the saved parameters for
//! a failed training run.

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, GradientDescent, GradientFlow, GroupTangent, Horizon, InfiniteEnsemble,
    KernelRegression, KrylovFlow, Mlp, MlpSpec, NtkModel, empirical_ntk, empirical_ntk_full,
    width_convergence,
};
use proptest::prelude::*;

use crate::common::{inputs, rel_err};

/// Θ⁺ by the SVD, cutting singular values below `cutoff` · σ_max.
fn pseudo_inverse(theta: &DMatrix<f64>, cutoff: f64) -> DMatrix<f64> {
    let svd = theta.clone().svd(true, true);
    let top = svd.singular_values.max();
    svd.pseudo_inverse(cutoff * top)
        .expect("SVD with both factors")
}

/// Training inputs that repeat: rows 3 and 5 are copies of rows 0 and 1.
fn repeated_inputs(n: usize, d: usize) -> DMatrix<f64> {
    let mut x = inputs(n, d, 4);
    let (r0, r1) = (x.row(0).into_owned(), x.row(1).into_owned());
    x.set_row(3, &r0);
    x.set_row(5, &r1);
    x
}

/// With repeated training inputs (a singular NTK), t = ∞ is the pseudo-inverse
/// limit: on the training points f_∞ = Y + (I − Θ⁺Θ)(f_0 − Y) (the null-space part of
/// the residual never moves, so repeated inputs keep equal outputs), on test points
/// f_0(x) + Θ(x, X) Θ⁺ (Y − f_0). The ensemble's mean agrees with itself.
#[test]
fn singular_kernels_take_the_pseudo_inverse_limit() {
    let net: Mlp<f64> = MlpSpec::new(3)
        .hidden(256, Activation::Erf)
        .bias_std(0.1)
        .outputs(2)
        .init(&mut StdRng::seed_from_u64(0))
        .unwrap();
    let x = repeated_inputs(8, 3);
    let x_test = inputs(4, 3, 9);
    // Conflicting labels on the repeated inputs: no function fits them.
    let y = inputs(8, 2, 5);
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    let theta_test = empirical_ntk(&net, &x_test, &x).unwrap();
    let (f0, f0_test) = (net.forward(&x).unwrap(), net.forward(&x_test).unwrap());

    let plus = pseudo_inverse(&theta, 1e-10);
    let projector = DMatrix::identity(8, 8) - &plus * &theta;
    let train_limit = &y + &projector * (&f0 - &y);
    let test_limit = &f0_test + &theta_test * &plus * (&y - &f0);

    let flow = GradientFlow::new(&theta, &y, 0.7).unwrap();
    let train = flow.train(f64::INFINITY, &f0).unwrap();
    assert!(
        rel_err(&train, &train_limit) <= 1e-8,
        "{train} vs {train_limit}"
    );
    assert!((train.row(0) - train.row(3)).amax() <= 1e-8);
    let test = flow
        .test(f64::INFINITY, &f0, &f0_test, &theta_test)
        .unwrap();
    assert!(rel_err(&test, &test_limit) <= 1e-8);
    assert_eq!(flow.eigenvalues().iter().filter(|&&l| l == 0.0).count(), 2);
    // The loss at t = ∞ is what the null space keeps.
    let loss = flow.loss_at(&[Horizon::Time(f64::INFINITY)], &f0).unwrap()[0];
    assert!((loss - 0.5 * (&train_limit - &y).norm_squared()).abs() <= 1e-8 * loss);

    // The infinite ensemble: its mean at t = ∞ is the same pseudo-inverse regression.
    let nngp = &theta * 0.5 + DMatrix::identity(8, 8) * 0.1;
    let ensemble = InfiniteEnsemble::new(&theta, &nngp, &y, 0.7).unwrap();
    let nngp_test_train = &theta_test * 0.5;
    let nngp_test = DMatrix::identity(4, 4);
    let p = ensemble
        .test(f64::INFINITY, &theta_test, &nngp_test_train, &nngp_test)
        .unwrap();
    let mean = ensemble.test_mean(f64::INFINITY, &theta_test).unwrap();
    assert!(rel_err(&p.mean, &mean) <= 1e-10);
    assert!(rel_err(&mean, &(&theta_test * &plus * &y)) <= 1e-8);

    // Kernel regression refuses the singular kernel and says where to go instead.
    match KernelRegression::new(&theta, &y, 0.0) {
        Err(Error::Factorization { message }) => {
            assert!(message.contains("singular") && message.contains("pseudo-inverse"));
        }
        other => panic!("expected a factorization error, got {other:?}"),
    }
    // The Lanczos path treats the null space the same way (t finite: it has no t = ∞).
    let krylov = KrylovFlow::new(&theta, &y, 0.7)
        .unwrap()
        .tolerance(1e-12)
        .unwrap();
    let late = flow.train(40.0, &f0).unwrap();
    assert!(rel_err(&krylov.train(40.0, &f0).unwrap(), &late) <= 1e-8);
    // Its suggested ridge (1e-10 of the mean diagonal) gives the same limit.
    let ridge = 1e-10 * theta.trace() / 8.0;
    let regression = KernelRegression::new(&theta, &y, ridge).unwrap();
    let ridged = regression.test(&f0, &f0_test, &theta_test).unwrap();
    assert!(rel_err(&ridged, &test_limit) <= 1e-6);
}

/// A zero kernel: kernel regression says so (it has nothing to invert) instead of
/// suggesting a subnormal ridge; the flow keeps f_0, as the exact dynamics do.
#[test]
fn a_zero_kernel_is_named() {
    let zero = DMatrix::zeros(3, 3);
    let y = inputs(3, 1, 0);
    match KernelRegression::new(&zero, &y, 0.0) {
        Err(Error::Factorization { message }) => {
            assert!(message.contains("is zero") && !message.contains("e-3"));
        }
        other => panic!("expected a factorization error, got {other:?}"),
    }
    let f0 = inputs(3, 1, 1);
    let flow = GradientFlow::new(&zero, &y, 1.0).unwrap();
    assert_eq!(flow.train(f64::INFINITY, &f0).unwrap(), f0);
}

/// The same in f32: the threshold N·ε follows the scalar type.
#[test]
fn singular_kernels_in_f32() {
    let x = repeated_inputs(8, 3);
    let a = DMatrix::from_fn(8, 3, |i, j| x[(i, j)]);
    // A rank-3 kernel of 8 points in f32.
    let theta64 = &a * a.transpose();
    let theta = theta64.map(|v| v as f32);
    let y = inputs(8, 1, 2).map(|v| v as f32);
    let f0 = DMatrix::<f32>::zeros(8, 1);
    let flow = GradientFlow::new(&theta, &y, 0.5).unwrap();
    let train = flow.train(f32::INFINITY, &f0).unwrap().map(f64::from);
    let plus = pseudo_inverse(&theta.map(f64::from), 1e-5);
    let limit = &plus * &theta.map(f64::from) * y.map(f64::from);
    assert!(rel_err(&train, &limit) <= 1e-4);
    assert_eq!(flow.eigenvalues().iter().filter(|&&l| l == 0.0).count(), 5);
}

/// Matrices that cannot be kernels are errors naming the matrix: indefinite ones
/// (with their smallest eigenvalue) and asymmetric ones, even under a large diagonal.
#[test]
fn inputs_that_cannot_be_kernels_are_errors() {
    let y = DMatrix::from_column_slice(2, 1, &[1.0, -1.0]);
    let swap = DMatrix::from_row_slice(2, 2, &[0.0, 1.0, 1.0, 0.0]);
    let indefinite = |r: Result<_, Error>, name: &str| match r {
        Err(Error::NotPositiveSemidefinite {
            argument,
            smallest_eigenvalue,
            ..
        }) => argument == name && (smallest_eigenvalue + 1.0).abs() < 1e-12,
        _ => false,
    };
    assert!(indefinite(
        GradientFlow::new(&swap, &y, 1.0).map(|_| ()),
        "theta_train"
    ));
    // Without a factorization, Lanczos meets the negative direction (a Ritz value).
    let krylov = KrylovFlow::new(&swap, &y, 1.0).unwrap();
    let f0 = DMatrix::from_column_slice(2, 1, &[0.3, 0.1]);
    assert!(matches!(
        krylov.train(1.0, &f0),
        Err(Error::NotPositiveSemidefinite {
            argument: "theta_train",
            ..
        })
    ));
    let spd = DMatrix::from_row_slice(2, 2, &[2.0, 0.5, 0.5, 1.0]);
    assert!(indefinite(
        InfiniteEnsemble::new(&swap, &spd, &y, 1.0).map(|_| ()),
        "theta_train"
    ));
    assert!(indefinite(
        InfiniteEnsemble::new(&spd, &swap, &y, 1.0).map(|_| ()),
        "nngp_train"
    ));
    // A negative-definite NNGP would give negative variances.
    let negative = -&spd;
    assert!(matches!(
        InfiniteEnsemble::new(&spd, &negative, &y, 1.0),
        Err(Error::NotPositiveSemidefinite {
            argument: "nngp_train",
            ..
        })
    ));
    // An asymmetry hidden under a large diagonal entry elsewhere.
    let hidden = DMatrix::from_row_slice(3, 3, &[1e10, 0., 0., 0., 1., 0.4, 0., 0.8, 1.]);
    let y3 = DMatrix::from_column_slice(3, 1, &[1.0, 0.0, -1.0]);
    let asymmetric = |r: Result<(), Error>| matches!(r, Err(Error::NotSymmetric { argument: "theta_train", relative_asymmetry }) if (relative_asymmetry - 0.4).abs() < 1e-12);
    assert!(asymmetric(GradientFlow::new(&hidden, &y3, 1.0).map(|_| ())));
    assert!(asymmetric(KrylovFlow::new(&hidden, &y3, 1.0).map(|_| ())));
    assert!(asymmetric(
        KernelRegression::new(&hidden, &y3, 0.0).map(|_| ())
    ));
    // Round-off below the tolerance is fine.
    let a = inputs(30, 10, 3);
    let gram = &a * a.transpose();
    let mut nudged = gram.clone();
    nudged[(0, 1)] += 1e-12;
    assert!(GradientFlow::new(&nudged, &inputs(30, 1, 1), 1.0).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, rng_seed: proptest::test_runner::RngSeed::Fixed(9), ..ProptestConfig::default() })]

    /// Every Gram matrix (positive semi-definite, of any rank) is accepted, and the
    /// same with its smallest eigenvalue moved to −10⁻³ of the largest is rejected.
    #[test]
    fn gram_matrices_are_kernels_and_negative_directions_are_not(
        n in 2usize..24, rank in 1usize..6, seed in 0u64..1000, scale in -20i32..20
    ) {
        let s = 10f64.powi(scale);
        let a = inputs(n, rank, seed) * s;
        let gram = &a * a.transpose();
        let y = inputs(n, 1, seed + 1);
        prop_assert!(GradientFlow::new(&gram, &y, 1.0).is_ok());
        let eig = gram.clone().symmetric_eigen();
        let (low, _) = eig.eigenvalues.argmin();
        let v = eig.eigenvectors.column(low).into_owned();
        let top = eig.eigenvalues.amax();
        let shift = eig.eigenvalues[low] + 1e-3 * top;
        let indefinite = &gram - &v * v.transpose() * shift;
        let is_indefinite = matches!(
            GradientFlow::new(&indefinite, &y, 1.0),
            Err(Error::NotPositiveSemidefinite { .. })
        );
        prop_assert!(is_indefinite);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, rng_seed: proptest::test_runner::RngSeed::Fixed(3), ..ProptestConfig::default() })]

    /// Over random architectures at extreme σ's and depths, the empirical NTK is either
    /// an error saying what would not be finite, or finite, symmetric and positive
    /// semi-definite (eigenvalues of Θ / max |Θ| ≥ −10⁻¹⁰ N).
    #[test]
    fn kernels_at_extreme_scales_are_finite_psd_or_errors(
        activation in 0usize..10,
        depth in 1usize..5,
        log_sigma_w in prop::sample::select(vec![-3i32, 0, 1, 10, 50, 100, 150]),
        log_sigma_b in prop::sample::select(vec![-300i32, -3, 0, 2, 100]),
        log_input in prop::sample::select(vec![-100i32, -3, 0, 3, 100]),
        seed in 0u64..1000,
    ) {
        let act = Activation::builtins()[activation].clone();
        let mut spec = MlpSpec::new(3)
            .weight_std(10f64.powi(log_sigma_w))
            .bias_std(10f64.powi(log_sigma_b));
        for _ in 0..depth {
            spec = spec.hidden(12, act.clone());
        }
        let net: Mlp<f64> = spec.init(&mut StdRng::seed_from_u64(seed)).unwrap();
        let x = inputs(7, 3, seed) * 10f64.powi(log_input);
        match empirical_ntk(&net, &x, &x) {
            Ok(theta) => {
                prop_assert!(theta.iter().all(|v| v.is_finite()));
                let scale = theta.amax();
                if scale > 0.0 {
                    let unit = &theta / scale;
                    prop_assert!((&unit - unit.transpose()).amax() <= 1e-12);
                    let smallest = unit.symmetric_eigenvalues().min();
                    prop_assert!(smallest >= -1e-10 * 7.0, "λ_min = {smallest:e}");
                }
            }
            Err(e) => prop_assert!(matches!(e, Error::NonFiniteResult { .. }), "{e}"),
        }
    }
}

/// Learning rates above 2/λ_max: the linear model's gradient descent grows like
/// |1 − ηλ_max|^s; where that overflows the prediction is an error naming 2/λ_max,
/// and before, it matches the explicit iteration f ← f − ηΘ(f − Y).
#[test]
fn gradient_descent_above_the_stable_rate() {
    let a = inputs(6, 4, 1);
    let theta = &a * a.transpose() + DMatrix::identity(6, 6) * 0.1;
    let y = inputs(6, 1, 2);
    let f0 = DMatrix::zeros(6, 1);
    let top = GradientFlow::new(&theta, &y, 1.0)
        .unwrap()
        .max_stable_learning_rate();
    let eta = 1.5 * top;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    let mut f = f0.clone();
    for _ in 0..20 {
        f -= &theta * (&f - &y) * eta;
    }
    assert!(rel_err(&flow.train_gd(20, &f0).unwrap(), &f) <= 1e-9);
    let overflow = flow.train_gd(100_000, &f0);
    match overflow {
        Err(Error::NonFiniteResult { reason, .. }) => assert!(reason.contains("2/λ_max")),
        other => panic!("expected an overflow error, got {other:?}"),
    }
    let test = flow.test_at(
        &[Horizon::Steps(100_000)],
        &f0,
        &DMatrix::zeros(1, 1),
        &DMatrix::from_element(1, 6, 0.1),
    );
    assert!(matches!(test, Err(Error::NonFiniteResult { .. })));
}

/// A network whose gradients overflow although its outputs do not (σ_w = 1e100):
/// the kernel is an error, not NaN. Pre-activations that overflow name their layer.
#[test]
fn kernels_that_overflow_are_errors() {
    let x = inputs(5, 2, 0);
    for activation in [Activation::Erf, Activation::Relu, Activation::Tanh] {
        let net: Mlp<f64> = MlpSpec::new(2)
            .hidden(64, activation.clone())
            .weight_std(1e100)
            .init(&mut StdRng::seed_from_u64(1))
            .unwrap();
        let kernel = empirical_ntk(&net, &x, &x);
        let forward = net.forward(&x);
        assert!(
            matches!(kernel, Err(Error::NonFiniteResult { .. }))
                || kernel.is_ok_and(|k| k.iter().all(|v| v.is_finite())),
            "{activation}"
        );
        assert!(
            forward.is_ok_and(|f| f.iter().all(|v| v.is_finite())),
            "{activation}"
        );
    }
    let relu: Mlp<f64> = MlpSpec::new(2)
        .hidden(64, Activation::Relu)
        .weight_std(1e100)
        .init(&mut StdRng::seed_from_u64(1))
        .unwrap();
    assert!(matches!(
        empirical_ntk(&relu, &x, &x),
        Err(Error::NonFiniteResult {
            result: "empirical_ntk",
            ..
        })
    ));
    let huge: Mlp<f64> = MlpSpec::new(2)
        .hidden(8, Activation::Relu)
        .hidden(8, Activation::Relu)
        .weight_std(1e200)
        .init(&mut StdRng::seed_from_u64(1))
        .unwrap();
    match huge.forward(&x) {
        Err(Error::NonFiniteResult { reason, .. }) => {
            assert!(reason.contains("Dense layer 2"), "{reason}")
        }
        other => panic!("expected an overflow naming the layer, got {other:?}"),
    }
}

/// A custom activation whose φ' is NaN beyond |x| > 3 fails `validate`; one that is
/// NaN only beyond the probed range is caught where the network meets it, and the
/// error names it.
#[test]
fn activations_that_return_nan_are_named() {
    let narrow = Activation::custom("narrow", f64::tanh, |x: f64| {
        if x.abs() > 3.0 {
            f64::NAN
        } else {
            1.0 - x.tanh().powi(2)
        }
    });
    assert!(MlpSpec::new(2).hidden(8, narrow).validate().is_err());
    let wide = Activation::custom("wide", f64::tanh, |x: f64| {
        if x.abs() > 20.0 {
            f64::NAN
        } else {
            1.0 - x.tanh().powi(2)
        }
    });
    let net: Mlp<f64> = MlpSpec::new(2)
        .hidden(16, wide)
        .init(&mut StdRng::seed_from_u64(2))
        .unwrap();
    let x = inputs(4, 2, 0) * 100.0;
    assert!(net.forward(&x).is_ok());
    match empirical_ntk(&net, &x, &x) {
        Err(Error::NonFiniteResult { reason, .. }) => assert!(reason.contains("wide")),
        other => panic!("expected an error naming the activation, got {other:?}"),
    }
}

/// A model whose outputs are NaN before any step: the error says so instead of
/// blaming the learning rate. After a diverging run, the model has its parameters
/// back.
#[test]
fn gradient_descent_errors_say_why_and_restore_the_model() {
    let x = inputs(6, 2, 0);
    let y = inputs(6, 1, 1);
    let none = DMatrix::zeros(0, 2);
    let nan_model = NanOutputs;
    let mut model = nan_model;
    let run = GradientDescent::new(0.1, 10)
        .unwrap()
        .fit(&mut model, &x, &y, &none);
    assert!(matches!(run, Err(Error::NonFiniteResult { .. })), "{run:?}");

    let mut net: Mlp<f64> = MlpSpec::new(2)
        .hidden(32, Activation::Tanh)
        .init(&mut StdRng::seed_from_u64(3))
        .unwrap();
    let before = net.parameters();
    let theta = empirical_ntk(&net, &x, &x).unwrap();
    let limit = GradientFlow::new(&theta, &y, 1.0)
        .unwrap()
        .max_stable_learning_rate();
    let run = GradientDescent::new(50.0 * limit, 2_000)
        .unwrap()
        .fit(&mut net, &x, &y, &none);
    assert!(matches!(
        run,
        Err(Error::InvalidParameter {
            parameter: "learning_rate",
            ..
        })
    ));
    assert_eq!(net.parameters(), before);
}

/// f(x) = NaN for every input; one parameter.
#[derive(Clone)]
struct NanOutputs;

impl NtkModel<f64> for NanOutputs {
    fn input_dim(&self) -> usize {
        2
    }
    fn output_dim(&self) -> usize {
        1
    }
    fn parameter_count(&self) -> usize {
        1
    }
    fn parameters(&self) -> DVector<f64> {
        DVector::zeros(1)
    }
    fn set_parameters(&mut self, _: &DVector<f64>) -> ntk::Result<()> {
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        Ok(DMatrix::from_element(x.nrows(), 1, f64::NAN))
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        Ok(vec![GroupTangent::Jacobian(DMatrix::zeros(x.nrows(), 1))])
    }
}

/// A model with no outputs (k = 0): errors, not a division by zero.
#[derive(Clone)]
struct NoOutputs;

impl NtkModel<f64> for NoOutputs {
    fn input_dim(&self) -> usize {
        2
    }
    fn output_dim(&self) -> usize {
        0
    }
    fn parameter_count(&self) -> usize {
        2
    }
    fn parameters(&self) -> DVector<f64> {
        DVector::zeros(2)
    }
    fn set_parameters(&mut self, _: &DVector<f64>) -> ntk::Result<()> {
        Ok(())
    }
    fn forward(&self, x: &DMatrix<f64>) -> ntk::Result<DMatrix<f64>> {
        Ok(DMatrix::zeros(x.nrows(), 0))
    }
    fn group_tangents(&self, x: &DMatrix<f64>) -> ntk::Result<Vec<GroupTangent<f64>>> {
        Ok(vec![
            GroupTangent::Dense {
                weight_scale: 1.0,
                bias_scale: None,
                uses: vec![ntk::DenseUse {
                    input: x.clone(),
                    output_grad: DMatrix::zeros(x.nrows(), 0),
                }],
            },
            GroupTangent::Readout {
                weight_scale: 1.0,
                bias_scale: Some(1.0),
                input: x.clone(),
            },
        ])
    }
}

/// Sizes that cannot be: no outputs, more parameters than `usize` counts, weights
/// larger than the address space. Errors, not panics or aborts.
#[test]
fn impossible_sizes_are_errors() {
    let x = inputs(3, 2, 0);
    let model = NoOutputs;
    assert!(empirical_ntk(&model, &x, &x).is_err());
    assert!(empirical_ntk_full(&model, &x, &x).is_err());
    assert!(model.jacobian(&x).is_err());
    assert!(model.group_kernels(&x, &x).is_err());
    assert!(model.vjp(&x, &DMatrix::zeros(3, 0)).is_err());

    let huge = MlpSpec::new(2).hidden(usize::MAX, Activation::Relu);
    assert_eq!(huge.parameter_count(), usize::MAX);
    assert!(matches!(
        huge.validate(),
        Err(Error::InvalidParameter {
            parameter: "widths",
            ..
        })
    ));
    // 2^45 weights in the first layer: 256 TB, beyond any address space.
    let wide = MlpSpec::new(2).hidden(1 << 44, Activation::Relu);
    match wide.init::<f64>(&mut StdRng::seed_from_u64(0)) {
        Err(Error::AllocationFailed { what, .. }) => {
            assert!(what.starts_with("`widths`"), "{what}");
            assert!(what.contains(&(1_usize << 44).to_string()), "{what}");
        }
        other => panic!("expected an allocation error, got {:?}", other.map(|_| ())),
    }
}

/// Inputs on which the width study's log-log fit is undefined are errors.
#[test]
fn degenerate_width_studies_are_errors() {
    let spec = MlpSpec::new(3).hidden(1, Activation::Relu);
    let zeros = DMatrix::zeros(4, 3);
    assert!(matches!(
        width_convergence(&spec, &zeros, &[16, 64], &[1, 2]),
        Err(Error::NonFiniteResult {
            result: "width_convergence",
            ..
        })
    ));
}

/// The empirical kernel is the same to the last bit on one thread and on many (every
/// tile is computed the same way); the gradient flow, whose eigensolver runs in
/// parallel from N = 384, agrees to round-off.
#[test]
fn thread_counts_change_the_kernel_not_at_all_and_the_flow_by_round_off() {
    let net: Mlp<f64> = MlpSpec::new(3)
        .hidden(32, Activation::Gelu)
        .bias_std(0.2)
        .init(&mut StdRng::seed_from_u64(5))
        .unwrap();
    let x = inputs(400, 3, 1);
    let y = inputs(400, 1, 2);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let theta1 = one.install(|| empirical_ntk(&net, &x, &x).unwrap());
    let theta2 = two.install(|| empirical_ntk(&net, &x, &x).unwrap());
    assert_eq!(theta1, theta2);
    let f0 = net.forward(&x).unwrap();
    let flow = |pool: &rayon::ThreadPool| {
        pool.install(|| {
            GradientFlow::new(&theta1, &y, 1.0)
                .unwrap()
                .train(3.0, &f0)
                .unwrap()
        })
    };
    assert!(rel_err(&flow(&one), &flow(&two)) <= 1e-12);
}
