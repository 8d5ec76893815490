"""Every message tells the truth: a value the user did not give is named with where it came from
(charmlp/errors.py `flag`, the origins the CLI sets)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from charmlp.cli import main
from charmlp.errors import flag, value_origins
from conftest import SRC, make_items

# `--flag VALUE` as a message shows it, with the origin `flag` puts before it
SHOWN = re.compile(r"(?:(the `\w+` preset's|the default) )?(--[a-z][a-z-]*|-n) (-?\d[\w.]*)")


def test_flag_names_the_origin_only_where_one_is_set():
    assert flag("--batch-size", 4096) == "--batch-size 4096"
    with value_origins({"--batch-size": "the `quick` preset's"}):
        assert flag("--batch-size", 4096) == "the `quick` preset's --batch-size 4096"
        assert flag("--lr", 0.1) == "--lr 0.1"
    assert flag("--batch-size", 4096) == "--batch-size 4096"


def _messages_with_a_flag_and_a_value() -> list[tuple[str, int, str]]:
    """Every f-string in the package that writes `--flag {value}` itself instead of through `flag`:
    (file, line, text). A command suggested in backticks (`charmlp train --resume {d}`) is not a value."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.JoinedStr):
                continue
            parts = node.values
            for a, b in zip(parts, parts[1:]):
                if isinstance(a, ast.Constant) and isinstance(b, ast.FormattedValue) and isinstance(a.value, str):
                    text = a.value
                    if re.search(r"(^|\s)(--[a-z][a-z-]*|-n) $", text) and "`" not in text:
                        found.append((str(path.relative_to(SRC)), node.lineno, text))
    return found


def test_no_message_writes_a_flags_value_without_its_origin():
    assert _messages_with_a_flag_and_a_value() == []


def _error(capsys, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, (code, err)
    return err


def _given(option: str, argv: list[str]) -> bool:
    return any(tok == option or tok.startswith(option + "=") for tok in argv)


@pytest.fixture
def small(tmp_path) -> Path:
    p = tmp_path / "small.txt"
    p.write_text("\n".join(make_items(300)) + "\n")
    return p


@pytest.fixture
def run_dir(tmp_path, small) -> Path:
    assert main(["train", "--data", str(small), "--out", str(tmp_path / "run"), "--steps", "3", "--n-hidden", "8",
                 "--no-progress"]) == 0
    return tmp_path / "run"


CASES = {  # error paths that name a flag with a value, each reached with that value not given
    "preset batch > examples": ["train", "--model", "bigram", "--data", "{small}", "--out", "{tmp}/a", "--no-progress"],
    "given batch > examples": ["train", "--model", "bigram", "--data", "{small}", "--out", "{tmp}/a", "--batch-size", "99999"],
    "default n_embd vs given n_head": ["train", "--model", "transformer", "--n-head", "5", "--data", "{small}", "--out", "{tmp}/b"],
    "given block vs default fuse": ["train", "--model", "wavenet", "--block-size", "6", "--data", "{small}", "--out", "{tmp}/c"],
    "preset batch vs given members": ["train", "--model", "gru", "--members", "40", "--batch-size", "32", "--data", "{small}",
                                      "--out", "{tmp}/d"],
    "default max-len vs prefix": ["sample", "{run}", "--prefix", "a" * 200],
}


@pytest.mark.parametrize("case", CASES)
def test_every_value_a_message_names_was_given_or_is_named_with_its_origin(capsys, tmp_path, small, run_dir, case):
    argv = [a.format(small=small, tmp=tmp_path, run=run_dir) for a in CASES[case]]
    err = _error(capsys, argv)
    shown = SHOWN.findall(err)
    assert shown, err  # the case reaches a message that names a value
    for origin, option, _ in shown:
        assert _given(option, argv) != bool(origin), (option, err)
