"""Recurrent layers: an RNN cell, a GRU cell, and `Recurrent`, which unrolls a cell over time.

A cell splits its pre-activations into an input half, x_t·Wx + b, which does not depend on
the hidden state and so is computed for every step at once (one matmul over (B·T, E)), and a
recurrent half that must run step by step. `Recurrent` owns that split: it projects the whole
input, runs `cell.step` for t = 0 … T−1 from a learned initial state h0, and its backward is
backprop through time written out in reverse: at each step the gradient reaching h_t is the
output's own dout_t plus what step t+1 sends back through h_t; each step returns the gradient
of its input projection, and Wx, b and the input are differentiated once, after the loop.

Weights follow the lectures' layout: W is (fan_in, fan_out) and a = x @ W + b.
"""

from __future__ import annotations

import torch
from torch import nn

from .module import Layer, accumulate_grad

Cache = tuple[torch.Tensor, ...]


def tanh_(a: torch.Tensor) -> torch.Tensor:
    """tanh(a) in place, for evaluation's steps: on the CPU as 2σ(2a) − 1 (the same function;
    torch's CPU sigmoid runs ~3× faster than its tanh, and the two scalings are exact), elsewhere tanh."""
    if a.device.type != "cpu":
        return a.tanh_()
    return a.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


class Cell(Layer):
    """One step of a recurrent cell: h_t = f(x_t·Wx + b, h_{t−1}).

    Subclasses define `gates` (how many H-wide pre-activation blocks the input projection
    feeds), `step`, `step_backward` and `weights_backward`. As a layer on its own, a cell maps
    (x, h) → h' for one step, with `backward(dh') -> (dx, dh)`.
    """

    gates = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.Wx = nn.Parameter(torch.empty(input_size, self.gates * hidden_size))
        self.b = nn.Parameter(torch.zeros(self.gates * hidden_size))

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        """h' from the input projection xp = x·Wx + b (B, gates·H) and h (B, H); returns the
        cache `step_backward` needs."""
        raise NotImplementedError

    def infer_step(self, xp: torch.Tensor, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`step`'s h', written into `out` (B, H), with nothing kept for a backward: evaluation's step.
        It may overwrite `xp` (B, gates·H, its rows contiguous), which may be `out` itself (one gate)."""
        raise NotImplementedError

    # the recurrent half h·Wh computed ahead (the prefix tree's parents, beside their head)
    reads_h = True  # whether `infer_step_hw` reads h itself, beyond hw = h·Wh

    def infer_step_hw(self, xp: torch.Tensor, hw: torch.Tensor, h: torch.Tensor | None,
                      out: torch.Tensor) -> torch.Tensor:
        """`infer_step` given hw = h·Wh (B, Wh's columns) already computed: h' into `out` (B, H).
        It may overwrite `xp` (B, gates·H), which may be `out` itself (one gate); `h` may be None
        where `reads_h` is False."""
        raise NotImplementedError

    def step_backward(self, dh_new: torch.Tensor, cache: Cache, dxp: torch.Tensor) -> torch.Tensor:
        """From dL/dh', writes dL/dxp into `dxp` (B, gates·H) and returns dL/dh. The recurrent
        weights' gradients wait for `weights_backward`."""
        raise NotImplementedError

    def weights_backward(self, caches: list[Cache], dxp: torch.Tensor) -> None:
        """The recurrent weights' gradients, every step's share at once: a weight W read as
        a_t = u_t·W at each step t gets dW = Σ_t u_tᵀ·da_t = Uᵀ·dA, with U and dA the steps'
        rows stacked — one matrix product instead of one per step. `dxp` is (B, T, gates·H)."""
        raise NotImplementedError

    @staticmethod
    def _stacked(caches: list[Cache], i: int) -> torch.Tensor:
        """Entry i of every step's cache, stacked to (B·T, ·) in dxp's row order (b, t)."""
        u = torch.stack([c[i] for c in caches], 1)
        return u.reshape(-1, u.shape[-1])

    # a = x @ Wx + b  →  dWx = xᵀ·da, db = Σ_rows da, dx = da·Wxᵀ  (rows: every dim but the last)
    def project_backward(self, x: torch.Tensor, dxp: torch.Tensor) -> torch.Tensor:
        x2, d2 = x.reshape(-1, x.shape[-1]), dxp.reshape(-1, dxp.shape[-1])
        accumulate_grad(self.Wx, x2.T @ d2)
        accumulate_grad(self.b, d2.sum(0))
        return dxp @ self.Wx.T

    # one step as a layer: (x, h) → h'
    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.x = x
        h_new, self.cache = self.step(torch.addmm(self.b, x, self.Wx), h)
        return h_new

    def backward(self, dh_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        dxp = torch.empty(len(dh_new), self.gates * self.hidden_size, dtype=dh_new.dtype, device=dh_new.device)
        dh = self.step_backward(dh_new, self.cache, dxp)
        self.weights_backward([self.cache], dxp[:, None])
        return self.project_backward(self.x, dxp), dh


class RNNCell(Cell):
    """The Elman cell: h' = tanh(x·Wx + h·Wh + b)."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.Wh = nn.Parameter(torch.empty(hidden_size, hidden_size))

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        h_new = torch.tanh(torch.addmm(xp, h, self.Wh))  # the add rides in the matmul
        return h_new, (h, h_new)

    def infer_step(self, xp: torch.Tensor, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if xp.data_ptr() != out.data_ptr():
            out.copy_(xp)
        return out.addmm_(h, self.Wh).tanh_()  # xp + h·Wh in one gemm (β = 1), as `step`'s addmm

    reads_h = False

    def infer_step_hw(self, xp: torch.Tensor, hw: torch.Tensor, h: torch.Tensor | None,
                      out: torch.Tensor) -> torch.Tensor:
        return tanh_(torch.add(xp, hw, out=out))  # h' = tanh(xp + h·Wh)

    # h' = tanh(a), a = xp + h·Wh  →  da = (1 − h'²)·dh', dxp = da, dh = da·Whᵀ
    def step_backward(self, dh_new: torch.Tensor, cache: Cache, dxp: torch.Tensor) -> torch.Tensor:
        _, h_new = cache
        da = torch.mul(h_new, h_new, out=dxp).neg_().add_(1.0).mul_(dh_new)
        return da @ self.Wh.T

    # dWh = Σ_t h_{t−1}ᵀ·da_t
    def weights_backward(self, caches: list[Cache], dxp: torch.Tensor) -> None:
        accumulate_grad(self.Wh, self._stacked(caches, 0).T @ dxp.reshape(-1, self.hidden_size))


class GRUCell(Cell):
    """The gated recurrent unit (Cho et al. 2014), in makemore's form:

        z  = σ(x·Wx_z + h·Wh_z + b_z)          update gate
        r  = σ(x·Wx_r + h·Wh_r + b_r)          reset gate
        c  = tanh(x·Wx_c + (r⊙h)·Wc + b_c)     candidate
        h' = (1 − z)⊙h + z⊙c                   = h + z⊙(c − h)

    Wx (E, 3H) and b (3H) hold the z, r, c blocks side by side; Wh (H, 2H) holds z and r.
    """

    gates = 3

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.Wh = nn.Parameter(torch.empty(hidden_size, 2 * hidden_size))
        self.Wc = nn.Parameter(torch.empty(hidden_size, hidden_size))

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        H = self.hidden_size
        zr = torch.sigmoid(torch.addmm(xp[:, : 2 * H], h, self.Wh))  # the adds ride in the matmuls
        z, r = zr[:, :H], zr[:, H:]
        rh = r * h
        c = torch.tanh(torch.addmm(xp[:, 2 * H :], rh, self.Wc))
        h_new = torch.addcmul(h, z, c - h)
        return h_new, (h, z, r, rh, c)

    def infer_step(self, xp: torch.Tensor, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        H = self.hidden_size
        zr = xp[:, : 2 * H].addmm_(h, self.Wh).sigmoid_()  # in xp's own rows: gemm with ldc = 3H, no copy
        z, r = zr[:, :H], zr[:, H:]
        c = xp[:, 2 * H :].addmm_(r * h, self.Wc).tanh_()
        return torch.addcmul(h, z, c.sub_(h), out=out)  # h + z⊙(c − h)

    def infer_step_hw(self, xp: torch.Tensor, hw: torch.Tensor, h: torch.Tensor | None,
                      out: torch.Tensor) -> torch.Tensor:
        assert h is not None
        H = self.hidden_size
        zr = xp[:, : 2 * H].add_(hw).sigmoid_()  # σ(xp_zr + h·Wh), hw holding h·Wh's z and r blocks
        z, r = zr[:, :H], zr[:, H:]
        c = tanh_(xp[:, 2 * H :].addmm_(r * h, self.Wc))
        return torch.addcmul(h, z, c.sub_(h), out=out)  # h + z⊙(c − h)

    def step_backward(self, dh_new: torch.Tensor, cache: Cache, dxp: torch.Tensor) -> torch.Tensor:
        h, z, r, rh, c = cache
        H = self.hidden_size
        da_z, da_r, da_c = dxp[:, :H], dxp[:, H : 2 * H], dxp[:, 2 * H :]
        # h' = h + z⊙(c − h)  →  dc = dh'⊙z, dz = dh'⊙(c − h), dh = dh'⊙(1 − z) (+ the paths below)
        # c = tanh(a_c), a_c = xp_c + (r⊙h)·Wc  →  da_c = (1 − c²)⊙dc, d(r⊙h) = da_c·Wcᵀ
        torch.mul(c, c, out=da_c).neg_().add_(1.0).mul_(dh_new).mul_(z)
        drh = da_c @ self.Wc.T
        # z = σ(a_z)  →  da_z = z(1 − z)⊙dz
        torch.sub(c, h, out=da_z).mul_(dh_new).mul_(z).mul_(1.0 - z)
        # r⊙h  →  dr = d(r⊙h)⊙h, dh += d(r⊙h)⊙r;  r = σ(a_r)  →  da_r = r(1 − r)⊙dr
        torch.mul(drh, h, out=da_r).mul_(r).mul_(1.0 - r)
        dh = torch.addcmul(dh_new, dh_new, z, value=-1.0).addcmul_(drh, r)
        # a_zr = xp_zr + h·Wh  →  dh += da_zr·Whᵀ
        return torch.addmm(dh, dxp[:, : 2 * H], self.Wh.T)

    # dWh = Σ_t h_{t−1}ᵀ·da_zr_t, dWc = Σ_t (r⊙h)_tᵀ·da_c_t
    def weights_backward(self, caches: list[Cache], dxp: torch.Tensor) -> None:
        H = self.hidden_size
        d2 = dxp.reshape(-1, 3 * H)
        accumulate_grad(self.Wh, self._stacked(caches, 0).T @ d2[:, : 2 * H])
        accumulate_grad(self.Wc, self._stacked(caches, 3).T @ d2[:, 2 * H :])


class Recurrent(Layer):
    """A cell unrolled over time: x (B, T, E) → hidden states (B, T, H).

    h_{−1} = h0 (a learned vector, the same for every row); h_t = cell(x_t, h_{t−1}). The
    output at t depends on x_0 … x_t only (causal).
    """

    def __init__(self, cell: Cell) -> None:
        super().__init__()
        self.cell = cell
        self.h0 = nn.Parameter(torch.zeros(cell.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        cell = self.cell
        xp = x @ cell.Wx + cell.b  # the input half of every step's pre-activations, at once
        h = self.h0.expand(B, -1)
        hs, caches = [], []
        for t in range(T):
            h, cache = cell.step(xp[:, t], h)
            hs.append(h)
            caches.append(cache)
        self.x, self.caches = x, caches
        return torch.stack(hs, dim=1)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """`forward`'s hidden states (B, T, H) without the per-step caches, time-major inside: step t
        reads the contiguous xp[t] of (T, B, gates·H) (and may overwrite it), writes hs[t] of (T, B, H)."""
        B, T, E = x.shape
        cell = self.cell
        xp = torch.addmm(cell.b, x.transpose(0, 1).reshape(T * B, E), cell.Wx).view(T, B, -1)
        hs = torch.empty(T, B, cell.hidden_size, dtype=xp.dtype, device=xp.device)
        h = self.h0.expand(B, -1)
        for t in range(T):
            h = cell.infer_step(xp[t], h, hs[t])
        return hs.transpose(0, 1)

    # backprop through time: dL/dh_t = dout_t + (what step t+1 sent back through h_t)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        cell, caches = self.cell, self.caches
        dxp = torch.empty(*dout.shape[:2], cell.gates * cell.hidden_size, dtype=dout.dtype, device=dout.device)
        dh = torch.zeros_like(dout[:, 0])
        for t in reversed(range(len(caches))):
            dh = cell.step_backward(dout[:, t] + dh, caches[t], dxp[:, t])
        cell.weights_backward(caches, dxp)
        # h_{−1} = h0 broadcast over the batch  →  dh0 = Σ_b dh_{−1}
        accumulate_grad(self.h0, dh.sum(0))
        return cell.project_backward(self.x, dxp)


CELLS: dict[str, type[Cell]] = {"rnn": RNNCell, "gru": GRUCell}
