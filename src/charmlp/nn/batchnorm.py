"""BatchNorm1d with the closed-form backward."""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import all_reduce_sum, world
from .module import Layer, accumulate_grad


class BatchNorm1d(Layer):
    """y = γ·(x − μ)/√(σ² + ε) + β, statistics over every dimension but the last.

    x is (B, C) or (B, T, C). For (B, T, C), μ and σ² are taken over (0, 1) — all B·T rows, the
    lectures' fix — and the running estimates keep shape (C,): a 3-D input is the 2-D case on its
    B·T rows. Training: μ, σ² are the batch mean and the Bessel-corrected (n − 1) variance, as in
    the lectures; running estimates move by `momentum`. Eval: the running estimates, which
    calibration may set from the whole training set after training.

    Synchronised across data-parallel ranks (`distributed.world()`): each rank holds a slice of
    the batch, and the training statistics and the backward's two row sums are all-reduced, so
    every rank normalises with the global batch's μ, σ² — the numbers one process computes.
    """

    eval_attrs = ("eps",)

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))  # γ (bngain)
        self.bias = nn.Parameter(torch.zeros(dim))  # β (bnbias)
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_stats = self.training  # backward must differentiate what forward did
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (B, T, C) → (B·T, C): statistics over (0, 1)
        if self.training:
            if world() is None:
                n = x.shape[0]
                if n < 2:
                    raise ValueError("BatchNorm1d in training needs a batch of at least 2 (variance uses n − 1)")
                mean = x.mean(0)
                xc = x - mean
                var = (xc * xc).sum(0) / (n - 1)  # Bessel-corrected; reuses x − μ (x.var recomputes it, ~4× slower)
            else:
                mean, xc, var, n = self._global_stats(x)
            self.n = n  # rows behind the statistics: the backward's n
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            xc, var = x - self.running_mean, self.running_var
        self.rstd = torch.rsqrt(var + self.eps)
        self.xhat = xc * self.rstd
        return (self.weight * self.xhat + self.bias).reshape(shape)

    # y = γ·x̂ + β  →  dγ = Σ_rows dy·x̂, dβ = Σ_rows dy
    # eval (μ, σ² constants): dx = γ·rstd·dy
    # training (μ, σ² from the n rows, σ² with n − 1), closed form:
    #   dx = γ·rstd/n · (n·dy − Σ_rows dy − n/(n−1) · x̂ · Σ_rows dy·x̂) = γ·rstd/n · (n·dy − dβ − n/(n−1)·x̂·dγ)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        shape = dout.shape
        dout = dout.reshape(-1, shape[-1])
        dgamma, dbeta = (dout * self.xhat).sum(0), dout.sum(0)
        accumulate_grad(self.weight, dgamma)
        accumulate_grad(self.bias, dbeta)
        if not self.batch_stats:
            return (dout * (self.weight * self.rstd)).reshape(shape)
        n = self.n
        if world() is not None:  # the global Σ dy·x̂, Σ dy; .grad keeps this rank's share (the step sums it)
            sums = all_reduce_sum(torch.cat([dgamma, dbeta]))
            dgamma, dbeta = sums[: len(dgamma)], sums[len(dgamma) :]
        return ((self.weight * self.rstd / n) * (n * dout - dbeta - (n / (n - 1)) * self.xhat * dgamma)).reshape(shape)

    # across ranks, rows x_i of every rank: N = Σ_r n_r, μ = Σ_i x_i / N, σ² = Σ_i (x_i − μ)² / (N − 1),
    # two all-reduces (the second sum needs μ: the same two passes one process makes)
    def _global_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        s = all_reduce_sum(torch.cat([x.sum(0), x.new_full((1,), x.shape[0])]))
        n = int(s[-1])
        if n < 2:
            raise ValueError("BatchNorm1d in training needs a batch of at least 2 (variance uses n − 1)")
        mean = s[:-1] / n
        xc = x - mean
        var = all_reduce_sum((xc * xc).sum(0)) / (n - 1)
        return mean, xc, var, n

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Replace the running estimates (used by calibration)."""
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
