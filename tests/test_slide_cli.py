"""``trt-translate`` on slides: --reader, --level, --mpp, the bundle's training resolution, the
resolution recorded in the output, and the slide bad inputs (one line, non-zero, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
tifffile = pytest.importorskip("tifffile")

from fakes import write_toy_bundle  # noqa: E402
from slides import tissue, write_generic_pyramid, write_svs  # noqa: E402

from dnrt.cli import main as dnrt_main  # noqa: E402
from dnrt.runtime.api import Translator  # noqa: E402
from dnrt.runtime.cli import translate_command  # noqa: E402


def _bundle(folder: Path, mpp: float | None) -> Path:
    path = write_toy_bundle(folder / "toy")
    if mpp is not None:
        manifest = path / "manifest.json"
        data = json.loads(manifest.read_text())
        data["mpp"] = mpp
        manifest.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    (root / "plain").mkdir()
    (root / "at05").mkdir()
    return {"plain": _bundle(root / "plain", None), "at05": _bundle(root / "at05", 0.5)}


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    path = tmp_path / "slide.svs"
    write_svs(path, tissue(256, 384, seed=11), levels=3, mpp=0.25, power=40)
    return path


def _run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(translate_command, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_bundle_mpp_is_the_default_and_the_output_records_it(tmp_path: Path, slide: Path, bundles) -> None:
    out = tmp_path / "out.tif"
    code, stdout, stderr = _run(slide, "-o", out, "-m", bundles["at05"], "--json", "-q")
    assert code == 0, stderr
    report = json.loads(stdout)
    res = report["resolution"]
    assert (res["level"], res["source_mpp"], res["processed_mpp"], res["target_from"]) == (
        1,
        [0.25, 0.25],
        [0.5, 0.5],
        "bundle",
    )
    assert (report["width"], report["height"]) == (192, 128)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.shape[:2] == (128, 192)
        assert page.get_resolution(unit=tifffile.RESUNIT.CENTIMETER) == pytest.approx((2e4, 2e4))  # 0.5 um/px
    try:
        import openslide
    except (ImportError, OSError):
        return
    with openslide.OpenSlide(str(out)) as produced:
        assert float(produced.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    # The output equals translating the level-1 pixels directly.
    with tifffile.TiffFile(slide) as tif:
        level1 = tif.series[0].levels[1].asarray()
    with Translator(bundles["at05"], backend="ort") as translator:
        expected = translator.translate(level1)
    np.testing.assert_array_equal(tifffile.imread(out), expected)


def test_explicit_mpp_level_and_reader(tmp_path: Path, slide: Path, bundles) -> None:
    pytest.importorskip("openslide")
    outs = []
    for n, args in enumerate(
        (
            ["--mpp", "0.6"],
            ["--mpp", "0.6", "--reader", "openslide"],
            ["--level", "2"],
            ["--level", "0", "--mpp", "1.0"],
        )
    ):
        out = tmp_path / f"out{n}.tif"
        code, stdout, stderr = _run(slide, "-o", out, "-m", bundles["at05"], "--json", "-q", *args)
        assert code == 0, stderr
        outs.append((json.loads(stdout)["resolution"], tifffile.imread(out)))
    (a, pa), (b, pb), (c, pc), (d, pd) = outs
    assert (a["reader"], a["level"], a["resample"], a["processed_mpp"]) == (
        "tifffile",
        1,
        "area 1.2x1.2",
        [0.6, 0.6],
    )
    assert b["reader"] == "openslide" and np.array_equal(pa, pb)
    assert (c["level"], c["processed_mpp"], c["target_mpp"], pc.shape) == (2, [1.0, 1.0], None, (64, 96, 3))
    assert (d["level"], d["resample"], pd.shape) == (0, "box 4x4", (64, 96, 3))


def _assert_refused(tmp_path: Path, code: int, stderr: str, pattern: str, status: int) -> None:
    import re

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == status, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))]


def test_slide_bad_inputs(tmp_path: Path, slide: Path, bundles) -> None:
    out = tmp_path / "out.tif"
    m = bundles["plain"]
    code, _, err = _run(slide, "-o", out, "-m", m, "--level", "3")
    _assert_refused(tmp_path, code, err, r"has no level 3: it has 3 levels \(0-2\)", 2)
    code, _, err = _run(slide, "-o", out, "-m", m, "--mpp", "0.1")
    _assert_refused(tmp_path, code, err, r"--mpp 0.1 is finer than the finest level .*--allow-upsample", 2)
    plain = tmp_path / "plain.tif"
    write_generic_pyramid(plain, tissue(64, 64), levels=1, dpcm=None)
    code, _, err = _run(plain, "-o", out, "-m", m, "--mpp", "0.5")
    _assert_refused(tmp_path, code, err, r"records no resolution \(TIFF XResolution.*--assume-mpp", 2)
    notslide = tmp_path / "notes.txt"
    notslide.write_text("not a slide\n" * 10)
    code, _, err = _run(notslide, "-o", out, "-m", m, "--reader", "openslide")
    _assert_refused(tmp_path, code, err, r"is not a slide OpenSlide can open", 1)
    code, _, err = _run(slide, "-o", out, "-m", m, "--mpp", "-1")
    _assert_refused(tmp_path, code, err, r"--mpp", 2)


def test_bundle_default_without_metadata_is_a_note(tmp_path: Path, bundles) -> None:
    plain = tmp_path / "plain.tif"
    write_generic_pyramid(plain, tissue(64, 64), levels=1, dpcm=None)
    out = tmp_path / "out.tif"
    code, stdout, stderr = _run(plain, "-o", out, "-m", bundles["at05"], "--json")
    assert code == 0, stderr
    assert "note: " in stderr and "records no resolution" in stderr
    assert json.loads(stdout)["resolution"]["processed_mpp"] is None
    code, stdout, stderr = _run(
        plain, "-o", out, "-m", bundles["at05"], "--json", "--overwrite", "--assume-mpp", "0.25"
    )
    assert code == 0, stderr
    res = json.loads(stdout)["resolution"]
    assert (res["source_mpp"], res["processed_mpp"], res["resample"]) == ([0.25, 0.25], [0.5, 0.5], "box 2x2")
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].shape[:2] == (32, 32)


def test_info_shows_the_training_resolution(bundles) -> None:
    result = CliRunner().invoke(dnrt_main, ["info", str(bundles["at05"])], catch_exceptions=False)
    assert result.exit_code == 0 and "resolution    0.5 um/px" in result.output
    result = CliRunner().invoke(dnrt_main, ["info", str(bundles["plain"])], catch_exceptions=False)
    assert "resolution" not in result.output


def test_export_model_refuses_a_bad_mpp_before_reading(tmp_path: Path) -> None:
    from dnrt.cli import export_model_command

    result = CliRunner().invoke(
        export_model_command, ["missing.pth", "-o", str(tmp_path / "b"), "--mpp", "-2"]
    )
    assert result.exit_code == 2 and "--mpp must be microns per pixel" in result.stderr
    assert not (tmp_path / "b").exists()


def test_export_model_records_the_training_resolution(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from dnrt.bundle import load_bundle
    from dnrt.cli import export_model_command
    from dnrt.export.zoo import build_generator

    torch.manual_seed(0)
    config = {"in_channels": 3, "out_channels": 3, "features": 8, "residuals": 1, "affine": False}
    ckpt = tmp_path / "g.pth"
    torch.save(build_generator("official", config).state_dict(), ckpt)
    out = tmp_path / "model.dnrt"
    args = [
        str(ckpt),
        "-o",
        str(out),
        "--tile",
        "64",
        "--margin",
        "16",
        "--mpp",
        "0.5",
        "--no-validate",
        "--json",
    ]
    result = CliRunner().invoke(export_model_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mpp"] == 0.5
    assert load_bundle(out).manifest.mpp == 0.5


def test_translator_translate_file_takes_the_slide_options(tmp_path: Path, slide: Path, bundles) -> None:
    out = tmp_path / "out.tif"
    with Translator(bundles["at05"], backend="ort") as translator:
        report = translator.translate_file(slide, out, mpp=1.0)
        assert (report.resolution["level"], report.resolution["processed_mpp"]) == (2, [1.0, 1.0])
        assert (report.width, report.height) == (96, 64)
        report = translator.translate_file(slide, out, overwrite=True)  # the bundle's 0.5 um/px
        assert (report.resolution["level"], report.resolution["target_from"]) == (1, "bundle")


def test_summary_line_names_the_level_read(tmp_path: Path, slide: Path, bundles) -> None:
    code, stdout, stderr = _run(slide, "-o", tmp_path / "out.tif", "-m", bundles["at05"])
    assert code == 0, stderr
    assert "read level 1 of 3 with tifffile, 0.5 um/px, resampling none" in stderr


def test_dicom_wsi_translated_at_the_bundle_resolution(tmp_path: Path, bundles) -> None:
    pytest.importorskip("openslide")
    pytest.importorskip("pydicom")
    from slides import write_dicom_wsi

    path = tmp_path / "slide.dcm"
    image = tissue(256, 512, seed=13)
    write_dicom_wsi(path, image, tile=128, mpp=0.25)
    out = tmp_path / "out.tif"
    code, stdout, stderr = _run(path, "-o", out, "-m", bundles["at05"], "--json", "-q")
    assert code == 0, stderr
    res = json.loads(stdout)["resolution"]
    assert (res["reader"], res["level"], res["resample"], res["processed_mpp"]) == (
        "openslide",
        0,
        "box 2x2",
        [0.5, 0.5],
    )
    from dnrt.runtime.io.resample import box_reduce

    with Translator(bundles["at05"], backend="ort") as translator:
        expected = translator.translate(box_reduce(image, 2, 2))
    np.testing.assert_array_equal(tifffile.imread(out), expected)
