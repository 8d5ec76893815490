"""`charmlp diagnose DIR`: one self-contained HTML page (PNG pictures embedded as base64) with a
run's configuration, losses, init check, statistics tables and every diagnostics picture.

It reads the run directory and recomputes only forward/backward passes on one seeded batch,
for the initial weights (rebuilt from the run's seed, exactly as `train` drew them) and for
the trained weights; it never trains.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import Run, atomic_write_text, load_run, run_config_to_dict
from .data import load_dataset
from .diagnostics import (
    CONFIDENTLY_WRONG,
    DIAGNOSTICS,
    SATURATED,
    embedding_2d,
    init_check,
    snapshot_tables,
    take_snapshot,
)
from .errors import CharmlpError
from .lock import RunDirLock
from .models import build_model
from .nn import Embedding
from .train import lr_at

REPORT = "report.html"
BATCH_SEED = 0  # the snapshot batch: same run, same batch, same report


@dataclass
class Report:
    path: Path
    numbers: dict[str, Any]
    missing: list[str] = field(default_factory=list)


def _read_diagnostics(run_dir: Path) -> dict | None:
    p = run_dir / DIAGNOSTICS
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CharmlpError(
            f"{p} is not valid JSON; the run directory is damaged (retrain with --diagnostics)"
        ) from None
    if not isinstance(d, dict) or not {"steps", "update_ratio", "tanh"} <= set(d):
        raise CharmlpError(f"{p} lacks the expected fields; it was written by another charmlp version")
    return d


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{v:.4f}"
    if isinstance(v, list):
        return "×".join(map(str, v)) if all(isinstance(x, int) for x in v) else ", ".join(map(_fmt, v))
    return str(v)


def _table(rows: list[dict[str, Any]], headers: dict[str, str]) -> str:
    if not rows:
        return "<p class='note'>(none)</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k in headers) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;
  color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ccc;padding-bottom:0.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:0.8em 0;border:1px solid #eee}
.ok{color:#17692b;font-weight:bold} .bad{color:#b00020;font-weight:bold} .note{color:#666}
.missing{background:#fff6e0;border-left:4px solid #e0a000;padding:0.5em 1em}
"""


def diagnose(run_dir: str | Path, batch_seed: int = BATCH_SEED) -> Report:
    """Write DIR/report.html and return the key numbers (see `Report.numbers`)."""
    run = load_run(run_dir)
    with RunDirLock(run.path, "charmlp diagnose"):  # no train or other diagnose writes it meanwhile
        return _diagnose(run, batch_seed)


def _diagnose(run: Run, batch_seed: int) -> Report:
    from . import plots  # matplotlib loads only when a report is drawn, not with every command
    d = run.path
    cfg = run.config
    summary = run.summary() or {}
    metrics = run.metrics()
    diag = _read_diagnostics(d)
    missing: list[str] = []
    if not summary:
        missing.append("summary.json is missing: no final split losses (the run was not completed)")
    if not metrics:
        missing.append("metrics.jsonl is missing or empty: no loss curve")
    if diag is None:
        missing.append(f"{DIAGNOSTICS} is missing: no update ratios or saturation over training "
                       "(train with `charmlp train --diagnostics`)")

    # one seeded batch of training examples for the snapshots, at init and after training
    states, tables = [], {}
    try:
        dataset = load_dataset(cfg.data, vocab=run.vocab)
    except CharmlpError as e:
        dataset = None
        missing.append(f"activation and gradient snapshots need the training data, which cannot be read: {e}")
    if dataset is not None:
        X, Y = dataset.X["train"], dataset.Y["train"]
        bs = max(2, min(cfg.train.batch_size, len(Y)))
        ix = torch.randint(0, len(Y), (bs,), generator=torch.Generator().manual_seed(batch_seed))
        init_model = build_model(cfg.model, generator=torch.Generator().manual_seed(cfg.train.seed))
        steps = summary.get("steps", cfg.train.steps)
        for key, title, model, lr in (
            ("init", "at initialisation", init_model, lr_at(cfg.train, 0)),
            ("trained", "after training", run.model, lr_at(cfg.train, max(0, steps - 1))),
        ):
            snap = take_snapshot(model, X[ix], Y[ix], engine=cfg.train.engine)
            states.append((title, snap))
            tables[key] = {"loss": snap.loss, **snapshot_tables(snap, lr)}

    # init check: the real step-0 minibatch loss when the run recorded it, else the snapshot batch's
    if summary.get("init_loss") is not None:
        check, source = init_check(summary["init_loss"], cfg.model.vocab_size), "step-0 minibatch loss of the run"
    elif "init" in tables:
        check = init_check(tables["init"]["loss"], cfg.model.vocab_size)
        source = f"loss of the initial weights on a seeded batch of {bs}"
    else:
        check, source = None, None
        missing.append("init check: no step-0 loss in summary.json and no data to recompute it")

    pictures: dict[str, bytes] = {}
    split_losses = {s: summary.get(f"{s}_loss") for s in ("train", "val", "test")} if summary else {}
    if metrics:
        pictures["loss"] = plots.loss_curve_png([m["step"] for m in metrics], [m["loss"] for m in metrics],
                                                split_losses, math.log(cfg.model.vocab_size),
                                                val=[(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m])
    if states:
        pictures["activations"] = plots.activation_hist_png(states)
        pictures["gradients"] = plots.gradient_hist_png(states)
        pictures["weight_grads"] = plots.weight_grad_hist_png(states)
        pictures["saturation_map"] = plots.saturation_map_png(states)
    if diag is not None:
        pictures["update_ratio"] = plots.update_ratio_png(diag)
        pictures["saturation_over_training"] = plots.saturation_over_training_png(diag)
    C = next(m.weight for m in run.model.modules() if isinstance(m, Embedding))  # the character table
    coords, share = embedding_2d(C)
    pictures["embedding"] = plots.embedding_png(coords, list(run.vocab.itos), share, C.shape[1])

    numbers = _numbers(d, summary, check, source, tables, diag, missing)
    html_text = _render(d, cfg, summary, check, source, tables, diag, pictures, missing)
    path = d / REPORT
    try:
        atomic_write_text(path, html_text)
    except OSError as e:
        raise CharmlpError(f"cannot write {path}: {e.strerror}") from None
    numbers["report"] = str(path)
    return Report(path, numbers, missing)


def _last_update_ratios(diag: dict | None) -> dict[str, float | None] | None:
    """Per parameter: the mean log10 update ratio over the last 10 % of the samples."""
    if diag is None:
        return None
    out = {}
    for name, ys in diag["update_ratio"].items():
        tail = [y for y in ys[-max(1, len(ys) // 10):] if y is not None]
        out[name] = sum(tail) / len(tail) if tail else None
    return out


def _numbers(d, summary, check, source, tables, diag, missing) -> dict[str, Any]:
    return {
        "run": str(d),
        "init_check": None if check is None else {**check.to_dict(), "source": source},
        "losses": {s: summary.get(f"{s}_loss") for s in ("train", "val", "test")} if summary else None,
        "steps": summary.get("steps"),
        "tanh": {k: t["tanh"] for k, t in tables.items()} or None,
        "snapshot_loss": {k: t["loss"] for k, t in tables.items()} or None,
        "update_ratio_final": _last_update_ratios(diag),
        "missing": missing,
    }


def _render(d, cfg, summary, check, source, tables, diag, pictures, missing) -> str:
    parts = [*_head(d, missing), *_configuration(cfg), *_losses(summary, pictures),
             *_init_section(cfg, check, source, tables), *_activations(tables, pictures),
             *_gradients(tables, pictures), *_over_training(diag, pictures),
             "<h2 id='embedding'>Embeddings</h2>", _img(pictures["embedding"], "embedding scatter"),
             "</body></html>\n"]
    return "\n".join(parts)


def _head(d: Path, missing: list[str]) -> list[str]:
    """The page's head, its title, what the snapshots are, and what the run directory lacks."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>charmlp report: {esc(d.name)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>charmlp diagnostics: {esc(str(d))}</h1>",
             "<p class='note'>Written by <code>charmlp diagnose</code>. Snapshots are one seeded training batch "
             "passed forward and backward through the initial weights (rebuilt from the run's seed) and the trained "
             "weights, with BatchNorm in training mode as during training.</p>"]
    if missing:
        parts.append("<div class='missing' id='missing'><b>Missing from this run directory</b><ul>"
                     + "".join(f"<li>{esc(m)}</li>" for m in missing) + "</ul></div>")
    return parts


def _configuration(cfg) -> list[str]:
    rows = [{"section": sec, "option": k, "value": json.dumps(v, ensure_ascii=False)}
            for sec, fields in run_config_to_dict(cfg).items() for k, v in fields.items()]
    return ["<h2 id='config'>Configuration</h2>", _table(rows, {"section": "section", "option": "option", "value": "value"})]


def _losses(summary: dict, pictures: dict[str, bytes]) -> list[str]:
    parts = ["<h2 id='losses'>Losses</h2>"]
    if summary:
        keys = ("init_loss", "train_loss", "val_loss", "test_loss", "steps", "seconds", "engine", "device")
        parts.append(_table([{"what": k, "value": summary.get(k)} for k in keys if k in summary],
                            {"what": "", "value": "value"}))
    if "loss" in pictures:
        parts.append(_img(pictures["loss"], "training loss curve"))
    return parts


def _init_section(cfg, check, source, tables) -> list[str]:
    """The init check's verdict and where its loss came from; the snapshot batch's two losses."""
    parts = ["<h2 id='init'>Init check</h2>"]
    if check is not None:
        cls = "bad" if check.confidently_wrong else "ok"
        parts.append(f"<p class='{cls}'>{html.escape(check.message())}</p>"
                     f"<p class='note'>Source: {html.escape(source)}. A model that predicts uniformly over V = "
                     f"{cfg.model.vocab_size} characters has loss ln V; more than {CONFIDENTLY_WRONG} nats above it "
                     "means the initial logits are large and confidently wrong, and the first steps are spent only "
                     "shrinking them.</p>")
    if "init" in tables:
        parts.append(f"<p>Loss of the snapshot batch: at initialisation {tables['init']['loss']:.4f}, "
                     f"after training {tables['trained']['loss']:.4f}.</p>")
    return parts


def _activations(tables, pictures: dict[str, bytes]) -> list[str]:
    """Each tanh layer's statistics at init and after training, its histograms and saturation map."""
    tanh_headers = {"state": "state", "layer": "layer", "mean": "mean", "std": "std",
                    "saturated_pct": f"% |h| > {SATURATED}", "dead_units": "dead units", "units": "units"}
    rows = [{"state": k, **r} for k, t in tables.items() for r in t["tanh"]]
    parts = ["<h2 id='activations'>Activations</h2>", _table(rows, tanh_headers),
             "<p class='note'>Saturated: |h| > 0.97, where tanh' = 1 − h² &lt; 0.06 passes almost no gradient. "
             "Dead unit: saturated for every example of the batch.</p>"]
    for key, alt in (("activations", "activation histograms"), ("saturation_map", "saturation map")):
        if key in pictures:
            parts.append(_img(pictures[key], alt))
    return parts


def _gradients(tables, pictures: dict[str, bytes]) -> list[str]:
    """The gradient at each layer's output, then each parameter's gradient and update sizes."""
    rows = [{"state": k, **r} for k, t in tables.items() for r in t["grads"]]
    parts = ["<h2 id='gradients'>Gradients</h2>", "<p>Gradient of the loss at each layer's output, dL/d(output):</p>",
             _table(rows, {"state": "state", "layer": "layer", "shape": "shape", "mean": "mean", "std": "std"})]
    if "gradients" in pictures:
        parts.append(_img(pictures["gradients"], "gradient histograms"))
    rows = [{"state": k, **r} for k, t in tables.items() for r in t["params"]]
    parts.append("<p>Parameters: grad:data = std(grad) / std(data); update = log10(std(lr·grad) / std(data)) "
                 "with the schedule's lr at that point (≈ −3 is healthy for SGD).</p>")
    parts.append(_table(rows, {"state": "state", "param": "parameter", "shape": "shape", "data_std": "std(data)",
                               "grad_std": "std(grad)", "grad_data": "grad:data", "update_ratio": "log10 update"}))
    if "weight_grads" in pictures:
        parts.append(_img(pictures["weight_grads"], "weight gradient histograms"))
    return parts


def _over_training(diag: dict | None, pictures: dict[str, bytes]) -> list[str]:
    """The update ratios and saturation sampled during training (`--diagnostics`), if it was."""
    parts = ["<h2 id='training'>Over training</h2>"]
    if diag is None:
        return [*parts, "<p class='missing'>No samples over training: retrain with "
                        "<code>charmlp train --diagnostics</code>.</p>"]
    last = _last_update_ratios(diag)
    parts.append(f"<p>{len(diag['steps'])} samples, every {diag.get('every')} steps. "
                 "Mean log10 update ratio over the last 10 % of the samples:</p>")
    parts.append(_table([{"param": k, "value": v} for k, v in last.items()],
                        {"param": "parameter", "value": "log10 update"}))
    for key, alt in (("update_ratio", "update ratio"), ("saturation_over_training", "saturation over training")):
        parts.append(_img(pictures[key], alt))
    return parts
