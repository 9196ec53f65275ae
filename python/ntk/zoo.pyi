from typing import Literal, Optional, Tuple

from ntk._ntk import Program

def rnn(
    steps: int,
    token_dim: int,
    *,
    activation: Optional[str] = None,
    input_std: Optional[float] = None,
    weight_std: Optional[float] = None,
    bias_std: Optional[float] = None,
    readout_std: Optional[float] = None,
    readout: Optional[Literal["mean", "last"]] = None,
) -> Program: ...
def transformer(
    tokens: int,
    token_dim: int,
    *,
    activation: Optional[str] = None,
    input_std: Optional[float] = None,
    weight_std: Optional[float] = None,
    readout_std: Optional[float] = None,
) -> Program: ...
def residual_mlp(
    input_dim: int,
    blocks: int,
    *,
    activation: Optional[str] = None,
    weight_std: Optional[float] = None,
    bias_std: Optional[float] = None,
    readout_std: Optional[float] = None,
) -> Program: ...
def cnn(
    shape: Tuple[int, int],
    channels: int,
    *,
    layers: Optional[int] = None,
    taps: Optional[Tuple[int, int]] = None,
    padding: Optional[Literal["circular", "valid", "same"]] = None,
    activation: Optional[str] = None,
    weight_std: Optional[float] = None,
    bias_std: Optional[float] = None,
    readout_std: Optional[float] = None,
    readout: Optional[Literal["global_average", "flatten"]] = None,
) -> Program: ...
def myrtle(depth: Literal[5, 7, 10], shape: Tuple[int, int], channels: int) -> Program:
    """neural-tangents' Myrtle network (SAME 3x3 ReLU convolutions, W_std sqrt(2), no
    biases, 2x2 average pools after the first two stages, a global average, Dense(1));
    ``shape`` divisible by 4."""
