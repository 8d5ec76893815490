"""The model of every family: a `Sequential` of hand-differentiable layers, built from the spec
its configuration names.

A model maps ids (B, block_size) to logits (B, vocab_size) (sequence models: (B, T, vocab_size)).
`forward` serves both engines; `backward(dlogits)` is the hand-written backward that fills every
parameter's `.grad`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from ..config import ModelConfig
from ..nn import BatchNorm1d, Dropout, Embedding, Ensemble, Linear, Sequential, mixture
from .base import ModelSpec, Stepper
from .registry import spec_of


class LanguageModel(torch.nn.Module):
    """The layers `spec.layers(cfg)` returns, run in order; the spec's hooks, where set, replace
    the default initialisation and eval-mode forward.

    With `cfg.members` K > 1 (the models that offer `--members`), the one layer is an `Ensemble`
    of K such models, each built, initialised and evaluated by its own spec hooks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if self.members > 1:
            one = dataclasses.replace(cfg, members=1)
            self.layers = Sequential(Ensemble([LanguageModel(one) for _ in range(self.members)]))
            return
        self.layers = Sequential(*self.spec.layers(cfg))
        if self.spec.after_build is not None:
            self.spec.after_build(self)

    @property
    def members(self) -> int:
        """Models in the ensemble (1: not an ensemble)."""
        return getattr(self.cfg, "members", 1)

    @property
    def spec(self) -> ModelSpec:
        return spec_of(self.cfg)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.layers(idx)

    def backward(self, dlogits: torch.Tensor) -> None:
        """Hand-written backward from dL/dlogits; fills every parameter's `.grad`."""
        self.layers.backward(dlogits)

    def batchnorms(self) -> list[BatchNorm1d]:
        return [m for m in self.layers if isinstance(m, BatchNorm1d)]

    def eval_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The eval-mode forward used by evaluation and sampling (the MLP's folds its BatchNorms)."""
        hook = self.spec.eval_forward
        return self if hook is None or self.members > 1 else hook(self)

    def inference_forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward of evaluation: `eval_forward`'s function, with no state kept for a backward
        (`Layer.infer`: a recurrent layer keeps no per-step caches). Call it in eval mode, under no-grad."""
        hook = self.spec.eval_forward
        return self.layers.infer if hook is None or self.members > 1 else hook(self)

    def stepper(self) -> Stepper | None:
        """The model one position at a time (`Stepper`, built from the current weights), where its
        spec offers one (an ensemble: where every member's does); else None."""
        if self.members > 1:
            steppers = [m.stepper() for m in self.layers[0].members]
            return None if any(s is None for s in steppers) else EnsembleStepper(steppers)
        return None if self.spec.stepper is None else self.spec.stepper(self)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Initialise from `generator` (on the CPU, so results do not depend on the device): the
        spec's `init_weights`, else `init_tanh_stack`; an ensemble's members one after another."""
        if self.members > 1:
            for member in self.layers[0].members:
                member.init_weights(generator)
            return
        (self.spec.init_weights or init_tanh_stack)(self, generator)
        for m in self.modules():  # each dropout's own stream (drawn only by models that have one)
            if isinstance(m, Dropout):
                m.seed = int(torch.randint(0, 1 << 62, (1,), generator=generator))


class EnsembleStepper:
    """K members' steppers as one: the state is theirs side by side (N, ΣS_k), the logits the
    ensemble's eval output, log((1/K) Σ_k softmax(z_k)) = logsumexp_k(log_softmax(z_k)) − log K."""

    def __init__(self, members: list[Stepper]) -> None:
        self.members = members
        self.widths: list[int] = []

    def start(self) -> torch.Tensor:
        starts = [m.start() for m in self.members]
        self.widths = [s.shape[1] for s in starts]
        return torch.cat(starts, 1)

    def step(self, states: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new, zs = [], []
        for m, s in zip(self.members, torch.split(states, self.widths, 1), strict=True):
            s2, z = m.step(s, ids)
            new.append(s2)
            zs.append(z)
        return torch.cat(new, 1), mixture(zs)[1]


def init_tanh_stack(model: LanguageModel, generator: torch.Generator) -> None:
    """The lectures' initialisation: C ~ N(0, 1); hidden W ~ N(0, 1)·gain/√fan_in (Kaiming, gain
    5/3 for tanh); output W scaled by `init_out_scale` and biases 0, so the untrained model predicts
    nearly uniformly and its loss is ≈ ln(vocab); BatchNorm γ = 1, β = 0."""
    cfg = model.cfg
    linears = [m for m in model.layers if isinstance(m, Linear)]
    for m in model.layers:
        if isinstance(m, Embedding):
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator))
        elif isinstance(m, Linear):
            fan_in = m.weight.shape[0]
            gain = cfg.init_out_scale if m is linears[-1] else cfg.init_gain
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * gain / math.sqrt(fan_in))
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, BatchNorm1d):
            m.weight.fill_(1.0)
            m.bias.zero_()
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
