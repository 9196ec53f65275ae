"""Predictions of gradient-descent training in function space, with neural-tangents'
conventions: ``ntk.predict.gradient_descent_mse`` is a drop-in for
``neural_tangents.predict.gradient_descent_mse``.

neural-tangents trains on the **mean** squared loss ``0.5 * mean((f - y)**2)`` over the
``y.size`` target entries, so its time ``t`` with learning rate ``lr`` is ``lr * t /
y.size`` in the units of the Rust crate's ``GradientFlow`` (sum loss); ``diag_reg`` is
relative to the mean diagonal ``trace(k) / N`` unless ``diag_reg_absolute_scale``.
Both conversions are done here, on top of ``ntk.GradientFlow`` (finite ``t``, one
eigendecomposition) and ``ntk.KernelRegression`` (``t=None``, one Cholesky
factorisation), each computed on first use and kept.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ntk._ntk import GradientFlow, KernelRegression

__all__ = ["gradient_descent_mse", "max_learning_rate"]

ArrayOrScalar = Union[None, float, int, np.ndarray, Sequence[Any]]
PredictFn = Callable[..., Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]]


def _kernel(k: Any, name: str) -> np.ndarray:
    k = np.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(
            f"`{name}` has shape {k.shape}, expected a square N x N kernel (the "
            "trace_axes=(-1,) layout: one row and column per training sample)"
        )
    return k


def gradient_descent_mse(
    k_train_train: Any,
    y_train: Any,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
    diag_reg_absolute_scale: bool = False,
    trace_axes: Sequence[int] = (-1,),
) -> PredictFn:
    """Predicts the outcome of gradient-flow training on the mean squared loss, in
    closed form: neural-tangents' ``predict.gradient_descent_mse``.

    Args:
      k_train_train: the N x N kernel (NTK for a linearised network, NNGP for a Bayesian
        posterior mean) on the training inputs.
      y_train: the N x k targets.
      learning_rate: the learning rate; only ``learning_rate * t`` matters.
      diag_reg: a ridge added to the kernel's diagonal, ``diag_reg * trace(k) / N``
        (or ``diag_reg`` itself with ``diag_reg_absolute_scale=True``).
      diag_reg_absolute_scale: whether ``diag_reg`` is absolute.
      trace_axes: ``(-1,)`` only: the kernel acts on each of the k outputs alike (Θ ⊗ I).
        For per-output kernels use ``empirical_ntk_full`` with y reshaped to (N k, 1).

    Returns:
      ``predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None)``, which
      returns ``fx_train_t``, ``fx_test_t`` (when ``fx_train_0`` is None) or both as a
      tuple ``(fx_train_t, fx_test_t)``, with t's shape in front when t is an array.
      ``t=None`` is t = ∞, computed by a linear solve (the training outputs are then
      ``y_train``, as in neural-tangents, whatever ``diag_reg``). Results have the
      kernel's dtype (float32 for a float32 kernel, else float64); they are computed in
      float64.
    """
    axes = tuple(int(a) for a in np.atleast_1d(trace_axes))
    if axes not in ((-1,), (1,)):
        raise ValueError(
            f"`trace_axes` = {tuple(trace_axes)} is not supported: only (-1,), the "
            "kernel of the k outputs alike; for trace_axes=() pass the (N k) x (N k) "
            "kernel of empirical_ntk_full with y_train reshaped to (N k, 1)"
        )
    k = _kernel(k_train_train, "k_train_train")
    out_dtype = np.float32 if k.dtype == np.float32 else np.float64
    # Copies: the factorisations are made on first use, after the caller may have
    # changed their arrays.
    k = np.array(k, dtype=np.float64)
    y = np.array(y_train, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(
            f"`y_train` has shape {y.shape}, expected N x k (one row per training sample)"
        )
    n = k.shape[0]
    reg = float(diag_reg)
    if not diag_reg_absolute_scale and n > 0:
        reg *= float(np.trace(k)) / n
    eta = float(learning_rate) / y.size if y.size else float(learning_rate)
    cache: dict = {}

    def flow() -> GradientFlow:
        if "flow" not in cache:
            kr = k + reg * np.eye(n) if reg != 0.0 else k
            cache["flow"] = GradientFlow(kr, y, eta)
        return cache["flow"]

    def regression() -> KernelRegression:
        if "regression" not in cache:
            cache["regression"] = KernelRegression(k, y, reg)
        return cache["regression"]

    def predict_fn(
        t: ArrayOrScalar = None,
        fx_train_0: ArrayOrScalar = 0.0,
        fx_test_0: ArrayOrScalar = None,
        k_test_train: Optional[Any] = None,
    ) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
        """Outputs on the training [and test] set at time(s) ``t`` (None: ∞).

        Args:
          t: a time, an array of times of any shape (results get its shape in front),
            or None for t = ∞. Times are in neural-tangents' units (steps of
            ``learning_rate`` on the mean loss); they must be >= 0.
          fx_train_0: the outputs on the training inputs at t = 0 (N x k, or a scalar
            broadcast to it); None to skip the training predictions (then f_0 = 0).
          fx_test_0: the outputs on the test inputs at t = 0 (M x k, or a scalar); None
            to skip the test predictions.
          k_test_train: the M x N kernel between test and training inputs (needed with
            ``fx_test_0``).

        Returns:
          ``fx_train_t``, ``fx_test_t`` or ``(fx_train_t, fx_test_t)`` as in
          neural-tangents.
        """
        if fx_train_0 is None and fx_test_0 is None:
            raise ValueError(
                "Both `fx_train_0` and `fx_test_0` are `None`, i.e. no predictions "
                "will be computed."
            )
        if fx_test_0 is not None and k_test_train is None:
            raise ValueError(
                "To get predictions on the test set, please provide `k_test_train` "
                "kernel to the parent function."
            )
        f0 = (
            np.zeros_like(y)
            if fx_train_0 is None
            else np.broadcast_to(np.asarray(fx_train_0, dtype=np.float64), y.shape)
        )
        if fx_test_0 is not None:
            kt = np.asarray(k_test_train)
            if kt.ndim != 2:
                raise ValueError(
                    f"`k_test_train` has shape {kt.shape}, expected M x N (one row per "
                    "test sample, one column per training sample)"
                )
            f0_test = np.broadcast_to(
                np.asarray(fx_test_0, dtype=np.float64), (kt.shape[0], y.shape[1])
            )

        if t is None:
            train = y.copy()
            if fx_test_0 is not None:
                test = regression().test(f0, f0_test, kt)
        else:
            if fx_train_0 is not None:
                train = flow().train(t, f0)
            if fx_test_0 is not None:
                test = flow().test(t, f0, f0_test, kt)

        def cast(a: np.ndarray) -> np.ndarray:
            return a if a.dtype == out_dtype else a.astype(out_dtype)

        if fx_test_0 is None:
            return cast(train)
        if fx_train_0 is None:
            return cast(test)
        return cast(train), cast(test)

    return predict_fn


def max_learning_rate(
    ntk_train_train: Any,
    y_train_size: Optional[int] = None,
    momentum: float = 0.0,
    eps: float = 1e-12,
) -> float:
    """The largest stable learning rate of gradient descent on the mean squared loss,
    ``2 (1 + momentum) y_train_size / (λ_max + eps)`` (neural-tangents'
    ``predict.max_learning_rate``; ``y_train_size`` defaults to N)."""
    k = np.asarray(_kernel(ntk_train_train, "ntk_train_train"), dtype=np.float64)
    factor = k.shape[0] if y_train_size is None else y_train_size
    top = float(np.linalg.eigvalsh(k)[-1]) if k.size else 0.0
    return 2.0 * (1.0 + momentum) * factor / (top + eps)
