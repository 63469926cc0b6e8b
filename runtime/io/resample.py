"""Resampling a source to another pixel size with an area filter, region by region.

An output pixel ``j`` covers the input interval ``[j f, (j + 1) f)`` (``f``: input pixels per
output pixel along that axis, clipped at the image's end) and is the mean of the input over that
interval, each input pixel weighted by how much of it lies inside. Where ``f`` is an integer
``k`` this is the exact ``k x k`` box average, computed in integers
(``floor(sum / n + 1/2)``); otherwise the weights are fractional (float64 taps). Pixels past
the image's last column or row (the last output pixel may cover less than ``f``) are averaged
over what exists.

Every output pixel depends only on the input pixels it covers, with weights computed from its
global position: a pixel has the same value whichever region it is read in, so overlapping
band reads agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from dnrt.runtime.io.reader import ImageSource

#: Output columns resampled per input read: the input chunk stays ``rows x (this x f) x 3`` bytes.
CHUNK_COLUMNS = 1024
#: Relative tolerance under which a ratio counts as 1 or as an integer.
RATIO_TOLERANCE = 1e-3


def snap_ratio(f: float) -> float:
    """``f`` rounded to the nearest integer when within :data:`RATIO_TOLERANCE` of it."""
    k = round(f)
    return float(k) if k >= 1 and abs(f - k) <= RATIO_TOLERANCE * f else float(f)


def output_size(n: int, f: float) -> int:
    """Output pixels covering ``n`` input pixels at ratio ``f`` (the last one may be partial)."""
    return max(1, math.ceil(n / f - 1e-6))


def box_reduce(pixels: np.ndarray, ky: int, kx: int) -> np.ndarray:
    """Exact ``ky x kx`` box average of uint8 ``[h, w, c]`` (partial boxes at the far edges)."""
    h, w = pixels.shape[:2]
    rows = np.add.reduceat(pixels, np.arange(0, h, ky), axis=0, dtype=np.uint32)
    sums = np.add.reduceat(rows, np.arange(0, w, kx), axis=1, dtype=np.uint32)
    ny = np.minimum(ky, h - np.arange(0, h, ky)).astype(np.uint32)
    nx = np.minimum(kx, w - np.arange(0, w, kx)).astype(np.uint32)
    n = ny[:, None, None] * nx[None, :, None]
    return ((2 * sums + n) // (2 * n)).astype(np.uint8)


def area_taps(j0: int, j1: int, f: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices ``[j1 - j0, K]`` and normalised weights of output pixels ``j0..j1-1``.

    Output pixel ``j`` covers ``[j f, min((j + 1) f, n))``; taps beyond it get weight 0.
    """
    j = np.arange(j0, j1, dtype=np.float64)
    a = j * f
    b = np.minimum((j + 1) * f, n)
    first = np.floor(a).astype(np.int64)
    taps = int(np.max(np.ceil(b).astype(np.int64) - first)) if j1 > j0 else 1
    index = first[:, None] + np.arange(max(1, taps))[None, :]
    weight = np.minimum(b[:, None], index + 1) - np.maximum(a[:, None], index)
    weight = np.clip(weight, 0.0, None)
    weight /= weight.sum(axis=1, keepdims=True)
    return np.minimum(index, n - 1), weight


def _apply_taps(values: np.ndarray, index: np.ndarray, weight: np.ndarray, axis: int) -> np.ndarray:
    out = None
    for k in range(index.shape[1]):
        picked = np.take(values, index[:, k], axis=axis)
        shape = [1] * values.ndim
        shape[axis] = -1
        term = picked * weight[:, k].reshape(shape)
        out = term if out is None else out + term
    assert out is not None
    return out


class ResampledSource(ImageSource):
    """``base`` resampled by ``fx`` x ``fy`` input pixels per output pixel (area filter).

    Reports the resolution and objective power of the pixels it yields, so the writer records
    the processed resolution.
    """

    def __init__(self, base: ImageSource, fx: float, fy: float) -> None:
        super().__init__()
        self.base = base
        self.fx, self.fy = snap_ratio(fx), snap_ratio(fy)
        self.box = self.fx.is_integer() and self.fy.is_integer() and max(self.fx, self.fy) > 1
        self.path = base.path
        self.width = output_size(base.width, self.fx)
        self.height = output_size(base.height, self.fy)
        self.channels, self.photometric, self.icc_profile = base.channels, base.photometric, base.icc_profile
        self.reader, self.level, self.level_sizes = base.reader, base.level, base.level_sizes
        if base.resolution is not None:
            self.resolution = (base.resolution[0] / self.fx, base.resolution[1] / self.fy)
            self.resolution_unit = base.resolution_unit
        if base.objective_power is not None:
            self.objective_power = base.objective_power / ((self.fx + self.fy) / 2)
        kind = f"box {self.fx:g}x{self.fy:g}" if self.box else f"area {self.fx:.4g}x{self.fy:.4g}"
        self.filter = kind
        self.description = f"{base.description}, resampled ({kind}) to {self.width}x{self.height}"

    def _input_span(self, j0: int, j1: int, f: float, n: int) -> tuple[int, int]:
        return min(n - 1, math.floor(j0 * f)), min(n, math.ceil(j1 * f))

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        base = self.base
        r0, r1 = self._input_span(y0, y1, self.fy, base.height)
        out = np.empty((y1 - y0, x1 - x0, self.channels), np.uint8)
        if self.box:
            ky, kx = int(self.fy), int(self.fx)
            r0, r1 = y0 * ky, min(y1 * ky, base.height)
            step = max(1, CHUNK_COLUMNS)
            for a in range(x0, x1, step):
                b = min(a + step, x1)
                pixels = base.read_region(r0, r1, a * kx, min(b * kx, base.width))
                out[:, a - x0 : b - x0] = box_reduce(pixels, ky, kx)
            return out
        row_index, row_weight = area_taps(y0, y1, self.fy, base.height)
        for a in range(x0, x1, CHUNK_COLUMNS):
            b = min(a + CHUNK_COLUMNS, x1)
            c0, c1 = self._input_span(a, b, self.fx, base.width)
            pixels = base.read_region(r0, r1, c0, c1).astype(np.float64)
            rows = _apply_taps(pixels, np.minimum(row_index, r1 - 1) - r0, row_weight, axis=0)
            col_index, col_weight = area_taps(a, b, self.fx, base.width)
            block = _apply_taps(rows, np.minimum(col_index, c1 - 1) - c0, col_weight, axis=1)
            out[:, a - x0 : b - x0] = np.clip(np.floor(block + 0.5), 0, 255).astype(np.uint8)
        return out

    @property
    def stats(self) -> dict[str, int]:  # type: ignore[override]
        return self.base.stats

    @stats.setter
    def stats(self, value: dict[str, int]) -> None:
        pass

    def close(self) -> None:
        self.base.close()
