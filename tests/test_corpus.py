"""The hostile-input corpus (tests/corpus/cases.py), each case in a child process under the
limits issue 16 sets: a 2 GB address space (``resource.setrlimit`` in the child), 30 s.

Every case must end with its documented exit code and exactly one ``error:`` line (no
traceback), or, for a legitimate input, exit 0 with the output the Python API gives; the
destination folder must hold nothing else afterwards (no temporary, no partial output)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
tifffile = pytest.importorskip("tifffile")

from corpus.cases import CASES, Case  # noqa: E402
from fakes import write_toy_bundle  # noqa: E402

ADDRESS_SPACE = 2 << 30
SECONDS = 30

CHILD = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
from dnrt.runtime.cli import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("corpus-bundle") / "toy.dnrt")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DNRT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=SECONDS,
        env=env,
        # SIGINT at its default, whatever the test runner set (the CLI's own handling is tested).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus_case(case: Case, bundle: Path, tmp_path: Path) -> None:
    inputs, destination = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    destination.mkdir()
    args = case.build(inputs, bundle)
    output = destination / ("out" + case.suffix)
    result = _run([*args, "-o", str(output), "-q"])
    assert "Traceback" not in result.stderr, result.stderr
    left = sorted(p.name for p in destination.iterdir())
    if case.exit_code == 0:
        assert (result.returncode, result.stderr) == (0, ""), result.stderr
        assert left == [output.name]
        _check_output(args, output)
    else:
        lines = result.stderr.splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        assert result.returncode == case.exit_code, result.stderr
        assert len(errors) == 1 and lines[0] == errors[0], result.stderr
        assert case.message is not None and case.message in result.stderr, result.stderr
        assert left == []


def _check_output(args: list[str], output: Path) -> None:
    """The CLI's output equals the Python API's on the same pixels and options."""
    import dnrt
    from dnrt.runtime.io import open_image

    options = {"backend": "ort"}
    flags = args[3:]
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        key = name.lstrip("-").replace("-", "_")
        options[key] = int(value) if value.isdigit() else value
    with open_image(args[0]) as source:
        pixels = source.read_region(0, source.height, 0, source.width)
    with dnrt.Translator(args[2], **options) as translator:
        expected = translator.translate(pixels)
    got = tifffile.imread(output)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)
