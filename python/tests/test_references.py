"""The shared reference values (neural-tangents 0.6.5 and independent implementations;
tests/data/README.md) reproduced through the Python API, with the Rust tests'
tolerances (tests/integration/prec.rs)."""

import numpy as np
import pytest

import ntk
from conftest import load, rel_err

# Closed forms against neural-tangents, relative to the largest entry (the README:
# ~1e-15), with a margin for the depth; 1e-9 on the pair of rows 0 and 1 of x, whose
# correlation is exactly ±1 (arccos amplifies round-off there).
ROUND_OFF = 1e-13
PARALLEL_PAIR = 1e-9
# Programs and the Transformer against their references (relative Frobenius error):
# round-off of the arc-cosine near correlation 1 limits agreement to ~1e-8 there.
PROGRAMS = 1e-9


def mlp_spec(case):
    spec = ntk.MlpSpec(case["input_dim"])
    for width, act in zip(case["hidden"], case["activations"]):
        if act.startswith("leaky_relu_"):
            act = f"leaky_relu({act[len('leaky_relu_'):]})"
        spec = spec.hidden(width, act)
    spec = spec.weight_std(case["weight_std"]).bias_std(case["bias_std"])
    return spec.parameterization(case.get("parameterization", "ntk"))


def mlp_cases():
    return [(f, c) for f in ("neural_tangents.json", "more_mlps.json") for c in load(f)["cases"]]


@pytest.mark.parametrize("case", [c for _, c in mlp_cases()], ids=[c["name"] for _, c in mlp_cases()])
def test_mlp_kernels_match_neural_tangents(case):
    spec = mlp_spec(case)
    x, x2 = np.array(case["x"]), np.array(case["x2"])
    k = ntk.infinite_width(spec, x)
    k2 = ntk.infinite_width(spec, x2, x)
    for key, ours, same_batch in [
        ("nngp", k.nngp, True),
        ("ntk", k.ntk, True),
        ("nngp_x2_x", k2.nngp, False),
        ("ntk_x2_x", k2.ntk, False),
    ]:
        theirs = np.array(case[key])
        assert ours.shape == theirs.shape and ours.dtype == np.float64
        err = np.abs(ours - theirs) / np.abs(theirs).max()
        if same_batch:
            assert err[0, 1] <= PARALLEL_PAIR and err[1, 0] <= PARALLEL_PAIR, key
            err[0, 1] = err[1, 0] = 0.0
        assert err.max() <= ROUND_OFF, f"{case['name']} {key}: {err.max():e}"


def test_every_reference_case_is_run():
    assert len(load("neural_tangents.json")["cases"]) == 4
    assert len(load("more_mlps.json")["cases"]) == 5


def program_case(name):
    return next(c for c in load("programs.json")["cases"] if c["name"] == name)


def assert_matches(p, case, tol=PROGRAMS):
    x, x2 = np.array(case["x"]), np.array(case["x2"])
    k = ntk.infinite_width(p, x)
    cross = ntk.infinite_width(p, x2, x)
    for got, key in [(k.nngp, "nngp"), (k.ntk, "ntk"), (cross.nngp, "nngp_x2_x"), (cross.ntk, "ntk_x2_x")]:
        err = rel_err(got, case[key])
        assert err < tol, f"{case.get('name')} {key}: {err:e}"


def test_residual_mlp_matches_neural_tangents():
    c = program_case("resnet_relu1")
    a = c["architecture"]
    p = ntk.Program(a["input_dim"])
    x = p.input(0, a["input_dim"])
    w0, b0, w1, b1 = p.weight(1.0), p.bias(a["bias_std"]), p.weight(1.0), p.bias(a["bias_std"])
    h = p.add_bias(p.dense(w0, x), b0)
    r = p.add_bias(p.dense(w1, p.apply("relu", h)), b1)
    p.output(p.apply("relu", p.add([h, r])), a["readout_std"])
    assert_matches(p, c)


def test_circular_cnn_with_pooling_matches_neural_tangents():
    c = program_case("cnn_erf_pool")
    a = c["architecture"]
    n, ch = a["positions"], a["channels"]
    p = ntk.Program(n * ch)
    z = [p.input(q * ch, (q + 1) * ch) for q in range(n)]
    for _ in range(a["layers"]):
        w, b = p.weight(a["weight_std"]), p.bias(a["bias_std"])
        # The 3-tap circular windows written out (Program.conv is tested below).
        z = [
            p.apply("erf", p.add_bias(p.dense(w, p.concat([z[(q - 1) % n], z[q], z[(q + 1) % n]])), b))
            for q in range(n)
        ]
    p.output(p.mean(z), a["readout_std"])
    assert_matches(p, c)


def test_last_state_rnn_matches_independent_recursion():
    c = program_case("rnn_relu_last")
    a = c["architecture"]
    d = a["token_dim"]
    p = ntk.Program(a["steps"] * d)
    u, w, b = p.weight(a["input_std"]), p.weight(a["hidden_std"]), p.bias(a["bias_std"])
    s = None
    for t in range(a["steps"]):
        h = p.dense(u, p.input(t * d, (t + 1) * d))
        if s is not None:
            h = p.add([h, p.dense(w, s)])
        s = p.apply("relu", p.add_bias(h, b))
    p.output(s, a["readout_std"])
    assert_matches(p, c)


def transformer(tokens, d, activation, sigma_u, sigma_w, sigma_v):
    """k_t = dense(U, x_t); y = attention(k, k, k); z_t = LN(y_t + k_t);
    o_t = LN(dense(W2, φ(dense(W1, z_t))) + z_t); f = readout(mean_t o_t)."""
    p = ntk.Program(tokens * d)
    u, w1, w2 = p.weight(sigma_u), p.weight(sigma_w), p.weight(sigma_w)
    keys = [p.dense(u, p.input(t * d, (t + 1) * d)) for t in range(tokens)]
    ys = p.attention(keys, keys, keys)
    assert isinstance(ys, list) and len(ys) == tokens
    outs = []
    for y, k in zip(ys, keys):
        z = p.layer_norm(p.add([y, k]))
        h = p.dense(w2, p.apply(activation, p.dense(w1, z)))
        outs.append(p.layer_norm(p.add([h, z])))
    p.output(p.mean(outs), sigma_v)
    return p


def test_one_layer_transformer_matches_two_independent_implementations():
    c = load("transformer.json")["cases"][0]
    a = c["architecture"]
    p = transformer(a["tokens"], a["token_dim"], a["activation"], a["input_std"], a["weight_std"], a["readout_std"])
    assert_matches(p, c)


def conv_cnn(positions, channels, conv):
    """tests/data/conv_paddings.json's network: two convolutions (ReLU σ 1.3/0.2, Erf
    1.2/0.1), average pooling, readout 1.1; `conv(p, w, z)` gives the pre-activations."""
    p = ntk.Program(positions * channels)
    z = [p.input(q * channels, (q + 1) * channels) for q in range(positions)]
    for sw, sb, act in [(1.3, 0.2, "relu"), (1.2, 0.1, "erf")]:
        w, b = p.weight(sw), p.bias(sb)
        z = [p.apply(act, p.add_bias(h, b)) for h in conv(p, w, z)]
    p.output(p.mean(z), 1.1)
    return p


def test_conv_and_conv2d_match_neural_tangents():
    data = load("conv_paddings.json")
    x = np.array(data["x"])
    for c in data["cases"]:
        p = conv_cnn(data["positions"], data["channels"], lambda p, w, z: p.conv(w, z, c["taps"], c["padding"]))
        k = ntk.infinite_width(p, x)
        assert rel_err(k.nngp, c["nngp"]) < ROUND_OFF and rel_err(k.ntk, c["ntk"]) < ROUND_OFF, c["taps"]
    images = np.array(data["images"])
    for c in data["cases_2d"]:
        shape = [(data["height"], data["width"])]

        def conv2d(p, w, z):
            pre, shape[0] = p.conv2d(w, z, shape[0], tuple(c["taps"]), c["padding"])
            return pre

        p = conv_cnn(data["height"] * data["width"], data["channels"], conv2d)
        k = ntk.infinite_width(p, images)
        assert rel_err(k.nngp, c["nngp"]) < ROUND_OFF and rel_err(k.ntk, c["ntk"]) < ROUND_OFF, c["taps"]


def test_flows_match_neural_tangents_gradient_descent_mse():
    flows = load("neural_tangents.json")["flows"]
    assert len(flows) == 6
    for f in flows:
        k, kt = np.array(f["kernel"]), np.array(f["kernel_test_train"])
        y, f0, f0_test = np.array(f["y"]), np.array(f["f0"]), np.array(f["f0_test"])
        predict_fn = ntk.predict.gradient_descent_mse(k, y, learning_rate=f["nt_learning_rate"])
        train, test = predict_fn(f["nt_t"], f0, f0_test, kt)
        assert rel_err(train, f["f_train_t"]) <= PROGRAMS
        assert rel_err(test, f["f_test_t"]) <= PROGRAMS
        # The same through GradientFlow in the crate's units: η t = lr t / y.size.
        flow = ntk.GradientFlow(k, y, f["eta_t_sum_loss"])
        assert rel_err(flow.test(1.0, f0, f0_test, kt), f["f_test_t"]) <= PROGRAMS


def test_batch_norm_matches_the_independent_reference():
    """Erf after BatchNorm on one batch of 6 (tests/data/batchnorm.json): the sphere rule
    against an independent implementation converged to about 1e-10."""
    c = load("batchnorm.json")["cases"][0]
    a = c["architecture"]
    p = ntk.Program(a["input_dim"])
    h = p.add_bias(p.dense(p.weight(a["weight_std"]), p.input(0, a["input_dim"])), p.bias(a["bias_std"]))
    p.output(p.apply(a["activation"], p.batch_norm(h)), a["readout_std"])
    x = np.array(c["x"])
    k = ntk.infinite_width(p, x)
    assert rel_err(k.nngp, c["nngp"]) < 1e-10
    assert rel_err(k.ntk, c["ntk"]) < 1e-8
