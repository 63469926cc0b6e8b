"""Region reads through OpenSlide: the vendor slide formats tifffile does not read.

OpenSlide (``pip install 'dnrt[slides]'``: openslide-python with the openslide-bin library) reads
Aperio SVS, Hamamatsu NDPI/VMS/VMU, 3DHistech MRXS, Leica SCN, Ventana BIF, Philips TIFF, DICOM
WSI and generic tiled TIFF, and gives every level the same region interface. It is imported here
only, when a file needs it.

OpenSlide hands back RGBA: pixels outside the scanned area are transparent. They are composited
onto the slide's background colour (``openslide.background-color``, white when the slide names
none), which is how pathology viewers show them; opaque pixels pass through unchanged.

Bands are read in column chunks, so the RGBA temporaries stay a few MB whatever the slide's width,
and the chunks of one band are read in parallel threads (the library is thread-safe and ctypes
releases the GIL while it decodes).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.io.reader import ImageSource, MissingLevel, _short, quoted, resolution_from_mpp

#: Columns per OpenSlide call: narrow enough that a band's chunks keep every worker busy and its RGBA
#: chunk (rows x this x 4 bytes) stays small.
CHUNK_COLUMNS = 512

_INSTALL_HINT = "pip install 'dnrt[slides]' (openslide-python and openslide-bin)"


def _openslide() -> Any | None:
    """The openslide module, or None when the package or its library is missing."""
    try:
        import openslide
    except (ImportError, OSError):
        return None
    return openslide


def openslide_vendor(path: Path) -> str | None:
    """The vendor OpenSlide recognises in ``path`` ("aperio", "mirax", "dicom", ...), or None
    (not a slide format it knows, or OpenSlide is not installed)."""
    openslide = _openslide()
    if openslide is None:
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # OpenSlideError on an unreadable file: not a slide for our purposes
        return None


def open_openslide(path: Path, *, level: int = 0, workers: int | None = None) -> OpenSlideSource:
    """Open ``level`` of a slide with OpenSlide; every problem is a one-line DnrtError."""
    openslide = _openslide()
    name = quoted(path)
    if openslide is None:
        raise DnrtError(f"reading {name} with OpenSlide needs OpenSlide: {_INSTALL_HINT}")
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise DnrtError(f"{name} is not a slide OpenSlide can open (format not recognised)") from None
    except openslide.OpenSlideError as exc:
        raise DnrtError(f"OpenSlide cannot open {name}: {_short(exc)}") from None
    except OSError as exc:
        raise DnrtError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return OpenSlideSource(path, slide, level, workers)
    except BaseException:
        slide.close()
        raise


class OpenSlideSource(ImageSource):
    """One level of a slide opened by OpenSlide, served as RGB uint8 regions."""

    def __init__(self, path: Path, slide: Any, level: int, workers: int | None) -> None:
        super().__init__()
        self.path = path
        self.name = quoted(path)
        self._slide = slide
        sizes = tuple((int(w), int(h)) for w, h in slide.level_dimensions)
        if not 0 <= level < len(sizes):
            raise MissingLevel(self.name, level, len(sizes))
        self.reader, self.level, self.level_sizes = "openslide", level, sizes
        self.width, self.height = sizes[level]
        if self.width <= 0 or self.height <= 0:
            raise DnrtError(f"{self.name} has zero size ({self.width}x{self.height} pixels)")
        self.channels, self.photometric = 3, "rgb"
        props = slide.properties
        # OpenSlide divides level-0 coordinates by this to address the level.
        self._downsample = float(slide.level_downsamples[level])
        scale_x, scale_y = sizes[0][0] / self.width, sizes[0][1] / self.height
        mpp = _mpp(props)
        if mpp is not None:
            self.resolution, self.resolution_unit = resolution_from_mpp((mpp[0] * scale_x, mpp[1] * scale_y))
        power = _positive(props.get("openslide.objective-power"))
        self.objective_power = None if power is None else power / ((scale_x + scale_y) / 2)
        self.background = _background(props.get("openslide.background-color"))
        self.icc_profile = _icc(slide)
        self.vendor = str(props.get("openslide.vendor", "unknown"))
        self.description = (
            f"OpenSlide {self.vendor} {self.width}x{self.height} RGB, level {level} of {len(sizes)}"
        )
        if workers is None:
            workers = min(4, max(1, os.cpu_count() or 1))
        self._workers = max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        slide = self._slide
        if slide is None:
            raise DnrtError(f"{self.name} is closed")
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        spans = [(a, min(a + CHUNK_COLUMNS, x1)) for a in range(x0, x1, CHUNK_COLUMNS)]

        def read(span: tuple[int, int]) -> None:
            a, b = span
            self._read_chunk(slide, out[:, a - x0 : b - x0], y0, a)

        if len(spans) > 1 and self._workers > 1:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="dnrt-openslide")
                pool = self._pool
            list(pool.map(read, spans))
        else:
            for span in spans:
                read(span)
        self.stats["segments_decoded"] += len(spans)
        return out

    def _read_chunk(self, slide: Any, out: np.ndarray, y0: int, x0: int) -> None:
        h, w = out.shape[:2]
        # OpenSlide addresses every level in level-0 coordinates and divides by the level's
        # downsample: exact where that is an integer; elsewhere (sides not divisible by the factor)
        # the region lands a fraction of a pixel off and OpenSlide interpolates. Rounding is closest.
        location = (round(x0 * self._downsample), round(y0 * self._downsample))
        try:
            rgba = np.asarray(slide.read_region(location, self.level, (w, h)))
        except Exception as exc:  # OpenSlideError for a damaged tile; the handle is unusable after it
            raise DnrtError(
                f"OpenSlide could not read {self.name} at level {self.level}, rows {y0}-{y0 + h}, "
                f"columns {x0}-{x0 + w} ({_short(exc)}); the file may be truncated or corrupt"
            ) from None
        composite_rgba(rgba, self.background, out)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def composite_rgba(rgba: np.ndarray, background: tuple[int, int, int], out: np.ndarray) -> None:
    """RGB of straight-alpha RGBA over ``background``: ``round((c a + bg (255 - a)) / 255)``.

    openslide-python returns straight (not premultiplied) alpha; transparent pixels (``a = 0``,
    outside the scanned area) become the background, opaque ones keep their colour exactly.
    """
    alpha = rgba[..., 3]
    if int(alpha.min()) == 255:  # the common case: every pixel scanned
        out[...] = rgba[..., :3]
        return
    a = alpha[..., None].astype(np.uint32)
    bg = np.asarray(background, np.uint32)
    out[...] = ((rgba[..., :3] * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _mpp(props: Any) -> tuple[float, float] | None:
    x, y = _positive(props.get("openslide.mpp-x")), _positive(props.get("openslide.mpp-y"))
    if x is None and y is None:
        return None
    return (x or y, y or x)  # type: ignore[return-value]


def _background(value: Any) -> tuple[int, int, int]:
    """``openslide.background-color`` (hex RRGGBB), white when absent or malformed."""
    text = str(value or "").strip().lstrip("#")
    if len(text) == 6:
        try:
            return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))
        except ValueError:
            pass
    return (255, 255, 255)


def _icc(slide: Any) -> bytes | None:
    try:
        profile = slide.color_profile
    except Exception:
        return None
    if profile is None:
        return None
    try:
        return bytes(profile.tobytes())
    except Exception:
        return None
