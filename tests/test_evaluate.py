"""Evaluation: bounded memory, the same exact loss whatever the path (chunks, buckets, the prefix tree), the end-of-run train estimate."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from charmlp.checkpoint import load_run
from charmlp.config import DataConfig
from charmlp.data import Vocab, build_examples, build_sequences, load_dataset
from charmlp.evaluate import MAX_CHUNK_BYTES, TRAIN_SAMPLE_SEED, eval_chunk, length_batches, split_loss, train_sample_rows, tree_levels
from charmlp.models import build_model, model_config
from conftest import make_items


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ev") / "items.txt"
    p.write_text("\n".join(make_items(400, seed=3)) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("kind", ["mlp", "wavenet", "rnn", "transformer"])
def test_chunks_bound_activation_memory_and_do_not_change_the_loss(data_file, kind):
    cfg = model_config(kind)
    ds = load_dataset(DataConfig(path=str(data_file), block_size=0 if cfg.sequence else cfg.block_size,
                                 sequence=cfg.sequence))
    cfg = type(cfg)(**{**cfg.__dict__, "vocab_size": ds.vocab.size, "block_size": ds.block_size})
    model = build_model(cfg, seed=1)
    X, Y = ds.X["train"], ds.Y["train"]
    chunk = eval_chunk(model, X)
    assert chunk * 4 * cfg.floats_per_example() <= MAX_CHUNK_BYTES or chunk == 1
    whole = split_loss(model, X, Y, chunk=len(Y))
    for c in (1 + len(Y) // 3, 7):
        assert split_loss(model, X, Y, chunk=c) == pytest.approx(whole, abs=1e-6)


def test_a_transformer_evaluates_its_train_split_in_many_chunks():
    """The names' train split would hold gigabytes of a transformer's activations in one pass."""
    cfg = model_config("transformer", vocab_size=27, block_size=16)
    model = build_model(cfg, seed=0)
    X = torch.zeros(25_626, 16, dtype=torch.long)
    assert eval_chunk(model, X) < 1000


# ----------------------------------------------------------------------------- the fast exact path

TINY = {  # every model, and the ensembles, at a size that evaluates names' val split in a moment
    "bigram": {}, "mlp": {"n_hidden": 16}, "wavenet": {"n_hidden": 16, "n_embd": 4},
    "rnn": {"n_hidden": 16, "n_embd": 8}, "gru": {"n_hidden": 16, "n_embd": 8},
    "gru ×2": {"n_hidden": 8, "n_embd": 4, "members": 2},
    "transformer": {"n_layer": 1, "n_embd": 16, "n_head": 2},
    "transformer ×2": {"n_layer": 1, "n_embd": 8, "n_head": 2, "members": 2},
}


@pytest.fixture(scope="module")
def names():
    """Names in every layout the models read: whole items, and context windows of each model's block."""
    blocks = {model_config(n.split()[0]).block_size for n in TINY if not model_config(n.split()[0]).sequence}
    return {b: load_dataset(DataConfig(block_size=b, sequence=b == 0)) for b in (0, *blocks)}


def names_for(names, name: str):
    cfg = model_config(name.split()[0])
    return names[0 if cfg.sequence else cfg.block_size]


def sharp_model(name: str, ds) -> torch.nn.Module:
    """The model with every parameter ~ N(0, 0.5²): confident, uneven predictions, so that a wrong
    state or position anywhere moves the loss far beyond 1e-6."""
    cfg = model_config(name.split()[0], **TINY[name], vocab_size=ds.vocab.size, block_size=ds.block_size)
    model = build_model(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@pytest.mark.parametrize("name", list(TINY))
def test_split_loss_equals_the_training_forward_over_whole_padded_rows(names, name):
    """The exact loss through buckets, the prefix tree and the inference forwards is today's: the
    model's own training-time forward over every padded row at once, −log p summed in float64."""
    ds = names_for(names, name)
    model = sharp_model(name, ds)
    X, Y = ds.X["val"], ds.Y["val"]
    with torch.no_grad():
        logits = model(X)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1).long(),
                                                ignore_index=-1, reduction="none")
    want = float(nll.double().sum() / (Y != -1).sum())
    assert 1.0 < want < 20.0  # confident and often wrong: far from uniform
    assert split_loss(model, X, Y) == pytest.approx(want, abs=1e-6)
    assert split_loss(model, X, Y, chunk=97) == pytest.approx(want, abs=1e-6)  # many blocks and buckets


def training_forward_loss(model, X, Y) -> float:
    """The reference: the model's training-time forward over every padded row, −log p summed in float64."""
    with torch.no_grad():
        logits = model(X)
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1).long(),
                                                ignore_index=-1, reduction="none")
    return float(nll.double().sum() / (Y != -1).sum())


@pytest.mark.parametrize("name", ["rnn", "gru", "gru ×2"])
def test_the_prefix_tree_is_exact_where_items_share_prefixes_and_some_are_prefixes_of_others(name):
    """Random items over 3 letters: many share prefixes, some repeat, some are prefixes of others."""
    rng = np.random.default_rng(5)
    stems = ["".join(rng.choice(list("abc"), rng.integers(1, 6))) for _ in range(30)]
    items = [s + "".join(rng.choice(list("abc"), rng.integers(0, 4))) for s in rng.choice(stems, 300)]
    items += stems[:10] + [stems[0][:1]]  # the stems themselves: prefixes of other items
    vocab = Vocab.from_items(items)
    X, Y = build_sequences(items, vocab, max(map(len, items)) + 1)
    ds = type("D", (), {"vocab": vocab, "block_size": X.shape[1]})
    model = sharp_model(name, ds)
    want = training_forward_loss(model, X, Y)
    for chunk in (len(Y), 13, 1):  # one block, many, one row each (no sharing at all)
        assert split_loss(model, X, Y, chunk=chunk) == pytest.approx(want, abs=1e-6)


def test_tree_levels_number_each_distinct_prefix_once():
    key = np.array([[0, 1, 2, -1], [0, 1, 2, 3], [0, 1, 3, -1], [0, 1, 3, -1], [0, 2, -1, -1]])
    lengths = np.array([3, 4, 3, 3, 2])
    new, node, active, counts = tree_levels(key, lengths)
    assert counts.tolist() == [1, 2, 2, 1]  # ".", ".a" ".b", ".ab" ".ac", ".abc"
    assert not new[:, 3].any()  # a repeated row opens no node
    assert node[2][active[2]].tolist() == [0, 0, 1, 1]
    distinct = {tuple(k[: t + 1]) for k, L in zip(key, lengths) for t in range(L)}
    assert int(counts.sum()) == len(distinct)


def test_length_batches_cover_every_row_once_each_cut_at_its_longest():
    lengths = np.array([3, 1, 7, 7, 2, 5, 1, 16, 4, 4])
    seen = []
    for ix, L in length_batches(lengths, lambda L: max(1, 12 // L)):
        assert L == lengths[ix].max() and len(ix) <= max(1, 12 // L)
        seen += ix.tolist()
    assert sorted(seen) == list(range(len(lengths)))


def test_progress_counts_every_target(names):
    for name in ("gru", "transformer", "mlp"):
        ds = names_for(names, name)
        model = sharp_model(name, ds)
        counted = []
        split_loss(model, ds.X["val"], ds.Y["val"], progress=counted.append)
        assert sum(counted) == int((ds.Y["val"] != -1).sum())


# ----------------------------------------------------------------------------- the end-of-run train loss


@pytest.mark.parametrize("sequence", [False, True])
def test_train_sample_rows_are_exactly_the_sampled_items_rows(data_file, sequence):
    ds = load_dataset(DataConfig(path=str(data_file), block_size=0 if sequence else 3, sequence=sequence))
    rows = train_sample_rows(ds, 50)
    items = ds.items["train"]
    pick = np.sort(np.random.default_rng(TRAIN_SAMPLE_SEED).choice(len(items), 50, replace=False))
    sub = [items[i] for i in pick]
    build = build_sequences if sequence else build_examples
    X, Y = build(sub, ds.vocab, ds.block_size)
    assert torch.equal(ds.X["train"][rows], X) and torch.equal(ds.Y["train"][rows], Y)
    assert torch.equal(train_sample_rows(ds, 50), rows)  # fixed: the same sample every time


def test_a_large_training_split_gets_a_labelled_estimate_and_eval_gives_the_exact_loss(
        data_file, tmp_path, monkeypatch, capsys):
    evaluate = importlib.import_module("charmlp.evaluate")  # (charmlp.evaluate is also a function)
    from charmlp import cli
    from charmlp.runs import format_table, read_run_row

    monkeypatch.setattr(evaluate, "TRAIN_EXACT_ITEMS", 100)  # the file's 320 training items count as many
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(data_file), "--model", "mlp", "--steps", "30", "--n-hidden", "8",
                     "--out", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out
    assert "(estimate on 100 items)" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_loss_estimate"] is True and summary["train_loss_items"] == 100
    assert "train 0." not in line and f"train {summary['train_loss']:.4f} (estimate" in line
    table = format_table([read_run_row(out)])
    assert f"{summary['train_loss']:.4f}*" in table and "an estimate on a seeded sample" in table
    assert cli.main(["eval", str(out), "--split", "train", "--json"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert list(exact) == ["train"]
    run = load_run(out)
    ds = load_dataset(run.config.data, vocab=run.vocab)
    assert exact["train"] == pytest.approx(split_loss(run.model, ds.X["train"], ds.Y["train"]), abs=1e-12)
    assert exact["train"] != pytest.approx(summary["train_loss"], abs=1e-6)  # the sample is not the split
    assert summary["val_loss"] == pytest.approx(split_loss(run.model, ds.X["val"], ds.Y["val"]), abs=1e-6)
