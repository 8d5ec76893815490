"""The learning-rate finder: schedule, suggestion rule, and the suggestion on names."""

from __future__ import annotations

import json
import math

import pytest

from charmlp.errors import CharmlpError
from charmlp.lrfind import lr_schedule, suggest
from conftest import assert_user_error, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_schedule_is_exponential_from_min_to_max():
    lrs = lr_schedule(1e-3, 1.0, 1000)
    assert len(lrs) == 1000
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1.0)
    # evenly spaced in log10: a constant ratio 10^(3/999) between neighbours
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert all(r == pytest.approx(10 ** (3 / 999)) for r in ratios)
    assert lr_schedule(0.01, 0.1, 2) == pytest.approx([0.01, 0.1])
    assert lr_schedule(1e-4, 1e-2, 3) == pytest.approx([1e-4, 1e-3, 1e-2])


@pytest.mark.parametrize("args", [(1.0, 1e-3, 100), (0.0, 1.0, 100), (1e-3, float("inf"), 100), (1e-3, 1.0, 1)])
def test_schedule_rejects_bad_ranges(args):
    with pytest.raises(CharmlpError):
        lr_schedule(*args)


def test_suggest_on_a_synthetic_valley():
    """Loss falls fastest at lr 1e-2, reaches its floor by 1e-1, rises after 0.3."""
    lrs = lr_schedule(1e-3, 1.0, 600)
    def loss(lr):
        x = math.log10(lr)
        return 3 - 1 / (1 + math.exp(-6 * (x + 2))) + max(0.0, x + 0.5) ** 2 * 4
    s, steep, at_min, sm = suggest(lrs, [loss(lr) for lr in lrs])
    assert len(sm) == 600
    assert 0.005 < steep < 0.02  # the sigmoid's centre, delayed a little by the moving average
    assert 0.03 < s < at_min <= 0.5


def test_lr_find_on_names_suggests_a_sensible_lr(tmp_path):
    out = tmp_path / "lrf"
    proc = run_cli("lr-find", "--json", "--no-progress", "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert 0.03 <= res["suggested_lr"] <= 0.3, res
    assert 1e-3 <= res["steepest_lr"] <= 1.0
    assert res["steps"] == 1000 and res["diverged_at"] is None
    assert (out / "lr_find.png").read_bytes().startswith(PNG_MAGIC)
    saved = json.loads((out / "lr_find.json").read_text())
    assert len(saved["lrs"]) == len(saved["losses"]) == 1000
    assert saved["suggested_lr"] == res["suggested_lr"]


def test_lr_find_text_output_and_divergence(tiny_data, tmp_path):
    # adamw up to lr 100 blows up: the sweep stops and says so
    proc = run_cli("lr-find", "--data", tiny_data, "--batch-size", 16, "--n-hidden", 32, "--optimizer", "adamw",
                   "--lr-max", 100, "--lr-steps", 300, "--no-progress", "--out", tmp_path / "lrf")
    assert proc.returncode == 0, proc.stderr
    assert "suggested lr" in proc.stdout and "steepest-descent lr" in proc.stdout
    assert "blew up at step" in proc.stdout and "plot and numbers in" in proc.stdout
    saved = json.loads((tmp_path / "lrf" / "lr_find.json").read_text())
    assert saved["diverged_at"] is not None and len(saved["lrs"]) == saved["diverged_at"] < 300


def test_lr_find_user_errors(tiny_data):
    assert_user_error(run_cli("lr-find", "--data", tiny_data, "--lr-min", 1, "--lr-max", 0.1), "--lr-min")
    assert_user_error(run_cli("lr-find", "--data", tiny_data, "--steps", 10), "--lr-steps")
    assert_user_error(run_cli("lr-find", "--data", tiny_data, "--lr-steps", 1), "--lr-steps")
