"""Python API: ``dnrt.translate(input, output, model=...)`` for files, ``dnrt.Translator`` in memory.

Example::

    import dnrt

    report = dnrt.translate("slide.tif", "out.tif", model="bundle/", mode="dn")
    print(report.seconds["total"], report.megapixels_per_s)

    with dnrt.Translator("bundle/", mode="kin") as translator:
        out = translator.translate(rgb)          # rgb: uint8 [H, W, 3] -> uint8 [H, W, 3]

``on_progress(done, total)`` follows a run and can stop it: returning ``False`` (or raising
:class:`~dnrt.errors.Cancelled`) ends the run with ``Cancelled``; ``translate_file`` then
leaves no output behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from dnrt.bundle import Bundle, load_bundle
from dnrt.errors import Cancelled, DnrtError
from dnrt.runtime.backends.base import Backend
from dnrt.runtime.plan import TilePlan
from dnrt.runtime.progress import Progress
from dnrt.runtime.scheduler import PhaseTimes, ScheduleOptions, Scheduler, graphs_for, resolve_overlap
from dnrt.semantics import DEGENERATE_DEFAULT, DEGENERATE_RATIO_DEFAULT, STD_FLOOR_DEFAULT, Mode

__all__ = ["Cancelled", "ProgressCallback", "TranslateReport", "Translator", "translate"]

#: ``on_progress(done, total)``: tile runs done so far and in all; return False to cancel.
ProgressCallback = Callable[[int, int], "bool | None"]


@dataclass
class TranslateReport:
    """What one translation did and how long each phase took (``--json`` prints this).

    Phase times are summed inside each phase's own thread; reading, the model
    and writing overlap, so they may add up to more than ``total``.
    """

    mode: str
    schedule: str
    backend: str
    height: int
    width: int
    channels: int
    tile: int
    margin: int
    batch: int
    rows: int
    cols: int
    tiles: int
    tile_runs: int
    seconds: dict[str, float] = field(default_factory=dict)
    megapixels_per_s: float = 0.0
    #: Peak resident memory of the whole process so far (getrusage), in MiB.
    peak_rss_mb: float = 0.0
    overlap: bool = False
    margin_source: str = "image"
    #: DN's degenerate-statistics rule and ratio (None for the modes it does not apply to).
    degenerate: str | None = None
    degenerate_ratio: float | None = None
    input: str | None = None
    output: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    On Linux the kernel's high-water mark of the process's own address space (``VmHWM``),
    because ``ru_maxrss`` survives ``exec``: a child started by a big parent (a benchmark
    harness with PyTorch loaded) would report at least the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class ArraySource:
    """An in-memory ``[H, W, C]`` uint8 image with the reader interface the scheduler drives."""

    def __init__(self, pixels: np.ndarray) -> None:
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3:
            raise DnrtError(f"expected an image array [H, W, C], got shape {pixels.shape}")
        if pixels.dtype != np.uint8:
            raise DnrtError(f"expected uint8 pixels, got {pixels.dtype} (convert to 8-bit first)")
        if pixels.shape[0] < 1 or pixels.shape[1] < 1:
            raise DnrtError(f"the image is empty ({pixels.shape[0]} x {pixels.shape[1]})")
        self.pixels = pixels
        self.height, self.width, self.channels = pixels.shape

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


class ArraySink:
    """Collects output bands into one array (a new one, or ``out``: any strides, written in place)."""

    def __init__(self, height: int, width: int, channels: int, out: np.ndarray | None = None) -> None:
        if out is None:
            out = np.empty((height, width, channels), dtype=np.uint8)
        elif out.shape != (height, width, channels) or out.dtype != np.uint8:
            raise DnrtError(
                f"out must be a uint8 array of shape {(height, width, channels)}, got {out.dtype} {out.shape}"
            )
        elif not out.flags.writeable:
            raise DnrtError("out is read-only")
        self.pixels = out
        self.row = 0

    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:  # noqa: ARG002 - always copied
        self.pixels[self.row : self.row + band.shape[0]] = band
        self.row += band.shape[0]


def _bundle(model: str | os.PathLike | Bundle | None, backend: str | Backend) -> Bundle:
    if isinstance(model, Bundle):
        return model
    if model is None:
        if isinstance(backend, Backend):
            return backend.bundle
        raise DnrtError("no model given: pass model=<bundle directory> (written by export-model)")
    return load_bundle(model)


class _ProgressHook:
    """Feeds ``on_progress(done, total)`` from the scheduler's ``(n, phase)`` reports.

    The callback runs only on the thread that started the run (the scheduler may count tiles in
    a worker thread; those counts are reported at the caller thread's next report), never
    concurrently with itself, and once per change of ``done``: first ``(0, total)`` before any
    work, last ``(total, total)``.
    """

    def __init__(self, callback: ProgressCallback, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self.reported = -1
        self._lock = threading.Lock()
        self._thread = threading.get_ident()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
        if threading.get_ident() == self._thread:
            self.report()

    def report(self) -> None:
        with self._lock:
            done = self.done
        if done == self.reported:
            return
        self.reported = done
        if self.callback(done, self.total) is False:
            raise Cancelled()


class Translator:
    """A model bundle loaded on a backend, ready to translate images in one mode.

    ``backend`` is a name (``auto``, ``ort``, ``ort-cuda``, ``torch``, ``torch-cuda``, ``trt``)
    or an already constructed :class:`Backend`; ``backend_options`` go to its constructor
    (e.g. ``{"precision": "fp16"}``). Tile and margin default to the bundle's; ``batch`` to
    the backend's ``preferred_batch`` (1 for ONNX Runtime on the CPU, else 4). ``overlap``
    (None: the backend decides) runs collect and infer side by side in streaming KIN/DN.
    ``progress`` shows a tqdm bar (None: on a terminal); ``on_progress(done, total)`` is called
    on the caller's thread as tile runs complete, and returning False cancels the run
    (:class:`Cancelled`); it can be changed between runs through the attribute.

    ``margin_source`` is ``"image"`` (default: each tile's margin is the real neighbouring
    pixels) or ``"tile"`` (the reference's self-reflection, for exact parity with the published
    pipeline). ``degenerate`` is DN's rule for (near-)degenerate statistics, ``"reference"``
    being the published arithmetic plus the std floor (docs/semantics.md section 8).

    ``to_gray`` lets a 1-channel model take RGB input (BT.601 luma); ``intensity_range``
    (``"LO:HI"``) maps 16-bit input ``LO..HI`` onto 0..255 (runtime/io/intensity.py has the rules).
    """

    def __init__(
        self,
        model: str | os.PathLike | Bundle | None = None,
        *,
        mode: str | Mode = Mode.DN,
        schedule: str = "streaming",
        backend: str | Backend = "auto",
        tile: int | None = None,
        margin: int | None = None,
        batch: int | None = None,
        kin_kernel: int = 5,
        kin_kernel_type: str = "constant",
        std_floor: float = STD_FLOOR_DEFAULT,
        degenerate: str = DEGENERATE_DEFAULT.value,
        degenerate_ratio: float = DEGENERATE_RATIO_DEFAULT,
        margin_source: str = "image",
        overlap: bool | None = None,
        threads: int | None = None,
        progress: bool | None = False,
        backend_options: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        # Gray images (issue 14): RGB into a 1-channel model, 16-bit intensity range "LO:HI".
        to_gray: bool = False,
        intensity_range: str | tuple[int, int] | None = None,
    ) -> None:
        from dnrt.runtime.io.intensity import parse_intensity_range

        self.to_gray = bool(to_gray)
        if isinstance(intensity_range, str):
            intensity_range = parse_intensity_range(intensity_range)
        elif intensity_range is not None:
            intensity_range = parse_intensity_range(f"{intensity_range[0]}:{intensity_range[1]}")
        self.intensity_range = intensity_range
        try:
            mode = Mode(mode)
        except ValueError:
            raise DnrtError(f"unknown mode {mode!r} (expected one of in, tin, kin, dn)") from None
        self.bundle = _bundle(model, backend)
        manifest = self.bundle.manifest
        self.tile = int(tile if tile is not None else manifest.tile)
        self.margin = int(margin if margin is not None else manifest.margin)
        # Validate everything cheap before the backend loads anything.
        self.options = ScheduleOptions(
            mode=mode,
            schedule=schedule,
            batch=batch if batch is not None else 1,
            std_floor=std_floor,
            degenerate=degenerate,
            degenerate_ratio=degenerate_ratio,
            kin_kernel=kin_kernel,
            kin_kernel_type=kin_kernel_type,
            overlap=overlap,
        )
        TilePlan.create(
            self.tile,
            self.tile,
            self.tile,
            self.margin,
            manifest.strides,
            margin_source,
            manifest.network_multiple,
        )
        self.margin_source = margin_source
        if mode is Mode.KIN:
            from dnrt.semantics import kin_kernel as make_kernel

            make_kernel(kin_kernel, kin_kernel_type)
        self.progress = progress
        self.on_progress = on_progress
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            from dnrt.runtime.backends import get_backend

            context = {"tile": self.tile, "margin": self.margin, "batch": batch, "threads": threads}
            self.backend = get_backend(backend, self.bundle, context=context, **(backend_options or {}))
        if batch is None:
            batch = int(getattr(self.backend, "preferred_batch", 4))
            self.options = dataclasses.replace(self.options, batch=batch)
        # Tell the backend what it will run before it loads anything: the graphs of the mode, and
        # one or two concurrent passes.
        self.backend.expect_graphs(graphs_for(self.options.mode))
        set_concurrency = getattr(self.backend, "set_concurrency", None)
        if set_concurrency is not None:
            set_concurrency(resolve_overlap(self.options, self.backend))
        self.last_report: TranslateReport | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> Translator:
        if not self.backend.active:
            self.backend.activate()
        return self

    def close(self) -> None:
        if self.backend.active:
            self.backend.deactivate()

    def __enter__(self) -> Translator:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- work --------------------------------------------------------------------------
    def _check_source(self, source: Any) -> None:
        manifest = self.bundle.manifest
        if source.channels != manifest.in_channels:
            what = "a gray" if source.channels == 1 else f"a {source.channels}-channel"
            raise DnrtError(
                f"the model takes {manifest.in_channels}-channel images; the input is {what} image"
            )

    def _run(self, source: Any, sink: Any, **report_extra: Any) -> TranslateReport:
        manifest = self.bundle.manifest
        self._check_source(source)
        plan = TilePlan.create(
            source.height,
            source.width,
            self.tile,
            self.margin,
            manifest.strides,
            self.margin_source,
            manifest.network_multiple,
        )
        self.open()
        times = PhaseTimes()
        start = time.perf_counter()
        scheduler = Scheduler(self.backend, plan, self.options, times=times)
        with Progress(scheduler.total_tile_runs, enabled=self.progress) as bar:
            scheduler.progress = bar
            hook = (
                None
                if self.on_progress is None
                else _ProgressHook(self.on_progress, scheduler.total_tile_runs)
            )
            if hook is not None:

                def report(n: int, phase: str) -> None:
                    bar(n, phase)
                    hook.add(n)

                scheduler.progress = report
                hook.report()  # (0, total): the caller may cancel before any work
            scheduler.run(source, sink)
            if hook is not None:
                hook.report()  # counts made in worker threads after the last caller-thread report
            closer = getattr(sink, "close", None)
            if closer is not None:
                t0 = time.perf_counter()
                closer()
                times.add("write", time.perf_counter() - t0)
        total = time.perf_counter() - start
        seconds = {k: round(v, 4) for k, v in times.as_dict().items()}
        seconds["total"] = round(total, 4)
        report = TranslateReport(
            mode=self.options.mode.value,
            schedule=self.options.schedule,
            backend=self.backend.describe(),
            height=source.height,
            width=source.width,
            channels=manifest.out_channels,
            tile=self.tile,
            margin=self.margin,
            batch=self.options.batch,
            rows=plan.rows,
            cols=plan.cols,
            tiles=plan.tiles,
            tile_runs=scheduler.total_tile_runs,
            seconds=seconds,
            megapixels_per_s=round(source.height * source.width / 1e6 / total, 3) if total > 0 else 0.0,
            peak_rss_mb=round(peak_rss_mb(), 1),
            overlap=scheduler.overlap,
            margin_source=self.margin_source,
            degenerate=self.options.degenerate.value if self.options.mode is Mode.DN else None,
            degenerate_ratio=self.options.degenerate_ratio if self.options.mode is Mode.DN else None,
            **report_extra,
        )
        self.last_report = report
        return report

    def translate(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Translate an in-memory image ``uint8 [H, W, C]``; returns ``uint8 [H, W, C_out]``.

        ``out`` (optional, any strides, must not overlap ``rgb``) receives the result in place
        and is returned; after an error or a cancellation its content is unspecified.
        """
        source = ArraySource(rgb)
        if self.to_gray and self.bundle.manifest.in_channels == 1 and source.channels == 3:
            from dnrt.runtime.io.intensity import luminance

            source = ArraySource(luminance(source.pixels))
        sink = ArraySink(source.height, source.width, self.bundle.manifest.out_channels, out)
        self._run(source, sink)
        return sink.pixels

    def translate_file(
        self,
        input: str | os.PathLike,
        output: str | os.PathLike,
        *,
        compression: str = "zlib",
        pyramid: bool = False,
        overwrite: bool = False,
        writer_tile: int = 512,
    ) -> TranslateReport:
        """Translate an image file into a tiled (Big)TIFF; the output appears only when complete."""
        from dnrt.runtime.io import check_output_path, open_image

        check_output_path(output, overwrite, input_path=input)
        with open_image(input) as source:
            return self._translate_source(source, input, output, compression, pyramid, overwrite, writer_tile)

    def _translate_source(
        self,
        source: Any,
        input: str | os.PathLike,
        output: str | os.PathLike,
        compression: str,
        pyramid: bool,
        overwrite: bool,
        writer_tile: int,
    ) -> TranslateReport:
        from dnrt.runtime.io import open_writer
        from dnrt.runtime.io.intensity import prepare_source
        from dnrt.runtime.io.writer import check_compression

        # Everything that can be refused is refused before the output file is created.
        check_compression(output, compression)
        source = prepare_source(
            source,
            self.bundle.manifest.in_channels,
            to_gray=self.to_gray,
            intensity_range=self.intensity_range,
        )
        self._check_source(source)
        TilePlan.create(
            source.height,
            source.width,
            self.tile,
            self.margin,
            self.bundle.manifest.strides,
            self.margin_source,
            self.bundle.manifest.network_multiple,
        )
        self.open()
        writer = open_writer(
            output,
            source.height,
            source.width,
            self.bundle.manifest.out_channels,
            tile=writer_tile,
            compression=compression,
            pyramid=pyramid,
            source=source,
            overwrite=overwrite,
        )
        try:
            # The writer's close() (the atomic rename) runs inside _run, timed as writing.
            return self._run(source, writer, input=str(input), output=str(output))
        except BaseException:
            writer.abort()  # Ctrl-C included: the temporary file goes, the destination is untouched
            raise


def translate(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: str | os.PathLike | Bundle | None = None,
    *,
    compression: str = "zlib",
    pyramid: bool = False,
    overwrite: bool = False,
    writer_tile: int = 512,
    **options: Any,
) -> TranslateReport:
    """Translate the image file ``input`` into ``output`` (tiled BigTIFF, or PNG/JPEG) with a bundle.

    ``options`` are :class:`Translator`'s (mode, schedule, backend, tile, margin, margin_source,
    batch, kin_kernel, kin_kernel_type, std_floor, degenerate, degenerate_ratio, overlap, threads,
    progress, backend_options, on_progress, to_gray, intensity_range). Checks run cheapest
    first: the output path, then the input image, then the bundle, then the backend loads.
    """
    from dnrt.runtime.io import check_output_path, open_image

    check_output_path(output, overwrite, input_path=input)
    with open_image(input) as source:
        translator = Translator(model, **options)
        try:
            return translator._translate_source(
                source, input, output, compression, pyramid, overwrite, writer_tile
            )
        finally:
            translator.close()
