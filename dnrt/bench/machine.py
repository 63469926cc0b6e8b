"""What the benchmark ran on: CPU, cores, memory, GPU, load, library versions (standard library only)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

#: Distributions whose versions go into every result.
PACKAGES = (
    "dnrt",
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "tensorrt",
    "cuda-python",
    "tifffile",
    "imagecodecs",
    "matplotlib",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1024 * 1024), 1)
    except (OSError, ValueError):
        pass
    return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi names them (empty without a driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            found.append({"name": parts[0], "memory": parts[1], "driver": parts[2]})
    return found


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": memory_total_gib(),
        "gpus": gpus(),
        "platform": platform.platform(),
        "load_average": load_average(),
    }


def describe_machine(info: dict[str, Any]) -> str:
    gpu = ", ".join(g["name"] for g in info.get("gpus") or []) or "no GPU"
    memory = f", {info['memory_gib']} GiB RAM" if info.get("memory_gib") else ""
    return f"{info['cpu']}, {info['usable_cores']} of {info['cores']} cores usable{memory}, {gpu}"
