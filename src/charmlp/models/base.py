"""What the models have in common: a `Sequential` of hand-differentiable layers, the lectures'
initialisation, and the configuration fields of tanh stacks.

A model maps ids (B, block_size) to logits (B, vocab_size). `forward` serves both engines;
`backward(dlogits)` is the hand-written backward that fills every parameter's `.grad`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import ModelConfig, check_range
from ..errors import CharmlpError
from ..nn import BatchNorm1d, Embedding, Layer, Linear, Sequential, Tanh

MAX_PARAMS = 1 << 28  # 1 GiB of float32 weights; gradients and optimizer state come on top


@dataclass
class TanhStackConfig(ModelConfig):
    """Models built of Embedding → … [Linear → BatchNorm1d → tanh] … → Linear (MLP, WaveNet)."""

    n_embd: int = field(default=10, metadata={"help": "embedding size"})
    n_hidden: int = field(default=200, metadata={"help": "hidden units per layer"})
    batchnorm: bool = field(default=True, metadata={"help": "hidden blocks with BatchNorm1d (Linear → BatchNorm → tanh)"})
    tanh_gain: float = field(default=5 / 3, metadata={
        "help": "hidden weights ~ N(0,1)·G/√fan_in (5/3: Kaiming for tanh; √fan_in gives N(0,1))"})
    out_scale: float = field(default=0.1, metadata={"help": "output weights ~ N(0,1)·S/√fan_in (0.1: a near-uniform first guess)"})
    bn_momentum: float = field(default=0.1, metadata={"help": "BatchNorm running-statistics momentum"})
    bn_eps: float = field(default=1e-5, metadata={"help": "BatchNorm ε"})

    def validate(self) -> None:
        super().validate()
        check_range("--n-embd", self.n_embd, 1, 4096)
        check_range("--n-hidden", self.n_hidden, 1, 65536)
        for name, flag in (("tanh_gain", "--tanh-gain"), ("out_scale", "--out-scale")):  # init scales
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 1000):
                raise CharmlpError(f"{flag} must be a number between 0 and 1000, got {v}")
        if not 0 <= self.bn_momentum <= 1:
            raise CharmlpError(f"--bn-momentum must be between 0 and 1, got {self.bn_momentum}")
        if not (math.isfinite(self.bn_eps) and 0 < self.bn_eps <= 1):
            raise CharmlpError(f"--bn-eps must be a number in (0, 1], got {self.bn_eps}")


def tanh_block(fan_in: int, cfg: TanhStackConfig) -> list[Layer]:
    """Linear → BatchNorm1d → Tanh (Linear → Tanh without BatchNorm). A Linear right before
    BatchNorm needs no bias: BatchNorm subtracts the mean anyway."""
    layers: list[Layer] = [Linear(fan_in, cfg.n_hidden, bias=not cfg.batchnorm)]
    if cfg.batchnorm:
        layers.append(BatchNorm1d(cfg.n_hidden, eps=cfg.bn_eps, momentum=cfg.bn_momentum))
    return [*layers, Tanh()]


class LanguageModel(nn.Module):
    """A language model as a `Sequential` of layers with hand-written backward.

    Subclasses set `config_class` and build their layer list in `layers_for(cfg)`.
    """

    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = Sequential(*self.layers_for(cfg))

    @staticmethod
    def layers_for(cfg: ModelConfig) -> list[Layer]:
        raise NotImplementedError

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.layers(idx)

    def backward(self, dlogits: torch.Tensor) -> None:
        """Hand-written backward from dL/dlogits; fills every parameter's `.grad`."""
        self.layers.backward(dlogits)

    def batchnorms(self) -> list[BatchNorm1d]:
        return [m for m in self.layers if isinstance(m, BatchNorm1d)]

    def eval_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The eval-mode forward used by evaluation and sampling (a model may fuse it)."""
        return self

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Initialise from `generator` (on the CPU, so results do not depend on the device).

        C ~ N(0, 1); hidden W ~ N(0, 1)·gain/√fan_in (Kaiming, gain 5/3 for tanh); output W
        scaled by `out_scale` and biases 0, so the untrained model predicts nearly uniformly and
        its loss is ≈ ln(vocab); BatchNorm γ = 1, β = 0.
        """
        cfg = self.cfg
        linears = [m for m in self.layers if isinstance(m, Linear)]
        for m in self.layers:
            if isinstance(m, Embedding):
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
            elif isinstance(m, Linear):
                fan_in = m.weight.shape[0]
                gain = cfg.out_scale if m is linears[-1] else cfg.tanh_gain
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, BatchNorm1d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.running_mean.zero_()
                m.running_var.fill_(1.0)


def count_params(model_class: type[LanguageModel], cfg: ModelConfig) -> int:
    """Parameters of the model `cfg` describes, without allocating it (built on the meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in model_class(cfg).parameters())


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelSpec:
    """A model family as the commands see it: its name, configuration, class and presets.

    `presets` maps a preset name to overrides of `TrainConfig` fields, plus the model's own
    fields under the key "model". Every model has `seed` (the lectures' setup where there is
    one), `quick` (a demo of a few seconds) and `fast`.

    `fit`, when set, is a closed-form fit that training offers the freshly built model and its
    training split before any step: `fit(model, X, Y)` returns True when it has fitted the
    model (training then takes no gradient steps), False to train as usual.
    """

    name: str
    config: type[ModelConfig]
    model: type[LanguageModel]
    presets: dict[str, dict]
    about: str  # one line for --help
    fit: Callable[[LanguageModel, torch.Tensor, torch.Tensor], bool] | None = None
