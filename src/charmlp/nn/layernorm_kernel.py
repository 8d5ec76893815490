"""LayerNorm's backward as one Numba loop per row (CPU): the same closed form as
`LayerNorm.backward`'s tensor operations, in one pass over the rows instead of a dozen passes
over the whole tensor — which is what autograd's fused C++ kernel does too.

Per row of C entries (x̂ = (x − μ)·rstd, dx̂ = γ·dy):
    a = mean(dx̂), b = mean(dx̂·x̂), dx = residual + rstd·(dx̂ − a − x̂·b)
and over all rows dγ += Σ dy·x̂, dβ += Σ dy.
Compiled on first use per dtype (float32, float64), cached on disk like the compiled MLP step.
"""

from __future__ import annotations

import numpy as np

from ..jit import cached_njit


@cached_njit(fastmath={"reassoc", "contract"}, error_model="numpy")
def layernorm_backward(x, mean, rstd, w, dy, res, has_res, inv_c, dx, dw, db):  # noqa: ANN001, ANN201
    n, C = x.shape
    xh = np.empty(C, x.dtype)
    zero = inv_c * 0
    for i in range(n):
        m, r = mean[i], rstd[i]
        a, b = zero, zero
        for j in range(C):
            h = (x[i, j] - m) * r
            xh[j] = h
            g = dy[i, j] * w[j]  # dx̂
            a += g
            b += g * h
            dw[j] += dy[i, j] * h  # dγ = Σ_rows dy·x̂
            db[j] += dy[i, j]  # dβ = Σ_rows dy
        a *= inv_c
        b *= inv_c
        for j in range(C):
            d = r * (dy[i, j] * w[j] - a - xh[j] * b)
            dx[i, j] = res[i, j] + d if has_res else d
