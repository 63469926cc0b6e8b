"""Opening input images: the :class:`ImageSource` interface, format dispatch and the Pillow path.

TIFF-family files (TIFF, BigTIFF, SVS, OME-TIFF) are recognised by their magic bytes, never by
suffix, and are read region by region without loading the image (:mod:`.tiffsource`). Vendor
slide formats that tifffile does not read (MRXS, VMS, DICOM, ...) go to OpenSlide
(:mod:`.slidesource`), also region by region. Every other format goes through Pillow and is
decoded whole, which is why it is limited to :data:`MAX_PILLOW_PIXELS`.
"""

from __future__ import annotations

import errno
import os
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.io.convert import check_sample_dtype, to_uint8
from dnrt.runtime.options import READERS

#: Formats decoded whole in memory are refused above this size (PNG/JPEG that large should be a
#: tiled TIFF: the runtime streams TIFFs, but Pillow can only hand over the whole image).
MAX_PILLOW_PIXELS = 1_000_000_000

#: Decoded TIFF segments are cached for reuse. The runtime reads tiles with a margin, so each
#: stored tile row is touched by two consecutive rows of runtime tiles; by default (None) the
#: cache keeps two rows of stored segments (plus 8 MB), which is what that pattern needs.
DEFAULT_CACHE_BYTES: int | None = None

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_LOCK = threading.Lock()


def quoted(path: os.PathLike[str] | str) -> str:
    """How file names appear in user-facing messages."""
    return f"'{os.fspath(path)}'"


class ImageSource:
    """A readable image: size, colour layout, metadata, and region reads as uint8 ``[h, w, channels]``.

    ``channels`` counts what :meth:`read_region` returns, after conversion (alpha dropped, palette
    expanded). Sources are context managers; :meth:`read_region` is safe to call from any thread.
    """

    path: Path
    height: int
    width: int
    channels: int
    dtype: np.dtype = np.dtype(np.uint8)
    #: Pixels per ``resolution_unit`` along x and y, or None when the file records none.
    resolution: tuple[float, float] | None = None
    #: ``"INCH"``, ``"CENTIMETER"``, ``"NONE"`` ... (tifffile's RESUNIT names), or None.
    resolution_unit: str | int | None = None
    #: Photometric interpretation of what read_region returns: ``"rgb"`` or ``"minisblack"``.
    photometric: str | None = None
    #: Embedded ICC colour profile, copied to the output when present.
    icc_profile: bytes | None = None
    #: One line for logs, e.g. "BigTIFF 16000x16000 RGB uint8, tiled 512x512, zstd".
    description: str = ""
    # -- slide metadata (issue 17: slide readers and the model's resolution) --------------
    #: Objective magnification of the pixels read_region returns (the scanner's power divided
    #: by any level downsample or resampling), or None when the file records none.
    objective_power: float | None = None
    #: Which reader serves the pixels ("tifffile", "openslide", "pillow", "array").
    reader: str = ""
    #: The pyramid level read (0: full resolution) and every level's (width, height).
    level: int = 0
    level_sizes: tuple[tuple[int, int], ...] = ()

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel (x, y) of the pixels read_region returns, from ``resolution``."""
        return mpp_from_resolution(self.resolution, self.resolution_unit)

    # -- 16-bit intensities (runtime/io/intensity.py has the rules) --
    #: Bits per stored sample: 16 for uint16 input (mapped to 8 bits on read), else 8.
    bits: int = 8
    #: The 16-bit range ``(LO, HI)`` mapped onto 0..255 on read; None for 8-bit input.
    intensity: tuple[int, int] | None = None
    #: Where ``intensity`` came from ("declared by the file", "--intensity-range", "full range");
    #: None while a 16-bit source has no range of its own (the translator then decides).
    intensity_origin: str | None = None

    def __init__(self) -> None:
        # Counters for tests and benchmarks (segments decoded, cache hits, bytes read).
        self.stats: dict[str, int] = {"segments_decoded": 0, "cache_hits": 0, "bytes_read": 0}

    # -- reading -------------------------------------------------------------------------
    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels of rows ``[y0, y1)`` and columns ``[x0, x1)`` (inside the image) as a new array."""
        y0, y1, x0, x1 = int(y0), int(y1), int(x0), int(x1)
        if not (0 <= y0 <= y1 <= self.height and 0 <= x0 <= x1 <= self.width):
            raise ValueError(
                f"region rows [{y0}, {y1}) cols [{x0}, {x1}) is outside the {self.height}x{self.width} image"
            )
        if y0 == y1 or x0 == x1:
            return np.zeros((y1 - y0, x1 - x0, self.channels), np.uint8)
        return self._read(y0, y1, x0, x1)

    def read_rows_cols(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Gather ``out[i, j] = image[rows[i], cols[j]]`` for in-range (possibly repeated) indices.

        The bounding box of the indices is read once and indexed, so reflect-padded tiles near a
        border cost one region read.
        """
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.ndim != 1 or cols.ndim != 1:
            raise ValueError("rows and cols must be 1-D index arrays")
        if rows.size == 0 or cols.size == 0:
            return np.zeros((rows.size, cols.size, self.channels), np.uint8)
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        c0, c1 = int(cols.min()), int(cols.max()) + 1
        box = self.read_region(r0, r1, c0, c1)
        if r1 - r0 == rows.size and c1 - c0 == cols.size and _is_range(rows, r0) and _is_range(cols, c0):
            return box  # plain in-bounds tile: no copy
        return box[np.ix_(rows - r0, cols - c0)]

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def set_intensity_range(self, lo: int, hi: int, origin: str) -> None:
        """Map 16-bit samples ``lo..hi`` onto 0..255 from now on (call before reading)."""
        if self.bits != 16:
            raise DnrtError(
                f"{quoted(self.path)} has 8-bit samples; an intensity range applies to 16-bit ones"
            )
        self.intensity, self.intensity_origin = (int(lo), int(hi)), origin

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        pass

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {quoted(self.path)}: {self.description}>"


#: Microns per resolution unit (TIFF's RESUNIT names; millimetre/micrometre are tifffile's).
_MICRONS_PER_UNIT = {"INCH": 25400.0, "CENTIMETER": 1e4, "MILLIMETER": 1e3, "MICROMETER": 1.0}


def mpp_from_resolution(
    resolution: tuple[float, float] | None, unit: str | int | None
) -> tuple[float, float] | None:
    """Microns per pixel from pixels per unit; None without a physical unit (or a bad value)."""
    if resolution is None or unit is None:
        return None
    name = (
        {2: "INCH", 3: "CENTIMETER", 4: "MILLIMETER", 5: "MICROMETER"}.get(unit, unit)
        if isinstance(unit, int)
        else str(unit).upper()
    )
    microns = _MICRONS_PER_UNIT.get(name)
    try:
        x, y = float(resolution[0]), float(resolution[1])
    except (TypeError, ValueError, IndexError):
        return None
    if microns is None or not (x > 0 and y > 0) or not (np.isfinite(x) and np.isfinite(y)):
        return None
    return microns / x, microns / y


def resolution_from_mpp(mpp: tuple[float, float]) -> tuple[tuple[float, float], str]:
    """Pixels per centimetre (TIFF's resolution tags) for microns per pixel."""
    return (1e4 / mpp[0], 1e4 / mpp[1]), "CENTIMETER"


def _is_range(index: np.ndarray, start: int) -> bool:
    return bool(np.array_equal(index, np.arange(start, start + index.size)))


class ArraySource(ImageSource):
    """An image already in memory (Pillow formats, or an array handed over by the Python API).

    The one in-memory source: ``Translator.translate`` and ``open_pillow`` both use it, so an
    array is checked the same way wherever it comes from (uint8, [H, W] or [H, W, C], not empty)."""

    def __init__(
        self,
        array: np.ndarray,
        *,
        path: os.PathLike[str] | str = "<array>",
        description: str = "",
        resolution: tuple[float, float] | None = None,
        resolution_unit: str | int | None = None,
        icc_profile: bytes | None = None,
    ) -> None:
        super().__init__()
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise DnrtError(f"expected an image array [H, W, C], got shape {array.shape}")
        if array.dtype != np.uint8:
            raise DnrtError(f"expected uint8 pixels, got {array.dtype} (convert to 8-bit first)")
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise DnrtError(f"the image is empty ({array.shape[0]} x {array.shape[1]})")
        # Kept as given (any strides, no copy of a large array); regions are copied when read.
        self._array = array
        self.path = Path(path)
        self.height, self.width, self.channels = (int(n) for n in array.shape)
        self.photometric = "minisblack" if self.channels == 1 else "rgb"
        self.resolution = resolution
        self.resolution_unit = resolution_unit
        self.icc_profile = icc_profile
        self.description = description or f"array {self.width}x{self.height}x{self.channels} uint8"
        self.reader = "array"
        self.level_sizes = ((self.width, self.height),)

    @property
    def pixels(self) -> np.ndarray:
        """The array as given (the Python API checks that an ``out`` array does not overlap it)."""
        return self._array

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._array[y0:y1, x0:x1].copy()

    def close(self) -> None:
        self._array = np.zeros((0, 0, self.channels), np.uint8)


class Uint16ArraySource(ArraySource):
    """A 16-bit gray Pillow image (e.g. an MRI slice as PNG), mapped to 8 bits region by region."""

    def __init__(self, array: np.ndarray, *, declared: tuple[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(np.zeros((1, 1, array.shape[2]), np.uint8), **kwargs)
        self._raw = np.ascontiguousarray(array)
        self.height, self.width, self.channels = (int(n) for n in array.shape)
        self.bits = 16
        # A declared range is used as is; without one the full range holds for reads until the
        # translator applies its rule (runtime/io/intensity.py: prepare_source).
        self.intensity = declared or (0, 65535)
        self.intensity_origin = "declared by the file" if declared else None

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return to_uint8(self._raw[y0:y1, x0:x1], self.intensity)

    def close(self) -> None:
        self._raw = np.zeros((0, 0, self.channels), np.uint16)


# -- opening ------------------------------------------------------------------------------
# ``--reader`` choices (READERS, from the options): ``auto`` picks by content (see open_image).
#: TIFF layouts that tifffile parses but whose slide OpenSlide assembles better: Leica SCN (the
#: first series may be the macro image) and Ventana BIF (overlapping tiles to stitch).
_OPENSLIDE_TIFF_FLAVOURS = ("scn", "bif")


class MissingLevel(DnrtError):
    """A pyramid level that the image does not have (``--level``): a usage error, exit 2."""

    def __init__(self, name: str, level: int, count: int) -> None:
        plural = "s" if count != 1 else ""
        super().__init__(
            f"{name} has no level {level}: it has {count} level{plural} (0-{count - 1})", exit_code=2
        )


def open_image(
    path: os.PathLike[str] | str,
    *,
    cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    workers: int | None = None,
    reader: str = "auto",
    level: int = 0,
) -> ImageSource:
    """Open an input image for region reads; every problem becomes a one-line :class:`DnrtError`.

    ``cache_bytes`` bounds the decoded TIFF segments kept for reuse (default: two rows of stored
    tiles or strips, see :data:`DEFAULT_CACHE_BYTES`); ``workers`` is the number of
    threads decoding segments in parallel (default: up to 4, fewer on small machines).

    ``reader`` (one of :data:`READERS`) and ``level`` (the pyramid level, 0 = full resolution)
    are the slide options. ``auto`` decides by content, never by suffix: TIFF-family files go to
    tifffile (OpenSlide when tifffile cannot read them, or for Leica SCN and Ventana BIF); other
    files go to OpenSlide when it recognises a vendor format (MRXS, VMS/VMU, DICOM, ...), else to
    Pillow.
    """
    path = Path(path)
    if reader not in READERS:
        raise DnrtError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}", exit_code=2)
    if level < 0:
        raise DnrtError(f"--level must be 0 or more, got {level}", exit_code=2)
    magic = _read_magic(path)
    is_tiff = magic in _TIFF_MAGIC
    if reader == "openslide":
        from dnrt.runtime.io.slidesource import open_openslide

        return open_openslide(path, level=level, workers=workers)
    if reader == "tifffile":
        if not is_tiff:
            raise DnrtError(f"{quoted(path)} is not a TIFF-family file; the tifffile reader reads only those")
        return _open_tiff(path, cache_bytes, workers, level)
    if is_tiff:
        return _open_tiff_auto(path, cache_bytes, workers, level)
    from dnrt.runtime.io.slidesource import openslide_vendor

    if openslide_vendor(path) is not None:
        from dnrt.runtime.io.slidesource import open_openslide

        return open_openslide(path, level=level, workers=workers)
    source = open_pillow(path)
    if level != 0:
        source.close()
        raise MissingLevel(quoted(path), level, 1)
    return source


def _open_tiff(path: Path, cache_bytes: int | None, workers: int | None, level: int) -> ImageSource:
    from dnrt.runtime.io.tiffsource import open_tiff

    return open_tiff(path, cache_bytes=cache_bytes, workers=workers, level=level)


def _open_tiff_auto(path: Path, cache_bytes: int | None, workers: int | None, level: int) -> ImageSource:
    """tifffile first; OpenSlide where tifffile fails on a vendor slide OpenSlide recognises (a
    generic TIFF that tifffile cannot read keeps tifffile's message, which says what is wrong)."""
    from dnrt.runtime.io.slidesource import open_openslide, openslide_vendor

    try:
        source = _open_tiff(path, cache_bytes, workers, level)
    except MissingLevel:
        raise
    except DnrtError:
        if openslide_vendor(path) in (None, "generic-tiff"):
            raise
        try:
            return open_openslide(path, level=level, workers=workers)
        except MissingLevel:
            raise
        except DnrtError:
            pass
        raise
    if getattr(source, "flavour", "") in _OPENSLIDE_TIFF_FLAVOURS and openslide_vendor(path) is not None:
        source.close()
        return open_openslide(path, level=level, workers=workers)
    return source


def _read_magic(path: Path) -> bytes:
    """The first 4 bytes, after the checks that give missing/directory/empty files their own message."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise DnrtError(f"input image {quoted(path)} does not exist") from None
    except IsADirectoryError:
        raise DnrtError(f"{quoted(path)} is a directory, not an image") from None
    except PermissionError:
        if path.is_dir():
            raise DnrtError(f"{quoted(path)} is a directory, not an image") from None
        raise DnrtError(f"cannot read {quoted(path)}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise DnrtError(f"input image {quoted(path)} does not exist") from None
        raise DnrtError(f"cannot read {quoted(path)}: {exc.strerror or exc}") from None
    if not magic:
        raise DnrtError(f"{quoted(path)} is empty (0 bytes), not an image")
    return magic


def open_pillow(path: Path, *, max_pixels: int = MAX_PILLOW_PIXELS) -> ArraySource:
    """Decode a Pillow-readable image whole (PNG, JPEG, BMP, WebP, ...)."""
    from PIL import Image, UnidentifiedImageError

    name = quoted(path)
    # Pillow's decompression-bomb guard trips at ~179 Mpx by default, below what dnrt accepts: it
    # is set to dnrt's own limit, and the header size is checked against it (and against the file
    # and the memory left, _check_declared_size) before anything is decoded.
    with _PIL_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            try:
                with warnings.catch_warnings():  # between 1x and 2x the limit Pillow only warns
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    img = Image.open(path)
            except Image.DecompressionBombError as exc:
                raise DnrtError(
                    f"{name} is over {max_pixels / 1e9:g} gigapixel ({_short(exc)}); images that large "
                    "must be TIFF (dnrt streams TIFFs tile by tile but decodes other formats whole)"
                ) from None
            except UnidentifiedImageError:
                raise DnrtError(
                    f"{name} is not an image dnrt can read (neither TIFF, a slide format OpenSlide "
                    "recognizes, nor a format Pillow recognizes)"
                ) from None
            except (OSError, ValueError, SyntaxError) as exc:
                raise DnrtError(f"{name} could not be opened as an image: {_short(exc)}") from None
            try:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise DnrtError(f"{name} has zero size ({width}x{height} pixels)")
                if width * height > max_pixels:
                    raise DnrtError(
                        f"{name} is a {width}x{height} {img.format} image; images over "
                        f"{max_pixels / 1e9:g} gigapixel must be TIFF (dnrt streams TIFFs tile by tile "
                        "but decodes other formats whole): convert it to a tiled TIFF first"
                    )
                fmt, mode = img.format or "image", img.mode
                info = dict(img.info)
                _check_declared_size(path, name, img)
                try:
                    array, note = _pillow_pixels(img, name)
                except Image.DecompressionBombError as exc:
                    raise DnrtError(f"{name} is refused as a decompression bomb: {_short(exc)}") from None
                except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
                    raise DnrtError(
                        f"{name} could not be decoded ({_short(exc)}); the file may be truncated or corrupt"
                    ) from None
            finally:
                img.close()
        finally:
            Image.MAX_IMAGE_PIXELS = saved

    resolution, unit = _pillow_resolution(info)
    desc = f"{fmt} {width}x{height} {mode} uint8" + (f" ({note})" if note else "")
    if array.dtype == np.uint16:
        from dnrt.runtime.io.intensity import declared_range_of_bits, png_significant_bits

        desc = f"{fmt} {width}x{height} {mode} uint16"
        declared = declared_range_of_bits(png_significant_bits(path)) if fmt == "PNG" else None
        source = Uint16ArraySource(
            array, path=path, description=desc, resolution=resolution, resolution_unit=unit, declared=declared
        )
        source.reader = "pillow"
        return source
    source = ArraySource(
        array,
        path=path,
        description=desc,
        resolution=resolution,
        resolution_unit=unit,
        icc_profile=info.get("icc_profile") or None,
    )
    source.reader = "pillow"
    return source


# -- bounded decoding of whole-image formats (issue 16) -------------------------------------
#: deflate's largest expansion is 1032:1; a PNG whose declared pixels need more than this many
#: times its file size cannot hold them (it is truncated or a decompression bomb).
_PNG_MAX_RATIO = 1100
#: Copies of the decoded pixels alive while a Pillow image becomes the source array (Pillow's
#: own buffer, the numpy view's conversion, the contiguous copy).
_PILLOW_COPIES = 3
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _check_declared_size(path: Path, name: str, img: Any) -> None:
    """Refuse, before decoding, an image whose declared size cannot be in the file or cannot fit
    in memory; for PNG also one whose compressed data ends before the last row (Pillow would
    hand over the missing rows as zeros)."""
    from dnrt.runtime.budget import gb, memory_available

    width, height = img.size
    bands = max(1, len(img.getbands()))
    decoded = width * height * max(bands, 3)
    available = memory_available()
    if available is not None and _PILLOW_COPIES * decoded > available:
        raise DnrtError(
            f"{name} declares {width} x {height} px; decoding it whole needs about "
            f"{gb(_PILLOW_COPIES * decoded)} but {gb(available)} is available: convert it to a tiled TIFF"
        )
    if img.format == "PNG":
        _check_png_data(path, name)
    elif img.format == "JPEG":
        _check_jpeg_data(path, name, width, height)


#: A Huffman-coded JPEG spends at least one bit on every MCU (each block's DC code; baseline adds
#: an end-of-block code), and an MCU covers at most 32 x 32 px (8 px blocks, sampling factors up
#: to 4): a file smaller than that cannot hold the declared image, and libjpeg would fill the
#: missing part with grey, slowly, for as large a size as a header declares.
_JPEG_MAX_PIXELS_PER_BIT = 32 * 32
#: Start-of-frame markers of arithmetic-coded JPEGs (adaptive coding has no per-MCU minimum).
_JPEG_ARITHMETIC_SOF = frozenset((0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))


def _jpeg_frame_marker(path: Path) -> int | None:
    """The JPEG's start-of-frame marker (0xC0-0xCF bar DHT/JPG/DAC), walking the segment headers."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\xd8":
            return None
        for _ in range(1000):  # headers before the frame are few; a loop of junk ends here
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                return None
            marker, length = head[1], int.from_bytes(head[2:4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return marker
            if marker == 0xDA or length < 2:  # scan data before any frame: not a valid JPEG
                return None
            fh.seek(length - 2, os.SEEK_CUR)
    return None


def _check_jpeg_data(path: Path, name: str, width: int, height: int) -> None:
    if _jpeg_frame_marker(path) in _JPEG_ARITHMETIC_SOF:
        return
    size = path.stat().st_size
    least = width * height // (_JPEG_MAX_PIXELS_PER_BIT * 8)
    if size < least:
        raise DnrtError(
            f"{name} declares {width} x {height} px in a file of {size} bytes; a JPEG of that size "
            f"needs at least {least} bytes: it is truncated or a decompression bomb"
        )


def _png_data_bytes(width: int, height: int, channels: int, depth: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (one filter byte each) a complete PNG image decompresses to."""

    def plane(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + -(-w * channels * depth // 8))

    if not interlaced:
        return plane(width, height)
    return sum(
        plane(-(-(width - x0) // dx) if width > x0 else 0, -(-(height - y0) // dy) if height > y0 else 0)
        for x0, y0, dx, dy in _ADAM7
    )


def _check_png_data(path: Path, name: str) -> None:
    """Stream the PNG's IDAT chunks through zlib, counting (not keeping) what they decompress to."""
    import struct
    import zlib

    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(8)
        head = fh.read(8 + 13)
        if len(head) < 21 or head[4:8] != b"IHDR":
            raise DnrtError(f"{name} is a damaged PNG (no IHDR chunk)")
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", head[8:21])
        channels = _PNG_CHANNELS.get(colour)
        if channels is None or depth not in (1, 2, 4, 8, 16):
            raise DnrtError(f"{name} is a damaged PNG (colour type {colour}, bit depth {depth})")
        expected = _png_data_bytes(width, height, channels, depth, interlace == 1)
        if expected > size * _PNG_MAX_RATIO + (1 << 20):
            raise DnrtError(
                f"{name} declares {width} x {height} px ({expected / 1e6:.0f} MB of pixel data) in a file "
                f"of {size} bytes, more than compression can hold: it is truncated or a decompression bomb"
            )
        fh.seek(8 + 8 + 13 + 4)
        inflate = zlib.decompressobj()
        produced = 0
        while produced <= expected and not inflate.eof:
            header = fh.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            if kind == b"IEND":
                break
            if kind != b"IDAT":
                fh.seek(length + 4, os.SEEK_CUR)
                continue
            remaining = length
            while remaining > 0 and produced <= expected:
                data = fh.read(min(remaining, 1 << 20))
                if not data:
                    break
                remaining -= len(data)
                try:
                    while data and produced <= expected:
                        produced += len(inflate.decompress(data, 1 << 22))
                        data = inflate.unconsumed_tail
                except zlib.error as exc:
                    raise DnrtError(f"{name} has corrupt image data ({exc})") from None
            fh.seek(remaining + 4, os.SEEK_CUR)
    if produced < expected:
        rows = height if expected == 0 else int(height * produced / expected)
        raise DnrtError(
            f"{name} is truncated: its image data holds about {rows} of its {height} rows "
            f"({produced} of {expected} bytes); refusing to translate the missing rows as black"
        )


def _pillow_pixels(img: Any, name: str) -> tuple[np.ndarray, str]:
    """Pixels of a Pillow image as uint8 ``[H, W, C]`` (C = 1 or 3) and a note on any conversion."""
    mode = img.mode
    note = ""
    if mode in ("RGB", "L"):
        array = np.asarray(img)
    elif mode in ("RGBA", "RGBa", "RGBX", "LA", "La"):
        array = np.asarray(img)[..., :-1]
        note = "alpha dropped" if "A" in mode or "a" in mode else ""
    elif mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        array = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))[..., :3]
        note = "palette -> RGB" + (", alpha dropped" if has_alpha else "")
    elif mode == "1":
        array = np.asarray(img.convert("L"))
        note = "bilevel -> 0/255"
    elif mode in ("CMYK", "YCbCr"):
        array = np.asarray(img.convert("RGB"))
        note = f"{mode} -> RGB"
    elif mode.startswith("I;16"):
        # Kept as stored: Uint16ArraySource maps it to 8 bits on read, by the intensity rules.
        array = np.asarray(img).astype(np.uint16)
        note = "16-bit -> 8-bit"
    elif mode in ("I", "F"):
        check_sample_dtype(np.dtype(np.int32 if mode == "I" else np.float32), name)
        raise AssertionError("unreachable")
    else:
        raise DnrtError(f"{name} has {mode} pixels; dnrt translates RGB or grey images; convert it first")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == np.uint16:
        return np.ascontiguousarray(array), note
    return np.ascontiguousarray(array, dtype=np.uint8), note


def _pillow_resolution(info: dict[str, Any]) -> tuple[tuple[float, float] | None, str | None]:
    dpi = info.get("dpi")
    if not dpi:
        return None, None
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError, IndexError):
        return None, None
    if x <= 0 or y <= 0:
        return None, None
    return (x, y), "INCH"


def _short(exc: BaseException) -> str:
    """An exception as a short single line for user messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
