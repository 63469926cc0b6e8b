"""The runtime issue's resource targets, measured as ratios within one run.

- :func:`memory_scaling`: peak host memory of DN streaming on square synthetic slides of
  growing size (target: under 700 MB at 16000 x 16000 with a tiny model, and not growing
  with the image's area);
- :func:`io_overhead`: a translation with a trivially small model against plain decode +
  encode of the same TIFF (target: within 1.5x).

Each run is a fresh process (``dnrt.bench.child``), like ``dnrt bench``'s. The scripts
``benchmarks/memory.py`` and ``benchmarks/io_overhead.py`` are their command lines.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dnrt.atomic import commit, create_temp, remove_quietly, remove_stale_temps
from dnrt.bench.harness import measured_options, run_child
from dnrt.bench.machine import load_average, machine_info, versions
from dnrt.errors import DnrtError

Log = Callable[[str], None]

TARGET_PEAK_RSS_MB = 700.0
TARGET_IO_RATIO = 1.5


def synthetic_slide(directory: Path, seed: int, height: int, width: int, log: Log) -> Path:
    """The H&E rendering of a synthetic slide, written once into ``directory`` (tiled BigTIFF)."""
    from dnrt.data.synthetic import write_slide

    path = directory / f"synthetic_s{seed}_{height}x{width}_he.tif"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    log(f"generating a synthetic slide {height} x {width} in {directory}")
    remove_stale_temps(path)
    tmp = create_temp(path)
    start = time.perf_counter()
    try:
        write_slide(tmp, seed, height, width, "he")
        commit(tmp, path, overwrite=True)
    finally:
        remove_quietly(tmp)
    log(f"  written in {time.perf_counter() - start:.0f} s")
    return path


def _spec(task: str, model: Path | None, image: Path, output: Path, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"task": task, "input": str(image), "output": str(output), "compression": "zlib"}
    if model is not None:
        spec["model"] = str(model)
    spec.update(extra)
    return spec


def _options(mode: str, schedule: str, backend: str, threads: int | None) -> dict[str, Any]:
    """A translate spec's options: the runtime's defaults but these."""
    from dnrt.runtime.options import TranslateOptions

    return measured_options(TranslateOptions(mode=mode, schedule=schedule, backend=backend, threads=threads))


def _work(workdir: Path | None) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="dnrt-bench-")), True
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, False


def memory_scaling(
    model: Path,
    sizes: Sequence[tuple[int, int]],
    *,
    cache_dir: Path,
    mode: str = "dn",
    schedule: str = "streaming",
    backend: str = "ort",
    threads: int | None = None,
    workdir: Path | None = None,
    timeout: float | None = None,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Translate a synthetic slide of each ``(height, width)`` in ``sizes``; peak RSS and time of each.

    The runtime holds row bands (a few tile rows of the full width), so its memory should
    follow the width and not the area: a wide, short slide (16000 wide, 2048 high) should
    need what a 16000 x 16000 one needs, at an eighth of the time.
    """
    from dnrt.bundle import load_bundle

    manifest = load_bundle(model).manifest
    work, own = _work(workdir)
    rows: list[dict[str, Any]] = []
    try:
        for h, w in sizes:
            image = synthetic_slide(cache_dir, 0, h, w, log)
            output = work / f"out_{h}x{w}.tif"
            la = load_average()
            spec = _spec(
                "translate",
                model,
                image,
                output,
                backend=backend,
                options=_options(mode, schedule, backend, threads),
            )
            res = run_child(spec, work, timeout)
            if not res.get("ok"):
                rows.append(
                    {
                        "height": h,
                        "width": w,
                        "error": res.get("error"),
                        "peak_rss_mb": res.get("peak_rss_mb"),
                    }
                )
                log(f"{h} x {w}: failed: {res.get('error')}")
                continue
            report = res["report"]
            rows.append(
                {
                    "height": h,
                    "width": w,
                    "megapixels": h * w / 1e6,
                    "tiles": report["tiles"],
                    "wall_s": res["wall_s"],
                    "peak_rss_mb": res["peak_rss_mb"],
                    "rss_before_mb": res["rss_before_mb"],
                    "input_bytes": image.stat().st_size,
                    "output_bytes": output.stat().st_size if output.exists() else None,
                    "backend": report["backend"],
                    "load_1min": la[0] if la else None,
                }
            )
            log(
                f"{h} x {w}: {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB "
                f"(before the run {res['rss_before_mb']:.0f} MB)"
            )
            if output.exists():
                output.unlink()  # a 16k output is large; only its size is kept
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    ok = [r for r in rows if "error" not in r]
    result: dict[str, Any] = {
        "kind": "memory-scaling",
        "model": {
            "bundle": str(model),
            "architecture": manifest.architecture,
            "config": manifest.config,
            "tile": manifest.tile,
            "margin": manifest.margin,
        },
        "mode": mode,
        "schedule": schedule,
        "backend": backend,
        "machine": machine_info(),
        "versions": versions(),
        "runs": rows,
    }
    if ok:
        largest = max(ok, key=lambda r: r["megapixels"])
        smallest = min(ok, key=lambda r: r["megapixels"])
        big = largest["height"] >= 16000 and largest["width"] >= 16000
        result["summary"] = {
            "largest": f"{largest['height']}x{largest['width']}",
            "peak_rss_mb_largest": largest["peak_rss_mb"],
            "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
            "met": largest["peak_rss_mb"] < TARGET_PEAK_RSS_MB if big else None,
            "area_ratio": largest["megapixels"] / smallest["megapixels"],
            "peak_rss_ratio": largest["peak_rss_mb"] / smallest["peak_rss_mb"],
            "max_peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        }
    return result


def io_overhead(
    image: Path,
    model: Path,
    *,
    modes: Sequence[tuple[str, str]] = (("in", "streaming"), ("dn", "streaming")),
    repeat: int = 3,
    backend: str = "ort",
    threads: int | None = None,
    workdir: Path | None = None,
    timeout: float | None = None,
    log: Log = lambda _: None,
) -> dict[str, Any]:
    """Best-of-``repeat`` wall times of plain decode+encode and of translations of ``image``."""
    from dnrt.bundle import load_bundle
    from dnrt.runtime.io import open_image

    manifest = load_bundle(model).manifest
    with open_image(image) as src:
        h, w = src.height, src.width
    work, own = _work(workdir)
    names = ["copy"] + [f"{m}-{s}" for m, s in modes]
    times: dict[str, list[float]] = {n: [] for n in names}
    rss: dict[str, float] = {}
    loads: list[float] = []
    try:
        for r in range(repeat):
            for name in names:
                la = load_average()
                if la:
                    loads.append(la[0])
                output = work / f"out_{name}.tif"
                if name == "copy":
                    spec = _spec("copy", None, image, output, band=manifest.tile)
                else:
                    mode, schedule = name.split("-", 1)
                    spec = _spec(
                        "translate",
                        model,
                        image,
                        output,
                        backend=backend,
                        options=_options(mode, schedule, backend, threads),
                    )
                res = run_child(spec, work, timeout)
                if not res.get("ok"):
                    raise DnrtError(f"{name} failed: {res.get('error')}")
                times[name].append(res["wall_s"])
                rss[name] = max(rss.get(name, 0.0), res["peak_rss_mb"])
                log(
                    f"[round {r + 1}/{repeat}] {name:<14} {res['wall_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB"
                )
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    best = {n: min(v) for n, v in times.items()}
    ratios = {n: best[n] / best["copy"] for n in names if n != "copy"}
    return {
        "kind": "io-overhead",
        "image": {"path": str(image), "height": h, "width": w, "megapixels": h * w / 1e6},
        "model": {
            "bundle": str(model),
            "architecture": manifest.architecture,
            "layers": len(manifest.layers),
            "tile": manifest.tile,
            "margin": manifest.margin,
        },
        "backend": backend,
        "machine": machine_info(),
        "versions": versions(),
        "load_average_during": loads,
        "wall_s_runs": times,
        "wall_s_best": best,
        "peak_rss_mb": rss,
        "ratio_to_copy": ratios,
        "target": TARGET_IO_RATIO,
        "met": {n: v <= TARGET_IO_RATIO for n, v in ratios.items()},
    }
