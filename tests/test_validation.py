"""Every bad input gets one line `error: …`, exit code 2 and no traceback.

One real `python -m charmlp` process per case where the exit code and message are the point;
the full matrix of zero / negative / absurd option values runs through `main()` in this
process (same code path, without paying for a torch import per value).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import charmlp
from charmlp.cli import main
from charmlp.config import DataConfig, RunConfig, TrainConfig
from charmlp.data import min_items_for_split
from charmlp.models import MLPConfig
from conftest import assert_user_error, make_items, run_cli


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "tiny.txt"
    p.write_text("\n".join(make_items()) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_file) -> Path:
    """A finished tiny run (trained in this process); tests that damage it work on a copy."""
    d = tmp_path_factory.mktemp("run") / "run"
    cfg = RunConfig(DataConfig(path=str(data_file)), MLPConfig(n_hidden=8, n_embd=3), TrainConfig(steps=20))
    charmlp.train(cfg, out_dir=d, progress=False)
    return d


@pytest.fixture
def run_copy(tmp_path, finished_run) -> Path:
    d = tmp_path / "run"
    shutil.copytree(finished_run, d)
    return d


def cli_error(capsys, *args: object) -> str:
    """`main()` in this process: exit code 2 and exactly one `error:` line on stderr."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, captured)
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- the data file


def write(tmp_path: Path, content: bytes, name: str = "d.txt") -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_missing_file(tmp_path):
    assert_user_error(run_cli("data", "--data", tmp_path / "nope.txt"), "does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    p = write(tmp_path, b"anna\n")
    p.chmod(0)
    assert_user_error(run_cli("data", "--data", p), "permission")


def test_unreadable_file_in_process(tmp_path, capsys, monkeypatch):
    """The same case where the tests run as root: reading fails with EACCES."""
    p = write(tmp_path, b"anna\n")

    real_open = Path.open

    def denied(self, *args, **kwargs):
        if self == p:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    assert "Permission denied; check its permissions" in cli_error(capsys, "data", "--data", p)


def test_directory(tmp_path):
    assert_user_error(run_cli("data", "--data", tmp_path), "is a directory")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_not_a_regular_file(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block for ever
    assert "not a regular file" in cli_error(capsys, "data", "--data", fifo)


def test_not_utf8_names_line_and_byte(tmp_path):
    p = write(tmp_path, b"anna\nbob\ncl\xe9o\n")  # Latin-1 é on line 3
    assert_user_error(run_cli("data", "--data", p), "byte 0xe9 at offset 11 (line 3)")


def test_binary_file_with_nul(tmp_path, capsys):
    p = write(tmp_path, b"anna\nb\x00b\n")
    assert "NUL byte on line 2" in cli_error(capsys, "data", "--data", p)


def test_empty_file(tmp_path):
    assert_user_error(run_cli("data", "--data", write(tmp_path, b"")), "no items")


def test_blank_lines_only(tmp_path, capsys):
    p = write(tmp_path, b"\n   \r\n\t\n\xc2\xa0\n\n")  # spaces, tabs, CRLF, a no-break space
    assert "no items" in cli_error(capsys, "data", "--data", p)


def test_too_few_items_says_how_many(tmp_path):
    need = min_items_for_split()
    p = write(tmp_path, "\n".join(make_items(need - 1)).encode())
    assert_user_error(run_cli("data", "--data", p), f"has {need - 1} item(s); at least {need} are needed")


def test_too_few_items_in_process_boundary(tmp_path):
    need = min_items_for_split()
    ok = write(tmp_path, "\n".join(make_items(need)).encode(), "ok.txt")
    assert sum(len(v) for v in charmlp.load_dataset(DataConfig(path=str(ok))).items.values()) == need
    for s in ("train", "val", "test"):
        assert charmlp.load_dataset(DataConfig(path=str(ok))).items[s]


# ----------------------------------------------------------------------------- options


def test_unknown_prefix_character(finished_run):
    assert_user_error(run_cli("sample", finished_run, "--prefix", "aZ"), "'Z' are not in the vocabulary")


def test_boundary_in_prefix(capsys, finished_run):
    assert "not in the vocabulary" in cli_error(capsys, "sample", finished_run, "--prefix", "a.")


def test_type_error_is_one_line():
    assert_user_error(run_cli("train", "--out", "x", "--steps", "abc"), "invalid int value: 'abc'")


@pytest.mark.parametrize("args,contains", [
    (["train", "--steps", "5"], "one of the arguments --out --resume is required"),
    (["sample"], "the following arguments are required: DIR"),
    (["sample", "x", "--temperature", "hot"], "invalid float value: 'hot'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["train", "--out", "x", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
])
def test_argparse_errors_are_one_line(capsys, args, contains):
    assert contains in cli_error(capsys, *args)


# one real process per option; the value rotates through zero, negative and absurd
TRAIN_CASES = [
    ("--block-size", "0", "--block-size"),
    ("--n-hidden", "100000000", "--n-hidden"),
]
SAMPLE_CASES = [
    ("--max-len", "1000000000", "--max-len"),
]


@pytest.mark.parametrize("flag,value,contains", TRAIN_CASES)
def test_train_option_out_of_range(tmp_path, data_file, flag, value, contains):
    p = run_cli("train", "--data", data_file, "--out", tmp_path / "r", "--steps", "5", flag, value, "--no-progress")
    assert_user_error(p, contains)
    assert not (tmp_path / "r" / "model.safetensors").exists()


@pytest.mark.parametrize("flag,value,contains", SAMPLE_CASES)
def test_sample_option_out_of_range(finished_run, flag, value, contains):
    assert_user_error(run_cli("sample", finished_run, flag, value), contains)


BAD_TRAIN_VALUES = {
    "--block-size": ["0", "-3", "5000"],
    "--batch-size": ["0", "-1", "1", "10000000"],  # 1: BatchNorm needs two examples
    "--steps": ["0", "-10", "1000000000"],
    "--n-hidden": ["0", "-5", "10000000"],
    "--n-embd": ["0", "-5", "100000"],
    "--n-layer": ["-1", "65"],
    "--lr": ["0", "-0.1", "1e9", "inf", "nan"],
    "--lr-final": ["0", "-1", "inf"],
    "--weight-decay": ["-1", "inf"],
    "--checkpoint-every": ["-1"],
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, vs in BAD_TRAIN_VALUES.items() for v in vs])
def test_train_option_matrix(tmp_path, capsys, data_file, flag, value):
    err = cli_error(capsys, "train", "--data", data_file, "--out", tmp_path / "r", "--steps", "3", flag, value,
                    "--no-progress")
    assert flag in err, err


def test_absurd_model_size_is_refused_before_allocating(tmp_path, capsys, data_file):
    # each size within its own limit, together 64 × 65536² parameters
    err = cli_error(capsys, "train", "--data", data_file, "--out", tmp_path / "r", "--n-hidden", "65536",
                    "--n-layer", "64", "--no-progress")
    assert "parameters" in err


def test_absurd_batch_activations_are_refused(tmp_path, capsys, data_file):
    err = cli_error(capsys, "train", "--data", data_file, "--out", tmp_path / "r", "--n-hidden", "65536",
                    "--batch-size", "1000000", "--no-progress")
    assert "activations" in err


def test_batch_larger_than_training_set(tmp_path, capsys, data_file):
    err = cli_error(capsys, "train", "--data", data_file, "--out", tmp_path / "r", "--batch-size", "100000",
                    "--steps", "2", "--no-progress")
    assert "exceeds the" in err


BAD_SAMPLE_VALUES = {
    "-n": ["0", "-3", "100000000"],
    "--temperature": ["0", "-1", "nan", "inf", "1e300"],
    "--top-k": ["0", "-2"],
    "--max-len": ["0", "-5", "1000000000"],
}


@pytest.mark.parametrize("flag,value", [(f, v) for f, vs in BAD_SAMPLE_VALUES.items() for v in vs])
def test_sample_option_matrix(capsys, finished_run, flag, value):
    assert flag in cli_error(capsys, "sample", finished_run, flag, value)


def test_sample_too_much_at_once(capsys, finished_run):
    assert "too much" in cli_error(capsys, "sample", finished_run, "-n", "1000000", "--max-len", "100000")


def test_tiny_temperature_is_greedy_not_an_error(finished_run):
    r = charmlp.sample_run(finished_run, n=5, temperature=1e-30)
    assert len(set(r.samples)) == 1  # no randomness left: every sample is the most likely item


def test_data_block_size_absurd(capsys, data_file):
    assert "--block-size" in cli_error(capsys, "data", "--data", data_file, "--block-size", "100000")


# ----------------------------------------------------------------------------- run directories


def test_run_dir_missing(tmp_path):
    assert_user_error(run_cli("sample", tmp_path / "nope"), "does not exist")


def test_run_dir_empty(tmp_path, capsys):
    assert "has no config.json" in cli_error(capsys, "eval", tmp_path)


def test_run_dir_without_weights(run_copy):
    (run_copy / "model.safetensors").unlink()
    assert_user_error(run_cli("sample", run_copy), "has no model.safetensors")


def test_run_dir_without_vocab(run_copy, capsys):
    (run_copy / "vocab.json").unlink()
    assert "has no vocab.json" in cli_error(capsys, "sample", run_copy)


def test_run_dir_from_another_version(run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["format"] = 99
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_cli("sample", run_copy), "another charmlp version")


def test_run_dir_config_with_unknown_keys(run_copy, capsys):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model"]["n_heads"] = 4  # a newer charmlp's option
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert "another charmlp version" in cli_error(capsys, "sample", run_copy)


@pytest.mark.parametrize("field,value", [("n_hidden", "abc"), ("batchnorm", 3), ("n_embd", 2.5), ("block_size", None)])
def test_run_dir_config_with_wrong_types(run_copy, capsys, field, value):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model"][field] = value
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert "wrong type" in cli_error(capsys, "sample", run_copy)


def test_run_dir_config_not_json(run_copy, capsys):
    (run_copy / "config.json").write_text("{not json")
    assert "not valid JSON" in cli_error(capsys, "eval", run_copy)


def test_checkpoint_tensors_do_not_match_config(run_copy):
    cfg = json.loads((run_copy / "config.json").read_text())
    cfg["model"]["n_hidden"] = 9  # the weights were trained with 8
    (run_copy / "config.json").write_text(json.dumps(cfg))
    assert_user_error(run_cli("sample", run_copy), "does not match the model in config.json")


def test_vocab_size_does_not_match_config(run_copy, capsys):
    v = json.loads((run_copy / "vocab.json").read_text())
    v["itos"] = v["itos"][:-1]
    (run_copy / "vocab.json").write_text(json.dumps(v))
    assert "vocab.json has" in cli_error(capsys, "sample", run_copy)


def test_eval_when_the_training_file_is_gone(tmp_path, capsys, data_file, finished_run):
    d = tmp_path / "run"
    shutil.copytree(finished_run, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["data"]["path"] = str(tmp_path / "moved.txt")
    (d / "config.json").write_text(json.dumps(cfg))
    assert "does not exist" in cli_error(capsys, "eval", d)


def test_out_is_a_file(tmp_path, capsys, data_file):
    f = tmp_path / "file"
    f.write_text("x")
    err = cli_error(capsys, "train", "--data", data_file, "--out", f, "--steps", "2", "--no-progress")
    assert "cannot" in err
