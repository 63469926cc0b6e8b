#!/usr/bin/env bash
# The one-call device check: on a bare GPU machine (PyTorch, CuPy, nvcc; no TensorRT, no
# internet) build the kernels for this GPU, run `pytest -m gpu`, benchmark the official 64/9
# generator on the 4302 x 3024 image (torch-cuda fp32/fp16, ort-cuda when its wheel is there),
# and write summary.json / summary.md, the bench JSON/Markdown and every log to $OUT, within
# 9 minutes. `--dry-run` checks on a CPU machine everything that can be checked there.
#
#   benchmarks/gpu/check.sh [--dry-run] [--out DIR] [--python PY] [--budget S] [--wheels DIR]
#
# Python: $DNRT_PYTHON, else the repository's .venv if it exists, else python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${DNRT_PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py="$(command -v python3)"; fi
fi
exec "$py" "$here/check.py" --python "$py" "$@"
