"""A model written as the lectures' chain of atoms: its forward one atom per line, and each atom's own
chain-rule step beside it.

`charmlp gradcheck` walks the steps to backpropagate by hand and compares every atom with autograd's
`.grad`; the exercise uses the same steps to tell a learner's own mistake from one inherited from
upstream; the exercise's starter file lists the forward's own source lines. One chain, three uses:
nothing here is written twice. (Imports no torch: the tensors bring their own methods.)
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field

Rule = Callable[[dict, dict], object]  # (forward tensors F, gradients U of what the atom feeds) → its gradient


@dataclass(frozen=True)
class AtomChain:
    """`forward` is a plain function of the batch and the parameters, one atom per line, ending in
    `return locals()`; its last atom is the loss.

    `order` lists the gradients in the order a learner derives them (atoms and parameters, the loss's
    input first); `local[x]` = (the atoms x feeds, the rule giving dx from their gradients); where an
    atom feeds several others, `branches[x]` holds each one's contribution (dx is their sum)."""

    forward: Callable[..., dict]
    params: tuple[str, ...]
    order: tuple[str, ...]
    local: dict[str, tuple[tuple[str, ...], Rule]]
    branches: dict[str, dict[str, Rule]] = field(default_factory=dict)

    @property
    def inputs(self) -> tuple[str, ...]:
        """What `forward` takes: the batch (and its size) and the parameters."""
        code = self.forward.__code__
        return code.co_varnames[: code.co_argcount]

    @property
    def atoms(self) -> tuple[str, ...]:
        """The names `forward` assigns, in order (its locals after the arguments); the last is the loss."""
        code = self.forward.__code__
        return code.co_varnames[code.co_argcount : code.co_nlocals]

    @property
    def loss(self) -> str:
        return self.atoms[-1]

    def run(self, values: dict) -> dict:
        """Every atom, from `values` (the batch and parameters by name; extra names are ignored)."""
        out = self.forward(**{k: values[k] for k in self.inputs})
        return {k: out[k] for k in self.atoms}

    def reference(self, values: dict) -> tuple[dict, dict]:
        """(every atom, detached; autograd's gradient of the loss with respect to every atom and
        parameter, the loss's own gradient 1 included), from `values`."""
        P = {k: values[k].detach().clone().requires_grad_(True) for k in self.params}
        T = self.run({**values, **P})
        for k in self.atoms[:-1]:
            T[k].retain_grad()
        T[self.loss].backward()
        grads = {**{k: T[k].grad for k in self.atoms[:-1]}, **{k: P[k].grad for k in self.params}}
        grads[self.loss] = T[self.loss].detach().new_ones(())
        return {k: v.detach() for k, v in T.items()}, grads

    def step(self, name: str, F: dict, U: dict):
        """d`name` by its own chain-rule step, from the forward tensors F and the gradients U of what it feeds."""
        return self.local[name][1](F, U)

    def by_hand(self, F: dict) -> dict:
        """Backpropagate through the chain step by step: every gradient of `order`, from dloss = 1.
        F: the batch, the parameters and every atom (as `reference` returns them)."""
        d: dict = {self.loss: F[self.loss].new_ones(())}
        for name in self.order:
            d[name] = self.step(name, F, d)
        return d

    def listing(self) -> list[str]:
        """The forward's lines as written in its source (no docstring, no `return`): the starter's listing."""
        src = textwrap.dedent(inspect.getsource(self.forward))
        fn = ast.parse(src).body[0]
        body = [s for s in fn.body if not isinstance(s, ast.Return)
                and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        return [ast.get_source_segment(src, s) for s in body]


def branch_sum(branches: dict[str, Rule]) -> Rule:
    """The rule of an atom used more than once: the sum of its branches' contributions, in order."""

    def rule(F: dict, U: dict):
        parts = [f(F, U) for f in branches.values()]
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return total

    return rule
