"""Statistics tables and the 3x3 neighbourhoods each mode feeds the DenseNorm graph.

One DenseNorm op serves TIN, KIN and DN (docs/semantics.md section 4.5); what
differs is where its ``nbr_mean``/``nbr_std [n, L, 3, 3]`` inputs come from:

- DN  (:class:`DenseStats`):  the real 3x3 neighbourhood of tile statistics.
- KIN (:class:`KernelStats`): nine copies of the kernel-smoothed statistics.
- TIN (:class:`GlobalStats`): nine copies of the thumbnail's statistics.

Each provider says how many rows of statistics beyond the inferred row it
needs (``lookahead``); the scheduler collects that far ahead and never
further. Tables are float32 as the backends return them; the small amount of
float64 arithmetic (KIN smoothing, ``std_for_dense_op``) reuses the reference
functions of ``dnrt.semantics`` so the results match them exactly.

This module also holds TIN's thumbnail: an area downscale accumulated band by
band so the image is never loaded whole.
"""

from __future__ import annotations

import abc

import numpy as np

from dnrt.semantics import (
    DEGENERATE_DEFAULT,
    DEGENERATE_RATIO_DEFAULT,
    STD_FLOOR_DEFAULT,
    DegenerateRule,
    area_weights,
    condition_neighbourhood,
    constant_neighbourhood,
    kin_smooth,
    std_for_dense_op,
)


class StatisticsReadBeforeWritten(RuntimeError):
    """A scheduler bug: a table entry was used before its tile's statistics existed (section 5)."""


class StatsTables:
    """Per-tile statistics ``S[R, Q, L]`` (mean and std) with a written-mask invariant.

    ``window`` bounds how many tile rows are held: row ``r`` lives in slot ``r % window`` and
    writing a row evicts the one ``window`` rows above it. Streaming needs only the rows
    around the inferred one, and the whole table would grow with the slide's area: ``L`` is
    5,248 channels for the official 64-feature generator, 42 KB per tile, 1.6 GB for a
    100,000 x 100,000 px slide. ``None`` holds every row (two-pass needs them all). Reading an
    evicted row is the same scheduler bug as reading one not yet written, and raises alike.
    """

    def __init__(self, rows: int, cols: int, channels: int, window: int | None = None) -> None:
        self.rows, self.cols, self.channels = rows, cols, channels
        self.window = rows if window is None else max(1, min(int(window), rows))
        # NaN until written: if the invariant check were ever bypassed, DN's
        # non-finite -> centre rule (section 4.2) would show it as a seam, not garbage.
        self.mean = np.full((self.window, cols, channels), np.nan, dtype=np.float32)
        self.std = np.full((self.window, cols, channels), np.nan, dtype=np.float32)
        self.written = np.zeros((self.window, cols), dtype=bool)
        #: The tile row each slot holds (-1: none yet).
        self.held = np.full(self.window, -1, dtype=np.int64)

    def slots(self, rows: np.ndarray | int) -> np.ndarray:
        """Slots of tile rows (whether they are still held is :meth:`require`'s question)."""
        return np.asarray(rows, dtype=np.int64) % self.window

    def put(self, row: int, cols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        slot = row % self.window
        if self.held[slot] != row:
            if self.held[slot] > row:
                raise StatisticsReadBeforeWritten(
                    f"statistics of tile row {row} written after row {self.held[slot]} took its place "
                    "(scheduler bug)"
                )
            self.mean[slot] = np.nan
            self.std[slot] = np.nan
            self.written[slot] = False
            self.held[slot] = row
        self.mean[slot, cols] = mean
        self.std[slot, cols] = std
        self.written[slot, cols] = True

    def row_complete(self, row: int) -> bool:
        slot = row % self.window
        return bool(self.held[slot] == row and self.written[slot].all())

    def require(self, rows: np.ndarray, cols: np.ndarray | slice = slice(None)) -> None:
        """Raise unless every entry of ``rows x cols`` has been written (and is still held)."""
        rows = np.asarray(rows, dtype=np.int64)
        slots = self.slots(rows)
        block = self.written[slots][:, cols]
        if not (self.held[slots] == rows).all() or not block.all():
            raise StatisticsReadBeforeWritten(
                f"statistics of tile rows {sorted(set(rows.tolist()))} read before they were "
                "computed or after they were dropped (scheduler bug)"
            )

    def nbytes(self) -> int:
        return self.mean.nbytes + self.std.nbytes + self.written.nbytes


def gather_neighbourhoods(
    table: np.ndarray, row: int, cols: np.ndarray, row_index: np.ndarray | None = None
) -> np.ndarray:
    """Vectorized ``dnrt.semantics.gather_neighbourhood`` for tiles ``(row, cols)``: ``[n, L, 3, 3]``.

    Replication-pads the grid border; non-finite entries become the centre, per channel.
    ``row_index``: where rows ``row - 1 .. row + 1`` (already clipped to the grid) are in
    ``table``, when it holds a window of rows rather than all of them.
    """
    rows_total, cols_total = table.shape[:2]
    ri = np.clip(np.arange(row - 1, row + 2), 0, rows_total - 1) if row_index is None else row_index  # [3]
    qi = np.clip(np.asarray(cols)[:, None] + np.arange(-1, 2), 0, cols_total - 1)  # [n, 3]
    nbr = table[ri[None, :, None], qi[:, None, :]]  # [n, 3, 3, L]
    nbr = nbr.transpose(0, 3, 1, 2)  # [n, L, 3, 3]
    finite = np.isfinite(nbr)
    if not finite.all():
        nbr = np.where(finite, nbr, nbr[:, :, 1:2, 1:2])
    return np.ascontiguousarray(nbr, dtype=np.float32)


class NeighbourhoodSource(abc.ABC):
    """What the scheduler asks a mode for when it runs the DenseNorm graph."""

    #: Rows of statistics beyond the inferred row that must exist before inferring it.
    lookahead: int = 0

    def record(self, row: int, cols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        """Store the statistics a collect batch produced (``mean``/``std`` ``[n, L]``)."""
        raise RuntimeError(f"{type(self).__name__} takes no per-tile statistics")

    @abc.abstractmethod
    def neighbourhoods(self, row: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(nbr_mean, nbr_std)`` float32 ``[n, L, 3, 3]`` for tiles ``(row, cols)``, ready for the op."""

    def rows_needed(self, row: int, rows_total: int) -> np.ndarray:
        """Table rows that must be complete before ``row`` is inferred."""
        return np.clip(np.arange(row - self.lookahead, row + self.lookahead + 1), 0, rows_total - 1)

    def _tables(self, rows: int, cols: int, channels: int, ahead: int | None) -> StatsTables:
        """Tables holding the rows a neighbourhood reads (``r - lookahead .. r + lookahead``)
        plus ``ahead`` more that a collector may be filling meanwhile; ``None``: every row."""
        window = None if ahead is None else 2 * self.lookahead + 1 + ahead
        return StatsTables(rows, cols, channels, window)


class DenseStats(NeighbourhoodSource):
    """DN: the 3x3 neighbourhood of tile statistics, conditioned by the degenerate-statistics
    rule (sections 4 and 8). The rule looks only at the nine entries it is given, so streaming
    and two-pass, which gather the same entries, condition them identically."""

    lookahead = 1

    def __init__(
        self,
        rows: int,
        cols: int,
        channels: int,
        std_floor: float = STD_FLOOR_DEFAULT,
        ahead: int | None = None,
        degenerate: DegenerateRule | str = DEGENERATE_DEFAULT,
        degenerate_ratio: float = DEGENERATE_RATIO_DEFAULT,
    ) -> None:
        self.tables = self._tables(rows, cols, channels, ahead)
        self.std_floor = np.float32(std_floor)
        self.degenerate = DegenerateRule(degenerate)
        self.degenerate_ratio = float(degenerate_ratio)
        #: Slide-level (mean, std) ``[L]`` float32 for the ``slide`` rule (set by the scheduler).
        self.slide: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def needs_slide_statistics(self) -> bool:
        return self.degenerate is DegenerateRule.SLIDE

    def record(self, row: int, cols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        self.tables.put(row, cols, mean, std)

    def neighbourhoods(self, row: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.tables
        # The invariant of section 5: all nine entries of every tile in the batch exist. Checked on
        # exactly the entries the gather reads, independently of the look-ahead the scheduler used.
        near_rows = np.clip(np.arange(row - 1, row + 2), 0, t.rows - 1)
        near_cols = np.unique(np.clip(np.asarray(cols)[:, None] + np.arange(-1, 2), 0, t.cols - 1))
        t.require(near_rows, near_cols)
        slots = t.slots(near_rows)
        nbr_mean = gather_neighbourhoods(t.mean, row, cols, slots)
        nbr_std = gather_neighbourhoods(t.std, row, cols, slots)
        # float32 throughout: the floor is exact (max() of float32 values with the float32-rounded
        # floor equals rounding the float64 max(), rounding being monotonic).
        mean, std = condition_neighbourhood(
            nbr_mean, nbr_std, self.degenerate, self.std_floor, self.degenerate_ratio, self.slide
        )
        return np.ascontiguousarray(mean, np.float32), np.ascontiguousarray(std, np.float32)


class KernelStats(NeighbourhoodSource):
    """KIN: each tile's statistics smoothed by a ``k x k`` kernel over the grid (section 3).

    A row of smoothed statistics needs table rows ``r - k//2 .. r + k//2``, so the
    look-ahead is ``k // 2`` rows. Each row is smoothed from exactly the (clipped)
    rows the full-table reference would use, in the same order, so the result is
    bit-identical to ``kin_smooth`` on the whole table, whatever the schedule.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        channels: int,
        kernel: np.ndarray,
        std_floor: float = STD_FLOOR_DEFAULT,
        ahead: int | None = None,
    ) -> None:
        self.kernel = np.asarray(kernel, dtype=np.float64)
        self.lookahead = self.kernel.shape[0] // 2
        self.tables = self._tables(rows, cols, channels, ahead)
        self.std_floor = float(std_floor)
        self._row_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def record(self, row: int, cols: np.ndarray, mean: np.ndarray, std: np.ndarray) -> None:
        self.tables.put(row, cols, mean, std)

    def smoothed_row(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed ``(mean, std)`` of a whole tile row ``[Q, L]`` float64, std floored."""
        if row not in self._row_cache:
            t = self.tables
            slab = self.rows_needed(row, t.rows)
            t.require(slab)
            h = self.lookahead
            slots = t.slots(slab)
            mean = kin_smooth(t.mean[slots], self.kernel)[h]
            std = np.maximum(kin_smooth(t.std[slots], self.kernel)[h], self.std_floor)
            # Rows are inferred in order; older ones are never asked for again.
            self._row_cache = {r: v for r, v in self._row_cache.items() if r >= row - 1}
            self._row_cache[row] = (mean, std)
        return self._row_cache[row]

    def neighbourhoods(self, row: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.smoothed_row(row)
        nbr_mean = constant_neighbourhood(mean[cols]).astype(np.float32)
        nbr_std = constant_neighbourhood(std_for_dense_op(std[cols])).astype(np.float32)
        return nbr_mean, nbr_std


class GlobalStats(NeighbourhoodSource):
    """TIN: every tile normalized with the thumbnail's statistics (section 3)."""

    lookahead = 0

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        # The thumbnail's std has IN's epsilon inside the sqrt (>= 3e-3): no floor needed.
        self._mean = constant_neighbourhood(np.asarray(mean, np.float64).reshape(-1)).astype(np.float32)
        self._std = constant_neighbourhood(std_for_dense_op(np.asarray(std, np.float64).reshape(-1))).astype(
            np.float32
        )

    def neighbourhoods(self, row: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(cols)
        return (
            np.ascontiguousarray(np.broadcast_to(self._mean, (n,) + self._mean.shape)),
            np.ascontiguousarray(np.broadcast_to(self._std, (n,) + self._std.shape)),
        )

    def rows_needed(self, row: int, rows_total: int) -> np.ndarray:
        return np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- TIN thumbnail


class AreaThumbnail:
    """Area downscale (``dnrt.semantics.area_resize``) of an image fed band by band, top to bottom.

    Columns are reduced with prefix sums (exact box integrals, O(pixels)); rows
    with the reference's ``area_weights`` restricted to the few thumbnail rows a
    band touches. Memory: the thumbnail plus one sub-band in float64.
    """

    #: Rows converted to float64 at a time (bounds the temporary memory on wide images).
    SUB_BAND = 64

    def __init__(self, height: int, width: int, channels: int, size: int) -> None:
        self.height, self.width, self.size = height, width, size
        self.wy = area_weights(height, size)  # [size, H]
        self.edges = np.arange(size + 1, dtype=np.float64) * (width / size)
        self.thumb = np.zeros((size, size, channels), dtype=np.float64)
        self.next_row = 0

    def _reduce_columns(self, block: np.ndarray) -> np.ndarray:
        """``[h, W, C]`` -> ``[h, size, C]``: the mean of each output column's box."""
        h, w, c = block.shape
        prefix = np.zeros((h, w + 1, c), dtype=np.float64)
        np.cumsum(block, axis=1, dtype=np.float64, out=prefix[:, 1:])
        k = np.minimum(np.floor(self.edges).astype(np.int64), w - 1)
        frac = (self.edges - k)[None, :, None]
        # Integral of the piecewise-constant row from 0 to each edge.
        integral = prefix[:, k] + frac * block[:, k].astype(np.float64)
        return (integral[:, 1:] - integral[:, :-1]) / np.diff(self.edges)[None, :, None]

    def add(self, y0: int, pixels: np.ndarray) -> None:
        """Accumulate image rows ``[y0, y0 + len(pixels))``; bands must arrive in order."""
        if y0 != self.next_row:
            raise ValueError(f"thumbnail bands out of order: expected row {self.next_row}, got {y0}")
        for s in range(0, pixels.shape[0], self.SUB_BAND):
            sub = pixels[s : s + self.SUB_BAND]
            a = y0 + s
            b = a + sub.shape[0]
            cols = self._reduce_columns(sub)  # [h, size, C]
            weights = self.wy[:, a:b]  # [size, h]
            touched = np.flatnonzero(weights.any(axis=1))
            lo, hi = touched[0], touched[-1] + 1
            self.thumb[lo:hi] += np.einsum("iy,yjc->ijc", weights[lo:hi], cols)
        self.next_row = y0 + pixels.shape[0]

    def result(self) -> np.ndarray:
        """The thumbnail ``[size, size, C]`` float64, in pixel units ``[0, 255]``."""
        if self.next_row != self.height:
            raise ValueError(f"thumbnail incomplete: {self.next_row} of {self.height} rows seen")
        return self.thumb
