"""The transformer: shape and initialisation, the per-layer gradient check at random batch sizes
and context lengths, manual vs autograd training, bit-exact resume, seeded samples."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal

import pytest
import torch

import charmlp
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.data import load_dataset
from charmlp.errors import CharmlpError, TrainingInterrupted
from charmlp.gradcheck import gradcheck
from charmlp.models import TransformerConfig, build_model, num_params
from charmlp.nn import Block, cross_entropy
from charmlp.sampling import sample
from conftest import make_items
from handcheck import check_against_autograd

TINY = TransformerConfig(n_layer=2, n_head=2, n_embd=8)


def interrupt_at(step_to_stop: int):
    """A step hook that sends this process SIGINT, as Ctrl-C would, during step `step_to_stop`."""

    def hook(step: int, model, lr, loss) -> None:
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)

    return hook


@pytest.fixture
def seq_data(tmp_path):
    p = tmp_path / "items.txt"
    p.write_text("\n".join(make_items(200)) + "\n", encoding="utf-8")
    return p


def test_makemore_sized_model_and_its_initialisation():
    m = build_model(TransformerConfig(vocab_size=27, block_size=16), seed=0)
    assert num_params(m) == 204_571  # makemore.py's default transformer: "~0.2M"; ours has the same shapes
    assert [type(layer).__name__ for layer in m.layers] == [
        "Embedding", "PositionEmbedding", "Block", "Block", "Block", "Block", "LayerNorm", "Linear"]
    block = m.layers[2]
    assert abs(block.attn.qkv.weight.std().item() - 0.1) < 0.01
    assert abs(block.mlp.proj.weight.std().item() - 0.1 / math.sqrt(8)) < 0.005  # residual projections scaled
    assert torch.equal(block.ln1.weight, torch.ones(64)) and torch.equal(block.attn.qkv.bias, torch.zeros(192))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 27, (5, 16), generator=g)
    logits = m(x)
    assert logits.shape == (5, 16, 27)
    loss = cross_entropy(logits, torch.randint(0, 27, (5, 16), generator=g))
    assert abs(loss.item() - math.log(27)) < 0.5  # an untrained model is not confidently wrong (train warns above 0.5)


def test_config_errors_are_user_errors():
    with pytest.raises(CharmlpError, match="multiple of --n-head"):
        build_model(dataclasses.replace(TINY, n_embd=10, n_head=3, vocab_size=5, block_size=4))
    with pytest.raises(CharmlpError, match="--n-layer"):
        build_model(dataclasses.replace(TINY, n_layer=-1, vocab_size=5, block_size=4))


def test_whole_model_backward_matches_autograd_in_float64():
    g = torch.Generator().manual_seed(0)
    m = build_model(dataclasses.replace(TINY, vocab_size=7, block_size=6), seed=1).double()
    x = torch.randint(0, 7, (4, 6), generator=g)
    check_against_autograd(m.layers, x, g)


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_float64_at_random_batch_and_context(seed, seq_data):
    rng = random.Random(seed)
    longest = max(map(len, make_items(200)))
    block = longest + 1 + rng.randint(0, 4)  # room after the longest item: padding positions too
    data = load_dataset(DataConfig(path=str(seq_data), sequence=True, block_size=block))
    report = gradcheck(dtype="float64", seed=seed, batch_size=rng.randint(2, 9), model=TINY, dataset=data)
    assert report.ok, report.format_table()
    names = {r.name for r in report.rows}
    for tensor in ("ln1.weight", "attn.qkv.weight", "attn.proj.weight", "ln2.weight", "mlp.fc.weight",
                   "mlp.proj.weight"):
        assert f"[2] block0.{tensor}" in names and f"[3] block1.{tensor}" in names
    assert {"[0] wte.weight", "[1] wpe.weight", "[4] ln_f.weight", "[5] lm_head.weight", "[2] block0 input"} <= names
    assert all(r.rel_err <= 1e-10 for r in report.rows)


def cfg_for(data, steps: int, engine: str = "manual", **train) -> RunConfig:
    return RunConfig(DataConfig(path=str(data), sequence=True, block_size=0), TINY,
                     TrainConfig(steps=steps, batch_size=16, optimizer="adamw", lr=3e-3, lr_final=3e-4,
                                 schedule="cosine", engine=engine, device="cpu", eval_every=0, **train))


def test_manual_and_autograd_training_losses_agree_over_200_steps(seq_data):
    losses = {e: torch.tensor(charmlp.train(cfg_for(seq_data, 200, e), progress=False).losses)
              for e in ("manual", "autograd")}
    diff = (losses["manual"] - losses["autograd"]).abs().max().item()
    assert diff <= 1e-4, diff
    assert losses["manual"][-20:].mean() < losses["manual"][:5].mean() - 0.5  # and it learned


def test_resume_is_bit_exact(tmp_path, seq_data):
    cfg = cfg_for(seq_data, 40, log_every=1)
    ref = charmlp.train(cfg, out_dir=tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        charmlp.train(cfg, out_dir=run, progress=False, hooks=(interrupt_at(17),))
    res = charmlp.resume(run, progress=False)
    assert res.losses == ref.losses
    for (k, a), (_, b) in zip(res.model.state_dict().items(), ref.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_samples_are_seeded_and_deterministic(seq_data):
    res = charmlp.train(cfg_for(seq_data, 30), progress=False)
    a = sample(res.model, res.dataset.vocab, n=12, seed=5, prefix="ma", top_k=5)
    b = sample(res.model, res.dataset.vocab, n=12, seed=5, prefix="ma", top_k=5)
    c = sample(res.model, res.dataset.vocab, n=12, seed=6, prefix="ma", top_k=5)
    assert a.samples == b.samples and a.samples != c.samples
    assert all(s.startswith("ma") for s in a.samples)


def test_block_is_one_layer_whose_sublayers_are_named():
    names = dict(Block(8, 2).named_parameters())
    assert {"ln1.weight", "attn.qkv.weight", "attn.proj.weight", "ln2.weight", "mlp.fc.weight",
            "mlp.proj.weight"} <= set(names)


def test_dropout_gradcheck_engines_agree_and_resume_is_bit_exact(tmp_path, seq_data):
    model = dataclasses.replace(TINY, dropout=0.2)
    data = load_dataset(DataConfig(path=str(seq_data), sequence=True, block_size=0))
    report = gradcheck(dtype="float64", seed=0, batch_size=5, model=model, dataset=data)
    assert report.ok and all(r.rel_err <= 1e-10 for r in report.rows), report.format_table()
    assert "[2] drop input" in {r.name for r in report.rows}

    def cfg(engine: str) -> RunConfig:
        return dataclasses.replace(cfg_for(seq_data, 40, engine, log_every=1), model=model)

    losses = {e: torch.tensor(charmlp.train(cfg(e), progress=False).losses) for e in ("manual", "autograd")}
    assert (losses["manual"] - losses["autograd"]).abs().max().item() <= 1e-4  # the same masks on both
    no_drop = torch.tensor(charmlp.train(cfg_for(seq_data, 40, log_every=1), progress=False).losses)
    assert not torch.equal(losses["manual"], no_drop)
    ref = charmlp.train(cfg("manual"), out_dir=tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        charmlp.train(cfg("manual"), out_dir=run, progress=False, hooks=(interrupt_at(17),))
    res = charmlp.resume(run, progress=False)  # the checkpoint kept each dropout's (seed, count)
    assert res.losses == ref.losses
