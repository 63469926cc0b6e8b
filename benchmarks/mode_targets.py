"""This project's speed and memory targets for ``dnrt bench`` results (not part of dnrt itself).

``dnrt bench`` measures the modes on a user's image and reports the ratios; whether those meet
the targets this project set itself (the runtime issue on the CPU, the GPU issue on GPU
backends) is decided here:

    dnrt bench --demo --json run.json
    python benchmarks/mode_targets.py run.json            # print the verdicts
    python benchmarks/mode_targets.py run.json --write    # and record them in run.json ("targets")

Targets: DN streaming / IN wall time (<= 2.2 on the CPU, <= 1.9 on a GPU backend); on a GPU
backend DN's peak GPU memory / IN's (<= 1.2); fp16 DN streaming on an H100 for the Table S1
image (<= 0.5 s); and, reported without a limit, ``dn-serial`` / ``dn-streaming`` (one stream
against two).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dnrt.bench.harness import DEFAULT_SIZE, GPU_BACKENDS, write_json

TARGET_DN_VS_IN_CPU = 2.2
TARGET_DN_VS_IN_GPU = 1.9
TARGET_DN_GPU_MEM_VS_IN = 1.2
TARGET_FP16_H100_S = 0.5


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def mode_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The runtime and GPU issues' targets that a ``dnrt bench`` result can speak to."""
    modes = result["modes"]
    backend = result["settings"]["backend"]
    on_gpu = backend in GPU_BACKENDS
    out: list[dict[str, Any]] = []
    ratio = _get(modes, "dn-streaming", "wall_vs_in")
    if ratio is not None:
        limit = TARGET_DN_VS_IN_GPU if on_gpu else TARGET_DN_VS_IN_CPU
        out.append(
            {
                "name": "DN streaming wall time / IN wall time",
                "value": ratio,
                "limit": limit,
                "met": ratio <= limit,
                "issue": 4 if on_gpu else 3,
                "backend": backend,
            }
        )
    mem = _get(modes, "dn-streaming", "gpu_vs_in")
    if on_gpu and mem is not None:
        out.append(
            {
                "name": "DN streaming peak GPU memory / IN",
                "value": mem,
                "limit": TARGET_DN_GPU_MEM_VS_IN,
                "met": mem <= TARGET_DN_GPU_MEM_VS_IN,
                "issue": 4,
                "backend": backend,
            }
        )
    gpus = result["machine"].get("gpus") or []
    wall = _get(modes, "dn-streaming", "wall_s")
    if (
        on_gpu
        and result["settings"]["precision"] == "fp16"
        and wall is not None
        and any("H100" in g["name"] for g in gpus)
        and tuple(DEFAULT_SIZE) == (result["image"]["height"], result["image"]["width"])
    ):
        out.append(
            {
                "name": "fp16 DN streaming on an H100, whole image incl. TIFF read/write (s)",
                "value": wall,
                "limit": TARGET_FP16_H100_S,
                "met": wall <= TARGET_FP16_H100_S,
                "issue": 4,
                "backend": backend,
            }
        )
    serial = _get(modes, "dn-serial", "wall_s")
    if serial is not None and wall is not None:
        out.append(
            {
                "name": "DN streaming: passes not overlapped / overlapped (one vs two streams)",
                "value": serial / wall,
                "limit": None,
                "met": None,
                "issue": 4,
                "backend": backend,
            }
        )
    return out


def format_targets(targets: list[dict[str, Any]]) -> str:
    lines = ["targets (ratios within this run):"]
    for t in targets:
        verdict = "" if t["met"] is None else ("  met" if t["met"] else "  NOT met")
        limit = "" if t["limit"] is None else f" (target <= {t['limit']:g}, issue {t['issue']})"
        lines.append(f"  {t['name']}: {t['value']:.2f}{limit}{verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="JSON written by `dnrt bench --json` (one run)")
    ap.add_argument("--write", action="store_true", help='record the verdicts in the file ("targets")')
    args = ap.parse_args(argv)
    result = json.loads(args.result.read_text())
    if "modes" not in result:
        print(f'error: {args.result} is not one `dnrt bench` run (no "modes")', file=sys.stderr)
        return 2
    targets = mode_targets(result)
    print(format_targets(targets))
    if args.write:
        result["targets"] = targets
        write_json(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
