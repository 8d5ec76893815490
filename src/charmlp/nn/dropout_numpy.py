"""Dropout's eval forward in NumPy (torch-free, for sampling): the identity (it drops in training only)."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op


def identity(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return x


KINDS = {"Dropout": Kind(identity)}
