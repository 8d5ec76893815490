"""The model zoo: one file per family, each built only from `charmlp.nn` layers.

`LanguageModel` (network.py: the one torch module every family builds) loads on first use (PEP 562): the configurations, specs and presets import
no torch, so the CLI can build its flags from them.
"""

from __future__ import annotations

from typing import Any

from .base import ModelSpec, TanhStackConfig, check_members_batch
from .bigram import BigramConfig
from .build import build_model, count_params, num_params, validate_model_config
from .mlp import MLPConfig
from .registry import MODELS, apply_preset, get_spec, model_config, preset, spec_of
from .rnn import GRUConfig, RNNConfig
from .transformer import TransformerConfig
from .wavenet import WaveNetConfig

__all__ = [
    "MODELS", "BigramConfig", "GRUConfig", "LanguageModel", "MLPConfig", "ModelSpec", "RNNConfig", "TanhStackConfig",
    "TransformerConfig", "WaveNetConfig", "apply_preset", "build_model", "check_members_batch", "count_params", "get_spec", "model_config",
    "num_params", "preset", "spec_of", "validate_model_config",
]


def __getattr__(name: str) -> Any:
    if name != "LanguageModel":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .network import LanguageModel

    globals()[name] = LanguageModel  # the next lookup is a plain attribute
    return LanguageModel
