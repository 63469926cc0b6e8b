"""Image I/O: reading every supported layout, writing tiled (pyramidal) BigTIFF, atomic outputs,
and the one-line errors every bad input gets."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from dnrt.errors import DnrtError
from dnrt.runtime.io import check_output_path, open_image, open_writer
from dnrt.runtime.io.pyramid import level_sizes
from dnrt.runtime.io.reader import open_pillow
from dnrt.semantics import reflect_index

H, W = 300, 500


def smooth(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with a little noise: JPEG-friendly, yet every pixel differs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 200 / w, y * 200 / h, (x + y) * 100 / (h + w) + 60], -1)
    return np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def noisy(h: int = H, w: int = W, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_bands(writer, image: np.ndarray, heights=(37, 1, 128, 200, 64)) -> None:
    """Irregular band heights, cycling until the image is written."""
    y, i = 0, 0
    while y < image.shape[0]:
        h = heights[i % len(heights)]
        writer.write_band(image[y : y + h])
        y += h
        i += 1


def box_mean(image: np.ndarray) -> np.ndarray:
    """Float 2x box mean, odd last row/column repeated."""
    h, w, c = image.shape
    padded = np.pad(image.astype(np.float64), ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return padded.reshape((h + 1) // 2, 2, (w + 1) // 2, 2, c).mean(axis=(1, 3))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".dnrt-" in p.name)


# -- reading ----------------------------------------------------------------------------------
INPUT_LAYOUTS = {
    "tiled-zlib-bigtiff": dict(tile=(128, 128), compression="zlib", bigtiff=True),
    "tiled-zstd-classic": dict(tile=(64, 128), compression="zstd"),
    "tiled-none": dict(tile=(128, 128)),
    "striped-lzw-predictor": dict(rowsperstrip=64, compression="lzw", predictor=True),
    "striped-deflate": dict(rowsperstrip=7, compression="deflate"),
    "striped-none-multi": dict(rowsperstrip=16),
    "contiguous-single-strip": dict(),
    "contiguous-bigtiff": dict(bigtiff=True),
    "planar-separate-tiled": dict(tile=(128, 128), planarconfig="separate", compression="zlib"),
    "planar-separate-contiguous": dict(planarconfig="separate"),
}


@pytest.mark.parametrize("layout", sorted(INPUT_LAYOUTS))
def test_tiff_layouts_read_exactly(tmp_path: Path, layout: str) -> None:
    image = noisy()
    path = tmp_path / "in.tif"
    kwargs = dict(INPUT_LAYOUTS[layout])
    data = image
    if kwargs.get("planarconfig") == "separate":
        data = np.moveaxis(image, -1, 0)
        kwargs["photometric"] = "rgb"
    tifffile.imwrite(path, data, **kwargs)
    with open_image(path) as src:
        assert (src.height, src.width, src.channels) == (H, W, 3)
        assert src.dtype == np.uint8 and src.photometric == "rgb"
        assert ("BigTIFF" in src.description) == bool(kwargs.get("bigtiff"))
        np.testing.assert_array_equal(src.read_region(0, H, 0, W), image)
        np.testing.assert_array_equal(src.read_region(37, 211, 99, 433), image[37:211, 99:433])
        np.testing.assert_array_equal(src.read_region(H - 1, H, W - 1, W), image[H - 1 :, W - 1 :])
        # a reflect-padded tile crossing the top-left corner, as the runtime builds it
        rows = reflect_index(np.arange(-16, 128 + 16), H)
        cols = reflect_index(np.arange(W - 100, W + 40), W)
        np.testing.assert_array_equal(src.read_rows_cols(rows, cols), image[np.ix_(rows, cols)])
        # repeated, unsorted indices
        rows = np.array([5, 3, 3, 290, 0])
        cols = np.array([499, 0, 250, 250])
        np.testing.assert_array_equal(src.read_rows_cols(rows, cols), image[np.ix_(rows, cols)])


def test_jpeg_tiff_and_svs_like(tmp_path: Path) -> None:
    image = smooth()
    path = tmp_path / "slide.svs"
    desc = (
        "Aperio Image Library v12.0.15\r\n500x300 [0,0 500x300] (128x128) JPEG/RGB Q=90|AppMag = 20|MPP = 0.5"
    )
    with tifffile.TiffWriter(path) as tw:  # SVS layout: JPEG tiles, then a striped thumbnail
        tw.write(
            image, tile=(128, 128), compression="jpeg", description=desc, photometric="rgb", metadata=None
        )
        tw.write(image[::4, ::4], description="Aperio Image Library v12.0.15\r\nthumbnail", metadata=None)
    with open_image(path) as src:
        assert "SVS" in src.description and "jpeg" in src.description
        assert (src.height, src.width, src.channels, src.photometric) == (H, W, 3, "rgb")
        full = src.read_region(0, H, 0, W)
        assert np.abs(full.astype(int) - image).mean() < 3  # YCbCr JPEG decoded to RGB
        assert src.resolution == pytest.approx((20000.0, 20000.0))  # 0.5 um/px as px/cm
        assert src.resolution_unit == "CENTIMETER"


def test_ome_tiff_first_level_and_channel_pages(tmp_path: Path) -> None:
    image = noisy()
    pyr = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(pyr, ome=True) as tw:
        tw.write(image, photometric="rgb", tile=(128, 128), subifds=1, metadata={"PhysicalSizeX": 0.25})
        tw.write(image[::2, ::2], photometric="rgb", tile=(128, 128), subfiletype=1)
    with open_image(pyr) as src:
        assert "OME" in src.description and (src.height, src.width) == (H, W)
        np.testing.assert_array_equal(src.read_region(0, H, 0, W), image)
    planes = tmp_path / "planes.ome.tif"
    tifffile.imwrite(
        planes, np.moveaxis(image, -1, 0), ome=True, photometric="minisblack", metadata={"axes": "CYX"}
    )
    with open_image(planes) as src:
        assert src.channels == 3 and "stacked" in src.description
        np.testing.assert_array_equal(src.read_region(10, 200, 20, 480), image[10:200, 20:480])


def test_sample_conversions_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    # uint16 -> round(v / 257)
    v16 = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    v16[0, :4, 0] = [0, 128, 129, 65535]
    tifffile.imwrite(tmp_path / "u16.tif", v16, tile=(16, 16))
    with open_image(tmp_path / "u16.tif") as src:
        got = src.read_region(0, 40, 0, 50)
        np.testing.assert_array_equal(got, np.round(v16 / 257).astype(np.uint8))
        assert list(got[0, :4, 0]) == [0, 0, 1, 255] and "16-bit" in src.description
    # RGBA -> alpha dropped
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_image(tmp_path / "rgba.tif") as src:
        assert src.channels == 3 and "alpha" in src.description
        np.testing.assert_array_equal(src.read_region(0, 40, 0, 50), rgba[..., :3])
    # grey stays one channel
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", grey, tile=(16, 16), compression="zlib")
    with open_image(tmp_path / "grey.tif") as src:
        assert (src.channels, src.photometric) == (1, "minisblack")
        np.testing.assert_array_equal(src.read_region(0, 40, 0, 50)[..., 0], grey)
    # min-is-white is inverted
    tifffile.imwrite(tmp_path / "white.tif", grey, photometric="miniswhite")
    with open_image(tmp_path / "white.tif") as src:
        np.testing.assert_array_equal(src.read_region(0, 40, 0, 50)[..., 0], 255 - grey)
    # palette -> RGB (16-bit colour map scaled to 8 bits)
    index = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    cmap = rng.integers(0, 256, (3, 256), dtype=np.uint16) * 257
    tifffile.imwrite(tmp_path / "pal.tif", index, photometric="palette", colormap=cmap)
    with open_image(tmp_path / "pal.tif") as src:
        assert (src.channels, src.photometric) == (3, "rgb")
        np.testing.assert_array_equal(src.read_region(0, 40, 0, 50), (cmap // 257).T[index].astype(np.uint8))


def test_pillow_inputs(tmp_path: Path) -> None:
    image = smooth(60, 80)
    Image.fromarray(image).save(tmp_path / "rgb.png")
    with open_image(tmp_path / "rgb.png") as src:
        assert src.description.startswith("PNG 80x60")
        np.testing.assert_array_equal(src.read_region(0, 60, 0, 80), image)
        np.testing.assert_array_equal(src.read_region(5, 50, 7, 70), image[5:50, 7:70])
    rgba = np.dstack([image, np.full((60, 80), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png", dpi=(300, 300))
    with open_image(tmp_path / "rgba.png") as src:
        assert src.channels == 3 and "alpha dropped" in src.description
        assert src.resolution == pytest.approx((300, 300), abs=0.1) and src.resolution_unit == "INCH"
        np.testing.assert_array_equal(src.read_region(0, 60, 0, 80), image)
    Image.fromarray(image).save(tmp_path / "img.jpg", quality=95)
    with open_image(tmp_path / "img.jpg") as src:
        assert src.channels == 3 and np.abs(src.read_region(0, 60, 0, 80).astype(int) - image).mean() < 3
    Image.fromarray(image[..., 0]).save(tmp_path / "grey.png")
    with open_image(tmp_path / "grey.png") as src:
        assert src.channels == 1
        np.testing.assert_array_equal(src.read_region(0, 60, 0, 80)[..., 0], image[..., 0])
    pal = Image.fromarray(image).quantize(16)
    pal.save(tmp_path / "pal.png")
    with open_image(tmp_path / "pal.png") as src:
        assert src.channels == 3
        np.testing.assert_array_equal(src.read_region(0, 60, 0, 80), np.asarray(pal.convert("RGB")))
    v16 = (np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) * 13) % 65535
    Image.fromarray(v16).save(tmp_path / "g16.png")
    with open_image(tmp_path / "g16.png") as src:
        np.testing.assert_array_equal(
            src.read_region(0, 60, 0, 80)[..., 0], np.round(v16 / 257).astype(np.uint8)
        )


def test_pillow_size_limit(tmp_path: Path) -> None:
    Image.fromarray(smooth(60, 80)).save(tmp_path / "big.png")
    with pytest.raises(DnrtError, match="must be TIFF"):
        open_pillow(tmp_path / "big.png", max_pixels=1000)


def test_region_bounds_checked(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", noisy(), tile=(128, 128))
    with open_image(tmp_path / "a.tif") as src:
        with pytest.raises(ValueError, match="outside"):
            src.read_region(0, H + 1, 0, W)
        with pytest.raises(ValueError, match="outside"):
            src.read_rows_cols(np.array([-1, 0]), np.array([0]))
        assert src.read_region(5, 5, 0, W).shape == (0, W, 3)


# -- reading is bounded --------------------------------------------------------------------------
def test_tiled_read_decodes_only_overlapping_tiles(tmp_path: Path) -> None:
    image = noisy(1024, 1024)
    tifffile.imwrite(tmp_path / "t.tif", image, tile=(128, 128), compression="zlib")
    with open_image(tmp_path / "t.tif") as src:
        got = src.read_region(300, 400, 500, 700)  # tile rows 2..3, tile cols 3..5
        np.testing.assert_array_equal(got, image[300:400, 500:700])
        assert src.stats["segments_decoded"] == 2 * 3
        src.read_region(300, 400, 500, 700)  # served from the cache
        assert src.stats["segments_decoded"] == 6 and src.stats["cache_hits"] == 6
        src.read_region(0, 128, 0, 1024)  # one full band of tiles
        assert src.stats["segments_decoded"] == 6 + 8


def test_striped_and_contiguous_reads_touch_only_their_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dnrt.runtime.io import tiffsource

    monkeypatch.setattr(tiffsource, "_SYNTHETIC_STRIP_BYTES", 64 << 10)  # 42 rows of 512 RGB pixels
    image = noisy(1024, 512)
    tifffile.imwrite(tmp_path / "s.tif", image, rowsperstrip=32, compression="zlib")
    with open_image(tmp_path / "s.tif") as src:
        src.read_region(100, 164, 0, 512)  # strips 3..5
        assert src.stats["segments_decoded"] == 3
    # one uncompressed strip holding the whole image: read through small synthetic strips
    tifffile.imwrite(tmp_path / "c.tif", image)
    with open_image(tmp_path / "c.tif", cache_bytes=0) as src:
        assert "contiguous" in src.description
        band = src.read_region(500, 564, 0, 512)
        np.testing.assert_array_equal(band, image[500:564])
        assert src.stats["bytes_read"] <= (64 + 2 * 42) * 512 * 3


def test_band_read_memory_is_bounded(tmp_path: Path) -> None:
    image = noisy(2048, 2048)
    tifffile.imwrite(tmp_path / "m.tif", image, tile=(128, 128), compression="zstd")
    with open_image(tmp_path / "m.tif", cache_bytes=0, workers=1) as src:
        tracemalloc.start()
        try:
            band = src.read_region(640, 768, 0, 2048)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    np.testing.assert_array_equal(band, image[640:768])
    # band (0.75 MB) + its decoded tiles; the image is 12 MB
    print(f"band read peak {peak / 1e6:.2f} MB")
    assert peak < 3 * band.nbytes, peak


# -- writing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["zlib", "none", "lzw", "zstd", "webp", "zlib:1", "zstd:9"])
def test_write_lossless_round_trip(tmp_path: Path, compression: str) -> None:
    image = noisy()
    out = tmp_path / "out.tif"
    with open_writer(out, H, W, 3, tile=128, compression=compression) as writer:
        write_bands(writer, image)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert tif.is_bigtiff and page.is_tiled and (page.tilelength, page.tilewidth) == (128, 128)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.planarconfig == 1
        assert page.software == "dnrt"
        np.testing.assert_array_equal(page.asarray(), image)
    with open_image(out) as src:
        np.testing.assert_array_equal(src.read_region(0, H, 0, W), image)
    assert leftovers(tmp_path) == []


def test_write_jpeg_approximately(tmp_path: Path) -> None:
    image = smooth()
    out = tmp_path / "out.tif"
    with open_writer(out, H, W, 3, tile=128, compression="jpeg") as writer:
        write_bands(writer, image)
    got = tifffile.imread(out)
    assert got.shape == image.shape and np.abs(got.astype(int) - image).mean() < 3
    assert tifffile.TiffFile(out).pages[0].compression == tifffile.COMPRESSION.JPEG


def test_write_grey_and_default_tile(tmp_path: Path) -> None:
    grey = noisy(700, 600)[..., :1]
    out = tmp_path / "grey.tiff"
    with open_writer(out, 700, 600, 1, pyramid=True) as writer:
        writer.write_band(grey[:100, :, 0])  # 2-D bands are accepted for one channel
        writer.write_band(grey[100:])
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.MINISBLACK and page.tilelength == 512
        np.testing.assert_array_equal(page.asarray(), grey[..., 0])
        assert [lv.shape for lv in tif.series[0].levels] == [(700, 600), (350, 300)]


def test_unknown_compression_and_bad_tile(tmp_path: Path) -> None:
    with pytest.raises(DnrtError, match="unknown compression 'lzma'"):
        open_writer(tmp_path / "a.tif", 10, 10, 3, compression="lzma")
    with pytest.raises(DnrtError, match="must be an integer"):
        open_writer(tmp_path / "a.tif", 10, 10, 3, compression="zlib:fast")
    with pytest.raises(DnrtError, match="multiple of 16"):
        open_writer(tmp_path / "a.tif", 10, 10, 3, tile=100)
    assert list(tmp_path.iterdir()) == []


def test_pyramid_levels_tifffile_and_openslide(tmp_path: Path) -> None:
    image = noisy(1100, 1500)
    out = tmp_path / "pyr.tif"
    with open_writer(out, 1100, 1500, 3, tile=256, pyramid=True, compression="zstd") as writer:
        write_bands(writer, image, heights=(300, 77, 512))
        # levels are spilled beside the destination while level 0 streams, not kept in memory
        assert any(".dnrt-level1-" in name for name in leftovers(tmp_path))
    assert leftovers(tmp_path) == []
    sizes = [(1100, 1500), *level_sizes(1100, 1500, 256)]
    assert sizes == [(1100, 1500), (550, 750), (275, 375), (138, 188)]
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert [lv.shape[:2] for lv in series.levels] == sizes
        assert [p.subfiletype for p in tif.pages] == [0, 1, 1, 1]  # main IFD chain, reduced bit
        levels = [lv.asarray() for lv in series.levels]
    np.testing.assert_array_equal(levels[0], image)
    for upper, lower in zip(levels, levels[1:], strict=False):
        # each level is the 2x box mean of the one above within rounding (half up, exactly);
        # odd sizes (275 x 375 here) average the last row/column with itself
        mean = box_mean(upper)
        assert np.abs(lower - mean).max() <= 0.5
        np.testing.assert_array_equal(lower, np.floor(mean + 0.5).astype(np.uint8))

    try:
        import openslide
    except (ImportError, OSError) as exc:  # the Python package or the library (openslide-bin) is missing
        pytest.skip(f"OpenSlide unavailable (pip install openslide-python openslide-bin): {exc}")
    try:
        slide = openslide.OpenSlide(str(out))
    except openslide.OpenSlideUnsupportedFormatError as exc:  # pragma: no cover
        pytest.fail(f"OpenSlide cannot open the pyramid: {exc}")
    with slide:
        assert slide.properties["openslide.vendor"] == "generic-tiff"
        assert slide.level_count == 4
        assert slide.level_dimensions == tuple((w, h) for h, w in sizes)
        region = np.asarray(slide.read_region((200, 100), 0, (300, 250)))[..., :3]
        np.testing.assert_array_equal(region, image[100:350, 200:500])
        region = np.asarray(slide.read_region((0, 0), 2, (375, 275)))[..., :3]
        np.testing.assert_array_equal(region, levels[2])


def test_pyramid_as_subifds(tmp_path: Path) -> None:
    image = noisy(600, 520)
    out = tmp_path / "sub.tif"
    with open_writer(out, 600, 520, 3, tile=128, pyramid=True, subifds=True) as writer:
        writer.write_band(image)
    with tifffile.TiffFile(out) as tif:
        assert len(tif.pages) == 1
        assert [lv.shape[:2] for lv in tif.series[0].levels] == [(600, 520), (300, 260), (150, 130), (75, 65)]


def test_metadata_copied_from_source(tmp_path: Path) -> None:
    image = noisy(100, 120)
    icc = b"fake-icc-profile-bytes"
    src_path = tmp_path / "in.tif"
    tifffile.imwrite(
        src_path,
        image,
        resolution=(4000.0, 2000.0),
        resolutionunit="CENTIMETER",
        iccprofile=icc,
        tile=(32, 32),
    )
    out = tmp_path / "out.tif"
    with open_image(src_path) as src:
        assert src.resolution == (4000.0, 2000.0) and src.resolution_unit == "CENTIMETER"
        assert src.icc_profile == icc
        with open_writer(out, 100, 120, 3, tile=32, source=src, pyramid=True) as writer:
            writer.write_band(src.read_region(0, 100, 0, 120))
    with tifffile.TiffFile(out) as tif:
        # a physical pixel size gives Aperio's layout: level 1 follows the thumbnail (directory 1)
        p0, p1 = tif.pages[0], tif.series[0].levels[1].keyframe
        assert tif.series[0].levels[1].shape[:2] == (50, 60)
        assert p0.resolution == pytest.approx((4000.0, 2000.0))
        assert p0.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert p0.iccprofile == icc
        assert p1.resolution == pytest.approx((2000.0, 1000.0))  # reduced level: half the pixels per cm


def test_png_and_jpg_outputs(tmp_path: Path) -> None:
    image = smooth(70, 90)
    with open_writer(tmp_path / "o.png", 70, 90, 3) as writer:
        write_bands(writer, image, heights=(33, 5))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), image)
    with open_writer(tmp_path / "o.jpg", 70, 90, 3, compression="jpeg:95") as writer:
        writer.write_band(image)
    assert np.abs(np.asarray(Image.open(tmp_path / "o.jpg")).astype(int) - image).mean() < 3
    with pytest.raises(DnrtError, match="pyramid levels need a TIFF"):
        open_writer(tmp_path / "p.png", 70, 90, 3, pyramid=True)
    assert leftovers(tmp_path) == []


def test_writer_memory_is_bounded(tmp_path: Path) -> None:
    image = noisy(8192, 512)  # 12.6 MB
    out = tmp_path / "tall.tif"
    tracemalloc.start()
    try:
        with open_writer(
            out, 8192, 512, 3, tile=256, compression="zstd", queue_bytes=1 << 20, pyramid=True
        ) as w:
            for y in range(0, 8192, 64):
                w.write_band(image[y : y + 64])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"writer peak {peak / 1e6:.2f} MB")
    assert peak < image.nbytes / 3, peak
    np.testing.assert_array_equal(tifffile.imread(out), image)


# -- atomic output and bad outputs ----------------------------------------------------------------
def test_existing_output_refused_and_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    with pytest.raises(DnrtError, match=r"exists; pass --overwrite to replace it"):
        check_output_path(out, overwrite=False)
    with pytest.raises(DnrtError, match="exists"):
        open_writer(out, 10, 10, 3)
    assert out.read_bytes() == b"precious" and leftovers(tmp_path) == []
    image = noisy(10, 10)
    with open_writer(out, 10, 10, 3, overwrite=True) as writer:
        writer.write_band(image)
    np.testing.assert_array_equal(tifffile.imread(out), image)


def test_destination_appearing_meanwhile_is_not_clobbered(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    writer = open_writer(out, 10, 10, 3)
    writer.write_band(noisy(10, 10))
    out.write_bytes(b"someone else")
    with pytest.raises(DnrtError, match="exists"):
        writer.close()
    assert out.read_bytes() == b"someone else" and leftovers(tmp_path) == []


def test_check_output_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DnrtError, match="folder .* does not exist"):
        check_output_path(tmp_path / "nope" / "out.tif")
    with pytest.raises(DnrtError, match="unsupported suffix '.bmp'"):
        check_output_path(tmp_path / "out.bmp")
    assert check_output_path(tmp_path / "out.ome.tif") == tmp_path / "out.ome.tif"  # OME-TIFF output
    (tmp_path / "dir.tif").mkdir()
    with pytest.raises(DnrtError, match="is a folder"):
        check_output_path(tmp_path / "dir.tif", overwrite=True)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, noisy(8, 8))
    with pytest.raises(DnrtError, match="is the input image"):
        check_output_path(src, overwrite=True, input_path=src)
    assert check_output_path(tmp_path / "fine.TIFF") == tmp_path / "fine.TIFF"
    if os.name == "posix" and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(DnrtError, match="not writable"):
            check_output_path(locked / "out.tif")


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("pyramid", [False, True])
def test_abort_leaves_nothing_and_keeps_destination(tmp_path: Path, exc_type: type, pyramid: bool) -> None:
    out = tmp_path / "out.tif"
    out.write_bytes(b"old result")
    image = noisy(600, 300)
    with (
        pytest.raises(exc_type),
        open_writer(out, 600, 300, 3, tile=128, overwrite=True, pyramid=pyramid) as w,
    ):
        w.write_band(image[:200])
        raise exc_type("interrupted")
    assert out.read_bytes() == b"old result"
    assert leftovers(tmp_path) == []


def test_close_before_all_rows_aborts(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    writer = open_writer(out, 100, 50, 3)
    writer.write_band(noisy(40, 50))
    with pytest.raises(ValueError, match="40 of 100 rows"):
        writer.close()
    assert not out.exists() and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="expected a uint8 band"):
        open_writer(out, 10, 50, 3).write_band(np.zeros((5, 49, 3), np.uint8))


def fill_progressively(writer, image: np.ndarray, heights=(100, 28, 300), step: int = 48) -> None:
    """Hand each band over empty (garbage in it) and fill it ``step`` columns at a time,
    publishing each chunk; the writer thread gets a moment to run ahead after every publish,
    so a writer that read unpublished columns would encode the garbage."""
    import time

    y, i = 0, 0
    while y < image.shape[0]:
        h = min(heights[i % len(heights)], image.shape[0] - y)
        band = np.full((h, image.shape[1], image.shape[2]), 0xA5, np.uint8)
        publish = writer.open_band(band)
        for x in range(0, image.shape[1], step):
            x1 = min(x + step, image.shape[1])
            band[:, x:x1] = image[y : y + h, x:x1]
            publish(x1)
            time.sleep(0.002)
        y += h
        i += 1


@pytest.mark.parametrize("pyramid", [False, True])
def test_open_band_encodes_published_columns_only(tmp_path: Path, pyramid: bool) -> None:
    image = noisy(700, 500)
    out = tmp_path / "out.tif"
    # 128-row bands align with the 128 px tiles (tiles cut straight from the band as columns are
    # published); 100/28/300 do not (rows spanning bands wait for whole bands): both paths.
    for heights in ((128,), (100, 28, 300)):
        with open_writer(out, 700, 500, 3, tile=128, pyramid=pyramid, overwrite=True) as writer:
            fill_progressively(writer, image, heights)
        with tifffile.TiffFile(out) as tif:
            np.testing.assert_array_equal(tif.pages[0].asarray(), image)
            if pyramid:
                levels = tif.series[0].levels
                assert [lv.shape[:2] for lv in levels] == [(700, 500), *level_sizes(700, 500, 128)]
                expected = np.floor(box_mean(image) + 0.5).astype(np.uint8)  # as in the test above
                np.testing.assert_array_equal(levels[1].asarray(), expected)
    assert leftovers(tmp_path) == []


def test_open_band_mixes_with_write_band(tmp_path: Path) -> None:
    image = noisy(300, 200)
    out = tmp_path / "out.tif"
    with open_writer(out, 300, 200, 3, tile=64) as writer:
        writer.write_band(image[:70])
        fill_progressively(writer, image[70:200], heights=(130,), step=64)
        writer.write_band(image[200:])
    np.testing.assert_array_equal(tifffile.imread(out), image)


def test_open_band_misuse(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    writer = open_writer(out, 100, 50, 3, tile=32)
    band = np.zeros((60, 50, 3), np.uint8)
    publish = writer.open_band(band)
    publish(20)
    with pytest.raises(ValueError, match="out of order: 10 after 20"):
        publish(10)
    with pytest.raises(ValueError, match="published 51 columns of a 50-column band"):
        publish(51)
    with pytest.raises(ValueError, match="previous band is not complete"):
        writer.write_band(np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(ValueError, match="0 of 100 rows"):
        writer.close()  # the open band counts as not written
    assert not out.exists() and leftovers(tmp_path) == []
    with open_writer(out, 10, 50, 3) as other:
        with pytest.raises(ValueError, match="C-contiguous"):
            other.open_band(np.zeros((10, 100, 3), np.uint8)[:, ::2])
        other.write_band(np.zeros((10, 50, 3), np.uint8))  # a refused band leaves the writer usable
    assert tifffile.imread(out).shape == (10, 50, 3)


def test_writer_thread_failure_surfaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dnrt.runtime.io import writer as writer_mod

    def broken(self):  # the disk fills up while tiles are written
        raise OSError(28, "No space left on device")
        yield  # pragma: no cover

    monkeypatch.setattr(writer_mod.TileWriter, "_level0_tiles", broken)
    out = tmp_path / "out.tif"
    with (
        pytest.raises(DnrtError, match="could not write .*No space left on device"),
        open_writer(out, 64, 64, 3) as writer,
    ):
        writer.write_band(noisy(64, 64))
    assert not out.exists() and leftovers(tmp_path) == []


# -- bad inputs ---------------------------------------------------------------------------------------
def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, noisy(64, 64), tile=(32, 32), compression="zlib")
    data = good.read_bytes()
    cut_data = tmp_path / "cut_data.tif"
    cut_data.write_bytes(data[: len(data) - 500])
    cut_header = tmp_path / "cut_header.tif"
    cut_header.write_bytes(data[:6])
    text = tmp_path / "notes.tif"
    text.write_text("these are not pixels\n" * 20)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    (tmp_path / "folder.tif").mkdir()
    float_tif = tmp_path / "float.tif"
    tifffile.imwrite(float_tif, np.zeros((8, 8, 3), np.float32), photometric="rgb")
    int16_tif = tmp_path / "int16.tif"
    tifffile.imwrite(int16_tif, np.zeros((8, 8), np.int16))
    zero = tmp_path / "zero.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(zero, np.zeros((0, 5, 3), np.uint8))
    png = tmp_path / "cut.png"
    Image.fromarray(noisy(64, 64)).save(png)
    png.write_bytes(png.read_bytes()[:300])
    cmyk = tmp_path / "cmyk.tif"
    tifffile.imwrite(cmyk, np.zeros((8, 8, 4), np.uint8), photometric="separated")
    return {
        "missing": (tmp_path / "missing.tif", r"input image '.*missing.tif' does not exist"),
        "directory": (tmp_path / "folder.tif", r"is a directory, not an image"),
        "empty": (empty, r"is empty \(0 bytes\)"),
        "not an image": (text, r"is not an image dnrt can read"),
        "truncated data": (
            cut_data,
            r"is a truncated TIFF: its image data needs \d+ bytes but the file has \d+",
        ),
        "truncated header": (cut_header, r"is a damaged or truncated TIFF"),
        "float": (
            float_tif,
            r"has float32 samples; dnrt translates 8-bit images \(16-bit are converted\); convert",
        ),
        "int16": (int16_tif, r"has int16 samples"),
        "zero size": (zero, r"has zero size"),
        "truncated png": (png, r"could not be decoded .*truncated or corrupt"),
        "cmyk": (cmyk, r"has CMYK colour; .* convert it first"),
    }


BAD = [
    "missing",
    "directory",
    "empty",
    "not an image",
    "truncated data",
    "truncated header",
    "float",
    "int16",
    "zero size",
    "truncated png",
    "cmyk",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_inputs_one_line_errors(tmp_path: Path, case: str) -> None:
    path, pattern = bad_inputs(tmp_path)[case]
    with pytest.raises(DnrtError, match=pattern) as info:
        open_image(path)
    message = str(info.value)
    assert "\n" not in message and os.fspath(path) in message


def test_corrupt_tile_reported_at_read_time(tmp_path: Path) -> None:
    image = noisy(64, 64)
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, image, tile=(32, 32), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    with open_image(path) as src:
        np.testing.assert_array_equal(src.read_region(0, 32, 0, 32), image[:32, :32])  # tile 0 is fine
        with pytest.raises(DnrtError, match=r"could not decode tile at row 32, column 32 .*corrupt"):
            src.read_region(32, 64, 32, 64)
