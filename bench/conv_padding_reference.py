#!/usr/bin/env python3
"""Reference kernels for `Program::conv` and `Program::conv2d`: 1-D and 2-D convolutions
of several filter sizes with circular and valid padding, from neural-tangents 0.6.5
(jax 0.4.23, float64).

    /opt/ntvenv/bin/python bench/conv_padding_reference.py tests/data/conv_paddings.json

(The venv is the one of bench/compare_neural_tangents.py; not run in CI.)
"""
import json
import sys

import numpy as np
from jax import config

config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

POSITIONS, CHANNELS, N = 7, 2, 3
x = np.array([[np.sin(0.37 * (i * POSITIONS * CHANNELS + j)) for j in range(POSITIONS * CHANNELS)]
              for i in range(N)])
cases = []
for taps, padding in [(1, "CIRCULAR"), (2, "CIRCULAR"), (4, "CIRCULAR"), (5, "CIRCULAR"),
                      (3, "VALID"), (4, "VALID")]:
    _, _, kernel_fn = stax.serial(
        stax.Conv(1, (taps,), padding=padding, W_std=1.3, b_std=0.2), stax.Relu(),
        stax.Conv(1, (taps,), padding=padding, W_std=1.2, b_std=0.1), stax.Erf(),
        stax.GlobalAvgPool(), stax.Dense(1, W_std=1.1))
    k = kernel_fn(x.reshape(N, POSITIONS, CHANNELS), None, ("nngp", "ntk"))
    cases.append({"taps": taps, "padding": padding.lower(),
                  "nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist()})
HEIGHT, WIDTH = 4, 5
images = np.array([[np.cos(0.29 * (i * HEIGHT * WIDTH * CHANNELS + j))
                    for j in range(HEIGHT * WIDTH * CHANNELS)] for i in range(N)])
cases_2d = []
for taps, padding in [((3, 3), "CIRCULAR"), ((2, 3), "CIRCULAR"), ((2, 2), "VALID")]:
    _, _, kernel_fn = stax.serial(
        stax.Conv(1, taps, padding=padding, W_std=1.3, b_std=0.2), stax.Relu(),
        stax.Conv(1, taps, padding=padding, W_std=1.2, b_std=0.1), stax.Erf(),
        stax.GlobalAvgPool(), stax.Dense(1, W_std=1.1))
    k = kernel_fn(images.reshape(N, HEIGHT, WIDTH, CHANNELS), None, ("nngp", "ntk"))
    cases_2d.append({"taps": list(taps), "padding": padding.lower(),
                     "nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist()})
json.dump({
    "generator": "neural-tangents 0.6.5, jax 0.4.23, float64: bench/conv_padding_reference.py",
    "description": "serial(Conv(1, (taps,), padding, W_std=1.3, b_std=0.2), Relu, "
                   "Conv(1, (taps,), padding, W_std=1.2, b_std=0.1), Erf, GlobalAvgPool, "
                   "Dense(1, W_std=1.1)), NTK parameterization, on 7 positions x 2 channels "
                   "(a row of x is its positions in order, each position's channels contiguous)",
    "positions": POSITIONS, "channels": CHANNELS, "x": x.tolist(), "cases": cases,
    "description_2d": "the same network with 2-D filters of shape taps (NHWC images of "
                      "height x width pixels; a row of images is its pixels row-major, each "
                      "pixel's channels contiguous)",
    "height": HEIGHT, "width": WIDTH, "images": images.tolist(), "cases_2d": cases_2d,
}, open(sys.argv[1], "w"), indent=1)
