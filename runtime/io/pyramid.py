"""Reduced-resolution levels for pyramidal output, computed while level 0 streams.

Each level is a 2x box downsample of the level above (``ceil`` sizes; an odd last row or column
is averaged with itself), rounded half up. Levels are computed band by band as level-0 rows
arrive and appended to raw spill files beside the destination, so memory stays at a few rows
per level whatever the image size. Plain file writes (not a memory map) keep the spilled pixels
in the page cache rather than in the process's resident memory. The levels are added until one
fits in a single tile.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from dnrt.atomic import create_temp, remove_quietly


def level_sizes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """``(h, w)`` of each reduced level (level 1 first), halving until a level fits in one tile."""
    sizes = []
    h, w = height, width
    while h > tile or w > tile:
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    return sizes


def downsample2(rows: np.ndarray) -> np.ndarray:
    """2x box downsample of an even number of rows ``[2n, w, c]`` uint8 -> ``[n, ceil(w/2), c]``."""
    n2, w, c = rows.shape
    if w % 2:
        rows = np.concatenate([rows, rows[:, -1:]], axis=1)  # odd last column pairs with itself
    # Two strided adds on contiguous halves: several times faster than sum() over block axes.
    vertical = np.add(rows[0::2], rows[1::2], dtype=np.uint16).reshape(n2 // 2, -1, 2 * c)
    total = np.add(vertical[:, :, :c], vertical[:, :, c:])
    total += 2  # round half up
    total >>= 2
    return total.astype(np.uint8)


class _Level:
    def __init__(
        self, dest: Path, index: int, height: int, width: int, channels: int, parent_width: int
    ) -> None:
        self.height, self.width, self.channels = height, width, channels
        self.parent_width = parent_width
        self.path = create_temp(dest, f".dnrt-level{index}-")
        self.file = open(self.path, "r+b")  # noqa: SIM115 - lives as long as the writer
        self.rows = 0
        self.pending: np.ndarray | None = None  # a lone row of the level above awaiting its pair

    def reduce(self, parent_rows: np.ndarray, final: bool = False) -> np.ndarray:
        """Downsample as many complete row pairs as possible; keep an odd row for the next call."""
        if self.pending is not None:
            parent_rows = np.concatenate([self.pending, parent_rows])
            self.pending = None
        if final and len(parent_rows) % 2:
            parent_rows = np.concatenate([parent_rows, parent_rows[-1:]])  # odd last row
        if len(parent_rows) % 2:
            self.pending = parent_rows[-1:].copy()
            parent_rows = parent_rows[:-1]
        if len(parent_rows) == 0:
            return np.zeros((0, self.width, self.channels), np.uint8)
        out = downsample2(parent_rows)
        out.tofile(self.file)
        self.rows += len(out)
        return out

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        row_bytes = self.width * self.channels
        self.file.seek(y0 * row_bytes)
        data = self.file.read((y1 - y0) * row_bytes)
        return np.frombuffer(data, np.uint8).reshape(y1 - y0, self.width, self.channels)


class PyramidBuilder:
    """Streams level-0 bands into reduced levels spilled to disk; yields their tiles afterwards."""

    def __init__(self, dest: Path, height: int, width: int, channels: int, tile: int) -> None:
        self.tile = tile
        self.levels: list[_Level] = []
        try:
            parent_width = width
            for i, (h, w) in enumerate(level_sizes(height, width, tile), start=1):
                self.levels.append(_Level(dest, i, h, w, channels, parent_width))
                parent_width = w
        except BaseException:
            self.cleanup()
            raise

    @property
    def paths(self) -> list[Path]:
        return [level.path for level in self.levels]

    def push(self, band: np.ndarray) -> None:
        """Feed level-0 rows (top to bottom, any count)."""
        rows = band
        for level in self.levels:
            rows = level.reduce(rows)
            if len(rows) == 0:
                break

    def finish(self) -> None:
        """Flush odd trailing rows once level 0 is complete."""
        rows: np.ndarray | None = None
        for level in self.levels:
            if rows is None or len(rows) == 0:
                rows = np.zeros((0, level.parent_width, level.channels), np.uint8)
            rows = level.reduce(rows, final=True)
            level.file.flush()

    def tiles(self, index: int, stop: Callable[[], None] | None = None) -> Iterator[np.ndarray]:
        """Tiles of level ``index`` (1-based) in row-major order, one tile row in memory at a time."""
        level = self.levels[index - 1]
        t = self.tile
        for y in range(0, level.height, t):
            if stop is not None:
                stop()
            rows = level.read_rows(y, min(y + t, level.height))
            for x in range(0, level.width, t):
                yield rows[:, x : x + t]

    def pixels(self, index: int) -> np.ndarray:
        """All of level ``index`` (1-based) at once: for the small levels (a thumbnail)."""
        level = self.levels[index - 1]
        return level.read_rows(0, level.height)

    def cleanup(self) -> None:
        for level in self.levels:
            with contextlib.suppress(OSError):
                level.file.close()
            remove_quietly(level.path)
        self.levels = []


def spill_bytes(height: int, width: int, channels: int, tile: int) -> int:
    """Disk space the spill files need (about a third of the raw level-0 size)."""
    return sum(h * w * channels for h, w in level_sizes(height, width, tile))


__all__ = ["PyramidBuilder", "downsample2", "level_sizes", "spill_bytes"]
