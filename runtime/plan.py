"""The tile plan: which pixels every tile of the grid reads (docs/semantics.md section 1).

The image is cut into ``R x Q`` tiles of ``T x T`` with stride ``T``. It is
*virtually* reflect-padded at the bottom and right to ``R*T x Q*T`` (repeated
mirror, numpy's ``'reflect'``, so an image smaller than one tile still works),
and each tile then gets its own reflect pad of ``M`` on every side
(``np.pad(tile, M, 'reflect')``: the reference's margin is a mirror of the tile
itself, not the neighbouring tiles' pixels). With ``margin_source="image"`` the
margin is instead the real neighbouring pixels of the image (reflected only at
the image border): the network then sees true context around every tile, which
removes the convolution seams the mirrored margin leaves; it is dnrt's option,
not the reference's geometry. Nothing is ever padded for real:
the plan turns both reflections into index arrays into a band of source rows,
which it splits once into runs of consecutive (or mirrored) pixels, so building a
network input is a few slice copies per tile (``dnrt.runtime.pixels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.pixels import Run, gather_network_input, unit_runs
from dnrt.semantics import check_map_sizes, grid_shape, reflect_index

MARGIN_SOURCES = ("tile", "image")


@dataclass(frozen=True)
class RowBand:
    """The source pixels one row of tiles needs: image rows ``[y0, y1)``, every column."""

    row: int
    y0: int
    y1: int
    pixels: np.ndarray  # [y1 - y0, W, C] uint8


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile: int
    margin: int
    #: "tile": the margin mirrors the tile itself (reference); "image": the neighbouring pixels.
    margin_source: str = "image"
    rows: int = field(init=False)
    cols: int = field(init=False)
    #: Slice runs of each tile row's / column's gather, computed once (see ``_runs``).
    _run_cache: dict = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.margin_source not in MARGIN_SOURCES:
            raise DnrtError(
                f"unknown margin source {self.margin_source!r} (expected one of {', '.join(MARGIN_SOURCES)})"
            )
        rows, cols = grid_shape(self.height, self.width, self.tile)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "cols", cols)

    @classmethod
    def create(
        cls,
        height: int,
        width: int,
        tile: int,
        margin: int,
        strides: list[int],
        margin_source: str = "image",
        multiple: int = 1,
    ) -> TilePlan:
        """A plan for an image, after checking that every norm layer's map is even and the
        network input a multiple of ``multiple`` (the manifest's ``network_multiple``)."""
        check_map_sizes(tile, margin, strides, multiple)
        return cls(height, width, tile, margin, margin_source)

    # -- geometry ----------------------------------------------------------------------
    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    @property
    def input_size(self) -> int:
        """Side of the network input: ``T + 2M``."""
        return self.tile + 2 * self.margin

    def _padded_offsets(self) -> np.ndarray:
        """Offsets ``[-M, T+M)`` relative to a tile's origin: mirrored into ``[0, T)`` for the
        tile's own pad, left as they are (the neighbours' pixels) for ``margin_source="image"``."""
        offsets = np.arange(-self.margin, self.tile + self.margin)
        return offsets if self.margin_source == "image" else reflect_index(offsets, self.tile)

    def source_rows(self, row: int) -> np.ndarray:
        """Image rows ``[S]`` feeding the network input of tile row ``row``, both reflections applied."""
        return reflect_index(row * self.tile + self._padded_offsets(), self.height)

    def source_cols(self, cols: np.ndarray) -> np.ndarray:
        """Image columns ``[n, S]`` feeding the network inputs of tile columns ``cols``."""
        cols = np.asarray(cols)
        return reflect_index(cols[:, None] * self.tile + self._padded_offsets()[None, :], self.width)

    def band_extent(self, row: int) -> tuple[int, int]:
        """The image rows ``[y0, y1)`` a tile row reads (at most ~2T: its own plus reflected ones)."""
        src = self.source_rows(row)
        return int(src.min()), int(src.max()) + 1

    def output_extent(self, row: int) -> tuple[int, int]:
        """The image rows ``[y0, y1)`` a tile row writes (the last one cropped to the image)."""
        y0 = row * self.tile
        return y0, min(y0 + self.tile, self.height)

    def chunks(self, batch: int) -> list[np.ndarray]:
        """Tile columns of one row split into batches.

        Every schedule uses exactly these batches for both passes, so a tile is
        always computed in the same batch composition: backends whose results
        depend on the batch (ONNX Runtime can) still give bit-identical output
        across schedules.
        """
        batch = max(1, int(batch))
        return [np.arange(q, min(q + batch, self.cols)) for q in range(0, self.cols, batch)]

    def columns_through(self, col: int) -> int:
        """Output columns ``0 .. x-1`` covered by tile columns ``0 .. col``: returns ``x``."""
        return min((col + 1) * self.tile, self.width)

    # -- data --------------------------------------------------------------------------
    def _runs(self, axis: str, index: int, offset: int = 0) -> tuple[Run, ...]:
        """Slice runs reading tile row ``index`` from a band starting at image row ``offset``,
        or tile column ``index``; computed once per plan (threads may race to fill an entry:
        both compute the same value)."""
        key = (axis, index, offset)
        runs = self._run_cache.get(key)
        if runs is None:
            if axis == "row":
                source = self.source_rows(index) - offset
            else:
                source = self.source_cols(np.array([index]))[0]
            runs = self._run_cache.setdefault(key, unit_runs(source))
        return runs

    def network_input(self, band: RowBand, cols: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Float32 network inputs ``[n, C, S, S]`` of tiles ``(band.row, cols)``.

        Same arithmetic as ``dnrt.semantics.to_network`` (``v / 127.5 - 1`` in float32), read
        from the band run by run (``dnrt.runtime.pixels``). ``out``, when given, is a
        C-contiguous float32 buffer of at least ``n`` tiles; its first ``n`` are filled and
        returned (a stage reuses one buffer for every call).
        """
        n, s, channels = len(cols), self.input_size, band.pixels.shape[2]
        if out is None:
            out = np.empty((n, channels, s, s), dtype=np.float32)
        else:
            out = out[:n]
            if out.shape != (n, channels, s, s) or out.dtype != np.float32 or not out.flags.c_contiguous:
                raise ValueError(f"network input buffer {out.dtype} {out.shape} does not fit {n} tiles")
        row_runs = self._runs("row", band.row, band.y0)
        for i, q in enumerate(cols):
            gather_network_input(band.pixels, row_runs, self._runs("col", int(q)), out[i])
        return out

    def crop_output(self, image: np.ndarray) -> np.ndarray:
        """Network outputs ``[n, C, S, S]`` -> the tiles' own ``[n, C, T, T]`` (a view, still planar:
        the scheduler converts planes and interleaves channels only when it pastes)."""
        m, t = self.margin, self.tile
        return image[:, :, m : m + t, m : m + t]
