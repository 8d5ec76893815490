"""Generate new items: all samples advance together as one batch, one character per step."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_run
from .config import LECTURE_SEED
from .data import Vocab, read_items
from .errors import CharmlpError
from .layers import BatchNorm1d, Embedding, Flatten, Linear, Tanh
from .model import CharMLP

DEFAULT_SAMPLE_SEED = LECTURE_SEED + 10
DEFAULT_MAX_LEN = 64


def eval_forward(model: CharMLP) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's eval-mode forward with every BatchNorm folded into the Linear before it.

    In eval mode BatchNorm is affine: γ·(x@W + b − μ)·rstd + β = x@(W·a) + ((b − μ)·a + β) with
    a = γ·rstd, rstd = 1/√(σ² + ε). Each hidden block becomes one `addmm` and a tanh, which
    saves the BatchNorm passes over every sampled row. Unknown layer stacks use `model` itself.
    """
    layers = list(model.layers)
    if not (isinstance(layers[0], Embedding) and isinstance(layers[1], Flatten)):
        return model
    C, mats, i = layers[0].weight, [], 2
    while i < len(layers):
        lin = layers[i]
        if not isinstance(lin, Linear):
            return model
        W = lin.weight
        b = lin.bias if lin.bias is not None else torch.zeros(W.shape[1], device=W.device, dtype=W.dtype)
        i += 1
        if i < len(layers) and isinstance(layers[i], BatchNorm1d):
            bn = layers[i]
            a = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            W, b = W * a, (b - bn.running_mean) * a + bn.bias
            i += 1
        act = i < len(layers) and isinstance(layers[i], Tanh)
        if i < len(layers) and not act:
            return model
        i += act
        mats.append((W, b, act))

    def forward(idx: torch.Tensor) -> torch.Tensor:
        h = C[idx.long()].reshape(len(idx), -1)
        for W, b, act in mats:
            h = torch.addmm(b, h, W)  # h @ W + b
            if act and h.device.type == "cpu":  # NumPy's float32 tanh is ~10× faster than torch's on CPU
                np.tanh(h.numpy(), out=h.numpy())
            elif act:
                h = torch.tanh(h)
        return h

    return forward


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

    Every step feeds only the rows still going (most names end within ~8 characters, the
    longest of 10 000 after ~30), and draws each row's next id by inverting its cumulative
    distribution: id = #{v : cdf_v < u·cdf_V}, u ~ U[0, 1) — exact, and far cheaper than
    `torch.multinomial` over many rows.

    Returns each sample's new ids (without the closing boundary) and how many hit `max_new`
    before emitting the boundary.
    """
    model.eval()
    forward = eval_forward(model)
    block = model.cfg.block_size
    ctx = torch.zeros(n, block, dtype=torch.long)
    for i in prefix_ids:  # slide the prefix into the boundary-padded context
        ctx = torch.cat([ctx[:, 1:], torch.full((n, 1), i, dtype=torch.long)], dim=1)
    out = torch.zeros(n, max_new, dtype=torch.long)
    length = torch.full((n,), max_new, dtype=torch.long)
    alive = torch.arange(n)  # rows that have not emitted the boundary yet
    device = next(model.parameters()).device
    steps = 0
    for t in range(max_new):
        steps = t + 1
        logits = forward(ctx.to(device)).float().cpu() / temperature
        if top_k is not None and top_k < logits.shape[1]:
            kth = torch.topk(logits, top_k, dim=1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        cdf = torch.softmax(logits, dim=1).cumsum_(1)
        u = torch.rand(len(alive), 1, generator=generator) * cdf[:, -1:]
        ix = (cdf < u).sum(1)
        out[alive, t] = ix
        ended = ix == 0
        if bool(ended.any()):
            length[alive[ended]] = t
            keep = ~ended
            alive, ix, ctx = alive[keep], ix[keep], ctx[keep]
            if len(alive) == 0:
                break
        ctx = torch.cat([ctx[:, 1:], ix[:, None]], dim=1)
    # each row's ids up to its length: one flat list, then slices (tolist of the padded matrix is slow)
    lengths = length.clamp_max(steps)
    flat = out[:, :steps][torch.arange(steps) < lengths[:, None]].tolist()
    ends = torch.cumsum(lengths, 0).tolist()
    rows = [flat[e - k : e] for e, k in zip(ends, lengths.tolist(), strict=True)]
    return rows, len(alive)


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
    if n < 1 or n > 10_000_000:
        raise CharmlpError(f"-n must be between 1 and 10000000, got {n}")
    if not temperature > 0 or temperature > 1e6:
        raise CharmlpError(f"--temperature must be a positive number, got {temperature}")
    if top_k is not None and top_k < 1:
        raise CharmlpError(f"--top-k must be at least 1, got {top_k}")
    prefix_ids = vocab.encode(prefix)
    if max_len <= len(prefix):
        raise CharmlpError(f"--max-len {max_len} leaves no room after the {len(prefix)}-character prefix; raise it")
    g = torch.Generator().manual_seed(seed)
    rows, truncated = sample_ids(model, n, g, prefix_ids, temperature, top_k, max_len - len(prefix))
    text = vocab.decode([i for r in rows for i in r])  # one decode, then a slice per sample
    ends = list(itertools.accumulate(len(r) for r in rows))
    items = [prefix + text[e - len(r) : e] for e, r in zip(ends, rows, strict=True)]
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
