"""One verdict type and one atom chain: gradcheck, `exercise check` and `exercise check-layer` build the
same `Row`/`Report`; the MLP's atoms are written once (models/mlp_atoms.py) and the starter lists them."""

from __future__ import annotations

import json

import torch

from charmlp import exercise
from charmlp import gradcheck as gradcheck_fn
from charmlp.exercise.starter import starter_text
from charmlp.gradcheck import GradcheckReport
from charmlp.models.mlp_atoms import MLP_CHAIN, ORDER
from charmlp.verdict import Report, Row, judge


def test_one_row_and_report_type_for_every_check():
    assert exercise.Row is Row and exercise.Report is Report and issubclass(GradcheckReport, Report)
    rep = exercise.Backprop().check(part=2)
    assert isinstance(rep, Report) and all(isinstance(r, Row) for r in rep.rows)
    row = Row("dW", "approximate", (3, 2), (3, 2), 1e-7, rel_err=1e-8, section="atomic")
    d = row.to_dict()
    assert d["approx"] and not d["exact"] and d["status"] == "approximate" and d["shape"] == [3, 2]
    json.dumps(Report("t", [row, Row("dX", "wrong", maxdiff=float("inf"))]).to_dict())  # inf → null


def test_judge_is_the_comparison_behind_every_status():
    r = torch.tensor([1.0, -2.0, 4.0])
    assert judge(r.clone(), r, 1e-5)[0] == "exact"
    assert judge(r + 1e-6, r, 1e-5)[0] == "approximate"
    assert judge(r * 7, r, 1e-5)[0] == "wrong"
    status, md, rel = judge(torch.zeros(2), torch.zeros(2), 1e-5, scale=0.0)
    assert (status, md, rel) == ("exact", 0.0, 0.0)


def test_the_atoms_are_written_once_and_the_starter_lists_them():
    lines = MLP_CHAIN.listing()
    assert [line.split(" = ")[0] for line in lines] == list(MLP_CHAIN.atoms)
    text = starter_text()
    for line in lines:
        assert f"    {line} " in text, line
    assert "    emb = C[Xb]" in text and "# n x 3 x 10" in text and "loss = -logprobs[range(n), Yb].mean()" in text
    assert set(ORDER) == set(MLP_CHAIN.atoms[:-1]) | set(MLP_CHAIN.params)


def test_gradcheck_walks_the_same_chain_by_hand():
    """Part 1's hand-derived gradients are the chain's own steps, bitwise equal to autograd's."""
    rep = gradcheck_fn(n_layer=0, batch_size=5, seed=3)
    assert [r.name for r in rep.section("atomic")] == list(ORDER) and all(r.exact for r in rep.section("atomic"))
    assert "all " in rep.format_table() and rep.to_dict()["dtype"] == "float32"
