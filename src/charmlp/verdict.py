"""What every verdict row shares, for gradcheck's and the exercise's reports: a shape as text and
a float JSON can hold."""

from __future__ import annotations

import math


def shape_text(shape: tuple[int, ...] | None) -> str:
    """`3×27`, `scalar` for (), empty for an unknown shape."""
    return "" if shape is None else ("×".join(map(str, shape)) or "scalar")


def json_float(x: float | None) -> float | None:
    """`x`, or None where it is inf or nan (JSON has neither)."""
    return x if x is None or math.isfinite(x) else None
