"""Pin the normalization math of docs/semantics.md in dnrt.semantics (the reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dnrt import semantics as S
from dnrt.errors import DnrtError

RNG = np.random.default_rng(1234)


def brute_force_pixel(nbr: np.ndarray, h: int, w: int, i: int, j: int) -> float:
    """docs/semantics.md 4.4 written out literally for one pixel of one channel."""
    py, px = i + 0.5, j + 0.5
    if py < h / 2:
        a, wy = 0, (h / 2 - py) / h
    else:
        a, wy = 2, (py - h / 2) / h
    if px < w / 2:
        b, wx = 0, (w / 2 - px) / w
    else:
        b, wx = 2, (px - w / 2) / w
    return (
        (1 - wy) * (1 - wx) * nbr[1, 1]
        + wy * (1 - wx) * nbr[a, 1]
        + (1 - wy) * wx * nbr[1, b]
        + wy * wx * nbr[a, b]
    )


def upsample_middle(nbr: np.ndarray, h: int, w: int) -> np.ndarray:
    """The equivalent form: bilinear upsampling of the 3x3 grid to 3h x 3w with
    half-pixel centres (align_corners=False, edge-clamped), keeping the middle h x w."""

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    ylo, yhi, fy = coords(3 * h, 3)
    xlo, xhi, fx = coords(3 * w, 3)
    top = nbr[ylo][:, xlo] * (1 - fx) + nbr[ylo][:, xhi] * fx
    bottom = nbr[yhi][:, xlo] * (1 - fx) + nbr[yhi][:, xhi] * fx
    full = top * (1 - fy)[:, None] + bottom * fy[:, None]
    return full[h : 2 * h, w : 2 * w]


@pytest.mark.parametrize("n", [2, 4, 6, 16, 34, 136])
def test_axis_weights_sum_to_one_and_follow_geometry(n: int) -> None:
    wts = S.axis_weights(n)
    assert wts.shape == (n, 3)
    np.testing.assert_allclose(wts.sum(axis=1), 1.0, atol=1e-15)
    assert (wts >= 0).all()
    # Each pixel blends its own tile with exactly one neighbour (or none).
    assert ((wts[:, 0] > 0) & (wts[:, 2] > 0)).sum() == 0
    # Upper half leans on the previous tile, lower half on the next; the
    # neighbour's weight is the distance to the centre over n (not over the stride).
    np.testing.assert_allclose(wts[0, 0], (n / 2 - 0.5) / n)
    np.testing.assert_allclose(wts[-1, 2], (n / 2 - 0.5) / n)
    assert wts[: n // 2, 2].max() == 0 and wts[n // 2 :, 0].max() == 0


@pytest.mark.parametrize("n", [0, 1, 3, 17, 135, -2])
def test_odd_or_empty_map_sizes_are_rejected(n: int) -> None:
    with pytest.raises(DnrtError, match="even"):
        S.axis_weights(n)


@pytest.mark.parametrize("h,w", [(2, 2), (4, 6), (8, 8), (10, 16)])
def test_interpolation_equals_brute_force_and_upsampling_forms(h: int, w: int) -> None:
    nbr = RNG.normal(size=(3, 3))
    fast = S.interpolate(nbr, h, w)
    brute = np.array([[brute_force_pixel(nbr, h, w, i, j) for j in range(w)] for i in range(h)])
    np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast, upsample_middle(nbr, h, w), rtol=0, atol=1e-12)


def test_nine_equal_entries_reduce_to_constant_statistics() -> None:
    c, h, w = 4, 6, 8
    x = RNG.normal(size=(c, h, w))
    mean = RNG.normal(size=c)
    std = RNG.uniform(0.5, 2.0, size=c)
    y = S.dense_normalize(x, S.constant_neighbourhood(mean), S.constant_neighbourhood(std))
    expected = (x - mean[:, None, None]) / (std[:, None, None] + S.DN_EPS)
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    # and with the std fed as sigma - eps, the op divides by exactly sigma (TIN/KIN path)
    y2 = S.dense_normalize(
        x, S.constant_neighbourhood(mean), S.constant_neighbourhood(S.std_for_dense_op(std))
    )
    np.testing.assert_allclose(y2, (x - mean[:, None, None]) / std[:, None, None], rtol=1e-12)


def test_reciprocal_not_std_is_interpolated() -> None:
    h = w = 8
    nbr_std = np.ones((1, 3, 3))
    nbr_std[0, 1, 2] = 4.0  # one neighbour with a much larger std
    x = np.ones((1, h, w))
    y = S.dense_normalize(x, np.zeros((1, 3, 3)), nbr_std, eps=0.0)[0]
    # With x = 1 and mean 0, y is the interpolated reciprocal itself.
    np.testing.assert_allclose(y, S.interpolate(1.0 / nbr_std[0], h, w), rtol=1e-12)
    wrong = 1.0 / S.interpolate(nbr_std[0], h, w)
    assert np.abs(y - wrong).max() > 0.05
    # The blend is linear in the reciprocal: right-most pixel of the middle rows.
    wx = S.axis_weights(w)[-1, 2]
    wy = S.axis_weights(h)[h // 2, 2]
    expected = (1 - wy) * ((1 - wx) * 1.0 + wx * 0.25) + wy * 1.0
    np.testing.assert_allclose(y[h // 2, -1], expected, rtol=1e-12)


def test_dense_normalize_affine_and_relu() -> None:
    c, h, w = 3, 4, 4
    x = RNG.normal(size=(c, h, w))
    mean = RNG.normal(size=(c, 3, 3))
    std = RNG.uniform(0.5, 1.5, size=(c, 3, 3))
    gamma, beta = RNG.normal(size=c), RNG.normal(size=c)
    plain = S.dense_normalize(x, mean, std)
    affine = S.dense_normalize(x, mean, std, gamma, beta)
    np.testing.assert_allclose(affine, plain * gamma[:, None, None] + beta[:, None, None], rtol=1e-12)
    relu = S.dense_normalize(x, mean, std, gamma, beta, activation="relu")
    np.testing.assert_allclose(relu, np.maximum(affine, 0))
    with pytest.raises(DnrtError, match="activation"):
        S.dense_normalize(x, mean, std, activation="gelu")


def test_batched_inputs_broadcast_per_sample() -> None:
    x = RNG.normal(size=(2, 3, 4, 6))
    mean = RNG.normal(size=(2, 3, 3, 3))
    std = RNG.uniform(0.5, 1.5, size=(2, 3, 3, 3))
    batched = S.dense_normalize(x, mean, std)
    for n in range(2):
        np.testing.assert_allclose(batched[n], S.dense_normalize(x[n], mean[n], std[n]), rtol=1e-13)


@pytest.mark.parametrize(
    "mode,ddof,eps,floor",
    [
        ("in", 0, 1e-5, 0.0),
        ("tin", 1, 1e-5, 0.0),
        ("kin", 1, 0.0, math.sqrt(1e-5)),
        ("dn", 1, 0.0, math.sqrt(1e-5)),
    ],
)
def test_collect_flavours(mode: str, ddof: int, eps: float, floor: float) -> None:
    flavour = S.collect_flavour(mode)
    assert (flavour.ddof, flavour.eps, flavour.floor) == (ddof, eps, pytest.approx(floor))
    x = RNG.normal(size=(2, 3, 6, 4)) * 3 + 1
    mean, std = S.moments(x, flavour)
    np.testing.assert_allclose(mean, x.mean(axis=(2, 3)))
    np.testing.assert_allclose(std, np.maximum(np.sqrt(x.var(axis=(2, 3), ddof=ddof) + eps), floor))
    np.testing.assert_allclose(flavour.as_array(), [ddof, eps, floor], rtol=1e-6)


def test_degenerate_tiles_are_floored_not_nan() -> None:
    flat = np.full((2, 4, 4), 0.7)
    for mode in ("kin", "dn"):
        y, mean, std = S.normalize_own(flat, S.collect_flavour(mode))
        assert np.isfinite(y).all() and (std == pytest.approx(math.sqrt(1e-5)))
        np.testing.assert_allclose(y, 0.0)
    # The floor is configurable and validated.
    assert S.collect_flavour("dn", std_floor=0.1).floor == 0.1
    with pytest.raises(DnrtError, match="floor"):
        S.collect_flavour("dn", std_floor=-1)


def test_in_flavour_matches_instance_norm_formula() -> None:
    x = RNG.normal(size=(3, 8, 8))
    y, _, _ = S.normalize_own(x, S.collect_flavour("in"))
    expected = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-12)


def test_neighbourhood_gathering_replicates_border_and_replaces_non_finite() -> None:
    table = np.arange(3 * 4 * 2, dtype=np.float64).reshape(3, 4, 2)
    corner = S.gather_neighbourhood(table, 0, 0)
    assert corner.shape == (2, 3, 3)
    # Missing neighbours copy the nearest existing tile.
    np.testing.assert_array_equal(corner[:, 0, 0], table[0, 0])
    np.testing.assert_array_equal(corner[:, 0, 2], table[0, 1])
    np.testing.assert_array_equal(corner[:, 2, 2], table[1, 1])
    inner = S.gather_neighbourhood(table, 1, 2)
    np.testing.assert_array_equal(inner[:, 0, 0], table[0, 1])
    np.testing.assert_array_equal(inner[:, 2, 2], table[2, 3])
    # Non-finite entries are replaced per channel by the centre value.
    table[0, 1, 0] = np.nan
    table[2, 3, 1] = np.inf
    nbr = S.gather_neighbourhood(table, 1, 2)
    assert nbr[0, 0, 0] == table[1, 2, 0] and nbr[1, 0, 0] == table[0, 1, 1]
    assert nbr[1, 2, 2] == table[1, 2, 1] and nbr[0, 2, 2] == table[2, 3, 0]


@pytest.mark.parametrize("k", [1, 3, 5, 7])
@pytest.mark.parametrize("kind", ["constant", "gaussian"])
def test_kin_kernels_sum_to_one(k: int, kind: str) -> None:
    kernel = S.kin_kernel(k, kind)
    assert kernel.shape == (k, k)
    np.testing.assert_allclose(kernel.sum(), 1.0)
    np.testing.assert_allclose(kernel, kernel.T)
    if kind == "constant":
        np.testing.assert_allclose(kernel, 1 / k**2)
    elif k > 1:
        assert kernel[k // 2, k // 2] == kernel.max()


def test_kin_kernel_rejects_even_sizes_and_unknown_types() -> None:
    with pytest.raises(DnrtError, match="odd"):
        S.kin_kernel(4)
    with pytest.raises(DnrtError, match="kernel type"):
        S.kin_kernel(3, "box")


def test_kin_smoothing_with_replication_padding() -> None:
    table = RNG.normal(size=(4, 5, 3))
    kernel = S.kin_kernel(3)
    smooth = S.kin_smooth(table, kernel)

    # brute force for one corner and one inner entry
    def entry(r: int, q: int) -> np.ndarray:
        acc = np.zeros(3)
        for i in range(-1, 2):
            for j in range(-1, 2):
                acc += table[min(max(r + i, 0), 3), min(max(q + j, 0), 4)] / 9
        return acc

    np.testing.assert_allclose(smooth[0, 0], entry(0, 0))
    np.testing.assert_allclose(smooth[2, 3], entry(2, 3))
    # a constant table stays constant; k=1 is the identity
    np.testing.assert_allclose(S.kin_smooth(np.ones((3, 3, 2)), S.kin_kernel(5)), 1.0)
    np.testing.assert_allclose(S.kin_smooth(table, S.kin_kernel(1)), table)


def test_area_resize_averages_boxes() -> None:
    img = RNG.uniform(size=(12, 8, 3))
    small = S.area_resize(img, 3, 2)
    np.testing.assert_allclose(small[1, 0], img[4:8, 0:4].mean(axis=(0, 1)))
    # Non-integer ratios weigh partial pixels; totals are preserved.
    odd = S.area_resize(img, 5, 3)
    np.testing.assert_allclose(odd.mean(axis=(0, 1)), img.mean(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(S.area_weights(7, 3).sum(axis=1), 1.0)


def test_pixel_conversions_round_trip() -> None:
    pixels = np.arange(256, dtype=np.uint8)
    x = S.to_network(pixels)
    assert x.dtype == np.float32 and x[0] == -1.0 and x[-1] == 1.0
    np.testing.assert_array_equal(S.from_network(x), pixels)
    np.testing.assert_array_equal(S.from_network(np.array([-3.0, 3.0, np.float32(0.0)])), [0, 255, 128])


def test_grid_and_reflect_index() -> None:
    assert S.grid_shape(1000, 1024, 512) == (2, 2)
    assert S.grid_shape(1, 513, 512) == (1, 2)
    np.testing.assert_array_equal(S.reflect_index(np.arange(-3, 8), 4), [3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1])
    np.testing.assert_array_equal(S.reflect_index(np.arange(5), 1), 0)
    # agrees with numpy's reflect pad, also for pads longer than the image
    row = np.arange(3)
    np.testing.assert_array_equal(np.pad(row, (0, 9), mode="reflect"), row[S.reflect_index(np.arange(12), 3)])


def test_map_size_check() -> None:
    assert S.check_map_sizes(512, 16, [1, 1, 2, 4, 4, 2, 1]) == [544, 544, 272, 136, 136, 272, 544]
    with pytest.raises(DnrtError, match="even"):
        S.check_map_sizes(512, 13, [1, 2, 4])
    with pytest.raises(DnrtError, match="margin"):
        S.check_map_sizes(64, 64, [1])


# --------------------------------------------------------------------------- degenerate statistics


def _nbr(values: list[list[float]]) -> np.ndarray:
    return np.asarray(values, np.float64)[None]  # [C=1, 3, 3]


GLASS_NEXT_TO_TISSUE = _nbr([[0.4, 0.4, 0.4], [0.5, 0.4, 0.001], [0.4, 0.6, 0.4]])


def test_reference_rule_only_floors() -> None:
    mean = np.zeros((1, 3, 3))
    _, std = S.condition_neighbourhood(mean, GLASS_NEXT_TO_TISSUE, "reference", floor=0.01)
    expected = GLASS_NEXT_TO_TISSUE.copy()
    expected[0, 1, 2] = 0.01
    np.testing.assert_array_equal(std, expected)


def test_relative_floor_raises_small_stds_to_a_share_of_the_largest() -> None:
    _, std = S.condition_neighbourhood(
        np.zeros((1, 3, 3)), GLASS_NEXT_TO_TISSUE, "relative-floor", 0.01, 0.25
    )
    expected = np.maximum(GLASS_NEXT_TO_TISSUE, 0.25 * 0.6)
    np.testing.assert_array_equal(std, expected)


def test_zero_rule_gives_degenerate_entries_a_zero_reciprocal() -> None:
    _, std = S.condition_neighbourhood(np.zeros((1, 3, 3)), GLASS_NEXT_TO_TISSUE, "zero", 0.01, 0.25)
    assert np.isinf(std[0, 1, 2]) and np.isfinite(np.delete(std.ravel(), 5)).all()
    # The op then gives that entry no weight in the reciprocal: 1 / (inf + eps) == 0.
    rinv = S.interpolate(1.0 / (std + S.DN_EPS), 4, 4)
    assert np.isfinite(rinv).all() and rinv.max() < 1 / 0.4 + 1e-6


def test_isolate_rule_replaces_entries_far_from_the_centre_by_the_centre() -> None:
    mean = _nbr([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    m, s = S.condition_neighbourhood(mean, GLASS_NEXT_TO_TISSUE, "isolate", 0.01, 0.25)
    # Only the glass neighbour (0.01 after the floor vs the centre's 0.4) is apart.
    assert s[0, 1, 2] == 0.4 and m[0, 1, 2] == 5
    np.testing.assert_array_equal(np.delete(s.ravel(), 5), np.delete(GLASS_NEXT_TO_TISSUE.ravel(), 5))
    # Seen from a glass tile, every tissue neighbour is apart (it keeps its own statistics there)
    # while a glass neighbour is not.
    glass = _nbr([[0.4, 0.4, 0.4], [0.5, 0.001, 0.4], [0.001, 0.6, 0.4]])
    m, s = S.condition_neighbourhood(mean, glass, "isolate", 0.01, 0.25)
    np.testing.assert_array_equal(s, np.full((1, 3, 3), 0.01))
    expected = np.full((1, 3, 3), 5.0)
    expected[0, 2, 0] = 7
    np.testing.assert_array_equal(m, expected)


def test_slide_rule_replaces_flat_entries_by_the_slide_statistics() -> None:
    mean = _nbr([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    slide = (np.array([0.5]), np.array([0.8]))
    m, s = S.condition_neighbourhood(mean, GLASS_NEXT_TO_TISSUE, "slide", 0.01, 0.25, slide)
    # 0.001 (floored to 0.01) < 0.25 * 0.8: that entry alone takes the slide's moments.
    assert s[0, 1, 2] == 0.8 and m[0, 1, 2] == 0.5
    np.testing.assert_array_equal(np.delete(s.ravel(), 5), np.delete(GLASS_NEXT_TO_TISSUE.ravel(), 5))
    np.testing.assert_array_equal(np.delete(m.ravel(), 5), np.delete(mean.ravel(), 5))
    # The decision depends on the entry only: a tile sees its neighbour as the neighbour sees itself.
    other = _nbr([[0.4, 0.4, 0.4], [0.4, 0.001, 0.4], [0.4, 0.4, 0.4]])
    m2, s2 = S.condition_neighbourhood(mean, other, "slide", 0.01, 0.25, slide)
    assert (s2[0, 1, 1], m2[0, 1, 1]) == (s[0, 1, 2], m[0, 1, 2])
    with pytest.raises(DnrtError, match="slide-level statistics"):
        S.condition_neighbourhood(mean, GLASS_NEXT_TO_TISSUE, "slide", 0.01, 0.25)


def test_rules_leave_ordinary_neighbourhoods_alone() -> None:
    """Texture everywhere (stds within a factor 2): every rule equals the reference."""
    std = RNG.uniform(0.3, 0.6, (6, 3, 3))
    mean = RNG.normal(size=(6, 3, 3))
    slide = (np.zeros(6), np.full(6, 0.5))
    for rule in S.DegenerateRule:
        m, s = S.condition_neighbourhood(mean, std, rule, S.STD_FLOOR_DEFAULT, 0.25, slide)
        np.testing.assert_array_equal(m, mean)
        np.testing.assert_array_equal(s, std)


def test_rules_keep_the_dtype() -> None:
    std = GLASS_NEXT_TO_TISSUE.astype(np.float32)
    slide = (np.zeros(1, np.float32), np.ones(1, np.float32))
    for rule in S.DegenerateRule:
        m, s = S.condition_neighbourhood(np.zeros_like(std), std, rule, slide=slide)
        assert m.dtype == np.float32 and s.dtype == np.float32


def test_check_degenerate_rejects_unknown_rules_and_ratios() -> None:
    assert S.check_degenerate("zero", 0.5) is S.DegenerateRule.ZERO
    with pytest.raises(DnrtError, match="unknown degenerate-statistics rule 'median'"):
        S.check_degenerate("median", 0.5)
    for bad in (0, -0.1, 1.5, float("nan"), "x"):
        with pytest.raises(DnrtError, match="degenerate ratio"):
            S.check_degenerate("zero", bad)  # type: ignore[arg-type]
