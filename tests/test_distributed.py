"""Data-parallel training (charmlp/distributed.py) with 2 processes, gloo, on the CPU, started by
torch's elastic launcher: the same loss curves as one process for every model kind (BatchNorm
synchronised, dropout's global masks), the synchronised BatchNorm against autograd, a resume
across process counts, and a killed rank ending the run with a clear line and an intact checkpoint.

One launch of 2 ranks serves every test but the killed rank's, which needs its own (and is marked
slow: `pytest -m slow` runs it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from charmlp.checkpoint import STATE
from charmlp.resume import read_checkpoint
from charmlp.train import resume, train
from conftest import SRC, make_items

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import CASES, case_config  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find a rank to kill")

TOL = 1e-5  # float32 sums in another order are the only difference from one process
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(Path(__file__).parent)]), OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = tmp_path_factory.mktemp("ddp") / "tiny.txt"
    p.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    return str(p)


@pytest.fixture(scope="module")
def one_process(data: str) -> dict[str, dict]:
    runs = {name: train(case_config(data, name), progress=False) for name in CASES}
    return {name: {"losses": r.losses, "summary": r.summary} for name, r in runs.items()}


@pytest.fixture(scope="module")
def interrupted(data: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-process run of the `mlp` case stopped by SIGINT after 8 steps (checkpointed)."""
    out = tmp_path_factory.mktemp("ddp") / "run"

    def stop(step, model, lr, loss):  # the loop catches it and checkpoints after this step
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    from charmlp.errors import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(case_config(data, "mlp"), out_dir=out, progress=False, hooks=(stop,))
    assert read_checkpoint(out).step == 8
    return out


@pytest.fixture(scope="module")
def two_processes(data: str, interrupted: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One launch of 2 ranks: every case, the BatchNorm check, and the 1-process run resumed."""
    out = tmp_path_factory.mktemp("ddp") / "report.json"
    worker = Path(__file__).parent / "distributed_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(worker), data, str(out), str(interrupted)],
                          capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_give_one_process_curve(name: str, two_processes: dict, one_process: dict) -> None:
    ref = one_process["mlp" if name == "mlp_autograd" else name]  # autograd through the all-reduces too
    got = two_processes[name]["losses"]
    assert len(got) == len(ref["losses"]) == 20
    assert max(abs(a - b) for a, b in zip(got, ref["losses"], strict=True)) <= TOL
    s = two_processes[name]["summary"]
    assert (s["world_size"], s["rank_batch_size"]) == (2, 8)
    # the final losses: BatchNorm calibrated and every split evaluated, each rank a slice of the rows
    assert s["bn_calibrated"] == ref["summary"]["bn_calibrated"]
    for split in ("train_loss", "val_loss", "test_loss"):
        assert abs(s[split] - ref["summary"][split]) <= TOL


def test_synchronised_batchnorm_matches_autograd_on_the_whole_batch(two_processes: dict) -> None:
    # float64: the rank's output, dx and the summed dγ, dβ against one BatchNorm's autograd over all rows
    assert all(v <= 1e-12 for v in two_processes["batchnorm"].values()), two_processes["batchnorm"]


def test_bad_start_ups_are_refused_by_every_rank_with_rank_0_naming_the_rank(two_processes: dict) -> None:
    said = two_processes["refusals"]
    assert "rank 1 of 2 was started with another run configuration or data than rank 0" in said["mismatch"]
    assert "rank 1 of 2 could not load its data" in said["missing_data"]
    assert "does not split evenly across 2 processes" in said["odd_batch"]


def test_one_process_run_resumes_in_two(two_processes: dict, one_process: dict, interrupted: Path) -> None:
    got, ref = two_processes["resumed"]["losses"], one_process["mlp"]["losses"]
    assert got[:8] == ref[:8]  # restored from the checkpoint
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) <= TOL
    assert json.loads((interrupted / "summary.json").read_text())["world_size"] == 2  # rank 0 wrote the run


def _rank_process(launcher: int, rank: int) -> int | None:
    """The pid of the launcher's child whose environment says RANK=rank."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


STEPS = 400


def _stopped_two_process_run(data: str, out: Path, stop: Callable[[subprocess.Popen], None]) -> tuple[int, str]:
    """`charmlp train --nproc 2` of the `mlp` case (STEPS steps, a checkpoint every 5), `stop` called
    once its first checkpoint is written; the exit code and stderr."""
    args = ["--data", data, "--model", "mlp", "--n-hidden", "16", "--n-embd", "4", "--steps", str(STEPS),
            "--batch-size", "16", "--engine", "manual", "--checkpoint-every", "5", "--eval-every", "0",
            "--seed", "3", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "charmlp", "train", "--nproc", "2", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE).is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        stop(proc)
        _, err = proc.communicate(timeout=90)  # the survivors stop within the rank timeout (60 s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err, err
    return proc.returncode, err


def _resumes_onto_one_process_curve(data: str, out: Path) -> None:
    """The checkpoint left in `out` is intact (its checksum is verified) and resumes in one process
    onto the curve of the same run in one process, straight through."""
    ck = read_checkpoint(out)
    assert ck is not None and 0 < ck.step < STEPS
    resumed = resume(out, progress=False)
    assert resumed.summary["world_size"] == 1
    cfg = case_config(data, "mlp")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=STEPS, eval_every=0))
    ref = train(cfg, progress=False).losses
    assert max(abs(a - b) for a, b in zip(resumed.losses, ref, strict=True)) <= TOL  # 2 processes, then 1


@pytest.mark.slow  # a second launch (~15 s on the busy 2-core machine): `pytest -m slow` runs it
def test_killed_rank_ends_the_run_with_one_line_and_a_resumable_checkpoint(data: str, tmp_path: Path) -> None:
    def kill_rank_1(proc: subprocess.Popen) -> None:
        victim = _rank_process(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)

    code, err = _stopped_two_process_run(data, tmp_path / "run", kill_rank_1)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and all(ln.startswith(("error:", "note:")) for ln in lines), err
    assert any("rank 1" in ln for ln in lines), err
    _resumes_onto_one_process_curve(data, tmp_path / "run")


@pytest.mark.slow  # a launch of its own (~15 s)
def test_ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint(data: str, tmp_path: Path) -> None:
    # a terminal's Ctrl-C: SIGINT to the launcher and both ranks (its process group)
    code, err = _stopped_two_process_run(data, tmp_path / "run", lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped at step "), err  # rank 0 alone says it
    _resumes_onto_one_process_curve(data, tmp_path / "run")
