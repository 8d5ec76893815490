"""The base of every layer: a `torch.nn.Module` with a hand-written `backward(dout) -> dx`.

`forward` keeps what `backward` needs (on `self`); `backward` uses only that, accumulates
parameter gradients into `p.grad` and returns the gradient of the loss w.r.t. the input.
The same `forward` serves both engines: under autograd, `loss.backward()` differentiates it;
under the manual engine (`torch.no_grad()`), the model walks its layers' `backward` in reverse.

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
