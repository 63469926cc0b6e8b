"""Background skipping: ``--background skip`` vs ``translate`` on a slide with a known tissue fraction.

    .venv/bin/python benchmarks/background.py                    # demo model, 1536 x 1800 slide, f ~ 0.4
    .venv/bin/python benchmarks/background.py --model BUNDLE --tile 512 --json r.json --markdown r.md

The slide is the synthetic H&E renderer's slide (``dnrt.data.synthetic``, seed 0, scanner-like:
sensor noise, glass white-balanced to a flat 255, JPEG tiles) of ``--tissue-size`` placed at
the left of a wider canvas of the same glass, so its tissue fraction ``f`` (pixels the renderer
draws as tissue, i.e. differing from the glass colour by more than 6 grey levels before the
scanner) comes out near 0.4. It carries 0.5 um/px, as a 20x scan does.

Both runs translate it file to file with ``dnrt.translate`` in this process (DN, streaming, the
runtime's defaults otherwise), in interleaved rounds (``--repeat``), best wall time of each kept.
Targets (issue 17): skip's wall time at most ``(f + 0.15)`` times translate's, and skip's output
identical to translate's, byte for byte, on every tile that runs the network (tiles read from
the tissue mask PNG the skip run writes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from dnrt.atomic import commit, create_temp, remove_quietly, remove_stale_temps
from dnrt.bench.harness import demo_bundle, write_json
from dnrt.bench.machine import describe_machine, machine_info, versions
from dnrt.data.synthetic import GLASS_RGB, MICRONS_PER_PIXEL, parse_scanner, parse_size, render_region

#: Pixels the renderer draws this far from the glass colour are tissue (as ``sample_pairs`` counts).
TISSUE_DELTA = 6


def write_benchmark_slide(path: Path, tissue: tuple[int, int], width: int, scanner_name: str) -> float:
    """The rendered slide of size ``tissue`` on a glass canvas ``width`` wide; returns its tissue fraction."""
    import tifffile

    scanner = parse_scanner(scanner_name)
    th, tw = tissue
    glass = np.array(GLASS_RGB, np.uint8)
    band = 512
    tissue_pixels = 0

    def bands():
        nonlocal tissue_pixels
        for y0 in range(0, th, band):
            y1 = min(y0 + band, th)
            canvas = np.empty((y1 - y0, width, 3), np.uint8)
            canvas[:] = glass
            drawn = render_region(0, th, tw, y0, y1, 0, tw, "he")
            tissue_pixels += int((np.abs(drawn.astype(np.int16) - glass).max(axis=-1) > TISSUE_DELTA).sum())
            canvas[:, :tw] = drawn
            yield scanner.apply(canvas, 0, y0, 0, noisy=True)

    px_per_cm = 1e4 / MICRONS_PER_PIXEL
    compression = {"compression": "jpeg", "compressionargs": {"level": scanner.jpeg}} if scanner.jpeg else {}
    pixels = np.concatenate(list(bands()))  # a benchmark-sized slide: held whole while written
    remove_stale_temps(path)
    tmp = create_temp(path)
    try:
        tifffile.imwrite(
            tmp,
            pixels,
            bigtiff=True,
            photometric="rgb",
            tile=(512, 512),
            resolution=(px_per_cm, px_per_cm),
            resolutionunit="CENTIMETER",
            **(compression or {"compression": "zlib"}),
        )
        commit(tmp, path, overwrite=True)
    finally:
        remove_quietly(tmp)
    return tissue_pixels / (th * width)


def translated_tiles(mask_png: Path, tile: int, block: int, grid: tuple[int, int]) -> np.ndarray:
    """``[R, Q]``: tiles the skip run translated (any mask pixel in them other than 0)."""
    from PIL import Image

    png = np.asarray(Image.open(mask_png))
    k = tile // block
    rows, cols = grid
    out = np.zeros(grid, bool)
    for r in range(rows):
        for q in range(cols):
            out[r, q] = bool((png[r * k : (r + 1) * k, q * k : (q + 1) * k] != 0).any())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model bundle [default: the embedded demo model]")
    ap.add_argument("--tissue-size", default="1536x1536", help="HEIGHTxWIDTH of the rendered slide")
    ap.add_argument("--width", type=int, default=1800, help="canvas width (glass added on the right)")
    ap.add_argument("--scanner", default="scanner", help="synthetic scanner preset (default scanner)")
    ap.add_argument("--tile", type=int, default=64, help="tile size (default 64: the 24 x 29 grid of a 12k x 14k px "
                    "slide at 512, a small biopsy's; what the saving depends on is the tissue's shape in tiles)")  # fmt: skip
    ap.add_argument("--mode", default="dn")
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dnrt" / "bench")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731

    import dnrt
    from dnrt.runtime.tissue import mask_block

    model = args.model or demo_bundle(args.cache_dir, log)
    th, tw = parse_size(args.tissue_size)
    work = args.cache_dir / "background"
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"slide_{th}x{tw}_w{args.width}_{args.scanner}.tif"
    log(f"rendering {slide.name}")
    fraction = write_benchmark_slide(slide, (th, tw), args.width, args.scanner)
    log(f"tissue fraction f = {fraction:.3f}")
    before = machine_info()
    runs: dict[str, list[dict]] = {"translate": [], "skip": []}
    outputs = {name: work / f"out-{name}.tif" for name in runs}
    mask = work / "out-skip-mask.png"
    options = {"mode": args.mode, "backend": args.backend, "threads": args.threads, "tile": args.tile}
    for round_ in range(args.repeat):
        for name in ("translate", "skip"):
            extra = {"tissue_mask": mask} if name == "skip" else {}
            start = time.perf_counter()
            report = dnrt.translate(
                slide,
                outputs[name],
                model,
                background=name,
                overwrite=True,
                progress=False,
                **options,
                **extra,
            )
            wall = time.perf_counter() - start
            log(
                f"round {round_ + 1}: {name} {wall:.1f} s ({report.tiles_skipped} of {report.tiles} tiles skipped)"
            )
            runs[name].append({"wall_s": round(wall, 3), "report": json.loads(report.to_json())})
    best = {name: min(r["wall_s"] for r in rs) for name, rs in runs.items()}
    ratio = best["skip"] / best["translate"]
    limit = fraction + 0.15

    # Identity on every tile the skip run translated.
    import tifffile

    skip_report = runs["skip"][-1]["report"]
    a, b = tifffile.imread(outputs["skip"]), tifffile.imread(outputs["translate"])
    h, w = a.shape[:2]
    t = args.tile
    grid = (skip_report["rows"], skip_report["cols"])
    tiles = translated_tiles(mask, t, mask_block(t, h, w), grid)
    differing, background_error = 0, []
    for r in range(grid[0]):
        for q in range(grid[1]):
            box = (slice(r * t, r * t + t), slice(q * t, q * t + t))
            if tiles[r, q]:
                differing += int(not np.array_equal(a[box], b[box]))
            else:
                background_error.append(float(np.abs(a[box].astype(np.int16) - b[box]).mean()))
    identical = differing == 0
    result = {
        "benchmark": "background skipping (issue 17)",
        "command": " ".join(["benchmarks/background.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": before,
        "machine_description": describe_machine(before),
        "load_average_after": machine_info()["load_average"],
        "versions": versions(),
        "slide": {"path": slide.name, "height": h, "width": w, "scanner": args.scanner, "tissue_fraction": round(fraction, 4)},
        "options": {k: v for k, v in options.items() if v is not None},
        "runs": runs,
        "best_wall_s": best,
        "ratio_skip_to_translate": round(ratio, 4),
        "tiles": skip_report["tiles"],
        "tiles_skipped": skip_report["tiles_skipped"],
        "tissue_fraction_detected": skip_report["tissue_fraction"],
        "background_fill": skip_report["background_fill"],
        "tissue_tiles_identical": identical,
        "tissue_tiles_differing": differing,
        "skipped_tiles_mean_abs_difference": round(float(np.mean(background_error)), 3) if background_error else None,
        "skipped_tiles_worst_mean_abs_difference": round(max(background_error), 3) if background_error else None,
        "targets": [
            {"target": "skip wall <= (f + 0.15) x translate wall", "limit": round(limit, 4), "measured": round(ratio, 4),
             "met": ratio <= limit},
            {"target": "identical to translate on every translated tile", "measured": f"{differing} differ", "met": identical},
        ],
    }  # fmt: skip
    print(json.dumps({k: result[k] for k in ("best_wall_s", "ratio_skip_to_translate", "targets")}, indent=2))
    if args.json:
        write_json(result, args.json)
    if args.markdown:
        args.markdown.write_text(markdown(result))
    return 0


def markdown(r: dict) -> str:
    s = r["slide"]
    lines = [
        "# Background skipping",
        "",
        f"`{r['command']}` on {r['machine_description']} (load average before "
        f"{r['machine']['load_average']}, after {r['load_average_after']}).",
        "",
        f"Slide: {s['height']} x {s['width']} px synthetic H&E ({s['scanner']}), tissue fraction "
        f"f = {s['tissue_fraction']:.3f} (detected: {r['tissue_fraction_detected']:.3f}); "
        f"{r['tiles_skipped']} of {r['tiles']} tiles skipped; options {r['options']}.",
        "",
        "| run | best wall s | all rounds |",
        "|---|---|---|",
    ]
    for name, runs in r["runs"].items():
        lines.append(
            f"| {name} | {r['best_wall_s'][name]:.2f} | {', '.join(str(x['wall_s']) for x in runs)} |"
        )
    lines += ["", "| target | limit | measured | met |", "|---|---|---|---|"]
    for t in r["targets"]:
        lines.append(
            f"| {t['target']} | {t.get('limit', '')} | {t['measured']} | {'yes' if t['met'] else 'NO'} |"
        )
    lines += [
        "",
        f"Skipped tiles against translate's rendering of the same glass: mean absolute difference "
        f"{r['skipped_tiles_mean_abs_difference']} grey levels (worst tile {r['skipped_tiles_worst_mean_abs_difference']}); "
        f"fill {r['background_fill']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
