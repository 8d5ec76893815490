"""Generate new items: all samples advance together as one batch, one character per step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_run
from .config import LECTURE_SEED
from .data import Vocab, read_items
from .errors import CharmlpError
from .model import CharMLP

DEFAULT_SAMPLE_SEED = LECTURE_SEED + 10
DEFAULT_MAX_LEN = 64
MAX_SAMPLES = 1_000_000
MAX_LEN_LIMIT = 100_000
MAX_SAMPLE_CELLS = 200_000_000  # n × max_len ids held at once


@torch.no_grad()
def sample_ids(
    model: CharMLP,
    n: int,
    generator: torch.Generator,
    prefix_ids: list[int] = (),
    temperature: float = 1.0,
    top_k: int | None = None,
    max_new: int = DEFAULT_MAX_LEN,
) -> tuple[list[list[int]], int]:
    """Draw `n` continuations of `prefix_ids` in one batch.

    Returns each sample's new ids (without the closing boundary) and how many hit `max_new`
    before emitting the boundary.
    """
    model.eval()
    block = model.cfg.block_size
    ctx = torch.zeros(n, block, dtype=torch.long)
    for i in prefix_ids:  # slide the prefix into the boundary-padded context
        ctx = torch.cat([ctx[:, 1:], torch.full((n, 1), i, dtype=torch.long)], dim=1)
    out = torch.zeros(n, max_new, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    length = torch.full((n,), max_new, dtype=torch.long)
    device = next(model.parameters()).device
    for t in range(max_new):
        logits = model(ctx.to(device)).float().cpu()
        # shift the max to 0 before dividing: a tiny temperature then gives -inf, never inf − inf = nan
        logits = (logits - logits.max(dim=1, keepdim=True).values) / temperature
        if top_k is not None and top_k < logits.shape[1]:
            kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        ix = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
        ended = (ix == 0) & ~done
        length[ended] = t
        done |= ended
        out[:, t] = ix
        if bool(done.all()):
            break
        ctx = torch.cat([ctx[:, 1:], ix[:, None]], dim=1)
    rows = [row[:k] for row, k in zip(out.tolist(), length.tolist(), strict=True)]
    return rows, int((~done).sum())


@dataclass
class Samples:
    samples: list[str]
    novel_fraction: float | None  # share of samples that are not items of the training file
    truncated: int  # samples cut at the maximum length

    def to_dict(self) -> dict:
        in_train = None if self.novel_fraction is None else 1.0 - self.novel_fraction
        return {
            "samples": self.samples,
            "novel_fraction": self.novel_fraction,
            "in_train_fraction": in_train,
            "truncated": self.truncated,
        }


def sample(
    model: CharMLP,
    vocab: Vocab,
    n: int = 20,
    seed: int = DEFAULT_SAMPLE_SEED,
    temperature: float = 1.0,
    top_k: int | None = None,
    prefix: str = "",
    max_len: int = DEFAULT_MAX_LEN,
    training_items: list[str] | None = None,
) -> Samples:
    """Sample `n` items, each starting with `prefix`, at most `max_len` characters long."""
    if not 1 <= n <= MAX_SAMPLES:
        raise CharmlpError(f"-n must be between 1 and {MAX_SAMPLES}, got {n}")
    if not 0 < temperature <= 1e6:  # also refuses nan
        raise CharmlpError(f"--temperature must be a positive number up to 1000000, got {temperature}")
    if top_k is not None and not 1 <= top_k <= 10_000_000:
        raise CharmlpError(f"--top-k must be at least 1, got {top_k}")
    prefix_ids = vocab.encode(prefix)
    if max_len <= len(prefix):
        raise CharmlpError(f"--max-len {max_len} leaves no room after the {len(prefix)}-character prefix; raise it")
    if max_len > MAX_LEN_LIMIT:
        raise CharmlpError(f"--max-len must be at most {MAX_LEN_LIMIT}, got {max_len}")
    if n * (max_len - len(prefix)) > MAX_SAMPLE_CELLS:
        raise CharmlpError(
            f"-n {n} × --max-len {max_len} is too much to generate at once; ask for fewer or shorter samples"
        )
    g = torch.Generator().manual_seed(seed)
    rows, truncated = sample_ids(model, n, g, prefix_ids, temperature, top_k, max_len - len(prefix))
    items = [prefix + vocab.decode(r) for r in rows]
    novel = None
    if training_items is not None:
        known = set(training_items)
        novel = sum(s not in known for s in items) / len(items)
    return Samples(items, novel, truncated)


def sample_run(run_dir: str | Path, n: int = 20, **kwargs) -> Samples:
    """Sample from a saved run; novelty is measured against its training file when it is readable."""
    run = load_run(run_dir)
    try:
        items = read_items(run.config.data.path)
    except CharmlpError:
        items = None
    return sample(run.model, run.vocab, n, training_items=items, **kwargs)
