"""Output paths: checks before any work, temporary files beside the destination, atomic commit.

The one atomic-write helper of dnrt: translated images, bundles (:func:`commit_dir`), the batch
ledger, engine caches, benchmark results and caches all go through it.

The output is written under a hidden temporary name in the destination's folder (same
filesystem, so the final rename is atomic) and only renamed to the destination once complete.
A crash, an error or Ctrl-C therefore never leaves a half-written file at the destination, and
an existing destination is untouched until the new file is whole.

Temporary names are ``.NAME.dnrt-KIND-PID-XXXXXXXX`` (KIND ``tmp``, ``level1``, ..., ``old``):
recognisable, tied to their destination ``NAME`` and carrying the writing process's id. Only
SIGKILL, a power cut or a crash of the interpreter can leave one behind; the next run to the
same destination removes those whose process no longer exists (:func:`remove_stale_temps`),
never those of a live process. Temporaries are created with mode ``0o666``/``0o777`` filtered
by the umask, so the renamed output has the permissions any new file would have.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from dnrt.errors import DnrtError

#: Suffixes written as tiled BigTIFF.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")
#: Suffixes written whole through Pillow (images that fit in memory).
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg")
TEMP_MARKER = ".dnrt-tmp-"
#: ``.NAME`` + this pattern: a temporary of the destination ``NAME`` (group 1: the kind, 2: the pid).
_TEMP_TAIL = re.compile(r"\.dnrt-(tmp|level[0-9]+|old)-([0-9]+)-[0-9a-f]{8}")


def _q(path: os.PathLike[str] | str) -> str:
    return f"'{os.fspath(path)}'"


def output_kind(path: os.PathLike[str] | str) -> str:
    """``"tiff"`` or ``"pillow"`` from the destination's suffix; DnrtError for anything else.

    ``.ome.tif`` names are TIFF (written as OME-TIFF: ``writer.output_format``)."""
    name = Path(path).name.lower()
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


def temp_name(dest: Path, marker: str = TEMP_MARKER) -> Path:
    """A fresh temporary path beside ``dest``: ``.NAME`` + marker + ``PID-XXXXXXXX``."""
    folder = dest.parent if str(dest.parent) else Path(".")
    return folder / f".{dest.name}{marker}{os.getpid()}-{secrets.token_hex(4)}"


def create_temp(dest: Path, marker: str = TEMP_MARKER) -> Path:
    """Create an empty hidden file beside ``dest`` (``.NAME.dnrt-tmp-PID-XXXXXXXX``), honouring the umask."""
    folder = dest.parent if str(dest.parent) else Path(".")
    for _ in range(100):
        temp = temp_name(dest, marker)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DnrtError(f"cannot create a file in {_q(folder)}: {exc.strerror or exc}") from None
        os.close(fd)
        return temp
    raise DnrtError(f"cannot create a temporary file in {_q(folder)}")  # pragma: no cover


def create_temp_dir(dest: Path, marker: str = TEMP_MARKER) -> Path:
    """Create an empty hidden folder beside ``dest``, mode ``0o777`` less the umask (unlike
    :func:`tempfile.mkdtemp`'s 0o700, which would survive the rename into place)."""
    folder = dest.parent if str(dest.parent) else Path(".")
    for _ in range(100):
        temp = temp_name(dest, marker)
        try:
            os.mkdir(temp, 0o777)
        except FileExistsError:
            continue
        except OSError as exc:
            raise DnrtError(f"cannot create a folder in {_q(folder)}: {exc.strerror or exc}") from None
        return temp
    raise DnrtError(f"cannot create a temporary folder in {_q(folder)}")  # pragma: no cover


@contextlib.contextmanager
def new_temp(dest: Path, marker: str = TEMP_MARKER, *, folder: bool = False) -> Iterator[Path]:
    """A new temporary file (``folder``: folder) beside ``dest``, removed when the block ends
    unless the block renamed it into place. A termination signal during its creation waits
    until the path is held here (:func:`dnrt.interrupts.deferred`), so no exit path leaves it."""
    from dnrt.interrupts import deferred

    temp: Path | None = None
    try:
        with deferred():
            temp = create_temp_dir(dest, marker) if folder else create_temp(dest, marker)
        yield temp
    finally:
        if temp is not None:
            if folder:
                shutil.rmtree(temp, ignore_errors=True)
            else:
                remove_quietly(temp)


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux 4.7+)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give ``path`` the mode a new file (0o666) or folder (0o777) gets under the umask.

    For outputs written by libraries that create their files private (safetensors: 0o600)."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we wrote: leave the entry alone
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists (another user's) or cannot tell: keep it
    return True


def remove_stale_temps(dest: Path) -> list[Path]:
    """Remove the temporaries of ``dest`` left by processes that no longer exist; returns them.

    Only names of the form ``.NAME.dnrt-KIND-PID-XXXXXXXX`` for this destination's ``NAME`` are
    considered, and only when no process ``PID`` exists (a live process's are its work in
    progress). A stale ``old`` (a bundle moved aside while being replaced) is kept while the
    destination is missing: it may be the only copy. Failures to remove are ignored.
    """
    dest = Path(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    prefix = f".{dest.name}"
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        match = _TEMP_TAIL.fullmatch(name, len(prefix))
        if match is None or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not os.path.lexists(dest):
            continue
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


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


def commit_dir(temp: Path, dest: Path) -> None:
    """Move a complete temporary folder onto ``dest``, replacing a folder already there.

    An existing ``dest`` is first moved aside (``.NAME.dnrt-old-PID-XXXXXXXX``), so a failure
    never leaves neither; it is removed once the new folder is in place. A crash in between
    leaves the old one, which :func:`remove_stale_temps` keeps while ``dest`` is missing.
    """
    if dest.exists():
        backup = temp_name(dest, ".dnrt-old-")
        os.replace(dest, backup)
        os.replace(temp, dest)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(temp, dest)
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


def write_file_atomic(path: os.PathLike[str] | str, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` as a whole: into a temporary beside it, then one
    rename over whatever is there. Readers see the old file or the new one, never a part."""
    dest = Path(path)
    with new_temp(dest) as temp:
        with open(temp, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
        _fsync(temp)
        os.replace(temp, dest)
