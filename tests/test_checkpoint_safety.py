"""Safe loading and safe writing: no unpickling, tampered or truncated files refused with one
line, a full disk leaves the previous file intact."""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

import charmlp
from charmlp import checkpoint
from charmlp.checkpoint import STATE, WEIGHTS, atomic_write_bytes, load_run
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.errors import CharmlpError, TrainingInterrupted
from charmlp.models import MLPConfig
from charmlp.resume import read_checkpoint
from conftest import SRC, assert_user_error, make_items, run_cli


def tiny_cfg(data: Path, **train) -> RunConfig:
    return RunConfig(DataConfig(path=str(data)), MLPConfig(n_hidden=8, n_embd=3), TrainConfig(**train))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two finished runs with the same shapes but another vocabulary, and one unfinished run."""
    d = tmp_path_factory.mktemp("runs")
    out = {}
    for name, swap in (("a", "k"), ("b", "q")):  # b writes q where a writes k: same sizes, other vocabulary
        data = d / f"{name}.txt"
        data.write_text("\n".join(make_items()).replace("k", swap) + "\n", encoding="utf-8")
        charmlp.train(tiny_cfg(data, steps=10), out_dir=d / name, progress=False)
        out[name] = d / name
    data = d / "a.txt"

    def stop(step, *_):
        if step == 4:
            os.kill(os.getpid(), 2)

    with pytest.raises(TrainingInterrupted):
        charmlp.train(tiny_cfg(data, steps=10), out_dir=d / "unfinished", progress=False, hooks=(stop,))
    out["unfinished"] = d / "unfinished"
    return out


@pytest.fixture
def run_a(tmp_path, runs) -> Path:
    shutil.copytree(runs["a"], tmp_path / "a")
    return tmp_path / "a"


def header_length(p: Path) -> int:
    return 8 + int.from_bytes(p.read_bytes()[:8], "little")


def test_truncated_weights_cli(run_a):
    w = run_a / WEIGHTS
    w.write_bytes(w.read_bytes()[: w.stat().st_size - 100])
    assert_user_error(run_cli("sample", run_a), "not a readable safetensors file")


def test_tampered_weights_cli(run_a):
    w = run_a / WEIGHTS
    raw = bytearray(w.read_bytes())
    raw[header_length(w) + 10] ^= 0x40  # one bit of one weight
    w.write_bytes(bytes(raw))
    assert_user_error(run_cli("eval", run_a), "fails its checksum")


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1])
def test_truncated_anywhere(run_a, cut):
    w = run_a / WEIGHTS
    raw = w.read_bytes()
    w.write_bytes(raw[: cut if cut >= 0 else len(raw) + cut])
    with pytest.raises(CharmlpError, match="safetensors|checksum"):
        load_run(run_a)


def test_tampered_header(run_a):
    w = run_a / WEIGHTS
    raw = bytearray(w.read_bytes())
    raw[9:14] = b"!!!!!"  # inside the JSON header
    w.write_bytes(bytes(raw))
    with pytest.raises(CharmlpError, match="not a readable safetensors"):
        load_run(run_a)


def test_weights_from_another_run_with_the_same_shapes(run_a, runs):
    shutil.copy(runs["b"] / WEIGHTS, run_a / WEIGHTS)
    with pytest.raises(CharmlpError, match="mixed up"):
        load_run(run_a)


def test_pickle_renamed_to_safetensors_is_refused_and_never_run(run_a, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (run_a / WEIGHTS).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CharmlpError):
        load_run(run_a)
    assert not marker.exists()
    torch.save({"w": torch.zeros(2)}, run_a / WEIGHTS)  # a torch.save (zip+pickle) file
    with pytest.raises(CharmlpError):
        load_run(run_a)


def test_no_unpickling_anywhere_in_the_package():
    """Nothing in src/ unpickles: no pickle module, no torch.load (which unpickles)."""
    for f in SRC.rglob("*.py"):
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib)\b", text, re.M), f
        assert "torch.load(" not in text, f


def test_tampered_training_checkpoint(tmp_path, runs, capsys):
    d = tmp_path / "u"
    shutil.copytree(runs["unfinished"], d)
    assert read_checkpoint(d).step == 5
    s = d / STATE
    raw = bytearray(s.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor (the losses)
    s.write_bytes(bytes(raw))
    from charmlp.cli import main

    assert main(["train", "--resume", str(d), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "checksum" in err and len(err.splitlines()) == 1


def test_training_checkpoint_that_does_not_fit_the_model(tmp_path, runs):
    """A checkpoint whose tensors have other shapes than config.json (consistent checksum)."""
    d = tmp_path / "u"
    shutil.copytree(runs["unfinished"], d)
    ck = read_checkpoint(d)
    tensors = dict(ck.tensors)
    name = next(k for k in tensors if k.startswith("model/"))
    tensors[name] = torch.zeros(tensors[name].shape[0] + 1, *tensors[name].shape[1:])
    atomic_write_bytes(d / STATE, checkpoint.encode_tensors(tensors, ck.meta))
    with pytest.raises(CharmlpError, match="does not match the run's model"):
        charmlp.resume(d, progress=False)


def test_a_full_disk_leaves_the_previous_file(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_bytes(p, b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", no_space)
    with pytest.raises(CharmlpError, match="No space left on device.*previous version is unchanged"):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temporary left behind


def test_run_directory_holds_only_complete_files(runs):
    for name in ("a", "b", "unfinished"):
        d = runs[name]
        assert not list(d.glob(".*")), "temporary files left behind"
    assert {p.name for p in runs["a"].iterdir()} == {"config.json", "vocab.json", WEIGHTS, "metrics.jsonl",
                                                     "summary.json"}
    assert {p.name for p in runs["unfinished"].iterdir()} == {"config.json", "vocab.json", STATE}


def test_training_never_deletes_a_foreign_config_json(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.json").write_text('{"name": "my app"}')
    data = tmp_path / "d.txt"
    data.write_text("\n".join(make_items()))
    with pytest.raises(CharmlpError, match="did not write"):
        charmlp.train(tiny_cfg(data, steps=2), out_dir=project, progress=False)
    assert (project / "config.json").read_text() == '{"name": "my app"}'


def test_retraining_removes_the_previous_runs_derived_files(tmp_path, runs):
    d = tmp_path / "a"
    shutil.copytree(runs["a"], d)
    (d / "diagnostics.json").write_text("{}")
    data = tmp_path / "d.txt"
    data.write_text("\n".join(make_items()))
    charmlp.train(tiny_cfg(data, steps=3), out_dir=d, progress=False, force=True)
    assert not (d / "diagnostics.json").exists() and load_run(d).config.train.steps == 3
