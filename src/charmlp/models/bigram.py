"""The bigram model: a (V, V) table of logits, one row per previous character.

ids (B, block) → BigramTable (reads the last id) → logits (B, V)

A window model with a context of one character (block size 1; a longer window works too, the
table reads only its last character), so `charmlp eval` counts exactly what the MLP's windows
count — every character and the end token once — and sampling is a lookup per step.

Two fits: gradient steps like any model (`--fit gradient`, the default), or the closed form
(`--fit counts`): the maximum-likelihood table with additive smoothing α,
W[i, j] = log((N[i, j] + α) / Σ_k (N[i, k] + α)), N[i, j] = how often j follows i in the
training split. Gradient descent on the mean cross-entropy approaches that table (α → 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import nn
from ..config import ModelConfig
from ..errors import CharmlpError
from .base import ModelSpec

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel

FITS = ("gradient", "counts")


@dataclass
class BigramConfig(ModelConfig):
    """The table's fit; its size comes from the vocabulary."""

    kind = "bigram"
    block_size: int = 1
    fit: str = field(default="gradient", metadata={
        "help": "gradient (train the table by gradient steps) or counts (the closed-form maximum-likelihood "
                "table of the training split's pair counts, with --smoothing; no steps)",
        "choices": FITS})
    smoothing: float = field(default=1.0, metadata={"help": "additive smoothing α of --fit counts (pseudo-count per pair)"})

    def validate(self) -> None:
        super().validate()
        if self.fit not in FITS:
            raise CharmlpError(f"unknown fit {self.fit!r}; choose one of {', '.join(FITS)}")
        if not (math.isfinite(self.smoothing) and 0 < self.smoothing <= 1e6):
            raise CharmlpError(f"--smoothing must be a number in (0, 1000000] (0 would give log 0 for unseen pairs), got {self.smoothing}")

    def floats_per_example(self) -> int:
        return self.block_size + 4 * self.vocab_size


def bigram_layers(cfg: BigramConfig) -> list[nn.Layer]:
    """A single `BigramTable` layer."""
    return [nn.BigramTable(cfg.vocab_size)]


def init_zero(model: LanguageModel, generator: torch.Generator) -> None:
    """W = 0: every row uniform, the untrained loss exactly ln V (the generator is unused)."""
    model.layers[0].weight.zero_()


def count_table(X: torch.Tensor, Y: torch.Tensor, vocab_size: int, smoothing: float) -> torch.Tensor:
    """log((N + α) / rowsum(N + α)) in float64, N[i, j] = #examples whose last context id is i and target j."""
    import torch

    N = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    N.index_put_((X[:, -1].long().cpu(), Y.long().cpu()), torch.ones(len(Y), dtype=torch.float64), accumulate=True)
    P = N + smoothing
    return (P / P.sum(1, keepdim=True)).log()


def fit_counts(model: LanguageModel, X: torch.Tensor, Y: torch.Tensor) -> bool:
    """`--fit counts`: set the table to the smoothed maximum-likelihood table of (X, Y) and
    report True (no gradient steps to take); `--fit gradient`: leave it, report False."""
    import torch

    cfg = model.cfg
    if cfg.fit != "counts":
        return False
    W = model.layers[0].weight
    with torch.no_grad():
        W.copy_(count_table(X, Y, cfg.vocab_size, cfg.smoothing).to(W))
    return True


SPEC = ModelSpec(
    name="bigram",
    config=BigramConfig,
    layers=bigram_layers,
    init_weights=init_zero,
    about="a (V, V) table of next-character logits, trained by gradient steps or fitted from pair counts (--fit counts)",
    fit=fit_counts,
    # measured on names (README "Model zoo: bigram, rnn, gru"); none depends on the data's size or alphabet
    presets={
        # the lecture's gradient version of the table: plain SGD at lr 50 on large batches (val 2.4628)
        "seed": {"steps": 200, "batch_size": 4096, "optimizer": "sgd", "lr": 50.0, "lr_final": 50.0, "schedule": "constant"},
        # a demo of a second or two (val 2.4555)
        "quick": {"steps": 300, "batch_size": 1024, "optimizer": "adamw", "lr": 0.3, "lr_final": 0.01, "schedule": "cosine"},
        # gradient steps that reach the count fit to within 0.0005 (val 2.4535)
        "fast": {"steps": 1000, "batch_size": 4096, "optimizer": "adamw", "lr": 0.3, "lr_final": 0.003, "schedule": "cosine"},
        # the best table there is: the closed form; α by val loss over 0.001 … 3 (0.3: val 2.4530; 1: 2.4533)
        "best": {"model": {"fit": "counts", "smoothing": 0.3}},
    },
)
