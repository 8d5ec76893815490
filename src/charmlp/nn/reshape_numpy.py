"""Flatten's and FlattenConsecutive's eval forwards in NumPy (torch-free, for sampling)."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op, positive_int


def flatten(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return x.reshape(len(x), -1)  # (B, T, E) → (B, T·E)


def flatten_consecutive(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    B, T, C = x.shape
    n = op.attrs["n"]
    if T % n:
        raise ValueError(f"FlattenConsecutive({n}) over {T} positions")
    x = x.reshape(B, T // n, C * n)  # (B, T, C) → (B, T/n, n·C), a single position dropped
    return x[:, 0] if x.shape[1] == 1 else x


KINDS = {
    "Flatten": Kind(flatten),
    "FlattenConsecutive": Kind(flatten_consecutive, attrs=("n",), check=lambda op: positive_int(op, "n")),
}
