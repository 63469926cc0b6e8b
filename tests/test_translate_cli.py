"""``trt-translate`` end to end on the toy ONNX bundle: results, reports, and every bad input.

Bad inputs must give one ``error: ...`` line, a non-zero exit, no traceback and no file
(partial or temporary) at the destination; an existing output must stay untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
tifffile = pytest.importorskip("tifffile")

from fakes import write_toy_bundle  # noqa: E402

from dnrt.runtime.api import Translator, translate  # noqa: E402
from dnrt.runtime.cli import translate_command  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 70 * np.sin(yy[..., None] / 11.0 + np.array([0.0, 1.0, 2.0])) * np.cos(xx[..., None] / 7.0)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    image = _rgb(70, 90)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", tile=(32, 32), compression="zlib")
    return tmp_path


def _run(*args: str | Path) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(translate_command, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    stderr = result.stderr if hasattr(result, "stderr") else ""
    return result.exit_code, result.stdout, stderr


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("mode", ["in", "tin", "kin", "dn"])
def test_output_matches_in_memory_translation(work: Path, bundle: Path, mode: str) -> None:
    code, out, err = _run(
        work / "in.tif", "-o", work / "out.tif", "--model", bundle, "--mode", mode, "--backend", "ort", "-q"
    )
    assert code == 0, err
    assert err == "" and out == ""  # --quiet: nothing at all
    written = tifffile.imread(work / "out.tif")
    source = tifffile.imread(work / "in.tif")
    assert written.shape == source.shape  # output size == input size
    with Translator(bundle, mode=mode, backend="ort") as translator:
        np.testing.assert_array_equal(written, translator.translate(source))


def test_schedules_bit_identical_through_files(work: Path, bundle: Path) -> None:
    for schedule in ("streaming", "two-pass"):
        code, _, err = _run(
            work / "in.tif",
            "-o",
            work / f"{schedule}.tif",
            "-m",
            bundle,
            "--schedule",
            schedule,
            "--batch",
            "3",
            "-q",
        )
        assert code == 0, err
    np.testing.assert_array_equal(
        tifffile.imread(work / "streaming.tif"), tifffile.imread(work / "two-pass.tif")
    )


def test_json_report(work: Path, bundle: Path) -> None:
    code, out, err = _run(
        work / "in.tif", "-o", work / "out.tif", "-m", bundle, "--json", "--tile", "8", "--margin", "2"
    )
    assert code == 0, err
    report = json.loads(out)
    assert (report["height"], report["width"], report["tile"], report["margin"]) == (70, 90, 8, 2)
    assert (report["rows"], report["cols"], report["tiles"]) == (9, 12, 108)
    assert report["mode"] == "dn" and report["schedule"] == "streaming"
    # dnrt's defaults, said in the report.
    assert (report["margin_source"], report["degenerate"], report["degenerate_ratio"]) == (
        "image",
        "slide",
        0.6,
    )
    assert set(report["seconds"]) == {"read", "thumbnail", "collect", "infer", "write", "total"}
    assert report["peak_rss_mb"] > 0 and report["megapixels_per_s"] > 0
    assert report["output"].endswith("out.tif")


def test_summary_line_and_pyramid(work: Path, bundle: Path) -> None:
    big = _rgb(300, 260, seed=4)
    tifffile.imwrite(work / "big.tif", big, photometric="rgb")
    code, out, err = _run(
        work / "big.tif", "-o", work / "out.tif", "-m", bundle, "--pyramid", "--compression", "zstd"
    )
    assert code == 0, err
    assert out == "" and "out.tif: 260 x 300" in err and "MP/s" in err
    with tifffile.TiffFile(work / "out.tif") as tif:
        assert tif.pages[0].shape == (300, 260, 3)
        assert tif.pages[0].is_tiled


def test_uint16_input_is_converted(work: Path, bundle: Path) -> None:
    image = _rgb(40, 50)
    tifffile.imwrite(work / "deep.tif", image.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(work / "flat.tif", image, photometric="rgb")
    for name in ("deep", "flat"):
        code, _, err = _run(work / f"{name}.tif", "-o", work / f"{name}-out.tif", "-m", bundle, "-q")
        assert code == 0, err
    np.testing.assert_array_equal(
        tifffile.imread(work / "deep-out.tif"), tifffile.imread(work / "flat-out.tif")
    )


def test_python_api(work: Path, bundle: Path) -> None:
    report = translate(
        work / "in.tif", work / "api.tif", model=bundle, mode="kin", schedule="two-pass", batch=2
    )
    assert report.tiles == 5 * 6 and report.mode == "kin" and report.schedule == "two-pass"
    assert tifffile.imread(work / "api.tif").shape == (70, 90, 3)


# --------------------------------------------------------------------------- bad input


def _expect_error(work: Path, args: list, pattern: str, code: int = 1) -> None:
    before = _files(work)
    exit_code, out, err = _run(*args)
    lines = err.strip().splitlines()
    assert exit_code == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err
    assert _files(work) == before  # no partial or temporary file left behind


def test_existing_output_untouched(work: Path, bundle: Path) -> None:
    (work / "out.tif").write_bytes(b"precious")
    _expect_error(work, [work / "in.tif", "-o", work / "out.tif", "-m", bundle], "--overwrite")
    assert (work / "out.tif").read_bytes() == b"precious"
    code, _, err = _run(work / "in.tif", "-o", work / "out.tif", "-m", bundle, "--overwrite", "-q")
    assert code == 0, err
    assert tifffile.imread(work / "out.tif").shape == (70, 90, 3)


def test_bad_inputs(work: Path, bundle: Path) -> None:
    out = work / "out.tif"
    m = ["-m", bundle]
    _expect_error(work, [work / "missing.tif", "-o", out, *m], "does not exist")
    (work / "text.tif").write_text("this is not an image\n")
    _expect_error(work, [work / "text.tif", "-o", out, *m], "error")
    (work / "empty.tif").write_bytes(b"")
    _expect_error(work, [work / "empty.tif", "-o", out, *m], "empty")
    data = (work / "in.tif").read_bytes()
    (work / "truncated.tif").write_bytes(data[: len(data) // 2])
    _expect_error(work, [work / "truncated.tif", "-o", out, *m], "truncated")
    tifffile.imwrite(work / "gray.tif", _rgb(30, 30)[..., 0])
    _expect_error(work, [work / "gray.tif", "-o", out, *m], "3-channel")
    tifffile.imwrite(work / "float.tif", _rgb(30, 30).astype(np.float32) / 255, photometric="rgb")
    _expect_error(work, [work / "float.tif", "-o", out, *m], "float32")
    _expect_error(work, [work, "-o", out, *m], "directory")


def test_bad_bundles(work: Path, bundle: Path) -> None:
    out = work / "out.tif"
    inp = work / "in.tif"
    _expect_error(work, [inp, "-o", out, "-m", work / "nope"], "not found")
    broken = work / "broken"
    broken.mkdir()
    for name in ("stats.onnx", "dense.onnx"):
        (broken / name).write_bytes((bundle / name).read_bytes())
    _expect_error(work, [inp, "-o", out, "-m", broken], "manifest.json is missing")
    (broken / "manifest.json").write_text("{not json")
    _expect_error(work, [inp, "-o", out, "-m", broken], "not valid JSON")
    (broken / "manifest.json").write_text((bundle / "manifest.json").read_text())
    (broken / "dense.onnx").write_bytes(b"\x08\x07garbage")
    _expect_error(work, [inp, "-o", out, "-m", broken, "--backend", "ort"], "cannot load")
    # Each mode loads the graphs it runs, before any output exists; IN never runs dense.onnx.
    code, _, err = _run(inp, "-o", out, "-m", broken, "--backend", "ort", "--mode", "in", "--quiet")
    assert code == 0 and out.is_file(), err
    out.unlink()
    (broken / "dense.onnx").write_bytes((bundle / "dense.onnx").read_bytes())
    (broken / "stats.onnx").write_bytes(b"\x08\x07garbage")
    for mode in ("in", "dn", "kin", "tin"):
        _expect_error(work, [inp, "-o", out, "-m", broken, "--backend", "ort", "--mode", mode], "stats.onnx")


def test_bad_options(work: Path, bundle: Path) -> None:
    inp, out, m = work / "in.tif", work / "out.tif", ["-m", bundle]
    _expect_error(work, [inp, "-o", out, *m, "--mode", "bn"], "'--mode'", code=2)
    _expect_error(work, [inp, *m], "'--output'", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--batch", "0"], "'--batch'", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--margin", "3"], "even")
    _expect_error(work, [inp, "-o", out, *m, "--mode", "kin", "--kin-kernel", "4"], "odd", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--std-floor", "-1"], "std floor", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--compression", "gzip9"], "compression", code=2)
    _expect_error(work, [inp, "-o", work / "missing-folder" / "o.tif", *m], "does not exist")
    _expect_error(work, [inp, "-o", work / "out.xyz", *m], "suffix")
    _expect_error(work, [inp, "-o", inp, *m, "--overwrite"], "input")
    # The fidelity options (issue 12): margins the tile or the map sizes refuse, unknown rules.
    _expect_error(work, [inp, "-o", out, *m, "--margin", "40"], "smaller than the tile", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--margin-source", "zeros"], "'--margin-source'", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--degenerate", "median"], "'--degenerate'", code=2)
    _expect_error(work, [inp, "-o", out, *m, "--degenerate-ratio", "0"], "'--degenerate-ratio'", code=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder(work: Path, bundle: Path) -> None:
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _expect_error(work, [work / "in.tif", "-o", locked / "o.tif", "-m", bundle], "not writable")
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- real processes


def _cli(*args: str | Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DNRT_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dnrt.runtime.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # Python only turns SIGINT into KeyboardInterrupt when it starts with the default
        # disposition; a shell's background jobs inherit SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def test_subprocess_errors_have_no_traceback(work: Path, bundle: Path) -> None:
    (work / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    cases = [
        ([work / "missing.tif", "-o", work / "o.tif", "-m", bundle], 1),
        ([work / "junk.tif", "-o", work / "o.tif", "-m", bundle], 1),
        ([work / "in.tif", "-o", work / "o.tif", "-m", work], 1),
        ([work / "in.tif", "-o", work / "o.tif", "-m", bundle, "--mode", "xx"], 2),
    ]
    for args, code in cases:
        proc = _cli(*args)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == code, err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert not (work / "o.tif").exists()


def test_ctrl_c_leaves_no_partial_file(work: Path, bundle: Path) -> None:
    tifffile.imwrite(work / "large.tif", _rgb(2048, 2048), photometric="rgb", tile=(256, 256))
    proc = _cli(
        work / "large.tif", "-o", work / "out.tif", "-m", bundle, "--batch", "1", "--threads", "1", "-q"
    )
    deadline = time.monotonic() + 60
    # Interrupt once the writer has created its temporary file: the run is under way.
    while time.monotonic() < deadline and proc.poll() is None:
        if any(".dnrt-tmp-" in name for name in _files(work)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().startswith("error: interrupted"), err
    assert _files(work) == {"in.tif", "large.tif"}


# --------------------------------------------------------------------------- progress and backends


def test_progress_bar_only_when_asked_or_on_a_terminal() -> None:
    import io

    from dnrt.runtime.progress import Progress

    stream = io.StringIO()
    with Progress(10, enabled=True, stream=stream) as bar:
        bar(4, "collect")
        bar(6, "infer")
        assert bar._bar is not None and bar._bar.n == 10
    text = stream.getvalue()
    assert "0/10" in text and "tile/s" in text  # tqdm throttles redraws; the first one shows the total
    quiet = io.StringIO()  # not a terminal: silent by default
    with Progress(10, stream=quiet) as bar:
        bar(10, "infer")
    assert quiet.getvalue() == ""


def test_backend_registry(bundle: Path) -> None:
    from dnrt.bundle import load_bundle
    from dnrt.errors import DnrtError
    from dnrt.runtime.backends import available_backends, get_backend, resolve_backend_name
    from dnrt.runtime.backends.ort import OrtBackend

    assert "ort" in available_backends()
    assert resolve_backend_name("auto") in available_backends()
    # auto follows the precision: bf16 on a machine without a GPU backend is the CPU torch
    # backend; fp16 has no CPU backend at all.
    gpu = {"trt", "torch-cuda", "ort-cuda"} & set(available_backends())
    if not gpu and "torch" in available_backends():
        assert resolve_backend_name("auto", "bf16") == "torch"
        with pytest.raises(
            DnrtError, match="no available backend computes in fp16 \\(those that do: trt, torch-cuda\\)"
        ):
            resolve_backend_name("auto", "fp16")
    with pytest.raises(DnrtError, match="unknown backend"):
        resolve_backend_name("tensorflow")
    loaded = load_bundle(bundle)
    backend = get_backend("ort", loaded, context={"threads": 3, "tile": 8, "batch": 2})
    # The job context reaches the backend as one typed object; ONNX Runtime uses the threads.
    assert isinstance(backend, OrtBackend) and backend.threads == 3 and backend.device == "cpu"
    assert (backend.context.tile, backend.context.batch) == (8, 2)
    with pytest.raises(DnrtError, match="does not take"):
        get_backend("ort", loaded, workspace_mb=64)
    with pytest.raises(DnrtError, match="fp32 only"):
        get_backend("ort", loaded, precision="fp16")
    if "ort-cuda" not in available_backends():
        with pytest.raises(DnrtError, match="CUDA"):
            get_backend("ort-cuda", loaded)


def test_ort_backend_splits_threads_when_overlapping(bundle: Path) -> None:
    with Translator(bundle, backend="ort", mode="dn", threads=3) as default:
        assert default.backend.session_threads("stats") == 3  # serial by default on the CPU
    with Translator(bundle, backend="ort", mode="dn", threads=3, overlap=True) as streaming:
        assert streaming.backend.session_threads("stats") + streaming.backend.session_threads("dense") == 3
        assert "side by side" in streaming.backend.describe()
        assert streaming.schedule_options.batch == 1  # the CPU backend's preferred batch
    with Translator(bundle, backend="ort", mode="dn", threads=3, schedule="two-pass") as two_pass:
        assert two_pass.backend.session_threads("stats") == 3
        assert "3 threads" in two_pass.backend.describe()


def test_ort_default_threads_follow_the_network_size(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``--threads`` a tiny network runs on one core (its ops are too short to share,
    and the reader and writer need the other); a real one on every core."""
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.ort import OrtBackend

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    loaded = load_bundle(bundle)
    backend = OrtBackend(loaded)
    activations = backend.tile_activations()
    size = loaded.manifest.tile + 2 * loaded.manifest.margin
    assert activations == sum(
        layer.channels * (size // layer.stride) ** 2 for layer in loaded.manifest.layers
    )
    monkeypatch.setattr(OrtBackend, "SMALL_NETWORK_ACTIVATIONS", activations + 1)
    assert backend.total_threads == 1 and "(CPU, 1 thread)" in backend.describe()
    assert OrtBackend(loaded, threads=3).total_threads == 3  # the user's word wins
    monkeypatch.setattr(OrtBackend, "SMALL_NETWORK_ACTIVATIONS", activations)
    assert backend.total_threads == 4 and "(CPU, 4 threads)" in backend.describe()


def test_too_old_onnxruntime_is_named(work: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.21.1")
    _expect_error(
        work,
        [work / "in.tif", "-o", work / "out.tif", "-m", bundle, "--backend", "ort"],
        "onnxruntime 1.21.1 is too old for dnrt bundles; pip install -U 'onnxruntime>=1.22'",
    )
