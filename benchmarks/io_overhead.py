"""I/O never dominates: a translation with a trivially small model vs plain decode + encode.

    .venv/bin/python benchmarks/io_overhead.py                  # the 4302 x 3024 synthetic slide
    .venv/bin/python benchmarks/io_overhead.py --image slide.tif --repeat 5 --json out.json

"copy" reads the TIFF with dnrt's reader in bands of one tile row and writes it with the
runtime's writer (tiled BigTIFF, 512 px tiles, zlib), no model; the translations run
``dnrt.translate`` with a 1x1 conv + one norm layer exported as a bundle. Every run is a
fresh process; rounds are interleaved and the best time of each is kept. Target (runtime
issue): translation wall time within 1.5x of the copy's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_models import export_trivial_bundle
from targets import io_overhead

from dnrt.bench.harness import DEFAULT_SIZE, synthetic_pair, write_json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, help="TIFF to translate [default: the 3024x4302 synthetic slide]")
    ap.add_argument(
        "--modes",
        default="in-streaming,dn-streaming,dn-two-pass",
        help="MODE-SCHEDULE list (default in-streaming,dn-streaming,dn-two-pass)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "dnrt" / "bench")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    image = args.image or synthetic_pair(args.cache_dir, 0, *DEFAULT_SIZE, log)[0]
    model = export_trivial_bundle(args.cache_dir / "trivial.dnrt")
    modes = [tuple(m.split("-", 1)) for m in args.modes.split(",") if m.strip()]
    result = io_overhead(
        image, model, modes=modes, repeat=args.repeat, backend=args.backend, threads=args.threads, log=log
    )
    result["command"] = " ".join(["benchmarks/io_overhead.py", *(argv if argv is not None else sys.argv[1:])])
    print(
        json.dumps({"wall_s_best": result["wall_s_best"], "ratio_to_copy": result["ratio_to_copy"]}, indent=2)
    )
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
