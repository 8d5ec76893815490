"""Training-loop step time: this tree's `charmlp.train` vs another checkout's, measured in one run.

    git worktree add /tmp/charmlp-old <commit>      # the tree to compare against
    python benchmarks/loop.py --old /tmp/charmlp-old                  # benchmarks/results_loop.json
    python benchmarks/loop.py --old /tmp/charmlp-old --rounds 7 --json

Each round trains every case once per tree, in alternating order, each in a fresh process (the
same `charmlp.train` a user calls: batch sampling, step, loss read-back, evaluation, checkpoint
checks); the table gives the median steps/s over rounds and the ratio new/old, so load from other
processes slows both sides alike. The cases cover both kinds of step the loop drives: the fused
fast step (one loss per step) and the eager engines (losses read back every `sync_every` steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW = HERE.parent

# name → (model, engine, steps, sync_every); every other setting is the model's default
CASES = {
    "mlp fast": ("mlp", "fast", 4000, 0),
    "mlp manual": ("mlp", "manual", 1000, 0),
    "mlp manual, sync 50": ("mlp", "manual", 1000, 50),
    "gru manual": ("gru", "manual", 40, 0),
    "transformer manual": ("transformer", "manual", 40, 0),
}

# run in the child: one training run, its steps/s on stdout (imports only names both trees have)
CHILD = """
import json, sys
from charmlp import RunConfig, TrainConfig, train
from charmlp.models import MODELS
model, engine, steps, sync = json.loads(sys.argv[1])
cfg = RunConfig(model=MODELS[model].config(),
                train=TrainConfig(steps=steps, engine=engine, sync_every=sync, eval_every=0, calibrate_bn=False))
print(json.dumps(train(cfg, progress=False).summary["steps_per_s"]))
"""


def steps_per_s(tree: Path, case: tuple) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(case)], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{tree}: {case} failed:\n{out.stderr}")
    return float(out.stdout.strip().splitlines()[-1])


def measure(old: Path, rounds: int, cases: list[str]) -> dict:
    runs: dict[str, dict[str, list[float]]] = {name: {"old": [], "new": []} for name in cases}
    for r in range(rounds):
        for name in cases:
            case = CASES[name]
            order = (("old", old), ("new", NEW)) if r % 2 == 0 else (("new", NEW), ("old", old))
            for side, tree in order:
                runs[name][side].append(steps_per_s(tree, case))
    table = {}
    for name, sides in runs.items():
        o, n = statistics.median(sides["old"]), statistics.median(sides["new"])
        table[name] = {"old_steps_per_s": o, "new_steps_per_s": n, "new_over_old": n / o,
                       "runs": sides}
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path, help="checkout to compare against (its src/ is imported)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each running every case on both trees")
    ap.add_argument("--case", action="append", choices=list(CASES), help="only this case (repeatable; default all)")
    ap.add_argument("--out", type=Path, default=HERE / "results_loop.json", help="results file")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    table = measure(args.old.resolve(), args.rounds, args.case or list(CASES))
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "threads": 1},
              "rounds": args.rounds, "cases": table}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'case':<22} {'old steps/s':>12} {'new steps/s':>12} {'new/old':>8}")
    for name, row in table.items():
        print(f"{name:<22} {row['old_steps_per_s']:>12.1f} {row['new_steps_per_s']:>12.1f} {row['new_over_old']:>8.3f}")


if __name__ == "__main__":
    main()
