"""``dnrt bench --plot``: time, memory and fidelity bars from a benchmark result (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dnrt.errors import DnrtError


def _num(x: Any) -> float:
    return (
        float(x) if isinstance(x, int | float) and not (isinstance(x, float) and math.isnan(x)) else math.nan
    )


def plot_result(result: dict[str, Any], path: str | Path) -> Path:
    """Draw the five panels into ``path`` (PNG, SVG or PDF by suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DnrtError("--plot needs matplotlib: pip install 'dnrt[bench]'") from None
    import numpy as np

    modes = list(result["modes"])
    m = result["modes"]
    x = np.arange(len(modes))
    fig, grid = plt.subplots(2, 3, figsize=(18, 9))
    # Panels in reading order; the sixth cell stays empty.
    axes = np.array([[grid[0, 0], grid[0, 1]], [grid[0, 2], grid[1, 0]]])
    blocks_ax = grid[1, 1]
    grid[1, 2].axis("off")
    backend = result["settings"]["backend"]
    first = next(iter(m.values()))
    img = result["image"]
    fig.suptitle(
        f"dnrt bench: {img['width']} x {img['height']} px, {first['tiles']} tiles of {first['tile']}, "
        f"{backend} ({first['backend']})\n{result['machine']['cpu']}"
        + (f", {result['machine']['gpus'][0]['name']}" if result["machine"].get("gpus") else ""),
        fontsize=10,
    )

    # 1. time relative to IN: ours vs the paper's
    ax = axes[0, 0]
    ours = [_num(m[k].get("wall_vs_in")) for k in modes]
    paper = [_num((m[k].get("paper") or {}).get("runtime_vs_in")) for k in modes]
    b1 = ax.bar(x - 0.2, ours, 0.4, label=f"dnrt, {backend} (this run)")
    ax.bar(x + 0.2, paper, 0.4, label="paper Table S1 (RTX 3090, PyTorch)", color="0.7")
    for rect, k in zip(b1, modes, strict=False):
        ax.annotate(
            f"{m[k]['wall_s']:.2f} s",
            (rect.get_x() + rect.get_width() / 2, rect.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_ylabel("wall time / IN wall time")
    ax.set_title("time relative to IN (each measured in its own run)")
    ax.legend(fontsize=8)

    # 2. memory
    ax = axes[0, 1]
    rss = [_num(m[k].get("peak_rss_mb")) for k in modes]
    gpu = [_num(m[k].get("gpu_peak_mb")) for k in modes]
    paper_gpu = [_num((m[k].get("paper") or {}).get("gpu_mb")) for k in modes]
    ax.bar(x - 0.27, rss, 0.27, label="dnrt peak host RSS")
    if not all(math.isnan(g) for g in gpu):
        ax.bar(x, gpu, 0.27, label="dnrt peak GPU memory")
    ax.bar(x + 0.27, paper_gpu, 0.27, label="paper GPU memory (RTX 3090)", color="0.7")
    ax.set_ylabel("MB")
    ax.set_title("peak memory")
    ax.legend(fontsize=8)

    # 3. seam score
    ax = axes[1, 0]
    seam = [_num((m[k].get("fidelity") or {}).get("seam", {}).get("score")) for k in modes]
    ax.bar(x, seam, 0.6, color="tab:green")
    ax.axhline(1.0, color="k", lw=0.6)
    gt_seam = ((result.get("reference") or {}).get("ground_truth") or {}).get("seam", {}).get("score")
    if gt_seam is not None:
        ax.axhline(gt_seam, color="tab:red", ls="--", lw=0.8, label=f"ground truth's own: {gt_seam:.3f}")
        ax.legend(fontsize=8)
    for i, v in enumerate(seam):
        if not math.isnan(v):
            ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("boundary / near-boundary gradient")
    ax.set_title("seam score (1 = invisible seams)")

    # 4. accuracy
    ax = axes[1, 1]
    psnr = [_num((m[k].get("fidelity") or {}).get("vs_ground_truth", {}).get("psnr")) for k in modes]
    if not all(math.isnan(v) for v in psnr):
        ssim = [_num((m[k].get("fidelity") or {}).get("vs_ground_truth", {}).get("ssim")) for k in modes]
        bars = ax.bar(x, psnr, 0.6, color="tab:purple")
        for rect, s in zip(bars, ssim, strict=False):
            ax.annotate(
                f"SSIM {s:.3f}",
                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        lo = np.nanmin(psnr)
        ax.set_ylim(max(0.0, lo - 3), np.nanmax(psnr) + 1.5)
        ax.set_ylabel("PSNR vs ground truth (dB)")
        ax.set_title("accuracy against the ground truth")
    else:
        mae = [_num((m[k].get("fidelity") or {}).get("vs_whole", {}).get("mae")) for k in modes]
        ax.bar(x, mae, 0.6, color="tab:purple")
        ax.set_ylabel("MAE vs whole-image inference (8-bit)")
        ax.set_title("difference from whole-image inference")

    # 5. block colour errors: the slide-wide mean and the worst block (a blown-out tile)
    ax = blocks_ax
    gt = [(m[k].get("fidelity") or {}).get("vs_ground_truth") or {} for k in modes]
    mean = [_num(g.get("colour_error")) for g in gt]
    worst = [_num(g.get("worst_block_error")) for g in gt]
    if not all(math.isnan(v) for v in worst):
        ax.bar(x - 0.2, mean, 0.4, label="mean over 64 px blocks", color="tab:orange")
        ax.bar(x + 0.2, worst, 0.4, label="worst block", color="tab:red")
        for i, v in enumerate(worst):
            if not math.isnan(v):
                ax.annotate(f"{v:.0f}", (i + 0.2, v), ha="center", va="bottom", fontsize=8)
        ax.legend(fontsize=8)
    ax.set_ylabel("|block-mean colour error| vs ground truth (8-bit)")
    ax.set_title("local colour: mean and worst 64 px block")

    for ax in [*axes.ravel(), blocks_ax]:
        ax.set_xticks(x)
        ax.set_xticklabels(modes, fontsize=8, rotation=30, ha="right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
