#!/usr/bin/env python3
"""The Python binding's overhead over the Rust crate, measured in one process.

Not run in CI. With the package installed (`pip install ./python`), from the
repository root:

    python bench/python_overhead.py

For each configuration (those of the criterion benches and bench/compare_neural_tangents.py:
a 3-hidden-layer ReLU MLP, width 512, d = 32, W_std = 1, no bias, one output, f64):

- empirical NTK, x1 = x2, N = 1024 (`ntk.empirical_ntk(net, x)`);
- infinite-width NNGP and NTK, x1 = x2, N = 4096 (`ntk.infinite_width(spec, x)`);

it times the Python call (conversion of the numpy input, GIL release, wrapping the
result) and the Rust call itself on the already converted matrices (the hidden hook
`ntk._ntk._bench_rust`, which runs `ntk::empirical_ntk` / `ntk::infinite_width` from
Rust in the same build and process), alternating the two so that both see the same
machine load, and prints the medians, the minima and the overhead (the target is <= 5%).
"""

import statistics
import sys
import time

import numpy as np

import ntk
from ntk import _ntk

DIM = 32
WIDTH = 512
DEPTH = 3


def spec():
    s = ntk.MlpSpec(DIM)
    for _ in range(DEPTH):
        s = s.hidden(WIDTH, "relu")
    return s


def inputs(rng, n):
    x = rng.standard_normal((n, DIM))
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(DIM)


def compare(label, what, target, python_call, x, repeats):
    python_call(x)  # warm up (thread pool, caches)
    _ntk._bench_rust(what, target, x, 1)
    py, rust = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        python_call(x)
        py.append(time.perf_counter() - start)
        rust += _ntk._bench_rust(what, target, x, 1)
    p, r = statistics.median(py), statistics.median(rust)
    pm, rm = min(py), min(rust)
    print(f"| {label:<36} | {x.shape[0]:>5} | {r * 1e3:>10.2f} | {p * 1e3:>12.2f} | "
          f"{100 * (p - r) / r:>+8.2f}% | {rm * 1e3:>10.2f} | {pm * 1e3:>10.2f} | {100 * (pm - rm) / rm:>+8.2f}% |")
    return (pm - rm) / rm


def main(repeats):
    rng = np.random.default_rng(2026)
    s = spec()
    net = s.init(seed=0)
    print(f"ntk {ntk.__version__}, numpy {np.__version__}, {repeats} alternated runs each: "
          "medians, then minima (the least disturbed runs on a shared machine)\n")
    print(f"| {'computation':<36} | {'N':>5} | {'Rust (ms)':>10} | {'Python (ms)':>12} | {'overhead':>9} "
          f"| {'Rust min':>10} | {'Py min':>10} | {'overhead':>9} |")
    print(f"|{'-' * 38}|{'-' * 7}|{'-' * 12}|{'-' * 14}|{'-' * 11}|{'-' * 12}|{'-' * 12}|{'-' * 11}|")
    worst = 0.0
    for n in (64, 1024):
        o = compare("empirical NTK (MLP 3x512)", "empirical_ntk", net,
                    lambda x: ntk.empirical_ntk(net, x), inputs(rng, n), repeats)
        if n == 1024:
            worst = max(worst, o)
    for n in (256, 4096):
        o = compare("infinite-width NNGP+NTK (MLP 3x512)", "infinite_width", s,
                    lambda x: ntk.infinite_width(s, x), inputs(rng, n), repeats)
        if n == 4096:
            worst = max(worst, o)
    print(f"\nlargest overhead of the minima at the target sizes: {100 * worst:+.2f}% (target <= 5%)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 11)
