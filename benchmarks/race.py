"""The race: charmlp's `--budget T` against a plain autograd peer given the same wall time on the same split.

    python benchmarks/race.py --lists names,/usr/share/dict/spanish --budgets 1 --models gru
    python benchmarks/race.py                     # every list and budget below: hours on 2 cores

The peer is makemore.py's transformer written plainly here with torch.nn and autograd: token and
position embeddings, 4 pre-LayerNorm blocks of 4-head causal self-attention and a GELU MLP, 64
wide, AdamW (lr 5e-4, weight decay 0.01, betas 0.9/0.99, eps 1e-8), batch 32, the lr constant, as
makemore trains until stopped. It trains on the same items charmlp trains on (charmlp's split:
seed 42, 80/10/10) until T seconds have passed since its model was built, then its test NLL per
character (end token included) is measured; its evaluation is outside its T, charmlp's inside:
the comparison favours the peer.

charmlp runs `charmlp train --model M --budget T` in a process of its own (start-up not in T, as
budget.py says; its `budget_used` is reported). Both sides use the same thread count. Results go
to benchmarks/results_race.json (merged by list × budget × side), and a markdown table is printed.

The Debian word lists (apt: wamerican, wngerman, wfrench, wspanish) are under /usr/share/dict.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from charmlp.config import DataConfig  # noqa: E402
from charmlp.data import load_dataset  # noqa: E402

RESULTS = Path(__file__).with_name("results_race.json")
LISTS = ["names", "/usr/share/dict/spanish", "/usr/share/dict/american-english", "/usr/share/dict/french",
         "/usr/share/dict/ngerman"]
BUDGETS = [1, 2, 5, 10]  # minutes


class Block(nn.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x)): GPT-2's block, as makemore's."""

    def __init__(self, n_embd: int, n_head: int, block_size: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv, self.proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.fc, self.out = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.n_head)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Transformer(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int = 4, n_embd: int = 64, n_head: int = 4) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[Block(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f, self.head = nn.LayerNorm(n_embd), nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.ln_f(self.blocks(self.wte(idx) + self.wpe(pos))))


def nll(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, chunk: int = 1024) -> float:
    """Mean NLL per real target (−1: padding) over all rows."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(X), chunk):
            logits, y = model(X[i : i + chunk].long()), Y[i : i + chunk].long()
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-1, reduction="sum").item()
            count += int((y >= 0).sum())
    return total / count


def peer(data: str | None, seconds: float, seed: int = 0) -> dict:
    """makemore's transformer trained for `seconds` of wall time from its build; its test NLL."""
    ds = load_dataset(DataConfig(path=data, sequence=True))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = Transformer(ds.vocab.size, ds.block_size)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-8)
    Xtr, Ytr = ds.X["train"].long(), ds.Y["train"].long()  # charmlp stores small ids in small types
    steps = 0
    while time.perf_counter() - t0 < seconds:
        ix = torch.randint(len(Xtr), (32,))
        logits = model(Xtr[ix])
        loss = F.cross_entropy(logits.flatten(0, 1), Ytr[ix].flatten(), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    trained = time.perf_counter() - t0
    model.eval()
    return {"test_loss": nll(model, ds.X["test"], ds.Y["test"]), "val_loss": nll(model, ds.X["val"], ds.Y["val"]),
            "steps": steps, "train_seconds": trained}


def charmlp_run(data: str | None, seconds: float, model: str, threads: int) -> dict:
    """`charmlp train --model M --budget T` in its own process; its summary's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "charmlp", "train", "--model", model, "--budget", f"{seconds:g}s",
               "--out", str(out), "--threads", str(threads), "--no-progress"] + ([] if data is None else ["--data", data])
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode:  # a budget too short for the data is refused with a message: recorded
            return {"error": proc.stderr.strip(), "process_seconds": wall}
        s = json.loads((out / "summary.json").read_text())
        c = json.loads((out / "config.json").read_text())
    keep = ("test_loss", "val_loss", "train_loss", "steps", "budget_used", "startup_seconds", "loop_seconds", "n_params")
    return {**{k: s[k] for k in keep}, "process_seconds": wall, "time_limit": c["train"]["time_limit"],
            # the schedule's end as last re-planned (the steps taken: it ran to its end; more: the guard stopped it)
            "planned_steps": c["train"]["knots"][-1][1] if c["train"].get("knots") else c["train"]["schedule_steps"],
            "members": c["model"].get("members", 1), "dropout": c["model"].get("dropout", 0.0)}


def table(results: dict) -> str:
    """docs/budget.md's table: a row per list × budget, the lists by size."""
    lines = ["| list | items | T | charmlp | charmlp test | peer test | margin | charmlp's clock (steps) | peer steps |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results["cases"].values(), key=lambda r: (r["items"], r["minutes"])):
        c, p = r.get("charmlp"), r.get("peer")
        if not (c and p):
            continue
        if "error" in c:
            lines.append(f"| {r['list']} | {r['items']:,} | {r['minutes']:g} min | refused: {c['error']} | — | "
                         f"{p['test_loss']:.4f} | | | {p['steps']:,} |")
            continue
        shape = f"{c['model']} ×{c['members']}" + (f", dropout {c['dropout']:g}" if c["dropout"] else "")
        lines.append(f"| {r['list']} | {r['items']:,} | {r['minutes']:g} min | {shape} | **{c['test_loss']:.4f}** | "
                     f"{p['test_loss']:.4f} | {p['test_loss'] - c['test_loss']:+.4f} | "
                     f"{c['budget_used']:.1f} s ({c['steps']:,}) | {p['steps']:,} |")
    return "\n".join(lines)


def save_case(key: str, case: dict, machine: dict) -> dict:
    """Merge one finished case into RESULTS and return the whole file's contents: read, update and
    replace under an exclusive lock, so that races run side by side (one list each, `--threads 1`
    on two cores) keep each other's cases; written atomically, an interrupted race keeps its finished ones."""
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"cases": {}}
        results["machine"] = machine
        results["cases"][key] = case
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(RESULTS)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lists", default=",".join(LISTS), help="comma-separated data files; names: the embedded names")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="minutes, comma-separated")
    ap.add_argument("--models", default="gru", help="charmlp's models, comma-separated (each races the peer)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the table of the results file and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return 0
    torch.set_num_threads(args.threads)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "threads": args.threads}
    for lst in args.lists.split(","):
        data = None if lst == "names" else lst
        ds = load_dataset(DataConfig(path=data, sequence=True))
        for minutes in map(float, args.budgets.split(",")):
            for model in args.models.split(","):
                key = f"{Path(lst).name}|{minutes:g}|{model}"
                print(f"{key}: charmlp …", file=sys.stderr, flush=True)
                c = {"model": model, **charmlp_run(data, 60 * minutes, model, args.threads)}
                print(f"{key}: peer …", file=sys.stderr, flush=True)
                p = peer(data, 60 * minutes)
                results = save_case(key, {"list": Path(lst).name, "items": sum(len(v) for v in ds.items.values()),
                                          "minutes": minutes, "charmlp": c, "peer": p,
                                          "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, machine)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
