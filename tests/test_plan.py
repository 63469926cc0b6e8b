"""Tile plan geometry and statistics tables against the plain reference of docs/semantics.md."""

from __future__ import annotations

import numpy as np
import pytest

from dnrt.errors import DnrtError
from dnrt.runtime.plan import RowBand, TilePlan
from dnrt.runtime.tables import (
    AreaThumbnail,
    DenseStats,
    GlobalStats,
    KernelStats,
    StatisticsReadBeforeWritten,
    StatsTables,
    gather_neighbourhoods,
)
from dnrt.semantics import (
    STD_FLOOR_DEFAULT,
    area_resize,
    condition_neighbourhood,
    constant_neighbourhood,
    gather_neighbourhood,
    kin_kernel,
    kin_smooth,
    reflect_index,
    std_for_dense_op,
    to_network,
)


def _reference_tile(image: np.ndarray, r: int, q: int, tile: int, margin: int) -> np.ndarray:
    """Section 1 literally: pad the image (repeated reflect) to R*T x Q*T, cut, reflect-pad the tile."""
    h, w = image.shape[:2]
    rows, cols = -(-h // tile), -(-w // tile)
    # np.pad's 'reflect' repeats the mirror when the pad exceeds the image (and keeps a 1-px side).
    padded = np.pad(image, ((0, rows * tile - h), (0, cols * tile - w), (0, 0)), mode="reflect")
    t = padded[r * tile : (r + 1) * tile, q * tile : (q + 1) * tile]
    return np.pad(t, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")


def _band(plan: TilePlan, image: np.ndarray, row: int) -> RowBand:
    y0, y1 = plan.band_extent(row)
    return RowBand(row, y0, y1, image[y0:y1])


@pytest.mark.parametrize(
    ("h", "w", "tile", "margin"),
    [(50, 70, 16, 4), (32, 48, 16, 4), (5, 3, 16, 4), (1, 20, 8, 2), (17, 1, 8, 3), (40, 9, 12, 6)],
)
def test_network_input_matches_reference_padding(h: int, w: int, tile: int, margin: int) -> None:
    rng = np.random.default_rng(h * 100 + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    plan = TilePlan(h, w, tile, margin, "tile")
    assert (plan.rows, plan.cols) == (-(-h // tile), -(-w // tile))
    for r in range(plan.rows):
        band = _band(plan, image, r)
        # The band a row reads is bounded (its own rows plus at most one tile of mirrored ones).
        assert band.y1 - band.y0 <= 2 * tile
        for cols in plan.chunks(3):
            batch = plan.network_input(band, cols)
            assert batch.dtype == np.float32
            assert batch.shape == (len(cols), 3, tile + 2 * margin, tile + 2 * margin)
            for i, q in enumerate(cols):
                expected = to_network(_reference_tile(image, r, int(q), tile, margin)).transpose(2, 0, 1)
                np.testing.assert_array_equal(batch[i], expected)


def test_output_extent_and_crop() -> None:
    plan = TilePlan(50, 70, 16, 4)
    assert [plan.output_extent(r) for r in range(plan.rows)] == [(0, 16), (16, 32), (32, 48), (48, 50)]
    image = np.arange(2 * 3 * 24 * 24, dtype=np.float32).reshape(2, 3, 24, 24)
    cropped = plan.crop_output(image)
    assert cropped.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(cropped[1, :, 0, 0], image[1, :, 4, 4])
    np.testing.assert_array_equal(cropped[0, :, 15, 15], image[0, :, 19, 19])


def test_chunks_are_fixed_per_row() -> None:
    plan = TilePlan(10, 100, 16, 4)  # 7 columns
    assert [c.tolist() for c in plan.chunks(3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [c.tolist() for c in plan.chunks(10)] == [list(range(7))]
    assert len(plan.chunks(0)) == 7  # nonsense batch sizes fall back to one tile


def test_plan_rejects_odd_maps() -> None:
    with pytest.raises(DnrtError, match="even"):
        TilePlan.create(100, 100, 16, 3, [1, 2, 4])  # 22 px -> 5.5 px at stride 4
    with pytest.raises(DnrtError, match="margin"):
        TilePlan.create(100, 100, 16, 16, [1])
    plan = TilePlan.create(100, 100, 16, 4, [1, 2])
    assert plan.input_size == 24 and plan.tiles == 49


# --------------------------------------------------------------------------- tables


def _random_table(rows: int, cols: int, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 2.0, (rows, cols, channels)).astype(np.float32)


@pytest.mark.parametrize(("rows", "cols"), [(4, 5), (1, 1), (1, 6), (3, 1)])
def test_gather_matches_reference_with_non_finite_entries(rows: int, cols: int) -> None:
    table = _random_table(rows, cols, 5)
    table[0, 0, 1] = np.nan
    table[-1, -1, 2] = np.inf
    for r in range(rows):
        got = gather_neighbourhoods(table, r, np.arange(cols))
        assert got.dtype == np.float32 and got.shape == (cols, 5, 3, 3)
        for q in range(cols):
            expected = gather_neighbourhood(table, r, q).astype(np.float32)
            np.testing.assert_array_equal(got[q], expected)


def test_dense_stats_floor_and_invariant() -> None:
    stats = DenseStats(3, 4, 2, std_floor=0.5, degenerate="reference")
    mean, std = _random_table(3, 4, 2, 1), _random_table(3, 4, 2, 2)
    std[1, 1] = 0.0  # a flat tile
    stats.record(0, np.arange(4), mean[0], std[0])
    with pytest.raises(StatisticsReadBeforeWritten):
        stats.neighbourhoods(0, np.array([0]))  # row 1 not collected yet
    stats.record(1, np.arange(2), mean[1, :2], std[1, :2])
    with pytest.raises(StatisticsReadBeforeWritten):
        stats.neighbourhoods(0, np.array([1]))  # neighbour (1, 2) missing
    nbr_mean, nbr_std = stats.neighbourhoods(0, np.array([0]))  # needs columns 0..1 only
    np.testing.assert_array_equal(nbr_mean[0], gather_neighbourhood(mean, 0, 0).astype(np.float32))
    stats.record(1, np.arange(2, 4), mean[1, 2:], std[1, 2:])
    stats.record(2, np.arange(4), mean[2], std[2])
    _, nbr_std = stats.neighbourhoods(1, np.arange(4))
    expected = np.maximum(gather_neighbourhood(std, 1, 1), 0.5).astype(np.float32)
    np.testing.assert_array_equal(nbr_std[1], expected)
    assert nbr_std.min() >= np.float32(0.5)


@pytest.mark.parametrize(
    ("k", "kind", "rows", "cols"), [(5, "constant", 6, 7), (3, "gaussian", 4, 2), (7, "gaussian", 2, 3)]
)
def test_kernel_stats_rows_equal_full_table_smoothing(k: int, kind: str, rows: int, cols: int) -> None:
    kernel = kin_kernel(k, kind)
    mean, std = _random_table(rows, cols, 3, 3), _random_table(rows, cols, 3, 4)
    std[0, 0] = 0.0
    floor = 0.3
    stats = KernelStats(rows, cols, 3, kernel, std_floor=floor)
    assert stats.lookahead == k // 2
    full_mean = kin_smooth(mean, kernel)
    full_std = np.maximum(kin_smooth(std, kernel), floor)
    for r in range(rows):
        stats.record(r, np.arange(cols), mean[r], std[r])
    for r in range(rows):
        nbr_mean, nbr_std = stats.neighbourhoods(r, np.arange(cols))
        for q in range(cols):
            # Bit-identical to the whole-table reference: same rows, same order of operations.
            np.testing.assert_array_equal(
                nbr_mean[q], constant_neighbourhood(full_mean[r, q]).astype(np.float32)
            )
            np.testing.assert_array_equal(
                nbr_std[q], constant_neighbourhood(std_for_dense_op(full_std[r, q])).astype(np.float32)
            )


def test_kernel_stats_needs_lookahead_rows() -> None:
    stats = KernelStats(5, 2, 1, kin_kernel(5), std_floor=0.1)
    for r in range(2):
        stats.record(r, np.arange(2), np.ones((2, 1)), np.ones((2, 1)))
    with pytest.raises(StatisticsReadBeforeWritten):
        stats.neighbourhoods(0, np.arange(2))  # row 2 is within the 5x5 kernel
    stats.record(2, np.arange(2), np.ones((2, 1)), np.ones((2, 1)))
    stats.neighbourhoods(0, np.arange(2))


def test_global_stats_constant_neighbourhood() -> None:
    mean = np.array([0.5, -1.0], np.float32)
    std = np.array([2.0, 0.25], np.float32)
    nbr_mean, nbr_std = GlobalStats(mean, std).neighbourhoods(3, np.arange(4))
    assert nbr_mean.shape == nbr_std.shape == (4, 2, 3, 3)
    assert nbr_mean.flags.c_contiguous and nbr_std.flags.c_contiguous
    np.testing.assert_array_equal(nbr_mean[2], constant_neighbourhood(mean).astype(np.float32))
    np.testing.assert_array_equal(
        nbr_std[0], constant_neighbourhood(std_for_dense_op(std)).astype(np.float32)
    )
    # The op's 1/(std' + eps) recovers 1/std to float32 precision.
    np.testing.assert_allclose(1 / (nbr_std[0, :, 1, 1] + np.float32(1e-7)), 1 / std, rtol=1e-6)


def test_tables_start_unwritten() -> None:
    t = StatsTables(2, 3, 4)
    assert not t.written.any() and np.isnan(t.mean).all()
    t.put(1, np.array([0, 2]), np.zeros((2, 4)), np.ones((2, 4)))
    assert t.written.tolist() == [[False, False, False], [True, False, True]]
    assert not t.row_complete(1)


def test_windowed_tables_hold_only_recent_rows() -> None:
    """A window of rows: memory independent of the row count, evicted rows refused like
    unwritten ones, and a row written after its successor took its slot is a bug."""
    full, windowed = StatsTables(40, 3, 4), StatsTables(40, 3, 4, window=3)
    assert windowed.nbytes() == StatsTables(3, 3, 4).nbytes() < full.nbytes()
    rng = np.random.default_rng(0)
    for r in range(5):
        mean, std = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
        windowed.put(r, np.arange(3), mean, std)
        full.put(r, np.arange(3), mean, std)
    windowed.require(np.array([2, 3, 4]))
    with pytest.raises(StatisticsReadBeforeWritten, match="dropped"):
        windowed.require(np.array([1, 2]))  # row 1's slot now holds row 4
    assert windowed.row_complete(4) and not windowed.row_complete(1)
    slots = windowed.slots(np.array([3, 4, 4]))  # the last row, replication-padded
    np.testing.assert_array_equal(
        gather_neighbourhoods(windowed.mean, 4, np.arange(3), slots),
        gather_neighbourhoods(full.mean[:5], 4, np.arange(3)),
    )
    windowed.put(5, np.array([0]), np.zeros((1, 4)), np.ones((1, 4)))  # a new row starts unwritten
    assert windowed.written[windowed.slots(5)].tolist() == [True, False, False]
    assert np.isnan(windowed.mean[windowed.slots(5), 1:]).all()
    with pytest.raises(StatisticsReadBeforeWritten, match="after row 5"):
        windowed.put(2, np.arange(3), np.zeros((3, 4)), np.ones((3, 4)))


# --------------------------------------------------------------------------- TIN thumbnail


@pytest.mark.parametrize(
    ("h", "w", "size", "band"),
    [(100, 70, 16, 16), (37, 53, 16, 7), (9, 5, 16, 4), (300, 20, 8, 128), (16, 16, 16, 16)],
)
def test_area_thumbnail_streams_like_area_resize(h: int, w: int, size: int, band: int) -> None:
    rng = np.random.default_rng(h + w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    thumb = AreaThumbnail(h, w, 3, size)
    thumb.SUB_BAND = 5  # exercise sub-bands that straddle thumbnail rows
    for y in range(0, h, band):
        thumb.add(y, image[y : y + band])
    np.testing.assert_allclose(thumb.result(), area_resize(image, size, size), rtol=0, atol=1e-9)


def test_area_thumbnail_checks_order_and_completeness() -> None:
    thumb = AreaThumbnail(10, 10, 1, 4)
    with pytest.raises(ValueError, match="order"):
        thumb.add(3, np.zeros((2, 10, 1), np.uint8))
    thumb.add(0, np.zeros((5, 10, 1), np.uint8))
    with pytest.raises(ValueError, match="incomplete"):
        thumb.result()


def test_image_margin_source_uses_the_neighbouring_pixels() -> None:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    plan = TilePlan(40, 56, 16, 4, margin_source="image")
    band_y0, band_y1 = plan.band_extent(1)
    band = RowBand(1, band_y0, band_y1, image[band_y0:band_y1])
    x = plan.network_input(band, np.array([1, 3]))
    # Interior tile (1, 1): exactly the image window [16-4, 32+4) x [16-4, 32+4).
    np.testing.assert_array_equal(x[0], to_network(image[12:36, 12:36]).transpose(2, 0, 1))
    # Last column (3): columns 44..60 reach past the image (56) and are mirrored at its edge.
    cols = reflect_index(np.arange(44, 68), 56)
    np.testing.assert_array_equal(x[1], to_network(image[12:36][:, cols]).transpose(2, 0, 1))
    # The reference geometry mirrors the tile itself instead.
    reference = TilePlan(40, 56, 16, 4, margin_source="tile")
    y0, y1 = reference.band_extent(1)
    ref = reference.network_input(RowBand(1, y0, y1, image[y0:y1]), np.array([1]))
    own = np.pad(image[16:32, 16:32], ((4, 4), (4, 4), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(ref[0], to_network(own).transpose(2, 0, 1))
    with pytest.raises(DnrtError, match="margin source"):
        TilePlan(40, 56, 16, 4, margin_source="zeros")
    # dnrt's default is the true context.
    assert TilePlan(40, 56, 16, 4).margin_source == "image"


@pytest.mark.parametrize("rule", ["reference", "relative-floor", "zero", "isolate"])
def test_dense_stats_apply_the_degenerate_rule_like_the_reference(rule: str) -> None:
    """float32 tables take the same decisions as the float64 reference on the same entries."""
    rows, cols = 3, 5
    mean, std = _random_table(rows, cols, 4, 5), _random_table(rows, cols, 4, 6)
    std[1, 2] = 1e-4  # a flat tile in the middle: every rule but the reference acts on it
    std[0, 4, 1] = 0.0
    stats = DenseStats(rows, cols, 4, degenerate=rule, degenerate_ratio=0.3)
    for r in range(rows):
        stats.record(r, np.arange(cols), mean[r], std[r])
    for r in range(rows):
        got_mean, got_std = stats.neighbourhoods(r, np.arange(cols))
        for q in range(cols):
            exp_mean, exp_std = condition_neighbourhood(
                gather_neighbourhood(mean, r, q).astype(np.float32),
                gather_neighbourhood(std, r, q).astype(np.float32),
                rule,
                STD_FLOOR_DEFAULT,
                0.3,
            )
            np.testing.assert_array_equal(got_mean[q], exp_mean)
            np.testing.assert_array_equal(got_std[q], exp_std)
    # The flat tile's neighbourhood: every rule but the reference changes it.
    reference = DenseStats(rows, cols, 4, degenerate="reference")
    for r in range(rows):
        reference.record(r, np.arange(cols), mean[r], std[r])
    same = np.array_equal(
        stats.neighbourhoods(1, np.array([2]))[1], reference.neighbourhoods(1, np.array([2]))[1]
    )
    assert same == (rule == "reference")
