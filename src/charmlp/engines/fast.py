"""The fast training step: the manual engine's math, fused, on preallocated NumPy views.

At batch 32 one step of this model is ~2 MFLOP, a few microseconds of arithmetic; the eager
engines spend almost all their time in per-operation framework overhead (dispatch, autograd
bookkeeping, allocation, `torch.optim`'s per-parameter loops). This module does the same
forward, hand-written backward and optimizer update as `engines.manual_grads` followed by
`torch.optim.SGD/AdamW.step()`, but

- on NumPy *views* of the model's own parameter, gradient, BatchNorm-buffer and optimizer-state
  tensors (shared memory: the model, `p.grad` and `optimizer.state` stay live and correct, so
  checkpoints, hooks and a later eager step see exactly what the eager path would leave),
- into buffers allocated once (every ufunc/matmul writes with `out=`; nothing is allocated per
  step except a few scalars),
- with the BatchNorm backward folded into four vector operations (Σdx̂ = γ·dβ,
  Σ dx̂·x̂ = γ·dγ), the cross-entropy backward folded into the softmax, and every shape, index
  and constant computed once, outside the step.

NumPy's per-call overhead on small arrays is ~1–2 µs against PyTorch's ~3–5 µs (plus autograd's
bookkeeping); with ~75 calls and ~60 µs of small matrix products per batch-32 step this runs
~4× the lectures' loop on a busy 2-core machine (benchmarks/run.py; README "Performance").

The step consumes no randomness: the caller draws the batch indices from its generator exactly
as the eager loop does, so the same seed gives the same batches and (within float32 rounding)
the same losses as `--engine manual`; tests/engines/test_fast.py proves it over hundreds of steps.

Supported (checked by `unsupported_reason`): CPU float32 MLP (any depth, with or without
BatchNorm), plain `torch.optim.SGD` (no momentum/nesterov/dampening) or `torch.optim.AdamW`
(no amsgrad/maximize). Anything else runs the eager engines.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..errors import CharmlpError
from ..models import LanguageModel
from ..nn import BatchNorm1d, Linear
from .eager import EagerStep
from .support import adamw_state, grad_buffers, hidden_blocks, unsupported_reason
from .support import numpy_view as view

# step(lr) -> loss of the minibatch it drew (before the update). Every step draws its batch as
# the lectures' loop does, `torch.randint(0, N, (B,), generator=g)`, so the generator's state at
# each step boundary is exactly the eager loop's (a checkpoint can save it; a resume restores it).
StepFn = Callable[[float], "float | torch.Tensor"]


class _Block:
    """One hidden block Linear → (BatchNorm1d) → tanh: views of its tensors, and its buffers."""

    def __init__(self, lin: Linear, bn: BatchNorm1d | None, B: int) -> None:
        fan_in, H = lin.weight.shape
        self.W, self.gW = view(lin.weight), view(lin.weight.grad)
        self.b = None if lin.bias is None else view(lin.bias)
        self.gb = None if lin.bias is None else view(lin.bias.grad)
        self.pre = np.empty((B, H), np.float32)  # x @ W (+ b)
        self.h = np.empty((B, H), np.float32)  # tanh output
        self.dpre = np.empty((B, H), np.float32)
        self.tmp = np.empty((B, H), np.float32)
        self.bn = bn is not None
        if bn is not None:
            self.gamma, self.beta = view(bn.weight), view(bn.bias)
            self.ggamma, self.gbeta = view(bn.weight.grad), view(bn.bias.grad)
            self.rmean, self.rvar = view(bn.running_mean), view(bn.running_var)
            self.eps, self.mom = float(bn.eps), float(bn.momentum)
            self.xhat = np.empty((B, H), np.float32)
            self.mean, self.var, self.rstd = (np.empty(H, np.float32) for _ in range(3))
            self.k, self.v = np.empty(H, np.float32), np.empty(H, np.float32)


class FastStep:
    """A fused forward + manual backward + optimizer update for one minibatch.

    Build once per run, then call `step(lr)`: it draws the batch's example indices from
    `generator` (one `randint(0, N, (B,))`, as the eager loop), updates the model's parameters,
    `.grad`, BatchNorm running statistics and the optimizer's state in place, and returns the
    minibatch loss (before the update).
    """

    impl = "numpy"

    def __init__(self, model: LanguageModel, optimizer: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor,
                 batch_size: int, generator: torch.Generator) -> None:
        reason = unsupported_reason(model, optimizer)
        if reason is not None:
            raise ValueError(reason)
        B = batch_size
        self.B = B
        self.generator, self.N = generator, len(Y)
        self.group = optimizer.param_groups[0]
        self.ix_t = torch.empty(B, dtype=torch.int64)  # randint writes here; ix_np is its NumPy view
        self.ix_np = self.ix_t.numpy()
        self.model, self.optimizer = model, optimizer
        params = grad_buffers(model)
        emb, out = model.layers[0], model.layers[-1]
        self.X = np.ascontiguousarray(X.numpy())  # (N, T) ids, kept in their small int dtype
        self.Y = np.ascontiguousarray(Y.numpy())
        T = self.X.shape[1]
        V, E = emb.weight.shape
        self.C, self.gC = view(emb.weight), view(emb.weight.grad)
        self.Wo, self.gWo = view(out.weight), view(out.weight.grad)
        self.bo, self.gbo = view(out.bias), view(out.bias.grad)
        self.blocks: list[_Block] = []
        for lin, bn, tanh in hidden_blocks(model):
            self.blocks.append(_Block(lin, bn, B))
            # each Tanh's `.out` is, after every step, that step's activations (as after the eager
            # forward), which step hooks such as diagnostics.DiagnosticsRecorder read
            tanh.out = torch.from_numpy(self.blocks[-1].h)
        # buffers
        self.xb = np.empty((B, T), self.X.dtype)
        self.xflat = self.xb.reshape(B * T)
        self.yb = np.empty(B, self.Y.dtype)
        self.emb3 = np.empty((B, T, E), np.float32)
        self.emb = self.emb3.reshape(B, T * E)  # Flatten: a view
        self.demb = np.empty((B, T * E), np.float32)
        self.onehot = np.zeros((B * T, V), np.float32)
        self.onehot_flat = self.onehot.reshape(-1)
        self.ohoff = np.arange(B * T, dtype=np.intp) * V
        self.ohidx = np.empty(B * T, np.intp)
        self.logits = np.empty((B, V), np.float32)
        self.mx = np.empty((B, 1), np.float32)
        self.s = np.empty((B, 1), np.float32)
        self.zy = np.empty(B, np.float32)
        self.rowoff = np.arange(B, dtype=np.intp) * V  # flat index of row b's first logit
        self.flat_y = np.empty(B, np.intp)
        self.logits_flat = self.logits.reshape(B * V)
        self.dh_out = np.empty((B, self.Wo.shape[0]), np.float32)
        # optimizer: views of its parameters and (AdamW) state, in the order of model.parameters()
        self.params = [(view(p), view(p.grad), np.empty(p.shape, np.float32)) for p in params]
        group = optimizer.param_groups[0]
        self.wd = float(group["weight_decay"])
        self.adamw = isinstance(optimizer, torch.optim.AdamW)
        if self.adamw:
            self.beta1, self.beta2 = (float(b) for b in group["betas"])
            self.adam_eps = float(group["eps"])
            self.adam_state = []
            for p in params:
                st = adamw_state(optimizer, p)
                self.adam_state.append((view(st["step"].reshape(1)), view(st["exp_avg"]), view(st["exp_avg_sq"]),
                                        np.empty(p.shape, np.float32)))
            # the step count t (torch keeps one per parameter; they move together)
            self.adam_t = int(optimizer.state[params[0]]["step"])

    # ------------------------------------------------------------------ the step
    def __call__(self, lr: float) -> float:
        # a diverging run overflows quietly, as torch does; the loop's guard reports it
        with np.errstate(all="ignore"):
            return self._step(lr)

    def _step(self, lr: float) -> float:
        self._draw_batch()
        self.group["lr"] = lr  # keeps optimizer.state_dict() what the eager path would leave
        x = self._forward()
        loss = self._loss()
        if not math.isfinite(loss):  # leave the last good state for the caller's non-finite guard
            return loss
        self._backward(x, self._dlogits())
        if self.adamw:
            self._adamw(lr)
        else:
            self._sgd(lr)
        return loss

    def _draw_batch(self) -> None:
        """The batch's indices from the generator (as the eager loop draws them), and its rows."""
        torch.randint(0, self.N, (self.B,), generator=self.generator, out=self.ix_t)
        np.take(self.X, self.ix_np, axis=0, out=self.xb, mode="clip")  # clip: no buffering of out
        np.take(self.Y, self.ix_np, out=self.yb, mode="clip")

    def _forward(self) -> np.ndarray:
        """Embedding, the hidden blocks, the logits (in self.logits); returns the top block's h."""
        # emb[b, t] = C[x[b, t]]; Flatten is a view of emb3
        np.take(self.C, self.xb, axis=0, out=self.emb3, mode="clip")
        x = self.emb
        for blk in self.blocks:
            pre = blk.pre
            np.dot(x, blk.W, out=pre)  # pre = x @ W (+ b)
            if blk.b is not None:
                pre += blk.b
            if blk.bn:
                self._batchnorm_tanh(blk)
            else:
                np.tanh(pre, out=blk.h)
            x = blk.h
        np.dot(x, self.Wo, out=self.logits)
        self.logits += self.bo
        return x

    def _batchnorm_tanh(self, blk: _Block) -> None:
        """h = tanh(γ·x̂ + β) of the block's pre-activations, moving the running statistics."""
        B, pre = self.B, blk.pre
        # μ = mean_b pre, σ² = Σ_b (pre − μ)² / (B − 1), x̂ = (pre − μ)·rstd, rstd = 1/√(σ² + ε)
        xc, mean, var, rstd = blk.xhat, blk.mean, blk.var, blk.rstd
        np.add.reduce(pre, axis=0, out=mean)
        mean *= 1.0 / B
        np.subtract(pre, mean, out=xc)
        np.multiply(xc, xc, out=blk.tmp)
        np.add.reduce(blk.tmp, axis=0, out=var)
        var *= 1.0 / (B - 1)
        # running ← running + momentum·(batch − running)   (torch's lerp_)
        np.subtract(mean, blk.rmean, out=blk.k)
        blk.k *= blk.mom
        blk.rmean += blk.k
        np.subtract(var, blk.rvar, out=blk.k)
        blk.k *= blk.mom
        blk.rvar += blk.k
        np.add(var, blk.eps, out=rstd)
        np.sqrt(rstd, out=rstd)
        np.divide(1.0, rstd, out=rstd)
        xc *= rstd  # now x̂
        # h = tanh(γ·x̂ + β)
        np.multiply(xc, blk.gamma, out=blk.h)
        blk.h += blk.beta
        np.tanh(blk.h, out=blk.h)

    def _loss(self) -> float:
        """L = mean_b (log Σ_v e^{z_bv} − z_b,y_b), z = logits − max (stable); leaves e^z in self.logits."""
        logits = self.logits
        np.maximum.reduce(logits, axis=1, out=self.mx[:, 0])
        logits -= self.mx
        np.add(self.rowoff, self.yb, out=self.flat_y)
        np.take(self.logits_flat, self.flat_y, out=self.zy, mode="clip")
        np.exp(logits, out=logits)
        np.add.reduce(logits, axis=1, out=self.s[:, 0])
        return float(np.add.reduce(np.log(self.s[:, 0]) - self.zy)) / self.B

    def _dlogits(self) -> np.ndarray:
        """dlogits = (softmax − onehot(y)) / B, computed in the logits buffer from `_loss`'s e^z."""
        B = self.B
        self.s *= B
        self.logits /= self.s
        self.logits_flat[self.flat_y] -= 1.0 / B
        return self.logits

    def _backward(self, x: np.ndarray, d: np.ndarray) -> None:
        """Every parameter's gradient, from the output layer (input x, dlogits d) down to C."""
        # logits = h @ Wo + bo  →  dWo = hᵀ·d, dbo = Σ_b d, dh = d·Woᵀ
        np.dot(x.T, d, out=self.gWo)
        np.add.reduce(d, axis=0, out=self.gbo)
        dh = self.dh_out
        np.dot(d, self.Wo.T, out=dh)
        for i in range(len(self.blocks) - 1, -1, -1):
            dh = self._block_backward(i, dh)
        # emb[b, t] = C[x[b, t]]  →  dC[i] = Σ_{b,t: x[b,t]=i} demb[b, t] = (onehot(x)ᵀ · demb)[i]
        # (a (B·T, V) one-hot matmul: several times faster than np.add.at at this size)
        self.onehot.fill(0.0)
        np.add(self.ohoff, self.xflat, out=self.ohidx)
        self.onehot_flat[self.ohidx] = 1.0
        np.dot(self.onehot.T, dh.reshape(-1, self.gC.shape[1]), out=self.gC)

    def _block_backward(self, i: int, dh: np.ndarray) -> np.ndarray:
        """Block i's gradients from dh = dL/dh; returns dL/dx, its input's gradient."""
        B, blk = self.B, self.blocks[i]
        dy = blk.dpre
        # h = tanh(y)  →  dy = (1 − h²)·dh
        np.multiply(blk.h, blk.h, out=blk.tmp)
        np.subtract(1.0, blk.tmp, out=blk.tmp)
        np.multiply(dh, blk.tmp, out=dy)
        if blk.bn:
            # dγ = Σ dy·x̂, dβ = Σ dy; with Σdx̂ = γ·dβ and Σdx̂·x̂ = γ·dγ the closed form is
            # dpre = γ·rstd·(dy − dβ/B − x̂·dγ/(B − 1))
            np.multiply(dy, blk.xhat, out=blk.tmp)
            np.add.reduce(blk.tmp, axis=0, out=blk.ggamma)
            np.add.reduce(dy, axis=0, out=blk.gbeta)
            np.multiply(blk.ggamma, 1.0 / (B - 1), out=blk.v)
            np.multiply(blk.xhat, blk.v, out=blk.tmp)
            np.subtract(dy, blk.tmp, out=dy)
            np.multiply(blk.gbeta, 1.0 / B, out=blk.v)
            dy -= blk.v
            np.multiply(blk.gamma, blk.rstd, out=blk.k)
            dy *= blk.k
        # pre = x @ W + b  →  dW = xᵀ·dpre, db = Σ_b dpre, dx = dpre·Wᵀ
        x_in = self.blocks[i - 1].h if i > 0 else self.emb
        np.dot(x_in.T, dy, out=blk.gW)
        if blk.gb is not None:
            np.add.reduce(dy, axis=0, out=blk.gb)
        dx = self.blocks[i - 1].dpre if i > 0 else self.demb  # dpre of the block below is free now
        np.dot(dy, blk.W.T, out=dx)
        return dx

    def _sgd(self, lr: float) -> None:
        # torch.optim.SGD: g ← g + wd·p; p ← p − lr·g
        wd = self.wd
        for p, g, t in self.params:
            if wd:
                np.multiply(p, wd, out=t)
                t += g
                t *= lr
            else:
                np.multiply(g, lr, out=t)
            p -= t

    def _adamw(self, lr: float) -> None:
        # torch.optim.AdamW: p ← p·(1 − lr·wd); m ← m + (1 − β₁)(g − m); v ← β₂v + (1 − β₂)g²;
        # p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
        #   = p − (lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ)) · m / (√v + ε·√(1 − β₂ᵗ))   (one multiply fewer)
        b1, b2, eps, wd = self.beta1, self.beta2, self.adam_eps, self.wd
        self.adam_t += 1
        n = self.adam_t
        bc2_sqrt = math.sqrt(1.0 - b2**n)
        step_size = lr * bc2_sqrt / (1.0 - b1**n)
        eps_hat = eps * bc2_sqrt
        for (p, g, _), (step, m, v, t) in zip(self.params, self.adam_state, strict=True):
            step[0] = n
            if wd:
                p *= 1.0 - lr * wd
            np.subtract(g, m, out=t)
            t *= 1.0 - b1
            m += t
            v *= b2
            np.multiply(g, g, out=t)
            t *= 1.0 - b2
            v += t
            np.sqrt(v, out=t)
            t += eps_hat
            np.divide(m, t, out=t)
            t *= step_size
            p -= t


def fused_step(model: LanguageModel, optimizer: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor,
               batch_size: int, generator: torch.Generator) -> StepFn:
    """The compiled step (compiled.py: one Numba call) where Numba and NumPy's BLAS allow it,
    else `FastStep` (NumPy calls); same contract, same batches, numbers equal to float32 rounding."""
    from . import compiled  # imports Numba only here, when a run is about to train

    if compiled.available():
        return compiled.CompiledStep(model, optimizer, X, Y, batch_size, generator)
    return FastStep(model, optimizer, X, Y, batch_size, generator)


def make_train_step(engine: str, model: LanguageModel, optimizer: torch.optim.Optimizer, X: torch.Tensor,
                    Y: torch.Tensor, batch_size: int, generator: torch.Generator) -> tuple[StepFn, str]:
    """The training loop's step for `engine`, and the engine that will actually run.

    A step whose loss is not finite returns it without updating anything, so the model and the
    optimizer still hold the last good state when the loop stops on it. Build the step after
    any restore of a checkpoint: `optimizer.load_state_dict` replaces AdamW's state tensors,
    which the fast step holds views of.

    `fast`: the fused step (a user error naming the reason where it cannot run); `auto`: the fused
    step where it can run, else the eager manual engine. The fused step is `fused_step`'s: the
    compiled one where Numba is installed, else `FastStep`; `autograd` / `manual`: the readable
    eager reference — `engines.grad_fn` fills `.grad`, then `optimizer.step()`.
    """
    if engine in ("auto", "fast"):
        reason = unsupported_reason(model, optimizer)
        if reason is None:
            return fused_step(model, optimizer, X, Y, batch_size, generator), "fast"
        if engine == "fast":
            raise CharmlpError(f"--engine fast cannot run here: {reason}; use --engine auto or manual")
        engine = "manual"
    return EagerStep(engine, model, optimizer, X, Y, batch_size, generator), engine
