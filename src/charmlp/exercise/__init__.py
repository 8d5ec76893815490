"""The learner's side: the backprop exercise (a starter file, a checker that diagnoses each gradient),
a checker for hand-written layers of every kind in `charmlp.nn`, and the same checks as a notebook API.

    from charmlp.exercise import Backprop, check_layer
    ex = Backprop(seed=42)           # batch, parameters and every forward tensor by its exercise name
    ex.check(dlogprobs=dlogprobs)    # Report: .ok, .rows, text / HTML table
    check_layer(MyLinear, "linear")  # output, dx and every parameter's .grad, at several shapes and seeds
    RNNBackprop().check(dh2=dh2)     # likewise WaveNetBackprop, GRUBackprop, TransformerBackprop

Every name loads on first use (PEP 562): `catalog` (the layer kinds, their constructors and
templates) imports no torch, so `charmlp exercise check-layer --help` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"ATOMS": "backprop", "Backprop": "backprop", "Report": "..verdict", "Row": "..verdict", "check_file": "runner",
          "check_layer": "layers", "write_starter": "starter", "write_layer_template": "starter", "KINDS": "catalog",
          **{name: "exercises" for name in ("GRUBackprop", "RNNBackprop", "TransformerBackprop", "WaveNetBackprop")}}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = _WHERE[name]
    return getattr(importlib.import_module(where if where.startswith("..") else "." + where, __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
