"""Diagnostics statistics on hand-built tensors, the training recorder, snapshots and the
good-vs-bad init comparison."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import charmlp
from charmlp.diagnostics import (
    DiagnosticsRecorder,
    activation_stats,
    embedding_2d,
    grad_data_ratio,
    init_check,
    init_warning_hook,
    smooth,
    take_snapshot,
    update_ratio,
)
from conftest import assert_user_error, run_cli


def test_activation_stats_known_answers():
    h = torch.tensor([
        [0.99, -0.98, 0.50, 0.00],
        [0.995, 0.10, -0.99, 0.20],
    ])
    st = activation_stats(h)
    # |h| > 0.97: 0.99, −0.98, 0.995, −0.99 → 4 of 8
    assert st.saturated_pct == pytest.approx(50.0)
    # unit 0 is saturated for both examples; units 1 and 2 only for one
    assert st.dead_units == 1
    assert st.units == 4
    assert st.mean == pytest.approx(float(h.double().mean()))
    assert st.std == pytest.approx(float(h.double().std()))
    # a stricter threshold: 0.99, 0.995 and −0.99 exceed 0.985; unit 0 is still dead, not above 0.992
    st = activation_stats(h, threshold=0.985)
    assert st.saturated_pct == pytest.approx(100 * 3 / 8)
    assert st.dead_units == 1  # 0.99 and 0.995 both exceed 0.985
    assert activation_stats(h, threshold=0.992).dead_units == 0


def test_ratios_known_answers():
    p = torch.tensor([0.0, 2.0, 4.0])  # std 2
    g = torch.tensor([0.0, 4.0, 8.0])  # std 4
    assert grad_data_ratio(p, g) == pytest.approx(2.0)
    # log10(std(0.1·g) / std(p)) = log10(0.4 / 2)
    assert update_ratio(p, g, 0.1) == pytest.approx(math.log10(0.2))
    assert update_ratio(p, g, 1e-3) == pytest.approx(math.log10(2e-3))
    # undefined cases are nan, never an exception
    assert math.isnan(grad_data_ratio(torch.ones(5), g.repeat(2)[:5]))  # std(param) = 0 (BatchNorm γ at init)
    assert math.isnan(update_ratio(p, torch.zeros(3), 0.1))  # no gradient: log10(0)


def test_init_check_threshold():
    ln27 = math.log(27)
    assert not init_check(ln27 + 0.4, 27).confidently_wrong
    wrong = init_check(ln27 + 0.6, 27)
    assert wrong.confidently_wrong and wrong.excess == pytest.approx(0.6)
    assert "confidently wrong" in wrong.message()
    assert init_check(float("nan"), 27).confidently_wrong


def test_embedding_2d_principal_components():
    # points on one line in 3-D: the first component holds all the variance
    t = torch.linspace(-1, 1, 7)[:, None]
    C = t * torch.tensor([[1.0, 2.0, 2.0]]) + torch.tensor([[5.0, 0.0, -1.0]])
    xy, share = embedding_2d(C)
    assert xy.shape == (7, 2)
    assert share[0] == pytest.approx(1.0) and share[1] == pytest.approx(0.0, abs=1e-12)
    # distances along the line are preserved (|direction| = 3)
    assert torch.allclose(xy[:, 0].abs(), 3 * t[:, 0].abs().double(), atol=1e-5)
    C2 = torch.randn(5, 2)
    xy2, share2 = embedding_2d(C2)
    assert share2 is None and torch.equal(xy2, C2.double())
    xy1, _ = embedding_2d(torch.randn(4, 1))
    assert xy1.shape == (4, 2) and torch.all(xy1[:, 1] == 0)


def test_smooth_chunk_means():
    assert smooth([1, 2, 3, 4, 5], 2) == ([0, 2, 4], [1.5, 3.5, 5.0])


def _tiny_cfg(tiny_data, **model) -> charmlp.RunConfig:
    return charmlp.RunConfig(
        charmlp.DataConfig(path=str(tiny_data)),
        charmlp.MLPConfig(n_embd=4, n_hidden=32, **model),
        charmlp.TrainConfig(steps=20, batch_size=16, lr=0.1, schedule="constant", device="cpu", seed=3),
    )


def test_recorder_update_ratio_is_the_sgd_step(tiny_data):
    """With SGD, std(lr·grad) is the std of the actual change of the parameter."""
    rec = DiagnosticsRecorder(every=5)
    before: dict[str, torch.Tensor] = {}
    checked = []

    def watch(step, model, lr, loss):  # runs after `rec`: compares with the previous step's weights
        params = dict(charmlp.diagnostics.named_params(model))
        if step % 5 == 0 and before:
            for name, p in params.items():
                if p.dim() == 2:
                    delta = before[name] - p.detach()
                    expect = math.log10(float(delta.double().std()) / float(p.detach().double().std()))
                    assert rec.update_ratio[name][-1] == pytest.approx(expect, abs=1e-4)
                    checked.append(name)
        before.clear()
        before.update({k: v.detach().clone() for k, v in params.items()})

    charmlp.train(_tiny_cfg(tiny_data), dataset=None, progress=False, hooks=(rec, watch))
    assert rec.steps == [0, 5, 10, 15]
    assert checked  # the comparison ran
    d = rec.to_dict()
    assert set(d["tanh"]) == {"4 Tanh"}
    assert len(d["tanh"]["4 Tanh"]["saturated_pct"]) == 4
    assert set(d["update_ratio"]) >= {"0 Embedding.weight", "2 Linear.weight", "5 Linear.weight"}
    json.dumps(d, allow_nan=False)  # strict JSON: undefined values are null


def test_snapshot_engines_agree_and_leave_model_untouched(tiny_data):
    cfg = _tiny_cfg(tiny_data, n_layer=2)
    ds = charmlp.load_dataset(cfg.data)
    model = charmlp.build_model(dataclasses.replace(cfg.model, vocab_size=ds.vocab.size), seed=1).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    xb, yb = ds.X["train"][:24], ds.Y["train"][:24]
    a = take_snapshot(model, xb, yb, engine="autograd")
    m = take_snapshot(model, xb, yb, engine="manual")
    assert a.loss == pytest.approx(m.loss, abs=1e-6)
    assert [s.label for s in a.layers] == [s.label for s in m.layers]
    for sa, sm in zip(a.layers, m.layers, strict=True):
        assert sa.grad is not None and sm.grad is not None, sa.label
        assert torch.allclose(sa.grad, sm.grad, atol=1e-6, rtol=1e-4), sa.label
    for pa, pm in zip(a.params, m.params, strict=True):
        assert torch.allclose(pa.grad, pm.grad, atol=1e-6, rtol=1e-4), pa.label
    assert [s.label for s in a.tanh()] == ["4 Tanh", "7 Tanh"]
    # BatchNorm running statistics and weights of the original are unchanged, and it stays in eval mode
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not model.training


def test_bad_init_saturates_and_starts_confidently_wrong(tiny_data):
    """Default init vs the lectures' first unscaled init (W ~ N(0,1): gain √fan_in, no BatchNorm)."""
    results = {}
    for name, model in {
        "good": {},
        "bad": {"batchnorm": False, "init_gain": math.sqrt(3 * 4), "init_out_scale": math.sqrt(32)},
    }.items():
        rec = DiagnosticsRecorder(every=1)
        warnings: list[str] = []
        res = charmlp.train(_tiny_cfg(tiny_data, **model), progress=False,
                            hooks=(rec, init_warning_hook(write=warnings.append)))
        results[name] = (res.summary, rec.tanh["4 Tanh" if name == "good" else "3 Tanh"]["saturated_pct"][0], warnings)
    (good, good_sat, good_warn), (bad, bad_sat, bad_warn) = results["good"], results["bad"]
    assert good["init_loss"] - good["ln_vocab"] < 0.5 and not good_warn
    assert bad["init_loss"] - bad["ln_vocab"] > 2.0 and "confidently wrong" in bad_warn[0]
    assert bad_sat > 3 * good_sat and bad_sat > 30.0


def test_cli_train_warns_on_bad_init(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", tiny_data, "--out", out, "--steps", 5, "--batch-size", 8, "--n-hidden", 16,
                   "--init-out-scale", 20, "--no-progress", "--diagnostics")
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "confidently wrong" in proc.stderr
    d = json.loads((out / "diagnostics.json").read_text())
    assert d["steps"] == [0, 1, 2, 3, 4] and d["every"] == 1
    proc = run_cli("train", "--data", tiny_data, "--out", tmp_path / "r2", "--steps", 5, "--diagnostics-every", 0)
    assert_user_error(proc, "--diagnostics-every")


@pytest.mark.parametrize("flag,value", [("--init-gain", "-1"), ("--init-out-scale", "nan"), ("--init-out-scale", "1e9")])
def test_init_scale_flags_are_validated(tiny_data, tmp_path, flag, value):
    assert_user_error(run_cli("train", "--data", tiny_data, "--out", tmp_path / "r", "--steps", 2, flag, value), flag)
