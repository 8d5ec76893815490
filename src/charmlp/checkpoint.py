"""The run directory: config.json, vocab.json, model.safetensors, metrics.jsonl, summary.json.

Every file is written to a temporary name in the same directory and renamed into place, so a
reader sees either the previous complete file or the new one. Weights are safetensors:
loading a run never executes code from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .config import RunConfig, run_config_from_dict, run_config_to_dict
from .data import Vocab
from .errors import CharmlpError
from .model import CharMLP, build_model

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS, METRICS, SUMMARY = (
    "config.json",
    "vocab.json",
    "model.safetensors",
    "metrics.jsonl",
    "summary.json",
)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_metrics(run_dir: str | Path, rows: Iterable[dict]) -> None:
    """metrics.jsonl: one JSON object per logged step."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in rows))


def save_run(run_dir: str | Path, cfg: RunConfig, vocab: Vocab, model: CharMLP) -> Path:
    """Write config, vocabulary and weights (parameters and BatchNorm buffers)."""
    d = Path(run_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharmlpError(f"cannot create run directory {d}: {e.strerror}") from None
    write_json(d / CONFIG, {"format": FORMAT_VERSION, **run_config_to_dict(cfg)})
    atomic_write_text(d / VOCAB, vocab.to_json() + "\n")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(d / WEIGHTS, st_save(tensors, metadata={"format": str(FORMAT_VERSION)}))
    return d


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: RunConfig
    vocab: Vocab
    model: CharMLP

    def summary(self) -> dict | None:
        p = self.path / SUMMARY
        return json.loads(p.read_text()) if p.exists() else None

    def metrics(self) -> list[dict]:
        p = self.path / METRICS
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line]


def _read(d: Path, name: str) -> bytes:
    p = d / name
    if not p.is_file():
        raise CharmlpError(f"{d} has no {name}; it is not a complete charmlp run directory (train one with `charmlp train --out {d}`)")
    return p.read_bytes()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run directory; raises `CharmlpError` if anything is off."""
    d = Path(run_dir)
    if not d.is_dir():
        raise CharmlpError(f"run directory {d} does not exist; pass the --out directory of `charmlp train`")
    try:
        raw = json.loads(_read(d, CONFIG))
    except (ValueError, UnicodeDecodeError):
        raise CharmlpError(f"{d / CONFIG} is not valid JSON; the run directory is damaged") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        got = raw.get("format") if isinstance(raw, dict) else None
        raise CharmlpError(
            f"{d / CONFIG} has format {got!r}, this charmlp reads format {FORMAT_VERSION}; retrain the run"
        )
    cfg = run_config_from_dict({k: v for k, v in raw.items() if k != "format"})
    try:
        vocab = Vocab.from_json(_read(d, VOCAB).decode("utf-8"))
    except UnicodeDecodeError:
        raise CharmlpError(f"{d / VOCAB} is not UTF-8; the run directory is damaged") from None
    if vocab.size != cfg.model.vocab_size:
        raise CharmlpError(
            f"vocab.json has {vocab.size} characters but config.json says {cfg.model.vocab_size}; the run directory is damaged"
        )
    try:
        tensors = st_load(_read(d, WEIGHTS))
    except (SafetensorError, ValueError, OSError) as e:
        raise CharmlpError(f"{d / WEIGHTS} is not a readable safetensors file ({e}); the run directory is damaged") from None
    model = build_model(cfg.model)
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
        raise CharmlpError(f"{d / WEIGHTS} does not match the model in config.json; the run directory is damaged")
    model.load_state_dict(tensors)
    return Run(d, cfg, vocab, model.to(device).eval())
