"""Byte-identical run directories: the same configuration and seed write the same bytes to
model.safetensors, config.json, vocab.json and metrics.jsonl, whether the run went straight
through or was interrupted (SIGINT) and resumed. Only summary.json's wall times may differ."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from charmlp.checkpoint import STATE, SUMMARY, decode_tensors, encode_tensors
from charmlp.resume import read_checkpoint
from conftest import run_cli
from test_resume import TINY, popen_cli, wait_for_new_checkpoint

IDENTICAL = ("model.safetensors", "config.json", "vocab.json", "metrics.jsonl")


def test_encoded_tensor_files_do_not_depend_on_hash_order():
    """safetensors alone orders its metadata differently from call to call; encode_tensors does not."""
    tensors = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.float64), "i": torch.arange(4)}
    meta = {f"key{i}": "value" for i in range(8)}
    raw = {st_save(tensors, metadata=meta) for _ in range(30)}
    assert len(raw) > 1  # the library's own output varies: the test below can fail
    ours = {encode_tensors(tensors, {"x": 1, "vocab": ["é", "."]}) for _ in range(30)}
    assert len(ours) == 1
    (b,) = ours
    assert int.from_bytes(b[:8], "little") % 8 == 0
    back, meta_back = decode_tensors(b, Path("x"))
    assert meta_back == {"x": 1, "vocab": ["é", "."]}
    for k, v in st_load(b).items():  # still a file the library reads
        assert torch.equal(v, tensors[k]) and torch.equal(back[k], tensors[k])


def test_straight_and_interrupted_resumed_runs_write_identical_files(tmp_path, tiny_data):
    # a checkpoint every step, so the interrupted process is surely stopped mid-run
    args = ["--data", tiny_data, "--steps", "200", "--checkpoint-every", "1", *TINY]
    straight = tmp_path / "straight"
    p = run_cli("train", "--out", straight, *args)
    assert p.returncode == 0, p.stderr

    run = tmp_path / "run"
    proc = popen_cli("train", "--out", run, *args)
    assert wait_for_new_checkpoint(run / STATE, proc, 0), proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ck = read_checkpoint(run)
    assert 0 < ck.step < 200 and ck.meta["seconds"] > 0
    # resume with another checkpoint interval: allowed, and it changes none of the files
    done = run_cli("train", "--resume", run, "--checkpoint-every", "7", "--no-progress")
    assert done.returncode == 0, done.stderr

    for name in IDENTICAL:
        assert (run / name).read_bytes() == (straight / name).read_bytes(), name
    a, b = (json.loads((d / SUMMARY).read_text()) for d in (straight, run))
    wall = {"seconds", "train_seconds", "steps_per_s", "loop_seconds"}
    assert {k: v for k, v in a.items() if k not in wall} == {k: v for k, v in b.items() if k not in wall}
    assert b["seconds"] > ck.meta["seconds"]  # the wall time of the interrupted process is counted
