"""Schedules: the order in which tiles go through the two graphs (docs/semantics.md section 5).

The scheduler is a small pipeline of stages, each in its own thread where that
lets the model keep working:

    reader thread    decodes the source row band by row band (bounded queue)
    collect stage    stats graph on every tile of a row -> statistics tables
    infer stage      DenseNorm graph on row r once rows r-1..r+1 (DN) have statistics
    sink             the writer (tiled TIFF writers encode in their own thread)

``two-pass`` runs the collect stage over the whole image, then the infer stage
(reading the image twice). ``streaming`` interleaves them, collecting only
``lookahead`` rows ahead of inference (1 for DN, k//2 for KIN): the input held
is the look-ahead window of row bands, never the image.

**Bit-identity of the schedules.** Both run exactly the same backend calls on
exactly the same batches: a row's tiles are split into fixed chunks of
``batch`` columns (``TilePlan.chunks``) for both passes in both schedules, and
neighbourhoods are computed by the same functions from the same table entries.
A backend whose numbers depend on the batch composition (ONNX Runtime can)
therefore still gives the same bits either way. Only the order of the calls
changes, and each call is a pure function of its inputs.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.backends.base import Backend
from dnrt.runtime.options import SCHEDULES
from dnrt.runtime.pixels import network_output_to_uint8, paste_planar
from dnrt.runtime.plan import RowBand, TilePlan
from dnrt.runtime.tables import AreaThumbnail, DenseStats, GlobalStats, KernelStats, NeighbourhoodSource
from dnrt.semantics import (
    DEGENERATE_DEFAULT,
    DEGENERATE_RATIO_DEFAULT,
    STD_FLOOR_DEFAULT,
    DegenerateRule,
    Mode,
    check_degenerate,
    check_map_sizes,
    collect_flavour,
    kin_kernel,
)


class Source(Protocol):
    height: int
    width: int
    channels: int

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class Sink(Protocol):
    """Where output rows go, top to bottom.

    A sink may also offer ``open_band(band) -> publish`` (the tiled TIFF writer does): the
    scheduler then hands each row's band over before computing it and calls ``publish(x)``
    after every chunk, so the sink encodes finished tiles while the model works on the rest.
    """

    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:
        """Take the next output rows. With ``copy=False`` the caller hands the array over (it
        never touches it again), so the sink may keep it instead of copying it."""


#: Progress callback: ``(tiles_done_now, phase)``.
ProgressFn = Callable[[int, str], None]


@dataclass
class PhaseTimes:
    """Seconds spent per phase, summed over threads (phases overlap, so they can exceed the total)."""

    read: float = 0.0
    thumbnail: float = 0.0
    collect: float = 0.0
    infer: float = 0.0
    write: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, phase: str, seconds: float) -> None:
        with self._lock:
            setattr(self, phase, getattr(self, phase) + seconds)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("read", "thumbnail", "collect", "infer", "write")}


@dataclass(frozen=True)
class ScheduleOptions:
    mode: Mode = Mode.DN
    schedule: str = "streaming"
    batch: int = 4
    std_floor: float = STD_FLOOR_DEFAULT
    #: DN's rule for (near-)degenerate neighbourhood statistics and its ratio (section 8).
    degenerate: DegenerateRule | str = DEGENERATE_DEFAULT
    degenerate_ratio: float = DEGENERATE_RATIO_DEFAULT
    kin_kernel: int = 5
    kin_kernel_type: str = "constant"
    #: Run the collect stage in its own thread beside inference (streaming only).
    #: ``None``: the backend decides (``Backend.concurrent_passes``).
    overlap: bool | None = None
    #: Bands the reader may decode ahead of the model.
    read_ahead: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.schedule not in SCHEDULES:
            raise DnrtError(f"unknown schedule {self.schedule!r} (expected one of {', '.join(SCHEDULES)})")
        if self.batch < 1:
            raise DnrtError(f"batch must be at least 1, got {self.batch}")
        object.__setattr__(self, "degenerate", check_degenerate(self.degenerate, self.degenerate_ratio))


def resolve_overlap(options: ScheduleOptions, backend: Backend) -> bool:
    """Whether collect and infer will run concurrently (two threads, or two streams on a GPU).

    Only streaming KIN/DN has two passes to overlap. ``options.overlap=None`` lets the backend
    decide through its ``concurrent_passes`` attribute. ``Backend.set_concurrency(bool)`` lets
    it size itself for the answer (ONNX Runtime splits its CPU threads between the two
    sessions); callers invoke it before activating the backend.
    """
    overlap = options.overlap
    if overlap is None:
        overlap = backend.concurrent_passes
    return bool(overlap) and options.schedule == "streaming" and options.mode in (Mode.KIN, Mode.DN)


def graphs_for(mode: Mode) -> frozenset[str]:
    """The bundle graphs a mode runs (see ``Backend.expect_graphs``)."""
    mode = Mode(mode)
    return frozenset({"stats"}) if mode is Mode.IN else frozenset({"collect", "dense"})


class _Stop(Exception):
    """Raised inside a stage thread when the pipeline is being torn down."""


class _Stage:
    """A producer thread handing items to the consumer; its exceptions re-raise in the consumer.

    At most ``slots`` items wait for the consumer. The producer reserves a slot *before*
    it makes an item (``reserve()`` then ``put(item)``), so a producer waiting for room
    never holds an extra decoded band: what is alive is exactly what the window needs.
    """

    _DONE = object()

    def __init__(
        self, name: str, produce: Callable[[Callable[[], None], Callable[[object], None]], None], slots: int
    ) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(max(1, slots))
        self._stop = threading.Event()
        self._produce = produce
        self._thread = threading.Thread(target=self._run, name=f"dnrt-{name}", daemon=True)
        self._thread.start()

    def _reserve(self) -> None:
        while not self._slots.acquire(timeout=0.05):
            if self._stop.is_set():
                raise _Stop
        if self._stop.is_set():
            raise _Stop

    def _run(self) -> None:
        try:
            self._produce(self._reserve, self._queue.put)
            self._queue.put(self._DONE)
        except _Stop:
            pass
        except BaseException as exc:  # forwarded to the consumer, which re-raises it
            self._queue.put(exc)

    def __iter__(self) -> Iterator:
        while True:
            try:
                # A timeout keeps the wait interruptible (Ctrl-C) on every platform.
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            self._slots.release()
            yield item

    def close(self) -> None:
        self._stop.set()
        # Wait for a backend call in flight to return: leaving a thread inside a native library
        # at interpreter exit can crash the process. The bound only guards against a hung call.
        self._thread.join(timeout=300.0)


class Scheduler:
    """Drives one backend over one tile plan in one mode and schedule."""

    def __init__(
        self,
        backend: Backend,
        plan: TilePlan,
        options: ScheduleOptions,
        progress: ProgressFn | None = None,
        times: PhaseTimes | None = None,
    ) -> None:
        self.backend = backend
        self.plan = plan
        self.options = options
        self.progress = progress or (lambda n, phase: None)
        self.times = times if times is not None else PhaseTimes()
        #: Set when the pipeline is torn down early (error, Ctrl-C): a stage thread stops at its
        #: next backend call instead of finishing its row, so the teardown waits for one call.
        self._halt = threading.Event()
        self.manifest = backend.manifest
        self.chunks = plan.chunks(options.batch)
        mode = options.mode
        self.flavour = collect_flavour(mode, options.std_floor)
        self.overlap = resolve_overlap(options, backend)
        #: Per-stage float buffers (network input, output conversion), reused for every call:
        #: stages run in different threads, so each has its own.
        self._buffers: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.stats: NeighbourhoodSource | None = None
        channels = self.manifest.total_channels
        ahead = self._rows_collected_ahead()
        if mode is Mode.DN:
            self.stats = DenseStats(
                plan.rows,
                plan.cols,
                channels,
                options.std_floor,
                ahead,
                options.degenerate,
                options.degenerate_ratio,
            )
        elif mode is Mode.KIN:
            kernel = kin_kernel(options.kin_kernel, options.kin_kernel_type)
            self.stats = KernelStats(plan.rows, plan.cols, channels, kernel, options.std_floor, ahead)

    def _rows_collected_ahead(self) -> int | None:
        """Rows of statistics the collector may write beyond the look-ahead while a row is
        inferred, which the tables must hold besides the rows it reads: none in order, one when
        the collector runs in its own thread (it holds at most one finished row waiting for the
        consumer). ``None`` for two-pass, which keeps every row. Streaming memory then follows
        the width, not the area."""
        if self.options.schedule == "two-pass":
            return None
        return 1 if self.overlap else 0

    # -- accounting --------------------------------------------------------------------
    @property
    def total_tile_runs(self) -> int:
        """Network runs over tiles this job makes (the progress bar's total)."""
        passes = 2 if self.options.mode in (Mode.KIN, Mode.DN) else 1
        return self.plan.tiles * passes

    def _timed(self, phase: str, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.times.add(phase, time.perf_counter() - start)

    # -- stages ------------------------------------------------------------------------
    def _read_band(self, row: int) -> RowBand:
        y0, y1 = self.plan.band_extent(row)
        pixels = self._timed("read", self.source.read_region, y0, y1, 0, self.plan.width)
        expected = (y1 - y0, self.plan.width)
        if pixels.shape[:2] != expected or pixels.dtype != np.uint8:
            raise DnrtError(
                f"image reader returned {pixels.dtype} {pixels.shape} for rows {y0}:{y1} (expected uint8 "
                f"{expected + (self.manifest.in_channels,)})"
            )
        return RowBand(row, y0, y1, pixels)

    def _reader(self) -> _Stage:
        def produce(reserve: Callable[[], None], put: Callable[[object], None]) -> None:
            for row in range(self.plan.rows):
                reserve()
                put(self._read_band(row))

        return _Stage("reader", produce, self.options.read_ahead)

    def _stage_buffers(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """The network-input buffer ``[batch, Cin, S, S]`` and output scratch ``[batch, Cout, T, T]``
        of one stage. Backends only read their inputs during the call, so reuse is safe."""
        buffers = self._buffers.get(stage)
        if buffers is None:
            batch = max(len(c) for c in self.chunks)
            s, t = self.plan.input_size, self.plan.tile
            buffers = (
                np.empty((batch, self.manifest.in_channels, s, s), dtype=np.float32),
                np.empty((batch, self.manifest.out_channels, t, t), dtype=np.float32),
            )
            self._buffers[stage] = buffers
        return buffers

    def _collect_row(self, band: RowBand, sink: Sink | None) -> None:
        """Stats graph over a row; IN writes its image output, KIN/DN keep the statistics."""
        out = self._new_output_band(band.row) if sink is not None else None
        publish = self._hand_over(out, sink) if out is not None else None
        inputs, scratch = self._stage_buffers("collect")
        for cols in self.chunks:
            if self._halt.is_set():
                raise _Stop
            tiles = self.plan.network_input(band, cols, out=inputs)
            image, mean, std = self._timed(
                "collect", self.backend.collect, tiles, self.flavour, image=out is not None
            )
            if self.stats is not None:
                self.stats.record(band.row, cols, mean, std)
            if publish is not None:
                self._place(out, cols, image, scratch)
                publish(self.plan.columns_through(int(cols[-1])))
            self.progress(len(cols), "collect")

    def _infer_row(self, band: RowBand, sink: Sink) -> None:
        assert self.stats is not None
        out = self._new_output_band(band.row)
        publish = self._hand_over(out, sink)
        inputs, scratch = self._stage_buffers("infer")
        for cols in self.chunks:
            tiles = self.plan.network_input(band, cols, out=inputs)
            nbr_mean, nbr_std = self.stats.neighbourhoods(band.row, cols)
            image = self._timed("infer", self.backend.infer, tiles, nbr_mean, nbr_std)
            self._place(out, cols, image, scratch)
            publish(self.plan.columns_through(int(cols[-1])))
            self.progress(len(cols), "infer")

    def _new_output_band(self, row: int) -> np.ndarray:
        y0, y1 = self.plan.output_extent(row)
        return np.empty((y1 - y0, self.plan.width, self.manifest.out_channels), dtype=np.uint8)

    def _hand_over(self, out: np.ndarray, sink: Sink) -> Callable[[int], None]:
        """Give a fresh output band to the sink; returns ``publish(x)``, called as columns
        ``0 .. x-1`` become final (chunks run left to right). A sink with ``open_band`` gets the
        band now and encodes tiles as they are published; any other gets it whole at the end."""
        open_band = getattr(sink, "open_band", None)
        if open_band is not None:
            return self._timed("write", open_band, out)
        width = self.plan.width

        def publish(columns: int) -> None:
            if columns == width:
                self._timed("write", sink.write_band, out, copy=False)  # a fresh band per row

        return publish

    def _place(self, out: np.ndarray, cols: np.ndarray, image: np.ndarray, scratch: np.ndarray) -> None:
        """Crop network outputs to their tiles, convert them to uint8 (``from_network``) and
        paste them into the row's output band."""
        t = self.plan.tile
        expected = (len(cols), self.manifest.out_channels, self.plan.input_size, self.plan.input_size)
        if image.shape != expected:
            raise DnrtError(f"backend returned images of shape {image.shape}, expected {expected}")
        planar = network_output_to_uint8(self.plan.crop_output(image), scratch[: len(cols)])
        h = out.shape[0]
        for i, q in enumerate(cols):
            x0 = int(q) * t
            x1 = min(x0 + t, self.plan.width)
            paste_planar(out[:, x0:x1], planar[i, :, :h, : x1 - x0])

    def _thumbnail_stats(self) -> GlobalStats:
        """TIN: every tile normalized with the thumbnail's statistics."""
        mean, std = self._thumbnail_moments()
        return GlobalStats(mean, std)

    def _thumbnail_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Area-downscale the image to ``T x T`` while streaming it, then collect its statistics
        (``[L]`` mean and std): TIN's statistics, and the slide-level ones of DN's ``slide`` rule.

        The thumbnail is the whole image, so it gets no margin (a reflect margin
        would only add mirrored copies of its own border to the statistics);
        it is fed to the network in float, not re-quantized to uint8.
        """
        t = self.plan.tile
        try:
            check_map_sizes(t, 0, self.manifest.strides, self.manifest.network_multiple)
        except DnrtError:
            raise DnrtError(
                f"TIN and DN's 'slide' rule run the network on a {t} x {t} thumbnail: the tile must be a multiple of "
                f"{self.manifest.input_multiple} for this model"
            ) from None
        thumb = AreaThumbnail(self.plan.height, self.plan.width, self.manifest.in_channels, t)
        reader = self._reader()
        try:
            for band in reader:
                y0, y1 = self.plan.output_extent(band.row)
                self._timed("thumbnail", thumb.add, y0, band.pixels[y0 - band.y0 : y1 - band.y0])
        finally:
            reader.close()
        pixels = thumb.result()
        tiles = (pixels / 127.5 - 1.0).astype(np.float32).transpose(2, 0, 1)[None]
        _, mean, std = self._timed(
            "thumbnail", self.backend.collect, np.ascontiguousarray(tiles), self.flavour, image=False
        )
        return mean[0], std[0]

    # -- schedules ---------------------------------------------------------------------
    def run(self, source: Source, sink: Sink) -> PhaseTimes:
        if source.channels != self.manifest.in_channels:
            raise DnrtError(
                f"the model takes {self.manifest.in_channels}-channel images; the input has {source.channels}"
            )
        if (source.height, source.width) != (self.plan.height, self.plan.width):
            raise DnrtError("tile plan and image size disagree (internal error)")
        self.source = source
        mode = self.options.mode
        if isinstance(self.stats, DenseStats) and self.stats.needs_slide_statistics:
            # Both schedules compute the same thumbnail first, so they stay bit-identical.
            self.stats.slide = self._thumbnail_moments()
        if mode is Mode.IN:
            self._single_pass(sink, collect=True)
        elif mode is Mode.TIN:
            self.stats = self._thumbnail_stats()
            self._single_pass(sink, collect=False)
        elif self.options.schedule == "two-pass":
            self._two_pass(sink)
        elif self.overlap:
            self._streaming_overlapped(sink)
        else:
            self._streaming(sink)
        return self.times

    def _single_pass(self, sink: Sink, collect: bool) -> None:
        reader = self._reader()
        try:
            for band in reader:
                if collect:
                    self._collect_row(band, sink)
                else:
                    self._infer_row(band, sink)
        finally:
            reader.close()

    def _two_pass(self, sink: Sink) -> None:
        reader = self._reader()
        try:
            for band in reader:
                self._collect_row(band, None)
        finally:
            reader.close()
        self._single_pass(sink, collect=False)

    def _ready(self, row: int, collected: int) -> bool:
        """Row ``row`` may be inferred once rows ``0 .. collected-1`` have statistics."""
        assert self.stats is not None
        return collected >= min(row + self.stats.lookahead, self.plan.rows - 1) + 1

    def _streaming(self, sink: Sink) -> None:
        pending: dict[int, RowBand] = {}
        collected = 0
        next_row = 0
        reader = self._reader()
        try:
            for band in reader:
                self._collect_row(band, None)  # prefetch: statistics of the newest row
                collected = band.row + 1
                pending[band.row] = band
                while next_row < self.plan.rows and self._ready(next_row, collected):
                    self._infer_row(pending.pop(next_row), sink)
                    next_row += 1
        finally:
            reader.close()
        if next_row != self.plan.rows or pending:
            raise RuntimeError("streaming schedule ended with rows left uninferred (scheduler bug)")

    def _streaming_overlapped(self, sink: Sink) -> None:
        """Streaming with the collect stage in its own thread: collect(r + lookahead + 1) runs
        while row r is inferred. The statistics tables are written by one thread and read by
        the other only for rows the queue hand-off has already published."""
        reader = self._reader()

        def produce(reserve: Callable[[], None], put: Callable[[object], None]) -> None:
            bands = iter(reader)
            while True:
                reserve()  # before taking a band: a collector waiting for room holds none
                band = next(bands, None)
                if band is None:
                    return
                self._collect_row(band, None)
                put(band)

        collector = _Stage("collect", produce, 1)
        pending: dict[int, RowBand] = {}
        collected = 0
        try:
            stream = iter(collector)
            for row in range(self.plan.rows):
                while not self._ready(row, collected):
                    band = next(stream)
                    pending[band.row] = band
                    collected = band.row + 1
                self._infer_row(pending.pop(row), sink)
            for _ in stream:  # drain the end marker, surfacing late errors
                pass
        finally:
            self._halt.set()
            collector.close()
            reader.close()
