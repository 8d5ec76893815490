"""Data-parallel training: examples/s of charmlp's training step in 1 and in 2 processes on this machine.

    python benchmarks/distributed.py                  # writes benchmarks/results_distributed.json
    python benchmarks/distributed.py --steps 10 --batch-size 256

The transformer (4 layers × 64, AdamW, the manual engine) at a global batch of 256, where the
step's work dominates the all-reduce, on the first 3000 names (the step's cost depends on the
batch, not on the file; a small file keeps the end-of-run evaluation short). Three runs, each
`charmlp.train` in fresh processes (the 2-process one under torch's elastic launcher, as
`torchrun --standalone --nproc-per-node 2`):

- 1 process, 1 thread: the per-process baseline of the scaling efficiency;
- 1 process, 2 threads: what one process gets from both cores (the default for this model);
- 2 processes, 1 thread each.

A step's time is the median interval between rank 0's step hooks after the first 2 steps (the
kernels' first calls); examples/s = batch / that. Efficiency = examples/s of 2 processes /
(2 × examples/s of 1 process at 1 thread). The all-reduce time per step is rank 0's
(`allreduce_seconds_per_step` of summary.json: the gradient bucket's one call, waiting for the
slower rank included). The 2-process loss curve is asserted to be the 1-process one (|Δ| ≤ 1e-5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WARM = 2  # steps left out of the timing: the first calls of the kernels


def worker(data: str, out: str, steps: int, batch: int, threads: int) -> None:
    """One rank (or the one process): train, timing every step; rank 0 writes the figures."""
    from charmlp import distributed
    from charmlp.config import DataConfig, RunConfig, TrainConfig
    from charmlp.engines.threads import set_threads
    from charmlp.models import model_config
    from charmlp.train import train

    set_threads(threads)
    stamps: list[float] = []
    mc = model_config("transformer")
    cfg = RunConfig(DataConfig(path=data, sequence=True), mc,
                    TrainConfig(steps=steps, batch_size=batch, engine="manual", optimizer="adamw", lr=3e-3,
                                schedule="cosine", lr_final=1e-5, eval_every=0, calibrate_bn=False))
    r = train(cfg, progress=False, hooks=(lambda step, model, lr, loss: stamps.append(time.perf_counter()),))
    if distributed.rank() == 0:
        Path(out).write_text(json.dumps({"stamps": stamps, "losses": r.losses, "summary": r.summary}))
    distributed.shutdown()


def run(tmp: Path, steps: int, batch: int, threads: int, nproc: int) -> dict:
    out, data = tmp / f"run_{threads}_{nproc}.json", tmp / "names.txt"
    args = [str(Path(__file__).resolve()), "--worker", str(data), str(out), str(steps), str(batch), str(threads)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, *launcher, *args], check=True, env=env)
    got = json.loads(out.read_text())
    step_s = statistics.median(b - a for a, b in zip(got["stamps"][WARM:], got["stamps"][WARM + 1 :], strict=False))
    s = got["summary"]
    return {"examples_per_s": batch / step_s, "seconds_per_step": step_s, "world_size": s["world_size"],
            "rank_batch_size": s["rank_batch_size"],
            "allreduce_ms_per_step": 1e3 * s.get("allreduce_seconds_per_step", 0.0), "losses": got["losses"]}


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        data, out, steps, batch, threads = sys.argv[2:7]
        worker(data, out, int(steps), int(batch), int(threads))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="steps per run (the first 2 untimed)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_distributed.json"))
    args = ap.parse_args()
    from charmlp.data import default_data_path

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        names = default_data_path().read_text(encoding="utf-8").splitlines()[:3000]
        (Path(tmp) / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
        for name, threads, nproc in (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 2, 1),
                                     ("2 processes, 1 thread each", 1, 2)):
            rows[name] = run(Path(tmp), args.steps, args.batch_size, threads, nproc)
    base, both, ddp = rows.values()
    drift = max(abs(a - b) for a, b in zip(base["losses"], ddp["losses"], strict=True))
    assert drift <= 1e-5, drift
    result = {
        "model": "transformer 4 layers × 64, AdamW, manual engine, first 3000 names",
        "steps": args.steps, "timed_steps": args.steps - WARM - 1, "batch_size": args.batch_size,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": os.getloadavg()[0],
        "runs": {k: {f: v for f, v in r.items() if f != "losses"} for k, r in rows.items()},
        "efficiency_vs_1_thread": ddp["examples_per_s"] / (2 * base["examples_per_s"]),
        "speedup_vs_1_process_2_threads": ddp["examples_per_s"] / both["examples_per_s"],
        "max_abs_loss_difference": drift,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
