"""The RNN and GRU cells' steps and Recurrent's eval forward in NumPy (torch-free, for sampling),
decoding incrementally with a cache: the last hidden state is kept between calls."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .module_numpy import Cache, Kind, Op, state


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # σ(x) = ½(1 + tanh(x/2)): no overflow


def rnn_step(t: dict[str, np.ndarray], xp: np.ndarray, h: np.ndarray) -> np.ndarray:
    return np.tanh(xp + h @ t["Wh"])  # h' = tanh(x·Wx + b + h·Wh)


def gru_step(t: dict[str, np.ndarray], xp: np.ndarray, h: np.ndarray) -> np.ndarray:
    H = h.shape[1]
    zr = _sigmoid(xp[:, : 2 * H] + h @ t["Wh"])  # z, r = σ(x·Wx + b + h·Wh), side by side
    z, r = zr[:, :H], zr[:, H:]
    c = np.tanh(xp[:, 2 * H :] + (r * h) @ t["Wc"])  # c = tanh(x·Wx_c + b_c + (r⊙h)·Wc)
    return h + z * (c - h)  # h' = (1 − z)⊙h + z⊙c


CELL_STEPS: dict[str, Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], np.ndarray]] = {
    "RNNCell": rnn_step, "GRUCell": gru_step,
}


def recurrent(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    cell = op.kids["cell"]
    step = CELL_STEPS[cell.type]
    xp = x @ cell.t["Wx"] + cell.t["b"]  # the input half of every step's pre-activations, at once
    st = state(op, cache)
    h = st.get("h", np.broadcast_to(op.t["h0"], (len(x), len(op.t["h0"]))))  # h₋₁ = h0
    hs = []
    for t in range(x.shape[1]):
        h = step(cell.t, xp[:, t], h)
        hs.append(h)
    st["h"] = h
    return np.stack(hs, 1)


def _cell(op: Op, x: np.ndarray, cache: Cache | None) -> np.ndarray:
    raise ValueError(f"a {op.type} runs only as the cell of a Recurrent")


def _check(op: Op) -> str | None:
    cell, H = op.kids["cell"], len(op.t["h0"])
    if cell.type not in CELL_STEPS:
        return f"its cell is a {cell.type}"
    gates = 3 if cell.type == "GRUCell" else 1
    want = {"Wx": (cell.t["Wx"].shape[0], gates * H), "b": (gates * H,), "Wh": (H, (gates - 1 or 1) * H), "Wc": (H, H)}
    if any(v.shape != want[k] for k, v in cell.t.items()):
        return "its cell's weights do not match its hidden size"
    return None


KINDS = {
    "Recurrent": Kind(recurrent, {"h0": 1}, kids=("cell",), check=_check),
    "RNNCell": Kind(_cell, {"Wx": 2, "b": 1, "Wh": 2}),
    "GRUCell": Kind(_cell, {"Wx": 2, "b": 1, "Wh": 2, "Wc": 2}),
}
