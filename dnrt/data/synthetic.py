"""Procedural paired H&E / IHC slides of any size, rendered tile by tile.

One underlying tissue (cells, nuclei, fibrous stroma, gland lumens, a tissue outline on empty
glass) is rendered twice: as an H&E-like stain and as an IHC-like stain (DAB brown in positive
epithelial cells, hematoxylin counterstain elsewhere). Slide-level stain variation (smooth
gradients of stain density and eosin/hematoxylin balance) makes per-tile statistics differ, and
the IHC tone follows the same slide-level fields, so IHC is a learnable function of the local
H&E appearance plus slide-level context. Positivity is tied to a feature visible in H&E:
epithelial cells with large nuclei are positive.

Every pixel is a pure function of (seed, slide size, y, x): noise comes from an integer hash of
lattice coordinates, smooth fields are sampled on a global 8 px lattice and interpolated, and
cells sit on a jittered grid whose parameters are hashes of the cell index. A region therefore
renders byte-identically alone or as part of a larger region, and a 40,000 px slide is written
band by band without ever being in memory. Only elementwise IEEE operations (+, -, *, /, sqrt,
min/max, floor) touch per-pixel values, always in the same order, and optical density ->
intensity is a lookup table, so results do not depend on how numpy vectorizes an array.

Only numpy is needed to render; tifffile is imported by the writers.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import queue
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dnrt.errors import DnrtError

__all__ = [
    "MICRONS_PER_PIXEL",
    "SCANNERS",
    "STAINS",
    "Scanner",
    "main",
    "parse_scanner",
    "parse_size",
    "render_region",
    "render_region_pair",
    "sample_pairs",
    "write_pair",
    "write_slide",
]

STAINS = ("he", "ihc")
MICRONS_PER_PIXEL = 0.5  # like a 20x scan

f32 = np.float32

# Cell grid: cell (i, j) owns pixels [i*S, (i+1)*S) and has its centre jittered by at most _JIT.
# Every cell's support (cytoplasm radius) is at most S - _JIT, so a pixel can only be touched
# by the 4 cells whose nominal centres surround it: rendering in "dual blocks" (S x S blocks
# whose corners are cell centres) evaluates exactly 4 candidate cells per pixel.
_S = 24
_HALF = _S // 2
_JIT = 7.0
_RMAX = _S - _JIT

# Regions are rendered in chunks of whole dual blocks (rows x cols) so arrays stay in cache.
_CHUNK_BY, _CHUNK_BX = 10, 10

# Smooth fields are evaluated on a global lattice with this spacing and interpolated.
_STEP = 8

# Periodic texture tables (fine grain, mid texture): period in pixels.
_PERIOD = 510

# Optical density -> uint8 lookup: OD is quantized to 1/_OD_STEPS (finer than one grey level).
_OD_STEPS = 512
_OD_MAX = 6.0

# Stain optical-density vectors (R, G, B), typical of estimates from real scans.
_HEMATOXYLIN = np.array([0.56, 0.72, 0.41])
_EOSIN = np.array([0.17, 0.80, 0.57])
_EOSIN_ALT = np.array([0.30, 0.84, 0.45])  # purpler eosin, for slide-level hue drift
_DAB = np.array([0.27, 0.57, 0.78])
_IHC_HEMATOXYLIN = np.array([0.66, 0.66, 0.36])  # counterstain: bluer, nothing to mix with
_GLASS_OD = np.array([0.055, 0.050, 0.042])  # empty slide: about (241, 242, 244)

_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Hashing and coordinate-hashed value noise
# --------------------------------------------------------------------------------------------


def _key(seed: int, salt: int) -> int:
    """A 32-bit stream key for (seed, salt), mixed in pure Python (scalar, exact)."""
    h = (seed * 0x9E3779B1 + salt * 0x7FEB352D + 0x165667B1) & _M32
    for mult in (0x85EBCA6B, 0xC2B2AE35):
        h ^= h >> 16
        h = (h * mult) & _M32
    return h ^ (h >> 16)


def _hash(i: np.ndarray, j: np.ndarray, key: int) -> np.ndarray:
    """uint32 hash of integer lattice coordinates (broadcasting), wrapping arithmetic."""
    h = (np.asarray(i).astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (
        np.asarray(j).astype(np.uint32) * np.uint32(0x85EBCA77)
    )
    h ^= np.uint32(key)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h


def _u01(i: np.ndarray, j: np.ndarray, key: int) -> np.ndarray:
    """Uniform float32 in [0, 1) from the hash of (i, j)."""
    return (_hash(i, j, key) >> np.uint32(8)).astype(np.float32) * f32(1.0 / (1 << 24))


def _axis(coords: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index and quintic-faded weight for 1-D pixel coordinates at a lattice spacing."""
    t = (coords.astype(np.float64) + 0.5) / scale
    i = np.floor(t)
    f = t - i
    w = f * f * f * (f * (f * 6.0 - 15.0) + 10.0)
    return i.astype(np.int64), w.astype(np.float32)


def _vnoise(key: int, ys: np.ndarray, xs: np.ndarray, sy: float, sx: float, period: int = 0) -> np.ndarray:
    """Value noise in [0, 1] on the grid ys x xs (separable: two lerps per point).

    With ``period`` (in lattice cells) the noise tiles seamlessly.
    """
    iy, wy = _axis(ys, sy)
    ix, wx = _axis(xs, sx)
    ly = np.arange(iy[0], iy[-1] + 2)
    lx = np.arange(ix[0], ix[-1] + 2)
    if period:
        g = _u01((ly % period)[:, None], (lx % period)[None, :], key)
    else:
        g = _u01(ly[:, None], lx[None, :], key)
    cx = ix - lx[0]
    a = g[:, cx]
    rows = a + (g[:, cx + 1] - a) * wx  # lerp along x for every lattice row
    ry = iy - ly[0]
    top = rows[ry]
    return top + (rows[ry + 1] - top) * wy[:, None]


def _noise2(key: int, y: np.ndarray, x: np.ndarray, scale: float, angle: float) -> np.ndarray:
    """Value noise in [0, 1] at points (y, x) (broadcasting float64 arrays) on a lattice rotated
    by `angle`, so thresholded shapes do not line up with the image axes. Used on the 8 px
    lattice only, where evaluating 4 hashed corners per point is cheap."""
    c, s = math.cos(angle) / scale, math.sin(angle) / scale  # scalar trigonometry: exact
    ty = y * c - x * s + 0.5
    tx = y * s + x * c + 0.5
    iy, ix = np.floor(ty), np.floor(tx)
    fy, fx = ty - iy, tx - ix
    wy = (fy * fy * fy * (fy * (fy * 6.0 - 15.0) + 10.0)).astype(np.float32)
    wx = (fx * fx * fx * (fx * (fx * 6.0 - 15.0) + 10.0)).astype(np.float32)
    iy, ix = iy.astype(np.int64), ix.astype(np.int64)
    g00, g01 = _u01(iy, ix, key), _u01(iy, ix + 1, key)
    g10, g11 = _u01(iy + 1, ix, key), _u01(iy + 1, ix + 1, key)
    top = g00 + (g01 - g00) * wx
    return top + ((g10 + (g11 - g10) * wx) - top) * wy


def _fbm2(seed: int, salt: int, y: np.ndarray, x: np.ndarray, scale: float, octaves: int) -> np.ndarray:
    """Fractal rotated value noise in [0, 1]; each octave on a differently rotated lattice."""
    out = None
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = _noise2(_key(seed, salt + 97 * o), y, x, scale / (2.0**o), 0.4 + 1.3 * o + 0.37 * salt) * f32(amp)
        out = n if out is None else out + n
        total += amp
        amp *= 0.5
    assert out is not None
    return out * f32(1.0 / total)


@functools.lru_cache(maxsize=4)
def _textures(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Periodic fine-grain and mid-texture tables for a seed, tiled 2x2 so any window of up to
    _PERIOD pixels is a plain slice (a small pure-function cache, not slide state)."""
    c = np.arange(_PERIOD)
    fine = _vnoise(_key(seed, 901), c, c, 2.5, 2.5, period=_PERIOD * 2 // 5)
    tex = 0.6 * _vnoise(_key(seed, 902), c, c, 8.5, 8.5, period=_PERIOD * 2 // 17) + 0.4 * _vnoise(
        _key(seed, 903), c, c, 5.1, 5.1, period=_PERIOD * 10 // 51
    )
    tile = lambda a: np.ascontiguousarray(np.tile(a.astype(np.float32), (2, 2)))  # noqa: E731
    return tile(fine), tile(tex)


def _smooth_band(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below lo, 1 above hi, smooth (cubic) in between."""
    t = np.clip((x - f32(lo)) * f32(1.0 / (hi - lo)), 0.0, 1.0)
    return t * t * (f32(3.0) - f32(2.0) * t)


# --------------------------------------------------------------------------------------------
# Tissue layout: smooth fields on the global lattice
# --------------------------------------------------------------------------------------------

# salts of the independent noise streams
_SALT_OUTLINE, _SALT_EDGE, _SALT_GLAND, _SALT_NEST, _SALT_GRADE = 1, 2, 3, 4, 5
_SALT_LYMPH, _SALT_WARP, _SALT_WARP2, _SALT_BREAK = 6, 7, 8, 9
_SALT_DENS, _SALT_BAL, _SALT_CELL = 11, 12, 5000

# gland field thresholds: lumen above _LUMEN, epithelial lining between _EPI and _LUMEN
_LUMEN = 0.70
_EPI = 0.56
_NEST = 0.68


class _Slide:
    """Per-slide constants derived from the seed and the slide size (scalars only)."""

    def __init__(self, seed: int, height: int, width: int) -> None:
        self.seed = seed
        self.height = height
        self.width = width
        r = [_key(seed, 1000 + k) / 2.0**32 for k in range(8)]
        # directions of the slide-level gradients (scalar trigonometry: exact and region-free)
        self.dens_dir = (math.cos(2 * math.pi * r[0]), math.sin(2 * math.pi * r[0]))
        self.bal_dir = (math.cos(2 * math.pi * r[1]), math.sin(2 * math.pi * r[1]))
        self.hue_dir = (math.cos(2 * math.pi * r[2]), math.sin(2 * math.pi * r[2]))
        # base fibre direction and period (px): fibres are iso-lines of a warped linear phase
        period = 8.0 + 3.0 * r[5]
        self.fibre_k = (math.cos(math.pi * r[6]) / period, math.sin(math.pi * r[6]) / period)
        # outline noise follows the slide size; the ragged edge is in absolute pixels
        self.outline_scale = max(min(height, width) / 3.0, 64.0)
        self.gland_scale = 150.0 + 60.0 * r[3]
        self.nest_scale = 700.0 + 300.0 * r[4]
        self.big_y = max(height / 1.5, 64.0)
        self.big_x = max(width / 1.5, 64.0)
        self.fine, self.tex = _textures(seed)


# lattice field indices
(
    _F_TISSUE,
    _F_GLAND,
    _F_PHASE,
    _F_CLEFT,
    _F_EOSIN_A,
    _F_HGAIN,
    _F_EOSIN_B,
    _F_CGAIN,
    _F_DGAIN,
    _F_NEST,
    _F_GRADE,
    _F_LYMPH,
    _F_SDENS,
    _F_GY,
    _F_GX,
    _F_LUMEN,
) = range(16)


def _lattice_fields(sl: _Slide, ly: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """All smooth fields at lattice points ly x lx (global pixel coordinates): [F, ny, nx]."""
    seed = sl.seed
    # one extra lattice point on every side, for central differences of the fibre phase
    ey = np.concatenate([[ly[0] - _STEP], ly, [ly[-1] + _STEP]])
    ex = np.concatenate([[lx[0] - _STEP], lx, [lx[-1] + _STEP]])
    uy = ((ey.astype(np.float32) + f32(0.5)) * f32(2.0 / sl.height) - f32(1.0))[:, None]  # [-1, 1]
    vx = ((ex.astype(np.float32) + f32(0.5)) * f32(2.0 / sl.width) - f32(1.0))[None, :]
    EY, EX = ey.astype(np.float64)[:, None], ex.astype(np.float64)[None, :]
    LY, LX = EY[1:-1], EX[:, 1:-1]

    # fibre phase: a linear ramp across the slide, warped at large and small scales
    ky, kx = sl.fibre_k
    phase = (
        ey.astype(np.float32)[:, None] * f32(ky)
        + ex.astype(np.float32)[None, :] * f32(kx)
        + _fbm2(seed, _SALT_WARP, EY, EX, 650.0, 2) * f32(170.0)
        + _noise2(_key(seed, _SALT_WARP2), EY, EX, 55.0, 0.3) * f32(4.0)
        + _noise2(_key(seed, _SALT_WARP2 + 50), EY, EX, 21.0, 1.1) * f32(0.7)
    )
    gy = (phase[2:, 1:-1] - phase[:-2, 1:-1]) * f32(0.5 / _STEP)
    gx = (phase[1:-1, 2:] - phase[1:-1, :-2]) * f32(0.5 / _STEP)
    phase = phase[1:-1, 1:-1]
    u, v = uy[1:-1], vx[:, 1:-1]

    # tissue outline: an ellipse inside the slide deformed by slide-scale and 90 px noise
    su, sv = u * f32(1.0 / 0.8), v * f32(1.0 / 0.8)
    outline = (
        f32(1.0)
        - su * su
        - sv * sv
        + (_fbm2(seed, _SALT_OUTLINE, LY, LX, sl.outline_scale, 2) - f32(0.5)) * f32(1.1)
        + (_fbm2(seed, _SALT_EDGE, LY, LX, 90.0, 2) - f32(0.5)) * f32(0.16)
    )

    # slide-level stain variation: linear gradients along seeded directions plus smooth noise
    def ramp(d: tuple[float, float]) -> np.ndarray:
        return u * f32(0.7 * d[0]) + v * f32(0.7 * d[1])

    dens = f32(1.0) + f32(0.22) * ramp(sl.dens_dir)
    dens = dens + f32(0.3) * (_vnoise(_key(seed, _SALT_DENS), ly, lx, sl.big_y, sl.big_x) - f32(0.5))
    bal = f32(0.25) * ramp(sl.bal_dir)
    bal = bal + f32(0.3) * (_vnoise(_key(seed, _SALT_BAL), ly, lx, sl.big_y, sl.big_x) - f32(0.5))
    hue = np.clip(f32(0.5) + f32(0.7) * ramp(sl.hue_dir), 0.0, 1.0)
    # IHC gains are functions of the same fields, so the H&E appearance predicts them
    e_gain = dens * (f32(1.0) + bal)
    h_gain = dens * (f32(1.0) - f32(0.6) * bal)
    c_gain = dens * (f32(1.0) - f32(0.4) * bal)
    d_gain = f32(1.0) + f32(0.8) * (dens - f32(1.0)) + f32(0.3) * bal

    out = np.empty((16, ly.size, lx.size), np.float32)
    # pre-scaled so that one clip per pixel gives the soft edge (~1 px at the lumen, a few px
    # at the tissue outline): thresholds applied after interpolation keep edges smooth
    out[_F_TISSUE] = outline * f32(40.0)  # > 0 inside the tissue
    gland = _fbm2(seed, _SALT_GLAND, LY, LX, sl.gland_scale, 3)
    out[_F_GLAND] = gland
    out[_F_LUMEN] = (gland - f32(_LUMEN)) * f32(80.0) + f32(0.5)
    out[_F_PHASE] = phase
    # stroma: loose (pale, open clefts) vs dense (deep pink) areas; clefts broken up by noise
    loose = _smooth_band(_fbm2(seed, _SALT_BREAK + 1, LY, LX, 130.0, 2), 0.35, 0.7)
    brk = np.clip(_noise2(_key(seed, _SALT_BREAK), LY, LX, 26.0, 0.7) * f32(2.2) - f32(0.5), 0.0, 1.0)
    out[_F_CLEFT] = brk * (f32(0.35) + f32(0.65) * loose)
    out[_F_SDENS] = f32(1.1) - f32(0.5) * loose
    out[_F_EOSIN_A] = e_gain * (f32(1.0) - hue)  # eosin, split between two hues
    out[_F_HGAIN] = h_gain
    out[_F_EOSIN_B] = e_gain * hue
    out[_F_CGAIN] = c_gain
    out[_F_DGAIN] = d_gain
    out[_F_NEST] = _fbm2(seed, _SALT_NEST, LY, LX, sl.nest_scale, 2)
    out[_F_GRADE] = _fbm2(seed, _SALT_GRADE, LY, LX, 400.0, 2)
    out[_F_LYMPH] = _fbm2(seed, _SALT_LYMPH, LY, LX, 220.0, 2)
    out[_F_GY] = gy
    out[_F_GX] = gx
    return out


_WSTEP = (np.arange(_STEP) * (1.0 / _STEP)).astype(np.float32)[None, :, None]


def _upsample(vals: np.ndarray, l0y: int, l0x: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a lattice field [ny, nx] (lattice starts at pixel l0y, l0x) onto
    the pixel grid ys x xs (contiguous ranges).

    Rows are produced as [lattice cell, 8 sub-rows, W] in two broadcast operations and the
    wanted rows are a contiguous slice of that (no gathers at full resolution).
    """
    ix = xs // _STEP - l0x // _STEP
    wx = ((xs % _STEP) * (1.0 / _STEP)).astype(np.float32)
    a = np.take(vals, ix, axis=1)
    rows = a + (np.take(vals, ix + 1, axis=1) - a) * wx  # [ny, W]
    c0 = int(ys[0]) // _STEP - l0y // _STEP
    c1 = int(ys[-1]) // _STEP - l0y // _STEP + 1
    base = rows[c0:c1]
    out = base[:, None, :] + (rows[c0 + 1 : c1 + 1] - base)[:, None, :] * _WSTEP
    off = int(ys[0]) % _STEP
    return out.reshape(-1, xs.size)[off : off + ys.size]


# --------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------

_NUC_EDGE = 3.5  # nucleus profile min(K (1 - q), 1): a soft edge over the outer ~15% radius


class _Cells:
    """Parameters of cells [ci0, ci0+ny) x [cj0, cj0+nx), as small [ny, nx] arrays.

    Context (tissue, glands, grade, fibre direction) is read from the nearest lattice point of
    the chunk's fields, which are position-determined, so a cell is the same in every chunk.
    """

    def __init__(self, sl: _Slide, ci0: int, ny: int, cj0: int, nx: int, lat: np.ndarray, l0y: int, l0x: int):
        seed = sl.seed
        ci = np.arange(ci0, ci0 + ny)[:, None]
        cj = np.arange(cj0, cj0 + nx)[None, :]

        def rnd(k: int) -> np.ndarray:
            return _u01(ci, cj, _key(seed, _SALT_CELL + k))

        # jittered centre, relative to the nominal cell centre
        self.jy = (rnd(0) * f32(2.0) - f32(1.0)) * f32(_JIT)
        self.jx = (rnd(1) * f32(2.0) - f32(1.0)) * f32(_JIT)
        gy = (ci.astype(np.float32) + f32(0.5)) * f32(_S) + self.jy
        gx = (cj.astype(np.float32) + f32(0.5)) * f32(_S) + self.jx
        ly = np.floor(gy * f32(1.0 / _STEP) + f32(0.5)).astype(np.int64) - l0y // _STEP
        lx = np.floor(gx * f32(1.0 / _STEP) + f32(0.5)).astype(np.int64) - l0x // _STEP
        ctx = lat[:, ly, lx]  # [F, ny, nx]

        inside = ctx[_F_TISSUE] > f32(0.0)
        gland, nest = ctx[_F_GLAND], ctx[_F_NEST]
        lumen = gland > f32(_LUMEN)
        # epithelium: gland linings, plus solid nests where the nest field is high
        epi = inside & ~lumen & ((gland > f32(_EPI)) | (nest > f32(_NEST)))
        stroma = inside & ~lumen & ~epi

        r_exist, r_kind = rnd(2), rnd(3)
        r_size, r_aspect, r_ori = rnd(4), rnd(5), rnd(6)
        r_dark, r_cyto = rnd(7), rnd(8)

        epi_cell = epi & (r_exist < f32(0.95))
        lymph_p = f32(0.03) + f32(0.55) * _smooth_band(ctx[_F_LYMPH], 0.62, 0.8)
        lymph_cell = stroma & (r_exist < lymph_p) & (r_kind < f32(0.85))
        fib_cell = stroma & ~lymph_cell & (r_exist < lymph_p + f32(0.2))

        # nucleus radius: epithelial nuclei grow with the local "grade"; positivity is decided
        # by nucleus size, a feature visible in H&E, so a translator can learn it
        g = np.clip((ctx[_F_GRADE] - f32(0.3)) * f32(2.5), 0.0, 1.0)
        r_epi = f32(5.0) + f32(2.4) * g + f32(3.2) * r_size
        a = np.where(epi_cell, r_epi, f32(1.0))
        b = np.where(epi_cell, r_epi * (f32(0.72) + f32(0.26) * r_aspect), f32(1.0))
        # fibroblast nuclei: long and thin, along the fibres (perpendicular to the phase gradient)
        a = np.where(fib_cell, f32(7.0) + f32(4.0) * r_size, a)
        b = np.where(fib_cell, f32(1.9) + f32(1.1) * r_aspect, b)
        # lymphocytes: small, round, very dark
        r_ly = f32(3.8) + f32(1.0) * r_size
        a = np.where(lymph_cell, r_ly, a)
        b = np.where(lymph_cell, r_ly * f32(0.92), b)

        # major-axis direction as a unit vector (no trigonometry on arrays)
        oy = np.where(fib_cell, ctx[_F_GX], r_ori * f32(2.0) - f32(1.0))
        ox = np.where(fib_cell, -ctx[_F_GY], rnd(9) * f32(2.0) - f32(1.0))
        on = np.sqrt(oy * oy + ox * ox) + f32(1e-6)
        c, s = oy / on, ox / on
        exists = epi_cell | lymph_cell | fib_cell

        # q = (u/a)^2 + (v/b)^2 with u = c oy + s ox, v = c ox - s oy, expanded as a quadratic
        # form K q = A oy^2 + C ox^2 + B oy ox (two small outer terms + one product per pixel)
        ia2, ib2 = f32(1.0) / (a * a), f32(1.0) / (b * b)
        k = f32(_NUC_EDGE)
        self.qa = k * (c * c * ia2 + s * s * ib2)
        self.qc = k * (s * s * ia2 + c * c * ib2)
        self.qb = k * f32(2.0) * c * s * (ia2 - ib2)
        self.k = np.where(exists, k, f32(-1.0))  # absent cells: profile <= -1 everywhere

        # nuclear hematoxylin (H&E): lymphocytes darkest
        hd = f32(0.72) + f32(0.3) * r_dark - f32(0.04) * (r_epi - f32(5.0))  # big nuclei: paler
        hd = np.where(lymph_cell, f32(1.5) + f32(0.2) * r_dark, hd)
        hd = np.where(fib_cell, f32(1.1) + f32(0.25) * r_dark, hd)
        self.h_nuc = hd

        # cytoplasm blob (epithelial cells only); radius bounded by _RMAX (see module comment)
        rc = np.minimum(f32(12.5) + f32(5.0) * r_cyto + f32(1.5) * g, f32(_RMAX))
        self.irc2 = np.where(epi_cell, f32(1.0) / (rc * rc), f32(0.0))
        # cells without cytoplasm sit at distance >= 2 everywhere, i.e. they never change
        # f1/f2 (so skipping them when a chunk has no epithelium is exactly equivalent)
        self.d_off = np.where(epi_cell, f32(0.0), f32(2.0))
        self.exists = exists
        self.epi = epi_cell

        pos = epi_cell & (r_epi > f32(8.3))
        self.pos = pos.astype(np.float32)
        # added to the cytoplasm distance of negative cells, so min over cells finds positives
        self.neg_off = np.where(pos, f32(0.0), f32(1e3))
        self.dab = np.where(pos, f32(1.4) + f32(0.6) * r_dark, f32(0.0))
        # IHC counterstain of negative nuclei is lighter than H&E hematoxylin
        self.h_ihc = np.where(pos, f32(0.0), hd * f32(0.6))

    def cols(self, j0: int, n: int) -> _Cells:
        """The same cells restricted to columns [j0, j0+n) (shallow copy of array slices)."""
        sub = object.__new__(_Cells)
        for k, v in self.__dict__.items():
            sub.__dict__[k] = v[:, j0 : j0 + n]
        return sub


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _lut(offset: float) -> np.ndarray:
    od = np.arange(int(_OD_MAX * _OD_STEPS) + 1, dtype=np.float64) / _OD_STEPS + offset
    return np.clip(np.rint(255.0 * np.exp(-od)), 0, 255).astype(np.uint8)


_LUTS = [_lut(float(o)) for o in _GLASS_OD]
_LUT_MAX = f32(_OD_MAX * _OD_STEPS)
GLASS_RGB = tuple(int(t[0]) for t in _LUTS)  # colour of empty slide, identical in both stains


def _to_rgb(out: np.ndarray, stains: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Beer-Lambert: out[..., c] = LUT_c(sum_s conc_s * vec_s[c]), in a fixed order."""
    od = np.empty(out.shape[:2], np.float32)
    term = np.empty_like(od)
    for c in range(3):
        for k, (conc, vec) in enumerate(stains):
            np.multiply(conc, f32(vec[c] * _OD_STEPS), out=od if k == 0 else term)
            if k:
                np.add(od, term, out=od)
        np.clip(od, 0.0, _LUT_MAX, out=od)
        out[..., c] = np.take(_LUTS[c], od.astype(np.int32))


def _render_blocks(
    sl: _Slide,
    by0: int,
    nby: int,
    bx0: int,
    nbx: int,
    crop: tuple[slice, slice],
    want: tuple[bool, bool],
    lat: np.ndarray,
    l0y: int,
    l0x: int,
    cells: _Cells,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Render dual blocks [by0, by0+nby) x [bx0, bx0+nbx), cropped to `crop` (block-local).

    `lat` holds the smooth fields on lattice points from (l0y, l0x) covering these blocks, and
    `cells` the cells [by0, by0+nby] x [bx0, bx0+nbx] (both computed once per band).
    """
    Y0, X0 = by0 * _S + _HALF, bx0 * _S + _HALF
    H, W = nby * _S, nbx * _S
    ys = np.arange(Y0, Y0 + H)
    xs = np.arange(X0, X0 + W)
    h = crop[0].stop - crop[0].start
    w = crop[1].stop - crop[1].start
    he_w, ihc_w = want
    any_cells = bool(cells.exists.any())
    any_epi = bool(cells.epi.any())

    lx0 = (X0 - l0x) // _STEP
    lx1 = (X0 + W - l0x) // _STEP + 2
    if not any_cells and not (lat[_F_TISSUE, :, lx0:lx1] > 0).any():
        # empty glass: exactly what the full path would produce for tissue == 0 and no cells
        glass = np.array(GLASS_RGB, np.uint8)
        outs = [np.broadcast_to(glass, (h, w, 3)).copy() if k else None for k in want]
        return outs[0], outs[1]

    names = [_F_TISSUE, _F_LUMEN, _F_PHASE, _F_CLEFT, _F_SDENS]
    if he_w:
        names += [_F_EOSIN_A, _F_HGAIN, _F_EOSIN_B]
    if ihc_w:
        names += [_F_CGAIN, _F_DGAIN]
    fld = {k: _upsample(lat[k], l0y, l0x, ys, xs) for k in names}

    # ---- cells: 4 candidates per pixel, in dual-block layout [nby, S, nbx, S] ---------------
    shape4 = (nby, _S, nbx, _S)
    r_loc = np.arange(_S, dtype=np.float32)
    nuc_h = np.zeros(shape4, np.float32)  # H&E nuclear hematoxylin (max over cells)
    nuc_neg = np.zeros(shape4, np.float32) if ihc_w else None
    nuc_dab = np.zeros(shape4, np.float32) if ihc_w else None
    f1p = np.ones(shape4, np.float32) if ihc_w else None  # f1 over positive cells only
    f1 = np.ones(shape4, np.float32)  # smallest normalized cytoplasm distance (1 == none)
    f2 = np.ones(shape4, np.float32)  # second smallest
    if any_cells:
        for dy in (0, 1):
            for dx in (0, 1):
                sel = (slice(dy, dy + nby), slice(dx, dx + nbx))

                def p(arr: np.ndarray, sel: tuple[slice, slice] = sel) -> np.ndarray:
                    return arr[sel][:, None, :, None]

                oy = r_loc[None, :, None, None] - (p(cells.jy) + f32(dy * _S))  # [nby, S, nbx, 1]
                ox = r_loc[None, None, None, :] - (p(cells.jx) + f32(dx * _S))  # [nby, 1, nbx, S]
                oy2, ox2 = oy * oy, ox * ox
                # nucleus profile n = K - K q, capped at 1 (negative = outside)
                n = (p(cells.k) - p(cells.qa) * oy2) - p(cells.qc) * ox2
                n -= (p(cells.qb) * oy) * ox
                np.minimum(n, f32(1.0), out=n)
                np.maximum(nuc_h, n * p(cells.h_nuc), out=nuc_h)
                if ihc_w:
                    np.maximum(nuc_neg, n * p(cells.h_ihc), out=nuc_neg)
                    np.maximum(nuc_dab, n * p(cells.dab), out=nuc_dab)
                if any_epi:
                    irc = p(cells.irc2)
                    d = (oy2 * irc + p(cells.d_off)) + ox2 * irc  # 1 == edge of the cytoplasm blob
                    np.minimum(f2, np.maximum(f1, d), out=f2)
                    np.minimum(f1, d, out=f1)
                    if ihc_w:
                        np.minimum(f1p, d + p(cells.neg_off), out=f1p)

    def flat(a: np.ndarray) -> np.ndarray:
        return a.reshape(H, W)[crop]

    nuc_h = flat(nuc_h)
    f1, f2 = flat(f1), flat(f2)
    tissue = np.clip(fld[_F_TISSUE][crop], 0.0, 1.0)
    lumen = np.clip(fld[_F_LUMEN][crop], 0.0, 1.0)
    phase, brk = fld[_F_PHASE][crop], fld[_F_CLEFT][crop]
    oy0, ox0 = (Y0 + crop[0].start) % _PERIOD, (X0 + crop[1].start) % _PERIOD
    fine = sl.fine[oy0 : oy0 + h, ox0 : ox0 + w]
    tex = sl.tex[oy0 : oy0 + h, ox0 : ox0 + w]

    inside = f32(1.0) - f1
    cyto = np.clip(inside * f32(14.0), 0.0, 1.0)  # inside an epithelial cell
    # membranes: where the two nearest blobs are equally near (shared walls) or at blob edges
    memb = np.clip(f32(1.0) - (f2 - f1) * f32(10.0), 0.0, 1.0) * np.clip(inside * f32(30.0), 0.0, 1.0)
    stroma = tissue * (f32(1.0) - lumen) * (f32(1.0) - cyto)
    haze = tissue * lumen * tex * f32(0.06)  # faint secretions in lumens

    # collagen: pink bundles with thin pale clefts along the phase iso-lines, broken up by noise
    fr = phase - np.floor(phase)
    tri = np.abs(fr * f32(2.0) - f32(1.0))
    cleft = tri * tri
    cleft *= cleft
    cleft *= brk
    stroma *= fld[_F_SDENS][crop]
    chrom = f32(0.7) + f32(0.55) * fine  # chromatin texture inside nuclei

    he = ihc = None
    if he_w:
        conc_h = (nuc_h * chrom + cyto * f32(0.16) + stroma * f32(0.03) + memb * f32(0.04)) * fld[_F_HGAIN][
            crop
        ]
        conc_e = (
            stroma * (f32(0.5) - f32(0.42) * cleft + f32(0.14) * tex)
            + cyto * (f32(0.4) + f32(0.2) * tex)
            + memb * f32(0.06)
            + nuc_h * f32(0.1)
            + haze
        )
        conc_e2 = conc_e * fld[_F_EOSIN_B][crop]
        conc_e *= fld[_F_EOSIN_A][crop]
        he = np.empty((h, w, 3), np.uint8)
        _to_rgb(he, [(conc_h, _HEMATOXYLIN), (conc_e, _EOSIN), (conc_e2, _EOSIN_ALT)])
    if ihc_w:
        assert nuc_neg is not None and nuc_dab is not None and f1p is not None
        nuc_neg, nuc_dab = flat(nuc_neg), flat(nuc_dab)
        cpos = np.clip((f32(1.0) - flat(f1p)) * f32(25.0), 0.0, 1.0)
        conc_c = (
            nuc_neg * chrom
            + nuc_dab * f32(0.12)
            + cyto * f32(0.045)
            + stroma * (f32(0.06) - f32(0.04) * cleft + f32(0.03) * tex)
            + haze * f32(0.5)
        ) * fld[_F_CGAIN][crop]
        conc_d = (
            nuc_dab * (f32(0.75) + f32(0.3) * fine)
            + cpos * (f32(0.22) + f32(0.14) * tex + f32(0.6) * memb)
            + tissue * f32(0.02)
        ) * fld[_F_DGAIN][crop]
        ihc = np.empty((h, w, 3), np.uint8)
        _to_rgb(ihc, [(conc_c, _IHC_HEMATOXYLIN), (conc_d, _DAB)])
    return he, ihc


def _check_region(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"slide size must be positive, got {height}x{width}")
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(f"region [{y0}:{y1}, {x0}:{x1}] is empty or outside the {height}x{width} slide")


def _block_chunks(a0: int, a1: int, per: int) -> list[tuple[int, int, int, int]]:
    """Split pixel range [a0, a1) into runs of <= `per` dual blocks: (b0, nb, lo, hi) with the
    pixel sub-range [lo, hi) and its blocks [b0, b0+nb)."""
    b_first = (a0 - _HALF) // _S
    b_last = (a1 - 1 - _HALF) // _S
    out = []
    for b0 in range(b_first, b_last + 1, per):
        nb = min(per, b_last + 1 - b0)
        lo = max(a0, b0 * _S + _HALF)
        hi = min(a1, (b0 + nb) * _S + _HALF)
        out.append((b0, nb, lo, hi))
    return out


def _render(
    seed: int, height: int, width: int, y0: int, y1: int, x0: int, x1: int, want: tuple[bool, bool]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    _check_region(height, width, y0, y1, x0, x1)
    sl = _Slide(int(seed), int(height), int(width))
    h, w = y1 - y0, x1 - x0
    outs = [np.empty((h, w, 3), np.uint8) if k else None for k in want]
    xchunks = _block_chunks(x0, x1, _CHUNK_BX)
    bxa, bxn = xchunks[0][0], sum(c[1] for c in xchunks)
    for by0, nby, ya, yb in _block_chunks(y0, y1, _CHUNK_BY):
        # smooth fields and cells for the whole band, computed once: they are
        # position-determined, so slicing them per chunk changes nothing
        Y0, XA = by0 * _S + _HALF, bxa * _S + _HALF
        l0y = ((Y0 - _HALF - int(_JIT) - _STEP) // _STEP) * _STEP
        l1y = Y0 + nby * _S + _HALF + int(_JIT) + 2 * _STEP
        l0x = ((XA - _HALF - int(_JIT) - _STEP) // _STEP) * _STEP
        l1x = XA + bxn * _S + _HALF + int(_JIT) + 2 * _STEP
        lat = _lattice_fields(sl, np.arange(l0y, l1y, _STEP), np.arange(l0x, l1x, _STEP))
        cells = _Cells(sl, by0, nby + 1, bxa, bxn + 1, lat, l0y, l0x)
        for bx0, nbx, xa, xb in xchunks:
            X0 = bx0 * _S + _HALF
            crop = (slice(ya - Y0, yb - Y0), slice(xa - X0, xb - X0))
            sub = cells.cols(bx0 - bxa, nbx + 1)
            parts = _render_blocks(sl, by0, nby, bx0, nbx, crop, want, lat, l0y, l0x, sub)
            for o, part in zip(outs, parts, strict=True):
                if o is not None:
                    o[ya - y0 : yb - y0, xa - x0 : xb - x0] = part
    return outs[0], outs[1]


def render_region(
    seed: int,
    height: int,
    width: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    stain: str = "he",
    scanner: Scanner | None = None,
) -> np.ndarray:
    """Pixels [y0:y1, x0:x1] of the synthetic ``height`` x ``width`` slide as uint8 [h, w, 3].

    The result depends only on (seed, height, width, stain) and the pixel coordinates, so any
    tiling of a slide reproduces the whole-slide rendering byte for byte.
    """
    if stain not in STAINS:
        raise ValueError(f"stain must be one of {STAINS}, got {stain!r}")
    he, ihc = _render(seed, height, width, y0, y1, x0, x1, (stain == "he", stain == "ihc"))
    out = he if stain == "he" else ihc
    assert out is not None
    if scanner is not None:
        out = scanner.apply(out, seed, y0, x0, noisy=stain == "he")
    return out


def render_region_pair(
    seed: int, height: int, width: int, y0: int, y1: int, x0: int, x1: int, scanner: Scanner | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(H&E, IHC) of the same region, sharing one geometry pass (cheaper than two calls)."""
    he, ihc = _render(seed, height, width, y0, y1, x0, x1, (True, True))
    assert he is not None and ihc is not None
    if scanner is not None:
        he = scanner.apply(he, seed, y0, x0, noisy=True)
        ihc = scanner.apply(ihc, seed, y0, x0, noisy=False)
    return he, ihc


# --------------------------------------------------------------------------------------------
# Scanner realism
# --------------------------------------------------------------------------------------------

#: White balance maps the glass colour this far above 255, so that glass (and its sensor noise)
#: saturates to a flat 255 the way a scanner's calibrated background does.
WHITE_HEADROOM = 1.04


@dataclass(frozen=True)
class Scanner:
    """What a whole-slide scanner does to the rendered slide; every option off is the clean slide.

    Applied per pixel in this order: sensor ``noise`` (standard deviation in grey levels,
    approximately Gaussian, a hash of (seed, y, x, channel) like everything else here), a per-
    channel gain that ``white_balance``s the glass colour to ``255 * WHITE_HEADROOM``, an
    ``exposure`` gain on every channel, rounding and clipping to [0, 255] (a brighter exposure
    clips bright tissue too), and for the H&E slide JPEG-compressed TIFF tiles of quality
    ``jpeg`` (as SVS files store them). The ground-truth IHC goes through the same photometric
    steps without noise or JPEG: the truth as a perfect sensor on the same scanner would see it.
    """

    noise: float = 0.0
    white_balance: bool = False
    exposure: float = 1.0
    jpeg: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise) and 0 <= self.noise <= 64):
            raise DnrtError(f"scanner noise must be between 0 and 64 grey levels, got {self.noise}")
        if not (math.isfinite(self.exposure) and 0.25 <= self.exposure <= 4):
            raise DnrtError(f"scanner exposure must be between 0.25 and 4, got {self.exposure}")
        if self.jpeg is not None and not 1 <= self.jpeg <= 100:
            raise DnrtError(f"scanner JPEG quality must be between 1 and 100, got {self.jpeg}")

    @property
    def clean(self) -> bool:
        return self == Scanner()

    @property
    def photometric(self) -> bool:
        return self.white_balance or self.exposure != 1.0

    @property
    def name(self) -> str:
        """A file-name-safe description: ``clean`` or e.g. ``noise2-wb-jpeg80``."""
        for preset, scanner in SCANNERS.items():
            if scanner == self:
                return preset
        parts = []
        if self.noise:
            parts.append(f"noise{self.noise:g}")
        if self.white_balance:
            parts.append("wb")
        if self.exposure != 1.0:
            parts.append(f"exp{self.exposure:g}")
        if self.jpeg is not None:
            parts.append(f"jpeg{self.jpeg}")
        return "-".join(parts)

    def gains(self) -> np.ndarray:
        gain = np.full(3, self.exposure, np.float64)
        if self.white_balance:
            gain *= 255.0 * WHITE_HEADROOM / np.asarray(GLASS_RGB, np.float64)
        return gain.astype(np.float32)

    def apply(self, pixels: np.ndarray, seed: int, y0: int, x0: int, noisy: bool = True) -> np.ndarray:
        """The scanned version of rendered pixels ``[h, w, 3]`` whose top-left is (y0, x0)."""
        use_noise = noisy and self.noise > 0
        if not use_noise and not self.photometric:
            return pixels
        v = pixels.astype(np.float32)
        if use_noise:
            h, w = pixels.shape[:2]
            ys = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
            xs = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
            for c in range(3):
                # Irwin-Hall of three uniforms: variance 1/4, so twice sigma gives std sigma.
                total = _u01(ys, xs, _key(seed, 0x5CA0 + 3 * c))
                total = total + _u01(ys, xs, _key(seed, 0x5CA1 + 3 * c))
                total = total + _u01(ys, xs, _key(seed, 0x5CA2 + 3 * c))
                v[..., c] += (total - f32(1.5)) * f32(2.0 * self.noise)
        if self.photometric:
            v *= self.gains()
        return np.clip(np.rint(v), 0, 255).astype(np.uint8)


#: Named scanner conditions (``--scanner NAME``); ``clean`` is the plain rendering.
SCANNERS: dict[str, Scanner] = {
    "clean": Scanner(),
    "flat-glass": Scanner(white_balance=True),
    "scanner": Scanner(noise=2.0, white_balance=True, jpeg=80),
    "overexposed": Scanner(noise=2.0, white_balance=True, exposure=1.1, jpeg=80),
}


def parse_scanner(text: str | Scanner | None) -> Scanner:
    """A preset name (``clean``, ``flat-glass``, ``scanner``, ``overexposed``) or options joined
    by ``,`` or ``+``: ``noise=2,wb,exposure=1.1,jpeg=80``."""
    if text is None:
        return Scanner()
    if isinstance(text, Scanner):
        return text
    name = text.strip().lower()
    if name in SCANNERS:
        return SCANNERS[name]
    fields: dict = {}
    try:
        for part in filter(None, (p.strip() for p in name.replace("+", ",").split(","))):
            key, _, value = part.partition("=")
            if key in ("wb", "white-balance", "white_balance") and not value:
                fields["white_balance"] = True
            elif key == "noise":
                fields["noise"] = float(value)
            elif key == "exposure":
                fields["exposure"] = float(value)
            elif key == "jpeg":
                fields["jpeg"] = int(value)
            else:
                raise ValueError(part)
    except ValueError as exc:
        raise DnrtError(
            f"bad scanner {text!r} ({exc}): expected one of {', '.join(SCANNERS)} "
            "or options like noise=2,wb,exposure=1.1,jpeg=80",
            exit_code=2,
        ) from None
    if not fields:
        raise DnrtError(f"bad scanner {text!r}: no options given", exit_code=2)
    return Scanner(**fields)


# --------------------------------------------------------------------------------------------
# Writing slides
# --------------------------------------------------------------------------------------------


def _band_tiles(
    seed: int,
    height: int,
    width: int,
    stains: Sequence[str],
    tile: int,
    workers: int,
    scanner: Scanner | None = None,
) -> Iterator[list[list[np.ndarray]]]:
    """Yield, band by band, each wanted stain's tiles of that band (row-major)."""
    want = ("he" in stains, "ihc" in stains)

    def band(y: int) -> list[list[np.ndarray]]:
        y1 = min(y + tile, height)
        he, ihc = _render(seed, height, width, y, y1, 0, width, want)
        outs = []
        for s in stains:
            img = he if s == "he" else ihc
            assert img is not None
            if scanner is not None:
                img = scanner.apply(img, seed, y, 0, noisy=s == "he")
            outs.append([img[:, x : x + tile] for x in range(0, width, tile)])
        return outs

    rows = range(0, height, tile)
    if workers <= 1:
        for y in rows:
            yield band(y)
        return
    # bounded look-ahead: at most `workers` bands in flight, so memory stays ~ workers bands
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        it = iter(rows)
        for y in it:
            pending.append(pool.submit(band, y))
            if len(pending) >= workers:
                break
        for y in it:
            yield pending.pop(0).result()
            pending.append(pool.submit(band, y))
        while pending:
            yield pending.pop(0).result()


def _writer_kwargs(tile: int, compression: str | None, jpeg: int | None = None) -> dict:
    # 0.5 um/px == 20,000 px/cm
    px_per_cm = 1e4 / MICRONS_PER_PIXEL
    extra = {} if jpeg is None else {"compressionargs": {"level": int(jpeg)}}
    if jpeg is not None:
        compression = "jpeg"
    return dict(
        **extra,
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression=None if compression in (None, "none") else compression,
        resolution=(px_per_cm, px_per_cm),
        resolutionunit="CENTIMETER",
        metadata=None,
        software="dnrt.data.synthetic",
    )


def _check_tile(tile: int) -> None:
    if tile <= 0 or tile % 16:
        raise ValueError(f"TIFF tile size must be a positive multiple of 16, got {tile}")


def write_slide(
    path: str | os.PathLike,
    seed: int,
    height: int,
    width: int,
    stain: str = "he",
    tile: int = 512,
    compression: str | None = "zlib",
    workers: int = 1,
    scanner: Scanner | None = None,
) -> str:
    """Write one stain of the synthetic slide as a tiled BigTIFF, one band of tiles at a time."""
    import tifffile

    if stain not in STAINS:
        raise ValueError(f"stain must be one of {STAINS}, got {stain!r}")
    _check_tile(tile)
    _check_region(height, width, 0, height, 0, width)

    def tiles() -> Iterator[np.ndarray]:
        for (row,) in _band_tiles(seed, height, width, [stain], tile, workers, scanner):
            yield from row

    path = os.fspath(path)
    jpeg = scanner.jpeg if scanner is not None and stain == "he" else None
    try:
        with tifffile.TiffWriter(path, bigtiff=True) as tw:
            kw = _writer_kwargs(tile, compression, jpeg)
            tw.write(tiles(), shape=(height, width, 3), maxworkers=max(1, workers), **kw)
    except BaseException:
        _remove_quietly(path)  # never leave a truncated slide behind
        raise
    return path


def pair_stem(
    seed: int, height: int, width: int, scanner: Scanner | None = None, prefix: str = "synthetic"
) -> str:
    """File-name stem of a written pair: ``synthetic_s0_3024x4302`` (+ ``_scanner`` if not clean)."""
    stem = f"{prefix}_s{seed}_{height}x{width}"
    return stem if scanner is None or scanner.clean else f"{stem}_{scanner.name}"


def _remove_quietly(*paths: str) -> None:
    for p in paths:
        try:
            if os.path.isfile(p):
                os.remove(p)
        except OSError:
            pass


def write_pair(
    directory: str | os.PathLike,
    seed: int,
    height: int,
    width: int,
    tile: int = 512,
    compression: str | None = "zlib",
    workers: int = 1,
    prefix: str = "synthetic",
    scanner: Scanner | None = None,
) -> tuple[str, str]:
    """Write the H&E and IHC renderings of one slide; returns (he_path, ihc_path).

    Both files are written in one pass over the slide (the geometry is computed once per band).
    With a non-clean ``scanner`` its name is part of the file names.
    """
    import tifffile

    _check_tile(tile)
    _check_region(height, width, 0, height, 0, width)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    stem = pair_stem(seed, height, width, scanner, prefix)
    he_path = os.path.join(directory, f"{stem}_he.tif")
    ihc_path = os.path.join(directory, f"{stem}_ihc.tif")

    # One producer renders both stains per band; the IHC writer runs in a thread fed by a
    # small queue so the two files are written concurrently without holding the slide.
    q: queue.Queue = queue.Queue(maxsize=2)
    errors: list[BaseException] = []
    done = object()

    seen_done = threading.Event()

    def ihc_tiles() -> Iterator[np.ndarray]:
        while True:
            item = q.get()
            if item is done:
                seen_done.set()
                return
            yield from item

    def ihc_writer() -> None:
        try:
            with tifffile.TiffWriter(ihc_path, bigtiff=True) as tw:
                tw.write(
                    ihc_tiles(), shape=(height, width, 3), maxworkers=1, **_writer_kwargs(tile, compression)
                )
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            while not seen_done.is_set():  # drain so the producer never blocks on a full queue
                if q.get() is done:
                    seen_done.set()

    thread = threading.Thread(target=ihc_writer, daemon=True)
    thread.start()

    def he_tiles() -> Iterator[np.ndarray]:
        for he_row, ihc_row in _band_tiles(seed, height, width, ["he", "ihc"], tile, workers, scanner):
            if errors:  # the IHC writer failed: stop rendering, its error is raised below
                raise RuntimeError("IHC writer failed")
            q.put(ihc_row)
            yield from he_row

    gen = he_tiles()
    try:
        try:
            with tifffile.TiffWriter(he_path, bigtiff=True) as tw:
                he_kw = _writer_kwargs(tile, compression, scanner.jpeg if scanner is not None else None)
                tw.write(gen, shape=(height, width, 3), maxworkers=1, **he_kw)
        except RuntimeError:
            if not errors:
                raise
        finally:
            gen.close()
            q.put(done)  # also when the H&E writer failed before starting, so the thread ends
            thread.join()
        if errors:
            raise errors[0]
    except BaseException:
        _remove_quietly(he_path, ihc_path)  # never leave a truncated pair behind
        raise
    return he_path, ihc_path


# --------------------------------------------------------------------------------------------
# Training patches
# --------------------------------------------------------------------------------------------


def sample_pairs(
    seed: int,
    n: int,
    size: int,
    slide_height: int,
    slide_width: int,
    min_tissue: float = 0.3,
    background_fraction: float = 0.05,
    return_locations: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n random aligned (H&E, IHC) patches of size x size from the virtual slide of that size.

    Locations are uniform over the slide (so every stain-variation zone is represented); a
    patch with less than ``min_tissue`` tissue is kept only with probability
    ``background_fraction`` so training does not drown in empty glass. Deterministic by seed
    (the slide's seed is the same ``seed``). With ``return_locations`` a third array [n, 2]
    holds each patch's top-left (y, x).
    """
    if size <= 0 or size > slide_height or size > slide_width:
        raise ValueError(f"patch size {size} does not fit a {slide_height}x{slide_width} slide")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([int(seed), 0x5A3])
    he_out = np.empty((n, size, size, 3), np.uint8)
    ihc_out = np.empty((n, size, size, 3), np.uint8)
    locs = np.empty((n, 2), np.int64)
    glass = np.array(GLASS_RGB, np.int16)
    k = 0
    tries = 0
    while k < n:
        tries += 1
        if tries > 200 * max(n, 1):
            raise ValueError("could not find tissue patches; is the slide too small?")
        y = int(rng.integers(0, slide_height - size + 1))
        x = int(rng.integers(0, slide_width - size + 1))
        keep_any = rng.random() < background_fraction
        he, ihc = render_region_pair(seed, slide_height, slide_width, y, y + size, x, x + size)
        tissue = float(np.mean(np.abs(he.astype(np.int16) - glass).max(axis=-1) > 6))
        if tissue < min_tissue and not keep_any:
            continue
        he_out[k], ihc_out[k] = he, ihc
        locs[k] = (y, x)
        k += 1
    if return_locations:
        return he_out, ihc_out, locs
    return he_out, ihc_out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """'4096x2048' (height x width) or '4096' (square) -> (height, width)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", text)
    if not m:
        raise DnrtError(f"bad size {text!r}: expected HEIGHTxWIDTH, e.g. 4096x4096", exit_code=2)
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if h <= 0 or w <= 0:
        raise DnrtError(f"bad size {text!r}: height and width must be positive", exit_code=2)
    return h, w


def _check_compression(compression: str | None) -> None:
    """Fail early, with one line, on a compression tifffile cannot write."""
    if compression in (None, "none"):
        return
    import io

    import tifffile

    try:
        with tifffile.TiffWriter(io.BytesIO(), bigtiff=True) as tw:
            tw.write(
                np.zeros((16, 16, 3), np.uint8), photometric="rgb", tile=(16, 16), compression=compression
            )
    except Exception as exc:  # any failure means this compression is unusable
        raise DnrtError(f"bad --compression {compression!r}: {exc}", exit_code=2) from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dnrt.data.synthetic --size 4096x4096 --seed 0 -o DIR``: write an H&E/IHC pair."""
    ap = argparse.ArgumentParser(
        prog="python -m dnrt.data.synthetic",
        description="Write a synthetic paired H&E / IHC slide as two tiled BigTIFFs.",
    )
    ap.add_argument("--size", default="4096x4096", help="HEIGHTxWIDTH in pixels (default 4096x4096)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", default=".", help="output directory")
    ap.add_argument("--tile", type=int, default=512, help="TIFF tile size (default 512)")
    ap.add_argument("--compression", default="zlib", help="zlib (default), zstd, lzw, none, ...")
    ap.add_argument("--workers", type=int, default=1, help="rendering threads")
    ap.add_argument("--stain", choices=("both", *STAINS), default="both")
    ap.add_argument(
        "--scanner",
        default="clean",
        help=f"scanner conditions: {', '.join(SCANNERS)} or options noise=2,wb,exposure=1.1,jpeg=80",
    )
    args = ap.parse_args(argv)
    from dnrt.errorline import ErrorLine  # the one "error: ..." line (click: only when run)

    try:
        h, w = parse_size(args.size)
        if args.tile <= 0 or args.tile % 16:
            raise DnrtError(f"bad --tile {args.tile}: must be a positive multiple of 16", exit_code=2)
        if args.workers < 1:
            raise DnrtError(f"bad --workers {args.workers}: must be >= 1", exit_code=2)
        _check_compression(args.compression)
        if args.stain == "both":
            scanner = parse_scanner(args.scanner)
            paths = write_pair(
                args.out, args.seed, h, w, args.tile, args.compression, args.workers, scanner=scanner
            )
        else:
            os.makedirs(args.out, exist_ok=True)
            scanner = parse_scanner(args.scanner)
            p = os.path.join(args.out, f"{pair_stem(args.seed, h, w, scanner)}_{args.stain}.tif")
            paths = (
                write_slide(
                    p, args.seed, h, w, args.stain, args.tile, args.compression, args.workers, scanner=scanner
                ),
            )
    except DnrtError as exc:
        ErrorLine(str(exc)).show()
        return exc.exit_code
    except (ValueError, OSError) as exc:
        ErrorLine(str(exc)).show()
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
