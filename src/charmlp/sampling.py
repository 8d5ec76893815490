"""Generate new items: all samples advance together as one batch, one character per step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_run
from .config import DEFAULT_MAX_LEN, DEFAULT_SAMPLE_SEED
from .data import Vocab, read_items
from .errors import CharmlpError
from .models import LanguageModel

MAX_SAMPLES = 1_000_000
MAX_LEN_LIMIT = 100_000
MAX_SAMPLE_CELLS = 200_000_000  # n × max_len ids held at once


def _cdf(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """Cumulative next-id distribution per row: softmax(logits / T), top-k filtered."""
    logits = logits.float().cpu()
    # shift the max to 0 before dividing: a tiny temperature then gives -inf, never inf − inf = nan
    logits = (logits - logits.max(dim=1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=1).cumsum_(1)


TABLE_MAX_CONTEXTS = 1 << 20


@torch.no_grad()
def _sample_flat(
    model: LanguageModel, n: int, generator: torch.Generator, prefix_ids: list[int], temperature: float,
    top_k: int | None, max_new: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every sample's new ids concatenated, each sample's length, and how many hit `max_new`."""
    model.eval()
    forward = model.eval_forward()
    V, block = model.cfg.vocab_size, model.cfg.block_size
    device = next(model.parameters()).device
    seq = model.cfg.sequence  # reads whole items: the growing sequence [boundary, prefix…, new…]
    if seq:
        ctx = torch.tensor([[0, *prefix_ids]], dtype=torch.long).repeat(n, 1)
    else:
        ctx = torch.zeros(n, block, dtype=torch.long)
        for i in prefix_ids:  # slide the prefix into the boundary-padded context
            ctx = torch.cat([ctx[:, 1:], torch.full((n, 1), i, dtype=torch.long)], dim=1)
    # When there are fewer possible contexts (V^block) than rows to feed (~8 per sample), the
    # model is a lookup table: the cdf of every context once, then each step is a gather.
    n_ctx = V**block
    table = None
    if not seq and n_ctx <= min(4 * n, TABLE_MAX_CONTEXTS):
        powers = V ** torch.arange(block - 1, -1, -1)
        every = (torch.arange(n_ctx)[:, None] // powers) % V  # context of each code, base V
        table = torch.cat([_cdf(forward(every[i : i + 65536].to(device)), temperature, top_k)
                           for i in range(0, n_ctx, 65536)])
        code = ctx @ powers  # the context as one base-V number

    def next_cdf(ctx: torch.Tensor) -> torch.Tensor:
        logits = forward(ctx[:, -block:].to(device))
        return _cdf(logits[:, -1] if seq else logits, temperature, top_k)  # whole items: the last position's

    out = torch.zeros(n, max_new, dtype=torch.long)
    length = torch.full((n,), max_new, dtype=torch.long)
    alive = torch.arange(n)  # rows that have not emitted the boundary yet
    steps = 0
    for t in range(max_new):
        steps = t + 1
        cdf = table[code] if table is not None else next_cdf(ctx)
        u = torch.rand(len(alive), 1, generator=generator) * cdf[:, -1:]
        ix = (cdf < u).sum(1)
        out[alive, t] = ix
        ended = ix == 0
        if bool(ended.any()):
            length[alive[ended]] = t
            keep = ~ended
            alive, ix = alive[keep], ix[keep]
            if table is not None:
                code = code[keep]
            else:
                ctx = ctx[keep]
            if len(alive) == 0:
                break
        if table is not None:  # drop the oldest id, append the new one
            code = code % (n_ctx // V) * V + ix
        else:
            ctx = torch.cat([ctx[:, int(not seq):], ix[:, None]], dim=1)  # windows slide; whole items grow
    lengths = length.clamp_max(steps)
    flat = out[:, :steps][torch.arange(steps) < lengths[:, None]]
    return flat, lengths, len(alive)


def sample_ids(
    model: LanguageModel,
    n: int,
    generator: torch.Generator,
    prefix_ids: list[int] = (),
    temperature: float = 1.0,
    top_k: int | None = None,
    max_new: int = DEFAULT_MAX_LEN,
) -> tuple[list[list[int]], int]:
    """Draw `n` continuations of `prefix_ids` in one batch.

    Every step feeds only the rows still going (most names end within ~8 characters, the
    longest of 10 000 after ~30), and draws each row's next id by inverting its cumulative
    distribution: id = #{v : cdf_v < u·cdf_V}, u ~ U[0, 1) — exact, and far cheaper than
    `torch.multinomial` over many rows. With few possible contexts (names: 27³ = 19 683) and
    many samples, the model's cdf is tabulated once for every context.

    Returns each sample's new ids (without the closing boundary) and how many hit `max_new`
    before emitting the boundary.
    """
    flat, lengths, truncated = _sample_flat(model, n, generator, list(prefix_ids), temperature, top_k, max_new)
    ids, ends = flat.tolist(), torch.cumsum(lengths, 0).tolist()
    return [ids[e - k : e] for e, k in zip(ends, lengths.tolist(), strict=True)], truncated


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
    model: LanguageModel,
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
    flat, lengths, truncated = _sample_flat(model, n, g, prefix_ids, temperature, top_k, max_len - len(prefix))
    # ids → characters for all samples at once (a code point table), then one slice per sample
    codes = torch.tensor([ord(c) for c in vocab.itos], dtype=torch.int32)[flat]
    text = codes.numpy().tobytes().decode("utf-32-le")
    ends, ks = torch.cumsum(lengths, 0).tolist(), lengths.tolist()
    items = [prefix + text[e - k : e] for e, k in zip(ends, ks, strict=True)]
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
