"""The one exception type for user mistakes.

The CLI turns a `CharmlpError` into `error: <message>` on one line and exit code 2.
Anything else is a bug and keeps its traceback.
"""


class CharmlpError(Exception):
    """A problem with the user's input: say what is wrong and what to do about it."""
