"""`charmlp exercise init --model M`: the starter file of a model's backprop exercise, generated from
its chain (`models/<model>_atoms.py`): the forward's own lines, each with its atom's shape, and a
function whose `dX = None` lines list every gradient in the order a learner derives them.

The file's first line marks it (`exercises.MARK`): `check` and `status` read the model from it.
"""

from __future__ import annotations

import inspect
import textwrap

from .exercises import MARK, exercise_for
from .training import TRAIN_STEPS

HEADER = '''\
{mark}{model}
"""{title}

Fill in part1 below, then run

    charmlp exercise check {name}

charmlp runs part1 on a seeded batch of n = {n} names and passes, by name, every tensor its parameters ask
for: the batch (Xb {xb}, Yb {yb}, n), the parameters and the forward pass below, one atom per line:

{listing}

For every atom or parameter X, dX is d(loss)/dX and has the shape of X. charmlp reads the variables dX
part1 leaves behind (`return locals()` hands them over; a gradient still None counts as not done yet) and
compares each with autograd's, saying what the mistake most likely is when one is wrong.
"""

import math

import torch
import torch.nn.functional as F
'''


def _dims(shape: tuple[int, ...], n: int) -> str:
    return " x ".join("n" if d == n else str(d) for d in shape) or "scalar"


def starter_text(model: str, name: str) -> str:
    """The starter file of `model`'s exercise (any model but the MLP, whose starter is `starter.py`'s)."""
    ex = exercise_for(model)
    chain = ex.chain
    code = chain.listing()
    width = max(46, *(len(c) + 2 for c in code))
    listing = [f"    {c:<{width}}# {_dims(tuple(ex.forward_tensors[a].shape), ex.n)}" for c, a in zip(code, chain.atoms)]
    params = ", ".join(f"{k} {_dims(tuple(ex.params[k].shape), ex.n)}" for k in chain.params)
    listing_text = "\n".join(listing) + "\n\n" + textwrap.fill(f"The parameters' shapes: {params}.", 100)
    title = textwrap.fill(f"Backprop by hand through {ex.spec.about}, checked by charmlp.", 100)
    text = HEADER.format(mark=MARK, model=model, title=title, name=name, n=ex.n,
                         xb=_dims(tuple(ex.Xb.shape), ex.n), yb=_dims(tuple(ex.Yb.shape), ex.n), listing=listing_text)
    args = ", ".join((*chain.inputs, *chain.atoms))
    sig = textwrap.fill(f"def part1({args}):", 104, subsequent_indent="          ")
    body = []
    for a in chain.order:
        uses = len(chain.branches.get(a, ()))
        note = f"  # {a} is used {uses} times in the forward: the sum of every branch" if uses > 1 else ""
        body.append(f"    d{a} = None{note}")
    rule = "─" * 80
    fwd_sig = textwrap.fill(f"def forward({', '.join(chain.inputs)}):", 104, subsequent_indent="            ")
    forward = "\n".join(f"    {c}" for c in code)
    return (text + f"\n\n# ── part 1: backpropagate through every atom, from d{chain.order[0]} down to d{chain.order[-1]} {rule}"[:102]
            + f"\n{sig}\n" + "\n".join(body) + "\n    return locals()\n"
            + PART2.format(rule=rule, forward_sig=fwd_sig, forward=forward, params=", ".join(chain.params),
                           steps=TRAIN_STEPS, helpers=_forward_helpers(chain)))


def _forward_helpers(chain) -> str:
    """The module-level names the forward uses beyond torch and F (a constant, a mask function), as source."""
    out = []
    for k in chain.forward.__code__.co_names:
        v = chain.forward.__globals__.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            out.append(f"{k} = {v}\n")
        elif inspect.isfunction(v):
            out.append("\n" + inspect.getsource(v) + "\n")
    return "".join(out)


PART2 = """

# ── part 2: train with your own gradients ─────────────────────────────────────────────────────────
# The forward above as a function, and a training loop that calls your part1 at every step: once part 1
# is right, charmlp runs it on {steps} batches (plain SGD) and compares every step's loss with its own
# hand-written engine trained from the same parameters; when they part, it names the parameter whose
# gradient differs. Nothing to write here unless you want to (the update must stay in place: p -= ...).
{helpers}{forward_sig}
{forward}
    return locals()


def part2(params, batches, lr):
    # params: {params}
    losses = []
    for Xb, Yb in batches:
        atoms = forward(Xb, Yb, len(Xb), **params)
        losses.append(atoms["loss"].item())
        grads = part1(**atoms)  # the forward's locals: the batch, the parameters and every atom
        for k, p in params.items():
            p -= lr * grads["d" + k]
    return losses
"""
