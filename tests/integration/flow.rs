//! Gradient flow: `GradientFlow`, `KernelRegression`, `InfiniteEnsemble` against
//! neural-tangents' predictions, matrix exponentials computed by nalgebra (Padé),
//! explicit iteration of the dynamics, finite differences in time, the semigroup
//! property, and Monte Carlo over random initial outputs; `KrylovFlow` against the
//! eigen path.

use ntk::nalgebra::{DMatrix, DVector};
use ntk::rand::{SeedableRng, rngs::StdRng};
use ntk::{
    Activation, Error, GradientFlow, Horizon, InfiniteEnsemble, KernelRegression, KrylovFlow,
    MlpSpec, empirical_ntk,
};
use proptest::prelude::*;

use crate::common::{gaussian, matrix, reference, rel_err};
use crate::prec;

/// A well-conditioned symmetric positive definite N × N kernel: A Aᵀ/m + δ I.
fn spd(n: usize, seed: u64, delta: f64) -> DMatrix<f64> {
    let m = n + 4;
    let a = gaussian(n, m, seed);
    &a * a.transpose() / m as f64 + DMatrix::identity(n, n) * delta
}

/// The joint kernel of N training and M test points from an MLP's empirical NTK:
/// (Θ(X, X), Θ(x, X), Θ(x, x)).
fn mlp_kernels(n: usize, m: usize) -> (DMatrix<f64>, DMatrix<f64>, DMatrix<f64>) {
    let net = MlpSpec::new(3)
        .hidden(64, Activation::Erf)
        .bias_std(0.1)
        .init::<f64>(&mut StdRng::seed_from_u64(11))
        .unwrap();
    let x = gaussian(n, 3, 12);
    let xt = gaussian(m, 3, 13);
    (
        empirical_ntk(&net, &x, &x).unwrap(),
        empirical_ntk(&net, &xt, &x).unwrap(),
        empirical_ntk(&net, &xt, &xt).unwrap(),
    )
}

/// Explicit Euler with 200 000 steps against the exact flow: error O(dt).
const EULER: f64 = 1e-4;

/// e^{−s Θ} by nalgebra's Padé matrix exponential (independent of the eigensolver).
fn expm_neg(theta: &DMatrix<f64>, s: f64) -> DMatrix<f64> {
    (theta * -s).exp()
}

#[test]
fn matches_neural_tangents_gradient_descent_mse() {
    let data = reference();
    let flows = data["flows"].as_array().expect("flows");
    assert_eq!(flows.len(), 6);
    let mut worst = 0.0_f64;
    for case in flows {
        let theta = matrix(&case["kernel"]);
        let theta_test = matrix(&case["kernel_test_train"]);
        let y = matrix(&case["y"]);
        let f0 = matrix(&case["f0"]);
        let f0_test = matrix(&case["f0_test"]);
        let lr = case["nt_learning_rate"].as_f64().unwrap();
        let t = case["nt_t"].as_f64().unwrap();
        // The documented conversion: η = learning_rate / y.len(), same t.
        let eta = lr / y.len() as f64;
        let eta_t = case["eta_t_sum_loss"].as_f64().unwrap();
        assert!((eta * t - eta_t).abs() <= prec::EXACT_F64 * eta_t);

        let flow = GradientFlow::new(&theta, &y, eta).unwrap();
        let train = flow.train(t, &f0).unwrap();
        let test = flow.test(t, &f0, &f0_test, &theta_test).unwrap();
        let e_train = rel_err(&train, &matrix(&case["f_train_t"]));
        let e_test = rel_err(&test, &matrix(&case["f_test_t"]));
        worst = worst.max(e_train).max(e_test);
        assert!(e_train <= prec::NEURAL_TANGENTS, "train {e_train:e}");
        assert!(e_test <= prec::NEURAL_TANGENTS, "test {e_test:e}");

        // Only η·t matters.
        let unit = GradientFlow::new(&theta, &y, 1.0).unwrap();
        let again = unit.test(eta_t, &f0, &f0_test, &theta_test).unwrap();
        assert!(rel_err(&again, &test) <= prec::EXACT_F64);
    }
    eprintln!("neural-tangents flows: worst relative error {worst:e}");
}

#[test]
fn eigendecomposition_recomposes_theta() {
    let (theta, _, _) = mlp_kernels(40, 1);
    let y = gaussian(40, 1, 1);
    let flow = GradientFlow::new(&theta, &y, 0.1).unwrap();
    let v = flow.eigenvectors();
    let l = flow.eigenvalues();
    let recomposed = v * DMatrix::from_diagonal(l) * v.transpose();
    assert!(rel_err(&recomposed, &theta) <= prec::EXACT_F64);
    assert!(rel_err(&(v.transpose() * v), &DMatrix::identity(40, 40)) <= prec::EXACT_F64);
    // Θ V = V Λ, column by column.
    assert!(rel_err(&(&theta * v), &(v * DMatrix::from_diagonal(l))) <= prec::EXACT_F64);
    assert!(l.as_slice().windows(2).all(|w| w[0] >= w[1]));
    assert!(l.iter().all(|&x| x >= 0.0));
    // 2/λ_max against the largest eigenvalue from nalgebra's own solver.
    let top = theta.symmetric_eigenvalues().max();
    assert!((flow.max_stable_learning_rate() - 2.0 / top).abs() <= prec::EXACT_F64 * (2.0 / top));
}

#[test]
fn train_and_test_match_matrix_exponential() {
    let (theta, theta_test, _) = mlp_kernels(12, 5);
    let y = gaussian(12, 2, 2);
    let f0 = gaussian(12, 2, 3) * 0.3;
    let f0_test = gaussian(5, 2, 4) * 0.3;
    let eta = 0.7;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    let inverse = theta.clone().try_inverse().unwrap();
    for t in [0.0, 0.05, 1.0, 3.0] {
        let e = expm_neg(&theta, eta * t);
        let train = &y + &e * (&f0 - &y);
        let test =
            &f0_test + &theta_test * &inverse * (DMatrix::identity(12, 12) - &e) * (&y - &f0);
        assert!(
            rel_err(&flow.train(t, &f0).unwrap(), &train) <= prec::SPECTRAL,
            "t = {t}"
        );
        let ours = flow.test(t, &f0, &f0_test, &theta_test).unwrap();
        assert!(
            (&ours - &test).amax() <= prec::SPECTRAL * test.amax(),
            "t = {t}: {:e}",
            (&ours - &test).amax()
        );
    }
}

#[test]
fn semigroup_property() {
    let (theta, theta_test, _) = mlp_kernels(15, 4);
    let y = gaussian(15, 1, 5);
    let f0 = gaussian(15, 1, 6);
    let f0_test = gaussian(4, 1, 7);
    let flow = GradientFlow::new(&theta, &y, 0.3).unwrap();
    for (t1, t2) in [(0.5, 1.5), (2.0, 0.01), (0.0, 4.0)] {
        let mid = flow.train(t1, &f0).unwrap();
        let mid_test = flow.test(t1, &f0, &f0_test, &theta_test).unwrap();
        let two_legs = flow.train(t2, &mid).unwrap();
        let one_leg = flow.train(t1 + t2, &f0).unwrap();
        assert!(rel_err(&two_legs, &one_leg) <= prec::EXACT_F64);
        let two_legs_test = flow.test(t2, &mid, &mid_test, &theta_test).unwrap();
        let one_leg_test = flow.test(t1 + t2, &f0, &f0_test, &theta_test).unwrap();
        assert!(rel_err(&two_legs_test, &one_leg_test) <= prec::SPECTRAL);
    }
}

#[test]
fn time_derivative_is_minus_eta_theta_residual() {
    let (theta, theta_test, _) = mlp_kernels(10, 3);
    let y = gaussian(10, 2, 8);
    let f0 = gaussian(10, 2, 9);
    let f0_test = gaussian(3, 2, 10);
    let eta = 0.4;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    let h = prec::FD_STEP;
    for t in [0.1, 1.0, 5.0] {
        let ft = flow.train(t, &f0).unwrap();
        let d_train =
            (flow.train(t + h, &f0).unwrap() - flow.train(t - h, &f0).unwrap()) / (2.0 * h);
        let expected = -(&theta * (&ft - &y)) * eta;
        assert!(
            rel_err(&d_train, &expected) <= prec::FINITE_DIFFERENCE,
            "t = {t}"
        );
        let d_test = (flow.test(t + h, &f0, &f0_test, &theta_test).unwrap()
            - flow.test(t - h, &f0, &f0_test, &theta_test).unwrap())
            / (2.0 * h);
        let expected_test = -(&theta_test * (&ft - &y)) * eta;
        assert!(
            rel_err(&d_test, &expected_test) <= prec::FINITE_DIFFERENCE,
            "t = {t}"
        );
    }
}

#[test]
fn infinite_time_is_kernel_regression() {
    let (theta, theta_test, _) = mlp_kernels(12, 4);
    let y = gaussian(12, 2, 14);
    let f0 = gaussian(12, 2, 15);
    let f0_test = gaussian(4, 2, 16);
    let flow = GradientFlow::new(&theta, &y, 1.0).unwrap();
    let regression = KernelRegression::new(&theta, &y, 0.0).unwrap();
    // Independent: an LU solve of Θ w = Y − f_0.
    let w = theta.clone().lu().solve(&(&y - &f0)).unwrap();
    let direct = &f0_test + &theta_test * w;
    let by_cholesky = regression.test(&f0, &f0_test, &theta_test).unwrap();
    assert!(rel_err(&by_cholesky, &direct) <= prec::SPECTRAL);
    assert!(rel_err(&regression.train(&f0).unwrap(), &y) <= prec::EXACT_F64);
    let by_flow = flow
        .test(f64::INFINITY, &f0, &f0_test, &theta_test)
        .unwrap();
    assert!(rel_err(&by_flow, &direct) <= prec::SPECTRAL);
    // A long but finite time converges to it too.
    let t_long = 60.0 / flow.eigenvalues().min();
    let late = flow.test(t_long, &f0, &f0_test, &theta_test).unwrap();
    assert!(rel_err(&late, &direct) <= prec::SPECTRAL);
    assert!(rel_err(&flow.train(f64::INFINITY, &f0).unwrap(), &y) <= prec::EXACT_F64);
}

#[test]
fn ridge_regression_matches_direct_solve_and_flow_on_shifted_kernel() {
    let (theta, theta_test, _) = mlp_kernels(10, 3);
    let y = gaussian(10, 1, 17);
    let f0 = gaussian(10, 1, 18);
    let f0_test = gaussian(3, 1, 19);
    let rho = 0.3;
    let regression = KernelRegression::new(&theta, &y, rho).unwrap();
    let shifted = &theta + DMatrix::identity(10, 10) * rho;
    let w = shifted.clone().lu().solve(&(&y - &f0)).unwrap();
    let test = regression.test(&f0, &f0_test, &theta_test).unwrap();
    assert!(rel_err(&test, &(&f0_test + &theta_test * &w)) <= prec::EXACT_F64);
    let train = regression.train(&f0).unwrap();
    assert!(rel_err(&train, &(&f0 + &theta * &w)) <= prec::EXACT_F64);
    let flow = GradientFlow::new(&shifted, &y, 1.0).unwrap();
    let by_flow = flow
        .test(f64::INFINITY, &f0, &f0_test, &theta_test)
        .unwrap();
    assert!(rel_err(&by_flow, &test) <= prec::SPECTRAL);
}

#[test]
fn singular_kernel_needs_ridge_and_flow_handles_zero_eigenvalues() {
    // Rank 2 kernel on 6 points: Θ = A Aᵀ.
    let a = gaussian(6, 2, 20);
    let theta = &a * a.transpose();
    let b = gaussian(2, 2, 21);
    let theta_test = &b * a.transpose(); // the same 2 features on 2 test points
    let y = gaussian(6, 1, 22);
    let f0 = DMatrix::zeros(6, 1);
    let f0_test = DMatrix::zeros(2, 1);
    match KernelRegression::new(&theta, &y, 0.0) {
        Err(Error::Factorization { message }) => assert!(message.contains("diag_reg"), "{message}"),
        other => panic!("expected a factorization error, got {other:?}"),
    }
    assert!(KernelRegression::new(&theta, &y, 1e-6).is_ok());

    let eta = 0.2;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    assert!(flow.eigenvalues().iter().all(|&l| l >= 0.0));
    // Reference: explicit Euler on df/dt = −ηΘ(f − Y), d f_test/dt = −ηΘ_*(f − Y),
    // which never inverts Θ.
    let t = 2.0;
    let steps = 200_000;
    let dt = t / steps as f64;
    let (mut f, mut ft) = (f0.clone(), f0_test.clone());
    for _ in 0..steps {
        let r = &f - &y;
        ft -= &theta_test * &r * (eta * dt);
        f -= &theta * &r * (eta * dt);
    }
    let ours = flow.test(t, &f0, &f0_test, &theta_test).unwrap();
    assert!(ours.iter().all(|v| v.is_finite()));
    assert!(rel_err(&ours, &ft) <= EULER, "{:e}", rel_err(&ours, &ft));
    assert!(rel_err(&flow.train(t, &f0).unwrap(), &f) <= EULER);
    // t = ∞ is finite too (pseudo-inverse on the zero eigenvalues).
    let inf = flow
        .test(f64::INFINITY, &f0, &f0_test, &theta_test)
        .unwrap();
    assert!(inf.iter().all(|v| v.is_finite()));
}

#[test]
fn discrete_gradient_descent_matches_iteration_and_approaches_flow() {
    let (theta, theta_test, _) = mlp_kernels(10, 3);
    let y = gaussian(10, 2, 23);
    let f0 = gaussian(10, 2, 24);
    let f0_test = gaussian(3, 2, 25);
    let top = theta.symmetric_eigenvalues().max();
    // Explicit iteration of f ← f − ηΘ(f − Y), including an oscillating stable rate.
    for eta in [0.2 / top, 1.0 / top, 1.9 / top] {
        let flow = GradientFlow::new(&theta, &y, eta).unwrap();
        let (mut f, mut ft) = (f0.clone(), f0_test.clone());
        for s in 0..=40 {
            if s % 10 == 0 {
                assert!(rel_err(&flow.train_gd(s, &f0).unwrap(), &f) <= prec::SPECTRAL);
                let test = flow
                    .test_at(&[Horizon::Steps(s)], &f0, &f0_test, &theta_test)
                    .unwrap()
                    .remove(0);
                assert!(
                    rel_err(&test, &ft) <= prec::SPECTRAL,
                    "η λ_max = {}, s = {s}",
                    eta * top
                );
            }
            let r = &f - &y;
            ft -= &theta_test * &r * eta;
            f -= &theta * &r * eta;
        }
    }
    // Tiny steps approach the flow at t = s·η_step/η, with error O(step).
    let eta = 0.5;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    let t = 3.0;
    let mut previous = f64::INFINITY;
    for steps in [100usize, 1_000, 10_000] {
        let gd = GradientFlow::new(&theta, &y, eta * t / steps as f64).unwrap();
        let err = rel_err(
            &gd.test_at(&[Horizon::Steps(steps)], &f0, &f0_test, &theta_test)
                .unwrap()[0],
            &flow.test(t, &f0, &f0_test, &theta_test).unwrap(),
        );
        let err_train = rel_err(
            &gd.train_gd(steps, &f0).unwrap(),
            &flow.train(t, &f0).unwrap(),
        );
        assert!(err < previous / 5.0 && err_train <= 10.0 * err.max(1e-12) + 1e-3 / steps as f64);
        previous = err;
    }
    assert!(previous <= 1e-3, "{previous:e}");
}

/// Gradient descent on a kernel with a spectrum chosen by hand, Θ = Q diag(λ) Qᵀ with
/// Q a Householder reflection (no eigensolver): with η λ in (1, 2) the factors
/// 1 − ηλ are negative and the residual along them alternates in sign, so odd and
/// even step counts differ. Reference: f_s − Y = Q diag((1 − ηλ)^s) Qᵀ (f_0 − Y) and
/// f_s(x) = f_0(x) + Θ_* Q diag((1 − (1 − ηλ)^s)/λ) Qᵀ (Y − f_0), by integer powers.
#[test]
fn gradient_descent_with_negative_factors_matches_a_known_spectrum() {
    let lambdas = [4.0, 2.5, 1.0, 0.3, 0.05];
    let n = lambdas.len();
    let v = gaussian(n, 1, 90);
    let q = DMatrix::identity(n, n) - &v * v.transpose() * (2.0 / v.norm_squared());
    let theta = &q * DMatrix::from_diagonal(&DVector::from_row_slice(&lambdas)) * q.transpose();
    let theta_test = gaussian(3, n, 91);
    let y = gaussian(n, 2, 92);
    let f0 = gaussian(n, 2, 93);
    let f0_test = gaussian(3, 2, 94);
    // η λ = 1.8, 1.125 (factors −0.8, −0.125) and 0.45, 0.135, 0.0225.
    let eta = 0.45;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    for steps in [1_usize, 2, 3, 7, 24, 25] {
        let power = |f: &dyn Fn(f64) -> f64| {
            let d = DVector::from_iterator(n, lambdas.iter().map(|&l| f(l)));
            &q * DMatrix::from_diagonal(&d) * q.transpose()
        };
        let s = steps as i32;
        let decay = power(&|l| (1.0 - eta * l).powi(s));
        let weights = power(&|l| (1.0 - (1.0 - eta * l).powi(s)) / l);
        let train = &y + &decay * (&f0 - &y);
        let test = &f0_test + &theta_test * &weights * (&y - &f0);
        assert!(
            rel_err(&flow.train_gd(steps, &f0).unwrap(), &train) <= prec::SPECTRAL,
            "{steps} steps"
        );
        assert!(
            rel_err(
                &flow
                    .test_at(&[Horizon::Steps(steps)], &f0, &f0_test, &theta_test)
                    .unwrap()
                    .remove(0),
                &test
            ) <= prec::SPECTRAL,
            "{steps} steps"
        );
    }
}

#[test]
fn stable_learning_rate_threshold() {
    let (theta, _, _) = mlp_kernels(8, 1);
    let y = gaussian(8, 1, 26);
    let f0 = DMatrix::zeros(8, 1);
    let probe = GradientFlow::new(&theta, &y, 1.0).unwrap();
    let limit = probe.max_stable_learning_rate();
    let loss_after = |eta: f64| {
        let flow = GradientFlow::new(&theta, &y, eta).unwrap();
        let f = flow.train_gd(2_000, &f0).unwrap();
        0.5 * (f - &y).norm_squared()
    };
    let start = 0.5 * y.norm_squared();
    assert!(loss_after(0.98 * limit) < start);
    assert!(loss_after(1.02 * limit) > 1e3 * start);
}

/// The loss and the residual in the eigenbasis against the Padé exponential:
/// ½‖e^{−ηtΘ}(f_0 − Y)‖² and V r_t = e^{−ηtΘ}(f_0 − Y); the loss never increases.
#[test]
fn loss_and_eigenbasis_residual_match_matrix_exponential() {
    let (theta, _, _) = mlp_kernels(9, 1);
    let y = gaussian(9, 2, 27);
    let f0 = gaussian(9, 2, 28);
    let eta = 0.8;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    let mut previous = f64::INFINITY;
    for t in [0.0, 0.3, 1.0, 10.0] {
        let residual = expm_neg(&theta, eta * t) * (&f0 - &y);
        let loss = flow.loss_at(&[Horizon::Time(t)], &f0).unwrap()[0];
        let expected = 0.5 * residual.norm_squared();
        assert!(
            (loss - expected).abs() <= prec::SPECTRAL * expected,
            "t = {t}: {loss} vs {expected}"
        );
        let r = flow.residual_in_eigenbasis(Horizon::Time(t), &f0).unwrap();
        assert!(
            rel_err(&(flow.eigenvectors() * &r), &residual) <= prec::SPECTRAL,
            "t = {t}"
        );
        assert!(loss <= previous, "the loss increased at t = {t}");
        previous = loss;
    }
}

/// A kernel with an exact zero block (samples whose gradients vanish): at t = ∞ the
/// flow, its loss, its residual and the infinite ensemble are the pseudo-inverse
/// limits, computed here with nalgebra's SVD pseudo-inverse: with P = Θ Θ⁺ the
/// projector on the range of Θ, f_∞ = f_0 + P(Y − f_0) (the zero block keeps its
/// initial outputs), f_∞(x) = f_0(x) + Θ_* Θ⁺(Y − f_0), and the ensemble has mean P Y
/// and covariance (I − P) K (I − P) on the training points.
#[test]
fn infinite_time_with_exact_zero_eigenvalues_is_the_pseudo_inverse_limit() {
    let (n, m, zeros) = (6, 3, 2);
    let a = spd(n - zeros, 70, 0.1);
    let mut theta = DMatrix::zeros(n, n);
    theta.view_mut((0, 0), (n - zeros, n - zeros)).copy_from(&a);
    let mut theta_test = gaussian(m, n, 71);
    theta_test.columns_mut(n - zeros, zeros).fill(0.0);
    let y = gaussian(n, 2, 72);
    let f0 = gaussian(n, 2, 73);
    let f0_test = gaussian(m, 2, 74);
    let eta = 0.7;

    let pinv = theta.clone().pseudo_inverse(1e-12).unwrap();
    let projector = &theta * &pinv;
    let outside = DMatrix::identity(n, n) - &projector;
    let flow = GradientFlow::new(&theta, &y, eta).unwrap();
    // The premise: the eigensolver sees the zero block as eigenvalues exactly 0 (the
    // case the decay must treat as "no decay", not ∞ · 0).
    let exact_zeros = flow.eigenvalues().iter().filter(|&&l| l == 0.0).count();
    assert_eq!(exact_zeros, zeros, "eigenvalues {}", flow.eigenvalues());

    let inf = f64::INFINITY;
    let train = flow.train(inf, &f0).unwrap();
    assert!(rel_err(&train, &(&f0 + &projector * (&y - &f0))) <= prec::SPECTRAL);
    let test = flow.test(inf, &f0, &f0_test, &theta_test).unwrap();
    let expected_test = &f0_test + &theta_test * &pinv * (&y - &f0);
    assert!(rel_err(&test, &expected_test) <= prec::SPECTRAL);
    let left = &outside * (&f0 - &y);
    let loss = flow.loss_at(&[Horizon::Time(inf)], &f0).unwrap()[0];
    let expected_loss = 0.5 * left.norm_squared();
    assert!((loss - expected_loss).abs() <= prec::SPECTRAL * expected_loss);
    let r = flow
        .residual_in_eigenbasis(Horizon::Time(inf), &f0)
        .unwrap();
    assert!(rel_err(&(flow.eigenvectors() * &r), &left) <= prec::SPECTRAL);

    let joint = spd(n + m, 75, 0.05);
    let nngp = joint.view((0, 0), (n, n)).into_owned();
    let nngp_test = joint.view((n, 0), (m, n)).into_owned();
    let nngp_tt = joint.view((n, n), (m, m)).into_owned();
    let ensemble = InfiniteEnsemble::new(&theta, &nngp, &y, eta).unwrap();
    let at_inf = ensemble.train(inf).unwrap();
    assert!(rel_err(&at_inf.mean, &(&projector * &y)) <= prec::SPECTRAL);
    assert!(rel_err(&at_inf.covariance, &(&outside * &nngp * &outside)) <= prec::SPECTRAL);
    let on_test = ensemble
        .test(inf, &theta_test, &nngp_test, &nngp_tt)
        .unwrap();
    let ta = &theta_test * &pinv;
    let cross = &ta * nngp_test.transpose();
    let cov = &nngp_tt - &cross - cross.transpose() + &ta * &nngp * ta.transpose();
    assert!(rel_err(&on_test.mean, &(&ta * &y)) <= prec::SPECTRAL);
    assert!(rel_err(&on_test.covariance, &cov) <= prec::SPECTRAL);
}

#[test]
fn ensemble_matches_direct_formulas() {
    let (ntk, ntk_test, _) = mlp_kernels(8, 3);
    // An NNGP-like kernel for the same points: another positive definite kernel.
    let joint = spd(11, 30, 0.05);
    let nngp = joint.view((0, 0), (8, 8)).into_owned();
    let nngp_test = joint.view((8, 0), (3, 8)).into_owned();
    let nngp_tt = joint.view((8, 8), (3, 3)).into_owned();
    let y = gaussian(8, 2, 31);
    let eta = 0.6;
    let ensemble = InfiniteEnsemble::new(&ntk, &nngp, &y, eta).unwrap();
    let inverse = ntk.clone().try_inverse().unwrap();
    for t in [0.0, 0.5, 4.0] {
        let e = expm_neg(&ntk, eta * t);
        let a = &inverse * (DMatrix::identity(8, 8) - &e);
        let mean = &ntk_test * &a * &y;
        let cov = &nngp_tt
            - &ntk_test * &a * nngp_test.transpose()
            - &nngp_test * &a * ntk_test.transpose()
            + &ntk_test * &a * &nngp * a.transpose() * ntk_test.transpose();
        let ours = ensemble.test(t, &ntk_test, &nngp_test, &nngp_tt).unwrap();
        assert!(rel_err(&ours.mean, &mean) <= prec::SPECTRAL, "t = {t}");
        assert!(rel_err(&ours.covariance, &cov) <= prec::SPECTRAL, "t = {t}");
        assert!(rel_err(&ensemble.test_mean(t, &ntk_test).unwrap(), &mean) <= prec::SPECTRAL);
        let train = ensemble.train(t).unwrap();
        assert!((&train.mean - (&y - &e * &y)).amax() <= prec::SPECTRAL * y.amax());
        assert!(rel_err(&train.covariance, &(&e * &nngp * &e)) <= prec::SPECTRAL);
    }
    // t = 0: the prior, N(0, K).
    let prior = ensemble.test(0.0, &ntk_test, &nngp_test, &nngp_tt).unwrap();
    assert!(prior.mean.amax() == 0.0 && rel_err(&prior.covariance, &nngp_tt) <= prec::EXACT_F64);
}

/// The ensemble's covariance is the covariance of the flow's linear map applied to
/// the prior: propagate the columns of a square root L of the joint prior K = L Lᵀ
/// (train and test points) through `GradientFlow` with targets 0; the outputs F
/// satisfy F Fᵀ = M K Mᵀ, the exact covariance (a Monte Carlo estimate without
/// sampling error). On the training points, likewise through `train`.
#[test]
fn ensemble_covariance_is_the_propagated_prior() {
    let (n, m) = (8, 3);
    let (ntk, ntk_test, _) = mlp_kernels(n, m);
    let joint = spd(n + m, 36, 0.05);
    let nngp = joint.view((0, 0), (n, n)).into_owned();
    let nngp_test = joint.view((n, 0), (m, n)).into_owned();
    let nngp_tt = joint.view((n, n), (m, m)).into_owned();
    let root = joint.clone().cholesky().unwrap().l();
    let draws_train = root.rows(0, n).into_owned();
    let draws_test = root.rows(n, m).into_owned();
    let y = gaussian(n, 2, 37);
    let eta = 0.6;
    let ensemble = InfiniteEnsemble::new(&ntk, &nngp, &y, eta).unwrap();
    let centred = GradientFlow::new(&ntk, &DMatrix::zeros(n, n + m), eta).unwrap();
    for t in [0.0, 0.5, 4.0, f64::INFINITY] {
        let f_test = centred
            .test(t, &draws_train, &draws_test, &ntk_test)
            .unwrap();
        let f_train = centred.train(t, &draws_train).unwrap();
        let test = ensemble.test(t, &ntk_test, &nngp_test, &nngp_tt).unwrap();
        let train = ensemble.train(t).unwrap();
        assert!(
            rel_err(&test.covariance, &(&f_test * f_test.transpose())) <= prec::SPECTRAL,
            "t = {t}"
        );
        assert!(
            rel_err(&train.covariance, &(&f_train * f_train.transpose())) <= prec::SPECTRAL,
            "t = {t}"
        );
    }
}

#[test]
fn ensemble_matches_monte_carlo_over_initialisations() {
    // Draw f_0 ~ N(0, K) on train and test jointly, run the flow for each draw (as
    // S output columns at once) and compare the sample mean and covariance.
    let (ntk, ntk_test, _) = mlp_kernels(6, 2);
    let joint = spd(8, 32, 0.1);
    let nngp = joint.view((0, 0), (6, 6)).into_owned();
    let nngp_test = joint.view((6, 0), (2, 6)).into_owned();
    let nngp_tt = joint.view((6, 6), (2, 2)).into_owned();
    let y = gaussian(6, 1, 33);
    let eta = 0.5;
    let t = 1.5;
    let samples = 40_000;
    let l = joint.clone().cholesky().unwrap().l();
    let draws = &l * gaussian(8, samples, 34); // 8 × S, column s ~ N(0, K)
    let f0 = draws.rows(0, 6).into_owned();
    let f0_test = draws.rows(6, 2).into_owned();
    let y_wide = DMatrix::from_fn(6, samples, |i, _| y[(i, 0)]);
    let flow = GradientFlow::new(&ntk, &y_wide, eta).unwrap();
    let ft = flow.test(t, &f0, &f0_test, &ntk_test).unwrap(); // 2 × S
    let mean = ft.column_mean();
    let centred = DMatrix::from_fn(2, samples, |i, s| ft[(i, s)] - mean[i]);
    let cov = &centred * centred.transpose() / (samples - 1) as f64;

    let ensemble = InfiniteEnsemble::new(&ntk, &nngp, &y, eta).unwrap();
    let exact = ensemble.test(t, &ntk_test, &nngp_test, &nngp_tt).unwrap();
    let sd = exact.covariance.diagonal().map(f64::sqrt);
    for i in 0..2 {
        // 5 standard errors.
        assert!(
            (mean[i] - exact.mean[(i, 0)]).abs() <= 5.0 * sd[i] / (samples as f64).sqrt(),
            "mean {i}: {} vs {}",
            mean[i],
            exact.mean[(i, 0)]
        );
        for j in 0..2 {
            let tol = 5.0 * sd[i] * sd[j] * (2.0 / samples as f64).sqrt();
            assert!(
                (cov[(i, j)] - exact.covariance[(i, j)]).abs() <= tol,
                "cov {i},{j}"
            );
        }
    }
}

#[test]
fn f32_agrees_with_f64() {
    let (theta, theta_test, _) = mlp_kernels(12, 3);
    let y = gaussian(12, 1, 35);
    let f0 = gaussian(12, 1, 36) * 0.1;
    let f0_test = gaussian(3, 1, 37) * 0.1;
    let flow = GradientFlow::new(&theta, &y, 0.5).unwrap();
    let flow32 = GradientFlow::<f32>::new(&theta.cast(), &y.cast(), 0.5).unwrap();
    let a = flow.test(2.0, &f0, &f0_test, &theta_test).unwrap();
    let b = flow32
        .test(2.0, &f0.cast(), &f0_test.cast(), &theta_test.cast())
        .unwrap();
    assert!(rel_err(&b.cast::<f64>(), &a) <= prec::F32_VS_F64);
}

#[test]
fn bad_inputs_are_errors() {
    let theta = spd(4, 40, 0.1);
    let y = gaussian(4, 1, 41);
    let f0 = DMatrix::zeros(4, 1);
    let f0_test = DMatrix::zeros(2, 1);
    let theta_test = gaussian(2, 4, 42);
    let shape = |r: Result<GradientFlow<f64>, Error>, arg: &str| match r {
        Err(Error::ShapeMismatch { argument, .. }) => assert_eq!(argument, arg),
        other => panic!("expected a shape error for {arg}, got {other:?}"),
    };
    shape(
        GradientFlow::new(&gaussian(4, 3, 1), &y, 1.0),
        "theta_train",
    );
    shape(
        GradientFlow::new(&theta, &gaussian(3, 1, 1), 1.0),
        "y_train",
    );
    let mut asym = theta.clone();
    asym[(0, 1)] += 1e-6;
    assert!(matches!(
        GradientFlow::new(&asym, &y, 1.0),
        Err(Error::NotSymmetric {
            argument: "theta_train",
            ..
        })
    ));
    // Round-off-level asymmetry is accepted.
    let mut tiny = theta.clone();
    tiny[(0, 1)] += 1e-13;
    assert!(GradientFlow::new(&tiny, &y, 1.0).is_ok());
    let mut nan = theta.clone();
    nan[(2, 3)] = f64::NAN;
    assert!(matches!(
        GradientFlow::new(&nan, &y, 1.0),
        Err(Error::NonFinite {
            argument: "theta_train",
            row: 2,
            col: 3
        })
    ));
    let mut inf_y = y.clone();
    inf_y[1] = f64::INFINITY;
    assert!(matches!(
        GradientFlow::new(&theta, &inf_y, 1.0),
        Err(Error::NonFinite {
            argument: "y_train",
            ..
        })
    ));
    for eta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            GradientFlow::new(&theta, &y, eta),
            Err(Error::InvalidParameter {
                parameter: "eta",
                ..
            })
        ));
    }
    let flow = GradientFlow::new(&theta, &y, 1.0).unwrap();
    for t in [-1e-3, f64::NAN] {
        assert!(matches!(
            flow.train(t, &f0),
            Err(Error::InvalidParameter { parameter: "t", .. })
        ));
        assert!(matches!(
            flow.test(t, &f0, &f0_test, &theta_test),
            Err(Error::InvalidParameter { parameter: "t", .. })
        ));
        assert!(flow.train_at(&Horizon::times(&[1.0, t]), &f0).is_err());
        assert!(flow.loss_at(&[Horizon::Time(t)], &f0).is_err());
    }
    assert!(matches!(
        flow.train(1.0, &DMatrix::zeros(3, 1)),
        Err(Error::ShapeMismatch {
            argument: "f0_train",
            ..
        })
    ));
    assert!(matches!(
        flow.train(1.0, &DMatrix::zeros(4, 2)),
        Err(Error::ShapeMismatch {
            argument: "f0_train",
            ..
        })
    ));
    assert!(matches!(
        flow.test(1.0, &f0, &DMatrix::zeros(3, 1), &theta_test),
        Err(Error::ShapeMismatch {
            argument: "theta_test_train",
            ..
        })
    ));
    assert!(matches!(
        flow.test(1.0, &f0, &f0_test, &gaussian(2, 5, 1)),
        Err(Error::ShapeMismatch {
            argument: "theta_test_train",
            ..
        })
    ));
    assert!(matches!(
        flow.test(1.0, &f0, &DMatrix::zeros(2, 3), &theta_test),
        Err(Error::ShapeMismatch {
            argument: "f0_test",
            ..
        })
    ));
    let mut nan_test = theta_test.clone();
    nan_test[(1, 1)] = f64::NAN;
    assert!(matches!(
        flow.test(1.0, &f0, &f0_test, &nan_test),
        Err(Error::NonFinite {
            argument: "theta_test_train",
            ..
        })
    ));
    assert!(matches!(
        flow.train_gd(3, &DMatrix::from_element(4, 1, f64::NAN)),
        Err(Error::NonFinite {
            argument: "f0_train",
            ..
        })
    ));
    // KernelRegression and InfiniteEnsemble validate the same way.
    assert!(matches!(
        KernelRegression::new(&theta, &y, -1.0),
        Err(Error::InvalidParameter {
            parameter: "diag_reg",
            ..
        })
    ));
    assert!(matches!(
        KernelRegression::new(&asym, &y, 0.0),
        Err(Error::NotSymmetric { .. })
    ));
    let regression = KernelRegression::new(&theta, &y, 0.0).unwrap();
    assert!(matches!(
        regression.test(&f0, &f0_test, &gaussian(3, 4, 1)),
        Err(Error::ShapeMismatch {
            argument: "theta_test_train",
            ..
        })
    ));
    assert!(matches!(
        InfiniteEnsemble::new(&theta, &spd(3, 1, 0.1), &y, 1.0),
        Err(Error::ShapeMismatch {
            argument: "nngp_train",
            ..
        })
    ));
    assert!(matches!(
        InfiniteEnsemble::new(&theta, &asym, &y, 1.0),
        Err(Error::NotSymmetric {
            argument: "nngp_train",
            ..
        })
    ));
    let ensemble = InfiniteEnsemble::new(&theta, &theta, &y, 1.0).unwrap();
    assert!(matches!(
        ensemble.test(1.0, &theta_test, &theta_test, &spd(3, 1, 0.1)),
        Err(Error::ShapeMismatch {
            argument: "nngp_test_test",
            ..
        })
    ));
    assert!(matches!(
        ensemble.test(1.0, &theta_test, &gaussian(2, 3, 1), &spd(2, 1, 0.1)),
        Err(Error::ShapeMismatch {
            argument: "nngp_test_train",
            ..
        })
    ));
    // Messages name the argument.
    let msg = GradientFlow::new(&theta, &gaussian(3, 1, 1), 1.0)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("y_train") && msg.contains("3 x 1"), "{msg}");
}

/// Tiny negative eigenvalues from round-off are clipped to 0.
#[test]
fn negative_round_off_eigenvalues_are_clipped() {
    let a = gaussian(5, 2, 50);
    let mut theta = &a * a.transpose();
    // Push one zero eigenvalue slightly negative: Θ − ε v vᵀ with v ⟂ range(A).
    let q = a.clone().qr().q();
    let full = DMatrix::from_fn(5, 5, |i, j| if j < 2 { q[(i, j)] } else { 0.0 });
    let mut v = DVector::from_fn(5, |i, _| (i as f64 + 1.0).sin());
    v -= &full * (full.transpose() * &v);
    v /= v.norm();
    theta -= &v * v.transpose() * 1e-13;
    let flow = GradientFlow::new(&theta, &gaussian(5, 1, 51), 1.0).unwrap();
    assert!(flow.eigenvalues().iter().all(|&l| l >= 0.0));
    let out = flow
        .test(
            3.0,
            &DMatrix::zeros(5, 1),
            &DMatrix::zeros(1, 1),
            &DMatrix::from_element(1, 5, 0.1),
        )
        .unwrap();
    assert!(out[0].is_finite());
}

#[test]
fn krylov_matches_eigen_path() {
    let (theta, theta_test, _) = mlp_kernels(200, 7);
    let y = gaussian(200, 2, 60);
    let f0 = gaussian(200, 2, 61) * 0.3;
    let f0_test = gaussian(7, 2, 62) * 0.3;
    let eta = 0.5 / theta.symmetric_eigenvalues().max();
    let exact = GradientFlow::new(&theta, &y, eta).unwrap();
    let krylov = KrylovFlow::new(&theta, &y, eta)
        .unwrap()
        .tolerance(1e-12)
        .unwrap();
    let mut worst = 0.0_f64;
    for t in [0.0, 0.3, 3.0, 30.0, 300.0] {
        let a = krylov.train(t, &f0).unwrap();
        let b = exact.train(t, &f0).unwrap();
        let e_train = (&a - &b).norm() / (&f0 - &y).norm();
        let c = krylov.test(t, &f0, &f0_test, &theta_test).unwrap();
        let d = exact.test(t, &f0, &f0_test, &theta_test).unwrap();
        let e_test = rel_err(&c, &d);
        worst = worst.max(e_train).max(e_test);
        assert!(
            e_train <= 1e-9 && e_test <= 1e-8,
            "t = {t}: {e_train:e}, {e_test:e}"
        );
    }
    eprintln!("Krylov vs eigen path: worst relative error {worst:e}");
}

#[test]
fn krylov_small_spaces_and_limits() {
    // A rank-2 kernel: the Krylov space is exhausted after 3 steps, exactly.
    let a = gaussian(40, 2, 63);
    let theta = &a * a.transpose();
    let y = gaussian(40, 1, 64);
    let f0 = gaussian(40, 1, 65);
    let krylov = KrylovFlow::new(&theta, &y, 0.3)
        .unwrap()
        .max_dimension(3)
        .unwrap();
    let exact = GradientFlow::new(&theta, &y, 0.3).unwrap();
    assert!(
        rel_err(
            &krylov.train(2.0, &f0).unwrap(),
            &exact.train(2.0, &f0).unwrap()
        ) <= prec::SPECTRAL
    );
    let xt = gaussian(3, 2, 66) * a.transpose();
    let f0_test = DMatrix::zeros(3, 1);
    let k_test = krylov.test(2.0, &f0, &f0_test, &xt).unwrap();
    assert!(rel_err(&k_test, &exact.test(2.0, &f0, &f0_test, &xt).unwrap()) <= prec::SPECTRAL);

    // A well-spread spectrum at a long time needs many steps: too few is an error.
    let theta = spd(120, 67, 1e-4);
    let y = gaussian(120, 1, 68);
    let f0 = DMatrix::zeros(120, 1);
    let short = KrylovFlow::new(&theta, &y, 1.0)
        .unwrap()
        .max_dimension(4)
        .unwrap();
    assert!(matches!(
        short.test(1e4, &f0, &DMatrix::zeros(1, 1), &gaussian(1, 120, 69)),
        Err(Error::Factorization { .. })
    ));
    // Validation.
    let krylov = KrylovFlow::new(&theta, &y, 1.0).unwrap();
    assert!(matches!(
        krylov.train(f64::INFINITY, &f0),
        Err(Error::InvalidParameter { parameter: "t", .. })
    ));
    assert!(matches!(
        krylov.train(-1.0, &f0),
        Err(Error::InvalidParameter { parameter: "t", .. })
    ));
    assert!(matches!(
        krylov.train(1.0, &DMatrix::zeros(3, 1)),
        Err(Error::ShapeMismatch {
            argument: "f0_train",
            ..
        })
    ));
    assert!(matches!(
        krylov.test(1.0, &f0, &DMatrix::zeros(2, 1), &gaussian(2, 7, 1)),
        Err(Error::ShapeMismatch {
            argument: "theta_test_train",
            ..
        })
    ));
    assert!(krylov.clone().tolerance(0.0).is_err());
    assert!(krylov.clone().tolerance(f64::NAN).is_err());
    assert!(krylov.clone().max_dimension(0).is_err());
    assert!(matches!(
        KrylovFlow::new(&theta, &y, -1.0),
        Err(Error::InvalidParameter {
            parameter: "eta",
            ..
        })
    ));
    // A zero residual is returned as is.
    assert_eq!(krylov.train(3.0, &y).unwrap(), y);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    /// Semigroup and the eigenbasis loss on random kernels and times.
    #[test]
    fn random_kernels_semigroup(seed in 0u64..1000, n in 2usize..12, t1 in 0.0f64..3.0, t2 in 0.0f64..3.0, eta in 0.05f64..2.0) {
        let theta = spd(n, seed, 1e-3);
        let y = gaussian(n, 1, seed + 1);
        let f0 = gaussian(n, 1, seed + 2);
        let flow = GradientFlow::new(&theta, &y, eta).unwrap();
        let mid = flow.train(t1, &f0).unwrap();
        let direct = flow.train(t1 + t2, &f0).unwrap();
        prop_assert!(rel_err(&flow.train(t2, &mid).unwrap(), &direct) <= prec::EXACT_F64);
        let loss = flow.loss_at(&[Horizon::Time(t1 + t2)], &f0).unwrap()[0];
        prop_assert!((loss - 0.5 * (&direct - &y).norm_squared()).abs() <= prec::EXACT_F64 * (1.0 + loss));
    }
}
