"""Write a model bundle directory atomically, and validate it against PyTorch."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import dnrt
from dnrt.atomic import apply_umask, commit_dir, new_temp, remove_stale_temps
from dnrt.bundle import COLLECT_GRAPH, DENSE_GRAPH, MANIFEST, STATS_GRAPH, WEIGHTS, Manifest
from dnrt.errors import DnrtError
from dnrt.export.onnx_export import export_dense_graph, export_stats_graph, statistics_only
from dnrt.models.normswap import DnrtModel
from dnrt.ops import MIN_OPSET
from dnrt.semantics import check_map_sizes, collect_flavour

#: Largest |ORT - PyTorch| an fp32 export may show (issue 2).
VALIDATION_TOLERANCE = 1e-4


@dataclass
class ValidationResult:
    """Max abs differences between ONNX Runtime and PyTorch, per graph."""

    stats_image: float
    stats_moments: float
    dense_image: float
    tile_size: int

    @property
    def worst(self) -> float:
        return max(self.stats_image, self.stats_moments, self.dense_image)

    def passed(self, tolerance: float = VALIDATION_TOLERANCE) -> bool:
        return bool(self.worst <= tolerance)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse before any work: an existing bundle without overwrite, or an unwritable folder."""
    if out.exists() and not overwrite:
        raise DnrtError(f"{out} exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise DnrtError(f"{out} exists and is not a bundle directory; remove it first")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise DnrtError(f"cannot write {out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DnrtError(f"cannot write {out}: folder {parent} is not writable")


def write_bundle(
    model: DnrtModel,
    out: Path,
    *,
    manifest: Manifest,
    state_dict: dict[str, torch.Tensor],
    validate: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Manifest, ValidationResult | None]:
    """Export both graphs, the weights and the manifest into ``out`` (a directory).

    Everything is written into a temporary sibling directory first and renamed
    into place only when complete, so a failure leaves nothing at ``out``.
    """
    out = Path(out)
    check_output_dir(out, overwrite)
    if manifest.opset < MIN_OPSET:
        raise DnrtError(
            f"--opset {manifest.opset} is too old: DenseNorm's function body needs opset {MIN_OPSET}+"
        )
    check_map_sizes(manifest.tile, manifest.margin, manifest.strides, manifest.network_multiple)
    multiple = manifest.input_multiple
    if manifest.tile % multiple:
        # The bundle's geometry must serve every mode: TIN and DN's default 'slide' rule run the
        # network on a tile x tile thumbnail, without a margin.
        suggestion = -(-manifest.tile // multiple) * multiple
        raise DnrtError(
            f"--tile {manifest.tile} is not a multiple of {multiple}: TIN and DN (dnrt's default) run this "
            f"model on a {manifest.tile} x {manifest.tile} thumbnail, which it cannot take; use e.g. "
            f"--tile {suggestion}",
            exit_code=2,
        )
    manifest.dnrt_version = dnrt.__version__

    remove_stale_temps(out)  # left by an export that was killed (SIGKILL, power cut)
    # 0o777 less the umask, like any new folder: mkdtemp's 0o700 would survive the rename.
    with new_temp(out, folder=True) as tmp:
        log(f"exporting stats graph ({len(model.layers)} norm layers, {model.total_channels} channels)")
        stats = export_stats_graph(model, manifest.in_channels, manifest.opset)
        onnx.save(stats, str(tmp / STATS_GRAPH))
        onnx.save(statistics_only(stats), str(tmp / COLLECT_GRAPH))
        log("exporting DN graph")
        dense = export_dense_graph(model, manifest.in_channels, manifest.opset)
        onnx.save(dense, str(tmp / DENSE_GRAPH))
        _save_weights(state_dict, tmp / WEIGHTS, manifest)
        (tmp / MANIFEST).write_text(manifest.to_json())

        result = None
        if validate:
            result = validate_bundle(model, tmp, manifest)
            log(
                f"validation (ONNX Runtime vs PyTorch, {result.tile_size} px tiles): "
                f"stats image {result.stats_image:.2e}, moments {result.stats_moments:.2e}, "
                f"DN image {result.dense_image:.2e} (tolerance {VALIDATION_TOLERANCE:g})"
            )
            if not result.passed():
                raise DnrtError(
                    f"export validation failed: ONNX Runtime differs from PyTorch by {result.worst:.3g} "
                    f"(> {VALIDATION_TOLERANCE:g}); nothing was written"
                )
        for path in tmp.iterdir():
            apply_umask(path)  # safetensors writes 0o600
        commit_dir(tmp, out)  # an existing bundle is moved aside first
    return manifest, result


def _save_weights(state_dict: dict[str, torch.Tensor], path: Path, manifest: Manifest) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {"architecture": manifest.architecture, "dnrt_version": manifest.dnrt_version}
    save_file(tensors, str(path), metadata=meta)


def _validation_size(manifest: Manifest) -> int:
    """A tile size that keeps validation quick on a CPU yet exercises every layer.

    The graphs have dynamic height/width, so a smaller tile is a faithful check.
    """
    multiple = manifest.input_multiple
    full = manifest.tile + 2 * manifest.margin
    size = min(full, 160)
    return max(multiple, size // multiple * multiple)


def validate_bundle(model: DnrtModel, folder: Path, manifest: Manifest, seed: int = 0) -> ValidationResult:
    """Run both graphs in ONNX Runtime on random tiles and compare with the PyTorch model."""
    import onnxruntime as ort

    size = _validation_size(manifest)
    rng = np.random.default_rng(seed)
    tiles = rng.uniform(-1, 1, size=(2, manifest.in_channels, size, size)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    stats = ort.InferenceSession(str(folder / STATS_GRAPH), options, providers=["CPUExecutionProvider"])
    collect = ort.InferenceSession(str(folder / COLLECT_GRAPH), options, providers=["CPUExecutionProvider"])
    dense = ort.InferenceSession(str(folder / DENSE_GRAPH), options, providers=["CPUExecutionProvider"])

    image_diff = moment_diff = 0.0
    torch_stats = None
    for mode in ("in", "tin", "dn"):
        params = collect_flavour(mode).as_array()
        o_image, o_mean, o_std = stats.run(None, {"tiles": tiles, "collect_params": params})
        c_mean, c_std = collect.run(None, {"tiles": tiles, "collect_params": params})
        with torch.no_grad():
            t_image, t_mean, t_std = model.collect(torch.from_numpy(tiles), torch.from_numpy(params))
        image_diff = max(image_diff, float(np.abs(o_image - t_image.numpy()).max()))
        if model.layers:
            moment_diff = max(
                moment_diff,
                *(float(np.abs(a - t.numpy()).max()) for a, t in ((o_mean, t_mean), (c_mean, t_mean))),
                *(float(np.abs(a - t.numpy()).max()) for a, t in ((o_std, t_std), (c_std, t_std))),
            )
        if mode == "dn":
            torch_stats = (t_mean.numpy(), t_std.numpy())

    # Realistic neighbourhoods: the tiles' own statistics, jittered per entry.
    assert torch_stats is not None
    channels = model.total_channels
    mean = np.repeat(np.repeat(torch_stats[0][:, :, None, None], 3, 2), 3, 3)
    std = np.repeat(np.repeat(torch_stats[1][:, :, None, None], 3, 2), 3, 3)
    scale = float(np.abs(mean).mean()) if mean.size else 0.0  # a model without norm layers has none
    mean = (mean + rng.normal(0, 0.05, size=(2, channels, 3, 3)) * scale).astype(np.float32)
    std = (std * rng.uniform(0.8, 1.25, size=(2, channels, 3, 3))).astype(np.float32)
    (o_dense,) = dense.run(None, {"tiles": tiles, "nbr_mean": mean, "nbr_std": std})
    with torch.no_grad():
        t_dense = model.apply(torch.from_numpy(tiles), torch.from_numpy(mean), torch.from_numpy(std))
    dense_diff = float(np.abs(o_dense - t_dense.numpy()).max())
    return ValidationResult(image_diff, moment_diff, dense_diff, size)
