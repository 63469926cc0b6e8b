"""Models the benchmarks export on demand (PyTorch needed, imported when called).

- :func:`export_trivial_bundle`: a 1x1 convolution, one InstanceNorm (-> DenseNorm) and tanh:
  the smallest model with a norm layer, so a translation's time is its I/O and scheduling.
- :func:`export_random_official`: the official DN generator with random weights at any width
  and depth (speed and memory do not depend on the weights; fidelity numbers do: use the
  demo model or a trained checkpoint for those).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The paper's generator (Table S1): 64 features, 9 residual blocks.
OFFICIAL_PAPER_CONFIG = {"in_channels": 3, "out_channels": 3, "features": 64, "residuals": 9, "affine": False}
#: The demo model's size (dnrt.data.train_demo): 16 features, 4 blocks.
OFFICIAL_DEMO_SIZE = {"in_channels": 3, "out_channels": 3, "features": 16, "residuals": 4, "affine": False}
#: The tests' small generator: 8 features, 2 blocks.
OFFICIAL_TINY = {"in_channels": 3, "out_channels": 3, "features": 8, "residuals": 2, "affine": False}


def _trivial_module() -> Any:
    import torch
    from torch import nn

    class TrivialGenerator(nn.Module):
        """1x1 conv -> InstanceNorm -> tanh: one norm layer and almost no arithmetic."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, kernel_size=1)
            self.norm = nn.InstanceNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.norm(self.conv(x)))

    return TrivialGenerator()


def _export(
    module: Any, out: Path, architecture: str, config: dict[str, Any], tile: int, margin: int, overwrite: bool
) -> Path:
    from dnrt.export import export_module

    out = Path(out)
    if (out / "manifest.json").is_file() and not overwrite:
        return out
    export_module(
        module,
        out,
        architecture=architecture,
        config=config,
        tile=tile,
        margin=margin,
        overwrite=overwrite,
        log=lambda _: None,
    )
    return out


def export_trivial_bundle(
    out: str | Path, tile: int = 512, margin: int = 16, overwrite: bool = False
) -> Path:
    """The trivial model's bundle at ``out`` (reused when it exists and ``overwrite`` is False)."""
    import torch

    torch.manual_seed(0)
    return _export(_trivial_module().eval(), Path(out), "custom", {}, tile, margin, overwrite)


def export_random_official(
    out: str | Path,
    config: dict[str, Any] | None = None,
    tile: int = 512,
    margin: int = 16,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """An official-architecture generator with seeded random weights, exported to ``out``."""
    import torch

    from dnrt.models.zoo import build_generator

    config = dict(config or OFFICIAL_TINY)
    torch.manual_seed(seed)
    return _export(
        build_generator("official", config), Path(out), "official", config, tile, margin, overwrite
    )
