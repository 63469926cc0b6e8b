"""Export entry points: a checkpoint file or a live nn.Module in, a model bundle out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dnrt.bundle import Manifest, check_batchnorm_mode, check_export_mpp
from dnrt.export.bundle_writer import ValidationResult, check_output_dir, write_bundle
from dnrt.models.normswap import DnrtModel, convert, infer_in_channels
from dnrt.ops import DEFAULT_OPSET
from dnrt.semantics import default_geometry


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    validation: ValidationResult | None


def export_module(
    module: nn.Module,
    out: str | Path,
    *,
    architecture: str = "custom",
    config: dict | None = None,
    in_channels: int | None = None,
    tile: int | None = None,
    margin: int | None = None,
    opset: int = DEFAULT_OPSET,
    source: dict | None = None,
    notes: list[str] | None = None,
    validate: bool = True,
    overwrite: bool = False,
    batchnorm: str = "instance",
    log: Callable[[str], None] = print,
    mpp: float | None = None,
) -> ExportResult:
    """Convert ``module`` (any generator with InstanceNorm2d layers) and write a bundle.

    BatchNorm2d layers run per sample with ``batchnorm="instance"`` and with their running
    statistics with ``"eval"`` (:func:`dnrt.export.convert`). The module's own weights are
    saved; the PyTorch backend can rebuild it only for zoo architectures (``config`` given),
    other bundles run on ONNX Runtime/TensorRT. ``mpp``: the training images' microns per
    pixel, recorded in the manifest (trt-translate's default resolution). ``tile``/``margin``
    left None get the defaults (512, 16) raised to what the network accepts
    (``dnrt.semantics.default_geometry``).
    """
    check_batchnorm_mode(batchnorm)
    check_export_mpp(mpp)
    out = Path(out)
    check_output_dir(out, overwrite)
    state_dict = {k: v.clone() for k, v in module.state_dict().items()}
    in_ch = in_channels or infer_in_channels(module)
    model: DnrtModel = convert(module, in_ch, batchnorm=batchnorm)
    tile, margin = default_geometry(model.input_multiple, tile, margin)
    recorded = model.batchnorm
    if recorded is None and (config or {}).get("bn_folded") is True:
        recorded = "eval"  # the zoo folded the batch norms before the swap
    manifest = Manifest(
        architecture=architecture,
        config=dict(config or {}),
        in_channels=in_ch,
        out_channels=_out_channels_collect(model, in_ch, model.input_multiple),
        layers=model.layers,
        tile=tile,
        margin=margin,
        opset=opset,
        source=dict(source or {}),
        notes=list(notes or []),
        batchnorm=recorded,
        mpp=None if mpp is None else float(mpp),
        network_multiple=model.network_multiple,
    )
    manifest, validation = write_bundle(
        model, out, manifest=manifest, state_dict=state_dict, validate=validate, overwrite=overwrite, log=log
    )
    return ExportResult(out, manifest, validation)


def _out_channels_collect(model: DnrtModel, in_channels: int, multiple: int) -> int:
    params = torch.tensor([0.0, 1e-5, 0.0])
    size = max(64, multiple)
    with torch.no_grad():
        image, _, _ = model.collect(torch.zeros(1, in_channels, size, size), params)
    return int(image.shape[1])


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    arch: str | None = None,
    key: str | None = None,
    tile: int | None = None,
    margin: int | None = None,
    opset: int = DEFAULT_OPSET,
    validate: bool = True,
    overwrite: bool = False,
    batchnorm: str = "instance",
    log: Callable[[str], None] = print,
    mpp: float | None = None,
) -> ExportResult:
    """Load a trained generator checkpoint (safely), swap its norms, write a bundle.

    ``batchnorm``: ``"instance"`` (per-sample statistics, as pix2pix/CycleGAN's test.py
    without --eval) or ``"eval"`` (running statistics, folded) for batch-norm generators.
    """
    from dnrt.export.checkpoint import load_generator

    check_batchnorm_mode(batchnorm)
    check_export_mpp(mpp)
    check_output_dir(Path(out), overwrite)
    module, name, config, info = load_generator(checkpoint, arch=arch, key=key, batchnorm=batchnorm)
    log(f"loaded {Path(checkpoint).name}: architecture {name} {config}")
    for note in info.notes:
        log(f"note: {note}")
    source = {
        "path": str(Path(checkpoint).name),
        "sha256": info.sha256,
        "format": info.format,
        "key": info.key,
    }
    return export_module(
        module,
        out,
        architecture=name,
        config=config,
        in_channels=int(config.get("in_channels", 0)) or None,
        tile=tile,
        margin=margin,
        opset=opset,
        source=source,
        notes=info.notes,
        validate=validate,
        overwrite=overwrite,
        batchnorm=batchnorm,
        log=log,
        mpp=mpp,
    )
