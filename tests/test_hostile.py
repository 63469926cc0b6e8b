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
    from dnrt.atomic import remove_stale_temps

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


# --------------------------------------------------------------------------- 5. resource bounds


@pytest.fixture
def square256(tmp_path: Path) -> Path:
    tifffile.imwrite(tmp_path / "in.tif", _rgb(256, 256), photometric="rgb", tile=(16, 16))
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile", "1000000000"], "tile 1000000000 is larger than the image (256 x 256 px)"),
        (["--tile", "4096"], "use a tile of at most 256"),
        (["--mode", "kin", "--kin-kernel", "100001"], "KIN kernel size 100001 is over the limit of 4095"),
        (["--mode", "kin", "--kin-kernel", "101"], "the image is 16 x 16 tiles"),
        (["--mode", "kin", "--kin-kernel", "101", "--tile", "128"], "at most 15 tiles"),
        (["--threads", "100000"], "threads must be between 1 and"),
    ],
)
def test_options_that_size_memory_are_bounded(
    square256: Path, bundle: Path, args: list[str], message: str
) -> None:
    code, err = _translate(square256 / "in.tif", "-o", square256 / "out.tif", "-m", bundle, "-q", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert _files(square256) == {"in.tif"}


def test_largest_useful_tile_and_kernel_are_accepted(square256: Path, bundle: Path) -> None:
    code, err = _translate(
        square256 / "in.tif", "-o", square256 / "a.tif", "-m", bundle, "-q", "--tile", "256"
    )
    assert (code, err) == (0, "")
    args = ["--mode", "kin", "--kin-kernel", "31"]
    code, err = _translate(square256 / "in.tif", "-o", square256 / "b.tif", "-m", bundle, "-q", *args)
    assert (code, err) == (0, "")


def test_memory_estimate_refuses_before_allocating(
    square256: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnrt.runtime import budget

    monkeypatch.setattr(budget, "memory_available", lambda: 50 << 20)  # 50 MB left
    code, err = _translate(square256 / "in.tif", "-o", square256 / "out.tif", "-m", bundle, "-q")
    assert code == 1
    assert "of memory by estimate" in err and "but 52 MB is available" in err and "--force" in err
    assert _files(square256) == {"in.tif"}
    code, err = _translate(square256 / "in.tif", "-o", square256 / "out.tif", "-m", bundle, "-q", "--force")
    assert (code, err) == (0, "")


def test_memory_available_follows_the_address_space_limit() -> None:
    code = (
        "import resource; from dnrt.runtime.budget import memory_available, _address_space;"
        "resource.setrlimit(resource.RLIMIT_AS, (_address_space() + (300 << 20), resource.RLIM_INFINITY));"
        "print(memory_available() >> 20)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 280 <= int(out) <= 300


# --------------------------------------------------------------------------- 6. TIFF decode cache


def test_huge_stored_tiles_are_refused_with_the_number(tmp_path: Path) -> None:
    from corpus.tiffbytes import Tiff

    from dnrt.runtime.io import open_image

    path = tmp_path / "huge.tif"
    path.write_bytes(Tiff(200_000, 200_000, tile=(16384, 16384), bigtiff=True).to_bytes())
    with pytest.raises(
        DnrtError, match=r"16384 x 16384 px tiles of 768 MiB each decoded, over dnrt's limit of 512"
    ):
        open_image(path)


def test_decode_cache_is_bounded_whatever_the_tile_size(tmp_path: Path) -> None:
    from dnrt.runtime.io import open_image

    height, width, tile = 1024, 16384, 4096
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, np.full((height, width, 3), 7, np.uint8), tile=(tile, tile), photometric="rgb")
    segment = tile * tile * 3
    with open_image(path) as source:
        # Two rows of 512 px of the image's width, or one stored tile when that is larger: not two
        # rows of stored tiles (2 x 4096 rows), which is what the cache held before.
        assert source._cache_bytes == (8 << 20) + max(segment, 1024 * width * 3)
        peak = 0
        remember = source._remember

        def spy(key: object, seg: np.ndarray) -> None:
            nonlocal peak
            remember(key, seg)
            peak = max(peak, source._cache_used)

        source._remember = spy  # type: ignore[method-assign]
        for y in range(0, height, 256):
            band = source.read_region(max(0, y - 16), min(height, y + 272), 0, width)
            assert band.min() == band.max() == 7
        assert peak <= source._cache_bytes


# --------------------------------------------------------------------------- 7. PNG / JPEG decoding


def test_png_declaring_more_than_its_file_can_hold_is_refused(tmp_path: Path) -> None:
    from corpus.pngbytes import png

    from dnrt.runtime.io import open_image

    (tmp_path / "bomb.png").write_bytes(png(30000, 30000, rows=1))
    with pytest.raises(DnrtError, match=r"declares 30000 x 30000 px \(2700 MB of pixel data\) in a file of"):
        open_image(tmp_path / "bomb.png")


@pytest.mark.parametrize("cut", ["stream", "file"])
def test_png_with_missing_rows_is_refused(tmp_path: Path, cut: str) -> None:
    from corpus.pngbytes import png

    from dnrt.runtime.io import open_image

    data = png(64, 64, rows=30) if cut == "stream" else png(64, 64)[:50]
    (tmp_path / "short.png").write_bytes(data)
    with pytest.raises(DnrtError, match="truncated"):
        open_image(tmp_path / "short.png")
    (tmp_path / "full.png").write_bytes(png(64, 64))
    with open_image(tmp_path / "full.png") as source:
        assert (source.read_region(0, 64, 0, 64) == 100).all()


@pytest.mark.parametrize("kind", ["interlaced", "bilevel", "rgba", "grey16", "palette"])
def test_png_check_accepts_every_layout(tmp_path: Path, kind: str) -> None:
    from PIL import Image

    from dnrt.runtime.io import open_image

    rgb = _rgb(37, 53)
    image = {
        "interlaced": Image.fromarray(rgb),
        "bilevel": Image.fromarray(rgb[:, :, 0] > 128),
        "rgba": Image.fromarray(np.dstack([rgb, rgb[:, :, :1]])),
        "grey16": Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257),
        "palette": Image.fromarray(rgb).convert("P"),
    }[kind]
    image.save(tmp_path / "a.png", interlace=int(kind == "interlaced"))
    with open_image(tmp_path / "a.png") as source:
        assert (source.height, source.width) == (37, 53)


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    import io

    from PIL import Image

    from dnrt.runtime.io import open_image

    buffer = io.BytesIO()
    Image.fromarray(_rgb(256, 256)).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DnrtError, match="truncated"):
        open_image(tmp_path / "cut.jpg")


def test_whole_image_decode_must_fit_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from dnrt.runtime import budget
    from dnrt.runtime.io import open_image

    Image.fromarray(np.full((2000, 3000, 3), 255, np.uint8)).save(tmp_path / "white.png")
    monkeypatch.setattr(budget, "memory_available", lambda: 10 << 20)
    with pytest.raises(
        DnrtError, match=r"declares 3000 x 2000 px; decoding it whole needs about 54 MB but 10 MB"
    ):
        open_image(tmp_path / "white.png")


# --------------------------------------------------------------------------- 8. manifest schema


def _manifest(bundle: Path) -> dict:
    import json

    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"L0.stride": 0}, "layers[0].stride: must be between 1 and 1024, got 0"),
        ({"L0.stride": 3}, "layers[0].stride: must be a power of two, got 3"),
        ({"L0.stride": -4}, "layers[0].stride: must be between 1 and 1024, got -4"),
        ({"tile": "16"}, "tile: must be an integer, got '16'"),
        ({"tile": None}, "tile: must be an integer, got null"),
        ({"tile": 32.5}, "tile: must be an integer, got 32.5"),
        ({"tile": 1000000000}, "tile: must be between 1 and 16384, got 1000000000"),
        ({"tile": 18}, "tile: tile 18 + 2 x margin 4 = 26 px must be divisible by 4"),
        ({"in_channels": "3"}, "in_channels: must be an integer, got '3'"),
        ({"in_channels": True}, "in_channels: must be an integer, got a boolean"),
        ({"L0.channels": 1e12}, "layers[0].channels: must be an integer, got 1000000000000.0"),
        ({"L0.offset": 100}, "layers[0].offset: slice [100, 104) is outside the packed statistics [0, 7)"),
        ({"L1.offset": 2}, "overlaps layers[0]'s"),
        ({"L0.activation": "gelu"}, "layers[0].activation: must be one of none, relu, got 'gelu'"),
        ({"L0.name": "x" * 20_000}, "layers[0].name: must be at most 256 characters, got 20000"),
        ({"L0.affine": 1}, "layers[0].affine: must be true or false, got 1"),
        ({"layers": "n0"}, "layers: must be an array of layer objects, got 'n0'"),
        ({"dn_eps": -1}, "dn_eps: must be a number between 0 and 1, got -1"),
        ({"total_channels": 8}, "total_channels: must be the sum of the layers' channels (7), got 8"),
        ({"margin": 16}, "margin: must be smaller than the tile (16), got 16"),
        ({"extra": 1}, "'extra': is not a manifest field"),
    ],
)
def test_manifest_schema_names_the_field(tmp_path: Path, bundle: Path, change: dict, message: str) -> None:
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    data = _manifest(bundle)
    for key, value in change.items():
        if key.startswith("L"):
            index, field = key[1:].split(".")
            data["layers"][int(index)][field] = value
        else:
            data[key] = value
    (broken / "manifest.json").write_text(json.dumps(data))
    tifffile.imwrite(tmp_path / "in.tif", _rgb(40, 50), photometric="rgb")
    code, err = _translate(tmp_path / "in.tif", "-o", tmp_path / "out.tif", "-m", broken, "-q")
    assert code == 1
    assert err == f"error: bundle manifest is malformed: {message}\n" or (
        err.startswith("error: bundle manifest is malformed: ") and message in err and err.count("\n") == 1
    )
    assert not (tmp_path / "out.tif").exists()


def test_manifest_lists_every_problem(bundle: Path) -> None:
    from dnrt.bundle import Manifest

    data = _manifest(bundle)
    data["tile"] = -1
    data["layers"][0]["stride"] = 3
    data["layers"][1]["activation"] = "gelu"
    with pytest.raises(DnrtError) as info:
        Manifest.from_dict(data)
    lines = str(info.value).splitlines()
    assert lines[0] == "bundle manifest is malformed (3 problems):"
    assert lines[1:] == [
        "  tile: must be between 1 and 16384, got -1",
        "  layers[0].stride: must be a power of two, got 3",
        "  layers[1].activation: must be one of none, relu, got 'gelu'",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"tile": NaN}', "contains NaN"),
        ('{"dn_eps": Infinity}', "contains Infinity"),
        ('{"dn_eps": 1e999}', "contains 1e999, which overflows a float"),
        ('{"tile": ' + "9" * 5000 + "}", "contains a 5000-digit integer"),
        ("[" * 10_000 + "]" * 10_000, "nests arrays/objects 10000 deep, over the limit of 32"),
        ('{"tile": 16', "is not valid JSON"),
    ],
)
def test_manifest_json_that_no_exporter_writes_is_refused(
    tmp_path: Path, bundle: Path, text: str, message: str
) -> None:
    import shutil

    from dnrt.bundle import load_bundle

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "manifest.json").write_text(text)
    with pytest.raises(DnrtError, match=message):
        load_bundle(broken)


def test_huge_manifest_is_refused_before_it_is_read(tmp_path: Path, bundle: Path) -> None:
    import shutil

    from dnrt.bundle import load_bundle

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    with open(broken / "manifest.json", "r+b") as fh:
        fh.truncate(4 << 30)  # a sparse 4 GB file: reading it whole would take 4 GB
    with pytest.raises(DnrtError, match=r"is 4294967296 bytes, over the limit of 1048576"):
        load_bundle(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"in_channels": 1}, "declares tiles with 3 channels but the manifest says 1 (in_channels)"),
        ({"n1": 4, "total_channels": 8}, "with 7 channels but the manifest says 8 (the layers' channels)"),
    ],
)
def test_manifest_must_agree_with_the_graphs(
    tmp_path: Path, bundle: Path, change: dict, message: str
) -> None:
    import json
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    data = _manifest(bundle)
    for key, value in change.items():
        if key == "n1":
            data["layers"][1]["channels"] = value
        else:
            data[key] = value
    (broken / "manifest.json").write_text(json.dumps(data))
    channels = data["in_channels"]
    tifffile.imwrite(
        tmp_path / "in.tif",
        _rgb(40, 50)[:, :, :channels].squeeze(),
        photometric="minisblack" if channels == 1 else "rgb",
    )
    code, err = _translate(
        tmp_path / "in.tif", "-o", tmp_path / "out.tif", "-m", broken, "-q", "--backend", "ort"
    )
    assert code == 1 and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "out.tif").exists()


# --------------------------------------------------------------------------- 9. pre-flight


def test_preflight_refuses_an_output_that_cannot_fit(
    work: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnrt.runtime import budget

    monkeypatch.setattr(budget, "disk_free", lambda path: 1000)
    code, err = _translate(
        work / "in.tif", "-o", work / "out.tif", "-m", bundle, "-q", "--compression", "none"
    )
    assert code == 1 and err.count("\n") == 1
    # 40 x 50 px x 3 channels, uncompressed: 6000 bytes.
    assert "the output needs about 6 kB by estimate but its folder has 1 kB free" in err
    assert _files(work) == {"in.tif"}
    code, err = _translate(work / "in.tif", "-o", work / "out.tif", "-m", bundle, "-q", "--force")
    assert (code, err) == (0, "")


def test_preflight_estimates_are_reported(work: Path, bundle: Path) -> None:
    import json

    from dnrt.runtime import budget

    result = CliRunner().invoke(
        translate_command,
        [
            str(work / "in.tif"),
            "-o",
            str(work / "o.tif"),
            "-m",
            str(bundle),
            "--json",
            "--compression",
            "none",
        ],
    )
    assert result.exit_code == 0, result.stderr
    pre = json.loads(result.stdout)["preflight"]
    assert pre["output_bytes"] == 40 * 50 * 3
    # A pyramid adds its levels (a third) and, while it is built, their raw spill files beside
    # the destination: levels of 20 x 25 px and 10 x 13 px (writer tile 16), 3 channels each.
    result = CliRunner().invoke(
        translate_command,
        [str(work / "in.tif"), "-o", str(work / "p.tif"), "-m", str(bundle), "--json"]
        + ["--compression", "none", "--pyramid", "--writer-tile", "16"],
    )
    assert result.exit_code == 0, result.stderr
    spill = (20 * 25 + 10 * 13) * 3
    assert json.loads(result.stdout)["preflight"]["output_bytes"] == int(40 * 50 * 3 * 4 / 3) + spill
    assert pre["peak_memory_bytes"] >= pre["network_bytes"] > 0
    assert pre["disk_free_bytes"] == budget.disk_free(work / "o.tif") or pre["disk_free_bytes"] > 0


def test_progress_is_shown_before_the_first_tile(
    work: Path, bundle: Path, capsys: pytest.CaptureFixture
) -> None:
    import dnrt

    dnrt.translate(work / "in.tif", work / "o.tif", model=bundle, mode="dn", progress=True)
    err = capsys.readouterr().err
    assert "pre-flight: peak memory ~" in err
    shown = [err.find(word) for word in ("loading the model", "thumbnail 1/3 rows", "thumbnail 3/3 rows")]
    assert -1 not in shown and shown == sorted(shown), err


def test_the_model_loads_under_the_progress_bar(
    work: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow model load (a TensorRT build takes minutes) happens with the bar already up."""
    from dnrt.runtime import api, progress
    from dnrt.runtime.api import Translator

    events: list[str] = []
    enter = progress.Progress.__enter__
    monkeypatch.setattr(api.Progress, "__enter__", lambda self: events.append("bar") or enter(self))
    translator = Translator(bundle, mode="dn", progress=False)
    backend = type(translator.backend)
    activate = backend.activate
    monkeypatch.setattr(backend, "activate", lambda self: events.append("load") or activate(self))
    try:
        translator.translate_file(work / "in.tif", work / "o.tif")
    finally:
        translator.close()
    assert events[:2] == ["bar", "load"], events


# --------------------------------------------------------------------------- 10. TIFF orientation


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (6, r"has TIFF Orientation 6 \(stored pixels are shown rotated 90 degrees clockwise\)"),
        (2, r"has TIFF Orientation 2 \(stored pixels are shown mirrored left-right\)"),
        (99, r"has an invalid TIFF Orientation tag \(99; valid: 1 to 8\)"),
        (0, r"has an invalid TIFF Orientation tag \(0; valid: 1 to 8\)"),
    ],
)
def test_non_default_orientation_is_refused(tmp_path: Path, value: int, message: str) -> None:
    from corpus.tiffbytes import ORIENTATION, SHORT, Tiff, deflate_tile

    from dnrt.runtime.io import open_image

    tiff = Tiff(40, 50, segments=[deflate_tile(16, 16)], extra={ORIENTATION: (SHORT, [value])})
    (tmp_path / "o.tif").write_bytes(tiff.to_bytes())
    with pytest.raises(DnrtError, match=message):
        open_image(tmp_path / "o.tif")


def test_default_orientation_is_read(tmp_path: Path) -> None:
    from corpus.tiffbytes import ORIENTATION, SHORT, Tiff, deflate_tile

    from dnrt.runtime.io import open_image

    tiff = Tiff(40, 50, segments=[deflate_tile(16, 16)], extra={ORIENTATION: (SHORT, [1])})
    (tmp_path / "o.tif").write_bytes(tiff.to_bytes())
    with open_image(tmp_path / "o.tif") as source:
        assert (source.read_region(0, 50, 0, 40) == 128).all()


def test_a_signal_re_raised_as_a_plain_keyboard_interrupt_keeps_its_exit_code() -> None:
    """Native code (Ray's waits) may catch the Interrupted that a handled SIGTERM raised and
    raise a plain KeyboardInterrupt instead: the CLI must still say SIGTERM and exit 143."""
    from dnrt.interrupts import describe, exit_code_of, signals_interrupt

    with pytest.raises(KeyboardInterrupt) as info, signals_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises during the sleep
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None  # what such a library does
    assert type(info.value) is KeyboardInterrupt
    assert exit_code_of(info.value) == 143
    assert describe(info.value) == "terminated (SIGTERM)"
    # A later block that no signal ended reports a plain Ctrl-C as SIGINT again.
    with pytest.raises(KeyboardInterrupt) as info, signals_interrupt():
        raise KeyboardInterrupt
    assert exit_code_of(info.value) == 130 and describe(info.value) == "interrupted"


def test_any_exception_after_a_signal_reports_the_signal() -> None:
    """A Ctrl-C that cuts an extension module's initialisation short comes out as
    "ImportError: initialization failed" (CI saw it when SIGINT arrived while ONNX Runtime was
    being imported): the run was interrupted, and says so with the signal's exit code."""
    from dnrt.errorline import ErrorLine, guarded

    def call() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises during the sleep
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None  # what such an import does

    with pytest.raises(ErrorLine) as info:
        guarded(call)
    assert info.value.exit_code == 130 and info.value.format_message() == "interrupted; nothing written"
    # Without a signal, the same exception is a bug report as before.
    with pytest.raises(ErrorLine) as info:
        guarded(lambda: (_ for _ in ()).throw(ImportError("initialization failed")))
    assert info.value.exit_code == 1 and "unexpected ImportError" in info.value.format_message()


def test_a_signal_while_the_temporary_is_created_leaves_nothing(
    work: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM between the temporary's creation and its hand-over to what removes it (CI once
    left `.slide1.tif.dnrt-tmp-…` that way): the signal is held until the writer exists."""
    from dnrt import atomic
    from dnrt.errorline import ErrorLine, guarded
    from dnrt.runtime.api import Translator

    create = atomic.create_temp

    def create_then_signal(dest: Path, *args: object) -> Path:
        temp = create(dest, *args)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # an undeferred handler raises here, before the path is handed back
        return temp

    translator = Translator(bundle, mode="dn")
    monkeypatch.setattr("dnrt.runtime.io.writer.create_temp", create_then_signal)
    try:
        with pytest.raises(ErrorLine) as info:
            guarded(lambda: translator.translate_file(work / "in.tif", work / "o.tif"))
    finally:
        translator.close()
    assert info.value.exit_code == 143
    assert _files(work) == {"in.tif"}


def test_deferred_holds_a_signal_until_the_block_ends() -> None:
    from dnrt.interrupts import Interrupted, deferred, signals_interrupt

    steps: list[str] = []
    with pytest.raises(Interrupted) as info, signals_interrupt():
        with deferred():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.2)
            steps.append("block finished")
        steps.append("after the block")  # not reached: raised as the block ends
    assert steps == ["block finished"] and info.value.signum == signal.SIGHUP


@pytest.mark.parametrize("folder", [False, True])
def test_new_temp_keeps_a_signal_from_orphaning_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: bool
) -> None:
    """Every other writer (atomic files, the tissue mask, trt-onnx, export's bundle folder)
    creates its temporary through dnrt.atomic.new_temp: a signal arriving as it is created is
    held until the temporary is in hand, then removes it on the way out."""
    from dnrt import atomic
    from dnrt.errorline import ErrorLine, guarded

    name = "create_temp_dir" if folder else "create_temp"
    create = getattr(atomic, name)

    def create_then_signal(dest: Path, *args: object) -> Path:
        temp = create(dest, *args)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # an undeferred handler raises here, before the path is handed back
        return temp

    monkeypatch.setattr(atomic, name, create_then_signal)

    def write() -> None:
        with atomic.new_temp(tmp_path / "out", folder=folder):
            raise AssertionError("not reached: the held signal is raised as the temporary is handed over")

    with pytest.raises(ErrorLine) as info:
        guarded(write)
    assert info.value.exit_code == 143 and list(tmp_path.iterdir()) == []
