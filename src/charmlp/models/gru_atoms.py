"""The GRU as its chain of atoms: one cell step as four atoms (z, r, c, h), unrolled over T = 2
positions from the learned h0, the hidden state carried, a loss at every position:

    emb → xz, xr, xc (the input halves, every step at once) → z1 r1 c1 h1 → z2 r2 c2 h2 → hs → logits → loss

    z = σ(x·Wxz + bz + h·Whz)    r = σ(x·Wxr + br + h·Whr)    c = tanh(x·Wxc + bc + (r⊙h)·Wc)
    h' = h + z⊙(c − h)

The steps are the closed forms of charmlp's `nn.GRUCell.step_backward` (nn/recurrent.py); its
Wx (E, 3H) and b (3H) are the z, r, c blocks side by side, its Wh (H, 2H) is [Whz Whr].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .atoms import AtomChain, branch_sum
from .wavenet_atoms import cross_entropy_backward, embedding_backward, linear_input, linear_weight, rows, tanh_backward

PARAMS = ("C", "Wxz", "Wxr", "Wxc", "bz", "br", "bc", "Whz", "Whr", "Wc", "h0", "Wy", "by")
T = 2  # positions the chain unrolls


def forward(Xb, Yb, n, C, Wxz, Wxr, Wxc, bz, br, bc, Whz, Whr, Wc, h0, Wy, by):
    """Two GRU steps from h0 (broadcast over the batch); the output at t reads h_t."""
    emb = C[Xb]
    xz = emb @ Wxz + bz
    xr = emb @ Wxr + br
    xc = emb @ Wxc + bc
    z1 = torch.sigmoid(xz[:, 0] + h0 @ Whz)
    r1 = torch.sigmoid(xr[:, 0] + h0 @ Whr)
    c1 = torch.tanh(xc[:, 0] + (r1 * h0) @ Wc)
    h1 = h0 + z1 * (c1 - h0)
    z2 = torch.sigmoid(xz[:, 1] + h1 @ Whz)
    r2 = torch.sigmoid(xr[:, 1] + h1 @ Whr)
    c2 = torch.tanh(xc[:, 1] + (r2 * h1) @ Wc)
    h2 = h1 + z2 * (c2 - h1)
    hs = torch.stack((h1, h2), 1)
    logits = hs @ Wy + by
    loss = F.cross_entropy(logits.flatten(0, 1), Yb.flatten())
    return locals()


ORDER = ("logits", "hs", "Wy", "by", "h2", "c2", "z2", "r2", "h1", "c1", "z1", "r1", "h0",
         "xz", "xr", "xc", "Whz", "Whr", "Wc", "bz", "br", "bc", "Wxz", "Wxr", "Wxc", "emb", "C")


def prev(F_: dict, t: int) -> torch.Tensor:
    """h_{t−1}: h0 broadcast over the batch for the first step."""
    return F_["h0"].expand_as(F_["h1"]) if t == 1 else F_[f"h{t - 1}"]


# the pre-activations' gradients of step t (the σ' and tanh' of nn.GRUCell.step_backward)
def da_z(F_, U, t):  # z = σ(a_z)  →  da_z = z(1 − z)⊙dz
    z = F_[f"z{t}"]
    return z * (1.0 - z) * U[f"z{t}"]


def da_r(F_, U, t):  # r = σ(a_r)  →  da_r = r(1 − r)⊙dr
    r = F_[f"r{t}"]
    return r * (1.0 - r) * U[f"r{t}"]


def da_c(F_, U, t):  # c = tanh(a_c)  →  da_c = (1 − c²)⊙dc
    return tanh_backward(F_[f"c{t}"], U[f"c{t}"])


def h_branches(t: int) -> dict:
    """What h_t = h_{t−1} + … receives from step t + 1, by the atom it feeds (their sum is dh_t, with dhs[:, t − 1])."""
    s = t + 1
    return {
        # hs = stack(h1, h2)  →  h_t's share is its slice dhs[:, t − 1]
        "hs": lambda F_, U: U["hs"][:, t - 1].clone(),
        # h' = h + z⊙(c − h)  →  dh gets dh'⊙(1 − z) directly
        f"h{s}": lambda F_, U: U[f"h{s}"] * (1.0 - F_[f"z{s}"]),
        # a_z = … + h·Whz  →  da_z·Whzᵀ;  a_r likewise
        f"z{s}": lambda F_, U: da_z(F_, U, s) @ F_["Whz"].T,
        f"r{s}": lambda F_, U: da_r(F_, U, s) @ F_["Whr"].T,
        # a_c = … + (r⊙h)·Wc  →  d(r⊙h) = da_c·Wcᵀ, and dh gets d(r⊙h)⊙r
        f"c{s}": lambda F_, U: (da_c(F_, U, s) @ F_["Wc"].T) * F_[f"r{s}"],
    }


BRANCHES = {"h1": h_branches(1)}
# h0 (H,) feeds step 1 the way h1 feeds step 2, summed over the batch it is broadcast over
H0_BRANCHES = {k: v for k, v in h_branches(0).items() if k != "hs"}
def batch_sum(f):
    return lambda F_, U: f(F_, U).sum(0)


BRANCHES["h0"] = {k: batch_sum(f) for k, f in H0_BRANCHES.items()}


def _step_rules(t: int) -> dict:
    return {
        # h' = h + z⊙(c − h)  →  dc = dh'⊙z, dz = dh'⊙(c − h)
        f"c{t}": ((f"h{t}",), lambda F_, U: U[f"h{t}"] * F_[f"z{t}"]),
        f"z{t}": ((f"h{t}",), lambda F_, U: U[f"h{t}"] * (F_[f"c{t}"] - prev(F_, t))),
        # c = tanh(… + (r⊙h)·Wc)  →  dr = (da_c·Wcᵀ)⊙h
        f"r{t}": ((f"c{t}",), lambda F_, U: (da_c(F_, U, t) @ F_["Wc"].T) * prev(F_, t)),
    }


LOCAL = {
    "logits": (("loss",), lambda F_, U: cross_entropy_backward(F_["logits"], F_["Yb"]) * U["loss"]),
    "hs": (("logits",), lambda F_, U: linear_input(U["logits"], F_["Wy"])),
    "Wy": (("logits",), lambda F_, U: linear_weight(F_["hs"], U["logits"])),
    "by": (("logits",), lambda F_, U: rows(U["logits"]).sum(0)),
    "h2": (("hs",), lambda F_, U: U["hs"][:, 1].clone()),
    **_step_rules(2), **_step_rules(1),
    **{a: (tuple(br), branch_sum(br)) for a, br in BRANCHES.items()},
    # xz[:, t − 1] enters a_z of step t with weight 1  →  dxz[:, t − 1] = da_z_t (xr, xc likewise)
    "xz": (("z1", "z2"), lambda F_, U: torch.stack([da_z(F_, U, t) for t in (1, 2)], 1)),
    "xr": (("r1", "r2"), lambda F_, U: torch.stack([da_r(F_, U, t) for t in (1, 2)], 1)),
    "xc": (("c1", "c2"), lambda F_, U: torch.stack([da_c(F_, U, t) for t in (1, 2)], 1)),
    # the recurrent weights, every step's share: dWhz = Σ_t h_{t−1}ᵀ·da_z_t, dWc = Σ_t (r_t⊙h_{t−1})ᵀ·da_c_t
    "Whz": (("z1", "z2"), lambda F_, U: sum(prev(F_, t).T @ da_z(F_, U, t) for t in (1, 2))),
    "Whr": (("r1", "r2"), lambda F_, U: sum(prev(F_, t).T @ da_r(F_, U, t) for t in (1, 2))),
    "Wc": (("c1", "c2"), lambda F_, U: sum((F_[f"r{t}"] * prev(F_, t)).T @ da_c(F_, U, t) for t in (1, 2))),
    "bz": (("xz",), lambda F_, U: rows(U["xz"]).sum(0)),
    "br": (("xr",), lambda F_, U: rows(U["xr"]).sum(0)),
    "bc": (("xc",), lambda F_, U: rows(U["xc"]).sum(0)),
    "Wxz": (("xz",), lambda F_, U: linear_weight(F_["emb"], U["xz"])),
    "Wxr": (("xr",), lambda F_, U: linear_weight(F_["emb"], U["xr"])),
    "Wxc": (("xc",), lambda F_, U: linear_weight(F_["emb"], U["xc"])),
}
# emb feeds the three input projections: demb = dxz·Wxzᵀ + dxr·Wxrᵀ + dxc·Wxcᵀ
def projection_input(x: str):
    return lambda F_, U: linear_input(U[x], F_["W" + x])


BRANCHES["emb"] = {x: projection_input(x) for x in ("xz", "xr", "xc")}
LOCAL["emb"] = (tuple(BRANCHES["emb"]), branch_sum(BRANCHES["emb"]))
LOCAL["C"] = (("emb",), lambda F_, U: embedding_backward(F_["C"], F_["Xb"], U["emb"]))

GRU_CHAIN = AtomChain(forward, PARAMS, ORDER, LOCAL, BRANCHES)
assert set(ORDER) == set(GRU_CHAIN.atoms[:-1]) | set(PARAMS) and set(LOCAL) == set(ORDER)


def parameters(vocab_size: int, n_embd: int, n_hidden: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The GRU's parameters (float32); biases and h0 small random numbers, not 0."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    E, H = n_embd, n_hidden
    P = {"C": randn(vocab_size, E)}
    P.update({f"Wx{g}": randn(E, H) / math.sqrt(E) for g in "zrc"})
    P.update({f"b{g}": randn(H) * 0.1 for g in "zrc"})
    P.update({"Whz": randn(H, H) / math.sqrt(H), "Whr": randn(H, H) / math.sqrt(H), "Wc": randn(H, H) / math.sqrt(H),
              "h0": randn(H) * 0.1, "Wy": randn(H, vocab_size) * 0.1, "by": randn(vocab_size) * 0.1})
    return P
