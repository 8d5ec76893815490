"""Data-parallel training across processes: the process group torchrun describes, and the few
collectives a training step needs.

Under `torchrun` (its environment names RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) every
process trains the same model on its contiguous slice of the same seeded global batch; outside
it nothing here is active and `world()` is None. The layers that reduce over the batch
(BatchNorm's statistics, Dropout's masks) ask `world()` whether to span the ranks.

torch is imported inside the functions: this module sits on the lowest floor.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CharmlpError, ReportedElsewhere

if TYPE_CHECKING:
    import torch

TIMEOUT_S = 60.0  # default: a collective that waits this long for a rank ends the run (--rank-timeout)
_timeout_s = TIMEOUT_S


def set_timeout(seconds: float) -> None:
    """How long a collective waits for the other ranks before the run stops (before `init_world`)."""
    global _timeout_s
    if not 1 <= seconds <= 86400:
        raise CharmlpError(f"--rank-timeout must be between 1 and 86400 seconds, got {seconds:g}")
    _timeout_s = seconds


@dataclass(frozen=True)
class World:
    """This process's place among the ranks."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: str = "cpu"  # where the collectives' tensors live: NCCL reduces only on the GPU

    def share(self, n: int) -> slice:
        """This rank's contiguous share of `n` rows: ⌈n / size⌉ rows each, the last ranks' fewer (or
        none) where n does not divide evenly — a batch (it does), an evaluation's or a calibration's slice."""
        per = -(-n // self.size)
        return slice(self.rank * per, (self.rank + 1) * per)

    def peer(self) -> str:
        """The rank(s) a lost collective waited on, as a message names them."""
        return f"rank {1 - self.rank}" if self.size == 2 else "another rank"


_WORLD: World | None = None


def launched() -> bool:
    """Whether torchrun (or its elastic launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_size() -> int:
    """Processes on this machine (1 outside torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def world() -> World | None:
    """The ranks this process trains with; None outside torchrun or with one process."""
    return _WORLD


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return 0 if _WORLD is None else _WORLD.rank


def init_world(device_type: str) -> World | None:
    """Join the process group torchrun set up (gloo on the CPU, NCCL on CUDA); None when not
    launched by torchrun or with a world of one. Idempotent."""
    global _WORLD
    if _WORLD is not None or not launched():
        return _WORLD
    size = int(os.environ["WORLD_SIZE"])
    if size == 1:
        return None
    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    w = World(int(os.environ["RANK"]), size, local, local_size(), f"cuda:{local}" if device_type == "cuda" else "cpu")
    if device_type == "cuda":
        torch.cuda.set_device(w.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=_timeout_s))
    _WORLD = w
    return w


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    global _WORLD
    if _WORLD is None:
        return
    import torch.distributed as dist

    _WORLD = None
    if dist.is_initialized():
        dist.destroy_process_group()


def refuse(message: str) -> CharmlpError:
    """The error every rank raises for a problem all of them see: rank 0 says it, the others stay quiet."""
    return CharmlpError(message) if rank() == 0 else ReportedElsewhere(message)


class LostRank(CharmlpError):
    """A collective failed: another rank died or stopped answering within the timeout."""


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Σ_ranks t: in place, or (a tensor that requires grad) a new tensor whose backward sums the
    gradient across ranks; `t` itself outside a world. Use the returned tensor."""
    if _WORLD is None:
        return t
    if t.requires_grad:  # autograd's engine: the sum's backward all-reduces the gradient
        return _all_reduce_function().apply(t)
    _all_reduce_in_place(t)
    return t


def _all_reduce_in_place(t: torch.Tensor) -> None:
    """dist.all_reduce(t), a failed collective as the `LostRank` line (forward or backward alike)."""
    import torch.distributed as dist

    w = _WORLD
    assert w is not None
    try:
        dist.all_reduce(t)
    except RuntimeError as e:  # gloo/NCCL: the peer's connection closed, or the timeout passed
        timed_out = re.search(r"time[sd]? ?out", str(e), re.IGNORECASE)  # gloo: "Timed out waiting …ms for recv"
        why = f"no answer within {_timeout_s:g} s" if timed_out else "its connection closed"
        raise LostRank(f"rank {w.rank} of {w.size} lost {w.peer()} ({why})") from None


@functools.cache  # defined on first use: torch loads only when a world does
def _all_reduce_function() -> type:
    import torch

    class AllReduceSum(torch.autograd.Function):
        """y = Σ_ranks x on every rank; every rank's loss depends on y, so dL/dx = Σ_ranks dL_r/dy."""

        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            y = x.clone()
            _all_reduce_in_place(y)
            return y

        @staticmethod
        def backward(ctx: object, dy: torch.Tensor) -> torch.Tensor:
            dx = dy.contiguous().clone()
            _all_reduce_in_place(dx)
            return dx

    return AllReduceSum


def agree(error: BaseException | None, what: str) -> None:
    """Every rank calls this at the same point: a failing rank raises its own `error` (said by the
    lowest failing rank alone), and the others that some rank failed `what` (said by rank 0)."""
    w = _WORLD
    if w is None:
        if error is not None:
            raise error
        return
    import torch

    failed = torch.zeros(w.size, device=w.device)
    failed[w.rank] = error is not None
    all_reduce_sum(failed)
    bad = [r for r in range(w.size) if failed[r].item()]
    if error is not None:  # the lowest failing rank speaks: bad options fail on every rank alike
        raise error if w.rank == bad[0] else ReportedElsewhere(str(error))
    if bad:
        raise refuse(f"rank {bad[0]} of {w.size} could not {what} (its message is above); no rank trained")


def check_same(text: str, what: str) -> None:
    """Refuse a world whose ranks disagree on `text` (the run's configuration and data): compared
    as SHA-256 digests gathered from every rank; rank 0 names the first rank that differs."""
    w = _WORLD
    if w is None:
        return
    import torch

    digest = torch.frombuffer(bytearray(hashlib.sha256(text.encode()).digest()), dtype=torch.uint8)
    gathered = torch.zeros(w.size, len(digest), device=w.device)
    gathered[w.rank] = digest.float().to(w.device)  # one all-reduce of a (ranks, 32) table: each rank fills its row
    all_reduce_sum(gathered)
    gathered = gathered.cpu()
    bad = [r for r in range(1, w.size) if not torch.equal(gathered[r], gathered[0])]
    if bad:
        raise refuse(f"rank {bad[0]} of {w.size} was started with another {what} than rank 0; start every rank "
                     "with the same options and the same data file")


class GradientReducer:
    """The data-parallel step's one collective: every parameter gradient, the loss and the stop
    flag in one flat float32 bucket, summed across ranks in one all-reduce.

    Rank r's gradient g_r is of its own mean loss over its n_r targets, so the global batch's
    gradient is  G = Σ_r n_r·g_r / N  with N = Σ_r n_r  (and the global loss Σ_r n_r·L_r / N):
    the bucket carries n_r·g_r, n_r·L_r and n_r, and the update equals one process's on the
    global batch, to float32 rounding.
    """

    def __init__(self, params: Sequence[torch.Tensor], stop_local: Callable[[], int | None]) -> None:
        import torch

        self.params = list(params)
        sizes = [p.numel() for p in self.params]
        self.flat = torch.empty(sum(sizes) + 3, dtype=torch.float32, device=self.params[0].device)
        self.views = list(torch.split(self.flat[:-3], sizes))
        self.stop_local = stop_local
        self.stop: int | None = None  # the agreed stop: a signal number when any rank caught one
        self.seconds = 0.0  # time spent in the all-reduce
        self.calls = 0

    def __call__(self, loss: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
        """Sum the gradients (into each `.grad`) and the loss; returns the global batch's loss."""
        flat = self.flat
        for p, v in zip(self.params, self.views, strict=True):
            if p.grad is None:
                v.zero_()
            else:
                v.copy_(p.grad.reshape(-1)).mul_(count)
        local = self.stop_local()
        flat[-3] = loss * count
        flat[-2] = count
        flat[-1] = 0.0 if local is None else 1.0
        t0 = time.perf_counter()
        all_reduce_sum(flat)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        flat[:-2] /= float(flat[-2])  # n·g → G, n·L → L (a host read: N, and below the stop flag)
        for p, v in zip(self.params, self.views, strict=True):
            if p.grad is None:
                p.grad = v.view_as(p).clone()
            else:
                p.grad.copy_(v.view_as(p))
        self.stop = None if float(flat[-1]) == 0 else (local or signal.SIGTERM)
        return flat[-3].clone()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`charmlp train --nproc N …`: torch's elastic launcher, as `torchrun --standalone
    --nproc-per-node N -m charmlp train …` would start it, for `argv` (the command without --nproc).
    Returns the exit code; a rank that died is named in one `error:` line (one that failed has said why)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's own default for N > 1, set so it need not warn
    for name in list(logging.root.manager.loggerDict):  # the lines below replace its report (each has its level)
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "charmlp", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        r, failure = e.get_first_failure()
        if failure.exitcode < 0:
            name = signal.Signals(-failure.exitcode).name
            print(f"error: rank {r} of {nproc} was killed by {name}; the other ranks stopped "
                  "(the last checkpoint, if any, is intact and resumable)", file=sys.stderr)
            return 128 - failure.exitcode
        return failure.exitcode
    except SignalException as e:  # Ctrl-C/SIGTERM: the ranks were asked to stop and have checkpointed
        return 128 + int(e.sigval)
    return 0
