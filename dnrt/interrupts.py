"""Termination signals as exceptions, so that every exit path cleans up its temporary output.

Python turns SIGINT (Ctrl-C) into KeyboardInterrupt, which unwinds the stack through every
``except BaseException``/``finally`` that removes a temporary file or folder. SIGTERM (``kill``,
a batch scheduler, ``docker stop``) and SIGHUP (a closed terminal or SSH session) would instead
kill the process on the spot and leave the temporary beside the destination. Inside
:func:`signals_interrupt` those signals raise :class:`Interrupted`, a KeyboardInterrupt, so they
take the same path as Ctrl-C; the command-line tools then exit with ``128 + signal number``
(130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP), the shell convention.

Only the command-line entry points install the handlers (a library must not take over its
host's signals), only from the main thread, and never over a signal the process inherited as
ignored (``nohup`` ignores SIGHUP; a shell's background job ignores SIGINT): that choice is the
caller's. Once one signal has been turned into an exception, further ones are ignored until
the block exits, so a second Ctrl-C or ``kill`` cannot cut the clean-up short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

#: The signals :func:`signals_interrupt` handles (SIGHUP does not exist on Windows).
HANDLED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A termination signal received inside :func:`signals_interrupt`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:  # pragma: no cover - only the handled signals are raised
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


#: Depth of :func:`deferred` blocks on the main thread, and the signal held back meanwhile.
_defer_depth = 0
_held: int | None = None

#: The signal the latest :func:`signals_interrupt` block turned into an exception (None: none).
#: Some native libraries (Ray's waits among them) catch the exception a signal handler raises
#: and raise a plain KeyboardInterrupt instead; the signal that started it is still this one.
_last_signal: int | None = None


def received_signal() -> int | None:
    """The signal the latest :func:`signals_interrupt` block turned into an exception, or None.

    Native code interrupted mid-call may surface the handler's exception as one of its own: an
    extension module whose initialisation a Ctrl-C cut short raises "ImportError: initialization
    failed". A run that received a signal was interrupted, whatever exception came out of it.
    """
    return _last_signal


def _signum(exc: KeyboardInterrupt) -> int:
    if isinstance(exc, Interrupted):
        return exc.signum
    return _last_signal if _last_signal is not None else int(signal.SIGINT)


def exit_code_of(exc: KeyboardInterrupt) -> int:
    """128 + the signal that ended the run: 130 for a plain KeyboardInterrupt (SIGINT)."""
    return 128 + _signum(exc)


def describe(exc: KeyboardInterrupt) -> str:
    """``"interrupted"`` for Ctrl-C, ``"terminated (SIGTERM)"``/``"hung up (SIGHUP)"`` otherwise."""
    signum = _signum(exc)
    if signum != signal.SIGINT:
        verb = "hung up" if signum == getattr(signal, "SIGHUP", None) else "terminated"
        return f"{verb} ({Interrupted(signum).name})"
    return "interrupted"


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread.

    A no-op outside the main thread. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _last_signal
    _last_signal = None
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        global _last_signal, _held
        if received:  # already unwinding: let the clean-up finish
            return
        received.append(signum)
        _last_signal = signum
        if _defer_depth:  # inside deferred(): raised when that block ends
            _held = signum
            return
        raise Interrupted(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in HANDLED:
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN or current is None:
                continue  # inherited as ignored (nohup, background job) or set outside Python
            previous[signum] = current
            signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(signum, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a termination signal back until the block ends, then raise it as usual.

    For the few steps that must not be split: creating a temporary file and handing it to what
    removes it again (a signal in between would leave the file behind). Only the main thread's
    blocks defer (the handlers run there); elsewhere this is a no-op.
    """
    global _defer_depth, _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1
        if _defer_depth == 0 and _held is not None:
            signum, _held = _held, None
            raise Interrupted(signum)
