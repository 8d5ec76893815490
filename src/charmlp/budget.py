"""Training to a wall-time budget: `--budget 10m` plans the run from the data and this machine.

The plan, made once at the start of a run (`plan_budget`):

1. **Calibrate**: build the model as configured, time its training step for a short while (a few
   per cent of the budget) on the training split, and time one pass over the val split.
2. **Choose the shape** (the sequence models, `RULES`): how many epochs one model would see in
   the budget at that rate, E = steps × batch ÷ training rows. The largest ensemble is calibrated
   too. The budget buys an ensemble of as many members as each still see the epochs E_fit at which
   one model of that kind starts to over-fit (measured on names), at the ensemble's own rate (each
   member on its own `batch`-row share), with the rule's dropout; below it, one model trained for
   all the budget (with `plain_dropout` past `plain_epochs`). The chosen ensemble is calibrated.
   `--members` or `--dropout` given: the rule leaves both alone. The loop chooses again, once,
   from its own rate after `RESHAPE_AT` of its time (`Reshaper`: a calibration beside other jobs
   is no measure of ten minutes), and where that buys another shape the run starts over in it
   (`Reshaped`), on the same budget clock.
3. **Plan the steps**: the loop's time L = budget − what the calibration spent − the end of the run
   (`final_losses` with `budget_train_items`, estimated from the val pass); steps = rate × (L − the
   periodic val evaluations). The learning-rate schedule is one of the progress p ∈ [0, 1], which
   starts as step ÷ (steps − 1): the knot (0, steps).
4. **Follow the clock** (the loop, `replanned_steps`): every `REPLAN_SHARE` of L the loop re-plans
   its end from the steps/s of its last `RATE_STRETCH` of L (its val evaluations' time left out;
   sooner, from the rate since the last re-plan, where it ran twice the steps that one expected)
   and what its remaining evaluations will take, so that its last step lands at L; a new end adds
   a knot (step, end): from there p goes linearly from where it is to 1 at the new end, so the
   schedule ends complete whether the machine sped up or slowed down. A loop that reaches its end
   with more than two re-plans' time left (planned from a calibration far slower than the loop)
   re-plans there.
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
# the loop re-chooses a rule-chosen shape once, from its own rate, after RESHAPE_AT of its time (`Reshaper`);
# the planned shape stays where the rule gives it for epochs within a factor RESHAPE_BAND of the estimate
RESHAPE_AT, RESHAPE_BAND = 0.06, 1.25


@dataclass(frozen=True)
class EnsembleRule:
    """When a sequence model's budget buys an ensemble: one member over-fits after about
    `fit_epochs` epochs of the training rows (on names: the epochs each member of the old `best`
    preset saw, the over-fitting point found there by measurement)."""

    fit_epochs: float
    max_members: int
    dropout: float  # each member's, in an ensemble
    plain_epochs: float = math.inf  # one model without dropout over-fits past these: beyond, it gets `plain_dropout`
    plain_dropout: float = 0.0


# names (25 626 training items), the 10-minute presets these rules replace: gru 12 000 steps of 64 rows a
# member (30 epochs), 4 members, dropout 0.1; rnn 18 000 × 64 (45 epochs), 6 members; transformer
# 18 000 × 32 (22 epochs), 2 members, dropout 0.1 (see models/rnn.py, models/transformer.py)
RULES: dict[str, EnsembleRule] = {
    # one gru on names (the race; hidden 192, batch 64): test 1.9492 after 7.6 epochs, 1.9524 after 15.5, 1.9744
    # after 41 without dropout; after 41 (16 406 steps) with dropout 0.1 1.9458, with 0.2 1.9401
    "gru": EnsembleRule(fit_epochs=30.0, max_members=4, dropout=0.1, plain_epochs=20.0, plain_dropout=0.2),
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


@dataclass(frozen=True)
class BudgetPlan:
    """What `plan_budget` decided: the run's configuration (steps, shape, first knot, time limit),
    when the budget's clock started (a `time.perf_counter()`), the seconds of one val pass (the
    loop's re-plans' estimate until it times one of its own), and, where the rule chose the
    shape, the `Reshaper` the loop asks once, from its own rate."""

    cfg: RunConfig
    budget: float  # seconds, as given
    started: float
    val_seconds: float
    reshape: Reshaper | None = None
    reshaped: dict | None = None  # a run started over in another shape: from, to, after how many seconds


def plan_budget(cfg: RunConfig, dataset: Dataset, device: torch.device, evals: Callable[[RunConfig], int]) -> BudgetPlan:
    """`cfg` (completed from the data, `budget` > 0) with its steps, shape, first knot and time limit
    planned to end the run `budget` seconds after the budget's clock starts: when the first
    calibration's first steps are done, so the process's start-up (imports, the kernels' first
    calls: a few seconds, once) is not counted. `evals(cfg)` is the number of periodic val
    evaluations the loop would make. See the module's docstring."""
    budget = cfg.train.budget
    rows = len(dataset.Y["train"])
    cal = calibrate(cfg, dataset, device, _calibration_seconds(budget))
    cals = {1: cal}
    started = cal.ready
    end = end_rows(dataset)  # the rows the end of the run reads (a seeded train sample: drawn once here)
    rule = RULES.get(cfg.model.kind)
    if rule is not None and getattr(cfg.model, "members", 1) == 1 and getattr(cfg.model, "dropout", 0.0) == 0.0:
        base = cfg

        def epochs(m: int) -> float:  # each of m members', in the loop's time at the calibrated rates
            loop = max(0.0, _loop_seconds(base, dataset, cal, started, end))
            return loop / _interpolated({k: 1 / c.steps_per_s for k, c in cals.items()}, m) * base.train.batch_size / max(1, rows)

        shape = _shape(rule, epochs)
        # an ensemble's step batches its members' work: the largest one timed too (briefly where one model
        # looks like the choice: then for the loop's second choice, `Reshaper`), and the shape chosen again
        seconds = _calibration_seconds(budget) if shape[0] > 1 else max(CALIBRATE_MIN, _calibration_seconds(budget) / 3)
        big = _shaped(base, (rule.max_members, rule.dropout))
        cals[rule.max_members] = calibrate(big, dataset, device, seconds, warm=False)
        shape = _shape(rule, epochs)
        cfg = _shaped(base, shape)
        if shape[0] not in cals:
            cals[shape[0]] = calibrate(cfg, dataset, device, _calibration_seconds(budget), warm=False)
        cal = cals[shape[0]]
        reshape = Reshaper(base, rule, shape, cals, {m: _end_seconds(dataset, c, end) for m, c in cals.items()},
                           rows, evals)
    else:
        reshape = None
    loop = _loop_seconds(cfg, dataset, cal, started, end)
    if loop < MIN_LOOP_SHARE * budget:  # a run of a few steps is no model: say what the budget needs
        need = (budget - loop) / (1 - 2 * MIN_LOOP_SHARE)  # the loop then gets half of it
        raise CharmlpError(
            f"{flag('--budget', f'{budget:g}s')} leaves {max(0.0, loop):.1f} s to train: on this data and machine the calibration "
            f"and the final evaluation (val, test and a sample of train: {sum(end.values())} rows) take the "
            f"rest; give `--budget {math.ceil(need)}s` or more")
    return BudgetPlan(_with_steps(cfg, cal.steps_per_s, cal.val_seconds, loop, evals), budget, started, cal.val_seconds,
                      reshape)


def _shape(rule: EnsembleRule, epochs: Callable[[int], float]) -> tuple[int, float]:
    """The shape (members, dropout) the rule gives where each of m members would see `epochs(m)`
    epochs: the most members (up to max_members) that each still see fit_epochs, with the rule's
    dropout; else one model, with `plain_dropout` where its epochs pass `plain_epochs`. (Where an
    ensemble's step costs m times one model's, that is ⌊epochs(1) ÷ fit_epochs⌋ members.)"""
    members = max([m for m in range(2, rule.max_members + 1) if epochs(m) >= rule.fit_epochs], default=1)
    if members > 1:
        return members, rule.dropout
    return 1, rule.plain_dropout if epochs(1) >= rule.plain_epochs else 0.0


def _interpolated(values: dict[int, float], m: int) -> float:
    """A calibrated figure (members → seconds) for m members: straight between the calibrated
    shapes, along the nearest two beyond them; proportional to m where one model alone was calibrated."""
    if len(values) == 1:
        return values[1] * m
    points = sorted(values.items())
    (m0, v0), (m1, v1) = next(((a, b) for a, b in zip(points, points[1:], strict=False) if m <= b[0]), points[-2:])
    return v0 + (v1 - v0) * (m - m0) / (m1 - m0)


def _shaped(cfg: RunConfig, shape: tuple[int, float]) -> RunConfig:
    """`cfg` (one model, no dropout) in `shape`: an ensemble of `members`, each member on its own
    `batch_size` rows of every batch, with that dropout."""
    members, dropout = shape
    model = dataclasses.replace(cfg.model, members=members, dropout=dropout) if shape != (1, 0.0) else cfg.model
    return dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, batch_size=cfg.train.batch_size * members))


def _with_steps(cfg: RunConfig, steps_per_s: float, val_seconds: float, loop: float,
                evals: Callable[[RunConfig], int]) -> RunConfig:
    """`cfg` planned for a loop of `loop` seconds: what its periodic val evaluations leave is for
    stepping, steps = rate × that; the knot (0, steps), the time limit `loop`."""
    steps = _steps(steps_per_s * loop)
    n_evals = evals(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps)))
    stepping = max(0.0, loop - n_evals * val_seconds)  # the periodic evaluations run inside the loop's time
    steps = _steps(steps_per_s * stepping)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, steps=steps, positions=0, schedule_steps=0, knots=((0, steps),), time_limit=max(loop, 1e-3)))


class Reshaped(Exception):  # noqa: N818 (not an error: the loop's way back to `train`, which starts over)
    """Raised by the loop where its own rate buys another shape than the calibration's: `plan` is
    the run to start over with, on the same budget clock."""

    def __init__(self, plan: BudgetPlan, note: str) -> None:
        super().__init__(note)
        self.plan, self.note = plan, note


@dataclass(frozen=True)
class Reshaper:
    """The shape (`RULES`) chosen again, once, from the rate the loop finds after RESHAPE_AT of its
    time. A calibration of a few seconds does not hold for the budget on a shared machine: one
    made while other jobs held the cores buys one model, which over-fits once the machine is free,
    and one made on a free machine can buy an ensemble too slow to see its epochs once it is busy.
    The step's and the val pass's seconds of a shape of m members are those calibrated
    (`_interpolated`), times the machine's load now (the loop's step time over the calibrated one).
    The planned shape stays where the rule would give it for epochs within a factor RESHAPE_BAND
    of those estimated."""

    base: RunConfig  # the configuration the rule shaped: one model, no dropout, the budget's
    rule: EnsembleRule
    shape: tuple[int, float]  # the planned one: members, dropout
    cals: dict[int, Calibration]  # members → its calibration: one model's, the largest ensemble's, the planned one's
    ends: dict[int, float]  # members → the end of the run's seconds, calibrated
    rows: int  # training rows
    evals: Callable[[RunConfig], int]

    def __call__(self, rate: float, left: float, elapsed: float) -> Reshaped | None:
        """At `rate` steps/s of the planned shape with `left` seconds to the loop's time limit, after
        `elapsed` seconds of loop: the run in the shape the rule now gives, planned to end when this
        loop would have, or None where the planned shape stays."""
        step = {m: 1.0 / c.steps_per_s for m, c in self.cals.items()}
        members = self.shape[0]
        load = (1.0 / rate) / _interpolated(step, members)  # this machine now, against the calibration

        def epochs(m: int, scale: float = 1.0) -> float:  # each of m members' in the time left, at this load
            return scale * left / (_interpolated(step, m) * load) * self.base.train.batch_size / max(1, self.rows)

        shape = _shape(self.rule, epochs)
        if self.shape in (_shape(self.rule, lambda m: epochs(m, 1 / RESHAPE_BAND)), shape,
                          _shape(self.rule, lambda m: epochs(m, RESHAPE_BAND))):
            return None
        choice = shape[0]
        val = _interpolated({m: c.val_seconds for m, c in self.cals.items()}, choice) * load
        setup = _interpolated({m: c.setup_seconds for m, c in self.cals.items()}, choice) * load
        loop = left - setup - (_interpolated(self.ends, choice) - _interpolated(self.ends, members)) * load
        if loop < 0.5 * left:  # starting over would leave too little of the budget
            return None
        cfg = _with_steps(_shaped(self.base, shape), 1.0 / (_interpolated(step, choice) * load), val, loop, self.evals)
        note = (f"note: {epochs(1):.0f} epochs fit in the time left at the speed this machine now trains at "
                f"({1 / load:.2g}× the calibration's): the budget buys {_said(shape)}, not {_said(self.shape)}; "
                f"starting over in that shape after {elapsed:.1f} s")
        return Reshaped(BudgetPlan(cfg, self.base.train.budget, 0.0, val, None,
                                   {"from": list(self.shape), "to": list(shape), "after_seconds": round(elapsed, 3)}), note)


def _said(shape: tuple[int, float]) -> str:
    members, dropout = shape
    return (f"an ensemble of {members}" if members > 1 else "one model") + (f" (dropout {dropout:g})" if dropout else "")


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


def _end_seconds(dataset: Dataset, cal: Calibration, rows: dict[str, int]) -> float:
    """The end of the run's seconds: a pass over `rows` (what `end_rows` gives) of each split, from
    the calibration's val pass (a fixed cost and a cost per row), and the files written."""
    per_row = (cal.val_seconds - cal.eval_fixed) / max(1, len(dataset.Y["val"]))
    return sum(cal.eval_fixed + per_row * n for n in rows.values()) + END_FIXED


def _loop_seconds(cfg: RunConfig, dataset: Dataset, cal: Calibration, started: float, rows: dict[str, int]) -> float:
    """What the budget leaves the training loop: less what is spent, the run's own set-up and its end
    (`_end_seconds`)."""
    spent = time.perf_counter() - started
    return cfg.train.budget - spent - cal.setup_seconds - _end_seconds(dataset, cal, rows)  # < 0: not even that
