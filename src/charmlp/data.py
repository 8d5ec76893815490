"""Items → vocabulary → context windows → train/val/test tensors.

An *item* is one non-empty line of the input file (a name, a word …). The vocabulary is
the sorted set of characters in the file; index 0 is the boundary token (`.` unless the
data itself uses `.`) that pads the context before an item and marks its end.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import sys
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .config import MAX_BLOCK_SIZE, DataConfig
from .errors import CharmlpError, flag

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that make tensors: reading items and the vocabulary
# (`charmlp sample`) does without it.

SPLITS = ("train", "val", "test")
MAX_EXAMPLE_BYTES = 8 << 30  # context windows of all examples, above which we refuse (memory)
# candidates for the boundary token, first one absent from the data wins
_BOUNDARY_CANDIDATES = ".·•¤§¶#~|^_@"


DEFAULT_BLOCK_SIZE = 3  # the lectures' context, when neither the data config nor a model says


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


def read_items(path: str | Path | None = None, flag: str = "--data", max_len: int = 0) -> list[str]:
    """Read and validate the items of a UTF-8 text file, or a gzip of one (default: embedded
    names.txt); `flag`
    names the option that gave the path, in the message when it does not exist. With `max_len`,
    items longer than that many characters are skipped, and a note on stderr gives their line
    numbers (`skip_long_items`)."""
    p = resolve_data_path(path)
    try:
        if p.is_dir():
            raise CharmlpError(f"{p} is a directory; pass a text file with one item per line")
        if p.exists() and not p.is_file():  # a FIFO or device (/dev/zero) could block or never end
            raise CharmlpError(f"{p} is not a regular file; pass a text file with one item per line")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CharmlpError(f"data file {p} does not exist; check the path given to {flag}") from None
    except OSError as e:
        raise CharmlpError(f"cannot read data file {p}: {e.strerror}; check its permissions") from None
    if raw[:2] == b"\x1f\x8b":  # gzip's magic number: a compressed item file (names.txt.gz)
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise CharmlpError(f"{p} starts as a gzip file but does not decompress ({e}); "
                               "check that it was copied whole, or pass the uncompressed file") from None
    return items_from_bytes(raw, str(p), max_len)


def items_from_bytes(raw: bytes, where: str, max_len: int = 0) -> list[str]:
    """The items of UTF-8 text read from `where` (a file's name, "stdin"), validated as `read_items` does."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CharmlpError(
            f"{where} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}); "
            "save the file as UTF-8"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise CharmlpError(f"{where} contains a NUL byte on line {line}; it looks like a binary file, not text")
    items = parse_items(text)
    if not items:
        raise CharmlpError(f"{where} has no items: every line is empty; put one item per line")
    if max_len and longest_item(items) > max_len:
        items = skip_long_items(text, items, max_len, where)
    return items


def skip_long_items(text: str, items: list[str], max_len: int, where: str) -> list[str]:
    """`items` without those longer than `max_len`, and a note on stderr naming their lines (in
    `parse_items`' numbering: `\n`, `\r\n` and `\r` each end one). One overlong line would
    otherwise set a whole-item model's row length, and with it the cost of every batch."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    long = [(i + 1, len(s)) for i, line in enumerate(text.split("\n")) if len(s := line.strip()) > max_len]
    kept = [s for s in items if len(s) <= max_len]
    longest = max(n for _, n in long)
    numbers = ", ".join(str(i) for i, _ in long[:5]) + (", …" if len(long) > 5 else "")
    what = (f"line {numbers} ({longest} characters)" if len(long) == 1
            else f"{len(long)} lines ({numbers}; the longest {longest} characters)")
    if not kept:
        raise CharmlpError(f"every item of {where} is longer than {flag('--max-item-len', max_len)}; "
                           f"pass `--max-item-len {longest}` (or 0: no limit) to keep them")
    print(f"note: skipped {what} of {where}, longer than {flag('--max-item-len', max_len)}; "
          f"pass `--max-item-len {longest}` to keep {'it' if len(long) == 1 else 'them'}", file=sys.stderr)
    return kept


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
    def index_np_dtype(self) -> np.dtype:
        """The smallest integer dtype that holds every id."""
        return np.dtype(np.uint8 if self.size <= 256 else np.int16 if self.size <= 2**15 else np.int32)

    @property
    def index_dtype(self) -> torch.dtype:
        """`index_np_dtype` as a torch dtype."""
        import torch

        return {1: torch.uint8, 2: torch.int16, 4: torch.int32}[self.index_np_dtype.itemsize]

    def encode(self, s: str) -> list[int]:
        stoi = self.stoi
        bad = sorted({c for c in s if c not in stoi or c == self.boundary})
        if bad:
            raise CharmlpError(
                f"character(s) '{escaped(''.join(bad))}' are not in the vocabulary of this model; "
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


def escaped(text: str) -> str:
    """`text` safe to print to a terminal: every character `str.isprintable` refuses (ESC, TAB,
    newline, zero-width space…) as its repr escape — \\x1b, \\t, \\n, \\u200b — the others as they are."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def code_points(text: str) -> np.ndarray:
    """Each character's code point: one byte each where every one is below 256 (latin-1: a
    quarter of the memory of UTF-32 on a file of a million lines), else four."""
    try:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def encode_items(items: list[str], vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """All items as one flat array of ids, plus each item's length (vectorised, no per-char loop).

    Characters become ids through a dense code point → id table (at most 0x110000 entries),
    one gather for the whole file; unknown characters raise a user error.
    """
    # One pass over the (shuffled, scattered in memory) strings: join with "\n", then the lengths
    # are the gaps between separators. Items holding "\n" themselves (never from a file) fall
    # back to asking each item its length.
    joined = "\n".join(items)
    codes = code_points(joined)
    is_sep = codes == 10
    sep = np.flatnonzero(is_sep)
    if len(sep) == max(0, len(items) - 1):
        lengths = np.diff(sep, prepend=-1, append=len(codes)) - 1 if items else np.zeros(0, np.int64)
        codes = codes[~is_sep]
    else:
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        joined = "".join(items)
        codes = code_points(joined)
    if len(codes) == 0:
        return np.zeros(0, np.int64), lengths
    cps = [ord(c) for c in vocab.itos[1:]]
    id_dtype = np.int16 if len(cps) < 2**15 else np.int32
    table = np.full(max(cps) + 2, -1, dtype=id_dtype)  # last entry: every code point beyond the vocabulary
    table[cps] = np.arange(1, len(cps) + 1)
    ids = np.take(table, codes, mode="clip")  # clip: code points past the table hit its −1 entry
    if (ids < 0).any():
        missing = sorted({c for c in joined if c not in vocab.stoi or c == vocab.boundary})
        raise CharmlpError(f"characters '{escaped(''.join(missing))}' are not in the vocabulary")
    return ids, lengths


def build_examples(items: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`example_arrays` as torch tensors."""
    import torch

    X, Y = example_arrays(items, vocab, block_size)
    return torch.from_numpy(X), torch.from_numpy(Y)


def example_arrays(items: list[str], vocab: Vocab, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Context windows of `block_size` ids padded with the boundary, and the next id (NumPy, in
    the smallest integer dtype that holds every id), item after item in order.

    For `emma` at block 3: `...→e, ..e→m, .em→m, emm→a, mma→.`.
    Layout trick: F = [0]*k + item₀ + [0]*k + item₁ + … + [0]*k. The targets are every item
    character and the first padding zero after each item (the boundary); each target p's
    context is F[p − k : p]. All of it is a few whole-array operations: no per-item or
    per-character Python work.
    """
    if block_size < 1:
        raise CharmlpError(f"block size must be at least 1, got {block_size}")
    ids, lengths = encode_items(items, vocab)
    n, k = len(items), block_size
    np_dtype = vocab.index_np_dtype
    if n == 0:
        return np.zeros((0, k), np_dtype), np.zeros(0, np_dtype)
    # is_char over F: k padding positions, then len_w item positions, for every item, then k more
    counts = np.empty(2 * n + 1, np.int64)
    counts[0::2], counts[1::2] = k, lengths
    pattern = np.zeros(2 * n + 1, bool)
    pattern[1::2] = True
    is_char = np.repeat(pattern, counts)
    flat = np.zeros(len(is_char), np_dtype)
    flat[is_char] = ids
    target = is_char  # reused in place: targets are the characters …
    target[np.cumsum(lengths + k)] = True  # … and the boundary right after each item (empty ones too)
    # target p's context F[p − k : p], column by column: F shifted by j, compressed by the
    # target mask — no index arrays, only the (N, k) output in the small id dtype
    tk = target[k:]
    X = np.empty((int(np.count_nonzero(tk)), k), np_dtype)
    for j in range(k):
        X[:, j] = flat[j : len(flat) - k + j][tk]
    return X, flat[k:][tk]


def build_sequences(items: list[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per item for models that read the whole item (`sequence` models): inputs
    [boundary, c1, …, cn] and targets [c1, …, cn, boundary], padded to `block_size` positions
    (inputs with the boundary, targets with −1, which the loss ignores).

    For `emma` at block 6: X = `.emma.`, Y = `emma.` + [−1]. Each real target is one of the
    window examples `build_examples` gives (the same context, seen whole), so the mean loss over
    targets ≠ −1 is the same per-character measure.
    """
    import torch

    ids, lengths = encode_items(items, vocab)
    n = len(items)
    if n and int(lengths.max()) + 1 > block_size:
        raise CharmlpError(
            f"an item of {int(lengths.max())} characters needs a block size of at least {int(lengths.max()) + 1} "
            f"for a model that reads whole items, got {block_size}; leave --block-size out (it follows the data)"
        )
    x_dtype = vocab.index_dtype
    X = np.zeros((n, block_size), torch.empty(0, dtype=x_dtype).numpy().dtype)
    Y = np.full((n, block_size), -1, np.int16 if vocab.size < 2**15 else np.int32)
    if len(ids):
        rows = np.repeat(np.arange(n), lengths)
        cols = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within its item
        X[rows, cols + 1] = ids  # after the leading boundary
        Y[rows, cols] = ids
    Y[np.arange(n), lengths] = 0  # the end token
    return torch.from_numpy(X), torch.from_numpy(Y)


def longest_item(items: list[str]) -> int:
    return max(map(len, items), default=0)


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
    sequence: bool = False  # rows are whole items (build_sequences), not context windows

    def summary(self) -> dict:
        return {
            "path": str(self.path),
            "vocab_size": self.vocab.size,
            "boundary": self.vocab.boundary,
            "vocab": "".join(self.vocab.itos),
            "block_size": self.block_size,
            "items": {s: len(self.items[s]) for s in SPLITS},
            "examples": {s: int((self.Y[s] >= 0).sum()) for s in SPLITS},  # predicted characters
        }


def load_dataset(cfg: DataConfig | None = None, vocab: Vocab | None = None) -> Dataset:
    """Read, validate, split and vectorise a data file (default: the embedded names.txt).

    Pass `vocab` to encode with an existing model's vocabulary (e.g. when evaluating a run).
    """
    cfg = cfg or DataConfig()
    items = None
    if cfg.max_item_len < 0:
        raise CharmlpError(f"--max-item-len must be ≥ 0 (0: no limit), got {cfg.max_item_len}")
    if cfg.sequence and cfg.block_size == 0:  # whole items: as long as the longest, plus the start token
        items = read_items(cfg.path, max_len=cfg.max_item_len)
        if longest_item(items) + 1 > MAX_BLOCK_SIZE:
            raise CharmlpError(
                f"an item of {longest_item(items)} characters is longer than a model that reads whole items "
                f"can take ({MAX_BLOCK_SIZE - 1}); skip such lines with `--max-item-len {MAX_BLOCK_SIZE - 1}` or less")
        cfg = dataclasses.replace(cfg, block_size=longest_item(items) + 1)
    elif cfg.block_size == 0:
        cfg = dataclasses.replace(cfg, block_size=DEFAULT_BLOCK_SIZE)
    if not 1 <= cfg.block_size <= MAX_BLOCK_SIZE:
        raise CharmlpError(f"--block-size must be between 1 and {MAX_BLOCK_SIZE}, got {cfg.block_size}")
    a, b = cfg.split
    if not 0 < a < b < 1:
        raise CharmlpError(f"split cut points must satisfy 0 < train < val < 1, got {cfg.split}")
    items = items if items is not None else read_items(cfg.path, max_len=cfg.max_item_len)
    need = min_items_for_split(cfg.split)
    if len(items) < need:
        raise CharmlpError(
            f"{resolve_data_path(cfg.path)} has {len(items)} item(s); at least {need} are needed "
            "to form train, val and test splits"
        )
    vocab = vocab or Vocab.from_items(items)
    n_examples = len(items) if cfg.sequence else sum(map(len, items)) + len(items)
    need_bytes = n_examples * cfg.block_size * vocab.index_dtype.itemsize
    if need_bytes > MAX_EXAMPLE_BYTES:
        raise CharmlpError(
            f"{n_examples} examples at {flag('--block-size', cfg.block_size)} would take {need_bytes / 2**30:.1f} GiB; "
            "use a smaller --block-size or a smaller file"
        )
    parts = split_items(items, cfg.split_seed, cfg.split)
    X, Y = {}, {}
    build = build_sequences if cfg.sequence else build_examples
    for s in SPLITS:
        X[s], Y[s] = build(parts[s], vocab, cfg.block_size)
    return Dataset(vocab, cfg.block_size, parts, X, Y, resolve_data_path(cfg.path), cfg.sequence)
