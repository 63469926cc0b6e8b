"""Hostile and huge inputs (issue 16): bad compression levels, termination signals, stale
temporaries left by killed runs, and the permissions of what dnrt writes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
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


# --------------------------------------------------------------------------- 2. signals


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DNRT_DEBUG", None)

    def defaults() -> None:  # a background job may inherit SIGINT/SIGHUP ignored
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)

    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=defaults,
    )


def _signal_when(proc: subprocess.Popen, folder: Path, marker: str, sig: int) -> tuple[str, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(marker in name for name in _files(folder)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be signalled: " + proc.communicate()[1]
    time.sleep(0.2)  # well inside the run, not at its first instruction
    proc.send_signal(sig)
    return proc.communicate(timeout=120)


SIGNALS = [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "SIGTERM"),
    (signal.SIGHUP, 129, "SIGHUP"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS, ids=["INT", "TERM", "HUP"])
def test_translate_signals_leave_no_output(
    tmp_path: Path, bundle: Path, sig: int, code: int, word: str
) -> None:
    tifffile.imwrite(tmp_path / "large.tif", _rgb(2048, 2048), photometric="rgb", tile=(256, 256))
    large, out = str(tmp_path / "large.tif"), str(tmp_path / "out.tif")
    args = [large, "-o", out, "-m", str(bundle), "--batch", "1", "--threads", "1", "-q"]
    proc = _popen(["-m", "dnrt.runtime.cli", *args])
    _, err = _signal_when(proc, tmp_path, ".dnrt-tmp-", sig)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and word in err, err
    assert _files(tmp_path) == {"large.tif"}


def _checkpoint(folder: Path, features: int = 16) -> Path:
    torch = pytest.importorskip("torch")
    from dnrt.models.zoo import build_generator

    torch.manual_seed(0)
    config = {"in_channels": 3, "out_channels": 3, "features": features, "residuals": 2, "affine": False}
    path = folder / "g.pth"
    torch.save(build_generator("official", config).state_dict(), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "word"), SIGNALS[1:], ids=["TERM", "HUP"])
def test_export_signals_leave_no_bundle(tmp_path: Path, sig: int, code: int, word: str) -> None:
    ckpt = _checkpoint(tmp_path)
    script = "from dnrt.cli import export_model_main; export_model_main()"
    proc = _popen(["-c", script, str(ckpt), "-o", str(tmp_path / "m.dnrt"), "--quiet"])
    _, err = _signal_when(proc, tmp_path, ".m.dnrt.dnrt-tmp-", sig)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and word in err, err
    assert _files(tmp_path) == {"g.pth"}


def test_signals_inherited_as_ignored_stay_ignored() -> None:
    from dnrt.interrupts import signals_interrupt

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # nohup's choice is kept
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    finally:
        signal.signal(signal.SIGHUP, old)


# --------------------------------------------------------------------------- 3. stale temporaries


def test_temporaries_carry_the_pid(tmp_path: Path) -> None:
    with open_writer(tmp_path / "o.tif", 600, 600, 3, tile=256, pyramid=True) as writer:
        names = sorted(p.name for p in tmp_path.iterdir())
        pid = os.getpid()
        assert [n.rsplit("-", 1)[0] for n in names] == [
            f".o.tif.dnrt-level1-{pid}",
            f".o.tif.dnrt-level2-{pid}",
            f".o.tif.dnrt-tmp-{pid}",
        ], names
        writer.write_band(_rgb(600, 600))
    assert _files(tmp_path) == {"o.tif"}


def test_a_later_run_removes_stale_temporaries_only(work: Path, bundle: Path) -> None:
    dead, live = _dead_pid(), os.getpid()
    stale = [f".out.tif.dnrt-tmp-{dead}-0badc0de", f".out.tif.dnrt-level1-{dead}-00000001"]
    kept = [
        f".out.tif.dnrt-tmp-{live}-cafef00d",  # a live process's work in progress
        f".other.tif.dnrt-tmp-{dead}-0badc0de",  # another destination's
        f".out.tif.dnrt-tmp-{dead}",  # not a name dnrt writes
        "out.tif.dnrt-tmp-notes.txt",
    ]
    for name in stale + kept:
        (work / name).write_bytes(b"partial")
    code, err = _translate(work / "in.tif", "-o", work / "out.tif", "-m", bundle, "--backend", "ort", "-q")
    assert code == 0, err
    assert _files(work) == {"in.tif", "out.tif", *kept}


def test_stale_bundle_folder_and_backup(tmp_path: Path) -> None:
    from dnrt.runtime.io.atomic import remove_stale_temps

    dead = _dead_pid()
    out = tmp_path / "m.dnrt"
    tmp_dir = tmp_path / f".m.dnrt.dnrt-tmp-{dead}-12345678"
    tmp_dir.mkdir()
    (tmp_dir / "stats.onnx").write_bytes(b"half")
    backup = tmp_path / f".m.dnrt.dnrt-old-{dead}-12345678"
    backup.mkdir()
    # The destination is missing: the backup may be the only copy of the old bundle.
    assert remove_stale_temps(out) == [tmp_dir]
    assert _files(tmp_path) == {backup.name}
    out.mkdir()
    assert remove_stale_temps(out) == [backup]
    assert _files(tmp_path) == {"m.dnrt"}


@pytest.mark.slow
def test_export_removes_a_stale_bundle_folder(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dnrt.cli import export_model_command

    ckpt = _checkpoint(tmp_path, features=8)
    stale = tmp_path / f".m.dnrt.dnrt-tmp-{_dead_pid()}-12345678"
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"half")
    live = tmp_path / f".m.dnrt.dnrt-tmp-{os.getpid()}-87654321"
    live.mkdir()
    result = CliRunner().invoke(
        export_model_command,
        [
            str(ckpt),
            "-o",
            str(tmp_path / "m.dnrt"),
            "--tile",
            "32",
            "--margin",
            "8",
            "--quiet",
            "--no-validate",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) == {"g.pth", "m.dnrt", live.name}


# --------------------------------------------------------------------------- 4. permissions


@pytest.mark.slow
def test_bundle_permissions_follow_the_umask(tmp_path: Path, umask022: None) -> None:
    pytest.importorskip("torch")
    from dnrt.cli import export_model_command

    ckpt = _checkpoint(tmp_path, features=8)
    out = tmp_path / "m.dnrt"
    result = CliRunner().invoke(
        export_model_command, [str(ckpt), "-o", str(out), "--tile", "32", "--margin", "8", "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert oct(_mode(out)) == oct(0o755)
    modes = {p.name: oct(_mode(p)) for p in out.iterdir()}
    assert modes == dict.fromkeys(modes, oct(0o644)) and "weights.safetensors" in modes, modes


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
def test_image_permissions_follow_the_umask(tmp_path: Path, suffix: str) -> None:
    for mask, expected in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = tmp_path / f"o{mask:o}{suffix}"
        old = os.umask(mask)
        try:
            with open_writer(out, 32, 32, 3, tile=16, pyramid=suffix == ".tif") as writer:
                writer.write_band(_rgb(32, 32))
        finally:
            os.umask(old)
        assert oct(_mode(out)) == oct(expected)


# --------------------------------------------------------------------------- 5. external data


def _bundle_with_external(folder: Path, source: Path, location: str, graph: str = "dense.onnx") -> Path:
    import shutil

    import onnx
    from onnx import TensorProto

    bundle = folder / "evil.dnrt"
    shutil.copytree(source, bundle)
    model = onnx.load(str(bundle / graph))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    onnx.save(model, str(bundle / graph))
    return bundle


UNSAFE = ["/etc/passwd", "../../../etc/passwd", "weights/../../outside.bin", ""]


@pytest.mark.parametrize("location", UNSAFE)
def test_trt_onnx_refuses_unsafe_external_data(tmp_path: Path, bundle: Path, location: str) -> None:
    from dnrt.cli import main

    evil = _bundle_with_external(tmp_path, bundle, location)
    result = CliRunner().invoke(main, ["trt-onnx", str(evil), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1, result.output
    err = result.stderr
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "external data location" in err and repr(location) in err, err
    assert _files(tmp_path) == {"evil.dnrt"}


def test_trt_onnx_writes_a_safe_bundle(tmp_path: Path, bundle: Path) -> None:
    from dnrt.cli import main

    result = CliRunner().invoke(main, ["trt-onnx", str(bundle), "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) == {"out.onnx"}


@pytest.mark.parametrize("graph", ["dense.onnx", "stats.onnx"])
def test_ort_backend_refuses_unsafe_external_data(work: Path, bundle: Path, graph: str) -> None:
    evil = _bundle_with_external(work, bundle, "/etc/passwd", graph)
    code, err = _translate(work / "in.tif", "-o", work / "o.tif", "-m", evil, "--backend", "ort")
    assert code == 1, err
    # ONNX Runtime's own refusal (dnrt does not import onnx on the runtime path: in an embedding
    # C application that import would install a SIGINT handler), as one error line.
    assert len(err.strip().splitlines()) == 1 and "external data location" in err, err
    assert not (work / "o.tif").exists()


def test_external_data_inside_the_bundle_is_accepted(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from dnrt.bundle import check_external_data

    (tmp_path / "sub").mkdir()
    (tmp_path / "link.bin").symlink_to("/etc/passwd")
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    graph = helper.make_graph([], "g", [], [], [tensor])
    model = helper.make_model(graph)
    for location, ok in [("w.bin", True), ("sub/w.bin", True), ("./w.bin", True), ("link.bin", False)]:
        tensor = model.graph.initializer[0]
        del tensor.external_data[:]
        tensor.external_data.add(key="location", value=location)
        if ok:
            check_external_data(model, tmp_path, "g.onnx")
        else:
            with pytest.raises(DnrtError, match="outside the bundle folder"):
                check_external_data(model, tmp_path, "g.onnx")
    assert isinstance(model, onnx.ModelProto)
