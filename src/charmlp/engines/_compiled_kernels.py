"""Numba kernels of the compiled step (imported by `compiled` once Numba and the BLAS
symbol are known to be there; see that module for the contract).

Every array is float32 and every constant is cast to float32, so the loops vectorise and round
as the eager float32 engine does; `fastmath` allows reassociation and fused multiply-adds only, and the NumPy error
model drops Python's ZeroDivisionError check (a branch in every division that stops vectorisation)
(no assumptions about NaN or infinity: the caller's non-finite guard must still see them).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from ..jit import cached_njit
from .blas import SGEMM_SYMBOL

# void cblas_sgemm(order, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc), ILP64;
# pointers passed as integers (same registers in every 64-bit calling convention)
_sgemm = types.ExternalFunction(
    SGEMM_SYMBOL,
    types.void(types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, types.float32,
               types.intp, types.int64, types.intp, types.int64, types.float32, types.intp, types.int64),
)
_ROW, _N, _T = 101, 111, 112  # CblasRowMajor, CblasNoTrans, CblasTrans
_FM = {"reassoc", "contract"}


_jit = cached_njit


@intrinsic
def _f32p(typingctx, addr):
    """The address `addr` (an integer) as a float32 pointer."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.FloatType()))

    return types.CPointer(types.float32)(types.intp), codegen


@njit(inline="always")
def _v1(addr, n):
    """The float32 vector of length n at `addr` (memory the caller keeps alive)."""
    return carray(_f32p(addr), n)


@njit(inline="always")
def _v2(addr, m, n):
    """The C-contiguous float32 (m, n) matrix at `addr`."""
    return carray(_f32p(addr), (m, n))


@njit(inline="always")
def _mm(ta, tb, M, N, K, a, b, c):
    """c (M, N) = op(a) · op(b), op = transpose where ta/tb is _T; all C-contiguous."""
    _sgemm(_ROW, ta, tb, M, N, K, np.float32(1.0), a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
           np.float32(0.0), c.ctypes.data, c.shape[1])


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _tanh(x):
    """tanh(x) as an odd/even rational function on [−7.9, 7.9] (Eigen's float tanh): vectorises,
    where the C library's tanhf does not; within 4e-7 of the exact value."""
    c = np.float32(7.90531110763549805)
    x = c if x > c else (-c if x < -c else x)  # clamp; NaN falls through both tests and stays NaN
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    r = x * p / q
    return x if abs(x) < np.float32(0.0004) else r


@_jit(fastmath=_FM, error_model="numpy")
def tanh_array(x, out):
    """out = tanh(x) elementwise, 1-D (the approximation the step uses; for tests)."""
    for i in range(x.shape[0]):
        out[i] = _tanh(x[i])


class StepArgs(NamedTuple):
    """What `mlp_step` works on, fixed for a run (`CompiledStep` builds it once; each step adds lr, t).

    Hidden block l is described by addresses bp[l] = (W, gW, b, gb, γ, β, dγ, dβ, running mean,
    running var, batch mean, batch var, rstd, x̂, h, dpre), sizes bdim[l] = (fan_in, H, has bias,
    has BatchNorm) and bf[l] = (eps, momentum); parameter i by pp[i] = (p, g, m, v, step) and its
    size psz[i]. Addresses instead of arrays give one compiled signature for every depth.

    It crosses into the compiled code as a plain tuple, `tuple(args)`, which `mlp_step` names
    again: Numba's dispatcher types a plain tuple in C but a named one in Python, ~4 µs more on
    every call (some 3% of a step)."""

    ix: np.ndarray  # (B,) int64: the batch's example indices, written by the caller each step
    X: np.ndarray  # (N, T) ids
    Y: np.ndarray  # (N,) ids
    C: np.ndarray  # (V, E) embedding table, and its gradient
    gC: np.ndarray
    emb: np.ndarray  # (B, T·E) the flattened embeddings, and their gradient
    demb: np.ndarray
    bp: np.ndarray  # (L, 16) int64 addresses of the hidden blocks' arrays
    bdim: np.ndarray  # (L, 4) int64 sizes and flags
    bf: np.ndarray  # (L, 2) float32 eps, momentum
    n_blocks: int
    Wo: np.ndarray  # (H, V) output layer, and its gradients
    gWo: np.ndarray
    bo: np.ndarray
    gbo: np.ndarray
    logits: np.ndarray  # (B, V), then dlogits
    pp: np.ndarray  # (P, 5) int64 addresses (p, g, m, v, step) per parameter
    psz: np.ndarray  # (P,) int64 sizes
    wd: float  # weight decay
    adamw: bool  # AdamW, else SGD
    beta1: float
    beta2: float
    adam_eps: float


@_jit(fastmath=_FM, error_model="numpy")
def mlp_step(args, lr, t):
    """One training step on the batch X[ix], Y[ix] (`args`: a `StepArgs` as a plain tuple) at
    learning rate lr, AdamW's step count t; returns its loss (before the update). Updates
    parameters, grads, BatchNorm running statistics and AdamW state in place.

    One function of ~180 lines, on purpose: the step must be one compiled call (a call from Python
    costs microseconds, as much as a part of the step), and its four parts, each under a `# ----`
    line (forward, loss, backward, update), share the batch's sizes, the blocks' address tables
    and the views made from them, which helpers would each take as a dozen parameters again."""
    f = StepArgs(*args)  # the fields by name
    ix, X, Y, C, gC, emb, demb = f.ix, f.X, f.Y, f.C, f.gC, f.emb, f.demb
    bp, bdim, bf, n_blocks = f.bp, f.bdim, f.bf, f.n_blocks
    Wo, gWo, bo, gbo, logits, pp, psz = f.Wo, f.gWo, f.bo, f.gbo, f.logits, f.pp, f.psz
    wd, beta1, beta2, adam_eps = f.wd, f.beta1, f.beta2, f.adam_eps
    B, T, E = ix.shape[0], X.shape[1], C.shape[1]
    one = np.float32(1.0)

    # ---- forward: emb[b, t·E + e] = C[X[ix[b], t], e] (Flatten is the row layout)
    for b in range(B):
        r = ix[b]
        for k in range(T):
            c = X[r, k]
            for e in range(E):
                emb[b, k * E + e] = C[c, e]
    x = emb
    for li in range(n_blocks):
        K, H = bdim[li, 0], bdim[li, 1]
        a = bp[li]
        W, h = _v2(a[0], K, H), _v2(a[14], B, H)
        _mm(_N, _N, B, H, K, x, W, h)  # pre = x·W (in h)
        if bdim[li, 2]:
            bias = _v1(a[2], H)
            for b in range(B):
                for j in range(H):
                    h[b, j] += bias[j]
        if bdim[li, 3]:
            gamma, beta, rmean, rvar = _v1(a[4], H), _v1(a[5], H), _v1(a[8], H), _v1(a[9], H)
            mean, var, rstd, xhat = _v1(a[10], H), _v1(a[11], H), _v1(a[12], H), _v2(a[13], B, H)
            # μ = Σ_b pre / B, σ² = Σ_b (pre − μ)² / (B − 1), x̂ = (pre − μ)·rstd, rstd = 1/√(σ² + ε)
            eps, mom = bf[li, 0], bf[li, 1]
            mean[:] = 0
            var[:] = 0
            for b in range(B):
                for j in range(H):
                    mean[j] += h[b, j]
            inv_b = one / np.float32(B)
            for j in range(H):
                mean[j] *= inv_b
            for b in range(B):
                for j in range(H):
                    d = h[b, j] - mean[j]
                    xhat[b, j] = d
                    var[j] += d * d
            inv_b1 = one / np.float32(B - 1)
            for j in range(H):
                var[j] *= inv_b1
                # running ← running + momentum·(batch − running)   (torch's lerp_)
                rmean[j] += mom * (mean[j] - rmean[j])
                rvar[j] += mom * (var[j] - rvar[j])
                rstd[j] = one / np.sqrt(var[j] + eps)
            # h = tanh(γ·x̂ + β)
            for b in range(B):
                for j in range(H):
                    xh = xhat[b, j] * rstd[j]
                    xhat[b, j] = xh
                    h[b, j] = _tanh(gamma[j] * xh + beta[j])
        else:
            for b in range(B):
                for j in range(H):
                    h[b, j] = _tanh(h[b, j])
        x = h
    K, V = Wo.shape
    _mm(_N, _N, B, V, K, x, Wo, logits)

    # ---- loss: L = mean_b (log Σ_v e^{z_bv} − z_b,y_b), z = logits − max_v logits (stable);
    # then dlogits = (softmax − onehot(y)) / B, in the logits buffer
    loss = 0.0
    inv_bf = one / np.float32(B)
    for b in range(B):
        m = logits[b, 0] + bo[0]
        for v in range(V):
            z = logits[b, v] + bo[v]
            logits[b, v] = z
            m = max(m, z)
        y = Y[ix[b]]
        zy = logits[b, y] - m
        s = np.float32(0.0)
        for v in range(V):
            ev = np.exp(logits[b, v] - m)
            logits[b, v] = ev
            s += ev
        loss += np.log(s) - zy
        inv_s = inv_bf / s
        for v in range(V):
            logits[b, v] *= inv_s
        logits[b, y] -= inv_bf
    loss /= B
    if not np.isfinite(loss):  # leave the last good state for the caller's non-finite guard
        return loss
    d = logits

    # ---- backward. logits = h·Wo + bo  →  dWo = hᵀ·d, dbo = Σ_b d, dh = d·Woᵀ
    _mm(_T, _N, K, V, B, x, d, gWo)
    gbo[:] = 0
    for b in range(B):
        for v in range(V):
            gbo[v] += d[b, v]
    # the top block's dpre buffer holds dh first
    dh = _v2(bp[n_blocks - 1, 15], B, K) if n_blocks > 0 else demb
    _mm(_N, _T, B, K, V, d, Wo, dh)
    for li in range(n_blocks - 1, -1, -1):
        K, H = bdim[li, 0], bdim[li, 1]
        a = bp[li]
        W, gW, h, dy = _v2(a[0], K, H), _v2(a[1], K, H), _v2(a[14], B, H), _v2(a[15], B, H)
        # h = tanh(y)  →  dy = (1 − h²)·dh   (in place: dy holds dh)
        for b in range(B):
            for j in range(H):
                dy[b, j] *= one - h[b, j] * h[b, j]
        if bdim[li, 3]:
            gamma, ggamma, gbeta = _v1(a[4], H), _v1(a[6], H), _v1(a[7], H)
            rstd, xhat = _v1(a[12], H), _v2(a[13], B, H)
            # dγ = Σ_b dy·x̂, dβ = Σ_b dy; with Σdx̂ = γ·dβ and Σdx̂·x̂ = γ·dγ the closed form is
            # dpre = γ·rstd·(dy − dβ/B − x̂·dγ/(B − 1))
            ggamma[:] = 0
            gbeta[:] = 0
            for b in range(B):
                for j in range(H):
                    ggamma[j] += dy[b, j] * xhat[b, j]
                    gbeta[j] += dy[b, j]
            inv_b = one / np.float32(B)
            inv_b1 = one / np.float32(B - 1)
            for b in range(B):
                for j in range(H):
                    dy[b, j] = gamma[j] * rstd[j] * (dy[b, j] - gbeta[j] * inv_b - xhat[b, j] * (ggamma[j] * inv_b1))
        # pre = x·W + b  →  dW = xᵀ·dpre, db = Σ_b dpre, dx = dpre·Wᵀ
        x_in = _v2(bp[li - 1, 14], B, K) if li > 0 else emb
        _mm(_T, _N, K, H, B, x_in, dy, gW)
        if bdim[li, 2]:
            gb = _v1(a[3], H)
            gb[:] = 0
            for b in range(B):
                for j in range(H):
                    gb[j] += dy[b, j]
        dx = _v2(bp[li - 1, 15], B, K) if li > 0 else demb  # the block below's dpre buffer is free now
        _mm(_N, _T, B, K, H, dy, W, dx)
    # emb[b, t] = C[x[b, t]]  →  dC[i] = Σ_{b,t: x[b,t]=i} demb[b, t]
    gC[:] = 0
    for b in range(B):
        r = ix[b]
        for k in range(T):
            c = X[r, k]
            for e in range(E):
                gC[c, e] += demb[b, k * E + e]

    # ---- update
    lr32 = np.float32(lr)
    if f.adamw:
        # torch.optim.AdamW: p ← p·(1 − lr·wd); m ← m + (1 − β₁)(g − m); v ← β₂v + (1 − β₂)g²;
        # p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
        decay = np.float32(1.0 - lr * wd)
        b2 = np.float32(beta2)
        c1, c2 = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
        step_size = np.float32(lr / (1.0 - beta1**t))
        bc2_sqrt = np.float32(np.sqrt(1.0 - beta2**t))
        eps32 = np.float32(adam_eps)
        for pi in range(pp.shape[0]):
            n = psz[pi]
            p, g, m, v, step = _v1(pp[pi, 0], n), _v1(pp[pi, 1], n), _v1(pp[pi, 2], n), _v1(pp[pi, 3], n), _v1(pp[pi, 4], 1)
            step[0] = np.float32(t)
            for i in range(p.shape[0]):
                gi = g[i]
                pv = p[i] * decay
                mi = m[i] + c1 * (gi - m[i])
                vi = v[i] * b2 + c2 * gi * gi
                m[i] = mi
                v[i] = vi
                p[i] = pv - step_size * (mi / (np.sqrt(vi) / bc2_sqrt + eps32))
    else:
        # torch.optim.SGD: p ← p − lr·(g + wd·p)
        wd32 = np.float32(wd)
        for pi in range(pp.shape[0]):
            n = psz[pi]
            p, g = _v1(pp[pi, 0], n), _v1(pp[pi, 1], n)
            if wd != 0.0:
                for i in range(p.shape[0]):
                    p[i] -= lr32 * (g[i] + wd32 * p[i])
            else:
                for i in range(p.shape[0]):
                    p[i] -= lr32 * g[i]
    return loss


CACHED = mlp_step._cache.__class__.__name__ != "NullCache"
