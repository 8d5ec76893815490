"""Layers, each a `torch.nn.Module` with `forward` and a hand-written `backward` beside it.

The names load on first use (PEP 562): `from charmlp import nn` costs nothing, and the model
files name `nn.Linear` etc. only inside the functions that build layers, so the model registry
(and with it `charmlp train --help`) does not import torch.

Each layer file's eval forward in NumPy sits beside it in `<file>_numpy.py`, which imports no
torch (see `module_numpy`); `numpy_kinds()` gathers them for the sampler (`numpy_model.Net`).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name → the submodule that defines it
_EXPORTS = {
    "activations": ("GELU", "Tanh"),
    "attention": ("CausalSelfAttention",),
    "batchnorm": ("BatchNorm1d",),
    "block": ("MLP", "Block"),
    "containers": ("Sequential",),
    "dropout": ("Dropout",),
    "embedding": ("Embedding", "PositionEmbedding"),
    "ensemble": ("Ensemble", "mixture"),
    "layernorm": ("LayerNorm",),
    "linear": ("Linear",),
    "losses": ("cross_entropy", "cross_entropy_backward"),
    "module": ("Layer", "accumulate_grad", "share_scratch"),
    "recurrent": ("CELLS", "Cell", "GRUCell", "Recurrent", "RNNCell"),
    "reshape": ("Flatten", "FlattenConsecutive"),
    "table": ("BigramTable",),
}
# the layer files with a NumPy eval forward beside them (<file>_numpy.py), for `numpy_kinds`
_NUMPY = ("activations", "attention", "batchnorm", "block", "containers", "dropout", "embedding", "ensemble",
          "layernorm", "linear", "recurrent", "reshape", "table")
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def numpy_kinds() -> dict[str, Any]:
    """Every layer type's NumPy eval forward (a `module_numpy.Kind`) by type name: the `KINDS`
    of each `<file>_numpy.py` in `_NUMPY`. Imports numpy, never torch."""
    kinds: dict[str, Any] = {}
    for module in _NUMPY:
        more = importlib.import_module(f".{module}_numpy", __name__).KINDS
        if twice := kinds.keys() & more.keys():
            raise RuntimeError(f"nn/{module}_numpy.py names layer types named before: {sorted(twice)}")
        kinds |= more
    return kinds


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
