"""Configuration dataclasses, presets and their JSON round trip.

Configuration travels as these dataclasses; nothing reads module-level state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import CharmlpError

# the seed used throughout the makemore lectures
LECTURE_SEED = 2147483647


@dataclass
class DataConfig:
    """Where the items come from and how they become examples."""

    path: str | None = None  # None = the embedded names.txt
    block_size: int = 3  # characters of context
    split_seed: int = 42  # random.seed(42); random.shuffle(words)
    split: tuple[float, float] = (0.8, 0.9)  # train | val | test cut points


@dataclass
class ModelConfig:
    """Shape and initialisation of the MLP language model."""

    vocab_size: int = 27
    block_size: int = 3
    n_embd: int = 10
    n_hidden: int = 200
    n_layers: int = 1  # hidden Linear → BatchNorm1d → tanh blocks
    batchnorm: bool = True
    tanh_gain: float = 5 / 3  # Kaiming gain for linears that feed tanh
    out_scale: float = 0.1  # output weights shrunk so the untrained loss ≈ ln(vocab)
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5


@dataclass
class TrainConfig:
    """How the parameters are fitted."""

    steps: int = 200_000
    batch_size: int = 32
    lr: float = 0.1
    lr_final: float = 0.01  # used by the step and cosine schedules
    schedule: str = "step"  # step | cosine | constant
    decay_at: float = 0.5  # step schedule: fraction of steps after which lr → lr_final
    optimizer: str = "sgd"  # sgd | adamw
    weight_decay: float = 0.0
    # auto: the fused fast step (fastpath.py) where it runs (CPU, float32, sgd/adamw), else manual;
    # fast: only the fused step; autograd | manual: the readable eager reference engines
    engine: str = "auto"
    seed: int = LECTURE_SEED  # one generator: init, then batches
    device: str = "auto"  # auto | cpu | cuda
    calibrate_bn: bool = True  # BatchNorm statistics over the whole train split after training
    log_every: int = 1  # steps between metrics.jsonl rows
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: only on Ctrl-C/SIGTERM)


@dataclass
class RunConfig:
    """Everything a run directory needs to rebuild its model and data."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
ENGINES = ("auto", "fast", "autograd", "manual")
DEVICES = ("auto", "cpu", "cuda")

# preset name → overrides of TrainConfig (and ModelConfig under the "model" key)
PRESETS: dict[str, dict[str, Any]] = {
    # the lectures' exact setup: batch 32, 200k steps, lr 0.1 → 0.01 at half way
    "seed": {},
    # the demo: a short run that already gives name-like samples
    "quick": {"steps": 10000, "batch_size": 64, "lr": 0.1, "lr_final": 0.01},
    # the lectures' val loss (≤ 2.11 on names) in a small fraction of their time, same model and
    # split (measured with benchmarks/run.py; README "Performance"). AdamW makes far more progress
    # per example than plain SGD: ~2.6M examples here vs the lectures' 6.4M. On the compiled step
    # a step costs the same per example at batch 192, 256 and 384 (1.35–1.38 µs each, measured
    # interleaved), so the fewest examples win. Cosine from 5e-3 to 5e-5; BatchNorm calibrated
    # over the train split. Measured on names, seed 2147483647 (batch × steps @ lr → val):
    # 256 × 10000 @ 5e-3 → 2.1090; 384 × 7000 @ 5e-3 → 2.1073 (5 % more examples); 192 × 14000
    # @ 4e-3 → 2.1080; 128 × 22000 @ 3e-3 → 2.1093 (10 % more); over the line: 256 × 9000 @ 6e-3
    # 2.1163, 192 × 12000 @ 5e-3 2.1155, 128 × 16000–20000 @ 4e-3 2.1205–2.1163, 64 × 30000 2.1257.
    "fast": {"steps": 10000, "batch_size": 256, "optimizer": "adamw", "lr": 0.005, "lr_final": 0.00005,
             "schedule": "cosine"},
}


def apply_preset(cfg: TrainConfig, name: str) -> TrainConfig:
    """Return `cfg` with the preset's values applied."""
    if name not in PRESETS:
        raise CharmlpError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(cfg, **PRESETS[name])


def _from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise CharmlpError(f"{where} in config.json is not an object; the run directory is damaged")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CharmlpError(
            f"{where} in config.json has unknown keys {sorted(unknown)}; "
            "it was written by another charmlp version"
        )
    kwargs = dict(d)
    defaults = cls()
    for k, v in kwargs.items():
        if not _same_kind(getattr(defaults, k), v):
            raise CharmlpError(f"{where}.{k} in config.json has the wrong type ({v!r}); the run directory is damaged")
    if cls is DataConfig and "split" in kwargs:
        kwargs["split"] = tuple(kwargs["split"])
    return cls(**kwargs)


def _same_kind(default: Any, value: Any) -> bool:
    """Does a value read from JSON have the type of the field's default?"""
    if isinstance(default, bool) or default is None:  # None: the optional data path
        return isinstance(value, bool) if isinstance(default, bool) else value is None or isinstance(value, str)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and len(value) == len(default) and all(
            _same_kind(a, b) for a, b in zip(default, value, strict=True)
        )
    return isinstance(value, type(default))


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def run_config_from_dict(d: Any) -> RunConfig:
    if not isinstance(d, dict):
        raise CharmlpError("config.json is not a JSON object; the run directory is damaged")
    return RunConfig(
        data=_from_dict(DataConfig, d.get("data", {}), "data"),
        model=_from_dict(ModelConfig, d.get("model", {}), "model"),
        train=_from_dict(TrainConfig, d.get("train", {}), "train"),
    )
