"""Standard architectures as ``Program``s: the Rust ``ntk::zoo`` builders.

Each function starts from the settings of the paper or library the architecture comes
from; keyword arguments override them. Rows of the inputs are tokens or pixels in
order, each token's or pixel's entries contiguous (NHWC for images).

>>> import ntk
>>> p = ntk.zoo.rnn(5, 3)                          # Tensor Programs II's RNN
>>> p = ntk.zoo.cnn((8, 8), 3, layers=2, readout="flatten")
>>> p = ntk.zoo.myrtle(5, (32, 32), 3)              # neural-tangents' Myrtle-5
"""

from ntk._ntk import zoo as _zoo

rnn = _zoo.rnn
transformer = _zoo.transformer
residual_mlp = _zoo.residual_mlp
cnn = _zoo.cnn
myrtle = _zoo.myrtle

__all__ = ["rnn", "transformer", "residual_mlp", "cnn", "myrtle"]
