"""Outputs viewers open at once (issue 17, part 3), checked with the readers viewers use.

Every level of every layout is read back by tifffile, OpenSlide (the openslide-bin wheel) and
libvips (Debian's libvips-tools: ``vips tiffload`` per page / SubIFD, and ``vips openslideload``
through Debian's own OpenSlide) and compared with a reference pyramid computed here; the pixel
size and objective power are read back where each reader reports them.
"""

from __future__ import annotations

import shutil
import subprocess
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from dnrt.errors import DnrtError
from dnrt.runtime.io import ArraySource, open_image, open_writer
from dnrt.runtime.io.writer import SLIDE_SIZED_TILES, output_format, wants_pyramid

MPP = 0.5  # microns per pixel of the test "slide"
POWER = 20.0
H, W, TILE = 1100, 1500, 256  # slide-sized for a 256-px tile: 1500 > 4 * 256
SIZES = [(1100, 1500), (550, 750), (275, 375), (138, 188)]

VIPS = shutil.which("vips")
needs_vips = pytest.mark.skipif(
    VIPS is None or shutil.which("vipsheader") is None,
    reason="libvips-tools not installed (apt-get install libvips-tools; .ci/run and make test install it)",
)


def _openslide():
    try:
        import openslide
    except (ImportError, OSError) as exc:  # the Python package or the library (openslide-bin) is missing
        pytest.skip(f"OpenSlide unavailable (pip install openslide-python openslide-bin): {exc}")
    return openslide


def noisy(h: int, w: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reference_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Level 0 and each 2x box mean of the level above (odd last row/column averaged with itself),
    rounded half up: what the writer promises, computed independently in float."""
    out = [image]
    for _ in range(levels):
        up = out[-1]
        h, w, c = up.shape
        padded = np.pad(up.astype(np.float64), ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        mean = padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2, c).mean(axis=(1, 3))
        out.append(np.floor(mean + 0.5).astype(np.uint8))
    return out


def slide_source(image: np.ndarray, mpp: float = MPP, power: float | None = POWER) -> ArraySource:
    source = ArraySource(image, resolution=(1e4 / mpp, 1e4 / mpp), resolution_unit="CENTIMETER")
    source.objective_power = power
    return source


def write(path: Path, image: np.ndarray, source=None, **options) -> Path:
    with open_writer(path, *image.shape, tile=TILE, source=source, **options) as writer:
        for y in range(0, image.shape[0], 300):
            writer.write_band(image[y : y + 300])
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return noisy(H, W)


@pytest.fixture(scope="module")
def reference(image: np.ndarray) -> list[np.ndarray]:
    return reference_pyramid(image, len(SIZES) - 1)


@pytest.fixture(scope="module")
def aperio_tif(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    """A plain TIFF with a pixel size and objective power, pyramid by default (slide-sized)."""
    return write(tmp_path_factory.mktemp("aperio") / "slide.tif", image, slide_source(image), pyramid=None)


@pytest.fixture(scope="module")
def ome_tif(tmp_path_factory: pytest.TempPathFactory, image: np.ndarray) -> Path:
    """The same as OME-TIFF, chosen by the name alone."""
    return write(tmp_path_factory.mktemp("ome") / "slide.ome.tif", image, slide_source(image), pyramid=None)


# -- the default pyramid and the format -----------------------------------------------------------
def test_pyramid_default_is_by_size(tmp_path: Path) -> None:
    edge = SLIDE_SIZED_TILES * 16
    assert not wants_pyramid(edge, edge, 16, None)
    assert wants_pyramid(edge + 1, 20, 16, None) and wants_pyramid(20, edge + 1, 16, None)
    assert wants_pyramid(20, 20, 16, True) and not wants_pyramid(edge + 1, 20, 16, False)
    for (h, w), pyramid, pages in [
        ((edge, 40), None, 1),
        ((edge + 1, 40), None, 4),
        ((edge + 1, 40), False, 1),
    ]:
        out = tmp_path / f"{h}-{pyramid}.tif"
        with open_writer(out, h, w, 3, tile=16, pyramid=pyramid) as writer:
            writer.write_band(noisy(h, w))
        with tifffile.TiffFile(out) as tif:
            assert len(tif.pages) == pages, (h, pyramid)
    # a PNG never gets levels by default; asking for them is refused as before
    with open_writer(tmp_path / "small.png", edge + 1, 40, 3, tile=16, pyramid=None) as writer:
        writer.write_band(noisy(edge + 1, 40))


def test_output_format_by_name_and_option(tmp_path: Path) -> None:
    assert output_format("a.tif") == "tiff" and output_format("a.OME.TIFF") == "ome-tiff"
    assert output_format("a.tif", "ome-tiff") == "ome-tiff" and output_format("a.png") == "pillow"
    with pytest.raises(DnrtError, match="named as an OME-TIFF; use format ome-tiff") as info:
        output_format("a.ome.tif", "tiff")
    assert info.value.exit_code == 2
    with pytest.raises(DnrtError, match="format ome-tiff needs a TIFF output"):
        output_format("a.png", "ome-tiff")
    with pytest.raises(DnrtError, match="unknown output format 'svs'"):
        open_writer(tmp_path / "a.tif", 10, 10, 3, fmt="svs")
    assert list(tmp_path.iterdir()) == []
    # --format ome-tiff on a plain .tif name writes OME-TIFF
    out = write(tmp_path / "forced.tif", noisy(40, 50), fmt="ome-tiff")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.series[0].shape == (40, 50, 3)


def test_translate_options_carry_pyramid_and_format() -> None:
    from dnrt.runtime.options import TranslateOptions

    default = TranslateOptions()
    assert default.pyramid is None and default.output_format is None  # by size, by name
    chosen = TranslateOptions(pyramid=False, output_format="OME-TIFF")
    assert chosen.output_format == "ome-tiff"
    assert TranslateOptions.from_json(chosen.to_json()) == chosen
    with pytest.raises(DnrtError, match="unknown output format 'svs'") as info:
        TranslateOptions(output_format="svs")
    assert info.value.exit_code == 2
    with pytest.raises(DnrtError, match="pyramid must be true or false"):
        TranslateOptions(pyramid="yes")


# -- plain TIFF with a pixel size: Aperio's layout --------------------------------------------
def test_aperio_layout_tifffile(aperio_tif: Path, reference: list[np.ndarray]) -> None:
    with tifffile.TiffFile(aperio_tif) as tif:
        assert tif.is_svs
        meta = tifffile.tifffile.svs_description_metadata(tif.pages[0].description)
        assert meta["MPP"] == MPP and meta["AppMag"] == POWER
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == SIZES
        for i, (level, expected) in enumerate(zip(levels, reference, strict=True)):
            np.testing.assert_array_equal(level.asarray(), expected, err_msg=f"level {i}")
            page = level.keyframe
            assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
            assert page.resolution == pytest.approx(
                (1e4 / MPP * expected.shape[1] / W, 1e4 / MPP * expected.shape[0] / H), rel=1e-6
            )
        thumbnail = next(s for s in tif.series if s.name == "Thumbnail")
        assert not tif.pages[1].is_tiled  # directory 1: the stripped thumbnail, as in Aperio's files
        np.testing.assert_array_equal(thumbnail.asarray(), reference[-1])
    with open_image(aperio_tif) as back:  # dnrt's own reader takes the metadata back
        assert back.resolution == pytest.approx((1e4 / MPP, 1e4 / MPP))
        assert back.resolution_unit == "CENTIMETER" and back.objective_power == POWER


def test_aperio_layout_openslide(aperio_tif: Path, reference: list[np.ndarray]) -> None:
    openslide = _openslide()
    with openslide.OpenSlide(str(aperio_tif)) as slide:
        props = slide.properties
        assert props["openslide.vendor"] == "aperio"
        assert float(props["openslide.mpp-x"]) == pytest.approx(MPP)
        assert float(props["openslide.mpp-y"]) == pytest.approx(MPP)
        assert float(props["openslide.objective-power"]) == POWER
        assert slide.level_dimensions == tuple((w, h) for h, w in SIZES)
        for level, expected in enumerate(reference):
            h, w = expected.shape[:2]
            got = np.asarray(slide.read_region((0, 0), level, (w, h)))
            np.testing.assert_array_equal(got[..., :3], expected, err_msg=f"level {level}")
            assert (got[..., 3] == 255).all()
        assert list(slide.associated_images) == ["thumbnail"]


def test_generic_tiff_without_power_and_inches_become_centimetres(tmp_path: Path) -> None:
    """No pixel size: the generic layout; a resolution in inches is written in centimetres, which
    is the unit OpenSlide derives its mpp from."""
    openslide = _openslide()
    image = noisy(600, 1100)
    plain = write(tmp_path / "plain.tif", image, ArraySource(image), pyramid=None)
    inches = ArraySource(image, resolution=(2540.0, 1270.0), resolution_unit="INCH")  # 10 x 20 um
    dpi = write(tmp_path / "dpi.tif", image, inches, pyramid=None)
    with openslide.OpenSlide(str(plain)) as slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff" and slide.level_count == 4
        assert "openslide.mpp-x" not in slide.properties and "aperio.MPP" not in slide.properties
    with openslide.OpenSlide(str(dpi)) as slide:
        props = slide.properties
        assert props["openslide.vendor"] == "aperio" and "openslide.objective-power" not in props
        assert float(props["openslide.mpp-x"]) == pytest.approx(10.0)  # Aperio's MPP is one value
    with tifffile.TiffFile(dpi) as tif:
        page = tif.pages[0]
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((1000.0, 500.0))
        assert "AppMag" not in page.description
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), image)


def test_aperio_layout_grey(tmp_path: Path) -> None:
    openslide = _openslide()
    grey = noisy(700, 1100)[..., :1]
    source = ArraySource(grey, resolution=(1e4 / MPP, 1e4 / MPP), resolution_unit="CENTIMETER")
    out = tmp_path / "grey.tif"
    with open_writer(out, 700, 1100, 1, tile=TILE, source=source, pyramid=None) as writer:
        writer.write_band(grey)
    reference = [level[..., 0] for level in reference_pyramid(grey, 3)]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_svs and tif.pages[1].shape == reference[-1].shape  # the thumbnail, 2-D
        for level, expected in zip(tif.series[0].levels, reference, strict=True):
            np.testing.assert_array_equal(level.asarray(), expected)
    with openslide.OpenSlide(str(out)) as slide:
        assert slide.properties["openslide.vendor"] == "aperio" and slide.level_count == 4
        h, w = reference[2].shape
        np.testing.assert_array_equal(np.asarray(slide.read_region((0, 0), 2, (w, h)))[..., 0], reference[2])


@needs_vips
def test_aperio_layout_libvips(aperio_tif: Path, reference: list[np.ndarray], tmp_path: Path) -> None:
    # tiffload: directory 0, then the levels after the thumbnail (directory 1)
    for level, page in enumerate([0, *range(2, len(SIZES) + 1)]):
        got = _vips_load(tmp_path, "tiffload", aperio_tif, "--page", str(page))
        np.testing.assert_array_equal(got, reference[level], err_msg=f"tiffload page {page}")
    np.testing.assert_array_equal(_vips_load(tmp_path, "tiffload", aperio_tif, "--page", "1"), reference[-1])
    beyond = subprocess.run(
        ["vips", "tiffload", str(aperio_tif), str(tmp_path / "x.png"), "--page", str(len(SIZES) + 1)],
        capture_output=True,
        text=True,
    )
    assert beyond.returncode != 0 and "does not contain page" in beyond.stderr  # no more
    # openslideload: vips's own OpenSlide (Debian's), levels and properties
    header = _vips_header(aperio_tif)
    assert header["vips-loader"] == "openslideload"
    assert float(header["openslide.mpp-x"]) == pytest.approx(MPP)
    assert float(header["openslide.objective-power"]) == POWER
    assert float(header["xres"]) == pytest.approx(1e3 / MPP)  # vips: pixels per millimetre
    for level, expected in enumerate(reference):
        got = _vips_load(tmp_path, "openslideload", aperio_tif, "--level", str(level))
        np.testing.assert_array_equal(got[..., :3], expected, err_msg=f"openslideload level {level}")


# -- OME-TIFF ---------------------------------------------------------------------------------
def _ome_pixels(xml: str) -> tuple[ET.Element, ET.Element]:
    root = ET.fromstring(xml)
    ns = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
    pixels = root.find("ome:Image/ome:Pixels", ns)
    assert pixels is not None
    return root, pixels


def test_ome_tiff_tifffile(ome_tif: Path, reference: list[np.ndarray]) -> None:
    with tifffile.TiffFile(ome_tif) as tif:
        assert tif.is_ome and len(tif.pages) == 1  # the levels are SubIFDs of level 0
        assert len(tif.pages[0].subifds) == len(SIZES) - 1
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == SIZES
        for i, (level, expected) in enumerate(zip(levels, reference, strict=True)):
            np.testing.assert_array_equal(level.asarray(), expected, err_msg=f"level {i}")
            assert level.keyframe.subfiletype == (0 if i == 0 else 1)
            assert level.keyframe.resolutionunit == tifffile.RESUNIT.CENTIMETER
        root, pixels = _ome_pixels(tif.ome_metadata)
    assert pixels.attrib["SizeX"] == str(W) and pixels.attrib["SizeY"] == str(H)
    assert pixels.attrib["SizeC"] == "3" and pixels.attrib["Type"] == "uint8"
    assert float(pixels.attrib["PhysicalSizeX"]) == MPP and float(pixels.attrib["PhysicalSizeY"]) == MPP
    assert pixels.attrib["PhysicalSizeXUnit"] == "\u00b5m" == pixels.attrib["PhysicalSizeYUnit"]
    tag = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
    (objective,) = root.iter(tag + "Objective")
    settings = root.find(f"{tag}Image/{tag}ObjectiveSettings")
    assert float(objective.attrib["NominalMagnification"]) == POWER
    assert settings is not None and settings.attrib["ID"] == objective.attrib["ID"]
    (tiffdata,) = pixels.iter(tag + "TiffData")
    assert tiffdata.attrib == {"IFD": "0", "PlaneCount": "1"}
    with open_image(ome_tif) as back:
        assert back.resolution == pytest.approx((1e4 / MPP, 1e4 / MPP)) and back.objective_power == POWER


def test_ome_tiff_openslide_reads_level0_and_mpp(ome_tif: Path, reference: list[np.ndarray]) -> None:
    openslide = _openslide()
    with openslide.OpenSlide(str(ome_tif)) as slide:  # OpenSlide does not read SubIFDs
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(MPP)
        assert slide.level_dimensions == ((W, H),)
        got = np.asarray(slide.read_region((0, 0), 0, (W, H)))[..., :3]
        np.testing.assert_array_equal(got, reference[0])


@needs_vips
def test_ome_tiff_libvips(ome_tif: Path, reference: list[np.ndarray], tmp_path: Path) -> None:
    header = _vips_header(ome_tif)
    assert header["vips-loader"] == "tiffload" and header["n-subifds"] == str(len(SIZES) - 1)
    assert float(header["xres"]) == pytest.approx(1e3 / MPP)
    np.testing.assert_array_equal(_vips_load(tmp_path, "tiffload", ome_tif), reference[0])
    for level in range(1, len(SIZES)):
        got = _vips_load(tmp_path, "tiffload", ome_tif, "--subifd", str(level - 1))
        np.testing.assert_array_equal(got, reference[level], err_msg=f"subifd {level - 1}")


def test_ome_tiff_grey_without_metadata(tmp_path: Path) -> None:
    grey = noisy(300, 200)[..., :1]
    out = tmp_path / "g.ome.tiff"
    with open_writer(out, 300, 200, 1, tile=64, pyramid=True) as writer:
        writer.write_band(grey)
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(300, 200), (150, 100), (75, 50), (38, 25)]
        np.testing.assert_array_equal(levels[1].asarray(), reference_pyramid(grey, 1)[1][..., 0])
        _, pixels = _ome_pixels(tif.ome_metadata)
        assert pixels.attrib["SizeC"] == "1" and "PhysicalSizeX" not in pixels.attrib


def test_ome_tiff_writer_memory_is_bounded(tmp_path: Path) -> None:
    image = noisy(8192, 512)  # 12.6 MB
    out = tmp_path / "tall.ome.tif"
    tracemalloc.start()
    try:
        with open_writer(
            out,
            8192,
            512,
            3,
            tile=256,
            compression="zstd",
            queue_bytes=1 << 20,
            source=slide_source(image),
            pyramid=None,
        ) as writer:  # slide-sized: the default pyramid
            for y in range(0, 8192, 64):
                writer.write_band(image[y : y + 64])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < image.nbytes / 3, peak
    with tifffile.TiffFile(out) as tif:
        assert len(tif.series[0].levels) == 6
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), image)


def test_ome_tiff_abort_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.ome.tif"
    with pytest.raises(RuntimeError), open_writer(out, 600, 300, 3, tile=128, pyramid=True) as writer:
        writer.write_band(noisy(200, 300))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []


# -- libvips helpers ----------------------------------------------------------------------------
def _vips_header(path: Path) -> dict[str, str]:
    result = subprocess.run(["vipsheader", "-a", str(path)], capture_output=True, text=True, check=True)
    fields = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _vips_load(folder: Path, loader: str, path: Path, *options: str) -> np.ndarray:
    """Load with ``vips LOADER`` and save losslessly as PNG; the pixels as [h, w, bands]."""
    out = folder / f"vips-{loader}-{'-'.join(o.strip('-') for o in options) or 'default'}.png"
    cmd = ["vips", loader, str(path), f"{out}[compression=1]", *options]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}: {result.stderr.strip()}"
    with Image.open(out) as img:
        return np.asarray(img)


# -- trt-translate end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from fakes import write_toy_bundle

    return write_toy_bundle(tmp_path_factory.mktemp("bundle") / "toy")


def _cli(*args: str | Path) -> tuple[int, str]:
    from click.testing import CliRunner

    from dnrt.runtime.cli import translate_command

    result = CliRunner().invoke(translate_command, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stderr


def test_cli_slide_metadata_pyramid_and_formats(toy_bundle: Path, tmp_path: Path) -> None:
    """An SVS-like input (Aperio AppMag and MPP, no resolution tags) 2100 px wide: the output gets
    levels by default, the input's pixel size and objective power, and OME-TIFF by name."""
    openslide = _openslide()
    source = tmp_path / "in.tif"
    description = "Aperio Image Library v12.0.15\r\n2100x48 (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.25"
    tifffile.imwrite(
        source, noisy(48, 2100, seed=5), photometric="rgb", tile=(32, 32), description=description
    )
    with open_image(source) as src:
        assert src.objective_power == 40.0 and src.resolution == pytest.approx((40000.0, 40000.0))
    common = ("-m", toy_bundle, "--backend", "ort", "-q")

    assert _cli(source, "-o", tmp_path / "out.tif", *common) == (0, "")
    with openslide.OpenSlide(str(tmp_path / "out.tif")) as slide:
        assert slide.level_dimensions == ((2100, 48), (1050, 24), (525, 12), (263, 6))
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(slide.properties["openslide.objective-power"]) == 40.0
        translated = np.asarray(slide.read_region((0, 0), 0, (2100, 48)))[..., :3]

    assert _cli(source, "-o", tmp_path / "flat.tif", "--no-pyramid", *common) == (0, "")
    with openslide.OpenSlide(str(tmp_path / "flat.tif")) as slide:
        assert slide.level_count == 1 and float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.25)

    assert _cli(source, "-o", tmp_path / "out.ome.tif", *common) == (0, "")
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        assert tif.is_ome and [lv.shape[:2] for lv in tif.series[0].levels][-1] == (6, 263)
        np.testing.assert_array_equal(tif.series[0].asarray(), translated)
        root, pixels = _ome_pixels(tif.ome_metadata)
        assert float(pixels.attrib["PhysicalSizeX"]) == 0.25
        tag = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
        assert float(next(root.iter(tag + "Objective")).attrib["NominalMagnification"]) == 40.0

    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = _cli(source, "-o", tmp_path / "bad.ome.tif", "--format", "tiff", *common)
    assert code == 2 and err.startswith("error: output") and "named as an OME-TIFF" in err
    assert len(err.strip().splitlines()) == 1
    code, err = _cli(source, "-o", tmp_path / "bad.png", "--format", "ome-tiff", *common)
    assert code == 2 and "needs a TIFF output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporaries
