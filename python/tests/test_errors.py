"""Every error path: ValueError for bad shapes, values and hyperparameters (carrying the
Rust message, which names the argument), TypeError for wrong types, MemoryError for a
size that cannot be allocated; never a crash."""

import numpy as np
import pytest

import ntk


@pytest.fixture
def spec():
    return ntk.MlpSpec(3).hidden(8, "relu").bias_std(0.1)


@pytest.fixture
def x(rng):
    return rng.standard_normal((5, 3))


def complete_program():
    p = ntk.Program(4)
    w = p.weight(1.0)
    h = p.apply("relu", p.dense(w, p.input(0, 4)))
    p.output(h, 1.0)
    return p


@pytest.mark.parametrize("call, match", [
    (lambda: ntk.MlpSpec(0), "`input_dim` = 0"),
    (lambda: ntk.MlpSpec(-3), "`input_dim` = -3"),
    (lambda: ntk.MlpSpec(3).hidden(0, "relu"), "width"),
    (lambda: ntk.MlpSpec(3).hidden(-1, "relu"), "`width` = -1"),
    (lambda: ntk.MlpSpec(3).hidden(4, "swish"), "unknown activation 'swish'"),
    (lambda: ntk.MlpSpec(3).hidden(4, "leaky_relu"), "needs its slope"),
    (lambda: ntk.MlpSpec(3).hidden(4, "leaky_relu(x)"), "not a number"),
    (lambda: ntk.MlpSpec(3).hidden(4, "leaky_relu(inf)"), "slope"),
    (lambda: ntk.MlpSpec(3).weight_std(-1.0), "weight_std"),
    (lambda: ntk.MlpSpec(3).bias_std(float("nan")), "bias_std"),
    (lambda: ntk.MlpSpec(3).outputs(0), "`outputs` = 0"),
    (lambda: ntk.MlpSpec(3).parameterization("mup"), "parameterization"),
    (lambda: ntk.MlpSpec(3).init(seed=-1), "`seed` = -1"),
    (lambda: ntk.MlpSpec(3).init(seed=2**64), "seed"),
    (lambda: ntk.MlpSpec(3).init(dtype=np.int32), "`dtype` = int32"),
    (lambda: ntk.MlpSpec(3).init(dtype=np.float16), "`dtype` = float16"),
])
def test_bad_specs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("call", [
    lambda: ntk.MlpSpec("3"),
    lambda: ntk.MlpSpec(3.0),
    lambda: ntk.MlpSpec(3).hidden(4, 3),
    lambda: ntk.MlpSpec(3).hidden(4.5, "relu"),
    lambda: ntk.MlpSpec(3).weight_std("big"),
    lambda: ntk.MlpSpec(3).init(dtype="not a dtype"),
    lambda: ntk.MlpSpec(3).init(seed=1.5),
])
def test_wrong_types_in_specs(call):
    with pytest.raises(TypeError):
        call()


def test_bad_inputs(spec, x):
    net = spec.init(seed=0)
    nan = x.copy()
    nan[2, 1] = np.nan
    for f in (lambda a, b=None: ntk.infinite_width(spec, a, b), lambda a, b=None: ntk.empirical_ntk(net, a, b)):
        with pytest.raises(ValueError, match=r"`x1` has shape 5 x 2, expected 3 columns"):
            f(x[:, :2])
        with pytest.raises(ValueError, match=r"`x2`"):
            f(x, x[:, :2])
        with pytest.raises(ValueError, match=r"`x1` has a NaN or infinite entry at row 2, column 1"):
            f(nan)
        with pytest.raises(ValueError, match=r"`x1` has shape \(3,\), expected a 2-D array"):
            f(x[0])
        with pytest.raises(ValueError, match=r"`x1` has shape \(5, 3, 1\)"):
            f(x[:, :, None])
        with pytest.raises(ValueError, match="`x1`"):
            f([[1.0, 2.0, 3.0], [1.0]])  # ragged
        with pytest.raises(TypeError, match="`x1` must hold real numbers"):
            f("abc")
        with pytest.raises(TypeError, match="`x1` must hold real numbers"):
            f(x.astype(complex))
        with pytest.raises(TypeError, match="`x1` must hold real numbers"):
            f(None)
        with pytest.raises(TypeError, match="`x1` must hold real numbers"):
            f([["a", "b", "c"]])
    with pytest.raises(TypeError, match="MlpSpec or a Program"):
        ntk.infinite_width(net, x)
    with pytest.raises(TypeError):
        ntk.empirical_ntk(spec, x)
    with pytest.raises(ValueError, match="`x` has shape"):
        net.forward(x[:, :1])
    with pytest.raises(ValueError, match="cotangent"):
        net.vjp(x, np.ones((4, 1)))


def test_float32_overflow_is_an_error(spec):
    net = spec.init(seed=0, dtype=np.float32)
    with pytest.raises(ValueError, match="empirical_ntk"):
        ntk.empirical_ntk(net, np.full((2, 3), 1e30))


def test_bad_parameters(spec):
    net = spec.init(seed=0)
    p = net.parameters()
    with pytest.raises(ValueError, match="params"):
        net.set_parameters(p[:-1])
    with pytest.raises(ValueError, match=r"`params` has shape \(1, "):
        net.set_parameters(p[None, :])
    bad = p.copy()
    bad[3] = np.inf
    with pytest.raises(ValueError, match="params"):
        net.set_parameters(bad)
    with pytest.raises(ValueError, match="params"):
        ntk.Mlp.from_parameters(spec, p[:-2])
    with pytest.raises(ValueError, match="layer"):
        net.weights(5)
    with pytest.raises(ValueError, match="`layer` = -1"):
        net.bias(-1)
    assert np.array_equal(net.parameters(), p), "a failed call changes nothing"


def test_bad_blocks(spec, x):
    net = spec.init(seed=0)
    for f in (ntk.empirical_ntk_block, ntk.infinite_width_block):
        target = net if f is ntk.empirical_ntk_block else spec
        with pytest.raises(ValueError, match="rows"):
            f(target, x, x, (3, 9), (0, 2))
        with pytest.raises(ValueError, match="cols"):
            f(target, x, x, (0, 2), (4, 2))
        with pytest.raises(ValueError, match="step 2"):
            f(target, x, x, range(0, 4, 2), (0, 2))
        with pytest.raises(ValueError, match="`rows` = -1"):
            f(target, x, x, (-1, 2), (0, 2))
        with pytest.raises(TypeError, match="range, a slice or a pair"):
            f(target, x, x, "0:2", (0, 2))


def test_bad_programs(x):
    p = ntk.Program(4)
    other = ntk.Program(4)
    w, b = p.weight(1.0), p.bias(0.1)
    z = p.input(0, 4)
    with pytest.raises(ValueError, match="input columns"):
        p.input(2, 2)
    with pytest.raises(ValueError, match="input columns"):
        p.input(0, 5)
    with pytest.raises(ValueError, match="`stop` = -1"):
        p.input(0, -1)
    with pytest.raises(ValueError, match="weight_std"):
        p.weight(-1.0)
    with pytest.raises(ValueError, match="bias_std"):
        p.bias(float("inf"))
    with pytest.raises(ValueError, match="belongs to another program"):
        other.dense(w, other.input(0, 4))
    with pytest.raises(ValueError, match="belongs to another program"):
        other.apply("relu", z)
    with pytest.raises(TypeError):
        p.dense(z, w)  # arguments swapped
    with pytest.raises(TypeError):
        p.add([z, w])
    h = p.dense(w, z)
    with pytest.raises(ValueError, match="needs at least one part"):
        p.add([])
    with pytest.raises(ValueError, match="same width"):
        p.add([z, h])
    with pytest.raises(ValueError, match="cannot mix input columns"):
        p.concat([z, h])
    with pytest.raises(ValueError, match="a bias is added to a hidden vector"):
        p.add_bias(z, b)
    with pytest.raises(ValueError, match="one hidden vector"):
        p.layer_norm(z)
    with pytest.raises(ValueError, match="same fan-in"):
        p.dense(w, p.concat([h, h]))
    with pytest.raises(ValueError, match="needs at least one part"):
        p.attention([], [h], [h])
    with pytest.raises(ValueError, match="every key needs one value"):
        p.attention([h], [h], [h, h])
    with pytest.raises(ValueError, match="unknown activation"):
        p.apply("softmax", h)
    with pytest.raises(ValueError, match="padding"):
        p.conv(w, [z], 1, "reflect")
    with pytest.raises(ValueError, match="at least one tap"):
        p.conv(w, [z], 0)
    with pytest.raises(ValueError, match="one variable per pixel"):
        p.conv2d(w, [z, z, z], (2, 2), (1, 1))
    with pytest.raises(ValueError, match="without an output"):
        p.init(8, seed=0)
    with pytest.raises(ValueError, match="without an output"):
        ntk.infinite_width(p, x[:, :1].repeat(4, axis=1))
    p.output(p.apply("relu", p.add_bias(h, b)), 1.0)
    with pytest.raises(ValueError, match="one readout"):
        p.output(h, 1.0)
    with pytest.raises(ValueError, match="`width` = 0"):
        p.init(0, seed=0)
    unused = ntk.Program(4)
    unused.weight(1.0)
    unused.output(unused.input(0, 4), 1.0)
    with pytest.raises(ValueError, match="never used"):
        ntk.infinite_width(unused, x[:, :1].repeat(4, axis=1))


def test_limits_a_program_cannot_take_are_errors_of_the_limit_only(rng):
    # tanh of a sum of products is not Gaussian in the limit; the finite network works.
    p = ntk.Program(2)
    w = p.weight(1.0)
    h = p.dense(w, p.input(0, 2))
    s = p.apply("tanh", p.add([p.apply("relu", h), h]))
    p.output(p.apply("tanh", p.dense(p.weight(1.0), s)), 1.0)
    x = rng.standard_normal((3, 2))
    net = p.init(16, seed=0)
    assert ntk.empirical_ntk(net, x).shape == (3, 3)
    q = ntk.Program(2)
    a = q.apply("relu", q.dense(q.weight(1.0), q.input(0, 2)))
    q.output(q.apply("tanh", q.apply("tanh", a)), 1.0)
    try:
        ntk.infinite_width(q, x)
    except ValueError as e:
        assert "limit" in str(e) or "Gaussian" in str(e)


def test_too_large_is_a_memory_error():
    with pytest.raises(MemoryError, match="cannot allocate"):
        ntk.MlpSpec(3).hidden(10**12, "relu").init(seed=0)
    with pytest.raises(MemoryError, match="cannot allocate"):
        complete_program().init(10**13, seed=0)


@pytest.mark.parametrize("call, match", [
    (lambda k, y: ntk.GradientFlow(k[:, :-1], y, 1.0), "theta_train"),
    (lambda k, y: ntk.GradientFlow(k, y[:-1], 1.0), "y_train"),
    (lambda k, y: ntk.GradientFlow(k + np.triu(np.ones_like(k), 1), y, 1.0), "not symmetric"),
    (lambda k, y: ntk.GradientFlow(k - 3 * np.eye(len(k)), y, 1.0), "not positive semi-definite"),
    (lambda k, y: ntk.GradientFlow(k, y, 0.0), "eta"),
    (lambda k, y: ntk.GradientFlow(k, y, float("nan")), "eta"),
    (lambda k, y: ntk.GradientFlow(k, y, 1.0).train(-1.0, y), "`t` = -1"),
    (lambda k, y: ntk.GradientFlow(k, y, 1.0).train(1.0, y[:, :0]), "f0_train"),
    (lambda k, y: ntk.GradientFlow(k, y, 1.0).train_gd(-2, y), "`steps` = -2"),
    (lambda k, y: ntk.GradientFlow(k, y, 1.0).test(1.0, y, y, k[:, :-1]), "theta_test_train"),
    (lambda k, y: ntk.GradientFlow(k, y, 1e3).train_gd(10**6, 0 * y), "overflows"),
    (lambda k, y: ntk.KernelRegression(k, y, -1.0), "diag_reg"),
    (lambda k, y: ntk.KernelRegression(np.ones_like(k), y), "singular"),
    (lambda k, y: ntk.InfiniteEnsemble(k, -k, y, 1.0), "nngp_train"),
    (lambda k, y: ntk.InfiniteEnsemble(k, k, y, 1.0).train(float("nan")), "`t` = NaN"),
    (lambda k, y: ntk.KrylovFlow(k, y, 1.0).tolerance(-1.0), "tolerance"),
    (lambda k, y: ntk.KrylovFlow(k, y, 1.0).max_dimension(0), "max_dimension"),
])
def test_bad_flows(rng, call, match):
    a = rng.standard_normal((4, 8))
    k = a @ a.T / 8
    y = rng.standard_normal((4, 1))
    with pytest.raises(ValueError, match=match):
        call(k, y)


def test_bad_flow_types(rng):
    k, y = np.eye(3), np.ones((3, 1))
    with pytest.raises(TypeError, match="integer"):
        ntk.GradientFlow(k, y, 1.0).train_gd(2.5, y)
    with pytest.raises(TypeError):
        ntk.GradientFlow(k, y, "fast")
    with pytest.raises(TypeError, match="`t` must hold real numbers"):
        ntk.GradientFlow(k, y, 1.0).train("late", y)


def test_bad_training(spec, x):
    net = spec.init(seed=0)
    y = np.ones((5, 1))
    with pytest.raises(ValueError, match="learning_rate"):
        ntk.GradientDescent(0.0, 10)
    with pytest.raises(ValueError, match="`steps` = -1"):
        ntk.GradientDescent(0.1, -1)
    with pytest.raises(ValueError, match="every"):
        ntk.GradientDescent(0.1, 10).record_every(0)
    with pytest.raises(ValueError, match="record_at"):
        ntk.GradientDescent(0.1, 10).record_at([3, 11])
    with pytest.raises(ValueError, match="y_train"):
        ntk.GradientDescent(0.1, 10).train(net, x, y[:-1])
    before = net.parameters()
    with pytest.raises(ValueError, match="learning_rate"):
        ntk.GradientDescent(1e6, 50).train(net, x * 100, y)  # diverges
    assert np.array_equal(net.parameters(), before), "restored after the error"
    with pytest.raises(TypeError):
        ntk.GradientDescent(0.1, 10).train(spec, x, y)
