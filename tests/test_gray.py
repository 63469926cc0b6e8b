"""Single-channel images end to end (issue 14): gray in, gray out, --to-gray, 16-bit intensity ranges.

The model is RegGAN's layout (1 channel in and out), tiny; images go through ``trt-translate``
and real readers (tifffile, Pillow), and results are compared with translating the 8-bit gray
image that the documented rule says the input becomes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
tifffile = pytest.importorskip("tifffile")
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from dnrt.errors import DnrtError  # noqa: E402
from dnrt.runtime.api import Translator  # noqa: E402
from dnrt.runtime.cli import translate_command  # noqa: E402
from dnrt.runtime.io.intensity import luminance, map_uint16, parse_intensity_range  # noqa: E402

TILE, MARGIN = 128, 16


@pytest.fixture(scope="module")
def gray_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_generators import RegGanGenerator

    from dnrt.export import export_checkpoint

    folder = tmp_path_factory.mktemp("gray")
    torch.manual_seed(0)
    torch.save(RegGanGenerator(features=2, blocks=1).state_dict(), folder / "netG_A2B.pth")
    out = folder / "reggan.dnrt"
    export_checkpoint(folder / "netG_A2B.pth", out, tile=TILE, margin=MARGIN, log=lambda _: None)
    return out


def _gray(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 80 * np.sin(yy / 23.0) * np.cos(xx / 17.0)
    return np.clip(base + rng.normal(0, 15, (h, w)), 0, 255).astype(np.uint8)


def _run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(translate_command, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _one_line_error(code: int, output: str, text: str) -> None:
    assert code != 0
    line = output.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line, output
    assert text in line, line


def _expected(bundle: Path, gray: np.ndarray) -> np.ndarray:
    with Translator(bundle, backend="ort", mode="dn") as translator:
        return translator.translate(gray[:, :, None])[:, :, 0]


def test_gray_tiff_in_gray_tiff_out_same_size_with_pyramid(tmp_path: Path, gray_bundle: Path) -> None:
    image = _gray(1100, 1333)
    tifffile.imwrite(tmp_path / "mri.tif", image, tile=(256, 256), photometric="minisblack")
    out = tmp_path / "out.tif"
    code, output = _run(tmp_path / "mri.tif", "-o", out, "-m", gray_bundle, "--pyramid", "--quiet")
    assert code == 0, output
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.shape == (1100, 1333) and page.photometric == tifffile.PHOTOMETRIC.MINISBLACK
        assert page.samplesperpixel == 1 and page.dtype == np.uint8
        assert len(tif.pages) > 1 and tif.pages[1].shape == (550, 667)
        written = page.asarray()
    np.testing.assert_array_equal(written, _expected(gray_bundle, image))
    assert written.std() > 1  # a real translation, not a constant


def test_gray_streaming_equals_two_pass(gray_bundle: Path) -> None:
    image = _gray(300, 420, seed=2)[:, :, None]
    results = {}
    for schedule in ("streaming", "two-pass"):
        with Translator(gray_bundle, backend="ort", mode="dn", schedule=schedule) as translator:
            results[schedule] = translator.translate(image)
    assert results["streaming"].shape == (300, 420, 1)
    np.testing.assert_array_equal(results["streaming"], results["two-pass"])


def test_gray_png_round_trip(tmp_path: Path, gray_bundle: Path) -> None:
    image = _gray(150, 170, seed=3)
    Image.fromarray(image).save(tmp_path / "in.png")
    code, output = _run(tmp_path / "in.png", "-o", tmp_path / "out.png", "-m", gray_bundle, "--quiet")
    assert code == 0, output
    with Image.open(tmp_path / "out.png") as img:
        assert img.mode == "L" and img.size == (170, 150)
        np.testing.assert_array_equal(np.asarray(img), _expected(gray_bundle, image))


def test_rgb_for_a_gray_model_needs_to_gray(tmp_path: Path, gray_bundle: Path) -> None:
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (140, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    out = tmp_path / "out.tif"
    code, output = _run(tmp_path / "rgb.tif", "-o", out, "-m", gray_bundle)
    _one_line_error(code, output, "is RGB: pass --to-gray to convert it (ITU-R BT.601 luma weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.tif"]
    code, output = _run(tmp_path / "rgb.tif", "-o", out, "-m", gray_bundle, "--to-gray", "--quiet")
    assert code == 0, output
    # BT.601 luma, halves rounded up: exact in float64 (integer numerator, k.5 is representable).
    weighted = rgb.astype(np.float64) @ np.array([299.0, 587.0, 114.0])
    luma = np.floor(weighted / 1000 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(luminance(rgb)[..., 0], luma)
    np.testing.assert_array_equal(tifffile.imread(out), _expected(gray_bundle, luma))
    # The Python API says the same, naming its own switch.
    match = r"3-channel image: set to_gray=True \(--to-gray\)"
    with Translator(gray_bundle, backend="ort") as translator, pytest.raises(DnrtError, match=match):
        translator.translate(rgb)
    with Translator(gray_bundle, backend="ort", to_gray=True) as translator:
        np.testing.assert_array_equal(translator.translate(rgb), _expected(gray_bundle, luma)[..., None])


def test_16_bit_gray_needs_a_range(tmp_path: Path, gray_bundle: Path) -> None:
    rng = np.random.default_rng(5)
    mri = rng.integers(0, 4096, (130, 140)).astype(np.uint16)  # 12-bit data in 16-bit samples
    Image.fromarray(mri).save(tmp_path / "slice.png")
    out = tmp_path / "out.tif"
    code, output = _run(tmp_path / "slice.png", "-o", out, "-m", gray_bundle)
    _one_line_error(code, output, "is a 16-bit gray image that declares no intensity range")
    assert "--intensity-range LO:HI" in output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["slice.png"]

    code, output = _run(tmp_path / "slice.png", "-o", out, "-m", gray_bundle, "--intensity-range", "0:4095")
    assert code == 0, output
    mapped = np.rint(np.clip(mri / 4095.0, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(tifffile.imread(out), _expected(gray_bundle, mapped))


def test_16_bit_tiff_declared_range_is_used(tmp_path: Path, gray_bundle: Path) -> None:
    rng = np.random.default_rng(6)
    mri = rng.integers(100, 3000, (130, 140)).astype(np.uint16)
    extratags = [(340, "H", 1, 100, False), (341, "H", 1, 3000, False)]  # SMin/SMaxSampleValue
    tifffile.imwrite(tmp_path / "t1.tif", mri, photometric="minisblack", extratags=extratags)
    out = tmp_path / "out.tif"
    code, output = _run(tmp_path / "t1.tif", "-o", out, "-m", gray_bundle, "--quiet")
    assert code == 0, output
    # round((v - LO) / (HI - LO) * 255), halves up (exact in float64: k + 0.5 is representable).
    mapped = np.floor((mri.astype(np.float64) - 100) * 255 / 2900 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(tifffile.imread(out), _expected(gray_bundle, mapped))


def test_intensity_mapping_rules() -> None:
    v = np.arange(65536, dtype=np.uint16)
    np.testing.assert_array_equal(map_uint16(v, 0, 65535), np.round(v / 257).astype(np.uint8))
    got = map_uint16(v, 1000, 2000).astype(int)
    want = np.floor(np.clip((v.astype(np.float64) - 1000) / 1000, 0, 1) * 255 + 0.5).astype(int)
    np.testing.assert_array_equal(got, want)
    assert parse_intensity_range("0:4095") == (0, 4095)
    for bad in ("4095", "10:10", "5:2", "a:b", "0:70000", "-1:5"):
        with pytest.raises(DnrtError, match="--intensity-range must be LO:HI") as info:
            parse_intensity_range(bad)
        assert info.value.exit_code == 2


def test_bad_intensity_range_is_exit_2(tmp_path: Path, gray_bundle: Path) -> None:
    Image.fromarray(np.zeros((20, 20), np.uint16)).save(tmp_path / "z.png")
    code, output = _run(
        tmp_path / "z.png", "-o", tmp_path / "o.tif", "-m", gray_bundle, "--intensity-range", "9"
    )
    assert code == 2 and output.strip().startswith("error: --intensity-range must be LO:HI")
    assert not (tmp_path / "o.tif").exists()


def _with_sbit(png: bytes, bits: int) -> bytes:
    """``png`` with an sBIT chunk (gray: one byte, the significant bits) inserted after IHDR."""
    import struct
    import zlib

    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length/type, IHDR data, CRC
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def test_16_bit_png_sbit_declares_the_range(tmp_path: Path, gray_bundle: Path) -> None:
    from dnrt.runtime.io.intensity import png_significant_bits

    rng = np.random.default_rng(7)
    mri = rng.integers(0, 1024, (120, 130)).astype(np.uint16)  # 10-bit data
    Image.fromarray(mri).save(tmp_path / "plain.png")
    (tmp_path / "s.png").write_bytes(_with_sbit((tmp_path / "plain.png").read_bytes(), 10))
    assert (
        png_significant_bits(tmp_path / "s.png") == 10
        and png_significant_bits(tmp_path / "plain.png") is None
    )
    with Image.open(tmp_path / "s.png") as img:  # still a valid PNG
        np.testing.assert_array_equal(np.asarray(img), mri)
    out = tmp_path / "out.tif"
    code, output = _run(tmp_path / "s.png", "-o", out, "-m", gray_bundle, "--quiet")
    assert code == 0, output
    mapped = np.floor(mri.astype(np.float64) * 255 / 1023 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(tifffile.imread(out), _expected(gray_bundle, mapped))
