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

Then, per layer kind of a block, the backward alone: the hand-written `backward` against autograd
differentiating the same forward, on the activations of a batch of 64 (median of 200 calls each,
interleaved): where the manual engine gains and where it loses. And the same inside training
steps at batch 64, where the activations have left the cache and every call from Python costs
more: the manual side's layer `backward` (or `backward_`) timed around the call, autograd's from
the hook on the layer's output gradient to the hook on its input gradient.
"""

from __future__ import annotations

import argparse
import copy
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
from charmlp.models import TransformerConfig, build_model, num_params  # noqa: E402

ENGINES = {"manual": manual_grads, "autograd": autograd_grads}


def configs() -> list[tuple[str, TransformerConfig, int]]:
    """(name, model, batch): makemore.py's default transformer, as one member of the old constant
    `best` preset (dropout 0.1; `best` is a budget rule now), at the batch of the other presets (32) and at 64."""
    one = TransformerConfig(dropout=0.1)
    return [("4 layers × 64, batch 32", one, 32), ("4 layers × 64, batch 64", one, 64)]


def names_batches(cfg: TransformerConfig, batch: int, steps: int, seed: int
                  ) -> tuple[TransformerConfig, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The model sized to names (whole items), the training rows and `steps` random batches of them."""
    data = load_dataset(DataConfig(sequence=True, block_size=0))
    cfg = dataclasses.replace(cfg, vocab_size=data.vocab.size, block_size=data.block_size)
    X, Y = data.X["train"], data.Y["train"]
    g = torch.Generator().manual_seed(seed)
    return cfg, X, Y, [torch.randint(0, len(X), (batch,), generator=g) for _ in range(steps)]


def measure(cfg: TransformerConfig, batch: int, rounds: int, steps: int, seed: int = 0) -> dict:
    cfg, X, Y, batches = names_batches(cfg, batch, steps, seed)
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


def _manual_backward_s(layer: torch.nn.Module, x: torch.Tensor, dout: torch.Tensor) -> float:
    with torch.no_grad():
        layer(x)
        d = dout.clone()  # (no layer's `backward` writes into its argument, but the timing would not show it)
        t = time.perf_counter()
        layer.backward(d)
        return time.perf_counter() - t


def _autograd_backward_s(layer: torch.nn.Module, x: torch.Tensor, dout: torch.Tensor) -> float:
    y = layer(x.detach().requires_grad_(True))
    t = time.perf_counter()
    y.backward(dout)
    return time.perf_counter() - t


def layer_backward_times(batch: int = 64, calls: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median µs of one backward per layer kind of a block (n_embd 64, 4 heads, 16 positions):
    the layer's own `backward` vs autograd's backward of its forward, same weights and inputs."""
    from charmlp.nn import GELU, MLP, Block, CausalSelfAttention, LayerNorm, Linear

    T, C = 16, 64
    g = torch.Generator().manual_seed(seed)
    kinds = {"LayerNorm": (LayerNorm(C), C, C), "GELU (on 4C)": (GELU(), 4 * C, 4 * C),
             "Linear C→4C": (Linear(C, 4 * C), C, 4 * C), "Linear 4C→C": (Linear(4 * C, C), 4 * C, C),
             "CausalSelfAttention": (CausalSelfAttention(C, 4), C, C), "MLP": (MLP(C), C, C), "Block": (Block(C, 4), C, C)}
    out = {}
    for name, (layer, fan_in, fan_out) in kinds.items():
        with torch.no_grad():
            for q in layer.parameters():  # random weights, γ near 1
                q.copy_(torch.randn(q.shape, generator=g) * 0.1 + (1.0 if q.dim() == 1 else 0.0))
        x = torch.randn(batch, T, fan_in, generator=g)
        dout = torch.randn(batch, T, fan_out, generator=g)
        manual, auto = layer, copy.deepcopy(layer)
        for _ in range(20):
            _manual_backward_s(manual, x, dout), _autograd_backward_s(auto, x, dout)
        m, a = zip(*((_manual_backward_s(manual, x, dout), _autograd_backward_s(auto, x, dout)) for _ in range(calls)),
                   strict=True)
        out[name] = {"manual_us": statistics.median(m) * 1e6, "autograd_us": statistics.median(a) * 1e6}
    return out


def layer_backward_in_step(batch: int = 64, steps: int = 40, rounds: int = 4, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median µs of each block layer kind's backward inside whole training steps, manual vs autograd."""
    from charmlp.nn import MLP, Block, CausalSelfAttention, LayerNorm

    kinds = {"LayerNorm (in a block)": LayerNorm, "CausalSelfAttention": CausalSelfAttention, "MLP": MLP,
             "Block": Block}
    _, cfg, _ = configs()[0]
    cfg, X, Y, batches = names_batches(cfg, batch, steps, seed)
    times: dict[str, dict[str, list[float]]] = {e: {k: [] for k in kinds} for e in ENGINES}

    def timed_backward(layer: torch.nn.Module, kind: str, method: str) -> None:
        inner = getattr(layer, method)

        def call(*args, **kw):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            out = inner(*args, **kw)
            times["manual"][kind].append(time.perf_counter() - t)
            return out
        setattr(layer, method, call)

    def hooked_forward(layer: torch.nn.Module, kind: str) -> None:
        inner = layer.forward

        def call(x: torch.Tensor) -> torch.Tensor:
            start: list[float] = []
            if x.requires_grad:
                x.register_hook(lambda _g: times["autograd"][kind].append(time.perf_counter() - start[0]) and None)
            out = inner(x)
            out.register_hook(lambda _g: start.append(time.perf_counter()) and None)
            return out
        layer.forward = call

    models = {e: build_model(cfg, seed=seed) for e in ENGINES}
    for e, m in models.items():
        for name, layer in m.named_modules():
            kind = next((k for k, c in kinds.items() if isinstance(layer, c)), None)
            if kind is None or (isinstance(layer, LayerNorm) and not name.split(".")[-1].startswith("ln")):
                continue  # the final LayerNorm is not in a block: Sequential calls its `backward`
            if e == "manual":
                for method in ("backward", "backward_"):
                    if hasattr(layer, method):
                        timed_backward(layer, kind, method)
            else:
                hooked_forward(layer, kind)
    opts = {e: torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01) for e, m in models.items()}
    for r in range(rounds + 1):
        if r == 1:  # the first round warms up
            for per_kind in times.values():
                for v in per_kind.values():
                    v.clear()
        for e in ENGINES:
            for ix in batches:
                ENGINES[e](models[e], X[ix].long(), Y[ix].long())
                opts[e].step()
    return {k: {f"{e}_us": statistics.median(times[e][k]) * 1e6 for e in ENGINES} for k in kinds}


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
    results["layer_backward_batch_64"] = layer_backward_times()
    results["layer_backward_in_step_batch_64"] = layer_backward_in_step()
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
    for key, title in (("layer_backward_batch_64", "backward alone, batch 64"),
                       ("layer_backward_in_step_batch_64", "backward in a training step, batch 64")):
        print(f"\n{title:36s}{'manual µs':>10s}{'autograd µs':>12s}{'speed ratio':>12s}")
        for name, r in results[key].items():
            print(f"{name:36s}{r['manual_us']:>10.1f}{r['autograd_us']:>12.1f}{r['autograd_us'] / r['manual_us']:>12.2f}")


if __name__ == "__main__":
    main()
