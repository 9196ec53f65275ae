"""Any array-like goes in (C- or Fortran-ordered, strided, reversed, float32 or float64,
integers, lists, big-endian, read-only) and the results are the same; results are numpy
arrays that own their buffers."""

import numpy as np
import pytest

import ntk


def variants(x):
    """`x` in every layout and type that should give the same result as `x` itself."""
    big = np.zeros((2 * x.shape[0], 3 * x.shape[1]))
    big[::2, ::3] = x
    ro = x.copy()
    ro.flags.writeable = False
    return {
        "C": np.ascontiguousarray(x),
        "F": np.asfortranarray(x),
        "strided": big[::2, ::3],
        "reversed": x[::-1][::-1],
        "transposed view": np.asfortranarray(x.T).T,
        "list": x.tolist(),
        "tuple": tuple(map(tuple, x.tolist())),
        "big-endian": x.astype(">f8"),
        "read-only": ro,
    }


@pytest.fixture
def data(rng):
    # Values exact in float32, so that float32 inputs give the same float64 kernels.
    x1 = np.round(rng.standard_normal((7, 3)) * 64) / 64
    x2 = np.round(rng.standard_normal((4, 3)) * 64) / 64
    return x1, x2


def test_layouts_and_types_give_the_same_kernels(data):
    x1, x2 = data
    spec = ntk.MlpSpec(3).hidden(32, "erf").hidden(16, "relu").bias_std(0.1)
    net = spec.init(seed=3)
    k_ref = ntk.infinite_width(spec, x1, x2)
    theta_ref = ntk.empirical_ntk(net, x1, x2)
    f_ref = net.forward(x1)
    cases = {**variants(x1), "float32": x1.astype(np.float32), "int": (x1 * 64).astype(np.int64)}
    for name, v in cases.items():
        scale = 64.0 if name == "int" else 1.0
        x2s = x2 * scale
        k = ntk.infinite_width(spec, v, x2s)
        want = k_ref if scale == 1 else ntk.infinite_width(spec, x1 * scale, x2s)
        assert np.array_equal(k.ntk, want.ntk) and np.array_equal(k.nngp, want.nngp), name
        theta = ntk.empirical_ntk(net, v, x2s)
        want = theta_ref if scale == 1 else ntk.empirical_ntk(net, x1 * scale, x2s)
        assert np.array_equal(theta, want), name
        f = net.forward(v)
        assert np.array_equal(f, f_ref if scale == 1 else net.forward(x1 * scale)), name


def test_negative_strides(data):
    x1, x2 = data
    spec = ntk.MlpSpec(3).hidden(16, "relu").bias_std(0.2)
    k = ntk.infinite_width(spec, x1, x2).ntk
    flipped = ntk.infinite_width(spec, x1[::-1], x2[:, ::-1][:, ::-1]).ntk
    assert np.array_equal(flipped, k[::-1])
    assert np.array_equal(ntk.infinite_width(spec, x1[::-1, ::-1][:, ::-1], x2).ntk, k[::-1])


def test_float32_networks_take_any_input_dtype(data):
    x1, _ = data
    net = ntk.MlpSpec(3).hidden(16, "tanh").init(seed=1, dtype=np.float32)
    want = ntk.empirical_ntk(net, x1.astype(np.float32))
    assert want.dtype == np.float32
    for v in variants(x1).values():
        assert np.array_equal(ntk.empirical_ntk(net, v), want)
    assert net.forward(x1).dtype == np.float32
    assert net.parameters().dtype == np.float32


def test_flows_take_any_layout(rng):
    a = rng.standard_normal((5, 12))
    k = a @ a.T / 12
    y = rng.standard_normal((5, 1))
    want = ntk.GradientFlow(k, y, 0.5).train(2.0, np.zeros((5, 1)))
    for v in variants(k).values():
        assert np.array_equal(ntk.GradientFlow(v, y.tolist(), 0.5).train(2.0, [[0.0]] * 5), want)


def test_results_own_their_data(data):
    x1, x2 = data
    spec = ntk.MlpSpec(3).hidden(8, "relu")
    k = ntk.infinite_width(spec, x1, x2)
    theta = ntk.empirical_ntk(spec.init(seed=0), x1, x2)
    for a in (k.nngp, k.ntk, theta):
        assert isinstance(a, np.ndarray) and a.shape == (7, 4)
        # Not a view of another numpy array: the array holds the Rust buffer itself
        # (nalgebra's column-major layout, hence Fortran order).
        assert not isinstance(a.base, np.ndarray)
        assert a.flags.f_contiguous and a.flags.writeable
    # The same object on every access (no copy per attribute read).
    assert k.ntk is k.ntk
    nngp, ntk_ = k
    assert nngp is k.nngp and ntk_ is k.ntk


def test_the_input_is_not_modified(data):
    x1, _ = data
    x = x1.copy()
    ntk.infinite_width(ntk.MlpSpec(3).hidden(8, "relu"), x)
    assert np.array_equal(x, x1)
