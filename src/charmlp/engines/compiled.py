"""The compiled training step: the fast step's math as one Numba-compiled function.

`fast.FastStep` runs the fused step as ~75 NumPy calls; at batch 32 their per-call overhead
(~1 µs each) costs more than the arithmetic. Here the whole step — embedding gather, the
Linear/BatchNorm/tanh blocks, softmax cross-entropy, the hand-written backward and the SGD/AdamW
update — is one call of one compiled function, whose elementwise work runs as a few loops
between the matrix products. The products themselves go to `cblas_sgemm` of the OpenBLAS that
NumPy ships (the same routine `np.dot` calls), called straight from the compiled code.

Contract (as `FastStep`, whose tests this step also passes): the batch is drawn from the caller's
`torch.Generator` by the same `randint(0, N, (B,))`; the step reads and writes the model's own
parameter, `.grad`, BatchNorm-buffer and AdamW-state tensors through NumPy views; each Tanh's
`.out` holds the step's activations; a non-finite loss returns before any update. Its numbers
differ from the eager manual engine only by float32 rounding: the sums run in another order, and
tanh is a rational approximation (Eigen's float tanh; at most 4e-7 from the exact value, measured
over ±10 in tests/engines/test_fast.py), because the C library's scalar tanh cannot be vectorised
and cost more than the whole rest of the step.

Compilation (~3 s; benchmarks/run.py measures it) happens once: Numba caches the machine code in `__pycache__` beside this
file, or, where that is read-only, in the user's cache directory (`NUMBA_CACHE_DIR` overrides);
later processes load it in well under a second. `available()` says whether this step can run
(Numba importable and NumPy's BLAS exports the ILP64 `cblas_sgemm`); when not, the caller falls
back to `FastStep`.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ..models import LanguageModel
from ..nn import BatchNorm1d, Linear
from .blas import SGEMM_SYMBOL, find_sgemm
from .support import unsupported_reason

_status: str | None = None  # None: not tried yet; "" available; else why not
_step_fn: Any = None
_cached: bool = False


def available() -> bool:
    """Can the compiled step run here? (Imports Numba and compiles nothing.)"""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why the compiled step cannot run in this process (None when it can)."""
    global _status
    if _status is None:
        _status = _setup()
    return _status or None


def _setup() -> str:
    global _step_fn, _cached
    try:
        import llvmlite.binding as llvm
        import numba  # noqa: F401
    except ImportError:
        return "numba is not installed (pip install numba)"
    addr = find_sgemm()
    if addr is None:
        return "NumPy's BLAS exports no ILP64 cblas_sgemm"
    llvm.add_symbol(SGEMM_SYMBOL, addr)
    from . import _compiled_kernels as k

    _step_fn, _cached = k.mlp_step, k.CACHED
    return ""


def cache_info() -> dict[str, Any]:
    """Where the compiled code is cached, and this process's cache hits/misses."""
    if not available():
        return {"available": False, "reason": unavailable_reason()}
    st = _step_fn.stats
    impl = getattr(_step_fn, "_cache", None)
    return {"available": True, "cached": _cached, "cache_dir": getattr(impl, "cache_path", None),
            "cache_hits": sum(st.cache_hits.values()), "cache_misses": sum(st.cache_misses.values())}


def _np(t: torch.Tensor) -> np.ndarray:
    """A NumPy view sharing `t`'s memory."""
    assert t.is_contiguous()
    return t.detach().numpy()


class CompiledStep:
    """The fused step as one compiled call (see the module docstring); same API as `FastStep`."""

    impl = "compiled"

    def __init__(self, model: LanguageModel, optimizer: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor,
                 batch_size: int, generator: torch.Generator) -> None:
        reason = unsupported_reason(model, optimizer) or unavailable_reason()
        if reason is not None:
            raise ValueError(reason)
        B = self.B = batch_size
        self.generator, self.N = generator, len(Y)
        self.group = optimizer.param_groups[0]
        self.ix_t = torch.empty(B, dtype=torch.int64)  # randint writes here; ix is its NumPy view
        self.ix = self.ix_t.numpy()
        params = list(model.parameters())
        for p in params:  # .grad buffers the step writes into
            if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
                p.grad = torch.zeros_like(p, memory_format=torch.contiguous_format)
        layers = list(model.layers)
        emb, out = layers[0], layers[-1]
        self.X = np.ascontiguousarray(X.numpy())  # (N, T) ids in their small int dtype
        self.Y = np.ascontiguousarray(Y.numpy())
        T = self.X.shape[1]
        E = emb.weight.shape[1]
        self.C, self.gC = _np(emb.weight), _np(emb.weight.grad)
        self.Wo, self.gWo = _np(out.weight), _np(out.weight.grad)
        self.bo, self.gbo = _np(out.bias), _np(out.bias.grad)
        self.emb = np.empty((B, T * E), np.float32)
        self.demb = np.empty((B, T * E), np.float32)
        self.logits = np.empty((B, self.Wo.shape[1]), np.float32)
        # hidden blocks and parameters as tables of addresses (see _compiled_kernels.mlp_step);
        # self._keep holds every array they point into, so the memory outlives the tables
        self._keep: list[np.ndarray] = []

        def addr(a: np.ndarray | None) -> int:
            if a is None:
                return 0
            assert a.dtype == np.float32 and a.flags.c_contiguous
            self._keep.append(a)
            return a.ctypes.data

        rows, dims, bnf = [], [], []
        i = 2
        while i < len(layers) - 1:
            lin: Linear = layers[i]
            bn = layers[i + 1] if isinstance(layers[i + 1], BatchNorm1d) else None
            K, H = lin.weight.shape
            h, dpre = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
            bias = None if lin.bias is None else (_np(lin.bias), _np(lin.bias.grad))
            if bn is not None:
                bnv = [_np(bn.weight), _np(bn.bias), _np(bn.weight.grad), _np(bn.bias.grad), _np(bn.running_mean),
                       _np(bn.running_var), *(np.empty(H, np.float32) for _ in range(3)), np.empty((B, H), np.float32)]
            else:
                bnv = [None] * 10
            arrays = [_np(lin.weight), _np(lin.weight.grad), *(bias or (None, None)), *bnv, h, dpre]
            rows.append([addr(x) for x in arrays])
            dims.append([K, H, bias is not None, bn is not None])
            bnf.append([bn.eps, bn.momentum] if bn is not None else [0.0, 0.0])
            i += 3 if bn is not None else 2
            layers[i - 1].out = torch.from_numpy(h)  # Tanh.out: this step's activations, for hooks
        self.n_blocks = len(rows)
        self.bp = np.array(rows or [[0] * 16], np.int64).reshape(-1, 16)
        self.bdim = np.array(dims or [[0] * 4], np.int64).reshape(-1, 4)
        self.bf = np.array(bnf or [[0.0, 0.0]], np.float32).reshape(-1, 2)
        # optimizer: (p, g, m, v, step) per parameter (SGD: no m, v, step)
        group = self.group
        self.wd = float(group["weight_decay"])
        self.adamw = isinstance(optimizer, torch.optim.AdamW)
        self.beta1 = self.beta2 = self.adam_eps = 0.0
        self.adam_t = 0
        if self.adamw:
            self.beta1, self.beta2 = (float(b) for b in group["betas"])
            self.adam_eps = float(group["eps"])
        prows = []
        for p in params:
            m = v = s = None
            if self.adamw:
                st = optimizer.state[p]
                if not st:  # the state torch.optim.AdamW creates on its first step
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v, s = _np(st["exp_avg"]), _np(st["exp_avg_sq"]), _np(st["step"].reshape(1))
            prows.append([addr(x) for x in (_np(p), _np(p.grad), m, v, s)])
        self.pp = np.array(prows, np.int64)
        self.psz = np.array([p.numel() for p in params], np.int64)
        if self.adamw:  # the step count t (torch keeps one per parameter; they move together)
            self.adam_t = int(optimizer.state[params[0]]["step"])
        self._fn = _step_fn

    def __call__(self, lr: float) -> float:
        torch.randint(0, self.N, (self.B,), generator=self.generator, out=self.ix_t)
        self.group["lr"] = lr  # keeps optimizer.state_dict() what the eager path would leave
        loss = self._fn(self.ix, self.X, self.Y, self.C, self.gC, self.emb, self.demb, self.bp, self.bdim, self.bf,
                        self.n_blocks, self.Wo, self.gWo, self.bo, self.gbo, self.logits, self.pp, self.psz, lr,
                        self.wd, self.adamw,
                        self.beta1, self.beta2, self.adam_eps, float(self.adam_t + 1))
        if self.adamw and math.isfinite(loss):
            self.adam_t += 1
        return loss


def warm_up() -> dict[str, Any]:
    """Compile (or load from the cache) the step on a tiny model; seconds taken and cache use."""
    from ..config import TrainConfig
    from ..models import MLPConfig, build_model
    from ..optim import make_optimizer

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    model = build_model(MLPConfig(n_hidden=8, n_embd=2), generator=g)
    X = torch.zeros((4, 3), dtype=torch.uint8)
    Y = torch.zeros(4, dtype=torch.uint8)
    CompiledStep(model, make_optimizer(TrainConfig(), model), X, Y, 2, g)(0.1)
    return {"seconds": time.perf_counter() - t0, **cache_info()}
