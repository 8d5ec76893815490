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

from .. import nn
from ..verdict import Row
from .diagnose import Clues, Part, Slip, norm_parts, repeated_index, sum_of
from .diagnose import diagnose as engine

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

    def forward_variants(self, P: dict, call: Call) -> list[tuple[str, str, object]]:
        """The forward's known mistakes as functions: (kind, sentence, fn(inputs, P) -> the output it gives).
        Each gives a slip of the output row, and — differentiated by autograd — the backward that is right
        for that wrong forward, so that a backward consistent with it is said to follow from it."""
        return []

    def forward_slips(self, P: dict, call: Call, ref: Ref) -> list[Slip]:
        """Slips of the output row that are not a differentiable forward (tests, values)."""
        return []

    def forward_clues(self, P: dict, call: Call, ref: Ref) -> Clues:
        """The clues of the output row: the forward's variants and slips."""
        return Clues(slips=[Slip(k, m, fn(call.inputs, P)) for k, m, fn in self.forward_variants(P, call)]
                     + self.forward_slips(P, call, ref))

    def backward_clues(self, row: str, P: dict, call: Call, ref: Ref, case: Case) -> Clues:
        """The clues of a backward row: "backward (dx)" (and a cell's "backward (dh_prev)") or a parameter's name."""
        return Clues()

    def param_clues(self, name: str, P: dict, calls: list[Call], refs: list[Ref], case: Case) -> Clues:
        """The clues of a parameter's .grad row (summed over the calls of a sequence)."""
        return self.backward_clues(name, P, calls[0], refs[0], case)

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

    def forward_variants(self, P, call):
        return [("bias", "the bias is not added: out = x @ W + b", lambda i, p: i["x"] @ p["weight"])]

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
            Slip("tanh", "d tanh(x)/dx = 1 − tanh(x)², not tanh(x)²", out**2 * dout),
            Slip("tanh", "1 − tanh(out)² applies tanh twice: out is tanh(x) already, so dx = (1 − out**2) · dout",
                 (1 - torch.tanh(out) ** 2) * dout)])


def _tanh_approx(_g):
    return "rounding", ("approximate only because (1 − out**2) rounds twice; torch.addcmul(torch.ones_like(out), out, out, "
                        "value=-1) * dout gives autograd's bits. Nothing to fix")


class BatchNorm1d(Kind):
    name = "batchnorm1d"
    args = (20,)
    params = (Param("gamma", ("gamma", "weight"), (20,), "weight"), Param("beta", ("beta", "bias"), (20,), "bias"))
    cases = (Case("batch 32", 0, (32, 20)), Case("batch 13", 1, (13, 20)), Case("input 5×3×20", 2, (5, 3, 20)))
    output_row = "training output"

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

    def forward_variants(self, P, call):
        def stats(x):
            mean, var, bvar = self._stats(x)
            return mean, var, bvar, (var + EPS).sqrt()

        def precedence(i, p):
            mean, _, _, std = stats(i["x"])
            return p["gamma"] * (i["x"] - mean / std) + p["beta"]

        def biased(i, p):
            mean, _, bvar, _ = stats(i["x"])
            return p["gamma"] * (i["x"] - mean) / (bvar + EPS).sqrt() + p["beta"]

        def no_sqrt(i, p):
            mean, var, _, _ = stats(i["x"])
            return p["gamma"] * (i["x"] - mean) / (var + EPS) + p["beta"]

        def plain(i, p):
            mean, _, _, std = stats(i["x"])
            return (i["x"] - mean) / std + 0 * p["gamma"]

        out = [("precedence", "the output's batch mean is not β: did you write x − mean/std instead of (x − mean)/std?", precedence),
               ("biased", "biased variance (1/n): the lectures' BatchNorm uses x.var(0), with Bessel's 1/(n − 1)", biased),
               ("sqrt", "divided by the variance, not by its square root", no_sqrt),
               ("gamma-beta", "γ and β not applied: out = gamma * xhat + beta", plain)]
        if call.inputs["x"].dim() == 3:  # statistics over B only, per position
            out.append(("dims", "for a (B, T, C) input the statistics run over B and T (dims (0, 1)), every position of "
                                "every row, as the lectures' WaveNet fix: not over dim 0 alone",
                        lambda i, p: p["gamma"] * (i["x"] - i["x"].mean(0)) / (i["x"].var(0) + EPS).sqrt() + p["beta"]))
        return out

    def backward_clues(self, row, P, call, ref, case):
        x, dy = call.inputs["x"], call.dout
        n = self.rows_n(case)
        x2, d2 = x.reshape(-1, 20), dy.reshape(-1, 20)
        mean, var, _ = self._stats(x)
        rstd = (var + EPS).rsqrt()
        xhat, k = (x2 - mean) * rstd, P["gamma"] * rstd
        if row in ("gamma", "beta"):
            return Clues(what=row, n=n, shape_hint="for a (B, T, C) input, over B and T: .sum((0, 1))" if x.dim() == 3 else "",
                         slips=_affine_swapped(row, (d2 * xhat).sum(0), d2.sum(0)))
        parts = norm_parts(k * d2, (-k * d2.mean(0)).expand_as(d2), -k * xhat * (d2 * xhat).sum(0) / (n - 1), "batch")
        g1 = rstd / n * (n * d2 - d2.sum(0) - n / (n - 1) * xhat * (d2 * xhat).sum(0))  # γ = 1
        slips = []
        if x.dim() == 3:
            with torch.enable_grad():
                xr = x.clone().requires_grad_(True)
                y = P["gamma"] * (xr - xr.mean(0)) / (xr.var(0) + EPS).sqrt() + P["beta"]
                (per_t,) = torch.autograd.grad(y, xr, dy)
            slips.append(Slip("dims", "the backward's statistics must run over B and T (dims (0, 1)), as the forward's: "
                                      "n is B·T rows, not B", per_t))
        slips.append(Slip("gamma", "the backward forgets γ: the gradient reaching x̂ is γ·dout (out = γ·x̂ + β)",
                          g1.reshape(x.shape)))
        return Clues(what="x", n=n, parts=[Part(p.what, p.value.reshape(x.shape), p.only, p.missing) for p in parts],
                     slips=slips)

    def extra_rows(self, case, P, calls, results):
        x, x2 = calls[0].inputs["x"], calls[0].extra["x2"]
        G, B = P["gamma"], P["beta"]
        stats0, stats1, stats2 = (results.get(k) for k in ("stats0", "stats1", "stats2"))
        if not isinstance(stats0, tuple | list) or any(s is None for s in stats0):
            return [("running buffers", _wrong("running buffers", "no running_mean / running_var attributes", "buffers"))]
        rm0, rv0 = (s.reshape(-1).float() for s in stats0)
        mean, var, bvar = self._stats(x)
        rows = []
        if results.get("out0") is None:  # the forward is not written yet: nor are its statistics
            return [(name, Row(name, "missing")) for name in ("running_mean", "running_var")]
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
        rows.append(("running_mean", engine("running_mean", rm, (1 - m) * rm0 + m * mean, Clues(slips=[
            Slip("not-updated", "running_mean not updated in training mode", rm0),
            Slip("momentum", "momentum applied the wrong way round: running = (1 − momentum)·running + momentum·batch",
                 m * rm0 + (1 - m) * mean)]))))
        rows.append(("running_var", engine("running_var", rv, (1 - m) * rv0 + m * var, Clues(slips=[
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
        rows.append(("eval output", engine("eval output", out2, want2, Clues(
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


def _affine_swapped(row: str, dgamma: torch.Tensor, dbeta: torch.Tensor) -> list[Slip]:
    """out = γ·x̂ + β: dγ = Σ dout·x̂, dβ = Σ dout — the one given for the other."""
    if row == "gamma":
        return [Slip("swapped", "this is dβ = Σ dout; dγ = Σ dout·x̂ (out = γ·x̂ + β)", dbeta)]
    return [Slip("swapped", "this is dγ = Σ dout·x̂; dβ = Σ dout (out = γ·x̂ + β)", dgamma)]


def _wrong(name: str, diagnosis: str, kind: str) -> Row:
    return Row(name, "wrong", diagnosis=diagnosis, kind=kind)


def _exact(name: str) -> Row:
    return Row(name, "exact")


# ── flatten_consecutive, layernorm, gelu, dropout, cross_entropy ──────────────────────────────────


class FlattenConsecutive(Kind):
    name = "flatten_consecutive"
    args = (2,)
    cases = (Case("input 32×8×10", 0, (32, 8, 10)), Case("input 13×6×10", 1, (13, 6, 10)), Case("input 7×2×10", 2, (7, 2, 10)))

    def out_shape(self, case):
        B, T, C = case.shape
        return (B, C * 2) if T == 2 else (B, T // 2, C * 2)

    def reference_layer(self):
        return nn.FlattenConsecutive(*self.args)

    def forward_slips(self, P, call, ref):
        x = call.inputs["x"]
        B, T, C = x.shape
        wrong = x.transpose(1, 2).reshape(B, T // 2, 2 * C)
        return [Slip("order", "the entries are in the wrong order: out[b, t] is x[b, 2t] followed by x[b, 2t + 1], which "
                              "x.view(B, T // n, n * C) gives without any transpose", wrong.squeeze(1) if T == 2 else wrong)]

    def forward_clues(self, P, call, ref):
        return Clues(slips=self.forward_slips(P, call, ref), shape_kind="squeeze", shape_hint="a length-1 time dimension is "
                     "dropped, (B, 1, n·C) → (B, n·C), as charmlp's FlattenConsecutive does: x.squeeze(1) when T == n")

    def backward_clues(self, row, P, call, ref, case):
        return Clues(what="x", shape_hint="a reshape's backward is dout viewed back in the input's shape: "
                     "dout.view(x.shape)")


class LayerNorm(Kind):
    name = "layernorm"
    args = (20,)
    params = (Param("gamma", ("gamma", "weight"), (20,), "weight"), Param("beta", ("beta", "bias"), (20,), "bias"))
    cases = (Case("batch 32", 0, (32, 20)), Case("input 13×5×20", 1, (13, 5, 20)))

    def param_values(self, g):
        return {"gamma": 1 + 0.3 * torch.randn(20, generator=g), "beta": 0.3 * torch.randn(20, generator=g)}

    def make_x(self, case, g):
        return torch.randn(case.shape, generator=g) * 2 + 1

    def reference_layer(self):
        return nn.LayerNorm(*self.args)

    def forward_variants(self, P, call):
        def norm(x, var, dims=-1):
            return (x - x.mean(dims, keepdim=True)) / (var + EPS).sqrt()

        return [("unbiased", "LayerNorm's variance is the biased one, 1/C: x.var(-1, keepdim=True, unbiased=False)",
                 lambda i, p: p["gamma"] * norm(i["x"], i["x"].var(-1, keepdim=True)) + p["beta"]),
                ("dims", "LayerNorm normalises each row over its last dimension (the features), not over the batch",
                 lambda i, p: p["gamma"] * norm(i["x"], i["x"].var(0, keepdim=True, unbiased=False), 0) + p["beta"]),
                ("gamma-beta", "γ and β not applied: out = gamma * xhat + beta",
                 lambda i, p: norm(i["x"], i["x"].var(-1, keepdim=True, unbiased=False)) + 0 * p["gamma"])]

    def backward_clues(self, row, P, call, ref, case):
        x, dy = call.inputs["x"], call.dout
        C = x.shape[-1]
        mean = x.mean(-1, keepdim=True)
        rstd = (x.var(-1, keepdim=True, unbiased=False) + EPS).rsqrt()
        xhat, dxhat = (x - mean) * rstd, P["gamma"] * dy
        if row in ("gamma", "beta"):
            d2, xh2 = dy.reshape(-1, C), xhat.reshape(-1, C)
            return Clues(what=row, shape_hint="sum over every row, B and T: .sum((0, 1))" if x.dim() == 3 else "",
                         slips=_affine_swapped(row, (d2 * xh2).sum(0), d2.sum(0)))
        direct, mean_t = rstd * dxhat, -rstd * dxhat.mean(-1, keepdim=True).expand_as(dxhat)
        var_t = -rstd * xhat * (dxhat * xhat).mean(-1, keepdim=True)
        return Clues(what="x", parts=norm_parts(direct, mean_t, var_t, "row's"), slips=[
            Slip("unbiased", "LayerNorm's variance is the biased one (1/C): no Bessel's C/(C − 1) in its backward",
                 direct + mean_t + var_t * C / (C - 1)),
            Slip("dims", "LayerNorm's statistics are per row, over the last dimension: its backward's means are too "
                         "(.mean(-1, keepdim=True)), not over the batch",
                 rstd * (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).mean(0))),
            Slip("gamma", "the backward forgets γ: the gradient reaching x̂ is γ·dout (out = γ·x̂ + β)",
                 rstd * (dy - dy.mean(-1, keepdim=True) - xhat * (dy * xhat).mean(-1, keepdim=True)))])


SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


class GELU(Kind):
    name = "gelu"
    cases = (Case("batch 32", 0, (32, 20)), Case("batch 13", 1, (13, 20)))

    def make_x(self, case, g):
        return 1.5 * torch.randn(case.shape, generator=g)

    def reference_layer(self):
        layer = nn.GELU()
        layer.fused = False  # the tensor operations (autograd differentiates charmlp's own forward either way)
        return layer

    def forward_variants(self, P, call):
        return [("tanh-approx", "this is GELU's tanh approximation (GPT-2's); charmlp's GELU is the exact one, x·Φ(x) with "
                                "Φ(x) = ½(1 + erf(x/√2)), torch.nn.functional.gelu's default", lambda i, p: _gelu_tanh(i["x"])),
                ("cdf", "x·Φ(x) with Φ(x) = ½(1 + erf(x/√2)): the erf's argument is x/√2, not x",
                 lambda i, p: i["x"] * 0.5 * (1 + torch.erf(i["x"])))]

    def backward_clues(self, row, P, call, ref, case):
        x, dy = call.inputs["x"], call.dout
        cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
        with torch.enable_grad():
            xr = x.clone().requires_grad_(True)
            (approx,) = torch.autograd.grad(_gelu_tanh(xr), xr, dy)
        return Clues(what="x", parts=[
            Part("Φ(x)·dout", dy * cdf, only="only Φ(x)·dout: GELU = x·Φ(x) is a product, so its derivative has a second term "
                 "x·φ(x), φ(x) = exp(−x²/2)/√(2π)"),
            Part("x·φ(x)·dout", dy * x * pdf, only="only x·φ(x)·dout: the product rule's other term, Φ(x)·dout, is missing")],
            slips=[Slip("tanh-approx", "the derivative of GELU's tanh approximation; charmlp's GELU is the exact x·Φ(x): "
                                       "dx = dout·(Φ(x) + x·φ(x))", approx)])


class Dropout(Kind):
    name = "dropout"
    args = (0.2,)
    cases = (Case("batch 32", 0, (32, 20)), Case("batch 13", 1, (13, 20)))
    output_row = "training output"

    def make_x(self, case, g):  # no entry near 0, so out / x reads the mask back
        x = torch.randn(case.shape, generator=g)
        return x + 0.5 * x.sign()

    def extra_steps(self, case):
        return [], [{"op": "eval"}, {"op": "call", "args": ["x"], "as": "eval_out"}]

    def extra_inputs(self, case, g):
        return {}

    @staticmethod
    def mask(learned: dict, x: torch.Tensor, p: float) -> torch.Tensor:
        """The mask the learner's forward drew, read back from its output: kept where out ≠ 0, scaled 1/(1 − p)."""
        out = learned.get("out0")
        kept = (out != 0) if isinstance(out, torch.Tensor) and out.shape == x.shape else torch.ones_like(x, dtype=torch.bool)
        return kept.to(x.dtype) / (1 - p)

    def reference(self, P, call, learned):
        x, p = call.inputs["x"], self.args[0]
        m = self.mask(learned, x, p)
        return Ref(x * m, {"x": call.dout * m})

    def forward_slips(self, P, call, ref):
        x = call.inputs["x"]
        kept = ref.out != 0
        return [Slip("unscaled", "the kept entries are not scaled: inverted dropout divides them by 1 − p, so that E[out] = x",
                     x * kept),
                Slip("mask", "out = x · mask where each entry is kept (×1/(1 − p)) or dropped (0): some entries are neither",
                     test=lambda g: True)]

    def backward_clues(self, row, P, call, ref, case):
        dy = call.dout
        m = ref.dinputs["x"] / dy
        kept = (m != 0)

        def other_mask(g):
            return bool(((g != 0) != kept).float().mean() > 0.05)

        return Clues(what="x", slips=[
            Slip("mask", "the mask is missing: dx = dout · mask, with the mask the forward drew", dy),
            Slip("mask", "dx = dout · mask with the mask the forward drew (keep it, e.g. self.mask): this is another mask",
                 test=other_mask),
            Slip("unscaled", "the forward scales the kept entries by 1/(1 − p), so the backward does too: dx = dout · mask "
                             "/ (1 − p)", dy * kept)])

    def extra_rows(self, case, P, calls, results):

        x, p = calls[0].inputs["x"], self.args[0]
        rows = []
        train = results.get("out0")
        if isinstance(train, torch.Tensor) and train.shape == x.shape:  # the rate the forward drops at
            frac, sd = (train == 0).float().mean().item(), math.sqrt(p * (1 - p) / x.numel())
            if abs(frac - p) <= 5 * sd:
                rows.append(("drop rate", Row("drop rate", "exact", diagnosis=f"{frac:.0%} of the entries dropped (p = {p})")))
            else:
                flip = abs(frac - (1 - p)) <= 5 * sd
                rows.append(("drop rate", Row("drop rate", "wrong", kind="rate", diagnosis=(
                    f"drops {frac:.0%} of the entries, about 1 − p: p is the probability to drop, keep = torch.rand(x.shape) >= p"
                    if flip else f"drops {frac:.0%} of the entries where p = {p} drops about {p:.0%}"))))
        out = results.get("eval_out")
        if isinstance(out, Raised):
            return rows + [("eval output", out.row("eval output"))]
        return rows + self._eval_row(out, x)

    def _eval_row(self, out, x):
        return [("eval output", engine("eval output", out, x, Clues(missing="your forward returned None in eval mode", slips=[
            Slip("eval", "in eval mode dropout is the identity: out = x (if not self.training: return x)", test=lambda g: True)])))]


class CrossEntropy(Kind):
    name = "cross_entropy"
    inputs = ("logits", "targets")
    grad_of = ("logits",)
    backward_rows = ("backward (dlogits)",)
    output_row = "loss"
    cases = (Case("batch 32", 0, (32, 27)), Case("batch 13, large logits", 1, (13, 27)))

    def calls(self, case, g):
        logits = torch.randn(case.shape, generator=g) * (40.0 if "large" in case.label else 2.0)
        targets = torch.randint(0, case.shape[1], (case.shape[0],), generator=g)
        return [Call({"logits": logits, "targets": targets}, torch.ones(()))]

    def reference(self, P, call, learned):
        with torch.enable_grad():
            logits = call.inputs["logits"].clone().requires_grad_(True)
            loss = nn.cross_entropy(logits, call.inputs["targets"])
            (d,) = torch.autograd.grad(loss, logits)
        return Ref(loss.detach(), {"logits": d})

    def forward_slips(self, P, call, ref):
        n = len(call.inputs["targets"])
        return [Slip("overflow", "exp of a large logit overflows: subtract each row's max first "
                                 "(logits - logits.max(1, keepdim=True).values), which does not change the softmax",
                     test=lambda g: not torch.isfinite(g).all()),
                Slip("factor", f"the sum over the batch, n = {n} times the mean: the loss is the mean over the rows",
                     ref.out * n)]

    def backward_clues(self, row, P, call, ref, case):
        logits, t = call.inputs["logits"], call.inputs["targets"]
        n = len(t)
        soft = torch.softmax(logits, 1)
        return Clues(what="logits", n=n, slips=[
            Slip("overflow", "exp of a large logit overflows: subtract each row's max before exp (softmax does not change)",
                 test=lambda g: not torch.isfinite(g).all()),
            Slip("onehot", "forgot to subtract 1 at the target: dlogits = (softmax(logits) − onehot(targets)) / n", soft / n)])



# ── rnn_cell, gru_cell, causal_self_attention ───────────────────────────────────────────────────────


class _Cell(Kind):
    """One step of a recurrent cell, h' = layer(x, h), backward(dh') -> (dx, dh). The second case runs
    three steps the way backprop through time does — each step's forward, then its backward, last step
    first — so the weights' .grad must add up over the steps."""

    args = (10, 16)
    inputs = ("x", "h")
    grad_of = ("x", "h")
    backward_rows = ("backward (dx)", "backward (dh_prev)")
    cases = (Case("batch 32, 1 step", 0, (32, 10)), Case("batch 13, 3 steps", 1, (13, 10), steps=3))

    def param_values(self, g):
        return {p.name: 0.4 * torch.randn(p.shape, generator=g) for p in self.params}

    def calls(self, case, g):
        B, E = case.shape
        H = self.args[1]
        steps = [Call({"x": torch.randn(B, E, generator=g), "h": torch.tanh(torch.randn(B, H, generator=g))},
                      torch.randn(B, H, generator=g)) for _ in range(case.steps)]
        return steps[::-1]  # the last time step's call first, as backprop through time runs

    def reference_layer(self):
        return self.ref_cls(*self.args)

    def manual(self, P: dict, call: Call, **slip) -> dict[str, torch.Tensor]:
        """The step's gradients written out (x, h and every parameter), with a known slip switched on."""
        raise NotImplementedError

    def slip_grads(self) -> list[tuple[str, str, dict]]:
        """(kind, sentence, the `manual` switches) of this cell's known backward slips."""
        return []

    def backward_clues(self, row, P, call, ref, case):
        key = {"backward (dx)": "x", "backward (dh_prev)": "h"}.get(row, row)
        slips = [Slip(k, m, self.manual(P, call, **sw)[key]) for k, m, sw in self.slip_grads()]
        return Clues(what=key, parts=self.parts(row, P, call), slips=slips)

    def parts(self, row, P, call) -> list[Part]:
        return []

    def param_clues(self, name, P, calls, refs, case):
        return Clues(what=name, slips=[Slip(k, m, sum_of(self.manual(P, c, **sw)[name] for c in calls))
                                       for k, m, sw in self.slip_grads()])


class RNNCell(_Cell):
    name = "rnn_cell"
    ref_cls = nn.RNNCell
    params = (Param("Wx", ("Wx",), (10, 16), layout="Wx is (input_size, hidden_size): a = x @ Wx + h @ Wh + b"),
              Param("Wh", ("Wh",), (16, 16)), Param("b", ("b",), (16,)))

    def forward_variants(self, P, call):
        return [("tanh", "h' = tanh(x @ Wx + h @ Wh + b): the tanh is missing",
                 lambda i, p: i["x"] @ p["Wx"] + i["h"] @ p["Wh"] + p["b"]),
                ("transposed", "h @ Wh, not h @ Wh.T: charmlp's weights are (fan_in, fan_out)",
                 lambda i, p: torch.tanh(i["x"] @ p["Wx"] + i["h"] @ p["Wh"].T + p["b"]))]

    def manual(self, P, call, tanh_slip=False, untransposed=False):
        x, h, d = call.inputs["x"], call.inputs["h"], call.dout
        hn = torch.tanh(x @ P["Wx"] + h @ P["Wh"] + P["b"])
        da = ((1 - hn) if tanh_slip else (1 - hn**2)) * d
        return {"x": da @ P["Wx"].T, "h": da @ (P["Wh"] if untransposed else P["Wh"].T), "Wx": x.T @ da, "Wh": h.T @ da,
                "b": da.sum(0)}

    def slip_grads(self):
        return [("tanh", "d tanh(a)/da = 1 − tanh(a)², i.e. (1 − h'**2) · dh'; you have (1 − h') · dh'", {"tanh_slip": True}),
                ("transposed", "dh = da @ Wh.T (a = … + h @ Wh), not da @ Wh", {"untransposed": True})]


class GRUCell(_Cell):
    name = "gru_cell"
    ref_cls = nn.GRUCell
    params = (Param("Wx", ("Wx",), (10, 48), layout="Wx is (input_size, 3·hidden): the z, r and c blocks side by side"),
              Param("Wh", ("Wh",), (16, 32), layout="Wh is (hidden, 2·hidden): the z and r blocks"),
              Param("Wc", ("Wc",), (16, 16)), Param("b", ("b",), (48,)))

    @staticmethod
    def _gates(P, x, h):
        H = 16
        zr = torch.sigmoid(x @ P["Wx"][:, : 2 * H] + h @ P["Wh"] + P["b"][: 2 * H])
        z, r = zr[:, :H], zr[:, H:]
        c = torch.tanh(x @ P["Wx"][:, 2 * H :] + (r * h) @ P["Wc"] + P["b"][2 * H :])
        return z, r, c

    def forward_variants(self, P, call):
        def torch_convention(i, p):
            z, _, c = self._gates(p, i["x"], i["h"])
            return z * i["h"] + (1 - z) * c

        return [("convention", "charmlp's GRU (makemore's) is h' = (1 − z)·h + z·c; you have PyTorch's z·h + (1 − z)·c",
                 torch_convention)]

    def manual(self, P, call, tanh_slip=False, sigmoid_z=False, sigmoid_r=False):
        x, h, d = call.inputs["x"], call.inputs["h"], call.dout
        z, r, c = self._gates(P, x, h)
        da_c = ((1 - c) if tanh_slip else (1 - c**2)) * d * z
        drh = da_c @ P["Wc"].T
        da_z, da_r = (c - h) * d * (z if sigmoid_z else z * (1 - z)), drh * h * (r if sigmoid_r else r * (1 - r))
        dxp = torch.cat([da_z, da_r, da_c], 1)
        dh = d * (1 - z) + drh * r + dxp[:, :32] @ P["Wh"].T
        return {"x": dxp @ P["Wx"].T, "h": dh, "Wx": x.T @ dxp, "Wh": h.T @ dxp[:, :32], "Wc": (r * h).T @ da_c,
                "b": dxp.sum(0)}

    def slip_grads(self):
        return [("tanh", "the candidate's d tanh(a)/da = 1 − c², i.e. (1 − c**2); you have (1 − c)", {"tanh_slip": True}),
                ("sigmoid", "d σ(a)/da = σ(a)·(1 − σ(a)): the update gate's is z·(1 − z), not z", {"sigmoid_z": True}),
                ("sigmoid", "d σ(a)/da = σ(a)·(1 − σ(a)): the reset gate's is r·(1 − r), not r", {"sigmoid_r": True}),
                ("sigmoid", "d σ(a)/da = σ(a)·(1 − σ(a)): z·(1 − z) and r·(1 − r), not z and r",
                 {"sigmoid_z": True, "sigmoid_r": True})]

    def _dh_parts(self, P, x, h, d):
        z, r, c = self._gates(P, x, h)
        da_c = (1 - c**2) * d * z
        drh = da_c @ P["Wc"].T
        da_zr = torch.cat([(c - h) * d * z * (1 - z), drh * h * r * (1 - r)], 1)
        return {"direct": d * (1 - z), "rh": drh * r, "gates": da_zr @ P["Wh"].T}

    def parts(self, row, P, call):
        if row != "backward (dh_prev)":
            return []
        p = self._dh_parts(P, call.inputs["x"], call.inputs["h"], call.dout)
        return [Part("the direct path dh'·(1 − z)", p["direct"],
                     only="only the direct path dh'·(1 − z): h also feeds the gates z and r (through Wh) and the candidate "
                          "(through r·h and Wc), and dh is the sum of all three paths"),
                Part("the path through r·h (the candidate)", p["rh"],
                     missing="the path through the candidate is missing: c uses r·h, so dh gets d(r·h)·r"),
                Part("the path through the gates (h @ Wh)", p["gates"],
                     missing="the path through the gates is missing: z and r use h @ Wh, so dh gets [da_z, da_r] @ Wh.T")]


class CausalSelfAttention(Kind):
    name = "causal_self_attention"
    args = (24, 2)
    params = (Param("qkv.weight", ("qkv.weight", "c_attn.weight", "attn.weight"), (24, 72), "qkv.weight",
                    layout="qkv.weight is (n_embd, 3·n_embd): the q, k and v blocks side by side, each n_head heads"),
              Param("qkv.bias", ("qkv.bias", "c_attn.bias", "attn.bias"), (72,), "qkv.bias"),
              Param("proj.weight", ("proj.weight", "c_proj.weight"), (24, 24), "proj.weight"),
              Param("proj.bias", ("proj.bias", "c_proj.bias"), (24,), "proj.bias"))
    cases = (Case("input 32×5×24", 0, (32, 5, 24)), Case("input 13×7×24", 1, (13, 7, 24)))

    def param_values(self, g):
        return {p.name: 0.3 * torch.randn(p.shape, generator=g) for p in self.params}

    def reference_layer(self):
        return nn.CausalSelfAttention(*self.args)

    def attend(self, P, x, scale: float | None = None, mask: bool = True):
        B, T, C = x.shape
        H = self.args[1]
        q, k, v = (x @ P["qkv.weight"] + P["qkv.bias"]).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)
        s = (q @ k.transpose(-2, -1)) * (1 / math.sqrt(C // H) if scale is None else scale)
        if mask:
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C)
        return y @ P["proj.weight"] + P["proj.bias"]

    def forward_variants(self, P, call):
        D = self.args[0] // self.args[1]
        return [("mask", "the causal mask is missing: position t must attend to positions 0..t only (scores above the "
                         "diagonal set to −inf before the softmax)", lambda i, p: self.attend(p, i["x"], mask=False)),
                ("scale", "the scores are not scaled by 1/√D (D = n_embd / n_head, the head size)",
                 lambda i, p: self.attend(p, i["x"], scale=1.0)),
                ("scale", "the scores are scaled by 1/D: the scale is 1/√D (D the head size)",
                 lambda i, p: self.attend(p, i["x"], scale=1 / D))]

    def manual(self, P, x, dout, scale_bw: bool = True, mask_bw: bool = True, jacobian: bool = True,
               dv_untransposed: bool = False) -> dict[str, torch.Tensor]:
        """The backward written out, with the 1/√D or the mask left out of it (the forward has both)."""
        B, T, C = x.shape
        H = self.args[1]
        D = C // H
        s = 1 / math.sqrt(D)
        qkv = (x @ P["qkv.weight"] + P["qkv.bias"]).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        q, k, v = qkv
        scores = (q @ k.transpose(-2, -1)) * s
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        att = torch.softmax(scores.masked_fill(future, float("-inf")), -1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        d2 = dout.reshape(-1, C)
        dproj_w, dproj_b = y.reshape(-1, C).T @ d2, d2.sum(0)
        dy = (dout @ P["proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        datt, dv = dy @ v.transpose(-2, -1), (att if dv_untransposed else att.transpose(-2, -1)) @ dy
        a = att if mask_bw else torch.softmax(scores, -1)
        dscores = a * (datt - (datt * a).sum(-1, keepdim=True)) if jacobian else a * datt
        sb = s if scale_bw else 1.0
        dq, dk = dscores @ k * sb, dscores.transpose(-2, -1) @ q * sb
        dqkv = torch.stack([dq, dk, dv]).permute(1, 3, 0, 2, 4).reshape(B, T, 3 * C)
        d3 = dqkv.reshape(-1, 3 * C)
        return {"x": dqkv @ P["qkv.weight"].T, "qkv.weight": x.reshape(-1, C).T @ d3, "qkv.bias": d3.sum(0),
                "proj.weight": dproj_w, "proj.bias": dproj_b}

    SLIPS = (("scale", "the backward leaves out the forward's 1/√D: dq = dscores @ k / √D and dk = dscoresᵀ @ q / √D",
              {"scale_bw": False}),
             ("mask", "the backward's softmax is not the masked one: use the att the forward kept (0 above the diagonal), "
                      "or mask the scores there too", {"mask_bw": False}),
             ("softmax", "the softmax's backward has two terms, dscores = att · (datt − Σ_j att·datt) (row by row): the "
                         "sum over the row is missing", {"jacobian": False}),
             ("transposed", "y = att @ v, so dv = att.transpose(-2, -1) @ dy, not att @ dy", {"dv_untransposed": True}))

    def backward_clues(self, row, P, call, ref, case):
        key = "x" if row == "backward (dx)" else row
        x, d = call.inputs["x"], call.dout
        return Clues(what=key, slips=[Slip(k, m, self.manual(P, x, d, **sw)[key]) for k, m, sw in self.SLIPS])


KINDS_IN_ORDER: tuple[type[Kind], ...] = (Linear, Embedding, Tanh, BatchNorm1d, FlattenConsecutive, LayerNorm, GELU, Dropout,
                                          CrossEntropy, RNNCell, GRUCell, CausalSelfAttention)
