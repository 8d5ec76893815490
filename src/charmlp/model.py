"""The character-level MLP language model (Bengio et al. 2003, as in the makemore lectures).

ids (B, block) → Embedding C → Flatten → [Linear → BatchNorm1d → Tanh] × n_layers → Linear → logits (B, V)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
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


def eval_forward(model: CharMLP) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's eval-mode forward with every BatchNorm folded into the Linear before it.

    In eval mode BatchNorm is affine: γ·(x@W + b − μ)·rstd + β = x@(W·a) + ((b − μ)·a + β) with
    a = γ·rstd, rstd = 1/√(σ² + ε). Each hidden block becomes one `addmm` and a tanh, which
    saves the BatchNorm passes over every sampled row. Unknown layer stacks use `model` itself.
    """
    layers = list(model.layers)
    if not (isinstance(layers[0], Embedding) and isinstance(layers[1], Flatten)):
        return model
    C, mats, i = layers[0].weight, [], 2
    while i < len(layers):
        lin = layers[i]
        if not isinstance(lin, Linear):
            return model
        W = lin.weight
        b = lin.bias if lin.bias is not None else torch.zeros(W.shape[1], device=W.device, dtype=W.dtype)
        i += 1
        if i < len(layers) and isinstance(layers[i], BatchNorm1d):
            bn = layers[i]
            a = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            W, b = W * a, (b - bn.running_mean) * a + bn.bias
            i += 1
        act = i < len(layers) and isinstance(layers[i], Tanh)
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
