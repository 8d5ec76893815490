"""Elementwise nonlinearities."""

from __future__ import annotations

import torch

from .module import Layer


class Tanh(Layer):
    """h = tanh(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.out = torch.tanh(x)
        return self.out

    # h = tanh(x)  →  dx = (1 − h²)·dh, 1 − h² as one fused multiply-add (addcmul), as autograd does
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(torch.ones_like(self.out), self.out, self.out, value=-1.0) * dout


class GELU(Layer):
    """The exact GELU (PyTorch's default `gelu`): y = x·Φ(x), Φ the standard normal CDF,
    Φ(x) = ½(1 + erf(x/√2)). (GPT-2 and makemore.py use its tanh approximation; on the CPU the
    exact form is the faster kernel, forward and backward.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x
        return torch.nn.functional.gelu(x)

    # y = x·Φ(x)  →  dx = dy·(Φ(x) + x·φ(x)), φ(x) = e^(−x²/2)/√(2π);
    # with s = x/√2:  Φ + x·φ = ½·(1 + erf(s) + (2/√π)·s·e^(−s²))
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return self.backward_(dout.clone())

    def backward_(self, dout: torch.Tensor) -> torch.Tensor:
        """`backward` written into `dout` itself (for a caller that owns it, such as `MLP`): one
        fresh tensor fewer on every step."""
        x = self.x
        s = torch.mul(x, SQRT1_2, out=self.scratch("s", x.shape, x))
        se = torch.mul(s, s, out=self.scratch("se", x.shape, x)).neg_().exp_().mul_(s)  # s·e^(−s²)
        local = torch.erf(s, out=s).add_(se, alpha=TWO_OVER_SQRTPI).add_(1.0).mul_(0.5)  # Φ + x·φ
        return dout.mul_(local)

SQRT1_2 = 0.7071067811865476  # 1/√2
TWO_OVER_SQRTPI = 1.1283791670955126  # 2/√π
