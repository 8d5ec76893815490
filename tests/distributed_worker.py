"""The rank side of tests/test_distributed.py, started by torch's elastic launcher
(`python -m torch.distributed.run --standalone --nproc-per-node 2 distributed_worker.py DATA OUT [RESUME]`).

Every rank trains each case of CASES through `charmlp.train` (data-parallel, gloo), checks the
synchronised BatchNorm layer against autograd on the whole batch, and resumes the 1-process run
in RESUME (if given); rank 0 writes what it saw to OUT as JSON for the test to compare with one process.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch

from charmlp import distributed
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.errors import CharmlpError, ReportedElsewhere
from charmlp.models import model_config
from charmlp.nn import BatchNorm1d
from charmlp.train import resume, train

STEPS = 20
# name → (model, its fields, engine): tiny, so the launch stays within seconds
CASES = {
    "mlp": ("mlp", {"n_hidden": 16, "n_embd": 4}, "manual"),
    "mlp_autograd": ("mlp", {"n_hidden": 16, "n_embd": 4}, "autograd"),
    "wavenet": ("wavenet", {"n_hidden": 16, "n_embd": 6}, "manual"),
    "gru": ("gru", {"n_hidden": 16, "n_embd": 8}, "manual"),
    "transformer": ("transformer", {"n_embd": 16, "n_head": 2, "n_layer": 1, "dropout": 0.1}, "manual"),
}


def case_config(data: str, name: str) -> RunConfig:
    kind, fields, engine = CASES[name]
    mc = model_config(kind, **fields)
    return RunConfig(DataConfig(path=data, block_size=mc.block_size, sequence=mc.sequence), mc,
                     TrainConfig(steps=STEPS, batch_size=16, engine=engine, eval_every=10, seed=3))


def batchnorm_check() -> dict[str, float]:
    """The synchronised BatchNorm on this rank's rows of a (B, T, C) batch against autograd's
    gradients of one BatchNorm over the whole batch (every rank builds the same batch)."""
    world = distributed.world()
    assert world is not None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, generator=g, dtype=torch.float64) * 2 + 1
    dy = torch.randn(8, 3, 5, generator=g, dtype=torch.float64)
    ref = BatchNorm1d(5).double()
    ref.weight.data.uniform_(0.5, 1.5, generator=g)
    bn = BatchNorm1d(5).double()
    bn.load_state_dict(ref.state_dict())
    xr = x.clone().requires_grad_(True)
    distributed._WORLD, saved = None, world  # the reference: one BatchNorm over every row, in this process
    try:
        y_ref = ref(xr)
        (y_ref * dy).sum().backward()
    finally:
        distributed._WORLD = saved
    rows = world.share(len(x))
    with torch.no_grad():
        y = bn(x[rows])
        dx = bn.backward(dy[rows])
    grads = distributed.all_reduce_sum(torch.cat([bn.weight.grad, bn.bias.grad]))
    return {
        "y": float((y - y_ref.detach()[rows]).abs().max()),
        "dx": float((dx - xr.grad[rows]).abs().max()),
        "dparams": float((grads - torch.cat([ref.weight.grad, ref.bias.grad])).abs().max()),
        "running_mean": float((bn.running_mean - ref.running_mean).abs().max()),
    }


def refusals(data: str) -> dict[str, str]:
    """Start-ups that every rank must refuse alike, without a hang: options that differ between
    ranks, a data file one rank cannot read, a batch that does not split. Rank 0 says why (its
    messages are returned); the others raise `ReportedElsewhere`, except the rank whose own data failed."""
    rank = distributed.rank()
    cfg = case_config(data, "gru")
    starts = {
        "mismatch": dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=3 + rank)),
        "missing_data": dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data + ".gone" * rank)),
        "odd_batch": dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=15)),
    }
    said = {}
    for name, c in starts.items():
        try:
            train(c, progress=False)
        except CharmlpError as e:
            own = name == "missing_data" and rank == 1
            assert isinstance(e, ReportedElsewhere) == (rank != 0 and not own), (name, rank, e)
            said[name] = str(e)
        else:
            raise AssertionError(f"{name}: rank {rank} trained")
    return said


def main() -> None:
    data, out = sys.argv[1], Path(sys.argv[2])
    report: dict = {}
    for name in CASES:
        r = train(case_config(data, name), progress=False)
        report[name] = {"losses": r.losses, "summary": r.summary}
    report["batchnorm"] = batchnorm_check()
    report["refusals"] = refusals(data)
    if len(sys.argv) > 3:
        r = resume(sys.argv[3], progress=False)
        report["resumed"] = {"losses": r.losses, "summary": r.summary}
    report["world"] = distributed.world().size
    if distributed.rank() == 0:
        out.write_text(json.dumps(report))
    distributed.shutdown()


if __name__ == "__main__":
    main()
