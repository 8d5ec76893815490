"""charmlp vs the lectures' own loops, measured side by side in one process run.

    python benchmarks/run.py            # full run (~10 min on 2 busy cores): benchmarks/results.json + table
    python benchmarks/run.py --quick    # under 2 minutes: smaller sizes, baseline 200k-step time extrapolated
    python benchmarks/run.py --quick --json

What is measured (every figure comes from a clock in this run; ratios are taken round by round,
interleaved, so a busy machine slows both sides of a ratio alike):

0. the compiled step's one-off cost: compiling it into an empty Numba cache, then loading it from
   that cache, each in a fresh process.
1. steps/s at batch 32 (n_embd 10, n_hidden 200, BatchNorm, tanh): the lectures' training loop
   (benchmarks/baseline.py), charmlp's eager `autograd` and `manual` engines, the fused NumPy
   step (`FastStep`) and the compiled fused step (`CompiledStep`, the default where Numba is
   installed) — each round runs every variant for the same number of steps; also 1 vs 2 threads.
2. time to val ≤ 2.11 on names: the baseline's 200 000-step seed run (train, calibrate BatchNorm,
   evaluate) vs `charmlp.train` with the `fast` preset (build, train, calibrate, evaluate), and
   the whole command `charmlp train --preset seed --steps 60000` (start-up included) vs the
   baseline's time for 60 000 steps.
3. sampling 10 000 names: the lectures' one-name-at-a-time loop vs charmlp's batched sampler,
   same model.
4. building the dataset from a 1 000 000-line file generated from names: the context windows
   of the three splits by the lectures' per-character loop vs `charmlp.build_examples` — time
   and peak memory, each in a fresh child process — and the whole pipeline (read, vocabulary,
   the lectures' random.shuffle split, windows), whose shuffle is the same Python code on
   both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import baseline as B  # noqa: E402
import charmlp  # noqa: E402
from charmlp.config import RunConfig, TrainConfig  # noqa: E402
from charmlp.data import build_examples, load_dataset, split_items  # noqa: E402
from charmlp.engines import compiled as compiled_step  # noqa: E402
from charmlp.engines.fast import FastStep, make_train_step  # noqa: E402
from charmlp.engines.support import unsupported_reason  # noqa: E402
from charmlp.engines.threads import set_threads  # noqa: E402
from charmlp.models import MODELS, MLPConfig, apply_preset, build_model  # noqa: E402
from charmlp.train import make_optimizer  # noqa: E402

TARGET_VAL = 2.11


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu, "cores": cores, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(),
        "load_avg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


# ----------------------------------------------------------------------------- 1. steps/s


def _baseline_runner(ds: charmlp.Dataset):
    Xtr, Ytr = ds.X["train"].long(), ds.Y["train"].long()  # the lectures' tensors are int64
    g = torch.Generator().manual_seed(B.SEED)
    m = B.init_model(g)

    def run(steps: int) -> float:
        return B.train_loop(m, Xtr, Ytr, g, steps)

    return run


def _charmlp_runner(ds: charmlp.Dataset, engine: str, batch_size: int = 32):
    """engine: autograd | manual (eager engines), numpy (FastStep) or compiled (CompiledStep)."""
    tc = TrainConfig(batch_size=batch_size)
    g = torch.Generator().manual_seed(tc.seed)
    model = build_model(MLPConfig(), generator=g)
    model.train()
    opt = make_optimizer(tc, model)
    X, Y = ds.X["train"], ds.Y["train"]
    if engine in ("numpy", "compiled"):
        assert unsupported_reason(model, opt) is None
        cls = FastStep if engine == "numpy" else compiled_step.CompiledStep
        step = cls(model, opt, X, Y, batch_size, g)
    else:
        step, used = make_train_step(engine, model, opt, X, Y, batch_size, g)
        assert used == engine
    losses = torch.empty(1_000_000)

    def run(steps: int) -> float:  # the train loop's body: lr, step, store the loss
        t0 = time.perf_counter()
        for i in range(steps):
            losses[i] = step(0.1)
        return time.perf_counter() - t0

    return run


def bench_steps(ds: charmlp.Dataset, rounds: int, steps: int) -> dict:
    set_threads(1)
    runners = {
        "baseline": _baseline_runner(ds),
        "autograd": _charmlp_runner(ds, "autograd"),
        "manual": _charmlp_runner(ds, "manual"),
        "fast": _charmlp_runner(ds, "numpy"),
    }
    default = "fast"
    if compiled_step.available():
        runners["compiled"] = _charmlp_runner(ds, "compiled")
        default = "compiled"
    for r in runners.values():  # warm-up: first-call costs, caches
        r(200)
    rates: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(rounds):
        order = list(runners) if i % 2 == 0 else list(reversed(runners))  # interleave
        for k in order:
            rates[k].append(steps / runners[k](steps))
        log(f"  round {i + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()) + " steps/s")
    out: dict = {}
    for k, v in rates.items():
        out[f"{k}_steps_per_s"] = statistics.median(v)
        if k != "baseline":  # ratio per round (same load on both sides), then the median
            out[f"speedup_{k}"] = statistics.median(a / b for a, b in zip(v, rates["baseline"], strict=True))
    out["rounds"], out["steps_per_round"] = rounds, steps
    out["all_rates"] = rates
    # threads: 1 vs 2, baseline and fast, interleaved
    thr: dict[str, list[float]] = {}
    n2 = 300  # a second spinning thread can make the lectures' loop ~30× slower on a busy machine: keep it short
    for i in range(2):
        for th in ((1, 2) if i == 0 else (2, 1)):
            set_threads(th)
            for k in ("baseline", default):
                thr.setdefault(f"{k}_{th}", []).append(n2 / runners[k](n2))
    set_threads(1)
    out["threads"] = {k.replace(default, "default"): statistics.median(v) for k, v in thr.items()}
    out["default"] = default
    return out


# ----------------------------------------------------------------------------- 0. compile time


def bench_compile() -> dict:
    """Seconds to compile the compiled step into an empty cache, then to load it from there
    (`compiled_step.warm_up()` in two fresh processes sharing one NUMBA_CACHE_DIR)."""
    if not compiled_step.available():
        return {"available": False, "reason": compiled_step.unavailable_reason()}
    out: dict = {"available": True}
    code = "import json; from charmlp.engines import compiled as c; print(json.dumps(c.warm_up()))"
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"), NUMBA_CACHE_DIR=d)
        for key in ("compile", "cache_load"):
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"{key}_seconds"] = r["seconds"]
            out[f"{key}_cache_hits"] = r["cache_hits"]
            log(f"  {key}: {r['seconds']:.1f} s (cache hits {r['cache_hits']}, misses {r['cache_misses']})")
    return out


# ----------------------------------------------------------------------------- 2. time to val ≤ 2.11


def bench_time_to_val(ds: charmlp.Dataset, quick: bool, baseline_steps_per_s: float) -> tuple[dict, charmlp.LanguageModel]:
    set_threads(1)
    out: dict = {}
    if quick:  # the 200k-step baseline takes minutes: extrapolate from its measured rate
        out["baseline_seconds"] = 200_000 / baseline_steps_per_s
        out["baseline_seconds_60k"] = 60_000 / baseline_steps_per_s
        out["baseline_source"] = "extrapolated: 200000 steps / measured baseline steps/s (--quick)"
        out["baseline_val"] = None
    else:
        log("  baseline: 200 000 steps of the lectures' loop …")
        Xtr, Ytr = ds.X["train"].long(), ds.Y["train"].long()
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(B.SEED)
        m = B.init_model(g)
        B.train_loop(m, Xtr, Ytr, g, 200_000)
        B.calibrate(m, Xtr)
        out["baseline_val"] = B.split_loss(m, ds.X["val"].long(), ds.Y["val"].long())
        out["baseline_seconds"] = time.perf_counter() - t0
        out["baseline_seconds_60k"] = m.seconds_at[60_000]
        out["baseline_source"] = "measured: full 200000-step run"
        log(f"  baseline: val {out['baseline_val']:.4f} in {out['baseline_seconds']:.1f} s")
    cfg = RunConfig(train=apply_preset(TrainConfig(), "fast"))
    t0 = time.perf_counter()
    res = charmlp.train(cfg, dataset=ds, progress=False)
    out["fast_seconds"] = time.perf_counter() - t0
    out["fast_val"] = res.summary["val_loss"]
    out["fast_preset"] = MODELS["mlp"].presets["fast"]
    out["fast_engine"] = res.summary["engine"]
    out["fast_step_impl"] = res.summary["step_impl"]
    out["fast_reached_target"] = out["fast_val"] <= TARGET_VAL
    out["time_to_val_2_11_ratio"] = out["fast_seconds"] / out["baseline_seconds"]
    log(f"  fast preset: val {out['fast_val']:.4f} in {out['fast_seconds']:.1f} s")
    # the whole command, start-up included
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "charmlp", "train", "--preset", "seed", "--steps", "60000", "--no-progress",
               "--out", str(Path(d) / "run")]
        env = dict(os.environ, PYTHONPATH=str(HERE.parent / "src"))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        out["cli_seed_60k_seconds"] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"charmlp train failed: {proc.stderr}")
        cli_summary = json.loads((Path(d) / "run" / "summary.json").read_text())
        out["cli_seed_60k_val"] = cli_summary["val_loss"]
        out["cli_seed_60k_step_impl"] = cli_summary["step_impl"]
        # start-up: whole processes, median of 5 (the target: --help ≤ 0.2 s, sample ≤ 0.5 s)
        for key, args in (("cli_help", ["--help"]), ("cli_sample", ["sample", str(Path(d) / "run"), "-n", "20"])):
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "charmlp", *args], capture_output=True, env=env, check=True)
                times.append(time.perf_counter() - t0)
            out[f"{key}_seconds"] = statistics.median(times)
            log(f"  charmlp {' '.join(args[:1])}: {out[f'{key}_seconds']:.2f} s (median of 5)")
    out["cli_seed_60k_ratio"] = out["cli_seed_60k_seconds"] / out["baseline_seconds_60k"]
    log(f"  charmlp train --preset seed --steps 60000: {out['cli_seed_60k_seconds']:.1f} s "
        f"(baseline 60k steps {out['baseline_seconds_60k']:.1f} s)")
    return out, res.model


# ----------------------------------------------------------------------------- 3. sampling


def bench_sampling(model: charmlp.LanguageModel, vocab: charmlp.Vocab, n_loop: int, n_batched: int) -> dict:
    set_threads(1)
    model.eval()
    g = torch.Generator().manual_seed(B.SEED + 10)
    forward = B.lecture_forward(model)
    B.sample_one_at_a_time(forward, 20, model.cfg.block_size, g)  # warm-up
    t0 = time.perf_counter()
    names = B.sample_one_at_a_time(forward, n_loop, model.cfg.block_size, g)
    loop_s = time.perf_counter() - t0
    # one batched call is the whole measurement, so first-touch costs (fresh pages for the
    # 10 000-row buffers) would dominate it: warm up once, then the median of 3 calls
    charmlp.sample(model, vocab, n=n_batched, seed=B.SEED + 10)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        s = charmlp.sample(model, vocab, n=n_batched, seed=B.SEED + 10)
        times.append(time.perf_counter() - t0)
    batched_s = statistics.median(times)
    mean_len = lambda xs: sum(map(len, xs)) / len(xs)  # noqa: E731
    out = {
        "loop_names": n_loop, "loop_seconds": loop_s, "loop_names_per_s": n_loop / loop_s,
        "batched_names": n_batched, "batched_seconds": batched_s, "batched_names_per_s": n_batched / batched_s,
        "loop_mean_len": mean_len(names), "batched_mean_len": mean_len(s.samples),
    }
    out["sampling_speedup"] = out["batched_names_per_s"] / out["loop_names_per_s"]
    return out


# ----------------------------------------------------------------------------- 4. data building


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field + ":")) / 1024  # kB → MB


def data_child(which: str, path: str) -> None:
    """Run in a fresh process: build the dataset one way, print times and peak memory as JSON.

    `prepare`: read, vocabulary, shuffle, split (the same work on both sides); `windows`: the
    context windows of the three splits — the lectures' per-character loop or
    `charmlp.build_examples`. Peak memory is the growth of the peak RSS (VmHWM, reset through
    /proc/self/clear_refs once the words are read) over the RSS before the windows.
    """
    set_threads(1)
    t0 = time.perf_counter()
    if which == "loop":
        splits, stoi = B.read_and_split(path)
    else:
        items = charmlp.read_items(path)
        vocab = charmlp.Vocab.from_items(items)
        splits = split_items(items)
    t1 = time.perf_counter()
    try:  # reset the peak-RSS counter (Linux ≥ 4.0) so the peak is that of the window building
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = _status_mb("VmRSS")
    t1 = time.perf_counter()
    if which == "loop":
        built = {s: B.build_dataset(w, stoi) for s, w in splits.items()}
    else:
        built = {s: build_examples(w, vocab, 3) for s, w in splits.items()}
    t2 = time.perf_counter()
    peak = _status_mb("VmHWM")
    X = built["train"][0]
    print(json.dumps({
        "prepare_seconds": t1 - t0, "seconds": t2 - t1, "pipeline_seconds": t2 - t0,
        "examples": sum(len(y) for _, y in built.values()), "dtype": str(X.dtype),
        "bytes_per_example": (X.element_size() * X.shape[1] + built["train"][1].element_size()),
        "peak_growth_mb": peak - before if reset else None, "rss_before_mb": before, "peak_rss_mb": peak,
    }))


def bench_data(lines: int, workdir: Path) -> dict:
    words = charmlp.read_items(None)
    rng = random.Random(0)
    path = workdir / f"names_{lines}.txt"
    path.write_text("\n".join(rng.choice(words) for _ in range(lines)) + "\n", encoding="utf-8")
    out: dict = {"lines": lines}
    for which in ("charmlp", "loop"):
        proc = subprocess.run([sys.executable, __file__, "--_data-child", which, str(path)],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(HERE.parent / "src")))
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        out[which] = r = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  {which}: windows {r['seconds']:.2f} s (read+split {r['prepare_seconds']:.2f} s), "
            f"peak RSS growth {r['peak_growth_mb']} MB, {r['dtype']}")
    if out["charmlp"]["examples"] != out["loop"]["examples"]:
        raise RuntimeError("the two data pipelines built different numbers of examples")
    out["data_build_speedup"] = out["loop"]["seconds"] / out["charmlp"]["seconds"]
    out["data_pipeline_speedup"] = out["loop"]["pipeline_seconds"] / out["charmlp"]["pipeline_seconds"]
    lm, cm = out["loop"]["peak_growth_mb"], out["charmlp"]["peak_growth_mb"]
    out["data_memory_ratio"] = lm / max(cm, 1.0) if lm is not None and cm is not None else None
    return out


# ----------------------------------------------------------------------------- report


def table(r: dict) -> str:
    s, t, sa, d = r["steps"], r["time_to_val"], r["sampling"], r["data"]
    rows = [
        ("training steps/s, batch 32: lectures' loop (autograd)", f"{s['baseline_steps_per_s']:.0f}", "1×"),
        ("charmlp `--engine autograd`", f"{s['autograd_steps_per_s']:.0f}", f"{s['speedup_autograd']:.2f}×"),
        ("charmlp `--engine manual`", f"{s['manual_steps_per_s']:.0f}", f"{s['speedup_manual']:.2f}×"),
        ("charmlp fused NumPy step (`FastStep`; the default without Numba)", f"{s['fast_steps_per_s']:.0f}",
         f"{s['speedup_fast']:.2f}×"),
        *([("charmlp compiled fused step (`CompiledStep`, Numba; the default)", f"{s['compiled_steps_per_s']:.0f}",
            f"{s['speedup_compiled']:.2f}×")] if "compiled_steps_per_s" in s else []),
        ("threads: lectures' loop 1 / 2", f"{s['threads']['baseline_1']:.0f} / {s['threads']['baseline_2']:.0f}", ""),
        ("threads: default step 1 / 2", f"{s['threads']['default_1']:.0f} / {s['threads']['default_2']:.0f}", ""),
        (f"time to val ≤ 2.11: lectures' 200k-step run ({t['baseline_source'].split(':')[0]})",
         f"{t['baseline_seconds']:.1f} s" + (f" (val {t['baseline_val']:.4f})" if t["baseline_val"] else ""), "1×"),
        (f"time to val ≤ 2.11: `fast` preset ({t['fast_step_impl']} step)", f"{t['fast_seconds']:.1f} s (val {t['fast_val']:.4f})",
         f"1/{1 / t['time_to_val_2_11_ratio']:.1f}"),
        ("`charmlp train --preset seed --steps 60000` vs lectures' 60k steps",
         f"{t['cli_seed_60k_seconds']:.1f} s vs {t['baseline_seconds_60k']:.1f} s",
         f"1/{1 / t['cli_seed_60k_ratio']:.1f}"),
        ("`charmlp --help`, whole process, median of 5", f"{t['cli_help_seconds']:.2f} s", ""),
        ("`charmlp sample RUN -n 20`, whole process, median of 5", f"{t['cli_sample_seconds']:.2f} s", ""),
        ("sampling: one name at a time (names/s)", f"{sa['loop_names_per_s']:.0f}", "1×"),
        (f"sampling: batched, {sa['batched_names']} names (names/s)", f"{sa['batched_names_per_s']:.0f}",
         f"{sa['sampling_speedup']:.0f}×"),
        (f"context windows of a {d['lines']}-line file: lectures' per-character loop",
         f"{d['loop']['seconds']:.2f} s, peak +{d['loop']['peak_growth_mb']:.0f} MB ({d['loop']['dtype']})", "1×"),
        ("context windows: `charmlp.build_examples`",
         f"{d['charmlp']['seconds']:.2f} s, peak +{d['charmlp']['peak_growth_mb']:.0f} MB ({d['charmlp']['dtype']})",
         f"{d['data_build_speedup']:.0f}× faster, {d['data_memory_ratio']:.0f}× less memory"),
        ("whole data pipeline (read, shuffle, split, windows)",
         f"{d['loop']['pipeline_seconds']:.2f} s vs {d['charmlp']['pipeline_seconds']:.2f} s",
         f"{d['data_pipeline_speedup']:.1f}×"),
    ]
    c = r["compile"]
    if c.get("available"):
        rows.insert(0, ("compiled step: compile once (empty cache) / load from the cache, fresh process",
                        f"{c['compile_seconds']:.1f} s / {c['cache_load_seconds']:.2f} s", ""))
    lines = ["| measurement | value | vs the lectures |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    m = r["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, NumPy {m['numpy']}, Python "
                 f"{m['python']}; 1 torch/BLAS thread unless stated; load average {m['load_avg_start']:.1f} at start, "
                 f"{m['load_avg_end']:.1f} at end. Mode: {'--quick' if r['quick'] else 'full'}.")
    return "\n".join(lines)


def summary(r: dict) -> dict:
    s, t = r["steps"], r["time_to_val"]
    return {
        "baseline_steps_per_s": s["baseline_steps_per_s"],
        "autograd_steps_per_s": s["autograd_steps_per_s"],
        "manual_steps_per_s": s["manual_steps_per_s"],
        "fastest_steps_per_s": s[f"{s['default']}_steps_per_s"],
        "numpy_step_steps_per_s": s["fast_steps_per_s"],
        "speedup_autograd": s["speedup_autograd"],
        "speedup_manual": s["speedup_manual"],
        "speedup_fastest": s[f"speedup_{s['default']}"],
        "speedup_numpy_step": s["speedup_fast"],
        "compile": r["compile"],
        "time_to_val_2_11_ratio": t["time_to_val_2_11_ratio"],
        "fast_preset_val": t["fast_val"],
        "cli_seed_60k_ratio": t["cli_seed_60k_ratio"],
        "cli_help_seconds": t["cli_help_seconds"],
        "cli_sample_seconds": t["cli_sample_seconds"],
        "sampling_speedup": r["sampling"]["sampling_speedup"],
        "data_build_speedup": r["data"]["data_build_speedup"],
        "data_memory_ratio": r["data"]["data_memory_ratio"],
        "data_pipeline_speedup": r["data"]["data_pipeline_speedup"],
        "threads_steps_per_s": s["threads"],
        "quick": r["quick"],
        "machine": r["machine"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="under 2 minutes: fewer rounds and smaller sizes")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    ap.add_argument("--out", type=Path, help="results file (default: benchmarks/results.json for a full run)")
    ap.add_argument("--_data-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._data_child:
        data_child(*args._data_child)
        return 0
    q = args.quick
    t_start = time.perf_counter()
    r: dict = {"quick": q, "machine": machine()}
    ds = load_dataset()
    log("0/4 compiling the compiled step …")
    r["compile"] = bench_compile()
    log("1/4 training steps/s at batch 32 …")
    r["steps"] = bench_steps(ds, rounds=3 if q else 7, steps=1500 if q else 5000)
    log("2/4 time to val ≤ 2.11 …")
    r["time_to_val"], model = bench_time_to_val(ds, q, r["steps"]["baseline_steps_per_s"])
    log("3/4 sampling …")
    r["sampling"] = bench_sampling(model, ds.vocab, n_loop=1000 if q else 10_000, n_batched=10_000)
    log("4/4 dataset building …")
    with tempfile.TemporaryDirectory() as d:
        r["data"] = bench_data(100_000 if q else 1_000_000, Path(d))
    r["machine"]["load_avg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    r["seconds"] = time.perf_counter() - t_start
    r["summary"] = summary(r)
    r["table"] = table(r)
    out = args.out or (None if q else HERE / "results.json")
    if out is not None:
        out.write_text(json.dumps(r, indent=2) + "\n")
    if args.json:
        print(json.dumps(r["summary"], indent=2))
    else:
        print(table(r))
    log(f"done in {r['seconds']:.0f} s" + (f"; results in {out}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
