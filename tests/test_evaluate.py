"""Evaluation in chunks: bounded memory, the same loss whatever the chunk."""

from __future__ import annotations

import pytest
import torch

from charmlp.config import DataConfig
from charmlp.data import load_dataset
from charmlp.evaluate import MAX_CHUNK_BYTES, eval_chunk, split_loss
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
