import dataclasses
import json
import math

import pytest
import torch

from charmlp.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from charmlp.data import load_dataset
from charmlp.errors import CharmlpError
from charmlp.evaluate import split_loss
from charmlp.models import MLPConfig, apply_preset
from charmlp.train import calibrate_batchnorm, lr_at, prepare_data, train, validate_train_config


def _cfg(path, **train) -> RunConfig:
    tc = TrainConfig(**{"steps": 300, "batch_size": 32, "lr": 0.1, "seed": 5, "device": "cpu", **train})
    return RunConfig(DataConfig(path=str(path)), MLPConfig(n_embd=8, n_hidden=64), tc)


def test_short_run_lowers_the_loss(tiny_data):
    result = train(_cfg(tiny_data), progress=False)
    s = result.summary
    assert abs(s["init_loss"] - math.log(result.dataset.vocab.size)) < 0.3
    assert s["train_loss"] < s["init_loss"] - 0.5
    assert len(result.losses) == 300
    assert s["steps"] == 300 and s["seconds"] > 0


def test_same_seed_same_losses_bit_for_bit(tiny_data):
    a = train(_cfg(tiny_data), progress=False)
    b = train(_cfg(tiny_data), progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = train(dataclasses.replace(_cfg(tiny_data), train=dataclasses.replace(_cfg(tiny_data).train, seed=6)),
              progress=False)
    assert c.losses != a.losses


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_optimizers_train(tiny_data, optimizer):
    lr = 0.1 if optimizer == "sgd" else 0.01
    result = train(_cfg(tiny_data, optimizer=optimizer, lr=lr), progress=False)
    assert result.summary["train_loss"] < result.summary["init_loss"] - 0.5


def test_lr_schedules():
    tc = TrainConfig(steps=100, lr=0.1, lr_final=0.01)
    assert [lr_at(tc, s) for s in (0, 49, 50, 99)] == [0.1, 0.1, 0.01, 0.01]
    cos = dataclasses.replace(tc, schedule="cosine")
    assert lr_at(cos, 0) == pytest.approx(0.1) and lr_at(cos, 99) == pytest.approx(0.01)
    assert lr_at(dataclasses.replace(tc, schedule="constant"), 99) == 0.1


def test_a_schedule_with_knots():
    """Knots (step, end) bend the progress p: the steps before a knot keep their lr bit for bit, the
    schedule ends at lr_final at the last knot's end, and p is the old step ÷ (steps − 1) under (0, steps)."""
    cos = TrainConfig(steps=100, lr=0.1, lr_final=0.01, schedule="cosine")
    one = dataclasses.replace(cos, knots=((0, 100),))
    assert [lr_at(one, s) for s in range(100)] == [lr_at(cos, s) for s in range(100)]
    bent = dataclasses.replace(cos, steps=200, knots=((0, 100), (40, 250), (90, 200)))  # longer, then a little shorter
    lrs = [lr_at(bent, s) for s in range(200)]
    assert lrs[:40] == [lr_at(one, s) for s in range(40)] and lrs[199] == 0.01
    assert all(a > b for a, b in zip(lrs[:199], lrs[1:], strict=False))  # falling all the way, no jump at a knot
    assert lrs[40] == pytest.approx(lr_at(one, 40))  # continuous: the knot starts where the old span was
    step = dataclasses.replace(bent, schedule="step", decay_at=0.5)  # lr while p < 0.5
    decayed = next(s for s in range(200) if lr_at(step, s) == 0.01)
    assert lr_at(step, decayed - 1) == 0.1
    p = [math.acos(max(-1.0, min(1.0, 2 * (lr - 0.01) / 0.09 - 1))) / math.pi for lr in lrs]  # the cosine's progress back
    assert p[decayed - 1] < 0.5 <= p[decayed]
    assert lr_at(dataclasses.replace(bent, schedule="constant"), 150) == 0.1
    from charmlp.config import run_config_from_dict, run_config_to_dict  # the JSON round trip, old configs
    cfg = RunConfig(train=bent)
    assert run_config_from_dict(json.loads(json.dumps(run_config_to_dict(cfg)))) == cfg
    old = run_config_to_dict(RunConfig(train=cos))
    del old["train"]["knots"]  # written before knots: the schedule as it was
    assert run_config_from_dict(old).train == cos
    with pytest.raises(CharmlpError, match="knots"):
        run_config_from_dict({**old, "train": {**old["train"], "knots": [[0, 10, 3]]}})
    with pytest.raises(CharmlpError, match="knots"):
        validate_train_config(dataclasses.replace(cos, knots=((0, 100), (40, 30))))


def test_presets():
    assert apply_preset(TrainConfig(), "seed") == TrainConfig()
    assert TrainConfig().steps == 200_000 and TrainConfig().batch_size == 32
    assert apply_preset(TrainConfig(), "quick").steps < 50_000
    with pytest.raises(CharmlpError, match="unknown preset"):
        apply_preset(TrainConfig(), "nope")


def test_batch_of_one_with_batchnorm_is_a_user_error(tiny_data):
    with pytest.raises(CharmlpError, match="batch"):
        train(_cfg(tiny_data, batch_size=1), progress=False)


def test_calibration_matches_full_batch_statistics():
    ds = load_dataset()
    result = train(RunConfig(model=MLPConfig(n_hidden=32, n_layer=2), train=TrainConfig(steps=50, device="cpu")),
                   dataset=ds, progress=False)
    model = result.model
    calibrate_batchnorm(model, ds.X["train"], chunk=10_000)  # chunked must equal one full batch
    model.eval()
    layers = list(model.layers)
    with torch.no_grad():
        h = ds.X["train"]
        for i, layer in enumerate(layers):
            if i == 6:  # the second BatchNorm's input, after the first (calibrated) block
                torch.testing.assert_close(layer.running_mean, h.mean(0), atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(layer.running_var, h.var(0), atol=1e-3, rtol=1e-4)
            h = layer(h)
    # calibrated statistics fit the train split at least as well as the running ones
    assert split_loss(model, ds.X["train"], ds.Y["train"]) <= result.summary["train_loss"] + 1e-6


# ----------------------------------------------------------------------------- GPU (skipped without one)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model_cfg(kind: str) -> ModelConfig:
    from charmlp.models import model_config

    fields = {"mlp": dict(n_embd=4, n_hidden=32), "transformer": dict(n_embd=16, n_head=2, n_layer=2)}[kind]
    return model_config(kind, **fields)


@needs_cuda
@pytest.mark.parametrize("engine", ["auto", "manual", "autograd"])
@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_cuda_trains_with_every_engine_as_the_cpu_does(tiny_data, kind, engine):
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = RunConfig(DataConfig(path=str(tiny_data)), _model_cfg(kind),
                        TrainConfig(steps=60, batch_size=16, optimizer="adamw", lr=3e-3, engine=engine, device=device))
        runs[device] = train(cfg, progress=False)
    assert runs["cuda"].summary["device"].startswith("cuda")
    assert runs["cuda"].losses == pytest.approx(runs["cpu"].losses, abs=2e-4)


@needs_cuda
@pytest.mark.parametrize("kind", ["mlp", "transformer"])
def test_cuda_manual_window_makes_no_host_sync(tiny_data, kind):
    """Inside a window the manual step never waits for the GPU (torch raises on any synchronising call)."""
    from charmlp.engines.eager import EagerStep
    from charmlp.models import build_model
    from charmlp.optim import make_optimizer

    g = torch.Generator().manual_seed(0)
    ds = load_dataset(DataConfig(path=str(tiny_data), block_size=0 if kind == "transformer" else 3))
    cfg = dataclasses.replace(_model_cfg(kind), vocab_size=ds.vocab.size, block_size=ds.X["train"].shape[1])
    model = build_model(cfg, generator=g).cuda()
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=1e-3), model)
    step = EagerStep("manual", model, opt, ds.X["train"].cuda(), ds.Y["train"].cuda(), 16, g)
    step.window([1e-3] * 3)  # first calls: allocator and kernels warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = step.window([1e-3] * 20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(losses.cpu()).all()


def test_a_budget_of_positions_sets_the_steps_from_the_data(tmp_path):
    """Presets of whole-item models give positions, not steps: longer items, fewer steps, about the same work."""
    from charmlp.models import model_config

    short, long = tmp_path / "short.txt", tmp_path / "long.txt"
    short.write_text("\n".join(["abc", "abcd", "ab"] * 30) + "\n")  # rows of 5 positions
    long.write_text("\n".join(["abcdefghi", "abcd", "ab"] * 30) + "\n")  # rows of 10
    tc = TrainConfig(positions=10_000, batch_size=8, steps=7)
    for path, per_row in ((short, 5), (long, 10)):
        cfg, _ = prepare_data(RunConfig(DataConfig(path=str(path)), model_config("gru"), tc))
        assert cfg.train.steps == 10_000 // (8 * per_row)
    cfg, _ = prepare_data(RunConfig(DataConfig(path=str(short)), MLPConfig(), tc))  # windows: a row is one position
    assert cfg.train.steps == 10_000 // 8
    res = train(RunConfig(DataConfig(path=str(long)), model_config("rnn", n_hidden=8, n_embd=4),
                          TrainConfig(positions=800, batch_size=8, eval_every=0)), progress=False)
    assert len(res.losses) == res.summary["steps"] == 10


def test_steps_flag_outranks_a_presets_positions(tmp_path):
    from charmlp.cli import build_parser, run_config_from_args

    args = build_parser("train").parse_args(["train", "--out", str(tmp_path), "--model", "gru", "--preset", "fast", "--steps", "5"])
    tc = run_config_from_args(args).train
    assert tc.steps == 5 and tc.positions == 0
    args = build_parser("train").parse_args(["train", "--out", str(tmp_path), "--model", "gru", "--preset", "fast"])
    assert run_config_from_args(args).train.positions == 4000 * 64 * 16


def test_a_hook_that_sees_val_losses_can_end_the_run(tiny_data, tmp_path):
    """`on_val` sees every val evaluation; True ends the run there, a finished run of the steps taken
    whose lr schedule is still the planned one."""
    seen: list[tuple[int, int, float]] = []

    class StopAtSecond:
        def __call__(self, step, model, lr, loss):
            pass

        def wants(self, step):
            return False

        def on_val(self, step, steps, val_loss):
            seen.append((step, steps, val_loss))
            return len(seen) == 2

    res = train(_cfg(tiny_data, steps=300, eval_every=50, schedule="cosine", calibrate_bn=False), out_dir=tmp_path / "r", progress=False,
                hooks=(StopAtSecond(),))
    assert [(s, n) for s, n, _ in seen] == [(49, 300), (99, 300)]
    assert res.summary["steps"] == len(res.losses) == 100 and res.config.train.schedule_steps == 300
    assert res.summary["val_loss"] == pytest.approx(seen[-1][2], abs=1e-6)  # the final model is the stopped one (no BatchNorm calibration after)
