"""Items → vocabulary → context windows → train/val/test tensors.

An *item* is one non-empty line of the input file (a name, a word …). The vocabulary is
the sorted set of characters in the file; index 0 is the boundary token (`.` unless the
data itself uses `.`) that pads the context before an item and marks its end.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .config import DataConfig
from .errors import CharmlpError

SPLITS = ("train", "val", "test")
MAX_BLOCK_SIZE = 1024  # the model's limit too
MAX_EXAMPLE_BYTES = 8 << 30  # context windows of all examples, above which we refuse (memory)
# candidates for the boundary token, first one absent from the data wins
_BOUNDARY_CANDIDATES = ".·•¤§¶#~|^_@"


def default_data_path() -> Path:
    """The embedded names.txt (32,033 names)."""
    return Path(str(resources.files("charmlp") / "datasets" / "names.txt"))


def resolve_data_path(path: str | Path | None) -> Path:
    return default_data_path() if path is None else Path(path)


# ----------------------------------------------------------------------------- reading


def parse_items(text: str) -> list[str]:
    """One item per line (`\\n`, `\\r\\n` or `\\r` endings); surrounding whitespace removed, blanks dropped.

    Only these three end a line: other Unicode separators (U+2028 …) stay inside an item.
    """
    if text.startswith("\ufeff"):  # UTF-8 byte-order mark
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    items = (line.strip() for line in text.split("\n"))
    return [s for s in items if s]


def read_items(path: str | Path | None = None) -> list[str]:
    """Read and validate the items of a UTF-8 text file (default: embedded names.txt)."""
    p = resolve_data_path(path)
    try:
        if p.is_dir():
            raise CharmlpError(f"{p} is a directory; pass a text file with one item per line")
        if p.exists() and not p.is_file():  # a FIFO or device (/dev/zero) could block or never end
            raise CharmlpError(f"{p} is not a regular file; pass a text file with one item per line")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CharmlpError(f"data file {p} does not exist; check the path given to --data") from None
    except OSError as e:
        raise CharmlpError(f"cannot read data file {p}: {e.strerror}; check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CharmlpError(
            f"{p} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}); "
            "save the file as UTF-8"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise CharmlpError(f"{p} contains a NUL byte on line {line}; it looks like a binary file, not text")
    items = parse_items(text)
    if not items:
        raise CharmlpError(f"{p} has no items: every line is empty; put one item per line")
    return items


# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocab:
    """Characters ↔ integer ids; `itos[0]` is the boundary token."""

    itos: tuple[str, ...]

    @classmethod
    def from_items(cls, items: list[str]) -> Vocab:
        present = set("".join(items))
        chars = sorted(present)
        boundary = next((c for c in _BOUNDARY_CANDIDATES if c not in present), None)
        if boundary is None:  # every candidate is data: the first unused code point (no surrogates)
            codes = (c for c in range(0x2400, 0x110000) if not 0xD800 <= c < 0xE000)
            boundary = next(chr(c) for c in codes if chr(c) not in present)
        return cls((boundary, *chars))

    @property
    def boundary(self) -> str:
        return self.itos[0]

    @property
    def size(self) -> int:
        return len(self.itos)

    @property
    def stoi(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.itos)}

    @property
    def index_dtype(self) -> torch.dtype:
        """The smallest integer dtype that holds every id."""
        if self.size <= 256:
            return torch.uint8
        if self.size <= 2**15:
            return torch.int16
        return torch.int32

    def encode(self, s: str) -> list[int]:
        stoi = self.stoi
        bad = sorted({c for c in s if c not in stoi or c == self.boundary})
        if bad:
            raise CharmlpError(
                f"character(s) {''.join(bad)!r} are not in the vocabulary of this model; "
                "use only characters that occur in its training data"
            )
        return [stoi[c] for c in s]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_json(self) -> str:
        return json.dumps({"itos": list(self.itos), "boundary": self.boundary}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        try:
            d = json.loads(text)
            itos = tuple(d["itos"])
        except (ValueError, KeyError, TypeError):
            raise CharmlpError("vocab.json is not a charmlp vocabulary; the run directory is damaged") from None
        if not itos or any(not isinstance(c, str) or len(c) != 1 for c in itos) or len(set(itos)) != len(itos):
            raise CharmlpError("vocab.json holds an invalid vocabulary; the run directory is damaged")
        if d.get("boundary", itos[0]) != itos[0]:
            raise CharmlpError("vocab.json names a boundary that is not its first symbol; the run directory is damaged")
        return cls(itos)


def encode_items(items: list[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """All items as one flat tensor of ids, plus each item's length (vectorised, no per-char loop)."""
    lengths = torch.tensor([len(s) for s in items], dtype=torch.int64)
    joined = "".join(items)
    if not joined:
        return torch.zeros(0, dtype=torch.int64), lengths
    codes = torch.frombuffer(bytearray(joined.encode("utf-32-le")), dtype=torch.int32).to(torch.int64)
    table = torch.tensor([ord(c) for c in vocab.itos[1:]], dtype=torch.int64)  # sorted code points
    order = torch.argsort(table)
    pos = torch.searchsorted(table[order], codes).clamp_(max=len(table) - 1)
    if not torch.equal(table[order][pos], codes):
        missing = sorted({c for c in joined if c not in vocab.stoi})
        raise CharmlpError(f"characters {''.join(missing)!r} are not in the vocabulary")
    return order[pos] + 1, lengths


def build_examples(items: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context windows of `block_size` ids padded with the boundary, and the next id.

    For `emma` at block 3: `...→e, ..e→m, .em→m, emm→a, mma→.`.
    Layout trick: F = [0]*k + item₀ + [0]*k + item₁ + … + [0]*k. Item w's windows start at
    o_w + j (j = 0 … len_w), context F[s:s+k], target F[s+k]; for j = len_w the target is the
    next padding zero, i.e. the boundary.
    """
    if block_size < 1:
        raise CharmlpError(f"block size must be at least 1, got {block_size}")
    ids, lengths = encode_items(items, vocab)
    n, k = len(items), block_size
    dtype = vocab.index_dtype
    if n == 0:
        return torch.zeros(0, k, dtype=dtype), torch.zeros(0, dtype=dtype)
    word = torch.repeat_interleave(torch.arange(n), lengths)
    flat = torch.zeros(int(lengths.sum()) + k * (n + 1), dtype=dtype)
    flat[torch.arange(len(ids)) + k * (word + 1)] = ids.to(dtype)
    starts_of_item = torch.cumsum(lengths + k, 0) - (lengths + k)  # o_w
    per_item = lengths + 1
    first = torch.repeat_interleave(torch.cumsum(per_item, 0) - per_item, per_item)
    starts = torch.repeat_interleave(starts_of_item, per_item) + torch.arange(int(per_item.sum())) - first
    X = flat.unfold(0, k, 1)[starts]
    Y = flat[starts + k]
    return X.contiguous(), Y.contiguous()


# ----------------------------------------------------------------------------- splits


def split_items(items: list[str], seed: int = 42, cuts: tuple[float, float] = (0.8, 0.9)) -> dict[str, list[str]]:
    """Shuffle with `random.seed(seed)` semantics, then cut at 80 % / 90 %."""
    words = list(items)
    random.Random(seed).shuffle(words)
    n1, n2 = int(cuts[0] * len(words)), int(cuts[1] * len(words))
    return {"train": words[:n1], "val": words[n1:n2], "test": words[n2:]}


def min_items_for_split(cuts: tuple[float, float] = (0.8, 0.9)) -> int:
    n = 1
    while not (0 < int(cuts[0] * n) < int(cuts[1] * n) < n):
        n += 1
    return n


@dataclass
class Dataset:
    """A vocabulary and, per split, its items and (X, Y) example tensors."""

    vocab: Vocab
    block_size: int
    items: dict[str, list[str]]
    X: dict[str, torch.Tensor]
    Y: dict[str, torch.Tensor]
    path: Path

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "vocab_size": self.vocab.size,
            "boundary": self.vocab.boundary,
            "vocab": "".join(self.vocab.itos),
            "block_size": self.block_size,
            "items": {s: len(self.items[s]) for s in SPLITS},
            "examples": {s: len(self.Y[s]) for s in SPLITS},
        }


def load_dataset(cfg: DataConfig | None = None, vocab: Vocab | None = None) -> Dataset:
    """Read, validate, split and vectorise a data file (default: the embedded names.txt).

    Pass `vocab` to encode with an existing model's vocabulary (e.g. when evaluating a run).
    """
    cfg = cfg or DataConfig()
    if not 1 <= cfg.block_size <= MAX_BLOCK_SIZE:
        raise CharmlpError(f"--block-size must be between 1 and {MAX_BLOCK_SIZE}, got {cfg.block_size}")
    a, b = cfg.split
    if not 0 < a < b < 1:
        raise CharmlpError(f"split cut points must satisfy 0 < train < val < 1, got {cfg.split}")
    items = read_items(cfg.path)
    need = min_items_for_split(cfg.split)
    if len(items) < need:
        raise CharmlpError(
            f"{resolve_data_path(cfg.path)} has {len(items)} item(s); at least {need} are needed "
            "to form train, val and test splits"
        )
    vocab = vocab or Vocab.from_items(items)
    n_examples = sum(map(len, items)) + len(items)
    need_bytes = n_examples * cfg.block_size * vocab.index_dtype.itemsize
    if need_bytes > MAX_EXAMPLE_BYTES:
        raise CharmlpError(
            f"{n_examples} examples at --block-size {cfg.block_size} would take {need_bytes / 2**30:.1f} GiB; "
            "use a smaller --block-size or a smaller file"
        )
    parts = split_items(items, cfg.split_seed, cfg.split)
    X, Y = {}, {}
    for s in SPLITS:
        X[s], Y[s] = build_examples(parts[s], vocab, cfg.block_size)
    return Dataset(vocab, cfg.block_size, parts, X, Y, resolve_data_path(cfg.path))
