"""The autograd engine: PyTorch differentiates the model's forward."""

from __future__ import annotations

import torch

from ..models import LanguageModel
from ..nn import cross_entropy


def autograd_grads(model: LanguageModel, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Forward with a graph, then `loss.backward()`. Returns the detached loss."""
    for p in model.parameters():
        p.grad = None
    loss = cross_entropy(model(xb), yb)
    loss.backward()
    return loss.detach()
