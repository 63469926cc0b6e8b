"""The on-disk engine cache: where engines live, and the key that says when one may be reused.

An engine is valid only for the exact graph, GPU model, compute capability, TensorRT version,
precision and shape profile it was built for; the key holds all of them, plus dnrt's own
build recipe version (bumped when the way engines are built changes, e.g. fp16 I/O). The key
hashes the bundle's graph file as it is, so a cache hit needs neither ``onnx`` nor a parse.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

#: Bump when build_engine makes different engines from the same inputs.
RECIPE = "2"


def cache_dir() -> Path:
    root = (
        os.environ.get("DNRT_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dnrt"
    )
    path = Path(root) / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in text)


def engine_key(
    graph: bytes, gpu: str, capability: str, trt_version: str, precision: str, profile_key: str
) -> str:
    digest = hashlib.sha256(graph).hexdigest()[:16]
    return f"{digest}_{_safe(gpu)}_sm{capability}_trt{_safe(trt_version)}_{precision}_{profile_key}_r{RECIPE}"


def timing_cache_path(gpu: str) -> Path:
    return cache_dir() / f"timing_{_safe(gpu)}.cache"


def cached_engine(which: str, key: str, build: Callable[[], bytes]) -> tuple[bytes, bool]:
    """The engine for ``key``: from the cache, or ``build()`` and stored (atomically: a crash
    half-way leaves no truncated engine). Returns ``(plan, built)``."""
    path = cache_dir() / f"{which}_{key}.engine"
    if path.is_file():
        return path.read_bytes(), False
    data = build()
    from dnrt.atomic import write_file_atomic

    write_file_atomic(path, data)
    return data, True
