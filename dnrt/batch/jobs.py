"""The slide list and the output names: every problem is found before any slide is translated.

Slides come from the command line or from a list file (CSV). A CSV with a header row names its
slide column ``path`` (or ``slide``/``input``); an ``output`` column, where filled, overrides the
name template for that row, and every column is a template field. A file without such a header
is one slide per line (the first field). Relative paths in a list file are relative to the list
file's folder, so a list travels with its slides.

Output names come from a template (default ``{stem}.tif``) with the fields ``stem`` (the file
name without its image suffixes), ``name`` (the whole file name), ``parent`` (the folder's
name), ``index`` (0-based position, format specs allowed: ``{index:05d}``) and the list's
columns. A name must stay inside the output folder (no absolute path, no ``..``), must be a
supported output suffix, and no two slides may get the same name.
"""

from __future__ import annotations

import csv
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dnrt.errors import DnrtError

DEFAULT_TEMPLATE = "{stem}.tif"
#: Columns of a list file's header naming the slide path (the first one present is used).
PATH_COLUMNS = ("path", "slide", "input")
#: Suffixes stripped for ``{stem}`` (``a.ome.tiff`` -> ``a``; ``b.svs`` -> ``b``).
_STRIPPED = (
    ".ome",
    ".tif",
    ".tiff",
    ".btf",
    ".tf8",
    ".svs",
    ".ndpi",
    ".scn",
    ".mrxs",
    ".png",
    ".jpg",
    ".jpeg",
)


@dataclass(frozen=True)
class Slide:
    """One row of the batch: the input and the fields its output name may use."""

    path: Path
    fields: dict[str, str]
    #: Where the slide was given, for error messages (``list.csv row 3`` or ``argument 2``).
    origin: str
    #: The list's ``output`` column, when filled.
    output: str | None = None


@dataclass(frozen=True)
class Job:
    index: int
    input: Path
    #: The output name relative to the output folder (POSIX separators), the ledger's key.
    name: str
    output: Path


def _stem(name: str) -> str:
    stem = name
    while True:
        lowered = stem.lower()
        for suffix in _STRIPPED:
            if lowered.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                break
        else:
            return stem


def slides_from_arguments(paths: Sequence[os.PathLike[str] | str]) -> list[Slide]:
    return [Slide(Path(p), {}, f"argument {i + 1}") for i, p in enumerate(paths)]


def slides_from_list(list_file: Path) -> list[Slide]:
    """Read a CSV list (see the module's docstring); an unreadable or empty list is an error."""
    try:
        with open(list_file, newline="", encoding="utf-8-sig") as fh:
            rows = [row for row in csv.reader(fh) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise DnrtError(f"list file '{list_file}' does not exist") from None
    except IsADirectoryError:
        raise DnrtError(f"list file '{list_file}' is a folder") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DnrtError(
            f"cannot read list file '{list_file}': {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not rows:
        raise DnrtError(f"list file '{list_file}' names no slides")
    base = list_file.parent
    header = [cell.strip().lower() for cell in rows[0]]
    column = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    slides: list[Slide] = []
    if column is None:
        for number, row in enumerate(rows, start=1):
            slides.append(Slide(base / row[0].strip(), {}, f"{list_file.name} line {number}"))
        return slides
    output_column = header.index("output") if "output" in header else None
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row] + [""] * (len(header) - len(row))
        if not cells[column]:
            raise DnrtError(f"{list_file.name} row {number}: the {header[column]!r} column is empty")
        fields = {name: cells[i] for i, name in enumerate(header) if name and name.isidentifier()}
        output = cells[output_column] if output_column is not None and cells[output_column] else None
        slides.append(Slide(base / cells[column], fields, f"{list_file.name} row {number}", output))
    if not slides:
        raise DnrtError(f"list file '{list_file}' names no slides (only a header)")
    return slides


def check_template(template: str) -> None:
    """Refuse a template that cannot be formatted (bad braces) before any slide is read."""
    try:
        list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DnrtError(f"output name template {template!r}: {exc}") from None


def _relative_name(name: str, origin: str) -> str:
    """The output name as a clean relative POSIX path inside the output folder, or DnrtError."""
    if not name or name.strip() != name:
        raise DnrtError(f"{origin}: output name {name!r} is empty or has surrounding spaces")
    if "\x00" in name:
        raise DnrtError(f"{origin}: output name {name!r} contains a NUL character")
    posix = name.replace(os.sep, "/") if os.sep != "/" else name
    pure = PurePosixPath(posix)
    if pure.is_absolute() or (len(posix) > 1 and posix[1] == ":"):
        raise DnrtError(f"{origin}: output name {name!r} is absolute; names are relative to --out-dir")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise DnrtError(f"{origin}: output name {name!r} leaves the output folder")
    return "/".join(parts)


def make_jobs(slides: Sequence[Slide], out_dir: Path, template: str = DEFAULT_TEMPLATE) -> list[Job]:
    """Jobs for ``slides``; DnrtError for a missing input, a bad or duplicate output name.

    Nothing is created here: the caller checks the output folder itself.
    """
    from dnrt.atomic import output_kind

    check_template(template)
    if not slides:
        raise DnrtError("no slides given (SLIDES... or --list FILE)", exit_code=2)
    # A folder may be a slide (formats stored as a directory); the reader decides.
    missing = [s for s in slides if not s.path.exists()]
    if missing:
        first = missing[0]
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise DnrtError(f"{first.origin}: slide '{first.path}' does not exist{more}")
    jobs: list[Job] = []
    seen: dict[str, Slide] = {}
    root = out_dir.resolve()
    for index, slide in enumerate(slides):
        if slide.output is not None:
            raw = slide.output
        else:
            # The list's columns win over the computed fields of the same name.
            fields: dict[str, object] = {
                "stem": _stem(slide.path.name),
                "name": slide.path.name,
                "parent": slide.path.resolve().parent.name,
                "index": index,
                **slide.fields,
            }
            try:
                raw = template.format_map(fields)
            except KeyError as exc:
                known = ", ".join(sorted(fields))
                raise DnrtError(
                    f"output name template {template!r}: unknown field {exc.args[0]!r} (known: {known})"
                ) from None
            except (ValueError, IndexError, AttributeError, TypeError) as exc:
                raise DnrtError(f"output name template {template!r}: {exc}") from None
        name = _relative_name(raw, slide.origin)
        output = out_dir / name
        # Symbolic links inside the output folder could still point out of it.
        try:
            output.resolve().relative_to(root)
        except ValueError:
            raise DnrtError(f"{slide.origin}: output name {raw!r} leaves the output folder") from None
        try:
            output_kind(output)
        except DnrtError as exc:
            raise DnrtError(f"{slide.origin}: {exc}") from None
        key = name.lower()  # case-insensitive filesystems would merge names differing in case
        if key in seen:
            raise DnrtError(
                f"{slide.origin} and {seen[key].origin} both write '{name}'; "
                "choose a --name template that tells them apart (e.g. {index:05d}-{stem}.tif)"
            )
        seen[key] = slide
        jobs.append(Job(index, slide.path, name, output))
    return jobs
