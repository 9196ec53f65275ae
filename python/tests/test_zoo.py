"""ntk.zoo: the standard architectures reproduce the shared reference cases (the same
cases the hand-built programs of test_references.py reproduce), and refuse bad
settings."""

import pytest

import ntk
from conftest import load
from test_references import assert_matches, program_case


def test_residual_mlp_matches_neural_tangents():
    c = program_case("resnet_relu1")
    a = c["architecture"]
    p = ntk.zoo.residual_mlp(a["input_dim"], 1, weight_std=1.0, bias_std=a["bias_std"], readout_std=a["readout_std"])
    assert_matches(p, c)


def test_cnn_matches_neural_tangents():
    c = program_case("cnn_erf_pool")
    a = c["architecture"]
    p = ntk.zoo.cnn(
        (1, a["positions"]),
        a["channels"],
        layers=a["layers"],
        taps=(1, 3),
        activation="erf",
        weight_std=a["weight_std"],
        bias_std=a["bias_std"],
        readout_std=a["readout_std"],
    )
    assert_matches(p, c)


def test_last_state_rnn_matches_independent_recursion():
    c = program_case("rnn_relu_last")
    a = c["architecture"]
    p = ntk.zoo.rnn(
        a["steps"],
        a["token_dim"],
        activation="relu",
        input_std=a["input_std"],
        weight_std=a["hidden_std"],
        bias_std=a["bias_std"],
        readout_std=a["readout_std"],
        readout="last",
    )
    assert_matches(p, c)


def test_transformer_matches_two_independent_implementations():
    c = load("transformer.json")["cases"][0]
    a = c["architecture"]
    p = ntk.zoo.transformer(
        a["tokens"],
        a["token_dim"],
        activation=a["activation"],
        input_std=a["input_std"],
        weight_std=a["weight_std"],
        readout_std=a["readout_std"],
    )
    assert_matches(p, c)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="steps"):
        ntk.zoo.rnn(0, 3)
    with pytest.raises(ValueError, match="'mean' or 'last'"):
        ntk.zoo.rnn(3, 2, readout="first")
    with pytest.raises(ValueError, match="'global_average' or 'flatten'"):
        ntk.zoo.cnn((4, 4), 3, readout="max")
    with pytest.raises(ValueError, match="taps"):
        ntk.zoo.cnn((2, 2), 1, padding="valid")
    with pytest.raises(ValueError, match="weight_std"):
        ntk.zoo.transformer(2, 2, weight_std=-1.0)
    with pytest.raises(TypeError):
        ntk.zoo.residual_mlp(3, 1, activation=3)


def test_myrtle5_matches_neural_tangents():
    c = next(c for c in load("images.json")["cases"] if c["name"] == "public_myrtle5_8")
    assert_matches(ntk.zoo.myrtle(5, (8, 8), 3), c)


def test_same_padding_strides_and_pooling_match_neural_tangents():
    # public_same_relu_gap: SAME 3x3 (bias), ReLU, AvgPool 2x2 stride 1, SAME 3x2, ReLU, GAP.
    c = next(c for c in load("images.json")["cases"] if c["name"] == "public_same_relu_gap")
    a = c["architecture"]
    (h, w, ch), ws, bs = a["image"], a["W_std"], a["b_std"]
    p = ntk.Program(h * w * ch)
    z = [p.input(q * ch, (q + 1) * ch) for q in range(h * w)]
    shape = (h, w)
    for layer in a["layers"]:
        kind = layer[0]
        if kind == "conv":
            weight, bias = p.weight(ws), p.bias(bs)
            z, shape = p.conv2d_strided(weight, z, shape, (layer[1], layer[2]), (layer[3], layer[4]), layer[5].lower())
            z = [p.apply("relu", p.add_bias(v, bias)) for v in z]
        elif kind == "avgpool":
            z, shape = p.avg_pool2d(z, shape, (layer[1], layer[2]), (layer[3], layer[4]))
        elif kind == "gap":
            z = [p.mean(z)]
    p.output(z[0], ws)
    assert_matches(p, c)


def test_myrtle_refuses_bad_depths_and_sizes():
    with pytest.raises(ValueError, match="depth"):
        ntk.zoo.myrtle(6, (8, 8), 3)
    with pytest.raises(ValueError):
        ntk.zoo.myrtle(5, (6, 8), 3)
