"""The one diagnosis engine: what a wrong gradient most likely got wrong, for every check a learner runs —
an atom of the MLP exercise (`backprop.py`), a layer's dx or a parameter's `.grad` (`layers.py`).

`diagnose(name, g, r, clues)` judges the learner's `g` against the true `r` and, when it is wrong, tries
in this order: missing; not a tensor; the shape (transposed, a size-1 dimension kept or dropped — saying
which way —, a broadcast dimension not summed over, another shape); NaN/inf; exact / approximate; what
the caller knows came from upstream (`clues.inherited`); a flipped sign; transposed; one part of a sum
only, or one part missing, or one part off by a factor (the branches of a tensor used twice; a norm's
mean and variance terms); the known slips of this gradient (`clues.slips`: a tensor the slip gives, or
a test); a constant factor k = ⟨g, r⟩/⟨r, r⟩, named (n, 1/n, n/(n − 1), 2, ½, "7× too large").
`combine` joins one gradient's rows over several inputs: right at one shape and wrong at another means
a literal size in the code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..verdict import Row, close, judge, shape_text

REL_TOL = 1e-5  # approximate: max|g − r| ≤ 1e-5·max|r|, as `charmlp gradcheck` in float32
MATCH_TOL = 1e-4  # a candidate mistake matches when within 1e-4 of it (the learner's rounding differs)


class NotATensor:
    """Stands for a learner's value that is not a tensor (its type's name), for a "not a tensor" row."""

    def __init__(self, typ: str) -> None:
        self.typ = typ

    def __repr__(self) -> str:
        return self.typ


@dataclass
class Slip:
    """A known mistake: the gradient it gives (`value`), or a test of the learner's gradient (`test`)."""

    kind: str
    message: str
    value: torch.Tensor | None = None
    test: Callable[[torch.Tensor], bool] | None = None


@dataclass
class Part:
    """One term of the true gradient, r = Σ parts: the branch of a tensor used twice, a norm's mean or
    variance term. `what` names it in a sentence ("the contribution through probs", "the mean's term")."""

    what: str
    value: torch.Tensor
    only: str = ""  # the sentence when g is this part alone (default: built from `what`)
    missing: str = ""  # … when g is every part but this one


@dataclass
class Clues:
    """What a diagnosis may use besides g and r. `n`: the count a batch mean divides by; `what`: the
    tensor the gradient belongs to (for "dX always has the shape of X"); the callables let a caller say
    what came from upstream (the exercise's atoms: "correct for your dX, which is wrong")."""

    n: int | None = None
    what: str = ""
    parts: list[Part] = field(default_factory=list)
    slips: list[Slip] = field(default_factory=list)
    scale: float | None = None  # judge against this instead of max|r|
    rel: float = REL_TOL
    match: float = MATCH_TOL
    missing: str = ""  # the diagnosis of a gradient never given (".grad never set")
    unknown: str = "wrong, and not one of the common mistakes"
    nonfinite: str = "a division by zero, or log/exp of an extreme value?"
    shape_hint: str = ""  # what to do about a wrong shape, where the caller knows better than the generic advice
    shape_kind: str = ""  # the kind of a shape diagnosis that used `shape_hint`
    approx: Callable[[torch.Tensor], tuple[str, str]] | None = None  # (kind, diagnosis) of an approximate row
    inherited_shape: Callable[[torch.Tensor], str | None] | None = None
    inherited_nonfinite: Callable[[torch.Tensor], str | None] | None = None
    inherited: Callable[[torch.Tensor], str | None] | None = None
    relative: Callable[[torch.Tensor], tuple[torch.Tensor, str] | None] | None = None  # (what upstream gives, its names)
    ratio: Callable[[float], str | None] | None = None  # names a factor k where `ratio_name(k, n)` does not suffice

    def factor(self, k: float) -> str | None:
        return self.ratio(k) if self.ratio else ratio_name(k, self.n)


def diagnose(name: str, g, r: torch.Tensor, clues: Clues | None = None) -> Row:
    """The row for the learner's gradient `g` against the true `r`."""
    c = clues or Clues()
    shape = tuple(r.shape)
    if g is None:
        return Row(name, "missing", shape, diagnosis=c.missing)
    if not isinstance(g, torch.Tensor):
        try:
            g = torch.as_tensor(g, dtype=r.dtype)
        except (TypeError, ValueError, RuntimeError):
            typ = getattr(g, "typ", None) or (g.get("type") if isinstance(g, dict) else None) or type(g).__name__
            return Row(name, "wrong", shape, diagnosis=f"not a tensor: got {typ}", kind="type")
    g = g.detach().to(r.dtype)
    gs = tuple(g.shape)
    if gs != shape:
        up = c.inherited_shape(g) if c.inherited_shape else None
        if up:
            return Row(name, "wrong shape", shape, gs, diagnosis=f"expected {shape_text(shape)}, got {shape_text(gs)}: {up}",
                       kind="inherited")
        msg, kind = shape_diagnosis(g, r, c)
        return Row(name, "wrong shape", shape, gs, diagnosis=f"expected {shape_text(shape)}, got {shape_text(gs)}: {msg}", kind=kind)
    if not torch.isfinite(g).all():
        where = "NaN" if torch.isnan(g).any() else "inf"
        up = c.inherited_nonfinite(g) if c.inherited_nonfinite else None
        if up:
            return Row(name, "wrong", shape, gs, math.inf, f"contains {where}, which comes from {up}: fix {up} first", "inherited")
        slip = _first_slip(g, c)
        return Row(name, "wrong", shape, gs, math.inf, f"contains {where}: " + (slip[1] if slip else c.nonfinite),
                   slip[0] if slip else "nonfinite")
    s = r.abs().max().item() if c.scale is None else c.scale
    status, md, rel_err = judge(g, r, c.rel, s)  # the comparison every check makes
    row = lambda **kw: Row(name, shape=shape, got_shape=gs, maxdiff=md, rel_err=rel_err if s > 0 else None, **kw)  # noqa: E731
    if status == "exact":
        return row(status="exact")
    if status == "approximate":
        kind, msg = c.approx(g) if c.approx else ("rounding", "approximate: round-off (operations grouped differently from autograd's)")
        return row(status="approximate", kind=kind, diagnosis=msg)
    up = c.inherited(g) if c.inherited else None
    if up:
        return row(status="wrong", diagnosis=up, kind="inherited")
    found = mistake(g, r, c, s)
    if found is None and c.relative:  # a mistake of its own on top of an inherited one
        rel = c.relative(g)
        if rel is not None:
            base, us = rel
            found = mistake(g, base, c, base.abs().max().item(), parts=False)
            if found is not None:
                found = (found[0], f"{found[1]} (relative to what your {us} gives; {us} {'is' if ' and ' not in us else 'are'} wrong too)")
    if found is not None:
        return row(status="wrong", kind=found[0], diagnosis=found[1])
    if not g.any():
        return row(status="wrong", diagnosis="all zeros", kind="zero")
    return row(status="wrong", diagnosis=c.unknown, kind="unknown")


def _first_slip(g: torch.Tensor, c: Clues) -> tuple[str, str] | None:
    for slip in c.slips:
        if slip.test is not None:
            try:
                hit = slip.test(g)
            except (RuntimeError, ValueError, IndexError):
                hit = False
            if hit:
                return slip.kind, slip.message
        elif slip.value is not None and tuple(slip.value.shape) == tuple(g.shape):
            v = slip.value.to(g.dtype)
            same_nonfinite = torch.equal(torch.isfinite(v), torch.isfinite(g))
            if same_nonfinite and close(torch.nan_to_num(g), torch.nan_to_num(v), c.match):
                return slip.kind, slip.message
    return None


def mistake(g: torch.Tensor, r: torch.Tensor, c: Clues, s: float, parts: bool = True) -> tuple[str, str] | None:
    """(kind, sentence) of the first common mistake that turns the right gradient `r` into `g`."""
    m = c.match
    if close(g, -r, m, s):
        return "sign", "the sign is flipped"
    if g.dim() == 2 and g.shape[0] == g.shape[1] and close(g.T, r, m, s):
        return "transposed", "transposed: you have the transpose of the gradient (W.T where W belongs)"
    for p in c.parts if parts else ():
        if close(g, p.value, m, s):
            return "branch", p.only or f"only {p.what}: the other terms are missing"
    for p in c.parts if parts else ():
        rest = sum_of(q.value for q in c.parts if q is not p)
        if rest is not None and close(g, rest, m, s):
            return "branch", p.missing or f"{p.what} is missing"
    slip = _first_slip(g, c)
    if slip is not None:
        return slip
    # every part there, one of them off by a constant factor: g − (the others) = k·(this part)
    for p in c.parts if parts else ():
        rest = sum_of(q.value for q in c.parts if q is not p)
        diff = g - rest if rest is not None else g
        pp = (p.value * p.value).sum().item()
        k = (diff * p.value).sum().item() / pp if pp > 0 else 0.0
        if k not in (0.0, 1.0) and close(diff, k * p.value, m, abs(k) * p.value.abs().max().item()) and close(g, diff + rest, m, s):
            return "factor", f"{p.what} is wrong: " + (c.factor(k) or factor_name(k))
    rr = (r * r).sum().item()
    if rr > 0:
        k = (g * r).sum().item() / rr
        if k != 0 and close(g, k * r, m, abs(k) * s):
            return "factor", c.factor(k) or factor_name(k)
    return None


def repeated_index(g: torch.Tensor, r: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, tol: float = MATCH_TOL) -> bool:
    """Is `g` what `dW[idx] += rows` (or `dW[idx] = rows`) gives instead of the sum `r`: right where an
    index occurs once, one occurrence's row (not their sum) where it repeats?"""
    flat = idx.reshape(-1).long()
    rows = rows.reshape(len(flat), -1).to(g.dtype)
    counts = torch.bincount(flat, minlength=g.shape[0])
    many = (counts > 1).nonzero().flatten()
    g2, r2 = g.reshape(g.shape[0], -1), r.reshape(r.shape[0], -1)
    if len(many) == 0 or not close(g2[counts <= 1], r2[counts <= 1], tol, r2.abs().max().item()):
        return False
    s = rows.abs().max().item()
    return all(any(close(g2[i], rows[j], tol, s) for j in (flat == i).nonzero().flatten()) for i in many.tolist())


def norm_parts(direct: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, over: str) -> list[Part]:
    """A normalisation's dx as its three terms (BatchNorm over the batch, LayerNorm over a row's features):
    the direct path γ·rstd·dout, the mean's term and the variance's term (both statistics depend on x)."""
    return [Part("the direct path", direct, only=f"only the direct path γ·rstd·dout: the {over} mean and variance depend on "
                 "x too, so dx has their two terms as well"),
            Part("the mean's term", mean, missing=f"the mean's term is missing: the {over} mean depends on x, so subtract "
                 "the mean of γ·rstd·dout"),
            Part("the variance's term", var, missing=f"the variance's term is missing: the {over} variance depends on x, "
                 "so subtract x̂ times the mean of γ·rstd·dout·x̂")]


def sum_of(ts) -> torch.Tensor | None:
    total = None
    for t in ts:
        total = t if total is None else total + t
    return total


def factor_name(k: float) -> str:
    """"7× too large", "4× too small" (and the sign when it is flipped too)."""
    a = abs(k)
    text = f"{a:.3g}× too large" if a > 1 else f"{1 / a:.3g}× too small"
    return ("sign flipped and " if k < 0 else "") + text + f" (off by a constant factor {k:.6g})"


def ratio_name(k: float, n: int | None, s: str = "n") -> str | None:
    """The sentence for a factor k the count n explains (n, 1/n, n/(n − 1), …), or 2 or ½; `s`: how the
    sentence writes the count (n, the batch; N, the rows of a (B, T, C) tensor)."""
    table = [(2.0, "twice too large: is a factor 2 counted twice?"), (0.5, "half of it: d(x²)/dx = 2x — a factor 2 missing?")]
    if n is not None and n > 2:
        table = [(n, f"{s} = {n} times too large: did you forget the 1/{s} of the mean?"),
                 (1 / n, f"{s} = {n} times too small: one division by {s} too many (the loss's 1/{s} is already in the "
                         "gradient coming from above)"),
                 (n / (n - 1), f"{s}/({s} − 1) too large (Bessel's correction): the forward divides by {s} − 1 = {n - 1}; "
                               f"your 1/{s} should be 1/({s} − 1)"),
                 ((n - 1) / n, f"({s} − 1)/{s} too small (Bessel's correction): the forward divides by {s} − 1 = {n - 1}, "
                               f"not {s}"),
                 (n - 1, f"{s} − 1 = {n - 1} times too large: did you forget the 1/({s} − 1) of the variance?"),
                 (1 / (n - 1), f"{s} − 1 = {n - 1} times too small: one division by {s} − 1 too many")] + table
    for v, msg in table:
        if abs(abs(k) - v) <= 1e-3 * v:
            return msg if k > 0 else "sign flipped and " + msg
    return None


def shape_diagnosis(g, r: torch.Tensor, c: Clues) -> tuple[str, str]:
    """(sentence, kind) for a gradient of the wrong shape, pointing the way to the right one; `g` may be
    only a shape (torch refused to store it as a .grad, so its values never reached charmlp)."""
    known = isinstance(g, torch.Tensor)
    gs, rs = (tuple(g.shape) if known else tuple(g)), tuple(r.shape)
    what = c.what or "the tensor"
    if len(gs) == 2 and gs == rs[::-1] and rs[0] != rs[1] and (not known or close(g.T, r, c.match)):
        return "transposed: swap the operands' order and transposes (e.g. dW = X.T @ dY, not dY.T @ X)", "transposed"
    if math.prod(gs) == math.prod(rs):
        right = known and close(g.reshape(rs), r, c.match)
        values = "the values are right; " if right else ("and the values are wrong; " if known else "")
        if [d for d in gs if d != 1] == [d for d in rs if d != 1]:
            if c.shape_hint and c.shape_kind:
                return f"{values}the shape should be {shape_text(rs)}: {c.shape_hint}", c.shape_kind
            if len(gs) > len(rs):  # a size-1 dimension too many: keepdim where the shape has none
                extra = [i for i in range(len(gs)) if gs[i] == 1][: len(gs) - len(rs)]
                return (f"{values}the shape should be {shape_text(rs)}: sum without keepdim=True (or .view({_args(rs)})); "
                        f"dimension {_dims(extra)} is one too many"), "keepdim"
            if len(gs) < len(rs):  # a size-1 dimension missing: the sum needs keepdim
                kept = [i for i in range(len(rs)) if rs[i] == 1][: len(rs) - len(gs)]
                return (f"{values}the shape should be {shape_text(rs)}: keepdim=True in the sum, which keeps dimension "
                        f"{_dims(kept)} (or .view({_args(rs)}))"), "keepdim"
            return f"{values}a size-1 dimension is in the wrong place: .view({_args(rs)})", "keepdim"
        return (f"the values are right; .view({_args(rs)}) them" if right else f"reshape to {what}'s own shape"), "reshape"
    # g is larger where r has a size-1 (or absent) dimension: a broadcast that should have been summed over
    if len(gs) >= len(rs):
        rpad = (1,) * (len(gs) - len(rs)) + rs
        dims = [i for i, (a, b) in enumerate(zip(gs, rpad)) if a != b]
        if dims and all(rpad[i] == 1 for i in dims):
            dims = sorted(set(dims) | set(range(len(gs) - len(rs))))
            hint = f".sum({dims[0] if len(dims) == 1 else tuple(dims)}" + (", keepdim=True)" if len(rs) == len(gs) else ")")
            right = known and close(g.sum(dims, keepdim=True).reshape(rs), r, c.match)
            return (f"{what} was broadcast along dim {', '.join(map(str, dims))} in the forward, so its gradient is summed over "
                    f"it: {c.shape_hint or hint}" + (" (then the values are right)" if right else "")), "broadcast"
    base = f"d{what} always has the shape of {what}" if c.what else "a gradient always has the shape of its tensor"
    return base + (f"; {c.shape_hint}" if c.shape_hint else ""), "shape"


def _args(shape: tuple[int, ...]) -> str:
    return ", ".join(map(str, shape))


def _dims(ds: list[int]) -> str:
    return ", ".join(map(str, ds))


# ── one gradient over several inputs ───────────────────────────────────────────────────────────────

# diagnoses that say what is wrong whatever the shape: kept as they are when another input passes
KEEP_KINDS = ("inherited", "accumulate", "nonfinite", "overflow", "repeated", "mask", "eval-update", "squeeze", "dims")


def combine(name: str, verdicts: list[tuple[str, Row]], ndims: dict[str, int] | None = None) -> Row:
    """One row from one gradient's rows at several inputs, labelled ("batch 32", "batch 13", "input 5×3×20");
    `ndims`: each label's number of input dimensions, where they differ.

    All right: the first (approximate if any is). Right at some and wrong at others: the code depends on
    the input's size — a literal 32, or n taken from somewhere else — unless the wrong one's diagnosis
    stands on its own (`KEEP_KINDS`) or its input has other dimensions ((B, T, C) where (B, C) passes):
    then that diagnosis, at its input. Wrong everywhere: the first input's row, or the first that names
    a mistake."""
    rows = [r for _, r in verdicts]
    if not rows:
        return Row(name, "skipped")
    bad = [(lab, r) for lab, r in verdicts if not r.ok]
    done = [(lab, r) for lab, r in verdicts if r.ok and r.status not in ("missing", "skipped")]
    if not bad:
        first = rows[0]
        if done and any(r.status == "approximate" for _, r in done) and first.status == "exact":
            return next(r for _, r in done if r.status == "approximate")
        if first.status in ("missing", "skipped") and done:
            return done[0][1]
        return first
    lab, r = bad[0]
    nd = ndims or {}
    other_dims = bool(nd) and all(nd.get(lb) not in {nd.get(d) for d, _ in done} for lb, _ in bad)
    if done and r.kind not in KEEP_KINDS and not other_dims:
        right = " and ".join(lb for lb, _ in done)
        wrong = ", ".join(lb for lb, _ in bad)
        why = f" ({r.diagnosis})" if r.kind not in ("unknown", "") and r.diagnosis else ""
        literal = _literal(r, done[0][0], lab)
        return Row(name, r.status, r.shape, r.got_shape, r.maxdiff,
                   f"right at {right} but wrong at {wrong}{literal or why}: it depends on the input's size — use the input's "
                   "shape (x.shape[0], n), not a literal", "batch-size", r.rel_err, r.section, r.note)
    lab, r = next(((lb, rr) for lb, rr in bad if rr.kind not in ("unknown", "")), (lab, r))
    if len(verdicts) > 1 and (done or lab != verdicts[0][0]):
        r = Row(**{**r.__dict__, "diagnosis": f"at {lab}: {r.diagnosis}" if r.diagnosis else f"at {lab}"})
    return r


def _literal(r: Row, right: str, wrong: str) -> str:
    """" (off by 13/32: …)" when a wrong row's constant factor is the ratio of the two batch sizes."""
    k = re.search(r"constant factor (-?[\d.e+-]+)", r.diagnosis)
    a, b = (re.search(r"batch (\d+)", lab) for lab in (right, wrong))
    if not (k and a and b and r.kind == "factor"):
        return ""
    k, na, nb = float(k.group(1)), int(a.group(1)), int(b.group(1))
    for num, den in ((nb, na), (na, nb)):
        if abs(k - num / den) <= 1e-3 * num / den:
            return f" (off by {num}/{den}: {na} is written in where the batch size belongs)"
    return ""
