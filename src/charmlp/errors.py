"""The one exception type for user mistakes.

The CLI turns a `CharmlpError` into `error: <message>` on one line and exit code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class CharmlpError(Exception):
    """A problem with the user's input: say what is wrong and what to do about it."""


class ReportedElsewhere(CharmlpError):
    """A failure another process has reported (data-parallel training: the rank that failed, or
    rank 0, prints the line); the CLI exits with code 2 and prints nothing more."""


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


# Where each option's value came from when the user did not give it (`--batch-size` → "the
# `quick` preset's"), set by the CLI for the command it runs, so a message never names as the
# user's a value the user never gave. Empty outside the CLI (an API caller gave every value).
_ORIGINS: ContextVar[dict[str, str]] = ContextVar("charmlp_value_origins", default={})  # noqa: B039


def flag(name: str, value: object) -> str:
    """`--batch-size 4096` as given, or `the `quick` preset's --batch-size 4096` / `the default --max-len 50`."""
    origin = _ORIGINS.get().get(name)
    return f"{name} {value}" if origin is None else f"{origin} {name} {value}"


@contextmanager
def value_origins(origins: dict[str, str]) -> Iterator[dict[str, str]]:
    """Within the block, `flag` names these values' origins (the dict may gain entries meanwhile)."""
    token = _ORIGINS.set(origins)
    try:
        yield origins
    finally:
        _ORIGINS.reset(token)
