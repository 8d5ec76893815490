"""--eval-every: the val loss during training, in eval mode, logged to metrics.jsonl."""

from __future__ import annotations

import json

import pytest

import charmlp
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.models import MLPConfig, WaveNetConfig
from charmlp.train import eval_positions, resolve_eval_every
from conftest import run_cli


def val_rows(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]


@pytest.mark.parametrize("model", [MLPConfig(n_hidden=16, n_embd=4), WaveNetConfig(n_hidden=12, n_embd=4, block_size=4)])
def test_the_last_evaluation_equals_charmlp_eval_on_the_same_weights(tmp_path, tiny_data, model):
    # without calibration the saved weights (and BatchNorm statistics) are those of the last step
    cfg = RunConfig(DataConfig(path=str(tiny_data)), model, TrainConfig(steps=90, batch_size=16, eval_every=30,
                                                                        calibrate_bn=False))
    charmlp.train(cfg, out_dir=tmp_path / "run", progress=False)
    rows = val_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [29, 59, 89]
    assert rows[-1]["val_loss"] == pytest.approx(charmlp.evaluate_run(tmp_path / "run")["val"], abs=1e-6)
    assert len({r["val_loss"] for r in rows}) == 3  # the model moved between evaluations


def test_default_is_about_20_evaluations_within_5_percent_of_the_work_and_0_is_never(tmp_path, tiny_data):
    n_val = 22655  # names at block 3
    assert resolve_eval_every(TrainConfig(), n_val) == 14_285  # the lectures' 200k × 32: 14 evaluations (14.1)
    assert resolve_eval_every(TrainConfig(steps=10_000, batch_size=256), n_val) == 2000  # 2.56M rows: 5 (5.6)
    assert resolve_eval_every(TrainConfig(steps=100, batch_size=32), n_val) == 100  # little work: one, at the end
    assert resolve_eval_every(TrainConfig(steps=7, batch_size=10**6), 10) == 1  # never more often than every step
    assert resolve_eval_every(TrainConfig(steps=100, eval_every=0), n_val) == 0
    assert resolve_eval_every(TrainConfig(steps=100, eval_every=7), n_val) == 7
    p = run_cli("train", "--data", tiny_data, "--steps", "400", "--batch-size", "32", "--n-hidden", "8", "--no-progress",
                "--out", tmp_path / "a")
    assert p.returncode == 0, p.stderr
    every = resolve_eval_every(TrainConfig(steps=400, batch_size=32),
                               len(charmlp.load_dataset(DataConfig(path=str(tiny_data))).Y["val"]))
    assert [r["step"] for r in val_rows(tmp_path / "a")] == [s for s in range(400) if (s + 1) % every == 0 or s == 399]
    p = run_cli("train", "--data", tiny_data, "--steps", "50", "--eval-every", "0", "--n-hidden", "8", "--no-progress",
                "--out", tmp_path / "b")
    assert p.returncode == 0 and not val_rows(tmp_path / "b")
    p = run_cli("train", "--data", tiny_data, "--steps", "50", "--eval-every", "-3", "--out", tmp_path / "c")
    assert p.returncode == 2 and "--eval-every" in p.stderr


def test_whole_item_models_count_positions_not_items():
    """Evaluation costs what it reads: a val split of longer items is evaluated more rarely, training
    rows of longer items (more work per step) allow it more often, and items of one length on both
    sides give the window models' count."""
    tc = TrainConfig(steps=10_000, batch_size=64)
    items = 3203
    same = resolve_eval_every(tc, items * 8, row_positions=8.0)
    assert same == resolve_eval_every(tc, items) == 1111  # 9 evaluations (9.99)
    assert resolve_eval_every(tc, items * 40, row_positions=8.0) == 10_000  # 5× the val positions: 1 (1.998)
    assert resolve_eval_every(tc, items * 8, row_positions=40.0) == 500  # 5× the training work: 20 (49.9, capped)
    ds = charmlp.load_dataset(DataConfig(block_size=0, sequence=True))
    val, per_row = eval_positions(ds)
    assert val == int((ds.Y["val"] >= 0).sum()) == sum(len(s) + 1 for s in ds.items["val"])
    assert per_row == pytest.approx(sum(len(s) + 1 for s in ds.items["train"]) / len(ds.items["train"]))


def test_the_report_draws_the_val_curve(tmp_path, tiny_data):
    from charmlp import plots

    png = plots.loss_curve_png([0, 1, 2, 3], [3.3, 3.0, 2.9, 2.8], {"val": 2.9}, 3.29, val=[(1, 3.1), (3, 2.95)])
    assert png.startswith(b"\x89PNG")


def test_the_end_of_run_val_loss_is_that_of_the_final_weights(tmp_path, tiny_data):
    """Without BatchNorm the last evaluation saw the final weights: the summary's val loss is that one,
    and the exact val loss of the saved model."""
    from charmlp.models import GRUConfig

    cfg = RunConfig(DataConfig(path=str(tiny_data)), GRUConfig(n_hidden=8, n_embd=4), TrainConfig(steps=20, batch_size=16))
    result = charmlp.train(cfg, out_dir=tmp_path / "run", progress=False)
    rows = val_rows(tmp_path / "run")
    assert rows[-1]["step"] == 19 and result.summary["val_loss"] == rows[-1]["val_loss"]
    assert result.summary["val_loss"] == pytest.approx(charmlp.evaluate_run(tmp_path / "run")["val"], abs=1e-9)
