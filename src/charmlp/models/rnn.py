"""Recurrent language models (makemore's `rnn` and `gru`): one family, two cells.

ids (B, T) → Embedding C (B, T, E) → Recurrent(cell) (B, T, H) → Linear → logits (B, T, V)

A sequence model: row i of a batch is a whole item, [boundary, c1, …, cn, padding…], and the
logits at position t predict the character after inputs 0 … t (the recurrence is causal).
The hidden state starts from a learned vector h0; the backward through time is written out in
`nn/recurrent.py`. The two kinds share this file because they differ only in the cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import nn
from ..config import ModelConfig, check_range
from .base import MAX_MEMBERS, ModelSpec, members_field

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel


@dataclass
class RNNConfig(ModelConfig):
    """Shape of a recurrent model; `kind` picks the cell (rnn: Elman tanh cell, gru: gated)."""

    kind = "rnn"
    sequence = True
    block_size: int = 0  # positions: 0 = the data's longest item + 1
    n_embd: int = field(default=64, metadata={"help": "embedding size"})
    n_hidden: int = field(default=128, metadata={"help": "hidden units per layer"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability in training (0: none)"})
    members: int = members_field()

    def validate(self) -> None:
        super().validate()
        check_range("--n-embd", self.n_embd, 1, 4096)
        check_range("--n-hidden", self.n_hidden, 1, 16384)
        check_range("--dropout", self.dropout, 0, 0.9)
        check_range("--members", self.members, 1, MAX_MEMBERS)

    def floats_per_example(self) -> int:
        # per position: embedding and its gradient, the input projections and their gradients,
        # the cached step tensors (≤ 5 H-wide for the GRU), the hidden states, logits and their gradients
        gates = nn.CELLS[self.kind].gates
        # (an ensemble's eval: every member reads every row)
        return self.members * self.block_size * (2 * self.n_embd + (4 * gates + 7) * self.n_hidden + 4 * self.vocab_size)


@dataclass
class GRUConfig(RNNConfig):
    kind = "gru"


def recurrent_layers(cfg: RNNConfig) -> list[nn.Layer]:
    """Embedding → Recurrent(RNNCell or GRUCell) → Linear, over every position at once; with
    dropout, on the embeddings and on the hidden states the head reads."""
    cell = nn.CELLS[cfg.kind](cfg.n_embd, cfg.n_hidden)
    def drop() -> list[nn.Layer]:
        return [nn.Dropout(cfg.dropout)] if cfg.dropout else []

    return [nn.Embedding(cfg.vocab_size, cfg.n_embd), *drop(), nn.Recurrent(cell), *drop(),
            nn.Linear(cfg.n_hidden, cfg.vocab_size)]


def init_recurrent(model: LanguageModel, generator: torch.Generator) -> None:
    """C ~ N(0, 1); every cell weight ~ N(0, 1)/√(E + H), the fan-in of the concatenated
    [x, h] a cell reads (pre-activations then start with unit variance, tanh and σ in their
    slopes); biases and h0 = 0; head W ~ N(0, 1)·0.1/√H, b = 0, so the untrained model
    predicts nearly uniformly (loss ≈ ln V)."""
    import torch

    emb, rec, head = (m for m in model.layers if not isinstance(m, nn.Dropout))
    E, H = model.cfg.n_embd, model.cfg.n_hidden

    def randn(p: torch.Tensor, scale: float) -> None:
        p.copy_(torch.randn(p.shape, generator=generator) * scale)

    randn(emb.weight, 1.0)
    for name, p in rec.cell.named_parameters():
        if name == "b":
            p.zero_()
        else:
            randn(p, 1 / math.sqrt(E + H))
    rec.h0.zero_()
    randn(head.weight, 0.1 / math.sqrt(H))
    head.bias.zero_()


class RecurrentStepper:
    """The model one position at a time (`models.base.Stepper`), for evaluation (eval mode:
    dropout is the identity). The embedding and the cell's input projection fold into one table,
    x·Wx + b = C[id]·Wx + b = (C·Wx + b)[id] (V rows of gates·H): a gather per step instead of a
    matmul. A prefix's state is [h, h·Wh] (the tanh cell, which reads h only through h·Wh: h·Wh
    alone): its children's recurrent half, computed with its own logits in one gemm,
    h·[Wh | W_out] (one wide product instead of a narrow one for the head); the step keeps
    nothing for a backward (`Cell.infer_step_hw`)."""

    def __init__(self, model: LanguageModel) -> None:
        import torch

        emb, rec, head = (m for m in model.layers if not isinstance(m, nn.Dropout))
        self.cell = rec.cell
        self.table = torch.addmm(rec.cell.b, emb.weight, rec.cell.Wx)
        W = torch.cat([rec.cell.Wh, head.weight], 1)  # (H, Wh's columns + V)
        # zero columns up to a multiple of 16 (the gemm's tiles), so that each state row starts aligned
        self.W = torch.nn.functional.pad(W, (0, -W.shape[1] % 16))
        self.bias, self.vocab = head.bias, head.weight.shape[1]
        self.hw = rec.cell.Wh.shape[1]
        self.keep = rec.cell.hidden_size if rec.cell.reads_h else 0  # state columns that hold h
        self.h0 = rec.h0

    def start(self) -> torch.Tensor:
        buf = self._buffer(1, self.h0)
        if self.keep:
            buf[:, : self.keep] = self.h0
        return self._state(buf, self.h0[None])[0]

    def _buffer(self, n: int, like: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.empty(n, self.keep + self.W.shape[1], dtype=like.dtype, device=like.device)

    def _state(self, buf: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The states [h, h·Wh] (or h·Wh) and the logits h·W_out + b of prefixes whose hidden
        states are h (N, H), in buf (N, state width + V), whose h columns are already written."""
        k, hw = self.keep, self.hw
        buf[:, k:].addmm_(h, self.W, beta=0)  # [h·Wh | h·W_out] in one gemm (ldc = buf's width)
        return buf[:, : k + hw], buf[:, k + hw : k + hw + self.vocab].add_(self.bias)

    def step(self, states: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.keep
        xp = self.table.index_select(0, ids)  # (N, gates·H), ours to overwrite
        buf = self._buffer(len(ids), xp)
        h = self.cell.infer_step_hw(xp, states[:, k:], states[:, :k] if k else None, buf[:, :k] if k else xp)
        return self._state(buf, h)


# Presets, measured on names (README "Model zoo: bigram, rnn, gru"). None holds a name-specific
# constant: the context is the data's longest item + 1 and the vocabulary the data's own, and
# all but `seed` set a budget of positions (steps × batch × row length), not steps, so a file of
# longer items trains for fewer steps at about the same cost. On names (rows of 16) they resolve
# to the step counts of the comments below.
_ADAMW = {"optimizer": "adamw", "batch_size": 64, "lr": 0.005, "lr_final": 0.00005, "schedule": "cosine"}
RNN_PRESETS: dict[str, dict] = {
    # makemore.py's setup: n_embd 64, hidden 64, AdamW lr 5e-4 (constant), weight decay 0.01, batch 32
    # (it trains until stopped; 10 000 steps here)
    "seed": {"model": {"n_embd": 64, "n_hidden": 64}, "steps": 10000, "batch_size": 32, "optimizer": "adamw",
             "lr": 0.0005, "lr_final": 0.0005, "schedule": "constant", "weight_decay": 0.01},
    # a demo: already name-like samples
    "quick": {**_ADAMW, "positions": 800 * 64 * 16},
    # most of the way there: weight decay 0.1 (AdamW's decoupled decay) is what holds off overfitting
    # (gru, 12 000 steps: val 2.036 without it, 1.954 with 0.1, 1.970 with 0.3)
    "fast": {**_ADAMW, "positions": 4000 * 64 * 16, "weight_decay": 0.1},
}
GRU_PRESETS: dict[str, dict] = {
    **RNN_PRESETS,
    # what a `--budget T` run starts from (10 minutes unless T is given): budget.py's RULES plan the
    # steps from the data and the machine, and an ensemble of up to 4 with dropout 0.1 where each member
    # still sees the 30 epochs each member of the old constant `best` saw on names (one gru past 20
    # epochs: dropout 0.2)
    "budget": {**_ADAMW, "model": {"n_hidden": 192}, "weight_decay": 0.1, "budget": 600.0},
}
# `best` is `--budget 10m`: on names, calibrated beside two busy loops, it started over as the ensemble
# the old constant preset was (4 of hidden 192, dropout 0.1, each on 64 items of a batch of 256) and
# tested 1.8979 against that preset's 1.8978; on larger lists it trains one gru for the whole budget
# (docs/budget.md). The old preset, measured: one gru of 12 000 steps of 64, hidden 128 without dropout
# 1.957, with 0.1 1.951, 0.2 1.958; hidden 192 with 0.2 1.939; 4 of them with dropout 0.1: 1.898.
GRU_PRESETS["best"] = GRU_PRESETS["budget"]
# the tanh cell's step is ~2.6× cheaper than the GRU's: a wider state (256), more steps and more
# members fit in the time. Test on names: one rnn of hidden 256, 18 000 steps of 64: 1.957 (dropout
# 0.1: 1.957); an ensemble of 2 (batch 128): 1.923 in 140 s; of 6 (batch 384): 1.906 in 7.5 min
# (45 epochs a member; budget.py's rule for `--budget`: up to 6 members, no dropout).
RNN_PRESETS["best"] = {**_ADAMW, "model": {"n_hidden": 256, "members": 6}, "batch_size": 384,
                       "positions": 18000 * 384 * 16, "weight_decay": 0.1}
RNN_PRESETS["budget"] = {**_ADAMW, "model": {"n_hidden": 256}, "weight_decay": 0.1, "budget": 600.0}

RNN_SPEC = ModelSpec(
    name="rnn",
    config=RNNConfig,
    layers=recurrent_layers,
    init_weights=init_recurrent,
    stepper=RecurrentStepper,
    about="recurrent: Embedding → tanh RNN cell unrolled over the item (BPTT by hand) → Linear at every position",
    presets=RNN_PRESETS,
)

GRU_SPEC = ModelSpec(
    name="gru",
    config=GRUConfig,
    layers=recurrent_layers,
    init_weights=init_recurrent,
    stepper=RecurrentStepper,
    about="recurrent: Embedding → GRU cell (update/reset gates) unrolled over the item (BPTT by hand) → Linear at every position",
    presets=GRU_PRESETS,
)
