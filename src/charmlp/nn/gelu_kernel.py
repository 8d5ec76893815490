"""GELU's derivative as one Numba loop (CPU, float32): the tensor operations of `GELU.backward_`
are seven passes over memory, autograd's fused C++ kernel one; this is one pass too.

    dx = dy·gelu'(x),  gelu'(x) = Φ(x) + x·φ(x),  Φ(x) = y/x (½ at x = 0),  φ(x) = e^(−x²/2)/√(2π)

`gelu_derivative_` computes gelu'(x) over x in the forward (while x is still in cache: see
`GELU.forward_`), `gelu_backward_` multiplies it into dy in the backward.

The loop vectorises only if nothing in it is a call into the C library, so e^t is computed here
with arithmetic alone (`exp_nonpositive`): Cody–Waite range reduction t = n·ln2 + r, |r| ≤ ½ln2,
then e^r by a degree-7 polynomial (Cephes' `expf` coefficients) and 2^n written straight into a
float's exponent bits. Its error is under 2 ulp (`tests/nn/test_gelu_kernel.py`).
Compiled on first use, cached on disk like the compiled MLP step.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from ..jit import cached_njit

_f32 = np.float32
LOG2E = _f32(1.4426950408889634)  # 1/ln 2
LN2_HI, LN2_LO = _f32(0.693359375), _f32(-2.12194440e-4)  # ln 2 = LN2_HI + LN2_LO; n·LN2_HI is exact
# e^r ≈ 1 + r + r²·(P5 + r·(P4 + r·(P3 + r·(P2 + r·(P1 + r·P0))))) on |r| ≤ ½ln2
P0, P1, P2, P3, P4, P5 = (_f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                             4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
T_MIN = _f32(-87.0)  # e^t ≥ 2^−125: the result stays a normal float (below that, it is ≈ 0 anyway)
INV_SQRT_2PI = _f32(0.3989422804014327)  # 1/√(2π)


@intrinsic
def float32_from_bits(typingctx, bits):  # noqa: ANN001, ANN201, ARG001
    """The float32 whose IEEE bits are the low 32 bits of the integer `bits` (a bit cast)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@cached_njit(fastmath={"contract"}, error_model="numpy", inline="always")
def exp_nonpositive(t):  # noqa: ANN001, ANN201
    """e^t for float32 t ≤ 0 (t below −87 is taken as −87)."""
    t = max(t, T_MIN)
    n = np.floor(t * LOG2E + _f32(0.5))  # nearest integer to t/ln2
    r = t - n * LN2_HI - n * LN2_LO
    p = ((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5
    p = p * r * r + r + _f32(1.0)
    return p * float32_from_bits((np.int64(n) + 127) << 23)  # · 2^n: n + 127 is the biased exponent


@cached_njit(fastmath={"contract"}, error_model="numpy")
def exp_nonpositive_array(t, out):  # noqa: ANN001, ANN201
    """`exp_nonpositive` over a 1-D float32 array (for the tests)."""
    for i in range(t.shape[0]):
        out[i] = exp_nonpositive(t[i])


@cached_njit(fastmath={"contract"}, error_model="numpy", inline="always")
def gelu_derivative(x, y):  # noqa: ANN001, ANN201
    """dy/dx = Φ(x) + x·φ(x) at float32 x with y = gelu(x): Φ(x) = y/x (½ at x = 0)."""
    cdf = y / x if x != 0 else _f32(0.5)
    return cdf + x * exp_nonpositive(_f32(-0.5) * x * x) * INV_SQRT_2PI


@cached_njit(fastmath={"contract"}, error_model="numpy")
def gelu_backward_(x, y, dy):  # noqa: ANN001, ANN201
    """dy ← dy·gelu'(x) in place; x, y = gelu(x), dy: C-contiguous float32 arrays of one shape."""
    x, y, d = x.ravel(), y.ravel(), dy.ravel()  # views: the loop runs over flat memory
    for i in range(x.shape[0]):
        d[i] = d[i] * gelu_derivative(x[i], y[i])


@cached_njit(fastmath={"contract"}, error_model="numpy")
def gelu_derivative_(x, y):  # noqa: ANN001, ANN201
    """x ← gelu'(x) in place; x, y = gelu(x): C-contiguous float32 arrays of one shape."""
    x, y = x.ravel(), y.ravel()
    for i in range(x.shape[0]):
        x[i] = gelu_derivative(x[i], y[i])
