"""PNG files chunk by chunk, so the corpus can declare any size and stop the data anywhere."""

from __future__ import annotations

import struct
import zlib


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows: int | None = None, *, colour: int = 2, value: int = 100) -> bytes:
    """An 8-bit PNG (colour type 2: RGB, 0: grey) declaring ``width x height`` whose complete
    zlib stream holds only ``rows`` scanlines (None: all of them)."""
    channels = {0: 1, 2: 3, 6: 4}[colour]
    rows = height if rows is None else rows
    scanline = b"\0" + bytes([value]) * (width * channels)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(scanline) for _ in range(rows)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
