"""Score items under a model: each item's log-likelihood, NLL per character and perplexity, and
per position the probability the model gives the character that comes next.

An item c₁…c_L is L + 1 predictions, the end token (the boundary) last, as in the losses:
log p(item) = Σ_{t=0..L} log p(c_{t+1} | context_t), c_{L+1} = end. These are the terms of
eval's loss: a split's loss is Σ −log p(item) / Σ (L + 1) over its items. The context is what
the sampler feeds: a window model's last `block_size` ids (boundary-padded); a whole-item model's
[boundary, c₁…c_t], or its last `block_size` ids once that is longer than the model's positions.
So p(item) is the probability that `charmlp sample` (temperature 1, no top-k) draws the item.

It runs on the model's NumPy forward (`numpy_model.Net`, no torch), batched: for window models
the windows of all items sorted by context, the model run once per distinct context of a batch;
for whole-item models items of similar length padded into one batch (causal: padding after an
item does not change its positions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .checkpoint import load_net
from .data import Vocab, encode_items, escaped, example_arrays
from .errors import CharmlpError
from .nn.module_numpy import log_softmax
from .numpy_model import Net

if TYPE_CHECKING:
    from .models import LanguageModel

MAX_LOGITS = 1 << 24  # logits per forward pass (64 MiB of float32)
MAX_ITEMS = 10_000_000
# rows per forward pass: enough to amortise the per-call cost, few enough that activations stay in
# cache and a length-sorted batch of whole items pads little
WINDOW_ROWS = 8192
SEQUENCE_ROWS = 512


@dataclass
class CharScore:
    """One prediction of an item: the `char` at `position` (the end token at position L) after `context`."""

    position: int
    context: str  # the ids the model saw, as text (the boundary pads it and starts whole items)
    char: str
    prob: float
    logprob: float
    rank: int  # 1 + how many characters the model finds more likely here

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "context": self.context, "char": self.char, "prob": self.prob,
                "logprob": self.logprob, "rank": self.rank}


@dataclass
class ItemScore:
    item: str
    log_likelihood: float | None  # nats, end token included; None: not scorable
    unknown: str = ""  # the item's characters outside the vocabulary (then it is not scorable)
    per_char: list[CharScore] | None = None

    @property
    def predictions(self) -> int:
        return len(self.item) + 1  # its characters and the end token

    @property
    def nll_per_char(self) -> float | None:
        return None if self.log_likelihood is None else -self.log_likelihood / self.predictions

    @property
    def perplexity(self) -> float | None:
        """exp(NLL per character): the number of equally likely choices the model's uncertainty is worth."""
        nll = self.nll_per_char
        return None if nll is None else math.exp(nll)

    @property
    def problem(self) -> str | None:
        """Why the item is not scorable (None: it is)."""
        if not self.unknown:
            return None
        return f"'{escaped(self.unknown)}' not in the run's vocabulary"

    def to_dict(self) -> dict[str, Any]:
        d = {"item": self.item, "log_likelihood": self.log_likelihood, "nll_per_char": self.nll_per_char,
             "perplexity": self.perplexity, "predictions": self.predictions}
        if self.unknown:
            d |= {"scorable": False, "unknown": self.unknown}
        if self.per_char is not None:
            d["per_char"] = [c.to_dict() for c in self.per_char]
        return d


@dataclass
class Scores:
    items: list[ItemScore]

    @property
    def not_scorable(self) -> list[ItemScore]:
        return [s for s in self.items if s.log_likelihood is None]

    def sorted(self) -> Scores:
        """Most to least likely (by log-likelihood); items that are not scorable last, in their order."""
        return Scores(sorted(self.items, key=lambda s: -math.inf if s.log_likelihood is None else s.log_likelihood,
                             reverse=True))

    def mean_nll(self) -> float:
        """NLL per character over all scorable items: Σ −log p(item) / Σ (L + 1), eval's loss of them as a split."""
        ok = [s for s in self.items if s.log_likelihood is not None]
        return -sum(s.log_likelihood for s in ok) / sum(s.predictions for s in ok) if ok else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"items": [s.to_dict() for s in self.items], "scored": len(self.items) - len(self.not_scorable),
                "not_scorable": len(self.not_scorable), "mean_nll": self.mean_nll()}


# ----------------------------------------------------------------------------- the batched forward


def _pick(logits: np.ndarray, y: np.ndarray, ranks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row: log p(y) and, with `ranks`, 1 + #{v : p_v > p_y}."""
    logp = log_softmax(logits.astype(np.float64))
    mine = np.take_along_axis(logp, y[:, None], 1)
    return mine[:, 0], ((logp > mine).sum(1) + 1 if ranks else None)


def _window_targets(net: Net, items: list[str], vocab: Vocab, ranks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Every prediction of every item, in order: its context window is one row of `example_arrays`.
    Predictions are taken in the order of their context (as one base-V number), so each batch
    runs the model once per distinct context in it: names at block 3 have ~10⁴ contexts in 2·10⁵
    windows."""
    X, Y = example_arrays(items, vocab, net.block_size)
    V, k = net.vocab_size, net.block_size
    logp = np.zeros(len(Y))
    rank = np.zeros(len(Y), np.int64) if ranks else None
    if k * math.log2(V) < 62:  # the context fits one int64: c = Σ_j x_j·V^(k−1−j)
        code = X.astype(np.int64) @ (V ** np.arange(k - 1, -1, -1, dtype=np.int64))
        order = np.argsort(code, kind="stable")
    else:
        code, order = np.arange(len(Y)), np.arange(len(Y))  # every window its own
    rows = max(1, min(WINDOW_ROWS, MAX_LOGITS // V))
    for i in range(0, len(order), rows):
        t = order[i : i + rows]
        _, first, inv = np.unique(code[t], return_index=True, return_inverse=True)
        lp = log_softmax(net(X[t[first]]).astype(np.float64))  # (distinct contexts, V)
        y = Y[t].astype(np.int64)
        logp[t] = mine = lp[inv, y]
        if ranks:
            rank[t] = (lp[inv] > mine[:, None]).sum(1) + 1
    return logp, rank


def _sequence_targets(net: Net, items: list[str], vocab: Vocab, ranks: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Every prediction of every item, in order, for a model that reads whole items: items sorted
    by length, batched, each batch one forward over [boundary, c₁…] padded to its longest (at
    most `block_size` positions); a prediction past that sees the last `block_size` ids afresh."""
    ids, lengths = encode_items(items, vocab)
    V, block = net.vocab_size, net.block_size
    logp = np.zeros(int((lengths + 1).sum()))
    rank = np.zeros(len(logp), np.int64) if ranks else None
    starts = np.cumsum(lengths + 1) - (lengths + 1)  # where each item's predictions go in the output
    offsets = np.cumsum(lengths) - lengths  # where each item's ids are in `ids`
    order = np.argsort(lengths, kind="stable")
    longest = int(lengths.max()) + 1 if len(items) else 1
    rows = max(1, min(SEQUENCE_ROWS, MAX_LOGITS // (V * min(longest, block))))
    for i in range(0, len(order), rows):
        batch = order[i : i + rows]
        L = lengths[batch]
        T = int(L.max()) + 1  # predictions of the batch's longest item
        seq = np.zeros((len(batch), T + 1), np.int64)  # [boundary, c₁…c_L, end, padding…]
        r = np.repeat(np.arange(len(batch)), L)
        c = np.arange(len(r)) - np.repeat(np.cumsum(L) - L, L)  # position within its item
        seq[r, c + 1] = ids[np.repeat(offsets[batch], L) + c]
        lp = np.zeros((len(batch), T))
        rk = np.zeros((len(batch), T), np.int64)
        head = min(T, block)  # position t < block sees seq[: t + 1] (causal: padding after it is never seen)
        got = _pick(net(seq[:, :head]).reshape(-1, V), seq[:, 1 : head + 1].reshape(-1), ranks)
        lp[:, :head] = got[0].reshape(len(batch), head)
        if ranks:
            rk[:, :head] = got[1].reshape(len(batch), head)
        valid = np.arange(T)[None, :] <= L[:, None]
        if T > block:  # the rest slide: position t sees seq[t + 1 − block : t + 1]
            r, t = np.nonzero(valid[:, block:])
            t += block
            step = max(1, MAX_LOGITS // (V * block))
            for k in range(0, len(r), step):
                rr, tt = r[k : k + step], t[k : k + step]
                windows = seq[rr[:, None], tt[:, None] + 1 - block + np.arange(block)]
                got = _pick(net(windows)[:, -1], seq[rr, tt + 1], ranks)
                lp[rr, tt] = got[0]
                if ranks:
                    rk[rr, tt] = got[1]
        where = (starts[batch][:, None] + np.arange(T)[None, :])[valid]
        logp[where] = lp[valid]
        if ranks:
            rank[where] = rk[valid]
    return logp, rank


def _contexts(item: str, vocab: Vocab, block: int, sequence: bool) -> list[str]:
    """What the model saw before each prediction of `item`, as text."""
    b = vocab.boundary
    if sequence:
        return [(b + item[:t])[-block:] for t in range(len(item) + 1)]
    padded = b * block + item
    return [padded[t : t + block] for t in range(len(item) + 1)]


def score_net(net: Net, vocab: Vocab, items: Iterable[str], per_char: bool = False) -> Scores:
    """`score` on a model's NumPy forward."""
    items = list(items)
    if len(items) > MAX_ITEMS:
        raise CharmlpError(f"{len(items)} items are more than {MAX_ITEMS} to score at once; score them in parts")
    known = set(vocab.itos[1:])
    unknown = ["" if known.issuperset(s) else "".join(sorted(set(s) - known)) for s in items]
    good = [s for s, u in zip(items, unknown, strict=True) if not u]
    targets = _sequence_targets if net.sequence else _window_targets
    logp, rank = targets(net, good, vocab, per_char)
    ends = np.cumsum([len(s) + 1 for s in good], dtype=np.int64)  # each item's predictions end here
    sums = np.add.reduceat(logp, np.concatenate([[0], ends[:-1]])) if good else np.zeros(0)  # log p(item)
    out, g = [], 0
    for s, u in zip(items, unknown, strict=True):
        if u:
            out.append(ItemScore(s, None, unknown=u))
            continue
        rows = None
        if per_char:
            a = int(ends[g]) - len(s) - 1
            chars = [*s, vocab.boundary]
            rows = [CharScore(t, ctx, chars[t], math.exp(lp), lp, rk) for t, (ctx, lp, rk) in enumerate(zip(
                _contexts(s, vocab, net.block_size, net.sequence), logp[a : a + len(s) + 1].tolist(),
                rank[a : a + len(s) + 1].tolist(), strict=True))]
        out.append(ItemScore(s, float(sums[g]), per_char=rows))
        g += 1
    return Scores(out)


def score(
    run: str | Path | LanguageModel | Net, items: Iterable[str], vocab: Vocab | None = None, per_char: bool = False,
) -> Scores:
    """Score `items` under a run (its directory: read without torch where the run carries a
    description of its layers) or a model (a `LanguageModel` or its `Net`, with its `vocab`).

    An item with a character outside the vocabulary is not scorable (its `log_likelihood` is
    None, `unknown` names the characters); the others are scored. `per_char`: each prediction's
    context, probability, log-probability and rank."""
    if isinstance(run, (str, Path)):
        saved = load_net(run)
        net, vocab = saved.net, saved.vocab
    else:
        if vocab is None:
            raise CharmlpError("scoring a model needs its vocabulary: pass vocab=")
        net = Net.of(run)
    return score_net(net, vocab, items, per_char)
