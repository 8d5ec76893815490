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
from .reshape import Flatten, FlattenConsecutive

__all__ = [
    "GELU", "MLP", "BatchNorm1d", "Block", "CausalSelfAttention", "Embedding", "Flatten", "FlattenConsecutive",
    "Layer", "LayerNorm", "Linear", "PositionEmbedding", "Sequential", "Tanh",
    "accumulate_grad", "cross_entropy", "cross_entropy_backward", "share_scratch",
]
