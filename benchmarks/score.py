"""Scoring speed: `charmlp score`'s batched path against a loop that calls the model once per item.

    python benchmarks/score.py                      # about a minute: benchmarks/results_score.json + table
    python benchmarks/score.py --items 32033 --rounds 1 --json

Per model (each kind's default size, random weights: speed does not depend on them), the first
`--items` lines of names.txt (distinct names: no repeated line for the batched path to share)
are scored by `scoring.score_net` (the NumPy forward once per distinct context of each batch of
windows, or length-sorted padded batches of whole items); the loop scores the first
`--loop-items` of them one item at a time through the same NumPy forward (an item's windows, or
its whole sequence, per call: what scoring would be without batching). Rounds alternate which goes
first; the table gives the median items/s of each and the ratio batched/loop, taken round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from charmlp.data import Vocab, example_arrays, read_items  # noqa: E402
from charmlp.models import build_model, model_config  # noqa: E402
from charmlp.numpy_model import Net  # noqa: E402
from charmlp.scoring import _log_softmax, score_net  # noqa: E402

HERE = Path(__file__).resolve().parent
CASES = {  # name → (kind, config fields beyond the kind's defaults)
    "mlp": ("mlp", {}),
    "wavenet": ("wavenet", {}),
    "gru": ("gru", {}),
    "transformer": ("transformer", {}),
    "gru ensemble of 2": ("gru", {"members": 2}),
}


def model_net(kind: str, fields: dict, vocab: Vocab, block: int) -> Net:
    cfg = model_config(kind, vocab_size=vocab.size, **fields)
    if cfg.sequence:
        cfg = model_config(kind, vocab_size=vocab.size, block_size=block, **fields)
    return Net.from_model(build_model(cfg, seed=0).eval())


def loop_score(net: Net, vocab: Vocab, items: list[str]) -> list[float]:
    """One forward per item: its windows (window models) or its sequence [boundary, c₁…c_L]."""
    out = []
    for s in items:
        if net.sequence:
            ids = np.array([0, *vocab.encode(s)])
            logp = _log_softmax(net(ids[None, :])[0])
            y = np.array([*ids[1:], 0])
        else:
            X, y = example_arrays([s], vocab, net.block_size)
            logp = _log_softmax(net(X))
        out.append(float(logp[np.arange(len(y)), y].sum()))
    return out


def measure(n_items: int, loop_items: int, rounds: int) -> dict:
    names = read_items()
    items = names[:n_items]
    n_items = len(items)
    vocab = Vocab.from_items(names)
    block = max(map(len, names)) + 1
    cases = {}
    for name, (kind, fields) in CASES.items():
        net = model_net(kind, fields, vocab, block)
        batched, loop, ratios = [], [], []
        for r in range(rounds):
            order = ("batched", "loop") if r % 2 == 0 else ("loop", "batched")
            rate = {}
            for which in order:
                t = time.perf_counter()
                if which == "batched":
                    got = [s.log_likelihood for s in score_net(net, vocab, items).items]
                    rate[which] = n_items / (time.perf_counter() - t)
                else:
                    want = loop_score(net, vocab, items[:loop_items])
                    rate[which] = loop_items / (time.perf_counter() - t)
            np.testing.assert_allclose(got[:loop_items], want, rtol=1e-4)  # the same numbers
            batched.append(rate["batched"])
            loop.append(rate["loop"])
            ratios.append(rate["batched"] / rate["loop"])
        cases[name] = {"batched_items_per_s": statistics.median(batched), "loop_items_per_s": statistics.median(loop),
                       "ratio": statistics.median(ratios)}
        print(f"{name:<20} batched {cases[name]['batched_items_per_s']:>10.0f} items/s | loop "
              f"{cases[name]['loop_items_per_s']:>8.0f} items/s | ×{cases[name]['ratio']:.1f}", file=sys.stderr)
    return {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "items": n_items, "loop_items": loop_items, "rounds": rounds, "cases": cases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000, help="lines the batched path scores (default 10000)")
    ap.add_argument("--loop-items", type=int, default=2000, help="lines the loop scores (default 2000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results_score.json"))
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    res = measure(args.items, args.loop_items, args.rounds)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{'model':<20} {'batched items/s':>16} {'loop items/s':>13} {'ratio':>7}")
        for name, c in res["cases"].items():
            print(f"{name:<20} {c['batched_items_per_s']:>16.0f} {c['loop_items_per_s']:>13.0f} {c['ratio']:>7.1f}")


if __name__ == "__main__":
    main()
