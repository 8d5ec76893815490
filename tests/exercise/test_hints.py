"""`charmlp exercise hint`: levels escalate per step, --reveal gives the chain's own step, --reset clears
the ledger beside the file, an unknown step is one error line listing the valid names."""

from __future__ import annotations

import json

from charmlp import cli
from charmlp.exercise.chain_starter import starter_text
from charmlp.exercise.hints import hint, ledger_path, used


def test_levels_escalate_and_are_kept_beside_the_file(tmp_path):
    f = tmp_path / "gru.py"
    f.write_text(starter_text("gru", f.name))
    one = hint(f, "dh1")
    assert one.startswith("hint 1 of 3, dh1") and "h1 = h0 + z1 * (c1 - h0)" in one and "z2 = torch.sigmoid(xz[:, 1] + h1 @ Whz)" in one
    two = hint(f, "h1")  # the same step, with or without its d
    assert two.startswith("hint 2 of 3") and "da_z = z(1 − z)⊙dz" in two
    three = hint(f, "dh1")
    assert "used 5 times" in three and "hs, h2, z2, r2, c2" in three
    assert hint(f, "dh1").startswith("hint 3 of 3")  # the last level stays
    hint(f, "dh0")
    assert json.loads(ledger_path(f).read_text())["dh1"] == {"level": 3, "revealed": False}
    assert used(f) == (4, 0)


def test_level_three_names_the_reduction(tmp_path):
    f = tmp_path / "t.py"
    f.write_text(starter_text("transformer", f.name))
    hint(f, "dwpe")
    hint(f, "dwpe")
    assert ".sum(0)" in hint(f, "dwpe")
    # the residual stream's two branches, each step written with the atoms' own names
    reveal = hint(f, "dx1", reveal=True)
    assert "dx1 = dx2.clone()    # through x2" in reveal and "dx1 + layernorm_backward(x1, ln2w, dln2)    # through ln2" in reveal


def test_reveal_is_the_chains_step_and_reset_clears(tmp_path, capsys):
    f = tmp_path / "w.py"
    f.write_text(starter_text("wavenet", f.name))
    assert cli.main(["exercise", "hint", str(f), "da1", "--reveal"]) == 0
    out = capsys.readouterr().out
    assert "da1 = batchnorm_backward(a1, bngain1, dbn1)" in out and "N/(N − 1)" in out
    assert used(f) == (0, 1)
    assert cli.main(["exercise", "hint", str(f), "--reset"]) == 0
    assert not ledger_path(f).exists() and used(f) == (0, 0)


def test_the_mlp_exercise_has_hints_too(tmp_path):
    f = tmp_path / "mine.py"
    assert cli.main(["exercise", "init", "--out", str(f)]) == 0
    assert "dprobs = dlogprobs / probs" in hint(f, "dprobs", reveal=True)


def test_unknown_step_is_one_error_line_listing_the_names(tmp_path, capsys):
    f = tmp_path / "r.py"
    f.write_text(starter_text("rnn", f.name))
    assert cli.main(["exercise", "hint", str(f), "dnope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "dlogits, dhs, dWy" in err
    assert not ledger_path(f).exists()
