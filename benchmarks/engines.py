"""Steps per second of `--engine autograd` vs `--engine manual`, measured in one run.

    python benchmarks/engines.py                  # seed configuration: batch 32, n_embd 10, n_hidden 200
    python benchmarks/engines.py --steps 5000 --rounds 7 --threads 1 --json benchmarks/out/engines.json

Each round trains the same seeded model once per engine, in alternating order, through
`charmlp.train` (the same loop as `charmlp train`: batch sampling, forward, gradients, SGD step);
the table gives the median over rounds, so load from other processes affects both engines alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from charmlp import DataConfig, MLPConfig, RunConfig, TrainConfig, load_dataset, train


def measure(steps: int, rounds: int, batch_size: int, n_embd: int, n_hidden: int) -> dict:
    dataset = load_dataset(DataConfig())
    base = RunConfig(
        DataConfig(),
        MLPConfig(n_embd=n_embd, n_hidden=n_hidden),
        TrainConfig(steps=steps, batch_size=batch_size, device="cpu", calibrate_bn=False),
    )
    rates: dict[str, list[float]] = {"autograd": [], "manual": []}
    for engine in rates:  # warm-up: first-call allocations and kernel selection
        train(dataclasses.replace(base, train=dataclasses.replace(base.train, steps=200, engine=engine)), dataset=dataset, progress=False)
    for r in range(rounds):
        order = ("autograd", "manual") if r % 2 == 0 else ("manual", "autograd")
        for engine in order:
            cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, engine=engine))
            rates[engine].append(train(cfg, dataset=dataset, progress=False).summary["steps_per_s"])
    med = {e: statistics.median(v) for e, v in rates.items()}
    return {
        "steps": steps, "rounds": rounds, "batch_size": batch_size, "n_embd": n_embd, "n_hidden": n_hidden,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "steps_per_s": rates, "median_steps_per_s": med,
        "speedup_manual_over_autograd": med["manual"] / med["autograd"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000, help="steps per run (default 3000)")
    p.add_argument("--rounds", type=int, default=5, help="runs per engine, alternating (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-embd", type=int, default=10)
    p.add_argument("--n-hidden", type=int, default=200)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = measure(args.steps, args.rounds, args.batch_size, args.n_embd, args.n_hidden)
    print(f"batch {res['batch_size']}, n_embd {res['n_embd']}, n_hidden {res['n_hidden']}, {res['steps']} steps × "
          f"{res['rounds']} rounds, {res['threads']} thread(s), torch {res['torch']}, CPU")
    for engine in ("autograd", "manual"):
        runs = " ".join(f"{x:.0f}" for x in res["steps_per_s"][engine])
        print(f"{engine:<9} median {res['median_steps_per_s'][engine]:7.0f} steps/s   (runs: {runs})")
    print(f"manual / autograd: {res['speedup_manual_over_autograd']:.2f}×")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
