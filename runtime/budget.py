"""Resource bounds and the pre-flight: what a run will need, checked before anything is allocated.

A single option (``--tile 1000000000``), a manifest field or a few hundred bytes of file must
not be able to take the whole machine. Everything a run sizes by the user's numbers is checked
here against the model, the image and the machine, and refused with the numbers (one
``DnrtError``) before the backend loads or the output is created:

- the tile: never larger than both the bundle's tile and the image (rounded up to the model's
  input multiple) -- a bigger tile only computes mirrored padding;
- the estimated peak memory of the run (network activations, the streamed row bands, the
  statistics tables) against the memory the process can still get (``MemAvailable`` and the
  address-space limit, whichever is smaller);
- the estimated output size against the free space at the destination;
- KIN's kernel (never wider than the tile grid it smooths) and ``threads`` (never more than the
  machine's cores).

The memory and disk checks are estimates; ``force=True`` (``--force``) tries anyway.
"""

from __future__ import annotations

import os
import resource
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dnrt.bundle import Manifest
from dnrt.errors import DnrtError

#: Bytes per activation element a backend keeps alive over one network run, per unit of
#: (channels / stride^2) summed over the norm layers: about 3 float32 buffers per norm layer
#: (conv output, norm output, activation), what ONNX Runtime's CPU provider was measured to hold
#: (dnrt/bench/harness.py, whole-image inference).
BYTES_PER_ACTIVATION = 12.0

#: Largest KIN kernel anyone can ask for, whatever the image: the kernel is a dense k x k table.
KIN_KERNEL_MAX = 4095

#: What a compressed output is expected to take relative to its raw pixels, per codec: the
#: lossless codecs are assumed to halve translated tissue, the lossy ones to keep a tenth.
#: The disk check refuses only when even this estimate does not fit.
_OUTPUT_RATIO = {"none": 1.0, "zlib": 0.5, "lzw": 0.6, "zstd": 0.5, "jpeg": 0.1, "webp": 0.5}

#: Fixed overhead of the runtime (interpreter, libraries, buffers not counted below).
_BASE_BYTES = 200 << 20


def gb(n: float) -> str:
    """Bytes as a short human number for messages."""
    if n >= 1e12:
        return f"{n / 1e12:.3g} TB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} kB" if n >= 1e3 else f"{int(n)} bytes"


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


# --------------------------------------------------------------------------- options


def check_threads(threads: int | None) -> int | None:
    """``threads`` if it is between 1 and :func:`max_threads`, else a DnrtError."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise DnrtError(f"threads must be an integer, got {threads!r}", exit_code=2)
    limit = max_threads()
    if threads < 1 or threads > limit:
        raise DnrtError(
            f"threads must be between 1 and {limit} (twice the {available_cores()} CPU cores this process "
            f"may use), got {threads}",
            exit_code=2,
        )
    return threads


def max_threads() -> int:
    """More threads than twice the cores only adds contention (and a thread stack each)."""
    return max(4, 2 * available_cores())


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_kin_kernel_size(k: int) -> None:
    """Refuse a kernel that cannot be built (before the k x k table is allocated)."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise DnrtError(f"KIN kernel size must be an integer, got {k!r}", exit_code=2)
    if k > KIN_KERNEL_MAX:
        raise DnrtError(
            f"KIN kernel size {k} is over the limit of {KIN_KERNEL_MAX} tiles (a {k} x {k} table of weights)",
            exit_code=2,
        )


#: Kernels up to this size are accepted on any grid (the default, 5, included).
KIN_KERNEL_ANY_GRID = 15


def check_kin_kernel_for_grid(k: int, rows: int, cols: int) -> None:
    """A KIN window wider than ``2 x`` the tile grid only averages replicated border tiles, at a
    cost of ``k^2`` passes over the statistics of every smoothed row."""
    useful = max(2 * max(rows, cols) - 1, KIN_KERNEL_ANY_GRID)
    if k > useful:
        raise DnrtError(
            f"KIN kernel size {k} is wider than this image's tile grid can use: the image is {rows} x {cols} "
            f"tiles, so a window of at most {useful} tiles reaches every tile from every other; "
            f"use --kin-kernel {useful if useful % 2 else useful - 1} or less",
            exit_code=2,
        )


def check_tile_for_image(manifest: Manifest, tile: int, height: int, width: int) -> None:
    """Refuse a tile larger than both the bundle's tile and the image (rounded up to the model's
    input multiple): past that the network only runs on mirrored padding."""
    largest = max(manifest.tile, _round_up(max(height, width), manifest.input_multiple))
    if tile > largest:
        raise DnrtError(
            f"tile {tile} is larger than the image ({width} x {height} px) and the bundle's tile "
            f"({manifest.tile}): one network run would take about {gb(network_bytes(manifest, tile, 1))}, "
            f"mostly for mirrored padding; use a tile of at most {largest}",
            exit_code=2,
        )


# --------------------------------------------------------------------------- estimates


def network_bytes(manifest: Manifest, input_size: int, batch: int) -> float:
    """Estimated memory of one backend call on ``batch`` network inputs of ``input_size`` px."""
    equivalents = sum(layer.channels / (layer.stride * layer.stride) for layer in manifest.layers)
    per_pixel = equivalents + 2 * (manifest.in_channels + manifest.out_channels)
    return float(input_size) * input_size * batch * per_pixel * BYTES_PER_ACTIVATION


@dataclass
class Estimate:
    """What the pre-flight found (``TranslateReport.preflight``); byte counts, None when unknown."""

    peak_memory_bytes: int
    network_bytes: int
    bands_bytes: int
    tables_bytes: int
    memory_available_bytes: int | None
    output_bytes: int | None = None
    disk_free_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        text = f"pre-flight: peak memory ~{gb(self.peak_memory_bytes)}"
        if self.memory_available_bytes is not None:
            text += f" of {gb(self.memory_available_bytes)} available"
        if self.output_bytes is not None:
            text += f"; output ~{gb(self.output_bytes)}"
            if self.disk_free_bytes is not None:
                text += f" of {gb(self.disk_free_bytes)} free"
        return text


def estimate_run(
    manifest: Manifest,
    *,
    height: int,
    width: int,
    tile: int,
    margin: int,
    batch: int,
    rows: int,
    cols: int,
    two_pass: bool,
    overlap: bool,
    lookahead: int = 1,
    reader_bytes: int = 0,
    gpu: bool = False,
) -> Estimate:
    """Peak host memory of a run by its parts (see the README's memory section); on a GPU
    backend (``gpu``) the activations live in device memory and are not counted."""
    size = tile + 2 * margin
    passes = 2 if overlap else 1  # collect and infer running at once each hold a call's memory
    net = 0.0 if gpu else network_bytes(manifest, size, batch) * passes
    # Row bands of input (the one read ahead, the look-ahead rows, the one inferred) and of output
    # (the one computed, the one the writer encodes), uint8; each stage's float32 network-input
    # and output buffers; what the reader caches (``reader_bytes``: the TIFF decode cache).
    band_rows = min(height, tile + 2 * margin)
    in_bands = 2 + (0 if two_pass else lookahead)
    bands = band_rows * width * (manifest.in_channels * in_bands + manifest.out_channels * 2)
    bands += 2 * batch * size * size * (manifest.in_channels + manifest.out_channels) * 4
    bands += reader_bytes
    # Statistics tables: mean and std (float32) per tile and channel, a few rows of them when
    # streaming, every row for two-pass.
    table_rows = rows if two_pass else min(rows, 8)
    tables = table_rows * cols * manifest.total_channels * 8 * 2
    peak = int(_BASE_BYTES + net + bands + tables)
    return Estimate(
        peak_memory_bytes=peak,
        network_bytes=int(net),
        bands_bytes=int(bands),
        tables_bytes=int(tables),
        memory_available_bytes=memory_available(),
    )


def output_bytes(height: int, width: int, channels: int, compression: str, pyramid: bool) -> int:
    """Estimated size of the output file (see ``_OUTPUT_RATIO``); pyramid levels add a third."""
    codec = compression.split(":", 1)[0].strip().lower()
    ratio = _OUTPUT_RATIO.get(codec, 1.0)
    if codec == "webp" and compression.strip().lower() not in ("webp", "webp:100"):
        ratio = 0.1
    raw = height * width * channels * (4 / 3 if pyramid else 1.0)
    return int(raw * ratio)


def memory_available() -> int | None:
    """Bytes this process can still allocate: the smaller of the kernel's ``MemAvailable`` and
    what the address-space limit (``ulimit -v``) leaves above the current address space."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - _address_space()))
    return min(limits) if limits else None


def _address_space() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def disk_free(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the filesystem of ``path``'s folder (None when it cannot be asked)."""
    folder = Path(path).absolute().parent
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def check_fits(estimate: Estimate, *, force: bool) -> None:
    """Refuse a run whose estimated memory or output does not fit (unless ``force``)."""
    if force:
        return
    available = estimate.memory_available_bytes
    if available is not None and estimate.peak_memory_bytes > available:
        raise DnrtError(
            f"this run needs about {gb(estimate.peak_memory_bytes)} of memory by estimate (network "
            f"{gb(estimate.network_bytes)}, image bands {gb(estimate.bands_bytes)}, statistics "
            f"{gb(estimate.tables_bytes)}) but {gb(available)} is available; use a smaller --tile or "
            "--batch, or --force to try anyway"
        )
    free = estimate.disk_free_bytes
    if estimate.output_bytes is not None and free is not None and estimate.output_bytes > free:
        raise DnrtError(
            f"the output needs about {gb(estimate.output_bytes)} by estimate but its folder has "
            f"{gb(free)} free; free some space, choose another -o, or --force to try anyway"
        )
