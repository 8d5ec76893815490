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
    ("tanh", "Tanh", "return (1 - self.out**2) * dout", "return (1 - torch.tanh(self.out) ** 2) * dout", "backward (dx)", "tanh",
     "applies tanh twice"),
    ("batchnorm1d", "BatchNorm1d", "dxhat = self.gamma * dout", "dxhat = dout", "backward (dx)", "gamma", "forgets γ"),
    ("batchnorm1d", "BatchNorm1d", "self.gamma.grad = (dout * self.xhat).sum(dims)", "self.gamma.grad = dout.sum(dims)",
     "gamma.grad", "swapped", "this is dβ"),
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


GROUP2 = [("flatten_consecutive", "FlattenConsecutive"), ("layernorm", "LayerNorm"), ("gelu", "GELU"), ("dropout", "Dropout"),
          ("cross_entropy", "CrossEntropy")]
GROUP3 = [("rnn_cell", "RNNCell"), ("gru_cell", "GRUCell"), ("causal_self_attention", "CausalSelfAttention")]
PARAMS = {"layernorm": ["gamma.grad", "beta.grad"], "rnn_cell": ["Wx.grad", "Wh.grad", "b.grad"],
          "gru_cell": ["Wx.grad", "Wh.grad", "Wc.grad", "b.grad"],
          "causal_self_attention": ["qkv.weight.grad", "qkv.bias.grad", "proj.weight.grad", "proj.bias.grad"]}


@pytest.mark.parametrize("kind,cls", GROUP2 + GROUP3)
def test_every_other_kind_passes_when_right(kind, cls):
    rep = check_layer(by_hand()[cls], kind)
    assert rep.ok and all(r.status in ("exact", "approximate") for r in rep.rows), rep
    assert [r.name for r in rep.rows if r.name.endswith(".grad")] == PARAMS.get(kind, [])


MISTAKES23 = [  # (kind, class, old, new, row, diagnosis kind, words)
    ("flatten_consecutive", "FlattenConsecutive", "        if x.shape[1] == 1:\n            x = x.squeeze(1)\n", "", "output",
     "squeeze", "x.squeeze(1)"),
    ("flatten_consecutive", "FlattenConsecutive", "x = x.view(B, T // self.n, C * self.n)",
     "x = x.transpose(1, 2).reshape(B, T // self.n, C * self.n)", "output", "order", "wrong order"),
    ("flatten_consecutive", "FlattenConsecutive", "return dout.view(self.in_shape)", "return dout", "backward (dx)", "reshape",
     ".view(32, 8, 10)"),
    ("layernorm", "LayerNorm", "var = x.var(-1, keepdim=True, unbiased=False)", "var = x.var(-1, keepdim=True)", "output",
     "unbiased", "biased one"),
    ("layernorm", "LayerNorm", "(dxhat - dxhat.mean(-1, keepdim=True) - self.xhat", "(dxhat - self.xhat", "backward (dx)", "branch",
     "mean's term is missing"),
    ("layernorm", "LayerNorm", " - self.xhat * (dxhat * self.xhat).mean(-1, keepdim=True))", ")", "backward (dx)", "branch",
     "variance's term is missing"),
    ("layernorm", "LayerNorm", "self.gamma.grad = (dout * self.xhat).sum(rows)", "self.gamma.grad = (dout * self.xhat).sum(0)",
     "gamma.grad", "broadcast", ".sum((0, 1))"),
    ("gelu", "GELU", "return dout * (self.cdf + self.x * pdf)", "return dout * self.cdf", "backward (dx)", "branch",
     "second term x·φ(x)"),
    ("gelu", "GELU", "self.cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))",
     "self.cdf = 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))", "output", "tanh-approx",
     "tanh approximation"),
    ("dropout", "Dropout", "self.mask = (torch.rand(x.shape) >= self.p).float() / (1 - self.p)",
     "self.mask = (torch.rand(x.shape) >= self.p).float()", "training output", "unscaled", "1 − p"),
    ("dropout", "Dropout", "self.mask = (torch.rand(x.shape) >= self.p).float() / (1 - self.p)",
     "self.mask = (torch.rand(x.shape) < self.p).float() / (1 - self.p)", "drop rate", "rate", "probability to drop"),
    ("dropout", "Dropout", "return dout * self.mask", "return dout * (torch.rand(dout.shape) >= self.p).float() / (1 - self.p)",
     "backward (dx)", "mask", "the mask the forward drew"),
    ("dropout", "Dropout", "        if not self.training:\n            self.out = x\n            return x\n", "", "eval output",
     "eval", "identity"),
    ("cross_entropy", "CrossEntropy", "return dlogits / n", "return dlogits", "backward (dlogits)", "factor", "1/n of the mean"),
    ("cross_entropy", "CrossEntropy", "dlogits[range(n), self.targets] -= 1", "pass", "backward (dlogits)", "onehot",
     "subtract 1 at the target"),
    ("cross_entropy", "CrossEntropy", "shifted = logits - logits.max(1, keepdim=True).values", "shifted = logits", "loss",
     "overflow", "subtract each row's max"),
    ("rnn_cell", "RNNCell", "da = (1 - self.out**2) * dh_new", "da = (1 - self.out) * dh_new", "backward (dx)", "tanh",
     "1 − tanh(a)²"),
    ("rnn_cell", "RNNCell", "            p.grad = g if p.grad is None else p.grad + g\n        return da", "            p.grad = g\n"
     "        return da", "Wx.grad", "accumulate", "add up over the 3 steps"),
    ("rnn_cell", "RNNCell", "return da @ self.Wx.T, da @ self.Wh.T", "return da @ self.Wx.T, da @ self.Wh", "backward (dh_prev)",
     "transposed", "da @ Wh.T"),
    ("gru_cell", "GRUCell", "dh = dh_new * (1 - z) + drh * r + da_zr @ self.Wh.T", "dh = dh_new * (1 - z) + drh * r",
     "backward (dh_prev)", "branch", "through the gates is missing"),
    ("gru_cell", "GRUCell", "dh = dh_new * (1 - z) + drh * r + da_zr @ self.Wh.T", "dh = dh_new * (1 - z)", "backward (dh_prev)",
     "branch", "only the direct path"),
    ("gru_cell", "GRUCell", "            p.grad = g if p.grad is None else p.grad + g\n        return dxp",
     "            p.grad = g\n        return dxp", "Wx.grad", "accumulate", "add up over the 3 steps"),
    ("gru_cell", "GRUCell", "self.out = (1 - self.z) * h + self.z * self.c", "self.out = self.z * h + (1 - self.z) * self.c",
     "output", "convention", "PyTorch's"),
    ("layernorm", "LayerNorm", "self.beta.grad = dout.sum(rows)", "self.beta.grad = (dout * self.xhat).sum(rows)", "beta.grad",
     "swapped", "this is dγ"),
    ("dropout", "Dropout", "return dout * self.mask", "return dout", "backward (dx)", "mask", "the mask is missing"),
    ("gru_cell", "GRUCell", "da_c = (1 - c**2) * dh_new * z", "da_c = (1 - c) * dh_new * z", "backward (dx)", "tanh", "1 − c²"),
    ("gru_cell", "GRUCell", "da_z = (c - h) * dh_new * z * (1 - z)", "da_z = (c - h) * dh_new * z", "backward (dx)", "sigmoid",
     "z·(1 − z), not z"),
    ("causal_self_attention", "CausalSelfAttention", "datt, dv = dy @ v.transpose(-2, -1), att.transpose(-2, -1) @ dy",
     "datt, dv = dy @ v.transpose(-2, -1), att @ dy", "backward (dx)", "transposed", "dv = att.transpose(-2, -1) @ dy"),
    ("causal_self_attention", "CausalSelfAttention", "dq, dk = dscores @ k / math.sqrt(D), dscores.transpose(-2, -1) @ q / math.sqrt(D)",
     "dq, dk = dscores @ k, dscores.transpose(-2, -1) @ q", "backward (dx)", "scale", "1/√D"),
    ("causal_self_attention", "CausalSelfAttention", "        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool)"
     ".triu(1), float(\"-inf\"))\n", "", "output", "mask", "causal mask is missing"),
    ("causal_self_attention", "CausalSelfAttention", "dscores = att * (datt - (datt * att).sum(-1, keepdim=True))",
     "dscores = att * datt", "backward (dx)", "softmax", "the sum over the row is missing"),
]


@pytest.mark.parametrize("kind,cls,old,new,row,diag,words", MISTAKES23, ids=[f"{m[0]}-{m[5]}-{m[4]}" for m in MISTAKES23])
def test_one_mistake_of_every_other_kind_is_named(kind, cls, old, new, row, diag, words):
    rep = check_layer(by_hand(old, new)[cls], kind)
    r = rep.row(row)
    assert not rep.ok and r.kind == diag and words in r.diagnosis, (r.kind, r.diagnosis)
    own = [x.name for x in rep.rows if not x.ok and x.kind != "inherited"]
    assert own[0] == row, own  # the first row to fix is the planted one (a slip may show on the rows below it too)


def test_a_backward_right_for_a_wrong_forward_follows_from_it():
    rep = check_layer(by_hand("        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float(\"-inf\"))\n",
                              "")["CausalSelfAttention"], "causal_self_attention")
    assert rep.row("output").kind == "mask" and rep.row("backward (dx)").kind == "inherited"
    assert "fix: output (the" in rep.summary


@pytest.mark.parametrize("kind", ["rnn_cell", "causal_self_attention"])
def test_kinds_through_the_sandbox(kind, tmp_path, capsys):
    f = tmp_path / "mine.py"
    f.write_text(BY_HAND)
    cls = dict(GROUP3)[kind]
    assert cli.main(["exercise", "check-layer", f"{f}:{cls}", "--layer", kind, "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["ok"] and {r["name"] for r in d["rows"]} >= set(PARAMS[kind])


@pytest.mark.parametrize("kind", sorted(check_layer.__globals__["SPECS"]))
def test_every_template_checks_as_not_written_yet(kind, tmp_path, capsys):
    """`exercise init --layer K` writes a file the checker reads: every row missing (exit 0), none an error."""
    from charmlp.exercise.catalog import CLASS_NAMES

    f = tmp_path / f"{kind}.py"
    assert cli.main(["exercise", "init", "--layer", kind, "--out", str(f)]) == 0
    capsys.readouterr()
    ns: dict = {}
    exec(compile(f.read_text(), str(f), "exec"), ns)
    rep = check_layer(ns[CLASS_NAMES[kind]], kind)
    assert rep.error is None and {r.status for r in rep.rows} <= {"missing", "exact", "skipped"}, rep
