"""`charmlp exercise hint FILE STEP`: hints that escalate, read off the exercise's chain.

Each call for the same step gives the next level:

1. the shape of the answer and the forward lines it comes from (the line making X and the lines using it);
2. the local rule, in words and symbols: the comments beside the chain's own step (models/<model>_atoms.py);
3. which branches sum, and what to broadcast or reduce (the shapes of X and of what it feeds);

`--reveal` prints the reference expression: the step's own source, the one the by-hand walk runs and the
float64 tests prove against autograd (F_["x"] written x, U["x"] written dx). The level reached is kept in
`FILE.hints.json` beside the exercise file (`--reset` deletes it); `status` counts it.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from pathlib import Path

from ..errors import CharmlpError
from ..models.atoms import AtomChain

LEVELS = 3


def ledger_path(path: str | Path) -> Path:
    """Where the hints used on `path` are kept: FILE.hints.json beside it."""
    path = Path(path)
    return path.with_name(path.name + ".hints.json")


def read_ledger(path: str | Path) -> dict[str, dict]:
    """{step: {"level": k, "revealed": bool}} for the file (empty when no hint was asked, or the ledger is unreadable)."""
    try:
        data = json.loads(ledger_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def _write_ledger(path: Path, data: dict) -> None:
    from ..checkpoint import atomic_write_text

    try:
        atomic_write_text(ledger_path(path), json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        raise CharmlpError(f"cannot write {ledger_path(path)}: {e.strerror or e}") from None


def _comments_above(fn) -> list[str]:
    """The `#` lines right above where `fn` is written, and a comment ending that line."""
    try:
        lines, _ = inspect.findsource(fn)
    except (OSError, TypeError):
        return []
    i = fn.__code__.co_firstlineno - 1
    out = []
    j = i - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        out.insert(0, lines[j].strip()[1:].strip())
        j -= 1
    if "  # " in lines[i]:  # a comment ending the step's own line
        out.append(lines[i].split("  # ", 1)[1].strip())
    return out


def _helpers(fn) -> list:
    """The chain module's own functions `fn` calls (the layers' closed forms): their comments are the rule too."""
    return [v for k in fn.__code__.co_names if inspect.isfunction(v := fn.__globals__.get(k))
            and v.__module__.startswith("charmlp.models.") and k not in ("rows",)]


def _body_comments(fn) -> list[str]:
    try:
        src = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return []
    first, *rest = src.splitlines()
    own = [first.split("# ", 1)[1].strip()] if "# " in first else []  # a comment on the def line
    return own + [ln.strip()[1:].strip() for ln in rest if ln.strip().startswith("#")]


def _expression(fn) -> str:
    """The source of the lambda `fn`, F_["x"] written x and U["x"] written dx."""
    try:
        lines, _ = inspect.findsource(fn)
    except (OSError, TypeError):
        return "?"
    src = "".join(lines)
    line = fn.__code__.co_firstlineno
    cols = [p[2] for p in fn.__code__.co_positions() if p[0] == line and p[2] is not None and (p[3] or 0) > p[2]]
    best = None
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Lambda) and node.lineno <= line <= (node.end_lineno or line):
            if cols and node.lineno == line and not node.col_offset <= min(cols) <= (node.end_col_offset or 10**9):
                continue
            best = node
    if best is None:
        return "?"
    text = " ".join(ast.get_source_segment(src, best.body).split())
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):  # a step written for position t: t's value
        v = cell.cell_contents
        if isinstance(v, int) and not isinstance(v, bool):
            text = re.sub(rf"\b{name}\b", str(v), text)
        elif isinstance(v, str):  # a step written for an atom named by a variable
            text = re.sub(rf"F_\[{name}\]", v, text)
            text = re.sub(rf"U\[{name}\]", "d" + v, text)
    text = re.sub(r"\b(\d+) ([+-]) (\d+)\b", lambda m: str(int(m[1]) + (1 if m[2] == "+" else -1) * int(m[3])), text)
    text = re.sub(r'f"(\w*)\{(\d+)\}"', r'"\1\2"', text)
    text = text.replace("(F_, U, ", "(").replace("(F_, U)", "()")
    text = re.sub(r'U\["(\w+)"\]', r"d\1", text)
    text = re.sub(r'F_\["(\w+)"\]', r"\1", text)
    return re.sub(r'U\[f"(\w*)\{[^}]*\}"\]', r"d\1_t", text)


def _rule_fns(chain: AtomChain, x: str) -> dict[str, object]:
    """{what x feeds: the function giving its contribution}: the branches, or the one step."""
    if x in chain.branches:
        return dict(chain.branches[x])
    feeds, fn = chain.local[x]
    return {", ".join(feeds): fn}


def _fmt(shape) -> str:
    return " x ".join(map(str, shape)) or "scalar"


def _shape_note(x: str, shape: tuple[int, ...], f: str, fs: tuple[int, ...]) -> str:
    """What the shapes of x and of the atom f it feeds say about reducing or reshaping df's contribution."""
    pad = (1,) * (len(fs) - len(shape)) + shape
    where = f"{f} is {_fmt(fs)} where {x} is {_fmt(shape)}: "
    if len(pad) == len(fs) and all(a in (1, b) for a, b in zip(pad, fs)):
        dims = tuple(i for i, (a, b) in enumerate(zip(pad, fs)) if a == 1 and b != 1)
        keep = ", keepdim=True" if len(shape) == len(fs) else ""
        axes = dims if len(dims) > 1 else dims[0]
        return where + f"{x} is broadcast along dim {axes}: sum over it (.sum({axes}{keep}))"
    n_x, n_f = _numel(shape), _numel(fs)
    if n_x == n_f:
        return where + f"the same numbers, another shape: view the gradient back as {_fmt(shape)}"
    if n_x < n_f:
        return where + f"{x} fills one part of {f} (a slice, an index): d{x} is that part of the gradient"
    return where + "a weight or a table read by a product or an index: every row's share adds up (a matmul, index_add_)"


def _numel(shape: tuple[int, ...]) -> int:
    k = 1
    for d in shape:
        k *= d
    return k


def step_name(chain: AtomChain, step: str) -> str:
    """The chain's name for STEP (dX or X); an unknown one is a user error listing the valid names."""
    x = step[1:] if step.startswith("d") and step[1:] in chain.order else step
    if x not in chain.order:
        raise CharmlpError(f"no step {step!r} in this exercise; its steps are " + ", ".join("d" + a for a in chain.order))
    return x


def hint_text(chain: AtomChain, x: str, level: int, F_: dict) -> str:
    """Level 1 … LEVELS of the hint for dx, or (level LEVELS + 1) the reveal."""
    listing = dict(zip(chain.atoms, chain.listing()))
    feeds = chain.local[x][0]
    shape = tuple(F_[x].shape)
    if level == 1:
        made = [f"    {listing[x]}"] if x in listing else [f"    ({x} is a parameter)"]
        used = [f"    {listing[f]}" for f in feeds if f in listing]
        return "\n".join([f"d{x} has the shape of {x}: {_fmt(shape)}. It comes from", *made, "and flows back from", *used])
    fns = _rule_fns(chain, x)
    if level == 2:
        rules: dict[str, list[str]] = {}  # the rule's words → the branches it is written for
        last: list[str] = []
        for via, fn in fns.items():
            # a branch without its own comment shares the one above it (one comment for the atom's branches)
            words = (_comments_above(fn) or last) + [c for h in _helpers(fn) for c in _body_comments(h)]
            last = words or last
            rules.setdefault("; ".join(dict.fromkeys(words)) or "the chain rule through that line", []).append(via)
        return "\n".join(f"through {', '.join(vias)}: {words}" for words, vias in rules.items())
    if level == 3:
        if len(fns) > 1:
            head = f"{x} is used {len(fns)} times: d{x} is the sum of the branches through {', '.join(fns)}"
        else:
            head = f"{x} is used once (by {', '.join(feeds)}): d{x} is that one branch"
        return "\n".join([head, *(_shape_note(x, shape, f, tuple(F_[f].shape)) for f in feeds
                                   if f in F_ and hasattr(F_[f], "shape") and tuple(F_[f].shape) != shape)])
    lines = [f"d{x} {'+' if i else '='} {_expression(fn)}" + (f"    # through {via}" if len(fns) > 1 else "")
             for i, (via, fn) in enumerate(fns.items())]
    helpers = {h.__name__: h for fn in fns.values() for h in _helpers(fn)}
    return "\n".join(lines + [f"  {k}: {'; '.join(_body_comments(h)) or (h.__doc__ or '').strip()}" for k, h in helpers.items()])


def hint(path: str | Path, step: str, reveal: bool = False, reset: bool = False) -> str:
    """The next hint for STEP of the exercise file `path` (or the reveal); records it in the ledger.
    With `reset`, clears the ledger and returns what was cleared."""
    from .exercises import exercise_for, model_of

    path = Path(path)
    if reset:
        lp = ledger_path(path)
        if lp.exists():
            lp.unlink()
            return f"cleared the hints of {path.name} ({lp.name} removed)"
        return f"no hints recorded for {path.name}"
    if not path.is_file():
        raise CharmlpError(f"{path}: no such file (write a starter with `charmlp exercise init --out {path}`)")
    model = model_of(path) or "mlp"
    if model == "mlp":
        from ..models.mlp_atoms import MLP_CHAIN
        from .backprop import Backprop

        chain, F_ = MLP_CHAIN, Backprop().tensors()
    else:
        ex = exercise_for(model)
        chain, F_ = ex.chain, ex.tensors()
    x = step_name(chain, step)
    ledger = read_ledger(path)
    rec = ledger.get("d" + x, {"level": 0, "revealed": False})
    if reveal:
        rec["revealed"] = True
        text = f"reveal, d{x} (the step charmlp's by-hand walk runs):\n" + hint_text(chain, x, LEVELS + 1, F_)
    else:
        rec["level"] = min(int(rec.get("level", 0)) + 1, LEVELS)
        more = "" if rec["level"] < LEVELS else "  (the last level; `--reveal` shows the expression)"
        text = f"hint {rec['level']} of {LEVELS}, d{x}{more}:\n" + hint_text(chain, x, rec["level"], F_)
    ledger["d" + x] = rec
    _write_ledger(path, ledger)
    return text


def used(path: str | Path) -> tuple[int, int]:
    """(hints asked, steps revealed) recorded for `path`."""
    ledger = read_ledger(path)
    return sum(int(v.get("level", 0)) for v in ledger.values()), sum(bool(v.get("revealed")) for v in ledger.values())
