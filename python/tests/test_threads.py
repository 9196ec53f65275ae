"""Threads: computations release the GIL (other Python threads run meanwhile), calls
from several threads at once give the serial results, and the thread count follows
RAYON_NUM_THREADS."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ntk


def test_concurrent_calls_give_the_serial_results(rng):
    spec = ntk.MlpSpec(4).hidden(128, "erf").hidden(128, "relu").bias_std(0.1)
    net = spec.init(seed=0)
    xs = [rng.standard_normal((40, 4)) for _ in range(4)]
    serial = [(ntk.infinite_width(spec, x).ntk, ntk.empirical_ntk(net, x)) for x in xs]
    results = [None] * len(xs)

    def work(i):
        results[i] = (ntk.infinite_width(spec, xs[i]).ntk, ntk.empirical_ntk(net, xs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (a, b), (c, d) in zip(results, serial):
        assert np.array_equal(a, c) and np.array_equal(b, d)


def test_long_computations_release_the_gil(rng):
    """A Python thread keeps running during a call that takes a while: it records
    timestamps inside the middle half of the call. Were the GIL held, it could not run
    until the call returned."""
    net = ntk.MlpSpec(16).hidden(1024, "tanh").hidden(1024, "tanh").init(seed=0)
    n = 64
    while True:  # large enough that one call takes at least 0.2 s here
        x = rng.standard_normal((n, 16))
        start = time.perf_counter()
        ntk.empirical_ntk(net, x)
        if time.perf_counter() - start > 0.2 or n >= 4096:
            break
        n *= 2
    stamps, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    time.sleep(0.01)
    start = time.perf_counter()
    ntk.empirical_ntk(net, x)
    end = time.perf_counter()
    stop.set()
    ticker.join()
    quarter = (end - start) / 4
    inside = [s for s in stamps if start + quarter < s < end - quarter]
    assert len(inside) >= 5, f"{len(inside)} ticks during a {end - start:.2f} s call"


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_thread_count_follows_rayon_num_threads():
    script = (
        "import os, numpy as np, ntk\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "net = ntk.MlpSpec(3).hidden(64, 'relu').init(seed=0)\n"
        "theta = ntk.empirical_ntk(net, np.random.default_rng(0).standard_normal((300, 3)))\n"
        "print(len(os.listdir('/proc/self/task')) - before, float(theta.sum()))\n"
    )
    out = {}
    for threads in (1, 3):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        spawned, total = run.stdout.split()
        out[threads] = (int(spawned), total)
    assert out[3][0] - out[1][0] == 2, out
    # The kernels are the same to the last bit on any number of threads.
    assert out[1][1] == out[3][1]
