"""Benchmarks of dnrt's normalization modes: speed, memory and fidelity (``dnrt bench``).

- :mod:`dnrt.bench.harness`: runs every mode in its own process and gathers the numbers;
- :mod:`dnrt.bench.fidelity`: seam score, PSNR, SSIM, local colour error (numpy, band-wise);
- :mod:`dnrt.bench.plot`: the bars (matplotlib);
- :mod:`dnrt.bench.cli`: the ``dnrt bench`` command.

Nothing heavy is imported here.
"""

from __future__ import annotations

__all__ = ["fidelity", "harness"]
