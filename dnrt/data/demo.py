"""Where the demo model's functions were imported from before they moved to :mod:`dnrt.demo`."""

from __future__ import annotations

from dnrt.demo import (
    demo_config,
    demo_info,
    demo_info_path,
    demo_weights_path,
    export_demo_bundle,
    load_demo_generator,
)

__all__ = [
    "demo_config",
    "demo_info",
    "demo_info_path",
    "demo_weights_path",
    "export_demo_bundle",
    "load_demo_generator",
]
