"""The PyTorch side of dnrt: checkpoint import and ONNX export of a bundle.

The names below resolve on first use (PEP 562), so the package itself imports nothing heavy:
``dnrt.export.graph_edit`` (onnx only) imports without torch, and ``dnrt.export.export_module``
imports torch and onnx when it is first looked up. ``import dnrt`` alone imports neither.
``convert`` and ``DnrtModel`` live in :mod:`dnrt.models.normswap` (shared with the PyTorch
backend) and are re-exported here, where users have imported them from.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dnrt.export.api import ExportResult, export_checkpoint, export_module
    from dnrt.models.normswap import DnrtModel, convert

#: Public name -> the module that defines it.
_LAZY = {
    "ExportResult": "dnrt.export.api",
    "export_checkpoint": "dnrt.export.api",
    "export_module": "dnrt.export.api",
    "DnrtModel": "dnrt.models.normswap",
    "convert": "dnrt.models.normswap",
}

__all__ = ["DnrtModel", "ExportResult", "convert", "export_checkpoint", "export_module"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'dnrt.export' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
