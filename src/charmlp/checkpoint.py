"""The run directory: config.json, vocab.json, model.safetensors, metrics.jsonl, summary.json,
and while training runs with checkpoints, train_state.safetensors.

Every file is written to a temporary name in the same directory, flushed to disk and renamed
into place, so a reader sees either the previous complete file or the new one. The order of
writes keeps the directory consistent as a whole (see `prepare_run_dir` and `save_run`):
model.safetensors is written last and is the mark of a finished run. Tensor files are
safetensors carrying a SHA-256 of their tensors: loading never executes code, and a tampered
or truncated file is refused. model.safetensors also carries a description of the model's layers
(`numpy_model.describe`), from which `read_saved_net` rebuilds its eval forward in NumPy.

torch is imported only by the functions that build or save a torch model: `charmlp sample`
reads a run through `read_saved_net` without it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from .config import (
    DataConfig,
    RunConfig,
    _same_kind,
    config_from_dict,
    model_config_to_dict,
    renamed_keys,
    run_config_from_dict,
    run_config_to_dict,
)
from .data import Vocab
from .errors import CharmlpError
from .numpy_model import Net, describe_model, table_keys

if TYPE_CHECKING:
    import torch

    from .models import LanguageModel

Tensors = dict[str, "torch.Tensor"] | dict[str, np.ndarray]

FORMAT_VERSION = 1
CONFIG, VOCAB, WEIGHTS, METRICS, SUMMARY = (
    "config.json",
    "vocab.json",
    "model.safetensors",
    "metrics.jsonl",
    "summary.json",
)
STATE = "train_state.safetensors"  # resumable training state (see resume.py)
# written beside a run by diagnostics/report; stale once the run is retrained
DERIVED = ("diagnostics.json", "report.html")


# ----------------------------------------------------------------------------- atomic files


def _fsync_dir(d: Path) -> None:
    """Make a rename in `d` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same directory and a rename.

    A failure (disk full, no permission) raises `CharmlpError` and leaves `path` as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CharmlpError(f"cannot write {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CharmlpError(f"cannot write {path}: {e.strerror}; the previous version is unchanged") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_metrics(run_dir: str | Path, lines: Iterable[str]) -> None:
    """metrics.jsonl: one JSON object (one line of text) per logged step."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(line + "\n" for line in lines))


def remove_file(path: str | Path) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as e:
        raise CharmlpError(f"cannot remove {path}: {e.strerror}") from None


# ----------------------------------------------------------------------------- tensor files


def tensors_sha256(tensors: Tensors) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of `tensors` (in name order); torch tensors
    and NumPy arrays of the same values give the same digest (dtypes named as torch names them)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        if isinstance(t, np.ndarray):
            dtype, data = f"torch.{t.dtype.name}", np.ascontiguousarray(t).tobytes()
        else:
            import torch

            t = t.detach().to("cpu").contiguous()
            dtype, data = str(t.dtype), t.reshape(-1).view(torch.uint8).numpy().tobytes()
        h.update(f"{k}|{dtype}|{list(t.shape)}|".encode())
        h.update(data)
    return h.hexdigest()


def encode_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """safetensors bytes; `meta` (JSON-able) and a checksum travel in the header."""
    from safetensors.torch import save as st_save

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {"format": str(FORMAT_VERSION), "meta": json.dumps(meta), "sha256": tensors_sha256(cpu)}
    return _canonical_header(st_save(cpu, metadata=header))


def _canonical_header(raw: bytes) -> bytes:
    """The same safetensors file with its header written in one fixed order.

    safetensors keeps the metadata in a Rust HashMap, whose order changes from call to call,
    so equal tensors and metadata would give files with different bytes. Rewritten here:
    metadata keys sorted, tensor entries in the library's order (by dtype, then name),
    compact JSON, padded with spaces to a multiple of 8 bytes as the library pads it.
    Tensor offsets are relative to the end of the header, so the data follows unchanged.
    """
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def decode_tensors(raw: bytes, path: Path, numpy: bool = False) -> tuple[Tensors, dict[str, Any]]:
    """Inverse of `encode_tensors` (`numpy`: as NumPy arrays, without torch); any damage →
    `CharmlpError` naming `path`."""
    if numpy:
        from safetensors.numpy import load as st_load
    else:
        from safetensors.torch import load as st_load
    try:
        tensors = st_load(raw)
        header = parse_header(raw, len(raw)).get("__metadata__") or {}
    except (SafetensorError, ValueError, TypeError, OSError, RuntimeError) as e:
        msg = " ".join(str(e).split())
        raise CharmlpError(f"{path} is not a readable safetensors file ({msg}); the file is damaged") from None
    meta = header_meta(header, path)
    if header.get("sha256") != tensors_sha256(tensors):
        raise CharmlpError(f"{path} fails its checksum: its contents were changed or damaged")
    return tensors, meta


def header_meta(header: dict[str, Any], path: Path) -> dict[str, Any]:
    """The charmlp record (`meta`) in a tensor file's `__metadata__`, its format checked."""
    if header.get("format") != str(FORMAT_VERSION):
        raise CharmlpError(
            f"{path} has format {header.get('format')!r}, this charmlp reads format {FORMAT_VERSION}; "
            "it was written by another charmlp version"
        )
    try:
        meta = json.loads(header.get("meta", "{}"))
    except (ValueError, TypeError, RecursionError):
        meta = None
    if not isinstance(meta, dict):
        raise CharmlpError(f"{path} has an unreadable header; the file is damaged")
    return meta


# bytes per element of each safetensors dtype
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
MAX_HEADER = 100_000_000  # the safetensors library's limit on the JSON header


def parse_header(head: bytes, size: int) -> dict[str, Any]:
    """The JSON header of a safetensors file of `size` bytes that starts with `head` (at least the
    8-byte length and the header), each tensor's entry checked against its dtype and shape, the
    entries against each other, and their data against the file size. A short `ValueError`
    ("truncated (12,345 of 48,000 bytes)") if anything is off."""
    if size < 8:
        raise ValueError(f"truncated ({size:,} bytes, not even a header length)")
    n = int.from_bytes(head[:8], "little")
    if not 0 < n <= MAX_HEADER:
        raise ValueError("has no safetensors header")
    if 8 + n > size:
        raise ValueError(f"truncated ({size:,} bytes, its header alone needs {8 + n:,})")
    try:
        header = json.loads(head[8 : 8 + n].decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("has an unreadable header") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ValueError("has an unreadable header")
    spans = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        e = e if isinstance(e, dict) else {}
        shape, offsets = e.get("shape"), e.get("data_offsets")
        if e.get("dtype") not in DTYPE_BYTES or not isinstance(shape, list) or not isinstance(offsets, list) \
                or len(offsets) != 2 or not all(type(v) is int and v >= 0 for v in [*shape, *offsets]) \
                or offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[e["dtype"]]:
            raise ValueError(f"has a damaged header entry for {name[:80]!r}")
        spans.append(offsets)
    end = 0
    for start, stop in sorted(spans):  # the tensors' data back to back, from the end of the header
        if start != end:
            raise ValueError("has tensors whose data overlap or leave gaps")
        end = stop
    if 8 + n + end > size:
        raise ValueError(f"truncated ({size:,} of {8 + n + end:,} bytes)")
    if 8 + n + end < size:
        raise ValueError(f"has {size - 8 - n - end:,} bytes after its tensors")
    return header


def read_header(path: Path) -> dict[str, Any]:
    """`parse_header` of a file, reading its header only; a `ValueError` naming the file."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else 0
            head += f.read(n) if 0 < n <= min(MAX_HEADER, size) else b""
    except OSError as e:
        raise ValueError(f"{path.name} cannot be read ({e.strerror})") from None
    try:
        return parse_header(head, size)
    except ValueError as e:
        raise ValueError(f"{path.name} {e}") from None


# ----------------------------------------------------------------------------- run directory


def make_run_dir(run_dir: str | Path) -> Path:
    d = Path(run_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharmlpError(f"cannot create run directory {d}: {e.strerror}") from None
    return d


def _config_bytes(cfg: RunConfig) -> str:
    return json.dumps({"format": FORMAT_VERSION, **run_config_to_dict(cfg)}, indent=2, ensure_ascii=False) + "\n"


def prepare_run_dir(run_dir: str | Path, cfg: RunConfig, vocab: Vocab, keep: tuple[str, ...] = ()) -> Path:
    """Start a fresh run in `run_dir`: remove a previous run's files (but `keep`), then write vocab and config.

    Order matters for a kill at any moment: the finished-run mark (model.safetensors) goes
    first and config.json comes last, so whenever config.json exists, the vocab.json and
    checkpoint beside it belong to it.
    """
    d = make_run_dir(run_dir)
    refuse_foreign_config(d)
    for name in (WEIGHTS, STATE, SUMMARY, METRICS, *DERIVED, CONFIG, VOCAB):
        if name not in keep:
            remove_file(d / name)
    remove_stale_temporaries(d)
    atomic_write_text(d / VOCAB, vocab.to_json() + "\n")
    atomic_write_text(d / CONFIG, _config_bytes(cfg))
    return d


def _config_is_ours(p: Path) -> bool:
    try:
        raw = json.loads(p.read_bytes())
        return isinstance(raw, dict) and "format" in raw and {"data", "model", "train"} <= set(raw)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def is_run_dir(d: Path) -> bool:
    """A directory charmlp trained into: its config.json is ours, or it holds weights or a checkpoint."""
    p = d / CONFIG
    return (p.is_file() and _config_is_ours(p)) or (d / WEIGHTS).is_file() or (d / STATE).is_file()


def refuse_foreign_config(d: Path) -> None:
    """Never delete a config.json that charmlp did not write (e.g. `--out .` in a project)."""
    p = d / CONFIG
    if p.is_file() and not _config_is_ours(p):
        raise CharmlpError(f"{d} holds a config.json that charmlp did not write; pass --out a new or empty directory")


def remove_stale_temporaries(d: Path) -> None:
    """Temporary files left by a process killed while writing."""
    for name in (CONFIG, VOCAB, WEIGHTS, METRICS, SUMMARY, STATE):
        for tmp in d.glob(f".{name}.*.tmp"):
            remove_file(tmp)


def save_run(run_dir: str | Path, cfg: RunConfig, vocab: Vocab, model: LanguageModel, keep_config: bool = False) -> Path:
    """Write config, vocabulary and weights (parameters and BatchNorm buffers).

    The weights are written last and record the model configuration and vocabulary they
    belong to, so `load_run` can tell a mixed-up directory from a complete one, and a
    description of the model's layers, so `read_saved_net` can run it without torch.
    `keep_config` (a resumed run) keeps the config.json and vocab.json written when the run
    started, so options of the resuming process (--checkpoint-every, --device) do not change
    the files of a run that went straight through.
    """
    d = make_run_dir(run_dir)
    if not (keep_config and (d / CONFIG).is_file() and (d / VOCAB).is_file()):
        atomic_write_text(d / VOCAB, vocab.to_json() + "\n")
        atomic_write_text(d / CONFIG, _config_bytes(cfg))
    meta = {"kind": "weights", "model": model_config_to_dict(cfg.model), "vocab": list(vocab.itos),
            "net": describe_model(model)}
    atomic_write_bytes(d / WEIGHTS, encode_tensors(model.state_dict(), meta))
    return d


def _read(d: Path, name: str) -> bytes:
    p = d / name
    if not p.is_file():
        raise CharmlpError(
            f"{d} has no {name}; it is not a complete charmlp run directory (train one with `charmlp train --out {d}`)"
        )
    try:
        return p.read_bytes()
    except OSError as e:
        raise CharmlpError(f"cannot read {p}: {e.strerror}") from None


def _read_config_json(d: Path) -> dict[str, Any]:
    """config.json as a dict, its format checked (the fields are not)."""
    if not d.is_dir():
        raise CharmlpError(f"run directory {d} does not exist; pass the --out directory of `charmlp train`")
    try:
        raw = json.loads(_read(d, CONFIG))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CharmlpError(f"{d / CONFIG} is not valid JSON; the run directory is damaged") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_VERSION:
        got = raw.get("format") if isinstance(raw, dict) else None
        raise CharmlpError(
            f"{d / CONFIG} has format {got!r}, this charmlp reads format {FORMAT_VERSION}; "
            "it was written by another charmlp version: retrain the run"
        )
    return {k: v for k, v in raw.items() if k != "format"}


def _read_vocab(d: Path, vocab_size: Any) -> Vocab:
    """vocab.json, checked against config.json's vocabulary size."""
    try:
        vocab = Vocab.from_json(_read(d, VOCAB).decode("utf-8"))
    except UnicodeDecodeError:
        raise CharmlpError(f"{d / VOCAB} is not UTF-8; the run directory is damaged") from None
    if vocab.size != vocab_size:
        raise CharmlpError(
            f"vocab.json has {vocab.size} characters but config.json says {vocab_size}; "
            "the run directory is damaged"
        )
    return vocab


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, Vocab]:
    """config.json and vocab.json of a run directory, checked against each other."""
    d = Path(run_dir)
    cfg = run_config_from_dict(_read_config_json(d))
    return cfg, _read_vocab(d, cfg.model.vocab_size)


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: RunConfig
    vocab: Vocab
    model: LanguageModel

    def summary(self) -> dict | None:
        p = self.path / SUMMARY
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise CharmlpError(f"{p} is not valid JSON; the run directory is damaged") from None

    def metrics(self) -> list[dict]:
        p = self.path / METRICS
        if not p.exists():
            return []
        try:
            return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
        except (ValueError, UnicodeDecodeError):
            raise CharmlpError(f"{p} is not valid JSON lines; the run directory is damaged") from None


def fits_model(model: LanguageModel, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether `tensors` holds exactly the model's state_dict entries, each of the right shape."""
    expected = model.state_dict()
    return set(tensors) == set(expected) and all(tensors[k].shape == expected[k].shape for k in expected)


def _read_weights(d: Path, numpy: bool = False) -> tuple[Tensors, dict[str, Any]]:
    if not (d / WEIGHTS).is_file() and (d / STATE).is_file():
        raise CharmlpError(
            f"{d} holds an unfinished training run (no {WEIGHTS} yet); finish it with `charmlp train --resume {d}`"
        )
    return decode_tensors(_read(d, WEIGHTS), d / WEIGHTS, numpy=numpy)


def _check_written_for(d: Path, meta: dict[str, Any], model: Any, vocab: Vocab, cls: type | None = None) -> None:
    """The weights record the model configuration (a dict) and vocabulary of config.json and vocab.json;
    with `cls` (`model` is then its fields now) the record's renamed fields count by their new names."""
    written_for = meta.get("model")
    if isinstance(written_for, dict):  # weights written before the model zoo name no kind: an MLP's
        written_for = {"kind": "mlp", **written_for}
        written_for = renamed_keys(cls, written_for) if cls is not None else written_for
    if written_for != model or meta.get("vocab") != list(vocab.itos):
        raise CharmlpError(
            f"{d / WEIGHTS} was written for another model configuration or vocabulary than config.json and "
            "vocab.json describe; the run directory is mixed up"
        )


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Rebuild the model of a run directory; raises `CharmlpError` if anything is off."""
    from .models import build_model

    d = Path(run_dir)
    cfg, vocab = read_run_config(d)
    tensors, meta = _read_weights(d)
    model = build_model(cfg.model)
    if not fits_model(model, tensors):
        raise CharmlpError(f"{d / WEIGHTS} does not match the model in config.json; the run directory is damaged")
    _check_written_for(d, meta, model_config_to_dict(cfg.model), vocab, type(cfg.model))
    model.load_state_dict(tensors)
    return Run(d, cfg, vocab, model.to(device).eval())


@dataclass
class SavedNet:
    """A run directory read without torch: what sampling needs."""

    path: Path
    data: DataConfig
    vocab: Vocab
    net: Net


def _check_model_fields(d: Path, model: dict[str, Any], recorded: Any) -> None:
    """config.json's model fields checked as `config_from_dict` checks them — unknown keys, wrong
    types — against the fields the weights recorded (the model configuration class would need
    torch), then compared with them."""
    if isinstance(recorded, dict):
        if unknown := set(model) - set(recorded):
            raise CharmlpError(f"model in config.json has unknown keys {sorted(unknown)}; "
                               "it was written by another charmlp version")
        for k, v in model.items():
            if not _same_kind(recorded[k], v):
                raise CharmlpError(f"model.{k} in config.json has the wrong type ({v!r}); the run directory is damaged")
    if model != recorded:
        raise CharmlpError(f"{d / WEIGHTS} does not match the model in config.json; the run directory is damaged")


def _read_model_and_vocab(d: Path) -> tuple[dict[str, Any], dict[str, Any], Vocab]:
    """config.json, its model (a dict, with its kind) and vocab.json, checked against its size."""
    raw = _read_config_json(d)
    model = raw.get("model", {})
    if not isinstance(model, dict):
        raise CharmlpError("model in config.json is not an object; the run directory is damaged")
    model = {"kind": "mlp", **model}  # no kind: written before the model zoo, an MLP
    return raw, model, _read_vocab(d, model.get("vocab_size"))


def check_run_files(run_dir: str | Path) -> None:
    """The checks of `load_run` that read no tensors, for listing many runs: config.json and
    vocab.json agree; model.safetensors' header is whole and its tensors' sizes add up to the
    file's; it records the model configuration (kind and sizes) and vocabulary of config.json
    and vocab.json; its embedding tables have a row per character. The checksum over the
    tensors is left to loading. `CharmlpError` if anything is off."""
    d = Path(run_dir)
    _, model, vocab = _read_model_and_vocab(d)
    try:
        header = read_header(d / WEIGHTS)
    except ValueError as e:
        raise CharmlpError(f"{e}; the file is damaged") from None
    meta = header_meta(header.get("__metadata__") or {}, d / WEIGHTS)
    _check_written_for(d, meta, model, vocab)
    net = meta.get("net")  # absent in weights written before runs carried a description
    if isinstance(net, dict):
        shapes = [header.get(k, {}).get("shape") if isinstance(k, str) else None for k in table_keys(net.get("layers"))]
        rows = {shape[0] if shape else None for shape in shapes}
        if net.get("vocab_size") != vocab.size or rows - {vocab.size}:
            raise CharmlpError(f"{d / WEIGHTS} has embedding tables whose rows are not the {vocab.size} "
                               "characters of vocab.json; the file is damaged")


def read_saved_net(run_dir: str | Path) -> SavedNet | None:
    """The run's model as a NumPy `Net`, from the description its weights file carries, with the
    checks `load_run` makes; None for weights written before runs carried one (load those with
    `load_run`). config.json's model is checked against the weights' record of it, and the
    description's sizes against both."""
    d = Path(run_dir)
    raw, model, vocab = _read_model_and_vocab(d)
    data = config_from_dict(DataConfig, raw.get("data", {}), "data")
    tensors, meta = _read_weights(d, numpy=True)
    if "net" not in meta:
        return None
    _check_model_fields(d, model, meta.get("model"))
    net = Net(meta["net"], tensors, where=str(d / WEIGHTS))
    if (net.vocab_size, net.block_size) != (vocab.size, model.get("block_size")):
        raise CharmlpError(f"{d / WEIGHTS} does not match the model in config.json; the run directory is damaged")
    _check_written_for(d, meta, model, vocab)
    return SavedNet(d, data, vocab, net)


def load_net(run_dir: str | Path) -> SavedNet:
    """The run's model as a NumPy `Net`: without torch from the description its weights carry,
    else (runs written before they carried one) loaded with torch and described in memory."""
    saved = read_saved_net(run_dir)
    if saved is not None:
        return saved
    run = load_run(run_dir)
    return SavedNet(run.path, run.config.data, run.vocab, Net.from_model(run.model))
