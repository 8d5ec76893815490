"""Tanh's and GELU's eval forwards in NumPy (torch-free, for sampling), and the error function
GELU needs (NumPy has none)."""

from __future__ import annotations

import math

import numpy as np

from .module_numpy import Cache, Kind, Op


def _erf_taylor_table(step: float, degree: int, top: float) -> np.ndarray:
    """Taylor coefficients of erf about c = 0, step, 2·step, …, top (rows: highest power first).

    erf⁽ᵏ⁺¹⁾(c) = (−1)ᵏ·2/√π·Hₖ(c)·e^(−c²) (Hermite Hₖ: H₀ = 1, H₁ = 2c, Hₖ₊₁ = 2c·Hₖ − 2k·Hₖ₋₁).
    With |x − c| ≤ 1/64, the terms past degree 9 sum to < 1e-17 and past degree 4 to < 1e-10:
    erf to float64 and to float32 rounding (tests check both against math.erf). Beyond `top`,
    erf = ±1 in float64 (erfc(6) ≈ 2e-17)."""
    c = np.arange(0.0, top + step / 2, step)
    g = 2 / math.sqrt(math.pi) * np.exp(-c * c)
    rows, h_prev, h, fact = [np.array([math.erf(v) for v in c])], np.zeros_like(c), np.ones_like(c), 1.0
    for k in range(degree):
        fact *= k + 1
        rows.append((-1) ** k * g * h / fact)  # erf⁽ᵏ⁺¹⁾(c)/(k+1)!
        h_prev, h = h, 2 * c * h - 2 * k * h_prev
    return np.stack(rows[::-1])


_ERF_STEP, _ERF_TOP = 1 / 32, 6.0
_ERF = _erf_taylor_table(_ERF_STEP, 9, _ERF_TOP)
_ERF_BY_DTYPE = {np.dtype(np.float64): _ERF, np.dtype(np.float32): _ERF[-5:].astype(np.float32)}  # degree 9, 4


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in x's dtype (float32 or float64):
    erf(x) = sign(x)·Σₖ aₖ(c)·(|x| − c)ᵏ about the grid point c nearest |x| (Horner)."""
    table = _ERF_BY_DTYPE[x.dtype]
    a = np.minimum(np.abs(x), _ERF_TOP)  # nan stays nan (in d, so in y) …
    i = np.rint(np.fmin(a, _ERF_TOP) * (1 / _ERF_STEP)).astype(np.intp)  # … but indexes the table
    d = a - i.astype(x.dtype) * _ERF_STEP  # exact: c is a multiple of 2⁻⁵ below 6
    y = table[0].take(i)
    for row in table[1:]:
        y *= d
        y += row.take(i)
    return np.copysign(y, x, out=y)


def tanh(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return np.tanh(x)


def gelu(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    return x * 0.5 * (1.0 + erf(x * (1 / math.sqrt(2))))  # y = x·Φ(x) = x·½(1 + erf(x/√2))


KINDS = {"Tanh": Kind(tanh), "GELU": Kind(gelu)}
