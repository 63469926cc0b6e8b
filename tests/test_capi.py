"""The C API (capi/, dnrt.h): built with capi/capi.mk once per session, driven from C.

- the example ``dnrt-translate-c`` writes byte-identical files to ``trt-translate``;
- ``dnrt_translate_rgb`` on padded (non-contiguous) rows matches ``Translator.translate`` and
  writes nothing outside the rows;
- the error paths return the documented codes and messages, cancelling leaves no file;
- one model shared by threads (serialized) and several models give the same results;
- the example runs clean under valgrind with the committed suppressions (slow: ~30 s of CPU);
- the Python pieces the C API uses (``on_progress``, ``Cancelled``, ``translate(out=...)``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("onnxruntime")

from dnrt.errors import Cancelled  # noqa: E402
from dnrt.runtime.api import Translator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "capi" / "include" / "dnrt.h"
SUPPRESSIONS = ROOT / "capi" / "valgrind.supp"


def _missing_toolchain() -> str | None:
    for tool in ("gcc", "make"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the C API is built with gcc through make)"
    try:
        import cffi  # noqa: F401
    except ImportError:
        return f"cffi is not installed for {sys.executable} (pip install cffi)"
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return f"{sys.executable} has no shared libpython to embed (built without --enable-shared)"
    return None


_REASON = _missing_toolchain()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture(scope="session")
def capi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make capi-tests`` into a temporary build folder (the commands ``make capi`` runs)."""
    build = tmp_path_factory.mktemp("capi-build")
    command = [
        "make",
        "-s",
        "-C",
        str(ROOT),
        "-f",
        "capi/capi.mk",
        "capi-tests",
        f"CAPI_BUILD={build}",
        f"PY={sys.executable}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the C API failed:\n{result.stdout}\n{result.stderr}")
    return build


def _default_sigint() -> None:
    # A shell runs background jobs with SIGINT ignored and children inherit that; the checks
    # (the embedded interpreter leaves SIGINT alone) need the default disposition to start from.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        preexec_fn=_default_sigint,
    )


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 70 * np.sin(yy[..., None] / 9.0 + np.array([0.0, 1.0, 2.0])) * np.cos(xx[..., None] / 6.0)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tiled RGB TIFF: 3 x 3 tiles of 32 px, the last row and column partial."""
    path = tmp_path_factory.mktemp("capi-in") / "in.tif"
    tifffile.imwrite(path, _image(70, 90), photometric="rgb", tile=(32, 32), compression="zlib")
    return path


def _trt_translate(*args: str | Path) -> None:
    from click.testing import CliRunner

    from dnrt.runtime.cli import translate_command

    result = CliRunner().invoke(translate_command, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- the build


def test_header_is_plain_c_and_cxx(tmp_path: Path) -> None:
    text = HEADER.read_text()
    assert "#include <Python" not in text and not re.search(r"\bPy[A-Z_]", text)  # free of Python
    source = tmp_path / "use.c"
    source.write_text(
        '#include "dnrt.h"\nint main(void) { dnrt_options o; return (int)dnrt_options_init(&o); }\n'
    )
    for compiler, flags in (
        ("gcc", ["-std=c99", "-pedantic"]),
        ("g++", ["-x", "c++", "-std=c++11", "-pedantic"]),
    ):
        if shutil.which(compiler) is None:
            continue
        result = _run(
            compiler, *flags, "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{HEADER.parent}", source
        )
        assert result.returncode == 0, result.stderr


def test_library_exports_only_the_api(capi: Path) -> None:
    if shutil.which("nm") is None:
        pytest.skip("nm is not installed")
    symbols = _run("nm", "-D", "--defined-only", capi / "libdnrt.so").stdout.split()
    exported = {s for s in symbols if s.startswith(("dnrt", "_dnrt", "PyInit", "_cffi"))}
    declared = set(re.findall(r"DNRT_API [^(]*?\b(dnrt_\w+)\(", HEADER.read_text()))
    assert exported == declared
    readelf = _run("readelf", "-d", capi / "libdnrt.so").stdout if shutil.which("readelf") else ""
    assert not readelf or "libdnrt.so.0" in readelf  # the soname carries the ABI version


def test_dnrt_config_links_a_program(capi: Path, tmp_path: Path) -> None:
    config = capi / "dnrt-config"
    flags = _run(config, "--cflags", "--libs").stdout.split()
    assert f"-I{capi / 'include'}" in flags and "-ldnrt" in flags
    assert _run(config, "--version").stdout.strip() == "0.1.0"
    program = tmp_path / "app"
    result = _run("gcc", ROOT / "examples" / "c" / "translate.c", *flags, "-o", program)
    assert result.returncode == 0, result.stderr
    assert _run(program, "--help").stdout.startswith("usage: dnrt-translate-c")
    if shutil.which("pkg-config"):
        env = {**os.environ, "PKG_CONFIG_PATH": str(capi)}
        pc = subprocess.run(
            ["pkg-config", "--cflags", "--libs", "dnrt"], capture_output=True, text=True, env=env
        )
        assert pc.returncode == 0 and "-ldnrt" in pc.stdout, pc.stderr


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--mode", "in", "--compression", "none"],
        ["--mode", "kin", "--kin-kernel", "3", "--schedule", "two-pass", "--pyramid"],
        ["--mode", "tin", "--compression", "zstd", "--batch", "2"],
        ["--margin-source", "image", "--schedule", "two-pass", "--tile", "48", "--margin", "8"],
    ],
    ids=["dn", "in-uncompressed", "kin-pyramid", "tin-zstd", "dn-image-margin-tile48"],
)
def test_example_is_byte_identical_to_trt_translate(
    capi: Path, small_bundle_path: Path, slide: Path, tmp_path: Path, options: list[str]
) -> None:
    result = _run(
        capi / "dnrt-translate-c", small_bundle_path, slide, tmp_path / "c.tif", "--backend", "ort", *options
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("dnrt-translate-c:   0% (0 of ") and "100%" in lines[-1]
    _trt_translate(
        slide, "-o", tmp_path / "py.tif", "-m", small_bundle_path, "--backend", "ort", "-q", *options
    )
    assert (tmp_path / "c.tif").read_bytes() == (tmp_path / "py.tif").read_bytes()


def test_example_errors_and_overwrite(
    capi: Path, small_bundle_path: Path, slide: Path, tmp_path: Path
) -> None:
    example = capi / "dnrt-translate-c"
    result = _run(example, tmp_path / "nope.dnrt", slide, tmp_path / "out.tif")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"error: model bundle not found: {tmp_path / 'nope.dnrt'} (DNRT_ERR_NOT_FOUND)"
    )
    assert _run(example, small_bundle_path).returncode == 2
    assert _run(example, small_bundle_path, slide, tmp_path / "o.tif", "--mode", "xx").returncode == 2

    existing = tmp_path / "existing.tif"
    existing.write_bytes(b"keep")
    result = _run(example, small_bundle_path, slide, existing, "--backend", "ort", "--quiet")
    assert (
        result.returncode == 1 and "exists; set overwrite" in result.stderr and "DNRT_ERR_IO" in result.stderr
    )
    assert existing.read_bytes() == b"keep"
    result = _run(example, small_bundle_path, slide, existing, "--backend", "ort", "--quiet", "--overwrite")
    assert result.returncode == 0 and result.stderr == ""
    assert tifffile.imread(existing).shape == (70, 90, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.tif"]  # no temporary files


@pytest.mark.parametrize(("h", "w", "pad_in", "pad_out"), [(45, 70, 13, 5), (1, 1, 0, 0), (33, 5, 1, 300)])
def test_rgb_in_memory_with_strides_matches_translator(
    capi: Path, small_bundle_path: Path, tmp_path: Path, h: int, w: int, pad_in: int, pad_out: int
) -> None:
    image = _image(h, w, seed=h)
    in_stride, out_stride = w * 3 + pad_in, w * 3 + pad_out
    rows = np.random.default_rng(1).integers(0, 256, (h, in_stride), dtype=np.uint8)  # junk in the padding
    rows[:, : w * 3] = image.reshape(h, w * 3)
    span_in, span_out = (h - 1) * in_stride + w * 3, (h - 1) * out_stride + w * 3
    (tmp_path / "in.raw").write_bytes(rows.tobytes()[:span_in])
    result = _run(
        capi / "dnrt-capi-check",
        "rgb",
        small_bundle_path,
        tmp_path / "in.raw",
        w,
        h,
        in_stride,
        tmp_path / "out.raw",
        out_stride,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    raw = np.frombuffer((tmp_path / "out.raw").read_bytes(), np.uint8)
    assert raw.size == span_out
    padded = np.full(h * out_stride, 0xAB, np.uint8)
    padded[:span_out] = raw
    padded = padded.reshape(h, out_stride)
    with Translator(small_bundle_path, backend="ort") as translator:
        expected = translator.translate(image)
    np.testing.assert_array_equal(padded[:, : w * 3].reshape(h, w, 3), expected)
    assert (padded[:, w * 3 :] == 0xAB).all()  # nothing written between the rows


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def error_cases(capi: Path, small_bundle_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("capi-errors")
    tifffile.imwrite(folder / "in.tif", _image(40, 50), photometric="rgb")
    tifffile.imwrite(folder / "gray.tif", _image(40, 50)[..., 0])
    (folder / "garbage.tif").write_bytes(b"II*\x00 this is not a TIFF after all")
    (folder / "existing.tif").write_bytes(b"keep me")
    result = _run(capi / "dnrt-capi-check", "errors", small_bundle_path, folder)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = {}
    for line in result.stdout.splitlines():
        name, status, message = (line.split("\t") + ["", ""])[:3]
        cases[name] = (status, message)
    cases["_files"] = sorted(p.name for p in folder.iterdir())
    cases["_folder"] = folder
    return cases


ERRORS = {
    # name: (status, a piece of the message)
    "init_null": ("DNRT_ERR_INVALID_ARGUMENT", "options is NULL"),
    "init_short": ("DNRT_ERR_INVALID_ARGUMENT", "not the size of a dnrt_options"),
    "write_init_null": ("DNRT_ERR_INVALID_ARGUMENT", "options is NULL"),
    "open_null_out": ("DNRT_ERR_INVALID_ARGUMENT", "dnrt_model_open: model (the out pointer) is NULL"),
    "open_null_path": ("DNRT_ERR_INVALID_ARGUMENT", "dnrt_model_open: path is NULL"),
    "open_empty_path": ("DNRT_ERR_INVALID_ARGUMENT", "path is empty"),
    "open_missing": ("DNRT_ERR_NOT_FOUND", "model bundle not found: "),
    "open_not_bundle": ("DNRT_ERR_MODEL", "is not a model bundle"),
    "open_bad_size": ("DNRT_ERR_INVALID_ARGUMENT", "fill the struct with dnrt_options_init()"),
    "open_uninitialized": ("DNRT_ERR_INVALID_ARGUMENT", "dnrt_options->size is 0"),
    "open_bad_mode": ("DNRT_ERR_INVALID_ARGUMENT", "options.mode is 0"),
    "open_bad_margin_source": ("DNRT_ERR_INVALID_ARGUMENT", "options.margin_source is 3"),
    "open_bad_degenerate": ("DNRT_ERR_INVALID_ARGUMENT", "options.degenerate is 9"),
    "open_bad_degenerate_ratio": ("DNRT_ERR_INVALID_ARGUMENT", "options.degenerate_ratio is 1.5"),
    "open_even_kernel": ("DNRT_ERR_INVALID_ARGUMENT", "options.kin_kernel is 4"),
    "open_bad_backend": ("DNRT_ERR_INVALID_ARGUMENT", "unknown backend 'nope'"),
    "open_bad_precision": ("DNRT_ERR_INVALID_ARGUMENT", "unknown precision 'fp8'"),
    "open_fp16_ort": ("DNRT_ERR_UNSUPPORTED", "fp32 only"),
    "open_bad_tile": ("DNRT_ERR_INVALID_ARGUMENT", "tile 30"),
    "open_big_margin": ("DNRT_ERR_INVALID_ARGUMENT", "margin (40) must be smaller than the tile"),
    "open_newer_zero": ("DNRT_OK", ""),
    "open_newer_set": ("DNRT_ERR_UNSUPPORTED", "does not know"),
    "open_size_0_1": ("DNRT_OK", ""),
    "open_size_0_2": ("DNRT_OK", ""),
    "open_ok": ("DNRT_OK", ""),
    "after_success": ("DNRT_OK", ""),
    "file_null_model": ("DNRT_ERR_INVALID_ARGUMENT", "dnrt_translate_file: model is NULL"),
    "file_null_in": ("DNRT_ERR_INVALID_ARGUMENT", "in_path is NULL"),
    "file_null_out": ("DNRT_ERR_INVALID_ARGUMENT", "out_path is NULL"),
    "file_empty_in": ("DNRT_ERR_INVALID_ARGUMENT", "in_path is empty"),
    "file_missing_input": ("DNRT_ERR_NOT_FOUND", "missing.dnrt' does not exist"),
    "file_unreadable": ("DNRT_ERR_IO", "garbage.tif"),
    "file_gray": ("DNRT_ERR_UNSUPPORTED", "the model takes 3-channel images"),
    "file_bad_suffix": ("DNRT_ERR_INVALID_ARGUMENT", "unsupported suffix '.xyz'"),
    "file_no_folder": ("DNRT_ERR_NOT_FOUND", "does not exist"),
    "file_exists": ("DNRT_ERR_IO", "exists; set overwrite in dnrt_write_options to replace it"),
    "file_same_as_input": ("DNRT_ERR_INVALID_ARGUMENT", "is the input image"),
    "file_bad_compression": ("DNRT_ERR_INVALID_ARGUMENT", "unknown compression 'brotli'"),
    "file_bad_writer_tile": ("DNRT_ERR_INVALID_ARGUMENT", "multiple of 16"),
    "file_bad_write_size": ("DNRT_ERR_INVALID_ARGUMENT", "dnrt_write_options->size is 0"),
    "rgb_null_model": ("DNRT_ERR_INVALID_ARGUMENT", "model is NULL"),
    "rgb_null_in": ("DNRT_ERR_INVALID_ARGUMENT", "in is NULL"),
    "rgb_null_out": ("DNRT_ERR_INVALID_ARGUMENT", "out is NULL"),
    "rgb_zero_width": ("DNRT_ERR_INVALID_ARGUMENT", "0 x 2 pixels; width and height must be at least 1"),
    "rgb_zero_height": ("DNRT_ERR_INVALID_ARGUMENT", "8 x 0 pixels"),
    "rgb_negative": ("DNRT_ERR_INVALID_ARGUMENT", "-8 x 2 pixels"),
    "rgb_small_in_stride": ("DNRT_ERR_INVALID_ARGUMENT", "in_stride is 23 bytes, less than width * 3 = 24"),
    "rgb_small_out_stride": ("DNRT_ERR_INVALID_ARGUMENT", "out_stride is 0 bytes"),
    "rgb_huge_stride": ("DNRT_ERR_INVALID_ARGUMENT", "exceed the address space"),
    "rgb_in_place": ("DNRT_ERR_INVALID_ARGUMENT", "in and out overlap"),
    "rgb_overlap": ("DNRT_ERR_INVALID_ARGUMENT", "in and out overlap"),
    "rgb_1x1": ("DNRT_OK", ""),
    "rgb_8x2": ("DNRT_OK", ""),
    "set_progress_null": ("DNRT_ERR_INVALID_ARGUMENT", "model is NULL"),
    "cancel_file_first": ("DNRT_ERR_CANCELLED", "cancelled by the progress callback"),
    "cancel_file_half": ("DNRT_ERR_CANCELLED", "cancelled by the progress callback"),
    "cancel_rgb": ("DNRT_ERR_CANCELLED", "cancelled by the progress callback"),
    "progress_full": ("DNRT_OK", ""),
    "reentry_outer": ("DNRT_OK", ""),
    "reentry_inner": ("DNRT_ERR_INVALID_ARGUMENT", "called from inside the model's own progress callback"),
    "close": ("DNRT_OK", ""),
    "close_null": ("DNRT_OK", ""),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_error_path(error_cases: dict, name: str) -> None:
    status, piece = ERRORS[name]
    assert name in error_cases, f"the C check stopped before {name}"
    got_status, message = error_cases[name]
    assert got_status == status, message
    if piece:
        assert piece in message
    else:
        assert message == ""  # a success leaves no message behind


def test_error_paths_leave_no_file_and_keep_things(error_cases: dict) -> None:
    assert error_cases["version"] == error_cases["header_version"] == ("0.1.0", "100")
    assert error_cases["status_unknown"][0] == "DNRT_ERR_UNKNOWN"
    assert error_cases["open_null_path_model"][0] == "NULL"  # *model reset on failure
    assert error_cases["sigint"][0] == "default"  # the embedded interpreter left SIGINT alone
    assert error_cases["file_no_output"][0] == "absent"
    assert error_cases["cancel_file_first_output"] == ("absent", "1")  # cancelled at (0, total)
    output, counts = error_cases["cancel_file_half_output"]
    calls, done, total = map(int, counts.split())
    assert output == "absent" and calls == 2 and 0 < done < total
    # A full run: reported from 0 up to the total, never backwards; then it is written.
    calls, rest = error_cases["progress_full_counts"]
    done, total, monotonic, output = rest.split()
    assert int(calls) >= 2 and done == total and monotonic == "1" and output == "EXISTS"
    # Only the inputs and the finished output of the full run: no temporary files.
    assert error_cases["_files"] == ["existing.tif", "garbage.tif", "gray.tif", "in.tif", "out.tif"]
    assert (error_cases["_folder"] / "existing.tif").read_bytes() == b"keep me"


def test_error_unavailable_backend(error_cases: dict) -> None:
    import onnxruntime

    status, message = error_cases["open_ort_cuda"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and status == "DNRT_OK":
        pytest.skip("ort-cuda is available here")
    assert status == "DNRT_ERR_UNSUPPORTED" and "ort-cuda" in message


def test_force_lets_a_translation_past_the_preflight(
    capi: Path, small_bundle_path: Path, tmp_path: Path
) -> None:
    """options.force is trt-translate's --force: a sparse 10^6 px square TIFF is refused by the
    pre-flight under a 2 GB address-space limit, and with force the run starts (and is
    cancelled by the progress callback's first call)."""
    import resource

    from corpus.tiffbytes import Tiff

    sparse = tmp_path / "sparse.tif"
    sparse.write_bytes(Tiff(1_000_000, 1_000_000, tile=(4096, 4096), bigtiff=True).to_bytes())

    def limited() -> None:
        _default_sigint()
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    result = subprocess.run(
        [
            str(capi / "dnrt-capi-check"),
            "force",
            str(small_bundle_path),
            str(sparse),
            str(tmp_path / "o.tif"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases = {line.split("\t")[0]: line.split("\t")[1:] for line in result.stdout.splitlines()}
    status, message = cases["force_off"]
    assert status != "DNRT_OK" and "by estimate" in message, cases
    assert cases["force_on"] == ["DNRT_ERR_CANCELLED", "cancelled by the progress callback"], cases
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.tif"]


def test_runtime_that_cannot_start_is_an_error(
    capi: Path, small_bundle_path: Path, slide: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "DNRT_PYTHON": str(tmp_path / "no-such-env" / "bin" / "python")}
    result = _run(capi / "dnrt-translate-c", small_bundle_path, slide, tmp_path / "o.tif", env=env)
    assert result.returncode == 1
    assert "(DNRT_ERR_RUNTIME)" in result.stderr and "DNRT_PYTHON" in result.stderr
    assert not (tmp_path / "o.tif").exists()


def test_dnrt_pythonpath_is_honoured_and_the_hosts_pythonpath_is_not(
    capi: Path, small_bundle_path: Path, slide: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow" / "dnrt"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('shadowed by DNRT_PYTHONPATH')\n")
    args = (capi / "dnrt-translate-c", small_bundle_path, slide, tmp_path / "o.tif", "--backend", "ort", "-q")
    host = _run(*args, env={**os.environ, "PYTHONPATH": str(shadow.parent), "PYTHONHOME": "/nowhere"})
    assert host.returncode == 0, host.stderr  # the host's Python settings are not the library's
    ours = _run(*args, "--overwrite", env={**os.environ, "DNRT_PYTHONPATH": str(shadow.parent)})
    assert ours.returncode == 1 and "shadowed by DNRT_PYTHONPATH" in ours.stderr


def test_threads_share_a_model_and_use_several(capi: Path, small_bundle_path: Path, tmp_path: Path) -> None:
    h, w = 40, 60
    (tmp_path / "in.raw").write_bytes(_image(h, w, seed=3).tobytes())
    result = _run(capi / "dnrt-capi-check", "threads", small_bundle_path, tmp_path / "in.raw", w, h)
    assert result.returncode == 0 and result.stdout.strip() == "threads ok", result.stdout + result.stderr


# --------------------------------------------------------------------------- valgrind


def _valgrind(*args: str | Path) -> subprocess.CompletedProcess:
    return _run(
        "valgrind",
        f"--suppressions={SUPPRESSIONS}",
        "--error-exitcode=99",
        "--leak-check=full",
        "--show-leak-kinds=definite",
        "--errors-for-leak-kinds=definite",
        "--num-callers=40",
        *args,
        timeout=600,
    )


@pytest.fixture(scope="module")
def valgrind() -> None:
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")


def test_valgrind_catches_real_errors_despite_suppressions(
    capi: Path, tmp_path: Path, valgrind: None
) -> None:
    """The suppressions only cover the interpreter and glibc: a bug of a host is still caught."""
    source = tmp_path / "bad.c"
    source.write_text(
        '#include <stdlib.h>\n#include "dnrt.h"\n'
        "int main(int argc, char** argv) {\n"
        "    dnrt_options o; dnrt_options_init(&o);\n"
        "    char* p = malloc(4); (void)argv;\n"
        "    if (argc > 1) return p[4];  /* invalid read */\n"
        "    return 0;                   /* p leaks */\n}\n"
    )
    program = tmp_path / "bad"
    flags = _run(capi / "dnrt-config", "--cflags", "--libs").stdout.split()
    assert _run("gcc", "-O0", "-g", source, *flags, "-o", program).returncode == 0
    leak = _valgrind(program)
    assert leak.returncode == 99 and "definitely lost" in leak.stderr
    read = _valgrind(program, "x")
    assert read.returncode == 99 and "Invalid read of size 1" in read.stderr


@pytest.mark.slow
def test_example_runs_clean_under_valgrind(
    capi: Path, small_bundle_path: Path, tmp_path: Path, valgrind: None
) -> None:
    """No invalid read, write or free, no overlapping copy and no definite leak outside the
    (suppressed, explained) embedded interpreter: DN, both graphs, one tile, one thread."""
    tifffile.imwrite(tmp_path / "in.tif", _image(32, 32), photometric="rgb")
    result = _valgrind(
        capi / "dnrt-translate-c",
        small_bundle_path,
        tmp_path / "in.tif",
        tmp_path / "out.tif",
        "--backend",
        "ort",
        "--threads",
        "1",
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert "ERROR SUMMARY: 0 errors" in result.stderr
    assert tifffile.imread(tmp_path / "out.tif").shape == (32, 32, 3)


# --------------------------------------------------------------------------- the Python side


def test_on_progress_counts_and_cancels(small_bundle_path: Path, slide: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with Translator(
        small_bundle_path, backend="ort", on_progress=lambda d, t: seen.append((d, t))
    ) as translator:
        report = translator.translate_file(slide, tmp_path / "a.tif")
        assert seen[0] == (0, report.tile_runs) and seen[-1] == (report.tile_runs, report.tile_runs)
        assert [d for d, _ in seen] == sorted(set(d for d, _ in seen))

        translator.on_progress = lambda done, total: done < total // 2
        with pytest.raises(Cancelled, match="cancelled by the progress callback"):
            translator.translate_file(slide, tmp_path / "b.tif")

        def refuse(done: int, total: int) -> None:
            raise Cancelled("stop now")

        translator.on_progress = refuse
        with pytest.raises(Cancelled, match="stop now"):
            translator.translate(_image(20, 20))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]


def test_translate_into_a_strided_out_array(small_bundle_path: Path) -> None:
    image = _image(37, 41)
    with Translator(small_bundle_path, backend="ort") as translator:
        expected = translator.translate(image)
        storage = np.zeros((37, 50, 4), np.uint8)
        out = storage[:, 3:44, :3]  # not contiguous
        assert translator.translate(image, out=out) is out
        np.testing.assert_array_equal(out, expected)
        assert (storage[:, :3] == 0).all() and (storage[..., 3] == 0).all()
        with pytest.raises(Exception, match="out must be a uint8 array of shape"):
            translator.translate(image, out=np.zeros((37, 40, 3), np.uint8))
