"""Scoring items: the same numbers as eval's loss for every model kind (ensembles too), the
sampler's contexts past a whole-item model's positions, per-character tables, items outside the
vocabulary, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from charmlp import score
from charmlp.checkpoint import save_run
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.data import SPLITS, Vocab, load_dataset
from charmlp.evaluate import evaluate_run
from charmlp.scoring import MAX_LOGITS
from conftest import assert_user_error, run_cli, run_main_without_heavy_imports
from test_numpy_model import CONFIGS, V, random_model

VOCAB = Vocab(tuple(".abcdefghij"))  # V = 11 symbols, as random_model's
assert VOCAB.size == V
ITEMS = ["abc", "bad", "cafe", "jig", "hide", "a", "ee", "jaded", "fig", "bee", "ace", "dab"]
KINDS = {**{k: k for k in CONFIGS}, "gru-ensemble": "gru", "transformer-ensemble": "transformer"}


def model_of(kind: str) -> torch.nn.Module:
    if kind.endswith("-ensemble"):
        from charmlp.models import build_model, model_config

        name = kind.split("-")[0]
        m = build_model(model_config(name, vocab_size=V, members=2, **CONFIGS[name]), seed=3)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)) * 0.3)
        return m.eval()
    return random_model(kind)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, torch.nn.Module]]:
    """A run directory per model kind, random weights, a data file of their alphabet whose items
    fit the whole-item models' positions."""
    d = tmp_path_factory.mktemp("score")
    data = d / "items.txt"
    data.write_text("\n".join(ITEMS * 5) + "\n", encoding="utf-8")
    out = {}
    for kind in KINDS:
        model = model_of(kind)
        mc = model.cfg
        cfg = RunConfig(DataConfig(path=str(data), block_size=mc.block_size, sequence=mc.sequence), mc, TrainConfig())
        save_run(d / kind, cfg, VOCAB, model)
        out[kind] = d / kind, model
    return out


def loop_log_likelihood(model: torch.nn.Module, item: str) -> float:
    """The reference: one forward per prediction, the context the sampler feeds."""
    ids = [0, *VOCAB.encode(item), 0]  # boundary, the characters, the end token
    block, seq = model.cfg.block_size, model.cfg.sequence
    total = 0.0
    with torch.no_grad():
        for t in range(len(item) + 1):
            if seq:
                ctx = ids[: t + 1][-block:]
            else:
                ctx = ([0] * block + ids[1 : t + 1])[-block:]
            logits = model(torch.tensor([ctx]))
            logits = logits[0, -1] if seq else logits[0]
            total += float(torch.log_softmax(logits.double(), -1)[ids[t + 1]])
    return total


@pytest.mark.parametrize("kind", KINDS)
def test_scoring_a_split_gives_evals_loss(kind, runs):
    d, model = runs[kind]
    run_cfg = json.loads((d / "config.json").read_text())
    ds = load_dataset(DataConfig(**{**run_cfg["data"], "split": tuple(run_cfg["data"]["split"])}), vocab=VOCAB)
    losses = evaluate_run(d)
    for split in SPLITS:
        assert score(d, ds.items[split]).mean_nll() == pytest.approx(losses[split], abs=1e-6)
    items = ["abc", "jaded", "hhhhhhhhhhhh"]  # the last longer than a whole-item model's positions: it slides
    got = [s.log_likelihood for s in score(model, items, VOCAB).items]
    np.testing.assert_allclose(got, [loop_log_likelihood(model, s) for s in items], rtol=1e-5)


def test_scoring_the_test_split_of_a_trained_run_gives_evals_test_loss(names_run):
    from charmlp.checkpoint import load_run

    run = load_run(names_run)
    test_items = load_dataset(run.config.data, vocab=run.vocab).items["test"]
    assert score(names_run, test_items).mean_nll() == pytest.approx(evaluate_run(names_run, ("test",))["test"], abs=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "transformer", "gru-ensemble"])
def test_per_char_probabilities_multiply_to_the_likelihood(kind, runs):
    d, _ = runs[kind]
    s = score(d, ["jaded", "hhhhhhhhhhhh"], per_char=True).items
    for item in s:
        rows = item.per_char
        assert [r.char for r in rows] == [*item.item, "."] and [r.position for r in rows] == list(range(len(rows)))
        assert math.prod(r.prob for r in rows) == pytest.approx(math.exp(item.log_likelihood), rel=1e-9)
        assert all(1 <= r.rank <= V and r.logprob == pytest.approx(math.log(r.prob)) for r in rows)
    cfg = runs[kind][1].cfg
    ctx = [r.context for r in s[0].per_char]  # "jaded": the boundary starts a whole item, pads a window
    assert ctx == ([".", ".j", ".ja", ".jad", ".jade", ".jaded"] if cfg.sequence else
                   ["...", "..j", ".ja", "jad", "ade", "ded"])


def test_rank_is_one_for_the_most_likely_character(runs):
    d, model = runs["mlp"]
    with torch.no_grad():
        best = int(model(torch.zeros(1, model.cfg.block_size, dtype=torch.long)).argmax())
    first = score(d, [VOCAB.itos[best] or "a"], per_char=True).items[0].per_char[0]
    assert first.rank == 1 and first.char == VOCAB.itos[best]


def test_items_outside_the_vocabulary_are_named_and_the_others_scored(runs):
    d, _ = runs["gru"]
    s = score(d, ["abc", "aXbY", "", "ace"])
    assert [x.unknown for x in s.items] == ["", "XY", "", ""]
    assert s.items[1].log_likelihood is None and "'XY' not in the run's vocabulary" in s.items[1].problem
    alone = score(d, ["abc", "", "ace"]).items
    assert [x.log_likelihood for x in s.items if not x.unknown] == [x.log_likelihood for x in alone]
    assert s.to_dict()["not_scorable"] == 1 and s.items[2].predictions == 1  # "" is one prediction: the end


def test_sorted_is_most_to_least_likely(runs):
    s = score(runs["wavenet"][0], ["abc", "jjjjjjj", "aZ", "a"]).sorted().items
    lls = [x.log_likelihood for x in s[:3]]
    assert lls == sorted(lls, reverse=True) and s[3].item == "aZ"


def test_long_items_are_scored_in_bounded_batches(runs, monkeypatch):
    """Many batches give what one gives, to float32's rounding: a BLAS kernel may round a row
    differently in a batch of another size (it picks its kernel by shape and CPU)."""
    d, _ = runs["rnn"]
    items = ITEMS * 30
    want = [x.log_likelihood for x in score(d, items).items]
    monkeypatch.setattr("charmlp.scoring.MAX_LOGITS", 3 * V * 7)
    assert MAX_LOGITS != 3 * V * 7
    np.testing.assert_allclose([x.log_likelihood for x in score(d, items).items], want, rtol=1e-6)


# ----------------------------------------------------------------------------- the command line


def test_charmlp_score_prints_each_item_and_exits_1_for_one_outside_the_vocabulary(runs, tmp_path):
    d, _ = runs["transformer"]
    p = run_cli("score", d, "abc", "jaded", "Zed")
    assert p.returncode == 1, p.stderr
    want = score(d, ["abc", "jaded"]).items
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["item", "log-likelihood", "nll/char", "perplexity"]
    assert lines[1].split() == ["abc", f"{want[0].log_likelihood:.4f}", f"{want[0].nll_per_char:.4f}",
                                f"{want[0].perplexity:.3f}"]
    assert "Zed" in lines[3] and "'Z' not in the run's vocabulary" in lines[3]
    assert "1 of 3 items" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("score", d, "abc", "jaded", "--json", "--sort")
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["items"][0] == score(d, ["abc"]).items[0].to_dict() and got["not_scorable"] == 0


def test_charmlp_score_reads_a_file_or_stdin_and_prints_per_char_tables(runs, tmp_path):
    d, _ = runs["bigram"]
    f = tmp_path / "items.txt"
    f.write_text("abc\n\njig\n", encoding="utf-8")
    from_file = run_cli("score", d, "--file", f, "--json")
    from_stdin = run_cli("score", d, "--file", "-", "--json", input="abc\njig\n")
    assert from_file.returncode == from_stdin.returncode == 0, from_file.stderr + from_stdin.stderr
    assert from_file.stdout == from_stdin.stdout
    assert [x["item"] for x in json.loads(from_file.stdout)["items"]] == ["abc", "jig"]
    p = run_cli("score", d, "jig", "--per-char")
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and [r[2] for r in rows] == ["j", "i", "g", "."]
    pc = score(d, ["jig"], per_char=True).items[0].per_char
    assert [float(r[4]) for r in rows] == [round(c.logprob, 4) for c in pc]


def test_an_empty_or_unreadable_file_is_one_error_line(runs, tmp_path):
    d, _ = runs["mlp"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert_user_error(run_cli("score", d, "--file", empty), "has no items")
    assert_user_error(run_cli("score", d, "--file", tmp_path / "missing.txt"), "does not exist")
    assert_user_error(run_cli("score", d, "--file", "-", input=""), "stdin has no items")
    (tmp_path / "bin.txt").write_bytes(b"ab\xff\n")
    assert_user_error(run_cli("score", d, "--file", tmp_path / "bin.txt"), "not UTF-8")
    assert_user_error(run_cli("score", d), "give the items to score")


def test_charmlp_score_runs_without_torch(runs):
    d, _ = runs["transformer"]
    stdout = run_main_without_heavy_imports(['score', str(d), 'abc', 'jaded', '--json'])
    assert json.loads(stdout) == score(d, ["abc", "jaded"]).to_dict()
