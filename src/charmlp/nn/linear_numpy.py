"""Linear's eval forward in NumPy (torch-free, for sampling): y = x·W + b."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op


def linear(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    y = x @ op.t["weight"]  # y = x·W + b
    if "bias" in op.t:
        y += op.t["bias"]
    return y


def _check(op: Op) -> str | None:
    t = op.t
    return "its bias does not match its weight" if "bias" in t and t["bias"].shape != t["weight"].shape[1:] else None


KINDS = {"Linear": Kind(linear, {"weight": 2, "bias": 1}, optional=("bias",), check=_check)}
