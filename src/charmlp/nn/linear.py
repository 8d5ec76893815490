"""Linear: y = x @ W + b over the last dimension."""

from __future__ import annotations

import torch
from torch import nn

from .module import Layer, accumulate_grad


class Linear(Layer):
    """y = x @ W + b with W of shape (fan_in, fan_out); `bias=False` before a BatchNorm.

    x is (B, fan_in) or (B, T, fan_in); a 3-D input is the 2-D case on its B·T rows.
    """

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x
        out = x @ self.weight
        return out + self.bias if self.bias is not None else out

    # y = x @ W + b  →  dW = xᵀ·dy, db = Σ_rows dy, dx = dy·Wᵀ  (rows: every dim but the last)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        x2, d2 = self.x.reshape(-1, self.x.shape[-1]), dout.reshape(-1, dout.shape[-1])
        accumulate_grad(self.weight, x2.T @ d2)
        if self.bias is not None:
            accumulate_grad(self.bias, d2.sum(0))
        return dout @ self.weight.T
