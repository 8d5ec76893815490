"""The tanh RNN as its chain of atoms: one cell step per line, unrolled over T = 3 positions, the
hidden state carried from step to step, a loss at every position (the mean over all n·T targets):

    emb → xp (the input half x_t·Wx + b, every step at once) → h1 → h2 → h3 → hs → logits → loss

Backprop through time: dh_t is what position t's output sends back plus what step t+1 sends back
through h_t (h1 and h2 feed two atoms each). The steps are the closed forms of charmlp's own
`nn.RNNCell` and `nn.Recurrent` (nn/recurrent.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .atoms import AtomChain, branch_sum
from .wavenet_atoms import cross_entropy_backward, embedding_backward, linear_input, linear_weight, rows, tanh_backward

PARAMS = ("C", "Wx", "Wh", "b", "h0", "Wy", "by")
T = 3  # positions the chain unrolls


def forward(Xb, Yb, n, C, Wx, Wh, b, h0, Wy, by):
    """h_t = tanh(x_t·Wx + b + h_{t−1}·Wh), from the learned h0; the output at t reads h_t."""
    emb = C[Xb]
    xp = emb @ Wx + b
    h1 = torch.tanh(xp[:, 0] + h0 @ Wh)
    h2 = torch.tanh(xp[:, 1] + h1 @ Wh)
    h3 = torch.tanh(xp[:, 2] + h2 @ Wh)
    hs = torch.stack((h1, h2, h3), 1)
    logits = hs @ Wy + by
    loss = F.cross_entropy(logits.flatten(0, 1), Yb.flatten())
    return locals()


ORDER = ("logits", "hs", "Wy", "by", "h3", "h2", "h1", "xp", "Wh", "h0", "b", "Wx", "emb", "C")


def da(F_: dict, U: dict, t: int) -> torch.Tensor:
    # h_t = tanh(a_t)  →  da_t = (1 − h_t²)·dh_t
    return tanh_backward(F_[f"h{t}"], U[f"h{t}"])


def h_branches(t: int) -> dict:
    """h_t feeds hs (its output at t: dhs[:, t − 1]) and step t + 1 (a_{t+1} = … + h_t·Wh: da_{t+1}·Whᵀ)."""
    return {
        # hs = stack(h1, h2, h3)  →  h_t's share is its slice dhs[:, t − 1]
        "hs": lambda F_, U: U["hs"][:, t - 1].clone(),
        # a_{t+1} = xp[:, t] + h_t·Wh  →  h_t's share is da_{t+1}·Whᵀ (the hidden state carried)
        f"h{t + 1}": lambda F_, U: da(F_, U, t + 1) @ F_["Wh"].T,
    }


BRANCHES = {f"h{t}": h_branches(t) for t in (1, 2)}

LOCAL = {
    "logits": (("loss",), lambda F_, U: cross_entropy_backward(F_["logits"], F_["Yb"]) * U["loss"]),
    "hs": (("logits",), lambda F_, U: linear_input(U["logits"], F_["Wy"])),
    "Wy": (("logits",), lambda F_, U: linear_weight(F_["hs"], U["logits"])),
    "by": (("logits",), lambda F_, U: rows(U["logits"]).sum(0)),
    # hs = stack(h1, h2, h3)  →  dh3 = dhs[:, 2] (the last step feeds nothing else)
    "h3": (("hs",), lambda F_, U: U["hs"][:, 2].clone()),
    **{a: (tuple(br), branch_sum(br)) for a, br in BRANCHES.items()},
    # xp[:, t − 1] enters a_t with weight 1  →  dxp[:, t − 1] = da_t
    "xp": (("h1", "h2", "h3"), lambda F_, U: torch.stack([da(F_, U, t) for t in (1, 2, 3)], 1)),
    # a_t = … + h_{t−1}·Wh  →  dWh = Σ_t h_{t−1}ᵀ·da_t (h_0 = h0 broadcast over the batch)
    "Wh": (("h1", "h2", "h3"), lambda F_, U: F_["h0"].expand_as(F_["h1"]).T @ da(F_, U, 1)
           + F_["h1"].T @ da(F_, U, 2) + F_["h2"].T @ da(F_, U, 3)),
    # h0 is broadcast over the batch  →  dh0 = Σ_batch da_1·Whᵀ
    "h0": (("h1",), lambda F_, U: (da(F_, U, 1) @ F_["Wh"].T).sum(0)),
    "b": (("xp",), lambda F_, U: rows(U["xp"]).sum(0)),
    "Wx": (("xp",), lambda F_, U: linear_weight(F_["emb"], U["xp"])),
    "emb": (("xp",), lambda F_, U: linear_input(U["xp"], F_["Wx"])),
    "C": (("emb",), lambda F_, U: embedding_backward(F_["C"], F_["Xb"], U["emb"])),
}

RNN_CHAIN = AtomChain(forward, PARAMS, ORDER, LOCAL, BRANCHES)
assert set(ORDER) == set(RNN_CHAIN.atoms[:-1]) | set(PARAMS) and set(LOCAL) == set(ORDER)


def parameters(vocab_size: int, n_embd: int, n_hidden: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """C, Wx, Wh, b, h0, Wy, by (float32); b, h0 and by small random numbers, not 0."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    return {"C": randn(vocab_size, n_embd), "Wx": randn(n_embd, n_hidden) / math.sqrt(n_embd),
            "Wh": randn(n_hidden, n_hidden) / math.sqrt(n_hidden), "b": randn(n_hidden) * 0.1,
            "h0": randn(n_hidden) * 0.1, "Wy": randn(n_hidden, vocab_size) * 0.1, "by": randn(vocab_size) * 0.1}
