"""Embedding: the lookup table C."""

from __future__ import annotations

import torch
from torch import nn

from .module import Layer, accumulate_grad


class Embedding(Layer):
    """Lookup table C: ids (B,) or (B, T) → vectors (…, n_embd)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.idx = idx if idx.dtype in (torch.int64, torch.int32) else idx.long()
        return self.weight[self.idx]

    # out[b,t] = C[idx[b,t]]  →  dC[i] = Σ_{b,t: idx[b,t]=i} dout[b,t]  (repeats accumulate)
    def backward(self, dout: torch.Tensor) -> None:
        dC = torch.zeros_like(self.weight)
        dC.index_add_(0, self.idx.reshape(-1), dout.reshape(-1, dout.shape[-1]))
        accumulate_grad(self.weight, dC)
        return None  # ids are not differentiable


class PositionEmbedding(Layer):
    """Adds a learned vector per position: x (B, T, C) → x + P[:T], P of shape (block_size, C)."""

    def __init__(self, block_size: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(block_size, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[-2]
        if T > self.weight.shape[0]:
            raise ValueError(f"sequence of {T} positions is longer than the {self.weight.shape[0]} this model has")
        return x + self.weight[:T]

    # y = x + P[:T] (broadcast over the batch)  →  dx = dy, dP[:T] = Σ_batch dy, dP[T:] = 0
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        T = dout.shape[-2]
        dP = torch.zeros_like(self.weight)
        torch.sum(dout.reshape(-1, T, dout.shape[-1]), dim=0, out=dP[:T])
        accumulate_grad(self.weight, dP)
        return dout
