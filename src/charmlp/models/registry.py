"""Model name → its configuration, layers and presets; building a model from a configuration.

A new model is one file in this folder that defines a config dataclass (extending
`config.ModelConfig`), a function from that config to its layer list and a `SPEC` naming both
(and any hooks, see `ModelSpec`), plus its line below. Nothing here imports torch until a model
is built or counted.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig, TrainConfig, config_from_dict
from ..errors import CharmlpError
from . import bigram, mlp, rnn, transformer, wavenet
from .base import MAX_PARAMS, ModelSpec, count_params

if TYPE_CHECKING:
    import torch

    from .network import LanguageModel

MODELS: dict[str, ModelSpec] = {
    spec.name: spec for spec in (mlp.SPEC, wavenet.SPEC, bigram.SPEC, rnn.RNN_SPEC, rnn.GRU_SPEC, transformer.SPEC)
}
DEFAULT_MODEL = "mlp"


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


def model_config_from_dict(d: Any) -> ModelConfig:
    """config.json's "model" object → its config dataclass ("kind" absent: an MLP, as written
    before the model zoo)."""
    if not isinstance(d, dict):
        raise CharmlpError("model in config.json is not an object; the run directory is damaged")
    d = dict(d)
    kind = d.pop("kind", DEFAULT_MODEL)
    if kind not in MODELS:
        raise CharmlpError(f"config.json names model {kind!r}, which this charmlp does not know; it was written by "
                           "another charmlp version")
    return config_from_dict(MODELS[kind].config, d, "model")


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


def validate_model_config(cfg: ModelConfig) -> None:
    """Raise a user error for sizes that are zero, negative or absurd, or a model too large
    (counting the parameters imports torch; the checks before it do not)."""
    spec_of(cfg)
    cfg.validate()
    n = count_params(cfg)
    if n > MAX_PARAMS:
        raise CharmlpError(
            f"this model would have {n:,} parameters ({4 * n / 2**30:.1f} GiB), more than the {MAX_PARAMS:,} "
            "charmlp allows; lower its width or depth (--n-hidden, --n-layer, --n-embd)"
        )


def build_model(cfg: ModelConfig | None = None, generator: torch.Generator | None = None,
                seed: int | None = None) -> LanguageModel:
    """Build and initialise the model `cfg` describes (default: the MLP); pass a `generator`
    (or a `seed`) for reproducibility."""
    import torch

    from .network import LanguageModel

    cfg = cfg if cfg is not None else model_config()
    validate_model_config(cfg)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    model = LanguageModel(cfg)
    model.init_weights(generator)
    return model
