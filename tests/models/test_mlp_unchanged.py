"""The MLP gives the numbers it gave before the model zoo: values recorded with release b78305c
(tests/fixtures/record_mlp_before_zoo.py) and a run directory that release wrote.

The reshape itself changed no number: at the commit that moved the MLP every recorded value matched
bit for bit. One later change was deliberate: the manual engine's Tanh backward computes 1 − h² as
one fused multiply-add, as autograd does (so the gradient check's atoms are all exact); that moves
some manual-engine losses in the last bits, so those are compared within float32 round-off.

Reproducibility is "same machine, same threads, same seed → same bits; another CPU → the same to
float32 round-off" (docs/reliability.md). These values were recorded on one CPU, so they are
compared within a tolerance, never bit for bit: another CPU's BLAS kernels round a float32 sum in
another order (an AMD EPYC gives step 18's loss 3.0198042 against the recorded 3.0198045, 8e-8).
TOL: every initial weight scaled by (1 + 1e-7·noise), a round-off-sized change, moves the 200-step
curve by at most 4.8e-7 here; TOL is 20× that. A real change moves it by far more: the same with
1e-3·noise moves it by 2.6e-4, 26× TOL (the perturbation test below). Bit-for-bit reproducibility is
tested on two runs made in the same test run (tests/test_resume.py, tests/test_identical_files.py).
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import charmlp
from charmlp import DataConfig, MLPConfig, RunConfig, TrainConfig
from charmlp.engines import compiled

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
train_module = importlib.import_module("charmlp.train")  # the module (charmlp.train is also the function)
REF = json.loads((FIXTURES / "mlp_before_zoo.json").read_text())


@pytest.fixture(scope="module")
def names():
    return charmlp.load_dataset(DataConfig())


def _train(names, engine: str, steps: int, monkeypatch=None, **kw):
    cfg = RunConfig(DataConfig(), MLPConfig(n_hidden=64, **kw.pop("model", {})),
                    TrainConfig(steps=steps, engine=engine, eval_every=0, **kw))
    return charmlp.train(cfg, dataset=names, progress=False)


# losses and val loss: float32 round-off of another CPU's kernels, accumulated over the steps
TOL = 1e-5


def _losses(hexes: list[str]) -> list[float]:
    return [float.fromhex(h) for h in hexes]


def _assert_close(got: list[float], hexes: list[str], tol: float = TOL) -> None:
    want = _losses(hexes)
    assert len(got) == len(want)
    worst = max(abs(a - b) for a, b in zip(got, want, strict=True))
    assert worst <= tol, f"max |Δloss| {worst:.3g} > {tol:g}"


def test_autograd_engine_same_losses_val_and_samples_within_round_off(names):
    ref = REF["autograd"]
    res = _train(names, "autograd", ref["steps"], batch_size=32)
    _assert_close(res.losses, ref["losses"])
    assert res.summary["val_loss"] == pytest.approx(float.fromhex(ref["val_loss"]), abs=TOL)
    assert charmlp.sample(res.model, names.vocab, n=10).samples == ref["samples"]


def test_manual_engine_same_losses_within_round_off(names):
    ref = REF["manual"]
    res = _train(names, "manual", ref["steps"], batch_size=32)
    _assert_close(res.losses, ref["losses"])
    assert res.summary["val_loss"] == pytest.approx(float.fromhex(ref["val_loss"]), abs=TOL)
    assert charmlp.sample(res.model, names.vocab, n=10).samples == ref["samples"]


@pytest.mark.parametrize("case", ["auto", "adamw_depth2"])
def test_numpy_fast_step_same_losses_within_round_off(names, monkeypatch, case):
    """The fused NumPy step (the default engine's fallback without Numba) is unchanged to round-off."""
    monkeypatch.setattr(compiled, "_status", "hidden by the test")
    ref = REF[case]
    if case == "auto":
        res = _train(names, "auto", ref["steps"], batch_size=32)
        samples = charmlp.sample(res.model, names.vocab, n=10).samples
    else:
        res = _train(names, "auto", 200, batch_size=64, optimizer="adamw", lr=0.005, schedule="cosine", lr_final=1e-4,
                     model={"n_layer": 2})
        samples = charmlp.sample(res.model, names.vocab, n=10, temperature=0.8, top_k=5, prefix="a").samples
    assert res.summary["step_impl"] == "numpy"
    _assert_close(res.losses, ref["losses"])
    assert res.summary["val_loss"] == pytest.approx(float.fromhex(ref["val_loss"]), abs=TOL)
    assert samples == ref["samples"]


def _perturbed(build, rel: float):
    """build_model with every initial weight scaled by (1 + rel·noise), the noise seeded."""
    def perturbed_build(*args, **kwargs):
        model = build(*args, **kwargs)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + rel * torch.randn(p.shape, generator=g))
        return model
    return perturbed_build


@pytest.mark.parametrize("rel, caught", [(1e-7, False), (1e-3, True)])
def test_the_tolerance_hides_round_off_and_catches_a_real_change(names, monkeypatch, rel, caught):
    monkeypatch.setattr(train_module, "build_model", _perturbed(train_module.build_model, rel))
    ref = REF["autograd"]
    res = _train(names, "autograd", ref["steps"], batch_size=32)
    if caught:
        with pytest.raises(AssertionError, match="max"):
            _assert_close(res.losses, ref["losses"])
    else:
        _assert_close(res.losses, ref["losses"])


def test_two_runs_in_one_test_run_are_bit_for_bit_equal(names):
    a = _train(names, "autograd", 50, batch_size=32)
    b = _train(names, "autograd", 50, batch_size=32)
    assert a.losses == b.losses and a.summary["val_loss"] == b.summary["val_loss"]


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
