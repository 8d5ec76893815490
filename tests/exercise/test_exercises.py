"""Every model's exercise after the MLP: the reference answers pass, planted mistakes are named and
localised, the starter is generated and checked through the same confined runner."""

from __future__ import annotations

import json

import pytest
import torch

from charmlp import cli
from charmlp.errors import CharmlpError
from charmlp.exercise import GRUBackprop, RNNBackprop, TransformerBackprop, WaveNetBackprop
from charmlp.exercise.chain_starter import starter_text
from charmlp.exercise.exercises import CLASSES, model_of
from charmlp.exercise.runner import check_chain_file

MODELS = tuple(CLASSES)


@pytest.fixture(scope="module")
def exercises():
    return {m: CLASSES[m]() for m in MODELS}


def branch(ex, atom: str, via: str) -> torch.Tensor:
    """One branch's contribution to datom, with the true gradients upstream."""
    return ex.chain.branches[atom][via](ex.tensors(), ex.grads)


@pytest.mark.parametrize("model", MODELS)
def test_nothing_given_is_all_missing_and_the_reference_passes(exercises, model):
    ex = exercises[model]
    empty = ex.check(part=1)
    assert [r.status for r in empty.rows] == ["missing"] * len(ex.chain.order)
    rep = ex.check(part=1, **ex.reference())
    assert rep.ok and {r.status for r in rep.rows} <= {"exact", "approximate"}, rep.format_text()


# three mistakes per model: (gradient, how to spoil the reference, the kind diagnosed, text in the diagnosis)
MISTAKES = {
    "wavenet": [
        ("dbngain1", lambda ex, d: d["dbngain1"].view(1, 1, -1), "keepdim", "keepdim"),
        ("db3", lambda ex, d: d["db3"] * ex.n, "factor", "1/n of the mean"),
        ("da1", lambda ex, d: d["da1"] * (2 * ex.n - 1) / (2 * ex.n), "factor", "divides by N − 1 = 63"),  # over B·T rows
    ],
    "rnn": [
        ("dh2", lambda ex, d: branch(ex, "h2", "hs"), "branch", "only the contribution through hs"),
        ("dh1", lambda ex, d: branch(ex, "h1", "h2"), "branch", "only the contribution through h2"),
        ("dWh", lambda ex, d: d["dWh"].T, "transposed", "transpose"),
        ("dlogits", lambda ex, d: d["dlogits"] * 3, "factor", "mean over all N = 96 targets"),
    ],
    "gru": [
        ("dh1", lambda ex, d: d["dh1"] - branch(ex, "h1", "z2"), "branch", "through z2 is missing"),
        ("dh0", lambda ex, d: d["dh0"].expand(ex.n, -1), "broadcast", "summed over"),
        ("dz2", lambda ex, d: -d["dz2"], "sign", "sign"),
    ],
    "transformer": [
        ("dx0", lambda ex, d: branch(ex, "x0", "x1"), "branch", "only the contribution through x1"),
        ("dq", lambda ex, d: d["dq"] * ex.n, "factor", "n = 32 times"),
        ("dwpe", lambda ex, d: d["dtok"], "broadcast", "broadcast along dim 0"),
    ],
}


@pytest.mark.parametrize("model", MODELS)
def test_planted_mistakes_are_diagnosed_and_localised(exercises, model):
    ex = exercises[model]
    for name, spoil, kind, text in MISTAKES[model]:
        d = ex.reference()
        d[name] = spoil(ex, d)
        rows = {r.name: r for r in ex.check(**d).rows}
        assert rows[name].kind == kind and text in rows[name].diagnosis, (name, rows[name])
        # what depends on it only (its downstream steps, fed the learner's own gradient) is named as inherited
        for r in rows.values():
            if r.name != name and r.status == "wrong":
                assert r.kind in ("inherited",) and name in r.diagnosis, (name, r)
    # one mistake, its consequences: d of what the rnn's h2 feeds into (xp) is "correct for your dh2"
    if model == "rnn":
        d = ex.reference()
        d["dh2"] = branch(ex, "h2", "hs")
        U = {**ex.grads, "h2": d["dh2"], "h1": d["dh1"], "h3": d["dh3"]}
        d["dxp"] = ex.chain.step("xp", ex.tensors(), U)
        row = {r.name: r for r in ex.check(**d).rows}["dxp"]
        assert row.kind == "inherited" and "correct for your dh2, which is wrong" in row.diagnosis


def test_unknown_gradient_names_are_a_user_error(exercises):
    with pytest.raises(CharmlpError, match="dlogits, dhs"):
        exercises["rnn"].check(dnope=torch.zeros(1))


@pytest.mark.parametrize("model", MODELS)
def test_starter_is_generated_from_the_chain_and_marked(tmp_path, exercises, model):
    text = starter_text(model, "f.py")
    compile(text, "f.py", "exec")
    f = tmp_path / "f.py"
    f.write_text(text)
    assert model_of(f) == model
    ns: dict = {}
    exec(compile(text, "f.py", "exec"), ns)
    ex = exercises[model]
    out = ns["part1"](**ex.tensors())
    assert [k for k in out if k.startswith("d")] == list(ex.names) and all(out[k] is None for k in ex.names)
    for line in ex.chain.listing():
        assert line in text


def test_an_unmarked_file_is_the_mlp_exercise(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("def part1():\n    return locals()\n")
    assert model_of(f) is None


def test_init_and_check_through_the_cli(tmp_path, capsys):
    f = tmp_path / "rnn.py"
    assert cli.main(["exercise", "init", "--model", "rnn", "--out", str(f)]) == 0
    assert cli.main(["exercise", "check", str(f), "--json"]) == 0  # untouched: every step missing, exit 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [r["status"] for r in out["parts"][0]["rows"]] == ["missing"] * len(RNNBackprop().names)
    # filled with the chain's own steps, then one planted mistake: exit 1, the row named
    body = ("    from charmlp.models.rnn_atoms import RNN_CHAIN\n"
            "    _d = RNN_CHAIN.by_hand(dict(locals()))\n"
            "    dlogits, dhs, dWy, dby, dh3, dh1, dxp = (_d[k] for k in ('logits', 'hs', 'Wy', 'by', 'h3', 'h1', 'xp'))\n"
            "    dh2 = _d['h2'] * 2\n"
            "    return {k: v for k, v in locals().items() if k.startswith('d') and k != '_d'}\n")
    text = f.read_text()
    f.write_text(text[: text.index("    dlogits = None")] + body)
    assert cli.main(["exercise", "check", str(f)]) == 1
    report = capsys.readouterr().out
    row = next(line for line in report.splitlines() if line.startswith("dh2 "))
    assert "wrong" in row and "twice too large" in row, report
    assert "fix: dh2" in report


@pytest.mark.parametrize("cls", [WaveNetBackprop, GRUBackprop, TransformerBackprop])
def test_notebook_classes_render_html(cls):
    ex = cls(seed=1, batch_size=5)
    html = ex.check(**{ex.names[0]: ex.reference()[ex.names[0]]})._repr_html_()
    assert "<table" in html and ex.names[0] in html


def filled(model: str, spoil: str = "") -> str:
    """The model's starter with part1 filled by the chain's own steps (and `spoil`, a line run after them)."""
    text = starter_text(model, "f.py")
    chain = CLASSES[model]().chain
    mod = {"wavenet": "wavenet_atoms", "rnn": "rnn_atoms", "gru": "gru_atoms", "transformer": "transformer_atoms"}[model]
    name = f"{model.upper()}_CHAIN"
    body = (f"    from charmlp.models.{mod} import {name}\n"
            f"    _d = {{'d' + k: v for k, v in {name}.by_hand(dict(locals())).items()}}\n"
            + (f"    {spoil}\n" if spoil else "")
            + f"    return {{k: _d[k] for k in {['d' + a for a in chain.order]!r}}}\n")
    start = text.index("    d" + chain.order[0] + " = None")
    end = text.index("    return locals()", start) + len("    return locals()\n")
    return text[:start] + body + text[end:]


def test_training_part_matches_the_engine_and_names_the_parameter(tmp_path):
    """A few steps in the suite (the 200 of `check` are in the slow test below)."""
    f = tmp_path / "f.py"
    f.write_text(filled("rnn"))
    p1, p2 = check_chain_file(f, "rnn", None, None, 60.0, train_steps=5)
    assert p1.ok and p2.ok and p2.rows[0].status in ("exact", "approximate"), (p1.format_text(), p2.format_text())
    f.write_text(filled("rnn", "_d['dWh'] = _d['dWh'] * 2"))
    p1, p2 = check_chain_file(f, "rnn", None, None, 60.0, train_steps=5)
    assert [r.name for r in p1.rows if r.status == "wrong"] == ["dWh"]
    assert not p2.ok and "the parameter whose gradient differs: dWh" in p2.rows[0].diagnosis, p2.format_text()


def test_part1_is_checked_again_at_a_second_batch_size(tmp_path):
    """A gradient right only at the lectures' batch (a literal 32) is wrong at the second set's batch;
    a part that raises there only says that it depends on the batch size."""
    f = tmp_path / "f.py"
    f.write_text(filled("gru", "_d['dWy'] = _d['dWy'] * (32 / len(Yb))"))
    (p1,) = check_chain_file(f, "gru", (1,), None, 60.0)
    assert "again at batch 13" in p1.title
    (row,) = [r for r in p1.rows if not r.ok]
    assert row.name == "dWy" and row.kind == "batch-size", p1.format_text()
    assert row.diagnosis.startswith("right at batch 32 but wrong at batch 13 (off by 32/13"), row.diagnosis
    f.write_text(filled("gru", "assert len(Yb) == 32"))
    (p1,) = check_chain_file(f, "gru", (1,), None, 60.0)
    assert p1.error.startswith("at batch 13 only") and "not a literal 32" in p1.error, p1.error


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_reference_answers_train_to_the_engines_losses(tmp_path, model):
    """`charmlp exercise check` on a starter filled with the reference steps: part 1 right, 200 steps of
    training on them within float32 round-off of charmlp's manual engine."""
    f = tmp_path / "f.py"
    f.write_text(filled(model))
    assert cli.main(["exercise", "check", str(f)]) == 0


def test_parts_the_model_does_not_have_are_user_errors(tmp_path, capsys):
    f = tmp_path / "g.py"
    assert cli.main(["exercise", "init", "--model", "gru", "--out", str(f), "--part", "3"]) == 2
    assert not f.exists()
    f.write_text(starter_text("gru", f.name))
    assert cli.main(["exercise", "check", str(f), "--part", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error:") for e in err) and "parts 1 and 2" in err[1]
