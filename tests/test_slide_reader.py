"""The slide readers: OpenSlide beside tifffile, chosen by content, with the same pixels.

Real files of several vendor layouts are written with tifffile (tests/slides.py) and read
through both readers wherever both apply, level by level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

from slides import tissue, write_generic_pyramid, write_ndpi_like, write_ome, write_svs  # noqa: E402

from dnrt.errors import DnrtError  # noqa: E402
from dnrt.runtime.io import open_image, slidesource  # noqa: E402
from dnrt.runtime.io.reader import MissingLevel  # noqa: E402
from dnrt.runtime.io.slidesource import composite_rgba  # noqa: E402


def _openslide():
    try:
        import openslide
    except (ImportError, OSError) as exc:  # the package or its library (openslide-bin) is missing
        pytest.skip(f"OpenSlide unavailable (pip install openslide-python openslide-bin): {exc}")
    return openslide


def _whole(source) -> np.ndarray:
    return source.read_region(0, source.height, 0, source.width)


def _regions(a, b, seed: int = 0, n: int = 12) -> None:
    """Random regions (including ones crossing tile borders and touching the edges) agree."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        y0, x0 = int(rng.integers(0, a.height - 1)), int(rng.integers(0, a.width - 1))
        y1, x1 = int(rng.integers(y0 + 1, a.height + 1)), int(rng.integers(x0 + 1, a.width + 1))
        np.testing.assert_array_equal(a.read_region(y0, y1, x0, x1), b.read_region(y0, y1, x0, x1))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_svs_every_level_same_pixels_through_both_readers(tmp_path: Path, compression: str | None) -> None:
    _openslide()
    path = tmp_path / "slide.svs"
    stack = write_svs(path, tissue(640, 896), levels=3, mpp=0.25, power=40, compression=compression)
    for level, stored in enumerate(stack):
        with (
            open_image(path, reader="tifffile", level=level) as t,
            open_image(path, reader="openslide", level=level) as o,
        ):
            assert (t.reader, o.reader) == ("tifffile", "openslide")
            assert (t.width, t.height) == (o.width, o.height) == (stored.shape[1], stored.shape[0])
            assert t.level_sizes == o.level_sizes == ((896, 640), (448, 320), (224, 160))
            np.testing.assert_array_equal(_whole(t), stored)
            np.testing.assert_array_equal(_whole(o), stored)
            _regions(t, o, seed=level)
            # Both report the resolution and magnification of the level's own pixels.
            assert t.mpp == pytest.approx((0.25 * 2**level,) * 2) and o.mpp == pytest.approx(t.mpp)
            assert t.objective_power == pytest.approx(40 / 2**level) == o.objective_power


def test_svs_auto_stays_on_tifffile(tmp_path: Path) -> None:
    path = tmp_path / "slide.svs"
    write_svs(path, tissue(256, 256), levels=2)
    with open_image(path) as source:
        assert source.reader == "tifffile" and "SVS" in source.description


def test_philips_tiff_resolution_through_tifffile(tmp_path: Path) -> None:
    """Philips TIFF keeps its resolution in the XML description (DICOM_PIXEL_SPACING, mm, one
    per level, row spacing first): the finest level's becomes the slide's mpp."""
    import tifffile

    def spacing(mm: float) -> str:
        return (
            '<DataObject ObjectType="PixelDataRepresentation">'
            f'<Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030" PMSVR="IDoubleArray">'
            f"&quot;{mm * 1.5:g}&quot; &quot;{mm:g}&quot;</Attribute></DataObject>"
        )

    xml = (
        '<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
        '<Attribute Name="PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE" PMSVR="IDataObjectArray"><Array>'
        + spacing(0.0005)
        + spacing(0.00025)
        + "</Array></Attribute></DataObject>"
    )
    path = tmp_path / "philips.tiff"
    tifffile.imwrite(
        path, tissue(128, 128), photometric="rgb", tile=(64, 64), software="Philips DP v1.0", description=xml
    )
    with open_image(path) as source:
        assert source.reader == "tifffile" and source.flavour == "philips"
        assert source.mpp == pytest.approx((0.25, 0.375))


def test_generic_pyramidal_tiff_same_pixels(tmp_path: Path) -> None:
    openslide = _openslide()
    path = tmp_path / "pyramid.tif"
    stack = write_generic_pyramid(path, tissue(512, 768, seed=1), levels=3, dpcm=40000.0)
    assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
    for level, stored in enumerate(stack):
        with open_image(path, level=level) as t, open_image(path, reader="openslide", level=level) as o:
            assert t.reader == "tifffile"
            np.testing.assert_array_equal(_whole(t), stored)
            np.testing.assert_array_equal(_whole(o), stored)
            _regions(t, o, seed=level)
            assert t.mpp == pytest.approx((0.25 * 2**level,) * 2)  # 40,000 px/cm = 0.25 um/px


def test_ome_tiff_with_several_series(tmp_path: Path) -> None:
    """OME-TIFF stays on tifffile: series 0 with its SubIFD levels (the label series is not the
    slide), the resolution from OME-XML PhysicalSizeX/Y; OpenSlide reads its level 0 alike."""
    path = tmp_path / "slide.ome.tif"
    stack = write_ome(path, tissue(384, 512, seed=2), levels=3, mpp=0.5)
    for level, stored in enumerate(stack):
        with open_image(path, level=level) as source:
            assert source.reader == "tifffile" and source.level_sizes == ((512, 384), (256, 192), (128, 96))
            np.testing.assert_array_equal(_whole(source), stored)
            assert source.mpp == pytest.approx((0.5 * 2**level,) * 2)
    with pytest.raises(MissingLevel, match=r"has no level 3: it has 3 levels \(0-2\)"):
        open_image(path, level=3)
    openslide = _openslide()
    if openslide.OpenSlide.detect_format(str(path)) is not None:
        with open_image(path, reader="openslide") as o:
            np.testing.assert_array_equal(_whole(o), stack[0])


def test_ndpi_like_goes_to_openslide_with_the_same_pixels(tmp_path: Path) -> None:
    """tifffile refuses this NDPI-like file, so the automatic choice is OpenSlide; its pixels
    equal tifffile's decoding of the same JPEG data stored without Hamamatsu's tags."""
    _openslide()
    image = tissue(384, 512, seed=3)
    ndpi, plain = tmp_path / "slide.ndpi", tmp_path / "plain.tif"
    write_ndpi_like(ndpi, image, mpp=0.46, power=20)
    write_ndpi_like(plain, image, mpp=0.46, power=20, ndpi=False)
    with pytest.raises(DnrtError):
        open_image(ndpi, reader="tifffile")
    with open_image(ndpi) as o, open_image(plain) as t:
        assert o.reader == "openslide" and o.vendor == "hamamatsu" and t.reader == "tifffile"
        assert o.mpp == pytest.approx((0.46, 0.46)) == t.mpp
        assert o.objective_power == pytest.approx(20)
        diff = np.abs(_whole(o).astype(int) - _whole(t).astype(int))
        assert diff.max() <= 1, f"JPEG decoders differ by {diff.max()} (more than rounding)"
        assert diff.mean() < 0.05


def test_real_ndpi_objective_power_through_tifffile() -> None:
    """A real NDPI (64-bit offsets, which tifffile reads and its writer cannot make) keeps its
    objective power on the tifffile path: Hamamatsu's SourceLens tag (65421)."""
    from types import SimpleNamespace

    from dnrt.runtime.io.tiffsource import _objective_power

    tags = SimpleNamespace(valueof=lambda code: {65421: 40.0}.get(code))
    tif = SimpleNamespace(is_ndpi=True, is_svs=False, is_ome=False)
    assert _objective_power(tif, SimpleNamespace(tags=tags, description="")) == 40.0
    no_lens = SimpleNamespace(valueof=lambda code: None)
    assert _objective_power(tif, SimpleNamespace(tags=no_lens, description="")) is None


def test_openslide_reads_bands_in_bounded_column_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _openslide()
    path = tmp_path / "slide.svs"
    stack = write_svs(path, tissue(256, 1000, seed=4), levels=1)
    monkeypatch.setattr(slidesource, "CHUNK_COLUMNS", 128)
    with open_image(path, reader="openslide", workers=2) as source:
        widths: list[int] = []
        original = source._slide.read_region

        def spy(location, level, size):
            widths.append(size[0])
            return original(location, level, size)

        source._slide.read_region = spy
        np.testing.assert_array_equal(source.read_region(10, 200, 0, 1000), stack[0][10:200])
    assert max(widths) <= 128 and sum(widths) == 1000


def test_composite_rgba_transparent_is_background() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 128]]], np.uint8)
    out = np.empty((1, 3, 3), np.uint8)
    composite_rgba(rgba, (255, 255, 255), out)
    # opaque: unchanged; transparent: white; half: round((c a + 255 (255 - a)) / 255)
    expected_half = [round((c * 128 + 255 * 127) / 255) for c in (200, 100, 0)]
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 2].tolist() == expected_half
    composite_rgba(rgba, (0, 10, 20), out)
    assert out[0, 1].tolist() == [0, 10, 20]
    opaque = np.full((2, 2, 4), 255, np.uint8)
    opaque[..., :3] = 7
    few = np.empty((2, 2, 3), np.uint8)
    composite_rgba(opaque, (255, 255, 255), few)
    assert (few == 7).all()


def test_background_colour_property() -> None:
    assert slidesource._background("FFE0C0") == (255, 224, 192)
    assert slidesource._background(None) == (255, 255, 255)
    assert slidesource._background("nonsense") == (255, 255, 255)


def test_forced_readers_and_files_openslide_cannot_open(tmp_path: Path) -> None:
    _openslide()
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.fromarray(tissue(32, 48)).save(png)
    with pytest.raises(DnrtError, match="is not a TIFF-family file; the tifffile reader reads only those"):
        open_image(png, reader="tifffile")
    with pytest.raises(DnrtError, match="is not a slide OpenSlide can open"):
        open_image(png, reader="openslide")
    with open_image(png) as source:  # auto: not a slide format, Pillow reads it
        assert source.reader == "pillow"
    with pytest.raises(MissingLevel, match="has no level 1: it has 1 level"):
        open_image(png, level=1)
    junk = tmp_path / "slide.svs"
    junk.write_bytes(b"II*\x00" + b"\x00" * 60)  # TIFF magic, nothing behind it
    with pytest.raises(DnrtError, match="is a TIFF without any image"):
        open_image(junk)
    with pytest.raises(DnrtError, match="is not a slide OpenSlide can open"):
        open_image(junk, reader="openslide")


def test_without_openslide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slidesource, "_openslide", lambda: None)
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.fromarray(tissue(16, 16)).save(png)
    with open_image(png) as source:
        assert source.reader == "pillow"
    with pytest.raises(DnrtError, match=r"needs OpenSlide: pip install 'dnrt\[slides\]'"):
        open_image(png, reader="openslide")


def test_plain_tiff_does_not_load_openslide(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, tissue(64, 64), photometric="rgb", tile=(32, 32))
    code = (
        "import sys\nfrom dnrt.runtime.io import open_image\n"
        f"open_image({str(path)!r}).close()\nprint('openslide' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_dicom_wsi_goes_to_openslide(tmp_path: Path) -> None:
    """A DICOM WSI (not a TIFF: a 128-byte preamble and 'DICM') is recognised by content, even
    without a suffix, and read by OpenSlide with the stored pixels and resolution."""
    _openslide()
    pytest.importorskip("pydicom")
    from slides import write_dicom_wsi

    image = tissue(512, 768, seed=12)
    path = tmp_path / "slide-without-suffix"
    write_dicom_wsi(path, image, tile=256, mpp=0.25)
    with open_image(path) as source:
        assert (source.reader, source.vendor) == ("openslide", "dicom")
        assert source.mpp == pytest.approx((0.25, 0.25))
        np.testing.assert_array_equal(_whole(source), image)
        np.testing.assert_array_equal(source.read_region(100, 300, 250, 700), image[100:300, 250:700])
    with pytest.raises(DnrtError, match="not a TIFF-family file"):
        open_image(path, reader="tifffile")
