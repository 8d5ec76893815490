"""charmlp tune at a budget of a few seconds and two trials: run directories, a resumed study, the summary."""

import json

import pytest
import torch

from charmlp.checkpoint import WEIGHTS
from charmlp.errors import CharmlpError
from charmlp.runs import collect_runs
from charmlp.tune import PLOT, STUDY_DB, SUMMARY_JSON, _preset_params, format_summary, tune
from conftest import assert_user_error, run_cli

pytest.importorskip("optuna")


class StopAfterFirst(Exception):
    """Stands for a Ctrl-C between two trials."""


def test_a_search_interrupted_and_resumed_keeps_its_trials(tiny_data, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "search"
    lines: list[str] = []

    def stop_after_first(line: str) -> None:
        lines.append(line)
        raise StopAfterFirst

    kw = {"budget": 4.0, "models": ("gru", "transformer"), "trials": 2, "progress": False, "device": "cpu"}
    with pytest.raises(StopAfterFirst):
        tune(str(tiny_data), out=out, log=stop_after_first, **kw)
    assert lines and lines[0].startswith("trial 0: gru complete")
    first = json.loads((out / "trial-000" / "summary.json").read_text())
    assert (out / STUDY_DB).is_file() and not (out / "trial-001").exists()

    result = tune(str(tiny_data), out=out, log=lines.append, **kw)  # the same call again: one more trial
    assert [r["trial"] for r in result.trials] == [0, 1] and len(lines) == 2
    assert [r["model"] for r in result.trials] == ["gru", "transformer"]  # each model's `best` first
    assert result.trials[0]["val_loss"] == first["val_loss"]  # the finished trial was kept, not rerun
    for kind, r in zip(("gru", "transformer"), result.trials):
        assert {f"{kind}.{k}": v for k, v in r["params"].items()} | {"model": kind} == _preset_params(kind)
        assert (out / r["run"] / WEIGHTS).is_file() and r["state"] == "complete"
        assert 0 < r["seconds"] < 4.0  # each trial's budget clock: half the search's budget, and some
    rows = collect_runs([out], sort="val")  # `charmlp runs OUT` lists every trial
    assert sorted(p.path.name for p in rows) == ["trial-000", "trial-001"]
    assert result.best["val_loss"] == min(r["val_loss"] for r in result.trials) == rows[0].val_loss
    on_disk = json.loads((out / SUMMARY_JSON).read_text())
    assert on_disk["best"]["trial"] == result.best["trial"] and len(on_disk["trials"]) == 2
    assert (out / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = format_summary(result)
    assert len(text.splitlines()) <= 24 and f"best: trial {result.best['trial']}" in text and "2 complete" in text

    again = tune(str(tiny_data), out=out, log=lines.append, **kw)  # nothing left to do: the summary only
    assert len(again.trials) == 2 and len(lines) == 2
    with pytest.raises(CharmlpError, match="another --out"):
        tune(str(tiny_data), out=out, **{**kw, "models": ("rnn",)})


def test_tune_flag_errors(tmp_path):
    assert_user_error(run_cli("tune", "--budget", "5s", "--out", tmp_path / "t", "--models", "mlp"), "tune searches")
    assert_user_error(run_cli("tune", "--budget", "soon", "--out", tmp_path / "t"), "not a duration")
    assert_user_error(run_cli("tune", "--budget", "5s", "--out", tmp_path / "t", "--trials", "0"), "--trials")
