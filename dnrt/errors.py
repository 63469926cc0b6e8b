"""The one exception type users see: its message is printed as a single line."""

from __future__ import annotations


class DnrtError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    ``exit_code`` lets the CLI distinguish usage errors (2) from failures (1).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
