"""`check_layer`: a learner's layer class (the lectures' style: `__call__`, `parameters()`, `training`,
running buffers) against charmlp's reference, on seeded inputs, in training and eval mode.

Two halves, on either side of the process boundary: `plan(kind)` builds the probes (constructor
arguments, parameter values, inputs, the calls to make), `_child.run_probes` runs them on the learner's
class and returns only raw results, and `diagnose(kind, …)` — always in charmlp's own process —
compares them with the reference and names the mistakes. `check_layer` runs all three in this process
(a notebook); `charmlp exercise check-layer` runs the middle one in the sandboxed child.
"""

from __future__ import annotations

import math

import torch

from ..errors import CharmlpError
from ..verdict import Report, Row
from ._child import run_probes

KINDS = ("batchnorm1d", "linear", "tanh", "embedding")
TOL = 1e-5  # relative to the largest entry, as the gradient checks in float32
DIM, N = 20, 32  # features and batch of the seeded inputs
MOMENTUM, EPS = 0.1, 1e-5
FAN_IN, FAN_OUT = 30, 20
VOCAB, EMBD = 27, 10


def _close(a, b, tol: float = TOL) -> bool:
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(b.shape) or not torch.isfinite(a).all():
        return False
    return (a - b).abs().max().item() <= tol * max(b.abs().max().item(), 1e-30)


def _maxdiff(a, b) -> float | None:
    if not isinstance(a, torch.Tensor) or tuple(a.shape) != tuple(b.shape):
        return None
    return (a.detach().double() - b.double()).abs().max().item()


def _row(name: str, got, want: torch.Tensor, candidates: list[tuple[str, str, torch.Tensor]] = (),
         fallback: str = "") -> Row:
    """Compare `got` with `want`; if wrong, name the first candidate mistake `got` matches."""
    if not isinstance(got, torch.Tensor):
        return Row(name, "wrong", tuple(want.shape), diagnosis=f"not a tensor: got {got!r}", kind="type")
    got = got.detach().to(want.dtype)
    if tuple(got.shape) != tuple(want.shape):
        return Row(name, "wrong shape", tuple(want.shape), tuple(got.shape),
                   diagnosis=f"expected {'×'.join(map(str, want.shape))}, got {'×'.join(map(str, got.shape))}"
                             " (keepdim=True in the mean and variance?)", kind="shape")
    md = _maxdiff(got, want)
    if torch.equal(got, want):
        return Row(name, "exact", tuple(want.shape), tuple(got.shape), md)
    if _close(got, want):
        return Row(name, "approximate", tuple(want.shape), tuple(got.shape), md)
    if not torch.isfinite(got).all():
        return Row(name, "wrong", tuple(want.shape), tuple(got.shape), math.inf, "contains NaN or inf", "nonfinite")
    for kind, msg, cand in candidates:
        if _close(got, cand, 1e-4):
            return Row(name, "wrong", tuple(want.shape), tuple(got.shape), md, msg, kind)
    return Row(name, "wrong", tuple(want.shape), tuple(got.shape), md, fallback or "wrong, and not one of the common mistakes",
               "unknown")


# ── the plan: what to run on the learner's class ────────────────────────────────────────────────────

PARAMS = {  # per kind: each parameter's attribute names, charmlp's first
    "batchnorm1d": (["gamma", "weight"], ["beta", "bias"]),
    "linear": (["weight", "W"], ["bias", "b"]),
    "tanh": (),
    "embedding": (["weight"],),
}


def plan(kind: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The probes for `kind` and the tensors they name (seeded: the same every time)."""
    g = torch.Generator().manual_seed(0)
    T: dict[str, torch.Tensor] = {}
    if kind == "batchnorm1d":
        T["gamma"] = 1 + 0.3 * torch.randn(DIM, generator=g)  # off 1 and 0, so a forgotten γ or β cannot hide
        T["beta"] = 0.3 * torch.randn(DIM, generator=g)
        T["x"] = torch.randn(N, DIM, generator=g) * (1 + 2 * torch.rand(DIM, generator=g)) + 3 * torch.randn(DIM, generator=g)
        T["x2"] = torch.randn(N, DIM, generator=g) * 2 + 1
        T["dout"] = torch.randn(N, DIM, generator=torch.Generator().manual_seed(1))
        stats = {"op": "read", "attrs": [["running_mean"], ["running_var"]]}
        steps = [{**stats, "as": "stats0"}, {"op": "train"}, {"op": "call", "args": ["x"], "as": "train_out"},
                 {**stats, "as": "stats1"}, {"op": "eval"}, {"op": "call", "args": ["x2"], "as": "eval_out"},
                 {**stats, "as": "stats2"}, {"op": "train"}, {"op": "call", "args": ["x"], "as": "again"},
                 {"op": "backward", "args": ["dout"], "as": "dx"}]
        return [{"args": [DIM], "params": PARAMS[kind], "set": ["gamma", "beta"], "steps": steps}], T
    if kind == "linear":
        T["bias"] = torch.randn(FAN_OUT, generator=g)  # off 0, so a forgotten bias shows
        T["x"] = torch.randn(N, FAN_IN, generator=g)
        T["dout"] = torch.randn(N, FAN_OUT, generator=torch.Generator().manual_seed(1))
        steps = [{"op": "train"}, {"op": "call", "args": ["x"], "as": "out"}, {"op": "backward", "args": ["dout"], "as": "dx"}]
        return [{"args": [FAN_IN, FAN_OUT], "params": PARAMS[kind], "set": [None, "bias"], "steps": steps}], T
    if kind == "tanh":
        T["x"] = 2 * torch.randn(N, DIM, generator=g)
        T["dout"] = torch.randn(N, DIM, generator=torch.Generator().manual_seed(1))
        steps = [{"op": "train"}, {"op": "call", "args": ["x"], "as": "out"}, {"op": "backward", "args": ["dout"], "as": "dx"}]
        return [{"args": [], "params": (), "steps": steps}], T
    T["idx"] = torch.randint(0, VOCAB, (N, 3), generator=g)
    return [{"args": [VOCAB, EMBD], "params": PARAMS[kind], "steps": [{"op": "call", "args": ["idx"], "as": "out"}]}], T


# ── the diagnosis: raw results against charmlp's reference ──────────────────────────────────────────


def _value(enc, R: dict):
    """The learner's value from its stand-in: a tensor, a tuple, None, or the stand-in of an error/other type."""
    if enc is None or "none" in enc:
        return None
    if "tensor" in enc:
        return R[enc["tensor"]]
    if "tuple" in enc:
        return tuple(_value(e, R) for e in enc["tuple"])
    return enc


def _raised(name: str, enc: dict) -> Row:
    e = enc["error"]
    where = f" at line {e['line']} ({e['text']})" if e.get("line") and e.get("text") else (f" at line {e['line']}" if e.get("line") else "")
    return Row(name, "wrong", diagnosis=f"raised {e['message']}{where}", kind="exception")


def _result(rec: dict, name: str, R: dict):
    """(value, None) of a step's result, or (None, the row saying it raised / did not run)."""
    enc = rec["results"].get(name)
    if enc is None:
        return None, None
    if "error" in enc:
        return None, _raised(name, enc)
    return _value(enc, R), None


def _param_values(rec: dict, R: dict) -> list:
    return [None if p is None else _value(p["value"], R) for p in rec["params"]]


def _count_row(rec: dict, want: int, names: str) -> Row:
    n = rec["n_parameters"]
    if isinstance(n, dict):
        e = n["error"]
        return Row("parameters()", "wrong", diagnosis=f"parameters() raised {e['message']}", kind="params")
    if n is None or n == want:
        return Row("parameters()", "exact")
    return Row("parameters()", "wrong", diagnosis=f"expected {names}, got {n} tensors", kind="params")


def _backward_rows(rec: dict, R: dict, want_dx: torch.Tensor | None) -> list[Row]:
    if not rec["has_backward"]:
        return [Row("backward", "skipped", diagnosis="the class has no backward(dout); nothing to check")]
    enc = rec["results"].get("dx") or rec["results"].get("again")
    if enc is not None and "error" in enc:
        return [_raised("backward", enc)]
    got, _ = _result(rec, "dx", R)
    return [_row("backward (dx)", got, want_dx, [("sign", "the sign is flipped", -want_dx)])]


def _bn_rows(rec: dict, T: dict, R: dict) -> list[Row]:
    gamma, beta = _param_values(rec, R)
    if gamma is None or beta is None:
        if rec["n_parameters"] != 2:
            return [Row("parameters()", "wrong", diagnosis=f"expected [gamma, beta], got {rec['n_parameters']} tensors",
                        kind="params")]
        return [Row("parameters()", "wrong", diagnosis="no .gamma/.weight and .beta/.bias attributes", kind="params")]
    G, B = gamma.reshape(-1), beta.reshape(-1)
    stats0, err = _result(rec, "stats0", R)
    if stats0 is None or any(s is None for s in stats0):
        return [Row("running buffers", "wrong", diagnosis="no running_mean / running_var attributes", kind="buffers")]
    rm0, rv0 = (s.reshape(-1) for s in stats0)
    x = T["x"]
    mean, var, bvar = x.mean(0), x.var(0), x.var(0, unbiased=False)
    std = (var + EPS).sqrt()
    want = G * (x - mean) / std + B
    out, err = _result(rec, "train_out", R)
    if err:
        return [Row("training output", "wrong", diagnosis=err.diagnosis, kind="exception")]
    rows = [_row("training output", out, want, [
        ("precedence", "the output's batch mean is not β: did you write x − mean/std instead of (x − mean)/std?",
         G * (x - mean / std) + B),
        ("biased", "biased variance (1/n): the lectures' BatchNorm uses x.var(0), with Bessel's 1/(n − 1)",
         G * (x - mean) / (bvar + EPS).sqrt() + B),
        ("sqrt", "divided by the variance, not by its square root", G * (x - mean) / (var + EPS) + B),
        ("gamma-beta", "γ and β not applied: out = gamma * xhat + beta", (x - mean) / std),
    ], fallback="wrong: out should be gamma·(x − mean)/√(var + eps) + beta over the batch dimension")]
    if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(want.shape) and rows[-1].kind == "unknown":
        if not torch.allclose(out.mean(0), B, atol=1e-4):
            rows[-1].diagnosis = "the output's batch mean is not β: the mean is not fully subtracted before dividing"
    stats1, _ = _result(rec, "stats1", R)
    rm, rv = (s.reshape(-1) for s in stats1)
    rows.append(_row("running_mean", rm, (1 - MOMENTUM) * rm0 + MOMENTUM * mean, [
        ("not-updated", "running_mean not updated in training mode", rm0),
        ("momentum", "momentum applied the wrong way round: running = (1 − momentum)·running + momentum·batch",
         MOMENTUM * rm0 + (1 - MOMENTUM) * mean),
    ]))
    rows.append(_row("running_var", rv, (1 - MOMENTUM) * rv0 + MOMENTUM * var, [
        ("not-updated", "running_var not updated in training mode", rv0),
        ("momentum", "momentum applied the wrong way round: running = (1 − momentum)·running + momentum·batch",
         MOMENTUM * rv0 + (1 - MOMENTUM) * var),
        ("biased", "biased batch variance (1/n) in running_var: use x.var(0), with Bessel's 1/(n − 1)",
         (1 - MOMENTUM) * rv0 + MOMENTUM * bvar),
    ]))
    # eval: the running statistics (the learner's own, so one mistake is not counted twice), no update
    x2 = T["x2"]
    out2, err = _result(rec, "eval_out", R)
    if err:
        return rows + [Row("eval output", "wrong", diagnosis=err.diagnosis, kind="exception")]
    want2 = G * (x2 - rm) / (rv + EPS).sqrt() + B
    rows.append(_row("eval output", out2, want2, [
        ("eval-batch", "in eval mode the output must use the running statistics, not the batch's",
         G * (x2 - x2.mean(0)) / (x2.var(0) + EPS).sqrt() + B),
        ("precedence", "did you write x − mean/std instead of (x − mean)/std?", G * (x2 - rm / (rv + EPS).sqrt()) + B),
    ]))
    stats2, _ = _result(rec, "stats2", R)
    moved = not (torch.equal(stats2[0].reshape(-1), rm) and torch.equal(stats2[1].reshape(-1), rv))
    rows.append(Row("eval leaves running stats", "wrong" if moved else "exact",
                    diagnosis="running statistics updated in eval mode: update them only when self.training" if moved else "",
                    kind="eval-update" if moved else ""))
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        (dx,) = torch.autograd.grad(G * (xr - xr.mean(0)) / (xr.var(0) + EPS).sqrt() + B, xr, T["dout"])
    return rows + _backward_rows(rec, R, dx)


def _linear_rows(rec: dict, T: dict, R: dict) -> list[Row]:
    W, b = _param_values(rec, R)
    rows = [_count_row(rec, 2, "[weight, bias]")]
    if W is None:
        return rows + [Row("weight", "wrong", diagnosis="no .weight attribute", kind="params")]
    if tuple(W.shape) != (FAN_IN, FAN_OUT):
        return rows + [Row("weight", "wrong shape", (FAN_IN, FAN_OUT), tuple(W.shape),
                           diagnosis="the lectures' layout is (fan_in, fan_out), so that out = x @ W + b", kind="shape")]
    x = T["x"]
    bias = b if b is not None else 0
    out, err = _result(rec, "out", R)
    rows.append(err and Row("output", "wrong", diagnosis=err.diagnosis, kind="exception")
                or _row("output", out, x @ W + bias, [("bias", "the bias is not added", x @ W)]))
    return rows + _backward_rows(rec, R, T["dout"] @ W.T)


def _tanh_rows(rec: dict, T: dict, R: dict) -> list[Row]:
    n = rec["n_parameters"]
    rows = [Row("parameters()", "exact" if not n else "wrong", diagnosis="" if not n else "tanh has no parameters: return []",
                kind="" if not n else "params")]
    x = T["x"]
    out, err = _result(rec, "out", R)
    rows.append(err and Row("output", "wrong", diagnosis=err.diagnosis, kind="exception") or _row("output", out, torch.tanh(x)))
    h = torch.tanh(x)
    return rows + _backward_rows(rec, R, torch.addcmul(torch.ones_like(h), h, h, value=-1.0) * T["dout"])


def _embedding_rows(rec: dict, T: dict, R: dict) -> list[Row]:
    (W,) = _param_values(rec, R)
    rows = [_count_row(rec, 1, "[weight]")]
    if W is None or tuple(W.shape) != (VOCAB, EMBD):
        return rows + [Row("weight", "wrong", (VOCAB, EMBD), None if W is None else tuple(W.shape),
                           diagnosis="expected .weight of shape (num_embeddings, embedding_dim)", kind="shape")]
    out, err = _result(rec, "out", R)
    return rows + [err and Row("output", "wrong", diagnosis=err.diagnosis, kind="exception") or _row("output", out, W[T["idx"]])]


def diagnose(kind: str, records: list[dict], tensors: dict[str, torch.Tensor], results: dict[str, torch.Tensor]) -> list[Row]:
    """The rows of a layer check from the probes' raw results (charmlp's process only)."""
    (rec,) = records
    if rec["error"]:
        e = rec["error"]
        raise CharmlpError(f"the class raised {e['message']} when built" + (f" (line {e['line']})" if e.get("line") else ""))
    fn = {"batchnorm1d": _bn_rows, "linear": _linear_rows, "tanh": _tanh_rows, "embedding": _embedding_rows}[kind]
    with torch.no_grad():
        return fn(rec, tensors, results)


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise CharmlpError(f"--layer must be one of {', '.join(KINDS)}, got {kind!r}")


def check_layer(cls: type, kind: str) -> Report:
    """Run the learner's layer class `cls` against charmlp's reference `kind` and diagnose the differences
    (all in this process: the notebook's way; `charmlp exercise check-layer` runs the class in a child)."""
    check_kind(kind)
    if not callable(cls):
        raise CharmlpError(f"{cls!r} is not a class")
    probes, tensors = plan(kind)
    records, results = run_probes(cls, probes, tensors)
    return Report(f"layer check: {getattr(cls, '__name__', cls)} as {kind}", diagnose(kind, records, tensors, results))
