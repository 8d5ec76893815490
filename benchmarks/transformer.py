"""The transformer's training step: charmlp's hand-written backward (`manual` engine) vs the
same model under PyTorch autograd (`autograd` engine), side by side in one process.

    python benchmarks/transformer.py                 # writes benchmarks/results_transformer.json
    python benchmarks/transformer.py --rounds 3 --json

A step is what `charmlp train` does: zero the gradients, forward, loss, backward, AdamW update,
on batches of names in the whole-item layout. Both engines run the same forward code on models
with the same weights. Rounds are interleaved (manual, autograd, manual, …; the first of each
pair alternates), each side runs the same number of steps per round, and the ratio is taken round
by round, so a busy machine slows both sides of a ratio alike; the medians are reported. Wall
time and this thread's CPU time are both measured (on a shared machine, CPU time is steadier).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from charmlp.config import DataConfig  # noqa: E402
from charmlp.data import load_dataset  # noqa: E402
from charmlp.engines.autograd import autograd_grads  # noqa: E402
from charmlp.engines.manual import manual_grads  # noqa: E402
from charmlp.models import TransformerConfig, build_model, num_params, preset  # noqa: E402

ENGINES = {"manual": manual_grads, "autograd": autograd_grads}


def configs() -> list[tuple[str, TransformerConfig, int]]:
    """(name, model, batch): makemore.py's default transformer at the presets' batch (32), and at 64."""
    train, model = preset("transformer", "best")
    return [(f"4 layers × 64, batch {train['batch_size']}", TransformerConfig(**model), train["batch_size"]),
            ("4 layers × 64, batch 64", TransformerConfig(**model), 64)]


def measure(cfg: TransformerConfig, batch: int, rounds: int, steps: int, seed: int = 0) -> dict:
    data = load_dataset(DataConfig(sequence=True, block_size=0))
    cfg = dataclasses.replace(cfg, vocab_size=data.vocab.size, block_size=data.block_size)
    X, Y = data.X["train"], data.Y["train"]
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, len(X), (batch,), generator=g) for _ in range(steps)]
    models = {e: build_model(cfg, seed=seed) for e in ENGINES}
    opts = {e: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for e, m in models.items()}

    def run(engine: str) -> tuple[float, float, float]:
        m, opt, grads = models[engine], opts[engine], ENGINES[engine]
        w0, c0 = time.perf_counter(), time.thread_time()
        for ix in batches:
            loss = grads(m, X[ix].long(), Y[ix].long())
            opt.step()
        return steps / (time.perf_counter() - w0), steps / (time.thread_time() - c0), float(loss)

    for e in ENGINES:  # warm-up: first-touch allocations, lazy initialisation
        run(e)
    wall: dict[str, list[float]] = {e: [] for e in ENGINES}
    cpu: dict[str, list[float]] = {e: [] for e in ENGINES}
    ratio_wall, ratio_cpu = [], []
    for r in range(rounds):
        order = list(ENGINES) if r % 2 == 0 else list(reversed(ENGINES))
        res = {e: run(e) for e in order}
        for e in ENGINES:
            wall[e].append(res[e][0])
            cpu[e].append(res[e][1])
        ratio_wall.append(res["manual"][0] / res["autograd"][0])
        ratio_cpu.append(res["manual"][1] / res["autograd"][1])
    return {
        "model": dataclasses.asdict(cfg), "params": num_params(models["manual"]), "batch_size": batch,
        "block_size": cfg.block_size, "rounds": rounds, "steps_per_round": steps,
        "steps_per_s_wall": {e: statistics.median(v) for e, v in wall.items()},
        "steps_per_s_cpu": {e: statistics.median(v) for e, v in cpu.items()},
        "manual_over_autograd_wall": statistics.median(ratio_wall),
        "manual_over_autograd_cpu": statistics.median(ratio_cpu),
        "ratios_wall": ratio_wall, "ratios_cpu": ratio_cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=40, help="steps per engine per round")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the tests)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results_transformer.json")))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": {"cpu_count": os.cpu_count(), "load_before": os.getloadavg(), "threads": args.threads,
                           "torch": torch.__version__, "python": platform.python_version()},
               "configs": {}}
    for name, cfg, batch in configs():
        results["configs"][name] = measure(cfg, batch, args.rounds, args.steps)
    results["machine"]["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(results))
        return
    print(f"load average before/after: {results['machine']['load_before'][0]:.1f} / {results['machine']['load_after'][0]:.1f}"
          f" on {os.cpu_count()} cores, {args.threads} torch thread(s)")
    print(f"{'config':36s}{'params':>9s}{'manual/s':>10s}{'autograd/s':>11s}{'ratio wall':>11s}{'ratio cpu':>10s}")
    for name, r in results["configs"].items():
        w = r["steps_per_s_wall"]
        print(f"{name:36s}{r['params']:>9,d}{w['manual']:>10.1f}{w['autograd']:>11.1f}"
              f"{r['manual_over_autograd_wall']:>11.3f}{r['manual_over_autograd_cpu']:>10.3f}")


if __name__ == "__main__":
    main()
