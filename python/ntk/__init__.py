"""The Neural Tangent Kernel, computed in Rust: numpy arrays in and out.

The three objects through which wide networks are studied:

- ``empirical_ntk(net, x1, x2)``: the NTK Θ(x1, x2) = ⟨∇θ f(x1), ∇θ f(x2)⟩ of a finite
  network, exactly, from per-layer Gram matrices;
- ``infinite_width(architecture, x1, x2)``: the NNGP kernel Σ and the limiting NTK Θ̊ as
  the widths grow (neural-tangents' ``kernel_fn``);
- ``predict.gradient_descent_mse`` and ``GradientFlow``: the outputs of a linearised
  network trained by gradient flow on the squared loss.

Architectures are an ``MlpSpec`` (fully connected) or a ``Program`` (any network of
dense layers with shared weights, biases, activations, sums, means, concatenations,
convolutions, LayerNorm and attention). Rows of every input are samples; any
array-like works (lists, float32 or float64, any memory layout). Results are numpy
arrays (Fortran-ordered: they own the Rust buffers, no copy). Errors raise ValueError
(bad shapes, values, hyperparameters) or TypeError (wrong types) with the Rust
message. Computations release the GIL and use ``RAYON_NUM_THREADS`` threads (default:
all cores).

>>> import numpy as np, ntk
>>> spec = ntk.MlpSpec(3).hidden(512, "relu").hidden(512, "erf").weight_std(1.5).bias_std(0.05)
>>> x = np.random.default_rng(0).standard_normal((10, 3))
>>> k = ntk.infinite_width(spec, x)          # k.nngp, k.ntk: 10 x 10
>>> net = spec.init(seed=0)
>>> theta = ntk.empirical_ntk(net, x)        # 10 x 10, close to k.ntk
"""

from ntk import _ntk
from ntk._ntk import (
    Bias,
    GaussianPrediction,
    GradientDescent,
    GradientFlow,
    InfiniteEnsemble,
    InfiniteWidth,
    KernelRegression,
    Kernels,
    KrylovFlow,
    GroupKernel,
    Mlp,
    MlpSpec,
    Network,
    Program,
    ProgramNetwork,
    Trajectory,
    Var,
    Weight,
    WidthPoint,
    WidthStudy,
    empirical_ntk,
    empirical_ntk_block,
    empirical_ntk_full,
    infinite_width,
    infinite_width_block,
    infinite_width_groups,
    width_convergence,
)
from ntk import predict, zoo

__version__ = _ntk.__version__

__all__ = [
    "Bias",
    "GaussianPrediction",
    "GradientDescent",
    "GradientFlow",
    "InfiniteEnsemble",
    "InfiniteWidth",
    "KernelRegression",
    "Kernels",
    "KrylovFlow",
    "GroupKernel",
    "Mlp",
    "MlpSpec",
    "Network",
    "Program",
    "ProgramNetwork",
    "Trajectory",
    "Var",
    "Weight",
    "WidthPoint",
    "WidthStudy",
    "empirical_ntk",
    "empirical_ntk_block",
    "empirical_ntk_full",
    "infinite_width",
    "infinite_width_block",
    "infinite_width_groups",
    "predict",
    "width_convergence",
    "zoo",
]
