"""Can the fused step (fast.FastStep, compiled.CompiledStep) run this model and optimizer?

Shared by both fused steps and by `fast.make_train_step`, so neither fused engine calls into the other.
"""

from __future__ import annotations

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
