"""One measured run in a fresh process: ``python -m dnrt.bench.child SPEC.json RESULT.json``.

The benchmark runs every mode in its own process so that each peak resident memory
(``getrusage``) and each peak GPU memory belongs to that mode alone. The spec is a JSON
object; ``task`` is ``translate`` (``dnrt.translate`` file to file, the whole command a user
runs), ``whole`` (the generator run once on the whole image with plain InstanceNorm, the
"global statistics" reference) or ``copy`` (decode + encode with no model: the I/O floor). A
``translate`` spec carries ``options``, the run's whole ``TranslateOptions`` in its JSON form
(``dnrt.bench.harness.measured_options``). The result JSON has ``ok`` and either the
measurements or ``error`` (one line).

Imports are kept to the minimum before the baseline memory is read, and the backend's
library is imported before the clock starts: the timed part is the work (bundle load,
session creation, reading, inference, writing), not the interpreter starting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any


def _rss_now_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return float("nan")


def _peak_rss_mb() -> float:
    from dnrt.runtime.api import peak_rss_mb

    return peak_rss_mb()


class GpuMemorySampler:
    """Peak GPU memory used by this process, sampled in a thread (best effort).

    NVML (``pynvml``, from nvidia-ml-py) per-process usage when importable, else
    ``nvidia-smi --query-compute-apps`` polled. Both count what ``nvidia-smi`` shows for the
    process: allocations plus the CUDA context, like the paper's Table S1 figures.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb: float | None = None
        self.method: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._query = self._nvml() or self._smi()

    def _nvml(self):  # type: ignore[no-untyped-def]
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("DNRT_GPU_INDEX", "0")))
        except Exception:
            return None
        pid = os.getpid()
        self.method = "nvml"

        def query() -> float | None:
            used = None
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    used = proc.usedGpuMemory / (1024 * 1024)
            return used

        return query

    def _smi(self):  # type: ignore[no-untyped-def]
        command = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        try:
            subprocess.run(command, capture_output=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        pid = str(os.getpid())
        self.method = "nvidia-smi"
        self.interval = max(self.interval, 0.2)

        def query() -> float | None:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == pid:
                    try:
                        return float(parts[1])
                    except ValueError:
                        return None
            return None

        return query

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        try:
            used = self._query()
        except Exception:
            return
        if used is not None:
            self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)

    def __enter__(self) -> GpuMemorySampler:
        if self._query is not None:
            self._thread = threading.Thread(target=self._loop, name="gpu-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._sample()
            self._stop.set()
            self._thread.join(timeout=5)


def _preimport(backend: str) -> None:
    """Import the backend's library before timing (its import is not the backend's work)."""
    try:
        if backend.startswith("ort"):
            import onnxruntime  # noqa: F401
        elif backend.startswith("torch"):
            import torch  # noqa: F401
        elif backend == "trt":
            import tensorrt  # noqa: F401
    except ImportError:
        pass  # the run itself reports the missing library as its error


def _gpu_stats(sampler: Any) -> dict[str, Any]:
    """The process's peak GPU memory (sampled) plus PyTorch's allocator peaks, where present."""
    gpu: dict[str, Any] = {}
    if getattr(sampler, "peak_mb", None) is not None:
        gpu = {"process_peak_mb": sampler.peak_mb, "method": sampler.method}
    gpu.update(_torch_gpu_stats())
    return gpu


def _torch_gpu_stats() -> dict[str, float]:
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_initialized():
            return {}
        return {
            "torch_max_allocated_mb": torch.cuda.max_memory_allocated() / (1024 * 1024),
            "torch_max_reserved_mb": torch.cuda.max_memory_reserved() / (1024 * 1024),
        }
    except Exception:
        return {}


def run_translate(spec: dict[str, Any]) -> dict[str, Any]:
    from dnrt.runtime.api import translate
    from dnrt.runtime.options import TranslateOptions

    # The whole TranslateOptions in its JSON form (dnrt.bench.harness.measured_options).
    options = TranslateOptions.from_dict(spec["options"])
    rss_before = _rss_now_mb()
    with GpuMemorySampler() if spec.get("gpu") else _Null() as sampler:
        start = time.perf_counter()
        report = translate(spec["input"], spec["output"], spec["model"], options, progress=False)
        wall = time.perf_counter() - start
    gpu = _gpu_stats(sampler)
    from dataclasses import asdict

    return {
        "ok": True,
        "wall_s": wall,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "gpu": gpu,
        "report": asdict(report),
    }


def run_whole(spec: dict[str, Any]) -> dict[str, Any]:
    """The generator once over the whole image, InstanceNorm with the image's own statistics."""
    import numpy as np

    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends import get_backend
    from dnrt.runtime.io import open_image, open_writer
    from dnrt.runtime.scheduler import graphs_for
    from dnrt.semantics import Mode, collect_flavour, from_network, reflect_index, to_network

    rss_before = _rss_now_mb()
    with GpuMemorySampler() if spec.get("gpu") else _Null() as sampler:
        start = time.perf_counter()
        bundle = load_bundle(spec["model"])
        multiple = bundle.manifest.input_multiple
        with open_image(spec["input"]) as source:
            h, w = source.height, source.width
            pixels = source.read_region(0, h, 0, w)
            # Reflect-pad bottom/right to the model's input multiple (every map even), crop after.
            hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
            if (hp, wp) != (h, w):
                pixels = pixels[reflect_index(np.arange(hp), h)][:, reflect_index(np.arange(wp), w)]
            tiles = np.ascontiguousarray(to_network(pixels).transpose(2, 0, 1)[None])
            del pixels
            backend = get_backend(
                spec.get("backend", "auto"),
                bundle,
                context={"threads": spec.get("threads")},
                **(spec.get("backend_options") or {}),
            )
            backend.expect_graphs(graphs_for(Mode.IN))  # IN: no dense session to build
            with backend:
                image, _, _ = backend.collect(tiles, collect_flavour(Mode.IN))
            del tiles
            out = from_network(image[0, :, :h, :w].transpose(1, 2, 0))
            del image
            with open_writer(  # closes (commits) on success, aborts on any exception
                spec["output"],
                h,
                w,
                out.shape[2],
                compression=spec.get("compression", "zlib"),
                source=source,
                overwrite=True,
            ) as writer:
                writer.write_band(out, copy=False)
        wall = time.perf_counter() - start
    gpu = _gpu_stats(sampler)
    return {
        "ok": True,
        "wall_s": wall,
        "rss_before_mb": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
        "gpu": gpu,
        "backend": backend.describe(),
    }


def run_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """Plain decode + encode: the input read in bands of ``band`` rows with dnrt's reader and
    written with the runtime's writer settings, no model (the I/O floor of a translation)."""
    from dnrt.runtime.io import open_image, open_writer

    rss_before = _rss_now_mb()
    band = int(spec.get("band", 512))
    start = time.perf_counter()
    with open_image(spec["input"]) as source:
        h, w = source.height, source.width
        with open_writer(  # closes (commits) on success, aborts on any exception
            spec["output"],
            h,
            w,
            source.channels,
            compression=spec.get("compression", "zlib"),
            source=source,
            overwrite=True,
        ) as writer:
            for y0 in range(0, h, band):
                writer.write_band(source.read_region(y0, min(y0 + band, h), 0, w), copy=False)
    wall = time.perf_counter() - start
    return {"ok": True, "wall_s": wall, "rss_before_mb": rss_before, "peak_rss_mb": _peak_rss_mb(), "gpu": {}}


class _Null:
    peak_mb = None

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    _preimport(spec.get("backend", ""))
    try:
        if spec["task"] == "translate":
            result = run_translate(spec)
        elif spec["task"] == "whole":
            result = run_whole(spec)
        elif spec["task"] == "copy":
            result = run_copy(spec)
        else:
            raise ValueError(f"unknown task {spec['task']!r}")
    except MemoryError:
        result = {"ok": False, "error": "out of memory", "peak_rss_mb": _peak_rss_mb()}
    except Exception as exc:  # reported to the parent as one line; the parent decides what it means
        from dnrt.errorline import debugging  # click: only on this path
        from dnrt.errors import first_line

        if debugging():
            raise
        result = {
            "ok": False,
            "error": first_line(exc, empty=type(exc).__name__),
            "error_type": type(exc).__name__,
            "peak_rss_mb": _peak_rss_mb(),
        }
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
