"""The README and docs/ stay true to the repository: every relative link (and its #anchor) resolves,
and every `charmlp …` command shown in a code block parses with charmlp's own parser."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from charmlp.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


FENCE = re.compile(r"^(```|~~~)\s*([\w+-]*)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
SHELL = {"", "bash", "sh", "shell", "console", "zsh"}
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
PLACEHOLDER = re.compile(r"^(\$\{?\w+\}?|<[^>]+>|[A-Z][A-Z0-9_]*)$")  # $VAR, ${VAR}, <dir>, DIR, N
OPERATORS = {"&&", "||", "|", ";", "&"}


def _prose(text: str) -> str:
    """The page without its fenced blocks and code spans (a link inside code is not a link)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces → '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors a page's headings make; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        s = _slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def _links(page: Path) -> list[str]:
    prose = _prose(page.read_text(encoding="utf-8"))
    return LINK.findall(prose) + REF_LINK.findall(prose)


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …: not a path in the repository
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            broken.append(f"{target} (no file {rel})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {rel})")
    assert not broken, f"{_name(page)}: broken links: " + "; ".join(broken)


def _logical_lines(block: str) -> list[str]:
    """A shell block's commands: continuation lines joined, prompts dropped."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        if line.strip():
            lines.append(line)
    return lines


def _charmlp_argv(words: list[str]) -> list[str] | None:
    """The arguments of a `charmlp …` command (also `.venv/bin/charmlp`, `python -m charmlp`,
    `torchrun … -m charmlp`, after `time`, `/usr/bin/time -f FMT` or `VAR=value`), or None for another program."""
    i = 0
    while i < len(words) and re.match(r"^\w+=", words[i]):
        i += 1
    if i < len(words) and words[i].rsplit("/", 1)[-1] == "time":
        i += 1
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in ("-f", "-o", "--format", "--output") else 1
    if i < len(words) and re.match(r"^(\S*/)?python[\d.]*$", words[i]) and words[i + 1:i + 3] == ["-m", "charmlp"]:
        return words[i + 3:]
    if i < len(words) and words[i].rsplit("/", 1)[-1] == "charmlp":
        return words[i + 1:]
    if i < len(words) and words[i].rsplit("/", 1)[-1] == "torchrun":  # torchrun … -m charmlp ARGS
        rest = words[i + 1:]
        at = next((j for j in range(len(rest) - 1) if rest[j:j + 2] == ["-m", "charmlp"]), None)
        return None if at is None else rest[at + 2:]
    return None


def _commands(page: Path) -> list[str]:
    """Every `charmlp …` command line of the page's shell code blocks."""
    found = []
    for _fence, lang, block in FENCE.findall(page.read_text(encoding="utf-8")):
        if lang.lower() not in SHELL:
            continue
        for line in _logical_lines(block):
            if "charmlp" not in line:
                continue
            try:
                lex = shlex.shlex(line, posix=True, punctuation_chars=True)
                lex.whitespace_split = True  # words split at blanks and at && | ; only
                lex.commenters = "#"
                words = list(lex)
            except ValueError:  # an output line with an apostrophe in it, in an unmarked block
                if lang:
                    raise
                continue
            segment: list[str] = []
            for w in [*words, ";"]:
                if w in OPERATORS:
                    if _charmlp_argv(segment) is not None:
                        found.append(shlex.join(segment))
                    segment = []
                else:
                    segment.append(w)  # redirections stay, and go with their targets before parsing
    return found


def _option_action(parser: argparse.ArgumentParser, argv: list[str], option: str) -> argparse.Action | None:
    """The action of `option` in the subcommand that `argv` names (for a placeholder's value)."""
    p = parser
    for word in argv:
        if word == option:
            break
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is not None and word in sub.choices:
            p = sub.choices[word]
    return next((a for a in p._actions if option in a.option_strings), None)


def _fill_placeholders(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--model M` → a valid choice, `--steps N` → 1, `DIR` → a word: a placeholder stands for
    any value the option accepts, so only the command's shape is checked."""
    out = []
    for i, word in enumerate(argv):
        if PLACEHOLDER.match(word) and i > 0 and argv[i - 1].startswith("-"):
            action = _option_action(parser, argv, argv[i - 1])
            if action is not None and action.choices:
                word = str(next(iter(action.choices)))
            elif action is not None and action.type in (int, float):
                word = "1"
            else:
                word = "x"
        elif PLACEHOLDER.match(word):
            word = "x"
        out.append(word)
    return out


def _strip_redirections(argv: list[str]) -> list[str]:
    out, skip = [], False
    for w in argv:
        if skip:
            skip = False
        elif w in (">", ">>", "<"):
            skip = True
        else:
            out.append(w)
    return out


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_command_shown_parses(page: Path, parser: argparse.ArgumentParser) -> None:
    failures = []
    for command in _commands(page):
        argv = _fill_placeholders(parser, _strip_redirections(_charmlp_argv(shlex.split(command)) or []))
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                parser.parse_args(argv)
        except SystemExit as e:
            if e.code != 0:  # 0: --help or --version, which parsed
                failures.append(f"{command!r}: {err.getvalue().strip()}")
    assert not failures, f"{_name(page)}: commands that charmlp does not accept:\n" + "\n".join(failures)


def test_the_docs_show_commands_and_links() -> None:
    """The two tests above have something to check: the README's main command is found."""
    readme = ROOT / "README.md"
    assert any(c.startswith(".venv/bin/charmlp train --preset quick") for c in _commands(readme))
    assert any(t.startswith("docs/") for t in _links(readme))
