"""Gray images and 16-bit intensities: what a 1-channel model and MRI-style input need.

The documented rules (README, "Image formats"):

- **16-bit samples** are mapped linearly from an intensity range ``LO..HI`` onto 0..255:
  ``round(clip((v - LO) / (HI - LO), 0, 1) * 255)``. The range is ``--intensity-range LO:HI``
  when given, else the one the file declares (TIFF ``SMinSampleValue``/``SMaxSampleValue``;
  PNG ``sBIT`` significant bits ``b``: ``0..2**b - 1``), else the full range 0..65535 for RGB
  (``round(v / 257)``, the exact inverse of the usual ``v * 257``). A 16-bit **gray** image
  with neither is refused: MRI and other scientific gray data rarely fill 0..65535, and a
  silent full-range mapping would hand the model a nearly black image.
- **RGB into a 1-channel model** is refused unless asked for (``--to-gray``), which takes the
  ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` (halves rounded up; the weights of
  Pillow's ``L`` mode and most toolkits) of the 8-bit samples.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from dnrt.errors import DnrtError

FULL_RANGE = (0, 65535)

#: ITU-R BT.601 luma weights, in thousandths (integer arithmetic: exact and reproducible).
BT601_WEIGHTS = (299, 587, 114)

TO_GRAY_TEXT = "ITU-R BT.601 luma weights, Y = 0.299 R + 0.587 G + 0.114 B"


def parse_intensity_range(text: str) -> tuple[int, int]:
    """``"LO:HI"`` -> ``(LO, HI)``: integers with ``0 <= LO < HI <= 65535``; else an exit-2 error."""
    parts = str(text).split(":")
    try:
        lo, hi = (int(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None or not 0 <= lo < hi <= 65535:
        raise DnrtError(
            f"--intensity-range must be LO:HI with integers 0 <= LO < HI <= 65535 (e.g. 0:4095), got {text!r}",
            exit_code=2,
        )
    return lo, hi


def map_uint16(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``round(clip((v - lo) / (hi - lo), 0, 1) * 255)`` of uint16 samples, as uint8.

    Integer arithmetic: ``(2 * 255 * (v - lo) + (hi - lo)) // (2 * (hi - lo))`` rounds halves up;
    for the full range it equals ``round(v / 257)`` (no ties are possible there).
    """
    span = hi - lo
    wide = np.clip(values.astype(np.int64), lo, hi) - lo
    wide *= 510
    wide += span
    wide //= 2 * span
    return wide.astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 ``[h, w, 3]`` as uint8 ``[h, w, 1]``: ``0.299 R + 0.587 G + 0.114 B``, halves up."""
    r, g, b = BT601_WEIGHTS
    wide = rgb[..., 0].astype(np.uint32) * r
    wide += rgb[..., 1].astype(np.uint32) * g
    wide += rgb[..., 2].astype(np.uint32) * b
    wide += 500
    wide //= 1000
    return wide.astype(np.uint8)[..., None]


def png_significant_bits(path: os.PathLike[str] | str) -> int | None:
    """The gray sample's significant bits of a PNG's ``sBIT`` chunk, or None without one."""
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return None  # sBIT precedes the image data
                data = fh.read(length)
                fh.seek(4, os.SEEK_CUR)  # CRC
                if kind == b"sBIT" and data:
                    return int(data[0])
    except OSError:
        return None


def declared_range_of_bits(bits: int | None) -> tuple[int, int] | None:
    """``0..2**bits - 1`` for 1..16 significant bits, else None."""
    if bits is None or not 1 <= bits <= 16:
        return None
    return 0, (1 << bits) - 1


class GraySource:
    """An RGB source read as BT.601 luma (``--to-gray``): regions come back ``[h, w, 1]``.

    Everything but the pixels and the colour layout is the wrapped source's (size, resolution,
    objective power, ...); an RGB ICC profile does not describe gray pixels and is dropped.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.channels = 1
        self.photometric = "minisblack"
        self.icc_profile = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def description(self) -> str:
        return f"{self.inner.description} (to gray: BT.601 luma)"

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return luminance(self.inner.read_region(y0, y1, x0, x1))

    def read_rows_cols(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return luminance(self.inner.read_rows_cols(rows, cols))

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> GraySource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prepare_source(
    source: Any,
    in_channels: int,
    *,
    to_gray: bool = False,
    intensity_range: tuple[int, int] | None = None,
    name: str | None = None,
) -> Any:
    """Apply the rules above to an opened source for a model taking ``in_channels`` channels.

    Returns the source to read (``source`` itself or a :class:`GraySource` over it); raises a
    one-line DnrtError for RGB into a gray model without ``to_gray`` and for 16-bit gray input
    without a usable range. Runs before any pixel is read (readers convert lazily).
    """
    label = name or f"'{os.fspath(getattr(source, 'path', '<image>'))}'"
    if in_channels == 3 and source.channels == 1:
        return source  # a gray image for an RGB model: the translator's channel check says so
    if getattr(source, "bits", 8) == 16:
        if intensity_range is not None:
            source.set_intensity_range(*intensity_range, origin="--intensity-range")
        elif source.intensity_origin is None:
            if source.channels == 1:
                raise DnrtError(
                    f"{label} is a 16-bit gray image that declares no intensity range (no TIFF "
                    "SMin/SMaxSampleValue, no PNG sBIT): pass --intensity-range LO:HI, e.g. 0:4095 "
                    "for 12-bit data or 0:65535 for the full range"
                )
            source.set_intensity_range(*FULL_RANGE, origin="full range")
    elif intensity_range is not None:
        raise DnrtError(f"--intensity-range applies to 16-bit images; {label} has 8-bit samples", exit_code=2)
    if in_channels == 1 and source.channels == 3:
        if not to_gray:
            raise DnrtError(
                f"the model takes gray (1-channel) images and {label} is RGB: pass --to-gray to convert "
                f"it ({TO_GRAY_TEXT})"
            )
        return GraySource(source)
    return source


__all__ = [
    "BT601_WEIGHTS",
    "FULL_RANGE",
    "GraySource",
    "declared_range_of_bits",
    "luminance",
    "map_uint16",
    "parse_intensity_range",
    "png_significant_bits",
    "prepare_source",
]
