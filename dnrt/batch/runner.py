"""The batch driver both modes share: skip what is done, dispatch the rest, record every result.

The driver stamps each input (path, size, mtime), skips the slides the ledger records as done
with the same stamp and options hash (and whose output exists), and hands the others to an
executor: :class:`~dnrt.batch.local.LocalExecutor` (this process) or
:class:`~dnrt.batch.cluster.RayExecutor`. Each result is written to the ledger as it arrives, so
a driver killed at any point keeps everything finished before it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnrt.batch.jobs import Job
from dnrt.batch.ledger import InputStamp, Ledger, is_done

#: Exit status of a batch in which at least one slide failed (the others were translated).
EXIT_SOME_FAILED = 3


@dataclass(frozen=True)
class Task:
    job: Job
    stamp: InputStamp
    #: Replace an existing output: the user asked, or it is this batch's own earlier output.
    overwrite: bool


class Executor(Protocol):
    #: Seconds the executor spent on its own bookkeeping (submitting, collecting), not waiting.
    busy_seconds: float
    workers: int

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict[str, Any]]]:
        """Yield ``(task, result)`` as slides finish, in any order."""
        ...

    def close(self) -> None: ...


@dataclass
class BatchSummary:
    out_dir: str
    ledger: str
    mode: str
    workers: int = 0
    slides: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    #: From the first dispatch to the last result: the part that the workers share.
    loop_seconds: float = 0.0
    #: The driver's own time (stamping, ledger writes, dispatch bookkeeping), not waiting.
    driver_seconds: float = 0.0
    tile_runs: int = 0
    tiles_per_s: float = 0.0
    options_hash: str = ""
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


class _Bar:
    """The overall bar: slides, tiles/s over the batch so far, failures, ETA (tqdm)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled and total:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="batch", unit="slide", file=sys.stderr, dynamic_ncols=True)
        self.start = time.perf_counter()

    def update(self, tile_runs: int, failed: int) -> None:
        if self._bar is not None:
            rate = tile_runs / max(time.perf_counter() - self.start, 1e-9)
            self._bar.set_postfix_str(f"{rate:.0f} tiles/s, {failed} failed", refresh=False)
            self._bar.update(1)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


#: Ledger statuses that make an existing output this batch's own (so it may be replaced).
OURS = ("done", "started")


def _ledger_record(task: Task, options_hash: str, record: dict[str, Any]) -> dict[str, Any]:
    return {
        "output": task.job.name,
        "input": task.stamp.path,
        "size": task.stamp.size,
        "mtime_ns": task.stamp.mtime_ns,
        "options": options_hash,
        **{k: v for k, v in record.items() if k not in ("output", "input")},
    }


def plan_tasks(
    jobs: list[Job], ledger: Ledger, options_hash: str, overwrite: bool
) -> tuple[list[Task], list[tuple[Task, dict[str, Any]]], list[dict[str, Any]]]:
    """Split the jobs: tasks to run, tasks refused at once (an output that is not ours), skipped.

    Skipped: done before with the same input and options, output present. Refused: the output
    exists, the ledger does not know it as this batch's, and ``overwrite`` is off.
    """
    tasks: list[Task] = []
    refused: list[tuple[Task, dict[str, Any]]] = []
    skipped: list[dict[str, Any]] = []
    for job in jobs:
        try:
            stamp = InputStamp.of(job.input)
        except OSError as exc:  # gone or unreadable since the list was checked
            stamp = InputStamp(str(job.input), -1, -1)
            error = f"cannot read '{job.input}': {exc.strerror or exc}"
            refused.append((Task(job, stamp, False), {"status": "failed", "error": error, "seconds": 0.0}))
            continue
        latest = ledger.records.get(job.name)
        exists = os.path.lexists(job.output)
        if exists and job.output.exists() and is_done(latest, stamp, options_hash):
            skipped.append(_result(job, {"status": "skipped", "seconds": latest.get("seconds", 0.0)}))
            continue
        ours = latest is not None and latest.get("status") in OURS
        # Ours whether or not it exists yet: a worker of a killed driver may still be finishing
        # it (Ray ends a dead driver's actors only once it notices), so the output can appear
        # between this check and the retry's own write, which must then replace it.
        task = Task(job, stamp, overwrite or ours)
        if exists and not task.overwrite:
            error = f"output '{job.output}' exists and is not this batch's; pass --overwrite to replace it"
            refused.append((task, {"status": "failed", "error": error, "seconds": 0.0}))
        else:
            tasks.append(task)
    return tasks, refused, skipped


def _result(job: Job, record: dict[str, Any]) -> dict[str, Any]:
    out = {"index": job.index, "input": str(job.input), "output": job.name}
    out.update({k: v for k, v in record.items() if k in ("status", "error", "seconds", "tile_runs", "pid")})
    return out


def run_batch(
    jobs: list[Job],
    ledger: Ledger,
    options_hash: str,
    make_executor: Callable[[int], Executor],
    *,
    mode: str,
    overwrite: bool = False,
    progress: bool = False,
    quiet: bool = False,
) -> BatchSummary:
    """Run ``jobs``; results go to the ledger as they come. Interrupts propagate (after cleanup)."""
    start = time.perf_counter()
    summary = BatchSummary(
        out_dir=str(ledger.out_dir),
        ledger=str(ledger.path),
        mode=mode,
        slides=len(jobs),
        options_hash=options_hash,
    )
    tasks, refused, skipped = plan_tasks(jobs, ledger, options_hash, overwrite)
    summary.skipped = len(skipped)
    results = list(skipped)
    ledger.append_many([_ledger_record(t, options_hash, r) for t, r in refused])
    for task, record in refused:
        results.append(_result(task.job, record))
        summary.failed += 1
        if not quiet:
            print(f"failed: {task.job.input}: {record['error']}", file=sys.stderr)
    driver = time.perf_counter() - start
    bar = _Bar(len(tasks), progress and not quiet)
    executor: Executor | None = None
    try:
        if tasks:
            executor = make_executor(len(tasks))
            summary.workers = executor.workers
            # Recorded as started before any is dispatched (see dnrt.batch.ledger).
            ledger.append_many([_ledger_record(t, options_hash, {"status": "started"}) for t in tasks])
            loop_start = time.perf_counter()
            bar.start = loop_start
            for task, record in executor.run(tasks):
                t0 = time.perf_counter()
                ledger.append(_ledger_record(task, options_hash, record))
                results.append(_result(task.job, record))
                if record.get("status") == "done":
                    summary.done += 1
                    summary.tile_runs += int(record.get("tile_runs", 0))
                else:
                    summary.failed += 1
                    if not quiet:
                        bar.write(f"failed: {task.job.input}: {record.get('error', 'failed')}")
                bar.update(summary.tile_runs, summary.failed)
                driver += time.perf_counter() - t0
            summary.loop_seconds = round(time.perf_counter() - loop_start, 4)
            driver += executor.busy_seconds
    finally:
        bar.close()
        if executor is not None:
            executor.close()
    summary.seconds = round(time.perf_counter() - start, 4)
    summary.driver_seconds = round(driver, 4)
    summary.tiles_per_s = round(summary.tile_runs / summary.loop_seconds, 1) if summary.loop_seconds else 0.0
    summary.results = sorted(results, key=lambda r: r["index"])
    return summary
