"""Reshapes: concatenating the context's embeddings, all at once or a few neighbours at a time."""

from __future__ import annotations

import torch

from .module import Layer


class Flatten(Layer):
    """(B, T, E) → (B, T·E): concatenate the context's embeddings (`embcat`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    # a pure reshape: dx = dout viewed in the input's shape
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return dout.reshape(self.in_shape)


class FlattenConsecutive(Layer):
    """(B, T, C) → (B, T/n, n·C): fuse each n neighbouring positions; a length-1 time
    dimension is dropped, (B, 1, n·C) → (B, n·C). T must be a multiple of n."""

    eval_attrs = ("n",)

    def __init__(self, n: int) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"FlattenConsecutive needs n ≥ 1, got {n}")
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        if T % self.n:
            raise ValueError(f"FlattenConsecutive({self.n}) needs a time dimension divisible by {self.n}, got {T}")
        self.in_shape = x.shape
        x = x.reshape(B, T // self.n, C * self.n)
        return x.squeeze(1) if x.shape[1] == 1 else x

    # a pure reshape: dx = dout viewed in the input's shape
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return dout.reshape(self.in_shape)

    def extra_repr(self) -> str:
        return f"n={self.n}"
