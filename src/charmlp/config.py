"""Configuration dataclasses, presets and their JSON round trip.

Configuration travels as these dataclasses; nothing reads module-level state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import CharmlpError, flag

# the seed used throughout the makemore lectures
LECTURE_SEED = 2147483647
DEFAULT_SAMPLE_SEED = LECTURE_SEED + 10  # charmlp sample's
DEFAULT_MAX_LEN = 64  # charmlp sample's longest item
MAX_BLOCK_SIZE = 1024  # the longest context a model may have
DEFAULT_MAX_ITEM_LEN = 256  # longer lines of a data file are skipped (--max-item-len; 0: no limit)
DTYPE_NAMES = ("float32", "float64")  # gradcheck's


@dataclass
class DataConfig:
    """Where the items come from and how they become examples."""

    path: str | None = None  # None = the embedded names.txt
    # characters of context; 0: the model's (train: its config's block size, or for whole-item models
    # the longest item + 1; load_dataset on its own: 3, the lectures' context)
    block_size: int = 0
    sequence: bool = False  # rows of whole items (X, Y: (items, block)) instead of context windows
    split_seed: int = 42  # random.seed(42); random.shuffle(words)
    split: tuple[float, float] = (0.8, 0.9)  # train | val | test cut points
    max_item_len: int = DEFAULT_MAX_ITEM_LEN  # characters; a longer line is skipped, with a note (0: no limit)


@dataclass
class ModelConfig:
    """What every model's configuration holds. Each model in `models/` extends it with its own
    fields (each field becomes a `--flag` of the commands) and names itself with `kind`."""

    kind: ClassVar[str] = ""
    sequence: ClassVar[bool] = False  # reads whole items: ids (B, T) → logits (B, T, V), data rows from build_sequences
    # old field name → its name now: config.json files written before a rename still load
    renamed: ClassVar[dict[str, str]] = {}
    vocab_size: int = 27
    block_size: int = 3  # characters of context the model sees

    def validate(self) -> None:
        """Raise a user error for sizes that are zero, negative or absurd (each model adds its own)."""
        check_range("--block-size", self.block_size, 1, 1024)
        check_range("vocab_size", self.vocab_size, 2, 1_114_112)

    def floats_per_example(self) -> int:
        """float32 activations one example holds in a training step (forward and backward)."""
        raise NotImplementedError


def check_range(flag: str, value: int | float, lo: int | float, hi: int | float) -> None:
    """A user error unless lo ≤ value ≤ hi (nan fails too)."""
    if not lo <= value <= hi:
        raise CharmlpError(f"{flag} must be between {lo} and {hi}, got {value}")


# A run's model: its `kind` names the config class, which lives with the model in models/ (config
# imports no model). models/registry.py fills this table when charmlp.models is imported, and the
# package's __init__ imports charmlp.models, so it is full before any RunConfig is built.
MODEL_CONFIGS: dict[str, type[ModelConfig]] = {}
DEFAULT_MODEL = "mlp"  # RunConfig()'s model, and that of a config.json written before the model zoo


def _default_model() -> ModelConfig:
    return MODEL_CONFIGS[DEFAULT_MODEL]()


@dataclass
class TrainConfig:
    """How the parameters are fitted."""

    steps: int = 200_000
    # > 0: steps = positions ÷ (batch_size × positions a row feeds: the item length for whole-item
    # models, 1 for windows), from the data — a preset costs about the same on longer items
    positions: int = 0
    batch_size: int = 32
    lr: float = 0.1
    lr_final: float = 0.01  # used by the step and cosine schedules
    schedule: str = "step"  # step | cosine | constant
    decay_at: float = 0.5  # step schedule: fraction of steps after which lr → lr_final
    optimizer: str = "sgd"  # sgd | adamw
    weight_decay: float = 0.0
    # auto: the fused fast step (engines/fast.py, engines/compiled.py) where it runs (CPU, float32, sgd/adamw), else manual;
    # fast: only the fused step; autograd | manual: the readable eager reference engines
    engine: str = "auto"
    seed: int = LECTURE_SEED  # one generator: init, then batches
    device: str = "auto"  # auto | cpu | cuda
    calibrate_bn: bool = True  # BatchNorm statistics over the whole train split after training
    log_every: int = 1  # steps between metrics.jsonl rows
    eval_every: int = -1  # steps between val-loss evaluations (0: never; -1: about 20 per run)
    checkpoint_every: int = 0  # steps between resumable checkpoints (0: only on Ctrl-C/SIGTERM)
    sync_every: int = 0  # eager engines: steps between loss read-backs (0: 50 on a GPU, 1 on the CPU)
    # > 0: seconds the whole run may take; budget.py plans steps (and, for the sequence models, the
    # ensemble and dropout) from the data and a calibration of this machine's steps/s
    budget: float = 0.0
    time_limit: float = 0.0  # > 0: the loop stops after this many seconds, a finished run (the budget's guard)
    schedule_steps: int = 0  # > 0: the steps the lr schedule spans (a run the guard stopped early); 0: steps
    # a schedule that followed the clock (a budget run's re-plans): (step, end) pairs, the first at step 0: from
    # `step` on, the schedule's progress p goes linearly from where it was to 1 at step `end` − 1
    # (`train.schedule_of`); () : p = step ÷ (span − 1) over `schedule_steps` or `steps`
    knots: tuple[tuple[int, int], ...] = ()


@dataclass
class RunConfig:
    """Everything a run directory needs to rebuild its model and data."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=_default_model)
    train: TrainConfig = field(default_factory=TrainConfig)


MIN_BUDGET, MAX_BUDGET = 1.0, 7 * 24 * 3600.0  # seconds a --budget may be


def parse_duration(text: str) -> float:
    """'90', '90s', '10m', '1.5h' → seconds; a user error for anything else or out of range."""
    t = text.strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:], None)
    number = t[:-1] if scale is not None else t
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise CharmlpError(f"{flag('--budget', repr(text))} is not a duration; write it as 30s, 10m or 1.5h") from None
    if not (math.isfinite(seconds) and MIN_BUDGET <= seconds <= MAX_BUDGET):
        raise CharmlpError(f"--budget must be between {MIN_BUDGET:g} s and 7 days, got {text!r}")
    return seconds


SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adamw")
ENGINES = ("auto", "fast", "autograd", "manual")
DEVICES = ("auto", "cpu", "cuda")

def renamed_keys(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """`d` with each key `cls.renamed` names spelled as it is now (in the same place); a user error
    where both spellings are given."""
    renamed: dict[str, str] = getattr(cls, "renamed", {})
    for old in renamed.keys() & d.keys():
        if renamed[old] in d:
            raise CharmlpError(f"config.json has both {old!r} and {renamed[old]!r} (its new name); keep only {renamed[old]!r}")
    return {renamed.get(k, k): v for k, v in d.items()}


def config_from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise CharmlpError(f"{where} in config.json is not an object; the run directory is damaged")
    d = renamed_keys(cls, d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise CharmlpError(
            f"{where} in config.json has unknown keys {sorted(unknown)}; "
            "it was written by another charmlp version"
        )
    kwargs = dict(d)
    if cls is TrainConfig and "knots" in kwargs:
        kwargs["knots"] = knots_from_json(kwargs["knots"], f"{where}.knots in config.json")
    defaults = cls()
    for k, v in kwargs.items():
        if k != "knots" and not _same_kind(getattr(defaults, k), v):  # knots: read above
            raise CharmlpError(f"{where}.{k} in config.json has the wrong type ({v!r}); the run directory is damaged")
    if cls is DataConfig and "split" in kwargs:
        kwargs["split"] = tuple(kwargs["split"])
    if cls is DataConfig:  # a config.json written before --max-item-len: its run kept every line
        kwargs.setdefault("max_item_len", 0)
    return cls(**kwargs)


def knots_from_json(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    """JSON's `knots` ([[step, end], …]; or the field's own tuples, from `run_config_to_dict` without
    a trip through JSON) as the field holds them; a user error for anything else."""
    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    pairs = (list, tuple)
    if not (isinstance(value, pairs) and all(isinstance(k, pairs) and len(k) == 2 and all(map(whole, k)) for k in value)):
        raise CharmlpError(f"{where} is not a list of [step, end] pairs; the run directory is damaged")
    return tuple((k[0], k[1]) for k in value)


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


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    """{"kind": …, field: value, …}: the model's name first, then its fields."""
    return {"kind": cfg.kind, **dataclasses.asdict(cfg)}


def run_config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    return {"data": dataclasses.asdict(cfg.data), "model": model_config_to_dict(cfg.model),
            "train": dataclasses.asdict(cfg.train)}


def model_config_from_dict(d: Any) -> ModelConfig:
    """config.json's "model" object → its config dataclass ("kind" absent: an MLP, as written
    before the model zoo)."""
    if not isinstance(d, dict):
        raise CharmlpError("model in config.json is not an object; the run directory is damaged")
    d = dict(d)
    kind = d.pop("kind", DEFAULT_MODEL)
    if kind not in MODEL_CONFIGS:
        raise CharmlpError(f"config.json names model {kind!r}, which this charmlp does not know; it was written by "
                           "another charmlp version")
    return config_from_dict(MODEL_CONFIGS[kind], d, "model")


def run_config_from_dict(d: Any) -> RunConfig:
    """The inverse of `run_config_to_dict`; a model without "kind" is an MLP (run directories
    written before the model zoo)."""
    if not isinstance(d, dict):
        raise CharmlpError("config.json is not a JSON object; the run directory is damaged")
    return RunConfig(
        data=config_from_dict(DataConfig, d.get("data", {}), "data"),
        model=model_config_from_dict(d.get("model", {})),
        train=config_from_dict(TrainConfig, d.get("train", {}), "train"),
    )
