"""Exact split loss, items/s: today's evaluation path against the padded one it replaced, in one process.

    python benchmarks/make_pairs.py /tmp/pairs.txt                 # the 1M-line list (not committed)
    python benchmarks/eval.py                                      # names: benchmarks/results_eval.json
    python benchmarks/eval.py --data /tmp/pairs.txt --items 50000 --out benchmarks/results_eval_pairs.json

Per model (a freshly initialised one at its default size: evaluation costs the same whatever the
weights), the val split's exact loss — `--items` of its items, all by default — by
`padded_split_loss` below, the path before length buckets (the model's training-time forward over
rows padded to the file's longest item, the recurrent layer keeping every step's cache, a float32
mean per pass), and by `charmlp.evaluate.split_loss`; rounds alternate which goes first, the
table gives the median items/s and the ratio new/old. Both must agree to 1e-6.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from charmlp.config import DataConfig
from charmlp.data import load_dataset
from charmlp.evaluate import eval_chunk, split_loss
from charmlp.models import MODELS, build_model, model_config
from charmlp.nn import cross_entropy
from charmlp.nn.losses import IGNORE

HERE = Path(__file__).resolve().parent


@torch.no_grad()
def padded_split_loss(model, X: torch.Tensor, Y: torch.Tensor) -> float:
    """The evaluation before length buckets, as it was: passes of `eval_chunk` rows of the full width."""
    model.eval()
    chunk = eval_chunk(model, X)
    forward = model.eval_forward()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(Y), chunk):
        xb, yb = X[i : i + chunk], Y[i : i + chunk]
        n = int((yb != IGNORE).sum()) if model.cfg.sequence else len(yb)
        total += cross_entropy(forward(xb), yb).double() * n
        count += n
    return float(total / count)


def measure(data: str | None, items: int, rounds: int, models: list[str]) -> dict:
    out: dict = {}
    for kind in models:
        cfg = model_config(kind)
        ds = load_dataset(DataConfig(path=data, block_size=0 if cfg.sequence else cfg.block_size, sequence=cfg.sequence))
        cfg = type(cfg)(**{**cfg.__dict__, "vocab_size": ds.vocab.size, "block_size": ds.block_size})
        model = build_model(cfg, seed=0)
        n = min(items or len(ds.items["val"]), len(ds.items["val"]))
        if cfg.sequence:
            X, Y = ds.X["val"][:n], ds.Y["val"][:n]
        else:  # the rows of the first n items: n items' characters and end tokens
            rows = sum(len(s) + 1 for s in ds.items["val"][:n])
            X, Y = ds.X["val"][:rows], ds.Y["val"][:rows]
        times: dict[str, list[float]] = {"old": [], "new": []}
        losses = {}
        for r in range(rounds):
            for side in ("old", "new") if r % 2 == 0 else ("new", "old"):
                t = time.perf_counter()
                losses[side] = (padded_split_loss if side == "old" else split_loss)(model, X, Y)
                times[side].append(time.perf_counter() - t)
        gap = abs(losses["old"] - losses["new"])
        assert gap < 1e-6, (kind, losses)
        old, new = (n / statistics.median(times[s]) for s in ("old", "new"))
        out[kind] = {"items": n, "block_size": ds.block_size, "old_items_per_s": old, "new_items_per_s": new,
                     "ratio": new / old, "loss": losses["new"], "loss_gap": gap, "times": times}
        print(f"{kind:<12} {n:>8} items  old {old:>10.0f}/s  new {new:>10.0f}/s  ×{new / old:.2f}  (|Δloss| {gap:.1e})",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="item file (default: the embedded names)")
    ap.add_argument("--items", type=int, default=0, help="val items to evaluate (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", action="append", choices=sorted(MODELS), help="repeatable; default every model")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--out", type=Path, default=HERE / "results_eval.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = measure(args.data, args.items, args.rounds, args.model or sorted(MODELS))
    meta = {"data": args.data or "names", "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load": os.getloadavg()[0], "machine": platform.processor() or platform.machine()}
    args.out.write_text(json.dumps({"meta": meta, "models": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
