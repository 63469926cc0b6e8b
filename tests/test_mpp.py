"""The model's resolution: level choice from the slide's microns per pixel, area resampling,
the bundle's training resolution as the default, and the outputs' recorded resolution."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

from slides import tissue, write_generic_pyramid, write_ome, write_svs  # noqa: E402

from dnrt.bundle import Manifest  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.runtime.io.reader import ArraySource, mpp_from_resolution  # noqa: E402
from dnrt.runtime.io.resample import ResampledSource, box_reduce  # noqa: E402
from dnrt.runtime.io.resolution import ResolutionRequest, open_at_resolution  # noqa: E402


def area_reference(image: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """The area filter written out as dense float64 matrices (one row per output pixel)."""

    def matrix(n: int, f: float) -> np.ndarray:
        out = math.ceil(n / f - 1e-6)
        m = np.zeros((out, n))
        for j in range(out):
            a, b = j * f, min((j + 1) * f, n)
            for i in range(math.floor(a), math.ceil(b)):
                m[j, i] = max(0.0, min(b, i + 1) - max(a, i))
        return m / m.sum(axis=1, keepdims=True)

    my, mx = matrix(image.shape[0], fy), matrix(image.shape[1], fx)
    return np.einsum("yh,hwc,xw->yxc", my, image.astype(np.float64), mx, optimize=True)


def assert_rounded_area_mean(pixels: np.ndarray, image: np.ndarray, fx: float, fy: float) -> None:
    """``pixels`` is the area mean rounded to the nearest grey level (ties may go either way
    by float rounding in the reference: exact ties are checked by the integer box test)."""
    mean = area_reference(image, fx, fy)
    assert pixels.shape == mean.shape
    assert np.abs(pixels - mean).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("f", [2.0, 3.0, 4.0, 1.9786, 2.5, 1.37, 0.75])
def test_area_resample_matches_the_dense_reference(f: float) -> None:
    image = tissue(203, 317, seed=5)
    source = ResampledSource(ArraySource(image), f, f)
    assert source.box == (f in (2.0, 3.0, 4.0))
    whole = source.read_region(0, source.height, 0, source.width)
    assert_rounded_area_mean(whole, image, f, f)
    # A pixel has the same value whichever region it is read in (overlapping bands agree).
    for y0, y1, x0, x1 in [(0, 17, 5, 60), (13, source.height, 0, source.width), (31, 44, 70, source.width)]:
        y1, x1 = min(y1, source.height), min(x1, source.width)
        np.testing.assert_array_equal(source.read_region(y0, y1, x0, x1), whole[y0:y1, x0:x1])


def test_box_reduce_is_the_exact_integer_average() -> None:
    image = tissue(9, 10, seed=6)
    out = box_reduce(image, 2, 2)
    assert out.shape == (5, 5, 3)
    block = image[2:4, 4:6].astype(int).sum(axis=(0, 1))
    np.testing.assert_array_equal(out[1, 2], np.floor(block / 4 + 0.5))
    np.testing.assert_array_equal(
        out[4, 4], np.floor(image[8, 8:10].astype(int).sum(0) / 2 + 0.5)
    )  # partial box


def test_resampled_source_reports_the_pixels_resolution() -> None:
    base = ArraySource(tissue(40, 40), resolution=(40000.0, 40000.0), resolution_unit="CENTIMETER")
    base.objective_power = 40.0
    out = ResampledSource(base, 2.0, 2.0)
    assert out.mpp == pytest.approx((0.5, 0.5)) and out.objective_power == pytest.approx(20.0)
    assert mpp_from_resolution((25400 / 0.5, 25400 / 0.5), "INCH") == pytest.approx((0.5, 0.5))
    assert mpp_from_resolution((72.0, 72.0), "NONE") is None


@pytest.fixture
def svs(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path / "slide.svs"
    return path, write_svs(path, tissue(512, 768, seed=7), levels=3, mpp=0.25, power=40)


@pytest.mark.parametrize(
    "mpp,level,resample,size",
    [
        (0.25, 0, "none", (768, 512)),
        (0.5, 1, "none", (384, 256)),
        (0.6, 1, "area 1.2x1.2", (320, 214)),
        (1.0, 2, "none", (192, 128)),
        (2.0, 2, "box 2x2", (96, 64)),
        (0.2502, 0, "none", (768, 512)),  # within 0.1 %: read as it is
    ],
)
def test_mpp_picks_the_coarsest_level_still_fine_enough(svs, mpp, level, resample, size) -> None:
    path, stack = svs
    source, choice = open_at_resolution(path, ResolutionRequest(mpp=mpp))
    with source:
        assert (choice.level, choice.resample, (source.width, source.height)) == (level, resample, size)
        assert choice.source_mpp == [0.25, 0.25] and choice.level_mpp == [0.25 * 2**level] * 2
        expected_mpp = mpp if resample != "none" else 0.25 * 2**level
        assert choice.processed_mpp == pytest.approx([expected_mpp] * 2) and source.mpp == pytest.approx(
            (expected_mpp,) * 2
        )
        pixels = source.read_region(0, source.height, 0, source.width)
    f = mpp / (0.25 * 2**level)
    if resample == "none":
        np.testing.assert_array_equal(pixels, stack[level])
    else:
        assert_rounded_area_mean(pixels, stack[level], f, f)


def test_openslide_reader_gives_the_same_resampled_pixels(svs) -> None:
    pytest.importorskip("openslide")
    path, _ = svs
    a, _ = open_at_resolution(path, ResolutionRequest(mpp=0.6), reader="tifffile")
    b, choice = open_at_resolution(path, ResolutionRequest(mpp=0.6), reader="openslide")
    with a, b:
        assert choice.reader == "openslide" and choice.level == 1
        np.testing.assert_array_equal(
            a.read_region(0, a.height, 0, a.width), b.read_region(0, b.height, 0, b.width)
        )


def test_level_and_mpp_together_resample_that_level(svs) -> None:
    path, stack = svs
    source, choice = open_at_resolution(path, ResolutionRequest(level=0, mpp=1.0))
    with source:
        assert (choice.level, choice.resample) == (0, "box 4x4")
        np.testing.assert_array_equal(
            source.read_region(0, source.height, 0, source.width), box_reduce(stack[0], 4, 4)
        )
    source, choice = open_at_resolution(path, ResolutionRequest(level=2), default_mpp=0.5)
    with source:  # --level alone reads the level as it is, whatever the bundle's default
        assert (choice.level, choice.resample, choice.target_mpp) == (2, "none", None)


def test_finer_than_the_best_level_is_refused_unless_allowed(svs) -> None:
    path, stack = svs
    with pytest.raises(
        DnrtError, match=r"--mpp 0.125 is finer than the finest level .* \(0.25 um/px\).*--allow-upsample"
    ) as info:
        open_at_resolution(path, ResolutionRequest(mpp=0.125))
    assert info.value.exit_code == 2
    with pytest.raises(DnrtError, match="finer than level 2"):
        open_at_resolution(path, ResolutionRequest(level=2, mpp=0.5))
    source, choice = open_at_resolution(path, ResolutionRequest(mpp=0.125, allow_upsample=True))
    with source:
        assert (choice.level, source.width, source.height) == (0, 1536, 1024)
        assert np.array_equal(
            source.read_region(0, 2, 0, 2), np.repeat(np.repeat(stack[0][:1, :1], 2, 0), 2, 1)
        )


def test_bundle_default_that_cannot_be_met_is_a_note(svs) -> None:
    path, _ = svs
    source, choice = open_at_resolution(path, ResolutionRequest(), default_mpp=0.1)
    with source:
        assert (
            choice.level == 0
            and choice.target_mpp is None
            and "finer than the finest level" in choice.notes[0]
        )
    source, choice = open_at_resolution(path, ResolutionRequest(), default_mpp=lambda: 0.5)
    with source:
        assert (choice.level, choice.target_from, choice.processed_mpp) == (1, "bundle", [0.5, 0.5])


def test_no_resolution_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    stack = write_generic_pyramid(path, tissue(256, 256, seed=8), levels=2, dpcm=None)
    with pytest.raises(
        DnrtError, match=r"records no resolution \(TIFF XResolution/YResolution .* missing\).*--assume-mpp"
    ) as info:
        open_at_resolution(path, ResolutionRequest(mpp=0.5))
    assert info.value.exit_code == 2
    source, choice = open_at_resolution(path, ResolutionRequest(mpp=1.0, assume_mpp=0.5))
    with source:
        assert (choice.level, choice.resample, choice.source_mpp, choice.processed_mpp) == (
            1,
            "none",
            [0.5, 0.5],
            [1.0, 1.0],
        )
        np.testing.assert_array_equal(source.read_region(0, source.height, 0, source.width), stack[1])
        assert source.mpp == pytest.approx((1.0, 1.0))
    source, choice = open_at_resolution(path, ResolutionRequest(), default_mpp=0.5)
    with source:
        assert choice.level == 0 and "records no resolution" in choice.notes[0]


def test_ome_physical_size_drives_the_choice(tmp_path: Path) -> None:
    path = tmp_path / "slide.ome.tif"
    write_ome(path, tissue(256, 256, seed=9), levels=3, mpp=0.5)
    source, choice = open_at_resolution(path, ResolutionRequest(mpp=2.0))
    with source:
        assert (choice.level, choice.resample, choice.source_mpp) == (2, "none", [0.5, 0.5])


@pytest.mark.parametrize("bad", ["0.5", -1, 0, float("nan"), float("inf"), True, 1e9])
def test_manifest_mpp_is_validated(bad) -> None:
    from fakes import write_toy_bundle  # noqa: F401 - only to be sure the helpers import

    data = json.loads(Manifest("custom", {}, 3, 3, []).to_json())
    data["mpp"] = bad
    with pytest.raises(DnrtError, match="mpp must be null or microns per pixel"):
        Manifest.from_dict(data)
    data["mpp"] = 0.5
    assert Manifest.from_dict(data).mpp == 0.5
    del data["mpp"]  # bundles from before the field
    assert Manifest.from_dict(data).mpp is None


def test_request_values_are_validated() -> None:
    for kwargs in ({"mpp": -1.0}, {"assume_mpp": 0.0}, {"mpp": float("nan")}, {"level": -1}):
        with pytest.raises(DnrtError) as info:
            ResolutionRequest(**kwargs)
        assert info.value.exit_code == 2
