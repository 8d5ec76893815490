"""The lectures' MLP as its chain of atoms (makemore part 4, "becoming a backprop ninja"):

    emb → embcat → hprebn → bnmeani → bndiff → bndiff2 → bnvar → bnvar_inv → bnraw → hpreact → h
    → logits → logit_maxes → norm_logits → counts → counts_sum → counts_sum_inv → probs → logprobs → loss

`forward` is the one place the atoms are written: `charmlp gradcheck` part 1 backpropagates through
it step by step, the exercise diagnoses a learner's gradients with the same steps, and the starter
file lists `forward`'s own lines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .atoms import AtomChain, branch_sum

BN_EPS = 1e-5  # BatchNorm's ε, as `forward` writes it out (and BatchNorm1d's default)
PARAMS = ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias")


def forward(Xb, Yb, n, C, W1, b1, W2, b2, bngain, bnbias):
    """One atom per line (BatchNorm's variance with Bessel's n − 1, as in the lectures)."""
    emb = C[Xb]
    embcat = emb.view(n, -1)
    hprebn = embcat @ W1 + b1
    bnmeani = hprebn.sum(0, keepdim=True) / n
    bndiff = hprebn - bnmeani
    bndiff2 = bndiff**2
    bnvar = bndiff2.sum(0, keepdim=True) / (n - 1)
    bnvar_inv = (bnvar + 1e-5) ** -0.5
    bnraw = bndiff * bnvar_inv
    hpreact = bngain * bnraw + bnbias
    h = torch.tanh(hpreact)
    logits = h @ W2 + b2
    logit_maxes = logits.max(1, keepdim=True).values
    norm_logits = logits - logit_maxes
    counts = norm_logits.exp()
    counts_sum = counts.sum(1, keepdim=True)
    counts_sum_inv = counts_sum**-1
    probs = counts * counts_sum_inv
    logprobs = probs.log()
    loss = -logprobs[range(n), Yb].mean()
    return locals()


# The gradients in the order the exercise derives (and prints) them.
ORDER = (
    "logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes",
    "logits", "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar",
    "bndiff2", "bndiff", "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C",
)


def _dlogprobs(F_, U):
    # loss = −(1/n) Σ_i logprobs[i, y_i]  →  dlogprobs = −1/n at (i, y_i), 0 elsewhere
    d = torch.zeros_like(F_["logprobs"])
    d[range(F_["n"]), F_["Yb"]] = -U["loss"] / F_["n"]
    return d


def _one_hot_max(F_):
    return F.one_hot(F_["logits"].max(1).indices, F_["logits"].shape[1]).to(F_["logits"].dtype)


# Where an atom feeds two others, each one's contribution (its gradient is their sum).
BRANCHES = {
    # counts feeds probs (dcounts = counts_sum_inv·dprobs) and counts_sum = Σ_row counts (+ dcounts_sum)
    "counts": {"probs": lambda F_, U: F_["counts_sum_inv"] * U["probs"],
               "counts_sum": lambda F_, U: torch.ones_like(F_["counts"]) * U["counts_sum"]},
    # logits feeds norm_logits (×1) and logit_maxes = max_row logits (only at the arg max)
    "logits": {"norm_logits": lambda F_, U: U["norm_logits"].clone(),
               "logit_maxes": lambda F_, U: _one_hot_max(F_) * U["logit_maxes"]},
    # bndiff feeds bnraw (dbndiff = bnvar_inv·dbnraw) and bndiff2 = bndiff² (+ 2·bndiff·dbndiff2)
    "bndiff": {"bnraw": lambda F_, U: F_["bnvar_inv"] * U["bnraw"],
               "bndiff2": lambda F_, U: 2.0 * F_["bndiff"] * U["bndiff2"]},
    # hprebn feeds bndiff (×1) and bnmeani = Σ_batch hprebn / n (+ dbnmeani / n)
    "hprebn": {"bndiff": lambda F_, U: U["bndiff"].clone(),
               "bnmeani": lambda F_, U: torch.ones_like(F_["hprebn"]) * U["bnmeani"] / F_["n"]},
}

# Each gradient's own chain-rule step: (the atoms it feeds, dx from their gradients U).
LOCAL = {
    "logprobs": (("loss",), _dlogprobs),
    # logprobs = log(probs)  →  dprobs = dlogprobs / probs
    "probs": (("logprobs",), lambda F_, U: U["logprobs"] / F_["probs"]),
    # probs = counts · counts_sum_inv (broadcast along the row)  →  dcounts_sum_inv = Σ_row counts·dprobs
    "counts_sum_inv": (("probs",), lambda F_, U: (F_["counts"] * U["probs"]).sum(1, keepdim=True)),
    # counts_sum_inv = counts_sum⁻¹  →  dcounts_sum = −counts_sum⁻² · dcounts_sum_inv
    "counts_sum": (("counts_sum_inv",), lambda F_, U: -F_["counts_sum"] ** -2 * U["counts_sum_inv"]),
    # counts = exp(norm_logits)  →  dnorm_logits = counts · dcounts
    "norm_logits": (("counts",), lambda F_, U: F_["counts"] * U["counts"]),
    # norm_logits = logits − logit_maxes  →  dlogit_maxes = −Σ_row dnorm_logits
    "logit_maxes": (("norm_logits",), lambda F_, U: -U["norm_logits"].sum(1, keepdim=True)),
    # logits = h @ W2 + b2  →  dh = dlogits·W2ᵀ, dW2 = hᵀ·dlogits, db2 = Σ_batch dlogits
    "h": (("logits",), lambda F_, U: U["logits"] @ F_["W2"].T),
    "W2": (("logits",), lambda F_, U: F_["h"].T @ U["logits"]),
    "b2": (("logits",), lambda F_, U: U["logits"].sum(0)),
    # h = tanh(hpreact)  →  dhpreact = (1 − h²) · dh, with 1 − h² as one fused multiply-add
    # (addcmul: 1 + (−1)·h·h rounded once), the way autograd's tanh kernel computes it
    "hpreact": (("h",), lambda F_, U: torch.addcmul(torch.ones_like(F_["h"]), F_["h"], F_["h"], value=-1.0) * U["h"]),
    # hpreact = bngain·bnraw + bnbias  →  dbngain = Σ_batch bnraw·dhpreact, dbnbias = Σ_batch dhpreact
    "bngain": (("hpreact",), lambda F_, U: (F_["bnraw"] * U["hpreact"]).sum(0).reshape(F_["bngain"].shape)),
    "bnbias": (("hpreact",), lambda F_, U: U["hpreact"].sum(0).reshape(F_["bnbias"].shape)),
    "bnraw": (("hpreact",), lambda F_, U: F_["bngain"] * U["hpreact"]),
    # bnraw = bndiff · bnvar_inv  →  dbnvar_inv = Σ_batch bndiff·dbnraw
    "bnvar_inv": (("bnraw",), lambda F_, U: (F_["bndiff"] * U["bnraw"]).sum(0, keepdim=True)),
    # bnvar_inv = (bnvar + ε)^(−1/2)  →  dbnvar = −½·(bnvar + ε)^(−3/2) · dbnvar_inv
    "bnvar": (("bnvar_inv",), lambda F_, U: -0.5 * (F_["bnvar"] + BN_EPS) ** -1.5 * U["bnvar_inv"]),
    # bnvar = Σ_batch bndiff2 / (n − 1)  →  dbndiff2 = dbnvar / (n − 1), the same for every row
    "bndiff2": (("bnvar",), lambda F_, U: torch.ones_like(F_["bndiff2"]) * U["bnvar"] / (F_["n"] - 1)),
    # bndiff = hprebn − bnmeani  →  dbnmeani = −Σ_batch dbndiff
    "bnmeani": (("bndiff",), lambda F_, U: -U["bndiff"].sum(0, keepdim=True)),
    # hprebn = embcat @ W1 + b1  →  dembcat = dhprebn·W1ᵀ, dW1 = embcatᵀ·dhprebn, db1 = Σ_batch dhprebn
    "embcat": (("hprebn",), lambda F_, U: U["hprebn"] @ F_["W1"].T),
    "W1": (("hprebn",), lambda F_, U: F_["embcat"].T @ U["hprebn"]),
    "b1": (("hprebn",), lambda F_, U: U["hprebn"].sum(0)),
    # embcat = emb viewed as (n, block·n_embd)  →  demb = dembcat viewed back
    "emb": (("embcat",), lambda F_, U: U["embcat"].view(F_["emb"].shape)),
    # emb = C[Xb]  →  dC[c] = Σ of demb over every position holding character c (repeats accumulate)
    "C": (("emb",), lambda F_, U: torch.zeros_like(F_["C"]).index_add_(
        0, F_["Xb"].reshape(-1), U["emb"].reshape(-1, F_["C"].shape[1]))),
    **{atom: (tuple(br), branch_sum(br)) for atom, br in BRANCHES.items()},
}

MLP_CHAIN = AtomChain(forward, PARAMS, ORDER, LOCAL, BRANCHES)
assert set(ORDER) == set(MLP_CHAIN.atoms[:-1]) | set(PARAMS) and set(LOCAL) == set(ORDER)


def parameters(vocab_size: int, block_size: int, n_embd: int, n_hidden: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The exercise's parameters: C, W1, b1, W2, b2, bngain, bnbias (float32, from `generator`).

    Biases and BatchNorm's γ, β are small random numbers rather than 0 and 1, as in the
    exercise, so that a forgotten term cannot hide behind a zero or a one.
    """

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    fan_in = block_size * n_embd
    return {
        "C": randn(vocab_size, n_embd),
        "W1": randn(fan_in, n_hidden) * (5 / 3) / math.sqrt(fan_in),
        "b1": randn(n_hidden) * 0.1,
        "W2": randn(n_hidden, vocab_size) * 0.1,
        "b2": randn(vocab_size) * 0.1,
        "bngain": randn(n_hidden) * 0.1 + 1.0,
        "bnbias": randn(n_hidden) * 0.1,
    }


def judge_scale(atom: str, grads: dict) -> float | None:
    """The size `atom`'s gradient is judged against where its true value is 0 up to round-off, from
    the reference gradients `grads`: db1 = Σ_batch dhprebn of terms that cancel exactly (the
    BatchNorm after it removes b1), so its round-off scales with the largest |dhprebn| column sum.
    None: the gradient's own size (every other atom)."""
    return grads["hprebn"].abs().sum(0).max().item() if atom == "b1" else None
