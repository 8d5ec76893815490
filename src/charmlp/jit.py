"""Numba's `njit` with an on-disk cache where one can be written (the compiled MLP step, fused kernels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def cached_njit(**kw: Any) -> Callable[[Callable], Any]:
    """`njit(cache=True, **kw)` where some cache directory is writable, else without a cache."""
    from numba import njit

    def deco(fn: Callable) -> Any:
        try:
            return njit(cache=True, **kw)(fn)
        except RuntimeError:  # "cannot cache function …: no locator available"
            return njit(cache=False, **kw)(fn)

    return deco
