"""dnrt: Dense Normalization runtime for ultra-high-resolution image translation.

``import dnrt`` stays light on purpose: torch, onnx, onnxruntime and TensorRT
are imported only by the functions that need them.
"""

from __future__ import annotations

from typing import Any

from dnrt.errors import DnrtError
from dnrt.semantics import Mode

__version__ = "0.1.0"

__all__ = ["DnrtError", "Mode", "TranslateOptions", "__version__", "translate", "Translator"]


def __getattr__(name: str) -> Any:
    # The runtime pulls in onnxruntime; resolve these names only when asked for.
    if name in ("translate", "Translator"):
        from dnrt.runtime import api

        return getattr(api, name)
    if name == "TranslateOptions":
        from dnrt.runtime.options import TranslateOptions

        return TranslateOptions
    raise AttributeError(f"module 'dnrt' has no attribute {name!r}")
