"""A minimal TIFF / BigTIFF writer for hostile inputs: any tag values, any declared size.

tifffile refuses to write what the corpus needs (a 200000 px image with empty tiles, an
orientation of 99, a header that lies about its data), so the corpus builds files tag by tag.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

#: TIFF field types used here: SHORT, LONG, LONG8.
SHORT, LONG, LONG8 = 3, 4, 16

IMAGE_WIDTH, IMAGE_LENGTH, BITS_PER_SAMPLE, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
STRIP_OFFSETS, ORIENTATION, SAMPLES_PER_PIXEL, ROWS_PER_STRIP, STRIP_BYTE_COUNTS = 273, 274, 277, 278, 279
PLANAR_CONFIG, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = 284, 322, 323, 324, 325


@dataclass
class Tiff:
    """One image: its declared geometry, segment payloads (None: empty) and extra tags."""

    width: int
    height: int
    samples: int = 3
    bits: int = 8
    tile: tuple[int, int] | None = (16, 16)  # (length, width); None: strips
    rows_per_strip: int = 16
    compression: int = 8  # deflate
    photometric: int = 2  # RGB
    #: Bytes of every segment, in order; a shorter list repeats its last entry (None: empty).
    segments: list[bytes | None] = field(default_factory=lambda: [None])
    extra: dict[int, tuple[int, list[int]]] = field(default_factory=dict)
    bigtiff: bool = False

    def segment_count(self) -> int:
        """Segments the geometry implies (a zero tile size or strip height counts as one)."""
        if self.tile is not None:
            th, tw = (max(1, n) for n in self.tile)
            return -(-self.height // th) * -(-self.width // tw)
        return -(-self.height // max(1, self.rows_per_strip))

    def to_bytes(self) -> bytes:
        n = self.segment_count()
        head = 16 if self.bigtiff else 8
        payload = bytearray()
        offsets, counts = [], []
        for i in range(n):
            data = self.segments[min(i, len(self.segments) - 1)]
            if data is None:
                offsets.append(0)
                counts.append(0)
            else:
                offsets.append(head + len(payload))
                counts.append(len(data))
                payload += data
        big = LONG8 if self.bigtiff else LONG
        tags: dict[int, tuple[int, list[int]]] = {
            IMAGE_WIDTH: (LONG, [self.width]),
            IMAGE_LENGTH: (LONG, [self.height]),
            BITS_PER_SAMPLE: (SHORT, [self.bits] * self.samples),
            COMPRESSION: (SHORT, [self.compression]),
            PHOTOMETRIC: (SHORT, [self.photometric]),
            SAMPLES_PER_PIXEL: (SHORT, [self.samples]),
            PLANAR_CONFIG: (SHORT, [1]),
        }
        if self.tile is not None:
            tags[TILE_LENGTH] = (LONG, [self.tile[0]])
            tags[TILE_WIDTH] = (LONG, [self.tile[1]])
            tags[TILE_OFFSETS] = (big, offsets)
            tags[TILE_BYTE_COUNTS] = (big, counts)
        else:
            tags[ROWS_PER_STRIP] = (LONG, [self.rows_per_strip])
            tags[STRIP_OFFSETS] = (big, offsets)
            tags[STRIP_BYTE_COUNTS] = (big, counts)
        tags.update(self.extra)
        return _layout(tags, bytes(payload), self.bigtiff)


def _layout(tags: dict[int, tuple[int, list[int]]], payload: bytes, bigtiff: bool) -> bytes:
    code = {SHORT: "H", LONG: "I", LONG8: "Q"}
    head = 16 if bigtiff else 8
    inline = 8 if bigtiff else 4
    entry = 20 if bigtiff else 12
    ifd_at = head + len(payload)
    ifd_at += ifd_at % 2
    count_size = 8 if bigtiff else 2
    next_size = 8 if bigtiff else 4
    data_at = ifd_at + count_size + entry * len(tags) + next_size
    entries, blobs = bytearray(), bytearray()
    for tag in sorted(tags):
        kind, values = tags[tag]
        top = (1 << {SHORT: 16, LONG: 32, LONG8: 64}[kind]) - 1  # what the field type can hold
        raw = struct.pack("<" + code[kind] * len(values), *(min(v, top) for v in values))
        head_fmt = "<HHQ" if bigtiff else "<HHI"
        entries += struct.pack(head_fmt, tag, kind, len(values))
        if len(raw) <= inline:
            entries += raw.ljust(inline, b"\0")
        else:
            entries += struct.pack("<Q" if bigtiff else "<I", data_at + len(blobs))
            blobs += raw
            blobs += b"\0" * (len(blobs) % 2)
    if bigtiff:
        header = b"II+\0" + struct.pack("<HHQ", 8, 0, ifd_at)
        ifd = struct.pack("<Q", len(tags)) + entries + struct.pack("<Q", 0)
    else:
        header = b"II*\0" + struct.pack("<I", ifd_at)
        ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    body = header + payload
    body += b"\0" * (ifd_at - len(body))
    return body + ifd + bytes(blobs)


def deflate_tile(height: int, width: int, samples: int = 3, value: int = 128) -> bytes:
    """One deflate-compressed tile or strip of constant samples."""
    return zlib.compress(bytes([value]) * (height * width * samples), 9)
