"""Writing the translated image: tiled BigTIFF streamed band by band, or small Pillow outputs.

The runtime hands over bands of rows top to bottom (any heights). :class:`TileWriter` copies each
band into a bounded queue and returns at once; a writer thread cuts complete rows of TIFF tiles
out of the bands and feeds them to tifffile, which compresses them (in its own thread pool) and
writes them. Only the rows needed to complete the current tile row are buffered, so memory is
bounded by the queue budget plus one tile row, whatever the image height.

A band may also be handed over *before* it is filled (:meth:`TileWriter.open_band`): the caller
fills it left to right and publishes how many columns are final, and the writer thread encodes
each TIFF tile as soon as its columns are. Encoding then overlaps with the model computing the
same band; otherwise the last band's encoding would only start once the model has finished, a
tail in which one core works alone.

Pyramids (``pyramid=True``; ``None``: only for slide-sized outputs, see :func:`wants_pyramid`):
the reduced levels are computed while level 0 streams (see :mod:`.pyramid`) and written after
it. Where they go depends on the format and on what is known about the pixels' size
(:mod:`.slidemeta`):

- plain TIFF, pixel size and objective power unknown: further directories with
  ``NewSubfileType = 1`` (reduced resolution) in the main IFD chain. That is the layout
  OpenSlide's generic-TIFF driver reads (it walks the main IFD chain and ignores SubIFDs),
  which QuPath reads through OpenSlide, and which tifffile groups into ``series[0].levels``;
- plain TIFF with a physical pixel size or an objective power: Aperio's layout, so that
  OpenSlide reports ``openslide.mpp-x/y`` and ``openslide.objective-power``: an Aperio-style
  description on level 0, a small stripped thumbnail as directory 1 (where OpenSlide's aperio
  driver and tifffile's SVS parser expect it), then the levels as tiled directories;
- OME-TIFF (``ome=True``): OME-XML on level 0 and the levels as its SubIFDs (the layout
  QuPath and Bio-Formats prefer; OpenSlide sees level 0 only). ``subifds=True`` stores the
  levels as SubIFDs of a plain TIFF.

Compression names (``--compression``): ``zlib`` (default, lossless; alias ``deflate``), ``none``,
``lzw``, ``zstd``, ``jpeg`` (quality 90, YCbCr 4:2:0), ``webp`` (lossless); ``NAME:LEVEL`` sets
the codec's level, e.g. ``zlib:1`` (faster), ``zstd:9``, ``jpeg:95`` or ``webp:90`` (lossy WebP).
Levels: zlib/deflate 0-9, zstd 1-22, jpeg 1-100, webp 0-100 (100: lossless); ``none`` and
``lzw`` take none. ``.png`` outputs take ``zlib[:0-9]`` or ``none``; ``.jpg`` outputs take
``jpeg[:1-100]`` (bare ``zlib``, the default, means quality 90). :class:`Compression` checks all
of it, for every output kind.
Lossless codecs use the horizontal-difference predictor, which every TIFF reader supports.
"""

from __future__ import annotations

import collections
import os
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from dnrt.atomic import (
    TIFF_SUFFIXES,
    check_output_path,
    commit,
    create_temp,
    output_kind,
    remove_quietly,
    remove_stale_temps,
)
from dnrt.errors import DnrtError
from dnrt.runtime.io.pyramid import PyramidBuilder
from dnrt.runtime.io.reader import MAX_PILLOW_PIXELS, ImageSource, _short, quoted
from dnrt.runtime.io.slidemeta import aperio_description, ome_xml, output_metadata
from dnrt.runtime.options import OUTPUT_FORMATS

#: Bytes of bands waiting for the writer thread before write_band blocks (at least one band).
DEFAULT_QUEUE_BYTES = 48 << 20


@dataclass(frozen=True)
class _Codec:
    tiff: str | None  # tifffile's compression name
    attr: str | None  # imagecodecs availability attribute
    lossless: bool
    #: Inclusive range of NAME:LEVEL, or None when the codec takes no level.
    levels: tuple[int, int] | None
    default: int | None = None


# The ranges are what the codecs honour: imagecodecs (and Pillow) silently clamp anything
# outside them (zstd: levels <= 0 give the library default, 23+ give 22; JPEG below 1 gives 1),
# so an out-of-range level would do something other than asked without a word.
_CODECS = {
    "none": _Codec(None, None, True, None),
    "zlib": _Codec("zlib", "ZLIB", True, (0, 9)),
    "deflate": _Codec("zlib", "ZLIB", True, (0, 9)),
    "lzw": _Codec("lzw", "LZW", True, None),
    "zstd": _Codec("zstd", "ZSTD", True, (1, 22)),
    "jpeg": _Codec("jpeg", "JPEG8", False, (1, 100), 90),
    "webp": _Codec("webp", "WEBP", True, (0, 100)),  # 100 (or no level): lossless
}
_LEVEL = re.compile(r"[+-]?[0-9]+")


def _usage(message: str) -> DnrtError:
    return DnrtError(message, exit_code=2)


class Compression:
    """A parsed and validated ``--compression`` value: ``NAME`` or ``NAME:LEVEL``.

    The one place that knows the codecs and their level ranges; TIFF outputs use it through
    :attr:`codec`/:attr:`args`, PNG and JPEG outputs through :meth:`pillow_options`. Every
    refusal is a DnrtError with exit code 2 (a usage error). ``check_available=False`` skips
    asking imagecodecs whether the codec is built in (for outputs that do not use it).
    """

    def __init__(self, spec: str | None, *, check_available: bool = True) -> None:
        text = "none" if spec is None else str(spec).strip().lower()
        name, colon, level_text = text.partition(":")
        if name not in _CODECS:
            choices = ", ".join(n for n in _CODECS if n != "deflate")
            raise _usage(f"unknown compression {spec!r}; choose one of {choices} (optionally NAME:LEVEL)")
        info = _CODECS[name]
        level = info.default
        if colon:
            if info.levels is None:
                raise _usage(f"compression {spec!r}: {name} takes no level")
            if not _LEVEL.fullmatch(level_text.strip()):
                raise _usage(f"compression level in {spec!r} must be an integer")
            level = int(level_text)
            low, high = info.levels
            if not low <= level <= high:
                raise _usage(f"compression {spec!r}: the {name} level must be {low} to {high}")
        if check_available and info.attr is not None:
            import imagecodecs

            if not getattr(getattr(imagecodecs, info.attr, None), "available", False):
                raise DnrtError(f"compression {name!r} is not available in this imagecodecs build")
        lossless = info.lossless
        if name == "webp" and level is not None and level < 100:
            lossless = False
        self.spec = text
        self.name = name
        self.level = level
        self.explicit_level = bool(colon)
        self.codec = info.tiff
        self.lossless = lossless
        self.args: dict[str, Any] = {}
        if name == "webp":
            # method 1: about the size of libwebp's default effort at less than half the time.
            self.args = {"lossless": True, "method": 1} if lossless else {"level": level, "lossless": False}
        elif level is not None:
            self.args = {"level": level}
        # Horizontal differencing helps every lossless general-purpose codec on images.
        self.predictor = self.codec in ("zlib", "lzw", "zstd")

    def pillow_options(self, fmt: str) -> dict[str, Any]:
        """Pillow's save options for a ``"PNG"`` or ``"JPEG"`` output; DnrtError (exit 2) when
        this compression does not apply to that format."""
        if fmt == "JPEG":
            if self.name == "jpeg":
                return {"quality": self.level}
            # Bare zlib is the CLI's and the API's default (for TIFF): it means "the default" here.
            if self.name in ("zlib", "deflate") and not self.explicit_level:
                return {"quality": _CODECS["jpeg"].default}
            raise _usage(f"compression {self.spec!r} does not apply to a .jpg output (use jpeg:QUALITY)")
        if self.name == "none":
            return {"compress_level": 0}
        if self.name in ("zlib", "deflate"):
            return {"compress_level": 6 if self.level is None else self.level}
        raise _usage(f"compression {self.spec!r} does not apply to a .png output (PNG is always zlib)")

    def __repr__(self) -> str:
        return f"Compression({self.name!r}, {self.args})"


def check_compression(path: os.PathLike[str] | str, compression: str | None) -> Compression:
    """Validate ``compression`` for the output ``path`` (by its suffix) before any work starts."""
    if output_kind(path) == "pillow":
        fmt = "PNG" if Path(path).suffix.lower() == ".png" else "JPEG"
        parsed = Compression("zlib" if compression is None else compression, check_available=False)
        parsed.pillow_options(fmt)
        return parsed
    return Compression(compression)


# -- slide outputs: the default pyramid and the output format -----------------------------
#: An output is slide-sized, and gets a pyramid unless told otherwise, when either side is longer
#: than this many writer tiles (2048 px with the default 512-px tile). Below that a viewer shows
#: the whole image from level 0 at once, and levels would only add directories.
SLIDE_SIZED_TILES = 4


def wants_pyramid(height: int, width: int, tile: int, pyramid: bool | None) -> bool:
    """``pyramid`` when given; for None, whether the output is slide-sized (:data:`SLIDE_SIZED_TILES`)."""
    if pyramid is None:
        return max(height, width) > SLIDE_SIZED_TILES * tile
    return bool(pyramid)


def is_ome_name(path: os.PathLike[str] | str) -> bool:
    """Whether the name says OME-TIFF (``.ome.tif`` or ``.ome.tiff``, any case)."""
    return Path(path).name.lower().endswith((".ome.tif", ".ome.tiff"))


def output_format(path: os.PathLike[str] | str, fmt: str | None = None) -> str:
    """``"tiff"``, ``"ome-tiff"`` or ``"pillow"`` (PNG/JPEG) for the output ``path`` and the
    requested ``fmt`` (None: by the name). DnrtError (exit 2) for a format that does not fit."""
    kind = output_kind(path)
    if fmt is not None:
        fmt = str(fmt).strip().lower()
        if fmt not in OUTPUT_FORMATS:
            raise _usage(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if kind == "pillow":
        if fmt is not None:
            raise _usage(f"format {fmt} needs a TIFF output (.tif), not {quoted(path)}")
        return "pillow"
    if fmt is None:
        return "ome-tiff" if is_ome_name(path) else "tiff"
    if fmt == "tiff" and is_ome_name(path):
        raise _usage(
            f"output {quoted(path)} is named as an OME-TIFF; use format ome-tiff or a name without .ome"
        )
    return fmt


def _image_name(dest: Path) -> str:
    """The output's name without its TIFF suffixes (the OME-XML image name)."""
    name = dest.name
    for suffix in (".ome.tiff", ".ome.tif", *TIFF_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


class _Aborted(Exception):
    """Raised inside the writer thread to stop tifffile when the output is abandoned."""


class _Band:
    """A band in the writer's queue: its pixels and how many leading columns are final."""

    __slots__ = ("pixels", "ready", "pushed")

    def __init__(self, pixels: np.ndarray, ready: int) -> None:
        self.pixels = pixels
        self.ready = ready
        self.pushed = False  # handed to the pyramid builder (done once, when complete)


class TileWriter:
    """Streams bands into a tiled BigTIFF written under a temporary name, renamed on :meth:`close`.

    Context manager: leaving the block normally closes (commits) the file; leaving it with any
    exception (KeyboardInterrupt included) aborts, removing the temporary file.
    """

    def __init__(
        self,
        dest: Path,
        height: int,
        width: int,
        channels: int,
        *,
        tile: int = 512,
        compression: str | None = "zlib",
        pyramid: bool = False,
        source: ImageSource | None = None,
        overwrite: bool = False,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        workers: int | None = None,
        subifds: bool = False,
        ome: bool = False,
    ) -> None:
        self.dest = dest
        self.height, self.width, self.channels = height, width, channels
        self.tile = tile
        self.compression = Compression(compression)
        self.overwrite = overwrite
        self.rows_received = 0
        self._queue_bytes = max(1, int(queue_bytes))
        self._workers = workers
        self._subifds = subifds or ome  # OME-TIFF keeps its levels in SubIFDs
        self._ome = ome
        self._meta = output_metadata(source, channels)

        self._queue: collections.deque[_Band | None] = collections.deque()
        self._filling: _Band | None = None  # the band open_band handed over, until it is complete
        self._pending = 0
        self._cond = threading.Condition()
        self._aborting = False
        self._closed = False
        self._error: BaseException | None = None

        remove_stale_temps(dest)  # left by a run that was killed (SIGKILL, power cut)
        self.temp = create_temp(dest)
        self._pyramid: PyramidBuilder | None = None
        try:
            if pyramid:
                self._pyramid = PyramidBuilder(dest, height, width, channels, tile)
        except BaseException:
            remove_quietly(self.temp)
            raise
        # Last-resort cleanup if the writer is dropped without close()/abort() (e.g. at exit).
        self._finalizer = weakref.finalize(self, _remove_all, [self.temp, *self._spill_paths()])
        self._thread = threading.Thread(target=self._run, name="dnrt-writer", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------------
    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:
        """Queue the next rows ``[h, width, channels]`` uint8; returns at once unless the queue
        budget is full. A copy is taken unless ``copy=False``, which hands the array over: the
        caller must not modify it afterwards (saves one band of memory and a copy)."""
        band = self._checked_band(band)
        if band.shape[0] == 0:
            return
        band = np.array(band, order="C", copy=True) if copy else np.ascontiguousarray(band)
        self._enqueue(_Band(band, self.width))

    def open_band(self, band: np.ndarray) -> Callable[[int], None]:
        """Hand over the next rows before they are computed; returns ``publish(x)``.

        The caller fills ``band`` (C-contiguous uint8 ``[h, width, channels]``) left to right
        and calls ``publish(x)`` whenever columns ``0 .. x-1`` are final; it must not change
        published columns. The writer thread encodes every tile whose columns are published
        meanwhile. The band is complete at ``publish(width)``; the next band may be handed
        over only then.
        """
        band = self._checked_band(band)
        if not band.flags.c_contiguous:
            raise ValueError("open_band needs a C-contiguous band (it is not copied)")
        entry = _Band(band, 0 if band.shape[0] else self.width)
        if band.shape[0]:
            self._enqueue(entry)
            self._filling = entry

        def publish(columns: int) -> None:
            if not 0 <= columns <= self.width:
                raise ValueError(f"published {columns} columns of a {self.width}-column band")
            if columns < entry.ready:
                raise ValueError(f"columns published out of order: {columns} after {entry.ready}")
            with self._cond:
                entry.ready = columns
                self._cond.notify_all()
            if columns == self.width and self._filling is entry:
                self._filling = None

        return publish

    def _checked_band(self, band: np.ndarray) -> np.ndarray:
        self._check_open()
        if self._filling is not None:
            raise ValueError("the previous band is not complete (publish all its columns first)")
        band = np.asarray(band)
        if band.ndim == 2 and self.channels == 1:
            band = band[:, :, None]
        if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (self.width, self.channels):
            raise ValueError(
                f"expected a uint8 band [h, {self.width}, {self.channels}], got {band.dtype} {band.shape}"
            )
        if self.rows_received + band.shape[0] > self.height:
            raise ValueError(
                f"band of {band.shape[0]} rows overflows the image: {self.rows_received} of "
                f"{self.height} rows already written"
            )
        return band

    def _enqueue(self, entry: _Band) -> None:
        nbytes = entry.pixels.nbytes
        with self._cond:
            while self._pending > 0 and self._pending + nbytes > self._queue_bytes:
                self._raise_if_failed()
                self._cond.wait(0.1)
            self._raise_if_failed()
            self._queue.append(entry)
            self._pending += nbytes
            self._cond.notify_all()
        self.rows_received += entry.pixels.shape[0]

    def close(self) -> None:
        """Finish the file (flush, pyramid levels) and rename it onto the destination."""
        if self._closed:
            return
        try:
            if self.rows_received != self.height or self._filling is not None:
                done = self.rows_received - (len(self._filling.pixels) if self._filling is not None else 0)
                raise ValueError(f"output closed after {done} of {self.height} rows; nothing was written")
            with self._cond:
                self._queue.append(None)  # end of level 0
                self._cond.notify_all()
            self._join()
            self._raise_if_failed()
            self._cleanup_spills()
            commit(self.temp, self.dest, self.overwrite)
            self._closed = True
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Stop writing and remove the temporary files; the destination is untouched."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._aborting = True
            self._queue.clear()
            self._pending = 0
            self._cond.notify_all()
        try:
            self._join()
        finally:
            self._cleanup_spills()
            remove_quietly(self.temp)

    def __enter__(self) -> TileWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the writer is closed")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, OSError):
            detail = error.strerror or _short(error)
            raise DnrtError(f"could not write {quoted(self.dest)}: {detail}") from error
        raise error

    def _join(self) -> None:
        # Join with a timeout so Ctrl-C reaches the main thread while it waits.
        while self._thread.is_alive():
            self._thread.join(0.2)

    def _spill_paths(self) -> list[Path]:
        return self._pyramid.paths if self._pyramid is not None else []

    def _cleanup_spills(self) -> None:
        if self._pyramid is not None:
            self._pyramid.cleanup()

    # -- writer thread -------------------------------------------------------------------
    def _next_band(self) -> _Band | None:
        with self._cond:
            while not self._queue:
                self._stop_if_aborting()
                self._cond.wait(0.1)
            self._stop_if_aborting()
            entry = self._queue.popleft()
            if entry is not None:
                self._pending -= entry.pixels.nbytes
            self._cond.notify_all()
            return entry

    def _stop_if_aborting(self) -> None:
        if self._aborting:
            raise _Aborted

    def _wait_columns(self, entry: _Band, columns: int) -> None:
        """Block until columns ``0 .. columns-1`` of ``entry`` are final. A band seen complete
        goes to the pyramid builder then (bands complete in order, each is pushed once)."""
        if entry.ready < columns:
            with self._cond:
                while entry.ready < columns:
                    self._stop_if_aborting()
                    self._cond.wait(0.1)
        if entry.ready == self.width and not entry.pushed:
            entry.pushed = True
            if self._pyramid is not None:
                self._pyramid.push(entry.pixels)

    def _level0_tiles(self):  # type: ignore[no-untyped-def]
        """Tiles of level 0 in row-major order, cut from the queued bands as their columns
        become final."""
        t, w = self.tile, self.width
        buf: np.ndarray | None = None
        filled = 0
        while True:
            entry = self._next_band()
            if entry is None:
                break
            band = entry.pixels
            pos = 0
            while pos < len(band):
                if filled == 0 and len(band) - pos >= t:
                    rows = band[pos : pos + t]  # whole tile row inside the band: no copy
                    pos += t
                    for x in range(0, w, t):
                        self._wait_columns(entry, min(x + t, w))
                        yield rows[:, x : x + t]
                    continue
                self._wait_columns(entry, w)  # rows spanning bands are copied whole
                if buf is None:
                    # A fresh buffer per tile row: tifffile may still hold views of the last one.
                    buf = np.empty((t, w, self.channels), np.uint8)
                n = min(t - filled, len(band) - pos)
                buf[filled : filled + n] = band[pos : pos + n]
                filled += n
                pos += n
                if filled < t:
                    continue
                rows, buf, filled = buf, None, 0
                for x in range(0, w, t):
                    yield rows[:, x : x + t]
        if filled:
            assert buf is not None
            for x in range(0, w, t):
                yield buf[:filled, x : x + t]
        # tifffile stops pulling once it has every tile, so code placed here may never run.

    def _shape(self, height: int, width: int) -> tuple[int, ...]:
        # tifffile wants grey images as 2-D (a trailing 1 would read as a separate-planes layout).
        return (height, width, self.channels) if self.channels > 1 else (height, width)

    def _run(self) -> None:
        try:
            import tifffile

            comp = self.compression
            tile_bytes = self.tile * self.tile * self.channels
            row_bytes = tile_bytes * -(-self.width // self.tile)
            common: dict[str, Any] = {
                "dtype": np.uint8,
                "tile": (self.tile, self.tile),
                "compression": comp.codec,
                "compressionargs": comp.args or None,
                "predictor": comp.predictor or None,
                "photometric": "rgb" if self.channels == 3 else "minisblack",
                "planarconfig": "contig" if self.channels > 1 else None,
                "metadata": None,  # no tifffile JSON description: a plain generic TIFF
                "software": "dnrt",
                "maxworkers": self._workers,
                # tifffile gathers this many bytes of tiles before encoding them in parallel;
                # its default (512 MB) would buffer most of a large image.
                "buffersize": max(min(row_bytes, 32 << 20), tile_bytes * 4),
            }
            meta = self._meta
            icc = meta.icc_profile
            extratags = [(34675, 7, len(icc), icc, True)] if icc else []
            levels = self._pyramid.levels if self._pyramid is not None else []
            # Aperio's layout for a plain TIFF with a physical pixel size or objective power
            # (see the module docstring): the description and the thumbnail in directory 1.
            aperio = meta.is_physical and not self._subifds
            if self._ome:
                description = ome_xml(self.width, self.height, self.channels, meta, _image_name(self.dest))
            elif aperio:
                description = aperio_description(
                    self.width, self.height, self.tile, comp.name, self.channels, meta
                )
            else:
                description = None

            def scaled(width: int, height: int) -> tuple[float, float] | None:
                if meta.resolution is None:
                    return None
                x, y = meta.resolution
                return x * width / self.width, y * height / self.height

            def reduced_description(width: int, height: int) -> str | None:
                if not aperio:
                    return None
                return aperio_description(
                    self.width, self.height, self.tile, comp.name, self.channels, meta, (width, height)
                )

            with tifffile.TiffWriter(self.temp, bigtiff=True) as tw:
                tw.write(
                    self._level0_tiles(),
                    shape=self._shape(self.height, self.width),
                    description=description,
                    resolution=meta.resolution,
                    resolutionunit=meta.unit,
                    extratags=extratags,
                    subifds=len(levels) if (levels and self._subifds) else None,
                    **common,
                )
                if self._pyramid is not None:
                    self._pyramid.finish()
                if aperio and levels:
                    # The smallest level (one tile at most) as the stripped thumbnail.
                    small = levels[-1]
                    shape = self._shape(small.height, small.width)
                    tw.write(
                        self._pyramid.pixels(len(levels)).reshape(shape),  # type: ignore[union-attr]
                        shape=shape,
                        description=reduced_description(small.width, small.height),
                        resolution=scaled(small.width, small.height),
                        resolutionunit=meta.unit,
                        **{**common, "tile": None},
                    )
                for i, level in enumerate(levels, start=1):
                    assert self._pyramid is not None
                    tw.write(
                        self._pyramid.tiles(i, stop=self._stop_if_aborting),
                        shape=self._shape(level.height, level.width),
                        # Aperio marks its levels as full images (tifffile's SVS parser stops
                        # at the first reduced one); elsewhere they are reduced-resolution.
                        subfiletype=0 if aperio else 1,
                        description=reduced_description(level.width, level.height),
                        resolution=scaled(level.width, level.height),
                        resolutionunit=meta.unit,
                        **common,
                    )
        except BaseException as exc:  # surfaced to the caller on its next call
            self._error = exc
            with self._cond:
                self._cond.notify_all()


def _metadata_from(source: ImageSource | None, channels: int) -> tuple[Any, Any, bytes | None]:
    if source is None:
        return None, None, None
    resolution = source.resolution
    unit = source.resolution_unit
    if resolution is None:
        unit = None
    # An ICC profile describes the colour space of the input's channels; keep it only when the
    # output has the same colour layout (grey profiles do not fit RGB data and vice versa).
    icc = source.icc_profile if (source.icc_profile and source.channels == channels) else None
    return resolution, unit, icc


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        remove_quietly(path)


class PillowWriter:
    """Small outputs (.png, .jpg) through Pillow: bands are assembled in memory and encoded on close."""

    def __init__(
        self,
        dest: Path,
        height: int,
        width: int,
        channels: int,
        *,
        compression: str | None = None,
        source: ImageSource | None = None,
        overwrite: bool = False,
    ) -> None:
        if height * width > MAX_PILLOW_PIXELS:
            raise DnrtError(
                f"output {quoted(dest)} would be {width}x{height}; images over "
                f"{MAX_PILLOW_PIXELS / 1e9:g} gigapixel must be written as TIFF (.tif)"
            )
        self.dest = dest
        self.height, self.width, self.channels = height, width, channels
        self.overwrite = overwrite
        self.rows_received = 0
        self._format = "PNG" if dest.suffix.lower() == ".png" else "JPEG"
        self._options = _pillow_options(self._format, compression)
        resolution, unit, icc = _metadata_from(source, channels)
        dpi = _dpi(resolution, unit)
        if dpi:
            self._options["dpi"] = dpi
        if icc:
            self._options["icc_profile"] = icc
        self._array = np.empty((height, width, channels), np.uint8)
        self._closed = False
        remove_stale_temps(dest)  # left by a run that was killed (SIGKILL, power cut)
        self.temp = create_temp(dest)
        self._finalizer = weakref.finalize(self, _remove_all, [self.temp])

    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:
        # ``copy`` is part of the sink interface; this sink copies the band in any case.
        if self._closed:
            raise ValueError("the writer is closed")
        band = np.asarray(band)
        if band.ndim == 2 and self.channels == 1:
            band = band[:, :, None]
        if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (self.width, self.channels):
            raise ValueError(
                f"expected a uint8 band [h, {self.width}, {self.channels}], got {band.dtype} {band.shape}"
            )
        h = band.shape[0]
        if self.rows_received + h > self.height:
            raise ValueError(
                f"band of {h} rows overflows the image ({self.rows_received}/{self.height} written)"
            )
        self._array[self.rows_received : self.rows_received + h] = band
        self.rows_received += h

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.rows_received != self.height:
                raise ValueError(f"output closed after {self.rows_received} of {self.height} rows")
            from PIL import Image

            data = self._array[:, :, 0] if self.channels == 1 else self._array
            try:
                Image.fromarray(data).save(self.temp, format=self._format, **self._options)
            except OSError as exc:
                raise DnrtError(
                    f"could not write {quoted(self.dest)}: {exc.strerror or _short(exc)}"
                ) from exc
            commit(self.temp, self.dest, self.overwrite)
            self._closed = True
            self._array = np.empty((0, 0, self.channels), np.uint8)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._array = np.empty((0, 0, self.channels), np.uint8)
        remove_quietly(self.temp)

    def __enter__(self) -> PillowWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _pillow_options(fmt: str, compression: str | None) -> dict[str, Any]:
    parsed = Compression("zlib" if compression is None else compression, check_available=False)
    return parsed.pillow_options(fmt)


def _dpi(resolution: Any, unit: Any) -> tuple[float, float] | None:
    if resolution is None:
        return None
    factor = {"INCH": 1.0, 2: 1.0, "CENTIMETER": 2.54, 3: 2.54}.get(unit)
    if factor is None:
        return None
    return resolution[0] * factor, resolution[1] * factor


def open_writer(
    path: os.PathLike[str] | str,
    height: int,
    width: int,
    channels: int,
    *,
    tile: int = 512,
    compression: str | None = "zlib",
    pyramid: bool | None = False,
    source: ImageSource | None = None,
    overwrite: bool = False,
    queue_bytes: int = DEFAULT_QUEUE_BYTES,
    workers: int | None = None,
    subifds: bool = False,
    fmt: str | None = None,
) -> TileWriter | PillowWriter:
    """Open the output for band-by-band writing (see the module docstring for the options).

    ``source`` supplies the resolution (and unit), objective power and ICC profile to carry.
    ``pyramid=None`` writes levels for slide-sized outputs only (:func:`wants_pyramid`); ``fmt``
    is ``"tiff"`` or ``"ome-tiff"`` (None: by the name, :func:`output_format`). ``workers`` is
    the number of compression threads (default: tifffile's choice, about half the cores).
    """
    kind = output_format(path, fmt)
    dest = check_output_path(path, overwrite)
    height, width, channels, tile = int(height), int(width), int(channels), int(tile)
    if height <= 0 or width <= 0:
        raise DnrtError(f"cannot write a {width}x{height} image")
    if channels not in (1, 3):
        raise DnrtError(f"dnrt writes RGB or grey images, not {channels} channels")
    if tile < 16 or tile % 16:
        raise DnrtError(f"the TIFF tile size must be a positive multiple of 16 (got {tile})")
    if kind == "pillow":
        if pyramid:  # asked for explicitly (None: only where they fit)
            raise DnrtError(f"pyramid levels need a TIFF output, not {quoted(dest)}")
        return PillowWriter(
            dest, height, width, channels, compression=compression, source=source, overwrite=overwrite
        )
    return TileWriter(
        dest,
        height,
        width,
        channels,
        tile=tile,
        compression=compression,
        pyramid=wants_pyramid(height, width, tile, pyramid),
        source=source,
        overwrite=overwrite,
        queue_bytes=queue_bytes,
        workers=workers,
        subifds=subifds,
        ome=kind == "ome-tiff",
    )
