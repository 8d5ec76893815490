"""Loss per split, for a live model or a saved run."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_run
from .data import SPLITS, Dataset, load_dataset
from .models import LanguageModel
from .nn import cross_entropy
from .nn.losses import IGNORE

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


@torch.no_grad()
def split_loss(model: LanguageModel, X: torch.Tensor, Y: torch.Tensor, chunk: int = EVAL_CHUNK) -> float:
    """Mean cross-entropy of the model (in eval mode) over all examples of (X, Y)."""
    if len(Y) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunk = eval_chunk(model, X, chunk)
    forward = model.eval_forward()  # BatchNorm folded into the Linear before it: same function, fewer passes
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0  # real targets (whole items: those ≠ −1)
    for i in range(0, len(Y), chunk):
        xb, yb = X[i : i + chunk].to(device), Y[i : i + chunk].to(device)
        n = int((yb != IGNORE).sum()) if model.cfg.sequence else len(yb)
        total += cross_entropy(forward(xb), yb).double() * n
        count += n
    model.train(was_training)
    return float(total / count)


def evaluate(model: LanguageModel, dataset: Dataset, splits: tuple[str, ...] = SPLITS) -> dict[str, float]:
    """{"train": loss, "val": loss, "test": loss}."""
    return {s: split_loss(model, dataset.X[s], dataset.Y[s]) for s in splits}


def evaluate_run(run_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, float]:
    """Rebuild a run's data split with its own vocabulary and report the loss per split."""
    run = load_run(run_dir)
    dataset = load_dataset(run.config.data, vocab=run.vocab)
    return evaluate(run.model, dataset, splits)
