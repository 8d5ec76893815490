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
from .blas import SGEMM_SYMBOL, find_sgemm
from .support import adamw_state, grad_buffers, hidden_blocks, unsupported_reason
from .support import numpy_view as view

_status: str | None = None  # None: not tried yet; "" available; else why not
_step_fn: Any = None
_step_args: Any = None  # _compiled_kernels.StepArgs, once Numba is imported
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
    global _step_fn, _step_args, _cached
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

    _step_fn, _step_args, _cached = k.mlp_step, k.StepArgs, k.CACHED
    return ""


def cache_info() -> dict[str, Any]:
    """Where the compiled code is cached, and this process's cache hits/misses."""
    if not available():
        return {"available": False, "reason": unavailable_reason()}
    st = _step_fn.stats
    impl = getattr(_step_fn, "_cache", None)
    return {"available": True, "cached": _cached, "cache_dir": getattr(impl, "cache_path", None),
            "cache_hits": sum(st.cache_hits.values()), "cache_misses": sum(st.cache_misses.values())}


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
        params = grad_buffers(model)
        # the hidden blocks and the parameters go in as tables of addresses (see
        # _compiled_kernels.StepArgs); self._keep holds every array they point into, so the memory
        # outlives the tables
        self._keep: list[np.ndarray] = []
        emb, out = model.layers[0], model.layers[-1]
        X_np = np.ascontiguousarray(X.numpy())  # (N, T) ids in their small int dtype
        width = X_np.shape[1] * emb.weight.shape[1]  # T·E
        bp, bdim, bf = self._block_tables(model)
        group = self.group
        self.adamw = isinstance(optimizer, torch.optim.AdamW)
        pp = self._param_table(optimizer, params)
        # the step count t (torch keeps one per parameter; they move together)
        self.adam_t = int(optimizer.state[params[0]]["step"]) if self.adamw else 0
        beta1, beta2 = (float(b) for b in group["betas"]) if self.adamw else (0.0, 0.0)
        args = _step_args(
            ix=self.ix, X=X_np, Y=np.ascontiguousarray(Y.numpy()), C=view(emb.weight), gC=view(emb.weight.grad),
            emb=np.empty((B, width), np.float32), demb=np.empty((B, width), np.float32),
            bp=bp, bdim=bdim, bf=bf, n_blocks=sum(1 for _ in hidden_blocks(model)),
            Wo=view(out.weight), gWo=view(out.weight.grad), bo=view(out.bias), gbo=view(out.bias.grad),
            logits=np.empty((B, out.weight.shape[1]), np.float32), pp=pp, psz=np.array([p.numel() for p in params], np.int64),
            wd=float(group["weight_decay"]), adamw=self.adamw, beta1=beta1, beta2=beta2,
            adam_eps=float(group["eps"]) if self.adamw else 0.0)
        self._args = tuple(args)  # a plain tuple for Numba's dispatcher (see StepArgs)
        self._fn = _step_fn

    def _addr(self, a: np.ndarray | None) -> int:
        """The address of `a`'s float32 data, kept alive with the step (0: none)."""
        if a is None:
            return 0
        assert a.dtype == np.float32 and a.flags.c_contiguous
        self._keep.append(a)
        return a.ctypes.data

    def _block_tables(self, model: LanguageModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per hidden block: the addresses of its 16 arrays, its sizes and flags (fan_in, H, has
        bias, has BatchNorm) and its BatchNorm's (eps, momentum); one row of zeros where there is
        no block. Each Tanh's `.out` becomes a view of its block's activations."""
        B = self.B
        rows, dims, bnf = [], [], []
        for lin, bn, tanh in hidden_blocks(model):
            K, H = lin.weight.shape
            h, dpre = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
            bias = None if lin.bias is None else (view(lin.bias), view(lin.bias.grad))
            if bn is not None:
                bnv = [view(bn.weight), view(bn.bias), view(bn.weight.grad), view(bn.bias.grad), view(bn.running_mean),
                       view(bn.running_var), *(np.empty(H, np.float32) for _ in range(3)), np.empty((B, H), np.float32)]
            else:
                bnv = [None] * 10
            arrays = [view(lin.weight), view(lin.weight.grad), *(bias or (None, None)), *bnv, h, dpre]
            rows.append([self._addr(x) for x in arrays])
            dims.append([K, H, bias is not None, bn is not None])
            bnf.append([bn.eps, bn.momentum] if bn is not None else [0.0, 0.0])
            tanh.out = torch.from_numpy(h)  # Tanh.out: this step's activations, for hooks
        return (np.array(rows or [[0] * 16], np.int64).reshape(-1, 16), np.array(dims or [[0] * 4], np.int64).reshape(-1, 4),
                np.array(bnf or [[0.0, 0.0]], np.float32).reshape(-1, 2))

    def _param_table(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> np.ndarray:
        """Per parameter the addresses of (p, g, m, v, step): AdamW's state made where missing
        (SGD: no m, v, step)."""
        rows = []
        for p in params:
            m = v = s = None
            if self.adamw:
                st = adamw_state(optimizer, p)
                m, v, s = view(st["exp_avg"]), view(st["exp_avg_sq"]), view(st["step"].reshape(1))
            rows.append([self._addr(x) for x in (view(p), view(p.grad), m, v, s)])
        return np.array(rows, np.int64)

    def __call__(self, lr: float) -> float:
        torch.randint(0, self.N, (self.B,), generator=self.generator, out=self.ix_t)
        self.group["lr"] = lr  # keeps optimizer.state_dict() what the eager path would leave
        loss = self._fn(self._args, lr, float(self.adam_t + 1))
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
