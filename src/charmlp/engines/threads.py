"""How many CPU threads torch and NumPy's OpenBLAS use."""

from __future__ import annotations

import os

import torch

from ..distributed import local_size
from ..errors import CharmlpError
from .blas import openblas_setters


def auto_threads(sequence: bool) -> int:
    """The default thread count: 2 (where there are 2 cores) for whole-item models, whose matrices
    (a batch's every position at once) are large enough to split — the gru's training step is about
    1.3× faster and the transformer's 1.4× on the 2-core machine —, else 1. Under torchrun the
    machine's cores are shared among its local ranks."""
    return max(1, min(2, (os.cpu_count() or 1) // local_size())) if sequence else 1


def set_threads(n: int) -> None:
    """Use `n` CPU threads in torch and in NumPy's OpenBLAS (where it can be found).

    For this model one thread is fastest (benchmarks/run.py measures 1 vs 2): the matrices are
    too small to split, and on a busy machine a second spinning thread costs far more than it
    gives.
    """
    if not 1 <= n <= 1024:
        raise CharmlpError(f"--threads must be between 1 and 1024, got {n}")
    torch.set_num_threads(n)
    for setter in openblas_setters():
        setter(n)
