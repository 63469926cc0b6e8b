"""Region reads from TIFF, BigTIFF, SVS and OME-TIFF without loading the image.

A region is served from the TIFF segments (tiles or strips) it overlaps, and only those are read
and decoded: memory is bounded by the region plus a small LRU cache of decoded segments (the
runtime reads tiles with a margin, so each stored segment is touched by neighbouring reads).
Segments are read with ``os.pread`` (no shared file position, so several can be read and decoded
in parallel threads; imagecodecs releases the GIL) and decoded by tifffile's own per-page decoder,
which knows every compression, predictor, JPEG table and bit layout tifffile supports.

Uncompressed images stored contiguously (for example one huge strip) are cut into synthetic
strips of a few MB, so reading a band never touches more than the band's rows.

tifffile's zarr interface would also read regions, but needs the separate ``zarr`` package
and hides which segments are decoded; going to the segments directly keeps the reader
dependency-free, lets it cache decoded segments across overlapping reads and lets tests count
exactly what was decoded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.io.convert import check_sample_dtype, palette_lut, to_uint8
from dnrt.runtime.io.reader import ImageSource, MissingLevel, _short, quoted

#: Target size of a synthetic strip cut from contiguous uncompressed data.
_SYNTHETIC_STRIP_BYTES = 4 << 20
#: A single stored segment larger than this (decoded) is refused: reading any pixel of it
#: would need that much memory (a 16384 px tile of RGB is 768 MiB; a whole image stored as one
#: compressed strip). Compressed segments cannot be decoded in parts with tifffile.
MAX_SEGMENT_BYTES = 512 << 20
#: Rows of stored segments the default cache covers, whatever the file's tile height: two rows of
#: 512 px tiles is what the runtime's reads with a margin touch; taller tiles get one segment
#: kept at least, and are decoded again by the next band rather than held as whole rows.
_CACHE_ROWS = 2 * 512

_JPEG_COMPRESSIONS = {6, 7, 33007, 34892}  # OJPEG, JPEG, ALT_JPG, JPEG_LOSSY


class _Plane:
    """The segments (tiles or strips) of one TIFF page, how to decode them and where they go.

    Decoded segments are converted at once to uint8 colour-only data, which is what gets cached.
    """

    def __init__(self, page: Any, owner: TiffSource) -> None:
        import tifffile

        self.owner = owner
        self.keyframe = page.keyframe if hasattr(page, "keyframe") and page.keyframe is not None else page
        kf = self.keyframe
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.height, self.width = int(kf.imagelength), int(kf.imagewidth)
        self.samples = int(kf.samplesperpixel)
        self.separate = kf.planarconfig == tifffile.PLANARCONFIG.SEPARATE and self.samples > 1
        self.tiled = bool(kf.is_tiled)
        self.raw_dtype = np.dtype(kf.dtype)
        self.palette: np.ndarray | None = None
        self.invert = False
        # Colour samples kept (extra samples such as alpha are dropped).
        self.keep = 3
        self._decode_func: Callable[..., Any] | None = None
        self._decode_kwargs: dict[str, Any] = {}

        if self.tiled:
            if int(getattr(kf, "tiledepth", 1) or 1) > 1 or int(getattr(kf, "imagedepth", 1) or 1) > 1:
                raise DnrtError(f"{owner.name} is a volumetric (3-D tiled) TIFF; dnrt translates 2-D images")
            self.seg_h, self.seg_w = int(kf.tilelength), int(kf.tilewidth)
        else:
            rows = int(kf.rowsperstrip or self.height)
            self.seg_h, self.seg_w = max(1, min(rows, self.height)), self.width
        self.grid_rows = math.ceil(self.height / self.seg_h)
        self.grid_cols = math.ceil(self.width / self.seg_w)
        self.planes = self.samples if self.separate else 1
        self.synthetic = False

        # Contiguous uncompressed data: cut into small row bands read straight from the file.
        if (
            not self.tiled
            and kf.is_final
            and kf.bitspersample in (8, 16)
            and len(self.offsets) > 0
            and int(self.offsets[0]) > 0  # no data at all: the general path shows it as black
            and self.raw_dtype.kind in "ub"
        ):
            itemsize = self.raw_dtype.itemsize
            row_bytes = self.width * itemsize * (1 if self.separate else self.samples)
            self.seg_h = max(1, min(self.height, _SYNTHETIC_STRIP_BYTES // max(row_bytes, 1)))
            self.grid_rows = math.ceil(self.height / self.seg_h)
            base = int(self.offsets[0])
            plane_bytes = row_bytes * self.height
            offsets, counts = [], []
            for plane in range(self.planes):
                for r in range(self.grid_rows):
                    rows = min(self.seg_h, self.height - r * self.seg_h)
                    offsets.append(base + plane * plane_bytes + r * self.seg_h * row_bytes)
                    counts.append(rows * row_bytes)
            self.offsets = np.asarray(offsets, np.int64)
            self.counts = np.asarray(counts, np.int64)
            self.file_dtype = self.raw_dtype.newbyteorder(owner.byteorder)
            self.synthetic = True
        else:
            expected = self.planes * self.grid_rows * self.grid_cols
            if len(self.offsets) != expected or len(self.counts) != expected:
                raise DnrtError(
                    f"{owner.name} has an unsupported TIFF layout ({len(self.offsets)} segments where "
                    f"{expected} were expected); rewrite it as a plain tiled TIFF"
                )
            decoded = (
                self.seg_h * self.seg_w * self.raw_dtype.itemsize * (1 if self.separate else self.samples)
            )
            if decoded > MAX_SEGMENT_BYTES:
                what = f"{self.seg_w} x {self.seg_h} px tiles" if self.tiled else f"{self.seg_h}-row strips"
                raise DnrtError(
                    f"{owner.name} stores its pixels in {what} of {decoded / 2**20:.0f} MiB each decoded, over "
                    f"dnrt's limit of {MAX_SEGMENT_BYTES >> 20} MiB per stored block (a block is decoded "
                    "whole to read any pixel of it); rewrite it as a tiled TIFF (e.g. 512x512 tiles)"
                )
            _check_segment_fits(owner.name, decoded)
            self._decode_func = kf.decode
            if kf.compression in _JPEG_COMPRESSIONS:
                tables = getattr(page, "jpegtables", None) or kf.jpegtables
                self._decode_kwargs = {"jpegtables": tables, "jpegheader": kf.jpegheader}
            # Edge tiles may come back cropped to the image (JPEG/PNG tiles store only what is
            # inside it); paste() copies by the decoded shape, so no padding is needed.

    def configure_colour(self, name: str) -> tuple[int, str, str]:
        """Decide how stored samples become output channels; returns (channels, photometric, note)."""
        import tifffile

        kf = self.keyframe
        ph = tifffile.PHOTOMETRIC
        photometric = kf.photometric
        extras = len(kf.extrasamples or ())
        colour = self.samples - extras
        note = "alpha dropped" if extras else ""
        if photometric == ph.PALETTE:
            if self.samples != 1 or kf.colormap is None:
                raise DnrtError(f"{name} is a palette TIFF without a usable colour map")
            self.palette = palette_lut(kf.colormap)
            self.keep = 1
            return 3, "rgb", "palette -> RGB"
        if photometric in (ph.MINISBLACK, ph.MINISWHITE):
            self.invert = photometric == ph.MINISWHITE
            if self.invert:
                note = ", ".join(n for n in (note, "min-is-white inverted") if n)
            if colour <= 1:
                self.keep = 1
                return 1, "minisblack", note
            if colour == 3:
                self.keep = 3
                return 3, "rgb", note
            raise DnrtError(
                f"{name} has {self.samples} samples per pixel; dnrt translates RGB or grey images; "
                "convert it first"
            )
        if photometric == ph.RGB:
            if self.samples < 3:
                raise DnrtError(f"{name} is an RGB TIFF with only {self.samples} samples per pixel")
            self.keep = 3
            if self.samples > 3 and not note:
                note = "extra samples dropped"
            return 3, "rgb", note
        if photometric == ph.YCBCR and kf.compression in _JPEG_COMPRESSIONS:
            # The JPEG decoder returns RGB for YCbCr JPEG-in-TIFF (SVS and most WSI files).
            self.keep = 3
            return 3, "rgb", note
        label = getattr(photometric, "name", str(photometric))
        label = {"SEPARATED": "CMYK", "CIELAB": "CIE L*a*b*", "YCBCR": "YCbCr (not JPEG-compressed)"}.get(
            label, label
        )
        raise DnrtError(f"{name} has {label} colour; dnrt translates RGB or grey images; convert it first")

    # -- reading -------------------------------------------------------------------------
    def segment_keys(self, y0: int, y1: int, x0: int, x1: int) -> list[tuple[int, int, int]]:
        """(plane, row, col) of the segments a region overlaps, for the planes we keep."""
        rows = range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1)
        cols = range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1)
        planes = range(min(self.planes, self.keep)) if self.separate else range(1)
        return [(p, r, c) for p in planes for r in rows for c in cols]

    def index(self, key: tuple[int, int, int]) -> int:
        plane, r, c = key
        return (plane * self.grid_rows + r) * self.grid_cols + c

    def decode(self, key: tuple[int, int, int]) -> np.ndarray:
        """Read and decode one segment; uint8 ``[seg rows, seg cols, channels of this segment]``."""
        i = self.index(key)
        offset, count = int(self.offsets[i]), int(self.counts[i])
        data = self.owner.read_bytes(offset, count) if count > 0 and offset > 0 else None
        if self.synthetic:
            if data is None:  # the file's own offsets say there is no data here
                raise DnrtError(
                    f"{self.owner.name}: {self._where(key)} has no image data (truncated or corrupt)"
                )
            samples = 1 if self.separate else self.samples
            raw = np.frombuffer(data, dtype=self.file_dtype).reshape(-1, self.width, samples)
            raw = raw.astype(self.raw_dtype, copy=False)
        else:
            assert self._decode_func is not None
            try:
                seg = self._decode_func(data, i, **self._decode_kwargs)[0]
            except Exception as exc:  # codec errors come in many types
                raise DnrtError(
                    f"{self.owner.name}: could not decode {self._where(key)} ({_short(exc)}); "
                    "the file may be truncated or corrupt"
                ) from None
            if seg is None:  # empty (missing) segment: black, as OpenSlide and tifffile show it
                samples = 1 if self.separate else self.samples
                rows = min(self.seg_h, self.height - key[1] * self.seg_h) if not self.tiled else self.seg_h
                raw = np.zeros((rows, self.seg_w, samples), self.raw_dtype)
            else:
                raw = seg.reshape(seg.shape[-3:]) if seg.ndim > 3 else seg
                if raw.ndim == 2:
                    raw = raw[:, :, None]
        return self._convert(raw)

    def _convert(self, raw: np.ndarray) -> np.ndarray:
        if self.palette is not None:
            return self.palette[raw[:, :, 0]]
        if not self.separate:
            raw = raw[:, :, : self.keep]
        out = to_uint8(raw, self.owner.intensity)
        if self.invert:
            out = 255 - out
        return np.ascontiguousarray(out)

    def _where(self, key: tuple[int, int, int]) -> str:
        plane, r, c = key
        y0 = r * self.seg_h
        what = f"tile at row {y0}, column {c * self.seg_w}" if self.tiled else f"strip at row {y0}"
        return what + (f" of sample plane {plane}" if self.separate else "")

    def paste(
        self, out: np.ndarray, slot: int, y0: int, x0: int, key: tuple[int, int, int], seg: np.ndarray
    ) -> None:
        """Copy a decoded segment into ``out`` (region origin ``y0, x0``) from channel ``slot`` on."""
        h, w = out.shape[:2]
        plane, r, c = key
        sy, sx = r * self.seg_h, c * self.seg_w
        a0, a1 = max(sy, y0), min(sy + seg.shape[0], y0 + h)
        b0, b1 = max(sx, x0), min(sx + seg.shape[1], x0 + w)
        if a0 < a1 and b0 < b1:
            block = seg[a0 - sy : a1 - sy, b0 - sx : b1 - sx]
            ch = slot + plane
            out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0, ch : ch + block.shape[2]] = block

    def segment_row_bytes(self) -> int:
        """Decoded bytes of one row of segments across the image (for the kept planes)."""
        planes = min(self.planes, self.keep) if self.separate else 1
        channels = 1 if self.separate else (3 if self.palette is not None else self.keep)
        return self.seg_h * self.grid_cols * self.seg_w * channels * planes

    def segment_bytes(self) -> int:
        """Decoded bytes of one cached segment (uint8, kept channels)."""
        channels = 1 if self.separate else (3 if self.palette is not None else self.keep)
        return self.seg_h * self.seg_w * channels

    def data_end(self) -> int:
        """Largest byte offset the image data reaches (to detect truncated files cheaply)."""
        used = (self.counts > 0) & (self.offsets > 0)
        if not used.any():
            return 0
        return int((self.offsets[used] + self.counts[used]).max())


class TiffSource(ImageSource):
    """Region reader for one 2-D image of a TIFF-family file (series 0, one pyramid level)."""

    #: The vendor layout tifffile recognised ("svs", "ome", "ndpi", "scn", "philips", "bif") or "".
    flavour: str = ""

    def __init__(self, path: Path, tif: Any, cache_bytes: int | None, workers: int | None) -> None:
        super().__init__()
        self.path = path
        self.name = quoted(path)
        self._tif = tif
        self.byteorder = tif.byteorder
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._file_size = os.fstat(self._fd).st_size
        self._io_lock = threading.Lock()  # only for platforms without pread
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[int, tuple[int, int, int]], np.ndarray] = OrderedDict()
        self._cache_used = 0
        self._cache_bytes = 0 if cache_bytes is None else max(0, int(cache_bytes))
        if workers is None:
            workers = min(4, max(1, (os.cpu_count() or 1)))
        self._workers = max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None
        self._planes: list[tuple[_Plane, int]] = []  # (plane reader, first output channel)

    # -- reading -------------------------------------------------------------------------
    def read_bytes(self, offset: int, count: int) -> bytes:
        if hasattr(os, "pread"):
            data = os.pread(self._fd, count, offset)
        else:  # pragma: no cover - Windows
            with self._io_lock:
                os.lseek(self._fd, offset, os.SEEK_SET)
                data = os.read(self._fd, count)
        if len(data) < count:
            raise DnrtError(
                f"{self.name} is truncated: image data at byte {offset + len(data)} is missing "
                f"(the file has {self._file_size} bytes)"
            )
        return data

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        out = np.empty((y1 - y0, x1 - x0, self.channels), np.uint8)
        with self._lock:
            for n, (plane, slot) in enumerate(self._planes):
                for key, seg in self._segments(n, plane, plane.segment_keys(y0, y1, x0, x1)):
                    plane.paste(out, slot, y0, x0, key, seg)
        return out

    def _segments(
        self, n: int, plane: _Plane, keys: list[tuple[int, int, int]]
    ) -> Iterator[tuple[tuple[int, int, int], np.ndarray]]:
        """Decoded segments for ``keys``: from the cache, else read and decoded in parallel.

        Yielded as they become available and pasted at once by the caller, so a wide band never
        holds all its decoded segments at the same time (only those the cache keeps).
        """
        missing = []
        for key in keys:
            seg = self._cache.get((n, key))
            if seg is None:
                missing.append(key)
            else:
                self._cache.move_to_end((n, key))
                self.stats["cache_hits"] += 1
                yield key, seg
        # Read in file order: sequential I/O on spinning disks and network filesystems.
        missing.sort(key=lambda k: int(plane.offsets[plane.index(k)]))
        # Segments decoded at once: as many as the workers take, but never more bytes than the
        # cache holds (huge stored tiles are decoded one or two at a time).
        step = max(1, min(2 * self._workers, self._cache_bytes // max(1, plane.segment_bytes())))
        for i in range(0, len(missing), step):
            chunk = missing[i : i + step]
            if len(chunk) > 1 and self._workers > 1:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="dnrt-decode")
                decoded = list(self._pool.map(plane.decode, chunk))
            else:
                decoded = [plane.decode(key) for key in chunk]
            self.stats["segments_decoded"] += len(chunk)
            self.stats["bytes_read"] += sum(int(plane.counts[plane.index(key)]) for key in chunk)
            for key, seg in zip(chunk, decoded, strict=True):
                self._remember((n, key), seg)
                yield key, seg

    def set_intensity_range(self, lo: int, hi: int, origin: str) -> None:
        super().set_intensity_range(lo, hi, origin)
        with self._lock:  # segments cached so far were converted with the old range
            self._cache.clear()
            self._cache_used = 0

    def _remember(self, key: Any, seg: np.ndarray) -> None:
        # A segment larger than the whole budget (a huge strip) is still kept, alone: re-decoding
        # it for every region would cost far more than the memory it already occupies.
        self._cache[key] = seg
        self._cache_used += seg.nbytes
        while self._cache_used > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_used -= old.nbytes

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._cache.clear()
            self._cache_used = 0
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._tif is not None:
                self._tif.close()
                self._tif = None


def open_tiff(path: Path, *, cache_bytes: int | None, workers: int | None, level: int = 0) -> TiffSource:
    """Open series 0 of a TIFF-family file at pyramid ``level``; every problem is a one-line DnrtError."""
    import tifffile

    name = quoted(path)
    with _quiet_tifffile():
        try:
            tif = tifffile.TiffFile(path)
        except Exception as exc:  # TiffFileError, struct.error, ValueError, ... for damaged headers
            raise DnrtError(f"{name} is a damaged or truncated TIFF ({_short(exc)})") from None
        try:
            return _build_source(path, tif, cache_bytes, workers, level)
        except DnrtError:
            tif.close()
            raise
        except Exception as exc:
            tif.close()
            raise DnrtError(f"{name} is a damaged or unsupported TIFF ({_short(exc)})") from None


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """Keep tifffile's log warnings about odd files off the terminal while a file is opened:
    users get dnrt's one-line message (or a working image), not library chatter."""
    logger = logging.getLogger("tifffile")
    saved = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(saved)


def _build_source(
    path: Path, tif: Any, cache_bytes: int | None, workers: int | None, level_index: int = 0
) -> TiffSource:
    import tifffile

    name = quoted(path)
    if len(tif.pages) == 0:
        raise DnrtError(f"{name} is a TIFF without any image")
    series = tif.series
    if not series:
        raise DnrtError(f"{name} is a TIFF without any image")
    levels = series[0].levels
    if not 0 <= level_index < len(levels):
        raise MissingLevel(name, level_index, len(levels))
    level = levels[level_index]
    pages = [p for p in level.pages if p is not None]
    if not pages:
        raise DnrtError(f"{name} is a TIFF without any image")
    keyframe = level.keyframe
    height, width = int(keyframe.imagelength), int(keyframe.imagewidth)
    if height <= 0 or width <= 0:
        raise DnrtError(f"{name} has zero size ({width}x{height} pixels)")
    if keyframe.dtype is None:
        raise DnrtError(
            f"{name} has {keyframe.bitspersample}-bit samples (sample format {int(keyframe.sampleformat)}); "
            "dnrt translates 8-bit images (16-bit are converted); convert it first"
        )
    check_sample_dtype(keyframe.dtype, name)
    _check_orientation(keyframe, name)

    source = TiffSource(path, tif, cache_bytes, workers)
    try:
        notes = _attach_planes(source, level, pages, name)
        end = max(plane.data_end() for plane, _ in source._planes)
        if end > source._file_size:
            raise DnrtError(
                f"{name} is a truncated TIFF: its image data needs {end} bytes but the file has "
                f"{source._file_size}"
            )
    except BaseException:
        source.close()
        raise

    if cache_bytes is None:
        source._cache_bytes = (8 << 20) + sum(_default_cache(plane) for plane, _ in source._planes)
    first = source._planes[0][0]
    source.height, source.width = height, width
    # Slide metadata (issue 17): reduced levels report level 0's resolution scaled by their size,
    # whatever their own tags say (SVS levels carry none).
    base = levels[0].keyframe
    base_h, base_w = int(base.imagelength), int(base.imagewidth)
    source.level, source.reader = level_index, "tifffile"
    source.level_sizes = tuple((int(lv.keyframe.imagewidth), int(lv.keyframe.imagelength)) for lv in levels)
    resolution, source.resolution_unit = _resolution(tif, base)
    if resolution is not None:
        resolution = (resolution[0] * width / base_w, resolution[1] * height / base_h)
    source.resolution = resolution
    power = _objective_power(tif, base)
    source.objective_power = None if power is None else power * (width + height) / (base_w + base_h)
    source.flavour = next(
        (f for f in ("svs", "ome", "ndpi", "scn", "philips", "bif") if getattr(tif, "is_" + f, False)), ""
    )
    source.icc_profile = keyframe.iccprofile or None
    kind = "BigTIFF" if tif.is_bigtiff else "TIFF"
    flavour = next(
        (f for f in ("svs", "ome", "ndpi", "scn", "philips", "imagej") if getattr(tif, "is_" + f, False)), ""
    )
    if flavour:
        kind += f" ({flavour.upper() if flavour in ('svs', 'ome') else flavour})"
    if len(levels) > 1:
        kind += f" level {level_index} of {len(levels)}"
    layout = (
        f"tiled {first.seg_h}x{first.seg_w}"
        if first.tiled
        else ("contiguous" if first.synthetic else f"{first.seg_h}-row strips")
    )
    compression = tifffile.COMPRESSION(keyframe.compression).name.lower()
    ph = getattr(keyframe.photometric, "name", str(keyframe.photometric))
    source.description = (
        f"{kind} {width}x{height} {ph} {np.dtype(keyframe.dtype).name}, {layout}, {compression}"
        + (f" ({notes})" if notes else "")
    )
    return source


#: TIFF Orientation (tag 274) values: where row 0 and column 0 of the stored pixels are shown.
_ORIENTATIONS = {
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed (mirrored along the main diagonal)",
    6: "rotated 90 degrees clockwise",
    7: "transverse (mirrored along the other diagonal)",
    8: "rotated 90 degrees counter-clockwise",
}


def _check_orientation(page: Any, name: str) -> None:
    """Refuse an image whose Orientation tag asks viewers to rotate or mirror it.

    dnrt translates and writes pixels in stored order, and the output carries no Orientation
    tag: applying the tag would change the output's size (5-8 swap width and height), keeping it
    would need every writer to copy it, and dropping it silently shows the output turned against
    the input. So anything but the default (1, or no tag) is refused with the way out.
    """
    tag = page.tags.get(274)
    if tag is None:
        return
    value = tag.value
    value = int(value) if isinstance(value, (int, np.integer)) else value
    if value == 1:
        return
    if value in _ORIENTATIONS:
        raise DnrtError(
            f"{name} has TIFF Orientation {value} (stored pixels are shown {_ORIENTATIONS[value]}); dnrt "
            "translates pixels in stored order and cannot keep that: apply the orientation first "
            "(e.g. vips autorot IN OUT) and translate the result"
        )
    raise DnrtError(f"{name} has an invalid TIFF Orientation tag ({str(value)[:40]}; valid: 1 to 8)")


def _default_cache(plane: _Plane) -> int:
    """Cache bytes for one plane: ``_CACHE_ROWS`` rows of segments across the image, at least one
    segment (planes of separate samples each hold their own)."""
    rows = min(plane.seg_h * 2, _CACHE_ROWS)
    per_row = plane.segment_row_bytes() // max(1, plane.seg_h)
    planes = min(plane.planes, plane.keep) if plane.separate else 1
    return max(plane.segment_bytes() * planes, rows * per_row)


def _check_segment_fits(name: str, decoded: int) -> None:
    """A stored block must fit in the memory left, with the copies decoding makes (compressed
    bytes, decoded raw, converted uint8)."""
    from dnrt.runtime.budget import gb, memory_available

    available = memory_available()
    if available is not None and 3 * decoded > available:
        raise DnrtError(
            f"{name} stores its pixels in blocks of {gb(decoded)} decoded; reading one needs about "
            f"{gb(3 * decoded)} but {gb(available)} is available; rewrite it as a tiled TIFF (e.g. 512x512 tiles)"
        )


def _attach_planes(source: TiffSource, level: Any, pages: list[Any], name: str) -> str:
    """Set up the plane readers for the chosen image; returns a note on conversions."""
    notes: list[str] = []
    axes = str(getattr(level, "axes", ""))
    other = "".join(a for a in axes if a not in "YXS")
    if (
        len(pages) > 1
        and other == "C"
        and int(pages[0].keyframe.samplesperpixel) == 1
        and len(pages) in (3, 4)
    ):
        # OME-TIFF (or similar) storing the colour channels as separate pages: stack them.
        for c, page in enumerate(pages[:3]):
            plane = _Plane(page, source)
            channels, _, note = plane.configure_colour(name)
            if channels != 1 or plane.invert:
                raise DnrtError(f"{name} stores channels as pages in an unsupported way; convert it first")
            source._planes.append((plane, c))
        source.channels, source.photometric = 3, "rgb"
        notes.append("channels stacked from pages")
        if len(pages) == 4:
            notes.append("4th channel dropped")
    else:
        plane = _Plane(pages[0], source)
        channels, photometric, note = plane.configure_colour(name)
        source._planes.append((plane, 0))
        source.channels, source.photometric = channels, photometric
        if note:
            notes.append(note)
        if len(pages) > 1:
            notes.append(f"first of {len(pages)} images")
    if np.dtype(pages[0].keyframe.dtype) == np.uint16:
        notes.append("16-bit -> 8-bit")
        # 16-bit intensities (runtime/io/intensity.py): the file's declared range if any.
        source.bits = 16
        declared = _declared_range(pages[0].keyframe)
        source.intensity = declared or (0, 65535)
        source.intensity_origin = "declared by the file" if declared else None
    return ", ".join(notes)


def _declared_range(page: Any) -> tuple[int, int] | None:
    """``(SMinSampleValue, SMaxSampleValue)`` of a 16-bit page when both are set and usable."""
    tags = page.tags
    lo_tag, hi_tag = tags.get(340), tags.get(341)  # SMinSampleValue, SMaxSampleValue
    if lo_tag is None or hi_tag is None:
        return None
    try:
        lo = int(np.min(np.asarray(lo_tag.value)))
        hi = int(np.max(np.asarray(hi_tag.value)))
    except (TypeError, ValueError):
        return None
    return (lo, hi) if 0 <= lo < hi <= 65535 else None


def _resolution(tif: Any, page: Any) -> tuple[tuple[float, float] | None, str | None]:
    """Resolution tags, else the microns per pixel recorded by SVS or OME metadata."""
    import tifffile

    tags = page.tags
    if 282 in tags and 283 in tags:
        code = int(page.resolutionunit)
        if code in (4, 5):  # millimetre / micrometre (tifffile extensions): store as centimetre
            x, y = page.get_resolution(unit=tifffile.RESUNIT.CENTIMETER)
            code = 3
        else:
            x, y = page.resolution
        unit = tifffile.RESUNIT(code).name if code in (1, 2, 3) else "NONE"
        if x > 0 and y > 0 and not (unit == "NONE" and x == 1 and y == 1):
            return (float(x), float(y)), unit
    mpp = _microns_per_pixel(tif, page)
    if mpp is not None:
        return (1e4 / mpp[0], 1e4 / mpp[1]), "CENTIMETER"
    return None, None


def _philips_spacing(xml: str) -> tuple[float, float] | None:
    """Microns per pixel (x, y) of a Philips TIFF's finest level: the smallest
    ``DICOM_PIXEL_SPACING`` (millimetres, row spacing first, each value in quotes)."""
    import re
    import xml.etree.ElementTree as ET

    best: tuple[float, float] | None = None
    for element in ET.fromstring(xml).iter("Attribute"):
        if element.get("Name") != "DICOM_PIXEL_SPACING":
            continue
        values = [float(v) for v in re.findall(r'"\s*([0-9.eE+-]+)\s*"', element.text or "")]
        if len(values) == 2 and min(values) > 0 and (best is None or values[1] * 1e3 < best[0]):
            best = (values[1] * 1e3, values[0] * 1e3)
    return best


def _microns_per_pixel(tif: Any, page: Any) -> tuple[float, float] | None:
    try:
        if tif.is_philips and tif.philips_metadata:
            return _philips_spacing(tif.philips_metadata)
        if tif.is_svs and page.description:
            from tifffile.tifffile import svs_description_metadata

            mpp = float(svs_description_metadata(page.description)["MPP"])
            return (mpp, mpp) if mpp > 0 else None
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels")
            scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
            values = []
            for axis in ("X", "Y"):
                size = float(pixels.attrib[f"PhysicalSize{axis}"])
                unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm")
                values.append(size * scale[unit])
            if values[0] > 0 and values[1] > 0:
                return values[0], values[1]
    except (KeyError, ValueError, StopIteration, TypeError, SyntaxError, ImportError):
        return None
    return None


def _objective_power(tif: Any, page: Any) -> float | None:
    """The objective's magnification: Aperio's ``AppMag``, Hamamatsu's ``Magnification`` tag,
    or OME's ``NominalMagnification`` (of the objective the first image refers to, else of the
    only one)."""
    try:
        if tif.is_ndpi:
            power = float(page.tags.valueof(65421))  # Hamamatsu's SourceLens
            return power if power > 0 else None
        if tif.is_svs and page.description:
            from tifffile.tifffile import svs_description_metadata

            power = float(svs_description_metadata(page.description)["AppMag"])
            return power if power > 0 else None
        if tif.is_ome and tif.ome_metadata:
            import xml.etree.ElementTree as ET

            root = ET.fromstring(tif.ome_metadata)
            local = {el: el.tag.rsplit("}", 1)[-1] for el in root.iter()}
            objectives = {el.get("ID"): el for el, tag in local.items() if tag == "Objective"}
            chosen = next((el.get("ID") for el, tag in local.items() if tag == "ObjectiveSettings"), None)
            objective = objectives.get(chosen) if chosen else None
            if objective is None and len(objectives) == 1:
                objective = next(iter(objectives.values()))
            if objective is not None and objective.get("NominalMagnification"):
                power = float(objective.get("NominalMagnification"))
                return power if power > 0 else None
    except (KeyError, ValueError, TypeError, SyntaxError, ImportError):
        return None
    return None
