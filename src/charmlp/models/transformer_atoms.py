"""A one-block GPT as its chain of atoms (GPT-2's layout, as `models/transformer.py`):

    tok = wte[Xb], x0 = tok + wpe (position embeddings) → ln1 → qkv → heads (q, k, v split into
    N_HEAD heads) → scores = q·kᵀ/√D → masked (causal: position t sees 0..t) → att = softmax → y = att·v
    → ymerge (heads merged) → attn → x1 = x0 + attn (the residual stream) → ln2 → f → g = GELU(f)
    → mlp → x2 = x1 + mlp → lnf → logits → loss (a loss at every position)

The steps are the closed forms of charmlp's own layers (nn/attention.py, nn/layernorm.py,
the GELU of nn/activations.py, nn/linear.py, nn/losses.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .atoms import AtomChain, branch_sum
from .wavenet_atoms import cross_entropy_backward, embedding_backward, linear_input, linear_weight, rows

N_HEAD = 2
LN_EPS = 1e-5
PARAMS = ("wte", "wpe", "ln1w", "ln1b", "Wqkv", "bqkv", "Wo", "bo", "ln2w", "ln2b", "W1", "b1", "W2", "b2",
          "lnfw", "lnfb", "Wlm", "blm")


def causal(scores: torch.Tensor) -> torch.Tensor:
    """True above the diagonal of the last two dimensions: the future a position may not see."""
    T = scores.shape[-1]
    return torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1)


def forward(Xb, Yb, n, wte, wpe, ln1w, ln1b, Wqkv, bqkv, Wo, bo, ln2w, ln2b, W1, b1, W2, b2, lnfw, lnfb, Wlm, blm):
    """One pre-LayerNorm block: causal self-attention, then a GELU MLP, each added to the residual stream."""
    tok = wte[Xb]
    x0 = tok + wpe
    ln1 = F.layer_norm(x0, x0.shape[-1:], ln1w, ln1b, 1e-5)
    qkv = ln1 @ Wqkv + bqkv
    heads = qkv.unflatten(-1, (3, N_HEAD, -1)).permute(2, 0, 3, 1, 4)
    q = heads[0]
    k = heads[1]
    v = heads[2]
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    masked = scores.masked_fill(causal(scores), float("-inf"))
    att = torch.softmax(masked, -1)
    y = att @ v
    ymerge = y.transpose(1, 2).flatten(2)
    attn = ymerge @ Wo + bo
    x1 = x0 + attn
    ln2 = F.layer_norm(x1, x1.shape[-1:], ln2w, ln2b, 1e-5)
    f = ln2 @ W1 + b1
    g = F.gelu(f)
    mlp = g @ W2 + b2
    x2 = x1 + mlp
    lnf = F.layer_norm(x2, x2.shape[-1:], lnfw, lnfb, 1e-5)
    logits = lnf @ Wlm + blm
    loss = F.cross_entropy(logits.flatten(0, 1), Yb.flatten())
    return locals()


ORDER = ("logits", "lnf", "Wlm", "blm", "x2", "lnfw", "lnfb", "mlp", "g", "W2", "b2", "f", "ln2", "W1", "b1",
         "x1", "ln2w", "ln2b", "attn", "ymerge", "Wo", "bo", "y", "att", "v", "masked", "scores", "q", "k", "heads",
         "qkv", "ln1", "Wqkv", "bqkv", "x0", "ln1w", "ln1b", "tok", "wpe", "wte")


def xhat_rstd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm's x̂ = (x − μ)·rstd and rstd = (σ² + ε)^(−1/2) over the last dimension (σ² biased, 1/C)."""
    mu = x.mean(-1, keepdim=True)
    rstd = (((x - mu) ** 2).mean(-1, keepdim=True) + LN_EPS) ** -0.5
    return (x - mu) * rstd, rstd


def layernorm_backward(x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    # y = γ·x̂ + β, per row of C entries  →  dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)), dx̂ = γ·dy
    xhat, rstd = xhat_rstd(x)
    dxhat = w * dy
    return rstd * (dxhat - dxhat.mean(-1, keepdim=True) - xhat * (dxhat * xhat).mean(-1, keepdim=True))


def gelu_backward(x: torch.Tensor, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    # y = x·Φ(x)  →  dx = dy·(Φ(x) + x·φ(x)), φ(x) = e^(−x²/2)/√(2π); Φ = y/x read off the output (½ at x = 0)
    cdf = (y / x).nan_to_num(nan=0.5)
    return dy * (cdf + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


def softmax_backward(att: torch.Tensor, datt: torch.Tensor) -> torch.Tensor:
    # att = softmax(s) row-wise  →  ds = att ⊙ (datt − Σ_j datt⊙att); a masked entry (att = 0) gets 0
    return att * (datt - (datt * att).sum(-1, keepdim=True))


def _ln(x: str, w: str, y: str):
    return lambda F_, U: layernorm_backward(F_[x], F_[w], U[y])


def _ln_weight(x: str, y: str):  # dγ = Σ_rows dy·x̂
    return lambda F_, U: rows(U[y] * xhat_rstd(F_[x])[0]).sum(0)


BRANCHES = {
    # the residual stream: x1 feeds x2 = x1 + mlp (×1) and ln2; x0 feeds x1 = x0 + attn (×1) and ln1
    "x1": {"x2": lambda F_, U: U["x2"].clone(), "ln2": _ln("x1", "ln2w", "ln2")},
    "x0": {"x1": lambda F_, U: U["x1"].clone(), "ln1": _ln("x0", "ln1w", "ln1")},
}

LOCAL = {
    "logits": (("loss",), lambda F_, U: cross_entropy_backward(F_["logits"], F_["Yb"]) * U["loss"]),
    "lnf": (("logits",), lambda F_, U: linear_input(U["logits"], F_["Wlm"])),
    "Wlm": (("logits",), lambda F_, U: linear_weight(F_["lnf"], U["logits"])),
    "blm": (("logits",), lambda F_, U: rows(U["logits"]).sum(0)),
    "x2": (("lnf",), _ln("x2", "lnfw", "lnf")),
    "lnfw": (("lnf",), _ln_weight("x2", "lnf")),
    "lnfb": (("lnf",), lambda F_, U: rows(U["lnf"]).sum(0)),
    # x2 = x1 + mlp  →  dmlp = dx2
    "mlp": (("x2",), lambda F_, U: U["x2"].clone()),
    "g": (("mlp",), lambda F_, U: linear_input(U["mlp"], F_["W2"])),
    "W2": (("mlp",), lambda F_, U: linear_weight(F_["g"], U["mlp"])),
    "b2": (("mlp",), lambda F_, U: rows(U["mlp"]).sum(0)),
    "f": (("g",), lambda F_, U: gelu_backward(F_["f"], F_["g"], U["g"])),
    "ln2": (("f",), lambda F_, U: linear_input(U["f"], F_["W1"])),
    "W1": (("f",), lambda F_, U: linear_weight(F_["ln2"], U["f"])),
    "b1": (("f",), lambda F_, U: rows(U["f"]).sum(0)),
    "ln2w": (("ln2",), _ln_weight("x1", "ln2")),
    "ln2b": (("ln2",), lambda F_, U: rows(U["ln2"]).sum(0)),
    "attn": (("x1",), lambda F_, U: U["x1"].clone()),
    "ymerge": (("attn",), lambda F_, U: linear_input(U["attn"], F_["Wo"])),
    "Wo": (("attn",), lambda F_, U: linear_weight(F_["ymerge"], U["attn"])),
    "bo": (("attn",), lambda F_, U: rows(U["attn"]).sum(0)),
    # ymerge = y with heads merged (B, H, T, D) → (B, T, H·D)  →  dy = dymerge split back
    "y": (("ymerge",), lambda F_, U: U["ymerge"].unflatten(-1, (N_HEAD, -1)).transpose(1, 2)),
    # y = att·v  →  datt = dy·vᵀ, dv = attᵀ·dy
    "att": (("y",), lambda F_, U: U["y"] @ F_["v"].transpose(-2, -1)),
    "v": (("y",), lambda F_, U: F_["att"].transpose(-2, -1) @ U["y"]),
    "masked": (("att",), lambda F_, U: softmax_backward(F_["att"], U["att"])),
    # masked = scores with −∞ above the diagonal (constants)  →  dscores = dmasked, 0 where masked
    "scores": (("masked",), lambda F_, U: U["masked"].masked_fill(causal(F_["scores"]), 0.0)),
    # scores = q·kᵀ/√D  →  dq = dscores·k/√D, dk = dscoresᵀ·q/√D
    "q": (("scores",), lambda F_, U: U["scores"] @ F_["k"] * F_["q"].shape[-1] ** -0.5),
    "k": (("scores",), lambda F_, U: U["scores"].transpose(-2, -1) @ F_["q"] * F_["q"].shape[-1] ** -0.5),
    # heads = (q, k, v) stacked  →  dheads = stack(dq, dk, dv)
    "heads": (("q", "k", "v"), lambda F_, U: torch.stack((U["q"], U["k"], U["v"]))),
    # heads = qkv split (B, T, 3C) → (3, B, H, T, D)  →  dqkv = dheads put back: (B, T, 3, H, D) → (B, T, 3C)
    "qkv": (("heads",), lambda F_, U: U["heads"].permute(1, 3, 0, 2, 4).reshape(F_["qkv"].shape)),
    "ln1": (("qkv",), lambda F_, U: linear_input(U["qkv"], F_["Wqkv"])),
    "Wqkv": (("qkv",), lambda F_, U: linear_weight(F_["ln1"], U["qkv"])),
    "bqkv": (("qkv",), lambda F_, U: rows(U["qkv"]).sum(0)),
    "ln1w": (("ln1",), _ln_weight("x0", "ln1")),
    "ln1b": (("ln1",), lambda F_, U: rows(U["ln1"]).sum(0)),
    # x0 = tok + wpe (wpe broadcast over the batch)  →  dtok = dx0, dwpe = Σ_batch dx0
    "tok": (("x0",), lambda F_, U: U["x0"].clone()),
    "wpe": (("x0",), lambda F_, U: U["x0"].sum(0)),
    "wte": (("tok",), lambda F_, U: embedding_backward(F_["wte"], F_["Xb"], U["tok"])),
    **{a: (tuple(br), branch_sum(br)) for a, br in BRANCHES.items()},
}

TRANSFORMER_CHAIN = AtomChain(forward, PARAMS, ORDER, LOCAL, BRANCHES)
assert set(ORDER) == set(TRANSFORMER_CHAIN.atoms[:-1]) | set(PARAMS) and set(LOCAL) == set(ORDER)


def parameters(vocab_size: int, block_size: int, n_embd: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The block's parameters (float32); LayerNorms' γ, β and the biases small random numbers, not 1 and 0."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    C = n_embd
    if C % N_HEAD:
        raise ValueError(f"n_embd must be a multiple of {N_HEAD}, got {C}")
    P = {"wte": randn(vocab_size, C), "wpe": randn(block_size, C) * 0.5}
    for ln in ("ln1", "ln2", "lnf"):
        P[ln + "w"], P[ln + "b"] = randn(C) * 0.1 + 1.0, randn(C) * 0.1
    for w, b, fan_in, fan_out in (("Wqkv", "bqkv", C, 3 * C), ("Wo", "bo", C, C), ("W1", "b1", C, 4 * C),
                                  ("W2", "b2", 4 * C, C), ("Wlm", "blm", C, vocab_size)):
        P[w], P[b] = randn(fan_in, fan_out) / math.sqrt(fan_in), randn(fan_out) * 0.1
    return {k: P[k] for k in PARAMS}
