"""The only ways `.grad` gets filled: PyTorch autograd, or the hand-written backward (eager, or
fused into one step in `fast.py`).

Both eager engines run the same `model.forward`; afterwards every parameter's `.grad` holds
dL/dp and the same optimizer takes the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..models import LanguageModel
from .autograd import autograd_grads
from .manual import manual_grads

GradFn = Callable[[LanguageModel, torch.Tensor, torch.Tensor], torch.Tensor]

ENGINES: dict[str, GradFn] = {"autograd": autograd_grads, "manual": manual_grads}


def reference_engine(engine: str) -> str:
    """The eager engine whose gradients `engine` computes: `auto` and `fast` (the fused step of
    fast.py) are the manual engine's math; `autograd` and `manual` are themselves."""
    return "manual" if engine in ("auto", "fast") else engine


def grad_fn(engine: str) -> GradFn:
    """The gradient function of an engine name (`fast` and `auto` give the manual engine's)."""
    engine = reference_engine(engine)
    try:
        return ENGINES[engine]
    except KeyError:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}") from None


__all__ = ["ENGINES", "GradFn", "autograd_grads", "grad_fn", "manual_grads", "reference_engine"]
