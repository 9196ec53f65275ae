"""ntk.predict.gradient_descent_mse against neural-tangents' formulas written out here
with numpy (mean loss: time divided by y.size; diag_reg relative to the mean trace;
t=None by a linear solve; shapes and returns of predict.py), and against the Rust
GradientFlow and KernelRegression it is built on. The neural-tangents values
themselves are in test_references.py."""

import numpy as np
import pytest

import ntk
from conftest import rel_err

SPECTRAL = 1e-9  # two routes through an eigendecomposition / solve (prec.rs)


def nt_formulas(k, y, lr, diag_reg, absolute, t, f0, f0_test, kt):
    """neural_tangents/_src/predict.py's gradient_descent_mse, independently: the
    regularised kernel's eigenbasis, expm1(−max(λ, 0) t lr / y.size) and its ratio to
    |λ|; t=None by a linear solve with the training outputs equal to y."""
    n = k.shape[0]
    reg = diag_reg if absolute else diag_reg * np.trace(k) / n
    kr = k + reg * np.eye(n)
    if t is None:
        return y.copy(), f0_test + kt @ np.linalg.solve(kr, y - f0)
    lam, v = np.linalg.eigh(kr)
    tt = np.asarray(t, dtype=float) * lr
    e = np.expm1(-np.multiply.outer(tt, np.maximum(lam, 0.0)) / y.size)  # t.shape + (n,)
    r = f0 - y
    train = f0 + np.einsum("ji,...i,ki,kc->...jc", v, e, v, r)
    test = f0_test + np.einsum("mj,ji,...i,ki,kc->...mc", kt, v, e / np.abs(lam), v, r)
    return train, test


@pytest.fixture
def problem(rng):
    n, m, k = 9, 4, 2
    a = rng.standard_normal((n + m, 3 * (n + m)))
    full = a @ a.T / a.shape[1] + 0.1 * np.eye(n + m)
    return dict(
        k=full[:n, :n], kt=full[n:, :n], y=rng.standard_normal((n, k)),
        f0=0.3 * rng.standard_normal((n, k)), f0_test=0.3 * rng.standard_normal((m, k)),
    )


@pytest.mark.parametrize("lr, diag_reg, absolute", [(1.0, 0.0, False), (0.3, 0.1, False), (2.0, 0.05, True)])
@pytest.mark.parametrize("t", [0.0, 0.7, 25.0, [0.0, 1.0, 3.0], [[0.5, 2.0, 8.0], [1.0, 4.0, 1e3]], None])
def test_matches_neural_tangents_formulas(problem, lr, diag_reg, absolute, t):
    p = problem
    predict_fn = ntk.predict.gradient_descent_mse(
        p["k"], p["y"], learning_rate=lr, diag_reg=diag_reg, diag_reg_absolute_scale=absolute)
    train, test = predict_fn(t, p["f0"], p["f0_test"], p["kt"])
    want_train, want_test = nt_formulas(
        p["k"], p["y"], lr, diag_reg, absolute, t, p["f0"], p["f0_test"], p["kt"])
    lead = () if t is None else np.shape(t)
    assert train.shape == lead + p["y"].shape and test.shape == lead + p["f0_test"].shape
    assert rel_err(train, want_train) <= SPECTRAL and rel_err(test, want_test) <= SPECTRAL


def test_time_is_divided_by_the_number_of_targets(problem):
    """Mean loss: t with y of N x k entries is t / (N k) of the sum loss's time."""
    p = problem
    predict_fn = ntk.predict.gradient_descent_mse(p["k"], p["y"], learning_rate=0.5)
    flow = ntk.GradientFlow(p["k"], p["y"], 1.0)
    t = 3.0
    train, test = predict_fn(t, p["f0"], p["f0_test"], p["kt"])
    eta_t = 0.5 * t / p["y"].size
    assert rel_err(train, flow.train(eta_t, p["f0"])) <= SPECTRAL
    assert rel_err(test, flow.test(eta_t, p["f0"], p["f0_test"], p["kt"])) <= SPECTRAL
    # The same through the Rust flow in its units: η = lr / y.size, same t (bit for bit).
    rust = ntk.GradientFlow(p["k"], p["y"], 0.5 / p["y"].size)
    assert np.array_equal(train, rust.train(t, p["f0"]))
    assert np.array_equal(test, rust.test(t, p["f0"], p["f0_test"], p["kt"]))


def test_diag_reg_is_relative_to_the_mean_trace(problem):
    p = problem
    scale = np.trace(p["k"]) / p["k"].shape[0]
    rel = ntk.predict.gradient_descent_mse(p["k"], p["y"], diag_reg=0.2)
    ab = ntk.predict.gradient_descent_mse(p["k"], p["y"], diag_reg=0.2 * scale, diag_reg_absolute_scale=True)
    for t in (1.5, None):
        a = rel(t, p["f0"], p["f0_test"], p["kt"])
        b = ab(t, p["f0"], p["f0_test"], p["kt"])
        assert rel_err(a[1], b[1]) <= SPECTRAL and rel_err(a[0], b[0]) <= SPECTRAL
    # t = None against the Rust kernel regression with the absolute ridge.
    reg = ntk.KernelRegression(p["k"], p["y"], 0.2 * scale)
    _, test = rel(None, p["f0"], p["f0_test"], p["kt"])
    assert rel_err(test, reg.test(p["f0"], p["f0_test"], p["kt"])) <= SPECTRAL


def test_none_is_infinite_time(problem):
    p = problem
    predict_fn = ntk.predict.gradient_descent_mse(p["k"], p["y"])
    train, test = predict_fn(None, p["f0"], p["f0_test"], p["kt"])
    assert np.array_equal(train, p["y"])
    late_train, late_test = predict_fn(np.inf, p["f0"], p["f0_test"], p["kt"])
    assert rel_err(late_train, train) <= SPECTRAL and rel_err(late_test, test) <= SPECTRAL


def test_returns_follow_neural_tangents(problem):
    p = problem
    predict_fn = ntk.predict.gradient_descent_mse(p["k"], p["y"])
    both = predict_fn(2.0, p["f0"], p["f0_test"], p["kt"])
    assert isinstance(both, tuple) and len(both) == 2
    # fx_test_0 None: the training outputs alone; fx_train_0 None: the test outputs
    # alone, from f_0 = 0 on the training set.
    only_train = predict_fn(2.0, p["f0"])
    assert isinstance(only_train, np.ndarray) and np.array_equal(only_train, both[0])
    only_test = predict_fn(2.0, None, p["f0_test"], p["kt"])
    _, from_zero = predict_fn(2.0, np.zeros_like(p["y"]), p["f0_test"], p["kt"])
    assert np.array_equal(only_test, from_zero)
    # Defaults: fx_train_0 = 0 (a scalar broadcast), t = None.
    assert np.array_equal(predict_fn(2.0), predict_fn(2.0, np.zeros_like(p["y"])))
    assert np.array_equal(predict_fn(), p["y"])
    _, inf_test = predict_fn(None, 0.0, 0.0, p["kt"])
    want = p["kt"] @ np.linalg.solve(p["k"], p["y"])
    assert rel_err(inf_test, want) <= SPECTRAL
    # A 0-d array time has no leading axis; a 1-element list has one.
    assert predict_fn(np.array(1.0), p["f0"]).shape == p["y"].shape
    assert predict_fn([1.0], p["f0"]).shape == (1,) + p["y"].shape


def test_the_kernels_dtype_is_the_results(problem):
    p = problem
    predict_fn = ntk.predict.gradient_descent_mse(p["k"].astype(np.float32), p["y"])
    train, test = predict_fn(1.0, p["f0"], p["f0_test"], p["kt"])
    assert train.dtype == np.float32 and test.dtype == np.float32
    train64, _ = ntk.predict.gradient_descent_mse(p["k"], p["y"])(1.0, p["f0"], p["f0_test"], p["kt"])
    assert train64.dtype == np.float64
    assert rel_err(train, train64) < 1e-4


def test_max_learning_rate(problem):
    p = problem
    lam = np.linalg.eigvalsh(p["k"])[-1]
    assert np.isclose(ntk.predict.max_learning_rate(p["k"]), 2 * p["k"].shape[0] / (lam + 1e-12))
    flow = ntk.GradientFlow(p["k"], p["y"], 1.0)
    assert np.isclose(ntk.predict.max_learning_rate(p["k"], y_train_size=1), flow.max_stable_learning_rate())


def test_errors(problem):
    p = problem
    predict_fn = ntk.predict.gradient_descent_mse(p["k"], p["y"])
    with pytest.raises(ValueError, match="Both `fx_train_0` and `fx_test_0` are `None`"):
        predict_fn(1.0, None, None)
    with pytest.raises(ValueError, match="k_test_train"):
        predict_fn(1.0, p["f0"], p["f0_test"])
    with pytest.raises(ValueError, match="`t` = -1 is invalid"):
        predict_fn(-1.0, p["f0"])
    with pytest.raises(ValueError, match="`t` = NaN is invalid"):
        predict_fn([1.0, np.nan], p["f0"])
    with pytest.raises(ValueError, match="theta_test_train"):
        predict_fn(1.0, p["f0"], p["f0_test"], p["kt"][:, :-1])
    with pytest.raises(ValueError, match="trace_axes"):
        ntk.predict.gradient_descent_mse(p["k"], p["y"], trace_axes=())
    with pytest.raises(ValueError, match="y_train"):
        ntk.predict.gradient_descent_mse(p["k"], p["y"][:, 0])(1.0)
    with pytest.raises(ValueError, match="k_train_train"):
        ntk.predict.gradient_descent_mse(p["k"][:, :-1], p["y"])
    with pytest.raises(ValueError):
        predict_fn(1.0, p["f0"][:-1])
    singular = np.ones((3, 3))
    with pytest.raises(ValueError, match="diag_reg"):
        ntk.predict.gradient_descent_mse(singular, np.ones((3, 1)))(None, 0.0, 0.0, np.ones((1, 3)))
    with pytest.raises(ValueError, match="eta"):
        ntk.predict.gradient_descent_mse(p["k"], p["y"], learning_rate=0.0)(1.0)


def test_later_changes_to_the_callers_arrays_do_not_leak_in(problem):
    p = problem
    k, y = p["k"].copy(), p["y"].copy()
    predict_fn = ntk.predict.gradient_descent_mse(k, y)
    want = ntk.predict.gradient_descent_mse(p["k"], p["y"])(1.0, p["f0"])
    k *= 2.0  # before the first call, which factorises the kernel
    y[:] = 0.0
    assert np.array_equal(predict_fn(1.0, p["f0"]), want)
