"""``trt-translate`` / ``dnrt translate``: translate an image file through a model bundle.

Every problem the user can cause (missing or unreadable input, wrong pixel
format, broken bundle, existing output, bad option) ends as one line on
stderr, ``error: ...``, and a non-zero exit: 2 for usage errors, 1 for
failures, 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP. The output only appears
once complete (the writer renames a temporary file), so none of these leave a partial file
behind.
Set ``DNRT_DEBUG=1`` to get the traceback of an unexpected error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from dnrt.errorline import ErrorLine, OneLineCommand
from dnrt.errors import DnrtError
from dnrt.runtime.options import (
    BACKENDS,
    DEGENERATE_RULES,
    KIN_KERNEL_TYPES,
    MARGIN_SOURCES,
    MODES,
    OUTPUT_FORMATS,
    PRECISIONS,
    READERS,
    SCHEDULES,
    TranslateOptions,
)
from dnrt.runtime.tissue import BACKGROUND_CHOICES

#: The defaults shown in --help are the options' own.
_DEFAULTS = TranslateOptions()


# The one error-line rule of every dnrt command (dnrt.errorline); CliError is its old name here.
CliError = ErrorLine


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


#: The options every translating command takes (``trt-translate``, ``dnrt batch``): each maps
#: to the TranslateOptions field of the same name (``--device`` to ``device``).
_TRANSLATION_OPTIONS = (
    click.option(
        "--mode",
        type=click.Choice(MODES, case_sensitive=False),
        default=_DEFAULTS.mode.value,
        show_default=True,
        help="Normalization: in (patch-wise), tin (thumbnail), kin (kernelized), dn (dense).",
    ),
    click.option(
        "--schedule",
        type=click.Choice(SCHEDULES, case_sensitive=False),
        default=_DEFAULTS.schedule,
        show_default=True,
        help="streaming computes statistics a row ahead of inference; two-pass does all statistics "
        "first. Both give bit-identical output.",
    ),
    click.option(
        "--backend",
        type=click.Choice(BACKENDS, case_sensitive=False),
        default=_DEFAULTS.backend,
        show_default=True,
        help="auto picks trt > torch-cuda > ort-cuda > ort.",
    ),
    click.option("--tile", type=int, callback=_positive, help="Tile size in pixels [default: the bundle's]."),
    click.option("--margin", type=int, help="Margin around each tile [default: the bundle's]."),
    click.option(
        "--margin-source",
        type=click.Choice(MARGIN_SOURCES, case_sensitive=False),
        default=_DEFAULTS.margin_source,
        show_default=True,
        help="image: the margin is the neighbouring pixels (true context, no convolution seams); "
        "tile: the margin mirrors the tile itself (the DN reference's geometry, for parity).",
    ),
    click.option(
        "--batch",
        type=int,
        callback=_positive,
        help="Tiles per backend call [default: 1 on the CPU, 4 on a GPU].",
    ),
    click.option(
        "--kin-kernel",
        type=int,
        default=_DEFAULTS.kin_kernel,
        show_default=True,
        help="KIN smoothing window (odd, in tiles).",
    ),
    click.option(
        "--kin-kernel-type",
        type=click.Choice(KIN_KERNEL_TYPES, case_sensitive=False),
        default=_DEFAULTS.kin_kernel_type,
        show_default=True,
    ),
    click.option(
        "--std-floor",
        type=float,
        default=_DEFAULTS.std_floor,
        show_default="sqrt(1e-5)",
        help="Lower bound of every KIN/DN std (keeps flat regions finite).",
    ),
    click.option(
        "--degenerate",
        type=click.Choice(DEGENERATE_RULES, case_sensitive=False),
        default=_DEFAULTS.degenerate.value,
        show_default=True,
        help="DN's rule for near-degenerate statistics (flat glass, saturation); "
        "reference: the published arithmetic plus the floor.",
    ),
    click.option(
        "--degenerate-ratio",
        type=click.FloatRange(min=0, max=1, min_open=True),
        default=_DEFAULTS.degenerate_ratio,
        show_default=True,
        help="The std ratio below which the --degenerate rule acts.",
    ),
    click.option(
        "--threads",
        type=int,
        callback=_positive,
        help="CPU threads for the model, at most the cores available [default: all cores; one for a "
        "tiny network on ort].",
    ),
    click.option(
        "--overlap/--no-overlap",
        default=None,
        help="Streaming KIN/DN: run statistics and inference side by side [default: the backend decides].",
    ),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS, case_sensitive=False),
        default=_DEFAULTS.precision,
        show_default=True,
        help="Activation precision: fp16 on GPU backends, bf16 on torch (CPUs with AVX512-BF16/AMX) "
        "and torch-cuda; statistics stay fp32.",
    ),
    click.option(
        "--device", type=int, default=_DEFAULTS.device, show_default=True, help="CUDA device index."
    ),
    click.option(
        "--compression",
        default=_DEFAULTS.compression,
        show_default=True,
        help="Output TIFF compression: zlib, none, lzw, zstd, jpeg, webp (NAME:LEVEL allowed).",
    ),
    # Slide outputs (issue 17): the default pyramid and the output format.
    click.option(
        "--pyramid/--no-pyramid",
        default=None,
        help="Reduced-resolution levels for viewers (OpenSlide, QuPath, libvips) "
        "[default: for slide-sized outputs, a side over 4 writer tiles].",
    ),
    click.option(
        "--format",
        "output_format",
        type=click.Choice(OUTPUT_FORMATS, case_sensitive=False),
        help="TIFF output layout: tiff (levels in the main IFD chain, Aperio-style metadata) or "
        "ome-tiff (OME-XML, levels as SubIFDs) [default: by the name, .ome.tif is ome-tiff].",
    ),
    click.option(
        "--writer-tile",
        type=int,
        default=_DEFAULTS.writer_tile,
        show_default=True,
        help="Edge of the output TIFF's own tiles (a multiple of 16).",
    ),
    # -- background skipping (docs/semantics.md section 11)
    click.option(
        "--background",
        type=click.Choice(BACKGROUND_CHOICES, case_sensitive=False),
        default=_DEFAULTS.background,
        show_default=True,
        help="skip: no network on tiles without tissue, filled with the model's translation of glass; "
        "translate: every tile; auto: skip on slides (microscope resolution metadata, over 4 tiles long).",
    ),
    click.option(
        "--tissue-threshold",
        type=float,
        default=_DEFAULTS.tissue_threshold,
        show_default=True,
        help="A tile is background when at most this fraction of it (and its margin) is tissue.",
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing output."),
    # resource bounds (issue 16): the pre-flight's refusal can be overridden
    click.option(
        "--force",
        is_flag=True,
        help="Run even when the pre-flight estimates that memory or disk space will not suffice.",
    ),
    # Gray images (issue 14): RGB into a 1-channel model, 16-bit intensity ranges.
    click.option(
        "--to-gray",
        is_flag=True,
        help="Let a 1-channel model take an RGB image: its ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B).",
    ),
    click.option(
        "--intensity-range",
        metavar="LO:HI",
        default=None,
        help="16-bit input: map samples LO..HI onto 0..255 [default: the file's declared range; "
        "RGB: 0..65535; gray without one: refused].",
    ),
    # -- slide reading and the model's resolution (issue 17) --
    click.option(
        "--reader",
        type=click.Choice(READERS, case_sensitive=False),
        default=_DEFAULTS.reader,
        show_default=True,
        help="Input reader: auto decides by content (tifffile for TIFF/SVS/OME-TIFF, OpenSlide for "
        "vendor formats tifffile cannot read: MRXS, NDPI variants, VMS, SCN, BIF, DICOM).",
    ),
    click.option("--level", type=click.IntRange(min=0), help="Pyramid level to read (0: full resolution)."),
    click.option(
        "--mpp",
        type=click.FloatRange(min=0, min_open=True),
        help="Microns per pixel to translate at: the pyramid level just finer is read and resampled "
        "(area filter) [default: the bundle's training resolution, unless --level is given].",
    ),
    click.option(
        "--assume-mpp",
        type=click.FloatRange(min=0, min_open=True),
        help="The slide's level-0 microns per pixel, when its metadata lacks it (or is wrong).",
    ),
    click.option("--allow-upsample", is_flag=True, help="Allow an --mpp finer than the slide's best level."),
)


def translation_options(command: Any) -> Any:
    """Decorate a click command with every translation option (in --help order)."""
    for option in reversed(_TRANSLATION_OPTIONS):
        command = option(command)
    return command


def options_from_cli(settings: dict[str, Any]) -> TranslateOptions:
    """The TranslateOptions of a command's parsed translation options (validated; a bad value
    is a CliError with the usage exit code)."""
    try:
        return TranslateOptions(**settings)
    except DnrtError as exc:
        raise CliError(str(exc), exc.exit_code) from None


@click.command(
    "translate",
    cls=OneLineCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("input", type=click.Path(path_type=Path, dir_okay=True))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output image (.tif: tiled BigTIFF; .ome.tif: OME-TIFF; .png/.jpg for small images).",
)
@click.option(
    "-m",
    "--model",
    required=True,
    type=click.Path(path_type=Path),
    help="Model bundle directory (export-model).",
)
@translation_options
@click.option(
    "--tissue-mask",
    type=click.Path(path_type=Path),
    help="Also write the tissue mask as a PNG here (255 tissue, 128 glass in translated tiles, 0 skipped).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary line.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's report as JSON on stdout.")
def translate_command(
    input: Path,
    output: Path,
    model: Path,
    tissue_mask: Path | None,
    quiet: bool,
    as_json: bool,
    **settings: Any,
) -> None:
    """Translate INPUT tile by tile with a model bundle, writing OUTPUT of the same size."""
    options = options_from_cli(settings)
    # tifffile logs its parse problems before raising; dnrt turns the exception into the one
    # error line, so keep those records off stderr unless the application configured logging.
    tiff_logger = logging.getLogger("tifffile")
    if not any(isinstance(h, logging.NullHandler) for h in tiff_logger.handlers):
        tiff_logger.addHandler(logging.NullHandler())
    # OneLineCommand's invoke (dnrt.errorline.guarded) makes SIGTERM and SIGHUP unwind (and clean
    # up) like Ctrl-C and turns what escapes into the one error line.
    from dnrt.runtime.api import translate

    report = translate(
        input, output, model, options, progress=False if quiet else None, tissue_mask=tissue_mask
    )
    resolution = report.resolution or {}
    if not quiet:
        for note in resolution.get("notes", []):
            click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(report.to_json())
    elif not quiet:
        if resolution.get("levels", 1) > 1 or resolution.get("resample", "none") != "none":
            mpp_text = resolution["processed_mpp"] and f", {resolution['processed_mpp'][0]:.4g} um/px"
            click.echo(
                f"read level {resolution['level']} of {resolution['levels']} with {resolution['reader']}"
                f"{mpp_text or ''}, resampling {resolution['resample']}",
                err=True,
            )
        s = report.seconds
        background = ""
        if report.tissue_fraction is not None:
            background = (
                f", tissue {100 * report.tissue_fraction:.1f} %, {report.tiles_skipped} of {report.tiles} "
                "tiles skipped"
            )
        click.echo(
            f"{output}: {report.width} x {report.height}, {report.tiles} tiles, mode {report.mode}, "
            f"{report.schedule}, {s['total']:.2f} s ({report.megapixels_per_s:.2f} MP/s) on {report.backend}"
            f"{background}",
            err=True,
        )


def main(argv: list[str] | None = None) -> None:
    """Entry point for a standalone ``trt-translate`` script."""
    translate_command.main(args=argv, prog_name="trt-translate")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
