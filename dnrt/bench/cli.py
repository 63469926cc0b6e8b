"""``dnrt bench``: the click command (registered by ``dnrt.cli`` as ``dnrt bench``).

Every user error (no model, unreadable image, bad option) ends as one ``error: ...`` line on
stderr and a non-zero exit (2 for usage errors, 1 for failures, 130 for Ctrl-C); set
``DNRT_DEBUG=1`` for the traceback of an unexpected error.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from dnrt.errorline import OneLineCommand
from dnrt.errors import DnrtError
from dnrt.runtime.options import BACKENDS, MARGIN_SOURCES, PRECISIONS


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    from dnrt.data.synthetic import parse_size

    try:
        return parse_size(value)
    except DnrtError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(
    "bench",
    cls=OneLineCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-m", "--model", type=click.Path(path_type=Path), help="Model bundle directory (export-model).")
@click.option("--demo", is_flag=True, help="Use the embedded demo model (exported once into the cache).")
@click.option(
    "--image", type=click.Path(path_type=Path), help="Image to translate [default: a synthetic slide]."
)
@click.option(
    "--size",
    callback=_size,
    help="Synthetic slide HEIGHTxWIDTH [default: 3024x4302, the paper's 4,302 x 3,024 Table S1 image].",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic slide seed.")
@click.option(
    "--scanner",
    default="clean",
    show_default=True,
    help="Synthetic slide's scanner conditions, comma-separated to measure several in turn: clean, "
    "flat-glass, scanner (noise, glass white-balanced to 255, JPEG tiles), overexposed, or options "
    "like 'noise=2+wb+jpeg=80'.",
)
@click.option(
    "--ground-truth",
    type=click.Path(path_type=Path),
    help="With --image: the target-domain image to compute PSNR/SSIM against.",
)
@click.option(
    "--modes",
    default="in,tin,kin,dn-two-pass,dn-streaming",
    show_default=True,
    help="Comma-separated: in, tin, kin, dn-two-pass, dn-streaming, dn-serial (streaming, passes not overlapped).",
)
@click.option(
    "--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto", show_default=True
)
@click.option("--batch", type=click.IntRange(min=1), help="Tiles per backend call [default: the backend's].")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the model [default: all cores].")
@click.option("--tile", type=click.IntRange(min=8), help="Tile size T [default: the bundle's].")
@click.option("--margin", type=click.IntRange(min=0), help="Margin M [default: the bundle's].")
@click.option(
    "--margin-source",
    type=click.Choice(MARGIN_SOURCES, case_sensitive=False),
    default="image",
    show_default=True,
    help="image: true neighbouring pixels; tile: the reference's self-reflection.",
)
@click.option(
    "--degenerate",
    help="DN's degenerate-statistics rule for every DN mode [default: dnrt's]; a mode can name its "
    "own: dn-streaming:zero, dn-streaming:isolate=0.5.",
)
@click.option("--degenerate-ratio", type=click.FloatRange(min=0, max=1, min_open=True))
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Compute precision: fp16 on GPU backends, bf16 on torch (CPU with AVX512-BF16/AMX) and torch-cuda.",
)
@click.option(
    "--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="Rounds; best is kept."
)
@click.option("--compression", default="zlib", show_default=True, help="Output TIFF compression.")
@click.option(
    "--max-whole-megapixels",
    type=click.FloatRange(min=0),
    default=16.0,
    show_default=True,
    help="Run whole-image inference (the global-statistics reference) up to this size; 0 disables it.",
)
@click.option("--no-fidelity", is_flag=True, help="Skip seam / PSNR / SSIM (speed and memory only).")
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Write every number to this JSON file."
)
@click.option(
    "--plot", "plot_path", type=click.Path(path_type=Path), help="Draw time/memory/fidelity bars (PNG)."
)
@click.option(
    "--markdown", "markdown_path", type=click.Path(path_type=Path), help="Write the report as Markdown."
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    help="Keep the translated TIFFs here [default: a temporary folder, removed].",
)
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Synthetic slides and the demo bundle.")
@click.option("--timeout", type=click.FloatRange(min=1), help="Seconds allowed per measured run.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines and no table (errors only).")
def bench_command(
    model: Path | None,
    demo: bool,
    image: Path | None,
    size: tuple[int, int] | None,
    seed: int,
    scanner: str,
    ground_truth: Path | None,
    modes: str,
    backend: str,
    batch: int | None,
    threads: int | None,
    tile: int | None,
    margin: int | None,
    margin_source: str,
    degenerate: str | None,
    degenerate_ratio: float | None,
    precision: str | None,
    repeat: int,
    compression: str,
    max_whole_megapixels: float,
    no_fidelity: bool,
    json_path: Path | None,
    plot_path: Path | None,
    markdown_path: Path | None,
    workdir: Path | None,
    cache_dir: Path | None,
    timeout: float | None,
    quiet: bool,
) -> None:
    """Measure IN, TIN, KIN and DN on one image: speed, memory, seams and accuracy.

    Each mode translates the image file to file in a fresh process (peak memory per mode);
    the table shows the paper's Table S1 beside the ratios measured here.
    """
    # OneLineCommand's invoke (dnrt.errorline.guarded) turns what escapes into the one error line.
    from dnrt.bench.harness import BenchOptions, format_report, parse_modes, run_benchmark, write_json

    if image is not None and size is not None:
        raise DnrtError("pass either --image or --size, not both", exit_code=2)
    if ground_truth is not None and image is None:
        raise DnrtError("--ground-truth goes with --image (the synthetic slide has its own)", exit_code=2)
    if image is not None and not image.exists():
        raise DnrtError(f"image not found: {image}")
    from dnrt.data.synthetic import parse_scanner
    from dnrt.runtime.options import TranslateOptions
    from dnrt.semantics import DEGENERATE_DEFAULT, DEGENERATE_RATIO_DEFAULT

    scanners = [v.strip() for v in scanner.split(",") if v.strip()] or ["clean"]
    if image is not None and scanners != ["clean"]:
        raise DnrtError("--scanner goes with the synthetic slide, not --image", exit_code=2)
    for variant in scanners:
        parse_scanner(variant)
    # The translation settings are checked by the runtime's own validator, before any run.
    translate = TranslateOptions(
        backend=backend,
        batch=batch,
        threads=threads,
        tile=tile,
        margin=margin,
        margin_source=margin_source,
        degenerate=degenerate or DEGENERATE_DEFAULT,
        degenerate_ratio=DEGENERATE_RATIO_DEFAULT if degenerate_ratio is None else degenerate_ratio,
        precision=precision or "fp32",
        compression=compression,
    )
    options = BenchOptions(
        model=model,
        demo=demo,
        image=image,
        ground_truth=ground_truth,
        seed=seed,
        modes=parse_modes(modes),
        translate=translate,
        repeat=repeat,
        max_whole_megapixels=max_whole_megapixels,
        fidelity=not no_fidelity,
        workdir=workdir,
        cache_dir=cache_dir,
        timeout=timeout,
    )
    if size is not None:
        options.size = size
    if compression:
        from dnrt.runtime.io.writer import Compression

        Compression(compression)  # a bad name fails now, not after the first run
    log = (lambda _: None) if quiet else (lambda msg: click.echo(msg, err=True))
    command = shlex.join(["dnrt", "bench", *sys.argv[_argv_start() :]])
    results = []
    for variant in scanners:
        options.scanner = variant
        result = run_benchmark(options, log=log)
        result["command"] = command
        results.append(result)
    # One variant: its result as it is; several: one after the other.
    combined = results[0] if len(results) == 1 else {"schema": "dnrt-bench-set/1", "runs": results}
    if json_path is not None:
        write_json(combined, json_path)
    if plot_path is not None:
        from dnrt.bench.plot import plot_result

        for result in results:
            suffix = "" if len(results) == 1 else f"-{result['image'].get('scanner')}"
            plot_result(result, plot_path.with_name(plot_path.stem + suffix + plot_path.suffix))
    if markdown_path is not None:
        from dnrt.bench.harness import markdown_report

        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text("\n".join(markdown_report(r) for r in results))
    if not quiet:
        click.echo("\n\n".join(format_report(r) for r in results))
        for what, path in (("json", json_path), ("plot", plot_path), ("markdown", markdown_path)):
            if path is not None:
                click.echo(f"wrote {what}: {path}", err=True)


def _argv_start() -> int:
    """Where bench's own arguments start in sys.argv (after ``dnrt bench`` or a script name)."""
    try:
        return sys.argv.index("bench") + 1
    except ValueError:
        return 1


def main(argv: list[str] | None = None) -> None:
    bench_command.main(args=argv, prog_name="dnrt bench")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
