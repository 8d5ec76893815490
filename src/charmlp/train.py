"""The training loop: batches, learning-rate schedule, optimizer, logging, BatchNorm
calibration, and the run directory.

One seeded `torch.Generator` (on the CPU) draws the initial weights and then every
minibatch, so the same seed gives the same losses bit for bit on the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import SUMMARY, save_run, write_json, write_metrics
from .config import DEVICES, ENGINES, OPTIMIZERS, SCHEDULES, RunConfig, TrainConfig
from .data import Dataset, default_data_path, load_dataset
from .engines.eager import EagerStep
from .engines.fast import StepFn, make_train_step
from .errors import CharmlpError, flag
from .evaluate import EVAL_CHUNK, eval_chunk, evaluate, split_loss
from .models import LanguageModel, build_model, check_members_batch, spec_of, validate_model_config
from .nn import BatchNorm1d
from .optim import make_optimizer
from .resume import Checkpointer, resume_run_config

# called after the optimizer step: hook(step, model, lr, loss); at every step, or where its
# optional `wants(step)` says (a GPU loop then need not read every loss back)
StepHook = Callable[[int, LanguageModel, float, torch.Tensor], None]


def wants(hook: StepHook, step: int) -> bool:
    w = getattr(hook, "wants", None)
    return w is None or w(step)


def resolve_device(name: str) -> torch.device:
    """`auto` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharmlpError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name not in DEVICES:
        raise CharmlpError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    return torch.device(name)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for `step` (0-based) under the configured schedule."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":  # the lectures: lr until decay_at·steps, then lr_final
        return cfg.lr if step < cfg.decay_at * cfg.steps else cfg.lr_final
    # cosine from lr to lr_final over the run
    t = step / max(1, cfg.steps - 1)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1 + math.cos(math.pi * t))


EVAL_BUDGET = 0.05  # the default --eval-every spends at most about this share of the training work on val


def resolve_eval_every(cfg: TrainConfig, n_val: int) -> int:
    """Steps between val evaluations: `eval_every` as given, 0 for never; by default (−1) about 20
    per run, fewer where evaluating the `n_val` val rows that often would cost more than ~5 % of the
    training's work (a forward pass over a row costs about what a training step spends per row,
    the backward and update included, for these small models). It depends only on the configuration
    and the data, never on timing, so a run's files stay reproducible."""
    if cfg.eval_every >= 0:
        return cfg.eval_every
    if n_val == 0:
        return 0
    n = max(1, min(20, int(EVAL_BUDGET * cfg.steps * cfg.batch_size / n_val)))
    return max(1, cfg.steps // n)


def validate_train_config(cfg: TrainConfig, batchnorm: bool = True, members: int = 1) -> None:
    """Raise a user error for options that are zero, negative, absurd or unknown, or a batch the
    model cannot train on (BatchNorm needs 2 rows, an ensemble a row per member)."""
    checks = [
        (1 <= cfg.steps <= 100_000_000, f"--steps must be between 1 and 100000000, got {cfg.steps}"),
        (0 <= cfg.positions <= 10**12, f"positions must be between 0 and 10^12, got {cfg.positions}"),
        (1 <= cfg.batch_size <= 1_000_000, f"--batch-size must be between 1 and 1000000, got {cfg.batch_size}"),
        (math.isfinite(cfg.lr) and 0 < cfg.lr <= 100, f"--lr must be a positive number up to 100, got {cfg.lr}"),
        (
            math.isfinite(cfg.lr_final) and 0 < cfg.lr_final <= 100,
            f"--lr-final must be a positive number up to 100, got {cfg.lr_final}",
        ),
        (0 <= cfg.decay_at <= 1, f"--decay-at must be between 0 and 1, got {cfg.decay_at}"),
        (0 <= cfg.weight_decay <= 100, f"--weight-decay must be between 0 and 100, got {cfg.weight_decay}"),
        (cfg.log_every >= 1, f"--log-every must be ≥ 1, got {cfg.log_every}"),
        (cfg.eval_every >= -1, f"--eval-every must be ≥ 0 (0: never), got {cfg.eval_every}"),
        (0 <= cfg.checkpoint_every <= 100_000_000, f"--checkpoint-every must be ≥ 0, got {cfg.checkpoint_every}"),
        (0 <= cfg.sync_every <= 1_000_000, f"--sync-every must be between 0 and 1000000, got {cfg.sync_every}"),
        (cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}"),
        (cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"),
        (cfg.engine in ENGINES, f"unknown engine {cfg.engine!r}; choose one of {', '.join(ENGINES)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise CharmlpError(msg)
    if batchnorm and cfg.batch_size < 2:
        raise CharmlpError(
            f"{flag('--batch-size', 1)} cannot train with BatchNorm (the batch variance needs n − 1 ≥ 1); use a batch of 2 or more"
        )
    check_members_batch(cfg.batch_size, members)


MAX_BATCH_BYTES = 8 << 30


def check_batch_fits(batch_size: int, n: int) -> None:
    """A user error for a batch larger than the training split."""
    if batch_size > n:
        raise CharmlpError(f"{flag('--batch-size', batch_size)} exceeds the {n} training examples; pass a smaller --batch-size")


def validate_batch_memory(cfg: RunConfig) -> None:
    """Refuse a batch whose activations (forward and backward, float32) would not fit in memory."""
    validate_model_config(cfg.model)  # sizes first: their messages name the flag
    need = cfg.train.batch_size * cfg.model.floats_per_example() * 4
    if need > MAX_BATCH_BYTES:
        raise CharmlpError(
            f"{flag('--batch-size', cfg.train.batch_size)} needs about {need / 2**30:.0f} GiB of activations for this model; "
            "lower --batch-size or the model size"
        )


STATS_ROWS = 8192  # rows converted to float64 at a time by calibrate_batchnorm


@torch.no_grad()
def calibrate_batchnorm(model: LanguageModel, X: torch.Tensor, chunk: int = EVAL_CHUNK) -> None:
    """Set each BatchNorm's statistics to the mean and (n − 1) variance of its input over
    all of X, layer by layer (each layer sees inputs normalised by the ones before it); a
    (B, T, C) input counts its B·T rows, as BatchNorm1d does."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunk = eval_chunk(model, X, chunk)
    layers = list(model.layers)
    for i, bn in enumerate(layers):
        if not isinstance(bn, BatchNorm1d):
            continue
        s = torch.zeros(bn.weight.shape, dtype=torch.float64, device=device)
        s2 = torch.zeros_like(s)
        buf = torch.empty(STATS_ROWS, len(s), dtype=torch.float64, device=device)  # reused: no fresh pages
        n = 0
        for j in range(0, len(X), chunk):
            h = X[j : j + chunk].to(device)
            for layer in layers[:i]:
                h = layer(h)
            h = h.reshape(-1, h.shape[-1])
            for k in range(0, len(h), STATS_ROWS):  # Σx and Σx² in float64 (x² of a float32 is exact there)
                b = buf[: min(STATS_ROWS, len(h) - k)]
                b.copy_(h[k : k + STATS_ROWS])
                s += b.sum(0)
                s2 += b.square_().sum(0)
            n += len(h)
        mean = s / n
        var = (s2 - n * mean * mean) / max(1, n - 1)
        bn.set_statistics(mean.float(), var.clamp_min(0).float())
    model.train(was_training)


def prepare_data(cfg: RunConfig, dataset: Dataset | None = None) -> tuple[RunConfig, Dataset]:
    """The dataset in the layout the model reads (loaded unless given), and `cfg` completed from
    it: vocabulary size, block size as resolved, the data path as a run directory records it."""
    # the model decides the layout, and the block size unless the data config sets one
    block = cfg.data.block_size or (0 if cfg.model.sequence else cfg.model.block_size)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sequence=cfg.model.sequence, block_size=block))
    dataset = dataset or load_dataset(cfg.data)
    if dataset.sequence != cfg.model.sequence:
        layout = {True: "whole items", False: "context windows"}
        raise CharmlpError(f"the dataset holds {layout[dataset.sequence]}, but model {cfg.model.kind} reads "
                           f"{layout[cfg.model.sequence]}; load it with DataConfig(sequence={cfg.model.sequence})")
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, vocab_size=dataset.vocab.size, block_size=dataset.block_size),
        # the embedded dataset stays `None` so the run directory works from any install
        data=dataclasses.replace(cfg.data, block_size=dataset.block_size,
                                 path=None if dataset.path == default_data_path() else str(dataset.path.resolve())),
    )
    tc = cfg.train
    if tc.positions:  # a budget of positions: fewer steps where each row feeds more positions
        per_row = dataset.block_size if dataset.sequence else 1
        steps = min(100_000_000, max(1, tc.positions // (tc.batch_size * per_row)))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(tc, steps=steps))
    return cfg, dataset


@dataclass
class TrainResult:
    """What a training run returns to a notebook user."""

    model: LanguageModel
    dataset: Dataset
    config: RunConfig
    losses: list[float]
    summary: dict = field(default_factory=dict)
    out_dir: Path | None = None


def train(
    cfg: RunConfig | None = None,
    out_dir: str | Path | None = None,
    dataset: Dataset | None = None,
    progress: bool = True,
    hooks: tuple[StepHook, ...] = (),
    resume: bool = False,
    force: bool = False,
) -> TrainResult:
    """Train a model as configured; with `out_dir`, write the run directory there.

    `out_dir` may be new, empty, or a run with nothing to lose (stopped before its first
    checkpoint, or diverged); a finished or resumable run there is replaced only with `force`.

    With `out_dir`, Ctrl-C/SIGTERM save a checkpoint and raise `TrainingInterrupted`;
    `resume=True` continues from the checkpoint in `out_dir` (see `resume`).
    """
    cfg = cfg or RunConfig()
    tc = cfg.train
    validate_train_config(tc, getattr(cfg.model, "batchnorm", False), getattr(cfg.model, "members", 1))
    cfg, dataset = prepare_data(cfg, dataset)
    tc = cfg.train  # its steps resolved from a budget of positions
    validate_batch_memory(cfg)
    device = resolve_device(tc.device)
    t0 = time.perf_counter()

    g = torch.Generator().manual_seed(tc.seed)
    model = build_model(cfg.model, generator=g).to(device)
    model.train()
    optimizer = make_optimizer(tc, model)
    Xtr, Ytr = dataset.X["train"].to(device), dataset.Y["train"].to(device)
    cfg = _fit_in_closed_form(cfg, model, Xtr, Ytr)
    tc = cfg.train
    if tc.steps:  # (a closed-form fit draws no batch)
        check_batch_fits(tc.batch_size, len(Ytr))

    losses = torch.empty(tc.steps)
    Xval, Yval = dataset.X["val"], dataset.Y["val"]
    eval_every = resolve_eval_every(tc, len(Yval))  # 0 for an empty val split
    val_losses = torch.full((tc.steps,), math.nan, dtype=torch.float64)  # nan: not evaluated at that step
    ckpt = Checkpointer(out_dir, cfg, dataset, model, optimizer, g, losses, val_losses)
    with ckpt.holding():  # one writer per run directory, from the first file to the last
        start = ckpt.begin(resume, force)
        # one optimizer step on a minibatch it draws from g: the fused fast step, or the eager engines.
        # Built after the restore: the fast step holds views of the optimizer's state tensors.
        train_step, engine = make_train_step(tc.engine, model, optimizer, Xtr, Ytr, tc.batch_size, g)
        bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, desc="train", disable=not progress,
                   mininterval=0.5, dynamic_ncols=True)
        # eager engines read the loss back once a window; a fused step returns each step's loss at once
        window = resolve_sync_every(tc, device) if isinstance(train_step, EagerStep) else 1
        TrainLoop(tc, train_step, ckpt, bar, losses, val_losses, eval_every, hooks, window).run(
            start, lambda: split_loss(model, Xval, Yval))
        train_seconds = time.perf_counter() - t0

        calibrate = bool(model.batchnorms()) and tc.calibrate_bn
        if calibrate:
            calibrate_batchnorm(model, Xtr)
        model.eval()
        loss_list = losses.tolist()
        summary = {
            "init_loss": loss_list[0] if loss_list else None,  # None (null): fitted in closed form, no step
            **{f"{split}_loss": loss for split, loss in evaluate(model, dataset).items()},
            "steps": tc.steps,
            # wall times include the processes before a resume (from the checkpoint)
            "seconds": ckpt.seconds_before + time.perf_counter() - t0,
            "train_seconds": ckpt.seconds_before + train_seconds,
            "steps_per_s": (tc.steps - start) / train_seconds,
            **_run_facts(model, dataset, train_step, engine, device),
            "bn_calibrated": calibrate,
        }
        out = None
        if out_dir is not None:  # the weights last: model.safetensors marks a finished run
            out = Path(out_dir)
            ckpt.claim()  # --force with no step taken: the old run is replaced now
            write_metrics(out, metrics_lines(tc, loss_list, val_losses.tolist()))
            write_json(out / SUMMARY, summary)
            save_run(out, cfg, dataset.vocab, model, keep_config=resume)
            ckpt.finish()
    return TrainResult(model, dataset, cfg, loss_list, summary, out)


def _fit_in_closed_form(cfg: RunConfig, model: LanguageModel, X: torch.Tensor, Y: torch.Tensor) -> RunConfig:
    """Offer the fresh model its model's closed-form fit (bigram --fit counts); when it fits, the
    run takes no gradient steps."""
    fit = spec_of(cfg.model).fit
    if fit is not None and fit(model, X, Y):
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=0))
    return cfg


def _run_facts(model: LanguageModel, dataset: Dataset, train_step: StepFn, engine: str,
               device: torch.device) -> dict[str, object]:
    """summary.json's facts about what ran: sizes, the engine and step, the device."""
    return {
        "ln_vocab": math.log(dataset.vocab.size),
        "n_params": sum(p.numel() for p in model.parameters()),
        "engine": engine,
        "step_impl": getattr(train_step, "impl", "eager"),  # fast: "compiled" (Numba) or "numpy"
        "device": str(device),
    }


def _record_val(tc: TrainConfig, eval_every: int, step: int, val_losses: torch.Tensor,
                val_loss: Callable[[], float], postfix: dict[str, str]) -> None:
    """After `step`, when an evaluation is due (every `eval_every` steps, and the last step): the
    val loss of the weights then — eval mode, BatchNorm's running statistics."""
    if eval_every and ((step + 1) % eval_every == 0 or step + 1 == tc.steps):
        val_losses[step] = val_loss()
        postfix["val"] = f"{val_losses[step].item():.4f}"


SYNC_EVERY_GPU = 50  # steps between loss read-backs on a GPU (--sync-every 0)


def resolve_sync_every(cfg: TrainConfig, device: torch.device) -> int:
    """Steps per host sync of the eager engines: `sync_every` as given, else SYNC_EVERY_GPU on a
    GPU and 1 on the CPU, where reading a loss back costs nothing."""
    if cfg.sync_every:
        return cfg.sync_every
    return SYNC_EVERY_GPU if device.type == "cuda" else 1


class TrainLoop:
    """The training loop, for every model, engine and device: steps in windows, with no host sync
    inside a window.

    A window ends every `window` steps (1 for a fused step, whose loss comes back with each step;
    `sync_every` for the eager engines) and wherever the host must see the state: a checkpoint, a
    val evaluation, a step a hook wants (a hook's `wants(step)`; one without it wants every step),
    Ctrl-C/SIGTERM. At its end the losses come back in one copy; a non-finite one sends the state
    back to the window's start and the window is replayed one checked step at a time, so the run
    stops on the step that gave it, with the state before it. Evaluation, hooks, the progress bar
    and checkpointing happen in one place, `_window_done`. Same seed, same losses, bit for bit,
    whatever the window.
    """

    def __init__(self, tc: TrainConfig, step: StepFn, ckpt: Checkpointer, bar: tqdm, losses: torch.Tensor,
                 val_losses: torch.Tensor, eval_every: int, hooks: tuple[StepHook, ...], window: int) -> None:
        self.tc, self.step, self.ckpt, self.bar = tc, step, ckpt, bar
        self.losses, self.val_losses, self.eval_every = losses, val_losses, eval_every
        self.hooks, self.window = hooks, window
        self.postfix: dict[str, str] = {}

    def _hooked(self, s: int) -> bool:
        return any(wants(h, s) for h in self.hooks)

    def _end(self, start: int) -> int:
        """The window from `start`: up to the next read-back, checkpoint, evaluation or hooked step."""
        end = min(self.tc.steps, (start // self.window + 1) * self.window)
        for every in (self.tc.checkpoint_every, self.eval_every):
            if every:
                end = min(end, (start // every + 1) * every)
        if self.hooks:
            if self._hooked(start):
                return start + 1
            end = next((s for s in range(start + 1, end) if self._hooked(s)), end)
        return end

    def _one(self, step: int) -> float:
        """One step, its loss read back at once: the non-finite guard stops on the step that gave it."""
        lr = lr_at(self.tc, step)
        loss = self.step(lr)  # draws the batch from g, fills .grad, steps the optimizer (not on a non-finite loss)
        self.ckpt.check_loss(step, loss, lr)  # non-finite → save the last good state and stop
        self.losses[step] = loss
        return lr

    def _many(self, step: int, end: int) -> tuple[int, float]:
        """Steps `step` … `end` − 1 of an eager engine (fewer when Ctrl-C/SIGTERM stops the window),
        their losses read back in one copy; → the last step taken and its lr."""
        lrs = [lr_at(self.tc, s) for s in range(step, end)]
        snap = self.step.snapshot()
        chunk = self.step.window(lrs, stop=lambda: self.ckpt.pending is not None).cpu()  # the one host sync
        if not bool(torch.isfinite(chunk).all()):
            self.step.restore(snap)
            for i in range(len(chunk)):  # replay: the one-step guard stops on the first non-finite loss
                chunk[i] = self.step(lrs[i])
                self.ckpt.check_loss(step + i, chunk[i], lrs[i])
        self.losses[step : step + len(chunk)] = chunk
        return step + len(chunk) - 1, lrs[len(chunk) - 1]

    def _window_done(self, first: int, last: int, lr: float, val_loss: Callable[[], float]) -> None:
        """After a window's last step: evaluation, hooks, progress, then the checkpoint (which also
        stops the run cleanly on a pending Ctrl-C/SIGTERM)."""
        _record_val(self.tc, self.eval_every, last, self.val_losses, val_loss, self.postfix)
        for hook in self.hooks:  # windows end at the steps hooks want
            if wants(hook, last):
                hook(last, self.ckpt.model, lr, self.losses[last])
        if self.window > 1 or last % 200 == 0:
            self.postfix.update(loss=f"{self.losses[last].item():.4f}", lr=f"{lr:g}")
            self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(last + 1 - first)
        self.ckpt.after_step(last)

    def run(self, start: int, val_loss: Callable[[], float]) -> None:
        step = start
        with self.ckpt.catch_signals():
            try:
                while step < self.tc.steps:
                    end = step + 1 if self.window == 1 else self._end(step)
                    last, lr = (step, self._one(step)) if end == step + 1 else self._many(step, end)
                    self._window_done(step, last, lr, val_loss)
                    step = last + 1
            finally:  # end a progress bar's line before any message
                self.bar.close()


def metrics_lines(tc: TrainConfig, losses: list[float], val_losses: list[float]) -> Iterator[str]:
    """metrics.jsonl's lines: every `log_every`-th step's minibatch loss and lr, and every step
    whose val loss was evaluated (`--eval-every`) with it as "val_loss"."""
    for s in range(tc.steps):
        loss, val = losses[s], val_losses[s]
        if not math.isnan(val):
            yield json.dumps({"step": s, "loss": loss, "lr": lr_at(tc, s), "val_loss": val})
        elif s % tc.log_every == 0:  # json.dumps's text, 3× faster: both write repr() of the finite numbers
            yield f'{{"step": {s}, "loss": {loss!r}, "lr": {lr_at(tc, s)!r}}}'


def resume(
    run_dir: str | Path,
    progress: bool = True,
    hooks: tuple[StepHook, ...] = (),
    device: str | None = None,
    checkpoint_every: int | None = None,
    sync_every: int | None = None,
) -> TrainResult:
    """Continue the interrupted run in `run_dir` from its last checkpoint (or from step 0 if it
    stopped before the first one). The result is bit for bit what the uninterrupted run gives.

    `device`, `checkpoint_every` and `sync_every` may differ from the original run (the others may not);
    another device can change the numbers in the last bits.
    """
    cfg, vocab = resume_run_config(run_dir)
    overrides = {k: v for k, v in (("device", device), ("checkpoint_every", checkpoint_every),
                                   ("sync_every", sync_every)) if v is not None}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **overrides))
    dataset = load_dataset(cfg.data, vocab=vocab)
    return train(cfg, out_dir=run_dir, dataset=dataset, progress=progress, hooks=hooks, resume=True)
