"""Bounded memory: DN streaming on square synthetic slides of growing size, one process each.

    .venv/bin/python benchmarks/memory.py                       # 4000, 8000, 16000 px; tiny model
    .venv/bin/python benchmarks/memory.py --sizes 4000,8000 --model BUNDLE --json out.json

Target (runtime issue): a 16000 x 16000 RGB BigTIFF translates with DN at a peak RSS under
700 MB with a tiny model, and memory does not grow with the image's area. ``--model`` defaults
to the official generator at 8 features / 2 blocks with random weights (``--trivial``: a 1x1
conv + one norm, which measures the runtime's own memory with almost no model at all).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_models import OFFICIAL_TINY, export_random_official, export_trivial_bundle
from targets import memory_scaling

from dnrt.bench.harness import write_json
from dnrt.data.synthetic import parse_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes",
        default="4000,8000,16000",
        help="N (square) or HEIGHTxWIDTH, comma-separated (default 4000,8000,16000)",
    )
    ap.add_argument("--model", type=Path, help="model bundle [default: tiny random official generator]")
    ap.add_argument("--trivial", action="store_true", help="use the trivial 1x1-conv model")
    ap.add_argument("--mode", default="dn", choices=("in", "tin", "kin", "dn"))
    ap.add_argument("--schedule", default="streaming", choices=("streaming", "two-pass"))
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dnrt" / "bench")
    ap.add_argument("--timeout", type=float, help="seconds allowed per size")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    if args.model is not None:
        model = args.model
    elif args.trivial:
        model = export_trivial_bundle(args.cache_dir / "trivial.dnrt")
    else:
        model = export_random_official(args.cache_dir / "official-f8-r2-t512.dnrt", OFFICIAL_TINY)
    result = memory_scaling(
        model, sizes, cache_dir=args.cache_dir, mode=args.mode, schedule=args.schedule, backend=args.backend,
        threads=args.threads, timeout=args.timeout, log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    result["command"] = " ".join(["benchmarks/memory.py", *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps(result.get("summary"), indent=2))
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
