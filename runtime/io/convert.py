"""Sample conversions shared by every reader: whatever is stored -> uint8, colour channels only.

dnrt translates 8-bit images. The documented conversions (README, "Formats"):

- uint8 is taken as is;
- uint16 becomes ``round(v / 257)`` (65535 -> 255, exact inverse of the usual ``v * 257``), or
  is mapped from an intensity range ``LO..HI`` (runtime/io/intensity.py);
- 1-bit (bilevel) becomes 0 / 255;
- palette images become RGB through their colour map;
- "min-is-white" grey is inverted to the usual min-is-black;
- alpha and other extra samples are dropped (the model sees colour only).

Anything else (float, signed, 32-bit) is refused with one line telling the user to convert first.
"""

from __future__ import annotations

import numpy as np

from dnrt.errors import DnrtError


def check_sample_dtype(dtype: np.dtype, name: str) -> None:
    """Refuse sample types that have no documented conversion to uint8."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b" or dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return
    raise DnrtError(
        f"{name} has {dtype.name} samples; dnrt translates 8-bit images (16-bit are converted); convert it first"
    )


def to_uint8(values: np.ndarray, intensity: tuple[int, int] | None = None) -> np.ndarray:
    """Convert bool / uint8 / uint16 samples to uint8 (see the module docstring).

    ``intensity`` ``(LO, HI)`` maps 16-bit samples ``LO..HI`` onto 0..255 instead of the full range
    (runtime/io/intensity.py).
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * np.uint8(255)
    if values.dtype.kind == "u" and values.dtype.itemsize == 2 and intensity not in (None, (0, 65535)):
        from dnrt.runtime.io.intensity import map_uint16

        return map_uint16(values, *intensity)
    if values.dtype.kind == "u" and values.dtype.itemsize == 2:
        # round(v / 257) without floats: no ties are possible for integer v, so
        # floor((v + 128) / 257) is exact.
        wide = values.astype(np.uint32)
        wide += 128
        wide //= 257
        return wide.astype(np.uint8)
    raise ValueError(f"no uint8 conversion for {values.dtype}")  # guarded by check_sample_dtype


def palette_lut(colormap: np.ndarray) -> np.ndarray:
    """A TIFF colour map ``[3, 2**bits]`` (16-bit by the spec) as a uint8 lookup table ``[2**bits, 3]``.

    Some writers store 8-bit values in the 16-bit map; a map whose maximum is below 256 is taken as is.
    """
    cmap = np.asarray(colormap)
    if cmap.ndim == 1:  # grey colour map
        cmap = np.stack([cmap] * 3)
    lut = cmap[:3].T
    if lut.max(initial=0) < 256:
        return lut.astype(np.uint8)
    return to_uint8(lut.astype(np.uint16))
