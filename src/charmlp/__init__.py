"""charmlp: character-level language models (the makemore lectures' MLP, WaveNet, …) whose
backpropagation is written by hand and checked against PyTorch's autograd.

    import charmlp
    ds = charmlp.load_dataset()                      # the embedded names.txt
    result = charmlp.train(charmlp.RunConfig(), out_dir="runs/seed")
    charmlp.sample(result.model, ds.vocab, n=10).samples
"""

__version__ = "0.1.0"

from .checkpoint import load_run, save_run  # noqa: E402
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from .data import Dataset, Vocab, build_examples, load_dataset, read_items  # noqa: E402
from .diagnostics import (  # noqa: E402
    DiagnosticsRecorder,
    activation_stats,
    embedding_2d,
    grad_data_ratio,
    init_check,
    init_warning_hook,
    take_snapshot,
    update_ratio,
)
from .engines import autograd_grads, manual_grads  # noqa: E402
from .errors import CharmlpError  # noqa: E402
from .evaluate import evaluate, evaluate_run  # noqa: E402
from .gradcheck import GradcheckReport, gradcheck  # noqa: E402
from .lrfind import lr_find, lr_schedule  # noqa: E402
from .models import MODELS, CharMLP, LanguageModel, MLPConfig, WaveNet, WaveNetConfig, apply_preset, build_model  # noqa: E402
from .report import diagnose  # noqa: E402
from .sampling import sample, sample_run  # noqa: E402
from .train import calibrate_batchnorm, resume, train  # noqa: E402

__all__ = [
    "MODELS", "CharMLP", "CharmlpError", "LanguageModel", "MLPConfig", "WaveNet", "WaveNetConfig",
    "DataConfig", "Dataset", "GradcheckReport", "ModelConfig", "RunConfig", "TrainConfig", "Vocab",
    "apply_preset", "autograd_grads", "build_examples", "build_model", "calibrate_batchnorm", "evaluate",
    "evaluate_run", "gradcheck", "load_dataset", "load_run", "manual_grads", "read_items", "sample", "sample_run",
    "resume", "save_run", "train",
    # diagnostics
    "DiagnosticsRecorder", "activation_stats", "diagnose", "embedding_2d", "grad_data_ratio", "init_check",
    "init_warning_hook", "lr_find", "lr_schedule", "take_snapshot", "update_ratio",
]
