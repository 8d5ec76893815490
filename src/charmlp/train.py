"""The training loop: batches, learning-rate schedule, optimizer, logging, BatchNorm
calibration, and the run directory.

One seeded `torch.Generator` (on the CPU) draws the initial weights and then every
minibatch, so the same seed gives the same losses bit for bit on the same machine.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .budget import RATE_STRETCH, RESHAPE_AT, BudgetPlan, Reshaped, Reshaper, budget_train_items, plan_budget, replan_seconds, replanned_steps
from .checkpoint import SUMMARY, save_run, write_json, write_metrics
from .config import DEVICES, ENGINES, MAX_BUDGET, MIN_BUDGET, OPTIMIZERS, SCHEDULES, RunConfig, TrainConfig
from .data import Dataset, default_data_path, load_dataset
from .engines.eager import EagerStep, Shard
from .engines.fast import StepFn, make_train_step
from .engines.support import unsupported_reason
from .errors import CharmlpError, ReportedElsewhere, flag
from .evaluate import EVAL_CHUNK, eval_chunk, final_losses, split_loss
from .models import LanguageModel, build_model, check_members_batch, spec_of, validate_model_config
from .nn import BatchNorm1d
from .nn.losses import count_targets
from .optim import make_optimizer
from .resume import (
    AgreedStopSignals,
    Checkpoint,
    CheckpointSaver,
    RunDirectory,
    data_fingerprint,
    read_checkpoint,
    resume_run_config,
)

# called after the optimizer step: hook(step, model, lr, loss); at every step, or where its
# optional `wants(step)` says (a GPU loop then need not read every loss back). A hook's optional
# `on_val(step, steps, val_loss) -> bool` sees each val evaluation; True ends the run after that
# step, as a finished run of the steps taken (a search's pruner)
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


def schedule_of(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning rate of each step (0-based) under the configured schedule, as a function.

    The schedule is one of the progress p ∈ [0, 1]: cosine, lr_final + ½(lr − lr_final)(1 + cos πp);
    step, lr while p < decay_at, then lr_final. Without knots p = step ÷ (span − 1) over the span
    (`schedule_steps` or `steps`; the step schedule: lr while step < decay_at · span, as it always was).
    With knots (k_i, e_i) (a budget run's re-plans, `budget.replanned_steps`), p is piecewise linear:
    from p_i at step k_i towards 1 at step e_i − 1, p(s) = p_i + (1 − p_i)(s − k_i) ÷ (e_i − 1 − k_i)
    up to the next knot, p_0 = 0 and p_{i+1} = min(1, p_i's segment at k_{i+1}): each step's p is the
    very float the run computed, so the recorded knots replay its lr bit for bit."""
    lr, lr_final = cfg.lr, cfg.lr_final
    if cfg.schedule == "constant":
        return lambda step: lr
    span = cfg.schedule_steps or cfg.steps  # a run its time limit stopped early keeps its planned schedule
    if not cfg.knots:
        if cfg.schedule == "step":  # the lectures: lr until decay_at·steps, then lr_final
            cut = cfg.decay_at * span
            return lambda step: lr if step < cut else lr_final
        return lambda step: lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * (step / max(1, span - 1))))
    starts = [k for k, _ in cfg.knots]
    segments, p = [], 0.0  # (k_i, p_i, e_i − 1 − k_i) of each knot
    for i, (k, end) in enumerate(cfg.knots):
        if i:
            p = segments[-1][1]
            p = min(1.0, p + (1 - p) * (k - segments[-1][0]) / segments[-1][2])
        segments.append((k, p, max(1, end - 1 - k)))

    def progress(step: int) -> float:
        k, p0, d = segments[bisect.bisect_right(starts, step) - 1]
        return min(1.0, p0 + (1 - p0) * (step - k) / d)

    if cfg.schedule == "step":
        at = cfg.decay_at
        return lambda step: lr if progress(step) < at else lr_final
    return lambda step: lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * progress(step)))


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for `step` (0-based) under the configured schedule (`schedule_of`)."""
    return schedule_of(cfg)(step)


EVAL_BUDGET = 0.05  # the default --eval-every spends at most about this share of the training work on val


def resolve_eval_every(cfg: TrainConfig, val_positions: int, row_positions: float = 1.0) -> int:
    """Steps between val evaluations: `eval_every` as given, 0 for never; by default (−1) about 20
    per run, fewer where evaluating the val split's `val_positions` targets that often would cost
    more than ~5 % of the training's work, steps × batch × `row_positions` (a training row's mean
    targets: 1 for context windows, the mean item length + 1 for whole items) positions. Positions,
    not rows: evaluation costs what it reads (a forward pass over a position costs about what a
    training step spends per position, the backward and update included, for these small models).
    It depends only on the configuration and the data, never on timing, so a run's files stay
    reproducible."""
    if cfg.eval_every >= 0:
        return cfg.eval_every
    if val_positions == 0:
        return 0
    n = max(1, min(20, int(EVAL_BUDGET * cfg.steps * cfg.batch_size * row_positions / val_positions)))
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
        (cfg.budget == 0 or MIN_BUDGET <= cfg.budget <= MAX_BUDGET,
         f"--budget must be between {MIN_BUDGET:g} s and 7 days, got {cfg.budget} s"),
        (0 <= cfg.time_limit <= MAX_BUDGET, f"time_limit must be between 0 and 7 days, got {cfg.time_limit}"),
        (0 <= cfg.schedule_steps <= 100_000_000, f"schedule_steps must be between 0 and 100000000, got {cfg.schedule_steps}"),
        (cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}"),
        (cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"),
        (cfg.engine in ENGINES, f"unknown engine {cfg.engine!r}; choose one of {', '.join(ENGINES)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise CharmlpError(msg)
    knots = cfg.knots
    if knots and not (knots[0][0] == 0 and all(a[0] < b[0] for a, b in zip(knots, knots[1:], strict=False))
                      and all(k < end <= 100_000_000 for k, end in knots)):
        raise CharmlpError(f"knots must be [step, end] pairs with steps rising from 0 and step < end ≤ 100000000, "
                           f"got {[list(k) for k in knots]}")
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
    (B, T, C) input counts its B·T rows, as BatchNorm1d does. Across data-parallel ranks each
    sums its slice of X and the float64 sums are all-reduced."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunk = eval_chunk(model, X, chunk)
    world = distributed.world()
    if world is not None:  # data-parallel: each rank its contiguous slice of X, the sums all-reduced
        X = X[world.share(len(X))]
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
        if world is not None:  # each rank summed its slice of the rows
            sums = distributed.all_reduce_sum(torch.cat([s, s2, s.new_full((1,), n)]))
            s, s2, n = sums[: len(s)], sums[len(s) : -1], int(sums[-1])
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
    if resume and out_dir is None:
        raise CharmlpError("resuming needs the run directory")
    cfg = cfg or RunConfig()
    world = distributed.init_world(resolve_device(cfg.train.device).type)  # None outside torchrun
    error, prepared = None, None
    try:
        prepared = _prepared(cfg, dataset)
    except CharmlpError as e:
        error = e
    distributed.agree(error, "load its data or check its options")  # one rank's bad input stops every rank
    assert prepared is not None
    cfg, dataset, device = prepared
    if world is not None:
        _check_world(cfg, dataset, world)
    lead = world is None or world.rank == 0  # the one rank that writes, shows progress and runs the hooks
    t0 = time.perf_counter()
    plan = None  # a budget run's plan; config.json records it (a resumed budget run keeps its knots and steps)
    if cfg.train.budget and not resume:
        plan = plan_budget(cfg, dataset, device, evals=lambda c: _n_evals(c.train, dataset))
    while True:
        try:
            return _run(cfg if plan is None else plan.cfg, dataset, device, world, lead, out_dir, progress, hooks,
                        resume, force, t0, plan)
        except Reshaped as r:  # the loop's own rate buys another shape: start over in it, on the budget's clock
            if lead:
                print(r.note, file=sys.stderr)
            plan, force = dataclasses.replace(r.plan, started=plan.started), True  # its directory begun: ours


def _run(cfg: RunConfig, dataset: Dataset, device: torch.device, world: distributed.World | None, lead: bool,
         out_dir: str | Path | None, progress: bool, hooks: tuple[StepHook, ...], resume: bool, force: bool,
         t0: float, plan: BudgetPlan | None) -> TrainResult:
    """`train` once its data is prepared and a budget planned (`plan`: its steps and shape)."""
    budget = 0.0 if plan is None else plan.budget
    if plan is not None:
        every = resolve_eval_every(cfg.train, *eval_positions(dataset))  # as planned: the re-plans move the steps
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, budget=0.0, eval_every=every))
    g = torch.Generator().manual_seed(cfg.train.seed)
    model = build_model(cfg.model, generator=g).to(device)
    model.train()
    optimizer = make_optimizer(cfg.train, model)
    Xtr, Ytr = dataset.X["train"].to(device), dataset.Y["train"].to(device)
    cfg = _fit_closed_form(cfg, model, Xtr, Ytr)
    tc = cfg.train
    state = TrainState(0, torch.empty(tc.steps), torch.full((tc.steps,), math.nan, dtype=torch.float64))
    run_dir = None if out_dir is None else RunDirectory(out_dir, cfg, dataset)
    saver = None if run_dir is None else CheckpointSaver(run_dir, model, optimizer, g, state.losses, state.val_losses,
                                                         writes=lead)
    with contextlib.nullcontext() if run_dir is None or not lead else run_dir.holding():  # one writer, first file to last
        if saver is not None:
            state.step = saver.restore(_begin(saver, resume, force, lead))
        start = state.step
        # one optimizer step on a minibatch it draws from g: the fused fast step, or the eager engines.
        # Built after the restore: the fast step holds views of the optimizer's state tensors.
        train_step, engine = make_train_step(_world_engine(tc.engine, model, optimizer, world, lead), model, optimizer,
                                             Xtr, Ytr, tc.batch_size, g)
        reducer = None if world is None else _shard(train_step, model, saver)
        Xval, Yval = dataset.X["val"], dataset.Y["val"]
        loop = TrainLoop(
            tc, train_step, state, model, saver,
            eval_every=resolve_eval_every(tc, *eval_positions(dataset)),  # 0 for an empty val split
            val_loss=lambda: sharded_split_loss(model, Xval, Yval),
            hooks=hooks if lead else tuple(_Mirror(h) for h in hooks),
            window=resolve_sync_every(tc, device) if isinstance(train_step, EagerStep) else 1,
            bar=tqdm(total=tc.steps, initial=start, desc="train", disable=not (progress and lead), mininterval=0.5,
                     dynamic_ncols=True),
            follow_clock=None if plan is None else plan.val_seconds,
            reshape=None if plan is None else plan.reshape,
        )
        t_loop = time.perf_counter()
        if world is None:
            loop.run()
        else:
            _run_across_ranks(loop, saver, lead)
        loop_seconds = time.perf_counter() - t_loop
        cfg = dataclasses.replace(cfg, train=loop.tc)  # a schedule that followed the clock: with its knots
        if state.step < loop.tc.steps or len(state.losses) > state.step:  # the time limit stopped the loop, or
            cfg, state = _stopped_early(cfg, state)  # a re-plan left room: a finished run of the steps taken
        tc = cfg.train
        if run_dir is not None:
            run_dir.cfg = cfg
        train_seconds = time.perf_counter() - t0
        calibrate = bool(model.batchnorms()) and tc.calibrate_bn
        if calibrate:
            calibrate_batchnorm(model, Xtr)
        model.eval()
        seconds_before = 0.0 if saver is None else saver.seconds_before  # the processes before a resume
        with tqdm(desc="eval", unit="char", unit_scale=True, disable=not (progress and lead), mininterval=0.5,
                  dynamic_ncols=True) as bar:  # the end-of-run losses, counted in predicted characters
            # the loop's evaluation after the last step saw these weights, unless calibration changed them
            last_val = None if calibrate or not len(state.val_losses) else state.val_losses[-1].item()
            split_losses, train_items = final_losses(  # a budget run's train loss: on a sample the size of val
                model, dataset, progress=bar.update, exact_items=budget_train_items(dataset) if budget else None,
                val=None if last_val is None or math.isnan(last_val) else last_val,
                loss=sharded_split_loss)  # across ranks: each a slice of every split, the sums all-reduced
        summary = _summary(model, dataset, split_losses, train_items, state.losses,
                           seconds=seconds_before + time.perf_counter() - t0,
                           train_seconds=seconds_before + train_seconds, steps_per_s=(tc.steps - start) / train_seconds)
        summary.update(engine=engine, step_impl=getattr(train_step, "impl", "eager"),  # fast: "compiled" or "numpy"
                       device=str(device), bn_calibrated=calibrate, loop_seconds=loop_seconds)
        size = 1 if world is None else world.size
        summary.update(world_size=size, rank_batch_size=tc.batch_size // size)
        if reducer is not None and reducer.calls:
            summary["allreduce_seconds_per_step"] = reducer.seconds / reducer.calls
        if run_dir is not None and lead:  # a run stopped early rewrites config.json: it records the steps taken
            _write_run(run_dir, state, summary, model, keep_config=resume and not (tc.schedule_steps or tc.knots))
        if budget:  # what the budget's clock counted, the run directory written; start-up before it
            summary.update(budget_seconds=budget, budget_used=time.perf_counter() - plan.started,
                           startup_seconds=plan.started - t0, time_limit=tc.time_limit)
            if plan.reshaped is not None:
                summary["reshaped"] = plan.reshaped
            if run_dir is not None:
                write_json(run_dir.path / SUMMARY, summary)
    return TrainResult(model, dataset, cfg, state.losses.tolist(), summary, None if run_dir is None else run_dir.path)


def eval_positions(dataset: Dataset) -> tuple[int, float]:
    """The val split's targets, and a training row's mean targets (`resolve_eval_every`'s units)."""
    Ytr, Yval = dataset.Y["train"], dataset.Y["val"]
    if not dataset.sequence:
        return len(Yval), 1.0
    return count_targets(Yval), count_targets(Ytr) / max(1, len(Ytr))


def _n_evals(tc: TrainConfig, dataset: Dataset) -> int:
    """How many val evaluations the loop makes in `tc.steps` steps (the last step's included)."""
    every = resolve_eval_every(tc, *eval_positions(dataset))
    return 0 if every == 0 else tc.steps // every + (tc.steps % every != 0)


def _stopped_early(cfg: RunConfig, state: TrainState) -> tuple[RunConfig, TrainState]:
    """A run the time limit stopped after `state.step` steps, as a run of that many steps planned so:
    its learning-rate schedule still the one planned (`schedule_steps`; knots need none: they hold
    the span), the loss records cut there."""
    tc = cfg.train
    span = tc.schedule_steps or (0 if tc.knots or state.step == tc.steps else tc.steps)
    tc = dataclasses.replace(tc, steps=state.step, schedule_steps=span)
    state = dataclasses.replace(state, losses=state.losses[: state.step].clone(),
                                val_losses=state.val_losses[: state.step].clone())
    return dataclasses.replace(cfg, train=tc), state


def _check_world(cfg: RunConfig, dataset: Dataset, world: distributed.World) -> None:
    """What data-parallel training needs: a global batch that splits evenly, no ensemble (its
    members split the batch among themselves), and every rank with the same run configuration
    and data (a hash, compared across ranks; the data file's path may differ between machines)."""
    facts = dataclasses.asdict(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=None)))
    distributed.check_same(json.dumps(facts, sort_keys=True, default=str) + data_fingerprint(dataset),
                           "run configuration or data")  # first: every rank then checks the same options
    B, W = cfg.train.batch_size, world.size
    if B % W:
        raise distributed.refuse(f"{flag('--batch-size', B)} does not split evenly across {W} processes; "
                                 f"pass a multiple of {W} (--batch-size is the global batch)")
    if cfg.train.budget or cfg.train.time_limit:
        raise distributed.refuse("--budget trains in one process only: each rank would time its own steps; "
                                 "give --steps, or train without torchrun")
    if getattr(cfg.model, "members", 1) > 1:
        raise distributed.refuse("an ensemble (--members) trains in one process only: its members split the batch "
                                 "among themselves; drop --members or train without torchrun")


def _begin(saver: CheckpointSaver, resume: bool, force: bool, lead: bool) -> Checkpoint | None:
    """The run directory begun by the writing rank (see `RunDirectory.begin`); every rank waits for
    it, and a resumed rank other than 0 reads the checkpoint rank 0 checked."""
    error, ck = None, None
    if lead:
        try:
            ck = saver.run_dir.begin(resume, force)
        except CharmlpError as e:
            error = e
    distributed.agree(error, "begin the run directory")
    if not lead and resume:
        ck = read_checkpoint(saver.run_dir.path)
    return ck


def _world_engine(engine: str, model: LanguageModel, optimizer: torch.optim.Optimizer,
                  world: distributed.World | None, lead: bool) -> str:
    """The engine to build: across ranks the fused step (no all-reduce inside) gives way to the
    manual engine, its own math, with one line on rank 0 where the fused step would have run."""
    if world is None or engine not in ("auto", "fast") or unsupported_reason(model, optimizer) is not None:
        return engine
    if lead:
        print(f"note: {world.size} processes train with the manual engine (the fused step has no all-reduce)",
              file=sys.stderr)
    return "manual"


def _shard(train_step: StepFn, model: LanguageModel, saver: CheckpointSaver | None) -> distributed.GradientReducer:
    """Make the eager step a data-parallel rank's: its rows of each batch, its gradients summed
    across ranks with the loss and the stop flag (a Ctrl-C/SIGTERM on any rank stops every rank
    after the same step)."""
    assert isinstance(train_step, EagerStep)
    signals = None
    if saver is not None:
        signals = saver.signals = AgreedStopSignals()
    reducer = distributed.GradientReducer(list(model.parameters()),
                                          stop_local=lambda: None if signals is None else signals.local)
    world = distributed.world()
    assert world is not None

    def reduce(loss: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
        loss = reducer(loss, count)
        if signals is not None:
            signals.agreed = reducer.stop
        return loss

    train_step.shard = Shard(world.share, reduce)
    return reducer


class _Mirror:
    """A rank other than 0's stand-in for one of rank 0's hooks: it runs nothing, but wants the same
    steps, so every rank's windows end where rank 0's do (a replayed window then replays alike)."""

    def __init__(self, hook: StepHook) -> None:
        self.hook = hook

    def wants(self, step: int) -> bool:
        return wants(self.hook, step)

    def __call__(self, step: int, model: LanguageModel, lr: float, loss: torch.Tensor) -> None:
        pass


def _run_across_ranks(loop: TrainLoop, saver: CheckpointSaver | None, lead: bool) -> None:
    """The loop on one rank of several: a lost rank is one line with the checkpoint left to resume;
    what every rank sees alike (a non-finite loss) is said by rank 0 alone."""
    try:
        loop.run()
    except distributed.LostRank as e:
        where = "no checkpoint was written yet"
        if saver is not None and saver.last_saved >= 0:
            where = (f"the checkpoint after {saver.last_saved} steps in {saver.run_dir.path} is intact: continue "
                     f"with `charmlp train --resume {saver.run_dir.path}`")
        raise distributed.LostRank(f"{e} at step {loop.state.step} of {loop.tc.steps}; {where}") from None
    except CharmlpError as e:
        if lead:
            raise
        raise ReportedElsewhere(str(e)) from None


@torch.no_grad()
def sharded_split_loss(model: LanguageModel, X: torch.Tensor, Y: torch.Tensor,
                       progress: Callable[[int], None] | None = None) -> float:
    """`split_loss` over (X, Y), each data-parallel rank taking a contiguous slice of the rows:
    L = Σ_r L_r·n_r / Σ_r n_r (n_r: the slice's real targets), one float64 all-reduce. One process: split_loss."""
    world = distributed.world()
    if world is None:
        return split_loss(model, X, Y, progress=progress)
    rows = world.share(len(Y))
    Xr, Yr = X[rows], Y[rows]
    n = count_targets(Yr) if model.cfg.sequence else len(Yr)
    sums = torch.tensor([split_loss(model, Xr, Yr, progress=progress) * n if n else 0.0, n], dtype=torch.float64,
                        device=world.device)
    distributed.all_reduce_sum(sums)
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


def _prepared(cfg: RunConfig, dataset: Dataset | None) -> tuple[RunConfig, Dataset, torch.device]:
    """The configuration checked and completed from the data (steps resolved from a budget of
    positions), the dataset, and the device to train on."""
    validate_train_config(cfg.train, getattr(cfg.model, "batchnorm", False), getattr(cfg.model, "members", 1))
    cfg, dataset = prepare_data(cfg, dataset)
    validate_batch_memory(cfg)
    return cfg, dataset, resolve_device(cfg.train.device)


def _fit_closed_form(cfg: RunConfig, model: LanguageModel, Xtr: torch.Tensor, Ytr: torch.Tensor) -> RunConfig:
    """A model its spec fits in closed form (bigram --fit counts) is fitted here and takes no step:
    `cfg` with steps 0; else the batch is checked against the training split."""
    fit = spec_of(cfg.model).fit
    if fit is not None and fit(model, Xtr, Ytr):
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=0))
    check_batch_fits(cfg.train.batch_size, len(Ytr))
    return cfg


def _summary(model: LanguageModel, dataset: Dataset, split_losses: dict[str, float], train_items: int,
             losses: torch.Tensor, seconds: float, train_seconds: float, steps_per_s: float) -> dict:
    """summary.json's figures: the first minibatch loss, each split's loss of the final (eval-mode)
    model (train's an estimate on `train_items` items where that is fewer than the split's), the
    steps, the wall times (those of the processes before a resume included), the size."""
    return {
        "init_loss": losses[0].item() if len(losses) else None,  # None (null): fitted in closed form, no step
        "train_loss": split_losses["train"],
        "train_loss_estimate": train_items < len(dataset.items["train"]),  # True: on a seeded sample of items
        "train_loss_items": train_items,
        "val_loss": split_losses["val"],
        "test_loss": split_losses["test"],
        "steps": len(losses),
        "seconds": seconds,
        "train_seconds": train_seconds,
        "steps_per_s": steps_per_s,
        "ln_vocab": math.log(dataset.vocab.size),
        "n_params": sum(p.numel() for p in model.parameters()),
    }


def _write_run(run_dir: RunDirectory, state: TrainState, summary: dict, model: LanguageModel,
               keep_config: bool) -> None:
    """The run directory's final files, the weights last: model.safetensors marks a finished run."""
    cfg, out = run_dir.cfg, run_dir.path
    run_dir.claim()  # --force with no step taken: the old run is replaced now
    write_metrics(out, metrics_lines(cfg.train, state.losses.tolist(), state.val_losses.tolist()))
    write_json(out / SUMMARY, summary)
    save_run(out, cfg, run_dir.dataset.vocab, model, keep_config=keep_config)
    run_dir.finish()


SYNC_EVERY_GPU = 50  # steps between loss read-backs on a GPU (--sync-every 0)


def resolve_sync_every(cfg: TrainConfig, device: torch.device) -> int:
    """Steps per host sync of the eager engines: `sync_every` as given, else SYNC_EVERY_GPU on a
    GPU and 1 on the CPU, where reading a loss back costs nothing."""
    if cfg.sync_every:
        return cfg.sync_every
    return SYNC_EVERY_GPU if device.type == "cuda" else 1


POSTFIX_EVERY = 200  # steps between the bar's loss figures in one-step windows (formatting costs a fast step)


@dataclass(slots=True)
class TrainState:
    """The training loop's state, all of it: the next step to take, every step's minibatch loss
    (float32), the val losses (float64, nan where not evaluated), the last step's learning rate,
    and the figures the progress bar shows. A checkpoint saves the two loss tensors up to `step`."""

    step: int
    losses: torch.Tensor
    val_losses: torch.Tensor
    lr: float = math.nan
    postfix: dict[str, str] = field(default_factory=dict)


class TrainLoop:
    """The training loop, for every model, engine and device: windows of steps.

    A window is one checked step (the fused fast step; the eager engines with a `window` of 1,
    where reading each loss back costs nothing), or up to `window` steps with no host sync inside
    (`EagerStep.window`), ending wherever the loop does something the host must see: a checkpoint,
    a val evaluation, a step a hook wants (a hook's `wants(step)`; one without it wants every step),
    Ctrl-C/SIGTERM. At its end the losses come back in one copy; a non-finite one sends the state
    back to the window's start and the window is replayed one checked step at a time, so the run
    stops where, and with the state that, one-step windows give. Same seed, same losses, bit for bit.

    Between windows, in one place (`_after_window`): the val evaluation, the hooks, the progress
    bar, the checkpoint.
    """

    def __init__(self, tc: TrainConfig, train_step: StepFn, state: TrainState, model: LanguageModel,
                 saver: CheckpointSaver | None, *, eval_every: int, val_loss: Callable[[], float],
                 hooks: tuple[StepHook, ...], window: int, bar: tqdm, follow_clock: float | None = None,
                 reshape: Reshaper | None = None) -> None:
        self.tc, self.train_step, self.state, self.model, self.saver = tc, train_step, state, model, saver
        self.eval_every, self.val_loss, self.hooks, self.window, self.bar = eval_every, val_loss, hooks, window, bar
        self.lr = schedule_of(tc)
        # a budget run's schedule follows the clock (`_replan`): the seconds a val evaluation is
        # expected to take until one is measured; None: the steps stay as configured
        self.follow_clock = follow_clock if tc.time_limit and tc.knots else None
        # a shape the rule chose from the calibration, chosen again once from the loop's own rate (`_replan`)
        self.reshape = reshape if self.follow_clock is not None else None
        self._started = math.nan  # the loop's start, a perf_counter()
        self.eval_seconds, self.evals = 0.0, 0  # the loop's val evaluations: their time, their count
        self._samples: collections.deque[tuple[float, int, float]] = collections.deque()  # (clock, step, eval_seconds)
        signals = None if saver is None else saver.signals  # without a run directory no signal is caught
        self._stop_asked = (lambda: False) if signals is None else (lambda: signals.pending is not None)
        self._val_hooks = [h.on_val for h in hooks if hasattr(h, "on_val")]
        self._hook_stop = False  # a hook's on_val asked to end the run

    def run(self) -> None:
        """From `state.step` to the last step; a caught Ctrl-C/SIGTERM stops cleanly at a window's end."""
        st, window = self.state, self.window
        checked_step, after_window = self._checked_step, self._after_window  # bound once: the loop is hot
        clock = time.perf_counter
        self._started = started = clock()
        deadline = started + self.tc.time_limit if self.tc.time_limit else math.inf
        every = math.inf if self.follow_clock is None else replan_seconds(self.tc.time_limit)
        self._samples.append((started, st.step, 0.0))
        check = min(deadline, started + every)  # the next time the clock is read for more than the deadline
        # or the step: a machine that sped up past the plan's rate re-plans before its time, at the latest at
        # the plan's end
        due = self.tc.steps
        with contextlib.nullcontext() if self.saver is None else self.saver.signals.catching():
            try:
                # a re-plan moves the end; a plan's end reached with more than two re-plans' time left (a
                # calibration far slower than the loop) is re-planned from the rate since the last re-plan
                while st.step < self.tc.steps or (self.follow_clock is not None and deadline - clock() > 2 * every):
                    if self._hook_stop or ((now := clock()) >= check and now >= deadline):  # the time limit: finished
                        self._stop_on_time()
                        break
                    if now >= check or st.step >= due:  # a re-plan is due
                        due = min(self.tc.steps, self._replan(now, deadline - now, every, st.step >= due and now < check))
                        check = min(deadline, now + every)
                        if st.step >= self.tc.steps:
                            break
                    first = st.step
                    if window == 1 or (end := self._window_end(first)) == first + 1:
                        st.lr = lr = self.lr(first)
                        checked_step(first, lr)
                        last = first
                    else:
                        last = self._window(first, end)
                    st.step = last + 1
                    after_window(first, last)
            finally:  # count the steps taken, and end the progress bar's line before any message
                if not self.bar.disable:
                    self.bar.update(st.step - self.bar.n)
                self.bar.close()

    def _replan(self, now: float, left: float, every: float, sped_up: bool) -> int:
        """The steps re-planned from the rate of a recent stretch (steps over its time less its val
        evaluations'; `sped_up`: the steps since the last re-plan, twice what its rate gave in its
        `every` seconds) so that the loop's last step ends at its time limit, `left` seconds from
        `now` (`budget.replanned_steps`): a knot (this step, the new end) added to the schedule.
        Returns the step by which the next re-plan is due, whatever the clock says."""
        st, tc, samples = self.state, self.tc, self._samples
        samples.append((now, st.step, self.eval_seconds))
        stretch = RATE_STRETCH * tc.time_limit
        while len(samples) > 2 and now - samples[1][0] >= stretch:  # the oldest sample at least `stretch` back
            samples.popleft()
        t0, s0, e0 = samples[-2] if sped_up else samples[0]
        busy = now - t0 - (self.eval_seconds - e0)
        if st.step <= s0 or busy <= 0:
            return sys.maxsize
        rate = (st.step - s0) / busy
        if self.reshape is not None and now - self._started >= RESHAPE_AT * tc.time_limit:
            reshape, self.reshape = self.reshape, None  # once
            if (reshaped := reshape(rate, left, now - self._started)) is not None:
                raise reshaped  # `train` starts over in the shape this rate buys
        per_eval = self.eval_seconds / self.evals if self.evals else self.follow_clock
        steps = st.step + replanned_steps(left, rate, per_eval or 0.0, self.eval_every)
        if steps != tc.steps:
            knots = tc.knots[:-1] if tc.knots[-1][0] == st.step else tc.knots  # one knot a step
            self._retarget(dataclasses.replace(tc, steps=steps, knots=(*knots, (st.step, steps))))
        return st.step + max(2, int(2 * rate * every))

    def _retarget(self, tc: TrainConfig) -> None:
        """The loop, its loss records (grown with room to spare), its checkpoints and its bar, for the steps of `tc`."""
        self.tc, self.lr, st = tc, schedule_of(tc), self.state
        if tc.steps > len(st.losses):
            n = min(100_000_000, tc.steps + tc.steps // 4)
            losses, val_losses = torch.empty(n), torch.full((n,), math.nan, dtype=torch.float64)
            losses[: st.step], val_losses[: st.step] = st.losses[: st.step], st.val_losses[: st.step]
            st.losses, st.val_losses = losses, val_losses
        if self.saver is not None:
            self.saver.retarget(tc, st.losses, st.val_losses)
        self.bar.total = tc.steps

    def _stop_on_time(self) -> None:
        """The end of a run its time limit stops: the val loss of its last step, as the last step
        of every run has one."""
        st, last = self.state, self.state.step - 1
        if self.eval_every and last >= 0 and math.isnan(st.val_losses[last].item()):
            st.val_losses[last] = self.val_loss()

    def _checked_step(self, step: int, lr: float) -> None:
        """One step whose loss is read back at once: a non-finite one stops the run before it updates anything."""
        loss = self.train_step(lr)  # draws the batch from g, fills .grad, steps the optimizer (not on a non-finite loss)
        if not math.isfinite(float(loss)):  # 0.2 µs, where torch.isfinite costs 6 µs a step
            raise self._diverged(step, loss, lr)
        self.state.losses[step] = loss

    def _window_end(self, start: int) -> int:
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

    def _hooked(self, s: int) -> bool:
        return any(wants(h, s) for h in self.hooks)

    def _window(self, first: int, end: int) -> int:
        """Steps `first`…`end − 1` with one host sync, at their end; returns the last step taken
        (a caught signal ends the window early)."""
        st, step = self.state, self.train_step
        assert isinstance(step, EagerStep)
        lr = self.lr
        lrs = [lr(s) for s in range(first, end)]
        snap = step.snapshot()
        chunk = step.window(lrs, stop=self._stop_asked).cpu()  # the one host sync
        if not bool(torch.isfinite(chunk).all()):
            step.restore(snap)
            for i in range(len(chunk)):  # replay: the checked step stops on the first non-finite loss
                self._checked_step(first + i, lrs[i])
        last = first + len(chunk) - 1
        st.losses[first : last + 1] = chunk
        st.lr = lrs[len(chunk) - 1]
        return last

    def _after_window(self, first: int, last: int) -> None:
        """Everything the loop does besides stepping, here alone, after the window `first`…`last`:
        the val evaluation when due (every `eval_every` steps, and the last step: eval mode,
        BatchNorm's running statistics), the hooks, the progress bar, then the checkpoint (periodic,
        final, or on a caught Ctrl-C/SIGTERM: saved, then `TrainingInterrupted`)."""
        st = self.state
        if self.eval_every and ((last + 1) % self.eval_every == 0 or last + 1 == self.tc.steps):
            t = time.perf_counter()
            st.val_losses[last] = val = self.val_loss()
            self.eval_seconds += time.perf_counter() - t
            self.evals += 1
            st.postfix["val"] = f"{val:.4f}"
            for on_val in self._val_hooks:
                self._hook_stop |= bool(on_val(last, self.tc.steps, val))
        for hook in self.hooks:  # windows end at the steps hooks want
            if wants(hook, last):
                hook(last, self.model, st.lr, st.losses[last])
        bar = self.bar
        if not bar.disable:
            # a window of several steps has paid a host sync already; a one-step one shows every 200th step
            if self.window > 1 or last % POSTFIX_EVERY == 0:
                st.postfix.update(loss=f"{st.losses[last].item():.4f}", lr=f"{st.lr:g}")
                bar.set_postfix(st.postfix, refresh=False)
            if last + 1 - bar.last_print_n >= bar.miniters:  # tqdm's own gate, which its iterator keeps
                bar.update(last + 1 - bar.n)  # too: an update call a step would cost a fast step 0.5 µs
        if self.saver is not None:
            self.saver.after_step(last)

    def _diverged(self, step: int, loss: torch.Tensor | float, lr: float) -> CharmlpError:
        """The error that stops a run on a non-finite loss, after saving the last good state."""
        where = ""
        saver = self.saver
        if saver is not None:
            if all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                saver.save(step, "non-finite")
                where = f"; the last good state (after {step} steps) is saved in {saver.run_dir.path}"
            elif saver.last_saved >= 0:
                where = f"; the last good checkpoint (after {saver.last_saved} steps) is kept in {saver.run_dir.path}"
        return CharmlpError(
            f"the loss became non-finite ({float(loss)}) at step {step} of {self.tc.steps}: the learning rate "
            f"(lr {lr:g}) is probably too high; train again with a lower --lr{where}"
        )


def metrics_lines(tc: TrainConfig, losses: list[float], val_losses: list[float]) -> Iterator[str]:
    """metrics.jsonl's lines: every `log_every`-th step's minibatch loss and lr, and every step
    whose val loss was evaluated (`--eval-every`) with it as "val_loss"."""
    lr_at = schedule_of(tc)
    for s in range(tc.steps):
        loss, val = losses[s], val_losses[s]
        if not math.isnan(val):
            yield json.dumps({"step": s, "loss": loss, "lr": lr_at(s), "val_loss": val})
        elif s % tc.log_every == 0:  # json.dumps's text, 3× faster: both write repr() of the finite numbers
            yield f'{{"step": {s}, "loss": {loss!r}, "lr": {lr_at(s)!r}}}'


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
