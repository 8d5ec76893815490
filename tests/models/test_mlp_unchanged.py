"""The MLP gives the numbers it gave before the model zoo: values recorded with release b78305c
(tests/fixtures/record_mlp_before_zoo.py) and a run directory that release wrote.

The reshape itself changed no number: at the commit that moved the MLP every recorded value matched
bit for bit. One later change was deliberate: the manual engine's Tanh backward computes 1 − h² as
one fused multiply-add, as autograd does (so the gradient check's atoms are all exact); that moves
some manual-engine losses in the last bits, so those are compared within float32 round-off.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import charmlp
from charmlp import DataConfig, MLPConfig, RunConfig, TrainConfig
from charmlp.engines import compiled

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REF = json.loads((FIXTURES / "mlp_before_zoo.json").read_text())


@pytest.fixture(scope="module")
def names():
    return charmlp.load_dataset(DataConfig())


def _train(names, engine: str, steps: int, monkeypatch=None, **kw):
    cfg = RunConfig(DataConfig(), MLPConfig(n_hidden=64, **kw.pop("model", {})),
                    TrainConfig(steps=steps, engine=engine, eval_every=0, **kw))
    return charmlp.train(cfg, dataset=names, progress=False)


def _losses(hexes: list[str]) -> list[float]:
    return [float.fromhex(h) for h in hexes]


def test_autograd_engine_same_losses_val_and_samples_bit_for_bit(names):
    ref = REF["autograd"]
    res = _train(names, "autograd", ref["steps"], batch_size=32)
    assert res.losses == _losses(ref["losses"])
    assert res.summary["val_loss"] == float.fromhex(ref["val_loss"])
    assert charmlp.sample(res.model, names.vocab, n=10).samples == ref["samples"]


def test_manual_engine_same_losses_within_round_off(names):
    ref = REF["manual"]
    res = _train(names, "manual", ref["steps"], batch_size=32)
    assert max(abs(a - b) for a, b in zip(res.losses, _losses(ref["losses"]), strict=True)) <= 2e-6
    assert res.summary["val_loss"] == pytest.approx(float.fromhex(ref["val_loss"]), abs=1e-6)
    assert charmlp.sample(res.model, names.vocab, n=10).samples == ref["samples"]


@pytest.mark.parametrize("case", ["auto", "adamw_depth2"])
def test_numpy_fast_step_same_losses_bit_for_bit(names, monkeypatch, case):
    """The fused NumPy step (the default engine's fallback without Numba) is unchanged to the bit."""
    monkeypatch.setattr(compiled, "_status", "hidden by the test")
    ref = REF[case]
    if case == "auto":
        res = _train(names, "auto", ref["steps"], batch_size=32)
        samples = charmlp.sample(res.model, names.vocab, n=10).samples
    else:
        res = _train(names, "auto", 200, batch_size=64, optimizer="adamw", lr=0.005, schedule="cosine", lr_final=1e-4,
                     model={"n_layers": 2})
        samples = charmlp.sample(res.model, names.vocab, n=10, temperature=0.8, top_k=5, prefix="a").samples
    assert res.summary["step_impl"] == "numpy"
    assert res.losses == _losses(ref["losses"])
    assert res.summary["val_loss"] == float.fromhex(ref["val_loss"])
    assert samples == ref["samples"]


def test_a_run_directory_of_the_previous_release_loads_and_samples_the_same_names(tmp_path):
    run = tmp_path / "old"
    shutil.copytree(FIXTURES / "mlp_run_v0", run)
    loaded = charmlp.load_run(run)
    assert loaded.config.model.kind == "mlp" and loaded.config.model.n_hidden == 32
    expected = (FIXTURES / "mlp_run_v0_samples.txt").read_text().split()
    assert charmlp.sample_run(run, n=8, seed=5).samples == expected
    summary = json.loads((run / "summary.json").read_text())
    got = charmlp.evaluate_run(run)
    assert got["val"] == pytest.approx(summary["val_loss"], abs=1e-6)
    assert torch.equal(loaded.model.layers[0].weight, charmlp.load_run(run).model.layers[0].weight)
