"""BigramTable's eval forward in NumPy (torch-free, for sampling): the logits looked up by the last id."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op


def bigram(op: Op, ids: np.ndarray, cache: Cache | None) -> np.ndarray:
    return op.t["weight"][ids[..., -1]]  # logits = W[last id]


KINDS = {"BigramTable": Kind(bigram, {"weight": 2}, table=True)}
