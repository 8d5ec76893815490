"""Shared fixtures: a tiny generated data file and a CLI runner (subprocess)."""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charmlp.nn import Layer

SRC = Path(__file__).resolve().parents[1] / "src"

# the machine has 2 cores and tests may run beside each other: keep torch to one thread
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


def assert_user_error(proc: subprocess.CompletedProcess, contains: str = "") -> None:
    """Exit code 2, stderr one line starting with `error:`, no traceback."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert contains.lower() in err.lower(), err


# ----------------------------------------------------------------------------- hand-written backward vs finite differences


class HandWritten(torch.autograd.Function):
    """y = layer(x; params) with the gradient given by `layer.backward`, so that
    torch.autograd.gradcheck compares that backward with finite differences."""

    @staticmethod
    def forward(ctx, layer: Layer, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            for p, v in zip(layer.parameters(), params, strict=True):
                p.copy_(v)
            out = layer(x)
        ctx.layer = copy.deepcopy(layer)  # what this call's forward kept (gradcheck calls forward many times)
        return out.clone()

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        layer = ctx.layer
        for p in layer.parameters():
            p.grad = None
        with torch.no_grad():
            dx = layer.backward(dout)
        return (None, dx, *(p.grad for p in layer.parameters()))


def check_layer(layer: Layer, x: torch.Tensor) -> None:
    """torch.autograd.gradcheck (float64 finite differences) of `layer.backward` for input x and every parameter."""
    layer = layer.double()
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: HandWritten.apply(layer, x, *ps), (x, *params), eps=1e-6, atol=1e-7)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64)


