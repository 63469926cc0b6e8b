"""``make demo``: the embedded model on a synthetic slide, every mode, one comparison picture.

Steps (each reused when its output already exists, so a second run is quick):

1. render a synthetic H&E slide and its IHC ground truth (tiled BigTIFF),
2. export the shipped demo generator to a model bundle,
3. translate the H&E slide with ``trt-translate`` in IN, TIN, KIN and DN,
4. write ``comparison.png``: whole-slide thumbnails and close-ups at a tile corner,
   IN vs TIN vs KIN vs DN vs ground truth, with each mode's seam score and PSNR.

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

MODES = ("in", "tin", "kin", "dn")
#: The extra run that shows the DN reference's own margin geometry (each tile mirrors itself).
REFERENCE_RUN = "dn-tile-margin"
LABELS = {
    "in": "IN (patch-wise)",
    "tin": "TIN (thumbnail)",
    "kin": "KIN (kernelized)",
    "dn": "DN (dense)",
    REFERENCE_RUN: "DN, reference margin",
    "truth": "ground truth IHC",
    "input": "input H&E",
}


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
    """Seam score and PSNR vs ground truth, with the benchmark's definitions (band by band)."""
    from dnrt.bench.fidelity import psnr, seam_score

    return {
        "seam_score": round(seam_score(output, tile).score, 3),
        "psnr_db": round(psnr(output, truth), 2),
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
        "(2x). Margins: the neighbouring pixels, except 'DN, reference margin' (each tile mirrors itself). "
        "Seam score 1.0 = invisible.",
        fill=(90, 90, 90),
    )
    canvas.save(path)


def run_demo(
    out: Path,
    size: int = 4096,
    seed: int = 0,
    backend: str = "auto",
    quiet: bool = False,
    modes: tuple[str, ...] = MODES,
) -> dict:
    from dnrt.data.synthetic import write_pair

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    he = out / f"synthetic_s{seed}_{size}x{size}_he.tif"
    ihc = out / f"synthetic_s{seed}_{size}x{size}_ihc.tif"
    if not (he.is_file() and ihc.is_file()):
        _say(f"[1/4] rendering a {size} x {size} synthetic slide (H&E + IHC ground truth)", quiet)
        write_pair(out, seed, size, size)
    else:
        _say("[1/4] synthetic slide already there", quiet)

    bundle = out / "demo.dnrt"
    if not bundle.is_dir():
        _say("[2/4] exporting the embedded demo model", quiet)
        from dnrt.data.demo import export_demo_bundle

        export_demo_bundle(bundle, log=(lambda m: None) if quiet else (lambda m: print("      " + m)))
    else:
        _say("[2/4] demo bundle already there", quiet)

    reports = {}
    # All modes see the real neighbouring pixels in their margins, so what differs between
    # them is the normalization; one more DN run shows the reference's mirrored margins.
    runs = [(mode, mode, "image") for mode in modes]
    if "dn" in modes:
        runs.append((REFERENCE_RUN, "dn", "tile"))
    for i, (key, mode, margin_source) in enumerate(runs):
        target = out / f"demo_{key}.tif"
        _say(
            f"[3/4] trt-translate --mode {mode} --margin-source {margin_source} ({i + 1}/{len(runs)})", quiet
        )
        cmd = [
            sys.executable,
            "-m",
            "dnrt.runtime.cli",
            str(he),
            "-o",
            str(target),
            "--model",
            str(bundle),
            "--mode",
            mode,
            "--margin-source",
            margin_source,
            "--backend",
            backend,
            "--overwrite",
            "--json",
            "--quiet",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            line = (result.stderr.strip().splitlines() or ["failed"])[-1]
            raise DnrtError(f"trt-translate --mode {mode} failed: {line}")
        reports[key] = json.loads(result.stdout)
    keys = [key for key, _, _ in runs]

    _say("[4/4] measuring seams and fidelity, drawing comparison.png", quiet)
    tile = reports[modes[0]]["tile"]
    fidelity = {key: _fidelity(out / f"demo_{key}.tif", ihc, tile) for key in keys}
    # A tile corner near the slide's centre that has tissue (the slide's rim is glass).
    corner = (size // 2 // tile) * tile
    crop, thumb = 384, 384
    panels = [("input", _thumbnail(he, thumb), _crop(he, corner - crop // 4, corner - crop // 4, crop // 2))]
    for key in keys:
        target = out / f"demo_{key}.tif"
        panels.append(
            (key, _thumbnail(target, thumb), _crop(target, corner - crop // 4, corner - crop // 4, crop // 2))
        )
    panels.append(
        ("truth", _thumbnail(ihc, thumb), _crop(ihc, corner - crop // 4, corner - crop // 4, crop // 2))
    )
    panels = [(k, s, np.repeat(np.repeat(c, 2, 0), 2, 1)) for k, s, c in panels]
    notes = {k: f"seam {fidelity[k]['seam_score']:.2f}  PSNR {fidelity[k]['psnr_db']:.1f} dB" for k in keys}
    truth_fid = _fidelity(ihc, ihc, tile)
    notes["truth"] = f"seam {truth_fid['seam_score']:.2f}"
    picture = out / "comparison.png"
    _comparison(panels, notes, picture)

    summary = {
        "slide": str(he),
        "ground_truth": str(ihc),
        "bundle": str(bundle),
        "outputs": {k: str(out / f"demo_{k}.tif") for k in keys},
        "margin_source": {k: source for k, _, source in runs},
        "comparison": str(picture),
        "seconds": {k: reports[k]["seconds"]["total"] for k in keys},
        "fidelity": fidelity,
        "ground_truth_seam_score": truth_fid["seam_score"],
        "backend": reports[modes[0]]["backend"],
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not quiet:
        print(f"\nbackend: {summary['backend']}")
        print(f"{'run':<16}{'margin':>7}{'seconds':>9}{'seam score':>12}{'PSNR vs truth':>15}")
        for key, _, source in runs:
            print(
                f"{key:<16}{source:>7}{summary['seconds'][key]:>9.1f}{fidelity[key]['seam_score']:>12.3f}"
                f"{fidelity[key]['psnr_db']:>12.2f} dB"
            )
        print(f"(ground truth seam score {truth_fid['seam_score']:.3f}: 1.0 means no visible seams)")
        print(f"\ninput      {he}\ntruth      {ihc}\nbundle     {bundle}")
        for key in keys:
            print(f"{key:<10} {out / f'demo_{key}.tif'}")
        print(
            f"comparison {picture}\nsummary    {out / 'summary.json'}  ({summary['total_seconds']} s in all)"
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dnrt.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder [demo-out]")
    parser.add_argument("--size", type=int, default=4096, help="slide side in pixels [4096]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of in,tin,kin,dn")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        if not modes or any(m not in MODES for m in modes):
            raise DnrtError(f"--modes must name some of {', '.join(MODES)}")
        if args.size < 512:
            raise DnrtError("--size must be at least 512 (the demo model's tile)")
        run_demo(args.out, args.size, args.seed, args.backend, args.quiet, modes)
    except DnrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
