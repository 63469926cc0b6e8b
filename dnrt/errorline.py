"""Exceptions to one ``error: ...`` line: what every dnrt command prints instead of a traceback.

One rule for ``dnrt``, ``export-model``, ``trt-translate``, ``dnrt batch`` and ``dnrt bench``:

- a :class:`~dnrt.errors.DnrtError` prints its first line and exits with its ``exit_code``
  (2 for usage errors, 1 otherwise);
- Ctrl-C, SIGTERM and SIGHUP (inside :func:`dnrt.interrupts.signals_interrupt`) print what
  stopped the run and exit 130, 143 and 129; outputs are written under temporary names, so
  nothing half-written is left;
- running out of memory says so, with the options that lower it;
- anything else is a bug: still one line, naming the exception, with the way to see more;
- click's own usage errors (unknown option, missing argument) become one line with a pointer
  to ``--help`` (exit 2).

``DNRT_DEBUG=1`` lets every exception through with its traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click

from dnrt.errors import DnrtError, first_line

#: Set (to anything non-empty) to get tracebacks instead of the one line.
DEBUG_ENV = "DNRT_DEBUG"


def debugging() -> bool:
    return bool(os.environ.get(DEBUG_ENV))


#: What an interrupted command says after what stopped it, unless the command says otherwise.
INTERRUPTED_NOTE = "nothing written"


def describe_error(exc: BaseException, interrupted: str = INTERRUPTED_NOTE) -> tuple[str, int]:
    """The line (without ``error: ``) and the exit code that report ``exc`` to a user;
    ``interrupted`` follows what stopped an interrupted run."""
    from dnrt.interrupts import Interrupted, describe, exit_code_of, received_signal

    signum = received_signal()
    if signum is not None and not isinstance(exc, KeyboardInterrupt):
        exc = Interrupted(signum)  # what a signal cut short, reported as the signal (see there)
    if isinstance(exc, DnrtError):
        return first_line(exc) or "failed", exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return f"{describe(exc)}; {interrupted}", exit_code_of(exc)
    if isinstance(exc, MemoryError):
        return "out of memory; try a smaller --batch or --tile", 1
    return f"unexpected {type(exc).__name__}: {first_line(exc)} (set {DEBUG_ENV}=1 for a traceback)", 1


class ErrorLine(click.ClickException):
    """Printed as a single ``error: ...`` line with its exit code, whatever command group runs it."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def of(cls, exc: BaseException, interrupted: str = INTERRUPTED_NOTE) -> ErrorLine:
        message, code = describe_error(exc, interrupted)
        return cls(message, code)

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def guarded(call: Callable[[], Any], interrupted: str = INTERRUPTED_NOTE) -> Any:
    """Run ``call`` with termination signals unwinding like Ctrl-C; report what escapes it as an
    :class:`ErrorLine` (click's own exceptions and exits pass through; DNRT_DEBUG lets all pass).
    ``interrupted`` follows what stopped an interrupted run in its line."""
    from dnrt.interrupts import signals_interrupt

    try:
        with signals_interrupt():  # SIGTERM and SIGHUP unwind (and clean up) like Ctrl-C
            return call()
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if debugging():
            raise
        raise ErrorLine.of(exc, interrupted) from None


class OneLineCommand(click.Command):
    """A click command whose usage errors and failures are one ``error:`` line each."""

    #: What the line of an interrupted run says after what stopped it.
    interrupted_note = INTERRUPTED_NOTE

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            name = info_name or self.name or "dnrt"
            if parent is not None:
                name = f"{parent.command_path} {name}"
            raise ErrorLine(f"{exc.format_message()} (see {name} --help)", exit_code=2) from None

    def invoke(self, ctx: click.Context) -> Any:
        return guarded(lambda: super(OneLineCommand, self).invoke(ctx), self.interrupted_note)


class OneLineGroup(click.Group):
    """A click group whose commands report failures as one ``error:`` line."""

    def invoke(self, ctx: click.Context) -> Any:
        return guarded(lambda: super(OneLineGroup, self).invoke(ctx))
