"""Learning-rate finder (the lectures' `lre = linspace(-3, 0, 1000); lrs = 10**lre` sweep).

One fresh model trains for `steps` steps, step i at lr_i = 10^(log10 lr_min + i/(steps−1)·
(log10 lr_max − log10 lr_min)); the loss is recorded against lr. While lr is small the loss
falls slowly, then faster, then the steps become too large and it flattens and rises.

- steepest lr: where the smoothed loss falls fastest per decade of lr (most negative slope);
- suggested lr: where the smoothed loss has made 90 % of its fall to its minimum, the start
  of the valley floor, short of the unstable edge (the lectures settle on 0.1 on names).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import write_json
from .config import RunConfig
from .data import Dataset
from .engines.fast import make_train_step
from .errors import CharmlpError
from .models import build_model
from .train import check_batch_fits, make_optimizer, prepare_data, resolve_device, validate_train_config

LR_FIND = "lr_find.json"
DIVERGED = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum


def lr_schedule(lr_min: float = 1e-3, lr_max: float = 1.0, steps: int = 1000) -> list[float]:
    """`steps` learning rates spaced evenly in log10 from `lr_min` to `lr_max` (both included)."""
    if not (math.isfinite(lr_min) and math.isfinite(lr_max) and 0 < lr_min < lr_max):
        raise CharmlpError(f"--lr-min and --lr-max need 0 < lr-min < lr-max, got {lr_min:g} and {lr_max:g}")
    if not 2 <= steps <= 1_000_000:
        raise CharmlpError(f"--lr-steps must be between 2 and 1000000, got {steps}")
    lo, hi = math.log10(lr_min), math.log10(lr_max)
    return [10 ** (lo + (hi - lo) * i / (steps - 1)) for i in range(steps)]


def ema(values: list[float], beta: float = 0.98) -> list[float]:
    """Bias-corrected exponential moving average: s_i = β·s_(i−1) + (1 − β)·x_i, divided by 1 − β^(i+1)."""
    out, s = [], 0.0
    for i, v in enumerate(values):
        s = beta * s + (1 - beta) * v
        out.append(s / (1 - beta ** (i + 1)))
    return out


@dataclass
class LRFindResult:
    lrs: list[float]  # the learning rates actually run (shorter than the schedule if it diverged)
    losses: list[float]  # the minibatch loss at each
    smoothed: list[float]
    suggested_lr: float
    steepest_lr: float
    min_loss_lr: float
    diverged_at: int | None  # step at which the sweep stopped, if the loss blew up

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def suggest(lrs: list[float], losses: list[float], descent: float = 0.9) -> tuple[float, float, float, list[float]]:
    """(suggested lr, steepest lr, lr at the minimum, smoothed losses) of a sweep.

    suggested: the first lr at which the smoothed loss has made `descent` (90 %) of its whole
    fall from the start to its minimum: the near end of the valley floor, a step or two below
    where large steps start to hurt (on names with SGD: ≈ 0.1, the lectures' choice).
    steepest: the most negative slope d(loss)/d(log10 lr) before the minimum, each slope taken
    across a span of ±len/20 steps (±0.15 decade over 1e-3…1), so minibatch noise averages out.
    """
    sm = ema(losses)
    n = len(sm)
    i_min = min(range(n), key=sm.__getitem__)
    target = sm[0] - descent * (sm[0] - sm[i_min])
    i_sug = next(i for i in range(i_min + 1) if sm[i] <= target)
    logs = [math.log10(lr) for lr in lrs]
    w = max(1, n // 20)
    best, i_steep = math.inf, i_sug
    for i in range(w, max(w, i_min - w + 1)):
        slope = (sm[i + w] - sm[i - w]) / (logs[i + w] - logs[i - w])
        if slope < best:
            best, i_steep = slope, i
    return lrs[i_sug], lrs[i_steep], lrs[i_min], sm


def lr_find(
    cfg: RunConfig | None = None,
    dataset: Dataset | None = None,
    lr_min: float = 1e-3,
    lr_max: float = 1.0,
    steps: int = 1000,
    progress: bool = False,
) -> LRFindResult:
    """Sweep the learning rate over one fresh model (initialised and batched as `train` does)."""
    cfg = cfg or RunConfig()
    tc = cfg.train
    validate_train_config(tc, getattr(cfg.model, "batchnorm", False), getattr(cfg.model, "members", 1))
    lrs = lr_schedule(lr_min, lr_max, steps)
    cfg, dataset = prepare_data(cfg, dataset)
    mc = cfg.model
    device = resolve_device(tc.device)
    g = torch.Generator().manual_seed(tc.seed)
    model = build_model(mc, generator=g).to(device).train()
    optimizer = make_optimizer(tc, model)
    Xtr, Ytr = dataset.X["train"].to(device), dataset.Y["train"].to(device)
    n = len(Ytr)
    if tc.batch_size > n:
        check_batch_fits(tc.batch_size, n)
    # the training loop's own step: draws the batch from g, fills .grad, updates
    train_step, _ = make_train_step(tc.engine, model, optimizer, Xtr, Ytr, tc.batch_size, g)

    losses: list[float] = []
    diverged_at = None
    best = math.inf
    for step, lr in enumerate(tqdm(lrs, desc="lr-find", disable=not progress, mininterval=0.5)):
        loss = float(train_step(lr))
        losses.append(loss)
        smoothed = ema(losses[-50:])[-1] if len(losses) > 10 else loss
        best = min(best, smoothed)
        if not math.isfinite(loss) or smoothed > DIVERGED * best:
            diverged_at = step
            losses.pop()
            break
    if len(losses) < 2:
        raise CharmlpError(f"the loss blew up at once (lr {lrs[0]:g}); lower --lr-min")
    lrs = lrs[: len(losses)]
    suggested, steepest, at_min, sm = suggest(lrs, losses)
    return LRFindResult(lrs, losses, sm, suggested, steepest, at_min, diverged_at)


def save_lr_find(result: LRFindResult, out_dir: str | Path) -> Path:
    """Write lr_find.json and lr_find.png into `out_dir` (created if needed)."""
    from .checkpoint import atomic_write_bytes
    from .plots import lr_find_png

    d = Path(out_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharmlpError(f"cannot create directory {d}: {e.strerror}") from None
    write_json(d / LR_FIND, result.to_dict())
    atomic_write_bytes(d / "lr_find.png", lr_find_png(result.lrs, result.losses, result.smoothed,
                                                       result.suggested_lr, result.steepest_lr))
    return d
