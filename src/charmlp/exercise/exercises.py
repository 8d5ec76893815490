"""The backprop exercise of every model after the MLP: one class per model over one checker.

    ex = RNNBackprop(seed=42)          # batch, parameters and every atom by its exercise name
    ex.check(dlogits=dlogits, dhs=dhs) # a Report (.ok, .rows, text, an HTML table in Jupyter)

Each model's atoms and their chain-rule steps are written once, in `models/<model>_atoms.py`; the
diagnosis is `backprop.diagnose`, the MLP exercise's, given that model's chain. The batch is drawn
from the embedded names: context windows of T characters, the next character the target (for the
sequence models, every position's next character: a loss at every position).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import LECTURE_SEED, DataConfig
from ..errors import CharmlpError
from ..models import gru_atoms, rnn_atoms, transformer_atoms, wavenet_atoms
from ..models.atoms import AtomChain
from ..verdict import Report
from .backprop import diagnose


@dataclass(frozen=True)
class Spec:
    """One model's exercise: its chain, how many positions it reads, its parameters from a generator."""

    name: str
    about: str
    chain: AtomChain
    positions: int
    per_position: bool  # a target at every position (sequence models) or one per window
    make_params: object  # (vocab_size, generator) → {name: tensor}


SPECS: dict[str, Spec] = {
    "wavenet": Spec("wavenet", "the hierarchical WaveNet: 4 characters -> embedding C -> FlattenConsecutive(2) -> Linear W1 -> "
                    "BatchNorm over (B, T, C) -> tanh -> FlattenConsecutive(2) -> Linear W2 -> BatchNorm -> tanh -> Linear W3",
                    wavenet_atoms.WAVENET_CHAIN, 4, False, lambda V, g: wavenet_atoms.parameters(V, 4, 6, 16, g)),
    "rnn": Spec("rnn", f"a tanh RNN over {rnn_atoms.T} characters: h_t = tanh(x_t Wx + b + h_(t-1) Wh) from the learned h0, "
                "a loss at every position (backprop through time)",
                rnn_atoms.RNN_CHAIN, rnn_atoms.T, True, lambda V, g: rnn_atoms.parameters(V, 6, 16, g)),
    "gru": Spec("gru", f"a GRU over {gru_atoms.T} characters: update gate z, reset gate r, candidate c, h' = h + z (c - h), "
                "from the learned h0, a loss at every position (backprop through time)",
                gru_atoms.GRU_CHAIN, gru_atoms.T, True, lambda V, g: gru_atoms.parameters(V, 6, 12, g)),
    "transformer": Spec("transformer", f"a one-block GPT over 4 characters: token and position embeddings, LayerNorm, causal "
                        f"self-attention ({transformer_atoms.N_HEAD} heads), the residual stream, a GELU MLP, a final "
                        "LayerNorm, a loss at every position",
                        transformer_atoms.TRANSFORMER_CHAIN, 4, True, lambda V, g: transformer_atoms.parameters(V, 4, 8, g)),
}
MODELS = ("mlp", *SPECS)  # in lecture order
MARK = "# charmlp-exercise: model="  # the line `init` writes, by which `check` and `status` know a file
_MARK_RE = re.compile(r"^# charmlp-exercise: model=([a-z]+)\s*$", re.M)


def model_of(path: str | Path) -> str | None:
    """The model an exercise file was written for (its mark in the first lines); None when unmarked."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    m = _MARK_RE.search(head)
    return m.group(1) if m else None


@functools.lru_cache(maxsize=4)
def _windows(T: int):
    from ..data import load_dataset

    return load_dataset(DataConfig(block_size=T))


class Exercise:
    """A model's seeded batch, parameters and forward tensors, and checks of a learner's gradients.

    Attributes: Xb, Yb, n; every parameter and every atom by its exercise name. `check(dX=…)` returns a Report."""

    model = ""

    def __init__(self, seed: int = LECTURE_SEED, batch_size: int = 32) -> None:
        if not 0 <= seed < 2**63:
            raise CharmlpError(f"seed must be between 0 and {2**63 - 1}, got {seed}")
        if not 3 <= batch_size <= 4096:
            raise CharmlpError(f"batch_size must be between 3 and 4096, got {batch_size}")
        spec = self.spec = SPECS[self.model]
        ds = _windows(spec.positions)
        g = torch.Generator().manual_seed(seed)
        self.params = spec.make_params(ds.vocab.size, g)
        ix = torch.randint(0, len(ds.Y["train"]), (batch_size,), generator=g)
        X, Y = ds.X["train"][ix].long(), ds.Y["train"][ix].long()
        self.seed, self.n, self.vocab_size = seed, batch_size, ds.vocab.size
        # every position's next character: the window shifted by one, then the window's own target
        self.Xb, self.Yb = X, (torch.cat((X[:, 1:], Y[:, None]), 1) if spec.per_position else Y)
        self.forward_tensors, self.grads = spec.chain.reference({"Xb": self.Xb, "Yb": self.Yb, "n": self.n, **self.params})
        for k, v in {**self.params, **self.forward_tensors}.items():
            setattr(self, k, v)

    @property
    def chain(self) -> AtomChain:
        return self.spec.chain

    @property
    def names(self) -> tuple[str, ...]:
        """The gradients' names, dX, in the order a learner derives them."""
        return tuple("d" + a for a in self.chain.order)

    def tensors(self) -> dict[str, torch.Tensor | int]:
        """Everything a learner's function may ask for by name: batch, n, parameters, forward tensors."""
        return {"Xb": self.Xb, "Yb": self.Yb, "n": self.n, **self.params, **self.forward_tensors}

    def check(self, part: int | None = None, **grads) -> Report:
        """Check the gradients given (dX for atom or parameter X), in the exercise's order; `part` 1:
        a row for every gradient of the exercise, those not given as missing."""
        if part not in (None, 1):
            raise CharmlpError(f"the {self.model} exercise has one part (1), got {part}")
        unknown = [k for k in grads if k not in self.names]
        if unknown:
            raise CharmlpError(f"unknown gradient name(s) {', '.join(unknown)}; the {self.model} exercise's are "
                               + ", ".join(self.names))
        L = {k[1:]: v for k, v in grads.items() if v is not None}
        F_ = self.tensors()
        rows = [diagnose(a, L.get(a), F_, self.grads, L, chain=self.chain) for a in self.chain.order
                if part == 1 or "d" + a in grads]
        return Report(f"{self.model} backprop exercise (seed {self.seed}, batch {self.n})", rows)

    def reference(self) -> dict[str, torch.Tensor]:
        """The chain's own steps walked by hand from these tensors: every dX (what a hint's reveal shows)."""
        d = self.chain.by_hand(self.tensors())
        return {"d" + a: d[a] for a in self.chain.order}


def training_batches(ex: Exercise, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` batches of ex.n windows (and targets, every position's for the sequence models), from a
    generator seeded with ex.seed: what the training part runs on."""
    ds = _windows(ex.spec.positions)
    g = torch.Generator().manual_seed(ex.seed)
    ix = torch.randint(0, len(ds.Y["train"]), (steps, ex.n), generator=g)
    X, Y = ds.X["train"][ix].long(), ds.Y["train"][ix].long()
    return X, (torch.cat((X[..., 1:], Y[..., None]), -1) if ex.spec.per_position else Y)


class WaveNetBackprop(Exercise):
    """The hierarchical WaveNet's exercise: FlattenConsecutive and BatchNorm over (B, T, C)."""

    model = "wavenet"


class RNNBackprop(Exercise):
    """The tanh RNN's exercise: one cell step, then backprop through time with the hidden state carried."""

    model = "rnn"


class GRUBackprop(Exercise):
    """The GRU's exercise: the gates' steps, then backprop through time with the hidden state carried."""

    model = "gru"


class TransformerBackprop(Exercise):
    """The one-block GPT's exercise: LayerNorm, causal self-attention, GELU MLP, the residual stream."""

    model = "transformer"


CLASSES: dict[str, type[Exercise]] = {c.model: c for c in (WaveNetBackprop, RNNBackprop, GRUBackprop, TransformerBackprop)}


def exercise_for(model: str, seed: int | None = None, batch_size: int = 32) -> Exercise:
    if model not in CLASSES:
        raise CharmlpError(f"no exercise for model {model!r}; choose one of {', '.join(MODELS)}")
    return CLASSES[model](**({} if seed is None else {"seed": seed}), batch_size=batch_size)
