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


TREE_ROWS = 4096  # rows per block of the prefix tree: a depth's nodes stay cache-sized (its gemm and gates run hotter)


def tree_levels(key: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The prefix tree of lexicographically sorted rows, every depth at once. `key` (B, T) holds
    each row's inputs and, past its length, a value no input takes, so rows r−1 and r share
    exactly their first d_r inputs (d_r the first column where they differ). At depth t, row r (active: length > t)
    opens a node where t ≥ d_r, else it is in the node of the row above; nodes are numbered
    per depth in row order. Returns `new` (T, B): row r opens a node at depth t; `node` (T, B):
    the node of row r at depth t (where active); `active` (T, B); and the depths' node counts."""
    T = key.shape[1]
    active = np.arange(T)[:, None] < lengths[None, :]
    differ = key[1:] != key[:-1]
    d = np.zeros(len(key), np.int64)
    d[1:] = np.where(differ.any(1), differ.argmax(1), T)  # identical rows share everything
    new = active & (np.arange(T)[:, None] >= d[None, :])
    node = np.cumsum(new, 1, dtype=np.int64) - 1
    return new, node, active, new.sum(1)


def prefix_tree_nll(stepper: Stepper, X: torch.Tensor, Y: torch.Tensor, lengths: np.ndarray, rows: int,
                    device: torch.device, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Σ −log p over the targets of whole-item rows (X, Y), each distinct prefix computed once.

    A causal model's logits at position t depend on inputs 0 … t only, so rows that share their
    first t + 1 inputs share the state and the logits there: only the targets differ. Rows sorted
    by their inputs (lexicographically) put every shared prefix in one run; blocks of `rows` such
    rows are laid out depth by depth in one NumPy pass (`tree_levels`), then walked with one
    `stepper.step` per depth, which advances the depth's nodes from their parents' states; each
    row adds −log p(its target) at its node, log_softmax read at the row's (node, target) in the
    flat (nodes · V) logits, summed in float64. The blocks share only the prefixes of their
    boundary rows, so small blocks cost little beyond the calls."""
    Xn, Yn = X.cpu().numpy(), Y.cpu().numpy()
    T = Xn.shape[1]
    # inputs + 1, 0 past each row's length, in the narrowest dtype (the sort runs ~10× faster on bytes)
    dtype = np.uint8 if Xn.size == 0 or int(Xn.max()) < 255 else np.int64
    key = np.where(np.arange(T)[None, :] < lengths[:, None], Xn.astype(np.int64) + 1, 0).astype(dtype)
    order = np.lexsort(key.T[::-1])  # column 0 the primary key
    total = torch.zeros((), dtype=torch.float64, device=device)
    root = stepper.start().to(device)
    V = stepper.step(root, torch.zeros(1, dtype=torch.long, device=device))[1].shape[1]  # the logits' width
    for b in range(0, len(order), rows):
        block = order[b : b + rows]
        Lb = lengths[block]
        depth = int(Lb.max())
        kb = key[block, :depth]
        new, node, active, counts = tree_levels(kb, Lb)
        above = np.zeros_like(node)
        above[1:] = node[:-1]  # each row's node at the depth above: its parent where it opens one
        # (T, B) masks read in row-major order: depth by depth, rows in order within each
        ids, parent = kb.T[new].astype(np.int64) - 1, above[new]
        flat = node[active] * V + Yn[block, :depth].T[active]  # each target at its node's logits
        ids_d, parent_d, flat_d = (torch.from_numpy(a.astype(np.int64)).to(device) for a in (ids, parent, flat))
        picked = torch.empty(len(flat), dtype=root.dtype, device=device)
        nodes_at = np.concatenate([[0], np.cumsum(counts)])
        rows_at = np.concatenate([[0], np.cumsum(active.sum(1))])
        states = root
        for t in range(depth):
            n0, n1, r0, r1 = nodes_at[t], nodes_at[t + 1], rows_at[t], rows_at[t + 1]
            states, logits = stepper.step(states.index_select(0, parent_d[n0:n1]), ids_d[n0:n1])
            torch.index_select(torch.log_softmax(logits, -1).view(-1), 0, flat_d[r0:r1], out=picked[r0:r1])
            if progress is not None:
                progress(int(r1 - r0))
        total -= picked.double().sum()
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
        total = prefix_tree_nll(stepper, X, Y, lengths, max(1, min(chunk, TREE_ROWS)), device, progress)
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
