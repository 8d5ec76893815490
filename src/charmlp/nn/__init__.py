"""Layers, each a `torch.nn.Module` with `forward` and a hand-written `backward` beside it."""

from .activations import Tanh
from .batchnorm import BatchNorm1d
from .containers import Sequential
from .embedding import Embedding
from .linear import Linear
from .losses import cross_entropy, cross_entropy_backward
from .module import Layer, accumulate_grad
from .reshape import Flatten, FlattenConsecutive

__all__ = [
    "BatchNorm1d", "Embedding", "Flatten", "FlattenConsecutive", "Layer", "Linear", "Sequential", "Tanh",
    "accumulate_grad", "cross_entropy", "cross_entropy_backward",
]
