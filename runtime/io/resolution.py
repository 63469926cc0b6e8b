"""Opening a slide at the model's resolution: ``--mpp``, ``--level``, ``--assume-mpp``.

A model trained at 0.5 um/px must see 0.5 um/px. :func:`open_at_resolution` reads the slide's
level-0 microns per pixel from its metadata (OpenSlide's ``openslide.mpp-x/y``, TIFF resolution
tags, the Aperio description's ``MPP``, OME-XML ``PhysicalSizeX/Y``), picks the coarsest pyramid
level that is still as fine as the target (reading a coarser level is cheaper and loses nothing
the target keeps), and resamples it to the target with an area filter (:mod:`.resample`). The
source it returns reports the resolution of the pixels it yields, which the writer records.

The target is ``--mpp``, else the bundle's training resolution (manifest ``mpp``) unless
``--level`` names a level to read as it is. An explicit ``--mpp`` that cannot be met (no
resolution metadata, or finer than the slide's best level without ``--allow-upsample``) is an
error; the bundle's default that cannot be met is a note, and the slide is read at its native
resolution (a PNG or a photo has no microns per pixel to match).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dnrt.errors import DnrtError
from dnrt.runtime.io.reader import DEFAULT_CACHE_BYTES, ImageSource, open_image, quoted, resolution_from_mpp
from dnrt.runtime.io.resample import RATIO_TOLERANCE, ResampledSource

#: Where each reader looks for the slide's resolution (named in the error when it finds none).
RESOLUTION_FIELDS = {
    "openslide": "the openslide.mpp-x / openslide.mpp-y properties",
    "tifffile": "TIFF XResolution/YResolution with a physical ResolutionUnit, an Aperio 'MPP' "
    "or OME-XML PhysicalSizeX/PhysicalSizeY",
    "pillow": "the image's dpi",
}


def check_mpp(value: float | None, option: str) -> float | None:
    """``value`` if None or a finite positive number, else a usage error naming ``option``."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DnrtError(
            f"{option} must be a positive number of microns per pixel, got {value!r}", exit_code=2
        )
    return float(value)


@dataclass(frozen=True)
class ResolutionRequest:
    """What the user asked for; every field optional (None: no request)."""

    level: int | None = None
    mpp: float | None = None
    assume_mpp: float | None = None
    allow_upsample: bool = False

    def __post_init__(self) -> None:
        check_mpp(self.mpp, "--mpp")
        check_mpp(self.assume_mpp, "--assume-mpp")
        if self.level is not None and (
            isinstance(self.level, bool) or int(self.level) != self.level or self.level < 0
        ):
            raise DnrtError(f"--level must be 0 or more, got {self.level!r}", exit_code=2)


@dataclass
class ResolutionChoice:
    """What was read and at which resolution (the ``resolution`` entry of ``--json``)."""

    reader: str
    level: int
    levels: int
    #: Microns per pixel (x, y) of level 0 as the file records it (or as --assume-mpp says).
    source_mpp: list[float] | None
    #: ... of the level read, and of the pixels translated (after resampling).
    level_mpp: list[float] | None
    processed_mpp: list[float] | None
    #: The requested microns per pixel and where the request came from ("--mpp", "bundle").
    target_mpp: float | None = None
    target_from: str | None = None
    #: "none", "box 2x2" (exact integer factor) or "area 1.984x1.984".
    resample: str = "none"
    width: int = 0
    height: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rounded(mpp: tuple[float, float] | None) -> list[float] | None:
    return None if mpp is None else [round(float(mpp[0]), 6), round(float(mpp[1]), 6)]


def _assume(source: ImageSource, level0_mpp: tuple[float, float]) -> None:
    """Give ``source`` the resolution its level implies for the assumed level-0 mpp."""
    w0, h0 = source.level_sizes[0] if source.level_sizes else (source.width, source.height)
    mpp = (level0_mpp[0] * w0 / source.width, level0_mpp[1] * h0 / source.height)
    source.resolution, source.resolution_unit = resolution_from_mpp(mpp)


def _level0_mpp(source: ImageSource) -> tuple[float, float] | None:
    mpp = source.mpp
    if mpp is None:
        return None
    w0, h0 = source.level_sizes[0] if source.level_sizes else (source.width, source.height)
    return (mpp[0] * source.width / w0, mpp[1] * source.height / h0)


def _level_mpp(sizes: tuple[tuple[int, int], ...], mpp0: tuple[float, float], k: int) -> tuple[float, float]:
    return (mpp0[0] * sizes[0][0] / sizes[k][0], mpp0[1] * sizes[0][1] / sizes[k][1])


def open_at_resolution(
    path: os.PathLike[str] | str,
    request: ResolutionRequest | None = None,
    *,
    reader: str = "auto",
    default_mpp: Callable[[], float | None] | float | None = None,
    cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    workers: int | None = None,
) -> tuple[ImageSource, ResolutionChoice]:
    """Open ``path`` at the requested level / resolution; returns the source and what was chosen.

    ``default_mpp`` (a value, or a function called only when it is needed, after the image has
    opened: the bundle's manifest is read then) is the target when ``request.mpp`` is None and
    no level is forced. Every problem is a one-line :class:`DnrtError`; nothing stays open then.
    """
    request = request or ResolutionRequest()
    path = Path(path)
    name = quoted(path)
    source = open_image(
        path, reader=reader, level=request.level or 0, cache_bytes=cache_bytes, workers=workers
    )
    try:
        return _choose(source, request, name, reader, default_mpp, cache_bytes, workers)
    except BaseException:
        source.close()
        raise


def _choose(
    source: ImageSource,
    request: ResolutionRequest,
    name: str,
    reader: str,
    default_mpp: Callable[[], float | None] | float | None,
    cache_bytes: int | None,
    workers: int | None,
) -> tuple[ImageSource, ResolutionChoice]:
    notes: list[str] = []
    if request.assume_mpp is not None:
        recorded = _level0_mpp(source)
        if recorded is not None and abs(recorded[0] / request.assume_mpp - 1) > RATIO_TOLERANCE:
            notes.append(
                f"{name} records {recorded[0]:.4g} um/px; --assume-mpp {request.assume_mpp:g} is used instead"
            )
        _assume(source, (request.assume_mpp, request.assume_mpp))
    mpp0 = _level0_mpp(source)
    sizes = source.level_sizes or ((source.width, source.height),)

    target, origin = request.mpp, "--mpp" if request.mpp is not None else None
    if target is None and request.level is None:
        value = default_mpp() if callable(default_mpp) else default_mpp
        if value is not None:
            target, origin = check_mpp(value, "the bundle's mpp"), "bundle"

    def choice(src: ImageSource, resample: str = "none") -> ResolutionChoice:
        return ResolutionChoice(
            reader=src.reader,
            level=src.level,
            levels=len(sizes),
            source_mpp=_rounded(mpp0),
            level_mpp=_rounded(None if mpp0 is None else _level_mpp(sizes, mpp0, src.level)),
            processed_mpp=_rounded(src.mpp),
            target_mpp=target,
            target_from=origin,
            resample=resample,
            width=src.width,
            height=src.height,
            notes=notes,
        )

    if target is None:
        return source, choice(source)
    if mpp0 is None:
        if origin == "--mpp":
            raise DnrtError(
                f"{name} records no resolution ({RESOLUTION_FIELDS.get(source.reader, 'no resolution metadata')} "
                f"missing), so --mpp {target:g} cannot be met; pass --assume-mpp MICRONS to say what it is",
                exit_code=2,
            )
        notes.append(
            f"{name} records no resolution; translated at its native resolution, not the model's "
            f"{target:g} um/px (pass --assume-mpp MICRONS to resample)"
        )
        target, origin = None, None
        return source, choice(source)

    finer = [
        k for k in range(len(sizes)) if max(_level_mpp(sizes, mpp0, k)) <= target * (1 + RATIO_TOLERANCE)
    ]
    level = request.level
    if level is None:
        level = max(finer) if finer else 0
    upsample = level not in finer
    if upsample and not request.allow_upsample:
        have = _level_mpp(sizes, mpp0, level)
        where = f"level {level}" if request.level is not None else "the finest level"
        if origin == "--mpp":
            raise DnrtError(
                f"--mpp {target:g} is finer than {where} of {name} ({have[0]:.4g} um/px): that would "
                "invent detail by upsampling; pass --allow-upsample to do it anyway",
                exit_code=2,
            )
        notes.append(
            f"the model's {target:g} um/px is finer than {where} of {name} ({have[0]:.4g} um/px); "
            f"translated at {have[0]:.4g} um/px (--allow-upsample resamples)"
        )
        target, origin = None, None
        base = _reopen(source, level, reader, cache_bytes, workers, request)
        return base, choice(base)

    base = _reopen(source, level, reader, cache_bytes, workers, request)
    have = _level_mpp(sizes, mpp0, level)
    fx, fy = target / have[0], target / have[1]
    if abs(fx - 1) <= RATIO_TOLERANCE and abs(fy - 1) <= RATIO_TOLERANCE:
        return base, choice(base)
    resampled = ResampledSource(base, fx, fy)
    return resampled, choice(resampled, resampled.filter)


def _reopen(
    source: ImageSource,
    level: int,
    reader: str,
    cache_bytes: int | None,
    workers: int | None,
    request: ResolutionRequest,
) -> ImageSource:
    """``source`` if it reads ``level``, else that level of the same file (``source`` closed)."""
    if source.level == level:
        return source
    path = source.path
    source.close()
    # The same reader that served level 0 serves the level (auto could decide otherwise).
    chosen = source.reader if source.reader in ("tifffile", "openslide") else reader
    other = open_image(path, reader=chosen, level=level, cache_bytes=cache_bytes, workers=workers)
    if request.assume_mpp is not None:
        try:
            _assume(other, (request.assume_mpp, request.assume_mpp))
        except BaseException:
            other.close()
            raise
    return other
