"""Ensemble's eval forward in NumPy (torch-free, for sampling): the log of its members' mean probability."""

from __future__ import annotations

import math

import numpy as np

from .module_numpy import Cache, Kind, Op, run


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)  # log softmax(x) = x − m − log Σ eˣ⁻ᵐ
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ensemble(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    logp = np.stack([_log_softmax(run(kid, x, cache)) for kid in op.kids.values()])  # (K, …, V)
    m = logp.max(0)  # log((1/K) Σ_k softmax(z_k)) = m + log Σ_k e^(ls_k − m) − log K
    return m + np.log(np.exp(logp - m).sum(0)) - math.log(len(logp))


KINDS = {"Ensemble": Kind(ensemble, kids=None)}
