"""``dnrt batch``: translate many slides into one output folder, resumable, on one machine or Ray.

Exit status: 0 every slide translated (or already done), 3 some slides failed (each recorded in
the ledger with its error; the others were translated), 1 the batch could not run (a missing
slide in the list, an output folder that is not writable, a Ray cluster that does not answer,
a broken bundle), 2 a usage error, 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP (the slides
finished so far are in the ledger; a re-run does the rest).

Every ``trt-translate`` translation option is also an option here (the same click options,
:func:`dnrt.runtime.cli.translation_options`), with the same meaning for every slide.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from dnrt.batch.jobs import DEFAULT_TEMPLATE
from dnrt.errorline import ErrorLine, OneLineCommand
from dnrt.errors import DnrtError
from dnrt.runtime.cli import options_from_cli, translation_options

#: Looks like a slide, not a Ray address: ``--ray a.tif b.tif`` took the first slide as address.
_IMAGE_HINTS = (
    ".tif",
    ".tiff",
    ".svs",
    ".ndpi",
    ".png",
    ".jpg",
    ".jpeg",
    ".btf",
    ".tf8",
    ".scn",
    ".mrxs",
    ".csv",
)


def _check_ray_address(value: str | None) -> None:
    if value is None:
        return
    if value.lower().endswith(_IMAGE_HINTS) or os.path.exists(value):
        raise DnrtError(
            f"--ray took {value!r} as the cluster address; write --ray=ADDRESS, or put a bare --ray after the slides",
            exit_code=2,
        )


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise DnrtError(f"--out-dir '{out_dir}' is not a folder")
        return
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise DnrtError(f"--out-dir '{out_dir}': its parent folder does not exist")
    try:
        out_dir.mkdir()
    except OSError as exc:
        raise DnrtError(f"cannot create --out-dir '{out_dir}': {exc.strerror or exc}") from None


def run(
    slides: tuple[Path, ...],
    list_file: Path | None,
    out_dir: Path,
    name_template: str,
    ray_address: str | None,
    workers: int | None,
    cpus_per_worker: float,
    gpus_per_worker: float | None,
    retries: int,
    model: Path,
    quiet: bool,
    as_json: bool,
    **settings: Any,
) -> int:
    """The command's body; returns the exit status (see the module's docstring)."""
    from dnrt.batch.jobs import make_jobs, slides_from_arguments, slides_from_list
    from dnrt.batch.options import fingerprint
    from dnrt.bundle import load_bundle

    options = options_from_cli(settings)  # every value checked before any slide is read

    _check_ray_address(ray_address)
    if slides and list_file is not None:
        raise DnrtError("give slides as arguments or --list FILE, not both", exit_code=2)
    entries = slides_from_list(list_file) if list_file is not None else slides_from_arguments(slides)
    jobs = make_jobs(entries, out_dir, name_template)
    bundle = load_bundle(model)
    options_hash = fingerprint(options, bundle.path)
    owns_ray = False
    if ray_address is not None:  # before anything is created: a dead address leaves nothing
        from dnrt.batch.cluster import connect

        owns_ray = connect(ray_address)
    try:
        return _run_in(
            out_dir,
            jobs,
            bundle.path,
            options,
            options_hash,
            ray_address,
            workers,
            cpus_per_worker,
            gpus_per_worker,
            retries,
            quiet,
            as_json,
        )
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


def _run_in(
    out_dir: Path,
    jobs: list[Any],
    bundle_path: Path,
    options: Any,
    options_hash: str,
    ray_address: str | None,
    workers: int | None,
    cpus_per_worker: float,
    gpus_per_worker: float | None,
    retries: int,
    quiet: bool,
    as_json: bool,
) -> int:
    from dnrt.batch.ledger import Ledger
    from dnrt.batch.runner import run_batch

    _prepare_out_dir(out_dir)

    def make_executor(count: int) -> Any:
        if ray_address is None:
            from dnrt.batch.local import LocalExecutor

            return LocalExecutor(str(bundle_path), options)
        from dnrt.batch.cluster import RayExecutor

        return RayExecutor(
            str(bundle_path),
            options,
            jobs=count,
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
            retries=retries,
        )

    progress = not quiet and bool(getattr(sys.stderr, "isatty", lambda: False)())
    with Ledger(out_dir) as ledger:
        summary = run_batch(
            jobs,
            ledger,
            options_hash,
            make_executor,
            mode="local" if ray_address is None else f"ray {ray_address}",
            overwrite=options.overwrite,
            progress=progress,
            quiet=quiet,
        )
    if as_json:
        click.echo(json.dumps(asdict(summary), indent=2))
    elif not quiet:
        rate = f", {summary.tiles_per_s:.3g} tiles/s" if summary.done else ""
        click.echo(
            f"batch: {summary.slides} slides: {summary.done} translated, {summary.skipped} already done, "
            f"{summary.failed} failed in {summary.seconds:.1f} s{rate}; ledger {summary.ledger}",
            err=True,
        )
    return summary.exit_code


class BatchCommand(OneLineCommand):
    """The batch's failures are one ``error:`` line like every command's; an interrupted batch
    says that its finished slides are kept."""

    interrupted_note = "finished slides are in the ledger, run again to do the rest"


@click.command(
    "batch",
    cls=BatchCommand,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.argument("slides", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--list",
    "list_file",
    type=click.Path(path_type=Path),
    help="CSV of slides: a 'path' column (optional 'output' and any fields for --name), or one path a line.",
)
@click.option(
    "--out-dir", required=True, type=click.Path(path_type=Path), help="Folder of the outputs and the ledger."
)
@click.option(
    "--name",
    "name_template",
    default=DEFAULT_TEMPLATE,
    show_default=True,
    help="Output name template: {stem} {name} {parent} {index} and the list's columns.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster: HOST:PORT of its head, 'auto', or nothing to start one on this machine.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Ray workers [default: the cluster's GPUs or CPUs].",
)
@click.option(
    "--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True
)
@click.option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=None,
    help="GPUs each Ray worker reserves [default: 1 where the cluster has GPUs, else 0].",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Times a Ray worker that died is restarted and its slide retried.",
)
@click.option(
    "-m",
    "--model",
    required=True,
    type=click.Path(path_type=Path),
    help="Model bundle directory (export-model).",
)
# Every trt-translate option (but INPUT and --output): options added there reach dnrt batch too.
@translation_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary line.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary of the batch on stdout.")
def batch_command(**kwargs: Any) -> None:
    """Translate SLIDES (or those of --list) into --out-dir; re-running skips the finished ones.

    Exit status: 0 all translated, 3 some failed (recorded in the ledger, the others went on),
    1 the batch could not run, 2 usage error, 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP (re-run to finish).
    """
    from dnrt.batch.cluster import ClusterUnreachable

    # BatchCommand's invoke (dnrt.errorline.guarded) turns the rest into the one error line.
    try:
        code = run(**kwargs)
    except ClusterUnreachable as exc:
        # Ray's exit handler would retry the dead address for another minute: leave at once
        # (nothing is open but the connection attempt).
        ErrorLine(str(exc)).show()
        sys.stderr.flush()
        os._exit(1)
    sys.exit(code)
