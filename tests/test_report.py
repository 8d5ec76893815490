"""`charmlp diagnose`: the HTML report, its pictures, and runs with parts missing."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch

import charmlp
from charmlp import plots
from charmlp.diagnostics import embedding_2d, take_snapshot
from conftest import assert_user_error, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("config", "losses", "init", "activations", "gradients", "training", "embedding")


def _images(html: str) -> dict[str, bytes]:
    found = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']*)'>", html)
    return {alt: base64.b64decode(b64) for alt, b64 in found}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """A short two-layer run with --diagnostics on a tiny file (made once for this module)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_items

    d = tmp_path_factory.mktemp("report")
    data = d / "tiny.txt"
    data.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    out = d / "run"
    proc = run_cli("train", "--data", data, "--out", out, "--steps", 60, "--batch-size", 16, "--n-embd", 3,
                   "--n-hidden", 24, "--n-layer", 2, "--diagnostics", "--diagnostics-every", 5, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return str(out)


def test_report_has_every_section_and_picture(run_dir):
    weights = (charmlp.load_run(run_dir).path / "model.safetensors").read_bytes()
    proc = run_cli("diagnose", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert "report written to" in proc.stdout and "saturated" in proc.stdout
    html = (charmlp.load_run(run_dir).path / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    for sec in SECTIONS:
        assert f"id='{sec}'" in html, sec
    assert "id='missing'" not in html  # nothing is missing from a --diagnostics run
    imgs = _images(html)
    assert set(imgs) == {"training loss curve", "activation histograms", "saturation map", "gradient histograms",
                         "weight gradient histograms", "update ratio", "saturation over training", "embedding scatter"}
    assert all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in imgs.values())
    # self-contained: no file or network references
    assert "src='http" not in html and "href=" not in html
    # both tanh layers, at init and trained, are in the activation table
    assert html.count("4 Tanh") >= 2 and html.count("7 Tanh") >= 2
    # diagnose reads, it never retrains
    assert (charmlp.load_run(run_dir).path / "model.safetensors").read_bytes() == weights


def test_diagnose_json(run_dir):
    proc = run_cli("diagnose", run_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    n = json.loads(proc.stdout)
    assert n["init_check"]["confidently_wrong"] is False
    assert abs(n["init_check"]["excess"]) < 0.5
    assert set(n["losses"]) == {"train", "val", "test"}
    assert [r["layer"] for r in n["tanh"]["init"]] == ["4 Tanh", "7 Tanh"]
    assert all(0 <= r["saturated_pct"] <= 100 for r in n["tanh"]["trained"])
    assert "2 Linear.weight" in n["update_ratio_final"]
    assert n["missing"] == [] and n["report"].endswith("report.html")


def test_diagnose_without_diagnostics_or_data(tiny_data, tmp_path):
    out = tmp_path / "plain"
    proc = run_cli("train", "--data", tiny_data, "--out", out, "--steps", 10, "--batch-size", 8, "--n-hidden", 16,
                   "--no-progress")
    assert proc.returncode == 0, proc.stderr
    tiny_data.unlink()  # the data file is gone too: snapshots cannot be taken
    proc = run_cli("diagnose", out, "--json")
    assert proc.returncode == 0, proc.stderr
    n = json.loads(proc.stdout)
    missing = " ".join(n["missing"])
    assert "diagnostics.json is missing" in missing and "training data" in missing
    assert n["init_check"]["source"].startswith("step-0")  # still known from summary.json
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "id='missing'" in html and "charmlp train --diagnostics" in html
    assert set(_images(html)) == {"training loss curve", "embedding scatter"}


def test_diagnose_user_errors(run_dir, tmp_path):
    assert_user_error(run_cli("diagnose", tmp_path / "nope"), "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.json", "vocab.json", "model.safetensors"):
        (broken / f).write_bytes((charmlp.load_run(run_dir).path / f).read_bytes())
    (broken / "diagnostics.json").write_text("{not json")
    assert_user_error(run_cli("diagnose", broken), "diagnostics.json")


def test_plots_are_png_for_any_depth_and_embedding_size(tiny_data):
    ds = charmlp.load_dataset(charmlp.DataConfig(path=str(tiny_data)))
    xb, yb = ds.X["train"][:20], ds.Y["train"][:20]
    for n_layers, n_embd in ((0, 1), (1, 2), (3, 5)):
        cfg = charmlp.MLPConfig(vocab_size=ds.vocab.size, n_embd=n_embd, n_hidden=12, n_layer=n_layers)
        model = charmlp.build_model(cfg, seed=0)
        snap = take_snapshot(model, xb, yb)
        assert len(snap.tanh()) == n_layers
        states = [("at initialisation", snap), ("after training", snap)]
        coords, share = embedding_2d(model.layers[0].weight)
        pngs = [
            plots.activation_hist_png(states), plots.gradient_hist_png(states), plots.weight_grad_hist_png(states),
            plots.saturation_map_png(states), plots.embedding_png(coords, list(ds.vocab.itos), share, n_embd),
            plots.loss_curve_png([0, 1, 2], [3.0, 2.5, 2.4], {"train": 2.4, "val": 2.5}, 3.3),
        ]
        assert all(p.startswith(PNG_MAGIC) for p in pngs)
    lrs = [10 ** (-3 + 3 * i / 99) for i in range(100)]
    assert plots.lr_find_png(lrs, [3 - 0.01 * i for i in range(100)], [3 - 0.01 * i for i in range(100)],
                             0.1, 0.02).startswith(PNG_MAGIC)
    assert torch.is_tensor(coords)
