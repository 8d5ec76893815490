"""What both fused steps (fast.FastStep, compiled.CompiledStep) share: whether they can run this
model and optimizer, and how they reach the model's tensors (NumPy views, `.grad` buffers, the
hidden blocks, AdamW's state).

Shared by both fused steps and by `fast.make_train_step`, so neither fused engine calls into the other.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..models import LanguageModel
from ..nn import BatchNorm1d, Embedding, Flatten, Linear, Tanh


def unsupported_reason(model: LanguageModel, optimizer: torch.optim.Optimizer) -> str | None:
    """Why the fast step cannot run this model/optimizer (None when it can)."""
    params = list(model.parameters())
    if any(p.device.type != "cpu" for p in params):
        return "the fast step runs on the CPU only"
    if any(p.dtype != torch.float32 for p in params):
        return "the fast step needs float32 parameters"
    kinds = [type(m) for m in model.layers]
    if kinds[:2] != [Embedding, Flatten] or kinds[-1] is not Linear:
        return "unrecognised layer stack"
    body = kinds[2:-1]
    i = 0
    while i < len(body):  # [Linear, (BatchNorm1d), Tanh]*
        if body[i] is not Linear:
            return "unrecognised layer stack"
        i += 1
        if i < len(body) and body[i] is BatchNorm1d:
            i += 1
        if i >= len(body) or body[i] is not Tanh:
            return "unrecognised layer stack"
        i += 1
    if len(optimizer.param_groups) != 1:
        return "the fast step needs a single parameter group"
    group = optimizer.param_groups[0]
    if {id(p) for p in group["params"]} != {id(p) for p in params}:
        return "the optimizer does not hold exactly the model's parameters"
    if isinstance(optimizer, torch.optim.AdamW):
        if group.get("amsgrad") or group.get("maximize") or group.get("capturable") or group.get("differentiable"):
            return "AdamW with amsgrad/maximize/capturable/differentiable is not supported"
        return None
    if type(optimizer) is torch.optim.SGD:
        if group.get("momentum") or group.get("nesterov") or group.get("dampening") or group.get("maximize"):
            return "SGD with momentum/nesterov/dampening/maximize is not supported"
        return None
    return f"optimizer {type(optimizer).__name__} is not supported"


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy view sharing `t`'s memory (t must be a contiguous CPU tensor)."""
    assert t.is_contiguous()
    return t.detach().numpy()


def grad_buffers(model: LanguageModel) -> list[torch.nn.Parameter]:
    """The model's parameters, each with a contiguous `.grad` for the step to write into (made
    where missing), so that `p.grad` then reads like the eager path's."""
    params = list(model.parameters())
    for p in params:
        if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
            p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
    return params


def hidden_blocks(model: LanguageModel) -> Iterator[tuple[Linear, BatchNorm1d | None, Tanh]]:
    """The blocks Linear → (BatchNorm1d) → Tanh between the embedding's Flatten and the output
    Linear, bottom to top (a stack `unsupported_reason` accepted)."""
    layers = list(model.layers)
    i = 2
    while i < len(layers) - 1:
        bn = layers[i + 1] if isinstance(layers[i + 1], BatchNorm1d) else None
        yield layers[i], bn, layers[i + (2 if bn is not None else 1)]
        i += 3 if bn is not None else 2


def adamw_state(optimizer: torch.optim.Optimizer, p: torch.nn.Parameter) -> dict[str, torch.Tensor]:
    """AdamW's state of `p` ("step", "exp_avg", "exp_avg_sq"), made as torch.optim.AdamW makes it
    on its first step where it has none yet."""
    st = optimizer.state[p]
    if not st:
        st["step"] = torch.tensor(0.0)
        st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return st
