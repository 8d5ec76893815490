"""The character-level MLP language model (Bengio et al. 2003, as in the makemore lectures).

ids (B, block) → Embedding C → Flatten → [Linear → BatchNorm1d → Tanh] × n_layers → Linear → logits (B, V)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig
from .errors import CharmlpError
from .layers import BatchNorm1d, Embedding, Flatten, Layer, Linear, Sequential, Tanh


class CharMLP(nn.Module):
    """The language model: a `Sequential` of hand-differentiable layers."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[Layer] = [Embedding(cfg.vocab_size, cfg.n_embd), Flatten()]
        fan_in = cfg.block_size * cfg.n_embd
        for _ in range(cfg.n_layers):
            # a Linear right before BatchNorm needs no bias: BN subtracts the mean anyway
            layers.append(Linear(fan_in, cfg.n_hidden, bias=not cfg.batchnorm))
            if cfg.batchnorm:
                layers.append(BatchNorm1d(cfg.n_hidden, eps=cfg.bn_eps, momentum=cfg.bn_momentum))
            layers.append(Tanh())
            fan_in = cfg.n_hidden
        layers.append(Linear(fan_in, cfg.vocab_size, bias=True))
        self.layers = Sequential(*layers)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.layers(idx)

    def backward(self, dlogits: torch.Tensor) -> None:
        """Hand-written backward from dL/dlogits; fills every parameter's `.grad`."""
        self.layers.backward(dlogits)

    def batchnorms(self) -> list[BatchNorm1d]:
        return [m for m in self.layers if isinstance(m, BatchNorm1d)]

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Initialise from `generator` (on the CPU, so results do not depend on the device).

        C ~ N(0, 1); hidden W ~ N(0, 1)·gain/√fan_in (Kaiming, gain 5/3 for tanh); output W
        scaled by `out_scale` and output bias 0, so the untrained model predicts nearly
        uniformly and its loss is ≈ ln(vocab); BatchNorm γ = 1, β = 0.
        """
        cfg = self.cfg
        linears = [m for m in self.layers if isinstance(m, Linear)]
        for m in self.layers:
            if isinstance(m, Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
            elif isinstance(m, Linear):
                fan_in = m.weight.shape[0]
                last = m is linears[-1]
                gain = cfg.out_scale if last else cfg.tanh_gain
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, BatchNorm1d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise a user error for sizes that are zero, negative or absurd."""
    limits = {
        "vocab_size": (2, 1_114_112),
        "block_size": (1, 1024),
        "n_embd": (1, 4096),
        "n_hidden": (1, 65536),
        "n_layers": (0, 64),
    }
    flags = {"block_size": "--block-size", "n_embd": "--n-embd", "n_hidden": "--n-hidden", "n_layers": "--n-layers"}
    for name, (lo, hi) in limits.items():
        v = getattr(cfg, name)
        if not lo <= v <= hi:
            raise CharmlpError(f"{flags.get(name, name)} must be between {lo} and {hi}, got {v}")
    for name, flag in (("tanh_gain", "--tanh-gain"), ("out_scale", "--out-scale")):  # init scales
        v = getattr(cfg, name)
        if not (math.isfinite(v) and 0 <= v <= 1000):
            raise CharmlpError(f"{flag} must be a number between 0 and 1000, got {v}")
    n = count_params(cfg)
    if n > MAX_PARAMS:
        raise CharmlpError(
            f"this model would have {n:,} parameters ({4 * n / 2**30:.1f} GiB), more than the {MAX_PARAMS:,} "
            "charmlp allows; lower --n-hidden, --n-layers or --n-embd"
        )


MAX_PARAMS = 1 << 28  # 1 GiB of float32 weights; gradients and optimizer state come on top


def count_params(cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` describes, without building it."""
    n, fan_in = cfg.vocab_size * cfg.n_embd, cfg.block_size * cfg.n_embd
    for _ in range(cfg.n_layers):
        n += fan_in * cfg.n_hidden + (2 * cfg.n_hidden if cfg.batchnorm else cfg.n_hidden)
        fan_in = cfg.n_hidden
    return n + fan_in * cfg.vocab_size + cfg.vocab_size


def build_model(cfg: ModelConfig, generator: torch.Generator | None = None, seed: int | None = None) -> CharMLP:
    """Build and initialise a model; pass a `generator` (or a `seed`) for reproducibility."""
    validate_model_config(cfg)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    model = CharMLP(cfg)
    model.init_weights(generator)
    return model


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
