"""Resumable training: checkpoints every N steps, on Ctrl-C/SIGTERM and before a non-finite loss.

A checkpoint is one file, train_state.safetensors, written atomically: the model's tensors
(parameters and BatchNorm buffers), the optimizer's state tensors, the random generator's
state (a uint8 tensor), the losses so far, and — as JSON in the header — the step, the
optimizer's scalar settings and fingerprints of the configuration, vocabulary and data it
belongs to. Nothing is pickled. Restoring all of it makes an interrupted and resumed run
reproduce an uninterrupted one bit for bit: the learning-rate schedule is a function of the
step, and every random draw comes from the restored generator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    STATE,
    WEIGHTS,
    atomic_write_bytes,
    decode_tensors,
    encode_tensors,
    fits_model,
    is_run_dir,
    make_run_dir,
    prepare_run_dir,
    read_run_config,
    refuse_foreign_config,
    remove_file,
    remove_stale_temporaries,
)
from .config import RunConfig, TrainConfig, knots_from_json, model_config_to_dict, renamed_keys
from .data import SPLITS, Dataset, Vocab, as_items
from .errors import CharmlpError, TrainingInterrupted
from .lock import LOCK, RunDirLock
from .models import LanguageModel
from .optim import load_optimizer_state_dict, optimizer_state_dict

# training options that may differ between the interrupted and the resuming process:
# they do not change a single number of the run
NON_NUMERIC_TRAIN_FIELDS = ("device", "checkpoint_every", "sync_every")


def data_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the items of every split (what training and evaluation actually see)."""
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(f"{s}:{len(dataset.items[s])}\n".encode())
        for batch in as_items(dataset.items[s]).batches():  # item + "\n" each, a batch per update
            h.update(("\n".join(batch) + "\n").encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _train_fields(tc: TrainConfig) -> dict[str, Any]:
    """`tc`'s fields as a checkpoint's JSON holds them (knots: lists)."""
    return {**dataclasses.asdict(tc), "knots": [list(k) for k in tc.knots]}


def _run_fingerprint(cfg: RunConfig, dataset: Dataset) -> dict[str, Any]:
    train = {k: v for k, v in _train_fields(cfg.train).items() if k not in NON_NUMERIC_TRAIN_FIELDS}
    return {
        "model": model_config_to_dict(cfg.model),
        "train": train,
        "block_size": cfg.data.block_size,
        "vocab": list(dataset.vocab.itos),
        "data_sha256": data_fingerprint(dataset),
    }


def _same_run(saved: Any, now: dict[str, Any], cfg: RunConfig) -> bool:
    """A checkpoint's fingerprint against this run's. A field added to the configuration after the
    checkpoint was written (absent from it) counts as its default: with it, the run is the same."""
    if not (isinstance(saved, dict) and isinstance(saved.get("train"), dict) and isinstance(saved.get("model"), dict)):
        return False
    defaults = {"train": _train_fields(TrainConfig()), "model": model_config_to_dict(type(cfg.model)())}
    saved = {**saved, "model": renamed_keys(type(cfg.model), saved["model"])}  # a checkpoint from before a rename
    filled = {**saved, **{k: {**{f: defaults[k][f] for f in now[k]}, **saved[k]} for k in ("train", "model")}}
    return filled == now


# ----------------------------------------------------------------------------- state ↔ tensors


def state_tensors(
    model: LanguageModel, optimizer: torch.optim.Optimizer, generator: torch.Generator, losses: torch.Tensor, step: int,
    val_losses: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything needed to continue after `step` completed steps, as tensors + JSON scalars."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer_state_dict(optimizer)
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensors["rng"] = generator.get_state()
    tensors["losses"] = losses[:step].detach().to("cpu", torch.float32)
    if val_losses is not None:  # --eval-every: nan where val was not evaluated
        tensors["val_losses"] = val_losses[:step].detach().to("cpu", torch.float64)
    meta = {"param_groups": opt["param_groups"], "state_scalars": scalars}
    return tensors, meta


def restore_state(
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    model: LanguageModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    losses: torch.Tensor,
    path: Path,
    val_losses: torch.Tensor | None = None,
) -> int:
    """Load a checkpoint's state into live objects; returns the step to continue from."""
    damaged = f"{path} does not match the run's model or optimizer; the checkpoint is damaged"
    step = meta.get("step")
    if not isinstance(step, int) or not 0 <= step <= len(losses):
        raise CharmlpError(damaged)
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    if not fits_model(model, model_sd):
        raise CharmlpError(damaged)
    opt_state: dict[int, dict[str, Any]] = {}
    try:
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, pid, key = k.split("/", 2)
                opt_state.setdefault(int(pid), {})[key] = v
        for pid, d in meta["state_scalars"].items():
            opt_state.setdefault(int(pid), {}).update(d)
        param_groups = meta["param_groups"]
        params = list(model.parameters())
        if any(not 0 <= pid < len(params) for pid in opt_state):
            raise ValueError("unknown parameter id")
        for pid, st in opt_state.items():
            shape = params[pid].shape
            if any(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shape for v in st.values()):
                raise ValueError("optimizer state shape")
        rng = tensors["rng"]
        saved_losses = tensors["losses"]
        saved_val = tensors.get("val_losses")
        if saved_losses.shape != (step,) or rng.dtype != torch.uint8 or (saved_val is not None and saved_val.shape != (step,)):
            raise ValueError("losses or generator")
        model.load_state_dict(model_sd)
        load_optimizer_state_dict(optimizer, {"state": opt_state, "param_groups": param_groups})
        generator.set_state(rng)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError):
        raise CharmlpError(damaged) from None
    losses[:step] = saved_losses.to(losses.device, losses.dtype)
    if val_losses is not None and saved_val is not None:
        val_losses[:step] = saved_val.to(val_losses.dtype)
    return step


# ----------------------------------------------------------------------------- the run directory and its checkpoint


@dataclass
class Checkpoint:
    """What `read_checkpoint` finds in a run directory (without building a model)."""

    path: Path
    step: int
    steps: int
    reason: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def read_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The training checkpoint of a run directory, integrity-checked; None if there is none."""
    path = Path(run_dir) / STATE
    if not path.is_file():
        return None
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CharmlpError(f"cannot read {path}: {e.strerror}") from None
    tensors, meta = decode_tensors(raw, path)
    if meta.get("kind") != "train_state" or not isinstance(meta.get("step"), int):
        raise CharmlpError(f"{path} is not a charmlp training checkpoint; the run directory is damaged")
    return Checkpoint(path, meta["step"], int(meta.get("steps", 0)), str(meta.get("reason", "")), tensors, meta)


class RunDirectory:
    """A run directory's life as one training process writes it: locked (`holding`), begun — a fresh
    run refused, prepared or set to replace the old one, or a resume's checkpoint found — the old
    run replaced (`claim`) and the run finished (`finish`)."""

    def __init__(self, path: str | Path, cfg: RunConfig, dataset: Dataset) -> None:
        self.path = Path(path)
        self.cfg, self.dataset = cfg, dataset
        self.fingerprint = _run_fingerprint(cfg, dataset)  # what a checkpoint of this run records
        self.replace_pending = False  # --force: the old run is replaced at the first checkpoint

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """The run directory locked for this writer from `begin` to the end of the block (see lock.py)."""
        with RunDirLock(make_run_dir(self.path), "charmlp train"):
            yield

    def begin(self, resume: bool, force: bool = False) -> Checkpoint | None:
        """Fresh run: prepare the run directory (None). Resume: the checkpoint to continue from, checked
        to belong to this run (None: stopped before its first one, so starting over is exact).

        A fresh run never replaces a run without `force`; with it, the old run's files stay until
        the new run's first checkpoint is written (`claim`), so a failed start loses nothing.
        """
        if not resume:
            self.replace_pending = _refuse_to_replace(self.path, force)
            if not self.replace_pending:
                prepare_run_dir(self.path, self.cfg, self.dataset.vocab)
            return None
        remove_stale_temporaries(self.path)
        ck = read_checkpoint(self.path)
        if ck is not None and not _same_run(ck.meta.get("fingerprint"), self.fingerprint, self.cfg):
            raise CharmlpError(
                f"{ck.path} was written for another configuration, vocabulary or data file than this run has now "
                "(the data file changed?); it cannot be resumed exactly"
            )
        return ck

    def claim(self) -> None:
        """Replace the old run (`--force`) once the new one has a checkpoint, or before its files
        are written if it takes no step: the old files go, then the new vocab and config."""
        if self.replace_pending:
            prepare_run_dir(self.path, self.cfg, self.dataset.vocab, keep=(STATE,))
            self.replace_pending = False

    def finish(self) -> None:
        """The run is complete (model.safetensors written): the checkpoint has served."""
        if (self.path / WEIGHTS).is_file():
            remove_file(self.path / STATE)


class StopSignals:
    """Ctrl-C/SIGTERM caught while `catching`: the first asks for a clean stop (`pending`, the
    signal's number, which the loop reads at a step boundary); a second stops at once (files stay
    consistent: every write is atomic)."""

    def __init__(self) -> None:
        self.pending: int | None = None

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            if self.pending is not None:
                raise KeyboardInterrupt
            self.pending = signum

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)


class AgreedStopSignals(StopSignals):
    """Ctrl-C/SIGTERM across data-parallel ranks: a caught signal is this rank's wish (`local`);
    `pending`, which the loop reads, is what every rank agreed on at the last step's all-reduce
    (`agreed`: any rank's signal), so all of them stop after the same step."""

    def __init__(self) -> None:
        self.local: int | None = None
        self.agreed: int | None = None

    @property
    def pending(self) -> int | None:  # type: ignore[override]
        return self.agreed

    @pending.setter
    def pending(self, signum: int | None) -> None:
        self.local = signum


class CheckpointSaver:
    """Writes and restores a run directory's training checkpoint: at the last step, every
    `checkpoint_every` steps, when a caught signal asks to stop, and (`save`) before a non-finite loss.

    It shares the loop's live objects (model, optimizer, generator, loss tensors): a checkpoint is
    their state at a step boundary, and a restore fills them in place.
    """

    def __init__(self, run_dir: RunDirectory, model: LanguageModel, optimizer: torch.optim.Optimizer,
                 generator: torch.Generator, losses: torch.Tensor, val_losses: torch.Tensor | None = None,
                 writes: bool = True) -> None:
        self.run_dir = run_dir
        self.writes = writes  # False on a data-parallel rank other than 0: it keeps the count, rank 0 writes
        self.model, self.optimizer, self.generator, self.losses = model, optimizer, generator, losses
        self.val_losses = val_losses
        self.every = run_dir.cfg.train.checkpoint_every
        self.total = run_dir.cfg.train.steps
        self.signals = StopSignals()
        self.last_saved = -1
        self.started = time.perf_counter()
        self.seconds_before = 0.0  # wall time the interrupted processes spent (from the checkpoint)

    def retarget(self, tc: TrainConfig, losses: torch.Tensor, val_losses: torch.Tensor | None) -> None:
        """The run re-planned (a budget run's schedule following the clock): its checkpoints now
        record `tc`'s steps and knots, and the loss records `losses`, `val_losses`."""
        d = self.run_dir
        d.cfg = dataclasses.replace(d.cfg, train=tc)
        d.fingerprint = _run_fingerprint(d.cfg, d.dataset)
        self.total, self.losses, self.val_losses = tc.steps, losses, val_losses

    def restore(self, ck: Checkpoint | None) -> int:
        """Load `ck` (from `RunDirectory.begin`) into the live objects; returns the first step to take."""
        if ck is None:
            return 0
        step = restore_state(ck.tensors, ck.meta, self.model, self.optimizer, self.generator, self.losses, ck.path,
                             self.val_losses)
        self.last_saved = step
        seconds = ck.meta.get("seconds", 0.0)
        self.seconds_before = float(seconds) if isinstance(seconds, (int, float)) and math.isfinite(seconds) else 0.0
        return step

    def after_step(self, step: int) -> None:
        """Periodic checkpoint; on a pending Ctrl-C/SIGTERM, save and stop."""
        done = step + 1
        if done == self.total:  # always: an interrupted evaluation/write-out then resumes from here
            self.save(done, "final")
        elif self.every and done % self.every == 0:
            self.save(done, "periodic")
        if self.signals.pending is not None:
            if self.last_saved != done:
                self.save(done, "interrupted")
            raise TrainingInterrupted(
                f"stopped at step {done} of {self.total}; the run is saved in {self.run_dir.path}: "
                f"continue it with `charmlp train --resume {self.run_dir.path}`",
                signum=self.signals.pending,
            )

    def save(self, step: int, reason: str) -> None:
        """The state after `step` steps, atomically; the first one written replaces an old run (`--force`)."""
        if not self.writes:
            self.last_saved = step
            return
        tensors, meta = state_tensors(self.model, self.optimizer, self.generator, self.losses, step, self.val_losses)
        seconds = self.seconds_before + time.perf_counter() - self.started
        knots = self.run_dir.cfg.train.knots
        meta.update(kind="train_state", step=step, steps=self.total, reason=reason, knots=[list(k) for k in knots],
                    fingerprint=self.run_dir.fingerprint, seconds=seconds)
        atomic_write_bytes(self.run_dir.path / STATE, encode_tensors(tensors, meta))
        self.last_saved = step
        self.run_dir.claim()


def _refuse_to_replace(d: Path, force: bool) -> bool:
    """Refuse a fresh run in `d` that would lose something; True: a run to replace (`force`)."""
    if not d.is_dir():
        return False
    if not is_run_dir(d):
        refuse_foreign_config(d)
        others = sorted(p.name for p in d.iterdir() if p.name != LOCK)
        if others:
            raise CharmlpError(f"{d} is not empty and holds no charmlp run ({others[0]}{', …' if len(others) > 1 else ''}); "
                               "pass --out a new or empty directory")
        return False
    hint = "pass --force to replace it (the old run stays until the new one has its first checkpoint), or another --out"
    if (d / WEIGHTS).is_file():
        if not force:
            raise CharmlpError(f"{d} holds a finished run; {hint}")
        return True
    try:
        ck = read_checkpoint(d)
    except CharmlpError:  # a damaged checkpoint cannot be resumed: nothing to lose
        ck = None
    if ck is None or ck.reason == "non-finite":  # nothing resumable, or a diverged run: retrained in place
        return False
    if not force:
        raise CharmlpError(
            f"{d} holds an unfinished run (stopped at step {ck.step} of {ck.steps}); continue it with "
            f"`charmlp train --resume {d}`, or {hint}"
        )
    return True


def resume_run_config(run_dir: str | Path) -> tuple[RunConfig, Vocab]:
    """Configuration and vocabulary of a run to resume, with a clear error when there is nothing to do."""
    d = Path(run_dir)
    cfg, vocab = read_run_config(d)
    ck = read_checkpoint(d)
    if (d / WEIGHTS).is_file() and (ck is None or ck.step >= ck.steps):
        raise CharmlpError(f"{d} is a finished run; nothing to resume (sample from it with `charmlp sample {d}`)")
    if ck is not None and ck.meta.get("knots"):  # a budget run re-planned after config.json was written
        knots = knots_from_json(ck.meta["knots"], "the checkpoint's schedule")
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=ck.steps, knots=knots))
    return cfg, vocab

