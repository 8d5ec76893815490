"""LayerNorm's eval forward in NumPy (torch-free, for sampling), and the shape check it shares
with BatchNorm1d's."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op

NORM_TENSORS = {"weight": 1, "bias": 1}  # γ, β


def layernorm(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)  # per row: y = γ·(x − μ)/√(σ² + ε) + β, σ² = mean((x − μ)²)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc * (1 / np.sqrt(var + op.attrs["eps"])) * op.t["weight"] + op.t["bias"]


def norm_check(op: Op) -> str | None:
    """A normalisation's vectors have one length, and its ε is in (0, 1]."""
    eps = op.attrs["eps"]
    if len({v.shape for v in op.t.values()}) != 1:
        return "its tensors differ in length"
    if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
        return "its eps is not a number in (0, 1]"
    return None


KINDS = {"LayerNorm": Kind(layernorm, NORM_TENSORS, attrs=("eps",), check=norm_check)}
