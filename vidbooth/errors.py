"""Errors a user can act on.

`UserError` carries a one-line message that says what is wrong and how to fix it. The CLI prints it
without a traceback (unless `--debug`) and exits with code 2. Everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line with exit code 2."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Interrupted(Exception):
    """Training was stopped by a signal after saving a resumable checkpoint."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
