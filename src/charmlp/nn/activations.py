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

    fused = True  # the CPU float32 derivative through `gelu_kernel` (False: the tensor operations, as on a GPU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x, self.dydx = x, None
        self.out = torch.nn.functional.gelu(x)
        return self.out

    def forward_(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` for a caller that owns `x` and is done with it (`MLP`). In a manual training
        step (training mode, no autograd graph) on the CPU, gelu'(x) is computed here, written over
        x while x is still in cache: the backward is then one multiplication, where it would read
        x back from memory and compute gelu'(x) there."""
        y = self.forward(x)
        if (self.fused and self.training and not torch.is_grad_enabled() and self._kernel_takes(x, y)):
            from .gelu_kernel import gelu_derivative_

            gelu_derivative_(x.numpy(), y.numpy())
            self.x, self.dydx = None, x
        return y

    @staticmethod
    def _kernel_takes(*ts: torch.Tensor) -> bool:
        return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() and not t.requires_grad
                   for t in ts)

    # y = x·Φ(x)  →  dx = dy·(Φ(x) + x·φ(x)), φ(x) = e^(−x²/2)/√(2π);
    # Φ(x) = y/x is read off the forward's output (no erf again); at x = 0, Φ = ½
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        return self.backward_(dout.clone())

    def backward_(self, dout: torch.Tensor) -> torch.Tensor:
        """`backward` written into `dout` itself (for a caller that owns it, such as `MLP`): one
        fresh tensor fewer on every step."""
        if self.dydx is not None:  # gelu'(x) from `forward_`
            return dout.mul_(self.dydx)
        x = self.x
        if self.fused and self._kernel_takes(x, self.out, dout):
            from .gelu_kernel import gelu_backward_

            gelu_backward_(x.numpy(), self.out.numpy(), dout.numpy())  # into dout's memory
            return dout
        cdf = torch.div(self.out, x, out=self.scratch("cdf", x.shape, x)).nan_to_num_(nan=0.5)  # Φ(x); 0/0 → ½
        e = torch.mul(x, x, out=self.scratch("e", x.shape, x)).mul_(-0.5).exp_()  # e^(−x²/2)
        return dout.mul_(cdf.addcmul_(x, e, value=INV_SQRT_2PI))  # Φ + x·φ


INV_SQRT_2PI = 0.3989422804014327  # 1/√(2π)
