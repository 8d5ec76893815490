"""Layers, each a `torch.nn.Module` with `forward` and a hand-written `backward` beside it."""

from .activations import GELU, Tanh
from .attention import CausalSelfAttention
from .batchnorm import BatchNorm1d
from .block import MLP, Block
from .containers import Sequential
from .embedding import Embedding, PositionEmbedding
from .layernorm import LayerNorm
from .linear import Linear
from .losses import cross_entropy, cross_entropy_backward
from .module import Layer, accumulate_grad, share_scratch
from .recurrent import CELLS, Cell, GRUCell, Recurrent, RNNCell
from .reshape import Flatten, FlattenConsecutive
from .table import BigramTable

__all__ = [
    "CELLS", "GELU", "MLP", "BatchNorm1d", "BigramTable", "Block", "CausalSelfAttention", "Cell", "Embedding",
    "Flatten", "FlattenConsecutive", "GRUCell", "Layer", "LayerNorm", "Linear", "PositionEmbedding", "RNNCell",
    "Recurrent", "Sequential", "Tanh", "accumulate_grad", "cross_entropy", "cross_entropy_backward", "share_scratch",
]
