"""BigramTable: the logits of the next character, looked up by the previous one."""

from __future__ import annotations

import torch

from .embedding import Embedding
from .module import accumulate_grad


class BigramTable(Embedding):
    """A (V, V) table W of logits: ids (B, T) → W[ids[:, −1]] (B, V).

    Row i holds the logits of the character that follows character i. It reads only the last
    id of each context window, so it works at any block size (1 is all it needs). It is an
    `Embedding` whose vectors are logits: its input is ids, which have no gradient.
    """

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.prev = idx[..., -1].long()
        return self.weight[self.prev]

    # logits[b] = W[prev[b]]  →  dW[i] = Σ_{b: prev[b]=i} dlogits[b]
    def backward(self, dout: torch.Tensor) -> None:
        dW = torch.zeros_like(self.weight)
        dW.index_add_(0, self.prev, dout)
        accumulate_grad(self.weight, dW)
        return None  # ids are not differentiable
