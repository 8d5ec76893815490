"""The hierarchical WaveNet model: its shape, its errors, gradcheck, engines, checkpoints, resume."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import charmlp
from charmlp.checkpoint import load_run
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.errors import CharmlpError, TrainingInterrupted
from charmlp.gradcheck import gradcheck
from charmlp.models import WaveNetConfig, build_model, count_params
from charmlp.nn import BatchNorm1d, FlattenConsecutive, Linear, Tanh
from conftest import assert_user_error, run_cli


def small(**kw: object) -> WaveNetConfig:
    return WaveNetConfig(**{"n_embd": 4, "n_hidden": 12, **kw})


def test_the_lectures_model_has_76579_parameters_and_three_levels():
    cfg = WaveNetConfig(vocab_size=27)
    assert (cfg.block_size, cfg.n_embd, cfg.n_hidden) == (8, 24, 128)
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == 76_579 == count_params(cfg)
    assert [m.n for m in model.layers if isinstance(m, FlattenConsecutive)] == [2, 2, 2]
    assert sum(isinstance(m, Tanh) for m in model.layers) == 3
    assert model(torch.zeros(5, 8, dtype=torch.long)).shape == (5, 27)


def test_bn_statistics_have_the_channel_shape_and_the_init_policy_is_the_mlps():
    model = build_model(WaveNetConfig(vocab_size=27), seed=3)
    bns = [m for m in model.layers if isinstance(m, BatchNorm1d)]
    assert all(bn.running_mean.shape == (128,) for bn in bns)
    linears = [m for m in model.layers if isinstance(m, Linear)]
    assert all(m.bias is None for m in linears[:-1]) and linears[-1].bias is not None
    w = linears[0].weight  # Kaiming 5/3: std ≈ (5/3)/√fan_in
    assert abs(w.std().item() - (5 / 3) / 48**0.5) < 0.02
    assert abs(linears[-1].weight.std().item() - 0.1 / 128**0.5) < 0.002  # output scaled down
    loss = charmlp.nn.cross_entropy(model(torch.randint(0, 27, (256, 8))), torch.randint(0, 27, (256,)))
    assert abs(loss.item() - torch.log(torch.tensor(27.0)).item()) < 0.1  # near-uniform start


@pytest.mark.parametrize("block,fuse,levels,factors", [(8, 2, 0, [2, 2, 2]), (9, 3, 0, [3, 3]), (8, 2, 2, [2, 4]),
                                                       (12, 2, 3, [2, 2, 3]), (1, 2, 0, [1]), (16, 4, 0, [4, 4])])
def test_levels(block, fuse, levels, factors):
    assert WaveNetConfig(block_size=block, fuse=fuse, n_layer=levels).factors() == factors


def test_a_block_size_the_fusing_factor_does_not_divide_is_a_user_error(tiny_data):
    with pytest.raises(CharmlpError, match="cannot be fused 2 at a time"):
        build_model(WaveNetConfig(block_size=6))
    p = run_cli("train", "--model", "wavenet", "--data", tiny_data, "--block-size", "6", "--steps", "5", "--out",
                tiny_data.parent / "r")
    assert_user_error(p, "--block-size 6 cannot be fused 2 at a time")
    p = run_cli("train", "--model", "mlp", "--fuse", "3", "--data", tiny_data, "--out", tiny_data.parent / "r")
    assert_user_error(p, "--fuse does not apply to --model mlp")


def test_gradcheck_float64_every_row_and_every_layer():
    ds = charmlp.load_dataset(DataConfig(block_size=8))
    rep = gradcheck(dtype="float64", batch_size=20, dataset=ds, model=small())
    assert rep.ok and rep.model == "wavenet"
    assert max(r.rel_err for r in rep.rows) <= 1e-10
    assert not rep.section("atomic")  # the exercise's atoms are the MLP's
    names = [r.name for r in rep.rows]
    n_layers = len(build_model(small(vocab_size=27, block_size=8)).layers)
    for i in range(n_layers):  # every layer appears: its parameters or its input gradient
        assert any(n.startswith(f"[{i}] ") for n in names), i


def test_gradcheck_float32_cli(tiny_data):
    p = run_cli("gradcheck", "--model", "wavenet", "--data", tiny_data, "--n-hidden", "16", "--n-embd", "4", "--json")
    assert p.returncode == 0, p.stderr
    import json

    rows = json.loads(p.stdout)["rows"]
    assert rows and all(r["rel_err"] <= 1e-5 for r in rows)


def test_manual_and_autograd_engines_train_alike_over_300_steps(tiny_data):
    losses = {}
    for engine in ("manual", "autograd"):
        cfg = RunConfig(DataConfig(path=str(tiny_data)), small(),
                        TrainConfig(steps=300, batch_size=16, engine=engine, eval_every=0))
        losses[engine] = torch.tensor(charmlp.train(cfg, progress=False).losses)
    assert (losses["manual"] - losses["autograd"]).abs().max() <= 1e-4


def test_auto_engine_falls_back_to_manual_and_fast_says_why(tiny_data):
    cfg = RunConfig(DataConfig(path=str(tiny_data)), small(), TrainConfig(steps=3, batch_size=8))
    assert charmlp.train(cfg, progress=False).summary["engine"] == "manual"
    p = run_cli("train", "--model", "wavenet", "--engine", "fast", "--data", tiny_data, "--steps", "3",
                "--out", tiny_data.parent / "f")
    assert_user_error(p, "--engine fast cannot run")


def test_checkpoint_round_trip_and_samples(tmp_path, tiny_data):
    cfg = RunConfig(DataConfig(path=str(tiny_data)), small(), TrainConfig(steps=200, batch_size=16, optimizer="adamw",
                                                                          lr=0.01))
    res = charmlp.train(cfg, out_dir=tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.config.model == res.config.model and run.config.model.kind == "wavenet"
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, run.model.state_dict()[k]), k
    assert charmlp.evaluate_run(tmp_path / "run") == pytest.approx(
        {s: res.summary[f"{s}_loss"] for s in ("train", "val", "test")}, abs=1e-6)
    a = charmlp.sample_run(tmp_path / "run", n=30, seed=1, temperature=0.9, top_k=5, prefix="a")
    b = charmlp.sample_run(tmp_path / "run", n=30, seed=1, temperature=0.9, top_k=5, prefix="a")
    assert a.samples == b.samples and all(s.startswith("a") for s in a.samples)


def test_interrupt_then_resume_is_bit_exact(tmp_path, tiny_data):
    cfg = RunConfig(DataConfig(path=str(tiny_data)), small(), TrainConfig(steps=80, batch_size=16, eval_every=10))
    ref = charmlp.train(cfg, out_dir=tmp_path / "ref", progress=False)

    def hook(step, model, lr, loss):
        if step == 33:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False, hooks=(hook,))
    res = charmlp.resume(tmp_path / "run", progress=False)
    assert res.losses == ref.losses
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, res.model.state_dict()[k]), k
    assert Path(tmp_path / "run" / "metrics.jsonl").read_text() == Path(tmp_path / "ref" / "metrics.jsonl").read_text()
