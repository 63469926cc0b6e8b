"""The synthetic paired slide: determinism, tile-by-tile consistency, stain structure, TIFF I/O."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from dnrt.data import synthetic as syn
from dnrt.data.synthetic import GLASS_RGB, render_region, render_region_pair, sample_pairs
from dnrt.errors import DnrtError

# A slide big enough to have a tissue boundary, glass margins and several stain zones, but
# the tests only ever render small regions of it.
H, W = 1800, 2400
GLASS = np.array(GLASS_RGB, np.uint8)


def _glass_mask(img: np.ndarray) -> np.ndarray:
    return (img == GLASS).all(axis=-1)


def _tissue_mean(img: np.ndarray) -> np.ndarray:
    m = np.abs(img.astype(np.int16) - GLASS.astype(np.int16)).max(axis=-1) > 6
    assert m.mean() > 0.5, "expected a tissue tile"
    return img[m].mean(axis=0)


@pytest.mark.parametrize("stain", ["he", "ihc"])
def test_region_renders_identically_alone_or_in_pieces(stain: str) -> None:
    # 300 x 400 crossing the internal chunk grid and the cell grid at odd offsets
    y0, x0 = 613, 1031
    whole = render_region(7, H, W, y0, y0 + 300, x0, x0 + 400, stain)
    assert whole.shape == (300, 400, 3) and whole.dtype == np.uint8
    pieces = np.empty_like(whole)
    cy, cx = 137, 251
    pieces[:cy, :cx] = render_region(7, H, W, y0, y0 + cy, x0, x0 + cx, stain)
    pieces[:cy, cx:] = render_region(7, H, W, y0, y0 + cy, x0 + cx, x0 + 400, stain)
    pieces[cy:, :cx] = render_region(7, H, W, y0 + cy, y0 + 300, x0, x0 + cx, stain)
    pieces[cy:, cx:] = render_region(7, H, W, y0 + cy, y0 + 300, x0 + cx, x0 + 400, stain)
    assert np.array_equal(whole, pieces)
    # and as part of a larger region
    bigger = render_region(7, H, W, y0 - 50, y0 + 350, x0 - 90, x0 + 400, stain)
    assert np.array_equal(bigger[50:350, 90:], whole)
    # single pixels too
    assert np.array_equal(render_region(7, H, W, y0 + 5, y0 + 6, x0 + 9, x0 + 10, stain)[0, 0], whole[5, 9])


def test_random_regions_match_the_whole_slide() -> None:
    # whole small slide (tissue edge, glass, lumens, every chunk early-out) vs random regions
    h, w = 500, 620
    he, ihc = render_region_pair(9, h, w, 0, h, 0, w)
    rng = np.random.default_rng(0)
    for _ in range(12):
        y0, x0 = int(rng.integers(0, h - 1)), int(rng.integers(0, w - 1))
        y1, x1 = (
            int(rng.integers(y0 + 1, min(h, y0 + 260) + 1)),
            int(rng.integers(x0 + 1, min(w, x0 + 260) + 1)),
        )
        a, b = render_region_pair(9, h, w, y0, y1, x0, x1)
        assert np.array_equal(a, he[y0:y1, x0:x1]) and np.array_equal(b, ihc[y0:y1, x0:x1]), (y0, y1, x0, x1)


def test_pair_matches_single_stain_renders() -> None:
    he, ihc = render_region_pair(3, H, W, 800, 1000, 1000, 1300)
    assert np.array_equal(he, render_region(3, H, W, 800, 1000, 1000, 1300, "he"))
    assert np.array_equal(ihc, render_region(3, H, W, 800, 1000, 1000, 1300, "ihc"))


def test_deterministic_and_seed_dependent() -> None:
    a = render_region(0, H, W, 700, 956, 1000, 1256)
    assert np.array_equal(a, render_region(0, H, W, 700, 956, 1000, 1256))
    b = render_region(1, H, W, 700, 956, 1000, 1256)
    assert np.abs(a.astype(np.int16) - b).mean() > 10
    # the slide size is part of the slide's identity (layout scales with it)
    c = render_region(0, H + 512, W, 700, 956, 1000, 1256)
    assert not np.array_equal(a, c)


def test_he_and_ihc_differ_but_are_aligned() -> None:
    # a region straddling the tissue boundary: both glass and tissue
    he, ihc = render_region_pair(2, 1024, 1024, 0, 512, 0, 1024)
    gh, gi = _glass_mask(he), _glass_mask(ihc)
    assert 0.1 < gh.mean() < 0.9, "region should contain glass and tissue"
    # the empty-glass mask is (almost) the same: only soft tissue-edge pixels may disagree
    iou = (gh & gi).sum() / (gh | gi).sum()
    assert iou > 0.995
    # inside the tissue the stains look different: IHC is much paler, H&E strongly pink/purple
    tissue = ~gh & ~gi
    diff = np.abs(he.astype(np.int16) - ihc)[tissue].mean()
    assert diff > 25
    he_mean, ihc_mean = he[tissue].mean(axis=0), ihc[tissue].mean(axis=0)
    assert he_mean[1] < he_mean[0] - 20  # H&E: green absorbed by eosin and hematoxylin
    assert ihc_mean.mean() > he_mean.mean() + 20


def test_ihc_positive_cells_are_brown_and_sit_on_he_nuclei() -> None:
    he, ihc = render_region_pair(1, 4096, 4096, 1900, 2400, 2300, 2800)
    r, g, b = (ihc[..., c].astype(np.int16) for c in range(3))
    brown = (r - b > 40) & (r < 200)  # DAB: red well above blue, dark
    assert brown.mean() > 0.005, "expected some DAB-positive cells"
    # hematoxylin-dark pixels of H&E under the darkest DAB (positive nuclei)
    dab_nuc = brown & (r < 140)
    he_dark = he.astype(np.int16).sum(axis=-1) < 420
    assert he_dark[dab_nuc].mean() > 0.7


def test_slide_has_stain_variation_and_uniform_background() -> None:
    # corners of the slide are empty glass: perfectly uniform, identical in both stains
    for y, x in [(0, 0), (0, W - 256), (H - 256, 0)]:
        he, ihc = render_region_pair(5, H, W, y, y + 256, x, x + 256)
        assert np.ptp(he.reshape(-1, 3), axis=0).max() == 0
        assert np.array_equal(he, ihc)
    # tissue tiles far apart have measurably different mean colours
    means = []
    for y, x in [(500, 600), (500, 1600), (1100, 600), (1100, 1600)]:
        he = render_region(5, H, W, y, y + 256, x, x + 256, "he")
        means.append(_tissue_mean(he))
    spread = np.ptp(np.array(means), axis=0)
    assert spread.max() > 8, spread
    # the cause is slide-level stain variation, not only content: the density field varies
    sl = syn._Slide(5, H, W)
    ly, lx = np.arange(0, H, 64), np.arange(0, W, 64)
    lat = syn._lattice_fields(sl, ly, lx)
    for f in (syn._F_HGAIN, syn._F_CGAIN, syn._F_DGAIN):
        assert lat[f].max() / lat[f].min() > 1.25


@pytest.mark.parametrize(("tile", "workers", "compression"), [(256, 1, "zlib"), (128, 2, None)])
def test_write_slide_round_trip(tmp_path, tile: int, workers: int, compression: str | None) -> None:
    tifffile = pytest.importorskip("tifffile")
    h, w = 600, 700  # not multiples of the tile: padded edge tiles
    path = syn.write_slide(
        tmp_path / "he.tif", 4, h, w, "he", tile=tile, compression=compression, workers=workers
    )
    with tifffile.TiffFile(path) as tf:
        assert tf.is_bigtiff
        page = tf.pages[0]
        assert page.shape == (h, w, 3)
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (tile, tile)
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert page.resolutionunit == tifffile.RESUNIT.CENTIMETER
        assert page.resolution == pytest.approx((2e4, 2e4))  # 0.5 um / px
        data = page.asarray()
    assert np.array_equal(data, render_region(4, h, w, 0, h, 0, w, "he"))


def test_write_pair_round_trip(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    h, w = 520, 530
    he_path, ihc_path = syn.write_pair(tmp_path / "out", 6, h, w, tile=256, workers=2)
    he_ref, ihc_ref = render_region_pair(6, h, w, 0, h, 0, w)
    assert np.array_equal(tifffile.imread(he_path), he_ref)
    assert np.array_equal(tifffile.imread(ihc_path), ihc_ref)


def test_write_pair_failure_leaves_no_files(tmp_path) -> None:
    # the IHC target is a directory: the error surfaces (no hang) and no partial H&E remains
    (tmp_path / "synthetic_s0_300x300_ihc.tif").mkdir()
    with pytest.raises(OSError):
        syn.write_pair(tmp_path, 0, 300, 300, tile=128)
    assert not (tmp_path / "synthetic_s0_300x300_he.tif").exists()


def test_sample_pairs() -> None:
    he, ihc, locs = sample_pairs(11, 6, 96, 3000, 3000, return_locations=True)
    assert he.shape == ihc.shape == (6, 96, 96, 3) and he.dtype == np.uint8
    he2, ihc2 = sample_pairs(11, 6, 96, 3000, 3000)
    assert np.array_equal(he, he2) and np.array_equal(ihc, ihc2)
    assert not np.array_equal(he, sample_pairs(12, 6, 96, 3000, 3000)[0])
    for k, (y, x) in enumerate(locs):
        ref_he, ref_ihc = render_region_pair(11, 3000, 3000, y, y + 96, x, x + 96)
        assert np.array_equal(he[k], ref_he) and np.array_equal(ihc[k], ref_ihc)
    # spread over the slide, not clustered
    assert np.ptp(locs[:, 0]) > 600 or np.ptp(locs[:, 1]) > 600


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="outside"):
        render_region(0, 100, 100, 0, 101, 0, 10)
    with pytest.raises(ValueError, match="empty"):
        render_region(0, 100, 100, 10, 10, 0, 10)
    with pytest.raises(ValueError, match="stain"):
        render_region(0, 100, 100, 0, 10, 0, 10, "pas")
    with pytest.raises(ValueError, match="multiple of 16"):
        syn.write_slide("/nonexistent/x.tif", 0, 64, 64, tile=100)
    with pytest.raises(ValueError, match="does not fit"):
        sample_pairs(0, 1, 256, 128, 128)


def test_cli(tmp_path, capsys) -> None:
    assert syn.main(["--size", "200x300", "--seed", "3", "-o", str(tmp_path), "--tile", "128"]) == 0
    out = capsys.readouterr().out.split()
    assert [p.rsplit("_", 1)[-1] for p in out] == ["he.tif", "ihc.tif"]
    assert syn.main(["--size", "20x", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "bad size '20x'" in err
    assert syn.main(["--size", "0x10", "-o", str(tmp_path)]) == 2
    assert syn.main(["--size", "64", "--compression", "nope", "-o", str(tmp_path)]) == 2
    assert syn.parse_size("4096X2048") == (4096, 2048) and syn.parse_size("512") == (512, 512)


def test_import_is_light() -> None:
    code = "import sys, dnrt.data.synthetic; print(sorted(m for m in ('torch', 'tifffile', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_render_speed_report(capsys) -> None:
    """Printed, not asserted: rendering throughput on this machine (one core)."""
    render_region(0, 4096, 4096, 1024, 1280, 1024, 1280)  # warm caches
    t, c = time.perf_counter(), time.process_time()
    render_region(0, 4096, 4096, 1024, 2048, 1024, 2048, "he")
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    with capsys.disabled():
        print(
            f"\n[synthetic] H&E render 1024x1024 tissue: {1.048576 / wall:.1f} MP/s wall, {1.048576 / cpu:.1f} MP/s cpu"
        )


# --------------------------------------------------------------------------- scanner conditions


def test_scanner_noise_is_deterministic_and_tile_invariant() -> None:
    scanner = syn.Scanner(noise=3.0)
    y0, x0 = 613, 1031
    whole = render_region(7, H, W, y0, y0 + 200, x0, x0 + 300, scanner=scanner)
    assert np.array_equal(whole, render_region(7, H, W, y0, y0 + 200, x0, x0 + 300, scanner=scanner))
    piece = render_region(7, H, W, y0 + 50, y0 + 120, x0 + 77, x0 + 150, scanner=scanner)
    assert np.array_equal(piece, whole[50:120, 77:150])
    clean = render_region(7, H, W, y0, y0 + 200, x0, x0 + 300).astype(float)
    noise = whole.astype(float) - clean
    assert 2.5 < noise.std() < 3.5 and abs(noise.mean()) < 0.2
    other_seed = render_region(8, H, W, y0, y0 + 200, x0, x0 + 300, scanner=scanner).astype(float)
    assert not np.array_equal(other_seed - render_region(8, H, W, y0, y0 + 200, x0, x0 + 300), noise)


def test_white_balance_flattens_glass_to_255_and_keeps_tissue() -> None:
    he_clean, ihc_clean = render_region_pair(0, H, W, 0, 400, 0, 600)
    he, ihc = render_region_pair(0, H, W, 0, 400, 0, 600, scanner=syn.SCANNERS["scanner"])
    glass = _glass_mask(he_clean)
    assert glass.mean() > 0.2, "expected glass in this corner"
    # Glass saturates to a flat 255 even with sensor noise (headroom above 255).
    assert (he[glass] == 255).mean() > 0.99
    # The ground truth gets the white balance, not the noise: its glass is exactly 255.
    assert (ihc[_glass_mask(ihc_clean)] == 255).all()
    # Tissue is brightened by the gain, not flattened.
    tissue = ~glass
    assert he[tissue].std() > 10 and he[tissue].mean() > he_clean[tissue].mean()


def test_exposure_clips_bright_tissue() -> None:
    clean = render_region(0, H, W, 800, 1000, 1000, 1300)
    bright = render_region(0, H, W, 800, 1000, 1000, 1300, scanner=syn.Scanner(exposure=1.5))
    assert (bright == 255).mean() > (clean == 255).mean() + 0.05


def test_scanner_slide_has_jpeg_tiles_and_a_name(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    scanner = syn.SCANNERS["scanner"]
    he_path, ihc_path = syn.write_pair(tmp_path, 2, 300, 400, tile=128, scanner=scanner)
    assert he_path.endswith("synthetic_s2_300x400_scanner_he.tif")
    with tifffile.TiffFile(he_path) as tf:
        assert tf.pages[0].compression == tifffile.COMPRESSION.JPEG
        he = tf.pages[0].asarray()
    with tifffile.TiffFile(ihc_path) as tf:
        assert tf.pages[0].compression != tifffile.COMPRESSION.JPEG  # the truth stays lossless
        ihc = tf.pages[0].asarray()
    he_ref, ihc_ref = render_region_pair(2, 300, 400, 0, 300, 0, 400, scanner=scanner)
    assert np.array_equal(ihc, ihc_ref)
    # JPEG at quality 80: close to the rendering, not equal to it.
    diff = np.abs(he.astype(int) - he_ref)
    assert 0 < diff.mean() < 3


def test_parse_scanner() -> None:
    assert syn.parse_scanner("clean").clean and syn.parse_scanner(None).clean
    assert syn.parse_scanner("scanner") == syn.SCANNERS["scanner"]
    custom = syn.parse_scanner("noise=1.5+wb,jpeg=70")
    assert custom == syn.Scanner(noise=1.5, white_balance=True, jpeg=70)
    assert custom.name == "noise1.5-wb-jpeg70"
    for bad in ("noise=x", "sharpen", "jpeg=0", "exposure=9", ""):
        with pytest.raises(DnrtError):
            syn.parse_scanner(bad)
