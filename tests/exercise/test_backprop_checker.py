"""The exercise checker: each common mistake planted into a correct solution is named for its atom (and
only the atoms downstream of it are flagged, as inherited); whole files run in a child process."""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path

import pytest
import torch

from charmlp import cli
from charmlp.exercise import Backprop
from charmlp.exercise.runner import PART4_LR, check_file, diagnose_losses, part4_batches, reference_losses
from conftest import assert_user_error, run_cli

HERE = Path(__file__).parent
SOLUTION = (HERE / "solution.py").read_text()


@pytest.fixture(scope="module")
def ex():
    return Backprop()


def run_source(ex: Backprop, src: str, part: int = 1) -> dict:
    """exec a (planted) solution in this process and return the gradients its part leaves."""
    ns: dict = {}
    exec(compile(src, "learner.py", "exec"), ns)
    fn = ns[f"part{part}"]
    avail = {**ex.tensors(), "dhpreact": ex.grads["hpreact"]}
    out = fn(**{k: avail[k] for k in inspect.signature(fn).parameters})
    return {k: v for k, v in out.items() if k.startswith("d") and k[1:] in ex.grads}


def plant(old: str, new: str) -> str:
    """Replace the first occurrence (part 1 comes first in the file; part 4 repeats some lines)."""
    assert old in SOLUTION, old
    return SOLUTION.replace(old, new, 1)


def test_correct_solution_passes_every_atom(ex):
    rep = ex.check(part=1, **run_source(ex, SOLUTION))
    assert rep.ok and len(rep.rows) == 26
    assert all(r.status in ("exact", "approximate") for r in rep.rows)
    # the plain (1 − h**2)·dh is approximate only, and the checker says why (and that nothing needs fixing)
    hp = rep.row("dhpreact")
    assert hp.status == "approximate" and "addcmul" in hp.diagnosis and "Nothing to fix" in hp.diagnosis
    assert rep.row("dbngain").diagnosis.startswith("approximate: inherits the round-off of dhpreact")
    fixed = plant("dhpreact = (1.0 - h**2) * dh", "dhpreact = torch.addcmul(torch.ones_like(h), h, h, value=-1) * dh")
    assert ex.check(part=1, **run_source(ex, fixed)).row("dhpreact").status == "exact"


MISTAKES = [  # (old line, planted line, atom, kind, words in the diagnosis)
    ("dlogprobs[range(n), Yb] = -1.0 / n", "dlogprobs[range(n), Yb] = -1.0", "logprobs", "factor", "1/n of the mean"),
    ("dcounts_sum_inv = (counts * dprobs).sum(1, keepdim=True)", "dcounts_sum_inv = counts * dprobs", "counts_sum_inv",
     "broadcast", ".sum(1, keepdim=True)"),
    ("dbnvar_inv = (bndiff * dbnraw).sum(0, keepdim=True)", "dbnvar_inv = (bndiff * dbnraw).sum(0)", "bnvar_inv", "keepdim",
     "keepdim=True"),
    ("dbndiff2 = torch.ones_like(bndiff2) * dbnvar / (n - 1)", "dbndiff2 = torch.ones_like(bndiff2) * dbnvar / n", "bndiff2",
     "factor", "Bessel"),
    ("dh = dlogits @ W2.T", "dh = -(dlogits @ W2.T)", "h", "sign", "sign"),
    ("dW2 = h.T @ dlogits", "dW2 = dlogits.T @ h", "W2", "transposed", "transpose"),
    ("dcounts = counts_sum_inv * dprobs + dcounts_sum", "dcounts = counts_sum_inv * dprobs", "counts", "branch",
     "counts_sum"),
    ("dbndiff = bnvar_inv * dbnraw + 2 * bndiff * dbndiff2", "dbndiff = bnvar_inv * dbnraw", "bndiff", "branch", "bndiff2"),
    ("dhprebn = dbndiff + dbnmeani / n", "dhprebn = dbndiff + dbnmeani", "hprebn", "factor", "1/n"),
    ("dprobs = dlogprobs / probs", "dprobs = dlogprobs / (probs * 0)", "probs", "nonfinite", "NaN"),
    ("dhpreact = (1.0 - h**2) * dh", "dhpreact = (1.0 - h) * dh", "hpreact", "tanh", "1 − tanh(x)²"),
]


@pytest.mark.parametrize("old,new,atom,kind,words", MISTAKES, ids=[m[2] + "-" + m[3] for m in MISTAKES])
def test_planted_mistake_is_named_for_its_atom_only(ex, old, new, atom, kind, words):
    rep = ex.check(part=1, **run_source(ex, plant(old, new)))
    row = rep.row("d" + atom)
    assert row.kind == kind and words in row.diagnosis, (row.kind, row.diagnosis)
    assert not rep.ok
    # every other flagged atom is downstream of it and told so ("check d<atom> first" or inherited upstream)
    others = [r for r in rep.rows if not r.ok and r.name != "d" + atom]
    assert all(r.kind == "inherited" for r in others), [(r.name, r.kind, r.diagnosis) for r in others]
    if kind not in ("nonfinite",):  # the atom just below names the planted one
        below = [r for r in others if f"d{atom}" in r.diagnosis]
        assert below or not others


def test_inherited_error_points_upstream(ex):
    rep = ex.check(part=1, **run_source(ex, plant("dlogprobs[range(n), Yb] = -1.0 / n", "dlogprobs[range(n), Yb] = -1.0")))
    assert rep.row("dprobs").diagnosis == "correct for your dlogprobs, which is wrong: check dlogprobs first"
    assert all(r.kind == "inherited" for r in rep.rows[1:] if not r.ok) and not rep.row("dC").ok


def test_two_mistakes_are_both_named_and_the_rest_follow(ex):
    """A mistake below another one is measured against what the learner's own upstream gradient gives."""
    src = plant("dcounts = counts_sum_inv * dprobs + dcounts_sum", "dcounts = counts_sum_inv * dprobs")
    src = src.replace("dbndiff2 = torch.ones_like(bndiff2) * dbnvar / (n - 1)", "dbndiff2 = torch.ones_like(bndiff2) * dbnvar / n", 1)
    rep = ex.check(part=1, **run_source(ex, src))
    assert rep.row("dcounts").kind == "branch"
    assert rep.row("dbndiff2").kind == "factor" and "Bessel" in rep.row("dbndiff2").diagnosis
    own = [r.name for r in rep.rows if not r.ok and r.kind != "inherited"]
    assert own == ["dcounts", "dbndiff2"] and "fix: dcounts, dbndiff2 (the" in rep.summary


def test_fused_parts_and_their_mistakes(ex):
    assert ex.check(part=2, **run_source(ex, SOLUTION, 2)).ok
    assert ex.check(part=3, **run_source(ex, SOLUTION, 3)).ok
    r2 = ex.check(part=2, **run_source(ex, plant("dlogits[range(n), Yb] -= 1\n    dlogits /= n\n    return",
                                                   "dlogits /= n\n    return"), 2))
    assert r2.row("dlogits").kind == "onehot"
    r3 = ex.check(part=3, **run_source(ex, plant("n / (n - 1) * bnraw * (dhpreact * bnraw).sum(0))\n    return",
                                                   "bnraw * (dhpreact * bnraw).sum(0))\n    return"), 3))
    assert r3.row("dhprebn").kind == "bessel" and "n − 1" in r3.row("dhprebn").diagnosis


def test_api_checks_what_is_given_and_displays(ex):
    dlogprobs = torch.zeros_like(ex.logprobs)
    dlogprobs[range(ex.n), ex.Yb] = -1.0 / ex.n
    rep = ex.check(dlogprobs=dlogprobs, dprobs=dlogprobs / ex.probs)
    assert [r.name for r in rep.rows] == ["dlogprobs", "dprobs"] and rep.ok
    assert "<table>" in rep._repr_html_() and "dprobs" in str(rep)
    assert ex.bndiff.shape == (32, 64) and ex.bngain.shape == (1, 64) and ex.n == 32
    with pytest.raises(Exception, match="unknown gradient"):
        ex.check(dfoo=dlogprobs)


def test_part4_training_loop(ex):
    X, Y = part4_batches(ex, 60)
    ref = reference_losses(ex.params, X, Y, PART4_LR)
    ns: dict = {}
    exec(SOLUTION, ns)
    params = {k: v.clone() for k, v in ex.params.items()}
    good = ns["part4"](params, list(zip(X, Y)), PART4_LR)
    assert diagnose_losses(good, ref).status in ("exact", "approximate")
    ns2: dict = {}
    exec(plant("dlogits /= n\n        dh", "dh"), ns2)  # the fused dlogits without its 1/n
    bad = ns2["part4"]({k: v.clone() for k, v in ex.params.items()}, list(zip(X, Y)), PART4_LR)
    row = diagnose_losses(bad, ref)
    assert row.status == "wrong" and row.kind in ("drift", "nonfinite", "sign")
    assert diagnose_losses([ref[0]] * len(ref), ref).kind == "no-update"
    assert diagnose_losses([], ref).status == "missing"


# ── whole files, in a child process ─────────────────────────────────────────────────────────────


def test_correct_file_passes_all_parts_exit_0(capsys):
    assert cli.main(["exercise", "check", str(HERE / "solution.py")]) == 0
    out = capsys.readouterr().out
    assert out.count("correct") == 4 and "part 4" in out


def test_empty_starter_reports_every_atom_missing(tmp_path, capsys):
    f = tmp_path / "ex.py"
    assert cli.main(["exercise", "init", "--out", str(f)]) == 0
    assert cli.main(["exercise", "check", str(f), "--part", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out.splitlines()[-1])
    rows = d["parts"][0]["rows"]
    assert len(rows) == 26 and {r["status"] for r in rows} == {"missing"}
    # init refuses to overwrite: one line, exit 2
    proc = run_cli("exercise", "init", "--out", f)
    assert_user_error(proc, "already exists")


def test_syntax_error_exception_and_endless_loop_get_one_line(tmp_path):
    syn = tmp_path / "syn.py"
    syn.write_text(plant("dlogits = F.softmax(logits, 1)", "dlogits = F.softmax(logits, 1"))
    (rep,) = check_file(syn, parts=(2,))
    assert "SyntaxError" in rep.error and "line" in rep.error and not rep.ok
    exc = tmp_path / "exc.py"
    exc.write_text(plant("dh = dlogits @ W2.T", "dh = dlogits @ W2"))
    (rep,) = check_file(exc, parts=(1,))
    line = SOLUTION.splitlines().index("    dh = dlogits @ W2.T") + 1
    assert f"exc.py, line {line}: dh = dlogits @ W2" in rep.error and "RuntimeError" in rep.error
    assert "\n" not in rep.error and rep.row("dlogits").status == "exact"  # what ran before the line is checked
    loop = tmp_path / "loop.py"
    loop.write_text("def part2(logits):\n    while True:\n        pass\n")
    (rep,) = check_file(loop, timeout=3)
    assert "did not finish within 3 s" in rep.error


@pytest.mark.parametrize("argv,words", [(["check", "no_such_file.py"], "no such file"),
                                        (["check", "x.py", "--part", "5"], "invalid choice"),
                                        (["check-layer", "x.py", "--layer", "tanh"], "FILE:ClassName")])
def test_usage_errors(argv, words, capsys):
    """In this process through main(): exit code 2 and one `error:` line (the subprocess path is tested above)."""
    with pytest.raises(SystemExit) if "invalid" in words else contextlib.nullcontext() as e:
        code = cli.main(["exercise", *argv])
    code = e.value.code if "invalid" in words else code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and words in err, err



# ── a second batch size and seed; repeated indices; part 4's parameters ───────────────────────────────


def test_repeated_index_mistake_is_named(ex):
    src = plant("dC = torch.zeros_like(C)\n    dC.index_add_(0, Xb.view(-1), demb.view(-1, C.shape[1]))",
                "dC = torch.zeros_like(C)\n    dC[Xb] += demb")
    row = ex.check(part=1, **run_source(ex, src)).row("dC")
    assert row.kind == "repeated" and "index_add_" in row.diagnosis and "does not accumulate" in row.diagnosis


def test_literal_batch_sizes_fail_at_the_second_batch_and_part4_names_the_parameter(tmp_path):
    """One file, three planted literals and one wrong update, run once in the sandbox: right at the lectures'
    batch of 32 and wrong (or raising) at the second batch of 13; part 4 names the parameter it updates wrongly."""
    src = plant("dlogprobs[range(n), Yb] = -1.0 / n", "dlogprobs[range(n), Yb] = -1.0 / 32")
    src = src.replace("    dlogits[range(n), Yb] -= 1\n    dlogits /= n\n    return", "    dlogits[range(32), Yb] -= 1\n"
                      "    dlogits /= n\n    return", 1)
    src = src.replace("- n / (n - 1) * bnraw * (dhpreact * bnraw).sum(0))\n    return", "- 32 / 31 * bnraw * (dhpreact * "
                      "bnraw).sum(0))\n    return", 1)
    src = src.replace("(dC, dW1, db1, dW2, db2, dbngain, dbnbias)", "(dC, dW1, db1, -dW2, db2, dbngain, dbnbias)")
    f = tmp_path / "mine.py"
    f.write_text(src)
    r1, r2, r3, r4 = check_file(f)
    row = r1.row("dlogprobs")
    assert row.kind == "batch-size" and "right at batch 32 but wrong at batch 13" in row.diagnosis and "not a literal" in row.diagnosis
    assert r1.row("dC").kind == "inherited" and "fix: dlogprobs (the" in r1.summary
    assert "at batch 13 only" in r2.error and "IndexError" in r2.error and "not a literal 32" in r2.error
    assert r2.row("dlogits").kind == "batch-size"  # right at 32; at 13 the line raised, softmax alone left behind
    assert r3.row("dhprebn").kind == "batch-size"
    assert r4.row("losses").status == "wrong"
    assert r4.row("dW2 (step 1)").kind == "sign" and r4.row("dW1 (step 1)").ok and r4.row("dC (step 1)").ok
    assert "fix: losses, dW2 (step 1)" in r4.summary
