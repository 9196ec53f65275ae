#!/usr/bin/env python3
"""More reference kernels for image programs, from neural-tangents 0.6.5 (jax 0.4.23,
float64): SAME convolutions with odd and even filters, strided SAME and VALID
convolutions, average pooling windows, Flatten and global-average readouts, and
Myrtle-5 at 16 x 16 and 32 x 32.

    /opt/ntvenv/bin/python bench/images_reference.py tests/data/images_nt.json

(The venv is the one of bench/compare_neural_tangents.py; not run in CI.) The cases have
the format of ../shared/reference/images.json (`tests/data/images.json`): rows of `x`
are NHWC images flattened pixel by pixel, channels innermost; every convolution has
W_std and, when b_std > 0, a bias of b_std; every case ends in Dense(1, W_std, b_std=0).
"""
import json
import sys

import numpy as np
from jax import config

config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

from compare_neural_tangents import myrtle5  # noqa: E402


def layers_of(architecture):
    w, b = architecture["W_std"], architecture["b_std"]
    out = []
    for layer in architecture["layers"]:
        kind = layer[0]
        if kind == "conv":
            out.append(stax.Conv(1, (layer[1], layer[2]), strides=(layer[3], layer[4]),
                                 padding=layer[5], W_std=w, b_std=b if b > 0 else None))
        elif kind == "relu":
            out.append(stax.Relu())
        elif kind == "erf":
            out.append(stax.Erf())
        elif kind == "avgpool":
            out.append(stax.AvgPool((layer[1], layer[2]), strides=(layer[3], layer[4])))
        elif kind == "gap":
            out.append(stax.GlobalAvgPool())
        elif kind == "flatten":
            out.append(stax.Flatten())
        else:
            raise ValueError(kind)
    out.append(stax.Dense(1, W_std=w, b_std=None))
    return stax.serial(*out)


def case(name, image, kernel_fn, n1, n2, seed, architecture=None, depth=None):
    rng = np.random.default_rng(seed)
    h, w, c = image
    x = rng.standard_normal((n1, h, w, c))
    x2 = rng.standard_normal((n2, h, w, c))
    k = kernel_fn(x, None, ("nngp", "ntk"))
    k21 = kernel_fn(x2, x, ("nngp", "ntk"))
    flat = lambda a: a.reshape(a.shape[0], -1).tolist()  # noqa: E731
    print(name, flush=True)
    return {"name": name, "architecture": architecture or {"image": list(image)},
            "myrtle_depth": depth, "x": flat(x), "x2": flat(x2),
            "nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist(),
            "nngp_x2_x": np.asarray(k21.nngp).tolist(), "ntk_x2_x": np.asarray(k21.ntk).tolist()}


ARCHITECTURES = {
    # SAME with an odd (3 x 3) and an even (2 x 4) filter, biases, global average.
    "same_odd_even_gap": {"image": [6, 5, 2], "W_std": 1.3, "b_std": 0.2, "layers": [
        ["conv", 3, 3, 1, 1, "SAME"], ["relu"], ["conv", 2, 4, 1, 1, "SAME"], ["erf"],
        ["gap"]]},
    # A strided VALID convolution, then a strided SAME one, into Flatten.
    "strided_valid_same_flatten": {"image": [7, 7, 2], "W_std": 1.2, "b_std": 0.1, "layers": [
        ["conv", 3, 3, 2, 2, "VALID"], ["relu"], ["conv", 2, 2, 1, 2, "SAME"], ["erf"],
        ["flatten"]]},
    # Pooling windows: 3 x 3 stride 1, then 2 x 2 stride 2, into Flatten.
    "pooling_windows_flatten": {"image": [8, 8, 1], "W_std": 1.4, "b_std": 0.0, "layers": [
        ["conv", 3, 3, 1, 1, "SAME"], ["relu"], ["avgpool", 3, 3, 1, 1],
        ["conv", 1, 1, 1, 1, "SAME"], ["relu"], ["avgpool", 2, 2, 2, 2], ["flatten"]]},
    # An even SAME filter with strides and a pooling window, global average.
    "strided_even_same_pool_gap": {"image": [9, 8, 3], "W_std": 1.1, "b_std": 0.3, "layers": [
        ["conv", 4, 2, 2, 1, "SAME"], ["erf"], ["avgpool", 2, 3, 1, 2], ["gap"]]},
}


def main(path):
    cases = []
    for i, (name, a) in enumerate(ARCHITECTURES.items()):
        _, _, kernel_fn = layers_of(a)
        cases.append(case(name, a["image"], kernel_fn, 3, 2, 10 + i, architecture=a))
    _, _, kernel_fn = myrtle5()
    cases.append(case("myrtle5_16", (16, 16, 3), kernel_fn, 3, 2, 20, depth=5))
    cases.append(case("myrtle5_32", (32, 32, 3), kernel_fn, 2, 1, 21, depth=5))
    source = ("neural-tangents 0.6.5 kernel_fn on jax 0.4.23, float64, by "
              "bench/images_reference.py; the format of images.json")
    with open(path, "w") as fh:
        json.dump({"source": source, "cases": cases}, fh)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/images_nt.json")
