"""LayerNorm over the last dimension, with the closed-form backward."""

from __future__ import annotations

import torch
from torch import nn

from .module import Layer, accumulate_grad

_FUSED_DTYPES = (torch.float32, torch.float64)


class LayerNorm(Layer):
    """y = γ·(x − μ)/√(σ² + ε) + β, with μ and σ² (biased, 1/C) taken over the last dimension of
    each row, so (unlike BatchNorm) training and eval are the same function and rows are independent.

    The forward is PyTorch's fused kernel (`native_layer_norm`, which also returns μ and 1/√(σ² + ε))
    for both engines; the backward below uses the per-row rstd it returned.
    """

    eval_attrs = ("eps",)
    fused = True  # the CPU backward through `layernorm_kernel` (False: the tensor operations, as on a GPU)

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
    def backward(self, dout: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """dL/dx; with `residual`, dL/dx + residual in the same pass (a residual block's skip path)."""
        if self._fused_for(dout):
            return self._backward_fused_(dout.clone(memory_format=torch.contiguous_format), residual)
        return self._backward_tensor_ops(dout, residual)

    def backward_(self, dout: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`backward` for a caller that owns `dout` and is done with it (a `Block`): on the CPU the
        result is written over it, memory still in cache, instead of into fresh memory."""
        if self._fused_for(dout) and dout.is_contiguous():
            return self._backward_fused_(dout, residual)
        return self.backward(dout, residual)

    def _fused_for(self, dout: torch.Tensor) -> bool:
        return (self.fused and dout.device.type == "cpu" and dout.dtype in _FUSED_DTYPES
                and not (self.x.requires_grad or dout.requires_grad))

    def _backward_tensor_ops(self, dout: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        C = dout.shape[-1]
        d2, w = dout.reshape(-1, C), self.weight
        xhat = torch.sub(self.x.reshape(-1, C), self.mean.reshape(-1, 1), out=self.scratch("xhat", d2.shape, d2))
        rstd = self.rstd.reshape(-1, 1)
        xhat.mul_(rstd)
        dy_xhat = torch.mul(d2, xhat, out=self.scratch("dy_xhat", d2.shape, d2))
        accumulate_grad(w, dy_xhat.sum(0))
        accumulate_grad(self.bias, d2.sum(0))
        w_mean = w * (1.0 / C)
        mean_dxhat = torch.mv(d2, w_mean).unsqueeze_(1)
        mean_dxhat_xhat = torch.mv(dy_xhat, w_mean).unsqueeze_(1)
        dx = torch.mul(d2, w).sub_(mean_dxhat)  # dx̂ − mean(dx̂)
        dx.sub_(xhat.mul_(mean_dxhat_xhat))
        if residual is None:
            return dx.mul_(rstd).view(dout.shape)
        return torch.addcmul(residual.reshape(-1, C), dx, rstd, out=dx).view(dout.shape)  # residual + rstd·(…)

    # the same closed form as one Numba sweep over the rows (`layernorm_kernel`): on the CPU the dozen
    # tensor operations above are a dozen passes over memory, and autograd's one fused kernel beat them
    def _backward_fused_(self, dout: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        from .layernorm_kernel import layernorm_backward_

        x = self.x.contiguous().numpy()
        res = x if residual is None else residual.contiguous().numpy()  # (x: unread, and not dout's memory)
        dwdb = torch.from_numpy(layernorm_backward_(x, self.mean.numpy(), self.rstd.numpy(), self.weight.detach().numpy(),
                                                    dout.numpy(), res, residual is not None))  # dx written over dout
        accumulate_grad(self.weight, dwdb[0])
        accumulate_grad(self.bias, dwdb[1])
        return dout

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
