"""Tissue detection on a slide's thumbnail, at tile granularity, for background skipping.

A whole-slide image is mostly glass. ``--background skip`` runs no network on tiles without
tissue (docs/semantics.md section 11); this module decides which tiles those are, from a
thumbnail accumulated while the scheduler's pre-pass streams the slide (the same read as the
slide-level statistics' thumbnail, so the slide is not read once more for it):

1. **Thumbnail.** Block means of ``s x s`` pixels, ``s = T / k`` with ``k`` (at most
   :data:`MASK_PIXELS_PER_TILE`) mask pixels along each tile side, fewer when the mask would be
   longer than :data:`MASK_MAX_SIDE`: a tile is exactly ``k x k`` mask pixels.
2. **Tissue pixels**, the rule of the common pathology tools (CLAM, histolab, PathML): HSV
   saturation ``(max - min) / max`` at least Otsu's threshold on the slide's saturation
   histogram, clamped to ``[SATURATION_FLOOR, SATURATION_CEILING]`` (glass is grey, stained
   tissue is not; the clamp keeps an all-glass slide from being split by its noise and an
   all-tissue slide from being split between pale and dark stain), and a brightness (HSV value)
   inside ``[BRIGHTNESS_MIN, BRIGHTNESS_MAX]`` (near-black scan padding and near-white glass
   tints are not tissue).
3. **Morphology**: a closing (3 x 3) bridges gaps of one mask pixel; connected pieces smaller
   than :data:`MIN_OBJECT_TILES` of a tile are removed (dust, debris). No opening: it would
   erode thin strands of tissue, and a wrong "tissue" only costs time while a wrong "glass"
   loses tissue.
4. **Tiles.** The mask is dilated by one mask pixel (tissue the thumbnail blurred into a
   neighbouring block), and a tile is *background* when the tissue fraction of its window, the
   tile plus its margin ``M`` on every side (what its network input sees), is at most the
   threshold (default 0: not one tissue pixel in reach).

Only numpy (and Pillow to write the PNG) is used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnrt.errors import DnrtError

#: Mask pixels along each tile side (at most; fewer on slides wider than MASK_MAX_SIDE of them).
MASK_PIXELS_PER_TILE = 16
#: Longest side of the mask thumbnail, in mask pixels (it stays small on any slide).
MASK_MAX_SIDE = 2048
#: Otsu's saturation threshold is clamped to this range.
SATURATION_FLOOR = 0.04
SATURATION_CEILING = 0.10
#: HSV value (max channel / 255) outside this range is never tissue.
BRIGHTNESS_MIN = 0.06
BRIGHTNESS_MAX = 0.98
#: Connected tissue smaller than this fraction of one tile's area is removed as dust.
MIN_OBJECT_TILES = 1 / 16
#: A tile is background when at most this fraction of its window (tile + margin) is tissue.
TISSUE_THRESHOLD_DEFAULT = 0.0

#: ``--background`` choices; ``auto`` is :func:`resolve_background`'s.
BACKGROUND_CHOICES = ("auto", "skip", "translate")
#: ``auto`` skips background on slides: images with microscope-scale pixels (at most this many
#: microns per pixel, i.e. a 2.5x objective or finer) or an objective power in their metadata...
SLIDE_MAX_MPP = 5.0
#: ... and a side longer than this many tiles (the slide-sized rule of the output pyramid).
SLIDE_MIN_TILES = 4

#: Grey levels of the mask PNG.
PNG_TISSUE, PNG_TRANSLATED, PNG_SKIPPED = 255, 128, 0


def mask_block(tile: int, height: int, width: int) -> int:
    """Side ``s`` in image pixels of one mask pixel: ``tile / k`` for the largest ``k`` at most
    :data:`MASK_PIXELS_PER_TILE` dividing the tile whose mask fits :data:`MASK_MAX_SIDE`."""
    longest = max(height, width)
    divisors = [k for k in range(MASK_PIXELS_PER_TILE, 0, -1) if tile % k == 0]
    for k in divisors:
        if math.ceil(longest / (tile // k)) <= MASK_MAX_SIDE:
            return tile // k
    return tile  # a grid of more than MASK_MAX_SIDE tiles: one mask pixel per tile


class TissueThumbnail:
    """Block means of ``block x block`` pixels of an image fed band by band, top to bottom.

    Bands must start at multiples of ``block`` (the scheduler feeds tile rows, and the block
    divides the tile). Memory: the thumbnail and one block row of column sums.
    """

    def __init__(self, height: int, width: int, channels: int, block: int) -> None:
        self.height, self.width, self.block = height, width, block
        self.shape = (-(-height // block), -(-width // block))
        self.thumb = np.zeros(self.shape + (channels,), dtype=np.float32)
        self._starts = np.arange(0, width, block)
        self._widths = np.minimum(self._starts + block, width) - self._starts
        self.next_row = 0

    def add(self, y0: int, pixels: np.ndarray) -> None:
        """Accumulate image rows ``[y0, y0 + len(pixels))``."""
        if y0 != self.next_row or y0 % self.block:
            raise ValueError(f"tissue thumbnail bands out of order: expected row {self.next_row}, got {y0}")
        b = self.block
        for s in range(0, pixels.shape[0], b):
            rows = pixels[s : s + b]
            column_sums = rows.sum(axis=0, dtype=np.uint64)  # [W, C]
            sums = np.add.reduceat(column_sums, self._starts, axis=0)  # [w, C]
            count = rows.shape[0] * self._widths[:, None]
            self.thumb[(y0 + s) // b] = sums / count
        self.next_row = y0 + pixels.shape[0]

    def result(self) -> np.ndarray:
        """``[h, w, C]`` float32 mean colours in ``[0, 255]``; ``counts()`` gives each one's pixels."""
        if self.next_row != self.height:
            raise ValueError(f"tissue thumbnail incomplete: {self.next_row} of {self.height} rows seen")
        return self.thumb

    def counts(self) -> np.ndarray:
        """Image pixels behind each mask pixel ``[h, w]`` (the last row and column may be partial)."""
        b = self.block
        heights = np.minimum(np.arange(0, self.height, b) + b, self.height) - np.arange(0, self.height, b)
        return heights[:, None] * self._widths[None, :]


# --------------------------------------------------------------------------- pixels


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in ``[0, 1]``: the cut maximizing the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    p = hist / hist.sum()
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)  # weight of the class at or below each bin
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    if between.max() <= 0:
        return float(centres[0])
    return float(edges[int(np.argmax(between)) + 1])  # the upper edge of the lower class


def tissue_pixels(thumb: np.ndarray) -> tuple[np.ndarray, float]:
    """Step 2 of the module docstring: ``(mask [h, w] bool, saturation threshold)`` of an RGB thumbnail."""
    rgb = np.asarray(thumb, dtype=np.float64)[..., :3] / 255.0
    value = rgb.max(axis=-1)
    low = rgb.min(axis=-1)
    saturation = np.where(value > 0, (value - low) / np.maximum(value, 1e-12), 0.0)
    lit = (value >= BRIGHTNESS_MIN) & (value <= BRIGHTNESS_MAX)
    threshold = otsu_threshold(saturation[lit]) if lit.any() else SATURATION_FLOOR
    threshold = min(max(threshold, SATURATION_FLOOR), SATURATION_CEILING)
    return (saturation >= threshold) & lit, threshold


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary dilation by a ``(2r+1)^2`` square; outside the image counts as empty."""
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx == 0:
                continue
            dst = out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            dst |= mask[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
    return out


def close(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary closing. The erosion treats outside the image as full, so the closing only ever
    adds pixels (it never removes tissue at the slide's edge)."""
    return ~dilate(~dilate(mask, radius), radius)


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels ``[h, w]`` int64 (-1 outside the mask), each component
    labelled with the flat index of its first pixel: min-label propagation with pointer jumping."""
    h, w = mask.shape
    big = np.int64(h * w)
    labels = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    padded = np.full((h + 2, w + 2), big, dtype=np.int64)
    while True:
        padded[1:-1, 1:-1] = labels
        best = labels.copy()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    np.minimum(best, padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], out=best)
        best = np.where(mask, best, big)
        flat = best.ravel()
        inside = flat < big
        while True:  # pointer jumping: follow each label to its own label until it settles
            jumped = flat.copy()
            jumped[inside] = flat[flat[inside]]
            if np.array_equal(jumped, flat):
                break
            flat = jumped
        best = flat.reshape(h, w)
        if np.array_equal(best, labels):
            return np.where(mask, labels, -1)
        labels = best


def remove_small_objects(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_size`` pixels."""
    if min_size <= 1 or not mask.any():
        return mask.copy()
    labels = label_components(mask)
    sizes = np.bincount(labels[mask], minlength=mask.size)
    return mask & (sizes[np.maximum(labels, 0)] >= min_size)


# --------------------------------------------------------------------------- tiles


@dataclass
class TissueMask:
    """What the tissue detector decided for one image (module docstring)."""

    #: Tissue pixels after the morphology, at mask resolution ``[h, w]``.
    pixels: np.ndarray
    #: Image pixels per mask pixel side, and per tile side (a tile is ``tile / block`` mask pixels).
    block: int
    tile: int
    #: Tiles with tissue in reach ``[R, Q]``: these run the network under ``--background skip``.
    tiles: np.ndarray
    #: Fraction of the image's area that is tissue (of ``pixels``, weighted by the image pixels behind each).
    tissue_fraction: float
    #: The saturation threshold used (Otsu's, clamped).
    saturation_threshold: float
    #: The glass colour (median of the background's mask pixels), uint8 ``[C]``; None if there is no background.
    background_colour: np.ndarray | None

    @property
    def background_tiles(self) -> int:
        return int(self.tiles.size - np.count_nonzero(self.tiles))

    def png(self) -> np.ndarray:
        """The mask as an 8-bit grey image: 255 tissue, 128 background in a tile that runs the
        network, 0 background in a tile ``--background skip`` fills without running it."""
        h, w = self.pixels.shape
        rows = np.minimum(np.arange(h) * self.block // self.tile, self.tiles.shape[0] - 1)
        cols = np.minimum(np.arange(w) * self.block // self.tile, self.tiles.shape[1] - 1)
        out = np.where(self.tiles[rows][:, cols], PNG_TRANSLATED, PNG_SKIPPED).astype(np.uint8)
        out[self.pixels] = PNG_TISSUE
        return out


def tile_windows(
    tile_mask: np.ndarray, counts: np.ndarray, block: int, tile: int, margin: int, grid: tuple[int, int]
) -> np.ndarray:
    """Tissue fraction ``[R, Q]`` of every tile's window (the tile and ``margin`` pixels around
    it, rounded out to whole mask pixels), weighted by the image pixels behind each mask pixel."""
    rows, cols = grid
    h, w = tile_mask.shape
    weight = counts.astype(np.float64)
    tissue = np.where(tile_mask, weight, 0.0)

    def integral(a: np.ndarray) -> np.ndarray:
        out = np.zeros((h + 1, w + 1))
        out[1:, 1:] = a.cumsum(axis=0).cumsum(axis=1)
        return out

    it, iw = integral(tissue), integral(weight)
    r = np.arange(rows)
    q = np.arange(cols)
    y0 = np.clip((r * tile - margin) // block, 0, h)
    y1 = np.clip(-(-(r * tile + tile + margin) // block), 0, h)
    x0 = np.clip((q * tile - margin) // block, 0, w)
    x1 = np.clip(-(-(q * tile + tile + margin) // block), 0, w)

    def box(ii: np.ndarray) -> np.ndarray:
        return ii[y1][:, x1] - ii[y0][:, x1] - ii[y1][:, x0] + ii[y0][:, x0]

    area = box(iw)
    return np.where(area > 0, box(it) / np.maximum(area, 1e-12), 0.0)


def detect_tissue(
    thumb: np.ndarray,
    counts: np.ndarray,
    block: int,
    tile: int,
    margin: int,
    grid: tuple[int, int],
    threshold: float = TISSUE_THRESHOLD_DEFAULT,
) -> TissueMask:
    """Steps 2-4 of the module docstring on a :class:`TissueThumbnail`'s result."""
    if thumb.shape[-1] < 3:
        raise DnrtError("background skipping detects tissue by its colour and needs an RGB image")
    pixels, saturation_threshold = tissue_pixels(thumb)
    pixels = close(pixels)
    per_tile = (tile // block) ** 2
    pixels = remove_small_objects(pixels, max(1, math.ceil(per_tile * MIN_OBJECT_TILES)))
    reach = dilate(pixels)
    fractions = tile_windows(reach, counts, block, tile, margin, grid)
    tiles = fractions > threshold
    weight = counts.astype(np.float64)
    tissue_fraction = float((weight * pixels).sum() / weight.sum())
    background = ~reach
    colour = None
    if background.any():
        glass = thumb[background]
        bright = glass[..., :3].max(axis=-1) >= BRIGHTNESS_MIN * 255
        if bright.any():
            glass = glass[bright]
        colour = np.clip(np.rint(np.median(glass, axis=0)), 0, 255).astype(np.uint8)
    return TissueMask(pixels, block, tile, tiles, tissue_fraction, saturation_threshold, colour)


# --------------------------------------------------------------------------- policy and output


def microns_per_pixel(source: Any) -> float | None:
    """The source's pixel size in microns (the mean of x and y), from its ``mpp`` when it has one,
    else from its resolution tags; None when unknown."""
    mpp = getattr(source, "mpp", None)
    if mpp is not None:
        try:
            values = [float(v) for v in (mpp if isinstance(mpp, (tuple, list)) else (mpp, mpp))]
        except (TypeError, ValueError):
            values = []
        if values and all(v > 0 and math.isfinite(v) for v in values):
            return sum(values) / len(values)
    resolution = getattr(source, "resolution", None)
    unit = getattr(source, "resolution_unit", None)
    microns = {"INCH": 25400.0, "CENTIMETER": 10000.0, 2: 25400.0, 3: 10000.0}.get(
        unit.upper() if isinstance(unit, str) else unit
    )
    if resolution is None or microns is None:
        return None
    try:
        per_unit = [float(v) for v in resolution]
    except (TypeError, ValueError):
        return None
    if not per_unit or not all(v > 0 and math.isfinite(v) for v in per_unit):
        return None
    return sum(microns / v for v in per_unit) / len(per_unit)


def looks_like_a_slide(source: Any, tile: int) -> bool:
    """``auto``'s test: an RGB image longer than :data:`SLIDE_MIN_TILES` tiles whose metadata
    says microscope (an objective power, or at most :data:`SLIDE_MAX_MPP` microns per pixel).
    Photos (72-300 dpi: 85-350 um per pixel) and images without metadata are not slides."""
    if getattr(source, "channels", 0) < 3 or max(source.height, source.width) <= SLIDE_MIN_TILES * tile:
        return False
    if getattr(source, "objective_power", None):
        return True
    mpp = microns_per_pixel(source)
    return mpp is not None and mpp <= SLIDE_MAX_MPP


def check_background(choice: str) -> str:
    """``choice`` lower-cased, if it is one of :data:`BACKGROUND_CHOICES`."""
    name = str(choice).lower()
    if name not in BACKGROUND_CHOICES:
        raise DnrtError(
            f"unknown background handling {choice!r} (expected one of {', '.join(BACKGROUND_CHOICES)})"
        )
    return name


def resolve_background(choice: str, source: Any, tile: int) -> str:
    """``skip`` or ``translate`` for this source; ``auto`` is :func:`looks_like_a_slide`."""
    choice = check_background(choice)
    if choice == "auto":
        return "skip" if looks_like_a_slide(source, tile) else "translate"
    return choice


def check_mask_path(path: os.PathLike[str] | str, overwrite: bool, *others: os.PathLike[str] | str) -> Path:
    """Validate ``--tissue-mask PATH`` before any work: a ``.png`` in a writable folder, not
    existing unless ``overwrite``, not the input or output."""
    from dnrt.atomic import check_output_path

    dest = Path(path)
    if dest.suffix.lower() != ".png":
        raise DnrtError(f"tissue mask '{dest}' must be a .png file")
    for other in others:
        if other is not None and os.path.abspath(dest) == os.path.abspath(other):
            raise DnrtError(f"tissue mask '{dest}' is the same file as '{other}'; choose another name")
    return check_output_path(dest, overwrite)


def write_mask_png(mask: TissueMask, path: os.PathLike[str] | str, overwrite: bool = False) -> Path:
    """Write :meth:`TissueMask.png` to ``path`` atomically (a temporary beside it, renamed when whole)."""
    from PIL import Image

    from dnrt.atomic import commit, new_temp

    dest = Path(path)
    with new_temp(dest) as temp:
        Image.fromarray(mask.png()).save(temp, format="PNG")
        commit(temp, dest, overwrite)
    return dest
