"""The hierarchical "WaveNet" model of the makemore lectures (after van den Oord et al. 2016).

ids (B, block) → Embedding C (B, T, E) → per level: FlattenConsecutive(f) → Linear (no bias) →
BatchNorm1d → Tanh, fusing f neighbours at a time: (B, T, C) → (B, T/f, H) → … → (B, H) →
Linear → logits (B, V). With block 8 and f = 2 there are three levels (8 → 4 → 2 → 1 positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .. import nn
from ..config import check_range
from ..errors import CharmlpError, flag
from .base import ModelSpec, TanhStackConfig, tanh_block


@dataclass
class WaveNetConfig(TanhStackConfig):
    """Shape and initialisation of the hierarchical model (the lecture's: 76,579 parameters)."""

    kind = "wavenet"
    renamed: ClassVar[dict[str, str]] = {**TanhStackConfig.renamed, "n_levels": "n_layer"}
    block_size: int = 8
    n_embd: int = field(default=24, metadata={"help": "embedding size"})
    n_hidden: int = field(default=128, metadata={"help": "hidden units per layer"})
    fuse: int = field(default=2, metadata={"help": "neighbours fused per level"})
    n_layer: int = field(default=0, metadata={
        "help": "levels of FlattenConsecutive → Linear → BatchNorm1d → tanh (0: derived from the block size, "
                "log_fuse(block size); fewer: the last level fuses what is left)"})

    def validate(self) -> None:
        super().validate()
        check_range("--fuse", self.fuse, 2, 1024)
        check_range("--n-layer", self.n_layer, 0, 64)
        self.factors()

    def factors(self) -> list[int]:
        """Neighbours fused at each level; their product is the block size."""
        T, f, out = self.block_size, self.fuse, []
        while T > 1 and (self.n_layer == 0 or len(out) < self.n_layer - 1):
            if T % f:
                raise CharmlpError(
                    f"{flag('--block-size', self.block_size)} cannot be fused {f} at a time (it is not a power of {flag('--fuse', f)}); "
                    f"use a block size of {', '.join(str(f**k) for k in range(1, 5))}, … or set --n-layer"
                )
            out.append(f)
            T //= f
        if T > 1 or not out:
            out.append(T)  # the last level fuses every position still left
        return out

    def floats_per_example(self) -> int:
        T, n = self.block_size, 2 * self.block_size * self.n_embd + 4 * self.vocab_size
        for f in self.factors():
            T //= f
            n += 4 * T * self.n_hidden
        return n


def wavenet_layers(cfg: WaveNetConfig) -> list[nn.Layer]:
    """The hierarchical model as a list of hand-differentiable layers."""
    layers: list[nn.Layer] = [nn.Embedding(cfg.vocab_size, cfg.n_embd)]
    width = cfg.n_embd
    for f in cfg.factors():
        layers += [nn.FlattenConsecutive(f), *tanh_block(f * width, cfg)]
        width = cfg.n_hidden
    layers.append(nn.Linear(width, cfg.vocab_size, bias=True))
    return layers


SPEC = ModelSpec(
    name="wavenet",
    config=WaveNetConfig,
    layers=wavenet_layers,
    about="the lectures' hierarchical model: characters fused two at a time over log2(block) levels",
    presets={
        # the lecture's setup: SGD, batch 32, 200k steps, lr 0.1 → 0.01 at half way
        "seed": {},
        "quick": {"steps": 10000, "batch_size": 64, "lr": 0.1, "lr_final": 0.01},
        # val ≤ 2.00 on names in the least time, measured (manual engine): a step costs ~15 µs per
        # example at batch 256, 512 and 1024 alike (arithmetic-bound), so the fewest examples win.
        # AdamW needs ~2M (the lecture's SGD 6.4M); cosine from 5e-3. Batch × steps @ lr → val:
        # 256 × 8000 @ 5e-3 → 1.9964; 512 × 4000 @ 7e-3 → 1.9944; 1024 × 2000 @ 1e-2 → 1.9944;
        # 128 × 12000 @ 4e-3 → 1.9979; at the line: 256 × 7000 @ 5e-3 → 1.9983, @ 7e-3 → 1.9979;
        # over it: 256 × 6000 → 2.0017, 512 × 3000 @ 8e-3 → 2.0014. 8000 keeps a margin.
        "fast": {"steps": 8000, "batch_size": 256, "optimizer": "adamw", "lr": 0.005, "lr_final": 0.00005,
                 "schedule": "cosine"},
        # the best within the 10-minute race, by val on names: wider (n_embd 32, n_hidden 256),
        # AdamW cosine 3e-3, batch 256: 24000 steps with weight decay 0.1 → val 1.9663 in 288 s;
        # 16000 steps, wd 0.05 → 1.9697 in 190 s (train 1.70: more steps need the decay).
        "best": {"steps": 24000, "batch_size": 256, "optimizer": "adamw", "lr": 0.003, "lr_final": 0.00003,
                 "schedule": "cosine", "weight_decay": 0.1, "model": {"n_embd": 32, "n_hidden": 256}},
    },
)
