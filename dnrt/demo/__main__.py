"""``make demo``: the embedded model on a synthetic slide, every mode, one comparison picture.

Steps (slides and the bundle are reused when they already exist):

1. export the shipped demo generator to a model bundle,
2. render a clean synthetic H&E slide and its IHC ground truth (tiled BigTIFF), translate it
   with ``trt-translate`` in IN, TIN, KIN and DN (dnrt's defaults) and once more as the
   published pipeline does (tile-mirrored margins, std floor only), and draw
   ``comparison.png``: thumbnails and close-ups at a tile corner with each run's seam score,
   PSNR and worst block colour error;
3. the same on a scanner-like slide (sensor noise, glass white-balanced to a flat 255, JPEG
   tiles): ``comparison-scanner.png``, its close-up where the published pipeline errs most.

Run as ``python -m dnrt.demo [--size 4096] [--out demo-out]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.options import MODES

#: The extra run that reproduces the published pipeline: each tile mirrors itself into its
#: margin and degenerate statistics get only the std floor.
REFERENCE_RUN = "dn-published"
LABELS = {
    "in": "IN (patch-wise)",
    "tin": "TIN (thumbnail)",
    "kin": "KIN (kernelized)",
    "dn": "DN (dense)",
    REFERENCE_RUN: "DN, published pipeline",
    "truth": "ground truth IHC",
    "input": "input H&E",
}
#: The slides: the clean rendering, and the same tissue as a scanner delivers it (sensor
#: noise, glass white-balanced to a flat 255, JPEG tiles), smaller to keep the demo short.
SCANNER_SLIDE = "scanner"


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, flush=True)


def _thumbnail(path: Path, size: int) -> np.ndarray:
    """Box-downsampled copy of a TIFF, read band by band (never the whole image)."""
    from dnrt.runtime.io import open_image

    with open_image(path) as src:
        factor = max(1, max(src.height, src.width) // size)
        rows = []
        for y0 in range(0, src.height - factor + 1, factor * 64):
            y1 = min(src.height // factor * factor, y0 + factor * 64)
            band = src.read_region(y0, y1, 0, src.width // factor * factor).astype(np.float32)
            h, w = band.shape[0] // factor, band.shape[1] // factor
            rows.append(band.reshape(h, factor, w, factor, -1).mean(axis=(1, 3)))
        return np.rint(np.concatenate(rows)).astype(np.uint8)


def _crop(path: Path, y: int, x: int, size: int) -> np.ndarray:
    from dnrt.runtime.io import open_image

    with open_image(path) as src:
        return src.read_region(y, y + size, x, x + size)


def _fidelity(output: Path, truth: Path, tile: int) -> dict[str, float]:
    """Seam score, PSNR and block colour errors vs the ground truth, with the benchmark's
    definitions (band by band)."""
    from dnrt.bench.fidelity import block_colour_errors, psnr, seam_score

    blocks = block_colour_errors(output, truth)
    return {
        "seam_score": round(seam_score(output, tile).score, 3),
        "psnr_db": round(psnr(output, truth), 2),
        "worst_block_error": round(blocks.worst, 1),
        "worst_block_yx": [blocks.worst_y, blocks.worst_x],
    }


def _comparison(panels: list[tuple[str, np.ndarray, np.ndarray]], notes: dict[str, str], path: Path) -> None:
    """Two rows of labelled panels: thumbnails on top, close-ups at a tile corner below."""
    from PIL import Image, ImageDraw

    thumb = panels[0][1].shape[0]
    crop = panels[0][2].shape[0]
    label_h, pad = 34, 8
    width = len(panels) * (max(thumb, crop) + pad) + pad
    height = label_h + thumb + pad + crop + pad + 20
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (key, small, close) in enumerate(panels):
        x = pad + i * (max(thumb, crop) + pad)
        draw.text((x, 4), LABELS.get(key, key), fill=(0, 0, 0))
        if key in notes:
            draw.text((x, 18), notes[key], fill=(90, 90, 90))
        canvas.paste(Image.fromarray(small), (x, label_h))
        canvas.paste(Image.fromarray(close), (x, label_h + thumb + pad))
    draw.text(
        (pad, height - 16),
        "top: whole slide; bottom: close-up centred on a corner where four tiles meet "
        "(2x). dnrt's defaults, except 'DN, published pipeline' (each tile mirrors itself, std floor only). "
        "Seam score 1.0 = invisible; worst: the most wrong 64 px block's colour error.",
        fill=(90, 90, 90),
    )
    canvas.save(path)


def _translate(he: Path, target: Path, bundle: Path, mode: str, backend: str, published: bool) -> dict:
    cmd = [sys.executable, "-m", "dnrt.runtime.cli", str(he), "-o", str(target), "--model", str(bundle)]
    cmd += ["--mode", mode, "--backend", backend, "--overwrite", "--json", "--quiet"]
    # Every tile through the network: the demo compares normalizations, also on glass.
    cmd += ["--background", "translate"]
    if published:
        cmd += ["--margin-source", "tile", "--degenerate", "reference"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        line = (result.stderr.strip().splitlines() or ["failed"])[-1]
        raise DnrtError(f"trt-translate --mode {mode} failed: {line}")
    return json.loads(result.stdout)


def _slide(
    out: Path,
    name: str,
    height: int,
    width: int,
    seed: int,
    bundle: Path,
    backend: str,
    modes: tuple[str, ...],
    quiet: bool,
    step: str,
) -> dict:
    """Render one slide, translate it in every run, measure, draw its comparison picture."""
    from dnrt.data.synthetic import pair_stem, parse_scanner, write_pair

    scanner = parse_scanner(name)
    stem = pair_stem(seed, height, width, scanner)
    he, ihc = out / f"{stem}_he.tif", out / f"{stem}_ihc.tif"
    if not (he.is_file() and ihc.is_file()):
        _say(f"{step} rendering a {height} x {width} synthetic slide ({name}; H&E + IHC ground truth)", quiet)
        write_pair(out, seed, height, width, scanner=scanner)
    runs = [(mode, mode, False) for mode in modes]
    if "dn" in modes:
        runs.append((REFERENCE_RUN, "dn", True))
    reports = {}
    for i, (key, mode, published) in enumerate(runs):
        _say(
            f"{step} {name}: trt-translate --mode {mode}{' (published pipeline)' if published else ''} "
            f"({i + 1}/{len(runs)})",
            quiet,
        )
        reports[key] = _translate(he, out / f"demo_{name}_{key}.tif", bundle, mode, backend, published)
    keys = [key for key, _, _ in runs]
    tile = reports[modes[0]]["tile"]
    fidelity = {key: _fidelity(out / f"demo_{name}_{key}.tif", ihc, tile) for key in keys}
    truth_seam = round(_fidelity(ihc, ihc, tile)["seam_score"], 3)

    # Close-ups at a tile corner: for the clean slide one near the centre (the rim is glass); for
    # the scanner-like one the corner nearest to where the published pipeline goes most wrong.
    crop, thumb = 384, 384
    if name == "clean" or REFERENCE_RUN not in fidelity:
        cy = cx = (min(height, width) // 2 // tile) * tile
    else:
        wy, wx = fidelity[REFERENCE_RUN]["worst_block_yx"]
        cy, cx = (round((wy + 32) / tile) * tile, round((wx + 32) / tile) * tile)
    cy = min(max(cy, crop // 4), height - crop // 4)
    cx = min(max(cx, crop // 4), width - crop // 4)
    y0, x0 = cy - crop // 4, cx - crop // 4
    panels = [("input", _thumbnail(he, thumb), _crop(he, y0, x0, crop // 2))]
    for key in keys:
        target = out / f"demo_{name}_{key}.tif"
        panels.append((key, _thumbnail(target, thumb), _crop(target, y0, x0, crop // 2)))
    panels.append(("truth", _thumbnail(ihc, thumb), _crop(ihc, y0, x0, crop // 2)))
    panels = [(k, s, np.repeat(np.repeat(c, 2, 0), 2, 1)) for k, s, c in panels]
    notes = {
        k: f"seam {f['seam_score']:.2f}  {f['psnr_db']:.1f} dB  worst {f['worst_block_error']:.0f}"
        for k, f in fidelity.items()
    }
    notes["truth"] = f"seam {truth_seam:.2f}"
    picture = out / ("comparison.png" if name == "clean" else f"comparison-{name}.png")
    _comparison(panels, notes, picture)
    return {
        "slide": str(he),
        "size": [height, width],
        "scanner": scanner.name,
        "ground_truth": str(ihc),
        "outputs": {k: str(out / f"demo_{name}_{k}.tif") for k in keys},
        "published_pipeline": {k: published for k, _, published in runs},
        "comparison": str(picture),
        "close_up_yx": [y0, x0],
        "seconds": {k: reports[k]["seconds"]["total"] for k in keys},
        "fidelity": fidelity,
        "ground_truth_seam_score": truth_seam,
        "backend": reports[modes[0]]["backend"],
    }


def run_demo(
    out: Path,
    size: int = 4096,
    seed: int = 0,
    backend: str = "auto",
    quiet: bool = False,
    modes: tuple[str, ...] = MODES,
    scanner_size: tuple[int, int] | None = (2048, 3072),
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bundle = out / "demo.dnrt"
    if not bundle.is_dir():
        _say("[1/3] exporting the embedded demo model", quiet)
        from dnrt.demo import export_demo_bundle

        export_demo_bundle(bundle, log=(lambda m: None) if quiet else (lambda m: print("      " + m)))
    else:
        _say("[1/3] demo bundle already there", quiet)
    slides = {"clean": _slide(out, "clean", size, size, seed, bundle, backend, modes, quiet, "[2/3]")}
    if scanner_size is not None:
        h, w = scanner_size
        slides[SCANNER_SLIDE] = _slide(out, SCANNER_SLIDE, h, w, seed, bundle, backend, modes, quiet, "[3/3]")
    summary = {
        "bundle": str(bundle),
        "slides": slides,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not quiet:
        for name, sl in slides.items():
            print(
                f"\n{name} slide {sl['size'][1]} x {sl['size'][0]} ({sl['scanner']}), backend {sl['backend']}"
            )
            print(f"{'run':<14}{'seconds':>9}{'seam score':>12}{'PSNR vs truth':>15}{'worst block':>13}")
            for key, f in sl["fidelity"].items():
                print(
                    f"{key:<14}{sl['seconds'][key]:>9.1f}{f['seam_score']:>12.3f}{f['psnr_db']:>12.2f} dB"
                    f"{f['worst_block_error']:>13.1f}"
                )
            print(f"{'ground truth':<14}{'':>9}{sl['ground_truth_seam_score']:>12.3f}")
            print(f"comparison {sl['comparison']}")
        print(
            "\nseam score 1.0: no visible seams; worst block: the colour error (grey levels) of the "
            "most wrong 64 px block"
        )
        print(f"summary {out / 'summary.json'}  ({summary['total_seconds']} s in all)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnrt.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder [demo-out]")
    parser.add_argument("--size", type=int, default=4096, help="slide side in pixels [4096]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of in,tin,kin,dn")
    parser.add_argument(
        "--no-scanner", action="store_true", help="skip the scanner-like slide (noise, flat glass, JPEG)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from dnrt.errorline import ErrorLine  # the one "error: ..." line (click: only when run)

    try:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        if not modes or any(m not in MODES for m in modes):
            raise DnrtError(f"--modes must name some of {', '.join(MODES)}")
        if args.size < 512:
            raise DnrtError("--size must be at least 512 (the demo model's tile)")
        scanner_size = None if args.no_scanner else (min(2048, args.size), min(3072, args.size))
        run_demo(args.out, args.size, args.seed, args.backend, args.quiet, modes, scanner_size)
    except DnrtError as exc:
        ErrorLine(str(exc)).show()
        return exc.exit_code
    except KeyboardInterrupt:
        ErrorLine("interrupted").show()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
