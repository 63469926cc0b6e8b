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
from dnrt.runtime.backends.base import Backend, BackendContext
from dnrt.runtime.io.reader import ArraySource
from dnrt.runtime.options import FILE_FIELDS, GPU_BACKENDS, TranslateOptions
from dnrt.runtime.plan import TilePlan
from dnrt.runtime.progress import Progress
from dnrt.runtime.scheduler import PhaseTimes, ScheduleOptions, Scheduler, graphs_for, resolve_overlap
from dnrt.runtime.tissue import TissueMask, check_mask_path, resolve_background
from dnrt.semantics import Mode

__all__ = ["Cancelled", "ProgressCallback", "TranslateOptions", "TranslateReport", "Translator", "translate"]

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
    #: Network runs over tiles (KIN and DN run each tile twice; skipped tiles run none).
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
    # Slide reading (issue 17): reader, level, source / level / processed microns per pixel,
    # resampling, notes (ResolutionChoice.to_dict()); None for in-memory images.
    resolution: dict[str, Any] | None = None
    # -- background skipping (docs/semantics.md section 11)
    #: ``skip`` or ``translate``: what ``background`` (``auto`` by default) chose for this image.
    background: str = "translate"
    #: Fraction of the image's area detected as tissue; None when tissue was not looked for.
    tissue_fraction: float | None = None
    #: Tiles filled with ``background_fill`` without running the network.
    tiles_skipped: int = 0
    #: The colour (one value per output channel) skipped tiles were filled with.
    background_fill: list[int] | None = None
    #: Where the tissue mask PNG was written, if asked for.
    tissue_mask: str | None = None
    #: The pre-flight's estimates (runtime/budget.py Estimate): peak memory, output size, free disk.
    preflight: dict[str, Any] | None = None

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


class ArraySink:
    """Collects output bands into one array (a new one, or ``out``: any strides, written in place)."""

    def __init__(
        self,
        height: int,
        width: int,
        channels: int,
        out: np.ndarray | None = None,
        source: np.ndarray | None = None,
    ) -> None:
        if out is None:
            out = np.empty((height, width, channels), dtype=np.uint8)
        elif out.shape != (height, width, channels) or out.dtype != np.uint8:
            raise DnrtError(
                f"out must be a uint8 array of shape {(height, width, channels)}, got {out.dtype} {out.shape}"
            )
        elif not out.flags.writeable:
            raise DnrtError("out is read-only")
        elif source is not None and np.may_share_memory(out, source):
            # Bands are written while later tiles still read their margins from the input.
            raise DnrtError("out must not overlap the input image (pass a separate array)")
        self.pixels = out
        self.row = 0

    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:
        # ``copy`` is part of the sink interface; this sink copies the band in any case.
        self.pixels[self.row : self.row + band.shape[0]] = band
        self.row += band.shape[0]


def _bundle(model: str | os.PathLike | Bundle | None, backend: Backend | None) -> Bundle:
    if isinstance(model, Bundle):
        return model
    if model is None:
        if backend is not None:
            return backend.bundle
        raise DnrtError("no model given: pass model=<bundle directory> (written by export-model)")
    if not isinstance(model, str | os.PathLike):
        raise DnrtError(f"model must be a bundle directory or a Bundle, got {model!r}", exit_code=2)
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
        try:
            answer = self.callback(done, self.total)
        except Cancelled:
            raise
        except Exception as exc:
            # The caller's bug, reported as such (the run stops and leaves no output); the
            # original stays attached as __cause__ for a debugger.
            raise DnrtError(f"the progress callback raised {type(exc).__name__}: {exc}") from exc
        if answer is False:
            raise Cancelled()


class Translator:
    """A model bundle loaded on a backend, ready to translate images in one mode.

    The settings are one :class:`~dnrt.runtime.options.TranslateOptions` — passed as
    ``options``, as its fields' keywords (``Translator(bundle, mode="kin", tile=512)``), or both
    (the keywords override). Tile and margin default to the bundle's, ``batch`` to the backend's
    ``preferred_batch`` (1 for ONNX Runtime on the CPU, else 4); see ``TranslateOptions`` for
    every field. ``backend`` may also be an already constructed :class:`Backend`;
    ``backend_options`` go to a named backend's constructor beside the options' precision and
    device. ``progress`` shows a tqdm bar (None: on a terminal); ``on_progress(done, total)``
    is called on the caller's thread as tile runs complete, and returning False cancels the
    run (:class:`Cancelled`); it can be changed between runs through the attribute.

    ``to_gray`` lets a 1-channel model take RGB input (BT.601 luma); ``intensity_range``
    (``"LO:HI"``) maps 16-bit input ``LO..HI`` onto 0..255 (runtime/io/intensity.py has the rules).
    """

    def __init__(
        self,
        model: str | os.PathLike | Bundle | None = None,
        options: TranslateOptions | None = None,
        *,
        backend: str | Backend | None = None,
        progress: bool | None = False,
        backend_options: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
        **settings: Any,
    ) -> None:
        # Validate everything cheap before the backend loads anything.
        instance = backend if isinstance(backend, Backend) else None
        if backend is not None and instance is None:
            settings["backend"] = backend
        self.options = _options(options, settings)
        if on_progress is not None and not callable(on_progress):
            raise DnrtError(f"on_progress must be callable, got {on_progress!r}", exit_code=2)
        if backend_options is not None and not isinstance(backend_options, dict):
            raise DnrtError(f"backend_options must be a dict, got {backend_options!r}", exit_code=2)
        opts = self.options
        # resource bounds (issue 16): options that size memory or threads, before anything loads
        from dnrt.runtime.budget import check_kin_kernel_size, check_threads

        check_threads(opts.threads)
        if opts.mode is Mode.KIN:
            check_kin_kernel_size(opts.kin_kernel)
        self.bundle = _bundle(model, instance)
        self.tile, self.margin = self._check_geometry(self.bundle, opts)
        self.margin_source = opts.margin_source
        self.progress = progress
        self.on_progress = on_progress
        if instance is not None:
            self.backend = instance
        else:
            from dnrt.runtime.backends import get_backend

            context = BackendContext(
                tile=self.tile,
                margin=self.margin,
                batch=opts.batch,
                threads=opts.threads,
                device_index=opts.device or 0,
            )
            kwargs = {**opts.backend_options(), **(backend_options or {})}
            self.backend = get_backend(opts.backend, self.bundle, context=context, **kwargs)
        batch = opts.batch if opts.batch is not None else int(self.backend.preferred_batch)
        self.schedule_options = ScheduleOptions(
            mode=opts.mode,
            schedule=opts.schedule,
            batch=batch,
            std_floor=opts.std_floor,
            degenerate=opts.degenerate,
            degenerate_ratio=opts.degenerate_ratio,
            kin_kernel=opts.kin_kernel,
            kin_kernel_type=opts.kin_kernel_type,
            overlap=opts.overlap,
            tissue_threshold=opts.tissue_threshold,
        )
        #: The tissue mask of the last run, when tissue was looked for (background skipping).
        self.last_tissue: TissueMask | None = None
        # Tell the backend what it will run before it loads anything: the graphs of the mode, and
        # one or two concurrent passes.
        self.backend.expect_graphs(graphs_for(opts.mode))
        self.backend.set_concurrency(resolve_overlap(self.schedule_options, self.backend))
        self.last_report: TranslateReport | None = None

    @staticmethod
    def _check_geometry(bundle: Bundle, options: TranslateOptions) -> tuple[int, int]:
        """The run's tile and margin (the options', else the bundle's), checked against the
        model's strides on a single tile; each image's own plan is made per run."""
        manifest = bundle.manifest
        tile = options.tile if options.tile is not None else int(manifest.tile)
        margin = options.margin if options.margin is not None else int(manifest.margin)
        TilePlan.create(
            tile, tile, tile, margin, manifest.strides, options.margin_source, manifest.network_multiple
        )
        return tile, margin

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
            hint = ""
            if manifest.in_channels == 1 and source.channels == 3:
                from dnrt.runtime.io.intensity import TO_GRAY_TEXT

                hint = f": set to_gray=True (--to-gray) to convert it ({TO_GRAY_TEXT})"
            raise DnrtError(
                f"the model takes {manifest.in_channels}-channel images; the input is {what} image{hint}"
            )

    def _plan(self, source: Any) -> TilePlan:
        return TilePlan.create(
            source.height,
            source.width,
            self.tile,
            self.margin,
            self.bundle.manifest.strides,
            self.margin_source,
            self.bundle.manifest.network_multiple,
        )

    def _run(
        self,
        source: Any,
        sink: Any,
        plan: TilePlan | None = None,
        tissue_mask: str | os.PathLike | None = None,
        overwrite: bool = False,
        estimate: Any = None,
        **report_extra: Any,
    ) -> TranslateReport:
        manifest = self.bundle.manifest
        if plan is None:
            self._check_source(source)
            plan = self._plan(source)
        # -- background skipping: decided for this image; tissue is detected when a mask is asked for
        background = resolve_background(self.options.background, source, self.tile)
        schedule_options = dataclasses.replace(
            self.schedule_options, background=background, detect_tissue=tissue_mask is not None
        )
        if estimate is None:
            estimate = self._preflight(source, plan)
        times = PhaseTimes()
        scheduler = Scheduler(self.backend, plan, schedule_options, times=times)
        # The bar is up before the model loads (pre-flight: it shows every phase from the start).
        with Progress(scheduler.total_tile_runs, enabled=self.progress) as bar:
            bar.note(estimate.line())
            bar(0, "loading the model")
            self.open()
            start = time.perf_counter()
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
            self.last_tissue = scheduler.tissue
            if tissue_mask is not None and scheduler.tissue is not None:
                from dnrt.runtime.tissue import write_mask_png

                t0 = time.perf_counter()
                write_mask_png(scheduler.tissue, tissue_mask, overwrite=overwrite)
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
            batch=self.schedule_options.batch,
            rows=plan.rows,
            cols=plan.cols,
            tiles=plan.tiles,
            tile_runs=scheduler.tile_runs,
            seconds=seconds,
            megapixels_per_s=round(source.height * source.width / 1e6 / total, 3) if total > 0 else 0.0,
            peak_rss_mb=round(peak_rss_mb(), 1),
            overlap=scheduler.overlap,
            margin_source=self.margin_source,
            degenerate=self.options.degenerate.value if self.options.mode is Mode.DN else None,
            degenerate_ratio=self.options.degenerate_ratio if self.options.mode is Mode.DN else None,
            background=background,
            tissue_fraction=None if scheduler.tissue is None else round(scheduler.tissue.tissue_fraction, 4),
            tiles_skipped=scheduler.tiles_skipped,
            background_fill=None
            if not scheduler.tiles_skipped or scheduler.background_fill is None
            else [int(v) for v in scheduler.background_fill],
            tissue_mask=None if tissue_mask is None else str(tissue_mask),
            preflight=estimate.as_dict(),
            **report_extra,
        )
        self.last_report = report
        return report

    # resource bounds (issue 16): the pre-flight, before the backend loads or the output exists
    def _preflight(
        self, source: Any, plan: TilePlan, output: Any = None, options: TranslateOptions | None = None
    ) -> Any:
        """Refuse a run that cannot fit (memory, disk) before its first tile; the estimate."""
        from dnrt.runtime.budget import (
            check_fits,
            check_kin_kernel_for_grid,
            check_tile_for_image,
            disk_free,
            estimate_run,
            output_bytes,
        )

        options = options or self.options
        run = self.schedule_options
        manifest = self.bundle.manifest
        check_tile_for_image(manifest, self.tile, source.height, source.width)
        if run.mode is Mode.KIN:
            check_kin_kernel_for_grid(run.kin_kernel, plan.rows, plan.cols)
        estimate = estimate_run(
            manifest,
            height=source.height,
            width=source.width,
            tile=self.tile,
            margin=self.margin,
            batch=run.batch,
            rows=plan.rows,
            cols=plan.cols,
            two_pass=run.schedule == "two-pass",
            overlap=resolve_overlap(run, self.backend),
            lookahead={Mode.DN: 1, Mode.KIN: run.kin_kernel // 2}.get(run.mode, 0),
            reader_bytes=int(getattr(source, "_cache_bytes", 0)),
            gpu=self.backend.name in GPU_BACKENDS,
        )
        if output is not None:
            from dnrt.runtime.io.writer import wants_pyramid

            pyramid = wants_pyramid(source.height, source.width, options.writer_tile, options.pyramid)
            estimate.output_bytes = output_bytes(
                source.height, source.width, manifest.out_channels, options.compression, pyramid
            )
            if pyramid:  # the reduced levels are spilled raw beside the destination until the end
                from dnrt.runtime.io.pyramid import spill_bytes

                estimate.output_bytes += spill_bytes(
                    source.height, source.width, manifest.out_channels, options.writer_tile
                )
            estimate.disk_free_bytes = disk_free(output)
        check_fits(estimate, force=options.force)
        return estimate

    def translate(self, rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Translate an in-memory image ``uint8 [H, W, C]``; returns ``uint8 [H, W, C_out]``.

        ``out`` (optional, any strides, must not overlap ``rgb``) receives the result in place
        and is returned; after an error or a cancellation its content is unspecified.
        """
        source = ArraySource(rgb)
        if self.options.to_gray and self.bundle.manifest.in_channels == 1 and source.channels == 3:
            from dnrt.runtime.io.intensity import luminance

            source = ArraySource(luminance(source.pixels))
        sink = ArraySink(source.height, source.width, self.bundle.manifest.out_channels, out, source.pixels)
        self._run(source, sink)
        return sink.pixels

    def translate_file(
        self,
        input: str | os.PathLike,
        output: str | os.PathLike,
        tissue_mask: str | os.PathLike | None = None,
        **settings: Any,
    ) -> TranslateReport:
        """Translate an image file into a tiled (Big)TIFF; the output appears only when complete.

        ``settings``: the file-level fields of :class:`~dnrt.runtime.options.TranslateOptions`
        (output: compression, pyramid, output_format, overwrite, writer_tile; slide reading:
        reader, level, mpp, assume_mpp, allow_upsample), defaulting to this translator's.
        ``tissue_mask``: also write the tissue mask there as a PNG (docs/semantics.md section
        11), atomically."""
        per_model = sorted(
            k for k in settings if k in TranslateOptions.field_names() and k not in FILE_FIELDS
        )
        if per_model:
            raise DnrtError(
                f"{', '.join(per_model)} cannot change per file; make a Translator with them", exit_code=2
            )
        options = _options(self.options, settings)
        input, output = _file_arg("input", input), _file_arg("output", output)
        _check_output(output, options, input)
        if tissue_mask is not None:
            check_mask_path(_file_arg("tissue_mask", tissue_mask), options.overwrite, input, output)
        source, choice = _open_source(input, options, self.bundle.manifest.mpp)
        with source:
            return self._translate_source(
                source, input, output, options, resolution=choice.to_dict(), tissue_mask=tissue_mask
            )

    def _translate_source(
        self,
        source: Any,
        input: str | os.PathLike,
        output: str | os.PathLike,
        options: TranslateOptions,
        resolution: dict[str, Any] | None = None,
        tissue_mask: str | os.PathLike | None = None,
    ) -> TranslateReport:
        from dnrt.interrupts import deferred
        from dnrt.runtime.io import open_writer
        from dnrt.runtime.io.intensity import prepare_source

        # Everything that can be refused is refused before the output file is created.
        source = prepare_source(
            source,
            self.bundle.manifest.in_channels,
            to_gray=options.to_gray,
            intensity_range=options.intensity_range,
        )
        self._check_source(source)
        plan = self._plan(source)
        estimate = self._preflight(source, plan, output, options)
        # The model loads in _run, under the progress bar (a TensorRT build can take minutes);
        # a failure there aborts the writer like any other.
        writer = None
        try:
            # A signal while the writer creates its temporary waits until the writer is here to
            # abort it (dnrt.interrupts.deferred).
            with deferred():
                writer = open_writer(
                    output,
                    source.height,
                    source.width,
                    self.bundle.manifest.out_channels,
                    tile=options.writer_tile,
                    compression=options.compression,
                    pyramid=options.pyramid,
                    source=source,
                    overwrite=options.overwrite,
                    fmt=options.output_format,
                )
            # The writer's close() (the atomic rename) runs inside _run, timed as writing.
            return self._run(
                source,
                writer,
                plan=plan,
                tissue_mask=tissue_mask,
                overwrite=options.overwrite,
                estimate=estimate,
                input=str(input),
                output=str(output),
                resolution=resolution,
            )
        except BaseException:
            if writer is not None:  # Ctrl-C included: the temporary goes, the destination is untouched
                writer.abort()
            raise


def _options(options: TranslateOptions | None, settings: dict[str, Any]) -> TranslateOptions:
    """``options`` with the keyword ``settings`` applied; every value validated once, here."""
    if options is not None and not isinstance(options, TranslateOptions):
        raise DnrtError(f"options must be a TranslateOptions, got {type(options).__name__}", exit_code=2)
    unknown = sorted(set(settings) - set(TranslateOptions.field_names()))
    if unknown:
        raise DnrtError(f"unknown translation option(s): {', '.join(unknown)}", exit_code=2)
    if options is None:
        return TranslateOptions(**settings)
    return options.replace(**settings) if settings else options


def _open_source(
    input: str | os.PathLike,
    options: TranslateOptions,
    default_mpp: Callable[[], float | None] | float | None,
) -> tuple[Any, Any]:
    """The image at the options' level / resolution (``default_mpp``: the bundle's)."""
    from dnrt.runtime.io.resolution import open_at_resolution

    return open_at_resolution(
        input, options.resolution_request(), reader=options.reader, default_mpp=default_mpp
    )


def _file_arg(name: str, value: Any) -> str | os.PathLike:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise DnrtError(f"{name} must be a file path, got {value!r}", exit_code=2)
    return value


def _check_output(output: str | os.PathLike, options: TranslateOptions, input: str | os.PathLike) -> None:
    from dnrt.runtime.io import check_output_path
    from dnrt.runtime.io.writer import check_compression, output_format

    check_output_path(output, options.overwrite, input_path=input)
    output_format(output, options.output_format)
    check_compression(output, options.compression)


def translate(
    input: str | os.PathLike,
    output: str | os.PathLike,
    model: str | os.PathLike | Bundle | None = None,
    options: TranslateOptions | None = None,
    *,
    progress: bool | None = False,
    backend_options: dict[str, Any] | None = None,
    on_progress: ProgressCallback | None = None,
    tissue_mask: str | os.PathLike | None = None,
    **settings: Any,
) -> TranslateReport:
    """Translate the image file ``input`` into ``output`` (tiled BigTIFF, or PNG/JPEG) with a bundle.

    ``options`` (a :class:`~dnrt.runtime.options.TranslateOptions`) and/or its fields as
    keywords (mode, schedule, backend, tile, margin, margin_source, batch, kin_kernel,
    kin_kernel_type, std_floor, degenerate, degenerate_ratio, overlap, threads, precision,
    device, background, tissue_threshold; output: compression, pyramid, output_format,
    overwrite, writer_tile, force; slide reading: reader, level, mpp, assume_mpp, allow_upsample;
    gray images: to_gray, intensity_range); ``progress``, ``backend_options`` and
    ``on_progress`` as for :class:`Translator`; ``tissue_mask``: also write the tissue mask PNG
    there. Checks run cheapest first: the options, the output path, then the input image, then
    the bundle, then the backend loads.

    Slides: ``reader`` is ``auto`` (by content), ``tifffile`` or ``openslide``; ``level`` reads
    that pyramid level; ``mpp`` (default: the bundle's training resolution, unless ``level`` is
    given) picks the level and resamples to that many microns per pixel (area filter);
    ``assume_mpp`` is the slide's level-0 resolution when its metadata lacks it (or is wrong);
    ``allow_upsample`` permits an ``mpp`` finer than the slide's best level.
    """
    backend = settings.pop("backend", None)
    instance = backend if isinstance(backend, Backend) else None
    if backend is not None and instance is None:
        settings["backend"] = backend
    resolved = _options(options, settings)
    input, output = _file_arg("input", input), _file_arg("output", output)
    _check_output(output, resolved, input)
    if tissue_mask is not None:
        check_mask_path(_file_arg("tissue_mask", tissue_mask), resolved.overwrite, input, output)
    loaded: list[Bundle] = []

    def bundle_mpp() -> float | None:
        # Read after the image opened (its errors come first); the Translator reuses it.
        loaded.append(_bundle(model, instance))
        return loaded[0].manifest.mpp

    source, choice = _open_source(input, resolved, bundle_mpp)
    with source:
        translator = Translator(
            loaded[0] if loaded else model,
            resolved,
            backend=instance,
            progress=progress,
            backend_options=backend_options,
            on_progress=on_progress,
        )
        try:
            return translator._translate_source(
                source, input, output, resolved, resolution=choice.to_dict(), tissue_mask=tissue_mask
            )
        finally:
            translator.close()
