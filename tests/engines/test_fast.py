"""The fused fast steps — the compiled one (compiled_step.py, Numba) and the NumPy one
(engines.fast.FastStep) — against the eager manual engine they replace."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charmlp import CharmlpError, DataConfig, MLPConfig, RunConfig, TrainConfig, load_dataset, train
from charmlp.config import run_config_from_dict, run_config_to_dict
from charmlp.engines import compiled as compiled_step
from charmlp.engines.fast import make_train_step
from charmlp.engines.support import unsupported_reason
from charmlp.engines.threads import set_threads
from charmlp.models import MODELS, apply_preset, build_model
from charmlp.train import make_optimizer, validate_train_config
from conftest import SRC, assert_user_error, run_cli

HAVE_COMPILED = compiled_step.available()
IMPLS = [pytest.param("compiled", marks=pytest.mark.skipif(not HAVE_COMPILED, reason=str(compiled_step.unavailable_reason()))),
         "numpy"]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with each fused step: `numpy` hides the compiled one from engines.fast.fused_step."""
    if request.param == "numpy":
        monkeypatch.setattr(compiled_step, "_status", "hidden by the test")
    return request.param

CASES = {
    "depth1-bn-sgd": (MLPConfig(), TrainConfig(optimizer="sgd", lr=0.1)),
    "depth3-bn-sgd-wd": (MLPConfig(n_layer=3, n_hidden=64), TrainConfig(optimizer="sgd", lr=0.1, weight_decay=1e-3)),
    "depth2-nobn-sgd": (MLPConfig(n_layer=2, n_hidden=64, batchnorm=False), TrainConfig(optimizer="sgd", lr=0.1)),
    "depth0-sgd": (MLPConfig(n_layer=0), TrainConfig(optimizer="sgd", lr=0.1)),
    "depth1-bn-adamw": (MLPConfig(), TrainConfig(optimizer="adamw", lr=0.01, schedule="cosine", lr_final=1e-4)),
    "depth2-bn-adamw-wd": (MLPConfig(n_layer=2, n_hidden=48, block_size=4),
                           TrainConfig(optimizer="adamw", lr=0.005, weight_decay=0.1, batch_size=20)),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    from conftest import make_items

    p = Path(tmp_path_factory.mktemp("fast")) / "items.txt"
    p.write_text("\n".join(make_items(400, seed=3)) + "\n", encoding="utf-8")
    return {k: load_dataset(DataConfig(path=str(p), block_size=k)) for k in (3, 4)}


def _train(dataset, mc: MLPConfig, tc: TrainConfig, engine: str, steps: int):
    tc = dataclasses.replace(tc, engine=engine, steps=steps, calibrate_bn=False)
    return train(RunConfig(DataConfig(block_size=mc.block_size), mc, tc), dataset=dataset[mc.block_size],
                 progress=False)


@pytest.mark.parametrize("case", list(CASES))
def test_fast_losses_and_params_match_eager_manual(dataset, case: str, impl: str) -> None:
    mc, tc = CASES[case]
    eager = _train(dataset, mc, tc, "manual", 300)
    fast = _train(dataset, mc, tc, "fast", 300)
    assert eager.summary["engine"] == "manual" and fast.summary["engine"] == "fast"
    assert fast.summary["step_impl"] == impl
    le, lf = torch.tensor(eager.losses), torch.tensor(fast.losses)
    assert abs(le[0].item() - lf[0].item()) < 1e-6  # same init, same first batch
    assert (le - lf).abs().max().item() < 1e-4, f"losses drift by {(le - lf).abs().max().item():.2e}"
    # parameters and BatchNorm running statistics after 300 steps; AdamW divides by √v, which
    # magnifies rounding where a gradient is ~0, hence its looser bound
    tol = 2e-3 if tc.optimizer == "adamw" else 1e-4
    se, sf = eager.model.state_dict(), fast.model.state_dict()
    assert se.keys() == sf.keys()
    for k in se:
        diff = (se[k] - sf[k]).abs().max().item()
        assert diff < tol, f"{k}: max |Δ| {diff:.2e}"


def test_fast_step_gradients_equal_manual_engine(dataset, impl: str) -> None:
    """One step from the same state: every .grad the fast step leaves equals the manual engine's."""
    ds = dataset[3]
    X, Y = ds.X["train"], ds.Y["train"]
    for mc in (MLPConfig(n_layer=2, n_hidden=32), MLPConfig(n_layer=1, batchnorm=False)):
        runs = []
        for engine in ("manual", "fast"):
            g = torch.Generator().manual_seed(7)
            model = build_model(mc, generator=g)
            model.train()
            opt = make_optimizer(TrainConfig(), model)
            step, used = make_train_step(engine, model, opt, X, Y, 32, g)
            assert used == engine and (engine == "manual" or step.impl == impl)
            loss = float(step(0.1))
            runs.append((loss, {n: p.grad.clone() for n, p in model.named_parameters()}, g.get_state()))
        (l1, g1, s1), (l2, g2, s2) = runs
        assert l1 == pytest.approx(l2, abs=1e-6)
        for n in g1:
            assert torch.allclose(g1[n], g2[n], atol=1e-6, rtol=1e-4), n
        assert torch.equal(s1, s2)  # the batch was drawn exactly as the eager loop draws it


def test_generator_and_optimizer_state_match_eager(dataset, impl: str) -> None:
    """What a checkpoint would save — generator state, AdamW state — is the eager path's."""
    ds = dataset[3]
    states = []
    for engine in ("manual", "fast"):
        g = torch.Generator().manual_seed(3)
        model = build_model(MLPConfig(), generator=g)
        model.train()
        opt = make_optimizer(TrainConfig(optimizer="adamw", lr=0.01), model)
        step, _ = make_train_step(engine, model, opt, ds.X["train"], ds.Y["train"], 32, g)
        for _ in range(50):
            step(0.01)
        states.append((g.get_state(), opt.state_dict()))
    (ge, oe), (gf, of) = states
    assert torch.equal(ge, gf)
    assert oe["param_groups"] == of["param_groups"]
    for i, st in oe["state"].items():
        assert float(st["step"]) == float(of["state"][i]["step"]) == 50.0
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.allclose(st[k], of["state"][i][k], atol=1e-5, rtol=1e-3)


def test_auto_falls_back_and_fast_refuses_unsupported(dataset) -> None:
    ds = dataset[3]
    g = torch.Generator().manual_seed(0)
    model = build_model(MLPConfig(), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert "momentum" in unsupported_reason(model, opt)
    _, used = make_train_step("auto", model, opt, ds.X["train"], ds.Y["train"], 32, g)
    assert used == "manual"
    with pytest.raises(CharmlpError, match="momentum"):
        make_train_step("fast", model, opt, ds.X["train"], ds.Y["train"], 32, g)
    assert unsupported_reason(model.double(), make_optimizer(TrainConfig(), model)) is not None


def test_default_engine_is_auto_and_uses_fast(dataset) -> None:
    assert TrainConfig().engine == "auto"
    res = train(RunConfig(train=TrainConfig(steps=20, calibrate_bn=False)), dataset=dataset[3], progress=False)
    assert res.summary["engine"] == "fast"


def test_fast_preset_is_valid() -> None:
    tc = apply_preset(TrainConfig(), "fast")
    validate_train_config(tc)
    assert tc.optimizer in ("sgd", "adamw") and tc.batch_size >= 2
    assert set(MODELS["mlp"].presets["fast"]) <= {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = RunConfig(train=tc)
    assert run_config_from_dict(run_config_to_dict(cfg)) == cfg


def test_set_threads_rejects_nonsense() -> None:
    with pytest.raises(CharmlpError, match="--threads"):
        set_threads(0)
    set_threads(1)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("model,flags,want", [("mlp", [], 1), ("gru", [], min(2, os.cpu_count() or 1)),
                                             ("gru", ["--threads", "1"], 1)])
def test_train_threads_default_by_model_kind(model, flags, want, tmp_path: Path, tiny_data: Path, monkeypatch) -> None:
    """2 threads for whole-item models (their matrices split well), 1 for window models; --threads wins."""
    import charmlp.engines.threads as threads
    from charmlp.cli import main

    seen = []
    real = threads.set_threads
    monkeypatch.setattr(threads, "set_threads", lambda n: (seen.append(n), real(n))[-1])
    code = main(["train", "--model", model, "--data", str(tiny_data), "--steps", "2", "--batch-size", "4",
                 "--out", str(tmp_path / "r"), "--no-progress", *flags])
    assert code == 0 and seen == [want] and torch.get_num_threads() == want


def test_cli_threads_zero_is_a_user_error(tmp_path: Path, tiny_data: Path) -> None:
    proc = run_cli("train", "--data", tiny_data, "--steps", "5", "--threads", "0", "--out", tmp_path / "r",
                   "--no-progress")
    assert_user_error(proc, "--threads")


def test_tanh_outputs_visible_to_hooks(dataset, impl: str) -> None:
    """After each fast step every Tanh's `.out` holds that step's activations, as after the
    eager forward (diagnostics hooks read them)."""
    ds = dataset[3]
    seen = {}
    for engine in ("manual", "fast"):
        g = torch.Generator().manual_seed(5)
        model = build_model(MLPConfig(n_layer=2, n_hidden=32), generator=g)
        model.train()
        step, _ = make_train_step(engine, model, make_optimizer(TrainConfig(), model), ds.X["train"],
                                  ds.Y["train"], 32, g)
        for _ in range(3):
            step(0.1)
        seen[engine] = [m.out.clone() for m in model.layers if type(m).__name__ == "Tanh"]
    for a, b in zip(seen["manual"], seen["fast"], strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("engine", ["manual", "fast"])
def test_non_finite_loss_leaves_the_last_good_state(dataset, engine: str, impl: str) -> None:
    ds = dataset[3]
    g = torch.Generator().manual_seed(2)
    model = build_model(MLPConfig(), generator=g)
    model.train()
    opt = make_optimizer(TrainConfig(optimizer="adamw", lr=0.01), model)
    step, _ = make_train_step(engine, model, opt, ds.X["train"], ds.Y["train"], 32, g)
    step(0.01)
    with torch.no_grad():
        model.layers[-1].bias[0] = float("inf")  # every logit row now holds an inf: the loss is nan
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    loss = float(step(0.01))
    assert loss != loss  # nan
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert float(opt.state_dict()["state"][0]["step"]) == 1.0


# ----------------------------------------------------------------------------- the compiled step


@pytest.mark.skipif(not HAVE_COMPILED, reason=str(compiled_step.unavailable_reason()))
def test_compiled_tanh_is_within_float32_rounding_of_torch() -> None:
    from charmlp.engines._compiled_kernels import tanh_array

    x = torch.cat([torch.linspace(-12, 12, 200_001), torch.logspace(-9, 1, 20_001), -torch.logspace(-9, 1, 20_001),
                   torch.tensor([0.0, -0.0, 4e-4, -4e-4, float("inf"), float("-inf"), float("nan")])])
    out = torch.empty_like(x)
    tanh_array(x.numpy(), out.numpy())
    ref = torch.tanh(x)
    fin = ref.isfinite()
    assert (out[fin] - ref[fin]).abs().max().item() <= 5e-7
    assert out[-1] != out[-1]  # NaN stays NaN, so the loop's non-finite guard sees a diverged run
    assert out[-2].item() < -0.999999 and out[-3].item() > 0.999999  # ±inf → ±1 (to 2.4e-7)
    assert (out[:-1].abs() <= 1).all()


@pytest.mark.skipif(not HAVE_COMPILED, reason=str(compiled_step.unavailable_reason()))
def test_default_run_uses_the_compiled_step(dataset) -> None:
    res = train(RunConfig(train=TrainConfig(steps=5, calibrate_bn=False)), dataset=dataset[3], progress=False)
    assert (res.summary["engine"], res.summary["step_impl"]) == ("fast", "compiled")
    info = compiled_step.cache_info()
    assert info["available"] and info["cached"]


def test_without_numba_the_numpy_step_runs(dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    monkeypatch.setattr(compiled_step, "_status", None)
    assert not compiled_step.available()
    assert "numba" in compiled_step.unavailable_reason()
    res = train(RunConfig(train=TrainConfig(steps=5, calibrate_bn=False)), dataset=dataset[3], progress=False)
    assert (res.summary["engine"], res.summary["step_impl"]) == ("fast", "numpy")


@pytest.mark.skipif(not HAVE_COMPILED, reason=str(compiled_step.unavailable_reason()))
def test_uncachable_location_compiles_without_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no cache directory is writable Numba refuses `cache=True`; the step then compiles
    in each process instead of failing to import."""
    import numba

    from charmlp.engines import _compiled_kernels as k
    from charmlp.jit import cached_njit

    calls = []

    def fake_njit(cache: bool, **kw):
        calls.append(cache)
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file 'f.py'")
        return lambda fn: fn

    monkeypatch.setattr(numba, "njit", fake_njit)
    assert k._jit is cached_njit  # the compiled step's kernels and LayerNorm's use the same decorator
    f = cached_njit(fastmath=k._FM)(len)
    assert f is len and calls == [True, False]


def test_building_the_optimizer_does_not_import_dynamo() -> None:
    """torch.optim's constructor, state_dict and load_state_dict import torch._dynamo (~1.8 s) on
    first use; charmlp builds and checkpoints the same optimizer without it."""
    code = """if True:
        import sys, torch
        from charmlp.config import TrainConfig
        from charmlp.models import build_model
        from charmlp.optim import load_optimizer_state_dict, optimizer_state_dict
        from charmlp.train import make_optimizer
        for name in ("sgd", "adamw"):
            model = build_model(TrainConfig and __import__("charmlp").MLPConfig(n_hidden=8))
            opt = make_optimizer(TrainConfig(optimizer=name, lr=0.02, weight_decay=0.1), model)
            assert type(opt) is {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[name]
            assert "add_param_group" not in vars(opt)
            load_optimizer_state_dict(opt, optimizer_state_dict(opt))
            assert opt.param_groups[0]["lr"] == 0.02 and opt.param_groups[0]["weight_decay"] == 0.1
        assert "torch._dynamo" not in sys.modules, "torch._dynamo was imported"
        ref = torch.optim.AdamW(list(model.parameters()), lr=0.02, weight_decay=0.1)
        assert ref.state_dict() == optimizer_state_dict(opt) and vars(ref).keys() == vars(opt).keys()
        """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
