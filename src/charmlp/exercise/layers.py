"""`check_layer`: a learner's layer class (the lectures' style: `__call__`, `parameters()`, `training`,
running buffers, `backward(dout)` leaving each parameter's gradient in its `.grad`) against charmlp's
own layer of that kind, for every kind in `charmlp.nn` (`layer_kinds.py`).

Three steps, on either side of the process boundary: `plan(kind)` builds the probes — for each case
(at least two input shapes, one an odd batch, and two seeds) the constructor's arguments, seeded
parameter values, the inputs and the calls to make; `_child.run_probes` runs them on the learner's
class and returns only raw results; `diagnose(plan, …)` — always in charmlp's own process — computes
the references (charmlp's layer, autograd, the learner's own parameter values), judges every row at
every case with the shared engine (`diagnose.py`) and joins each row's cases into one (`combine`: a
backward right at batch 32 and wrong at 13 depends on a literal size). `check_layer` runs all three in
this process (a notebook); `charmlp exercise check-layer` runs the middle one in the sandboxed child.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..errors import CharmlpError
from ..verdict import Report, Row, shape_text
from . import catalog
from ._child import run_probes
from .diagnose import NotATensor, Slip, combine, shape_diagnosis
from .diagnose import diagnose as engine_diagnose
from .layer_kinds import KINDS_IN_ORDER, Call, Case, Kind, Raised

SPECS: dict[str, Kind] = {k.name: k() for k in KINDS_IN_ORDER}
KINDS = tuple(k for k in catalog.KINDS if k in SPECS)


@dataclass
class Plan:
    """The probes of one check and what the parent keeps to judge their results: per case, the seeded
    parameter values and the calls (inputs, upstream gradients)."""

    kind: str
    probes: list[dict]
    tensors: dict[str, torch.Tensor]
    cases: list[tuple[Case, dict[str, torch.Tensor], list[Call]]] = field(default_factory=list)


def check_kind(kind: str) -> Kind:
    if kind not in SPECS:
        raise CharmlpError(f"--layer must be one of {', '.join(KINDS)}, got {kind!r}")
    return SPECS[kind]


def _prefixed(steps: list[dict], prefix: str) -> list[dict]:
    return [{**s, "args": [prefix + a for a in s["args"]]} if "args" in s else s for s in steps]


def plan(kind: str) -> Plan:
    """The probes for `kind` and the tensors they name (seeded: the same every time)."""
    spec = check_kind(kind)
    out = Plan(kind, [], {})
    for i, case in enumerate(spec.cases):
        g = torch.Generator().manual_seed(case.seed)
        P = spec.param_values(g)
        calls = spec.calls(case, g)
        for name, v in P.items():
            out.tensors[f"{i}.p.{name}"] = v
        before, after = spec.extra_steps(case)
        steps = _prefixed(before, f"{i}.") + [{"op": "train"}]
        for t, call in enumerate(calls):
            for k, v in call.inputs.items():
                out.tensors[f"{i}.{t}.{k}"] = v
            out.tensors[f"{i}.{t}.dout"] = call.dout
            steps += [{"op": "call", "args": [f"{i}.{t}.{k}" for k in spec.inputs], "as": f"out{t}"},
                      {"op": "backward", "args": [f"{i}.{t}.dout"], "as": f"back{t}"}]
        for k, v in {**calls[0].inputs, **calls[0].extra}.items():  # what the extra steps name
            out.tensors[f"{i}.{k}"] = v
        steps += [{"op": "grads", "as": "grads"}] + _prefixed(after, f"{i}.")
        out.probes.append({"args": list(spec.args), "params": [list(p.aliases) for p in spec.params],
                           "set": [f"{i}.p.{p.name}" for p in spec.params], "steps": steps})
        out.cases.append((case, P, calls))
    return out


# ── the learner's raw results, decoded ──────────────────────────────────────────────────────────────


def _value(enc, R: dict):
    """The learner's value from its stand-in: a tensor, a tuple, None, Raised, or the stand-in of another type."""
    if enc is None or "none" in enc:
        return None
    if "tensor" in enc:
        return R[enc["tensor"]]
    if "tuple" in enc:
        return tuple(_value(e, R) for e in enc["tuple"])
    if "error" in enc:
        return Raised(enc["error"])
    return NotATensor(enc.get("type", "?"))


def _float(v):
    return v.detach().float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v


# ── the diagnosis ───────────────────────────────────────────────────────────────────────────────────


def _param_rows(spec: Kind, rec: dict, R: dict) -> tuple[list[Row], list[str], bool]:
    """Rows for parameters() and each parameter the learner's class lacks or shapes otherwise; the learner's
    attribute names; whether the check can go on."""
    rows, names, ok = [], [], True
    n = rec["n_parameters"]
    want = len(spec.params)
    listing = "[" + ", ".join(p.name for p in spec.params) + "]"
    if isinstance(n, dict):
        rows.append(Row("parameters()", "wrong", diagnosis=f"parameters() {Raised(n['error']).text}", kind="params"))
    elif n is not None and n != want:
        rows.append(Row("parameters()", "wrong", diagnosis=f"expected {listing}, got {n} tensors" if want else
                        f"{spec.name} has no parameters: return []", kind="params"))
    else:
        rows.append(Row("parameters()", "exact"))
    for p, found in zip(spec.params, rec["params"]):
        if found is None:
            names.append(p.name)
            rows.append(Row(p.name, "wrong", p.shape, diagnosis=f"no .{p.aliases[0]} attribute (charmlp reads "
                            + " or ".join(f".{a}" for a in p.aliases) + ")", kind="params"))
            ok = False
            continue
        names.append(found["name"])
        v = _value(found["value"], R)
        if not isinstance(v, torch.Tensor):
            rows.append(Row(found["name"], "wrong", p.shape, diagnosis=f"not a tensor: got {v!r}", kind="type"))
            ok = False
        elif [d for d in v.shape if d != 1] != [d for d in p.shape if d != 1]:
            rows.append(Row(found["name"], "wrong shape", p.shape, tuple(v.shape),
                            diagnosis=p.layout or f"charmlp's {p.name} is {shape_text(p.shape)}", kind="shape"))
            ok = False
    return rows, names, ok


_GRAD_SIZE = re.compile(r"assign a gradient of size '\[([\d, ]*)\]' to a tensor of size '\[([\d, ]*)\]'")


def _grad_of_wrong_shape(back: Raised, spec: Kind, names: list[str], P: dict) -> tuple | None:
    """(parameter, the learner's name for it, the shape given) when backward raised because torch refused a
    .grad of another shape; the parameter is the one the learner's line names, or the only one of that size."""
    m = _GRAD_SIZE.search(back.error.get("message", ""))
    if not m:
        return None
    got, size = (tuple(int(d) for d in grp.split(",") if d.strip()) for grp in m.groups())
    text = back.error.get("text", "")
    named = [i for i, n in enumerate(names) if f".{n}.grad" in text or f"{n}.grad" in text]
    sized = [i for i, p in enumerate(spec.params) if tuple(P[p.name].shape) == size]
    pick = named or sized
    if len(pick) != 1 and not (named and len(named) >= 1):
        return None
    i = pick[0]
    return spec.params[i], names[i], got


def _inherited_slips(spec: Kind, P: dict, call: Call, made: set[str]) -> dict[str, list[Slip]]:
    """Per backward row and parameter: the gradients of each known wrong forward the learner's forward made
    (`made`: the output row's kinds), by autograd through it, as slips saying that a backward right for that
    forward follows from it."""
    out: dict[str, list[Slip]] = {}
    for kind, msg, fn in spec.forward_variants(P, call):
        if kind not in made:
            continue
        with torch.enable_grad():
            xs = {k: v.clone().requires_grad_(k in spec.grad_of) for k, v in call.inputs.items()}
            ps = {k: v.clone().requires_grad_(True) for k, v in P.items()}
            wrt = [xs[k] for k in spec.grad_of] + list(ps.values())
            grads = torch.autograd.grad(fn(xs, ps), wrt, call.dout, allow_unused=True)
        text = f"right for your forward, which has a mistake ({msg}): fix the forward first"
        for name, g in zip([*spec.backward_rows, *P], grads):
            if g is not None:
                out.setdefault(name, []).append(Slip("inherited", text, g.reshape(P[name].shape) if name in P else g))
    return out


def _first_bad(rows: list[Row]) -> Row:
    return next((r for r in rows if not r.ok), next((r for r in rows if r.status == "approximate"), rows[0]))


def _case_rows(spec: Kind, case: Case, calls: list[Call], rec: dict, R: dict, names: list[str]) -> list[tuple[str, Row]]:
    """Every row of one case, (name, row) in the report's order: the forward, the kind's own rows, the
    backward's return values, each parameter's .grad."""
    res = {k: _value(v, R) for k, v in rec["results"].items()}
    P = {p.name: _float(_value(found["value"], R)).reshape(p.shape) for p, found in zip(spec.params, rec["params"])}
    refs = [spec.reference(P, call, res) for call in calls]
    outs = _forward_rows(spec, P, calls, refs, res)
    rows = [(spec.output_row, _first_bad(outs))] if outs else []
    rows += spec.extra_rows(case, P, calls, res)
    if not rec["has_backward"]:
        return rows + [("backward", Row("backward", "skipped", diagnosis="the class has no backward(dout); nothing to check"))]
    made = {r.kind for r in outs if not r.ok}  # a backward right for a wrong forward the check knows follows from it
    inherited = _inherited_slips(spec, P, calls[0], made) if len(calls) == 1 and made else {}
    back_rows, ran = _backward_rows(spec, case, P, calls, refs, res, names, inherited)
    rows += back_rows
    return rows + (_grad_rows(spec, case, P, calls, refs, res, rec, R, names, inherited) if ran else [])


def _forward_rows(spec: Kind, P: dict, calls: list[Call], refs: list, res: dict) -> list[Row]:
    """The output's row at every call (up to one that raised)."""
    outs = []
    for t, (call, ref) in enumerate(zip(calls, refs)):
        got = res.get(f"out{t}")
        if isinstance(got, Raised):
            outs.append(got.row(spec.output_row))
            break
        if f"out{t}" not in res:
            break
        clues = spec.forward_clues(P, call, ref)
        clues.missing = clues.missing or "your forward returned None (not written yet?)"
        outs.append(engine_diagnose(spec.output_row, _float(got), ref.out, clues))
    return outs


def _backward_rows(spec: Kind, case: Case, P: dict, calls: list[Call], refs: list, res: dict, names: list[str],
                   inherited: dict) -> tuple[list[tuple[str, Row]], bool]:
    """The rows of what backward returns (dx, a cell's dh_prev), each the worst over the calls; and whether every
    backward ran (the parameters' .grad is judged only then)."""
    per_row: dict[str, list[Row]] = {name: [] for name in spec.backward_rows}
    for t, (call, ref) in enumerate(zip(calls, refs)):
        if f"back{t}" not in res:
            return [(n, _first_bad(rs)) for n, rs in per_row.items() if rs], False
        back = res[f"back{t}"]
        if isinstance(back, Raised):
            bad = _grad_of_wrong_shape(back, spec, names, P)
            if bad is not None:  # torch refused a .grad of the wrong shape: that parameter's row says why
                p, name, got_shape = bad
                want = refs[0].dparams[p.ref_name].reshape(P[p.name].shape)
                msg, kind = shape_diagnosis(got_shape, want, spec.backward_clues(p.name, P, call, ref, case))
                line = back.error.get("line") or "?"
                rows = [(r, Row(r, "wrong", diagnosis=f"not checked: backward stopped at line {line} setting {name}.grad "
                                "(see that row)", kind="inherited")) for r in spec.backward_rows]
                return rows + [(f"{name}.grad", Row(f"{name}.grad", "wrong shape", tuple(want.shape), got_shape, diagnosis=
                                f"expected {shape_text(tuple(want.shape))}, got {shape_text(got_shape)}: {msg} (torch refuses "
                                "a .grad of another shape than its tensor's, so backward stopped there)", kind=kind))], False
            for name in spec.backward_rows or ("backward",):
                per_row.setdefault(name, []).append(back.row(name))
            return [(n, _first_bad(rs)) for n, rs in per_row.items() if rs], False
        got = back if isinstance(back, tuple) else (back,)
        for j, (name, inp) in enumerate(zip(spec.backward_rows, spec.grad_of)):
            if j >= len(got) and back is not None:  # a cell's backward returns (dx, dh_prev)
                per_row[name].append(Row(name, "wrong", tuple(ref.dinputs[inp].shape), diagnosis=f"backward returned "
                                         f"{len(got)} value(s); it returns ({', '.join('d' + g for g in spec.grad_of)})",
                                         kind="return"))
                continue
            clues = spec.backward_clues(name, P, call, ref, case)
            clues.slips = [*inherited.get(name, []), *clues.slips]
            clues.missing = clues.missing or "backward returned None (not written yet?)"
            per_row[name].append(engine_diagnose(name, _float(got[j] if j < len(got) else None), ref.dinputs[inp], clues))
    return [(n, _first_bad(rs)) for n, rs in per_row.items() if rs], True


def _grad_rows(spec: Kind, case: Case, P: dict, calls: list[Call], refs: list, res: dict, rec: dict, R: dict,
               names: list[str], inherited: dict) -> list[tuple[str, Row]]:
    """Each parameter's .grad after every call's backward (a sequence's steps add up) against the sum of the
    references' — in the learner's parameter's shape."""
    rows = []
    grads = res.get("grads") or [None] * len(spec.params)
    for i, (p, name, got) in enumerate(zip(spec.params, names, grads)):
        shape = _value(rec["params"][i]["value"], R).shape
        want = sum(ref.dparams[p.ref_name] for ref in refs).reshape(shape)
        clues = spec.param_clues(p.name, P, calls, refs, case)
        clues.slips = [*inherited.get(p.name, []), *clues.slips]
        clues.missing = f".grad never set: backward must leave dL/d{name} in self.{name}.grad"
        if len(calls) > 1:  # a sequence: each step's share must add up
            clues.slips += [Slip("accumulate", f"only one time step's share: {name}.grad must add up over the {len(calls)} "
                                 "steps (each backward adds to .grad: p.grad += …, or set it when it is None), not be "
                                 "replaced by the last step's", ref.dparams[p.ref_name].reshape(shape)) for ref in refs]
        rows.append((f"{name}.grad", engine_diagnose(f"{name}.grad", _float(got), want, clues)))
    return rows


def diagnose(p: Plan, records: list[dict], results: dict[str, torch.Tensor]) -> tuple[list[Row], str | None]:
    """The rows of a layer check from the probes' raw results (charmlp's process only), and an error that
    stopped it (the class could not be built)."""
    spec = SPECS[p.kind]
    first = records[0]
    if first["error"]:
        built = f"{catalog.CLASS_NAMES[spec.name]}({', '.join(map(repr, spec.args))})"
        return [], f"{built} {Raised(first['error']).text}"
    with torch.no_grad():
        rows, names, ok = _param_rows(spec, first, results)
        if not ok:
            return rows, None
        per_case: dict[str, list[tuple[str, Row]]] = {}
        for (case, _seeded, calls), rec in zip(p.cases, records):
            if rec["error"]:
                per_case.setdefault("construct", []).append((case.label, Raised(rec["error"]).row("construct")))
                continue
            for name, row in _case_rows(spec, case, calls, rec, results, names):
                per_case.setdefault(name, []).append((case.label, row))
    ndims = {case.label: len(case.shape) for case, _, _ in p.cases}
    return rows + [combine(name, verdicts, ndims) for name, verdicts in per_case.items()], None


def _notes(spec: Kind) -> list[str]:
    cases = ", ".join(f"{c.label} (seed {c.seed}" + (f", {c.steps} steps" if c.steps > 1 else "") + ")" for c in spec.cases)
    return [f"checked at {cases}"]


def check_layer(cls: type, kind: str) -> Report:
    """Run the learner's layer class `cls` against charmlp's reference `kind` and diagnose the differences
    (all in this process: the notebook's way; `charmlp exercise check-layer` runs the class in a child)."""
    spec = check_kind(kind)
    if not callable(cls):
        raise CharmlpError(f"{cls!r} is not a class")
    p = plan(kind)
    records, results = run_probes(cls, p.probes, p.tensors)
    rows, error = diagnose(p, records, results)
    return Report(f"layer check: {getattr(cls, '__name__', cls)} as {kind}", rows, error, _notes(spec))
