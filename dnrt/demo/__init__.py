"""The demo: the embedded model, and ``make demo`` (``python -m dnrt.demo``, in ``__main__.py``).

The model is a small official DN generator trained on synthetic H&E -> IHC pairs. Its weights
(``dnrt/data/demo_generator.safetensors``) and the record of how they were made
(``dnrt/data/demo_generator.json``: config, training command, seed, metrics, wall time,
machine) ship as package data. ``tools/train_demo.py`` (a source checkout's, not installed)
regenerates both; the record's ``command`` is the one that made them (the script was then
``dnrt.data.train_demo``).

Reading the config needs only the standard library; ``load_demo_generator`` and
``export_demo_bundle`` import torch when called.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dnrt.errors import DnrtError, first_line

__all__ = [
    "demo_config",
    "demo_info",
    "demo_info_path",
    "demo_weights_path",
    "export_demo_bundle",
    "load_demo_generator",
]

ARCHITECTURE = "official"
#: The folder holding the weights and the record (package data of dnrt.data).
_HERE = Path(__file__).resolve().parent.parent / "data"
_WEIGHTS = "demo_generator.safetensors"
_INFO = "demo_generator.json"
_RETRAIN = "python tools/train_demo.py --out dnrt/data/demo_generator.safetensors"


def demo_weights_path() -> Path:
    """Where the demo weights live inside the installed package."""
    return _HERE / _WEIGHTS


def demo_info_path() -> Path:
    return _HERE / _INFO


def demo_info() -> dict[str, Any]:
    """The training record: config, command, seed, metrics, wall time, machine."""
    path = demo_info_path()
    if not path.is_file():
        raise DnrtError(f"demo model record not found: {path} (regenerate it with `{_RETRAIN}`)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DnrtError(f"demo model record {path} is unreadable: {exc}") from None


def demo_config() -> dict[str, Any]:
    """The generator config of the demo model (for ``build_generator("official", config)``)."""
    return dict(demo_info()["config"])


def _weights_or_fail() -> Path:
    path = demo_weights_path()
    if not path.is_file():
        raise DnrtError(f"demo model weights not found: {path} (regenerate them with `{_RETRAIN}`)")
    return path


def load_demo_generator():
    """The demo generator as an ``nn.Module`` in eval mode, weights loaded strictly (imports torch)."""
    from safetensors.torch import load_file

    from dnrt.models.zoo import build_generator

    path = _weights_or_fail()
    module = build_generator(ARCHITECTURE, demo_config())
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise DnrtError(f"demo model weights {path} are unreadable: {exc}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DnrtError(f"demo model weights {path} do not match its config: {first_line(exc)}") from None
    return module.eval()


def export_demo_bundle(
    out: str | Path,
    tile: int = 512,
    margin: int = 16,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
):
    """Write a model bundle of the demo generator (what ``export-model`` would write for it).

    Returns the exporter's ``ExportResult``.
    """
    from dnrt.export import export_module

    module = load_demo_generator()
    config = demo_config()
    path = demo_weights_path()
    source = {
        "path": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "format": "safetensors",
        "key": None,
        "demo": True,
    }
    notes = ["embedded dnrt demo model: trained on synthetic H&E -> IHC pairs (tools/train_demo.py)"]
    log(f"demo model: architecture {ARCHITECTURE} {config}")
    return export_module(
        module,
        out,
        architecture=ARCHITECTURE,
        config=config,
        in_channels=int(config["in_channels"]),
        tile=tile,
        margin=margin,
        source=source,
        notes=notes,
        overwrite=overwrite,
        log=log,
    )
