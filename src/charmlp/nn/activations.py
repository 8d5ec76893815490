"""Elementwise nonlinearities."""

from __future__ import annotations

import torch

from .module import Layer


class Tanh(Layer):
    """h = tanh(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = torch.tanh(x)
        return self.out

    # h = tanh(x)  →  dx = (1 − h²)·dh
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return (1.0 - self.out**2) * dout
