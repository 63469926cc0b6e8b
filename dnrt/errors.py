"""The one exception type users see: its message is printed as a single line."""

from __future__ import annotations


def first_line(exc: BaseException, empty: str = "") -> str:
    """The first line of ``exc``'s message (``empty`` when it has none): what dnrt shows of an
    exception, its own or a library's, in a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else empty


class DnrtError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    ``exit_code`` lets the CLI distinguish usage errors (2) from failures (1).
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Cancelled(DnrtError):
    """The run was stopped on request (a progress callback returned False or raised this).

    ``translate_file`` removes its temporary output, so nothing is left at the destination.
    """

    def __init__(self, message: str = "cancelled by the progress callback", exit_code: int = 130) -> None:
        super().__init__(message, exit_code)
