"""Progress bar: tiles, tiles/s and ETA on a terminal; nothing otherwise or with ``quiet``."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO


class Progress:
    """Counts network runs over tiles (collect and infer both count for KIN and DN)."""

    def __init__(
        self, total: int, *, enabled: bool | None = None, stream: TextIO | None = None, desc: str = ""
    ) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc or "translate",
                unit="tile",
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
                smoothing=0.1,
            )
        self._phase = ""

    def __call__(self, n: int, phase: str) -> None:
        """``n`` more tile runs done in ``phase``; ``n == 0`` only shows the phase (reading the
        thumbnail, loading the model) so that the bar says what happens before the first tile."""
        if self._bar is None:
            return
        if phase != self._phase:
            self._phase = phase
            self._bar.set_postfix_str(phase, refresh=n == 0)
        if n:
            self._bar.update(n)

    def note(self, text: str) -> None:
        """A line above the bar (the pre-flight's estimates); nothing without a bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
