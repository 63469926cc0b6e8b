"""The PyTorch side of dnrt: generator zoo, checkpoint import, norm swap, ONNX export.

Importing this package imports torch; ``import dnrt`` alone does not.
"""

from __future__ import annotations

from dnrt.export.api import ExportResult, export_checkpoint, export_module
from dnrt.export.normswap import DnrtModel, convert

__all__ = ["DnrtModel", "ExportResult", "convert", "export_checkpoint", "export_module"]
