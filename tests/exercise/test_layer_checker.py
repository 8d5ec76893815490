"""The layer checker: a lectures'-style layer passes; each planted mistake is named, for the forward, dx and
every parameter's .grad, at several input shapes and seeds (most kinds in this process, a few through the CLI)."""

from __future__ import annotations

import linecache
from pathlib import Path

import pytest

from charmlp import cli
from charmlp.exercise import check_layer

HERE = Path(__file__).parent
SRC = (HERE / "layers_lecture.py").read_text()
BY_HAND = (HERE / "layers_by_hand.py").read_text()


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
    ("x.var(dim, keepdim=True)", "x.var(dim, keepdim=True, unbiased=False)", "training output", "biased", "biased variance"),
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


# ── hand-written backward passes: dx and every parameter's .grad ──────────────────────────────────────


def by_hand(old: str = "", new: str = "") -> dict:
    """exec a copy of layers_by_hand.py with one line changed; registered with linecache, as a file would be,
    so that a learner's line shows in a diagnosis."""
    if old:
        assert old in BY_HAND, old
    text = BY_HAND.replace(old, new, 1)
    name = f"<planted {abs(hash(text))}>"
    linecache.cache[name] = (len(text), None, text.splitlines(True), name)
    ns: dict = {}
    exec(compile(text, name, "exec"), ns)
    return ns


GROUP1 = [("linear", "Linear"), ("embedding", "Embedding"), ("tanh", "Tanh"), ("batchnorm1d", "BatchNorm1d")]


@pytest.mark.parametrize("kind,cls", GROUP1)
def test_correct_backward_passes_with_a_row_per_parameter(kind, cls):
    rep = check_layer(by_hand()[cls], kind)
    assert rep.ok, rep
    assert all(r.status in ("exact", "approximate") for r in rep.rows), rep
    grads = [r.name for r in rep.rows if r.name.endswith(".grad")]
    assert grads == {"linear": ["weight.grad", "bias.grad"], "embedding": ["weight.grad"], "tanh": [],
                     "batchnorm1d": ["gamma.grad", "beta.grad"]}[kind]
    assert "batch 13" in rep.notes[0] or "13×8" in rep.notes[0]  # an odd second batch, and a second seed


MISTAKES1 = [  # (kind, class, old, new, row, diagnosis kind, words)
    ("linear", "Linear", "self.weight.grad = self.x.T @ dout", "self.weight.grad = 7 * self.x.T @ dout", "weight.grad", "factor",
     "7× too large"),
    ("linear", "Linear", "self.bias.grad = dout.sum(0)", "self.bias.grad = -dout.sum(0)", "bias.grad", "sign", "sign"),
    ("linear", "Linear", "self.bias.grad = dout.sum(0)", "self.bias.grad = dout", "bias.grad", "broadcast", ".sum(0)"),
    ("linear", "Linear", "self.bias.grad = dout.sum(0)", "self.bias.grad = dout.sum(0, keepdim=True)", "bias.grad", "keepdim",
     "without keepdim=True"),
    ("linear", "Linear", "self.weight.grad = self.x.T @ dout", "self.weight.grad = dout.T @ self.x", "weight.grad", "transposed",
     "transposed"),
    ("linear", "Linear", "return dout @ self.weight.T", "return dout.view(32, -1) @ self.weight.T", "backward (dx)", "batch-size",
     "not a literal"),
    ("embedding", "Embedding", "dW.index_add_(0, self.idx.view(-1), dout.view(-1, self.weight.shape[1]))",
     "dW[self.idx] += dout", "weight.grad", "repeated", "index_add_"),
    ("embedding", "Embedding", "self.weight.grad = dW", "self.weight.grad = 2 * dW", "weight.grad", "factor", "twice"),
    ("tanh", "Tanh", "return (1 - self.out**2) * dout", "return (1 - self.out) * dout", "backward (dx)", "tanh", "1 − tanh(x)²"),
    ("tanh", "Tanh", "return (1 - self.out**2) * dout", "return -(1 - self.out**2) * dout", "backward (dx)", "sign", "sign"),
    ("batchnorm1d", "BatchNorm1d", "- n / (n - 1) * self.xhat", "- self.xhat", "backward (dx)", "factor", "Bessel"),
    ("batchnorm1d", "BatchNorm1d", "n * dxhat - dxhat.sum(dims, keepdim=True)", "n * dxhat", "backward (dx)", "branch",
     "mean's term is missing"),
    ("batchnorm1d", "BatchNorm1d", "- n / (n - 1) * self.xhat * (dxhat * self.xhat).sum(dims, keepdim=True))", ")",
     "backward (dx)", "branch", "variance's term is missing"),
    ("batchnorm1d", "BatchNorm1d", "        n = dout.numel() // dout.shape[-1]", "        n = 32", "backward (dx)", "batch-size",
     "right at batch 32"),
    ("batchnorm1d", "BatchNorm1d", "self.gamma.grad = (dout * self.xhat).sum(dims)", "self.gamma.grad = (dout * self.xhat).sum(0)",
     "gamma.grad", "broadcast", ".sum((0, 1))"),
    ("batchnorm1d", "BatchNorm1d", "self.beta.grad = dout.sum(dims)", "self.beta.grad = dout.sum(dims) / 3", "beta.grad",
     "factor", "3× too small"),
]


@pytest.mark.parametrize("kind,cls,old,new,row,diag,words", MISTAKES1, ids=[f"{m[0]}-{m[5]}-{m[4]}" for m in MISTAKES1])
def test_one_mistake_is_named_on_its_row(kind, cls, old, new, row, diag, words):
    rep = check_layer(by_hand(old, new)[cls], kind)
    r = rep.row(row)
    assert not rep.ok and r.kind == diag and words in r.diagnosis, (r.kind, r.diagnosis)
    own = [x.name for x in rep.rows if not x.ok and x.kind != "inherited"]
    assert own == [row], own  # the other rows are right, or follow from it


def test_a_grad_of_the_wrong_shape_names_its_line():
    rep = check_layer(by_hand("self.bias.grad = dout.sum(0)", "self.bias.grad = dout")["Linear"], "linear")
    assert rep.row("bias.grad").status == "wrong shape" and rep.row("bias.grad").shape == (20,)
    assert "setting bias.grad" in rep.row("backward (dx)").diagnosis and "line" in rep.row("backward (dx)").diagnosis


def test_a_backward_with_the_batch_size_written_in_fails_at_the_second_batch(tmp_path, capsys):
    """Right at the lectures' batch of 32, wrong at 13: through the CLI, in the sandbox."""
    f = tmp_path / "mine.py"
    f.write_text(BY_HAND.replace("self.bias.grad = dout.sum(0)", "self.bias.grad = dout.sum(0) / len(dout) * 32"))
    assert cli.main(["exercise", "check-layer", f"{f}:Linear", "--layer", "linear"]) == 1
    out = capsys.readouterr().out
    assert "bias.grad" in out and "right at batch 32 but wrong at batch 13" in out and "not a literal" in out
