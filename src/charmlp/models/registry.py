"""Model name → its configuration, layers and presets; building a model from a configuration.

A new model is one file in this folder that defines a config dataclass (extending
`config.ModelConfig`), a function from that config to its layer list and a `SPEC` naming both
(and any hooks, see `ModelSpec`), plus its line below. Nothing here imports torch until a model
is built or counted.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..config import DEFAULT_MODEL, MODEL_CONFIGS, ModelConfig, TrainConfig
from ..errors import CharmlpError
from . import bigram, mlp, rnn, transformer, wavenet
from .base import ModelSpec

if TYPE_CHECKING:

    pass

MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (mlp.SPEC, wavenet.SPEC, bigram.SPEC, rnn.RNN_SPEC, rnn.GRU_SPEC, transformer.SPEC)
}
MODEL_CONFIGS.update({name: spec.config for name, spec in MODELS.items()})  # config.json's "kind" → class


def get_spec(name: str) -> ModelSpec:
    """The spec of a model name; a user error naming the choices for an unknown one."""
    try:
        return MODELS[name]
    except KeyError:
        raise CharmlpError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def spec_of(cfg: ModelConfig) -> ModelSpec:
    return get_spec(cfg.kind)


def model_config(name: str = DEFAULT_MODEL, **fields: Any) -> ModelConfig:
    """The default configuration of model `name` with `fields` replaced."""
    return get_spec(name).config(**fields)


def preset(name: str, preset_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model's preset as (TrainConfig overrides, model config overrides)."""
    presets = get_spec(name).presets
    if preset_name not in presets:
        raise CharmlpError(f"unknown preset {preset_name!r} for model {name}; choose one of {', '.join(presets)}")
    values = dict(presets[preset_name])
    return values, values.pop("model", {})


def apply_preset(cfg: TrainConfig, name: str, model: str = DEFAULT_MODEL) -> TrainConfig:
    """Return `cfg` with the training values of `model`'s preset `name` applied."""
    return dataclasses.replace(cfg, **preset(model, name)[0])
