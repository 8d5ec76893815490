"""Dropout, with randomness of its own that a checkpoint keeps."""

from __future__ import annotations

import torch

from ..distributed import world
from .module import Layer

_GOLDEN = 0x9E3779B97F4A7C15  # 2⁶⁴/φ: consecutive calls get well-spread seeds


class Dropout(Layer):
    """Inverted dropout: in training y = x·m, m = Bernoulli(1 − p)/(1 − p) per element, so E[y] = x;
    in eval mode y = x.

    The c-th training forward draws its mask from a generator seeded with (seed, c) on the input's
    device: the masks depend neither on the batches the training loop draws nor on how it reads
    losses back, and a checkpoint — which keeps (seed, c) as this layer's extra state — resumes
    with the very next mask. `seed` is set when the model is initialised. Across data-parallel
    ranks each draws the global batch's mask and keeps its own rows: one process's masks."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.seed = 0
        self.calls = 0
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            self.mask = None
            return x
        g = torch.Generator(device=x.device)
        g.manual_seed((self.seed + self.calls * _GOLDEN) % (1 << 63))
        self.calls += 1
        w = world()
        if w is None:
            keep = torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) >= self.p
        else:  # a data-parallel rank holds rows w.share(B) of the global batch: the global mask's rows
            rows = w.share(len(x) * w.size)
            keep = torch.rand((len(x) * w.size, *x.shape[1:]), generator=g, device=x.device, dtype=x.dtype)[rows] >= self.p
        self.mask = keep.to(x.dtype).div_(1 - self.p)
        return x * self.mask

    # y = x·m  →  dx = dy·m
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return dout if self.mask is None else dout * self.mask

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor([self.seed, self.calls], dtype=torch.int64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.seed, self.calls = (int(v) for v in state.tolist())

    def extra_repr(self) -> str:
        return f"p={self.p}"
