"""The batch ledger: one JSON line per finished (or failed) slide, in the output folder.

``dnrt-batch.jsonl`` is only ever appended to, one record per ``write`` on a descriptor opened
with ``O_APPEND`` and flushed to disk (``fsync``) before the driver moves on, so a killed driver
loses at most the line it was writing; a torn last line is ignored when the ledger is read. The
latest record of an output name wins. Before a slide is dispatched the driver records it as
``started``, so an output that a worker finished after its driver was killed (renamed into
place, never recorded ``done``) is known to be the batch's own and is redone, not refused. A slide is skipped by a re-run when its latest record is
``done`` for the same input path, input size and modification time and the same options hash,
and its output still exists; anything else is translated again.

While a batch runs it holds an exclusive lock (``flock``) on the output folder itself, so two
drivers cannot interleave on one output folder; the ledger file appears with the first result.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from dnrt.errors import DnrtError

LEDGER_NAME = "dnrt-batch.jsonl"
#: Bumped when the record's meaning changes; records of another version are ignored.
LEDGER_VERSION = 1


@dataclass(frozen=True)
class InputStamp:
    """What identifies an input's content cheaply: resolved path, size and mtime (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> InputStamp:
        st = path.stat()
        return cls(str(path.resolve()), st.st_size, st.st_mtime_ns)


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record of each output name; torn or foreign lines are skipped."""
    latest: dict[str, dict[str, Any]] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return latest
    except OSError as exc:
        raise DnrtError(f"cannot read the ledger '{path}': {exc.strerror or exc}") from None
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line a killed driver was writing
        if (
            isinstance(record, dict)
            and record.get("v") == LEDGER_VERSION
            and isinstance(record.get("output"), str)
        ):
            latest[record["output"]] = record
    return latest


def is_done(record: dict[str, Any] | None, stamp: InputStamp, options_hash: str) -> bool:
    return (
        record is not None
        and record.get("status") == "done"
        and record.get("input") == stamp.path
        and record.get("size") == stamp.size
        and record.get("mtime_ns") == stamp.mtime_ns
        and record.get("options") == options_hash
    )


class Ledger:
    """The open ledger of one output folder, locked for this driver (a context manager)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / LEDGER_NAME
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self.records: dict[str, dict[str, Any]] = {}

    def open(self) -> Ledger:
        import fcntl

        from dnrt.atomic import new_temp

        try:
            self._lock_fd = os.open(self.out_dir, os.O_RDONLY)
        except OSError as exc:
            raise DnrtError(
                f"cannot open the output folder '{self.out_dir}': {exc.strerror or exc}"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise DnrtError(
                f"another dnrt batch is writing to '{self.out_dir}'; wait for it to end"
            ) from None
        # Writability proven by writing (root passes os.access on read-only folders), nothing left.
        try:
            with new_temp(self.path):
                pass
        except DnrtError:
            self.close()
            raise DnrtError(f"output folder '{self.out_dir}' is not writable") from None
        self.records = read_records(self.path)
        return self

    def _open_for_append(self) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            except OSError as exc:
                raise DnrtError(f"cannot write the ledger '{self.path}': {exc.strerror or exc}") from None
            self._end_torn_line()
        return self._fd

    def _end_torn_line(self) -> None:
        # A driver killed mid-write left a line without its newline: close it off so that the
        # next record starts on a line of its own (the torn one is ignored on reading).
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                os.write(self._fd, b"\n")

    def append(self, record: dict[str, Any]) -> None:
        """Write one record durably (one write, then fsync) and remember it as the latest."""
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Write records in one ``write`` and one ``fsync``; each becomes its output's latest."""
        if self._lock_fd is None:
            raise RuntimeError("the ledger is not open")
        if not records:
            return
        fd = self._open_for_append()
        now = round(time.time(), 3)
        stamped = [{"v": LEDGER_VERSION, "time": now, **record} for record in records]
        data = b"".join(
            (json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n").encode() for r in stamped
        )
        try:
            view = memoryview(data)
            while view:  # a regular file takes it whole; loop only for the pathological case
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(28, "no space left for the ledger")
                view = view[written:]
            os.fsync(fd)
        except OSError as exc:
            raise DnrtError(f"cannot write the ledger '{self.path}': {exc.strerror or exc}") from None
        for record in stamped:
            self.records[record["output"]] = record

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)

    def __enter__(self) -> Ledger:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
