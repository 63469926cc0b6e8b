"""The model bundle: what ``export-model -o`` writes and every runtime backend loads.

A bundle is a directory::

    manifest.json        this module's Manifest, as JSON
    stats.onnx           tiles + collect_params -> image, mean, std      (collect pass)
    collect.onnx         tiles + collect_params -> mean, std             (optional, see below)
    dense.onnx           tiles + nbr_mean + nbr_std -> image             (DenseNorm pass)
    weights.safetensors  the generator's weights, for the PyTorch backend

Graph I/O (all float32; N, H, W dynamic):

- stats.onnx: ``tiles [N, Cin, H, W]``, ``collect_params [3]`` = (ddof, eps, floor)
  -> ``image [N, Cout, H, W]``, ``tile_mean [N, L]``, ``tile_std [N, L]``
- dense.onnx: ``tiles [N, Cin, H, W]``, ``nbr_mean [N, L, 3, 3]``, ``nbr_std [N, L, 3, 3]``
  -> ``image [N, Cout, H, W]``

collect.onnx is stats.onnx without the image output and the nodes only the image needs (the
layers after the last norm layer's statistics): KIN's and DN's first pass and TIN's thumbnail
keep only the statistics, and on the official generator the final 7x7 convolution alone is 5 %
of a collect. Bundles from an older export lack it; backends then run stats.onnx.

``L`` is the sum of every norm layer's channels: layer k owns the slice
``[offset_k, offset_k + channels_k)`` of the packed statistics.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from dnrt.errors import DnrtError
from dnrt.manifest_schema import MAX_MANIFEST_BYTES, ManifestSyntaxError, manifest_problems, parse_manifest
from dnrt.ops import DEFAULT_OPSET
from dnrt.semantics import DN_EPS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS_GRAPH = "stats.onnx"
COLLECT_GRAPH = "collect.onnx"
DENSE_GRAPH = "dense.onnx"
WEIGHTS = "weights.safetensors"

#: How a generator's BatchNorm2d layers run (``export-model --batchnorm``): ``instance`` --
#: per-sample statistics with BN's affine and eps, as pix2pix/CycleGAN's test.py runs them
#: without --eval (IN/TIN/KIN/DN apply); ``eval`` -- running statistics folded into the
#: convolutions (every mode gives the same output).
BATCHNORM_MODES = ("instance", "eval")


def check_batchnorm_mode(batchnorm: str) -> str:
    """``batchnorm`` if it is one of BATCHNORM_MODES, else a DnrtError (exit 2: a usage error)."""
    if batchnorm not in BATCHNORM_MODES:
        raise DnrtError(
            f"--batchnorm must be one of {', '.join(BATCHNORM_MODES)}, got {batchnorm!r}", exit_code=2
        )
    return batchnorm


#: Training resolutions a manifest may record, in microns per pixel (a bound against nonsense:
#: 0.01 is beyond any light microscope, 1e4 is a centimetre per pixel).
MPP_RANGE = (0.01, 1e4)


def check_manifest_mpp(mpp: Any) -> None:
    """The manifest's ``mpp``: null or a finite number in :data:`MPP_RANGE` (a DnrtError otherwise)."""
    if mpp is None:
        return
    ok = isinstance(mpp, int | float) and not isinstance(mpp, bool) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]
    if not ok:
        raise DnrtError(
            f"bundle manifest is malformed: mpp must be null or microns per pixel in "
            f"[{MPP_RANGE[0]:g}, {MPP_RANGE[1]:g}], got {mpp!r}"
        )


def check_export_mpp(mpp: float | None) -> float | None:
    """``export-model --mpp``: None or a value the manifest accepts (a usage error, exit 2)."""
    try:
        check_manifest_mpp(mpp)
    except DnrtError:
        raise DnrtError(
            f"--mpp must be microns per pixel in [{MPP_RANGE[0]:g}, {MPP_RANGE[1]:g}], got {mpp!r}",
            exit_code=2,
        ) from None
    return mpp


@dataclass(frozen=True)
class LayerSpec:
    """One normalization layer of the generator, in forward order."""

    name: str
    channels: int
    #: Downsampling factor of this layer's map relative to the network input.
    stride: int
    #: First channel of this layer in the packed statistics vector.
    offset: int
    affine: bool = False
    #: Activation fused into the DenseNorm op: "relu" when a ReLU follows, else "none".
    activation: str = "none"


@dataclass
class Manifest:
    architecture: str
    #: Constructor arguments that rebuild the generator from the zoo (empty for custom modules).
    config: dict[str, Any]
    in_channels: int
    out_channels: int
    layers: list[LayerSpec]
    tile: int = 512
    margin: int = 16
    #: The opset the graphs import (``export-model --opset``; the exporter refuses below MIN_OPSET).
    opset: int = DEFAULT_OPSET
    dn_eps: float = DN_EPS
    #: Std flavour collected by each mode (docs/semantics.md section 2), for the record.
    std_flavours: dict[str, str] = field(
        default_factory=lambda: {
            "in": "biased, sqrt(var + 1e-5)",
            "tin": "unbiased, sqrt(var_u + 1e-5)",
            "kin": "unbiased, sqrt(var_u), floored",
            "dn": "unbiased, sqrt(var_u), floored; reciprocal 1/(std + dn_eps) interpolated",
        }
    )
    source: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: One of BATCHNORM_MODES for a generator with batch norm, None without any. Bundles
    #: from before the field: "eval" when the config says ``bn_folded`` (all they could be).
    batchnorm: str | None = None
    #: Microns per pixel of the images the model was trained on (``export-model --mpp``), or None.
    #: trt-translate resamples slides to it by default (issue 17).
    mpp: float | None = None
    #: Input sizes the network itself needs beyond even norm maps (a U-Net halves its input
    #: num_downs times: 2**num_downs); 1 when only the norm layers constrain it.
    network_multiple: int = 1
    dnrt_version: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def total_channels(self) -> int:
        return sum(layer.channels for layer in self.layers)

    @property
    def strides(self) -> list[int]:
        return [layer.stride for layer in self.layers]

    @property
    def input_multiple(self) -> int:
        """Network input sizes must be multiples of this (every norm map even, and the network's own)."""
        return math.lcm(2 * max(self.strides, default=1), self.network_multiple)

    def to_json(self) -> str:
        data = asdict(self)
        data["total_channels"] = self.total_channels
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        original, data = data, dict(data)
        data.pop("total_channels", None)
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
            shown = version if isinstance(version, (int, float, str, type(None))) else type(version).__name__
            raise DnrtError(
                f"bundle format version {str(shown)[:40]!r} is not supported (this dnrt reads {FORMAT_VERSION})"
            )
        # Validated bundles (issue 16): every field's type, range and consistency, before use.
        problems = manifest_problems(
            original,
            {f.name for f in fields(cls)} | {"total_channels"},
            {f.name for f in fields(LayerSpec)},
        )
        if len(problems) == 1:
            raise DnrtError(f"bundle manifest is malformed: {problems[0]}")
        if problems:
            lines = "\n".join(f"  {p}" for p in problems)
            raise DnrtError(f"bundle manifest is malformed ({len(problems)} problems):\n{lines}")
        try:
            data["layers"] = [LayerSpec(**layer) for layer in data["layers"]]
            if "batchnorm" not in data:
                config = data.get("config")
                folded = isinstance(config, dict) and config.get("bn_folded") is True
                data["batchnorm"] = "eval" if folded else None
            manifest = cls(**data)
        except (KeyError, TypeError) as exc:
            raise DnrtError(f"bundle manifest is malformed: {exc}") from None
        multiple = manifest.network_multiple
        if type(multiple) is not int or multiple < 1 or multiple & (multiple - 1):
            raise DnrtError(
                f"bundle manifest is malformed: network_multiple must be a power of two, got {multiple!r}"
            )
        if manifest.batchnorm is not None and manifest.batchnorm not in BATCHNORM_MODES:
            raise DnrtError(
                f"bundle manifest is malformed: batchnorm must be null or one of "
                f"{', '.join(BATCHNORM_MODES)}, got {manifest.batchnorm!r}"
            )
        check_manifest_mpp(manifest.mpp)
        folded = isinstance(manifest.config, dict) and manifest.config.get("bn_folded") is True
        if folded and manifest.batchnorm != "eval":
            raise DnrtError(
                "bundle manifest is malformed: the config folds batch norm (bn_folded) "
                f"but batchnorm is {manifest.batchnorm!r}, not 'eval'"
            )
        return manifest


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def stats_graph(self) -> Path:
        return self.path / STATS_GRAPH

    @property
    def collect_graph(self) -> Path | None:
        """The statistics-only graph, or None when the bundle predates it."""
        path = self.path / COLLECT_GRAPH
        return path if path.is_file() else None

    @property
    def dense_graph(self) -> Path:
        return self.path / DENSE_GRAPH

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS


def load_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory and check that it is complete."""
    path = Path(path)
    if not path.exists():
        raise DnrtError(f"model bundle not found: {path}")
    if not path.is_dir():
        raise DnrtError(f"{path} is not a model bundle (expected a directory written by export-model)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise DnrtError(f"{path} is not a model bundle: {MANIFEST} is missing")
    # Validated bundles (issue 16): the size is checked before the file is read.
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise DnrtError(
            f"bundle manifest {manifest_path} is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}"
        )
    try:
        with open(manifest_path, "rb") as fh:
            data = parse_manifest(fh.read(MAX_MANIFEST_BYTES + 1))
    except ManifestSyntaxError as exc:
        raise DnrtError(f"bundle manifest {manifest_path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise DnrtError(f"bundle manifest {manifest_path} is malformed: expected a JSON object")
    manifest = Manifest.from_dict(data)
    for name in (STATS_GRAPH, DENSE_GRAPH):
        if not (path / name).is_file():
            raise DnrtError(f"model bundle {path} is incomplete: {name} is missing")
    return Bundle(path=path, manifest=manifest)


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(model: Any, folder: str | Path, label: str) -> None:
    """Refuse an ONNX model (an ``onnx.ModelProto``) whose external-data locations are absolute
    or lead out of ``folder`` (``..``, or a symlink pointing elsewhere).

    A bundle is a self-contained folder; a graph naming ``/etc/passwd`` or ``../../secret`` as
    the bytes of a weight would read (or, copied into another file, publish) whatever is there.
    """
    root = Path(folder).resolve()
    tensors = list(_tensors(model.graph))
    for function in getattr(model, "functions", []):
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key != "location":
                continue
            location = entry.value
            pure = PurePosixPath(location.replace("\\", "/"))
            unsafe = (
                not location
                or pure.is_absolute()
                or PureWindowsPath(location).drive != ""
                or ".." in pure.parts
                or not (root / location).resolve().is_relative_to(root)
            )
            if unsafe:
                raise DnrtError(
                    f"{label}: external data location {location!r} of tensor {tensor.name!r} is "
                    f"{'absolute' if pure.is_absolute() else 'outside the bundle folder'}; refusing to read it"
                )
