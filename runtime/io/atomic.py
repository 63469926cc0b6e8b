"""Output paths: checks before any work, temporary files beside the destination, atomic commit.

The output is written under a hidden temporary name in the destination's folder (same
filesystem, so the final rename is atomic) and only renamed to the destination once complete.
A crash, an error or Ctrl-C therefore never leaves a half-written file at the destination, and
an existing destination is untouched until the new file is whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

from dnrt.errors import DnrtError

#: Suffixes written as tiled BigTIFF.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
#: Suffixes written whole through Pillow (images that fit in memory).
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")
TEMP_MARKER = ".dnrt-tmp-"


def _q(path: os.PathLike[str] | str) -> str:
    return f"'{os.fspath(path)}'"


def output_kind(path: os.PathLike[str] | str) -> str:
    """``"tiff"`` or ``"pillow"`` from the destination's suffix; DnrtError for anything else."""
    name = Path(path).name.lower()
    if name.endswith((".ome.tif", ".ome.tiff")):
        raise DnrtError(
            f"output {_q(path)}: dnrt writes generic tiled TIFF, not OME-TIFF; use a .tif name without .ome"
        )
    suffix = Path(name).suffix
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in PILLOW_SUFFIXES:
        return "pillow"
    allowed = ", ".join(TIFF_SUFFIXES + PILLOW_SUFFIXES)
    raise DnrtError(
        f"output {_q(path)} has an unsupported suffix {suffix or '(none)'!r}; use one of {allowed}"
    )


def check_output_path(
    path: os.PathLike[str] | str, overwrite: bool = False, *, input_path: os.PathLike[str] | str | None = None
) -> Path:
    """Validate a destination before any work starts; returns it as a Path.

    Checks the suffix, that the folder exists and is writable, that the destination is not a
    folder, not the input itself, and does not exist unless ``overwrite``.
    """
    dest = Path(path)
    output_kind(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.exists():
        raise DnrtError(f"output folder {_q(folder)} does not exist")
    if not folder.is_dir():
        raise DnrtError(f"output folder {_q(folder)} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DnrtError(f"output folder {_q(folder)} is not writable")
    if dest.is_dir():
        raise DnrtError(f"output {_q(dest)} is a folder")
    if input_path is not None and dest.exists():
        with contextlib.suppress(OSError):
            if os.path.samefile(dest, input_path):
                raise DnrtError(f"output {_q(dest)} is the input image; choose another output name")
    if (dest.exists() or dest.is_symlink()) and not overwrite:
        raise DnrtError(f"output {_q(dest)} exists; pass --overwrite to replace it")
    return dest


def create_temp(dest: Path, marker: str = TEMP_MARKER) -> Path:
    """Create an empty hidden file beside ``dest`` (``.NAME.dnrt-tmp-XXXXXXXX``), honouring the umask."""
    folder = dest.parent if str(dest.parent) else Path(".")
    for _ in range(100):
        temp = folder / f".{dest.name}{marker}{secrets.token_hex(4)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DnrtError(f"cannot create a file in {_q(folder)}: {exc.strerror or exc}") from None
        os.close(fd)
        return temp
    raise DnrtError(f"cannot create a temporary file in {_q(folder)}")  # pragma: no cover


def remove_quietly(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def commit(temp: Path, dest: Path, overwrite: bool) -> None:
    """Move a complete temporary file onto ``dest`` atomically.

    Without ``overwrite`` the move must not replace a file that appeared meanwhile: a hard link
    fails if the name exists (atomic check-and-create); filesystems without hard links fall back
    to check-then-rename.
    """
    _fsync(temp)
    if overwrite:
        os.replace(temp, dest)
    else:
        try:
            os.link(temp, dest)
        except FileExistsError:
            remove_quietly(temp)
            raise DnrtError(f"output {_q(dest)} exists; pass --overwrite to replace it") from None
        except OSError as exc:
            if exc.errno not in (
                errno.EPERM,
                errno.ENOTSUP,
                errno.EOPNOTSUPP,
                errno.EXDEV,
                errno.EMLINK,
                errno.ENOSYS,
            ):
                raise
            if dest.exists():
                remove_quietly(temp)
                raise DnrtError(f"output {_q(dest)} exists; pass --overwrite to replace it") from None
            os.replace(temp, dest)
        else:
            os.unlink(temp)
    _fsync_dir(dest.parent if str(dest.parent) else Path("."))


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not possible on every platform, harmless where it fails.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
