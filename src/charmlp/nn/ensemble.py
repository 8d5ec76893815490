"""An ensemble of K copies of a model: trained side by side, predicting with their mean probability."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .module import Layer


def mixture(zs: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Members' logits z_k → (ls, out): ls_k = log_softmax(z_k) stacked (K, …, V), and the mean of
    their probabilities as log-probabilities, out = log((1/K) Σ_k softmax(z_k)) = logsumexp_k(ls_k) − log K."""
    ls = torch.stack([torch.log_softmax(z, -1) for z in zs])
    return ls, torch.logsumexp(ls, 0) - math.log(len(ls))


class Ensemble(Layer):
    """K members, each a model (ids → logits) with its own backward.

    Training: the batch's rows are cut into K contiguous shares, member k reads share k, and the
    logits come back in the batch's row order. The loss over the batch is then the members' own
    losses added up (each weighted by its share of the targets), so each member trains exactly as
    if alone, on batches of its own — an ensemble of independent models, in one run.

    Eval: every member reads every row, and the ensemble predicts the mean of their
    probabilities, as log-probabilities (logits whose softmax is that mean):
        out = log((1/K) Σ_k softmax(z_k)) = logsumexp_k(log_softmax(z_k)) − log K.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        K = len(self.members)
        if self.training:
            if len(x) < K:
                raise ValueError(f"a batch of {len(x)} rows cannot feed {K} ensemble members; use a batch of at least {K}")
            self.shares = [len(s) for s in torch.tensor_split(x, K)]
            return torch.cat([m(s) for m, s in zip(self.members, torch.tensor_split(x, K), strict=True)])
        self.shares = None
        self.logp, self.out = mixture(m.eval_forward()(x) for m in self.members)  # logp: (K, …, V)
        return self.out

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """The eval output, each member through its inference forward (no backward follows)."""
        return mixture(m.inference_forward()(x) for m in self.members)[1]

    # training: each member's share of dL/dlogits goes to that member's backward (ids: no input gradient)
    # eval: out = log Σ_k e^(ls_k) − log K, ls_k = log_softmax(z_k)  →  d out/d ls_k = r_k = e^(ls_k − out)/K
    # (member k's responsibility, Σ_k r_k = 1); g_k = dout·r_k  →  dz_k = g_k − softmax(z_k)·Σ_v g_k
    def backward(self, dout: torch.Tensor) -> None:
        if self.shares is not None:
            for m, d in zip(self.members, torch.split(dout, self.shares), strict=True):
                m.backward(d)
            return None
        for m, ls in zip(self.members, self.logp, strict=True):
            g = dout * torch.exp(ls - self.out - math.log(len(self.members)))
            m.backward(g - torch.exp(ls) * g.sum(-1, keepdim=True))
        return None

    def extra_repr(self) -> str:
        return f"members={len(self.members)}"
