"""One slide at a time with one Translator: the same code in this process and in a Ray actor.

The bundle is loaded once, when the worker is created, and the Translator (and its backend's
sessions) is reused for every slide the worker gets. A slide's failure is returned as a record
with its one-line error, so a corrupt slide never stops the worker; only an interrupt (Ctrl-C,
SIGTERM) propagates. The output is written by ``Translator.translate_file``: to a temporary name
beside the destination, renamed when complete (``dnrt/atomic.py``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dnrt.errors import DnrtError, first_line

if TYPE_CHECKING:
    from dnrt.runtime.options import TranslateOptions


class SlideWorker:
    """Holds a Translator built from ``bundle`` and ``options``; translates slides."""

    def __init__(self, bundle: str, options: TranslateOptions) -> None:
        from dnrt.runtime.api import Translator

        self.translator = Translator(bundle, options, progress=False)
        self.translator.open()

    def pid(self) -> int:
        return os.getpid()

    def run(self, input: str, output: str, overwrite: bool) -> dict[str, Any]:
        """Translate ``input`` into ``output``; a record ``{"status": "done"|"failed", ...}``."""
        start = time.perf_counter()
        result: dict[str, Any] = {"pid": os.getpid()}
        try:
            destination = Path(output)
            try:
                destination.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DnrtError(
                    f"cannot create the folder '{destination.parent}': {exc.strerror or exc}"
                ) from None
            report = self.translator.translate_file(input, output, overwrite=overwrite)
        except DnrtError as exc:
            result.update(status="failed", error=first_line(exc, empty=type(exc).__name__))
        except MemoryError:
            result.update(status="failed", error="out of memory (try a smaller --batch or --tile)")
        except Exception as exc:  # a reader or backend bug on this slide: isolate it
            result.update(
                status="failed",
                error=f"internal error: {type(exc).__name__}: {first_line(exc, empty=type(exc).__name__)}",
            )
        else:
            result.update(
                status="done",
                width=report.width,
                height=report.height,
                tiles=report.tiles,
                tile_runs=report.tile_runs,
                backend=report.backend,
            )
        result["seconds"] = round(time.perf_counter() - start, 4)
        return result

    def close(self) -> None:
        self.translator.close()
