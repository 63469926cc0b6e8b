"""Pixel conversions on the scheduler's critical path: uint8 HWC <-> float32 NCHW.

They compute exactly ``dnrt.semantics.to_network`` / ``from_network`` (bit for bit,
tested), arranged for speed, because with a small model they are most of a
tile's time:

- **Gathers as slices.** The indices a tile reads (``TilePlan.source_rows`` /
  ``source_cols``) are a few runs of consecutive or mirrored pixels, so a
  network input is copied run by run with basic slicing (no fancy-index gather
  of the whole band, which copies every column of it).
- **One channel at a time.** Converting interleaved RGB to planar channels in a
  single transposed copy makes numpy loop over 3-element rows; a copy per
  channel loops over whole image rows instead (4x faster at T = 512).
- **Caller-owned buffers.** Each stage reuses its float buffers instead of
  faulting in fresh pages for every tile.
"""

from __future__ import annotations

import numpy as np

#: A unit-stride run: (destination slice, source slice).
Run = tuple[slice, slice]

_SCALE = np.float32(127.5)
_ONE = np.float32(1.0)


def unit_runs(index: np.ndarray) -> tuple[Run, ...]:
    """Split an index array into maximal runs of step +1 or -1, as slice pairs.

    ``dst[d] = src[s]`` for each run ``(d, s)`` is the same as ``dst = src[index]``.
    """
    index = np.asarray(index, dtype=np.int64).ravel()
    runs: list[Run] = []
    n = len(index)
    start = 0
    while start < n:
        end = start + 1  # exclusive end of the run
        step = 1
        if end < n and abs(int(index[end]) - int(index[start])) == 1:
            step = int(index[end]) - int(index[start])
            while end < n and int(index[end]) - int(index[end - 1]) == step:
                end += 1
        first = int(index[start])
        stop = first + step * (end - start)
        source = slice(first, stop if stop >= 0 else None, step)
        runs.append((slice(start, end), source))
        start = end
    return tuple(runs)


def gather_network_input(
    pixels: np.ndarray, row_runs: tuple[Run, ...], col_runs: tuple[Run, ...], out: np.ndarray
) -> None:
    """``out [C, S, S] = pixels[rows][:, cols] / 127.5 - 1`` in float32 (``to_network``, planar).

    ``pixels`` is ``[h, w, C]`` uint8; the runs come from :func:`unit_runs` of the row and
    column indices into it. The strided uint8 copy and the float arithmetic are separate
    passes: numpy's mixed-type divide on strided input is twice as slow as both together.
    """
    for c in range(out.shape[0]):
        plane = out[c]
        for row_dst, row_src in row_runs:
            for col_dst, col_src in col_runs:
                np.copyto(plane[row_dst, col_dst], pixels[row_src, col_src, c], casting="unsafe")
    np.divide(out, _SCALE, out=out)
    out -= _ONE


def network_output_to_uint8(image: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``round(clip((y + 1) / 2, 0, 1) * 255)`` of ``image [n, C, h, w]`` float, into ``scratch``
    (same shape, float32), returned still planar and in float (integral values 0..255).

    ``(y + 1) * 127.5`` equals ``((y + 1) * 0.5) * 255`` in float32 (halving is exact, so
    both round the same real number once), and clipping before or after the exact scaling
    by 255 selects the same values: the result is ``from_network``'s, bit for bit.
    """
    np.add(image, _ONE, out=scratch)
    scratch *= _SCALE
    np.clip(scratch, 0, 255, out=scratch)
    np.rint(scratch, out=scratch)
    return scratch


def paste_planar(dst: np.ndarray, planar: np.ndarray) -> None:
    """``dst [h, w, C] = planar [C, h, w]`` (cast to ``dst``'s dtype), one channel at a time."""
    for c in range(planar.shape[0]):
        np.copyto(dst[:, :, c], planar[c], casting="unsafe")
