"""Causal multi-head self-attention, with the softmax and mask backward written out (llm.c-style)."""

from __future__ import annotations

import math

import torch

from .linear import Linear
from .module import Layer


class CausalSelfAttention(Layer):
    """x (B, T, C) → qkv = x·W_qkv + b (B, T, 3C) → q, k, v split into n_head heads of D = C/n_head
    (B, H, T, D) → scores = q·kᵀ/√D (B, H, T, T) → causal mask (position t sees 0..t) → att =
    softmax(scores) → y = att·v → heads merged (B, T, C) → out = y·W_proj + b.

    Sublayers `qkv` and `proj` are `Linear`s with their own backward.
    """

    eval_attrs = ("n_head",)

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
        self.n_head = n_head
        self.qkv = Linear(n_embd, 3 * n_embd)
        self.proj = Linear(n_embd, n_embd)
        self.mask = torch.empty(0, 0, dtype=torch.bool)  # True above the diagonal (the future); grown on demand

    def causal_mask(self, T: int, device: torch.device) -> torch.Tensor:
        if self.mask.shape[0] < T or self.mask.device != device:
            self.mask = torch.ones(T, T, dtype=torch.bool, device=device).triu_(1)
        return self.mask[:T, :T]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H = self.n_head
        # one copy into head-major layout: the matmuls below would copy q, k, v anyway, and backward reuses them
        q, k, v = self.qkv(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4).contiguous()  # each (B, H, T, D)
        scores = q @ k.transpose(-2, -1)
        scores.mul_(1.0 / math.sqrt(C // H)).masked_fill_(self.causal_mask(T, x.device), float("-inf"))
        att = torch.softmax(scores, dim=-1)
        self.q, self.k, self.v, self.att = q, k, v, att
        y = (att @ v).transpose(1, 2).reshape(B, T, C)  # merge heads: (B, H, T, D) → (B, T, H·D)
        return self.proj(y)

    def backward(self, dout: torch.Tensor) -> torch.Tensor:
        q, k, v, att = self.q, self.k, self.v, self.att
        B, H, T, D = q.shape
        dy = self.proj.backward(dout).view(B, T, H, D).transpose(1, 2)  # split heads: (B, H, T, D)
        dy = self.scratch("dy", (B, H, T, D), dout).copy_(dy)  # contiguous, for the two matmuls below
        dqkv = self.scratch("dqkv", (3, B, H, T, D), dout)  # dq, dk, dv, head-major
        # y = att·v  →  datt = dy·vᵀ, dv = attᵀ·dy
        datt = torch.matmul(dy, v.transpose(-2, -1), out=self.scratch("datt", att.shape, att))
        torch.matmul(att.transpose(-2, -1), dy, out=dqkv[2])
        # att = softmax(scores) row-wise  →  dscores = att ⊙ (datt − Σ_j datt⊙att)
        # mask: a masked score is the constant −∞, so its gradient is 0 — and att = 0 there gives exactly that
        dscores = datt.mul_(att)
        dscores.sub_(torch.mul(att, dscores.sum(-1, keepdim=True), out=self.scratch("tmp", att.shape, att)))
        # scores = q·kᵀ/√D  →  dq = dscores·k/√D, dk = dscoresᵀ·q/√D (the 1/√D rides in the matmuls)
        s, n = 1.0 / math.sqrt(D), B * H
        ds3, (q3, k3) = dscores.view(n, T, T), (t.view(n, T, D) for t in (q, k))
        torch.baddbmm(dqkv[0].view(n, T, D), ds3, k3, beta=0.0, alpha=s, out=dqkv[0].view(n, T, D))
        torch.baddbmm(dqkv[1].view(n, T, D), ds3.transpose(1, 2), q3, beta=0.0, alpha=s, out=dqkv[1].view(n, T, D))
        # undo the split: (3, B, H, T, D) → (B, T, 3, H, D) = (B, T, 3C), the layout of qkv's output
        dqkv_t = self.scratch("dqkv_t", (B, T, 3, H, D), dout).copy_(dqkv.permute(1, 3, 0, 2, 4))
        return self.qkv.backward(dqkv_t.view(B, T, 3 * H * D))

    def extra_repr(self) -> str:
        return f"n_head={self.n_head}"
