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


class Cell(Layer):
    """One step of a recurrent cell: h_t = f(x_t·Wx + b, h_{t−1}).

    Subclasses define `gates` (how many H-wide pre-activation blocks the input projection
    feeds), `step` and `step_backward`. As a layer on its own, a cell maps (x, h) → h' for
    one step, with `backward(dh') -> (dx, dh)`.
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

    def step_backward(self, dh_new: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
        """(dxp, dh) from dL/dh'; accumulates the recurrent weights' gradients."""
        raise NotImplementedError

    # a = x @ Wx + b  →  dWx = xᵀ·da, db = Σ_rows da, dx = da·Wxᵀ  (rows: every dim but the last)
    def project_backward(self, x: torch.Tensor, dxp: torch.Tensor) -> torch.Tensor:
        x2, d2 = x.reshape(-1, x.shape[-1]), dxp.reshape(-1, dxp.shape[-1])
        accumulate_grad(self.Wx, x2.T @ d2)
        accumulate_grad(self.b, d2.sum(0))
        return dxp @ self.Wx.T

    # one step as a layer: (x, h) → h'
    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        self.x = x
        h_new, self.cache = self.step(x @ self.Wx + self.b, h)
        return h_new

    def backward(self, dh_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        dxp, dh = self.step_backward(dh_new, self.cache)
        return self.project_backward(self.x, dxp), dh


class RNNCell(Cell):
    """The Elman cell: h' = tanh(x·Wx + h·Wh + b)."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.Wh = nn.Parameter(torch.empty(hidden_size, hidden_size))

    def step(self, xp: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Cache]:
        h_new = torch.tanh(xp + h @ self.Wh)
        return h_new, (h, h_new)

    # h' = tanh(a), a = xp + h·Wh  →  da = (1 − h'²)·dh', dxp = da, dWh = hᵀ·da, dh = da·Whᵀ
    def step_backward(self, dh_new: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
        h, h_new = cache
        da = (1.0 - h_new * h_new) * dh_new
        accumulate_grad(self.Wh, h.T @ da)
        return da, da @ self.Wh.T


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
        zr = torch.sigmoid(xp[:, : 2 * H] + h @ self.Wh)
        z, r = zr[:, :H], zr[:, H:]
        rh = r * h
        c = torch.tanh(xp[:, 2 * H :] + rh @ self.Wc)
        h_new = h + z * (c - h)
        return h_new, (h, z, r, rh, c)

    def step_backward(self, dh_new: torch.Tensor, cache: Cache) -> tuple[torch.Tensor, torch.Tensor]:
        h, z, r, rh, c = cache
        # h' = h + z⊙(c − h)  →  dz = dh'⊙(c − h), dc = dh'⊙z, dh = dh'⊙(1 − z) (+ the paths below)
        dz = dh_new * (c - h)
        dc = dh_new * z
        dh = dh_new * (1.0 - z)
        # c = tanh(a_c), a_c = xp_c + (r⊙h)·Wc  →  da_c = (1 − c²)·dc, dWc = (r⊙h)ᵀ·da_c, d(r⊙h) = da_c·Wcᵀ
        da_c = (1.0 - c * c) * dc
        accumulate_grad(self.Wc, rh.T @ da_c)
        drh = da_c @ self.Wc.T
        # r⊙h  →  dr = d(r⊙h)⊙h, dh += d(r⊙h)⊙r
        dr = drh * h
        dh = dh + drh * r
        # z, r = σ(a), a = xp_zr + h·Wh  →  da = σ(1 − σ)·d(z, r), dWh = hᵀ·da, dh += da·Whᵀ
        da_zr = torch.cat([dz * z * (1.0 - z), dr * r * (1.0 - r)], dim=1)
        accumulate_grad(self.Wh, h.T @ da_zr)
        dh = dh + da_zr @ self.Wh.T
        return torch.cat([da_zr, da_c], dim=1), dh


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

    # backprop through time: dL/dh_t = dout_t + (what step t+1 sent back through h_t)
    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        cell, caches = self.cell, self.caches
        dxp = torch.empty(*dout.shape[:2], cell.gates * cell.hidden_size, dtype=dout.dtype, device=dout.device)
        dh = torch.zeros_like(dout[:, 0])
        for t in reversed(range(len(caches))):
            dxp[:, t], dh = cell.step_backward(dout[:, t] + dh, caches[t])
        # h_{−1} = h0 broadcast over the batch  →  dh0 = Σ_b dh_{−1}
        accumulate_grad(self.h0, dh.sum(0))
        return cell.project_backward(self.x, dxp)


CELLS: dict[str, type[Cell]] = {"rnn": RNNCell, "gru": GRUCell}
