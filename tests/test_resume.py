"""Interrupt and resume: Ctrl-C/SIGTERM/SIGKILL at any moment, then `train --resume`, must give
bit for bit the parameters and losses of an uninterrupted run with the same seed."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import charmlp
from charmlp.checkpoint import STATE, WEIGHTS, load_run, prepare_run_dir
from charmlp.cli import main
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.errors import CharmlpError, TrainingInterrupted
from charmlp.models import MLPConfig
from charmlp.resume import read_checkpoint
from conftest import SRC, assert_user_error, run_cli

# a tiny model so that a step is cheap and checkpoint writes dominate
TINY = ["--batch-size", "16", "--n-hidden", "16", "--n-embd", "4", "--no-progress"]


def tiny_cfg(data: Path, steps: int = 60, **train: object) -> RunConfig:
    return RunConfig(
        DataConfig(path=str(data)),
        MLPConfig(n_hidden=16, n_embd=4),
        TrainConfig(steps=steps, batch_size=16, **train),
    )


def assert_same_run(a: Path, b: Path) -> None:
    """Bitwise equal weights and logged losses."""
    wa, wb = load_file(a / WEIGHTS), load_file(b / WEIGHTS)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def popen_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "charmlp", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_for_new_checkpoint(state: Path, proc: subprocess.Popen, after_ns: int, timeout: float = 120) -> bool:
    """Wait until `state` is (re)written after `after_ns`; False if the process ended first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if state.stat().st_mtime_ns > after_ns:
                return True
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


# ----------------------------------------------------------------------------- in-process


def interrupt_at(step_to_stop: int, signum: int = signal.SIGINT):
    """A step hook that sends this process a signal, as Ctrl-C would, during step `step_to_stop`."""

    def hook(step: int, model, lr, loss) -> None:
        if step == step_to_stop:
            os.kill(os.getpid(), signum)

    return hook


@pytest.mark.parametrize("optimizer,engine", [("sgd", "autograd"), ("adamw", "manual")])
def test_signal_then_resume_matches_uninterrupted_in_process(tmp_path, tiny_data, optimizer, engine):
    cfg = tiny_cfg(tiny_data, steps=60, optimizer=optimizer, engine=engine, lr=0.05, lr_final=0.005, log_every=1)
    ref = charmlp.train(cfg, out_dir=tmp_path / "ref", progress=False)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as exc:
        charmlp.train(cfg, out_dir=run, progress=False, hooks=(interrupt_at(23),))
    assert exc.value.signum == signal.SIGINT
    assert "--resume" in str(exc.value) and "step 24 of 60" in str(exc.value)
    # the handler is gone after training: Ctrl-C is an ordinary KeyboardInterrupt again
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ck = read_checkpoint(run)
    assert ck is not None and ck.step == 24 and ck.reason == "interrupted"
    with pytest.raises(CharmlpError, match="unfinished"):
        load_run(run)
    res = charmlp.resume(run, progress=False)
    assert res.losses == ref.losses
    for (k, a), (_, b) in zip(res.model.state_dict().items(), ref.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert not (run / STATE).exists()  # a finished run keeps no checkpoint
    assert_same_run(run, tmp_path / "ref")


def test_periodic_checkpoints_and_sigterm(tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, steps=40, checkpoint_every=7)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as exc:
        charmlp.train(cfg, out_dir=run, progress=False, hooks=(interrupt_at(20, signal.SIGTERM),))
    assert exc.value.signum == signal.SIGTERM
    ck = read_checkpoint(run)
    assert ck.step == 21 and len(ck.tensors["losses"]) == 21
    # resume with another checkpoint interval: allowed, it changes no number
    res = charmlp.resume(run, progress=False, checkpoint_every=3)
    ref = charmlp.train(cfg, progress=False)
    assert res.losses == ref.losses


def test_resume_before_first_checkpoint_starts_over_exactly(tmp_path, tiny_data):
    """Killed after config.json/vocab.json were written but before any checkpoint."""
    cfg = tiny_cfg(tiny_data, steps=30)
    ref = charmlp.train(cfg, progress=False)
    ds = charmlp.load_dataset(cfg.data)
    cfg_written = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, vocab_size=ds.vocab.size),
        data=dataclasses.replace(cfg.data, path=str(tiny_data.resolve())),
    )
    prepare_run_dir(tmp_path / "run", cfg_written, ds.vocab)
    res = charmlp.resume(tmp_path / "run", progress=False)
    assert res.losses == ref.losses


def test_non_finite_loss_stops_with_step_and_lr_after_saving(tmp_path, tiny_data):
    """A hook blows the embedding up to finite-but-huge values: the next loss is not finite."""
    cfg = tiny_cfg(tiny_data, steps=50, checkpoint_every=5)

    def explode(step, model, lr, loss):
        if step == 12:
            with torch.no_grad():
                model.layers[0].weight.fill_(3e38)

    with pytest.raises(CharmlpError) as exc:
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False, hooks=(explode,))
    msg = str(exc.value)
    assert "non-finite" in msg and "step 13 of 50" in msg and "--lr" in msg and "lr 0.1" in msg
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ck = read_checkpoint(tmp_path / "run")
    assert ck.step == 13 and ck.reason == "non-finite"
    assert torch.isfinite(ck.tensors["losses"]).all()


def test_fresh_train_refuses_to_overwrite_an_unfinished_run(tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, steps=30)
    with pytest.raises(TrainingInterrupted):
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False, hooks=(interrupt_at(3),))
    with pytest.raises(CharmlpError, match="unfinished run .*--resume"):
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False)


def test_resume_refuses_changed_data(tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, steps=30)
    with pytest.raises(TrainingInterrupted):
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False, hooks=(interrupt_at(3),))
    lines = tiny_data.read_text().splitlines()
    tiny_data.write_text("\n".join(reversed(lines)) + "\n")  # same characters, other split
    with pytest.raises(CharmlpError, match="data file changed"):
        charmlp.resume(tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------- real processes


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 200-step run (in this process) and its data file."""
    d = tmp_path_factory.mktemp("resume")
    from conftest import make_items

    data = d / "tiny.txt"
    data.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    charmlp.train(tiny_cfg(data, steps=200), out_dir=d / "ref", progress=False)
    return data, d / "ref"


def test_cli_sigint_then_resume_is_bitwise_identical(tmp_path, reference_run):
    data, ref = reference_run
    run = tmp_path / "run"
    proc = popen_cli("train", "--data", data, "--out", run, "--steps", "200", "--checkpoint-every", "10", *TINY)
    assert wait_for_new_checkpoint(run / STATE, proc, 0), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("interrupted:") and f"--resume {run}" in line
    ck = read_checkpoint(run)
    assert 0 < ck.step < 200
    done = run_cli("train", "--resume", run, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert_same_run(run, ref)


def test_cli_sigkill_during_checkpoint_writes_always_leaves_a_loadable_run(tmp_path, reference_run):
    """Kill -9 at random moments while a checkpoint is written every step; after each kill the run
    directory loads, and resuming through all the kills ends exactly where the reference does."""
    data, ref = reference_run
    run = tmp_path / "run"
    rng = random.Random(1234)
    steps_seen = []
    for i in range(2):
        args = ["--resume", run] if i else ["--data", data, "--out", run, "--steps", "200", *TINY]
        proc = popen_cli("train", *args, "--checkpoint-every", "1", "--no-progress")
        before = (run / STATE).stat().st_mtime_ns if (run / STATE).exists() else 0
        if not wait_for_new_checkpoint(run / STATE, proc, before):
            pytest.fail(f"training ended before it could be killed: {proc.communicate()}")
        time.sleep(rng.uniform(0, 0.15))
        proc.kill()
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        ck = read_checkpoint(run)  # complete and checksummed, whatever moment the kill hit
        assert ck is not None and 0 < ck.step <= 200 and len(ck.tensors["losses"]) == ck.step
        charmlp.checkpoint.read_run_config(run)
        steps_seen.append(ck.step)
    assert steps_seen == sorted(steps_seen)
    done = run_cli("train", "--resume", run, "--no-progress", "--checkpoint-every", "0")
    assert done.returncode == 0, done.stderr
    assert not list(run.glob(".*.tmp"))  # leftovers of the kills are cleaned up
    assert_same_run(run, ref)


def test_cli_non_finite_loss(tmp_path, tiny_data):
    """A learning rate of 100 without BatchNorm or hidden layer overflows the loss within a few steps."""
    run = tmp_path / "run"
    p = run_cli("train", "--data", tiny_data, "--out", run, "--steps", "300", "--no-batchnorm", "--n-layer", "0",
                "--lr", "100", "--lr-final", "100", "--schedule", "constant", *TINY)
    assert_user_error(p, "non-finite")
    assert "at step" in p.stderr and "--lr" in p.stderr and "saved in" in p.stderr
    ck = read_checkpoint(run)
    assert ck.reason == "non-finite" and all(torch.isfinite(t).all() for k, t in ck.tensors.items() if k not in ("rng", "val_losses"))


def test_resume_of_a_finished_run(reference_run, capsys):
    assert "finished run" in cli_error(capsys, "train", "--resume", reference_run[1])


def cli_error(capsys, *args: object) -> str:
    """Run the CLI's main() in this process; assert exit code 2 and one `error:` line, return it."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, (code, err)
    return err


def test_resume_option_errors(tmp_path, reference_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run[1], run)
    (run / WEIGHTS).unlink()
    assert "cannot change when resuming" in cli_error(capsys, "train", "--resume", run, "--lr", "0.5", "--steps", "10")
    assert "does not exist" in cli_error(capsys, "train", "--resume", tmp_path / "nowhere")
    assert "not allowed with argument" in cli_error(capsys, "train", "--resume", run, "--out", run)
    assert "one of the arguments --out --resume is required" in cli_error(capsys, "train")


def test_interrupted_after_the_loop_resumes_to_the_same_run(tmp_path, tiny_data, monkeypatch):
    """Ctrl-C during the final evaluation: the final checkpoint is on disk and resuming only finishes."""
    train_module = sys.modules["charmlp.train"]  # the attribute charmlp.train is the function

    cfg = tiny_cfg(tiny_data, steps=25)
    ref = charmlp.train(cfg, progress=False)
    real_final_losses = train_module.final_losses

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "final_losses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False)
    ck = read_checkpoint(tmp_path / "run")
    assert ck.step == 25 and ck.reason == "final"
    monkeypatch.setattr(train_module, "final_losses", real_final_losses)
    res = charmlp.resume(tmp_path / "run", progress=False)
    assert res.losses == ref.losses and res.summary["val_loss"] == ref.summary["val_loss"]
    assert not (tmp_path / "run" / STATE).exists()


def test_a_diverged_run_can_be_retrained_in_place(tmp_path, tiny_data):
    def explode(step, model, lr, loss):
        if step == 2:
            with torch.no_grad():
                model.layers[0].weight.fill_(3e38)

    cfg = tiny_cfg(tiny_data, steps=10)
    with pytest.raises(CharmlpError, match="non-finite"):
        charmlp.train(cfg, out_dir=tmp_path / "run", progress=False, hooks=(explode,))
    assert read_checkpoint(tmp_path / "run").reason == "non-finite"
    charmlp.train(cfg, out_dir=tmp_path / "run", progress=False)  # e.g. with a lower --lr
    assert load_run(tmp_path / "run").config.train.steps == 10 and not (tmp_path / "run" / STATE).exists()


# ----------------------------------------------------------------------------- windows without host syncs


def test_sync_every_gives_the_same_run_files_and_all(tmp_path, tiny_data):
    """--sync-every K (what a GPU run does by default) reads losses back once per window: the same
    losses, val losses, weights and files as reading each step's."""
    common = dict(engine="manual", optimizer="adamw", lr=0.01, eval_every=5, checkpoint_every=9, log_every=1)
    from charmlp.diagnostics import init_warning_hook

    warn = init_warning_hook(write=lambda msg: None)
    ref = charmlp.train(tiny_cfg(tiny_data, steps=40, **common), out_dir=tmp_path / "one", progress=False,
                        hooks=(warn,))
    win = charmlp.train(tiny_cfg(tiny_data, steps=40, sync_every=7, **common), out_dir=tmp_path / "win",
                        progress=False, hooks=(warn,))
    assert win.losses == ref.losses
    assert_same_run(tmp_path / "one", tmp_path / "win")
    assert (tmp_path / "one" / "metrics.jsonl").read_text() == (tmp_path / "win" / "metrics.jsonl").read_text()


def test_sync_every_non_finite_stops_where_one_step_does(tmp_path, tiny_data):
    def explode(step, model, lr, loss):
        with torch.no_grad():
            model.layers[0].weight.fill_(3e38)

    explode.wants = lambda step: step == 12  # the window after step 12 meets the non-finite loss at 13
    msgs, states = [], []
    for k in (1, 6):
        run = tmp_path / f"run{k}"
        with pytest.raises(CharmlpError) as exc:
            charmlp.train(tiny_cfg(tiny_data, steps=50, engine="manual", sync_every=k), out_dir=run,
                          progress=False, hooks=(explode,))
        msgs.append(str(exc.value).replace(str(run), "RUN"))
        states.append(read_checkpoint(run))
    assert "step 13 of 50" in msgs[0] and msgs[0] == msgs[1]
    assert states[0].step == states[1].step == 13
    for key, t in states[0].tensors.items():  # (BatchNorm's running statistics took the blow-up too: nan)
        torch.testing.assert_close(t, states[1].tensors[key], rtol=0, atol=0, equal_nan=True, msg=key)


def test_sync_every_signal_inside_a_window_then_resume_is_exact(tmp_path, tiny_data, monkeypatch):
    from charmlp.engines.eager import EagerStep

    cfg = tiny_cfg(tiny_data, steps=60, engine="autograd", sync_every=10, log_every=1)
    ref = charmlp.train(cfg, out_dir=tmp_path / "ref", progress=False)
    taken, real_step = [], EagerStep._step

    def step_then_signal(self, lr, ix, T):
        taken.append(1)
        if len(taken) == 24:  # during the third window's fourth step
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, lr, ix, T)

    monkeypatch.setattr(EagerStep, "_step", step_then_signal)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="step 24 of 60"):
        charmlp.train(cfg, out_dir=run, progress=False)
    assert read_checkpoint(run).step == 24
    monkeypatch.setattr(EagerStep, "_step", real_step)
    res = charmlp.resume(run, progress=False)
    assert res.losses == ref.losses
    assert_same_run(run, tmp_path / "ref")


def test_a_checkpoint_from_before_a_new_option_still_resumes(tiny_data):
    """A field added since the checkpoint was written (absent from its fingerprint) counts as its
    default; any other difference is another run."""
    from charmlp.models import model_config
    from charmlp.resume import _run_fingerprint, _same_run
    from charmlp.train import prepare_data

    cfg, ds = prepare_data(RunConfig(DataConfig(path=str(tiny_data)), model_config("gru", n_hidden=8),
                                     TrainConfig(steps=10)))
    now = _run_fingerprint(cfg, ds)
    old = json.loads(json.dumps(now))
    del old["train"]["positions"], old["model"]["dropout"]  # what an earlier release wrote
    assert _same_run(old, now, cfg)
    old["train"]["steps"] = 11
    assert not _same_run(old, now, cfg)
    cfg2 = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.1))
    old = json.loads(json.dumps(now))
    del old["model"]["dropout"]
    assert not _same_run(old, _run_fingerprint(cfg2, ds), cfg2)  # not the default: not the same run
    assert not _same_run(None, now, cfg) and not _same_run({"train": 1}, now, cfg)


def test_the_data_fingerprint_is_the_hash_of_each_item_and_its_newline(tmp_path):
    """Batched over the split's arrays, the hash old checkpoints hold: item by item."""
    import hashlib

    from charmlp.config import DataConfig
    from charmlp.data import load_dataset
    from charmlp.resume import data_fingerprint

    p = tmp_path / "d.txt"
    p.write_text("".join(f"{a}é{b}漢\n" for a in "abcdefgh" for b in "ijkl"), encoding="utf-8")
    ds = load_dataset(DataConfig(path=str(p)))
    h = hashlib.sha256()
    for s in ("train", "val", "test"):
        h.update(f"{s}:{len(ds.items[s])}\n".encode())
        for item in list(ds.items[s]):
            h.update(item.encode("utf-8") + b"\n")
    assert data_fingerprint(ds) == h.hexdigest()
