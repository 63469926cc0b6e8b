"""Background skipping (docs/semantics.md section 11): the tissue mask, and ``--background skip``
against ``--background translate``.

"Identical" here means bit for bit: with true-context margins a tissue tile reads the same
pixels in both runs, and a skipped tile's statistics entry is the one a flat glass tile of the
background colour gives, so wherever the glass really is flat every tissue tile's output is the
same bytes in every mode, rule and schedule. Where the glass is not flat, only tissue tiles
whose neighbourhood (DN: 3 x 3, KIN: k x k) holds a skipped tile may differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import TILE, FakeBackend, fake_bundle

from dnrt.errors import DnrtError
from dnrt.runtime.api import Translator
from dnrt.runtime.tissue import (
    TissueThumbnail,
    close,
    detect_tissue,
    label_components,
    looks_like_a_slide,
    mask_block,
    microns_per_pixel,
    otsu_threshold,
    remove_small_objects,
    resolve_background,
)

GLASS = (241, 242, 244)
H, W = 128, 160


def slide(glass_noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat glass with one elliptic piece of stained "tissue" (saturated, noisy): ``(image, truth)``."""
    rng = np.random.default_rng(seed)
    image = np.clip(np.array(GLASS, np.float64) + rng.normal(0, glass_noise, (H, W, 3)), 0, 255)
    yy, xx = np.mgrid[0:H, 0:W]
    blob = (yy - 60) ** 2 / 40**2 + (xx - 70) ** 2 / 45**2 < 1
    tissue = np.clip(np.array([200, 120, 170]) + rng.normal(0, 30, (H, W, 3)), 0, 255)
    image[blob] = tissue[blob]
    return np.rint(image).astype(np.uint8), blob


def run(image: np.ndarray, backend: FakeBackend | None = None, **options) -> tuple[np.ndarray, Translator]:
    backend = backend or FakeBackend(fake_bundle())
    with Translator(backend=backend, **options) as translator:
        return translator.translate(image), translator


def tile_pixels(tiles: np.ndarray) -> np.ndarray:
    """A tile-level boolean grid ``[R, Q]`` as a pixel mask ``[H, W]``."""
    return np.kron(tiles, np.ones((TILE, TILE), bool))[:H, :W]


# --------------------------------------------------------------------------- the mask


def test_mask_covers_every_tissue_tile_and_skips_far_glass() -> None:
    image, truth = slide()
    _, translator = run(image, mode="in", background="skip")
    mask = translator.last_tissue
    assert mask is not None
    rows, cols = mask.tiles.shape
    # A tile whose own pixels or margin hold tissue runs the network.
    for r in range(rows):
        for q in range(cols):
            y0, x0 = max(r * TILE - 4, 0), max(q * TILE - 4, 0)
            window = truth[y0 : r * TILE + TILE + 4, x0 : q * TILE + TILE + 4]
            if window.any():
                assert mask.tiles[r, q], (r, q)
    assert mask.background_tiles >= 30  # the glass around the ellipse is skipped
    assert abs(mask.tissue_fraction - truth.mean()) < 0.03
    assert mask.background_colour.tolist() == list(GLASS)


def test_all_glass_and_all_tissue() -> None:
    glass = np.empty((64, 64, 3), np.uint8)
    glass[:] = GLASS
    _, translator = run(glass, mode="in", background="skip")
    assert translator.last_tissue.tiles.sum() == 0 and translator.last_report.tiles_skipped == 16
    # Stained everywhere, pale and dark alike: Otsu alone would split it; the clamp keeps it whole.
    rng = np.random.default_rng(1)
    pale = np.array([235, 200, 220]) + rng.normal(0, 3, (64, 64, 3))
    dark = np.array([120, 40, 110]) + rng.normal(0, 3, (64, 64, 3))
    tissue = np.where((np.arange(64) < 32)[None, :, None], pale, dark).clip(0, 255).astype(np.uint8)
    _, translator = run(tissue, mode="in", background="skip")
    assert translator.last_tissue.tiles.all() and translator.last_report.tiles_skipped == 0


def test_thumbnail_is_the_block_mean_with_partial_blocks() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)
    thumb = TissueThumbnail(37, 50, 3, 8)
    for y0 in range(0, 37, 16):
        thumb.add(y0, image[y0 : y0 + 16])
    got = thumb.result()
    for i in range(5):
        for j in range(7):
            block = image[i * 8 : i * 8 + 8, j * 8 : j * 8 + 8].reshape(-1, 3)
            np.testing.assert_allclose(got[i, j], block.mean(axis=0), rtol=1e-6)
            assert thumb.counts()[i, j] == len(block)
    with pytest.raises(ValueError, match="out of order"):
        thumb.add(3, image[:8])


def test_mask_block_divides_the_tile_and_bounds_the_mask() -> None:
    assert mask_block(512, 4096, 4096) == 32
    assert mask_block(100, 1000, 1000) == 10  # the largest divisor of the tile up to 16 per side
    assert mask_block(512, 200_000, 1000) == 128  # 391 tiles: 4 mask pixels each keeps <= 2048
    assert mask_block(16, 16 * 5000, 16) == 16  # more tiles than the bound: one pixel per tile


def test_otsu_splits_two_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.02, 0.005, 5000), rng.normal(0.3, 0.05, 3000)])
    assert 0.05 < otsu_threshold(values) < 0.2


def test_closing_bridges_a_gap_and_small_objects_go() -> None:
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:5] = True
    mask[2:10, 6:9] = True  # one-pixel gap at column 5
    mask[0, 11] = True  # a speck
    closed = close(mask)
    assert closed[2:10, 5].all() and (closed | ~mask).all()  # the closing only adds
    cleaned = remove_small_objects(closed, 3)
    assert not cleaned[0, 11] and cleaned[2:10, 2:9].all()


def test_components_match_a_flood_fill() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((40, 50)) < 0.45
    labels = label_components(mask)
    seen = np.zeros_like(mask)
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        stack, members = [(y, x)], []
        seen[y, x] = True
        while stack:
            a, b = stack.pop()
            members.append((a, b))
            for da in (-1, 0, 1):
                for db in (-1, 0, 1):
                    c, d = a + da, b + db
                    if 0 <= c < 40 and 0 <= d < 50 and mask[c, d] and not seen[c, d]:
                        seen[c, d] = True
                        stack.append((c, d))
        ids = {labels[a, b] for a, b in members}
        assert len(ids) == 1 and (labels == ids.pop()).sum() == len(members)
    assert (labels[~mask] == -1).all()


def test_gray_images_are_refused() -> None:
    with pytest.raises(DnrtError, match="needs an RGB image"):
        detect_tissue(np.zeros((4, 4, 1), np.float32), np.ones((4, 4)), 2, 8, 0, (1, 1))


# --------------------------------------------------------------------------- skip vs translate


@pytest.mark.parametrize(
    "mode,degenerate",
    [
        ("in", "slide"),
        ("tin", "slide"),
        ("kin", "slide"),
        ("dn", "slide"),
        ("dn", "reference"),
        ("dn", "isolate"),
    ],
)
@pytest.mark.parametrize("schedule", ["streaming", "two-pass"])
def test_skip_equals_translate_on_every_tissue_tile(mode: str, degenerate: str, schedule: str) -> None:
    image, _ = slide()
    opts = {"mode": mode, "degenerate": degenerate, "schedule": schedule}
    full, _ = run(image, background="translate", **opts)
    skipped, translator = run(image, background="skip", **opts)
    mask = translator.last_tissue
    tissue = tile_pixels(mask.tiles)
    assert 0 < translator.last_report.tiles_skipped < mask.tiles.size
    np.testing.assert_array_equal(skipped[tissue], full[tissue])
    fill = np.array(translator.last_report.background_fill, np.uint8)
    assert (skipped[~tissue] == fill).all()


@pytest.mark.parametrize("mode", ["in", "tin", "kin", "dn"])
def test_skipped_tiles_run_no_network(mode: str) -> None:
    image, _ = slide()
    backend = FakeBackend(fake_bundle())
    _, translator = run(image, backend=backend, mode=mode, background="skip")
    report = translator.last_report
    tissue_tiles = report.tiles - report.tiles_skipped
    passes = 2 if mode in ("kin", "dn") else 1
    assert report.tile_runs == passes * tissue_tiles
    ran = sum(n for _, n in backend.calls)
    # Besides the tissue tiles: the glass tile (one full batch per graph it needs), and TIN's or
    # the slide rule's thumbnail.
    glass = {"in": 1, "tin": 1, "kin": 2, "dn": 2}[mode] * report.batch
    thumbnail = 1 if mode in ("tin", "dn") else 0
    assert ran == passes * tissue_tiles + glass + thumbnail


@pytest.mark.parametrize("mode", ["kin", "dn"])
@pytest.mark.parametrize("batch,sensitive,overlap", [(1, False, False), (3, True, False), (2, False, True)])
def test_skip_streams_bit_identically_to_two_pass(
    mode: str, batch: int, sensitive: bool, overlap: bool
) -> None:
    image, _ = slide(glass_noise=2.0)
    outs = [
        run(
            image,
            FakeBackend(fake_bundle(), batch_sensitive=sensitive),
            mode=mode,
            background="skip",
            schedule=schedule,
            batch=batch,
            overlap=overlap and schedule == "streaming",
        )[0]
        for schedule in ("streaming", "two-pass")
    ]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("mode,degenerate", [("dn", "reference"), ("dn", "slide"), ("kin", "slide")])
def test_noisy_glass_next_to_tissue_gets_its_real_statistics(mode: str, degenerate: str) -> None:
    image, _ = slide(glass_noise=3.0)
    opts = {"mode": mode, "degenerate": degenerate}
    full, _ = run(image, background="translate", **opts)
    skipped, translator = run(image, background="skip", **opts)
    tissue = tile_pixels(translator.last_tissue.tiles)
    np.testing.assert_array_equal(skipped[tissue], full[tissue])
    # Only the noisy glass tiles some tissue tile reads ran the collect graph, nothing else.
    report = translator.last_report
    tiles = translator.last_tissue.tiles
    reach = 1 if mode == "dn" else 2
    rows, cols = tiles.shape
    read = sum(
        1
        for r in range(rows)
        for q in range(cols)
        if not tiles[r, q]
        and tiles[max(r - reach, 0) : r + reach + 1, max(q - reach, 0) : q + reach + 1].any()
    )
    assert read > 0 and report.tile_runs == 2 * (report.tiles - report.tiles_skipped) + read


def test_translate_is_unchanged_by_detecting_tissue(tmp_path: Path) -> None:
    image, _ = slide()
    plain, _ = run(image, mode="dn", background="translate")
    backend = FakeBackend(fake_bundle())
    with Translator(backend=backend, mode="dn", background="translate") as translator:
        from dnrt.runtime.api import ArraySink, ArraySource

        sink = ArraySink(H, W, 3)
        report = translator._run(ArraySource(image), sink, tissue_mask=tmp_path / "m.png")
    np.testing.assert_array_equal(sink.pixels, plain)
    assert report.tiles_skipped == 0 and report.tissue_fraction is not None
    assert (tmp_path / "m.png").is_file()


# --------------------------------------------------------------------------- policy


class _Source:
    def __init__(self, h: int, w: int, channels: int = 3, **meta) -> None:
        self.height, self.width, self.channels = h, w, channels
        for k, v in meta.items():
            setattr(self, k, v)


def test_auto_skips_on_slides_only() -> None:
    cm = {"resolution": (20000.0, 20000.0), "resolution_unit": "CENTIMETER"}  # 0.5 um/px
    assert microns_per_pixel(_Source(1, 1, **cm)) == pytest.approx(0.5)
    assert microns_per_pixel(_Source(1, 1, resolution=(300, 300), resolution_unit="INCH")) == pytest.approx(
        84.67, 0.01
    )
    assert microns_per_pixel(_Source(1, 1, mpp=(0.25, 0.25))) == 0.25
    assert looks_like_a_slide(_Source(4096, 4096, **cm), 512)
    assert not looks_like_a_slide(_Source(2048, 2048, **cm), 512)  # not more than 4 tiles long
    assert not looks_like_a_slide(_Source(4096, 4096, resolution=(300, 300), resolution_unit="INCH"), 512)
    assert not looks_like_a_slide(_Source(4096, 4096), 512)  # no metadata: a photo for all we know
    assert not looks_like_a_slide(_Source(4096, 4096, 1, **cm), 512)  # gray
    assert looks_like_a_slide(_Source(4096, 4096, objective_power=20.0), 512)
    assert resolve_background("auto", _Source(4096, 4096, **cm), 512) == "skip"
    assert resolve_background("TRANSLATE", _Source(4096, 4096, **cm), 512) == "translate"
    with pytest.raises(DnrtError, match="unknown background handling 'glass'"):
        resolve_background("glass", _Source(1, 1), 512)


def test_in_memory_arrays_are_translated_whole_by_default() -> None:
    image, _ = slide()
    _, translator = run(image, mode="in")
    assert translator.last_report.background == "translate" and translator.last_tissue is None


# --------------------------------------------------------------------------- the command line


def _write_tiff(path: Path, image: np.ndarray, mpp: float | None) -> None:
    import tifffile

    kw = {}
    if mpp is not None:
        kw = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(path, image, photometric="rgb", **kw)


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    from fakes import write_toy_bundle

    return write_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle")


def _cli(*args: str):
    from click.testing import CliRunner

    from dnrt.runtime.cli import translate_command

    return CliRunner().invoke(translate_command, list(args))


def test_cli_reports_skipping_and_writes_the_mask(tmp_path: Path, toy_bundle: Path) -> None:
    from PIL import Image

    image, _ = slide()
    src = tmp_path / "slide.tif"
    _write_tiff(src, image, mpp=0.5)  # 10 tiles wide at 0.5 um/px: auto skips
    out, mask = tmp_path / "out.tif", tmp_path / "out-mask.png"
    result = _cli(str(src), "-o", str(out), "-m", str(toy_bundle), "--json", "--tissue-mask", str(mask))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["background"] == "skip" and report["tiles_skipped"] > 0
    assert 0.2 < report["tissue_fraction"] < 0.35 and report["tissue_mask"] == str(mask)
    png = np.asarray(Image.open(mask))
    assert png.shape == (H, W)  # 16 mask pixels per 16 px tile
    assert set(np.unique(png).tolist()) == {0, 128, 255}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    # Human summary line; an existing mask is refused before any work, the output untouched.
    again = _cli(str(src), "-o", str(tmp_path / "b.tif"), "-m", str(toy_bundle), "--tissue-mask", str(mask))
    assert again.exit_code == 1 and again.stderr.startswith("error: output") and "exists" in again.stderr
    assert not (tmp_path / "b.tif").exists()
    summary = _cli(
        str(src), "-o", str(tmp_path / "c.tif"), "-m", str(toy_bundle), "-q", "--background", "skip"
    )
    assert summary.exit_code == 0 and summary.stderr == ""
    loud = _cli(str(src), "-o", str(tmp_path / "d.tif"), "-m", str(toy_bundle), "--background", "skip")
    assert "tiles skipped" in loud.stderr and f"{report['tiles_skipped']} of {report['tiles']}" in loud.stderr


def test_cli_bad_background_input(tmp_path: Path, toy_bundle: Path) -> None:
    image, _ = slide()
    src = tmp_path / "photo.tif"
    _write_tiff(src, image, mpp=None)
    out = tmp_path / "out.tif"
    plain = _cli(str(src), "-o", str(out), "-m", str(toy_bundle), "--json")
    assert plain.exit_code == 0 and json.loads(plain.stdout)["background"] == "translate"
    bad = _cli(str(src), "-o", str(tmp_path / "x.tif"), "-m", str(toy_bundle), "--background", "glass")
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error:")
    suffix = _cli(str(src), "-o", str(tmp_path / "y.tif"), "-m", str(toy_bundle), "--tissue-mask", "m.jpg")
    assert suffix.exit_code == 1 and "must be a .png" in suffix.stderr and not (tmp_path / "y.tif").exists()
