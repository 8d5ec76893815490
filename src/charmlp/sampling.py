"""Generate new items: all samples advance together as one batch, one character per step.

Sampling runs in NumPy on the model's NumPy forward (`numpy_model.Net`), for a saved run and
for an in-memory model alike, so `charmlp sample` needs no torch. The uniforms are torch's:
`torch.Generator().manual_seed(seed)` followed by `torch.rand`, drawn from NumPy's MT19937, so
a seed gives the samples it gave when sampling ran in torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .checkpoint import load_net
from .config import DEFAULT_MAX_LEN, DEFAULT_SAMPLE_SEED
from .data import Vocab, read_items
from .errors import CharmlpError, flag
from .numpy_model import Cache, Net, filter_cache

if TYPE_CHECKING:
    from .models import LanguageModel

MAX_SAMPLES = 1_000_000
MAX_LEN_LIMIT = 100_000
MAX_SAMPLE_CELLS = 200_000_000  # n × max_len ids held at once
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def uniforms(seed: int) -> Callable[[int], np.ndarray]:
    """k ↦ the next k uniforms in [0, 1) (float32) of `torch.rand(k, generator=g)` after
    `g = torch.Generator().manual_seed(seed)`.

    torch's CPU generator is MT19937 seeded with init_genrand(seed mod 2³²) — as NumPy's legacy
    `RandomState(seed)` seeds it — and a float32 uniform is (next 32-bit output & 0xFFFFFF)·2⁻²⁴.
    `randint` over the full 32-bit range returns the raw outputs, one per draw.
    """
    rs = np.random.RandomState(seed % 2**32)
    return lambda k: (rs.randint(0, 2**32, size=k, dtype=np.uint64) & 0xFFFFFF).astype(np.float32) * np.float32(2**-24)


def _cdf(logits: np.ndarray, temperature: float, top_k: int | None) -> np.ndarray:
    """Cumulative next-id distribution per row (float32): softmax(logits / T), top-k filtered."""
    # shift the max to 0 before dividing: a tiny temperature then gives -inf, never inf − inf = nan
    logits = logits.astype(np.float32)
    logits -= logits.max(1, keepdims=True)  # the max is now 0, and stays 0 below: softmax needs no other shift
    if temperature != 1:
        logits /= np.float32(temperature)
    V = logits.shape[1]
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k, axis=1)[:, V - top_k : V - top_k + 1]  # the k-th largest
        logits[logits < kth] = -np.inf
    p = np.exp(logits, out=logits)
    p /= p.sum(1, keepdims=True)  # softmax = eˡ / Σ eˡ
    return np.cumsum(p, 1, dtype=np.float64).astype(np.float32)  # torch's cumsum adds in double


TABLE_MAX_CONTEXTS = 1 << 20
# Samples are drawn this many at a time, one batch after another, each batch consuming the next
# uniforms of the seed's one stream: memory is bounded by the batch, not by n. Up to this many,
# a seed gives the samples one batch of n gave before streaming.
SAMPLE_CHUNK = 10_000


def _batch_sampler(
    net: Net, n: int, draw: Callable[[int], np.ndarray], prefix_ids: list[int], temperature: float,
    top_k: int | None, max_new: int,
) -> Callable[[int], tuple[np.ndarray, np.ndarray, int]]:
    """k ↦ the next batch of k samples (`_sample_batch`'s ids, lengths and how many hit
    `max_new`), each batch drawing the next uniforms of `draw`; `n`, the samples wanted in all,
    decides whether the model is tabulated."""
    V, block, seq = net.vocab_size, net.block_size, net.sequence
    if seq:  # reads whole items: the growing sequence [boundary, prefix…, new…]
        start = np.array([0, *prefix_ids], np.int64)
    else:  # the prefix slid into the boundary-padded context
        start = np.array(([0] * block + list(prefix_ids))[len(prefix_ids):], np.int64)
    # When there are fewer possible contexts (V^block) than rows to feed (~8 per sample), the
    # model is a lookup table: the cdf of every context once (for all batches), then each step is a gather.
    n_ctx = V**block
    table = powers = None
    if not seq and n_ctx <= min(4 * n, TABLE_MAX_CONTEXTS):
        powers = V ** np.arange(block - 1, -1, -1)
        every = (np.arange(n_ctx)[:, None] // powers) % V  # context of each code, base V
        table = np.concatenate([_cdf(net(every[i : i + 65536]), temperature, top_k) for i in range(0, n_ctx, 65536)])
    return lambda k: _sample_batch(net, np.tile(start, (k, 1)), draw, temperature, top_k, max_new, table, powers)


def _sample_chunks(
    net: Net, n: int, draw: Callable[[int], np.ndarray], prefix_ids: list[int], temperature: float,
    top_k: int | None, max_new: int, chunk: int = SAMPLE_CHUNK,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Per batch of at most `chunk` samples: their new ids concatenated, each one's length, and
    how many hit `max_new`."""
    next_batch = _batch_sampler(net, n, draw, prefix_ids, temperature, top_k, max_new)
    for first in range(0, n, chunk):
        yield next_batch(min(chunk, n - first))


def _sample_batch(
    net: Net, ctx: np.ndarray, draw: Callable[[int], np.ndarray], temperature: float, top_k: int | None,
    max_new: int, table: np.ndarray | None, powers: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One batch, all rows advancing together from the start contexts `ctx`."""
    V, block, seq = net.vocab_size, net.block_size, net.sequence
    n = len(ctx)
    if table is not None:
        n_ctx = len(table)
        code = ctx @ powers  # the context as one base-V number
    # Whole items are decoded incrementally: the cache keeps what earlier positions left
    # (attention keys and values, the recurrent state), so each step feeds only the new id. A
    # sequence longer than the model's positions slides instead: the last `block` ids, afresh.
    cache: Cache = {}
    fresh = ctx  # ids the cache has not seen

    def next_cdf() -> np.ndarray:
        if not seq:
            return _cdf(net(ctx), temperature, top_k)
        logits = net(fresh, cache) if ctx.shape[1] <= block else net(ctx[:, -block:])
        return _cdf(logits[:, -1], temperature, top_k)  # the last position's

    out = np.zeros((n, max_new), np.int64)
    length = np.full(n, max_new, np.int64)
    alive = np.arange(n)  # rows that have not emitted the boundary yet
    steps = 0
    for t in range(max_new):
        steps = t + 1
        cdf = table.take(code, axis=0) if table is not None else next_cdf()
        u = draw(len(alive))[:, None] * cdf[:, -1:]
        ix = (cdf < u).sum(1)  # id = #{v : cdf_v < u·cdf_V}
        out[alive, t] = ix
        ended = ix == 0
        if ended.any():
            length[alive[ended]] = t
            keep = ~ended
            alive, ix = alive[keep], ix[keep]
            if table is not None:
                code = code[keep]
            else:
                ctx = ctx[keep]
                filter_cache(cache, keep)
            if len(alive) == 0:
                break
        if table is not None:  # drop the oldest id, append the new one
            code = code % (n_ctx // V) * V + ix
        else:
            fresh = ix[:, None]
            ctx = np.concatenate([ctx[:, int(not seq):], fresh], 1)  # windows slide; whole items grow
    lengths = np.minimum(length, steps)
    flat = out[:, :steps][np.arange(steps) < lengths[:, None]]
    return flat, lengths, len(alive)


def _check_seed(seed: int) -> None:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise CharmlpError(f"--seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {seed}")


def sample_ids(
    model: LanguageModel | Net,
    n: int,
    seed: int,
    prefix_ids: list[int] = (),
    temperature: float = 1.0,
    top_k: int | None = None,
    max_new: int = DEFAULT_MAX_LEN,
) -> tuple[list[list[int]], int]:
    """Draw `n` continuations of `prefix_ids`, in batches of `SAMPLE_CHUNK`.

    Every step feeds only the rows still going (most names end within ~8 characters, the
    longest of 10 000 after ~30), and draws each row's next id by inverting its cumulative
    distribution: id = #{v : cdf_v < u·cdf_V}, u ~ U[0, 1) — exact, and far cheaper than a
    multinomial draw per row. With few possible contexts (names: 27³ = 19 683) and many
    samples, the model's cdf is tabulated once for every context.

    Returns each sample's new ids (without the closing boundary) and how many hit `max_new`
    before emitting the boundary.
    """
    _check_seed(seed)
    rows, truncated = [], 0
    for flat, lengths, cut in _sample_chunks(Net.of(model), n, uniforms(seed), list(prefix_ids), temperature, top_k,
                                             max_new):
        ids, ends = flat.tolist(), np.cumsum(lengths).tolist()
        rows += [ids[e - k : e] for e, k in zip(ends, lengths.tolist(), strict=True)]
        truncated += cut
    return rows, truncated


def draw_bound(n: int) -> int:
    """The most samples a filtered draw (unique, novel, excluded, min_len) makes before it gives
    up with what it found: ten per item asked for, plus one batch."""
    return 10 * n + SAMPLE_CHUNK


def _stats(novel_fraction: float | None, truncated: int, draws: int) -> dict:
    """The numbers `--json` reports after the samples."""
    in_train = None if novel_fraction is None else 1.0 - novel_fraction
    return {"novel_fraction": novel_fraction, "in_train_fraction": in_train, "truncated": truncated, "draws": draws}


@dataclass
class Samples:
    samples: list[str]
    novel_fraction: float | None  # share of samples that are not items of the training file
    truncated: int  # samples cut at the maximum length
    draws: int = 0  # samples drawn to find these (more than len(samples) when some were refused)

    def to_dict(self) -> dict:
        return {"samples": self.samples, **_stats(self.novel_fraction, self.truncated, self.draws)}


Batches = Iterator[tuple[list[str], int, int]]  # per batch: the items kept, how many were cut, how many drawn


class SampleStream:
    """Samples batch by batch: iterate it for lists of at most `SAMPLE_CHUNK` items; the
    statistics count the items yielded so far (novelty against `known`, the training items as a set)."""

    def __init__(self, batches: Batches, known: set[str] | None) -> None:
        self._batches = batches
        self._known = known
        self.count = self.novel = self.truncated = self.draws = 0

    def __iter__(self) -> Iterator[list[str]]:
        for items, truncated, draws in self._batches:
            self.count += len(items)
            self.truncated += truncated
            self.draws += draws
            if self._known is not None:
                self.novel += sum(s not in self._known for s in items)
            yield items

    @property
    def novel_fraction(self) -> float | None:
        """Share of the samples so far that are not items of the training file (None: no file)."""
        return None if self._known is None or not self.count else self.novel / self.count

    def stats(self) -> dict:
        return _stats(self.novel_fraction, self.truncated, self.draws)

    def collect(self) -> Samples:
        """Every remaining batch as one list."""
        items = [s for batch in self for s in batch]
        return Samples(items, self.novel_fraction, self.truncated, self.draws)


def _kept(
    next_batch: Callable[[int], tuple[list[str], np.ndarray]], n: int, unique: bool, excluded: set[str], min_len: int,
) -> Batches:
    """Batches of the samples that pass (at least `min_len` characters, not in `excluded`, not
    seen before when `unique`) until there are `n`, or `draw_bound(n)` were drawn; each batch
    counts the draws it took (the last one up to the sample that made `n`). The first batch draws
    min(n, SAMPLE_CHUNK), as the unfiltered sampler does (so it starts with the unfiltered samples
    that pass); each next one what the share passing so far says the rest needs."""
    seen: set[str] = set()
    found = draws = 0
    bound, size = draw_bound(n), min(n, SAMPLE_CHUNK)
    while found < n and draws < bound:
        items, cut = next_batch(min(size, bound - draws))
        kept, truncated, used = [], 0, len(items)
        for i, (s, c) in enumerate(zip(items, cut.tolist(), strict=True)):
            if len(s) < min_len or s in excluded or (unique and s in seen):
                continue
            if unique:
                seen.add(s)
            kept.append(s)
            truncated += c
            if found + len(kept) == n:
                used = i + 1
                break
        found += len(kept)
        draws += used
        yield kept, truncated, used
        rate = max(found / draws, 1e-3)  # of the samples drawn, the share that passed
        size = min(SAMPLE_CHUNK, max(256, math.ceil(1.2 * (n - found) / rate)))


def sample_stream(
    model: LanguageModel | Net,
    vocab: Vocab,
    n: int = 20,
    seed: int = DEFAULT_SAMPLE_SEED,
    temperature: float = 1.0,
    top_k: int | None = None,
    prefix: str = "",
    max_len: int = DEFAULT_MAX_LEN,
    training_items: list[str] | None = None,
    unique: bool = False,
    novel: bool = False,
    exclude: Iterable[str] = (),
    min_len: int = 0,
) -> SampleStream:
    """`sample`'s items batch by batch (at most `SAMPLE_CHUNK` in each): the arguments are checked
    now, the samples drawn as it is iterated."""
    if not 1 <= n <= MAX_SAMPLES:
        raise CharmlpError(f"-n must be between 1 and {MAX_SAMPLES}, got {n}")
    if not 0 < temperature <= 1e6:  # also refuses nan
        raise CharmlpError(f"--temperature must be a positive number up to 1000000, got {temperature}")
    if top_k is not None and not 1 <= top_k <= 10_000_000:
        raise CharmlpError(f"--top-k must be at least 1, got {top_k}")
    prefix_ids = vocab.encode(prefix)
    if max_len <= len(prefix):
        raise CharmlpError(f"{flag('--max-len', max_len)} leaves no room after the {len(prefix)}-character prefix; raise it")
    if max_len > MAX_LEN_LIMIT:
        raise CharmlpError(f"--max-len must be at most {MAX_LEN_LIMIT}, got {max_len}")
    if not 0 <= min_len <= max_len:
        raise CharmlpError(f"--min-len must be between 0 and {flag('--max-len', max_len)}, got {min_len}")
    if min(n, SAMPLE_CHUNK) * (max_len - len(prefix)) > MAX_SAMPLE_CELLS:
        raise CharmlpError(
            f"{flag('-n', n)} × {flag('--max-len', max_len)} is too much to generate at once; ask for fewer or shorter samples"
        )
    if novel and training_items is None:
        raise CharmlpError("novel sampling needs the training file's items: pass training_items (or use sample_run)")
    _check_seed(seed)
    known = None if training_items is None else set(training_items)  # one set: novelty, and --novel's exclusion
    excluded = set(exclude) if not novel else known if not exclude else known | set(exclude)
    net = Net.of(model)
    max_new = max_len - len(prefix)
    next_batch = _batch_sampler(net, n, uniforms(seed), prefix_ids, temperature, top_k, max_new)
    chars = np.array([ord(c) for c in vocab.itos], np.uint32)  # id → code point

    def texts(k: int) -> tuple[list[str], np.ndarray]:
        """k samples as text, and which of them were cut at max_len."""
        flat, lengths, _ = next_batch(k)
        # ids → characters for the whole batch at once, then one slice per sample
        text = chars[flat].astype("<u4").tobytes().decode("utf-32-le")
        ends, ks = np.cumsum(lengths).tolist(), lengths.tolist()
        return [prefix + text[e - k : e] for e, k in zip(ends, ks, strict=True)], lengths == max_new

    def every() -> Batches:
        for first in range(0, n, SAMPLE_CHUNK):
            k = min(SAMPLE_CHUNK, n - first)
            items, cut = texts(k)
            yield items, int(cut.sum()), k

    filtered = unique or excluded or min_len > len(prefix)
    return SampleStream(_kept(texts, n, unique, excluded, min_len) if filtered else every(), known)


def sample(
    model: LanguageModel | Net,
    vocab: Vocab,
    n: int = 20,
    seed: int = DEFAULT_SAMPLE_SEED,
    temperature: float = 1.0,
    top_k: int | None = None,
    prefix: str = "",
    max_len: int = DEFAULT_MAX_LEN,
    training_items: list[str] | None = None,
    unique: bool = False,
    novel: bool = False,
    exclude: Iterable[str] = (),
    min_len: int = 0,
) -> Samples:
    """Sample `n` items, each starting with `prefix`, at most `max_len` characters long: `sample_stream`'s
    batches as one list.

    `model`: a `LanguageModel` (its weights are copied to NumPy) or its `Net`. Filters, each
    drawing more samples in place of those refused (until there are `n`, or `draw_bound(n)`
    were drawn: then fewer come back, and `draws` says how many were drawn): `unique` (no item
    twice), `novel` (none of `training_items`), `exclude` (none of these), `min_len` (at least
    this many characters, the prefix included)."""
    return sample_stream(model, vocab, n, seed, temperature, top_k, prefix, max_len, training_items,
                         unique, novel, exclude, min_len).collect()


def sample_run_stream(run_dir: str | Path, n: int = 20, novel: bool = False, exclude: Iterable[str] = (),
                      **kwargs) -> SampleStream:
    """Sample from a saved run, batch by batch; novelty is measured against its training file
    when it is readable. `novel` excludes that file's items: an error when it cannot be read,
    unless `exclude` is given (it then stands for the file).

    Runs saved with a description of their layers are read and sampled without torch; older
    ones are loaded with torch and described in memory (the same samples, a slower start)."""
    saved = load_net(run_dir)
    try:
        items = read_items(saved.data.path)  # the embedded names where the run trained on them
    except CharmlpError as e:
        items = None
        exclude = list(exclude)
        if novel and not exclude:
            raise CharmlpError(f"--novel excludes the items of the run's data file, but {str(e).split(';')[0]}; "
                               "if it moved, name it with --exclude FILE") from None
        novel = False  # the list given stands for the file
    return sample_stream(saved.net, saved.vocab, n, training_items=items, novel=novel, exclude=exclude, **kwargs)


def sample_run(run_dir: str | Path, n: int = 20, **kwargs) -> Samples:
    """`sample_run_stream`'s samples as one list."""
    return sample_run_stream(run_dir, n, **kwargs).collect()
