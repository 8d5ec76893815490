"""The learner's file runs confined (runner.run_child / _child.py): a fresh temporary cwd, a stripped
environment and rlimits; a part that does not `return locals()`, or a gradient that is not a tensor, fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from charmlp import cli
from charmlp.errors import CharmlpError
from charmlp.exercise import runner
from charmlp.exercise.runner import check_file, check_layer_file, child_env

PART2_EMPTY = "\ndef part2(logits, Yb, n):\n    dlogits = None\n    return locals()\n"


@pytest.fixture
def caller_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's cwd: a folder of its own, apart from the learner's file."""
    d = tmp_path / "caller"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def learner(tmp_path: Path, src: str) -> Path:
    d = tmp_path / "learner"
    d.mkdir(exist_ok=True)
    f = d / "ex.py"
    f.write_text(src)
    return f


def one_error_line(capsys: pytest.CaptureFixture, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_relative_write_lands_in_a_temp_dir_removed_afterwards(tmp_path, caller_cwd):
    f = learner(tmp_path, "import os\nopen('escape.txt', 'w').write('x')\n"
                          "def part2(logits, Yb, n):\n    raise RuntimeError('cwd=' + os.getcwd())\n")
    (rep,) = check_file(f)
    assert not (f.parent / "escape.txt").exists() and not (caller_cwd / "escape.txt").exists()
    cwd = Path(re.search(r"cwd=(/\S+)", rep.error).group(1))
    assert cwd.name.startswith("charmlp-cwd-") and not cwd.exists()  # per check, and removed
    assert rep.row("dlogits").status == "missing"  # the check itself still ran


def test_parent_environment_is_not_visible(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARMLP_SECRET", "1")
    f = learner(tmp_path, "import os\nif 'CHARMLP_SECRET' in os.environ:\n    raise RuntimeError('secret leaked')\n"
                          "if os.environ['HOME'] != os.getcwd():\n    raise RuntimeError('HOME is not the temp dir')\n"
                + PART2_EMPTY)
    (rep,) = check_file(f)
    assert rep.error is None and rep.ok, rep.error


def test_child_env_keeps_only_what_it_needs(monkeypatch):
    monkeypatch.setenv("CHARMLP_SECRET", "1")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = child_env("/tmp/x")
    assert "CHARMLP_SECRET" not in env and env["LC_ALL"] == "C.UTF-8" and env["PATH"] == "/usr/bin"
    assert env["HOME"] == env["TMPDIR"] == "/tmp/x" and env["OMP_NUM_THREADS"] == "1"
    assert set(env) <= {*runner.ENV_KEEP, "LC_ALL", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE"}


def test_memory_limit_is_one_error_line(tmp_path, capsys):
    f = learner(tmp_path, "x = bytearray(8 << 30)\n" + PART2_EMPTY)
    err = one_error_line(capsys, cli.main(["exercise", "check", str(f)]))
    assert "more than 4 GiB of memory" in err and "line 1" in err


def test_file_size_limit_is_one_error_line(tmp_path, capsys):
    # seek past the limit: the write fails at once, without writing 64 MiB first
    f = learner(tmp_path, "def part2(logits, Yb, n):\n    with open('big.bin', 'wb') as fh:\n"
                          f"        fh.seek({runner.FILE_SIZE_LIMIT})\n        fh.write(b'x')\n    return locals()\n")
    err = one_error_line(capsys, cli.main(["exercise", "check", str(f)]))
    assert "bigger than 64 MiB" in err and "ex.py (line " in err  # the line that flushed the write


def test_cpu_limit_stops_the_child(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "cpu_seconds", lambda timeout: 1)  # well before the 30 s wall-clock timeout
    f = learner(tmp_path, "while True:\n    pass\n")
    with pytest.raises(CharmlpError, match="CPU-time limit"):
        check_file(f, timeout=30)


@pytest.mark.parametrize("ret", ["'done'", "None"])
def test_part_not_returning_locals_fails(tmp_path, capsys, ret):
    f = learner(tmp_path, f"def part2(logits, Yb, n):\n    dlogits = None\n    return {ret}\n")
    assert cli.main(["exercise", "check", str(f), "--json"]) == 1
    (part,) = json.loads(capsys.readouterr().out)["parts"]
    row = part["rows"][0]
    assert row["name"] == "return value" and row["status"] == "wrong" and "return locals()" in row["diagnosis"]
    assert not part["ok"] and "nothing filled in yet" not in part["summary"]


@pytest.mark.parametrize("value", ["'abc'", "[1.0, 2.0]", "logits.numpy() * 0"], ids=["str", "list", "ndarray"])
def test_gradient_that_is_not_a_tensor_is_wrong(tmp_path, capsys, value):
    f = learner(tmp_path, f"def part2(logits, Yb, n):\n    dlogits = {value}\n    return locals()\n")
    assert cli.main(["exercise", "check", str(f), "--json"]) == 1
    (part,) = json.loads(capsys.readouterr().out)["parts"]
    (row,) = part["rows"]
    assert row["status"] == "wrong" and row["diagnosis"].startswith("not a tensor") and row["kind"] == "type"


def test_layer_check_is_confined_too(tmp_path, caller_cwd, monkeypatch):
    monkeypatch.setenv("CHARMLP_SECRET", "1")
    lecture = (Path(__file__).parent / "layers_lecture.py").read_text()
    f = learner(tmp_path, "import os\nassert 'CHARMLP_SECRET' not in os.environ, 'secret leaked'\n"
                          "open('escape.txt', 'w').write('x')\n" + lecture)
    rep = check_layer_file(f"{f}:Tanh", "tanh")
    assert rep.ok, rep.format_text()
    assert not (f.parent / "escape.txt").exists() and not (caller_cwd / "escape.txt").exists()


def test_the_verdict_is_made_outside_the_learners_process(tmp_path):
    """The child returns raw values only: a file that rewires charmlp's comparison in its own process
    cannot make a wrong layer pass (check-layer) or a wrong gradient pass (check)."""
    lecture = (Path(__file__).parent / "layers_lecture.py").read_text()
    rewire = ("import charmlp.verdict as _v\n_v.judge = lambda *a, **k: ('exact', 0.0, 0.0)\n"
              "_v.Report.ok = property(lambda self: True)\n")
    f = learner(tmp_path, rewire + lecture.replace("self.out = torch.tanh(x)", "self.out = torch.tanh(x) * 2"))
    rep = check_layer_file(f"{f}:Tanh", "tanh")
    assert not rep.ok and rep.row("output").status == "wrong"
    g = learner(tmp_path, rewire + "def part2(logits, Yb, n):\n    dlogits = logits * 0 + 1\n    return locals()\n")
    (rep,) = check_file(g)
    assert not rep.ok and rep.row("dlogits").status == "wrong"
