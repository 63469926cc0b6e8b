"""Numpy reference of the normalization math in ``docs/semantics.md``.

Every backend (ONNX Runtime, PyTorch, the CUDA kernel, TensorRT) is tested
against the functions here, so they are written for clarity and exactness
(float64 inside), not for speed. Section numbers refer to docs/semantics.md.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from dnrt.errors import DnrtError

#: IN's epsilon; its square root is the floor applied to every KIN/DN std (section 8).
IN_EPS = 1e-5
STD_FLOOR_DEFAULT = math.sqrt(IN_EPS)
#: Added to the std before DN takes its reciprocal (section 4.3).
DN_EPS = 1e-7


class Mode(str, enum.Enum):
    IN = "in"
    TIN = "tin"
    KIN = "kin"
    DN = "dn"


@dataclass(frozen=True)
class CollectFlavour:
    """How a tile's own std is computed while statistics are collected (section 2).

    ``std = max(sqrt(sum((x - mu)^2) / (n - ddof) + eps), floor)``
    """

    ddof: int
    eps: float
    floor: float

    def as_array(self) -> np.ndarray:
        """Packed as the stats graph's ``collect_params`` input: ``[ddof, eps, floor]``."""
        return np.array([self.ddof, self.eps, self.floor], dtype=np.float32)


def collect_flavour(mode: Mode | str, std_floor: float = STD_FLOOR_DEFAULT) -> CollectFlavour:
    mode = Mode(mode)
    if std_floor < 0 or not math.isfinite(std_floor):
        raise DnrtError(f"std floor must be a finite number >= 0, got {std_floor}")
    if mode is Mode.IN:
        return CollectFlavour(ddof=0, eps=IN_EPS, floor=0.0)
    if mode is Mode.TIN:
        return CollectFlavour(ddof=1, eps=IN_EPS, floor=0.0)
    # KIN and DN both collect the unbiased std with no epsilon; dnrt floors it (section 8).
    return CollectFlavour(ddof=1, eps=0.0, floor=std_floor)


# --------------------------------------------------------------------------- statistics


def moments(x: np.ndarray, flavour: CollectFlavour) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``x[..., C, h, w]`` in the given flavour (float64)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1] * x.shape[-2]
    if n - flavour.ddof <= 0:
        raise DnrtError(f"a {x.shape[-2]}x{x.shape[-1]} map is too small for an unbiased std")
    mean = x.mean(axis=(-2, -1))
    centred = x - mean[..., None, None]
    var = (centred**2).sum(axis=(-2, -1)) / (n - flavour.ddof)
    std = np.maximum(np.sqrt(var + flavour.eps), flavour.floor)
    return mean, std


def normalize_own(
    x: np.ndarray,
    flavour: CollectFlavour,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collect step: normalize ``x[..., C, h, w]`` with its own statistics, return (y, mean, std)."""
    mean, std = moments(x, flavour)
    y = (np.asarray(x, np.float64) - mean[..., None, None]) / std[..., None, None]
    return _affine(y, gamma, beta), mean, std


def _affine(y: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None) -> np.ndarray:
    if gamma is not None:
        y = y * np.asarray(gamma, np.float64)[:, None, None]
    if beta is not None:
        y = y + np.asarray(beta, np.float64)[:, None, None]
    return y


# --------------------------------------------------------------------------- KIN smoothing


def kin_kernel(k: int = 5, kind: str = "constant", sigma: float | None = None) -> np.ndarray:
    """The ``k x k`` KIN smoothing kernel, weights summing to one (section 3).

    The Gaussian's sigma defaults to the rule OpenCV uses for a kernel of size k,
    ``0.3 * ((k - 1) / 2 - 1) + 0.8``.
    """
    if k < 1 or k % 2 == 0:
        raise DnrtError(f"KIN kernel size must be a positive odd number, got {k}")
    if kind == "constant":
        kernel = np.ones((k, k), dtype=np.float64)
    elif kind == "gaussian":
        if sigma is None:
            sigma = 0.3 * ((k - 1) / 2 - 1) + 0.8
        if sigma <= 0:
            raise DnrtError(f"Gaussian sigma must be positive, got {sigma}")
        offsets = np.arange(k) - (k - 1) / 2
        g = np.exp(-(offsets**2) / (2 * sigma**2))
        kernel = np.outer(g, g)
    else:
        raise DnrtError(f"unknown KIN kernel type {kind!r} (expected 'constant' or 'gaussian')")
    return kernel / kernel.sum()


def kin_smooth(table: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Smooth a statistics table ``[R, Q, C]`` with ``kernel``, replication-padding the grid."""
    k = kernel.shape[0]
    half = k // 2
    table = np.asarray(table, dtype=np.float64)
    rows, cols = table.shape[:2]
    padded = np.pad(table, ((half, half), (half, half), (0, 0)), mode="edge")
    out = np.zeros_like(table)
    for i in range(k):
        for j in range(k):
            out += kernel[i, j] * padded[i : i + rows, j : j + cols]
    return out


# --------------------------------------------------------------------------- DN neighbourhoods


def gather_neighbourhood(table: np.ndarray, r: int, q: int) -> np.ndarray:
    """The 3x3 neighbourhood ``[C, 3, 3]`` of tile (r, q) from a table ``[R, Q, C]``.

    Replication-padded at the grid border (section 4.1); non-finite entries,
    per channel, are replaced by the centre value (section 4.2).
    """
    rows, cols = table.shape[:2]
    ri = np.clip(np.arange(r - 1, r + 2), 0, rows - 1)
    qi = np.clip(np.arange(q - 1, q + 2), 0, cols - 1)
    nbr = np.asarray(table, dtype=np.float64)[np.ix_(ri, qi)]  # [3, 3, C]
    nbr = np.moveaxis(nbr, -1, 0)  # [C, 3, 3]
    centre = np.broadcast_to(nbr[:, 1:2, 1:2], nbr.shape)
    return np.where(np.isfinite(nbr), nbr, centre)


def constant_neighbourhood(values: np.ndarray) -> np.ndarray:
    """Nine equal entries per channel: how the DN op serves TIN and KIN (section 4.5)."""
    values = np.asarray(values, dtype=np.float64)
    return np.broadcast_to(values[..., None, None], values.shape + (3, 3)).copy()


def std_for_dense_op(sigma: np.ndarray, eps: float = DN_EPS) -> np.ndarray:
    """The std to feed the DN op so that its ``1/(std + eps)`` is exactly ``1/sigma``.

    TIN and KIN divide by their std with no epsilon; passing ``sigma - eps``
    makes the shared DenseNorm op compute that same division.
    """
    return np.asarray(sigma, dtype=np.float64) - eps


def axis_weights(n: int) -> np.ndarray:
    """Weights ``[n, 3]`` of the previous, own and next tile along one axis (section 4.4).

    Pixel i sits at ``i + 0.5``; the tile centre at ``n / 2``; neighbouring centres
    ``n`` pixels away (the reference geometry). Rows sum to one.
    """
    if n <= 0 or n % 2:
        raise DnrtError(
            f"a normalization layer sees a map of size {n}; DN needs even sizes "
            "(choose tile and margin so every layer's map is even)"
        )
    p = np.arange(n, dtype=np.float64) + 0.5
    d = (p - n / 2) / n
    before = np.maximum(-d, 0.0)
    after = np.maximum(d, 0.0)
    return np.stack([before, 1.0 - before - after, after], axis=1)


def interpolate(nbr: np.ndarray, h: int, w: int) -> np.ndarray:
    """Per-pixel values ``[..., h, w]`` from a neighbourhood ``[..., 3, 3]`` (separable form)."""
    wy = axis_weights(h)
    wx = axis_weights(w)
    return np.einsum("ia,...ab,jb->...ij", wy, np.asarray(nbr, np.float64), wx)


def dense_normalize(
    x: np.ndarray,
    nbr_mean: np.ndarray,
    nbr_std: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = DN_EPS,
    activation: str = "none",
) -> np.ndarray:
    """The DenseNorm op: ``(x - mu_p) * rinv_p * gamma + beta`` with per-pixel moments.

    ``x`` is ``[..., C, h, w]``; neighbourhoods are ``[..., C, 3, 3]``. The std is
    interpolated as a reciprocal (section 4.3), never as ``1 / interp(std)``.
    """
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[-2:]
    mu = interpolate(nbr_mean, h, w)
    rinv = interpolate(1.0 / (np.asarray(nbr_std, np.float64) + eps), h, w)
    y = _affine((x - mu) * rinv, gamma, beta)
    if activation == "relu":
        y = np.maximum(y, 0.0)
    elif activation != "none":
        raise DnrtError(f"unknown activation {activation!r} (expected 'none' or 'relu')")
    return y


# --------------------------------------------------------------------------- degenerate statistics


class DegenerateRule(str, enum.Enum):
    """How DN treats (near-)degenerate statistics in a 3x3 neighbourhood (section 8).

    Every rule first floors each std at the absolute ``floor``. Then, per channel, with
    ``s_c`` the centre's std, ``s_max`` the largest of the nine and ``ratio`` in (0, 1]:

    - ``reference``: nothing more (the published arithmetic plus the floor; compatibility).
    - ``relative-floor``: every std is raised to at least ``ratio * s_max``.
    - ``zero``: an entry with ``s < ratio * s_max`` gets a zero reciprocal (its std is fed as
      ``+inf``), so it lends no gain to the pixels near it.
    - ``isolate``: an entry whose std and the centre's differ by more than ``1 / ratio``
      (``min(s, s_c) < ratio * max(s, s_c)``) is replaced, mean and std, by the centre's:
      the same treatment the reference gives a non-finite entry (section 4.2). A tissue tile
      ignores a glass neighbour and a glass tile its tissue neighbours; each falls back to
      its own statistics across that border, as patch-wise IN does.
    - ``slide``: an entry with ``s < ratio * S`` takes the slide-level mean and std ``(M, S)``
      (the statistics of the whole image shrunk to one tile, TIN's thumbnail pass). The
      replacement depends on the entry alone, not on which tile looks at it, so neighbouring
      tiles still agree along their common border (DN's seamlessness); a flat glass tile is
      normalized as the whole slide would normalize it instead of amplifying its noise, and a
      tissue tile next to it blends towards statistics of its own scale.
    """

    REFERENCE = "reference"
    RELATIVE_FLOOR = "relative-floor"
    ZERO = "zero"
    ISOLATE = "isolate"
    SLIDE = "slide"


#: dnrt's default rule and ratio, chosen by measurement (docs/semantics.md section 8.1).
DEGENERATE_DEFAULT = DegenerateRule.SLIDE
DEGENERATE_RATIO_DEFAULT = 0.6


def condition_neighbourhood(
    nbr_mean: np.ndarray,
    nbr_std: np.ndarray,
    rule: DegenerateRule | str = DegenerateRule.REFERENCE,
    floor: float = STD_FLOOR_DEFAULT,
    ratio: float = DEGENERATE_RATIO_DEFAULT,
    slide: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a :class:`DegenerateRule` to neighbourhoods ``[..., C, 3, 3]``; returns (mean, std).

    ``slide`` is the slide-level ``(mean, std)`` ``[C]`` the ``slide`` rule needs. The
    arithmetic keeps the inputs' dtype (float32 tables stay float32, the float64 reference
    stays float64): only maxima, comparisons, selections and one product with ``ratio``, so
    the runtime and this reference take the same decisions.
    """
    rule = DegenerateRule(rule)
    mean = np.asarray(nbr_mean)
    std = np.maximum(np.asarray(nbr_std), np.asarray(floor, dtype=np.asarray(nbr_std).dtype))
    if rule is DegenerateRule.REFERENCE:
        return mean, std
    r = np.asarray(ratio, dtype=std.dtype)
    if rule is DegenerateRule.SLIDE:
        if slide is None:
            raise DnrtError("the 'slide' degenerate-statistics rule needs the slide-level statistics")
        slide_mean = np.asarray(slide[0], dtype=mean.dtype)[..., None, None]
        slide_std = np.maximum(np.asarray(slide[1], dtype=std.dtype), std.dtype.type(floor))[..., None, None]
        flat = std < r * slide_std
        return np.where(flat, slide_mean, mean), np.where(flat, slide_std, std)
    if rule is DegenerateRule.ISOLATE:
        centre_std = std[..., 1:2, 1:2]
        apart = np.minimum(std, centre_std) < r * np.maximum(std, centre_std)
        return np.where(apart, mean[..., 1:2, 1:2], mean), np.where(apart, centre_std, std)
    top = r * std.max(axis=(-2, -1), keepdims=True)
    if rule is DegenerateRule.RELATIVE_FLOOR:
        return mean, np.maximum(std, top)
    return mean, np.where(std < top, np.asarray(np.inf, dtype=std.dtype), std)


def check_degenerate(rule: DegenerateRule | str, ratio: float) -> DegenerateRule:
    """Validate a rule name and its ratio; returns the rule."""
    try:
        rule = DegenerateRule(rule)
    except ValueError:
        names = ", ".join(r.value for r in DegenerateRule)
        raise DnrtError(f"unknown degenerate-statistics rule {rule!r} (expected one of {names})") from None
    if not (isinstance(ratio, int | float) and math.isfinite(ratio) and 0 < ratio <= 1):
        raise DnrtError(f"degenerate ratio must be a number in (0, 1], got {ratio!r}")
    return rule


# --------------------------------------------------------------------------- TIN thumbnail


def area_weights(src: int, dst: int) -> np.ndarray:
    """``[dst, src]`` matrix of box-overlap weights: output pixel i averages input
    ``[i * src / dst, (i + 1) * src / dst)`` with fractional coverage at the ends.

    For downscaling this is OpenCV's INTER_AREA; it is separable, so a thumbnail
    can be accumulated band by band without holding the image.
    """
    scale = src / dst
    edges = np.arange(dst + 1, dtype=np.float64) * scale
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(src, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-resize ``image[H, W, ...]`` to ``height x width`` (float64)."""
    wy = area_weights(image.shape[0], height)
    wx = area_weights(image.shape[1], width)
    return np.einsum("iy,yx...,jx->ij...", wy, np.asarray(image, np.float64), wx)


# --------------------------------------------------------------------------- pixels


def to_network(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]`` (section 1)."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def from_network(y: np.ndarray) -> np.ndarray:
    """Generator output (tanh range) -> uint8 via ``round(clip((y + 1) / 2, 0, 1) * 255)``."""
    scaled = np.clip((np.asarray(y, np.float32) + 1) * np.float32(0.5), 0, 1) * np.float32(255)
    return np.rint(scaled).astype(np.uint8)


# --------------------------------------------------------------------------- geometry


def grid_shape(height: int, width: int, tile: int) -> tuple[int, int]:
    """Rows and columns of tiles: ``ceil(H / T)``, ``ceil(W / T)`` (section 1)."""
    return -(-height // tile), -(-width // tile)


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
    """Map any integer index onto ``[0, n)`` by repeated mirror reflection without
    repeating the edge pixel (numpy's ``'reflect'``), for padding past the image."""
    index = np.asarray(index)
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    m = np.mod(index, period)
    return np.where(m < n, m, period - m)


#: The tile and margin a bundle gets unless the exporter is told otherwise (README, "Which margin").
TILE_DEFAULT = 512
MARGIN_DEFAULT = 16


def _geometry_hint(tile: int, margin: int, multiple: int) -> str:
    """' (e.g. --margin M)': the nearest margin that suits ``tile``, when there is one."""
    if tile % 2 or multiple % 2:
        return ""
    options = [m for m in range(margin, margin + multiple) if (tile + 2 * m) % multiple == 0 and m < tile]
    return f" (e.g. --margin {options[0]} with --tile {tile})" if options else ""


def default_geometry(multiple: int, tile: int | None = None, margin: int | None = None) -> tuple[int, int]:
    """The bundle's default tile and margin for a network whose input must be a multiple of ``multiple``.

    Unset values start from 512 and 16: the tile is raised to a multiple of ``multiple`` (TIN's
    and DN's thumbnail runs the network on T x T) and the margin to the smallest value >= 16
    that makes ``T + 2M`` one too. A value the caller set is kept (and checked later).
    """
    if tile is None:
        tile = -(-TILE_DEFAULT // multiple) * multiple
    if margin is None:
        margin = MARGIN_DEFAULT
        if tile % 2 == 0:
            while (tile + 2 * margin) % multiple and margin < tile:
                margin += 1
    return tile, margin


def check_map_sizes(tile: int, margin: int, strides: list[int], multiple: int = 1) -> list[int]:
    """Map size of every norm layer for a tile + margin; raise on odd or fractional sizes.

    ``strides`` is each layer's downsampling factor relative to the network input;
    ``multiple`` what the network itself needs the input to be a multiple of (a U-Net:
    ``2**depth``; the manifest's ``network_multiple``).
    """
    if tile <= 0 or margin < 0:
        raise DnrtError(
            f"tile must be positive and margin non-negative (got tile={tile}, margin={margin})", exit_code=2
        )
    if margin >= tile:  # an option out of its range: a usage error, like every other bound
        raise DnrtError(
            f"margin ({margin}) must be smaller than the tile ({tile}): a margin reaches at most into the neighbouring tiles",
            exit_code=2,
        )
    size = tile + 2 * margin
    if size % multiple:
        raise DnrtError(
            f"tile {tile} + 2 x margin {margin} = {size} px does not suit this model: it halves its input "
            f"{multiple.bit_length() - 1} times, so tile + 2*margin must be a multiple of {multiple}"
            f"{_geometry_hint(tile, margin, multiple)}"
        )
    sizes = []
    for stride in sorted(set(strides)):
        if size % stride or (size // stride) % 2:
            raise DnrtError(
                f"tile {tile} + 2 x margin {margin} = {size} px gives a {size / stride:g} px map at a layer "
                f"downsampled {stride}x; DN needs every layer's map even: choose tile + 2*margin divisible "
                f"by {2 * max(strides)}"
            )
    for stride in strides:
        sizes.append(size // stride)
    return sizes
