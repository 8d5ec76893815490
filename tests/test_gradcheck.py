"""`charmlp gradcheck`: the exercise's atomic table, the fused backward passes and the per-layer
check, in float32 and float64, through the API and the CLI; and that it fails when a
hand-written backward is wrong."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from charmlp import cli
from charmlp.config import DataConfig
from charmlp.data import load_dataset
from charmlp.errors import CharmlpError
from charmlp.gradcheck import ABOVE_TANH, ATOMIC_ROWS, TANH_NOTE, gradcheck
from charmlp.nn import BatchNorm1d, Tanh
from conftest import assert_user_error, run_cli

gradcheck_module = sys.modules["charmlp.gradcheck"]  # `charmlp.gradcheck` the attribute is the function


@pytest.fixture(scope="module")
def names():
    return load_dataset(DataConfig())


@pytest.fixture(scope="module")
def report32():
    return gradcheck(dtype="float32")


def test_atomic_table_has_the_exercise_rows_in_order(report32):
    rows = report32.section("atomic")
    assert [r.name for r in rows] == list(ATOMIC_ROWS) and len(rows) == 26
    assert all(r.approx for r in rows)


def test_every_atomic_row_is_bitwise_exact(report32):
    """All 26 hand-derived gradients, logprobs down to C, reproduce autograd's to the bit."""
    assert all(r.exact for r in report32.section("atomic")) and len(ABOVE_TANH) == 11


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch_size,seed", [(3, 0), (7, 1), (33, 5), (100, 2)])
def test_atomic_rows_exact_at_other_batch_sizes_and_seeds(names, dtype, batch_size, seed):
    report = gradcheck(dtype=dtype, seed=seed, batch_size=batch_size, n_layer=0, dataset=names)
    assert [r.name for r in report.section("atomic") if not r.exact] == []


def test_the_tanh_footnote_is_true():
    """autograd's tanh backward is (1 − h²)·dh with 1 − h² as one fused multiply-add: addcmul gives
    its bits, the plain formula (two roundings) only agrees to round-off; the manual Tanh uses addcmul."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 200, generator=g).requires_grad_(True)
    dh = torch.randn(64, 200, generator=g)
    h = torch.tanh(x)
    (auto,) = torch.autograd.grad(h, x, dh)
    h = h.detach()
    plain = (1.0 - h**2) * dh
    assert not torch.equal(auto, plain)
    assert torch.allclose(auto, plain, rtol=0, atol=4 * torch.finfo(torch.float32).eps)
    assert torch.equal(auto, torch.addcmul(torch.ones_like(h), h, h, value=-1.0) * dh)
    layer = Tanh()
    layer(x.detach())
    assert torch.equal(layer.backward(dh), auto)


def test_fused_and_layer_sections_pass(report32):
    fused = report32.section("fused")
    assert [r.name.split()[0] for r in fused] == ["logits", "hprebn", "bngain", "bnbias"]
    assert report32.ok and all(r.approx for r in report32.rows)
    assert all(r.rel_err <= 1e-5 for r in report32.rows)


def test_layer_section_covers_every_parameter_and_input_of_a_deep_model():
    report = gradcheck(n_layer=3, batch_size=20, seed=1)
    names = [r.name for r in report.section("layer")]
    # Embedding, Flatten, 3 × (Linear, BatchNorm1d, Tanh), Linear = 12 layers
    params = [n for n in names if n.endswith((".weight", ".bias"))]
    inputs = [n for n in names if n.endswith(" input")]
    assert len(params) == 1 + 3 * 3 + 2  # C; W, γ, β per block; output W, b
    assert len(inputs) == 11  # every layer but the embedding (its input is ids)
    assert names[0] == "loss → logits" and report.ok


def test_float64_relative_errors_are_round_off():
    report = gradcheck(dtype="float64", n_layer=2, batch_size=24, seed=3)
    assert report.ok
    assert max(r.rel_err for r in report.rows) <= 1e-10
    assert {r.name for r in report.section("atomic") if r.exact} >= set(ABOVE_TANH)


def test_a_wrong_backward_fails_the_check(monkeypatch):
    """A BatchNorm backward with the biased 1/n variance instead of Bessel's 1/(n − 1): the fused row
    and the per-layer rows below it fail; the atomic chain (independent of the layers) still passes."""

    def biased_backward(self, dout):
        n = dout.shape[0]
        dgamma, dbeta = (dout * self.xhat).sum(0), dout.sum(0)
        self.weight.grad, self.bias.grad = dgamma, dbeta
        return (self.weight * self.rstd / n) * (n * dout - dbeta - self.xhat * dgamma)

    monkeypatch.setattr(BatchNorm1d, "backward", biased_backward)
    report = gradcheck()
    failed = {r.name for r in report.failures}
    assert not report.ok
    assert "hprebn (BatchNorm1d.backward)" in failed and "[2] Linear.weight" in failed
    assert all(r.approx for r in report.section("atomic"))
    assert "FAILED" in report.format_table()
    assert cli.main(["gradcheck"]) == 1


def test_a_wrong_tanh_backward_fails_the_layer_section(monkeypatch):
    monkeypatch.setattr(Tanh, "backward", lambda self, dout: (1.0 - self.out) * dout)
    report = gradcheck()
    assert not report.ok and {r.section for r in report.failures} == {"layer"}


def test_a_wrong_fused_cross_entropy_fails(monkeypatch):
    monkeypatch.setattr(gradcheck_module, "cross_entropy_backward", lambda logits, y: torch.softmax(logits, 1) / len(y))
    report = gradcheck()
    assert "logits (cross_entropy_backward)" in {r.name for r in report.failures}


def test_user_errors():
    with pytest.raises(CharmlpError, match="at least 2"):
        gradcheck(batch_size=1)
    with pytest.raises(CharmlpError, match="dtype"):
        gradcheck(dtype="float16")
    with pytest.raises(CharmlpError, match="n-layer"):
        gradcheck(n_layer=-1)


def test_batch_of_two_explains_float32_round_off():
    report = gradcheck(batch_size=2, n_layer=1)
    assert any("batch of 2" in n for n in report.notes)
    assert gradcheck(batch_size=2, dtype="float64").ok


def test_cli_table_exits_0():
    proc = run_cli("gradcheck")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ATOMIC_ROWS:
        assert any(line.split()[:1] == [name] for line in out.splitlines()), name
    assert TANH_NOTE in out and "all 42 checks pass" in out


def test_cli_json_shape():
    proc = run_cli("gradcheck", "--json", "--dtype", "float64", "--n-layer", "2", "--batch-size", "16", "--seed", "7")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["ok"] is True and d["dtype"] == "float64" and d["batch_size"] == 16 and d["seed"] == 7
    assert {r["section"] for r in d["rows"]} == {"atomic", "fused", "layer"}
    for r in d["rows"]:
        assert {"section", "name", "exact", "approx", "maxdiff", "rel_err"} <= set(r)
        assert r["approx"] is True and r["rel_err"] <= 1e-10
    assert sum(r["section"] == "atomic" for r in d["rows"]) == 26


def test_cli_batch_of_one_is_a_user_error():
    assert_user_error(run_cli("gradcheck", "--batch-size", "1"), "batch-size")
