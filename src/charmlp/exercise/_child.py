"""Runs a learner's exercise file in its own process (started by `runner.run_child`).

    python _child.py --limits AS,FSIZE,CPU LEARNER_FILE WORKDIR PARTS
    python _child.py --limits AS,FSIZE,CPU --layer LEARNER_FILE CLASS WORKDIR

The limits (address space and file size in bytes, CPU seconds) are set with setrlimit once torch is
imported and before the learner's file is; see docs/exercise-sandbox.md.

Reads WORKDIR/inputs.safetensors and WORKDIR/meta.json, calls the file's part<N> functions with the
tensors they name — once per input set (the lectures' batch of 32, then a second batch of another size
and seed) — and writes the variables d<atom> each function leaves behind (read when it returns, or
where it raised) to WORKDIR/out<N><set>.safetensors, and WORKDIR/result.json: per part and set the error
(line, message) if any, non-tensor gradients, and part 4's losses and one-step parameters. With --layer, runs the probes of
WORKDIR/probes.json on the class and writes their raw results (`run_probes`). Either way only raw
values come back: the parent diagnoses. Imports only torch and safetensors.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import inspect
import io
import json
import os
import signal
import sys
import traceback


def _mapped_bytes() -> int:
    """This process's address space now (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _set_limits(spec: str) -> None:
    """Cap this process's address space, file size and CPU time (Unix only; elsewhere nothing is capped)."""
    try:
        import resource
    except ImportError:
        return
    mem, fsize, cpu = map(int, spec.split(","))
    mem += _mapped_bytes()  # the allowance is the learner's: torch's own mappings (larger in a CUDA build) are not counted
    for which, soft, hard in ((resource.RLIMIT_AS, mem, mem), (resource.RLIMIT_FSIZE, fsize, fsize),
                              (resource.RLIMIT_CPU, cpu, cpu + 1)):  # CPU: SIGXCPU at soft, SIGKILL at hard
        old_hard = resource.getrlimit(which)[1]
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))
    # a write past RLIMIT_FSIZE then raises OSError(EFBIG) at the learner's line instead of killing us
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _limit(exc: BaseException) -> str | None:
    """Which limit `exc` comes from: "memory", "file" or None."""
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return "memory"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "file"
    return None


def _where(exc: BaseException, path: str) -> dict:
    """The learner's line that raised `exc` (the deepest frame in their file) and the message."""
    if isinstance(exc, SyntaxError) and exc.filename and os.path.abspath(exc.filename) == path:
        return {"line": exc.lineno, "text": (exc.text or "").strip(), "message": f"{type(exc).__name__}: {exc.msg}"}
    line, text = None, ""
    for fs in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(fs.filename) == path:
            line, text = fs.lineno, (fs.line or "").strip()
    msg = " ".join(str(exc).split()) or ""
    return {"line": line, "text": text, "message": f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__,
            "limit": _limit(exc)}


def _call(fn, available: dict) -> tuple[dict, object, dict | None]:
    """Call fn with the inputs it names; return (its locals at the end, its return value, error)."""
    params = inspect.signature(fn).parameters
    unknown = [k for k, p in params.items() if k not in available and p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if unknown:
        return {}, None, {"line": fn.__code__.co_firstlineno, "text": "",
                          "message": f"{fn.__name__} asks for {', '.join(unknown)}, which the exercise does not give; "
                                     f"it gives {', '.join(available)}"}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = dict(available)
    else:
        kwargs = {k: available[k] for k in params if k in available}
    seen: dict = {}

    def profile(frame, event, arg):  # keep the function's locals as it returns (normally or by an exception)
        if event == "return" and frame.f_code is fn.__code__:
            seen.clear()
            seen.update(frame.f_locals)

    result, err = None, None
    sys.setprofile(profile)
    try:
        result = fn(**kwargs)
    except BaseException as e:  # noqa: BLE001 — the learner's code: report any failure, including SystemExit
        err = e
    finally:
        sys.setprofile(None)
    return seen, result, err


def main(path: str, workdir: str, parts: str) -> int:
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    path = os.path.abspath(path)
    meta = json.load(open(os.path.join(workdir, "meta.json"), encoding="utf-8"))
    inputs = load_file(os.path.join(workdir, "inputs.safetensors"))
    result: dict = {"import_error": None, "parts": {}}
    out = io.StringIO()  # the learner's prints stay out of the report
    try:
        spec = importlib.util.spec_from_file_location("learner_exercise", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["learner_exercise"] = module
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(module)
    except BaseException as e:  # noqa: BLE001
        result["import_error"] = _where(e, path)
        json.dump(result, open(os.path.join(workdir, "result.json"), "w", encoding="utf-8"))
        return 0
    train = int(meta.get("train_part", 4))  # the part that trains on the learner's gradients (the MLP's part4)
    sets = meta["sets"]  # {"a": n, "b": n}: the lectures' batch and a second one (another size and seed)
    base = {s: {**{k.split(".", 1)[1]: v for k, v in inputs.items() if k.startswith(s + ".") and ".ref_" not in "." + k},
                "n": int(n)} for s, n in sets.items()}

    def run(fn, available):
        with contextlib.redirect_stdout(out):
            local, ret, err = _call(fn, available)
        return local, ret, None if err is None else (err if isinstance(err, dict) else _where(err, path))

    for part in map(int, parts.split(",")):
        fn = getattr(module, f"part{part}", None)
        if not callable(fn):
            result["parts"][str(part)] = {"defined": False}
            continue
        rec: dict = {"defined": True, "sets": {}}
        if part == train:
            # the whole loop on the lectures' batches (its losses), then one step from each set's parameters and
            # batch, whose updated parameters tell each one's gradient
            steps = int(meta["steps"])
            params = {k: inputs[f"a.{k}"].clone() for k in meta["params"]}
            _, ret, rec["error"] = run(fn, {"params": params, "lr": float(meta["lr"]),
                                            "batches": [(inputs["batch_X"][i], inputs["batch_Y"][i]) for i in range(steps)]})
            try:
                if isinstance(ret, (str, bytes, dict)):
                    raise TypeError(f"got a {type(ret).__name__}")
                rec["losses"] = None if ret is None else [float(x) for x in ret]
            except (TypeError, ValueError) as e:
                rec["losses"], rec["error"] = None, rec["error"] or {"line": None, "text": "", "message":
                                                                     f"part{part} must return its list of losses: {e}"}
            for s in sets if meta.get("step_sets", True) else ():  # the MLP's part 4 reads each set's one step
                params = {k: inputs[f"{s}.{k}"].clone() for k in meta["params"]}
                _, _, err = run(fn, {"params": params, "lr": float(meta["lr"]), "batches": [(inputs[f"{s}.Xb"], inputs[f"{s}.Yb"])]})
                after = {k: v.detach().float().contiguous().clone() for k, v in params.items() if isinstance(v, torch.Tensor)}
                save_file(after, os.path.join(workdir, f"out{part}{s}.safetensors"))
                rec["sets"][s] = {"error": err}
            result["parts"][str(part)] = rec
            continue
        for s in sets:
            available = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in base[s].items()}
            if part == 3:
                available["dhpreact"] = inputs[f"{s}.ref_hpreact"].clone()
            local, ret, err = run(fn, available)
            srec: dict = {"error": err}
            if isinstance(ret, dict):
                local.update(ret)
            elif err is None:  # the parts end with `return locals()`
                srec["returned"] = "None" if ret is None else f"a {type(ret).__name__}"
            grads, other = {}, {}
            for k, v in local.items():
                if not (k.startswith("d") and len(k) > 1) or v is None:
                    continue
                if isinstance(v, torch.Tensor):
                    grads[k] = (v.detach() if v.is_floating_point() else v.detach().float()).contiguous().clone()
                else:
                    other[k] = type(v).__name__
            save_file(grads, os.path.join(workdir, f"out{part}{s}.safetensors"))
            srec["other"] = other
            rec["sets"][s] = srec
        result["parts"][str(part)] = rec
    json.dump(result, open(os.path.join(workdir, "result.json"), "w", encoding="utf-8"))
    return 0


# ── check-layer: the learner's class run through the parent's probes, raw results only ─────────────
# A probe is one fresh instance of the class: built with the probe's arguments, its parameters found by
# attribute (aliases, dotted paths allowed) and set to the probe's values, then driven step by step
# (train/eval, call, read attributes, backward, read each parameter's .grad). Only the raw results come
# back; charmlp's parent process compares them with its reference layers and diagnoses
# (exercise/layers.py), so nothing the learner's code does in this process can touch the verdict.


def _lookup(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _find_param(layer, aliases: list[str]):
    for name in aliases:
        try:
            return name, _lookup(layer, name)
        except AttributeError:
            continue
    return None, None


def _encode(value, key: str, out: dict):
    """A JSON stand-in for a learner's value; its tensors go into `out` under `key`."""
    import torch

    if value is None:
        return {"none": True}
    if isinstance(value, torch.Tensor):
        out[key] = value.detach().clone().contiguous()
        return {"tensor": key}
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) or v is None for v in value):
        return {"tuple": [_encode(v, f"{key}.{i}", out) for i, v in enumerate(value)]}
    return {"type": type(value).__name__}


def _n_args(method, given: int) -> int:
    """How many of the `given` positional arguments to pass: at least the required ones."""
    try:
        params = list(inspect.signature(method).parameters.values())
    except (TypeError, ValueError):
        return given
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return given
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is inspect.Parameter.empty for p in positional)
    return max(required, min(given, len(positional)))


def _learner_error(exc: BaseException, path: str | None) -> dict:
    """`_where` in the learner's file; in this process (no file given), the deepest frame outside charmlp
    and torch, which is the learner's."""
    if path:
        return _where(exc, path)
    msg = " ".join(str(exc).split())
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    line, text = None, ""
    for fs in traceback.extract_tb(exc.__traceback__):
        f = os.path.abspath(fs.filename)
        if not f.startswith(here) and f"{os.sep}torch{os.sep}" not in f:
            line, text = fs.lineno, (fs.line or "").strip()
    return {"line": line, "text": text, "message": f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__,
            "limit": _limit(exc)}


def run_probes(cls, probes: list[dict], tensors: dict, path: str | None = None) -> tuple[list[dict], dict]:
    """Run every probe on a fresh instance of `cls` (in this process, under torch.no_grad()).

    Returns (one record per probe, the tensors the records name). A record: `error` (the constructor
    raised), `params` (per parameter: the attribute found, or None), `n_parameters` (len(parameters()),
    or an error), `has_backward`, and `results` by the name each step gave (a value stand-in from
    `_encode`, or {"error": …}); the steps after one that raised do not run."""
    import torch

    records, out = [], {}
    for i, probe in enumerate(probes):
        rec: dict = {"error": None, "params": [], "n_parameters": None, "has_backward": False, "results": {}}
        records.append(rec)
        try:
            layer = cls(*probe.get("args", ()), **probe.get("kwargs", {}))
        except BaseException as e:  # noqa: BLE001 — the learner's code
            rec["error"] = _learner_error(e, path)
            continue
        found, names, sets = [], [], probe.get("set") or []
        for j, aliases in enumerate(probe.get("params", ())):
            name, p = _find_param(layer, aliases)
            if not isinstance(p, torch.Tensor):
                name, p = None, None
            found.append(p)
            names.append(name)
            value = sets[j] if j < len(sets) else None
            if p is not None and value is not None and p.numel() == tensors[value].numel():
                with torch.no_grad():
                    p.copy_(tensors[value].reshape(p.shape))
        try:
            ps = layer.parameters() if callable(getattr(layer, "parameters", None)) else None
            rec["n_parameters"] = None if ps is None else len(list(ps))
        except BaseException as e:  # noqa: BLE001
            rec["n_parameters"] = {"error": _learner_error(e, path)}
        rec["has_backward"] = callable(getattr(layer, "backward", None))
        # the values the learner's layer holds (after the probe set them)
        rec["params"] = [None if p is None else {"name": n, "value": _encode(p, f"{i}.param{j}", out)}
                         for j, (n, p) in enumerate(zip(names, found))]
        for step in probe.get("steps", ()):
            op, name = step["op"], step.get("as")
            try:
                with torch.no_grad():
                    if op in ("train", "eval"):
                        if isinstance(layer, torch.nn.Module):
                            layer.train(op == "train")
                        else:
                            layer.training = op == "train"
                        continue
                    if op == "zero_grads":
                        for p in found:
                            if p is not None:
                                p.grad = None
                        continue
                    if op == "call":
                        args = [tensors[k].clone() for k in step["args"]]
                        value = layer(*args)
                    elif op == "backward":
                        if not rec["has_backward"]:
                            continue
                        args = [tensors[k].clone() for k in step["args"]]
                        value = layer.backward(*args[: _n_args(layer.backward, len(args))])
                    elif op == "read":
                        value = [_find_param(layer, aliases)[1] for aliases in step["attrs"]]
                        value = [v if isinstance(v, torch.Tensor) else None for v in value]
                    elif op == "grads":
                        if not rec["has_backward"]:
                            continue
                        value = [None if p is None else p.grad for p in found]
                    else:
                        raise ValueError(f"unknown probe step {op!r}")
            except BaseException as e:  # noqa: BLE001 — the learner's code
                rec["results"][name] = {"error": _learner_error(e, path)}
                break
            rec["results"][name] = _encode(value, f"{i}.{name}", out)
    return records, out


def layer_main(path: str, cls_name: str, workdir: str) -> int:
    """`check-layer`: import the learner's file, run the parent's probes (WORKDIR/probes.json and
    probes.safetensors) on the class, write the raw results (result.json, results.safetensors)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    path = os.path.abspath(path)
    probes = json.load(open(os.path.join(workdir, "probes.json"), encoding="utf-8"))
    tensors = load_file(os.path.join(workdir, "probes.safetensors"))
    result: dict = {"error": None, "records": None}
    try:
        spec = importlib.util.spec_from_file_location("learner_layers", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["learner_layers"] = module
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
            cls = getattr(module, cls_name, None)
            if cls is None:
                result["error"] = {"line": None, "text": "", "message": f"no class {cls_name} in the file"}
            elif not callable(cls):
                result["error"] = {"line": None, "text": "", "message": f"{cls_name} is not a class"}
            else:
                result["records"], out = run_probes(cls, probes, tensors, path)
                save_file(out, os.path.join(workdir, "results.safetensors"))
    except BaseException as e:  # noqa: BLE001
        result["error"] = _where(e, path)
    json.dump(result, open(os.path.join(workdir, "result.json"), "w", encoding="utf-8"))
    return 0


if __name__ == "__main__":
    assert sys.argv[1] == "--limits", "usage: _child.py --limits AS,FSIZE,CPU ..."
    import torch  # noqa: F401  (charmlp's own import, before the limits: see _set_limits)
    _set_limits(sys.argv[2])
    args = sys.argv[3:]
    if args[0] == "--layer":
        sys.exit(layer_main(*args[1:4]))
    sys.exit(main(*args[:3]))
