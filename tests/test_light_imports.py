"""`import dnrt` (and the CLI entry points) must not pull in the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "matplotlib", "openslide")


def loaded_after(statement: str) -> list[str]:
    code = f"{statement}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [name for name in out.split() if name in HEAVY]


def test_import_dnrt_is_light() -> None:
    assert loaded_after("import dnrt") == []


def test_cli_modules_are_light() -> None:
    assert loaded_after("import dnrt.cli, dnrt.runtime.cli, dnrt.semantics, dnrt.bundle") == []


def test_cli_help_does_not_load_heavy_libraries() -> None:
    assert (
        loaded_after(
            "import sys; sys.argv = ['dnrt', '--help']\nimport dnrt.cli\ntry:\n    dnrt.cli.main()\n"
            "except SystemExit:\n    pass"
        )
        == []
    )
