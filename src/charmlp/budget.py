"""Training to a wall-time budget: `--budget 10m` plans the run from the data and this machine.

The plan, made once at the start of a run (`plan_budget`):

1. **Calibrate**: build the model as configured, time its training step for a short while (a few
   per cent of the budget) on the training split, and time one pass over the val split.
2. **Choose the shape** (the sequence models, `RULES`): how many epochs one model would see in
   the budget at that rate, E = steps × batch ÷ training rows. Where E passes the epochs at which
   one model of that kind starts to over-fit (measured on names), the budget buys an ensemble of
   M = ⌊E ÷ E_fit⌋ members (each on its own `batch`-row share, so each still sees about E_fit
   epochs) with the rule's dropout; below it, one model trained for all the budget. An ensemble is
   calibrated again. `--members` or `--dropout` given: the rule leaves both alone.
3. **Plan the steps**: the loop's time L = budget − what the calibration spent − the end of the run
   (`final_losses` with `budget_train_items`, estimated from the val pass); steps = rate × (L − the
   periodic val evaluations). The learning-rate schedule is one of the progress p ∈ [0, 1], which
   starts as step ÷ (steps − 1): the knot (0, steps).
4. **Follow the clock** (the loop, `replanned_steps`): every `REPLAN_SHARE` of L the loop re-plans
   its end from the steps/s of its last `RATE_STRETCH` of L (its val evaluations' time left out;
   sooner, from the rate since the last re-plan, where it ran twice the steps that one expected)
   and what its remaining evaluations will take, so that its last step lands at L; a new end adds
   a knot (step, end): from there p goes linearly from where it is to 1 at the new end, so the
   schedule ends complete whether the machine sped up or slowed down.
5. **Guard**: `time_limit` = L stops the loop at L (a machine that slows down in the last
   re-plan's stretch), the run then ends as a finished run whose config.json records the steps taken.

The steps depend on timing, so two budget runs differ; the run directory's config.json (steps,
knots, shape, no budget) reproduces a budget run bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import RunConfig
from .data import Dataset
from .engines.fast import make_train_step
from .errors import CharmlpError, flag
from .evaluate import split_loss, train_rows
from .models import build_model
from .optim import make_optimizer

CALIBRATE_SHARE = 0.03  # of the budget, for each calibration
CALIBRATE_MIN, CALIBRATE_MAX = 0.2, 10.0  # seconds
WARMUP_STEPS = 3  # untimed steps first (allocations, kernels' first calls)
# the loop re-plans its end every REPLAN_SHARE of its time (at least REPLAN_MIN seconds), from the rate
# of its last RATE_STRETCH, and sooner where it took twice the steps the last re-plan's rate gave (then
# from the rate since): a shared machine's rate swings by 10 % and more, and when other jobs come and go by 10×
REPLAN_SHARE, REPLAN_MIN = 0.015, 0.05
RATE_STRETCH = 0.03
END_FIXED = 0.1  # seconds for writing the run directory and the rest of the end of a run
MIN_LOOP_SHARE = 0.25  # a budget that leaves the loop less than this share of it is refused


@dataclass(frozen=True)
class EnsembleRule:
    """When a sequence model's budget buys an ensemble: one member over-fits after about
    `fit_epochs` epochs of the training rows (on names: the epochs each member of the old `best`
    preset saw, the over-fitting point found there by measurement)."""

    fit_epochs: float
    max_members: int
    dropout: float  # each member's, in an ensemble


# names (25 626 training items), the 10-minute presets these rules replace: gru 12 000 steps of 64 rows a
# member (30 epochs), 4 members, dropout 0.1; rnn 18 000 × 64 (45 epochs), 6 members; transformer
# 18 000 × 32 (22 epochs), 2 members, dropout 0.1 (see models/rnn.py, models/transformer.py)
RULES: dict[str, EnsembleRule] = {
    "gru": EnsembleRule(fit_epochs=30.0, max_members=4, dropout=0.1),
    "rnn": EnsembleRule(fit_epochs=45.0, max_members=6, dropout=0.0),
    "transformer": EnsembleRule(fit_epochs=22.0, max_members=2, dropout=0.1),
}


@dataclass(frozen=True)
class Calibration:
    steps_per_s: float
    val_seconds: float  # one pass over the val split
    eval_fixed: float  # of which what any pass costs, however few its rows (a pass over 8 rows)
    setup_seconds: float  # building the model, its optimizer and its step
    ready: float  # time.perf_counter() after the first steps: the process's start-up is behind it


def calibrate(cfg: RunConfig, dataset: Dataset, device: torch.device, seconds: float, warm: bool = True) -> Calibration:
    """Time `cfg`'s training step for about `seconds` on a model of its own, and one pass over the
    val split. A first model takes the process's first calls (lazy imports, compiled kernels
    loaded: once a process) untimed; a second one is timed from its build. The run's own model and
    generator are untouched: the run is what its configuration says, whatever was measured here.
    `warm=False`: the process's first calls are behind it (a second calibration), no untimed model."""
    Xtr, Ytr = dataset.X["train"].to(device), dataset.Y["train"].to(device)
    lr = cfg.train.lr

    def build() -> tuple[torch.nn.Module, Callable[[float], torch.Tensor]]:
        g = torch.Generator().manual_seed(cfg.train.seed)
        model = build_model(cfg.model, generator=g).to(device)
        model.train()
        opt = make_optimizer(cfg.train, model)
        step = make_train_step(cfg.train.engine, model, opt, Xtr, Ytr, cfg.train.batch_size, g)[0]
        for _ in range(WARMUP_STEPS):  # first calls: allocations, kernels' first runs
            float(step(lr))
        return model, step

    if warm:
        build()
    ready = t0 = time.perf_counter()
    model, step = build()
    setup = time.perf_counter() - t0  # what the run's own set-up costs (its first steps are in its loop)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 2:
        float(step(lr))  # read back: a GPU step is timed to its end
        n += 1
    Xval, Yval = dataset.X["val"], dataset.Y["val"]
    split_loss(model, Xval[:8], Yval[:8])  # the eval forward's first call, untimed
    t1 = time.perf_counter()
    split_loss(model, Xval[:8], Yval[:8])
    t2 = time.perf_counter()
    split_loss(model, Xval, Yval)
    return Calibration(n / elapsed, time.perf_counter() - t2, min(t2 - t1, time.perf_counter() - t2), setup, ready)


def _calibration_seconds(budget: float) -> float:
    return min(CALIBRATE_MAX, max(CALIBRATE_MIN, CALIBRATE_SHARE * budget))


def plan_budget(cfg: RunConfig, dataset: Dataset, device: torch.device,
                evals: Callable[[RunConfig], int]) -> tuple[RunConfig, float, float]:
    """`cfg` (completed from the data, `budget` > 0) with its steps, shape, first knot and time limit
    planned to end the run `budget` seconds after the budget's clock starts; that start (a
    `time.perf_counter()`): when the first calibration's first steps are done, so the process's
    start-up (imports, the kernels' first calls: a few seconds, once) is not counted; and the
    seconds of one val pass (the loop's re-plans' estimate until it has timed one of its own).
    `evals(cfg)` is the number of periodic val evaluations the loop would make. See the module's
    docstring."""
    budget = cfg.train.budget
    rows = len(dataset.Y["train"])
    cal = calibrate(cfg, dataset, device, _calibration_seconds(budget))
    started = cal.ready
    end = end_rows(dataset)  # the rows the end of the run reads (a seeded train sample: drawn once here)
    rule = RULES.get(cfg.model.kind)
    if rule is not None and getattr(cfg.model, "members", 1) == 1 and getattr(cfg.model, "dropout", 0.0) == 0.0:
        loop = _loop_seconds(cfg, dataset, cal, started, end)
        epochs = cal.steps_per_s * max(0.0, loop) * cfg.train.batch_size / max(1, rows)
        members = max(1, min(rule.max_members, int(epochs // rule.fit_epochs)))
        if members > 1:
            model = dataclasses.replace(cfg.model, members=members, dropout=rule.dropout)
            train = dataclasses.replace(cfg.train, batch_size=cfg.train.batch_size * members)
            cfg = dataclasses.replace(cfg, model=model, train=train)
            cal = calibrate(cfg, dataset, device, _calibration_seconds(budget), warm=False)
    loop = _loop_seconds(cfg, dataset, cal, started, end)
    if loop < MIN_LOOP_SHARE * budget:  # a run of a few steps is no model: say what the budget needs
        need = (budget - loop) / (1 - 2 * MIN_LOOP_SHARE)  # the loop then gets half of it
        raise CharmlpError(
            f"{flag('--budget', f'{budget:g}s')} leaves {max(0.0, loop):.1f} s to train: on this data and machine the calibration "
            f"and the final evaluation (val, test and a sample of train: {sum(end.values())} rows) take the "
            f"rest; give `--budget {math.ceil(need)}s` or more")
    steps = _steps(cal.steps_per_s * loop)
    n_evals = evals(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps)))
    stepping = max(0.0, loop - n_evals * cal.val_seconds)  # the periodic evaluations run inside the loop's time
    steps = _steps(cal.steps_per_s * stepping)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=steps, positions=0, schedule_steps=0, knots=((0, steps),),
        time_limit=max(loop, 1e-3))), started, cal.val_seconds


def replan_seconds(time_limit: float) -> float:
    """Seconds between a budget loop's re-plans."""
    return max(REPLAN_MIN, REPLAN_SHARE * time_limit)


def replanned_steps(left: float, steps_per_s: float, eval_seconds: float, eval_every: int) -> int:
    """Steps n (≥ 1) that fill the `left` seconds of a loop stepping at `steps_per_s` = r, with a val
    evaluation of `eval_seconds` = c every `eval_every` = v steps (0: none) and one after its last:
    n ÷ r + c (n ÷ v + 1) = left, so n = r (left − c) ÷ (1 + r c ÷ v)."""
    c = eval_seconds if eval_every else 0.0
    per_step = 1.0 + (steps_per_s * c / eval_every if eval_every else 0.0)
    return _steps(steps_per_s * (left - c) / per_step)


def _steps(n: float) -> int:
    return max(1, min(100_000_000, int(n)))


def budget_train_items(dataset: Dataset) -> int:
    """Items of the train split a budget run's final train loss reads: as many as val has (a seeded
    sample, `evaluate.final_losses`). A whole train split can cost more than the training a short
    budget buys: 69 000 Spanish words, a minute."""
    return max(1, len(dataset.items["val"]))


def end_rows(dataset: Dataset) -> dict[str, int]:
    """Rows of each split a budget run's final losses read (`final_losses` with `budget_train_items`)."""
    rows, _ = train_rows(dataset, budget_train_items(dataset))
    return {"train": len(dataset.Y["train"]) if rows is None else len(rows),
            "val": len(dataset.Y["val"]), "test": len(dataset.Y["test"])}


def _loop_seconds(cfg: RunConfig, dataset: Dataset, cal: Calibration, started: float, rows: dict[str, int]) -> float:
    """What the budget leaves the training loop: less what is spent, the run's own set-up and its end
    (`rows`, what `end_rows` gives: a pass's fixed cost and the val pass's cost per row;
    the files written)."""
    per_row = (cal.val_seconds - cal.eval_fixed) / max(1, len(dataset.Y["val"]))
    end = sum(cal.eval_fixed + per_row * n for n in rows.values()) + END_FIXED
    spent = time.perf_counter() - started
    return cfg.train.budget - spent - cal.setup_seconds - end  # < 0: the budget does not cover even that
