"""Fidelity metrics for translated slides, computed band by band (numpy only).

Every metric reads its images through ``read_region`` in bands of rows, so a 40,000 px
output is never in memory; a band-wise result equals the whole-image result (integer sums
are exact, float sums differ only in summation order). Images are uint8 ``[H, W, C]``:
numpy arrays, paths (opened with :func:`dnrt.runtime.io.open_image`) or open image sources.

Definitions (also in ``benchmarks/README.md``):

**Seam score** for a tile grid of side ``T`` anchored at the image origin. Take every pair
of 4-neighbouring pixels ``(p, q)`` (horizontal and vertical) and its absolute difference
``|I(p) - I(q)|`` in 8-bit units, per channel. *Boundary* pairs straddle a tile boundary:
columns ``(kT - 1, kT)`` or rows ``(kT - 1, kT)`` for ``k >= 1``. Two reference sets:

- ``score`` (the headline): the *near* pairs, i.e. the pairs parallel to a boundary and at
  most ``window`` (4) px from it on either side, same rows (columns), boundaries excluded;
- ``global_score``: every non-boundary pair of the image (the tiles' interiors).

``score = mean |difference| over boundary pairs / mean |difference| over near pairs`` and
likewise ``global_score`` (means over pairs and channels); ``excess`` is the difference of
the two means (boundary minus near), the extra jump in 8-bit units: the ratio says how a seam
compares with the texture around it (a busy texture hides a jump that a flat one shows), the
excess says how large the jump is. 1.0 means the boundaries look like
any other pixel pair (no visible seams); 1.3 means the image jumps 30% more across tile
boundaries than beside them. The global form is what one would write first, but it compares
a few boundary lines with the whole slide: whether those lines happen to cross glass or
dense tissue moves it by tens of percent on a slide whose content varies (measured on the
synthetic ground truth: 0.8 to 1.5 for grids shifted by a few hundred px). The near form
compares each boundary line with its own neighbourhood, and its noise floor on seamless
images is a few percent (the ground truth's own score, reported beside every run, shows it).

**PSNR** ``10 log10(255^2 / MSE)``, MSE over all pixels and channels (infinite for
identical images). **MAE**: mean absolute difference in 8-bit units.

**SSIM** (Wang et al. 2004) in its standard gaussian-window form: an 11 x 11 gaussian window
with sigma 1.5 (weights normalized to 1), ``C1 = (0.01 * 255)^2``, ``C2 = (0.03 * 255)^2``,
population (not sample) covariances, computed **per RGB channel** at every position where
the window fits inside the image ("valid" positions), then averaged over positions and
channels. This is what ``skimage.metrics.structural_similarity(a, b, channel_axis=-1,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)`` computes
(skimage filters with reflection and then discards a 5 px border, i.e. keeps exactly the
valid positions).

**Local colour error**: the image is cut into ``block x block`` blocks (64 px by default,
partial blocks at the right/bottom edges included); the mean RGB of each block is compared
between the two images; the score is the mean over blocks and channels of the absolute
difference of those means, in 8-bit units. It measures whether regional colour (stain
density, hue) is right regardless of texture: what a normalization with global statistics
(TIN) gets wrong when the slide's staining drifts. **Worst block error**: the largest of
those per-block errors (mean over channels), i.e. the one most wrong 64 px region: what a
blown-out tile shows and a slide-wide mean hides.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "BAND_ROWS",
    "ErrorStats",
    "BlockErrors",
    "SeamScore",
    "block_colour_errors",
    "colour_error",
    "compare",
    "error_stats",
    "gaussian_window",
    "psnr",
    "seam_score",
    "ssim",
]

#: Rows per band: 256 rows of a 40,000 px wide RGB image are 30 MB as uint8.
BAND_ROWS = 256

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # skimage: int(truncate * sigma + 0.5) with truncate 3.5 -> an 11-tap window
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


class RegionReader(Protocol):
    height: int
    width: int
    channels: int

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class _ArrayReader:
    def __init__(self, pixels: np.ndarray) -> None:
        pixels = np.asarray(pixels)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3:
            raise ValueError(f"expected an image [H, W, C], got shape {pixels.shape}")
        self.pixels = pixels
        self.height, self.width, self.channels = (int(n) for n in pixels.shape)

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pixels[y0:y1, x0:x1]


Image = Any  # np.ndarray | str | os.PathLike | RegionReader


@contextmanager
def _open(image: Image) -> Iterator[RegionReader]:
    """A region reader for an array, a path (opened and closed here) or an open source."""
    if isinstance(image, np.ndarray):
        yield _ArrayReader(image)
    elif isinstance(image, str | os.PathLike):
        from dnrt.runtime.io import open_image

        with open_image(image) as source:
            yield source
    else:
        yield image


def _check_same_shape(a: RegionReader, b: RegionReader) -> None:
    if (a.height, a.width, a.channels) != (b.height, b.width, b.channels):
        raise ValueError(
            f"images differ in shape: {a.height}x{a.width}x{a.channels} vs {b.height}x{b.width}x{b.channels}"
        )


def _bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    rows = max(1, int(rows))
    for y0 in range(0, height, rows):
        yield y0, min(y0 + rows, height)


# --------------------------------------------------------------------------- seam score


@dataclass(frozen=True)
class SeamScore:
    #: Boundary pairs vs the parallel pairs within ``window`` px of each boundary (the headline).
    score: float
    #: Boundary pairs vs every other pair of the image (content-sensitive; see the module docstring).
    global_score: float
    #: ``boundary_mean - near_mean``: the extra jump at the boundaries in 8-bit units (absolute,
    #: where ``score`` is relative to the local texture).
    excess: float
    boundary_mean: float
    near_mean: float
    interior_mean: float
    boundary_pairs: int
    tile: int
    window: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _boundaries(n_pairs: int, tile: int) -> np.ndarray:
    """Indices ``i`` of the pairs ``(i, i + 1)`` that straddle a tile boundary: ``i + 1 = kT``."""
    return np.arange(tile - 1, n_pairs, tile)


def _near(n_pairs: int, tile: int, window: int) -> np.ndarray:
    """Indices of the pairs parallel to a boundary within ``window`` px of it, boundaries excluded.

    With ``window < T / 2`` no pair is near two boundaries; clipped at the image edges.
    """
    b = _boundaries(n_pairs, tile)
    offsets = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    near = (b[:, None] + offsets[None, :]).ravel()
    near = near[(near >= 0) & (near < n_pairs)]
    return np.setdiff1d(near, b)


def gradient_profiles(
    image: Image, band_rows: int = BAND_ROWS
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Sums of ``|difference|`` over all rows and channels for each column pair ``(x, x + 1)``,
    and over all columns and channels for each row pair ``(y, y + 1)``; exact int64.

    Returns ``(columns [W - 1], rows [H - 1], H, W, C)``: O(H + W) memory, one pass.
    """
    with _open(image) as src:
        h, w, c = src.height, src.width, src.channels
        cols = np.zeros(max(w - 1, 0), dtype=np.int64)
        rows = np.zeros(max(h - 1, 0), dtype=np.int64)
        for y0, y1 in _bands(h, band_rows):
            # One extra row below the band for the vertical pair (y1 - 1, y1).
            pixels = np.asarray(src.read_region(y0, min(y1 + 1, h), 0, w), dtype=np.int16)
            if w > 1:
                band = pixels[: y1 - y0]
                cols += np.abs(band[:, 1:] - band[:, :-1]).sum(axis=(0, 2), dtype=np.int64)
            if pixels.shape[0] > 1:
                dy = np.abs(pixels[1:] - pixels[:-1]).sum(axis=(1, 2), dtype=np.int64)
                rows[y0 : y0 + dy.shape[0]] = dy
    return cols, rows, h, w, c


def seam_score(image: Image, tile: int, window: int = 4, band_rows: int = BAND_ROWS) -> SeamScore:
    """Seam scores of ``image`` for a ``tile`` grid anchored at the origin (module docstring)."""
    if tile < 2:
        raise ValueError(f"tile must be >= 2, got {tile}")
    window = max(1, min(int(window), (tile - 1) // 2))
    cols, rows, h, w, c = gradient_profiles(image, band_rows)

    # (sum of |difference|, number of pixel-channel pairs) over a set of column and row pairs
    def total(col_idx: np.ndarray, row_idx: np.ndarray) -> tuple[int, int]:
        s = int(cols[col_idx].sum()) + int(rows[row_idx].sum())
        return s, (col_idx.size * h + row_idx.size * w) * c

    bc, br = _boundaries(cols.size, tile), _boundaries(rows.size, tile)
    b_sum, b_n = total(bc, br)
    n_sum, n_n = total(_near(cols.size, tile, window), _near(rows.size, tile, window))
    all_sum = int(cols.sum()) + int(rows.sum())
    all_n = (cols.size * h + rows.size * w) * c
    i_sum, i_n = all_sum - b_sum, all_n - b_n

    def mean(s: int, n: int) -> float:
        return s / n if n else math.nan

    def ratio(num: float, den: float) -> float:
        if math.isnan(num) or math.isnan(den):
            return math.nan
        if den == 0.0:
            return 1.0 if num == 0.0 else math.inf
        return num / den

    boundary, near, interior = mean(b_sum, b_n), mean(n_sum, n_n), mean(i_sum, i_n)
    return SeamScore(
        score=ratio(boundary, near),
        global_score=ratio(boundary, interior),
        excess=boundary - near,
        boundary_mean=boundary,
        near_mean=near,
        interior_mean=interior,
        boundary_pairs=b_n,
        tile=int(tile),
        window=window,
    )


# --------------------------------------------------------------------------- errors, PSNR


@dataclass(frozen=True)
class ErrorStats:
    mae: float
    mse: float
    psnr: float
    max_abs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def error_stats(a: Image, b: Image, band_rows: int = BAND_ROWS) -> ErrorStats:
    """MAE, MSE, PSNR and the largest absolute difference of two uint8 images (exact sums)."""
    with _open(a) as ra, _open(b) as rb:
        _check_same_shape(ra, rb)
        abs_sum = sq_sum = 0
        max_abs = 0
        for y0, y1 in _bands(ra.height, band_rows):
            d = np.asarray(ra.read_region(y0, y1, 0, ra.width), np.int32) - np.asarray(
                rb.read_region(y0, y1, 0, rb.width), np.int32
            )
            ad = np.abs(d)
            abs_sum += int(ad.sum(dtype=np.int64))
            sq_sum += int((d * d).sum(dtype=np.int64))
            max_abs = max(max_abs, int(ad.max(initial=0)))
        n = ra.height * ra.width * ra.channels
    mse = sq_sum / n
    return ErrorStats(abs_sum / n, mse, psnr_from_mse(mse), max_abs)


def psnr(a: Image, b: Image, band_rows: int = BAND_ROWS) -> float:
    return error_stats(a, b, band_rows).psnr


# --------------------------------------------------------------------------- SSIM


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    """The normalized 1-D gaussian taps ``[2 * radius + 1]`` (float64)."""
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return w / w.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of ``x [h, w]`` with ``taps`` along both axes.

    The taps are applied in a fixed order, so a position's value does not depend on how many
    other rows are filtered with it (which keeps band-wise and whole-image SSIM equal).
    """
    k = taps.size
    h, w = x.shape
    rows = taps[0] * x[: h - k + 1]
    for i in range(1, k):
        rows += taps[i] * x[i : h - k + 1 + i]
    out = taps[0] * rows[:, : w - k + 1]
    for i in range(1, k):
        out += taps[i] * rows[:, i : w - k + 1 + i]
    return out


def _ssim_sum(x: np.ndarray, y: np.ndarray, taps: np.ndarray) -> tuple[float, int]:
    """Sum of the SSIM map over the valid positions of one channel's band, and their count."""
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    mx = _filter_valid(x, taps)
    my = _filter_valid(y, taps)
    sxx = _filter_valid(x * x, taps) - mx * mx
    syy = _filter_valid(y * y, taps) - my * my
    sxy = _filter_valid(x * y, taps) - mx * my
    num = (2.0 * mx * my + c1) * (2.0 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    s = num / den
    return float(s.sum()), int(s.size)


def ssim(a: Image, b: Image, band_rows: int = BAND_ROWS) -> float:
    """Mean SSIM of two uint8 images (module docstring), computed band by band.

    Each band computes the SSIM map for ``band_rows`` output rows from ``band_rows + 10``
    input rows (the window's reach), so every valid position is computed exactly once, with
    the same arithmetic as a whole-image pass.
    """
    taps = gaussian_window()
    r = SSIM_RADIUS
    with _open(a) as ra, _open(b) as rb:
        _check_same_shape(ra, rb)
        h, w = ra.height, ra.width
        if h < 2 * r + 1 or w < 2 * r + 1:
            raise ValueError(f"SSIM needs images of at least {2 * r + 1} x {2 * r + 1} px, got {h} x {w}")
        total, count = 0.0, 0
        # valid output rows are [r, h - r); a band of outputs [o0, o1) reads rows [o0 - r, o1 + r)
        for o0 in range(r, h - r, max(1, int(band_rows))):
            o1 = min(o0 + max(1, int(band_rows)), h - r)
            xa = np.asarray(ra.read_region(o0 - r, o1 + r, 0, w), np.float64)
            xb = np.asarray(rb.read_region(o0 - r, o1 + r, 0, w), np.float64)
            for ch in range(ra.channels):
                s, n = _ssim_sum(xa[:, :, ch], xb[:, :, ch], taps)
                total += s
                count += n
    return total / count


# --------------------------------------------------------------------------- local colour


@dataclass(frozen=True)
class BlockErrors:
    """Block-mean colour errors: the mean over blocks, the worst block and where it starts."""

    mean: float
    worst: float
    worst_y: int
    worst_x: int


def colour_error(a: Image, b: Image, block: int = 64) -> float:
    """Mean absolute difference of ``block x block`` block-mean colours (module docstring)."""
    return block_colour_errors(a, b, block).mean


def block_colour_errors(a: Image, b: Image, block: int = 64) -> BlockErrors:
    """Mean and worst over blocks of the block-mean colour error (module docstring).

    The worst block is what a blown-out tile shows: one region whose colour is far off, which
    a mean over the whole slide hides."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    with _open(a) as ra, _open(b) as rb:
        _check_same_shape(ra, rb)
        h, w = ra.height, ra.width
        starts = np.arange(0, w, block)
        widths = np.minimum(starts + block, w) - starts
        total, blocks, worst, where = 0.0, 0, 0.0, (0, 0)
        for y0, y1 in _bands(h, block):
            pa = np.asarray(ra.read_region(y0, y1, 0, w), np.int64)
            pb = np.asarray(rb.read_region(y0, y1, 0, w), np.int64)
            # per-block sums [nblocks, C], then means
            sa = np.add.reduceat(pa.sum(axis=0), starts, axis=0)
            sb = np.add.reduceat(pb.sum(axis=0), starts, axis=0)
            n = ((y1 - y0) * widths)[:, None].astype(np.float64)
            errors = np.abs(sa / n - sb / n).mean(axis=1)
            total += float(errors.sum())
            i = int(errors.argmax())
            if errors[i] > worst:
                worst, where = float(errors[i]), (y0, int(starts[i]))
            blocks += len(starts)
    return BlockErrors(total / blocks, worst, *where)


# --------------------------------------------------------------------------- all at once


def compare(output: Image, reference: Image, *, with_ssim: bool = True, block: int = 64) -> dict[str, float]:
    """Every comparison metric of ``output`` against ``reference`` as a flat dict."""
    stats = error_stats(output, reference)
    result = {"mae": stats.mae, "psnr": stats.psnr, "max_abs": float(stats.max_abs)}
    if with_ssim:
        result["ssim"] = ssim(output, reference)
    blocks = block_colour_errors(output, reference, block)
    result["colour_error"], result["worst_block_error"] = blocks.mean, blocks.worst
    return result
