"""Compare run directories: the lectures' "performance log" in one table and one picture.

Runs are read generically, without building a model: config.json is flattened to dotted keys
(`model.n_hidden`, `data.block_size`, …) and the keys whose values differ between the runs
become the table's option columns, so options of any model kind appear without code here.
summary.json gives the losses, steps, parameters and wall time; metrics.jsonl the curves.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from .checkpoint import CONFIG, METRICS, STATE, SUMMARY, WEIGHTS, atomic_write_bytes, check_run_files, read_header
from .config import DEFAULT_MODEL, MODEL_CONFIGS, renamed_keys
from .errors import CharmlpError

# flattened config keys that never change a number of the run: not worth a column
IGNORED_KEYS = ("format", "train.checkpoint_every")
# where a config names its model kind (runs written before kinds existed are MLPs)
KIND_KEYS = ("model_kind", "model.kind", "kind", "model.model_kind")
DEFAULT_KIND = "mlp"
# --sort keys besides option columns: name → row attribute
SORT_KEYS = {"train": "train_loss", "val": "val_loss", "test": "test_loss", "params": "n_params",
             "steps": "steps", "time": "seconds", "run": "name"}


@dataclass
class RunRow:
    """One run directory as the table shows it."""

    path: Path
    name: str
    kind: str
    config: dict[str, Any]  # flattened config.json
    status: str  # finished | damaged: reason | unfinished (step k of N) | no weights
    n_params: int | None = None
    steps: int | None = None
    train_loss: float | None = None
    train_estimate: bool = False  # train_loss is an estimate on a sample of the training items
    val_loss: float | None = None
    test_loss: float | None = None
    seconds: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the config keys that differ between the runs

    @property
    def damaged(self) -> bool:
        return self.status.startswith("damaged")

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.path), "kind": self.kind, "status": self.status, "options": self.options,
            "n_params": self.n_params, "steps": self.steps, "train_loss": self.train_loss,
            "train_loss_estimate": self.train_estimate, "val_loss": self.val_loss, "test_loss": self.test_loss,
            "seconds": self.seconds, "config": self.config,
        }


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_hidden": 200}} → {"model.n_hidden": 200}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise CharmlpError(f"cannot read {p}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise CharmlpError(f"{p} is not valid JSON; the run directory is damaged") from None


def _header(p: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file (tensor names, shapes, metadata), without its tensors."""
    try:
        return read_header(p)
    except ValueError:
        return None


def damage(d: Path) -> str | None:
    """Why `charmlp eval` would refuse the finished run `d`, in a few words (None: it would not),
    from the checks that read no tensors (`check_run_files`)."""
    try:
        check_run_files(d)
    except CharmlpError as e:
        return str(e).replace(f"{d}{os.sep}", "").split("; ")[0]
    return None


def _count_params(weights: Path) -> int | None:
    """Parameters in model.safetensors (for runs whose summary predates `n_params`): every tensor
    except BatchNorm's running statistics, which are buffers."""
    header = _header(weights)
    if header is None:
        return None
    total = 0
    for name, entry in header.items():
        if name == "__metadata__" or name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked"):
            continue
        total += math.prod(entry.get("shape", []))
    return total


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _current_names(raw: dict[str, Any]) -> dict[str, Any]:
    """config.json with its model's renamed fields (an older run's `n_layers`) spelled as they
    are now, so old and new runs share a column."""
    model = raw["model"]
    cls = MODEL_CONFIGS.get(model.get("kind", DEFAULT_MODEL)) if isinstance(model, dict) else None
    try:
        return {**raw, "model": renamed_keys(cls, model)} if cls is not None else raw
    except CharmlpError:  # both spellings: shown as written
        return raw


def read_run_row(d: Path) -> RunRow:
    """One run directory; `CharmlpError` if `d` is not one."""
    raw = _read_json(d / CONFIG)
    if not isinstance(raw, dict) or not {"data", "model", "train"} <= set(raw):
        raise CharmlpError(f"{d / CONFIG} was not written by charmlp; {d} is not a run directory")
    config = {k: v for k, v in flatten(_current_names(raw)).items() if k not in IGNORED_KEYS}
    kind = next((str(config[k]) for k in KIND_KEYS if k in config), DEFAULT_KIND)
    summary = _read_json(d / SUMMARY) if (d / SUMMARY).is_file() else {}
    if not isinstance(summary, dict):
        raise CharmlpError(f"{d / SUMMARY} is not a JSON object; the run directory is damaged")
    if (d / WEIGHTS).is_file():
        reason = damage(d)
        status = "finished" if reason is None else f"damaged: {reason}"
    elif (d / STATE).is_file():
        meta = ((_header(d / STATE) or {}).get("__metadata__") or {}).get("meta", "{}")
        try:
            ck = json.loads(meta)
            status = f"unfinished (step {ck['step']} of {ck['steps']})"
        except (ValueError, KeyError, TypeError):
            status = "unfinished"
    else:
        status = "no weights"
    n_params = summary.get("n_params")
    if not isinstance(n_params, int) and (d / WEIGHTS).is_file():
        n_params = _count_params(d / WEIGHTS)
    steps = summary.get("steps", config.get("train.steps"))
    return RunRow(
        path=d, name=str(d), kind=kind, config=config, status=status,
        n_params=n_params if isinstance(n_params, int) else None,
        steps=steps if isinstance(steps, int) else None,
        train_loss=_number(summary.get("train_loss")), train_estimate=summary.get("train_loss_estimate") is True,
        val_loss=_number(summary.get("val_loss")),
        test_loss=_number(summary.get("test_loss")), seconds=_number(summary.get("seconds")),
    )


def find_runs(dirs: list[str | Path]) -> list[Path]:
    """Run directories among `dirs`: each is a run (it holds config.json) or a folder of runs."""
    found: list[Path] = []
    for arg in dirs:
        d = Path(arg)
        if not d.is_dir():
            raise CharmlpError(f"{d} does not exist or is not a directory; pass run directories or a folder of them")
        if (d / CONFIG).is_file():
            found.append(d)
            continue
        inside = sorted(c for c in d.iterdir() if c.is_dir() and (c / CONFIG).is_file())
        if not inside:
            raise CharmlpError(
                f"{d} is not a charmlp run directory (no {CONFIG}) and holds none; pass the --out directories of `charmlp train`"
            )
        found.extend(inside)
    seen: set[Path] = set()  # a run named twice (runs/a and runs/) is listed once
    unique = []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def differing_options(rows: list[RunRow]) -> list[str]:
    """Config keys whose values differ between runs, in config order; of keys whose values are
    equal run by run (data.block_size and model.block_size), the first only."""
    keys = list(dict.fromkeys(k for r in rows for k in r.config))
    kind_keys = set(KIND_KEYS)
    out: list[str] = []
    seen: set[str] = set()
    for k in keys:
        if k in kind_keys:
            continue
        values = [json.dumps(r.config.get(k), sort_keys=True) for r in rows]
        if len(set(values)) < 2:
            continue
        signature = "\x00".join(values)
        if signature in seen:
            continue
        seen.add(signature)
        out.append(k)
    return out


def column_names(keys: list[str]) -> dict[str, str]:
    """Shortest unambiguous name: the last dotted part (`n_hidden`), unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last)}


def collect_runs(dirs: list[str | Path], sort: str | None = None) -> list[RunRow]:
    """Rows of every run directory in `dirs`, options filled in, sorted by `sort` if given."""
    paths = find_runs(dirs)
    rows = [read_run_row(p) for p in paths]
    keys = differing_options(rows)
    for r in rows:
        r.options = {k: r.config.get(k) for k in keys}
    if sort is not None:
        rows = sort_rows(rows, sort, keys)
    return rows


def sort_rows(rows: list[RunRow], sort: str, keys: list[str]) -> list[RunRow]:
    """By a loss, params, steps, time, run, or an option column (its short or dotted name);
    runs without the value last."""
    names = column_names(keys)
    if sort in SORT_KEYS:
        def value(r: RunRow) -> Any:
            return getattr(r, SORT_KEYS[sort])
    else:
        key = next((k for k in rows[0].config if sort == k), None) or next((k for k, n in names.items() if n == sort), None)
        if key is None:
            known = ", ".join([*SORT_KEYS, *names.values()])
            raise CharmlpError(f"unknown --sort column {sort!r}; choose one of {known}")

        def value(r: RunRow) -> Any:
            return r.config.get(key)

    present = [r for r in rows if value(r) is not None]
    missing = [r for r in rows if value(r) is None]
    try:
        present.sort(key=value)
    except TypeError:  # mixed types in one column: compare as text
        present.sort(key=lambda r: str(value(r)))
    return present + missing


# ----------------------------------------------------------------------------- the table


def _fmt_value(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 600 else f"{s / 60:.1f} min"


def format_table(rows: list[RunRow]) -> str:
    """One text table: run, kind, differing options, params, steps, train / val / test, time."""
    keys = list(rows[0].options) if rows else []
    names = column_names(keys)
    header = ["run", "kind", *(names[k] for k in keys), "params", "steps", "train", "val", "test", "time"]
    numeric = [False, False, *([True] * len(keys)), True, True, True, True, True, True]
    body = []
    for r in rows:
        loss = [f"{v:.4f}" if v is not None else "–" for v in (r.train_loss, r.val_loss, r.test_loss)]
        if r.train_estimate and r.train_loss is not None:
            loss[0] += "*"
        body.append([
            r.name, r.kind, *(_fmt_value(r.options[k]) for k in keys),
            f"{r.n_params:,}" if r.n_params is not None else "–", str(r.steps) if r.steps is not None else "–",
            *loss, _fmt_seconds(r.seconds),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(header)] + [line(b) for b in body]
    notes = [f"{r.name}: {r.status}" for r in rows if r.status != "finished"]
    if any(r.train_estimate for r in rows):
        notes.append("* train: an estimate on a seeded sample of the training items; "
                     "`charmlp eval DIR --split train` gives the exact loss")
    return "\n".join(out + notes)


# ----------------------------------------------------------------------------- the picture


def read_curves(path: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(val, train) points of metrics.jsonl: rows carrying "val_loss", and rows carrying "loss"."""
    p = path / METRICS
    if not p.is_file():
        return [], []
    val: list[tuple[int, float]] = []
    train: list[tuple[int, float]] = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise CharmlpError(f"cannot read {p} as UTF-8 text; the run directory is damaged") from None
    for i, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError:
            raise CharmlpError(f"{p} line {i} is not valid JSON; the run directory is damaged") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        if _number(row.get("val_loss")) is not None:
            val.append((row["step"], float(row["val_loss"])))
        if _number(row.get("loss")) is not None:
            train.append((row["step"], float(row["loss"])))
    return val, train


def smooth_points(points: list[tuple[int, float]], chunks: int = 50) -> tuple[list[float], list[float], int]:
    """Mean over consecutive chunks of about len/chunks points (the lectures' view(-1, k).mean(1));
    returns x (the chunk's mean step), y and the chunk length."""
    k = max(1, len(points) // chunks)
    xs, ys = [], []
    for i in range(0, len(points) - k + 1, k):
        part = points[i : i + k]
        xs.append(sum(s for s, _ in part) / k)
        ys.append(sum(v for _, v in part) / k)
    return xs, ys, k


def plot_runs(rows: list[RunRow], out: str | Path, curve: str = "val") -> str:
    """One PNG of the runs' loss curves on shared axes; returns what was drawn (for the CLI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise CharmlpError(f"--plot writes a PNG picture; give a file name ending in .png, not {out.name!r}")
    if not out.parent.is_dir():
        raise CharmlpError(f"cannot write {out}: the directory {out.parent} does not exist")
    fig = Figure(figsize=(10, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    kinds = set()
    names = column_names(list(rows[0].options)) if rows else {}
    for r in rows:
        val, train = read_curves(r.path)
        label = r.name + "".join(f", {names[k]}={_fmt_value(v)}" for k, v in r.options.items())
        if curve == "val" and val:
            xs, ys = [s for s, _ in val], [v for _, v in val]
            (line,) = ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=f"{label}: val")
            kinds.add("val")
        elif train:
            xs, ys, k = smooth_points(train)
            (line,) = ax.plot(xs, ys, label=f"{label}: train, mean of {k} steps")
            kinds.add("train")
        else:
            continue
        if r.val_loss is not None and r.steps is not None:  # the final val loss (after BatchNorm calibration)
            ax.plot([r.steps], [r.val_loss], marker="o", color=line.get_color(), linestyle="none")
    if not kinds:
        raise CharmlpError("none of the runs has a metrics.jsonl with losses to plot")
    if kinds == {"val"}:
        title = "val loss"
    elif kinds == {"train"}:
        title = "training loss (smoothed)" + (" — no val_loss rows in metrics.jsonl" if curve == "val" else "")
    else:
        title = "val loss where metrics.jsonl has it, else training loss (smoothed)"
    ax.set_title(title + "; dots: final val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
    return title
