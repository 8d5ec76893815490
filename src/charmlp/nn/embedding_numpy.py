"""Embedding's and PositionEmbedding's eval forwards in NumPy (torch-free, for sampling)."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op, state


def embedding(op: Op, ids: np.ndarray, cache: Cache | None) -> np.ndarray:
    return op.t["weight"][ids]  # out[…] = C[ids[…]]


def position(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    st, T = state(op, cache), x.shape[-2]
    t0 = st.get("t", 0)  # positions already seen
    if t0 + T > len(op.t["weight"]):
        raise ValueError(f"{t0 + T} positions, more than the {len(op.t['weight'])} this model has")
    st["t"] = t0 + T
    return x + op.t["weight"][t0 : t0 + T]  # y = x + P[t0 : t0 + T]


KINDS = {
    "Embedding": Kind(embedding, {"weight": 2}, table=True),
    "PositionEmbedding": Kind(position, {"weight": 2}),
}
