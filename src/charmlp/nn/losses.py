"""Cross-entropy: forward, and the fused backward the manual engine uses.

Window models give logits (B, V) and one target per row. Whole-item models give logits
(B, T, V) and targets (B, T) where −1 marks padding: those positions are ignored, and the mean
runs over the real targets, so both measure the same per-character loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -1  # target of a padding position
COUNT_ROWS = 1 << 16  # rows of targets counted at a time by `row_targets`


def row_targets(Y: torch.Tensor) -> torch.Tensor:
    """Each whole-item row's targets ≠ −1 (int64), `COUNT_ROWS` rows at a time: torch sums a mask
    through an int64 copy of it (8 bytes a position: 2 GB for 8·10⁶ rows of 31)."""
    out = torch.empty(len(Y), dtype=torch.int64, device=Y.device)
    for i in range(0, len(Y), COUNT_ROWS):
        out[i : i + COUNT_ROWS] = (Y[i : i + COUNT_ROWS] != IGNORE).sum(1)
    return out


def count_targets(Y: torch.Tensor) -> int:
    """The targets ≠ −1 of `Y` (a count of the mask, no int64 copy of it)."""
    return int(torch.count_nonzero(Y != IGNORE))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of `targets` under softmax(`logits`), over targets ≠ −1."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets.long())
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long(), ignore_index=IGNORE)


# L = −(1/n) Σ_i log softmax(logits_i)[y_i]  →  dlogits = (softmax(logits) − onehot(y)) / n
# (n: the real targets; rows of ignored targets get 0)
def cross_entropy_backward(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """dL/dlogits of the mean cross-entropy, in one fused expression."""
    if logits.dim() == 2:
        n = logits.shape[0]
        dlogits = torch.softmax(logits, dim=1)
        dlogits[torch.arange(n, device=logits.device), targets.long()] -= 1.0
        return dlogits / n
    flat, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1).long()
    real = t != IGNORE  # a mask, not the rows' indices: finding those would make a GPU wait for the count
    dlogits = torch.softmax(flat, dim=1)
    minus_one = torch.full((len(t), 1), -1.0, dtype=flat.dtype, device=flat.device)
    dlogits.scatter_add_(1, t.clamp_min(0)[:, None], minus_one)  # − onehot(y), one kernel (indexing takes three)
    return (dlogits.masked_fill_(~real[:, None], 0.0) / real.sum()).reshape(logits.shape)
