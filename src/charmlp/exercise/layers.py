"""`check_layer`: a learner's layer class (the lectures' style: `__call__`, `parameters()`, `training`,
running buffers) against charmlp's reference, on seeded inputs, in training and eval mode."""

from __future__ import annotations

import copy
import math

import torch

from ..errors import CharmlpError
from .report import Report, Row

KINDS = ("batchnorm1d", "linear", "tanh", "embedding")
TOL = 1e-5  # relative to the largest entry, as the gradient checks in float32
DIM, N = 20, 32  # features and batch of the seeded inputs
MOMENTUM, EPS = 0.1, 1e-5


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
        return Row(name, "wrong", tuple(want.shape), diagnosis=f"not a tensor: got {type(got).__name__}", kind="type")
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


def _params(layer) -> list:
    try:
        return list(layer.parameters())
    except Exception as e:  # noqa: BLE001 — the learner's code
        raise CharmlpError(f"{type(layer).__name__}.parameters() raised {type(e).__name__}: {e}") from None


def _find(layer, *names: str):
    for n in names:
        if hasattr(layer, n):
            return getattr(layer, n)
    return None


def _make(cls, *args):
    try:
        return cls(*args)
    except Exception as e:  # noqa: BLE001
        raise CharmlpError(f"{cls.__name__}{args} raised {type(e).__name__}: {e}") from None


def _call(layer, x: torch.Tensor, what: str):
    try:
        return layer(x), None
    except Exception as e:  # noqa: BLE001
        return None, Row(what, "wrong", diagnosis=f"raised {type(e).__name__}: {' '.join(str(e).split())}", kind="exception")


def _bn_rows(cls) -> list[Row]:
    g = torch.Generator().manual_seed(0)
    layer = _make(cls, DIM)
    gamma, beta = _find(layer, "gamma", "weight"), _find(layer, "beta", "bias")
    if gamma is None or beta is None:
        ps = _params(layer)
        if len(ps) != 2:
            return [Row("parameters()", "wrong", diagnosis=f"expected [gamma, beta], got {len(ps)} tensors", kind="params")]
        gamma, beta = ps
    with torch.no_grad():  # off 1 and 0, so a forgotten γ or β cannot hide
        gamma.copy_((1 + 0.3 * torch.randn(DIM, generator=g)).view(gamma.shape))
        beta.copy_((0.3 * torch.randn(DIM, generator=g)).view(beta.shape))
    G, B = gamma.detach().reshape(-1).clone(), beta.detach().reshape(-1).clone()
    rm0, rv0 = _find(layer, "running_mean"), _find(layer, "running_var")
    if rm0 is None or rv0 is None:
        return [Row("running buffers", "wrong", diagnosis="no running_mean / running_var attributes", kind="buffers")]
    rm0, rv0 = rm0.detach().reshape(-1).clone(), rv0.detach().reshape(-1).clone()
    x = torch.randn(N, DIM, generator=g) * (1 + 2 * torch.rand(DIM, generator=g)) + 3 * torch.randn(DIM, generator=g)
    mean, var, bvar = x.mean(0), x.var(0), x.var(0, unbiased=False)
    std = (var + EPS).sqrt()
    want = G * (x - mean) / std + B
    rows = []
    layer.training = True
    out, err = _call(layer, x.clone(), "training output")
    if err:
        return [err]
    rows.append(_row("training output", out, want, [
        ("precedence", "the output's batch mean is not β: did you write x − mean/std instead of (x − mean)/std?",
         G * (x - mean / std) + B),
        ("biased", "biased variance (1/n): the lectures' BatchNorm uses x.var(0), with Bessel's 1/(n − 1)",
         G * (x - mean) / (bvar + EPS).sqrt() + B),
        ("sqrt", "divided by the variance, not by its square root", G * (x - mean) / (var + EPS) + B),
        ("gamma-beta", "γ and β not applied: out = gamma * xhat + beta", (x - mean) / std),
    ], fallback="wrong: out should be gamma·(x − mean)/√(var + eps) + beta over the batch dimension"))
    if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(want.shape) and rows[-1].kind == "unknown":
        om = out.detach().mean(0)
        if not torch.allclose(om, B, atol=1e-4):
            rows[-1].diagnosis = "the output's batch mean is not β: the mean is not fully subtracted before dividing"
    rm, rv = _find(layer, "running_mean").reshape(-1), _find(layer, "running_var").reshape(-1)
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
    rm1, rv1 = rm.detach().clone(), rv.detach().clone()
    layer.training = False
    x2 = torch.randn(N, DIM, generator=g) * 2 + 1
    out2, err = _call(layer, x2.clone(), "eval output")
    if err:
        return rows + [err]
    want2 = G * (x2 - rm1) / (rv1 + EPS).sqrt() + B
    rows.append(_row("eval output", out2, want2, [
        ("eval-batch", "in eval mode the output must use the running statistics, not the batch's",
         G * (x2 - x2.mean(0)) / (x2.var(0) + EPS).sqrt() + B),
        ("precedence", "did you write x − mean/std instead of (x − mean)/std?", G * (x2 - rm1 / (rv1 + EPS).sqrt()) + B),
    ]))
    rm2, rv2 = _find(layer, "running_mean").reshape(-1), _find(layer, "running_var").reshape(-1)
    moved = not (torch.equal(rm2, rm1) and torch.equal(rv2, rv1))
    rows.append(Row("eval leaves running stats", "wrong" if moved else "exact",
                    diagnosis="running statistics updated in eval mode: update them only when self.training" if moved else "",
                    kind="eval-update" if moved else ""))
    rows += _backward_rows(layer, lambda t: G * (t - t.mean(0)) / (t.var(0) + EPS).sqrt() + B, x)
    return rows


def _backward_rows(layer, ref_fn, x: torch.Tensor) -> list[Row]:
    """If the class has a hand-written backward(dout) -> dx, check it against autograd (training mode)."""
    if not callable(getattr(layer, "backward", None)):
        return [Row("backward", "skipped", diagnosis="the class has no backward(dout); nothing to check")]
    layer.training = True
    g = torch.Generator().manual_seed(1)
    with torch.enable_grad():
        xr = x.clone().requires_grad_(True)
        out = ref_fn(xr)
        dout = torch.randn(out.shape, generator=g)
        (dx,) = torch.autograd.grad(out, xr, dout)
    with torch.no_grad():
        _call(layer, x.clone(), "backward")
        try:
            got = layer.backward(dout.clone())
        except Exception as e:  # noqa: BLE001
            return [Row("backward", "wrong", diagnosis=f"raised {type(e).__name__}: {e}", kind="exception")]
    return [_row("backward (dx)", got, dx, [("sign", "the sign is flipped", -dx)])]


def _linear_rows(cls) -> list[Row]:
    fan_in, fan_out = 30, 20
    layer = _make(cls, fan_in, fan_out)
    ps = _params(layer)
    W, b = _find(layer, "weight", "W"), _find(layer, "bias", "b")
    rows = [Row("parameters()", "exact" if len(ps) == 2 else "wrong",
                diagnosis="" if len(ps) == 2 else f"expected [weight, bias], got {len(ps)} tensors", kind="" if len(ps) == 2 else "params")]
    if W is None:
        return rows + [Row("weight", "wrong", diagnosis="no .weight attribute", kind="params")]
    if tuple(W.shape) != (fan_in, fan_out):
        rows.append(Row("weight", "wrong shape", (fan_in, fan_out), tuple(W.shape),
                        diagnosis="the lectures' layout is (fan_in, fan_out), so that out = x @ W + b", kind="shape"))
        return rows
    g = torch.Generator().manual_seed(0)
    if b is not None:
        with torch.no_grad():
            b.copy_(torch.randn(fan_out, generator=g).view(b.shape))  # off 0, so a forgotten bias shows
    x = torch.randn(N, fan_in, generator=g)
    want = x @ W.detach() + (b.detach() if b is not None else 0)
    out, err = _call(layer, x, "output")
    rows.append(err or _row("output", out, want, [("bias", "the bias is not added", x @ W.detach())]))
    return rows + _backward_rows(layer, lambda t: t @ W.detach() + (b.detach() if b is not None else 0), x)


def _tanh_rows(cls) -> list[Row]:
    layer = _make(cls)
    ps = _params(layer)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(N, DIM, generator=g)
    out, err = _call(layer, x, "output")
    rows = [Row("parameters()", "exact" if not ps else "wrong", diagnosis="" if not ps else "tanh has no parameters: return []",
                kind="" if not ps else "params"),
            err or _row("output", out, torch.tanh(x))]
    return rows + _backward_rows(layer, torch.tanh, x)


def _embedding_rows(cls) -> list[Row]:
    V, E = 27, 10
    layer = _make(cls, V, E)
    ps = _params(layer)
    W = _find(layer, "weight")
    rows = [Row("parameters()", "exact" if len(ps) == 1 else "wrong",
                diagnosis="" if len(ps) == 1 else f"expected [weight], got {len(ps)} tensors", kind="" if len(ps) == 1 else "params")]
    if W is None or tuple(W.shape) != (V, E):
        return rows + [Row("weight", "wrong", (V, E), None if W is None else tuple(W.shape),
                           diagnosis="expected .weight of shape (num_embeddings, embedding_dim)", kind="shape")]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, V, (N, 3), generator=g)
    out, err = _call(layer, idx, "output")
    return rows + [err or _row("output", out, W.detach()[idx])]


def check_layer(cls: type, kind: str) -> Report:
    """Run the learner's layer class `cls` against charmlp's reference `kind` and diagnose the differences."""
    if kind not in KINDS:
        raise CharmlpError(f"--layer must be one of {', '.join(KINDS)}, got {kind!r}")
    if not callable(cls):
        raise CharmlpError(f"{cls!r} is not a class")
    fn = {"batchnorm1d": _bn_rows, "linear": _linear_rows, "tanh": _tanh_rows, "embedding": _embedding_rows}[kind]
    with torch.no_grad():
        rows = fn(copy.copy(cls))
    return Report(f"layer check: {getattr(cls, '__name__', cls)} as {kind}", rows)
