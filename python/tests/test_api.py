"""The rest of the API against independent references: the empirical NTK against
finite differences of the forward pass (numpy), per-layer sums, blocks, float32 against
float64, the flows against matrix functions written with numpy, real training against
its linearisation, and the docs and stubs a Python user sees."""

import importlib.resources
import inspect

import numpy as np
import pytest

import ntk
from conftest import rel_err

EXACT = 1e-10  # exact identities in f64, round-off only
FINITE_DIFFERENCE = 1e-6  # central differences with step 1e-6
F32_VS_F64 = 1e-4


def fd_jacobian(net, x, h=1e-6):
    """∂f/∂θ by central differences through set_parameters and forward: (N k) × P,
    row i k + c for output c of sample i."""
    p0 = net.parameters().copy()
    cols = []
    for j in range(p0.size):
        e = np.zeros_like(p0)
        e[j] = h
        net.set_parameters(p0 + e)
        up = net.forward(x)
        net.set_parameters(p0 - e)
        down = net.forward(x)
        cols.append(((up - down) / (2 * h)).reshape(-1))
    net.set_parameters(p0)
    return np.stack(cols, axis=1)


def small_program():
    """A 2-step RNN with a shared weight, a bias, a residual add, concat and mean."""
    p = ntk.Program(4)
    u, w, b = p.weight(1.3), p.weight(0.9), p.bias(0.2)
    s1 = p.apply("tanh", p.add_bias(p.dense(u, p.input(0, 2)), b))
    h2 = p.add([p.dense(u, p.input(2, 4)), p.dense(w, s1)])
    s2 = p.apply("gelu", p.add_bias(h2, b))
    v = p.weight(1.1)
    mixed = p.dense(v, p.concat([s1, s2]))
    p.readout(p.mean([p.apply("erf", mixed), s2]), weight_std=1.0, bias_std=0.3, outputs=2)
    return p


@pytest.mark.parametrize("make", [
    lambda: ntk.MlpSpec(3).hidden(6, "tanh").hidden(5, "leaky_relu(0.2)").bias_std(0.4).outputs(2).init(seed=1),
    lambda: small_program().init(4, seed=2),
])
def test_empirical_ntk_is_the_gram_of_finite_difference_jacobians(make, rng):
    net = make()
    x1 = rng.standard_normal((4, net.input_dim))
    x2 = rng.standard_normal((3, net.input_dim))
    k = net.output_dim
    j1, j2 = fd_jacobian(net, x1), fd_jacobian(net, x2)
    full = j1 @ j2.T  # (N1 k) × (N2 k)
    assert rel_err(ntk.empirical_ntk_full(net, x1, x2), full) < FINITE_DIFFERENCE
    traced = np.einsum("icjc->ij", full.reshape(4, k, 3, k)) / k
    theta = ntk.empirical_ntk(net, x1, x2)
    assert rel_err(theta, traced) < FINITE_DIFFERENCE
    assert rel_err(net.jacobian(x1), j1) < FINITE_DIFFERENCE
    r = rng.standard_normal((4, k))
    assert rel_err(net.vjp(x1, r), j1.T @ r.reshape(-1)) < FINITE_DIFFERENCE
    layers = net.group_kernels(x1, x2)
    assert rel_err(sum(layer.total() for layer in layers), theta) < EXACT
    assert np.array_equal(ntk.empirical_ntk(net, x1), ntk.empirical_ntk(net, x1, x1))


def test_mlp_parameters_are_laid_out_layer_by_layer(rng):
    spec = ntk.MlpSpec(3).hidden(4, "relu").bias_std(0.5).outputs(2)
    net = spec.init(seed=7)
    assert isinstance(net, ntk.Mlp) and isinstance(net, ntk.Network)
    assert net.depth == 2 and net.parameter_count == spec.parameter_count == 3 * 4 + 4 + 4 * 2 + 2
    p = net.parameters()
    assert np.array_equal(net.weights(0).reshape(-1), p[:12])  # W row-major (4 x 3)
    assert np.array_equal(net.bias(0), p[12:16])
    assert net.weights(1).shape == (2, 4)
    same = ntk.Mlp.from_parameters(spec, p)
    x = rng.standard_normal((5, 3))
    assert np.array_equal(same.forward(x), net.forward(x))
    assert np.array_equal(spec.init(seed=7).parameters(), p), "a seed gives one network"
    assert not np.array_equal(spec.init(seed=8).parameters(), p)
    assert net.spec.widths == [3, 4, 2] and net.dtype == np.float64
    assert ntk.Mlp.from_parameters(spec, p.astype(np.float32)).dtype == np.float32


def test_float32_networks_agree_with_float64(rng):
    spec = ntk.MlpSpec(3).hidden(64, "erf").hidden(64, "relu").bias_std(0.1)
    x = rng.standard_normal((6, 3))
    n64, n32 = spec.init(seed=0), spec.init(seed=0, dtype=np.float32)
    assert np.array_equal(n32.parameters(), n64.parameters().astype(np.float32))
    assert rel_err(ntk.empirical_ntk(n32, x), ntk.empirical_ntk(n64, x)) < F32_VS_F64
    p, xp = small_program(), rng.standard_normal((3, 4))
    theta32 = ntk.empirical_ntk(p.init(32, seed=1, dtype="float32"), xp)
    assert theta32.dtype == np.float32
    assert rel_err(theta32, ntk.empirical_ntk(p.init(32, seed=1), xp)) < F32_VS_F64


def test_blocks_are_slices_of_the_whole(rng):
    spec = ntk.MlpSpec(2).hidden(16, "erf").bias_std(0.1)
    net = spec.init(seed=0)
    x = rng.standard_normal((9, 2))
    theta = ntk.empirical_ntk(net, x)
    k = ntk.infinite_width(spec, x)
    for rows, cols in [((1, 4), (5, 9)), (range(0, 3), slice(2, None)), (slice(None, 2), range(7, 9))]:
        r, c = (list(s) if isinstance(s, range) else list(range(9)[slice(*s) if isinstance(s, tuple) else s])
                for s in (rows, cols))
        block = ntk.empirical_ntk_block(net, x, x, rows, cols)
        assert rel_err(block, theta[np.ix_(r, c)]) < EXACT
        kb = ntk.infinite_width_block(spec, x, x, rows, cols)
        assert rel_err(kb.ntk, k.ntk[np.ix_(r, c)]) < 1e-14 and rel_err(kb.nngp, k.nngp[np.ix_(r, c)]) < 1e-14


def test_infinite_width_layers_and_the_program_of_an_mlp(rng):
    spec = ntk.MlpSpec(3).hidden(64, "erf").hidden(64, "relu").bias_std(0.2).weight_std(1.3)
    x = rng.standard_normal((5, 3))
    k = ntk.infinite_width(spec, x)
    layers = ntk.infinite_width_groups(spec, x)
    assert len(layers) == 3 and all(layer.bias is not None for layer in layers)
    assert rel_err(sum(layer.total() for layer in layers), k.ntk) < 1e-12
    kp = ntk.infinite_width(ntk.Program.from_mlp(spec), x)
    assert rel_err(kp.ntk, k.ntk) < 1e-14 and rel_err(kp.nngp, k.nngp) < 1e-14
    prepared = ntk.InfiniteWidth(spec)
    assert prepared.spec is not None and prepared.program is None
    assert np.array_equal(prepared.kernels(x).ntk, k.ntk)
    tanh = ntk.MlpSpec(3).hidden(8, "tanh").bias_std(0.1)
    coarse = ntk.InfiniteWidth(tanh).quadrature_degree(64).kernels(x)
    assert rel_err(coarse.ntk, ntk.infinite_width(tanh, x).ntk) < 1e-8


def test_finite_programs_approach_their_limit(rng):
    p = small_program()
    x = rng.standard_normal((4, 4))
    limit = ntk.infinite_width(p, x).ntk
    errors = [rel_err(ntk.empirical_ntk(p.init(n, seed=s), x), limit) for n in (64, 1024) for s in range(3)]
    assert np.mean(errors[3:]) < np.mean(errors[:3]) and np.mean(errors[3:]) < 0.2
    study = ntk.width_convergence(ntk.MlpSpec(3).hidden(1, "relu"), x[:, :3], [64, 256, 1024], [1, 2, 3])
    assert len(study.points) == 3 and study.points[0].width == 64 and len(study.points[0].errors) == 3
    assert -1.0 < study.slope < -0.2


def batch_norm_program(d, activation):
    """dense + bias → batch_norm → φ → readout."""
    p = ntk.Program(d)
    h = p.add_bias(p.dense(p.weight(1.2), p.input(0, d)), p.bias(0.3))
    p.output(p.apply(activation, p.batch_norm(h)), 1.0)
    return p


def test_batch_norm_couples_the_samples_of_a_batch(rng):
    p = batch_norm_program(8, "relu")
    net = p.init(6, seed=3)
    x1, x2 = rng.standard_normal((5, 8)), rng.standard_normal((4, 8))
    j1, j2 = fd_jacobian(net, x1), fd_jacobian(net, x2)
    # Each batch with its own statistics.
    assert rel_err(ntk.empirical_ntk(net, x1, x2), j1 @ j2.T) < FINITE_DIFFERENCE
    assert rel_err(net.jacobian(x1), j1) < FINITE_DIFFERENCE
    # Three samples alone have other statistics, so other gradients.
    assert rel_err(fd_jacobian(net, x1[:3]), j1[:3]) > 1e-3
    # A block keeps the whole batches.
    block = ntk.empirical_ntk_block(net, x1, x2, (1, 4), (0, 2))
    assert rel_err(block, (j1 @ j2.T)[1:4, 0:2]) < FINITE_DIFFERENCE
    # Wide networks approach the limit, within a batch and between two.
    for b in (x1, x2):
        limit = ntk.infinite_width(p, x1, b).ntk
        errors = [rel_err(ntk.empirical_ntk(p.init(4096, seed=s), x1, b), limit) for s in range(3)]
        assert np.mean(errors) < 0.15
    # The NTK of a batch of three is infinite: an error, not a number.
    with pytest.raises(ValueError, match="B ≤ 3"):
        ntk.infinite_width(p, x1[:3])


def test_gradient_flow_against_matrix_functions(rng):
    a = rng.standard_normal((6, 10))
    k = a @ a.T / 10
    y, f0 = rng.standard_normal((6, 2)), 0.2 * rng.standard_normal((6, 2))
    kt, f0t = rng.standard_normal((3, 10)) @ a.T / 10, 0.1 * rng.standard_normal((3, 2))
    eta = 0.3
    flow = ntk.GradientFlow(k, y, eta)
    lam, v = flow.eigenvalues, flow.eigenvectors
    assert rel_err(v @ np.diag(lam) @ v.T, k) < EXACT and np.all(np.diff(lam) <= 0)
    lam_np, v_np = np.linalg.eigh(k)

    def expm(s):
        return v_np @ np.diag(np.exp(-s * lam_np)) @ v_np.T

    t = np.array([0.5, 2.0, 10.0])
    train = flow.train(t, f0)
    assert train.shape == (3, 6, 2)
    for i, ti in enumerate(t):
        assert rel_err(train[i], y + expm(eta * ti) @ (f0 - y)) < EXACT
    test = flow.test(2.0, f0, f0t, kt)
    want = f0t + kt @ np.linalg.solve(k, (np.eye(6) - expm(eta * 2.0)) @ (y - f0))
    assert rel_err(test, want) < 1e-9
    step = np.eye(6) - eta * k
    for s in (0, 1, 7):
        want = y + np.linalg.matrix_power(step, s) @ (f0 - y)
        assert rel_err(flow.train_gd(s, f0), want) < EXACT
    assert flow.train_gd(np.array([[1, 2]]), f0).shape == (1, 2, 6, 2)
    losses = flow.loss(t, f0)
    assert np.allclose(losses, [0.5 * np.sum((train[i] - y) ** 2) for i in range(3)], rtol=1e-10)
    assert isinstance(flow.loss(1.0, f0), float) and flow.loss_gd([1, 2], f0).shape == (2,)
    res = flow.residual_in_eigenbasis(2.0, f0)
    assert rel_err(res, np.exp(-eta * 2.0 * lam)[:, None] * (v.T @ (f0 - y))) < EXACT
    assert rel_err(ntk.KernelRegression(k, y).test(f0, f0t, kt), flow.test(np.inf, f0, f0t, kt)) < 1e-9
    krylov = ntk.KrylovFlow(k, y, eta).tolerance(1e-13)
    assert rel_err(krylov.train(2.0, f0), flow.train(2.0, f0)) < 1e-9
    assert rel_err(krylov.test(2.0, f0, f0t, kt), test) < 1e-9


def test_infinite_ensemble(rng):
    spec = ntk.MlpSpec(2).hidden(1, "erf").bias_std(0.1)
    x, xt = rng.standard_normal((6, 2)), rng.standard_normal((2, 2))
    y = rng.standard_normal((6, 1))
    train, cross, test = ntk.infinite_width(spec, x), ntk.infinite_width(spec, xt, x), ntk.infinite_width(spec, xt)
    ens = ntk.InfiniteEnsemble(train.ntk, train.nngp, y, 1.0)
    mean, cov = ens.train(0.0)
    assert rel_err(cov, train.nngp) < 1e-12 and np.abs(mean).max() < 1e-12
    late = ens.train(1e4)
    assert rel_err(late.mean, y) < 1e-8
    p = ens.test(5.0, cross.ntk, cross.nngp, test.nngp)
    assert p.mean.shape == (2, 1) and p.covariance.shape == (2, 2)
    assert rel_err(ens.test_mean(5.0, cross.ntk), p.mean) < EXACT
    assert rel_err(p.mean, ens.flow.test(5.0, 0 * y, np.zeros((2, 1)), cross.ntk)) < EXACT


def test_training_follows_its_linearisation(rng):
    net = ntk.MlpSpec(2).hidden(1024, "erf").init(seed=0)
    x, xt = rng.standard_normal((8, 2)), rng.standard_normal((3, 2))
    y = np.cos(np.arange(8.0))[:, None]
    theta, theta_t = ntk.empirical_ntk(net, x), ntk.empirical_ntk(net, xt, x)
    f0, f0t = net.forward(x), net.forward(xt)
    linear = ntk.GradientFlow(theta, y, 0.1).test_gd(100, f0, f0t, theta_t)
    run = ntk.GradientDescent(0.1, 100).record_every(50).train(net, x, y, xt)
    assert run.steps == [0, 50, 100]
    assert run.train_outputs.shape == (3, 8, 1) and run.test_outputs.shape == (3, 3, 1)
    assert run.losses[2] < run.losses[0]
    assert np.abs(run.test_outputs[2] - linear).max() < 0.05 * np.abs(linear - f0t).max()
    assert not np.array_equal(net.forward(x), f0), "trained in place"
    no_test = ntk.GradientDescent(0.1, 3).record_at([1, 3]).train(net, x, y)
    assert no_test.steps == [1, 3] and no_test.test_outputs.shape == (2, 0, 1)


def test_docs_and_stubs():
    modules = ("predict", "zoo")
    public = [getattr(ntk, name) for name in ntk.__all__ if name not in modules]
    public += [getattr(ntk.zoo, name) for name in ntk.zoo.__all__]
    for obj in public:
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, obj
    for cls in (ntk.MlpSpec, ntk.Program, ntk.Network, ntk.GradientFlow):
        for name, member in inspect.getmembers(cls):
            if not name.startswith("_") and callable(member):
                assert member.__doc__, f"{cls.__name__}.{name}"
    assert "x2=None" in str(inspect.signature(ntk.infinite_width))
    files = importlib.resources.files("ntk")
    assert files.joinpath("py.typed").is_file()
    stub = files.joinpath("_ntk.pyi").read_text()
    for name in ntk.__all__:
        if name not in modules:
            assert f"def {name}(" in stub or f"class {name}" in stub, name
    zoo_stub = files.joinpath("zoo.pyi").read_text()
    for name in ntk.zoo.__all__:
        assert f"def {name}(" in zoo_stub, name
    assert ntk.__version__
