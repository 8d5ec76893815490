"""The model zoo: one file per family, each built only from `charmlp.nn` layers."""

from .base import LanguageModel, ModelSpec, count_params, num_params
from .bigram import Bigram, BigramConfig
from .mlp import CharMLP, MLPConfig
from .registry import MODELS, apply_preset, build_model, get_spec, model_config, preset, spec_of, validate_model_config
from .rnn import GRUConfig, RecurrentLM, RNNConfig
from .transformer import Transformer, TransformerConfig
from .wavenet import WaveNet, WaveNetConfig

__all__ = [
    "MODELS", "Bigram", "BigramConfig", "CharMLP", "GRUConfig", "LanguageModel", "MLPConfig", "ModelSpec", "RNNConfig",
    "RecurrentLM", "Transformer", "TransformerConfig", "WaveNet", "WaveNetConfig", "apply_preset", "build_model",
    "count_params", "get_spec", "model_config", "num_params", "preset", "spec_of", "validate_model_config",
]
