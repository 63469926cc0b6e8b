"""Train the embedded demo generator: H&E-like -> IHC-like on synthetic paired patches.

    python tools/train_demo.py --out dnrt/data/demo_generator.safetensors

A development script of the source checkout (it trains with torch; it is not installed with
dnrt). The record it writes keeps the command that ran.

The model is the official DN generator (docs/semantics.md section 6) with plain InstanceNorm2d
layers, i.e. exactly what users train; Dense Normalization is applied at inference by the norm
swap of the exporter. Training is supervised L1 on aligned (H&E, IHC) patches rendered by
``dnrt.data.synthetic`` from several virtual slides (different seeds and sizes, patches drawn
uniformly over each slide so every slide-level stain zone is seen). It runs on the CPU in a few
minutes and is deterministic: a fixed number of steps, seeded torch and numpy, a fixed data pool.

Next to the weights (safetensors, the exact state_dict keys of ``build_generator("official",
config)``, float32, config in the metadata) a JSON file records the config, the command, the
seed, the hyperparameters, the wall time, the machine and the held-out metrics.

Metrics (numpy, on uint8 RGB; see ``psnr`` and ``ssim``) are computed on held-out tiles rendered
from slides whose seeds are not used for training, by whole-tile inference under InstanceNorm
(no margin, no tiling), next to the identity baseline (the H&E input scored against the IHC
ground truth) so the improvement is visible.

Only numpy is imported at module level; torch and safetensors are imported by the functions
that need them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dnrt.data.synthetic import sample_pairs

__all__ = [
    "DEFAULT_CONFIG",
    "HELDOUT_SLIDES",
    "TRAIN_SLIDES",
    "evaluate",
    "heldout_tiles",
    "main",
    "psnr",
    "ssim",
    "translate",
]

DEFAULT_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "features": 16,
    "residuals": 4,
    "affine": False,
}

# (seed, height, width) of the virtual training slides: several sizes so the slide-level
# stain fields (which scale with the slide) vary in frequency as well as in phase.
TRAIN_SLIDES: tuple[tuple[int, int, int], ...] = (
    (11, 2048, 2048),
    (12, 3072, 4096),
    (13, 4096, 4096),
    (14, 6144, 4096),
    (15, 8192, 8192),
    (16, 4096, 12288),
)
# Held-out slides: seeds never used for training.
HELDOUT_SLIDES: tuple[tuple[int, int, int], ...] = (
    (9001, 4096, 4096),
    (9002, 6144, 5120),
)


# --------------------------------------------------------------------------------------------
# Metrics (numpy)
# --------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images [H, W, C] or tile sets [N, H, W, C], one MSE pooled over
    every pixel and channel, peak 255; inf when equal (``dnrt.bench.fidelity``'s)."""
    from dnrt.bench.fidelity import psnr as image_psnr

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {a.shape} vs {b.shape}")
    # Stacking the tiles' rows into one tall image leaves the pooled MSE as it is.
    return image_psnr(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 RGB images [H, W, 3] (or batches [N, H, W, 3]: the mean over images).

    ``dnrt.bench.fidelity.ssim``: the standard formulation of Wang et al. (2004), 11x11 Gaussian
    window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, population moments, on each channel
    over the 'valid' window positions, averaged over positions and channels.
    """
    from dnrt.bench.fidelity import ssim as image_ssim

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return image_ssim(a, b)
    return float(np.mean([image_ssim(x, y) for x, y in zip(a, b, strict=True)]))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def build_pool(
    slides: Sequence[tuple[int, int, int]], per_slide: int, size: int, background_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (H&E, IHC) uint8 patches [N, size, size, 3], ``per_slide`` from each slide."""
    he, ihc = zip(
        *(
            sample_pairs(seed, per_slide, size, h, w, background_fraction=background_fraction)
            for seed, h, w in slides
        ),
        strict=True,
    )
    return np.concatenate(he), np.concatenate(ihc)


def heldout_tiles(size: int, n: int, slides: Sequence[tuple[int, int, int]] = HELDOUT_SLIDES):
    """n held-out (H&E, IHC) tiles of ``size`` px, split evenly across the held-out slides.

    Only tiles with at least 30% tissue: empty glass is identical in both stains and would
    only flatter both the model and the identity baseline.
    """
    per = -(-n // len(slides))
    he, ihc = build_pool(slides, per, size, background_fraction=0.0)
    return he[:n], ihc[:n]


def _dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of [H, W, C] (tissue has no preferred orientation)."""
    if k & 4:
        x = x[:, ::-1]
    return np.rot90(x, k & 3)


def _to_tensor(batch: np.ndarray):
    import torch

    from dnrt.semantics import to_network

    return torch.from_numpy(np.ascontiguousarray(to_network(batch).transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------------------------
# Inference and evaluation
# --------------------------------------------------------------------------------------------


def translate(module, he: np.ndarray, batch: int = 4) -> np.ndarray:
    """Whole-tile inference (InstanceNorm over each tile, no margin): uint8 [N,H,W,3] -> uint8."""
    import torch

    from dnrt.semantics import from_network

    module.eval()
    out = np.empty_like(he)
    with torch.no_grad():
        for i in range(0, len(he), batch):
            y = module(_to_tensor(he[i : i + batch])).numpy().transpose(0, 2, 3, 1)
            out[i : i + batch] = from_network(y)
    return out


def evaluate(module, he: np.ndarray, ihc: np.ndarray, batch: int = 4) -> dict[str, float]:
    """PSNR and SSIM of the model and of the identity baseline against the IHC truth.

    PSNR is over the whole tile set (one MSE pooled over all tiles: a tile of empty glass is
    identical in both stains and would make a per-tile mean infinite); SSIM is the mean of
    per-tile SSIM.
    """
    pred = translate(module, he, batch)
    return {
        "tiles": len(he),
        "size": int(he.shape[1]),
        "psnr_model": psnr(pred, ihc),
        "psnr_identity": psnr(he, ihc),
        "ssim_model": float(np.mean([ssim(p, t) for p, t in zip(pred, ihc, strict=True)])),
        "ssim_identity": float(np.mean([ssim(h, t) for h, t in zip(he, ihc, strict=True)])),
    }


def save_preview(module, path: Path, size: int = 512, n: int = 3) -> None:
    """A PNG with one row per held-out tile: H&E input | model output | IHC ground truth."""
    from PIL import Image

    he, ihc = heldout_tiles(size, n)
    pred = translate(module, he)
    gap = np.full((size, 8, 3), 255, np.uint8)
    rows = [np.concatenate([h, gap, p, gap, t], axis=1) for h, p, t in zip(he, pred, ihc, strict=True)]
    sep = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    grid = np.concatenate([r for row in rows for r in (row, sep)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train(args: argparse.Namespace, config: dict[str, Any], log=print):
    """Train and return (module, history). Deterministic for given args on one machine."""
    import torch

    from dnrt.models.zoo import build_generator

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng([args.seed, 0xD3])

    t0 = time.perf_counter()
    he_pool, ihc_pool = build_pool(TRAIN_SLIDES, args.per_slide, args.pool_patch)
    t_data = time.perf_counter() - t0
    log(
        f"data: {len(he_pool)} patches of {args.pool_patch} px from {len(TRAIN_SLIDES)} slides in {t_data:.1f}s"
    )

    module = build_generator("official", config).train()
    n_params = sum(p.numel() for p in module.parameters())
    log(f"model: official generator {config}, {n_params} parameters")
    opt = torch.optim.Adam(module.parameters(), lr=args.lr, betas=(0.9, 0.99))

    history: list[dict[str, float]] = []
    window: list[float] = []
    t1 = time.perf_counter()
    crop = args.patch
    for step in range(args.steps):
        idx = rng.integers(0, len(he_pool), args.batch)
        ys = rng.integers(0, args.pool_patch - crop + 1, args.batch)
        xs = rng.integers(0, args.pool_patch - crop + 1, args.batch)
        ks = rng.integers(0, 8, args.batch)
        he = np.stack(
            [
                _dihedral(he_pool[i, y : y + crop, x : x + crop], k)
                for i, y, x, k in zip(idx, ys, xs, ks, strict=True)
            ]
        )
        ihc = np.stack(
            [
                _dihedral(ihc_pool[i, y : y + crop, x : x + crop], k)
                for i, y, x, k in zip(idx, ys, xs, ks, strict=True)
            ]
        )
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, args.steps, args.lr, args.warmup)
        pred = module(_to_tensor(he))
        loss = (pred - _to_tensor(ihc)).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - t1
            mean = float(np.mean(window))
            history.append({"step": step + 1, "l1": round(mean, 5), "elapsed_s": round(elapsed, 1)})
            log(
                f"step {step + 1:5d}/{args.steps}  l1 {mean:.4f}  lr {opt.param_groups[0]['lr']:.2e}  {elapsed:6.1f}s"
            )
            window.clear()
    module.eval()
    timing = {"data_s": round(t_data, 1), "train_s": round(time.perf_counter() - t1, 1)}
    return module, history, timing, n_params


def save_weights(module, path: Path, config: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    """safetensors, float32, the module's exact state_dict keys; the config JSON in the metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", copy=True).float().contiguous() for k, v in module.state_dict().items()}
    meta = {"architecture": "official", "config": json.dumps(config, sort_keys=True), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def _machine(threads: int) -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python tools/train_demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("dnrt/data/demo_generator.safetensors"))
    p.add_argument("--json", type=Path, default=None, help="metadata JSON (default: --out with .json)")
    p.add_argument("--preview", type=Path, default=None, help="write an input|output|truth PNG here")
    p.add_argument("--features", type=int, default=DEFAULT_CONFIG["features"])
    p.add_argument("--residuals", type=int, default=DEFAULT_CONFIG["residuals"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=128, help="training crop size (px)")
    p.add_argument(
        "--pool-patch", type=int, default=160, help="size of the pre-rendered patches cropped from"
    )
    p.add_argument("--per-slide", type=int, default=200, help="pre-rendered patches per training slide")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-tiles", type=int, default=64, help="held-out tiles per evaluation size")
    p.add_argument("--eval-sizes", type=str, default="128,512")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="do not train: score the weights at --out and update the metrics in their JSON record",
    )
    args = p.parse_args(argv)
    if args.patch > args.pool_patch:
        p.error("--patch must be <= --pool-patch")
    return args


def _score(module, sizes: str, n: int) -> tuple[dict[str, Any], float]:
    """Held-out metrics at each tile size, and the seconds it took."""
    metrics: dict[str, Any] = {}
    t0 = time.perf_counter()
    for size in (int(s) for s in sizes.split(",") if s):
        he, ihc = heldout_tiles(size, n)
        m = evaluate(module, he, ihc)
        metrics[str(size)] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}
        print(
            f"held-out {m['tiles']} x {size} px: PSNR {m['psnr_model']:.2f} dB (identity {m['psnr_identity']:.2f}),"
            f" SSIM {m['ssim_model']:.4f} (identity {m['ssim_identity']:.4f})"
        )
    return metrics, round(time.perf_counter() - t0, 1)


EVALUATION = {
    "slides": [list(s) for s in HELDOUT_SLIDES],
    "tiles": "random tiles with at least 30% tissue",
    "inference": "whole tile, InstanceNorm over the tile, no margin",
    "psnr": "uint8 RGB, peak 255, MSE pooled over all tiles",
    "ssim": "Gaussian 11x11 sigma 1.5, K1=0.01 K2=0.03, per RGB channel, valid region, mean over tiles",
    "identity": "the H&E input scored against the IHC truth",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_weights(path: Path):
    """The generator stored at ``path`` by ``save_weights`` (config from its metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from dnrt.models.zoo import build_generator

    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    module = build_generator("official", config)
    module.load_state_dict(load_file(str(path)), strict=True)
    return module.eval(), config


def _reevaluate(args: argparse.Namespace, argv: list[str], json_path: Path) -> int:
    """Score the weights already at --out with this version's metrics; update their record."""
    module, config = _load_weights(args.out)
    info = json.loads(json_path.read_text())
    if info.get("config") != config:
        raise SystemExit(f"{json_path} does not describe {args.out} (config differs)")
    metrics, eval_s = _score(module, args.eval_sizes, args.eval_tiles)
    info["metrics"] = metrics
    info["evaluation"] = {
        **EVALUATION,
        "command": "python tools/train_demo.py " + shlex.join(argv),
        "wall_time_s": eval_s,
        "machine": _machine(args.threads),
    }
    info.setdefault("weights", {})["sha256"] = _sha256(args.out)
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    print(f"updated the metrics in {json_path}")
    if args.preview:
        save_preview(module, args.preview)
        print(f"preview: {args.preview}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    json_path = args.json or args.out.with_suffix(".json")
    if args.evaluate_only:
        return _reevaluate(args, argv, json_path)
    config = {**DEFAULT_CONFIG, "features": args.features, "residuals": args.residuals}
    start = time.perf_counter()
    load_before = _load_average()

    module, history, timing, n_params = train(args, config)
    metrics, timing["eval_s"] = _score(module, args.eval_sizes, args.eval_tiles)
    timing["total_s"] = round(time.perf_counter() - start, 1)

    command = "python tools/train_demo.py " + shlex.join(argv)
    save_weights(module, args.out, config, {"command": command.strip(), "seed": str(args.seed)})
    info = {
        "architecture": "official",
        "config": config,
        "parameters": n_params,
        "command": command.strip(),
        "seed": args.seed,
        "training": {
            "loss": "L1 on [-1, 1] network values",
            "optimizer": "Adam(betas=(0.9, 0.99))",
            "lr": args.lr,
            "schedule": f"linear warm-up {args.warmup} steps, cosine decay to 5%",
            "steps": args.steps,
            "batch": args.batch,
            "patch": args.patch,
            "augment": f"random {args.patch} px crops of {args.pool_patch} px patches, 8 flips/rotations",
            "data": {
                "generator": "dnrt.data.synthetic.sample_pairs",
                "slides": [list(s) for s in TRAIN_SLIDES],
                "patches_per_slide": args.per_slide,
            },
            "history": history,
        },
        "evaluation": EVALUATION,
        "metrics": metrics,
        "wall_time_s": timing,
        # The 2 cores may be shared: the load average says how much of the wall time was ours.
        "machine": {
            **_machine(args.threads),
            "load_average_before": load_before,
            "load_average_after": _load_average(),
        },
        "weights": {
            "file": args.out.name,
            "bytes": args.out.stat().st_size,
            "dtype": "float32",
            "sha256": _sha256(args.out),
        },
    }
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) and {json_path}; total {timing['total_s']}s"
    )
    if args.preview:
        save_preview(module, args.preview)
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
