"""The base of every layer: a `torch.nn.Module` with a hand-written `backward(dout) -> dx`.

`forward` keeps what `backward` needs (on `self`); `backward` uses only that, accumulates
parameter gradients into `p.grad` and returns the gradient of the loss w.r.t. the input.
The same `forward` serves both engines: under autograd, `loss.backward()` differentiates it;
under the manual engine (`torch.no_grad()`), the model walks its layers' `backward` in reverse.

Weights follow the lectures' layout: `Linear.weight` is (fan_in, fan_out) and y = x @ W + b.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def accumulate_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    """p.grad += g (creating it on first use), as autograd does.

    `g` must be a tensor the caller has just computed for this purpose (every backward here
    passes a fresh product or sum), so on first use it becomes `p.grad` without a copy.
    """
    if p.grad is None:
        p.grad = g.detach() if g.requires_grad else g
    else:
        p.grad.add_(g)


class Layer(nn.Module):
    """A module with a hand-written backward.

    `eval_attrs` names the attributes besides parameters, buffers and sublayers that its eval
    forward needs (ε, a head count, …): they go into the description of the model that
    `numpy_model.describe` writes beside the weights.
    """

    eval_attrs: ClassVar[tuple[str, ...]] = ()

    def backward(self, dout: torch.Tensor) -> torch.Tensor | None:  # noqa: D102
        raise NotImplementedError(f"{type(self).__name__} has no hand-written backward")

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of evaluation (under `torch.no_grad()`, in eval mode): the same function as
        `forward`, which it is unless a layer can skip what only its backward needs (the recurrent
        layer's per-step caches). No `backward` may follow it."""
        return self(x)

    def scratch(self, name: str, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor of `shape` that this layer reuses from one backward to the next
        for an intermediate result (`like` gives dtype and device). On the CPU a fresh large tensor
        is fresh memory from the OS, and its page faults can cost more than the arithmetic; the
        fused kernels autograd calls allocate little, a backward written as several ops allocates
        more. Only for values that do not outlive the backward that computes them — which is
        also why layers may share one pool (`share_scratch`): the same memory, still in cache,
        serves every layer in turn."""
        bufs = self.__dict__.setdefault("_scratch", {})
        t = bufs.get(name)
        if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
            t = bufs[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return t


def share_scratch(root: nn.Module) -> None:
    """Let every layer under `root` draw its `scratch` tensors from one pool."""
    pool: dict[str, torch.Tensor] = {}
    for m in root.modules():
        if isinstance(m, Layer):
            m.__dict__["_scratch"] = pool
