"""The layer checker: a lectures'-style layer passes; each planted BatchNorm mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from charmlp import cli
from charmlp.exercise import check_layer

HERE = Path(__file__).parent
SRC = (HERE / "layers_lecture.py").read_text()


def load(old: str = "", new: str = "", count: int = 1) -> dict:
    if old:
        assert old in SRC, old
    ns: dict = {}
    exec(compile(SRC.replace(old, new, count) if old else SRC, "layers.py", "exec"), ns)
    return ns


@pytest.mark.parametrize("kind,cls", [("batchnorm1d", "BatchNorm1d"), ("linear", "Linear"), ("tanh", "Tanh"),
                                      ("embedding", "Embedding")])
def test_correct_layers_pass(kind, cls):
    rep = check_layer(load()[cls], kind=kind)
    assert rep.ok and all(r.status in ("exact", "approximate", "skipped") for r in rep.rows), rep


BN_MISTAKES = [
    ("(x - xmean) / torch.sqrt", "x - xmean / torch.sqrt", "training output", "precedence", "x − mean/std instead of (x − mean)/std"),
    ("x.var(0, keepdim=True)", "x.var(0, keepdim=True, unbiased=False)", "training output", "biased", "biased variance"),
    ("(1 - self.momentum) * self.running_mean + self.momentum * xmean",
     "self.momentum * self.running_mean + (1 - self.momentum) * xmean", "running_mean", "momentum", "wrong way round"),
    ("        if self.training:\n            with", "        if False:\n            with", "running_mean", "not-updated",
     "not updated"),
    ("        if self.training:\n            with", "        if True:\n            with", "eval leaves running stats",
     "eval-update", "updated in eval mode"),
]


@pytest.mark.parametrize("old,new,row,kind,words", BN_MISTAKES, ids=[m[3] for m in BN_MISTAKES])
def test_batchnorm_mistakes_are_named(old, new, row, kind, words):
    rep = check_layer(load(old, new)["BatchNorm1d"], kind="batchnorm1d")
    r = rep.row(row)
    assert not rep.ok and r.kind == kind and words in r.diagnosis, rep


def test_a_hand_written_backward_is_checked():
    ns = load()
    good = type("Tanh2", (ns["Tanh"],), {"backward": lambda self, dout: (1 - self.out**2) * dout})
    bad = type("Tanh3", (ns["Tanh"],), {"backward": lambda self, dout: -(1 - self.out**2) * dout})
    assert check_layer(good, "tanh").row("backward (dx)").status in ("exact", "approximate")
    assert check_layer(bad, "tanh").row("backward (dx)").kind == "sign"


def test_cli_check_layer(tmp_path, capsys):
    f = tmp_path / "mine.py"
    f.write_text(SRC.replace("(x - xmean) / torch.sqrt", "x - xmean / torch.sqrt"))
    assert cli.main(["exercise", "check-layer", f"{f}:BatchNorm1d", "--layer", "batchnorm1d"]) == 1
    out = capsys.readouterr().out
    assert "did you write x − mean/std instead of (x − mean)/std?" in out
    assert cli.main(["exercise", "check-layer", f"{HERE / 'layers_lecture.py'}:Linear", "--layer", "linear"]) == 0
