"""Layers, each a `torch.nn.Module` with `forward` and a hand-written `backward` beside it."""

from .activations import Tanh
from .batchnorm import BatchNorm1d
from .containers import Sequential
from .embedding import Embedding
from .linear import Linear
from .losses import cross_entropy, cross_entropy_backward
from .module import Layer, accumulate_grad
from .recurrent import CELLS, Cell, GRUCell, Recurrent, RNNCell
from .reshape import Flatten, FlattenConsecutive
from .table import BigramTable

__all__ = [
    "CELLS", "BatchNorm1d", "BigramTable", "Cell", "Embedding", "Flatten", "FlattenConsecutive", "GRUCell", "Layer", "Linear",
    "RNNCell", "Recurrent", "Sequential", "Tanh", "accumulate_grad", "cross_entropy", "cross_entropy_backward",
]
