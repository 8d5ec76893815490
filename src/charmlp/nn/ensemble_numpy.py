"""Ensemble's eval forward in NumPy (torch-free, for sampling): the log of its members' mean probability."""

from __future__ import annotations

import math

import numpy as np

from .module_numpy import Cache, Kind, Op, log_softmax, run


def ensemble(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    logp = np.stack([log_softmax(run(kid, x, cache)) for kid in op.kids.values()])  # (K, …, V)
    m = logp.max(0)  # log((1/K) Σ_k softmax(z_k)) = m + log Σ_k e^(ls_k − m) − log K
    return m + np.log(np.exp(logp - m).sum(0)) - math.log(len(logp))


KINDS = {"Ensemble": Kind(ensemble, kids=None)}
