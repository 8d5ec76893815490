"""Loss per split, for a live model or a saved run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_run
from .data import SPLITS, Dataset, item_lengths, load_dataset
from .models import LanguageModel
from .models.base import Stepper
from .nn.losses import IGNORE, row_targets

EVAL_CHUNK = 65536  # examples per forward pass: bounds memory on large files
MAX_CHUNK_LOGITS = 1 << 24  # logits per forward pass (64 MiB of float32)
MAX_CHUNK_BYTES = 256 << 20  # activations one forward pass may hold (the layers keep theirs for a backward)


def eval_chunk(model: LanguageModel, X: torch.Tensor, chunk: int = EVAL_CHUNK) -> int:
    """Rows of X per forward pass: at most `chunk`, at most MAX_CHUNK_LOGITS logits (large
    vocabularies) and about MAX_CHUNK_BYTES of activations (wide or long models: a transformer's
    whole train split at once would hold gigabytes)."""
    cfg = model.cfg
    per_row = cfg.vocab_size * (X.shape[1] if cfg.sequence else 1)  # logits one row of X gives
    by_memory = MAX_CHUNK_BYTES // (4 * max(1, cfg.floats_per_example()))
    return max(1, min(chunk, MAX_CHUNK_LOGITS // per_row, by_memory))


def row_lengths(Y: torch.Tensor) -> np.ndarray:
    """Whole-item rows: each row's positions up to its end token (its targets ≠ −1: item length + 1)."""
    return row_targets(Y).cpu().numpy()


def length_batches(lengths: np.ndarray, rows_for: Callable[[int], int]) -> Iterator[tuple[np.ndarray, int]]:
    """Batches of whole-item rows bucketed by length: the rows sorted shortest first (stably), cut
    into runs of at most `rows_for(L)` rows, L the run's longest row; yields (row indices, L), so
    a batch is padded to its own longest item, not the file's."""
    order = np.argsort(lengths, kind="stable")
    ls = lengths[order]
    i, n = 0, len(order)
    while i < n:
        j = min(n, i + rows_for(int(ls[i])))
        j = min(j, i + rows_for(int(ls[j - 1])))  # fewer rows where the longest is longer (never below one)
        yield order[i:j], max(1, int(ls[j - 1]))
        i = j


def positions_per_pass(model: LanguageModel) -> int:
    """Positions one evaluation pass of a whole-item model may hold: about MAX_CHUNK_BYTES of
    activations (a training position's count, backward included: a bound from above) and at most
    MAX_CHUNK_LOGITS logits."""
    cfg = model.cfg
    per_position = max(1, cfg.floats_per_example() // max(1, cfg.block_size))
    return max(1, min(MAX_CHUNK_LOGITS // cfg.vocab_size, MAX_CHUNK_BYTES // (4 * per_position)))


def prefix_tree_nll(stepper: Stepper, X: torch.Tensor, Y: torch.Tensor, lengths: np.ndarray, rows: int,
                    device: torch.device, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Σ −log p over the targets of whole-item rows (X, Y), each distinct prefix computed once.

    A causal model's logits at position t depend on inputs 0 … t only, so rows that share their
    first t + 1 inputs share the state and the logits there: only the targets differ. Rows sorted
    by their inputs (lexicographically) put every shared prefix in one run; blocks of `rows` such
    rows are walked depth by depth, and at depth t a node is a run of active rows (length > t) with
    the same parent node and the same input x_t. One `stepper.step` per depth advances the nodes
    from their parents' states; each row then adds −log p(its target) at its node (float64)."""
    Xn, Yn = X.cpu().numpy(), Y.cpu().numpy()
    order = np.lexsort(Xn.T[::-1])  # column 0 the primary key
    total = torch.zeros((), dtype=torch.float64, device=device)
    for b in range(0, len(order), rows):
        block = order[b : b + rows]
        Xb, Yb, Lb = Xn[block], Yn[block], lengths[block]
        active = np.arange(len(block))
        parent = np.zeros(len(block), np.int64)  # each active row's node at the depth before
        states = stepper.start().to(device)
        for t in range(int(Lb.max())):
            keep = Lb[active] > t
            if not keep.all():
                active, parent = active[keep], parent[keep]
            x = Xb[active, t]
            new = np.ones(len(active), bool)
            new[1:] = (parent[1:] != parent[:-1]) | (x[1:] != x[:-1])
            first = np.flatnonzero(new)
            node = np.cumsum(new) - 1
            ids = torch.from_numpy(x[first].astype(np.int64)).to(device)
            states, logits = stepper.step(states[torch.from_numpy(parent[first]).to(device)], ids)
            logp = torch.log_softmax(logits, -1)
            y = torch.from_numpy(Yb[active, t].astype(np.int64)).to(device)
            total -= logp[torch.from_numpy(node).to(device), y].double().sum()
            parent = node
            if progress is not None:
                progress(len(active))
    return total


@torch.no_grad()
def split_loss(model: LanguageModel, X: torch.Tensor, Y: torch.Tensor, chunk: int = EVAL_CHUNK,
               progress: Callable[[int], None] | None = None) -> float:
    """Mean cross-entropy of the model (in eval mode) over all targets of (X, Y) (whole items:
    those ≠ −1), Σ −log p in float64, in passes of at most `chunk` rows. Whole items: by the
    model's `Stepper` over the split's prefix tree where it has one (`prefix_tree_nll`: the
    recurrent models), else by its inference forward (`LanguageModel.inference_forward`) on
    rows bucketed by length, each pass cut at its longest row (the models are causal: position
    t's logits read inputs 0 … t only, so the cut changes no logit). `progress(k)` is told each
    pass's k targets."""
    if len(Y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sequence = model.cfg.sequence
    stepper = model.stepper() if sequence else None
    if stepper is not None:
        lengths = row_lengths(Y)
        total = prefix_tree_nll(stepper, X, Y, lengths, max(1, min(chunk, positions_per_pass(model))), device, progress)
        model.train(was_training)
        return float(total / int(lengths.sum()))
    forward = model.inference_forward()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    if sequence:
        budget = positions_per_pass(model)
        lengths = row_lengths(Y)  # each row's targets, on the CPU: a pass's count without a read-back
        batches: Iterator[tuple[torch.Tensor | slice, int, int]] = (
            (torch.from_numpy(ix), L, int(lengths[ix].sum()))
            for ix, L in length_batches(lengths, lambda L: max(1, min(chunk, budget // L))))
    else:
        step = eval_chunk(model, X, chunk)
        batches = ((slice(i, i + step), 1, len(Y[i : i + step])) for i in range(0, len(Y), step))
    for ix, L, n in batches:
        xb, yb = (X[ix, :L], Y[ix, :L]) if sequence else (X[ix], Y[ix])
        xb, yb = xb.to(device), yb.to(device)
        logits = forward(xb)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1).long(),
                              ignore_index=IGNORE, reduction="none")
        total += nll.double().sum()  # ignored targets give 0
        count += n
        if progress is not None:
            progress(n)
    model.train(was_training)
    return float(total / count)


LossFn = Callable[..., float]  # split_loss's signature: (model, X, Y, progress=None) → the mean loss


def evaluate(model: LanguageModel, dataset: Dataset, splits: tuple[str, ...] = SPLITS,
             progress: Callable[[int], None] | None = None, loss: LossFn | None = None) -> dict[str, float]:
    """{"train": loss, "val": loss, "test": loss}, each exact (the whole split); `loss` in place of
    `split_loss` (training's data-parallel ranks pass their sharded one)."""
    loss = loss or split_loss
    return {s: loss(model, dataset.X[s], dataset.Y[s], progress=progress) for s in splits}


TRAIN_EXACT_ITEMS = 50_000  # a training split of more items gets an end-of-run loss estimated on this many
TRAIN_SAMPLE_SEED = 0


def train_sample_rows(dataset: Dataset, n: int) -> torch.Tensor:
    """The rows of X/Y["train"] that hold a fixed seeded sample of `n` training items (without
    replacement, in split order): whole items one row each; context windows the len + 1 rows of
    each item (its characters and its end), which `build_examples` lays out item after item."""
    items = dataset.items["train"]
    pick = np.sort(np.random.default_rng(TRAIN_SAMPLE_SEED).choice(len(items), n, replace=False))
    if dataset.sequence:
        return torch.from_numpy(pick)
    rows_of = item_lengths(items) + 1
    starts, k = np.cumsum(rows_of) - rows_of, rows_of[pick]
    return torch.from_numpy(np.repeat(starts[pick] - (np.cumsum(k) - k), k) + np.arange(int(k.sum())))


def final_losses(model: LanguageModel, dataset: Dataset, progress: Callable[[int], None] | None = None,
                 exact_items: int | None = None, val: float | None = None,
                 loss: LossFn | None = None) -> tuple[dict[str, float], int]:
    """The end-of-run losses and the training items behind the train one: val and test exact,
    train exact up to `exact_items` (default TRAIN_EXACT_ITEMS) items, else estimated on the
    fixed seeded sample `train_sample_rows` of that many items (a ratio estimate of the
    per-character mean: Σ −log p over the sample's characters / their count). `progress` as
    `split_loss`'s; `val`, where given, is the val loss of these very weights, already computed
    (the training loop's last evaluation); `loss` as `evaluate`'s."""
    loss = loss or split_loss
    losses = evaluate(model, dataset, ("val", "test") if val is None else ("test",), progress, loss)
    losses = {"val": val, **losses} if val is not None else losses
    rows, n = train_rows(dataset, exact_items)
    X, Y = (dataset.X["train"], dataset.Y["train"]) if rows is None else (dataset.X["train"][rows], dataset.Y["train"][rows])
    return {"train": loss(model, X, Y, progress=progress), **losses}, n


def train_rows(dataset: Dataset, exact_items: int | None = None) -> tuple[torch.Tensor | None, int]:
    """The rows of the training split its end-of-run loss reads (None: all of them) and the items
    they hold: all up to `exact_items` (default TRAIN_EXACT_ITEMS) items, else `train_sample_rows`."""
    limit = TRAIN_EXACT_ITEMS if exact_items is None else exact_items
    n = len(dataset.items["train"])
    return (None, n) if n <= limit else (train_sample_rows(dataset, limit), limit)


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = SPLITS,
                 progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Rebuild a run's data split with its own vocabulary and report the loss per split (each
    exact); `progress(k)` is told each pass's k predicted characters."""
    run = load_run(run_dir)
    dataset = load_dataset(run.config.data, vocab=run.vocab)
    return evaluate(run.model, dataset, splits, progress)
