"""The one-call device check (benchmarks/gpu/check.sh runs this): everything a GPU machine can
verify about dnrt, in one short run, with results and logs in one folder.

Steps, each with its own time limit inside the whole budget (default 540 s, 9 minutes), each
recorded as ok / failed / skipped (with the reason) / planned (dry run):

1. ``env``      what the machine has: GPUs (nvidia-smi), PyTorch and its CUDA, CuPy, nvcc,
                onnxruntime's providers, TensorRT, cuda-python.
2. ``deps``     dnrt and its Python dependencies importable; with ``--wheels DIR`` the missing
                ones are installed from carried wheels (no index: the machine has no internet).
3. ``kernels``  ``libdnrt_kernels.so`` compiled with nvcc for this GPU's architecture.
4. ``pytest``   ``pytest -m gpu`` on the test files that carry the marker, kernels found.
5. ``bundle``   the official 64-feature 9-block generator (seeded random weights: speed and
                memory do not depend on them), T = 512, M = 16, exported once.
6. ``bench-*``  ``dnrt bench`` on the 4302 x 3024 synthetic slide for torch-cuda fp32 and fp16,
                ort-cuda fp32 when onnxruntime has the CUDA provider: modes in, tin, kin,
                dn-two-pass, dn-streaming (collect and infer on two streams) and dn-serial (the
                same passes one after the other: one stream at a time), JSON and Markdown each.

The kernels, the bundle and the synthetic slide are made in a work folder outside ``--out``
(``$DNRT_CHECK_WORK``, default ``$TMPDIR/dnrt-gpu-check``), so only results and logs come back.

``--dry-run`` runs what a CPU machine can: the environment report, the import checks, the plan
of every command with the bench command lines parsed by ``dnrt bench``'s own option parser, the
kernels' sources and nvcc looked up, the GPU tests collected (not run); it builds and measures
nothing. The summary (``summary.json``, ``summary.md``) and every step's log go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: The paper's Table S1 image and generator.
SIZE = "3024x4302"
TILE, MARGIN = 512, 16
MODES = "in,tin,kin,dn-two-pass,dn-streaming,dn-serial"
#: Python modules a translation needs (package name to report when missing).
RUNTIME_DEPS = {
    "numpy": "numpy",
    "click": "click",
    "tifffile": "tifffile",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "PIL": "Pillow",
}
#: What exporting the bundle needs beyond the runtime (ONNX graphs beside the weights).
EXPORT_DEPS = {"torch": "torch", "onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}


@dataclass
class Step:
    name: str
    status: str = "pending"  # ok, failed, skipped, planned
    seconds: float = 0.0
    detail: str = ""
    command: list[str] = field(default_factory=list)
    log: str | None = None


class Check:
    def __init__(self, out: Path, python: str, dry_run: bool, budget: float, wheels: Path | None) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.dry_run = dry_run
        self.deadline = time.monotonic() + budget
        self.wheels = wheels
        self.steps: list[Step] = []
        self.env: dict[str, Any] = {}
        # Big things (the kernels, the 64/9 bundle, the synthetic slide) stay out of ``out``,
        # which is what comes back from the device machine.
        self.work = Path(os.environ.get("DNRT_CHECK_WORK") or Path(tempfile.gettempdir()) / "dnrt-gpu-check")
        self.work.mkdir(parents=True, exist_ok=True)
        self.plugin_dir = self.work / "build"

    # -- helpers ---------------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def step(self, name: str) -> Step:
        step = Step(name)
        self.steps.append(step)
        print(f"[check] {name} ...", flush=True)
        return step

    def finish(self, step: Step, status: str, detail: str = "", started: float | None = None) -> None:
        step.status, step.detail = status, detail
        if started is not None:
            step.seconds = round(time.monotonic() - started, 2)
        print(f"[check] {step.name}: {status}{' - ' + detail if detail else ''}", flush=True)

    def run(
        self, step: Step, cmd: list[str], limit: float, env: dict[str, str] | None = None, log_name: str = ""
    ) -> bool:
        """Run ``cmd`` with its output in the step's log; False (and the step failed) on error."""
        step.command = cmd
        log = self.logs / f"{log_name or step.name}.log"
        step.log = str(log.relative_to(self.out))
        limit = min(limit, self.left() - 5)
        started = time.monotonic()
        if limit < 5:
            self.finish(step, "skipped", "no time left in the budget")
            return False
        with log.open("w") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=REPO,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=limit,
                    env={**os.environ, **(env or {})},
                )
            except subprocess.TimeoutExpired:
                self.finish(step, "failed", f"timed out after {limit:.0f} s", started)
                return False
            except OSError as exc:
                self.finish(step, "failed", str(exc), started)
                return False
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
            self.finish(step, "failed", f"exit {proc.returncode}: {tail[0][:200]}", started)
            return False
        self.finish(step, "ok", "", started)
        return True

    def probe(self, code: str) -> str | None:
        """Run a snippet in the target Python; its stdout, or None if it failed."""
        try:
            proc = subprocess.run(
                [self.python, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    def importable(self, modules: dict[str, str]) -> list[str]:
        # find_spec of a submodule imports its parent, which may itself fail: that is missing too.
        code = (
            "import importlib.util, json\n"
            "def found(m):\n"
            "    try:\n"
            "        return importlib.util.find_spec(m) is not None\n"
            "    except Exception:\n"
            "        return False\n"
            "print(json.dumps([m for m in " + json.dumps(list(modules)) + " if not found(m)]))"
        )
        out = self.probe(code)
        return [modules[m] for m in json.loads(out)] if out is not None else list(modules.values())

    # -- steps -----------------------------------------------------------------------------
    def step_env(self) -> None:
        step = self.step("env")
        started = time.monotonic()
        env: dict[str, Any] = {"host": platform.node(), "python": self.python, "dry_run": self.dry_run}
        smi = shutil.which("nvidia-smi")
        if smi:
            query = "name,memory.total,driver_version,compute_cap"
            res = subprocess.run(
                [smi, f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True
            )
            env["gpus"] = [line.strip() for line in res.stdout.splitlines() if line.strip()]
        else:
            env["gpus"] = []
        probe = (
            "import json, importlib.util as u\n"
            "d = {}\n"
            "if u.find_spec('torch'):\n"
            "    import torch; d['torch'] = torch.__version__; d['torch_cuda'] = torch.version.cuda\n"
            "    d['torch_sees_gpu'] = bool(torch.cuda.is_available())\n"
            "    d['torch_gpu'] = torch.cuda.get_device_name(0) if d['torch_sees_gpu'] else None\n"
            "if u.find_spec('cupy'):\n"
            "    import cupy; d['cupy'] = cupy.__version__\n"
            "if u.find_spec('onnxruntime'):\n"
            "    import onnxruntime as o; d['onnxruntime'] = o.__version__\n"
            "    d['ort_providers'] = o.get_available_providers()\n"
            "d['tensorrt'] = bool(u.find_spec('tensorrt')); d['cuda_python'] = bool(u.find_spec('cuda'))\n"
            "print(json.dumps(d))"
        )
        found = self.probe(probe)
        env.update(json.loads(found) if found else {"probe": "failed"})
        nvcc = self.nvcc()
        env["nvcc"] = nvcc
        if nvcc:
            res = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
            env["nvcc_version"] = res.stdout.strip().splitlines()[-1] if res.stdout else None
        self.env = env
        (self.logs / "env.json").write_text(json.dumps(env, indent=2))
        step.log = "logs/env.json"
        self.finish(step, "ok", ", ".join(env["gpus"]) or "no GPU", started)

    def nvcc(self) -> str | None:
        found = shutil.which("nvcc")
        if found is None and Path("/usr/local/cuda/bin/nvcc").is_file():
            found = "/usr/local/cuda/bin/nvcc"
        return found

    def gpu(self) -> bool:
        return bool(self.env.get("gpus")) and bool(self.env.get("torch_sees_gpu"))

    def step_deps(self) -> bool:
        step = self.step("deps")
        started = time.monotonic()
        # ``dnrt.runtime``, not ``dnrt``: from the checkout's root ``./dnrt`` always imports, but
        # ``dnrt.runtime`` maps to ``runtime/`` only through an install (pyproject's package-dir).
        runtime = {**RUNTIME_DEPS, "dnrt.runtime": "dnrt"}
        if not self.dry_run:
            if self.wheels:
                # One package at a time: a wheel that was not carried must not stop the others.
                wanted = self.importable({**RUNTIME_DEPS, "pytest": "pytest", **EXPORT_DEPS})
                for name in wanted:
                    pip = [
                        self.python,
                        "-m",
                        "pip",
                        "install",
                        "--no-index",
                        "--find-links",
                        str(self.wheels),
                    ]
                    self.run(step, [*pip, name], 60, log_name=f"deps-{name}")
            if self.importable({"dnrt.runtime": "dnrt"}):  # a bare machine: the copied checkout only
                pip = [self.python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation"]
                self.run(step, [*pip, "-e", "."], 120, log_name="deps-dnrt")
        missing = self.importable(runtime)
        export_missing = self.importable(EXPORT_DEPS)
        self.env["export_missing"] = export_missing
        if missing:
            how = "" if self.wheels else " (carry wheels and pass --wheels DIR)"
            self.finish(step, "failed", f"missing: {', '.join(missing)}{how}", started)
            return False
        note = f"; export needs {', '.join(export_missing)}" if export_missing else ""
        self.finish(step, "ok", f"runtime importable{note}", started)
        return True

    def step_kernels(self) -> None:
        step = self.step("kernels")
        sources = REPO / "plugins" / "dense_norm"
        needed = ["denseNormKernel.cu", "dnrtKernelsCApi.cpp"]
        absent = [n for n in needed if not (sources / n).is_file()]
        if absent:
            self.finish(step, "failed", f"kernel sources missing: {', '.join(absent)}")
            return
        arch = self.arch()
        code = (
            "from dnrt.kernels import compile_kernels_library; "
            f"print(compile_kernels_library({str(self.plugin_dir)!r}, arch={arch!r}))"
        )
        cmd = [self.python, "-c", code]
        if self.dry_run or self.nvcc() is None:
            step.command = cmd
            why = "dry run" if self.dry_run else "no nvcc"
            self.finish(step, "planned" if self.dry_run else "skipped", f"{why}: would compile for sm_{arch}")
            return
        self.run(step, cmd, 180)

    def arch(self) -> str:
        """The first GPU's compute capability as nvcc wants it (``90``), else ``native``."""
        for line in self.env.get("gpus", []):
            cap = line.split(",")[-1].strip()
            if cap.replace(".", "").isdigit():
                return cap.replace(".", "")
        return "native"

    def gpu_test_files(self) -> list[str]:
        return sorted(
            str(p.relative_to(REPO))
            for p in (REPO / "tests").glob("test_*.py")
            if "pytest.mark.gpu" in p.read_text(errors="replace")
        )

    def step_pytest(self) -> None:
        step = self.step("pytest")
        if self.importable({"pytest": "pytest"}):
            self.finish(step, "skipped", "pytest is not installed (carry its wheel: --wheels DIR)")
            return
        files = self.gpu_test_files()
        env = {"DNRT_PLUGIN_DIR": str(self.plugin_dir)}
        if self.dry_run:
            cmd = [
                self.python,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                "--collect-only",
                "-p",
                "no:cacheprovider",
                *files,
            ]
            self.run(step, cmd, 120, env)
            if step.status == "ok":
                step.status, step.detail = (
                    "planned",
                    f"dry run: collected the GPU tests of {len(files)} files",
                )
            return
        junit = self.out / "pytest-gpu.xml"
        cmd = [
            self.python,
            "-m",
            "pytest",
            "-q",
            "-m",
            "gpu",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            *files,
        ]
        self.run(step, cmd, 240, env)

    def bundle_path(self) -> Path:
        return self.work / "official64.dnrt"

    def step_bundle(self) -> bool:
        step = self.step("bundle")
        code = (
            f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); "
            "from bench_models import OFFICIAL_PAPER_CONFIG, export_random_official; "
            f"export_random_official({str(self.bundle_path())!r}, OFFICIAL_PAPER_CONFIG, tile={TILE}, margin={MARGIN})"
        )
        cmd = [self.python, "-c", code]
        if self.dry_run:
            step.command = cmd
            self.finish(step, "planned", "dry run: the 64/9 export is not run on the CPU")
            return True
        if self.env.get("export_missing"):
            step.command = cmd
            self.finish(step, "skipped", f"export needs {', '.join(self.env['export_missing'])}")
            return False
        return self.run(step, cmd, 120)

    def bench_configs(self) -> list[tuple[str, str]]:
        configs = [("torch-cuda", "fp32"), ("torch-cuda", "fp16")]
        if "CUDAExecutionProvider" in self.env.get("ort_providers", []) or self.dry_run:
            configs.append(("ort-cuda", "fp32"))
        return configs

    def bench_args(self, backend: str, precision: str, timeout: float) -> list[str]:
        stem = self.out / f"bench-{backend}-{precision}"
        return [
            "--model", str(self.bundle_path()),
            "--backend", backend,
            "--precision", precision,
            "--size", SIZE,
            "--tile", str(TILE),
            "--margin", str(MARGIN),
            "--modes", MODES,
            "--repeat", "1",
            "--no-fidelity",
            "--max-whole-megapixels", "0",
            "--cache-dir", str(self.work / "cache"),
            "--timeout", str(int(timeout)),
            "--json", f"{stem}.json",
            "--markdown", f"{stem}.md",
        ]  # fmt: skip

    def step_bench(self, have_bundle: bool) -> None:
        configs = self.bench_configs()
        for i, (backend, precision) in enumerate(configs):
            step = self.step(f"bench-{backend}-{precision}")
            share = max(self.left() - 10, 0) / (len(configs) - i)
            args = self.bench_args(backend, precision, timeout=max(share / 7, 10))
            cmd = [self.python, "-m", "dnrt.bench.cli", *args]
            if self.dry_run:
                step.command = cmd
                error = self.validate_bench_args(args)
                if error:
                    self.finish(step, "failed", f"dnrt bench refuses the command line: {error}")
                else:
                    self.finish(step, "planned", "dry run: command line parsed by dnrt bench")
                continue
            if not have_bundle:
                step.command = cmd
                self.finish(step, "skipped", "no bundle")
                continue
            self.run(step, cmd, share)

    def validate_bench_args(self, args: list[str]) -> str | None:
        """Parse ``args`` with dnrt bench's click command (and its mode parser) in the target Python."""
        code = (
            "import sys, json\n"
            "from dnrt.bench.cli import bench_command\n"
            "from dnrt.bench.harness import parse_modes\n"
            "args = json.loads(sys.argv[1])\n"
            "ctx = bench_command.make_context('bench', args)\n"
            "parse_modes(ctx.params['modes'])\n"
            "print('ok')\n"
        )
        try:
            proc = subprocess.run(
                [self.python, "-c", code, json.dumps(args)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=REPO,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if proc.returncode == 0:
            return None
        return (proc.stderr.strip().splitlines() or ["unknown error"])[-1]

    # -- the whole check -------------------------------------------------------------------
    def main(self) -> int:
        self.step_env()
        if not self.dry_run and not self.gpu():
            print("[check] no CUDA GPU visible to PyTorch: the GPU steps will fail or be skipped", flush=True)
        deps = self.step_deps()
        if deps:
            self.step_kernels()
            self.step_pytest()
            have_bundle = self.step_bundle()
            self.step_bench(have_bundle)
        self.write_summary()
        failed = [s.name for s in self.steps if s.status == "failed"]
        print(
            f"[check] done: {'failed: ' + ', '.join(failed) if failed else 'no step failed'}; see {self.out}"
        )
        return 1 if failed else 0

    def write_summary(self) -> None:
        summary = {
            "dry_run": self.dry_run,
            "device": ", ".join(self.env.get("gpus", [])) or None,
            "env": self.env,
            "steps": [asdict(s) for s in self.steps],
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        lines = [
            f"# dnrt device check{' (dry run)' if self.dry_run else ''}",
            "",
            f"Device: {summary['device'] or 'no GPU'}; Python {self.env.get('python')}, "
            f"PyTorch {self.env.get('torch')} (CUDA {self.env.get('torch_cuda')}), nvcc: {self.env.get('nvcc_version') or 'none'}",
            "",
            "| step | status | seconds | detail | log |",
            "|---|---|---|---|---|",
        ]
        for s in self.steps:
            lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.detail} | {s.log or ''} |")
        benches = sorted(self.out.glob("bench-*.md"))
        if benches:
            lines += ["", "Benchmark reports: " + ", ".join(p.name for p in benches)]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu/check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="check what a CPU machine can; build and measure nothing"
    )
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check-out"))
    parser.add_argument("--python", default=sys.executable, help="the Python that runs dnrt")
    parser.add_argument(
        "--budget", type=float, default=540.0, help="seconds for the whole check (default 540)"
    )
    parser.add_argument("--wheels", type=Path, help="a folder of carried wheels for missing dependencies")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out.resolve(), args.python, args.dry_run, args.budget, args.wheels)
    return check.main()


if __name__ == "__main__":
    sys.exit(main())
