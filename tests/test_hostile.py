"""Hostile and huge inputs (issue 16): bad compression levels, termination signals, stale
temporaries left by killed runs, and the permissions of what dnrt writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
tifffile = pytest.importorskip("tifffile")

from fakes import write_toy_bundle  # noqa: E402

from dnrt.errors import DnrtError  # noqa: E402
from dnrt.runtime.cli import translate_command  # noqa: E402
from dnrt.runtime.io import Compression, open_writer  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    tifffile.imwrite(tmp_path / "in.tif", _rgb(40, 50), photometric="rgb", tile=(16, 16))
    return tmp_path


def _translate(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(translate_command, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stderr


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- 1. compression


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lzw:5", "lzw takes no level"),
        ("none:3", "none takes no level"),
        ("jpeg:500", "jpeg level must be 1 to 100"),
        ("jpeg:-5", "jpeg level must be 1 to 100"),
        ("jpeg:0", "jpeg level must be 1 to 100"),
        ("zstd:999", "zstd level must be 1 to 22"),
        ("zstd:0", "zstd level must be 1 to 22"),
        ("zlib:10", "zlib level must be 0 to 9"),
        ("deflate:-1", "deflate level must be 0 to 9"),
        ("webp:101", "webp level must be 0 to 100"),
        ("jpeg:abc", "must be an integer"),
        ("jpeg:", "must be an integer"),
        ("zstd:٣", "must be an integer"),  # a non-ASCII digit int() would accept
    ],
)
def test_compression_levels_are_range_checked(spec: str, message: str) -> None:
    with pytest.raises(DnrtError, match=message) as info:
        Compression(spec)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("spec", "args"),
    [
        ("zlib:0", {"level": 0}),
        ("zlib:9", {"level": 9}),
        ("zstd:1", {"level": 1}),
        ("zstd:22", {"level": 22}),
        ("jpeg:1", {"level": 1}),
        ("jpeg:100", {"level": 100}),
        ("jpeg", {"level": 90}),
        ("webp:0", {"level": 0, "lossless": False}),
        ("webp:100", {"lossless": True, "method": 1}),
        ("lzw", {}),
    ],
)
def test_compression_bounds_are_accepted(spec: str, args: dict) -> None:
    assert Compression(spec).args == args


@pytest.mark.parametrize("suffix", [".tif", ".jpg", ".png"])
@pytest.mark.parametrize("spec", ["lzw:5", "jpeg:500", "jpeg:-5", "zstd:999", "jpeg:abc", "zlib:12"])
def test_cli_refuses_bad_compression_for_every_output(
    work: Path, bundle: Path, suffix: str, spec: str
) -> None:
    out = work / f"out{suffix}"
    code, err = _translate(
        work / "in.tif", "-o", out, "-m", bundle, "--backend", "ort", "--compression", spec
    )
    assert code == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    assert _files(work) == {"in.tif"}


def test_cli_lzw_level_names_the_problem(work: Path, bundle: Path) -> None:
    code, err = _translate(work / "in.tif", "-o", work / "o.tif", "-m", bundle, "--compression", "lzw:5")
    assert code == 2 and "lzw takes no level" in err, err


def test_pillow_outputs_use_the_level(tmp_path: Path) -> None:
    from PIL import Image

    image = _rgb(64, 64)
    sizes = {}
    for quality in (5, 95):
        out = tmp_path / f"q{quality}.jpg"
        with open_writer(out, 64, 64, 3, compression=f"jpeg:{quality}") as writer:
            writer.write_band(image)
        sizes[quality] = out.stat().st_size
    assert sizes[5] < sizes[95] / 2
    for spec in ("zlib:0", "none", "zlib:9"):
        out = tmp_path / f"{spec.replace(':', '')}.png"
        with open_writer(out, 64, 64, 3, compression=spec) as writer:
            writer.write_band(image)
        np.testing.assert_array_equal(np.asarray(Image.open(out)), image)
    assert (tmp_path / "zlib0.png").stat().st_size > 64 * 64 * 3  # stored, not deflated
    for spec, suffix, message in [
        ("zlib:3", ".jpg", "does not apply to a .jpg"),
        ("zstd", ".png", "does not apply to a .png"),
        ("jpeg:0", ".jpg", "1 to 100"),
        ("zlib:10", ".png", "0 to 9"),
    ]:
        with pytest.raises(DnrtError, match=message):
            open_writer(tmp_path / f"bad{suffix}", 8, 8, 3, compression=spec)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
