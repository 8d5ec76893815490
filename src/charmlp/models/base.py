"""What a model file gives the registry (`ModelSpec`), and what tanh stacks (MLP, WaveNet) have in
common: their configuration fields and their hidden block.

Nothing here imports torch: the CLI builds its flags from the configurations, so `charmlp train
--help` starts without it. The model itself is `network.LanguageModel`, built from a spec.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .. import nn
from ..config import ModelConfig, check_range
from ..errors import CharmlpError, flag

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel

MAX_PARAMS = 1 << 28  # 1 GiB of float32 weights; gradients and optimizer state come on top


@dataclass
class TanhStackConfig(ModelConfig):
    """Models built of Embedding → … [Linear → BatchNorm1d → tanh] … → Linear (MLP, WaveNet)."""

    renamed: ClassVar[dict[str, str]] = {"tanh_gain": "init_gain", "out_scale": "init_out_scale"}
    n_embd: int = field(default=10, metadata={"help": "embedding size"})
    n_hidden: int = field(default=200, metadata={"help": "hidden units per layer"})
    batchnorm: bool = field(default=True, metadata={"help": "hidden blocks with BatchNorm1d (Linear → BatchNorm → tanh)"})
    init_gain: float = field(default=5 / 3, metadata={
        "help": "Kaiming gain of the hidden tanh layers: weights ~ N(0,1)·G/√fan_in (5/3 for tanh; √fan_in "
                "gives N(0,1))"})
    init_out_scale: float = field(default=0.1, metadata={
        "help": "output weights ~ N(0,1)·S/√fan_in (0.1: a near-uniform first guess)"})
    bn_momentum: float = field(default=0.1, metadata={"help": "BatchNorm running-statistics momentum"})
    bn_eps: float = field(default=1e-5, metadata={"help": "BatchNorm ε"})

    def validate(self) -> None:
        super().validate()
        check_range("--n-embd", self.n_embd, 1, 4096)
        check_range("--n-hidden", self.n_hidden, 1, 65536)
        for name, opt in (("init_gain", "--init-gain"), ("init_out_scale", "--init-out-scale")):  # init scales
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 1000):
                raise CharmlpError(f"{opt} must be a number between 0 and 1000, got {v}")
        if not 0 <= self.bn_momentum <= 1:
            raise CharmlpError(f"--bn-momentum must be between 0 and 1, got {self.bn_momentum}")
        if not (math.isfinite(self.bn_eps) and 0 < self.bn_eps <= 1):
            raise CharmlpError(f"--bn-eps must be a number in (0, 1], got {self.bn_eps}")


MAX_MEMBERS = 16


def members_field() -> Any:
    """The `members` field of the models that can train as an ensemble (`--members M`)."""
    return field(default=1, metadata={
        "help": "train M copies side by side, each on its own share of every batch, and predict with "
                "the mean of their probabilities (an ensemble; batch size is the M shares together)"})


def check_members_batch(batch_size: int, members: int) -> None:
    """A user error unless a batch of `batch_size` rows gives each of `members` ensemble members a share."""
    if batch_size < members:
        raise CharmlpError(f"{flag('--batch-size', batch_size)} cannot be shared among {flag('--members', members)}; "
                           f"use a batch of at least {members}")


def tanh_block(fan_in: int, cfg: TanhStackConfig) -> list[nn.Layer]:
    """Linear → BatchNorm1d → Tanh (Linear → Tanh without BatchNorm). A Linear right before
    BatchNorm needs no bias: BatchNorm subtracts the mean anyway."""
    layers: list[nn.Layer] = [nn.Linear(fan_in, cfg.n_hidden, bias=not cfg.batchnorm)]
    if cfg.batchnorm:
        layers.append(nn.BatchNorm1d(cfg.n_hidden, eps=cfg.bn_eps, momentum=cfg.bn_momentum))
    return [*layers, nn.Tanh()]


class Stepper(Protocol):
    """A causal model advanced one position at a time (eval mode, under no-grad): `start()` is the
    state of the empty prefix, one row (1, S); `step(states, ids)` reads the next id of N prefixes
    whose states are the rows of `states` (N, S) and returns their new states (N, S) and the
    logits (N, V) of the id after."""

    def start(self) -> torch.Tensor: ...

    def step(self, states: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class ModelSpec:
    """A model family as the commands see it: its name, configuration, layers and presets.

    `layers(cfg)` returns the model's layer list; `LanguageModel(cfg)` runs them in a `Sequential`
    (state-dict keys `layers.layers.0.weight`, …). The optional hooks replace `LanguageModel`'s
    defaults, each called with the built model:

    - `init_weights(model, generator)`: initialise from `generator`, under `torch.no_grad()`
      (default: `network.init_tanh_stack`, the lectures' init);
    - `eval_forward(model)`: the eval-mode forward of evaluation and sampling (default: the model);
    - `stepper(model)`: a `Stepper`, for a model that reads an item one position at a time from a
      state (the recurrent ones): evaluation then computes each distinct prefix of the split once;
    - `after_build(model)`: once the layers exist (the transformer shares backward scratch).

    `presets` maps a preset name to overrides of `TrainConfig` fields, plus the model's own
    fields under the key "model". Every model has `seed` (the lectures' setup where there is
    one), `quick` (a demo of a few seconds) and `fast`.

    `fit`, when set, is a closed-form fit that training offers the freshly built model and its
    training split before any step: `fit(model, X, Y)` returns True when it has fitted the
    model (training then takes no gradient steps), False to train as usual.

    The functions import torch when called, so the registry of specs stays torch-free.
    """

    name: str
    config: type[ModelConfig]
    layers: Callable[[Any], list[nn.Layer]]  # (its config) → the layer list
    presets: dict[str, dict]
    about: str  # one line for --help
    fit: Callable[[LanguageModel, torch.Tensor, torch.Tensor], bool] | None = None
    init_weights: Callable[[LanguageModel, torch.Generator], None] | None = None
    eval_forward: Callable[[LanguageModel], Callable[[torch.Tensor], torch.Tensor]] | None = None
    stepper: Callable[[LanguageModel], Stepper] | None = None
    after_build: Callable[[LanguageModel], None] | None = None
