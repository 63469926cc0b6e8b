"""One typed set of translation options: defaults, validation and JSON form in one place.

Every front end builds a :class:`TranslateOptions` and hands it on: ``trt-translate`` (its
choices and defaults come from this module), the Python API (``Translator(**options)`` and
``translate(...)`` build one from their keywords), the C API (its struct is mapped onto one),
``dnrt bench`` and ``dnrt batch``. Validation happens here, once, before anything heavy loads:
a wrong type or value is a :class:`~dnrt.errors.DnrtError` with exit code 2 naming the option,
never a raw ``TypeError`` from deep inside a run.

This module stays light (no torch, onnxruntime or tifffile) so that ``--help`` is instant.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from dnrt.errors import DnrtError
from dnrt.runtime.tissue import BACKGROUND_CHOICES, TISSUE_THRESHOLD_DEFAULT
from dnrt.semantics import (
    DEGENERATE_DEFAULT,
    DEGENERATE_RATIO_DEFAULT,
    STD_FLOOR_DEFAULT,
    DegenerateRule,
    Mode,
    check_degenerate,
)

__all__ = [
    "BACKENDS",
    "BACKEND_PRECISIONS",
    "GPU_BACKENDS",
    "KIN_KERNEL_TYPES",
    "MARGIN_SOURCES",
    "MODES",
    "FILE_FIELDS",
    "OUTPUT_FORMATS",
    "READERS",
    "PRECISIONS",
    "SCHEDULES",
    "TranslateOptions",
]

MODES = tuple(m.value for m in Mode)
SCHEDULES = ("streaming", "two-pass")
#: ``auto`` first; the registry in ``dnrt.runtime.backends`` holds the same names (tested).
BACKENDS = ("auto", "ort", "ort-cuda", "torch", "torch-cuda", "trt")
#: The backends that run on a CUDA GPU (memory estimates, the benchmark's GPU sampling).
GPU_BACKENDS = ("ort-cuda", "torch-cuda", "trt")
MARGIN_SOURCES = ("image", "tile")
KIN_KERNEL_TYPES = ("constant", "gaussian")
PRECISIONS = ("fp32", "fp16", "bf16")
#: Activation precisions each backend computes in (``--precision``; ``auto`` picks among them).
BACKEND_PRECISIONS = {
    "ort": ("fp32",),
    "ort-cuda": ("fp32",),
    "torch": ("fp32", "bf16"),
    "torch-cuda": ("fp32", "fp16", "bf16"),
    "trt": ("fp32", "fp16"),
}
DEGENERATE_RULES = tuple(r.value for r in DegenerateRule)
#: Output TIFF layouts (slide outputs, issue 17): ``tiff`` (levels in the main IFD chain) or
#: ``ome-tiff`` (OME-XML, levels as SubIFDs).
OUTPUT_FORMATS = ("tiff", "ome-tiff")
READERS = ("auto", "tifffile", "openslide")

#: The output TIFF's own tile edge: a multiple of 16 (the TIFF rule) up to 4096.
WRITER_TILE_RANGE = (16, 4096)


def _usage(message: str) -> DnrtError:
    return DnrtError(message, exit_code=2)


def _integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    # bool is an int in Python; True as a tile size is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise _usage(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise _usage(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise _usage(f"{name} must be at most {maximum}, got {value}")
    return int(value)


def _optional_integer(name: str, value: Any, minimum: int, maximum: int | None = None) -> int | None:
    return None if value is None else _integer(name, value, minimum, maximum)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _usage(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    text = value.value if isinstance(value, Mode | DegenerateRule) else value
    if not isinstance(text, str) or text.lower() not in choices:
        raise _usage(f"unknown {name} {value!r} (expected one of {', '.join(choices)})")
    return text.lower()


def _flag(name: str, value: Any, optional: bool = False) -> bool | None:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise _usage(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class TranslateOptions:
    """How to translate: normalization, tiling, backend and output settings.

    Construct it with keywords; every field is checked and normalised (names lower-cased,
    ``mode`` and ``degenerate`` become their enums). ``None`` means "the bundle's / the
    backend's choice" where the field says so.
    """

    #: Normalization: in (per tile), tin (thumbnail), kin (kernelized), dn (dense).
    mode: Mode = Mode.DN
    #: ``streaming`` computes statistics a row ahead of inference; ``two-pass`` all first.
    schedule: str = "streaming"
    #: A backend name; ``auto`` picks trt > torch-cuda > ort-cuda > ort.
    backend: str = "auto"
    #: Tile edge in pixels (None: the bundle's).
    tile: int | None = None
    #: Context around each tile (None: the bundle's).
    margin: int | None = None
    #: ``image``: the margin is the neighbouring pixels; ``tile``: the reference's reflection.
    margin_source: str = "image"
    #: Tiles per backend call (None: the backend's preference).
    batch: int | None = None
    kin_kernel: int = 5
    kin_kernel_type: str = "constant"
    #: Lower bound of every KIN/DN std.
    std_floor: float = STD_FLOOR_DEFAULT
    #: DN's rule for near-degenerate statistics and the std ratio below which it acts.
    degenerate: DegenerateRule = DEGENERATE_DEFAULT
    degenerate_ratio: float = DEGENERATE_RATIO_DEFAULT
    #: Streaming KIN/DN: statistics beside inference (None: the backend decides).
    overlap: bool | None = None
    #: CPU threads for the model (None: the backend's rule).
    threads: int | None = None
    #: Activation precision on backends that offer a choice; statistics stay fp32.
    precision: str = "fp32"
    #: CUDA device index.
    device: int = 0
    # -- background skipping (docs/semantics.md section 11)
    #: ``skip``: no network on tiles without tissue; ``translate``: every tile; ``auto``: skip on
    #: slides (``dnrt.runtime.tissue.looks_like_a_slide``).
    background: str = "auto"
    #: A tile is background when at most this fraction of its window (tile + margin) is tissue.
    tissue_threshold: float = TISSUE_THRESHOLD_DEFAULT
    # -- output files (translate_file / translate; ignored for in-memory images)
    #: TIFF compression ``NAME`` or ``NAME:LEVEL`` (checked against the codec by the writer).
    compression: str = "zlib"
    #: Reduced-resolution levels in the output (None: for slide-sized outputs only, a side
    #: over 4 writer tiles; see ``dnrt.runtime.io.writer.wants_pyramid``).
    pyramid: bool | None = None
    #: ``tiff`` or ``ome-tiff`` (None: by the output's name, ``.ome.tif`` is OME-TIFF).
    output_format: str | None = None
    #: Replace an existing output.
    overwrite: bool = False
    #: Edge of the output TIFF's own tiles.
    writer_tile: int = 512
    #: Run even when the pre-flight estimates that memory or disk space will not suffice.
    force: bool = False
    # -- slide reading (files only): which reader, which pyramid level, which resolution
    #: ``auto`` (by content), ``tifffile`` or ``openslide``.
    reader: str = "auto"
    #: Read this pyramid level (None: level 0, or the one ``mpp`` picks).
    level: int | None = None
    #: Microns per pixel to translate at (None: the bundle's training resolution, if recorded).
    mpp: float | None = None
    #: The slide's level-0 microns per pixel when its metadata lacks it (or is wrong).
    assume_mpp: float | None = None
    #: Permit an ``mpp`` finer than the slide's best level (upsampling).
    allow_upsample: bool = False
    # -- gray images (issue 14; runtime/io/intensity.py has the rules)
    #: Let a 1-channel model take an RGB image (its BT.601 luma); refused otherwise.
    to_gray: bool = False
    #: 16-bit input: the range ``(LO, HI)`` mapped onto 0..255 (``"LO:HI"`` accepted; None: the
    #: file's declared range, else the full range for RGB; 16-bit gray without one is refused).
    intensity_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "mode", Mode(_choice("mode", self.mode, MODES)))
        set_(self, "schedule", _choice("schedule", self.schedule, SCHEDULES))
        set_(self, "backend", _choice("backend", self.backend, BACKENDS))
        # Upper bounds of tile and margin depend on the model and the image: runtime/budget.py.
        set_(self, "tile", _optional_integer("tile", self.tile, 1))
        set_(self, "margin", _optional_integer("margin", self.margin, 0))
        set_(self, "margin_source", _choice("margin source", self.margin_source, MARGIN_SOURCES))
        set_(self, "batch", _optional_integer("batch", self.batch, 1, 4096))
        kernel = _integer("KIN kernel size", self.kin_kernel, 1)  # its cap: runtime/budget.py
        if kernel % 2 == 0:
            raise _usage(f"KIN kernel size must be a positive odd number, got {kernel}")
        set_(self, "kin_kernel", kernel)
        set_(self, "kin_kernel_type", _choice("KIN kernel type", self.kin_kernel_type, KIN_KERNEL_TYPES))
        floor = _number("std floor", self.std_floor)
        if floor <= 0:
            raise _usage(f"std floor must be positive, got {floor}")
        set_(self, "std_floor", floor)
        rule = _choice("degenerate-statistics rule", self.degenerate, DEGENERATE_RULES)
        ratio = _number("degenerate ratio", self.degenerate_ratio)
        try:
            set_(self, "degenerate", check_degenerate(rule, ratio))
        except DnrtError as exc:
            raise _usage(str(exc)) from None
        set_(self, "degenerate_ratio", ratio)
        set_(self, "overlap", _flag("overlap", self.overlap, optional=True))
        set_(self, "threads", _optional_integer("threads", self.threads, 1))  # cap: runtime/budget.py
        set_(self, "precision", _choice("precision", self.precision, PRECISIONS))
        set_(self, "device", _integer("device index", self.device, 0, 1023))
        # -- background skipping
        set_(self, "background", _choice("background handling", self.background, BACKGROUND_CHOICES))
        threshold = _number("tissue threshold", self.tissue_threshold)
        if not 0.0 <= threshold < 1.0:
            raise _usage(f"tissue threshold must be at least 0 and below 1, got {threshold}")
        set_(self, "tissue_threshold", threshold)
        if not isinstance(self.compression, str):
            raise _usage(f"compression must be a name such as zlib or jpeg:90, got {self.compression!r}")
        from dnrt.runtime.io.writer import Compression  # numpy and the codec table: only when used

        Compression(self.compression, check_available=False)  # name and level range
        set_(self, "pyramid", _flag("pyramid", self.pyramid, optional=True))
        if self.output_format is not None:
            set_(self, "output_format", _choice("output format", self.output_format, OUTPUT_FORMATS))
        set_(self, "overwrite", _flag("overwrite", self.overwrite))
        edge = _integer("writer tile", self.writer_tile, *WRITER_TILE_RANGE)
        if edge % 16:
            raise _usage(f"writer tile must be a multiple of 16 (a TIFF rule), got {edge}")
        set_(self, "writer_tile", edge)
        set_(self, "force", _flag("force", self.force))
        set_(self, "reader", _choice("reader", self.reader, READERS))
        set_(self, "level", _optional_integer("level", self.level, 0, 64))
        for name in ("mpp", "assume_mpp"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _number(name.replace("_", " "), value))
        set_(self, "allow_upsample", _flag("allow upsample", self.allow_upsample))
        set_(self, "to_gray", _flag("to gray", self.to_gray))
        if self.intensity_range is not None:
            from dnrt.runtime.io.intensity import parse_intensity_range

            value = self.intensity_range
            if isinstance(value, list | tuple) and len(value) == 2:
                value = f"{value[0]}:{value[1]}"  # the JSON form is a list
            set_(self, "intensity_range", parse_intensity_range(value))
        self.resolution_request()  # the range checks of the resolution options

    # -- derived views ---------------------------------------------------------------------
    def resolution_request(self) -> Any:
        """The slide-reading request (``dnrt.runtime.io.resolution.ResolutionRequest``)."""
        from dnrt.runtime.io.resolution import ResolutionRequest

        return ResolutionRequest(
            level=self.level, mpp=self.mpp, assume_mpp=self.assume_mpp, allow_upsample=self.allow_upsample
        )

    def backend_options(self) -> dict[str, Any]:
        """The keywords a backend takes beyond its defaults (only what differs, so backends
        without a precision choice never see one). The device index travels with the job's
        BackendContext, which every backend receives."""
        options: dict[str, Any] = {}
        if self.precision != "fp32":
            options["precision"] = self.precision
        return options

    def replace(self, **changes: Any) -> TranslateOptions:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    # -- JSON form ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, Mode | DegenerateRule) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> TranslateOptions:
        """Options from their JSON form; an unknown key is an error (a typo must not pass)."""
        if not isinstance(data, dict):
            raise _usage(f"translation options must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _usage(f"unknown translation option(s): {', '.join(map(str, unknown))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TranslateOptions:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise _usage(f"translation options are not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


#: The fields that concern one file (its output and how it is read), which may change per file
#: on a Translator already loaded; the others fix the model's run.
FILE_FIELDS = (
    "compression",
    "pyramid",
    "output_format",
    "overwrite",
    "writer_tile",
    "force",
    "reader",
    "level",
    "mpp",
    "assume_mpp",
    "allow_upsample",
    "to_gray",
    "intensity_range",
)
