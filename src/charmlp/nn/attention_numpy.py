"""CausalSelfAttention's eval forward in NumPy (torch-free, for sampling), decoding incrementally
with a cache: the keys and values of earlier positions are kept, each call adds its positions'."""

from __future__ import annotations

import math

import numpy as np

from .module_numpy import Cache, Kind, Op, positive_int, run, state


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))  # softmax(x) = eˣ⁻ᵐᵃˣ / Σ eˣ⁻ᵐᵃˣ
    return e / e.sum(-1, keepdims=True)


def attention(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    B, T, C = x.shape
    H = op.attrs["n_head"]
    q, k, v = run(op.kids["qkv"], x, cache).reshape(B, T, 3, H, C // H).transpose(2, 0, 3, 1, 4)  # (B, H, T, D)
    st = state(op, cache)
    if "k" in st:  # the keys and values of earlier positions come first
        k, v = np.concatenate([st["k"], k], 2), np.concatenate([st["v"], v], 2)
    st["k"], st["v"] = k, v
    t0 = k.shape[2] - T
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1 / math.sqrt(C // H))  # q·kᵀ/√D
    future = np.arange(k.shape[2]) > t0 + np.arange(T)[:, None]  # query t0 + i sees keys 0 … t0 + i
    scores[..., future] = -np.inf
    y = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # heads merged
    return run(op.kids["proj"], y, cache)


def _check(op: Op) -> str | None:
    if (why := positive_int(op, "n_head")) is not None:
        return why
    C = op.kids["qkv"].t.get("weight", np.empty((0, 0))).shape[0]
    return f"its width {C} is not a multiple of its {op.attrs['n_head']} heads" if C % op.attrs["n_head"] else None


KINDS = {"CausalSelfAttention": Kind(attention, attrs=("n_head",), kids=("qkv", "proj"), check=_check)}
