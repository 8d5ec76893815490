"""Sequential's eval forward in NumPy (torch-free, for sampling): the layers in order."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op, run


def sequential(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    for kid in op.kids.values():
        x = run(kid, x, cache)
    return x


KINDS = {"Sequential": Kind(sequential, kids=None)}
