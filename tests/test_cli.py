import json
import os
import subprocess
import sys

import pytest

from charmlp.cli import COMMANDS
from conftest import SRC, assert_user_error, run_cli


def test_data_json_on_embedded_names():
    proc = run_cli("data", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["vocab_size"] == 27
    assert info["examples"] == {"train": 182625, "val": 22655, "test": 22866}


def test_train_eval_sample_end_to_end(tiny_data, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", tiny_data, "--out", out, "--preset", "quick", "--steps", "200",
                   "--n-hidden", "32", "--n-embd", "5", "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "val" in proc.stdout and (out / "model.safetensors").is_file()

    ev = run_cli("eval", out, "--json")
    assert ev.returncode == 0, ev.stderr
    losses = json.loads(ev.stdout)
    assert set(losses) == {"train", "val", "test"}
    summary = json.loads((out / "summary.json").read_text())
    assert losses["val"] == summary["val_loss"]

    s1 = run_cli("sample", out, "-n", "15", "--seed", "3")
    s2 = run_cli("sample", out, "-n", "15", "--seed", "3")
    assert s1.returncode == 0, s1.stderr
    assert s1.stdout == s2.stdout and len(s1.stdout.splitlines()) == 15

    js = run_cli("sample", out, "-n", "5", "--prefix", "ma", "--json")
    obj = json.loads(js.stdout)
    assert len(obj["samples"]) == 5 and all(s.startswith("ma") for s in obj["samples"])
    assert 0 <= obj["novel_fraction"] <= 1


def test_every_command_has_help():
    for cmd in ("data", "train", "eval", "sample"):
        proc = run_cli(cmd, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout


def test_user_errors_are_one_line(tmp_path):
    assert_user_error(run_cli("data", "--data", tmp_path / "missing.txt"), "does not exist")
    assert_user_error(run_cli("eval", tmp_path), "config.json")
    assert_user_error(run_cli("train", "--out", tmp_path / "r", "--batch-size", "1", "--steps", "5"), "batch")


HEAVY = ("torch", "numpy", "numba", "matplotlib")


def heavy_imports(args: list[str]) -> tuple[list[str], str]:
    """The heavy modules `charmlp ARGS` imported (a check on sys.modules in a fresh interpreter,
    not a timing), and what it wrote to stderr."""
    code = (
        "import sys\nfrom charmlp.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')), out.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], *([c, "--help"] for c in COMMANDS),
                                  *(["exercise", c, "--help"] for c in ("init", "check", "check-layer"))])
def test_help_imports_no_torch_numpy_numba_or_matplotlib(args):
    """`charmlp --help` and every subcommand's start light, train's, lr-find's and gradcheck's too
    (their flags come from the models' configurations, which import no torch)."""
    assert heavy_imports(args) == ([], "")


@pytest.mark.parametrize("args, message", [
    (["train", "--out", "r", "--fuse", "3"], "--fuse does not apply to the default --model mlp"),
    (["train", "--out", "r", "--model", "rnn", "--batchnorm"], "--batchnorm does not apply to --model rnn"),
    (["lr-find", "--model", "transformer", "--n-hidden", "8"], "--n-hidden does not apply to --model transformer"),
    (["gradcheck", "--model", "bigram", "--block-size", "0"], "--block-size"),
    (["train", "--resume", "r", "--steps", "5"], "--steps cannot change when resuming"),
])
def test_flag_errors_import_no_torch(args, message):
    """Errors that need only the configurations are reported before torch loads."""
    loaded, err = heavy_imports(args)
    assert loaded == [] and message in err, (loaded, err)
