"""`charmlp exercise init`: the starter file of the backprop exercise, one function per part.

The header's listing of the forward is generated from the one place the atoms are written
(`models/mlp_atoms.forward`), each line with the shape its atom has in the exercise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import CharmlpError

HEADER = '''\
# charmlp-exercise: model=mlp
"""Backprop by hand, checked by charmlp.

Fill in the functions below, then run

    charmlp exercise check {name}             # every part this file defines
    charmlp exercise check {name} --part 1    # one part

The model is the lectures' MLP: 3 characters of context -> embedding C -> Linear (W1, b1)
-> BatchNorm (bngain, bnbias; variance with n - 1) -> tanh -> Linear (W2, b2) -> cross-entropy.
charmlp runs each function on a seeded batch of n = 32 names, then again on a batch of n = 13 with
another seed (so write n, never 32), and passes, by name, every tensor a function's parameters ask
for: the batch (Xb, Yb, n), the parameters, and the forward pass below, one atom per line:

{listing}

For every atom X, dX is d(loss)/dX and has the shape of X. charmlp reads the variables dX a function
leaves behind (`return locals()` hands them over; a gradient still None counts as not done yet) and
compares each with autograd's, saying what the mistake most likely is when one is wrong.
"""

import torch
import torch.nn.functional as F
'''

PART1 = '''

# ── part 1: backpropagate through every atom, from dlogprobs down to dC ───────────────────────────
def part1(Xb, Yb, n, C, W1, b1, W2, b2, bngain, bnbias, emb, embcat, hprebn, bnmeani, bndiff, bndiff2,
          bnvar, bnvar_inv, bnraw, hpreact, h, logits, logit_maxes, norm_logits, counts, counts_sum,
          counts_sum_inv, probs, logprobs, loss):
    dlogprobs = None
    dprobs = None
    dcounts_sum_inv = None
    dcounts_sum = None
    dcounts = None          # counts is used twice in the forward
    dnorm_logits = None
    dlogit_maxes = None
    dlogits = None          # so is logits
    dh = None
    dW2 = None
    db2 = None
    dhpreact = None
    dbngain = None
    dbnbias = None
    dbnraw = None
    dbnvar_inv = None
    dbnvar = None
    dbndiff2 = None
    dbndiff = None          # and bndiff
    dbnmeani = None
    dhprebn = None          # and hprebn
    dembcat = None
    dW1 = None
    db1 = None
    demb = None
    dC = None
    return locals()
'''

PART2 = '''

# ── part 2: the cross-entropy backward in one expression ──────────────────────────────────────────
# loss = F.cross_entropy(logits, Yb): write dlogits directly from logits and Yb.
def part2(logits, Yb, n):
    dlogits = None
    return locals()
'''

PART3 = '''

# ── part 3: the BatchNorm backward in one expression ──────────────────────────────────────────────
# hpreact = bngain * (hprebn - mean) / sqrt(var + 1e-5) + bnbias, var with n - 1. Given dhpreact
# (charmlp passes the true one), write dhprebn without the intermediate atoms.
def part3(hprebn, bngain, bnvar_inv, bnraw, dhpreact, n):
    dhprebn = None
    return locals()
'''

PART4 = '''

# ── part 4: train with your own gradients ────────────────────────────────────────────────────────
# params: dict of C, W1, b1, W2, b2, bngain, bnbias (plain tensors: loss.backward() is not available);
# batches: a list of (Xb, Yb); lr: the learning rate. For each batch: run the forward, append
# loss.item(), compute every parameter's gradient with your parts 1-3, and update the parameters
# in place (p -= lr * dp). Return the list of losses; charmlp compares it, step by step, with its
# own hand-written engine trained from the same parameters on the same batches, and reads back, from a
# one-step run, the gradient each parameter's first update used.
def part4(params, batches, lr):
    C, W1, b1, W2, b2, bngain, bnbias = (params[k] for k in ("C", "W1", "b1", "W2", "b2", "bngain", "bnbias"))
    losses = []
    for Xb, Yb in batches:
        pass  # your forward, backward and update here
    return losses
'''

PART_TEXT = {1: PART1, 2: PART2, 3: PART3, 4: PART4}


def _dims(shape: tuple[int, ...], n: int) -> str:
    return " x ".join("n" if d == n else str(d) for d in shape) or "scalar"


def forward_listing() -> str:
    """The forward's lines, as `models/mlp_atoms.forward` writes them, each with its atom's shape."""
    from ..models.mlp_atoms import MLP_CHAIN
    from .backprop import Backprop

    ex = Backprop()
    code = MLP_CHAIN.listing()
    width = max(46, *(len(c) + 2 for c in code))
    lines = [f"    {c:<{width}}# {_dims(tuple(ex.forward_tensors[atom].shape), ex.n)}" for c, atom in zip(code, MLP_CHAIN.atoms)]
    params = ", ".join(f"{k} {_dims(tuple(ex.params[k].shape), ex.n)}" for k in MLP_CHAIN.params)
    return "\n".join(lines) + f"\n\nThe parameters' shapes: {params}."


def starter_text(name: str = "backprop_exercise.py", part: int | None = None) -> str:
    """The starter file: the header and one function per part (or only `part`)."""
    if part is not None and part not in PART_TEXT:
        raise CharmlpError(f"--part must be one of 1, 2, 3, 4, got {part}")
    parts = [part] if part else list(PART_TEXT)
    return HEADER.format(name=name, listing=forward_listing()) + "".join(PART_TEXT[p] for p in parts)


def write_starter(out: str | Path = "backprop_exercise.py", part: int | None = None, model: str = "mlp") -> Path:
    """Write the starter file of `model`'s exercise to `out`; refuses to overwrite anything there. Returns the path."""
    out = Path(out)
    if model == "mlp":
        text = starter_text(out.name, part)
    else:
        from .chain_starter import starter_text as chain_starter_text
        from .exercises import MODELS

        if model not in MODELS:
            raise CharmlpError(f"--model must be one of {', '.join(MODELS)}, got {model!r}")
        if part not in (None, 1):
            raise CharmlpError(f"the {model} exercise has one part (part 1); leave --part out")
        text = chain_starter_text(model, out.name)
    return _write_new(out, text)


def write_layer_template(kind: str, out: str | Path) -> Path:
    """Write the ready-to-fill template of layer kind `kind` to `out` (never overwrites). Returns the path."""
    from .catalog import KINDS, template

    if kind not in KINDS:
        raise CharmlpError(f"--layer must be one of {', '.join(KINDS)}, got {kind!r}")
    out = Path(out)
    return _write_new(out, template(kind, out.name))


def _write_new(out: Path, text: str) -> Path:
    if out.exists() or out.is_symlink():
        raise CharmlpError(f"{out} already exists; charmlp will not overwrite it (choose another --out)")
    if not out.parent.is_dir():
        raise CharmlpError(f"{out.parent}: no such directory")
    # written to a temporary name, then linked into place: the link fails if `out` appeared meanwhile,
    # so a file that exists is never replaced, and a reader never sees half a file
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, out)
    except FileExistsError:
        raise CharmlpError(f"{out} already exists; charmlp will not overwrite it (choose another --out)") from None
    except OSError as e:
        raise CharmlpError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        os.unlink(tmp)
    return out
