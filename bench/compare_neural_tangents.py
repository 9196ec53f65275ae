#!/usr/bin/env python3
"""Side-by-side with neural-tangents: same configurations, same inputs, same weights.

Not run in CI. Set up once (neural-tangents 0.6.5's structured-derivatives path works
with jax 0.4.23 and fails with 0.4.30):

    python3 -m venv /opt/ntvenv
    /opt/ntvenv/bin/pip install "neural-tangents==0.6.5" "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13"

Then, from the repository root:

    /opt/ntvenv/bin/python bench/compare_neural_tangents.py target/nt-compare
    cargo run --release --example compare_neural_tangents -- target/nt-compare

With the Python package installed in the same environment (`/opt/ntvenv/bin/pip install
./python`), the first command also times `ntk` on the same inputs and weights in the
same process, through its Python API, and prints the ratios (checking agreement as the
Rust example does); the Rust example then gives the Rust crate's own figures.

The first command draws the inputs and network weights (numpy, fixed seed), writes them
as raw little-endian float64 files with a manifest, computes neural-tangents' results in
float64 (saved beside them, so the crate's side checks it does the same work) and times
neural-tangents: the median of several runs after a warm-up (compilation excluded),
`block_until_ready` included. The second command runs the crate on the same files,
checks agreement (max relative difference), times it the same way and prints the ratios.

Configurations (those of the criterion benches): a 3-hidden-layer ReLU MLP, width 512,
d = 32, W_std = 1, no bias, one output, f64;
- empirical NTK, x1 = x2, N in {64, 256, 1024}: `empirical_ntk_fn(..., trace_axes=(),
  vmap_axes=0, implementation=STRUCTURED_DERIVATIVES)`, jitted;
- infinite-width NNGP and NTK, x1 = x2, N in {256, 1024, 4096}: jitted `kernel_fn`;
- gradient flow, N in {256, 1024, 2048}: a fresh `predict.gradient_descent_mse(k, y,
  learning_rate=1)` and one prediction at t = 1 (its eigendecomposition included);
- a 1-D CNN (`benches/programs.rs`): `serial(Conv(128, (3,), padding='CIRCULAR',
  W_std=1.4, b_std=0.1), Relu()) x 3, GlobalAvgPool(), Dense(1))` on 16 positions x 3
  channels: infinite-width NNGP and NTK at N in {128, 256}, and the empirical NTK at
  N = 128 (structured derivatives), the weights written in the crate's `Program` order;
- a 2-D CNN (`benches/programs.rs`): `serial(Conv(1, (3, 3), padding='CIRCULAR',
  W_std=1.4, b_std=0.1), Relu()) x 2, GlobalAvgPool(), Dense(1))` on 8 x 8 images of 3
  channels (NHWC): infinite-width NNGP and NTK at N in {32, 64};
- Myrtle-5 (`zoo::myrtle(5, (32, 32), 3)`, neural-tangents' Myrtle notebook network:
  SAME 3 x 3 ReLU convolutions, W_std = sqrt(2), b_std = 0, 2 x 2 average pools after
  the first two stages, a global average, Dense(1)) on 32 x 32 x 3 images: infinite-width
  NNGP and NTK at N = 4 (about 0.3 s per kernel entry in neural-tangents on 2 cores).

Sections can be chosen: `... compare_neural_tangents.py target/nt-compare myrtle` runs
only the Myrtle section (names: mlp, flow, cnn, cnn2d, myrtle).
"""

import json
import os
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import neural_tangents as nt  # noqa: E402
from neural_tangents import predict, stax  # noqa: E402

try:  # the Python package of this repository (`pip install ./python`), if installed
    import ntk  # noqa: E402
except ImportError:
    ntk = None

DIM = 32
WIDTH = 512
DEPTH = 3
EMPIRICAL_N = [64, 256, 1024]
INFINITE_N = [256, 1024, 4096]
FLOW_N = [256, 1024, 2048]
FLOW_T = 1.0
REPEATS = 7
CNN_POSITIONS = 16
CNN_CHANNELS = 3
CNN_LAYERS = 3
CNN_WIDTH = 128
CNN_INFINITE_N = [128, 256]
CNN_EMPIRICAL_N = [128]
CNN2D_SIDE = 8
CNN2D_INFINITE_N = [32, 64]
MYRTLE_SIDE = 32
MYRTLE_N = [4]


def network():
    layers = []
    for _ in range(DEPTH):
        layers += [stax.Dense(WIDTH, W_std=1.0, b_std=None), stax.Relu()]
    layers += [stax.Dense(1, W_std=1.0, b_std=None)]
    return stax.serial(*layers)


def cnn():
    layers = []
    for _ in range(CNN_LAYERS):
        layers += [stax.Conv(CNN_WIDTH, (3,), padding="CIRCULAR", W_std=1.4, b_std=0.1),
                   stax.Relu()]
    layers += [stax.GlobalAvgPool(), stax.Dense(1, W_std=1.0, b_std=None)]
    return stax.serial(*layers)


def cnn_inputs(rng, n):
    return rng.standard_normal((n, CNN_POSITIONS, CNN_CHANNELS))


def cnn_flat_params(params):
    """The crate's `Program` order: per layer W (C_out x 3 C_in, row-major: filter tap
    k = 0 is position p - 1, then the channels) and b, then the readout V (1 x C)."""
    flat = []
    for p in params:
        if len(p) == 0:
            continue
        w = np.asarray(p[0])
        if w.ndim == 3:  # Conv: (3, C_in, C_out)
            flat.append(np.transpose(w, (2, 0, 1)).reshape(-1))
            flat.append(np.asarray(p[1]).reshape(-1))
        else:  # Dense readout: (C, 1), no bias
            flat.append(w.T.reshape(-1))
    return np.concatenate(flat)


def median_seconds(fn, repeats=REPEATS):
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_plain(fn, repeats=REPEATS):
    """The median wall-clock seconds of `fn` (numpy results: nothing to wait for)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


ROWS = []


def ours(label, n, fn, reference, theirs, off_diagonal=False, repeats=REPEATS):
    """Times `fn` (the Python package's side; returns a list of arrays) against the
    references computed by neural-tangents in `theirs` seconds, and records the row."""
    if ntk is None:
        return
    got = fn()
    diffs = []
    for a, b in zip(got, reference):
        d = np.abs(np.asarray(a) - np.asarray(b))
        if off_diagonal:
            np.fill_diagonal(d, 0.0)
        diffs.append(d.max() / np.abs(np.asarray(b)).max())
    secs = median_plain(fn, repeats)
    ROWS.append((label, n, max(diffs), secs, theirs))


def report():
    if ntk is None:
        print("(the Python package `ntk` is not installed here: only neural-tangents timed)")
        return
    print(f"\nntk {ntk.__version__} (Python package) against neural-tangents {nt.__version__} "
          f"(jax {jax.__version__}), same process, f64, median of {REPEATS} runs\n")
    print(f"| {'computation':<38} | {'N':>5} | {'max diff':>9} | {'ntk (ms)':>10} | {'n-t (ms)':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 40}|{'-' * 7}|{'-' * 11}|{'-' * 12}|{'-' * 12}|{'-' * 10}|")
    for label, n, diff, secs, theirs in ROWS:
        print(f"| {label:<38} | {n:>5} | {diff:>9.1e} | {secs * 1e3:>10.2f} | {theirs * 1e3:>10.2f} | {theirs / secs:>7.2f}x |")
    print("(infinite-width kernels: off-diagonal entries; on the diagonal neural-tangents' "
          "arccos round-off near correlation 1 is ~1e-8)")


def mlp_spec():
    spec = ntk.MlpSpec(DIM)
    for _ in range(DEPTH):
        spec = spec.hidden(WIDTH, "relu")
    return spec


def cnn_program(grid, taps, channels, layers):
    """`cnn()` as a Program (examples/compare_neural_tangents.rs): one shared weight and
    bias per circular convolution, ReLU, mean pooling, readout."""
    positions = grid[0] * grid[1]
    p = ntk.Program(positions * channels)
    z = [p.input(q * channels, (q + 1) * channels) for q in range(positions)]
    for _ in range(layers):
        w, b = p.weight(1.4), p.bias(0.1)
        pre, _ = p.conv2d(w, z, grid, taps, "circular")
        z = [p.apply("relu", p.add_bias(h, b)) for h in pre]
    p.output(p.mean(z), 1.0)
    return p


def myrtle5():
    """neural-tangents' Myrtle-5 (its Myrtle notebook): stages of 2, 1 and 1 SAME 3 x 3
    ReLU convolutions, average pools after the first two, a global average."""
    def conv():
        return [stax.Conv(1, (3, 3), padding="SAME", W_std=np.sqrt(2.0), b_std=0.0),
                stax.Relu()]
    pool = stax.AvgPool((2, 2), strides=(2, 2))
    return stax.serial(*conv(), *conv(), pool, *conv(), pool, *conv(),
                       stax.GlobalAvgPool(), stax.Dense(1, W_std=np.sqrt(2.0), b_std=0.0))


def save(out, name, array):
    array = np.ascontiguousarray(np.asarray(array, dtype="<f8"))
    array.tofile(os.path.join(out, name + ".f64"))
    return {"file": name + ".f64", "shape": list(array.shape)}


def infinite_cases(out, kfn, draw, ns, label, prefix, ours_fn=None):
    """Times the jitted `kfn` (NNGP and NTK, x1 = x2) on `draw(n)` for each n in `ns`,
    saving inputs and kernels under `prefix`; `ours_fn(x)`, if given, is the Python
    package's side, timed on the same inputs."""
    cases = []
    for n in ns:
        x = jnp.asarray(draw(n))
        k = kfn(x, None, get=("nngp", "ntk"))
        secs = median_seconds(lambda: kfn(x, None, get=("nngp", "ntk")))
        print(f"{label:<17}N={n:5}: {secs * 1e3:9.2f} ms")
        if ours_fn is not None:
            xf = np.asarray(x).reshape(n, -1)
            ours(label, n, lambda: list(ours_fn(xf)), [k.nngp, k.ntk], secs, off_diagonal=True)
        cases.append({
            "n": n, "x": save(out, f"{prefix}_x_{n}", x.reshape(n, -1)),
            "nngp": save(out, f"{prefix}_nngp_{n}", k.nngp),
            "ntk": save(out, f"{prefix}_ntk_{n}", k.ntk), "seconds": secs})
    return cases


def empirical_cases(out, apply_fn, params, draw, ns, label, prefix, ours_net=None):
    """Times the empirical NTK (structured derivatives, jitted, x1 = x2) of `apply_fn` at
    `params` on `draw(n)` for each n in `ns`, saving inputs and kernels under `prefix`;
    `ours_net`, if given, is the same network in the Python package, timed alike."""
    ntk_fn = jax.jit(nt.empirical_ntk_fn(
        apply_fn, trace_axes=(), vmap_axes=0,
        implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES))
    cases = []
    for n in ns:
        x = jnp.asarray(draw(n))
        theta = ntk_fn(x, None, params).reshape(n, n)
        secs = median_seconds(lambda: ntk_fn(x, None, params))
        print(f"{label:<17}N={n:5}: {secs * 1e3:9.2f} ms")
        if ours_net is not None:
            xf = np.asarray(x).reshape(n, -1)
            ours(label, n, lambda: [ntk.empirical_ntk(ours_net, xf)], [theta], secs)
        cases.append({
            "n": n, "x": save(out, f"{prefix}_x_{n}", x.reshape(n, -1)),
            "ntk": save(out, f"{prefix}_ntk_{n}", theta), "seconds": secs})
    return cases


def inputs(rng, n):
    x = rng.standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(DIM)


def main(out, only=()):
    def want(section):
        return not only or section in only

    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(2026)
    init_fn, apply_fn, kernel_fn = network()
    _, params = init_fn(jax.random.PRNGKey(0), (-1, DIM))
    # The crate's parameter order: layer by layer, W (n_out x n_in) row-major.
    # stax stores W as (n_in, n_out), so W row-major is stax's W transposed.
    dense = [p[0] for p in params if len(p) > 0]
    flat = np.concatenate([np.asarray(w).T.reshape(-1) for w in dense])
    manifest = {
        "dim": DIM, "width": WIDTH, "depth": DEPTH, "flow_t": FLOW_T,
        "params": save(out, "params", flat),
        "neural_tangents": nt.__version__, "jax": jax.__version__,
        "empirical": [], "infinite": [], "flow": [],
    }

    spec = mlp_spec() if ntk is not None else None
    if want("mlp"):
        mlp_sections(out, manifest, rng, apply_fn, params, kernel_fn, spec, flat)
    if want("flow"):
        flow_section(out, manifest, rng, kernel_fn)
    if want("cnn"):
        cnn_section(out, manifest, rng)
    if want("cnn2d"):
        cnn2d_section(out, manifest, rng)
    if want("myrtle"):
        myrtle_section(out, manifest, rng)

    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
    report()
    print(f"wrote {out}/manifest.json; now run:")
    print(f"  cargo run --release --example compare_neural_tangents -- {out}")


def mlp_sections(out, manifest, rng, apply_fn, params, kernel_fn, spec, flat):
    manifest["empirical"] = empirical_cases(
        out, apply_fn, params, lambda n: inputs(rng, n), EMPIRICAL_N, "empirical NTK", "emp",
        ours_net=ntk.Mlp.from_parameters(spec, flat) if ntk is not None else None)
    kfn = jax.jit(kernel_fn, static_argnames="get")
    manifest["infinite"] = infinite_cases(
        out, kfn, lambda n: inputs(rng, n), INFINITE_N, "infinite width", "inf",
        ours_fn=(lambda x: ntk.infinite_width(spec, x)) if ntk is not None else None)


def flow_section(out, manifest, rng, kernel_fn):
    kfn = jax.jit(kernel_fn, static_argnames="get")
    for n in FLOW_N:
        x = jnp.asarray(inputs(rng, n))
        theta = np.asarray(kfn(x, None, get="ntk"))
        y = rng.standard_normal((n, 1))
        f0 = 0.1 * rng.standard_normal((n, 1))

        def run():
            predictor = predict.gradient_descent_mse(theta, y, learning_rate=1.0)
            return predictor(FLOW_T, f0)

        f_t = run()
        secs = median_seconds(run, repeats=5)
        print(f"gradient flow    N={n:5}: {secs * 1e3:9.2f} ms")
        if ntk is not None:
            ours("gradient flow (setup + 1 prediction)", n,
                 lambda: [ntk.predict.gradient_descent_mse(theta, y, learning_rate=1.0)(FLOW_T, f0)],
                 [f_t], secs, repeats=5)
        manifest["flow"].append({
            "n": n, "ntk": save(out, f"flow_ntk_{n}", theta),
            "y": save(out, f"flow_y_{n}", y), "f0": save(out, f"flow_f0_{n}", f0),
            "f_t": save(out, f"flow_ft_{n}", f_t),
            "nt_learning_rate": 1.0, "seconds": secs})


def cnn_section(out, manifest, rng):
    init_fn, apply_fn, kernel_fn = cnn()
    _, params = init_fn(jax.random.PRNGKey(1), (-1, CNN_POSITIONS, CNN_CHANNELS))
    manifest["cnn"] = {
        "positions": CNN_POSITIONS, "channels": CNN_CHANNELS, "layers": CNN_LAYERS,
        "width": CNN_WIDTH, "params": save(out, "cnn_params", cnn_flat_params(params)),
    }
    program, cnn_net = None, None
    if ntk is not None:
        program = cnn_program((1, CNN_POSITIONS), (1, 3), CNN_CHANNELS, CNN_LAYERS)
        cnn_net = program.init(CNN_WIDTH, seed=0)
        cnn_net.set_parameters(cnn_flat_params(params))
    manifest["cnn"]["infinite"] = infinite_cases(
        out, jax.jit(kernel_fn, static_argnames="get"), lambda n: cnn_inputs(rng, n),
        CNN_INFINITE_N, "CNN infinite", "cnn_inf",
        ours_fn=(lambda x: ntk.infinite_width(program, x)) if ntk is not None else None)
    manifest["cnn"]["empirical"] = empirical_cases(
        out, apply_fn, params, lambda n: cnn_inputs(rng, n), CNN_EMPIRICAL_N,
        "CNN empirical", "cnn_emp", ours_net=cnn_net)


def cnn2d_section(out, manifest, rng):
    _, _, kernel_fn = stax.serial(
        *[layer for _ in range(2) for layer in (
            stax.Conv(1, (3, 3), padding="CIRCULAR", W_std=1.4, b_std=0.1), stax.Relu())],
        stax.GlobalAvgPool(), stax.Dense(1))
    manifest["cnn2d"] = {
        "side": CNN2D_SIDE, "channels": CNN_CHANNELS,
        "infinite": infinite_cases(
            out, jax.jit(kernel_fn, static_argnames="get"),
            lambda n: rng.standard_normal((n, CNN2D_SIDE, CNN2D_SIDE, CNN_CHANNELS)),
            CNN2D_INFINITE_N, "CNN 2-D infinite", "cnn2d_inf",
            # Compiled once, as neural-tangents' kernel function is jitted once.
            ours_fn=ntk.InfiniteWidth(cnn_program(
                (CNN2D_SIDE, CNN2D_SIDE), (3, 3), CNN_CHANNELS, 2)).kernels if ntk is not None else None)}


def myrtle_section(out, manifest, rng):
    _, _, kernel_fn = myrtle5()
    manifest["myrtle5"] = {
        "side": MYRTLE_SIDE, "channels": CNN_CHANNELS,
        "infinite": infinite_cases(
            out, jax.jit(kernel_fn, static_argnames="get"),
            lambda n: rng.standard_normal((n, MYRTLE_SIDE, MYRTLE_SIDE, CNN_CHANNELS)),
            MYRTLE_N, "Myrtle-5 32x32", "myrtle5",
            ours_fn=ntk.InfiniteWidth(ntk.zoo.myrtle(5, (MYRTLE_SIDE, MYRTLE_SIDE), CNN_CHANNELS)).kernels
            if ntk is not None else None)}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/nt-compare", tuple(sys.argv[2:]))
