"""The manual engine: the same forward without a graph, then the layers' hand-written backward."""

from __future__ import annotations

import torch

from ..models import LanguageModel
from ..nn import cross_entropy, cross_entropy_backward


def manual_grads(model: LanguageModel, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Forward without a graph, then the layers' own backward. Returns the loss."""
    for p in model.parameters():
        p.grad = None
    with torch.no_grad():
        logits = model(xb)
        loss = cross_entropy(logits, yb)
        model.backward(cross_entropy_backward(logits, yb))
    return loss
