"""charmlp: character-level language models (the makemore lectures' MLP, WaveNet, …) whose
backpropagation is written by hand and checked against PyTorch's autograd.

    import charmlp
    ds = charmlp.load_dataset()                      # the embedded names.txt
    result = charmlp.train(charmlp.RunConfig(), out_dir="runs/seed")
    charmlp.sample(result.model, ds.vocab, n=10).samples

The names below load on first use (PEP 562), so `import charmlp` — and `charmlp --help` — does not
import torch until something needs it.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name → the module (below charmlp) that defines it
_EXPORTS = {
    "checkpoint": ("load_run", "save_run"),
    "config": ("DataConfig", "ModelConfig", "RunConfig", "TrainConfig"),
    "data": ("Dataset", "Vocab", "build_examples", "load_dataset", "read_items"),
    "diagnostics": ("DiagnosticsRecorder", "activation_stats", "embedding_2d", "grad_data_ratio", "init_check",
                    "init_warning_hook", "take_snapshot", "update_ratio"),
    "engines": ("autograd_grads", "manual_grads"),
    "errors": ("CharmlpError",),
    "evaluate": ("evaluate", "evaluate_run"),
    "gradcheck": ("GradcheckReport", "gradcheck"),
    "lrfind": ("lr_find", "lr_schedule"),
    "models": ("MODELS", "LanguageModel", "MLPConfig", "WaveNetConfig", "apply_preset", "build_model"),
    "report": ("diagnose",),
    "sampling": ("sample", "sample_run", "sample_run_stream", "sample_stream"),
    "scoring": ("score",),
    "train": ("calibrate_batchnorm", "resume", "train"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBPACKAGES = ("exercise", "models", "nn", "engines")  # charmlp.exercise.Backprop etc. without an import

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_SUBPACKAGES})


class _Package(types.ModuleType):
    """Importing a submodule binds it on the package (`charmlp.train` = the module), which would hide
    the function of the same name (train, evaluate, gradcheck, resume): keep the function's name
    for the function, as an eager `from .train import train` did."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _WHERE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

# every model registers its config class with config.MODEL_CONFIGS (imports no torch)
from . import models as _models  # noqa: E402, F401
