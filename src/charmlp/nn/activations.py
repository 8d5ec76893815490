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
    exact form is the faster kernel.)"""

    fused = True  # the CPU float32 backward through `gelu_kernel` (False: the tensor operations, as on a GPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x = x
        self.out = torch.nn.functional.gelu(x)
        return self.out

    # y = x·Φ(x)  →  dx = dy·(Φ(x) + x·φ(x)), φ(x) = e^(−x²/2)/√(2π);
    # Φ(x) = y/x is read off the forward's output (no erf again); at x = 0, Φ = ½
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return self.backward_(dout.clone())

    def backward_(self, dout: torch.Tensor) -> torch.Tensor:
        """`backward` written into `dout` itself (for a caller that owns it, such as `MLP`): one
        fresh tensor fewer on every step."""
        x = self.x
        if (self.fused and dout.device.type == "cpu" and dout.dtype == torch.float32 and dout.is_contiguous()
                and not (x.requires_grad or dout.requires_grad)):
            from .gelu_kernel import gelu_backward_

            gelu_backward_(x.contiguous().numpy(), self.out.contiguous().numpy(), dout.numpy())  # into dout's memory
            return dout
        cdf = torch.div(self.out, x, out=self.scratch("cdf", x.shape, x)).nan_to_num_(nan=0.5)  # Φ(x); 0/0 → ½
        e = torch.mul(x, x, out=self.scratch("e", x.shape, x)).mul_(-0.5).exp_()  # e^(−x²/2)
        return dout.mul_(cdf.addcmul_(x, e, value=INV_SQRT_2PI))  # Φ + x·φ

INV_SQRT_2PI = 0.3989422804014327  # 1/√(2π)
