"""One writer per run directory (charmlp/lock.py), and a run directory that is never replaced by accident."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import charmlp
from charmlp import DataConfig, MLPConfig, RunConfig, TrainConfig, load_run
from charmlp.checkpoint import STATE, WEIGHTS
from charmlp.cli import main
from charmlp.errors import CharmlpError
from charmlp.lock import LOCK, RunDirLock
from conftest import SRC, assert_user_error, run_cli

TINY = ["--batch-size", "16", "--n-hidden", "8", "--n-embd", "3", "--no-progress"]


def cfg(data: Path, steps: int = 5, **train) -> RunConfig:
    return RunConfig(DataConfig(path=str(data)), MLPConfig(n_hidden=8, n_embd=3), TrainConfig(steps=steps, batch_size=16, **train))


def popen(*args: object) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "charmlp", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


# ----------------------------------------------------------------------------- the lock itself


def test_a_second_holder_is_refused_with_the_first_ones_pid_and_the_file_goes_on_release(tmp_path):
    (tmp_path / "run").mkdir()
    with RunDirLock(tmp_path / "run", "charmlp train"):
        info = json.loads((tmp_path / "run" / LOCK).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "charmlp train"
        with pytest.raises(CharmlpError, match=f"being written by another charmlp process \\(pid {os.getpid()} "):
            RunDirLock(tmp_path / "run", "charmlp diagnose").acquire()
    assert not (tmp_path / "run" / LOCK).exists()
    with RunDirLock(tmp_path / "run", "charmlp diagnose"):  # free again
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from charmlp.lock import RunDirLock; "
        "RunDirLock(sys.argv[2], 'charmlp train').acquire(); print('held', flush=True); time.sleep(60)"),
        str(SRC), str(d)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(CharmlpError, match=f"pid {holder.pid} "):
        RunDirLock(d, "charmlp train").acquire()
    holder.kill()
    holder.wait()
    assert (d / LOCK).exists()  # the dead holder's file is left behind …
    with RunDirLock(d, "charmlp train") as lock:  # … and taken over, with a note naming it
        assert lock.stale is not None and str(holder.pid) in lock.stale
    assert f"pid {holder.pid}" in capsys.readouterr().err


def test_the_lock_does_not_leave_a_file_in_a_finished_run(tmp_path, tiny_data):
    charmlp.train(cfg(tiny_data), out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / LOCK).exists() and (tmp_path / "run" / WEIGHTS).is_file()


# ----------------------------------------------------------------------------- what a fresh run may replace


def cli(capsys, *args: object) -> tuple[int, str]:
    """`charmlp ARGS` in this process (the lock conflicts between open files, so also within one process)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def assert_one_line(code: int, err: str, contains: str) -> None:
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and contains in err, (code, err)


def test_train_into_a_finished_run_is_refused_and_names_force_and_resume(tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", tiny_data, "--out", run, "--steps", "5", *TINY)[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert_one_line(*cli(capsys, "train", "--data", tiny_data, "--out", run, "--steps", "7", *TINY), "holds a finished run; pass --force")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # not a byte changed
    assert cli(capsys, "train", "--data", tiny_data, "--out", run, "--steps", "7", "--force", *TINY)[0] == 0
    assert load_run(run).config.train.steps == 7


def test_an_unfinished_run_is_refused_with_resume_named(tmp_path, tiny_data):
    run = tmp_path / "run"
    seen = []

    def stop(step, model, lr, loss):
        seen.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(charmlp.errors.TrainingInterrupted):
        charmlp.train(cfg(tiny_data, steps=50), out_dir=run, progress=False, hooks=(stop,))
    with pytest.raises(CharmlpError, match="unfinished run .*--resume.*--force"):
        charmlp.train(cfg(tiny_data), out_dir=run, progress=False)
    charmlp.train(cfg(tiny_data), out_dir=run, progress=False, force=True)
    assert not (run / STATE).exists() and load_run(run).config.train.steps == 5


def test_force_keeps_the_old_run_until_the_new_one_has_its_first_checkpoint(tmp_path, tiny_data):
    run = tmp_path / "run"
    charmlp.train(cfg(tiny_data, steps=5), out_dir=run, progress=False)
    old = (run / WEIGHTS).read_bytes()
    during = []

    def look(step, model, lr, loss):  # before the first checkpoint (step 10): the old run is whole
        if step < 9:
            during.append((run / WEIGHTS).read_bytes() == old and load_run(run).config.train.steps == 5)

    charmlp.train(cfg(tiny_data, steps=20, checkpoint_every=10), out_dir=run, progress=False, hooks=(look,), force=True)
    assert during and all(during)
    assert (run / WEIGHTS).read_bytes() != old and load_run(run).config.train.steps == 20


def test_a_directory_that_is_not_a_run_and_not_empty_is_refused(tmp_path, tiny_data, capsys):
    d = tmp_path / "project"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    for force in ([], ["--force"]):
        assert_one_line(*cli(capsys, "train", "--data", tiny_data, "--out", d, "--steps", "3", *force, *TINY),
                        "not empty and holds no charmlp run")
    assert [p.name for p in d.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    charmlp.train(cfg(tiny_data), out_dir=empty, progress=False)  # an empty directory is fine


def test_force_with_resume_is_one_line(tmp_path, capsys):
    assert_one_line(*cli(capsys, "train", "--resume", tmp_path / "run", "--force"), "drop --force")


# ----------------------------------------------------------------------------- writers that meet


def test_two_writers_started_together_exactly_one_trains(tmp_path, tiny_data):
    run = tmp_path / "run"
    args = ("train", "--data", tiny_data, "--out", run, "--steps", "4000", *TINY)
    procs = [popen(*args), popen(*args)]
    outs = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1].strip()
    assert loser.startswith("error:") and len(loser.splitlines()) == 1 and "Traceback" not in loser
    assert "being written by another charmlp process (pid" in loser, loser
    assert load_run(run).config.train.steps == 4000 and not (run / LOCK).exists()


def test_resume_of_a_run_being_written_is_refused_and_a_killed_writers_lock_is_taken_over(tmp_path, tiny_data):
    run = tmp_path / "run"
    proc = popen("train", "--data", tiny_data, "--out", run, "--steps", "1000000", "--checkpoint-every", "50", *TINY)
    try:
        deadline = time.monotonic() + 120
        while not (run / STATE).exists():  # the first checkpoint: the writer holds the lock
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert_user_error(run_cli("train", "--resume", run), f"being written by another charmlp process (pid {proc.pid}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (run / LOCK).exists()
        p = run_cli("train", "--data", tiny_data, "--out", run, "--force", "--steps", "5", *TINY)
        assert p.returncode == 0, p.stderr
        assert f"pid {proc.pid}" in p.stderr and "taking the lock over" in p.stderr
        assert load_run(run).config.train.steps == 5 and not (run / LOCK).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_diagnose_of_a_run_being_written_is_refused(tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    charmlp.train(cfg(tiny_data), out_dir=run, progress=False)
    with RunDirLock(run, "charmlp train"):
        assert_one_line(*cli(capsys, "diagnose", run), f"being written by another charmlp process (pid {os.getpid()}")
    assert not (run / "report.html").exists()
