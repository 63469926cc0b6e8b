"""The one-call device check (benchmarks/gpu/check.sh): its dry run passes on a CPU machine, and
what it checks there can fail (a bench command line that dnrt bench refuses, no time left)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu" / "check.sh"


def _module():
    spec = importlib.util.spec_from_file_location("dnrt_gpu_check", REPO / "benchmarks" / "gpu" / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_plans_every_step_and_writes_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "DNRT_PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["dry_run"] is True
    assert [s["name"] for s in summary["steps"]][:5] == ["env", "deps", "kernels", "pytest", "bundle"]
    assert steps["env"]["status"] == "ok" and steps["deps"]["status"] == "ok"
    assert all(steps[n]["status"] == "planned" for n in ("kernels", "pytest", "bundle")), steps
    # pytest -m gpu collected the marked tests (collection imports them: a broken one fails here).
    assert "collected" in (out / "logs" / "pytest.log").read_text()
    benches = {n: s for n, s in steps.items() if n.startswith("bench-")}
    assert set(benches) == {"bench-torch-cuda-fp32", "bench-torch-cuda-fp16", "bench-ort-cuda-fp32"}
    for name, step in benches.items():
        assert step["status"] == "planned" and "parsed by dnrt bench" in step["detail"]
        cmd = step["command"]
        assert cmd[1:3] == ["-m", "dnrt.bench.cli"]
        assert cmd[cmd.index("--modes") + 1] == "in,tin,kin,dn-two-pass,dn-streaming,dn-serial"
        assert cmd[cmd.index("--size") + 1] == "3024x4302" and cmd[cmd.index("--tile") + 1] == "512"
        assert cmd[cmd.index("--json") + 1] == str(out.resolve() / f"{name}.json")
    assert "| kernels | planned |" in (out / "summary.md").read_text()
    assert json.loads((out / "logs" / "env.json").read_text())["dry_run"] is True


def test_a_checkout_without_an_install_gets_dnrt_installed(tmp_path: Path) -> None:
    """On a bare GPU machine only the checkout is there: ``./dnrt`` imports from the repository
    root but ``dnrt.runtime`` does not, so the check must install the checkout itself."""
    python = tmp_path / "python-without-site"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')  # no site-packages: no install
    python.chmod(0o755)
    check = _module().Check(tmp_path / "out", str(python), False, 120, None)
    assert check.importable({"dnrt": "dnrt", "dnrt.runtime": "dnrt-runtime"}) == ["dnrt-runtime"]
    commands: list[list[str]] = []
    check.run = lambda step, cmd, limit, env=None, log_name="": commands.append(cmd) or True
    assert check.step_deps() is False  # -S hides numpy & co. too: reported missing, not crashed
    assert [c[-2:] for c in commands] == [["-e", "."]]
    assert "missing: numpy" in check.steps[-1].detail


def test_bench_command_lines_are_checked_by_dnrt_bench(tmp_path: Path) -> None:
    check = _module().Check(tmp_path, sys.executable, True, 60, None)
    args = check.bench_args("torch-cuda", "fp16", 30)
    assert check.validate_bench_args(args) is None
    bad_mode = [*args]
    bad_mode[bad_mode.index("--modes") + 1] = "in,dn-sideways"
    assert "dn-sideways" in (check.validate_bench_args(bad_mode) or "")
    bad_backend = [*args]
    bad_backend[bad_backend.index("--backend") + 1] = "cuda"
    assert "cuda" in (check.validate_bench_args(bad_backend) or "")


def test_steps_are_skipped_when_the_budget_is_spent(tmp_path: Path) -> None:
    module = _module()
    check = module.Check(tmp_path, sys.executable, False, 0, None)
    step = check.step("late")
    assert not check.run(step, [sys.executable, "-c", "print(1)"], 60)
    assert step.status == "skipped" and "no time left" in step.detail


@pytest.mark.parametrize("code, status", [("import sys; sys.exit(3)", "failed"), ("print('fine')", "ok")])
def test_a_step_reports_its_exit_status_and_keeps_its_log(tmp_path: Path, code: str, status: str) -> None:
    check = _module().Check(tmp_path, sys.executable, False, 60, None)
    step = check.step("probe")
    check.run(step, [sys.executable, "-c", code], 30)
    assert step.status == status and (tmp_path / step.log).is_file()
    if status == "failed":
        assert step.detail.startswith("exit 3")
