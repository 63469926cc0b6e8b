"""Slides one after the other in this process, through one Translator (the bundle loaded once)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from dnrt.batch.runner import Task
from dnrt.batch.worker import SlideWorker
from dnrt.runtime.options import TranslateOptions


class LocalExecutor:
    workers = 1

    def __init__(self, bundle: str, options: TranslateOptions) -> None:
        # A broken bundle or a missing backend fails here, once, as the batch's own error.
        self.worker = SlideWorker(bundle, options)
        self.busy_seconds = 0.0

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict[str, Any]]]:
        for task in tasks:
            yield task, self.worker.run(str(task.job.input), str(task.job.output), task.overwrite)

    def close(self) -> None:
        self.worker.close()
