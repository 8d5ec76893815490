"""The base of every layer's NumPy eval forward: the torch-free counterpart of `module.py`.

Each layer file `nn/<file>.py` has its eval forward in NumPy beside it, in `nn/<file>_numpy.py`:
a `KINDS` table, layer type name → `Kind` (the forward, what the layer holds, a shape check).
Those files import no torch — `charmlp sample` runs without it — and `nn.numpy_kinds()` gathers
their tables for `numpy_model.Net`, which checks a saved description against them and runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Cache = dict[str, dict[str, Any]]  # layer path → its state from earlier positions


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, in x's dtype: x − m − log Σ e^(x − m), m the row's max."""
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclass(frozen=True)
class Kind:
    """What a layer type holds: tensors by rank (`optional` ones may be absent), attributes,
    named sublayers (None: any number, run in order); `check` says what is wrong with one
    layer's shapes (None: nothing); `table`: its weight has a row per character."""

    forward: Callable[[Op, np.ndarray, Cache | None], np.ndarray]
    tensors: dict[str, int] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    kids: tuple[str, ...] | None = ()
    optional_kids: tuple[str, ...] = ()
    check: Callable[[Op], str | None] | None = None
    table: bool = False


@dataclass
class Op:
    """A layer of a checked description: its kind, tensors, attributes and sublayers."""

    type: str
    path: str  # "layers.3", …: the key of its state in a cache
    kind: Kind
    t: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    kids: dict[str, Op] = field(default_factory=dict)


def run(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    """One layer's eval forward (its sublayers' through this too)."""
    return op.kind.forward(op, x, cache)


def state(op: Op, cache: Cache | None) -> dict[str, Any]:
    """This layer's state from earlier positions ({} without a cache: nothing is kept)."""
    return {} if cache is None else cache.setdefault(op.path, {})


def positive_int(op: Op, name: str) -> str | None:
    """What is wrong with the attribute `name` if it is not a positive integer (None: nothing)."""
    value = op.attrs[name]
    return None if type(value) is int and value >= 1 else f"its {name} is not a positive integer"
