"""Command-line entry points: ``dnrt`` (a group) and ``export-model``.

Every command reports errors as one ``error: ...`` line and a non-zero exit, never a traceback
unless DNRT_DEBUG=1 (:mod:`dnrt.errorline`). Ctrl-C, SIGTERM and SIGHUP remove what was being
written and exit 130, 143 and 129 respectively.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dnrt import __version__
from dnrt.bundle import check_batchnorm_mode, check_export_mpp
from dnrt.errorline import OneLineCommand, OneLineGroup
from dnrt.errors import DnrtError
from dnrt.runtime.options import BACKEND_PRECISIONS

# One rule for reporting errors everywhere (dnrt.errorline); the old names stay for the decorators.
DnrtCommand = OneLineCommand
DnrtGroup = OneLineGroup


# --------------------------------------------------------------------------- export


def _export_options(func: Callable[..., Any]) -> Callable[..., Any]:
    decorators = [
        click.argument("checkpoint", type=click.Path(path_type=Path)),
        click.option(
            "-o",
            "--output",
            "output",
            required=True,
            type=click.Path(path_type=Path),
            help="Bundle directory to write (what trt-translate --model takes).",
        ),
        click.option(
            "--arch",
            default=None,
            help="Architecture (official, cyclegan, cut, reggan, unet); detected from the keys if omitted.",
        ),
        click.option(
            "--key", default=None, help="Entry of a wrapped checkpoint holding the generator (e.g. G_A)."
        ),
        click.option(
            "--tile",
            default=None,
            type=click.IntRange(min=8),
            help="Tile size T [default: 512, raised to a multiple of what the network needs, e.g. a U-Net's 2^depth].",
        ),
        click.option(
            "--margin",
            default=None,
            type=click.IntRange(min=0),
            help="Margin M [default: 16, raised until T + 2M suits the network].",
        ),
        click.option(
            "--opset", default=19, show_default=True, type=click.IntRange(min=1), help="ONNX opset (>= 19)."
        ),
        click.option(
            "--batchnorm",
            default="instance",
            show_default=True,
            metavar="instance|eval",
            # A plain string checked by the exporter, so a bad value is one error line (exit 2).
            help="Batch-norm generators: 'instance' normalizes each tile with its own statistics "
            "(BN's affine and eps), as pix2pix/CycleGAN's test.py without --eval, so IN/TIN/KIN/DN "
            "apply; 'eval' folds BN's running statistics into the convolutions.",
        ),
        # The model's resolution (issue 17): recorded in the manifest, trt-translate's default --mpp.
        click.option(
            "--mpp",
            type=float,
            default=None,
            help="Microns per pixel of the training images (e.g. 0.5 for 20x); trt-translate then "
            "resamples slides to it by default.",
        ),
        click.option("--no-validate", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check."),
        click.option("--overwrite", is_flag=True, help="Replace an existing bundle."),
        click.option("--quiet", is_flag=True, help="Print nothing but errors."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _run_export(
    checkpoint: Path,
    output: Path,
    arch: str | None,
    key: str | None,
    tile: int | None,
    margin: int | None,
    opset: int,
    batchnorm: str,
    mpp: float | None,
    no_validate: bool,
    overwrite: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    check_batchnorm_mode(batchnorm)  # before the checkpoint is read
    check_export_mpp(mpp)
    if not checkpoint.exists():
        raise DnrtError(f"checkpoint not found: {checkpoint}")
    try:
        from dnrt.export import export_checkpoint
    except ImportError as exc:
        raise DnrtError(
            f"export needs PyTorch and onnx: pip install 'dnrt[export]' ({exc.name} is missing)"
        ) from None

    def log(message: str) -> None:
        if not quiet and not as_json:
            click.echo(message, err=True)

    result = export_checkpoint(
        checkpoint,
        output,
        arch=arch,
        key=key,
        tile=tile,
        margin=margin,
        opset=opset,
        validate=not no_validate,
        overwrite=overwrite,
        batchnorm=batchnorm,
        mpp=mpp,
        log=log,
    )
    m = result.manifest
    if as_json:
        summary = {
            "bundle": str(result.path),
            "architecture": m.architecture,
            "config": m.config,
            "batchnorm": m.batchnorm,
            "mpp": m.mpp,
            "dense_norm_nodes": len(m.layers),
            "channels": m.total_channels,
            "tile": m.tile,
            "margin": m.margin,
            "validation": None
            if result.validation is None
            else {
                "stats_image": result.validation.stats_image,
                "stats_moments": result.validation.stats_moments,
                "dense_image": result.validation.dense_image,
                "tile_size": result.validation.tile_size,
            },
        }
        click.echo(json.dumps(summary, indent=2))
    elif not quiet:
        click.echo(
            f"wrote {result.path}: {m.architecture}, {len(m.layers)} DenseNorm layers, "
            f"tile {m.tile} + margin {m.margin}"
        )


@click.command("export-model", cls=DnrtCommand)
@_export_options
def export_model_command(**kwargs: Any) -> None:
    """Export a trained generator CHECKPOINT to a dnrt model bundle."""
    _run_export(**kwargs)


# --------------------------------------------------------------------------- the group


@click.group(cls=DnrtGroup)
@click.version_option(__version__, prog_name="dnrt")
def main() -> None:
    """dnrt: Dense Normalization runtime for ultra-high-resolution image translation."""


@main.command("export", cls=DnrtCommand)
@_export_options
def export_command(**kwargs: Any) -> None:
    """Export a trained generator CHECKPOINT to a dnrt model bundle (same as export-model)."""
    _run_export(**kwargs)


BATCHNORM_TEXT = {
    "instance": "per-sample statistics with BN's affine and eps, as test.py without --eval",
    "eval": "running statistics folded into the convolutions; every mode gives the same output",
}


def _size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


@main.command("info", cls=DnrtCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info_command(model: Path, as_json: bool) -> None:
    """Describe a model bundle: architecture, layers, tile geometry, provenance."""
    from dnrt.bundle import load_bundle
    from dnrt.semantics import check_map_sizes

    bundle = load_bundle(model)
    m = bundle.manifest
    if as_json:
        click.echo(m.to_json(), nl=False)
        return
    sizes = check_map_sizes(m.tile, m.margin, m.strides, m.network_multiple) if m.layers else []
    click.echo(f"bundle        {bundle.path}")
    click.echo(f"architecture  {m.architecture} {json.dumps(m.config)}")
    click.echo(f"channels      {m.in_channels} in, {m.out_channels} out")
    multiple = f", a multiple of {m.input_multiple}" if m.network_multiple > 1 else ""
    click.echo(
        f"tile          {m.tile} + margin {m.margin} (network input {m.tile + 2 * m.margin} px{multiple})"
    )
    click.echo(f"norm layers   {len(m.layers)} ({m.total_channels} channels of statistics)")
    if m.batchnorm is not None:
        click.echo(f"batch norm    {m.batchnorm} ({BATCHNORM_TEXT[m.batchnorm]})")
    if m.mpp is not None:
        click.echo(f"resolution    {m.mpp:g} um/px (trained at; trt-translate's default --mpp)")
    for layer, size in zip(m.layers, sizes, strict=False):
        fused = " +relu" if layer.activation == "relu" else ""
        affine = " affine" if layer.affine else ""
        click.echo(f"  {layer.name:<40} {layer.channels:>5} ch  map {size:>4} px{affine}{fused}")
    if m.source:
        click.echo(f"source        {m.source.get('path')} sha256 {m.source.get('sha256')}")
    for note in m.notes:
        click.echo(f"note          {note}")
    graphs = [g for g in (bundle.stats_graph, bundle.collect_graph, bundle.dense_graph) if g is not None]
    listing = ", ".join(f"{g.name} {_size_text(g.stat().st_size)}" for g in graphs if g.is_file())
    click.echo(f"graphs        {listing}")
    if bundle.collect_graph is None:
        click.echo("note          no collect.onnx (an older export): KIN/DN's first pass runs stats.onnx")
    click.echo(f"dnrt          {m.dnrt_version} (bundle format {m.format_version}, opset {m.opset})")


@main.command("build-plugins", cls=DnrtCommand)
@click.option(
    "--build-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="CMake build folder [default: build/plugins in the source tree].",
)
@click.option(
    "--tensorrt-include",
    type=click.Path(path_type=Path),
    default=None,
    help="TensorRT's include folder (holding NvInfer.h): also build libdnrt_trt_plugin.so.",
)
@click.option("--tensorrt-lib", type=click.Path(path_type=Path), default=None, help="TensorRT's lib folder.")
@click.option(
    "--cuda-arch", default=None, help="CMAKE_CUDA_ARCHITECTURES, e.g. 90 or native [default: 75..90+PTX]."
)
@click.option("--cpu-only", is_flag=True, help="Build only the CPU twin of the kernels (no nvcc needed).")
@click.option("--quiet", is_flag=True, help="Hide the compiler output.")
def build_plugins_command(
    build_dir: Path | None,
    tensorrt_include: Path | None,
    tensorrt_lib: Path | None,
    cuda_arch: str | None,
    cpu_only: bool,
    quiet: bool,
) -> None:
    """Build the CUDA kernels library and, with TensorRT headers, the TensorRT plugin."""
    from dnrt.kernels import build_plugins

    built = build_plugins(
        build_dir,
        tensorrt_include=tensorrt_include,
        tensorrt_lib=tensorrt_lib,
        quiet=quiet,
        cuda_architectures=cuda_arch,
        cuda=not cpu_only,
    )
    for name, path in built.items():
        click.echo(f"built {name}: {path}")
    if built and build_dir is not None:
        click.echo(f"set DNRT_PLUGIN_DIR={build_dir} so dnrt finds them", err=True)


@main.command("build-engine", cls=DnrtCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(BACKEND_PRECISIONS["trt"]), default="fp32", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="Largest tile batch.")
@click.option("--tile", type=click.IntRange(min=8), default=None, help="Tile size [default: the bundle's].")
@click.option("--margin", type=click.IntRange(min=0), default=None, help="Margin [default: the bundle's].")
def build_engine_command(
    model: Path, precision: str, batch: int, tile: int | None, margin: int | None
) -> None:
    """Build (and cache) the TensorRT engines of a bundle ahead of time."""
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends import get_backend
    from dnrt.runtime.backends.trt import cache_dir
    from dnrt.semantics import check_map_sizes

    bundle = load_bundle(model)
    manifest = bundle.manifest
    # The geometry trt-translate would refuse is refused here too, before any engine is built.
    check_map_sizes(
        manifest.tile if tile is None else tile,
        manifest.margin if margin is None else margin,
        manifest.strides,
        manifest.input_multiple,
    )
    backend = get_backend("trt", bundle, precision=precision, batch=batch, tile=tile, margin=margin)
    with backend:
        click.echo(f"engines ready in {cache_dir()} ({backend.describe()})")


@main.command("trt-onnx", cls=DnrtCommand)
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Where to write the TensorRT-ready DN graph (.onnx).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def trt_onnx_command(model: Path, output: Path, overwrite: bool) -> None:
    """Write the bundle's DN graph for trtexec: DenseNorm bound to the plugin, not its body.

    trtexec --onnx=OUT --dynamicPlugins=libdnrt_trt_plugin.so
    """
    from dnrt.atomic import commit, new_temp, remove_stale_temps
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.trt import prepare_onnx_for_tensorrt

    bundle = load_bundle(model)
    if output.exists() and not overwrite:
        raise DnrtError(f"{output} exists; pass --overwrite to replace it")
    graph = bundle.dense_graph
    data = prepare_onnx_for_tensorrt(graph.read_bytes(), bundle.path, str(graph))
    remove_stale_temps(output)
    with new_temp(output) as tmp:
        try:
            tmp.write_bytes(data)
            commit(tmp, output, overwrite)
        except OSError as exc:
            raise DnrtError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"wrote {output}: DenseNorm nodes tagged plugin_namespace=dnrt, function body removed")


def _register_runtime_commands() -> None:
    """Commands that live with the runtime. Their modules are light (click, numpy); a broken one
    fails here, loudly, rather than silently taking its command away."""
    from dnrt.bench.cli import bench_command
    from dnrt.runtime.cli import translate_command

    main.add_command(translate_command, "translate")
    # dnrt batch (issue 18): many slides, resumable, locally or on Ray; reuses translate's options.
    from dnrt.batch.cli import batch_command

    main.add_command(batch_command, "batch")
    main.add_command(bench_command, "bench")


_register_runtime_commands()


def export_model_main() -> None:
    export_model_command()


def trt_translate_main() -> None:
    from dnrt.runtime.cli import translate_command

    translate_command()


if __name__ == "__main__":  # python -m dnrt.cli
    main()
