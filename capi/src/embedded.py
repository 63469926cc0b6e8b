"""The Python side of libdnrt: cffi's embedding init code, compiled into the library as text.

cffi runs this once, in the embedded interpreter, on the library's first call. It defines the
``dnrtpy_*`` entry points declared in ``dnrt_internal.h``; the C side (``dnrt_capi.c``) has
already checked their arguments (no NULLs, option structs complete, values in range).

Each entry point returns a ``dnrt_status`` and never raises: a failure's message goes to
``dnrt_last_error()`` through ``lib.dnrtc_set_error``. Errors are classified by the step that
failed (the model path, the bundle, the options, the backend, the input, the output, the run),
with a few refinements by message, so the codes in ``dnrt.h`` mean what they say.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from _dnrt_cffi import ffi, lib  # the module cffi builds into libdnrt itself

OK = lib.DNRT_OK
INVALID_ARGUMENT = lib.DNRT_ERR_INVALID_ARGUMENT
NOT_FOUND = lib.DNRT_ERR_NOT_FOUND
IO = lib.DNRT_ERR_IO
MODEL = lib.DNRT_ERR_MODEL
UNSUPPORTED = lib.DNRT_ERR_UNSUPPORTED
CANCELLED = lib.DNRT_ERR_CANCELLED
RUNTIME = lib.DNRT_ERR_RUNTIME
OUT_OF_MEMORY = lib.DNRT_ERR_OUT_OF_MEMORY
INTERNAL = lib.DNRT_ERR_INTERNAL

MODES = {lib.DNRT_MODE_IN: "in", lib.DNRT_MODE_TIN: "tin", lib.DNRT_MODE_KIN: "kin", lib.DNRT_MODE_DN: "dn"}
SCHEDULES = {lib.DNRT_SCHEDULE_STREAMING: "streaming", lib.DNRT_SCHEDULE_TWO_PASS: "two-pass"}
MARGIN_SOURCES = {lib.DNRT_MARGIN_SOURCE_TILE: "tile", lib.DNRT_MARGIN_SOURCE_IMAGE: "image"}
KERNEL_TYPES = {lib.DNRT_KIN_KERNEL_CONSTANT: "constant", lib.DNRT_KIN_KERNEL_GAUSSIAN: "gaussian"}
DEGENERATE_RULES = {
    lib.DNRT_DEGENERATE_REFERENCE: "reference",
    lib.DNRT_DEGENERATE_RELATIVE_FLOOR: "relative-floor",
    lib.DNRT_DEGENERATE_ZERO: "zero",
    lib.DNRT_DEGENERATE_ISOLATE: "isolate",
    lib.DNRT_DEGENERATE_SLIDE: "slide",
}

#: The command line's wording, said the way a C caller sets it.
_REWORDED = (
    ("pass --overwrite to replace it", "set overwrite in dnrt_write_options to replace it"),
    ("use a smaller --batch or --tile", "use a smaller batch or tile"),
)

_init_error: str | None = None
try:
    import numpy as np

    from dnrt.errors import Cancelled, DnrtError, first_line
except BaseException as exc:  # reported by dnrtpy_init, never raised into cffi's start-up
    _init_error = (
        f"the embedded Python ({sys.executable}, Python {sys.version.split()[0]}) cannot import dnrt: "
        f"{type(exc).__name__}: {exc}; install dnrt there or set DNRT_PYTHON (see capi/README.md)"
    )

    class DnrtError(Exception):  # type: ignore[no-redef]  # placeholders keep the handlers valid
        pass

    class Cancelled(DnrtError):  # type: ignore[no-redef]
        pass


#: Open models: id -> Translator. Touched only with the GIL held.
_models: dict[int, Any] = {}
_ids = itertools.count(1)


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(exc: BaseException) -> str:
    text = first_line(exc, empty=type(exc).__name__)
    for old, new in _REWORDED:
        text = text.replace(old, new)
    return text


def _set_error(message: str) -> None:
    lib.dnrtc_set_error(message.encode("utf-8", "backslashreplace"))


def _entry(function: Callable[..., None]) -> Callable[..., int]:
    """Turns a Python body into a ``dnrt_status`` entry point that never raises."""

    def entry(*args: Any) -> int:
        try:
            if _init_error is not None:
                raise _Failure(RUNTIME, _init_error)
            function(*args)
            return OK
        except _Failure as failure:
            _set_error(str(failure))
            return failure.status
        except Cancelled as exc:
            _set_error(_message(exc))
            return CANCELLED
        except MemoryError:
            _set_error("out of memory; use a smaller batch or tile, or a smaller image")
            return OUT_OF_MEMORY
        except DnrtError as exc:  # a step that has no more specific code
            _set_error(_message(exc))
            return RUNTIME
        except BaseException as exc:  # a bug: say what it was, never let it cross into C
            try:
                _set_error(f"internal error: unexpected {type(exc).__name__}: {_message(exc)}")
            except BaseException:
                return INTERNAL
            return INTERNAL

    entry.__name__ = function.__name__
    return entry


@contextlib.contextmanager
def _step(status: int, refine: Callable[[str], int | None] | None = None) -> Iterator[None]:
    """DnrtErrors raised in the block get ``status`` (or what ``refine(message)`` says)."""
    try:
        yield
    except Cancelled:
        raise
    except DnrtError as exc:
        message = _message(exc)
        raise _Failure((refine(message) if refine else None) or status, message) from None


def _refine_path(message: str) -> int | None:
    if "does not exist" in message or "not found" in message:
        return NOT_FOUND
    if "is the input image" in message:
        return INVALID_ARGUMENT
    if "convert it first" in message or "dnrt translates" in message:
        return UNSUPPORTED
    return None


def _refine_run(message: str) -> int | None:
    if message.startswith(("could not write", "cannot write", "cannot read", "cannot create")):
        return IO
    if "damaged" in message or "truncated" in message:
        return IO
    if "-channel images" in message:
        return UNSUPPORTED
    return None


def _text(pointer: Any, what: str) -> str | None:
    if pointer == ffi.NULL:
        return None
    raw = ffi.string(pointer)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Failure(INVALID_ARGUMENT, f"{what} {raw!r} is not an ASCII name") from None


def _path(pointer: Any) -> str:
    return os.fsdecode(ffi.string(pointer))


def _progress(function: Any, user: Any) -> Callable[[int, int], bool] | None:
    if function == ffi.NULL:
        return None
    return lambda done, total: function(user, done, total) == 0


def _translator(model_id: int) -> Any:
    translator = _models.get(int(model_id))
    if translator is None:
        raise _Failure(INVALID_ARGUMENT, "the model is not open")
    return translator


# ------------------------------------------------------------------------------------------ entry points


@ffi.def_extern(error=INTERNAL)
@_entry
def dnrtpy_init() -> None:
    # tifffile logs its parse problems before raising; the error message already says it.
    tiff_logger = logging.getLogger("tifffile")
    if not any(isinstance(h, logging.NullHandler) for h in tiff_logger.handlers):
        tiff_logger.addHandler(logging.NullHandler())
    import dnrt.runtime.api  # noqa: F401  (fail here, with the message above, if anything is missing)


@ffi.def_extern(error=INTERNAL)
@_entry
def dnrtpy_model_open(path_pointer: Any, options: Any, id_out: Any) -> None:
    from dnrt.bundle import load_bundle
    from dnrt.runtime.api import Translator
    from dnrt.runtime.backends import resolve_backend_name
    from dnrt.runtime.options import TranslateOptions
    from dnrt.semantics import DEGENERATE_DEFAULT, DEGENERATE_RATIO_DEFAULT

    path = _path(path_pointer)
    backend = _text(options.backend, "options.backend") or "auto"
    precision = _text(options.precision, "options.precision") or "fp32"
    with _step(INVALID_ARGUMENT):  # every option checked once, by TranslateOptions, before any load
        settings = TranslateOptions(
            mode=MODES[options.mode],
            schedule=SCHEDULES[options.schedule],
            backend=backend,
            tile=int(options.tile) or None,
            margin=int(options.margin) if options.margin >= 0 else None,
            margin_source=MARGIN_SOURCES[options.margin_source],
            batch=int(options.batch) or None,
            kin_kernel=int(options.kin_kernel),
            kin_kernel_type=KERNEL_TYPES[options.kin_kernel_type],
            std_floor=float(options.std_floor),
            degenerate=DEGENERATE_RULES.get(options.degenerate, DEGENERATE_DEFAULT.value),
            degenerate_ratio=float(options.degenerate_ratio) or DEGENERATE_RATIO_DEFAULT,
            overlap=None if options.overlap < 0 else bool(options.overlap),
            threads=int(options.threads) or None,
            precision=precision,
            device=max(0, int(options.device_index)),
            force=bool(options.force),
        )

    if not os.path.lexists(path):
        raise _Failure(NOT_FOUND, f"model bundle not found: {path}")
    with _step(MODEL):
        bundle = load_bundle(path)
    with _step(INVALID_ARGUMENT):  # the tile geometry against this bundle
        Translator._check_geometry(bundle, settings)
    with _step(UNSUPPORTED):
        name = resolve_backend_name(settings.backend, precision)
        translator = Translator(bundle, settings.replace(backend=name), progress=False)
    try:
        translator.open()  # load the graphs now: a broken bundle fails here, not mid-image
    except (Cancelled, MemoryError):
        raise
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            translator.close()
        raise _Failure(MODEL, f"the {name} backend could not load {path}: {_message(exc)}") from None
    model_id = next(_ids)
    _models[model_id] = translator
    id_out[0] = model_id


@ffi.def_extern(error=INTERNAL)
@_entry
def dnrtpy_model_close(model_id: int) -> None:
    translator = _models.pop(int(model_id), None)
    if translator is not None:
        translator.on_progress = None
        translator.close()


@ffi.def_extern(error=INTERNAL)
@_entry
def dnrtpy_translate_file(
    model_id: int, in_pointer: Any, out_pointer: Any, options: Any, progress: Any, user: Any
) -> None:
    from dnrt.atomic import output_kind
    from dnrt.runtime.io import Compression, check_output_path, open_image

    translator = _translator(model_id)
    input_path, output_path = _path(in_pointer), _path(out_pointer)
    compression = _text(options.compression, "compression") or "zlib"
    with _step(INVALID_ARGUMENT, lambda m: UNSUPPORTED if "not available" in m else None):
        output_kind(output_path)
        Compression(compression)
        settings = translator.options.replace(
            compression=compression,
            pyramid=bool(options.pyramid),
            overwrite=bool(options.overwrite),
            writer_tile=int(options.tile),
        )
    if not os.path.lexists(input_path):
        raise _Failure(NOT_FOUND, f"input image '{input_path}' does not exist")
    with _step(IO, _refine_path):
        check_output_path(output_path, settings.overwrite, input_path=input_path)
    with _step(IO, _refine_path):
        source = open_image(input_path)
    with source:
        in_channels = translator.bundle.manifest.in_channels
        if source.channels != in_channels:
            raise _Failure(
                UNSUPPORTED,
                f"the model takes {in_channels}-channel images; '{input_path}' has {source.channels}",
            )
        translator.on_progress = _progress(progress, user)
        try:
            # What trt-translate runs after the same checks (dnrt.runtime.api.translate): the writer
            # goes to a temporary file, renamed when complete and removed on any error or cancel.
            with _step(RUNTIME, _refine_run):
                translator._translate_source(source, input_path, output_path, settings)
        finally:
            translator.on_progress = None


@ffi.def_extern(error=INTERNAL)
@_entry
def dnrtpy_translate_rgb(
    model_id: int,
    in_pointer: Any,
    width: int,
    height: int,
    in_stride: int,
    out_pointer: Any,
    out_stride: int,
    progress: Any,
    user: Any,
) -> None:
    from numpy.lib.stride_tricks import as_strided

    translator = _translator(model_id)
    manifest = translator.bundle.manifest
    if manifest.in_channels != 3 or manifest.out_channels != 3:
        raise _Failure(
            UNSUPPORTED,
            f"dnrt_translate_rgb needs an RGB -> RGB model; this one maps {manifest.in_channels} to "
            f"{manifest.out_channels} channels",
        )
    row = width * 3
    # Views of the caller's buffers (the C side checked that the spans fit and do not overlap).
    source = np.frombuffer(ffi.buffer(in_pointer, (height - 1) * in_stride + row), dtype=np.uint8)
    target = np.frombuffer(ffi.buffer(out_pointer, (height - 1) * out_stride + row), dtype=np.uint8)
    rgb = as_strided(source, shape=(height, width, 3), strides=(in_stride, 3, 1), writeable=False)
    out = as_strided(target, shape=(height, width, 3), strides=(out_stride, 3, 1))
    translator.on_progress = _progress(progress, user)
    try:
        with _step(RUNTIME):
            translator.translate(rgb, out=out)
    finally:
        translator.on_progress = None
