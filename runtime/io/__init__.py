"""Image input/output for the runtime.

Reading: :func:`open_image` returns an :class:`ImageSource` that serves regions as uint8
``[h, w, channels]`` without loading large images (TIFF family read segment by segment; PNG, JPEG
and other Pillow formats decoded whole, up to 1 gigapixel). Writing: :func:`open_writer` returns a
writer taking bands top to bottom, producing a tiled BigTIFF (optionally pyramidal, plain or
OME-TIFF, carrying the pixel size and objective power) or a small PNG/JPEG, written under a
temporary name and renamed when complete. :func:`check_output_path`
validates a destination before any work starts.
"""

from __future__ import annotations

from dnrt.atomic import check_output_path
from dnrt.runtime.io.reader import MAX_PILLOW_PIXELS, ArraySource, ImageSource, open_image
from dnrt.runtime.io.writer import Compression, PillowWriter, TileWriter, check_compression, open_writer

__all__ = [
    "MAX_PILLOW_PIXELS",
    "ArraySource",
    "Compression",
    "ImageSource",
    "PillowWriter",
    "TileWriter",
    "check_compression",
    "check_output_path",
    "open_image",
    "open_writer",
]
