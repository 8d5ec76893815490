"""Every layer kind the layer checker knows: how charmlp builds and feeds a learner's class of that kind,
its reference (charmlp's own layer from `charmlp.nn`, differentiated by autograd with the learner's own
parameter values), and what each kind's typical mistakes give — the clues the shared diagnosis engine
(`diagnose.py`) matches a wrong output or gradient against.

A `Kind` says: the constructor's arguments (the same as charmlp's class), the parameters (the attribute
names a learner may use, charmlp's first), the cases (at least two batch sizes, one of them odd, and two
seeds; sequence layers two lengths too), the calls of one case (a recurrent cell: one forward and its
backward per time step, the last step first), the reference, and the slips and parts of each row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import nn
from ..verdict import Row
from .diagnose import Clues, Part, Slip, norm_parts, repeated_index, sum_of

EPS, MOMENTUM = 1e-5, 0.1


@dataclass(frozen=True)
class Param:
    """A parameter: charmlp's name (the row is `<the learner's attribute>.grad`), the attribute names a
    learner's class may use for it (dotted paths allowed), its shape, its name in charmlp's layer."""

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    ref: str = ""
    layout: str = ""  # said when the learner's tensor has another shape

    @property
    def ref_name(self) -> str:
        return self.ref or self.name


@dataclass(frozen=True)
class Case:
    """One input shape and seed; `steps` > 1: a recurrent cell run through that many time steps."""

    label: str
    seed: int
    shape: tuple[int, ...]
    steps: int = 1


@dataclass
class Call:
    """One forward call of a case and its backward: the inputs by name, the upstream gradient; `extra`:
    tensors a kind's extra steps use (BatchNorm's eval-mode input)."""

    inputs: dict[str, torch.Tensor]
    dout: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class Raised:
    """A step of the learner's class that raised: its message and line (from `_child.run_probes`)."""

    def __init__(self, error: dict) -> None:
        self.error = error

    @property
    def text(self) -> str:
        e = self.error
        where = f" at line {e['line']}" if e.get("line") else ""
        code = f" ({e['text']})" if e.get("line") and e.get("text") else ""
        return f"raised {e['message']}{where}{code}"

    def row(self, name: str) -> Row:
        return Row(name, "wrong", diagnosis=self.text, kind="exception")


@dataclass
class Ref:
    """What charmlp's layer gives for one call: the output, the gradient of each differentiable input,
    and of each parameter (by charmlp's name)."""

    out: torch.Tensor
    dinputs: dict[str, torch.Tensor]
    dparams: dict[str, torch.Tensor] = field(default_factory=dict)


def _autograd(layer, inputs: dict[str, torch.Tensor], dout: torch.Tensor, grad_of: tuple[str, ...]) -> Ref:
    """charmlp's `layer` in training mode, differentiated by autograd: out = layer(*inputs), and the gradient
    of ⟨out, dout⟩ with respect to the inputs named in `grad_of` and to every parameter."""
    with torch.enable_grad():
        xs = {k: v.clone().requires_grad_(k in grad_of) for k, v in inputs.items()}
        out = layer(*xs.values())
        params = dict(layer.named_parameters())
        wrt = [xs[k] for k in grad_of] + list(params.values())
        grads = torch.autograd.grad(out, wrt, dout, allow_unused=True)
    dins = dict(zip(grad_of, grads[: len(grad_of)]))
    dps = {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(params.items(), grads[len(grad_of):])}
    return Ref(out.detach(), dins, dps)


class Kind:
    """A layer kind. Subclasses set the class attributes and override what differs from a plain layer
    out = layer(x) with backward(dout) -> dx."""

    name = ""
    args: tuple = ()
    params: tuple[Param, ...] = ()
    cases: tuple[Case, ...] = ()
    inputs: tuple[str, ...] = ("x",)  # what one call takes, in order
    grad_of: tuple[str, ...] = ("x",)  # the inputs backward returns a gradient of, in order
    backward_rows: tuple[str, ...] = ("backward (dx)",)
    output_row = "output"
    n_in_factor = False  # True: a factor n (the rows a statistic or a mean runs over) is named as such

    # ── what charmlp feeds the learner's class ──
    def param_values(self, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Seeded values for every parameter, off 0 and 1 so that a forgotten term cannot hide."""
        return {p.name: 0.3 * torch.randn(p.shape, generator=g) + (1.0 if p.name in ("weight", "gamma") and len(p.shape) == 1
                                                                   else 0.0) for p in self.params}

    def make_x(self, case: Case, g: torch.Generator) -> torch.Tensor:
        return torch.randn(case.shape, generator=g)

    def calls(self, case: Case, g: torch.Generator) -> list[Call]:
        x = self.make_x(case, g)
        return [Call({"x": x}, torch.randn(self.out_shape(case), generator=g), self.extra_inputs(case, g))]

    def extra_inputs(self, case: Case, g: torch.Generator) -> dict[str, torch.Tensor]:
        return {}

    def out_shape(self, case: Case) -> tuple[int, ...]:
        return case.shape

    def extra_steps(self, case: Case) -> tuple[list[dict], list[dict]]:
        """Probe steps before the training calls and after the gradients are read (BatchNorm, Dropout)."""
        return [], []

    # ── charmlp's side ──
    def reference_layer(self):
        raise NotImplementedError

    def reference(self, P: dict[str, torch.Tensor], call: Call, learned: dict) -> Ref:
        layer = self.reference_layer().train()
        with torch.no_grad():
            mine = dict(layer.named_parameters())
            for p in self.params:
                mine[p.ref_name].copy_(P[p.name].reshape(mine[p.ref_name].shape))
        return _autograd(layer, call.inputs, call.dout, self.grad_of)

    def rows_n(self, case: Case) -> int:
        """The rows a batch statistic or the loss's mean runs over."""
        return math.prod(case.shape[:-1])

    def forward_slips(self, P: dict, call: Call, ref: Ref) -> list[Slip]:
        return []

    def backward_clues(self, row: str, P: dict, call: Call, ref: Ref, case: Case) -> Clues:
        """The clues of a backward row: "backward (dx)" (and a cell's "backward (dh_prev)") or a parameter's name."""
        return Clues()

    def extra_rows(self, case: Case, P: dict, calls: list[Call], results: dict) -> list[tuple[str, object]]:
        """Rows a kind adds from its extra steps: (name, Row)."""
        return []


# ── linear, embedding, tanh, batchnorm1d ──────────────────────────────────────────────────────────


class Linear(Kind):
    name = "linear"
    args = (30, 20)
    params = (Param("weight", ("weight", "W"), (30, 20), layout="the lectures' layout is (fan_in, fan_out), so that out = x @ W + b"),
              Param("bias", ("bias", "b"), (20,)))
    cases = (Case("batch 32", 0, (32, 30)), Case("batch 13", 1, (13, 30)))

    def out_shape(self, case):
        return (*case.shape[:-1], 20)

    def reference_layer(self):
        return nn.Linear(*self.args)

    def forward_slips(self, P, call, ref):
        x = call.inputs["x"]
        return [Slip("bias", "the bias is not added: out = x @ W + b", x @ P["weight"])]

    def backward_clues(self, row, P, call, ref, case):
        return Clues(what={"weight": "weight", "bias": "bias"}.get(row, "x"))


class Embedding(Kind):
    name = "embedding"
    args = (27, 10)
    params = (Param("weight", ("weight", "C"), (27, 10), layout="the table is (num_embeddings, embedding_dim)"),)
    cases = (Case("ids 32×3", 0, (32, 3)), Case("ids 13×8", 1, (13, 8)))
    grad_of = ()
    backward_rows = ()

    def make_x(self, case, g):
        return torch.randint(0, 27, case.shape, generator=g)

    def out_shape(self, case):
        return (*case.shape, 10)

    def param_values(self, g):
        return {"weight": torch.randn(27, 10, generator=g)}

    def reference_layer(self):
        return nn.Embedding(*self.args)

    def backward_clues(self, row, P, call, ref, case):
        idx, dout = call.inputs["x"], call.dout
        return Clues(what="weight", shape_hint="scatter each row of dout into the row of its id: "
                     "dW.index_add_(0, idx.view(-1), dout.view(-1, embedding_dim))",
                     slips=[Slip("repeated", "an id that occurs more than once gets only one of its dout rows: dW[idx] += dout "
                                 "does not accumulate repeated indices; use dW.index_add_(0, idx.view(-1), dout.view(-1, "
                                 "embedding_dim)) (or accumulate in a loop)",
                                 test=lambda gr: repeated_index(gr, ref.dparams["weight"], idx, dout))])


class Tanh(Kind):
    name = "tanh"
    cases = (Case("batch 32", 0, (32, 20)), Case("batch 13", 1, (13, 20)))

    def make_x(self, case, g):
        return 2 * torch.randn(case.shape, generator=g)

    def reference_layer(self):
        return nn.Tanh()

    def backward_clues(self, row, P, call, ref, case):
        x, dout, out = call.inputs["x"], call.dout, ref.out
        return Clues(what="x", approx=_tanh_approx, slips=[
            Slip("tanh", "d tanh(x)/dx = 1 − tanh(x)², i.e. (1 − out**2) · dout; you have (1 − out) · dout", (1 - out) * dout),
            Slip("tanh", "1 − tanh² uses the output out = tanh(x), not x itself: (1 − out**2) · dout", (1 - x**2) * dout),
            Slip("tanh", "d tanh(x)/dx = 1 − tanh(x)², not tanh(x)²", out**2 * dout)])


def _tanh_approx(_g):
    return "rounding", ("approximate only because (1 − out**2) rounds twice; torch.addcmul(torch.ones_like(out), out, out, "
                        "value=-1) * dout gives autograd's bits. Nothing to fix")


class BatchNorm1d(Kind):
    name = "batchnorm1d"
    args = (20,)
    params = (Param("gamma", ("gamma", "weight"), (20,), "weight"), Param("beta", ("beta", "bias"), (20,), "bias"))
    cases = (Case("batch 32", 0, (32, 20)), Case("batch 13", 1, (13, 20)), Case("input 5×3×20", 2, (5, 3, 20)))
    output_row = "training output"
    n_in_factor = True

    def param_values(self, g):
        return {"gamma": 1 + 0.3 * torch.randn(20, generator=g), "beta": 0.3 * torch.randn(20, generator=g)}

    def make_x(self, case, g):  # columns of different scales and means
        return torch.randn(case.shape, generator=g) * (1 + 2 * torch.rand(20, generator=g)) + 3 * torch.randn(20, generator=g)

    def reference_layer(self):
        return nn.BatchNorm1d(*self.args)

    def extra_steps(self, case):
        stats = {"op": "read", "attrs": [["running_mean"], ["running_var"]]}
        return ([{**stats, "as": "stats0"}],
                [{**stats, "as": "stats1"}, {"op": "eval"}, {"op": "call", "args": ["x2"], "as": "eval_out"},
                 {**stats, "as": "stats2"}])

    def extra_inputs(self, case, g):
        return {"x2": torch.randn(case.shape, generator=g) * 2 + 1}

    @staticmethod
    def _stats(x):
        x2 = x.reshape(-1, x.shape[-1])
        return x2.mean(0), x2.var(0), x2.var(0, unbiased=False)

    def forward_slips(self, P, call, ref):
        G, B, x = P["gamma"], P["beta"], call.inputs["x"]
        mean, var, bvar = self._stats(x)
        std = (var + EPS).sqrt()
        out = [Slip("precedence", "the output's batch mean is not β: did you write x − mean/std instead of (x − mean)/std?",
                    G * (x - mean / std) + B),
               Slip("biased", "biased variance (1/n): the lectures' BatchNorm uses x.var(0), with Bessel's 1/(n − 1)",
                    G * (x - mean) / (bvar + EPS).sqrt() + B),
               Slip("sqrt", "divided by the variance, not by its square root", G * (x - mean) / (var + EPS) + B),
               Slip("gamma-beta", "γ and β not applied: out = gamma * xhat + beta", (x - mean) / std)]
        if x.dim() == 3:  # statistics over B only, per position
            out.append(Slip("dims", "for a (B, T, C) input the statistics run over B and T (dims (0, 1)), every position of "
                                    "every row, as the lectures' WaveNet fix: not over dim 0 alone",
                            G * (x - x.mean(0)) / (x.var(0) + EPS).sqrt() + B))
        return out

    def backward_clues(self, row, P, call, ref, case):
        x, dy = call.inputs["x"], call.dout
        n = self.rows_n(case)
        if row in ("gamma", "beta"):
            return Clues(what=row, n=n, shape_hint="for a (B, T, C) input, over B and T: .sum((0, 1))" if x.dim() == 3 else "")
        x2, d2 = x.reshape(-1, 20), dy.reshape(-1, 20)
        mean, var, _ = self._stats(x)
        rstd = (var + EPS).rsqrt()
        xhat, k = (x2 - mean) * rstd, P["gamma"] * rstd
        parts = norm_parts(k * d2, (-k * d2.mean(0)).expand_as(d2), -k * xhat * (d2 * xhat).sum(0) / (n - 1), "batch")
        slips = []
        if x.dim() == 3:
            with torch.enable_grad():
                xr = x.clone().requires_grad_(True)
                y = P["gamma"] * (xr - xr.mean(0)) / (xr.var(0) + EPS).sqrt() + P["beta"]
                (per_t,) = torch.autograd.grad(y, xr, dy)
            slips.append(Slip("dims", "the backward's statistics must run over B and T (dims (0, 1)), as the forward's: "
                                      "n is B·T rows, not B", per_t))
        return Clues(what="x", n=n, parts=[Part(p.what, p.value.reshape(x.shape), p.only, p.missing) for p in parts],
                     slips=slips)

    def extra_rows(self, case, P, calls, results):
        from .diagnose import diagnose

        x, x2 = calls[0].inputs["x"], calls[0].extra["x2"]
        G, B = P["gamma"], P["beta"]
        stats0, stats1, stats2 = (results.get(k) for k in ("stats0", "stats1", "stats2"))
        if not isinstance(stats0, tuple | list) or any(s is None for s in stats0):
            return [("running buffers", _wrong("running buffers", "no running_mean / running_var attributes", "buffers"))]
        rm0, rv0 = (s.reshape(-1).float() for s in stats0)
        mean, var, bvar = self._stats(x)
        rows = []
        if not isinstance(stats1, tuple | list) or any(s is None for s in stats1):
            return rows
        if any(s.numel() != 20 for s in stats1):
            bad = Row("running_mean", "wrong shape", (20,), tuple(stats1[0].shape), diagnosis="the running statistics keep "
                      "the shape (C,) = (20,): for a (B, T, C) input take the batch's mean and variance over dims (0, 1)",
                      kind="dims")
            return [("running_mean", bad), ("running_var", Row(**{**bad.__dict__, "name": "running_var",
                                                                  "got_shape": tuple(stats1[1].shape)}))]
        rm, rv = (s.reshape(-1).float() for s in stats1)
        m = MOMENTUM
        rows.append(("running_mean", diagnose("running_mean", rm, (1 - m) * rm0 + m * mean, Clues(slips=[
            Slip("not-updated", "running_mean not updated in training mode", rm0),
            Slip("momentum", "momentum applied the wrong way round: running = (1 − momentum)·running + momentum·batch",
                 m * rm0 + (1 - m) * mean)]))))
        rows.append(("running_var", diagnose("running_var", rv, (1 - m) * rv0 + m * var, Clues(slips=[
            Slip("not-updated", "running_var not updated in training mode", rv0),
            Slip("momentum", "momentum applied the wrong way round: running = (1 − momentum)·running + momentum·batch",
                 m * rv0 + (1 - m) * var),
            Slip("biased", "biased batch variance (1/n) in running_var: use x.var(0), with Bessel's 1/(n − 1)",
                 (1 - m) * rv0 + m * bvar)]))))
        # eval: the running statistics (the learner's own, so one mistake is not counted twice), no update
        out2 = results.get("eval_out")
        if isinstance(out2, Raised):
            return rows + [("eval output", out2.row("eval output"))]
        want2 = G * (x2 - rm) / (rv + EPS).sqrt() + B
        m2, v2, _ = self._stats(x2)
        rows.append(("eval output", diagnose("eval output", out2, want2, Clues(
            missing="your forward returned None", slips=[
                Slip("eval-batch", "in eval mode the output must use the running statistics, not the batch's",
                     G * (x2 - m2) / (v2 + EPS).sqrt() + B),
                Slip("precedence", "did you write x − mean/std instead of (x − mean)/std?", G * (x2 - rm / (rv + EPS).sqrt()) + B)]))))
        if isinstance(stats2, tuple | list) and all(s is not None for s in stats2):
            moved = not (torch.equal(stats2[0].reshape(-1).float(), rm) and torch.equal(stats2[1].reshape(-1).float(), rv))
            rows.append(("eval leaves running stats", _wrong("eval leaves running stats", "running statistics updated in "
                         "eval mode: update them only when self.training", "eval-update") if moved else
                         _exact("eval leaves running stats")))
        return rows


def _wrong(name: str, diagnosis: str, kind: str) -> Row:
    return Row(name, "wrong", diagnosis=diagnosis, kind=kind)


def _exact(name: str) -> Row:
    return Row(name, "exact")


KINDS_IN_ORDER: tuple[type[Kind], ...] = (Linear, Embedding, Tanh, BatchNorm1d)
