"""Reading a slide through OpenSlide vs dnrt's tifffile reader, on the same SVS-like file.

    .venv/bin/python benchmarks/slide_read.py                        # 6144 x 4096 JPEG SVS-like
    .venv/bin/python benchmarks/slide_read.py --size 8192x8192 --repeat 5 --json out.json

The file is an Aperio-style SVS written with tifffile (256 px JPEG tiles, quality 90, three
levels). Each reader sweeps the whole level-0 image twice, as the runtime reads it:

- ``bands``: the full-width row bands a 512 px tile plan with a 16 px margin reads (what
  ``trt-translate`` asks its source for, one band per tile row);
- ``tiles``: every (512 + 2 x 16) px tile region of the same plan, one read each.

Every sweep opens a fresh source (no decoded tiles carried over); the rounds interleave the two
readers and the best time of each is kept, so both see the same machine load. Target (issue 17):
OpenSlide within 1.2x of tifffile. The pixels of the two readers are compared too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dnrt.bench.harness import write_json
from dnrt.bench.machine import describe_machine, load_average, machine_info, versions

TARGET_RATIO = 1.2
TILE, MARGIN = 512, 16


def write_slide(path: Path, width: int, height: int, quality: int) -> None:
    import tifffile

    from dnrt.data.synthetic import render_region

    he = render_region(0, height, width, 0, height, 0, width, stain="he")
    levels = [he]
    for _ in range(2):
        prev = levels[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        levels.append(
            prev[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        )
    desc = (
        f"Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] (256x256) "
        f"JPEG/RGB Q={quality}|AppMag = 40|MPP = 0.25"
    )
    args: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": quality},
        "metadata": None,
    }
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(256, 256), description=desc, **args)
        tw.write(levels[-1][:256, :256], description="Aperio thumbnail", **args)
        for level in levels[1:]:
            tw.write(level, tile=(256, 256), description="Aperio level", **args)


def regions(height: int, width: int, kind: str) -> list[tuple[int, int, int, int]]:
    """The regions the runtime reads (``bands``) or one per tile with its margin (``tiles``)."""
    from dnrt.runtime.plan import TilePlan

    plan = TilePlan.create(height, width, TILE, MARGIN, [1])
    out = []
    for row in range(plan.rows):
        y0, y1 = plan.band_extent(row)
        if kind == "bands":
            out.append((y0, y1, 0, width))
            continue
        for col in range(plan.cols):
            x0 = max(0, col * TILE - MARGIN)
            x1 = min(width, (col + 1) * TILE + MARGIN)
            out.append((y0, y1, x0, x1))
    return out


def sweep(path: Path, reader: str, spans: list[tuple[int, int, int, int]]) -> float:
    from dnrt.runtime.io import open_image

    start = time.perf_counter()
    with open_image(path, reader=reader) as source:
        for y0, y1, x0, x1 in spans:
            source.read_region(y0, y1, x0, x1)
    return time.perf_counter() - start


def compare_pixels(path: Path) -> dict[str, float]:
    from dnrt.runtime.io import open_image

    with open_image(path, reader="tifffile") as a, open_image(path, reader="openslide") as b:
        diffs = []
        for y0, y1, x0, x1 in regions(a.height, a.width, "bands"):
            d = np.abs(a.read_region(y0, y1, x0, x1).astype(np.int16) - b.read_region(y0, y1, x0, x1))
            diffs.append((int(d.max()), float(d.mean())))
    return {"max_abs_diff": max(m for m, _ in diffs), "mean_abs_diff": statistics.fmean(m for _, m in diffs)}


def per_tile_costs(path: Path, rounds: int = 50) -> dict[str, float]:
    """Where the time goes, per 256 px tile: tifffile's decode of one stored tile, and
    OpenSlide's read_region of one tile-aligned region already in its tile cache (no decode:
    what remains is OpenSlide's painting of the region and the RGBA hand-over)."""
    import openslide
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tif.filehandle.seek(page.dataoffsets[0])
        data = tif.filehandle.read(page.databytecounts[0])
        start = time.perf_counter()
        for _ in range(rounds):
            page.decode(data, 0)
        decode = (time.perf_counter() - start) / rounds
    with openslide.OpenSlide(str(path)) as slide:
        slide.read_region((0, 0), 0, (256, 256))
        start = time.perf_counter()
        for _ in range(rounds):
            slide.read_region((0, 0), 0, (256, 256))
        cached = (time.perf_counter() - start) / rounds
    return {"tifffile_decode_ms": decode * 1e3, "openslide_cached_read_ms": cached * 1e3}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# OpenSlide vs tifffile reader: {result['image']['width']} x {result['image']['height']} SVS-like, "
        f"{describe_machine(result['machine'])}",
        "",
        f"- started: {result['started']}",
        f"- command: `{result['command']}`",
        f"- platform: {result['machine']['platform']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- file: {result['image']['layout']}",
        f"- load average before {result['load_before']}, after {result['load_after']}",
        f"- pixels: max |tifffile - OpenSlide| = {result['pixels']['max_abs_diff']}, "
        f"mean {result['pixels']['mean_abs_diff']:.4f}",
        f"- per 256 px tile: tifffile decodes one in {result['per_tile']['tifffile_decode_ms']:.2f} ms; "
        f"OpenSlide's read_region of one already in its cache takes "
        f"{result['per_tile']['openslide_cached_read_ms']:.2f} ms",
        "",
        "| sweep | regions | tifffile best s | OpenSlide best s | ratio (OpenSlide / tifffile) | target |",
        "|---|---|---|---|---|---|",
    ]
    for kind, row in result["sweeps"].items():
        lines.append(
            f"| {kind} | {row['regions']} | {row['tifffile_best_s']:.3f} | {row['openslide_best_s']:.3f} | "
            f"{row['ratio']:.2f} | {'met' if row['ratio'] <= TARGET_RATIO else 'NOT met'} (<= {TARGET_RATIO}) |"
        )
    lines += ["", f"Best of {result['repeat']} interleaved rounds; every sweep opens a fresh source.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="6144x4096", help="WIDTHxHEIGHT of level 0")
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "dnrt" / "bench")
    ap.add_argument("--json", type=Path, help="write the result here (and a .md beside it)")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"slide-read-{width}x{height}-q{args.quality}.svs"
    if not path.exists():
        write_slide(path, width, height, args.quality)
    result: dict[str, Any] = {
        "kind": "slide-read",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["benchmarks/slide_read.py", *(argv if argv is not None else sys.argv[1:])]),
        "image": {
            "width": width,
            "height": height,
            "layout": f"Aperio SVS-like, 256 px JPEG tiles (quality {args.quality}, RGB), 3 levels, "
            f"{path.stat().st_size / 1e6:.1f} MB",
        },
        "machine": machine_info(),
        "versions": {**versions(), **_openslide_versions()},
        "repeat": args.repeat,
        "load_before": load_average(),
        "pixels": compare_pixels(path),
        "per_tile": per_tile_costs(path),
        "sweeps": {},
    }
    for kind in ("bands", "tiles"):
        spans = regions(height, width, kind)
        runs: dict[str, list[float]] = {"tifffile": [], "openslide": []}
        sweep(path, "tifffile", spans)  # warm the page cache once, untimed
        for _ in range(args.repeat):
            for reader in ("tifffile", "openslide"):
                runs[reader].append(sweep(path, reader, spans))
        best = {k: min(v) for k, v in runs.items()}
        result["sweeps"][kind] = {
            "regions": len(spans),
            "runs_s": runs,
            "tifffile_best_s": best["tifffile"],
            "openslide_best_s": best["openslide"],
            "ratio": best["openslide"] / best["tifffile"],
            "target_met": best["openslide"] / best["tifffile"] <= TARGET_RATIO,
        }
    result["load_after"] = load_average()
    summary = {k: round(v["ratio"], 3) for k, v in result["sweeps"].items()}
    print(
        json.dumps(
            {
                "ratio_openslide_to_tifffile": summary,
                "pixels": result["pixels"],
                "per_tile": result["per_tile"],
            },
            indent=2,
        )
    )
    if args.json:
        write_json(result, args.json)
        args.json.with_suffix(".md").write_text(markdown(result))
    return 0


def _openslide_versions() -> dict[str, str]:
    try:
        import openslide
    except (ImportError, OSError):
        return {}
    return {"openslide-python": openslide.__version__, "openslide": openslide.__library_version__}


if __name__ == "__main__":
    sys.exit(main())
