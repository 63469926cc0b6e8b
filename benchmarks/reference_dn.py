"""dnrt vs the published PyTorch DN implementation: same checkpoint, same image, whole commands.

The published code (Kaminyou/Dense-Normalization, AGPL) is NOT part of dnrt and is never copied
here: fetch it yourself into a folder of your own and give that folder and a Python that can
run it (it needs torch, torchvision, opencv-python-headless, albumentations, scipy, pyyaml)::

    .venv/bin/python benchmarks/reference_dn.py --reference-repo /path/to/Dense-Normalization \\
        --reference-python /path/to/venv/bin/python3 --size 1024x1024 --json out.json

What it does:

1. exports the official generator (64 features, 9 blocks: the paper's; random weights, seeded)
   as a dnrt bundle, and saves the *same* weights as the reference's ``<epoch>_G.pth``
   (dnrt's ``official`` architecture reproduces the reference's key names);
2. renders a synthetic H&E slide of ``--size`` (a multiple of 512: the reference's crop step
   drops partial tiles) as a tiled TIFF for dnrt and a PNG for the reference;
3. times the reference's documented command ``python3 transfer.py -c config.yaml`` (crop into
   PNG patches, DN inference with its two passes, combine) and dnrt's whole command
   ``trt-translate in.tif -o out.tif --model BUNDLE --mode dn``, each as a fresh process;
4. compares the two outputs (they compute the same thing: a parity check).

On a CPU both are dominated by the 64-feature generator's convolutions, so expect the ratio
to say how fast ONNX Runtime's convolutions are against PyTorch's rather than anything about
scheduling; both numbers are recorded with the machine and load.

**The published code does not run on a CPU as published**: its DN layers are built with a
hard-coded ``device='cuda'`` default (``models/dn.py``: ``DenseInstanceNorm`` and
``PrefetchDenseInstanceNorm``; ``models/interpolation.py``: ``Interpolation3D``), and nothing
passes the config's ``DEVICE`` to them, so on a machine without an NVIDIA driver it stops
with "Found no NVIDIA driver". ``--cpu-patch`` copies the checkout into the work folder and
changes exactly those three default arguments to ``'cpu'`` in the copy (nothing else; the
changed lines are recorded in the result). Without it the script reports the failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_models import OFFICIAL_PAPER_CONFIG, export_random_official

from dnrt.bench.fidelity import error_stats
from dnrt.bench.harness import synthetic_pair, write_json
from dnrt.bench.machine import load_average, machine_info, versions
from dnrt.data.synthetic import parse_size


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _timed(command: list[str], **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - start, proc


#: The reference's device defaults (file, exact text); --cpu-patch sets them to 'cpu' in a copy.
_DEVICE_DEFAULTS = (
    ("models/dn.py", "device: str = 'cuda'"),
    ("models/interpolation.py", 'device="cuda"'),
)


def _cpu_copy(repo: Path, dest: Path) -> tuple[Path, list[str]]:
    """Copy the checkout to ``dest`` and set its hard-coded CUDA device defaults to the CPU."""
    shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".git", "experiments", "data"))
    (dest / "experiments").mkdir(exist_ok=True)
    changed = []
    for name, text in _DEVICE_DEFAULTS:
        path = dest / name
        source = path.read_text()
        if text not in source:
            raise SystemExit(
                f"{name}: {text!r} not found; this checkout differs from the one the patch was made for"
            )
        for number, line in enumerate(source.splitlines(), 1):
            if text in line:
                changed.append(f"{name}:{number}: {line.strip()} -> {line.strip().replace('cuda', 'cpu')}")
        path.write_text(source.replace(text, text.replace("cuda", "cpu")))
    return dest, changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-repo", type=Path, required=True, help="a checkout of Dense-Normalization")
    ap.add_argument("--reference-python", type=Path, required=True, help="a Python that can run it")
    ap.add_argument("--size", default="1024x1024", help="HEIGHTxWIDTH, multiples of 512 (default 1024x1024)")
    ap.add_argument("--features", type=int, default=OFFICIAL_PAPER_CONFIG["features"])
    ap.add_argument("--residuals", type=int, default=OFFICIAL_PAPER_CONFIG["residuals"])
    ap.add_argument("--epoch", default="10", help="the checkpoint's epoch label (file <epoch>_G.pth)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (best kept)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dnrt-reference-bench"))
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dnrt" / "bench")
    ap.add_argument(
        "--cpu-patch",
        action="store_true",
        help="run a copy of the reference with its hard-coded device='cuda' defaults set to 'cpu'",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    height, width = parse_size(args.size)
    if height % 512 or width % 512:
        ap.error("--size must be multiples of 512 (the reference crops whole 512 px patches only)")
    if (args.features, args.residuals) != (64, 9):
        ap.error("the reference builds its generator with 64 features and 9 blocks; other sizes cannot load")
    repo = args.reference_repo.resolve()
    if not (repo / "transfer.py").is_file():
        ap.error(f"{repo} has no transfer.py: not a Dense-Normalization checkout")

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    patched: list[str] = []
    if args.cpu_patch:
        repo, patched = _cpu_copy(repo, work / "reference")
    config = {**OFFICIAL_PAPER_CONFIG, "features": args.features, "residuals": args.residuals}
    bundle = export_random_official(
        args.cache_dir / f"official-f{args.features}-r{args.residuals}-t512.dnrt", config
    )
    _log(f"bundle: {bundle}")

    # The same weights as the reference's checkpoint layout: experiments/<name>/train/<epoch>_G.pth.
    import torch
    from safetensors.torch import load_file

    train = work / "experiments" / "bench" / "train"
    train.mkdir(parents=True)
    torch.save(load_file(str(bundle / "weights.safetensors")), train / f"{args.epoch}_G.pth")
    for unused in ("D_Y", "H"):  # loaded by the reference's model class, never used for inference
        torch.save({}, train / f"{args.epoch}_{unused}.pth")

    he_tif, _ = synthetic_pair(args.cache_dir, 0, height, width, _log)
    from PIL import Image

    from dnrt.runtime.io import open_image

    with open_image(he_tif) as src:
        png = work / "input.png"
        Image.fromarray(src.read_region(0, height, 0, width)).save(png)

    cfg = {
        "EXPERIMENT_ROOT_PATH": str(work / "experiments"),
        "EXPERIMENT_NAME": "bench",
        "MODEL_NAME": "CUT",
        "DEVICE": "cpu",
        "TRAINING_SETTING": {
            "LAMBDA_Y": 0,
            "LEARNING_RATE": 0.0002,
            "LOAD_MODEL": False,
            "NUM_EPOCHS": 10,
            "EPOCH": args.epoch,
        },
        "INFERENCE_SETTING": {
            "TEST_X": str(png),
            "TEST_DIR_X": str(work / "testX") + "/",
            "MODEL_VERSION": args.epoch,
            "NORMALIZATION": "dn",
            "SAVE_ORIGINAL_IMAGE": False,
        },
        "CROPPING_SETTING": {"PATCH_SIZE": 512},
    }
    (work / "config.yaml").write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    env = dict(os.environ)
    # transfer.py starts its steps as `python3 ...`: put the reference's Python first on PATH.
    env["PATH"] = f"{args.reference_python.parent}{os.pathsep}{env.get('PATH', '')}"
    ours_out = work / "dnrt_dn.tif"
    theirs_out = work / "experiments" / "bench" / "test" / "input" / f"combined_dn_{args.epoch}.png"

    runs: dict[str, list[float]] = {"reference": [], "dnrt": []}
    loads = []
    for r in range(args.repeat):
        loads.append(load_average())
        shutil.rmtree(work / "testX", ignore_errors=True)
        shutil.rmtree(work / "experiments" / "bench" / "test", ignore_errors=True)
        t, proc = _timed(
            [str(args.reference_python), "transfer.py", "-c", str(work / "config.yaml")], cwd=repo, env=env
        )
        if proc.returncode != 0 or not theirs_out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            _log("reference failed:\n" + "\n".join(tail))
            return 1
        runs["reference"].append(t)
        _log(f"[{r + 1}] reference transfer.py: {t:.1f} s")
        t, proc = _timed(
            [
                sys.executable,
                "-m",
                "dnrt.runtime.cli",
                str(he_tif),
                "-o",
                str(ours_out),
                "--model",
                str(bundle),
                "--mode",
                "dn",
                "--overwrite",
                "--quiet",
                "--json",
            ]
        )
        if proc.returncode != 0:
            _log(f"dnrt failed: {proc.stderr.strip()}")
            return 1
        report = json.loads(proc.stdout)
        runs["dnrt"].append(t)
        _log(f"[{r + 1}] dnrt trt-translate --mode dn: {t:.1f} s ({report['backend']})")

    parity = error_stats(ours_out, theirs_out)
    best = {k: min(v) for k, v in runs.items()}
    result = {
        "kind": "reference-comparison",
        "reference": {
            "repo": "Kaminyou/Dense-Normalization",
            "path": str(repo),
            "command": "python3 transfer.py -c config.yaml (crop + inference.py DN + combine)",
            "python": str(args.reference_python),
            "cpu_patch": patched,
        },
        "dnrt": {
            "command": "trt-translate IN.tif -o OUT.tif --model BUNDLE --mode dn",
            "backend": report["backend"],
            "report_seconds": report["seconds"],
        },
        "image": {"height": height, "width": width, "synthetic_seed": 0, "tiles": report["tiles"]},
        "model": {
            "architecture": "official",
            "config": config,
            "weights": "random (seeded), identical in both",
        },
        "wall_s_runs": runs,
        "wall_s_best": best,
        "speedup": best["reference"] / best["dnrt"],
        "target_speedup": 3.0,
        "met": best["reference"] / best["dnrt"] >= 3.0,
        "parity": parity.as_dict(),
        "machine": machine_info(),
        "versions": versions(),
        "load_average_before_rounds": loads,
        "load_average_after": load_average(),
        "command": " ".join(["benchmarks/reference_dn.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(json.dumps({k: result[k] for k in ("wall_s_best", "speedup", "parity")}, indent=2))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
