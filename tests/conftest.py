"""Shared fixtures: small exported bundles, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The local Ray clusters the tests start (and the drivers they spawn) stay on loopback: Ray
# otherwise binds and dials the machine's network address (dnrt.batch.cluster.LOOPBACK_ENV).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def small_bundle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny official-architecture generator (8 features, 2 residual blocks), tile 32 + margin 8."""
    pytest.importorskip("torch")
    import torch

    from dnrt.export import export_module
    from dnrt.models.zoo import build_generator

    torch.manual_seed(0)
    config = {"in_channels": 3, "out_channels": 3, "features": 8, "residuals": 2, "affine": False}
    module = build_generator("official", config)
    out = tmp_path_factory.mktemp("bundles") / "small.dnrt"
    export_module(module, out, architecture="official", config=config, tile=32, margin=8, log=lambda _: None)
    return out
