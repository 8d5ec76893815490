"""The lectures' hierarchical WaveNet as its chain of atoms (makemore part 5), one layer per atom:

    emb → x1 (FlattenConsecutive(2): n×T×E → n×T/2×2E) → a1 → bn1 (BatchNorm over (B, T, C)) → h1
    → x2 (FlattenConsecutive(2), the length-1 time dimension dropped) → a2 → bn2 → h2 → logits → loss

The steps are the closed forms of charmlp's own layers (nn/reshape.py, nn/batchnorm.py, nn/linear.py,
nn/activations.py, nn/losses.py), so a hint's reveal shows what the manual engine runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .atoms import AtomChain

PARAMS = ("C", "W1", "bngain1", "bnbias1", "W2", "bngain2", "bnbias2", "W3", "b3")


def forward(Xb, Yb, n, C, W1, bngain1, bnbias1, W2, bngain2, bnbias2, W3, b3):
    """One layer per atom; BatchNorm's statistics over every dimension but the last, variance with n − 1."""
    emb = C[Xb]
    x1 = emb.view(n, emb.shape[1] // 2, -1)
    a1 = x1 @ W1
    bn1 = bngain1 * (a1 - a1.mean((0, 1), keepdim=True)) * (a1.var((0, 1), keepdim=True) + 1e-5) ** -0.5 + bnbias1
    h1 = torch.tanh(bn1)
    x2 = h1.view(n, -1)
    a2 = x2 @ W2
    bn2 = bngain2 * (a2 - a2.mean(0, keepdim=True)) * (a2.var(0, keepdim=True) + 1e-5) ** -0.5 + bnbias2
    h2 = torch.tanh(bn2)
    logits = h2 @ W3 + b3
    loss = F.cross_entropy(logits, Yb)
    return locals()


ORDER = ("logits", "h2", "W3", "b3", "bn2", "bngain2", "bnbias2", "a2", "x2", "W2", "h1", "bn1", "bngain1", "bnbias1",
         "a1", "x1", "W1", "emb", "C")
BN_EPS = 1e-5


def rows(t: torch.Tensor) -> torch.Tensor:
    """Every dimension but the last as rows: (B, T, C) → (B·T, C)."""
    return t.reshape(-1, t.shape[-1])


def xhat_rstd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm's x̂ = (x − μ)·rstd and rstd = (σ² + ε)^(−1/2), over the rows (σ² with n − 1)."""
    x = rows(x)
    xc = x - x.mean(0)
    rstd = ((xc * xc).sum(0) / (x.shape[0] - 1) + BN_EPS) ** -0.5
    return xc * rstd, rstd


def cross_entropy_backward(logits: torch.Tensor, Yb: torch.Tensor) -> torch.Tensor:
    # L = −(1/N) Σ_i log softmax(logits_i)[y_i]  →  dlogits = (softmax(logits) − onehot(y)) / N, over N rows
    flat, y = rows(logits), Yb.reshape(-1)
    d = torch.softmax(flat, 1)
    d[torch.arange(len(y)), y] -= 1.0
    return (d / len(y)).reshape(logits.shape)


def tanh_backward(h: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
    # h = tanh(x)  →  dx = (1 − h²)·dh, 1 − h² as one fused multiply-add, as autograd does
    return torch.addcmul(torch.ones_like(h), h, h, value=-1.0) * dh


def batchnorm_backward(x: torch.Tensor, gain: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    # y = γ·x̂ + β over N rows, μ and σ² (n − 1) from those rows, closed form:
    #   dx = γ·rstd/N · (N·dy − Σ_rows dy − N/(N − 1) · x̂ · Σ_rows dy·x̂)
    xhat, rstd = xhat_rstd(x)
    d, N = rows(dy), rows(dy).shape[0]
    return (gain * rstd / N * (N * d - d.sum(0) - N / (N - 1) * xhat * (d * xhat).sum(0))).reshape(x.shape)


def linear_input(dy: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    # y = x @ W (+ b)  →  dx = dy·Wᵀ
    return dy @ W.T


def linear_weight(x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    # y = x @ W  →  dW = Σ_rows xᵀ·dy (every dimension but the last is a row)
    return rows(x).T @ rows(dy)


def embedding_backward(C: torch.Tensor, Xb: torch.Tensor, demb: torch.Tensor) -> torch.Tensor:
    # emb = C[Xb]  →  dC[c] = Σ of demb over every position holding c (repeats accumulate)
    return torch.zeros_like(C).index_add_(0, Xb.reshape(-1), demb.reshape(-1, C.shape[1]))


LOCAL = {
    "logits": (("loss",), lambda F_, U: cross_entropy_backward(F_["logits"], F_["Yb"]) * U["loss"]),
    "h2": (("logits",), lambda F_, U: linear_input(U["logits"], F_["W3"])),
    "W3": (("logits",), lambda F_, U: linear_weight(F_["h2"], U["logits"])),
    "b3": (("logits",), lambda F_, U: rows(U["logits"]).sum(0)),
    "bn2": (("h2",), lambda F_, U: tanh_backward(F_["h2"], U["h2"])),
    # bn = γ·x̂ + β  →  dγ = Σ_rows dbn·x̂, dβ = Σ_rows dbn
    "bngain2": (("bn2",), lambda F_, U: (rows(U["bn2"]) * xhat_rstd(F_["a2"])[0]).sum(0)),
    "bnbias2": (("bn2",), lambda F_, U: rows(U["bn2"]).sum(0)),
    "a2": (("bn2",), lambda F_, U: batchnorm_backward(F_["a2"], F_["bngain2"], U["bn2"])),
    "x2": (("a2",), lambda F_, U: linear_input(U["a2"], F_["W2"])),
    "W2": (("a2",), lambda F_, U: linear_weight(F_["x2"], U["a2"])),
    # x2 = h1 viewed as n × (T/2·2H): FlattenConsecutive is a pure reshape  →  dh1 = dx2 viewed back
    "h1": (("x2",), lambda F_, U: U["x2"].reshape(F_["h1"].shape)),
    "bn1": (("h1",), lambda F_, U: tanh_backward(F_["h1"], U["h1"])),
    "bngain1": (("bn1",), lambda F_, U: (rows(U["bn1"]) * xhat_rstd(F_["a1"])[0]).sum(0)),
    "bnbias1": (("bn1",), lambda F_, U: rows(U["bn1"]).sum(0)),
    # BatchNorm over (B, T, C): the same closed form on the B·T rows
    "a1": (("bn1",), lambda F_, U: batchnorm_backward(F_["a1"], F_["bngain1"], U["bn1"])),
    "x1": (("a1",), lambda F_, U: linear_input(U["a1"], F_["W1"])),
    "W1": (("a1",), lambda F_, U: linear_weight(F_["x1"], U["a1"])),
    "emb": (("x1",), lambda F_, U: U["x1"].reshape(F_["emb"].shape)),
    "C": (("emb",), lambda F_, U: embedding_backward(F_["C"], F_["Xb"], U["emb"])),
}

WAVENET_CHAIN = AtomChain(forward, PARAMS, ORDER, LOCAL)
assert set(ORDER) == set(WAVENET_CHAIN.atoms[:-1]) | set(PARAMS) and set(LOCAL) == set(ORDER)


def parameters(vocab_size: int, block_size: int, n_embd: int, n_hidden: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """C, W1, bngain1, bnbias1, W2, bngain2, bnbias2, W3, b3 (float32); γ, β and b3 small random
    numbers, not 1 and 0, so that a forgotten term cannot hide. block_size must be 4 (two levels)."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    return {
        "C": randn(vocab_size, n_embd),
        "W1": randn(2 * n_embd, n_hidden) * (5 / 3) / math.sqrt(2 * n_embd),
        "bngain1": randn(n_hidden) * 0.1 + 1.0, "bnbias1": randn(n_hidden) * 0.1,
        "W2": randn(2 * n_hidden, n_hidden) * (5 / 3) / math.sqrt(2 * n_hidden),
        "bngain2": randn(n_hidden) * 0.1 + 1.0, "bnbias2": randn(n_hidden) * 0.1,
        "W3": randn(n_hidden, vocab_size) * 0.1, "b3": randn(vocab_size) * 0.1,
    }
