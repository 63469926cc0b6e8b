"""Backend registry: names on the command line -> lazily imported backend classes.

Nothing heavy is imported here: each backend's module (and its library:
onnxruntime, torch, tensorrt) is imported only when that backend is asked for.
A backend module provides a class taking ``(bundle, context, **options)``: the job's
:class:`BackendContext` and the backend's own options; the registry adds the device where one
name stands for a library on a device.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dnrt.bundle import Bundle
from dnrt.errors import DnrtError
from dnrt.runtime.backends.base import Backend, BackendContext
from dnrt.runtime.options import BACKEND_PRECISIONS, BACKENDS

__all__ = [
    "BACKEND_NAMES",
    "AUTO_ORDER",
    "Backend",
    "BackendContext",
    "available_backends",
    "get_backend",
    "resolve_backend_name",
]


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    options: dict[str, Any] = field(default_factory=dict)
    #: Libraries that must be importable.
    needs: tuple[str, ...] = ()
    #: Also needs a CUDA device that this library can see.
    cuda: str | None = None


_REGISTRY: dict[str, _Entry] = {
    "ort": _Entry("dnrt.runtime.backends.ort", "OrtBackend", {"device": "cpu"}, ("onnxruntime",)),
    "ort-cuda": _Entry(
        "dnrt.runtime.backends.ort", "OrtBackend", {"device": "cuda"}, ("onnxruntime",), "ort"
    ),
    "torch": _Entry("dnrt.runtime.backends.torch_backend", "TorchBackend", {"device": "cpu"}, ("torch",)),
    "torch-cuda": _Entry(
        "dnrt.runtime.backends.torch_backend", "TorchBackend", {"device": "cuda"}, ("torch",), "torch"
    ),
    "trt": _Entry("dnrt.runtime.backends.trt", "TrtBackend", {}, ("tensorrt",), "torch-or-cuda-python"),
}

#: The names (``auto`` first) and each backend's precisions live in ``dnrt.runtime.options``;
#: the registry's keys are the same names (tested).
BACKEND_NAMES = BACKENDS
#: What ``--backend auto`` tries, best first.
AUTO_ORDER = ("trt", "torch-cuda", "ort-cuda", "ort")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _nvidia_driver_present() -> bool:
    """A cheap look for an NVIDIA driver, so that ``auto`` on a CPU-only machine never imports
    torch just to hear that CUDA is missing (that import alone costs ~190 MB of RSS)."""
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
    if sys.platform == "win32":
        import ctypes.util

        return ctypes.util.find_library("nvcuda") is not None
    return sys.platform != "darwin"  # unknown platform: let the library decide


def _cuda_visible(kind: str) -> bool:
    if not _nvidia_driver_present():
        return False
    try:
        if kind == "ort":
            import onnxruntime as ort

            return "CUDAExecutionProvider" in ort.get_available_providers()
        if kind == "torch":
            import torch

            return bool(torch.cuda.is_available())
        if kind == "torch-or-cuda-python":
            return _cuda_visible("torch") if _importable("torch") else _importable("cuda")
    except Exception:  # a broken GPU stack means "not available", never a crash
        return False
    return False


def _available(name: str) -> bool:
    entry = _REGISTRY[name]
    if not _importable(entry.module) or not all(_importable(lib) for lib in entry.needs):
        return False
    return entry.cuda is None or _cuda_visible(entry.cuda)


def available_backends() -> list[str]:
    """Backend names usable on this machine (libraries importable, GPU visible where needed)."""
    return [name for name in _REGISTRY if _available(name)]


def resolve_backend_name(name: str, precision: str | None = None) -> str:
    """``auto`` -> the best available backend that computes in ``precision`` (default fp32);
    other names are checked and returned (the backend itself refuses a precision it lacks).

    The CPU ``torch`` backend is never the best fp32 choice (``ort`` is faster), but it is the
    only CPU backend for bf16, so ``auto`` reaches it for bf16 when no GPU backend is usable.
    """
    if name == "auto":
        wanted = precision or "fp32"
        candidates = [c for c in (*AUTO_ORDER, "torch") if wanted in BACKEND_PRECISIONS[c]]
        for candidate in candidates:
            if _available(candidate):
                return candidate
        if wanted == "fp32":
            raise DnrtError("no backend is available: install onnxruntime (pip install onnxruntime)")
        raise DnrtError(
            f"no available backend computes in {wanted} (those that do: {', '.join(candidates) or 'none'})"
        )
    if name not in _REGISTRY:
        raise DnrtError(f"unknown backend {name!r} (expected one of {', '.join(BACKEND_NAMES)})")
    entry = _REGISTRY[name]
    if not _importable(entry.module):
        raise DnrtError(f"the {name} backend is not part of this dnrt build")
    missing = [lib for lib in entry.needs if not _importable(lib)]
    if missing:
        raise DnrtError(f"the {name} backend needs {', '.join(missing)}, which is not installed")
    if entry.cuda is not None and not _cuda_visible(entry.cuda):
        raise DnrtError(f"the {name} backend needs a CUDA GPU, and none is visible here")
    return name


def get_backend(
    name: str,
    bundle: Bundle,
    *,
    context: BackendContext | Mapping[str, Any] | None = None,
    **options: Any,
) -> Backend:
    """Construct (not yet activate) the backend called ``name`` for ``bundle``.

    ``context`` holds the facts of the job (:class:`BackendContext`, or a mapping of its
    fields); ``options`` are the backend's own (``workspace_mb`` for TensorRT, an unknown one is
    an error), and those named like context fields (``precision``, ``batch``, ...) override the
    context: an explicit backend option is the user's word.
    """
    if isinstance(context, BackendContext):
        job = context
    else:
        try:
            job = BackendContext().replace(**dict(context or {}))
        except TypeError as exc:
            raise DnrtError(f"unknown backend context: {exc}") from None
    fields = BackendContext.fields()
    job = job.replace(**{k: v for k, v in options.items() if k in fields})
    own = {k: v for k, v in options.items() if k not in fields}
    name = resolve_backend_name(name, job.precision)
    entry = _REGISTRY[name]
    module = importlib.import_module(entry.module)
    cls = getattr(module, entry.cls)
    try:
        return cls(bundle, job, **{**entry.options, **own})
    except TypeError as exc:
        raise DnrtError(f"the {name} backend does not take these options: {exc}") from None
