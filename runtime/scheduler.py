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

**Pre-pass.** Before any tile, one read of the image feeds what the whole run depends on:
the area thumbnail of TIN and of DN's ``slide`` rule, and the tissue thumbnail of
background skipping (``runtime/tissue.py``). Both schedules run it identically.

**Background skipping** (``background="skip"``, docs/semantics.md section 11): tiles without
tissue run neither pass. Their output is one fill colour, the model's translation of a flat
tile of the glass colour in this mode, and (KIN, DN) their statistics entries are that flat
tile's statistics, which every rule then treats like any other entry. A row's batches are
its tissue tiles cut into fixed chunks, the same in both passes and both schedules.

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
from functools import cached_property
from typing import Protocol

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.backends.base import Backend
from dnrt.runtime.options import SCHEDULES
from dnrt.runtime.pixels import network_output_to_uint8, paste_planar
from dnrt.runtime.plan import RowBand, TilePlan
from dnrt.runtime.tables import AreaThumbnail, DenseStats, GlobalStats, KernelStats, NeighbourhoodSource
from dnrt.runtime.tissue import (
    TISSUE_THRESHOLD_DEFAULT,
    TissueMask,
    TissueThumbnail,
    detect_tissue,
    dilate,
    mask_block,
)
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

#: What the scheduler does with tiles without tissue (``auto`` is resolved per image before it).
BACKGROUND_MODES = ("translate", "skip")


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
    # -- background skipping (docs/semantics.md section 11)
    #: ``translate``: every tile runs the network; ``skip``: tiles without tissue run neither pass.
    background: str = "translate"
    #: A tile is background when at most this fraction of its window (tile + margin) is tissue.
    tissue_threshold: float = TISSUE_THRESHOLD_DEFAULT
    #: Detect tissue even when translating everything (for the report and the mask PNG).
    detect_tissue: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        if self.schedule not in SCHEDULES:
            raise DnrtError(f"unknown schedule {self.schedule!r} (expected one of {', '.join(SCHEDULES)})")
        if self.batch < 1:
            raise DnrtError(f"batch must be at least 1, got {self.batch}")
        object.__setattr__(self, "degenerate", check_degenerate(self.degenerate, self.degenerate_ratio))
        if self.background not in BACKGROUND_MODES:
            raise DnrtError(
                f"unknown background handling {self.background!r} (expected one of {', '.join(BACKGROUND_MODES)})"
            )
        if not 0.0 <= self.tissue_threshold < 1.0:
            raise DnrtError(f"tissue threshold must be in [0, 1), got {self.tissue_threshold}")
        if self.mode is Mode.KIN:
            _ = self.kernel  # a bad size or type fails here, before any backend loads

    @cached_property
    def kernel(self) -> np.ndarray:
        """KIN's smoothing kernel, built once for these options and reused by every run."""
        return kin_kernel(self.kin_kernel, self.kin_kernel_type)


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
            self.stats = KernelStats(plan.rows, plan.cols, channels, options.kernel, options.std_floor, ahead)
        # -- background skipping: set by the pre-pass (run) when tissue is detected
        self.tissue: TissueMask | None = None
        #: uint8 ``[C_out]``: what a skipped tile is filled with.
        self.background_fill: np.ndarray | None = None
        #: ``[L]`` mean and std of the flat glass tile: the statistics entry of a skipped tile (KIN, DN).
        self._glass_stats: tuple[np.ndarray, np.ndarray] | None = None
        self._skipping = False
        self._row_chunk_cache: dict[int, list[np.ndarray]] = {}
        #: The flat glass tile's network input ``[C, S, S]``.
        self._glass_input: np.ndarray | None = None
        #: ``[R, Q]``: background tiles some tissue tile's neighbourhood reads (KIN, DN).
        self._reads_background: np.ndarray | None = None
        #: Background tiles whose statistics were collected for real (not flat glass).
        self.background_collects = 0

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
        """Network runs over tiles this job makes without skipping (the progress bar's total:
        skipped tiles count as done when they are filled)."""
        return self.plan.tiles * self._passes

    @property
    def _passes(self) -> int:
        return 2 if self.options.mode in (Mode.KIN, Mode.DN) else 1

    @property
    def tiles_skipped(self) -> int:
        """Tiles filled without running the network (known once :meth:`run` has started)."""
        return self.tissue.background_tiles if self._skipping and self.tissue is not None else 0

    @property
    def tile_runs(self) -> int:
        """Network runs over tiles this job made: skipped tiles excluded, save the collect runs
        of those whose statistics a tissue tile needed (:meth:`_skip_background`)."""
        return (self.plan.tiles - self.tiles_skipped) * self._passes + self.background_collects

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
        chunks, first, after = self._row_schedule(band.row)
        self._skip_background(band.row, out, record=self.stats is not None, phase="collect", band=band)
        if publish is not None and first:
            publish(first)
        for cols, ready in zip(chunks, after, strict=True):
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
                publish(ready)
            self.progress(len(cols), "collect")

    def _infer_row(self, band: RowBand, sink: Sink) -> None:
        if self.stats is None:  # only KIN and DN infer from tables
            raise RuntimeError(f"{self.options.mode.value}: no statistics tables to infer from")
        out = self._new_output_band(band.row)
        publish = self._hand_over(out, sink)
        inputs, scratch = self._stage_buffers("infer")
        chunks, first, after = self._row_schedule(band.row)
        self._skip_background(band.row, out, record=False, phase="infer")
        if first:
            publish(first)
        for cols, ready in zip(chunks, after, strict=True):
            tiles = self.plan.network_input(band, cols, out=inputs)
            nbr_mean, nbr_std = self.stats.neighbourhoods(band.row, cols)
            image = self._timed("infer", self.backend.infer, tiles, nbr_mean, nbr_std)
            self._place(out, cols, image, scratch)
            publish(ready)
            self.progress(len(cols), "infer")

    # -- background skipping -----------------------------------------------------------
    def _row_schedule(self, row: int) -> tuple[list[np.ndarray], int, list[int]]:
        """The row's batches, the output columns final before the first one (the background
        left of it, filled first), and after each one (up to the next batch's first tile).

        Without skipping these are ``self.chunks``, 0, and ``columns_through`` of each chunk's
        last tile: exactly the calls of a run without the feature."""
        chunks = self._row_chunk_cache.get(row) if self._skipping else self.chunks
        if chunks is None:
            assert self.tissue is not None
            cols = np.flatnonzero(self.tissue.tiles[row])
            batch = self.options.batch
            chunks = [cols[i : i + batch] for i in range(0, len(cols), batch)]
            self._row_chunk_cache[row] = chunks  # threads may race here: both compute the same
        width, t = self.plan.width, self.plan.tile
        first = min(int(chunks[0][0]) * t, width) if chunks else width
        after = [min(int(c[0]) * t, width) for c in chunks[1:]] + [width] if chunks else []
        return chunks, first, after

    def _skip_background(
        self, row: int, out: np.ndarray | None, record: bool, phase: str, band: RowBand | None = None
    ) -> None:
        """Fill the row's background tiles in ``out`` and (``record``) give them statistics; they
        count as done for the progress bar.

        The statistics are the flat glass tile's, except for a background tile that a tissue
        tile's neighbourhood reads (``_reads_background``) and whose network input is not
        exactly that flat tile (JPEG ringing, noise that does not saturate): the collect graph
        runs on it, so the tissue tile reads what a ``translate`` run gives it. Both schedules
        see the same pixels, so they make the same calls."""
        if not self._skipping:
            return
        assert self.tissue is not None
        cols = np.flatnonzero(~self.tissue.tiles[row])
        if not len(cols):
            return
        if record:
            assert self.stats is not None and self._glass_stats is not None and band is not None
            real = self._background_needing_statistics(band, cols)
            for i in range(0, len(real), self.options.batch):
                chunk = real[i : i + self.options.batch]
                inputs, _ = self._stage_buffers("collect")
                tiles = self.plan.network_input(band, chunk, out=inputs)
                _, m, sd = self._timed("collect", self.backend.collect, tiles, self.flavour, image=False)
                self.stats.record(row, chunk, m, sd)
                self.background_collects += len(chunk)
            flat = np.setdiff1d(cols, real) if len(real) else cols
            if len(flat):
                mean, std = self._glass_stats
                n = len(flat)
                self.stats.record(
                    row, flat, np.broadcast_to(mean, (n, mean.size)), np.broadcast_to(std, (n, std.size))
                )
        if out is not None:
            t = self.plan.tile
            for q in cols:
                out[:, int(q) * t : min(int(q) * t + t, self.plan.width)] = self.background_fill
        self.progress(len(cols), phase)

    def _background_needing_statistics(self, band: RowBand, cols: np.ndarray) -> np.ndarray:
        """Background tiles of this row that a tissue tile reads and that are not flat glass."""
        near = cols[self._reads_background[band.row, cols]]
        if not len(near):
            return near
        assert self._glass_input is not None
        probe = np.empty((1,) + self._glass_input.shape, dtype=np.float32)
        real = [
            q
            for q in near
            if not np.array_equal(
                self.plan.network_input(band, np.array([q]), out=probe)[0], self._glass_input
            )
        ]
        return np.array(real, dtype=np.int64)

    def _prepare_background(self) -> None:
        """The fill of skipped tiles and (KIN, DN) their statistics entry: the model's translation,
        in this mode, of a flat tile of the glass colour whose neighbours are flat glass too.

        Run as a full batch (the chunk size), so a backend whose numbers depend on the batch size
        computes the glass tile as it computes a batch of tiles of the image."""
        assert self.tissue is not None and self.tissue.background_colour is not None
        n = max(len(c) for c in self.chunks)
        s = self.plan.input_size
        tiles = np.empty((n, self.manifest.in_channels, s, s), dtype=np.float32)
        # The arithmetic of pixels.gather_network_input: exact uint8 -> float32, / 127.5, - 1.
        tiles[:] = self.tissue.background_colour.astype(np.float32)[None, :, None, None]
        np.divide(tiles, np.float32(127.5), out=tiles)
        tiles -= np.float32(1.0)
        self._glass_input = tiles[0].copy()
        mode = self.options.mode
        if mode is Mode.IN:
            image, _, _ = self._timed("collect", self.backend.collect, tiles, self.flavour, image=True)
        else:
            if mode is Mode.TIN:
                assert self.stats is not None
                nbr_mean, nbr_std = self.stats.neighbourhoods(0, np.zeros(n, dtype=np.int64))
            else:
                _, mean, std = self._timed("collect", self.backend.collect, tiles, self.flavour, image=False)
                self._glass_stats = (np.array(mean[0], np.float32), np.array(std[0], np.float32))
                nbr_mean, nbr_std = self._glass_neighbourhood(n)
            image = self._timed("infer", self.backend.infer, tiles, nbr_mean, nbr_std)
        t = self.plan.tile
        scratch = np.empty((1, self.manifest.out_channels, t, t), dtype=np.float32)
        planar = network_output_to_uint8(self.plan.crop_output(np.asarray(image)[:1]), scratch)[0]
        self.background_fill = np.median(planar.reshape(planar.shape[0], -1), axis=1).astype(np.uint8)

    def _glass_neighbourhood(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """KIN/DN's op inputs for a glass tile among glass tiles: a one-tile table of the mode's
        own kind, so the floor and the degenerate rule condition it as they would in the image."""
        assert self._glass_stats is not None
        mean, std = self._glass_stats
        channels = self.manifest.total_channels
        o = self.options
        if o.mode is Mode.DN:
            assert isinstance(self.stats, DenseStats)
            table: NeighbourhoodSource = DenseStats(
                1, 1, channels, o.std_floor, None, o.degenerate, o.degenerate_ratio
            )
            table.slide = self.stats.slide
        else:
            table = KernelStats(1, 1, channels, o.kernel, o.std_floor, None)
        zero = np.zeros(1, dtype=np.int64)
        table.record(0, zero, mean[None], std[None])
        nbr_mean, nbr_std = table.neighbourhoods(0, zero)
        return np.repeat(nbr_mean, n, axis=0), np.repeat(nbr_std, n, axis=0)

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

    def _prepass(self, moments: bool, tissue: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """One read of the image before any tile: the ``T x T`` area thumbnail when ``moments``
        (returns :meth:`_thumbnail_moments` of it) and, when ``tissue``, the tissue thumbnail,
        from which ``self.tissue`` is detected (``runtime/tissue.py``)."""
        t, plan = self.plan.tile, self.plan
        if moments:
            try:
                check_map_sizes(t, 0, self.manifest.strides, self.manifest.network_multiple)
            except DnrtError:
                raise DnrtError(
                    f"TIN and DN's 'slide' rule run the network on a {t} x {t} thumbnail: the tile must be a "
                    f"multiple of {self.manifest.input_multiple} for this model"
                ) from None
        thumb = AreaThumbnail(plan.height, plan.width, self.manifest.in_channels, t) if moments else None
        block = mask_block(t, plan.height, plan.width)
        tissue_thumb = (
            TissueThumbnail(plan.height, plan.width, self.manifest.in_channels, block) if tissue else None
        )
        reader = self._reader()
        try:
            self.progress(0, "thumbnail")  # a pass over the whole slide: the bar says so
            for band in reader:
                y0, y1 = plan.output_extent(band.row)
                rows = band.pixels[y0 - band.y0 : y1 - band.y0]
                if thumb is not None:
                    self._timed("thumbnail", thumb.add, y0, rows)
                if tissue_thumb is not None:
                    self._timed("thumbnail", tissue_thumb.add, y0, rows)
                self.progress(0, f"thumbnail {band.row + 1}/{plan.rows} rows")
        finally:
            reader.close()
        if tissue_thumb is not None:
            self.tissue = self._timed(
                "thumbnail",
                detect_tissue,
                tissue_thumb.result(),
                tissue_thumb.counts(),
                block,
                t,
                plan.margin,
                (plan.rows, plan.cols),
                self.options.tissue_threshold,
            )
        return self._thumbnail_moments(thumb.result()) if thumb is not None else None

    def _thumbnail_moments(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Collect the statistics (``[L]`` mean and std) of the image area-downscaled to ``T x T``
        (:meth:`_prepass`): TIN's statistics, and the slide-level ones of DN's ``slide`` rule.

        The thumbnail is the whole image, so it gets no margin (a reflect margin
        would only add mirrored copies of its own border to the statistics);
        it is fed to the network in float, not re-quantized to uint8.
        """
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
        slide_rule = isinstance(self.stats, DenseStats) and self.stats.needs_slide_statistics
        tissue = self.options.background == "skip" or self.options.detect_tissue
        if slide_rule or mode is Mode.TIN or tissue:
            # Both schedules run the same pre-pass first, so they stay bit-identical.
            moments = self._prepass(slide_rule or mode is Mode.TIN, tissue)
            if slide_rule:
                assert isinstance(self.stats, DenseStats)
                self.stats.slide = moments
            if mode is Mode.TIN:
                assert moments is not None
                self.stats = GlobalStats(*moments)  # every tile normalized with the thumbnail's statistics
        if self.options.background == "skip" and self.tissue is not None and self.tissue.background_tiles:
            self._prepare_background()
            if self.stats is not None and not isinstance(self.stats, GlobalStats):
                reach = self.stats.lookahead  # DN reads 3 x 3 tiles, KIN k x k
                self._reads_background = dilate(self.tissue.tiles, reach) & ~self.tissue.tiles
            self._skipping = True
        if mode is Mode.IN:
            self._single_pass(sink, collect=True)
        elif mode is Mode.TIN:
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
        if self.stats is None:  # only KIN and DN wait for statistics
            raise RuntimeError(f"{self.options.mode.value}: no statistics tables to wait for")
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
