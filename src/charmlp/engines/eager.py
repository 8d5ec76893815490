"""The eager training step of the reference engines (autograd, manual), one step at a time or a
window of steps without reading anything back from the device.

One step: draw the minibatch from the CPU generator (as the lectures' loop does), fill `.grad`
with the engine, and let the optimizer step unless the loss is not finite — reading the loss
back to the host is what tells. On a GPU that read is a host sync: the CPU waits for the step's
kernels before it may queue the next step's. A batch of whole items is cut after its longest
item's last target: on names, a batch of 64 reaches 11–13 of the 16 positions, so about a
quarter of the work was padding that a causal model's loss never reads.

A window of k steps reads nothing back: its k minibatches are drawn in one call (the same
numbers: `randint(0, N, (k·B,))` is k draws of B from the same generator) and sent to the
device in one copy, every step's loss stays on the device, and the window's losses come back
in one copy at its end. The optimizer steps whatever the loss, so the training loop keeps a
copy of the state at the window's start (`snapshot`) and, on a non-finite loss, goes back to
it and replays the window step by step, stopping exactly where one-step windows would have.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..models import LanguageModel
from ..nn.losses import IGNORE, row_targets
from ..optim import load_optimizer_state_dict, optimizer_state_dict
from . import grad_fn


@dataclass
class Shard:
    """A data-parallel rank's part of a step: which rows of the global batch (`rows(B)`), and
    the all-reduce of its gradients and loss (`reduce(loss, targets) → global loss`)."""

    rows: Callable[[int], slice]
    reduce: Callable[[torch.Tensor, int | torch.Tensor], torch.Tensor]


@dataclass
class Snapshot:
    """Training state at a step boundary: the model's tensors, the optimizer's, the generator's."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor


class EagerStep:
    """`step(lr)`: one checked step; `window(lrs, stop)`: len(lrs) steps without a host sync.

    Data-parallel (`shard` set): every rank draws the same global batch and trains on its rows
    `shard.rows(B)`; once its gradients are ready, `shard.reduce(loss, targets)` sums them across
    ranks (one all-reduce) and returns the global batch's loss, before the optimizer steps.
    """

    impl = "eager"
    shard: Shard | None = None

    def __init__(self, engine: str, model: LanguageModel, optimizer: torch.optim.Optimizer, X: torch.Tensor,
                 Y: torch.Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.compute_grads = grad_fn(engine)
        self.model, self.optimizer, self.X, self.Y = model, optimizer, X, Y
        self.batch_size, self.generator = batch_size, generator
        self.device = X.device
        # whole items: each row's count of real targets (on the CPU, so trimming never waits for a GPU)
        self.lengths = row_targets(Y).cpu() if Y.dim() == 2 else None

    def positions(self, ix: torch.Tensor) -> int | None:
        """Whole items: the positions the batch `ix` (on the CPU) needs, up to its longest item's
        last target. A sequence model is causal, so the positions after that (padding, −1
        targets) change no logit or gradient before them: the step leaves them out."""
        return None if self.lengths is None else int(self.lengths[ix].max())

    def _step(self, lr: float, ix: torch.Tensor, T: int | None) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        shard = self.shard
        if shard is not None:
            ix = ix[shard.rows(len(ix))]
        xb, yb = self.X[ix], self.Y[ix]
        if T is not None:  # the global batch's positions: every rank's shapes are one process's
            xb, yb = xb[:, :T], yb[:, :T]
        loss = self.compute_grads(self.model, xb, yb).detach()
        if shard is None:
            return loss
        return shard.reduce(loss, len(yb) if T is None else (yb != IGNORE).sum())

    def __call__(self, lr: float) -> torch.Tensor:
        ix = torch.randint(0, len(self.Y), (self.batch_size,), generator=self.generator)
        loss = self._step(lr, ix.to(self.device), self.positions(ix))
        if math.isfinite(loss.item()):  # as the fast step: no update from a non-finite loss
            self.optimizer.step()
        return loss

    def window(self, lrs: list[float], stop: Callable[[], bool] = lambda: False) -> torch.Tensor:
        """Steps at learning rates `lrs`, every one updating, no host sync; `stop()` (checked after
        each step) ends the window early. Returns the losses of the steps taken, on the device.
        The generator ends exactly as after that many one-step draws."""
        g, n, B = self.generator, len(self.Y), self.batch_size
        before = g.get_state()
        ix = torch.randint(0, n, (len(lrs), B), generator=g)
        Ts = [self.positions(row) for row in ix]
        if self.device.type == "cuda":  # pinned: the copy is queued, the CPU goes on
            ix = ix.pin_memory()
        ix = ix.to(self.device, non_blocking=True)
        losses = torch.empty(len(lrs), device=self.device)
        done = 0
        for lr in lrs:
            losses[done] = self._step(lr, ix[done], Ts[done])
            self.optimizer.step()
            done += 1
            if done < len(lrs) and stop():
                g.set_state(before)  # draw only what the steps taken used, so a checkpoint resumes exactly
                torch.randint(0, n, (done, B), generator=g)
                break
        return losses[:done]

    def snapshot(self) -> Snapshot:
        return Snapshot({k: v.clone() for k, v in self.model.state_dict().items()},
                        copy.deepcopy(optimizer_state_dict(self.optimizer)), self.generator.get_state())

    def restore(self, snap: Snapshot) -> None:
        self.model.load_state_dict(snap.model)
        load_optimizer_state_dict(self.optimizer, copy.deepcopy(snap.optimizer))
        self.generator.set_state(snap.generator)
