"""The fast pixel conversions equal the reference conversions of dnrt.semantics bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from dnrt.runtime.pixels import gather_network_input, network_output_to_uint8, paste_planar, unit_runs
from dnrt.semantics import from_network, reflect_index, to_network


@pytest.mark.parametrize(
    "index",
    [
        [0, 1, 2, 3],
        [3, 2, 1, 0],
        [2, 1, 0, 1, 2, 3, 4, 3, 2],  # a mirrored margin on both sides
        [5],
        [0, 0, 1, 1],  # repeated pixels (a 1-pixel image reflected)
        [4, 7, 9, 8, 7, 1],
        reflect_index(np.arange(-16, 528), 512).tolist(),
        reflect_index(np.arange(-5, 30), 3).tolist(),  # repeated reflection of a tiny image
    ],
)
def test_unit_runs_reproduce_the_index(index: list[int]) -> None:
    source = np.arange(100, 1100)
    runs = unit_runs(np.array(index))
    gathered = np.empty(len(index), dtype=source.dtype)
    for dst, src in runs:
        assert src.step in (1, -1)
        gathered[dst] = source[src]
    np.testing.assert_array_equal(gathered, source[index])


def test_unit_runs_are_maximal() -> None:
    assert len(unit_runs(reflect_index(np.arange(-16, 528), 512))) == 3
    assert len(unit_runs(np.arange(10, 0, -1))) == 1


def test_gather_network_input_equals_to_network() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    pixels[0, 0] = (0, 255, 128)
    rows = reflect_index(np.arange(-4, 20), 20)
    cols = reflect_index(np.arange(10 - 4, 26 + 4), 30)
    out = np.full((3, len(rows), len(cols)), np.nan, dtype=np.float32)
    gather_network_input(pixels, unit_runs(rows), unit_runs(cols), out)
    expected = to_network(pixels[rows][:, cols]).transpose(2, 0, 1)
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


def test_output_conversion_equals_from_network_bit_for_bit() -> None:
    # Every float32 in a dense sweep over [-1.01, 1.01] (round-half-even cases included) and the
    # tanh range's end points.
    y = np.linspace(-1.01, 1.01, 1_000_003, dtype=np.float32)
    y = np.concatenate([y, np.float32([-1, 1, 0, -3, 3]), np.nextafter(np.float32([-1, 1]), 0)])
    expected = from_network(y)
    scratch = np.empty_like(y)
    got = network_output_to_uint8(y, scratch)
    assert got is scratch
    np.testing.assert_array_equal(got.astype(np.uint8), expected)


def test_paste_planar_interleaves_channels() -> None:
    rng = np.random.default_rng(1)
    planar = rng.integers(0, 256, (3, 5, 7)).astype(np.float32)
    dst = np.zeros((6, 9, 3), dtype=np.uint8)
    paste_planar(dst[1:6, 2:9], planar)
    np.testing.assert_array_equal(dst[1:6, 2:9], planar.transpose(1, 2, 0).astype(np.uint8))
    assert not dst[0].any() and not dst[:, :2].any()
