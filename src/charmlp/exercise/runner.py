"""`charmlp exercise check FILE`: run a learner's file in a child process and diagnose what it computed.

The learner's code runs in its own Python process (`_child.py`) with a time limit, so an endless loop,
a crash or an exception becomes one line of the report instead of a hang or a charmlp traceback. The
child is confined (docs/exercise-sandbox.md): a fresh temporary cwd and HOME, a stripped environment,
and limits on address space, file size and CPU time. It is not a security boundary.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ..errors import CharmlpError
from ..models.mlp_atoms import judge_scale
from ..verdict import Report, Row
from .backprop import ATOMS, PARAMS, Backprop
from .diagnose import MATCH_TOL, REL_TOL, NotATensor, combine

PARTS = (1, 2, 3, 4)
PART4_STEPS, PART4_LR = 200, 0.1
PART4_TOL = 1e-4  # |your loss − charmlp's| at every step: float32 round-off grows slowly over 200 steps
DEFAULT_TIMEOUT = 60.0
# address space the learner's code may add to what the child maps once torch is imported (_child.py);
# a normal check peaks near 0.6 GiB all told: 4 GiB leaves room for mistakes
MEMORY_LIMIT = 4 << 30
FILE_SIZE_LIMIT = 64 << 20  # the exercise writes nothing big; the child's own outputs are a few MiB at most
# the parent's environment variables the child keeps (all others are dropped); LC_* are kept too
ENV_KEEP = ("PATH", "LANG", "LANGUAGE", "VIRTUAL_ENV", "SYSTEMROOT", "SystemRoot", "WINDIR", "COMSPEC", "PATHEXT",
            "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
TITLES = {1: "part 1: every atom's gradient", 2: "part 2: the fused cross-entropy backward",
          3: "part 3: the fused BatchNorm backward", 4: "part 4: your training loop, with your gradients only"}


def part4_batches(ex: Backprop, steps: int = PART4_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` training batches of ex.n examples from a generator seeded with ex.seed."""
    from .backprop import _names

    ds = _names()
    g = torch.Generator().manual_seed(ex.seed)
    ix = torch.randint(0, len(ds.Y["train"]), (steps, ex.n), generator=g)
    return ds.X["train"][ix].long(), ds.Y["train"][ix].long()


def reference_losses(params: dict[str, torch.Tensor], X: torch.Tensor, Y: torch.Tensor, lr: float) -> list[float]:
    """charmlp's manual engine (its layers' hand-written backward), plain SGD, on the same batches."""
    from ..nn import BatchNorm1d, Embedding, Flatten, Linear, Sequential, Tanh
    from .training import sgd_losses

    V, E = params["C"].shape
    H = params["W1"].shape[1]
    model = Sequential(Embedding(V, E), Flatten(), Linear(X.shape[2] * E, H), BatchNorm1d(H), Tanh(), Linear(H, V))
    with torch.no_grad():
        for layer_param, key in zip(model.parameters(), ("C", "W1", "b1", "bngain", "bnbias", "W2", "b2")):
            layer_param.copy_(params[key].reshape(layer_param.shape))
    return sgd_losses(model, X, Y, lr)


def diagnose_losses(mine: list[float] | None, ref: list[float]) -> Row:
    """Part 4's one row: the learner's losses against charmlp's, step by step."""
    name, shape = "losses", (len(ref),)
    if not mine:
        return Row(name, "missing", shape)
    if len(mine) != len(ref):
        return Row(name, "wrong shape", shape, (len(mine),), diagnosis=f"returned {len(mine)} losses for {len(ref)} batches: "
                   "one loss per batch, in order", kind="shape")
    t_mine, t_ref = torch.tensor(mine, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)
    diff = (t_mine - t_ref).abs()
    md = diff.max().item() if torch.isfinite(diff).all() else float("inf")
    if md == 0:
        return Row(name, "exact", shape, shape, 0.0)
    if md <= PART4_TOL:
        return Row(name, "approximate", shape, shape, md, diagnosis=f"every step within {PART4_TOL:g} of charmlp's "
                   "(float32 round-off grows a little each step)", kind="rounding")
    if not torch.isfinite(t_mine).all():
        i = int((~torch.isfinite(t_mine)).nonzero()[0])
        return Row(name, "wrong", shape, shape, md, diagnosis=f"the loss is NaN/inf from step {i}: a gradient is far too "
                   "large or has the wrong sign (check them with --part 1)", kind="nonfinite")
    if diff[0] > PART4_TOL:
        return Row(name, "wrong", shape, shape, md, diagnosis=f"the first loss (before any update) is {mine[0]:.4f}, charmlp's "
                   f"{ref[0]:.4f}: the forward differs (BatchNorm's variance with n − 1? b1?)", kind="forward")
    if (t_mine == t_mine[0]).all() or (t_mine[1:] - t_mine[:-1]).abs().max() < 1e-7:
        return Row(name, "wrong", shape, shape, md, diagnosis="the parameters never change: update them in place "
                   "(p -= lr * dp, or p.data -= …); rebinding a name leaves params untouched", kind="no-update")
    i = int((diff > PART4_TOL).nonzero()[0])
    if t_mine[-20:].mean() > t_mine[:5].mean():
        return Row(name, "wrong", shape, shape, md, diagnosis="your loss goes up: step against the gradient, "
                   "p -= lr * dp", kind="sign")
    return Row(name, "wrong", shape, shape, md, diagnosis=f"the losses part from step {i} (yours {mine[i]:.5f}, charmlp's "
               f"{ref[i]:.5f}): an update or a gradient is wrong — check the gradients with --part 1", kind="drift")


def _error_line(err: dict, path: Path) -> str:
    where = f"{path.name}, line {err['line']}" if err.get("line") else path.name
    text = f": {err['text']}" if err.get("text") else ""
    return f"{where}{text} — {err['message']}"


def cpu_seconds(timeout: float) -> int:
    """RLIMIT_CPU for a check with a wall-clock `timeout`: a second more, so that one thread meets the timeout
    first; the CPU limit catches many threads, and a child left running if its parent dies."""
    return math.ceil(timeout) + 1


def child_env(home: str) -> dict[str, str]:
    """The child's environment: the few variables it needs from ours, HOME and TMPDIR in its temp dir."""
    env = {k: v for k, v in os.environ.items() if k in ENV_KEEP or k.startswith("LC_")}
    src = str(Path(__file__).resolve().parents[2])  # so the learner's file can import charmlp
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])),
               HOME=home, TMPDIR=home, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1")
    return env


def run_child(args: list[str], timeout: float) -> subprocess.CompletedProcess | None:
    """Run `_child.py ARGS` confined, in a fresh temporary cwd; None when it ran past `timeout` (it is killed).

    Raises CharmlpError when the child was stopped for its CPU time or file size (its own signals).
    """
    limits = f"{MEMORY_LIMIT},{FILE_SIZE_LIMIT},{cpu_seconds(timeout)}"
    cmd = [sys.executable, str(Path(__file__).with_name("_child.py")), "--limits", limits, *args]
    with tempfile.TemporaryDirectory(prefix="charmlp-cwd-") as cwd:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env(cwd), cwd=cwd)
        except subprocess.TimeoutExpired:
            return None
    if hasattr(signal, "SIGXCPU") and proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # SIGKILL: the hard limit
        raise CharmlpError(_LIMIT_TEXT["cpu"].format(cpu_seconds(timeout)))
    if hasattr(signal, "SIGXFSZ") and proc.returncode == -signal.SIGXFSZ:
        raise CharmlpError(_LIMIT_TEXT["file"])
    return proc


_LIMIT_TEXT = {"memory": f"your file used more than {MEMORY_LIMIT >> 30} GiB of memory (the check's limit)",
               "file": f"your file wrote a file bigger than {FILE_SIZE_LIMIT >> 20} MiB (the check's limit)",
               "cpu": "your file ran past the CPU-time limit ({} s): an endless loop, or a long training run?"}


def _raise_on_limit(err: dict | None, path: Path) -> None:
    """A learner's error that came from a limit (memory, file size) stops the whole check."""
    if err and err.get("limit"):
        where = f" (line {err['line']})" if err.get("line") else ""
        raise CharmlpError(f"{path.name}{where}: {_LIMIT_TEXT[err['limit']]}")


def _read_result(proc: subprocess.CompletedProcess | None, wd: str, path: Path, timeout: float,
                 endless: str) -> dict | str:
    """What a sandboxed child wrote in result.json, or the one error line of a child that timed out
    or stopped Python itself (every check's child: the exercise's parts and the layer check)."""
    if proc is None:
        return f"{path.name} did not finish within {timeout:g} s: {endless}"
    res_file = Path(wd, "result.json")
    if not res_file.is_file():
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return f"{path.name} stopped Python itself: {last}"
    return json.loads(res_file.read_text(encoding="utf-8"))


def _child_result(proc: subprocess.CompletedProcess | None, wd: str, path: Path, timeout: float,
                  endless: str) -> dict | str:
    """What the sandboxed child of an exercise check wrote (result.json), or the one error line of a
    file that failed as a whole (timed out, stopped Python itself, did not import); a resource
    limit the learner's code hit is raised as the user error it is."""
    result = _read_result(proc, wd, path, timeout, endless)
    if isinstance(result, str):
        return result
    for err in [result["import_error"], *(r.get("error") for r in result["parts"].values()),
                *(sr.get("error") for r in result["parts"].values() for sr in r.get("sets", {}).values())]:
        _raise_on_limit(err, path)
    if result["import_error"]:
        return _error_line(result["import_error"], path)
    return result


def check_layer_file(target: str, kind: str, timeout: float = DEFAULT_TIMEOUT) -> Report:
    """`FILE:ClassName`: run the learner's layer class through the probes of `kind` in a time-limited child
    process, and diagnose its raw results here, in charmlp's own process."""
    from safetensors.torch import load_file, save_file

    from .layers import _notes, check_kind, diagnose, plan

    path_s, sep, cls_name = target.rpartition(":")
    if not sep or not path_s or not cls_name.isidentifier():
        raise CharmlpError(f"expected FILE:ClassName, got {target!r}")
    spec = check_kind(kind)
    path = Path(path_s)
    if not path.is_file():
        raise CharmlpError(f"{path}: no such file")
    title = f"layer check: {cls_name} as {kind} · {path.name}"
    p = plan(kind)
    with tempfile.TemporaryDirectory(prefix="charmlp-layer-") as wd:
        Path(wd, "probes.json").write_text(json.dumps(p.probes), encoding="utf-8")
        save_file({k: v.clone().contiguous() for k, v in p.tensors.items()}, os.path.join(wd, "probes.safetensors"))
        proc = run_child(["--layer", str(path.resolve()), cls_name, wd], timeout)
        out = _read_result(proc, wd, path, timeout, "an endless loop?")
        if isinstance(out, str):
            return Report(title, error=out)
        results = load_file(os.path.join(wd, "results.safetensors")) if out["records"] is not None else {}
    _raise_on_limit(out["error"], path)
    if out["error"]:
        return Report(title, error=_error_line(out["error"], path))
    for rec in out["records"]:
        _raise_on_limit(rec["error"], path)
        for r in rec["results"].values():
            _raise_on_limit(r.get("error"), path)
    if out["records"][0]["error"]:
        return Report(title, error=_error_line(out["records"][0]["error"], path))
    rows, error = diagnose(p, out["records"], results)
    return Report(title, rows, error, _notes(spec))


def check_file(path: str | Path, parts: tuple[int, ...] | None = None, seed: int | None = None,
               timeout: float = DEFAULT_TIMEOUT, batch_size: int = 32) -> list[Report]:
    """Run the learner's file and check each part it defines (or `parts`); one Report per part.

    Raises CharmlpError for a file that does not exist, or that defines none of part1…part4 when
    no part is asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise CharmlpError(f"{path}: no such file (write a starter with `charmlp exercise init --out {path}`)")
    for p in parts or ():
        if p not in PARTS:
            raise CharmlpError(f"--part must be one of 1, 2, 3, 4, got {p}")
    if not timeout > 0:
        raise CharmlpError(f"--timeout must be positive, got {timeout}")
    from .exercises import model_of

    model = model_of(path) or "mlp"  # the mark `init` writes; an unmarked file is the MLP exercise
    if model != "mlp":
        return check_chain_file(path, model, parts, seed, timeout, batch_size)
    ex = Backprop(**({} if seed is None else {"seed": seed}), batch_size=batch_size)
    # the second set: another batch size (odd, not 32) and seed, so that a literal 32 or a fixed n shows
    ex2 = Backprop(seed=(ex.seed + 1) % 2**63, batch_size=second_batch(batch_size))
    sets = {"a": ex, "b": ex2}
    asked = tuple(parts or PARTS)
    with tempfile.TemporaryDirectory(prefix="charmlp-exercise-") as wd:
        from safetensors.torch import save_file

        X4, Y4 = part4_batches(ex) if 4 in asked else (torch.zeros(0, ex.n, 3, dtype=torch.long),) * 2
        tensors = {f"{s}.{k}": v.clone().contiguous() for s, e in sets.items() for k, v in e.tensors().items()
                   if isinstance(v, torch.Tensor)}
        tensors.update({f"{s}.ref_hpreact": e.grads["hpreact"].contiguous() for s, e in sets.items()})
        tensors.update(batch_X=X4.contiguous(), batch_Y=Y4.contiguous())
        save_file(tensors, os.path.join(wd, "inputs.safetensors"))
        Path(wd, "meta.json").write_text(json.dumps({"sets": {s: e.n for s, e in sets.items()}, "steps": len(X4),
                                                     "lr": PART4_LR, "params": list(PARAMS)}))
        proc = run_child([str(path.resolve()), wd, ",".join(map(str, asked))], timeout)
        def whole_file(error: str) -> list[Report]:  # the file as a whole failed: one report
            titles = [TITLES[p] for p in parts] if parts else ["exercise check"]
            return [Report(f"{t} · {path.name}", error=error) for t in titles]

        result = _child_result(proc, wd, path, timeout, "an endless loop, or a long training run at the top of the file?")
        if isinstance(result, str):
            return whole_file(result)
        if parts is None and not any(r["defined"] for r in result["parts"].values()):
            raise CharmlpError(f"{path} defines none of part1 … part4: start from `charmlp exercise init`")

        reports = []
        for p in asked:
            rec = result["parts"][str(p)]
            title = f"{TITLES[p]} · {path.name} (seed {ex.seed}, batch {ex.n}; again at batch {ex2.n}, seed {ex2.seed})"
            if not rec["defined"]:
                if parts is not None:
                    reports.append(Report(title, error=f"{path.name} has no function part{p}"))
                continue
            if p == 4:
                rep = _part4_report(title, rec, sets, X4, Y4, wd)
                if rec.get("error"):
                    rep.error = _error_line(rec["error"], path)
            else:
                rep = _part_report(title, p, rec, sets, wd, MLP_NAMES)
            if not rep.error:
                rep.error = _set_error(rec, path, ex2)
            reports.append(rep)
        return reports


SECOND_BATCH = 13  # the second set's batch: odd, and none of the exercise's other sizes (3, 10, 27, 30, 64)
MLP_NAMES = frozenset("d" + a for a in ATOMS)


def second_batch(batch_size: int) -> int:
    """The second input set's batch: SECOND_BATCH, or another odd size where the first set already has it."""
    return SECOND_BATCH if batch_size != SECOND_BATCH else SECOND_BATCH + 4


def _set_error(rec: dict, path: Path, second) -> str | None:
    """The error line of a part that raised: at the lectures' batch as it is, at the second batch only
    as a batch-size dependence (`second`: that set's exercise)."""
    errs = {s: sr.get("error") for s, sr in rec.get("sets", {}).items()}
    if errs.get("a"):
        return _error_line(errs["a"], path)
    if errs.get("b"):  # right at the lectures' batch, raised at the second one
        return (f"at batch {second.n} only (seed {second.seed}): {_error_line(errs['b'], path)} — it depends on the "
                "batch size: use n (or x.shape[0]), not a literal 32")
    return None


def _learner_grads(wd: str, name: str, other: dict, names: frozenset[str] | tuple[str, ...]) -> dict:
    """The gradients a part left in `name` (a safetensors file), those of the exercise's `names` only;
    a value that is not a tensor (`other`: name → its type) as its NotATensor stand-in."""
    from safetensors.torch import load_file

    f = Path(wd, name)
    grads = load_file(str(f)) if f.is_file() else {}
    grads = {k: v for k, v in grads.items() if k in names}
    grads.update({k: NotATensor(typ) for k, typ in other.items() if k in names})
    return grads


def _labels(sets: dict) -> dict[str, str]:
    return {s: f"batch {e.n}" for s, e in sets.items()}


def _part_report(title: str, p: int, rec: dict, sets: dict, wd: str, names: frozenset[str] | tuple[str, ...]) -> Report:
    """The gradient parts (the MLP's 1–3, the other models' 1): each set's rows from the shared
    diagnosis, one row per atom over both sets (`combine`)."""
    labels = _labels(sets)
    per_set = {s: e.check(part=p, **_learner_grads(wd, f"out{p}{s}.safetensors", rec["sets"][s].get("other", {}), names))
               for s, e in sets.items()}
    first = per_set["a"]
    rows = [combine(r.name, [(labels[s], per_set[s].row(r.name)) for s in sets]) for r in first.rows]
    rep = Report(title, rows)
    returned = rec["sets"]["a"].get("returned")
    if returned:  # not its variables: the rows above come from what it left in its locals
        rep.rows.insert(0, Row("return value", "wrong", diagnosis=f"part{p} returned {returned}: "
                               "end it with `return locals()` so charmlp gets its variables", kind="return"))
    return rep


def _part4_report(title: str, rec: dict, sets: dict, X4, Y4, wd: str) -> Report:
    """Part 4: the losses of the whole loop, then each parameter's first update, read back as the gradient it
    used (p₀ − p₁)/lr and diagnosed as part 1's rows are, at both sets."""
    from safetensors.torch import load_file

    ex = sets["a"]
    rows = [diagnose_losses(rec.get("losses"), reference_losses(ex.params, X4, Y4, PART4_LR))]
    labels = _labels(sets)
    per: dict[str, list] = {}
    for s, e in sets.items():
        f = Path(wd, f"out4{s}.safetensors")
        after = load_file(str(f)) if f.is_file() else {}
        for k in PARAMS:
            per.setdefault(k, []).append((labels[s], _update_row(e, k, after.get(k))))
    rows += [combine(f"d{k} (step 1)", v) for k, v in per.items()]
    return Report(title, rows, notes=["dX (step 1): the gradient your first update used, (X before − X after) / lr, "
                                      "against the true one at that batch"])


def _update_row(ex: Backprop, k: str, after) -> Row:
    """The gradient the learner's first update of parameter `k` used, diagnosed against the true one."""
    from .backprop import diagnose as atom_diagnose

    p0, r = ex.params[k], ex.grads[k]
    name = f"d{k} (step 1)"
    if not isinstance(after, torch.Tensor) or after.numel() != p0.numel():
        return Row(name, "missing", tuple(r.shape), diagnosis=f"params[{k!r}] is gone or has another shape after part4")
    g = (p0 - after.reshape(p0.shape)) / PART4_LR
    scale = judge_scale(k, ex.grads)
    scale = r.abs().max().item() if scale is None else scale
    # the update rounds p₁ = p₀ − lr·dp to float32: what the gradient read back from it can be off by
    slack = 4 * torch.finfo(torch.float32).eps * p0.abs().max().item() / PART4_LR
    rel = REL_TOL + slack / max(scale, 1e-30)
    row = atom_diagnose(k, g, ex.tensors(), ex.grads, {k: g}, scale, rel=rel, match=max(MATCH_TOL, 4 * rel))
    row.name = name
    if not row.ok and not g.any():
        row.kind, row.diagnosis = "no-update", (f"{k} did not change: update it in place (p -= lr * dp, or p.data -= …); "
                                                "rebinding a name leaves params untouched")
    return row


def check_chain_file(path: Path, model: str, parts: tuple[int, ...] | None, seed: int | None, timeout: float,
                     batch_size: int = 32, train_steps: int | None = None) -> list[Report]:
    """`check` of a file marked for `model` (any but the MLP): part1 (every gradient) and part2 (training
    on them, against charmlp's engine) run confined as the MLP's parts, diagnosed here with the model's
    Exercise (one checker, the model's chain)."""
    from safetensors.torch import save_file

    from .exercises import exercise_for, training_batches
    from .training import TRAIN_LR, TRAIN_STEPS, engine_losses, name_parameter

    for p in parts or ():
        if p not in (1, 2):
            raise CharmlpError(f"--part must be 1 or 2 for the {model} exercise (it has parts 1 and 2), got {p}")
    asked = tuple(parts or (1, 2))
    ex = exercise_for(model, seed, batch_size)
    # part 1 again at a second batch size and seed, as the MLP's parts: a literal batch size or a fixed n shows
    ex2 = exercise_for(model, (ex.seed + 1) % 2**63, second_batch(batch_size))
    sets = {"a": ex, "b": ex2}
    titles = {1: f"part 1: every atom's gradient ({model})", 2: f"part 2: training on your gradients ({model})"}
    title = {1: f"{titles[1]} · {path.name} (seed {ex.seed}, batch {ex.n}; again at batch {ex2.n}, seed {ex2.seed})",
             2: f"{titles[2]} · {path.name} (seed {ex.seed}, batch {ex.n})"}
    X, Y = training_batches(ex, train_steps or TRAIN_STEPS) if 2 in asked else (torch.zeros(0, ex.n, 1, dtype=torch.long),) * 2

    def whole_file(error: str) -> list[Report]:
        return [Report(title[p], error=error) for p in asked]

    with tempfile.TemporaryDirectory(prefix="charmlp-exercise-") as wd:
        # both input sets in the child's format; part 2 trains at the first set's batch
        tensors = {f"{s}.{k}": v.clone().contiguous() for s, e in sets.items() for k, v in e.tensors().items()
                   if isinstance(v, torch.Tensor)}
        save_file({**tensors, "batch_X": X.contiguous(), "batch_Y": Y.contiguous()}, os.path.join(wd, "inputs.safetensors"))
        Path(wd, "meta.json").write_text(json.dumps({"sets": {s: e.n for s, e in sets.items()}, "steps": len(X),
                                                     "lr": TRAIN_LR, "params": list(ex.params), "train_part": 2,
                                                     "step_sets": False}))  # part 2 is judged by its losses alone
        proc = run_child([str(path.resolve()), wd, ",".join(map(str, asked))], timeout)
        result = _child_result(proc, wd, path, timeout, "an endless loop?")
        if isinstance(result, str):
            return whole_file(result)
        reports: dict[int, Report] = {}
        rec = result["parts"].get("1")
        if rec is not None:
            if not rec.get("defined"):
                reports[1] = Report(title[1], error=f"{path.name} has no function part1 (start from `charmlp exercise init --model {model}`)")
            else:
                rep = reports[1] = _part_report(title[1], 1, rec, sets, wd, ex.names)
                rep.error = _set_error(rec, path, ex2)
    rec2 = result["parts"].get("2")
    if rec2 is not None:
        part1 = reports.get(1)
        if not rec2.get("defined"):
            reports[2] = Report(title[2], error=f"{path.name} has no function part2")
        elif part1 is not None and any(r.status == "missing" for r in part1.rows):
            # training needs every gradient: not started yet, not an error
            reports[2] = Report(title[2], [Row("losses", "missing", (len(X),), diagnosis="trains once part 1 is complete")])
        else:
            row = diagnose_losses(rec2.get("losses"), engine_losses(model, ex.params, X, Y, TRAIN_LR))
            reports[2] = Report(title[2], [name_parameter(row, part1, ex.chain.params)])
            if rec2["error"]:
                reports[2].error = _error_line(rec2["error"], path)
    return [reports[p] for p in asked if p in reports]
