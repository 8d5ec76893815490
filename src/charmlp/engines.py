"""The only two ways `.grad` gets filled: PyTorch autograd, or the hand-written backward.

Both run the same `model.forward`; afterwards every parameter's `.grad` holds dL/dp and
the same `torch.optim` optimizer takes the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .losses import cross_entropy, cross_entropy_backward
from .model import CharMLP

GradFn = Callable[[CharMLP, torch.Tensor, torch.Tensor], torch.Tensor]


def autograd_grads(model: CharMLP, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Forward with a graph, then `loss.backward()`. Returns the detached loss."""
    for p in model.parameters():
        p.grad = None
    loss = cross_entropy(model(xb), yb)
    loss.backward()
    return loss.detach()


def manual_grads(model: CharMLP, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Forward without a graph, then the layers' own backward. Returns the loss."""
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        logits = model(xb)
        loss = cross_entropy(logits, yb)
        model.backward(cross_entropy_backward(logits, yb))
    return loss


ENGINES: dict[str, GradFn] = {"autograd": autograd_grads, "manual": manual_grads}


def reference_engine(engine: str) -> str:
    """The eager engine whose gradients `engine` computes: `auto` and `fast` (the fused step of
    fastpath.py) are the manual engine's math; `autograd` and `manual` are themselves."""
    return "manual" if engine in ("auto", "fast") else engine


def grad_fn(engine: str) -> GradFn:
    """The gradient function of an engine name (`fast` and `auto` give the manual engine's)."""
    engine = reference_engine(engine)
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}") from None
