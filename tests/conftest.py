"""Shared fixtures: a tiny generated data file and a CLI runner (subprocess)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI runs the same examples every time (a red run must be reproducible); a local run explores anew
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SRC = Path(__file__).resolve().parents[1] / "src"

# the machine has 2 cores and tests may run beside each other: keep torch to one thread
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Back to one thread after each test (`charmlp train` of a whole-item model sets 2)."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def make_items(n: int = 300, seed: int = 0) -> list[str]:
    """Deterministic name-like items over a small alphabet."""
    rng = random.Random(seed)
    syll = ["an", "na", "li", "el", "ma", "ri", "o", "ka", "te", "sa", "ju", "bo"]
    return ["".join(rng.choice(syll) for _ in range(rng.randint(1, 4))) for _ in range(n)]


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A 300-line data file of name-like items."""
    p = tmp_path / "tiny.txt"
    p.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    return p


def run_cli(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """Run `python -m charmlp ARGS` in a fresh process; returns the completed process."""
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "charmlp", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, **kw,
    )


def run_main_without_heavy_imports(argv: list[str]) -> str:
    """Run `charmlp.cli.main(argv)` in a fresh process; assert it exits 0 having imported none of
    torch, matplotlib, numba; return its stdout."""
    script = (
        "import json, sys\nfrom charmlp.cli import main\n"
        f"code = main({[str(a) for a in argv]!r})\n"
        "print(json.dumps([m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'numba')]), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stderr.strip().splitlines()[-1]) == []
    return p.stdout


def assert_user_error(proc: subprocess.CompletedProcess, contains: str = "") -> None:
    """Exit code 2, stderr one line starting with `error:`, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert contains.lower() in err.lower(), err


@pytest.fixture(scope="session")
def names_run(tmp_path_factory) -> Path:
    """A short mlp run on the embedded names (a few seconds), shared by the tests that need a
    model that learnt something (scoring, sampling only new names)."""
    from charmlp.config import DataConfig, RunConfig, TrainConfig
    from charmlp.models import MLPConfig
    from charmlp.train import train

    d = tmp_path_factory.mktemp("names") / "run"
    cfg = RunConfig(DataConfig(), MLPConfig(n_embd=8, n_hidden=64),
                    TrainConfig(steps=600, batch_size=64, device="cpu", seed=2, eval_every=0))
    train(cfg, out_dir=d, progress=False)
    return d
