"""LayerNorm over the last dimension, with the closed-form backward."""

from __future__ import annotations

import torch
from torch import nn

from .module import Layer, accumulate_grad


class LayerNorm(Layer):
    """y = γ·(x − μ)/√(σ² + ε) + β, with μ and σ² (biased, 1/C) taken over the last dimension of
    each row, so (unlike BatchNorm) training and eval are the same function and rows are independent.

    The forward is PyTorch's fused kernel (`native_layer_norm`, which also returns μ and 1/√(σ² + ε))
    for both engines; the backward below uses the per-row rstd it returned.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # γ
        self.bias = nn.Parameter(torch.zeros(dim))  # β

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        self.x, self.mean, self.rstd = x, mean, rstd  # μ, rstd: (…, 1)
        return out

    # y = γ·x̂ + β, x̂ = (x − μ)·rstd  →  dγ = Σ_rows dy·x̂, dβ = Σ_rows dy
    # per row of C entries, closed form: dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) with dx̂ = γ·dy,
    # where mean(dx̂) = dy·γ/C and mean(dx̂·x̂) = (dy·x̂)·γ/C are matrix-vector products
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        C = dout.shape[-1]
        w = self.weight
        xhat = torch.sub(self.x, self.mean, out=self.scratch("xhat", dout.shape, dout)).mul_(self.rstd)
        dy_xhat = torch.mul(dout, xhat, out=self.scratch("dy_xhat", dout.shape, dout))
        accumulate_grad(w, dy_xhat.reshape(-1, C).sum(0))
        accumulate_grad(self.bias, dout.reshape(-1, C).sum(0))
        a = (dout @ w).unsqueeze_(-1).mul_(1.0 / C)  # mean(dx̂)
        b = (dy_xhat @ w).unsqueeze_(-1).mul_(1.0 / C)  # mean(dx̂·x̂)
        dx = torch.mul(dout, w)  # dx̂
        return dx.sub_(a).sub_(xhat.mul_(b)).mul_(self.rstd)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
