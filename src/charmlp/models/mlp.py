"""The character-level MLP language model (Bengio et al. 2003, as in the makemore lectures).

ids (B, block) → Embedding C → Flatten → [Linear → BatchNorm1d → Tanh] × n_layer → Linear → logits (B, V)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from .. import nn
from ..config import check_range
from .base import ModelSpec, TanhStackConfig, tanh_block

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel


@dataclass
class MLPConfig(TanhStackConfig):
    """Shape and initialisation of the MLP language model."""

    kind = "mlp"
    renamed: ClassVar[dict[str, str]] = {**TanhStackConfig.renamed, "n_layers": "n_layer"}
    n_layer: int = field(default=1, metadata={"help": "hidden Linear → BatchNorm1d → tanh blocks"})

    def validate(self) -> None:
        super().validate()
        check_range("--n-layer", self.n_layer, 0, 64)

    def floats_per_example(self) -> int:
        return 2 * self.block_size * self.n_embd + 4 * self.n_layer * self.n_hidden + 4 * self.vocab_size


def mlp_layers(cfg: MLPConfig) -> list[nn.Layer]:
    """The lectures' MLP as a list of hand-differentiable layers."""
    layers: list[nn.Layer] = [nn.Embedding(cfg.vocab_size, cfg.n_embd), nn.Flatten()]
    fan_in = cfg.block_size * cfg.n_embd
    for _ in range(cfg.n_layer):
        layers += tanh_block(fan_in, cfg)
        fan_in = cfg.n_hidden
    layers.append(nn.Linear(fan_in, cfg.vocab_size, bias=True))
    return layers


def folded_eval_forward(model: LanguageModel) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's eval-mode forward with every BatchNorm folded into the Linear before it.

    In eval mode BatchNorm is affine: γ·(x@W + b − μ)·rstd + β = x@(W·a) + ((b − μ)·a + β) with
    a = γ·rstd, rstd = 1/√(σ² + ε). Each hidden block becomes one `addmm` and a tanh, which
    saves the BatchNorm passes over every sampled row. Unknown layer stacks use `model` itself.
    """
    import numpy as np
    import torch

    layers = list(model.layers)
    if not (isinstance(layers[0], nn.Embedding) and isinstance(layers[1], nn.Flatten)):
        return model
    C, mats, i = layers[0].weight, [], 2
    while i < len(layers):
        lin = layers[i]
        if not isinstance(lin, nn.Linear):
            return model
        W = lin.weight
        b = lin.bias if lin.bias is not None else torch.zeros(W.shape[1], device=W.device, dtype=W.dtype)
        i += 1
        if i < len(layers) and isinstance(layers[i], nn.BatchNorm1d):
            bn = layers[i]
            a = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            W, b = W * a, (b - bn.running_mean) * a + bn.bias
            i += 1
        act = i < len(layers) and isinstance(layers[i], nn.Tanh)
        if i < len(layers) and not act:
            return model
        i += act
        mats.append((W, b, act))

    # First layer as a table: C[x_t] @ W_t summed over t = Σ_t P[t, x_t] with P[t] = C @ W_t
    # (W_t: the rows of W that multiply position t). One embedding_bag per step replaces the
    # (n, T·E) @ (T·E, H) matmul; worth it when there are more rows than table entries.
    W0, b0, act0 = mats[0]
    T, (V, E) = W0.shape[0] // C.shape[1], C.shape
    P = torch.einsum("ve,teh->tvh", C, W0.reshape(T, E, -1))
    P[0] += b0  # each row sums exactly one entry of P[0]: the bias rides along
    P = P.reshape(T * V, -1)
    offsets = torch.arange(T, device=C.device) * V

    def forward(idx: torch.Tensor) -> torch.Tensor:
        if len(idx) >= T * V:
            h = torch.nn.functional.embedding_bag(idx.long() + offsets, P, mode="sum")  # includes b0
            if act0 and h.device.type == "cpu":
                np.tanh(h.numpy(), out=h.numpy())
            elif act0:
                h = torch.tanh(h)
            rest = mats[1:]
        else:
            h, rest = C[idx.long()].reshape(len(idx), -1), mats
        for W, b, act in rest:
            h = torch.addmm(b, h, W)  # h @ W + b
            if act and h.device.type == "cpu":  # NumPy's float32 tanh is ~10× faster than torch's on CPU
                np.tanh(h.numpy(), out=h.numpy())
            elif act:
                h = torch.tanh(h)
        return h

    return forward


SPEC = ModelSpec(
    name="mlp",
    config=MLPConfig,
    layers=mlp_layers,
    eval_forward=folded_eval_forward,
    about="the lectures' MLP: context → embeddings → [Linear → BatchNorm → tanh] × n_layer → Linear",
    presets={
        # the lectures' exact setup: batch 32, 200k steps, lr 0.1 → 0.01 at half way
        "seed": {},
        # the demo: a short run that already gives name-like samples
        "quick": {"steps": 10000, "batch_size": 64, "lr": 0.1, "lr_final": 0.01},
        # the lectures' val loss (≤ 2.11 on names) in a small fraction of their time, same model and
        # split (measured with benchmarks/run.py; README "Performance"). AdamW makes far more progress
        # per example than plain SGD: ~2.6M examples here vs the lectures' 6.4M. On the compiled step
        # a step costs the same per example at batch 192, 256 and 384 (1.35–1.38 µs each, measured
        # interleaved), so the fewest examples win. Cosine from 5e-3 to 5e-5; BatchNorm calibrated
        # over the train split. Measured on names, seed 2147483647 (batch × steps @ lr → val):
        # 256 × 10000 @ 5e-3 → 2.1090; 384 × 7000 @ 5e-3 → 2.1073 (5 % more examples); 192 × 14000
        # @ 4e-3 → 2.1080; 128 × 22000 @ 3e-3 → 2.1093 (10 % more); over the line: 256 × 9000 @ 6e-3
        # 2.1163, 192 × 12000 @ 5e-3 2.1155, 128 × 16000–20000 @ 4e-3 2.1205–2.1163, 64 × 30000 2.1257.
        "fast": {"steps": 10000, "batch_size": 256, "optimizer": "adamw", "lr": 0.005, "lr_final": 0.00005,
                 "schedule": "cosine"},
        # the best MLP within the 10-minute race, by val on names (AdamW cosine 3e-3, batch 256, wd 0.05;
        # context 8 × embedding → hidden, one block): 24 → 500, 30000 steps: val 1.9910 in 61 s;
        # 16 → 300, 20000: 1.9988; context 10, 16 → 300, 40000: 1.9947; two blocks of 400: 2.0331
        # (over-fits, train 1.61); wd 0.5 on two blocks of 400: 2.1231 (decay fights BatchNorm).
        "best": {"steps": 30000, "batch_size": 256, "optimizer": "adamw", "lr": 0.003, "lr_final": 0.00003,
                 "schedule": "cosine", "weight_decay": 0.05, "model": {"block_size": 8, "n_embd": 24, "n_hidden": 500}},
    },
)
