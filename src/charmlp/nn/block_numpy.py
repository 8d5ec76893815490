"""MLP's and Block's eval forwards in NumPy (torch-free, for sampling): the transformer's
feed-forward and its residual pre-LayerNorm block (dropout is the identity in eval)."""

from __future__ import annotations

import numpy as np

from .module_numpy import Cache, Kind, Op, run


def mlp(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return run(op.kids["proj"], run(op.kids["act"], run(op.kids["fc"], x, cache), cache), cache)


def block(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    kids = op.kids  # x → x + attn(ln1(x)) → x + mlp(ln2(x))
    x = x + run(kids["attn"], run(kids["ln1"], x, cache), cache)
    return x + run(kids["mlp"], run(kids["ln2"], x, cache), cache)


KINDS = {
    "MLP": Kind(mlp, kids=("fc", "act", "proj")),
    "Block": Kind(block, kids=("ln1", "attn", "ln2", "mlp"), optional_kids=("drop1", "drop2")),
}
