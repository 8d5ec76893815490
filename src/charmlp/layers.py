"""Layers of the MLP: each a `torch.nn.Module` with `forward` and, beside it, a hand-written
`backward(dout) -> dx`.

`forward` keeps what `backward` needs (on `self`); `backward` uses only that, accumulates
parameter gradients into `p.grad` and returns the gradient of the loss w.r.t. the input.
The same `forward` serves both engines: under autograd, `loss.backward()` differentiates it;
under the manual engine (`torch.no_grad()`), `Sequential.backward` walks the layers in reverse.

Weights follow the lectures' layout: `Linear.weight` is (fan_in, fan_out) and y = x @ W + b.
"""

from __future__ import annotations

import torch
from torch import nn


def accumulate_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    """p.grad += g (creating it on first use), as autograd does.

    `g` must be a tensor the caller has just computed for this purpose (every backward here
    passes a fresh product or sum), so on first use it becomes `p.grad` without a copy.
    """
    if p.grad is None:
        p.grad = g.detach()
    else:
        p.grad.add_(g)


class Layer(nn.Module):
    """A module with a hand-written backward."""

    def backward(self, dout: torch.Tensor) -> torch.Tensor | None:  # noqa: D102
        raise NotImplementedError(f"{type(self).__name__} has no hand-written backward")


class Embedding(Layer):
    """Lookup table C: ids (B, T) → vectors (B, T, n_embd)."""

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


class Flatten(Layer):
    """(B, T, E) → (B, T·E): concatenate the context's embeddings (`embcat`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.in_shape = x.shape
        return x.reshape(x.shape[0], -1)

    # a pure reshape: dx = dout viewed in the input's shape
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return dout.reshape(self.in_shape)


class Linear(Layer):
    """y = x @ W + b with W of shape (fan_in, fan_out); `bias=False` before a BatchNorm."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fan_in, fan_out))
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x
        out = x @ self.weight
        return out + self.bias if self.bias is not None else out

    # y = x @ W + b  →  dW = xᵀ·dy, db = Σ_batch dy, dx = dy·Wᵀ
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        accumulate_grad(self.weight, self.x.T @ dout)
        if self.bias is not None:
            accumulate_grad(self.bias, dout.sum(0))
        return dout @ self.weight.T


class BatchNorm1d(Layer):
    """y = γ·(x − μ)/√(σ² + ε) + β over the batch dimension.

    Training: μ, σ² are the batch mean and the Bessel-corrected (n − 1) batch variance, as in
    the lectures; running estimates move by `momentum`. Eval: the running estimates, which
    `calibrate` may set from the whole training set after training.
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(dim))  # γ (bngain)
        self.bias = nn.Parameter(torch.zeros(dim))  # β (bnbias)
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batch_stats = self.training  # backward must differentiate what forward did
        if self.training:
            n = x.shape[0]
            if n < 2:
                raise ValueError("BatchNorm1d in training needs a batch of at least 2 (variance uses n − 1)")
            mean = x.mean(0)
            xc = x - mean
            var = (xc * xc).sum(0) / (n - 1)  # Bessel-corrected; reuses x − μ (x.var recomputes it, ~4× slower)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            xc, var = x - self.running_mean, self.running_var
        self.rstd = torch.rsqrt(var + self.eps)
        self.xhat = xc * self.rstd
        return self.weight * self.xhat + self.bias

    # y = γ·x̂ + β  →  dγ = Σ_batch dy·x̂, dβ = Σ_batch dy
    # eval (μ, σ² constants): dx = γ·rstd·dy
    # training (μ, σ² from the batch, σ² with n − 1), closed form:
    #   dx = γ·rstd/n · (n·dy − Σ_batch dy − n/(n−1) · x̂ · Σ_batch dy·x̂) = γ·rstd/n · (n·dy − dβ − n/(n−1)·x̂·dγ)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        dgamma, dbeta = (dout * self.xhat).sum(0), dout.sum(0)
        accumulate_grad(self.weight, dgamma)
        accumulate_grad(self.bias, dbeta)
        if not self.batch_stats:
            return dout * (self.weight * self.rstd)
        n = dout.shape[0]
        return (self.weight * self.rstd / n) * (n * dout - dbeta - (n / (n - 1)) * self.xhat * dgamma)

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Replace the running estimates (used by calibration)."""
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)


class Tanh(Layer):
    """h = tanh(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = torch.tanh(x)
        return self.out

    # h = tanh(x)  →  dx = (1 − h²)·dh, 1 − h² as one fused multiply-add (addcmul), as autograd does
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(torch.ones_like(self.out), self.out, self.out, value=-1.0) * dout


class Sequential(Layer):
    """Layers applied in order; backward walks them in reverse."""

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.keep_grads = False  # diagnostics: keep each layer's output gradient as `layer.grad_out`

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    # chain rule: feed each layer's input gradient to the layer before it
    def backward(self, dout: torch.Tensor) -> torch.Tensor | None:
        for layer in reversed(self.layers):
            if self.keep_grads:
                layer.grad_out = dout  # dL/d(this layer's output)
            dout = layer.backward(dout)
        return dout
