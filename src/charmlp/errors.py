"""The one exception type for user mistakes.

The CLI turns a `CharmlpError` into `error: <message>` on one line and exit code 2.
Anything else is a bug and keeps its traceback.
"""


class CharmlpError(Exception):
    """A problem with the user's input: say what is wrong and what to do about it."""


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C or SIGTERM after saving a checkpoint (exit code 128 + signal)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
