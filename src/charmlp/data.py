"""Items → vocabulary → context windows → train/val/test tensors.

An *item* is one non-empty line of the input file (a name, a word …). The vocabulary is
the sorted set of characters in the file; index 0 is the boundary token (`.` unless the
data itself uses `.`) that pads the context before an item and marks its end.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import random
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, overload

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


# ----------------------------------------------------------------------------- items


class Items(Sequence[str]):
    """Items held as arrays, not as str objects: one flat buffer of code points (`code_points`'
    dtype) and each item's start and length in it. A sequence of str to its readers (an item is
    decoded when asked for); splits (`take`) share the buffer, so a file's characters are held once.
    """

    __slots__ = ("codes", "starts", "lengths")

    def __init__(self, codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self.codes, self.starts, self.lengths = codes, starts, lengths

    @classmethod
    def from_strs(cls, strs: Iterable[str]) -> Items:
        strs = list(strs)
        lengths = np.fromiter(map(len, strs), np.int64, len(strs))
        return cls(code_points("".join(strs)), np.cumsum(lengths) - lengths, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Items: ...

    def __getitem__(self, i: int | slice) -> str | Items:
        if isinstance(i, slice):
            return Items(self.codes, self.starts[i], self.lengths[i])
        s = int(self.starts[i])
        return _decode(self.codes[s : s + int(self.lengths[i])])

    def take(self, indices: np.ndarray) -> Items:
        """The items at `indices`, in that order (their characters stay where they are)."""
        return Items(self.codes, self.starts[indices], self.lengths[indices])

    def flat_codes(self) -> np.ndarray:
        """The code points of every item, one item after the other (a view where they lie so in the
        buffer, else a gather: an index per character, so callers go batch by batch)."""
        n = len(self)
        lengths = self.lengths.astype(np.int64)
        ends = np.cumsum(lengths)
        if n and np.array_equal(self.starts[1:] - self.starts[0], ends[:-1]):  # one stretch of the buffer
            return self.codes[int(self.starts[0]) : int(self.starts[0]) + int(ends[-1])]
        return self.codes[np.repeat(self.starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if n else 0)]

    def batches(self, size: int = 1 << 16) -> Iterator[list[str]]:
        """The items as str, `size` at a time (one decode per batch)."""
        for lo in range(0, len(self), size):
            part = self[lo : lo + size]
            text, ends = _decode(part.flat_codes()), np.cumsum(part.lengths).tolist()
            yield [text[a:b] for a, b in zip([0, *ends[:-1]], ends)]

    def __iter__(self) -> Iterator[str]:
        for batch in self.batches():
            yield from batch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Items, list, tuple)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays, and equal to lists

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self[:3]))
        return f"Items([{head}{', …' if len(self) > 3 else ''}], {len(self)} items)"

    def chars(self) -> int:
        """Characters in all items."""
        return int(self.lengths.sum())

    def longest(self) -> int:
        return int(self.lengths.max()) if len(self) else 0


def as_items(items: Iterable[str]) -> Items:
    """`items` as `Items` (itself where it is one)."""
    return items if isinstance(items, Items) else Items.from_strs(items)


def _decode(codes: np.ndarray) -> str:
    """The str of `code_points`' array."""
    return codes.tobytes().decode("latin-1" if codes.dtype == np.uint8 else "utf-32-le", "surrogatepass")


# ----------------------------------------------------------------------------- reading


READ_CHUNK = 4 << 20  # bytes read (and decoded, and split into lines) at a time


def _stripped_lines(text: str) -> list[str]:
    """The lines of `text` (`\\n`, `\\r\\n` or `\\r` endings), surrounding whitespace removed; blank ones
    stay, as "" (each is a line number). Only these three end a line: other Unicode separators
    (U+2028 …) stay inside an item."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [line.strip() for line in text.split("\n")]


def parse_items(text: str) -> list[str]:
    """One item per line (`\\n`, `\\r\\n` or `\\r` endings); surrounding whitespace removed, blanks dropped."""
    if text.startswith("\ufeff"):  # UTF-8 byte-order mark
        text = text[1:]
    return [s for s in _stripped_lines(text) if s]


def read_items(path: str | Path | None = None, flag: str = "--data", max_len: int = 0,
               chunk: int = READ_CHUNK) -> Items:
    """Read and validate the items of a UTF-8 text file, or a gzip of one (default: embedded
    names.txt), `chunk` bytes at a time; `flag` names the option that gave the path, in the
    message when it does not exist. With `max_len`, items longer than that many characters are
    skipped, and a note on stderr gives their line numbers."""
    p = resolve_data_path(path)
    try:
        if p.is_dir():
            raise CharmlpError(f"{p} is a directory; pass a text file with one item per line")
        if p.exists() and not p.is_file():  # a FIFO or device (/dev/zero) could block or never end
            raise CharmlpError(f"{p} is not a regular file; pass a text file with one item per line")
        f = p.open("rb")
    except FileNotFoundError:
        raise CharmlpError(f"data file {p} does not exist; check the path given to {flag}") from None
    except OSError as e:
        raise CharmlpError(f"cannot read data file {p}: {e.strerror}; check its permissions") from None
    with f:
        if f.read(2) == b"\x1f\x8b":  # gzip's magic number: a compressed item file (names.txt.gz)
            f.seek(0)
            gz = gzip.GzipFile(fileobj=f)

            def read(n: int) -> bytes:
                try:
                    return gz.read(n)
                except (OSError, EOFError, zlib.error) as e:
                    raise CharmlpError(f"{p} starts as a gzip file but does not decompress ({e}); "
                                       "check that it was copied whole, or pass the uncompressed file") from None
        else:
            f.seek(0)

            def read(n: int) -> bytes:
                try:
                    return f.read(n)
                except OSError as e:
                    raise CharmlpError(f"cannot read data file {p}: {e.strerror}; check its permissions") from None

        return _read_stream(read, str(p), max_len, chunk)


def items_from_bytes(raw: bytes, where: str, max_len: int = 0, chunk: int = READ_CHUNK) -> Items:
    """The items of UTF-8 text read from `where` (a file's name, "stdin"), validated as `read_items` does."""
    return _read_stream(io.BytesIO(raw).read, where, max_len, chunk)


def _read_stream(read: Callable[[int], bytes], where: str, max_len: int, chunk: int) -> Items:
    """The items of the bytes `read(chunk)` gives until b"", one chunk at a time, each cut after its
    last b"\\n" (a byte no UTF-8 sequence holds, so each chunk decodes on its own; and a `\\r\\n` never
    straddles a cut). Offsets and line numbers in messages count over the whole input, as one
    decode of the whole would: a non-UTF-8 byte anywhere is reported before a NUL byte."""
    codes: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    long: list[tuple[int, int]] = []  # (line, length) of the items over max_len
    offset = newlines = lines = nonblank = 0  # bytes, b"\n"s, lines (parse_items' numbering) before the chunk
    nul_line = 0  # the first NUL byte's line (0: none yet)
    pending: list[bytes] = []  # the read bytes after the last b"\n", until one comes
    eof = False
    while not eof:
        block = read(chunk)
        eof = not block
        if not eof:
            cut = block.rfind(b"\n") + 1
            if not cut:
                pending.append(block)
                continue
            buf, rest = b"".join([*pending, block[:cut]]), block[cut:]
            pending = [rest] if rest else []
        else:
            buf = b"".join(pending)
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError as e:
            line = newlines + buf.count(b"\n", 0, e.start) + 1
            raise CharmlpError(
                f"{where} is not UTF-8 text: byte 0x{buf[e.start]:02x} at offset {offset + e.start} (line {line}); "
                "save the file as UTF-8"
            ) from None
        if offset == 0 and text.startswith("\ufeff"):  # UTF-8 byte-order mark
            text = text[1:]
        if not nul_line and (z := text.find("\x00")) >= 0:
            nul_line = newlines + text.count("\n", 0, z) + 1
        if not nul_line:  # past a NUL only the UTF-8 check goes on
            stripped = _stripped_lines(text)
            if not eof:
                stripped.pop()  # the "" after the chunk's last "\n": the next chunk's first line
            kept = [s for s in stripped if s]
            nonblank += len(kept)
            if max_len and kept and max(map(len, kept)) > max_len:
                long += [(lines + i + 1, len(s)) for i, s in enumerate(stripped) if len(s) > max_len]
                kept = [s for s in kept if len(s) <= max_len]
            codes.append(code_points("".join(kept)))
            lengths.append(np.fromiter(map(len, kept), np.int64, len(kept)))
            lines += len(stripped)
        offset += len(buf)
        newlines += buf.count(b"\n")
    if nul_line:
        raise CharmlpError(f"{where} contains a NUL byte on line {nul_line}; it looks like a binary file, not text")
    if not nonblank:
        raise CharmlpError(f"{where} has no items: every line is empty; put one item per line")
    if long:
        _note_skipped(long, nonblank - len(long), max_len, where)
    wide = any(c.dtype != np.uint8 for c in codes)
    flat = np.concatenate([c.astype(np.uint32, copy=False) for c in codes] if wide else codes)
    del codes
    lens = np.concatenate(lengths)
    return Items(flat, np.cumsum(lens) - lens, lens)


def _note_skipped(long: list[tuple[int, int]], kept: int, max_len: int, where: str) -> None:
    """The note on stderr naming the lines (`line`, `length`) skipped for being longer than
    `max_len` (in `parse_items`' numbering: `\\n`, `\\r\\n` and `\\r` each end one), or the error
    when no item is left. One overlong line would otherwise set a whole-item model's row length,
    and with it the cost of every batch."""
    longest = max(n for _, n in long)
    numbers = ", ".join(str(i) for i, _ in long[:5]) + (", …" if len(long) > 5 else "")
    what = (f"line {numbers} ({longest} characters)" if len(long) == 1
            else f"{len(long)} lines ({numbers}; the longest {longest} characters)")
    if not kept:
        raise CharmlpError(f"every item of {where} is longer than {flag('--max-item-len', max_len)}; "
                           f"pass `--max-item-len {longest}` (or 0: no limit) to keep them")
    print(f"note: skipped {what} of {where}, longer than {flag('--max-item-len', max_len)}; "
          f"pass `--max-item-len {longest}` to keep {'it' if len(long) == 1 else 'them'}", file=sys.stderr)


# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Vocab:
    """Characters ↔ integer ids; `itos[0]` is the boundary token."""

    itos: tuple[str, ...]

    @classmethod
    def from_items(cls, items: Iterable[str]) -> Vocab:
        items, used = as_items(items), set()
        for lo in range(0, len(items), ENCODE_BATCH):
            codes = items[lo : lo + ENCODE_BATCH].flat_codes()
            used.update((np.flatnonzero(np.bincount(codes, minlength=256)) if codes.dtype == np.uint8
                         else np.unique(codes)).tolist())
        chars = [chr(c) for c in sorted(used)]  # str order is code point order
        present = set(chars)
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
        return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _id_table(vocab: Vocab) -> np.ndarray:
    """The dense code point → id table (at most 0x110000 entries; −1: no id; the last entry
    stands for every code point beyond the vocabulary, which `_ids` clips onto it)."""
    cps = [ord(c) for c in vocab.itos[1:]]
    table = np.full(max(cps, default=0) + 2, -1, dtype=np.int16 if vocab.size <= 2**15 else np.int32)
    table[cps] = np.arange(1, len(cps) + 1)
    return table


def _ids(part: Items, table: np.ndarray, vocab: Vocab) -> np.ndarray:
    """The ids of a batch of items, one item after the other; unknown characters raise a user error."""
    ids = np.take(table, part.flat_codes(), mode="clip")
    if (ids < 0).any():
        stoi = vocab.stoi
        missing = sorted({c for s in part for c in s if c not in stoi or c == vocab.boundary})
        raise CharmlpError(f"characters '{escaped(''.join(missing))}' are not in the vocabulary")
    return ids


ENCODE_BATCH = 1 << 16  # items encoded at a time: the temporaries of a batch, not of a file


def encode_items(items: Iterable[str], vocab: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """All items as one flat array of ids, plus each item's length (int64); unknown characters
    raise a user error."""
    items, table = as_items(items), _id_table(vocab)
    ids = np.empty(items.chars(), table.dtype)
    q = 0
    for lo in range(0, len(items), ENCODE_BATCH):
        part = _ids(items[lo : lo + ENCODE_BATCH], table, vocab)
        ids[q : q + len(part)] = part
        q += len(part)
    return ids, items.lengths.astype(np.int64, copy=False)


def build_examples(items: Iterable[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`example_arrays` as torch tensors."""
    import torch

    X, Y = example_arrays(items, vocab, block_size)
    return torch.from_numpy(X), torch.from_numpy(Y)


def example_arrays(items: Iterable[str], vocab: Vocab, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Context windows of `block_size` ids padded with the boundary, and the next id (NumPy, in
    the smallest integer dtype that holds every id), item after item in order.

    For `emma` at block 3: `...→e, ..e→m, .em→m, emm→a, mma→.`.
    Layout trick, per batch of `ENCODE_BATCH` items (X and Y are the only arrays of the whole
    size): F = [0]*k + item₀ + [0]*k + item₁ + … + [0]*k. The targets are every item character and
    the first padding zero after each item (the boundary); each target p's context is F[p − k : p].
    All of it is a few whole-array operations: no per-item or per-character Python work.
    """
    if block_size < 1:
        raise CharmlpError(f"block size must be at least 1, got {block_size}")
    items, table, k = as_items(items), _id_table(vocab), block_size
    np_dtype = vocab.index_np_dtype
    rows = items.chars() + len(items)
    X, Y = np.empty((rows, k), np_dtype), np.empty(rows, np_dtype)
    q = 0
    for lo in range(0, len(items), ENCODE_BATCH):
        part = items[lo : lo + ENCODE_BATCH]
        ids, lengths, n = _ids(part, table, vocab), part.lengths.astype(np.int64), len(part)
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
        # target mask — no index arrays, only the batch's rows in the small id dtype
        tk = target[k:]
        r = len(ids) + n
        for j in range(k):
            X[q : q + r, j] = flat[j : len(flat) - k + j][tk]
        Y[q : q + r] = flat[k:][tk]
        q += r
    return X, Y


def build_sequences(items: Iterable[str], vocab: Vocab, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per item for models that read the whole item (`sequence` models): inputs
    [boundary, c1, …, cn] and targets [c1, …, cn, boundary], padded to `block_size` positions
    (inputs with the boundary, targets with −1, which the loss ignores).

    For `emma` at block 6: X = `.emma.`, Y = `emma.` + [−1]. Each real target is one of the
    window examples `build_examples` gives (the same context, seen whole), so the mean loss over
    targets ≠ −1 is the same per-character measure.
    """
    import torch

    items, table = as_items(items), _id_table(vocab)
    n, longest = len(items), items.longest()
    if n and longest + 1 > block_size:
        raise CharmlpError(
            f"an item of {longest} characters needs a block size of at least {longest + 1} "
            f"for a model that reads whole items, got {block_size}; leave --block-size out (it follows the data)"
        )
    X = np.zeros((n, block_size), vocab.index_np_dtype)
    Y = np.full((n, block_size), -1, np.int16 if vocab.size < 2**15 else np.int32)
    for lo in range(0, n, ENCODE_BATCH):
        part = items[lo : lo + ENCODE_BATCH]
        ids, lengths = _ids(part, table, vocab), part.lengths.astype(np.int64)
        rows = lo + np.repeat(np.arange(len(part)), lengths)
        cols = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within its item
        X[rows, cols + 1] = ids  # after the leading boundary
        Y[rows, cols] = ids
        Y[lo + np.arange(len(part)), lengths] = 0  # the end token
    return torch.from_numpy(X), torch.from_numpy(Y)


def longest_item(items: Iterable[str]) -> int:
    return items.longest() if isinstance(items, Items) else max(map(len, items), default=0)


def item_lengths(items: Iterable[str]) -> np.ndarray:
    """Each item's length (int64)."""
    if isinstance(items, Items):
        return items.lengths.astype(np.int64, copy=False)
    return np.fromiter(map(len, items), np.int64)


# ----------------------------------------------------------------------------- splits


SHUFFLE_DRAWS = 1 << 20  # Mersenne Twister outputs drawn at a time for `shuffled_order`
PYTHON_SHUFFLE_BELOW = 1 << 20  # fewer items: Python's own shuffle of their indices (quicker than importing Numba)


def shuffled_order(n: int, seed: int, python_below: int = PYTHON_SHUFFLE_BELOW) -> np.ndarray:
    """The order `random.Random(seed).shuffle` puts n things in (entry i: the index that lands at
    position i), without a list of n objects. Python's shuffle swaps x[i] with x[randbelow(i + 1)]
    for i = n − 1 … 1, each randbelow(m) a rejection loop on getrandbits(m.bit_length()): the top
    bits of one 32-bit output of its Mersenne Twister, which NumPy's MT19937 continues from
    Python's state (`data_kernels.shuffle_draws`). Below `python_below` items, Python's shuffle
    itself, of a list of their indices."""
    if n < python_below:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return np.array(order, np.int64).reshape(n)
    perm = np.arange(n, dtype=np.int64)
    if n < 2:
        return perm
    if n > 2**32:  # getrandbits of more than 32 bits takes several outputs per draw
        raise CharmlpError(f"{n} items are more than the split's shuffle takes (2³²)")
    from .data_kernels import shuffle_draws

    state = random.Random(seed).getstate()[1]
    bits = np.random.MT19937()
    bits.state = {"bit_generator": "MT19937",
                  "state": {"key": np.array(state[:624], np.uint32), "pos": state[624]}}
    i = n - 1
    while i >= 1:  # each position takes fewer than 2 draws on average
        i = shuffle_draws(perm, i, bits.random_raw(min(SHUFFLE_DRAWS, 2 * i + 64)))
    return perm


def split_items(items: Iterable[str], seed: int = 42, cuts: tuple[float, float] = (0.8, 0.9)) -> dict[str, Items]:
    """Shuffle with `random.seed(seed)` semantics (`shuffled_order`), then cut at 80 % / 90 %."""
    items = as_items(items)
    order = shuffled_order(len(items), seed)
    n1, n2 = int(cuts[0] * len(items)), int(cuts[1] * len(items))
    return {"train": items.take(order[:n1]), "val": items.take(order[n1:n2]), "test": items.take(order[n2:])}


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
    items: dict[str, Items]
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
            # predicted characters (a count: torch's sum of a mask would hold it as int64)
            "examples": {s: int(np.count_nonzero(self.Y[s].numpy() >= 0)) for s in SPLITS},
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
        longest = items.longest()
        if longest + 1 > MAX_BLOCK_SIZE:
            raise CharmlpError(
                f"an item of {longest} characters is longer than a model that reads whole items "
                f"can take ({MAX_BLOCK_SIZE - 1}); skip such lines with `--max-item-len {MAX_BLOCK_SIZE - 1}` or less")
        cfg = dataclasses.replace(cfg, block_size=longest + 1)
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
    n_examples = len(items) if cfg.sequence else items.chars() + len(items)
    need_bytes = n_examples * cfg.block_size * vocab.index_dtype.itemsize
    if need_bytes > MAX_EXAMPLE_BYTES:
        raise CharmlpError(
            f"{n_examples} examples at {flag('--block-size', cfg.block_size)} would take {need_bytes / 2**30:.1f} GiB; "
            "use a smaller --block-size or a smaller file"
        )
    parts = split_items(items, cfg.split_seed, cfg.split)
    del items  # the splits share its characters; its starts and lengths go
    X, Y = {}, {}
    build = build_sequences if cfg.sequence else build_examples
    for s in SPLITS:
        X[s], Y[s] = build(parts[s], vocab, cfg.block_size)
    return Dataset(vocab, cfg.block_size, parts, X, Y, resolve_data_path(cfg.path), cfg.sequence)
