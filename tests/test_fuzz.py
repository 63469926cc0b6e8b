"""Property-based fuzzing (hypothesis) of the two parsers that read untrusted bytes first: the
TIFF header reader (``open_image``) and manifest.json (``parse_manifest`` + ``Manifest.from_dict``).

The property: whatever the bytes, the parser returns a usable object or raises ``DnrtError``
(one line for the user); no other exception type, no hang, no huge allocation (examples are
small files that *declare* anything). Each example only parses and validates, so CI runs
``DNRT_FUZZ_EXAMPLES`` (default 2000) examples per target in seconds; set it higher for a
longer run, e.g. ``DNRT_FUZZ_EXAMPLES=200000 pytest tests/test_fuzz.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("tifffile")

from corpus.tiffbytes import (  # noqa: E402
    COMPRESSION,
    LONG,
    ORIENTATION,
    PHOTOMETRIC,
    SHORT,
    Tiff,
    deflate_tile,
)
from fakes import toy_manifest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dnrt.bundle import Manifest  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.manifest_schema import ManifestSyntaxError, parse_manifest  # noqa: E402

EXAMPLES = int(os.environ.get("DNRT_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the checkout
    derandomize=EXAMPLES <= 2000,  # CI: the same examples every run; longer runs explore
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# --------------------------------------------------------------------------- manifest.json

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, 2, 3, 4, 16, 512, -1, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["relu", "none", "gelu", "instance", "eval", "512", ""]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MANIFEST = json.loads(toy_manifest().to_json())
TOP_FIELDS = sorted(MANIFEST) + ["unknown"]
LAYER_FIELDS = sorted(MANIFEST["layers"][0]) + ["unknown"]


@st.composite
def manifests(draw: st.DrawFn) -> bytes:
    data = json.loads(json.dumps(MANIFEST))
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()) and isinstance(data.get("layers"), list) and data["layers"]:
            index = draw(st.integers(0, len(data["layers"]) - 1))
            layer = data["layers"][index]
            key = draw(st.sampled_from(LAYER_FIELDS))
            if not isinstance(layer, dict) or draw(st.integers(0, 19)) == 0:
                data["layers"][index] = draw(json_values)  # the whole layer replaced
            elif draw(st.integers(0, 9)) == 0:
                layer.pop(key, None)
            else:
                layer[key] = draw(json_values)
        else:
            key = draw(st.sampled_from(TOP_FIELDS))
            if draw(st.integers(0, 9)) == 0:
                data.pop(key, None)
            else:
                data[key] = draw(json_values)
    raw = json.dumps(data).encode()
    mutation = draw(st.integers(0, 5))
    if mutation == 0:  # cut anywhere
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == 1:  # overwrite a few bytes
        raw = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        raw = bytes(raw)
    elif mutation == 2:  # wrap in deep nesting
        depth = draw(st.integers(1, 3000))
        raw = b"[" * depth + raw + b"]" * depth
    return raw


@FUZZ
@given(manifests())
def test_manifest_parser_refuses_with_dnrt_errors_only(raw: bytes) -> None:
    from dnrt.runtime.plan import TilePlan

    try:
        data = parse_manifest(raw)
    except ManifestSyntaxError:
        return
    if not isinstance(data, dict):
        return  # load_bundle refuses a non-object itself
    try:
        manifest = Manifest.from_dict(data)
    except DnrtError as exc:
        assert str(exc).startswith(("bundle manifest is malformed", "bundle format version"))
        return
    # A manifest that passed must be usable by the runtime's sizing code as it stands.
    assert manifest.total_channels >= 0
    TilePlan.create(manifest.tile * 3, manifest.tile * 2, manifest.tile, manifest.margin, manifest.strides)


# --------------------------------------------------------------------------- TIFF headers


@st.composite
def tiffs(draw: st.DrawFn) -> bytes:
    tiled = draw(st.booleans())
    width = draw(st.one_of(st.integers(1, 80), st.sampled_from([0, 2**16, 2**31, 2**32 - 1])))
    height = draw(st.one_of(st.integers(1, 80), st.sampled_from([0, 2**16, 2**31, 2**32 - 1])))
    tile_side = draw(st.one_of(st.sampled_from([16, 32]), st.integers(0, 2**20)))
    tile = (tile_side, draw(st.sampled_from([16, tile_side]))) if tiled else None
    samples = draw(st.sampled_from([1, 3, 4, 2, 0, 70000 % 65536]))
    extra: dict[int, tuple[int, list[int]]] = {}
    for _ in range(draw(st.integers(0, 3))):
        tag = draw(
            st.sampled_from([ORIENTATION, PHOTOMETRIC, COMPRESSION, 277, 284, 317, 338, 339, 320, 530])
        )
        extra[tag] = (
            draw(st.sampled_from([SHORT, LONG])),
            draw(st.lists(st.integers(0, 65535), min_size=1, max_size=3)),
        )
    spec = Tiff(
        width=width,
        height=height,
        samples=samples,
        bits=draw(st.sampled_from([8, 8, 16, 1, 4, 32, 7])),
        tile=tile,
        rows_per_strip=draw(st.sampled_from([16, 1, 0, 2**31])),
        compression=draw(st.sampled_from([1, 8, 5, 7, 50000, 34887, 2])),
        photometric=draw(st.sampled_from([2, 1, 0, 3, 6, 5, 99])),
        segments=[draw(st.sampled_from([None, deflate_tile(16, 16), b"\0" * 10, b"garbage"]))],
        extra=extra,
        bigtiff=draw(st.booleans()),
    )
    if spec.segment_count() > 4096:  # keep each example small: the header may declare anything,
        spec.segments = [None]  # but the offset arrays are written out in full
        while spec.segment_count() > 4096:
            if spec.tile is not None:
                spec.tile = (spec.tile[0] * 16 or 16, spec.tile[1] * 16 or 16)
            else:
                spec.rows_per_strip = spec.rows_per_strip * 16 or 16
    raw = bytearray(spec.to_bytes())
    for _ in range(draw(st.integers(0, 3))):  # flip bytes anywhere, header and IFD included
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    if draw(st.integers(0, 4)) == 0:
        raw = raw[: draw(st.integers(4, len(raw)))]
    return bytes(raw)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "case.tif"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # tifffile's own overflow notes on absurd tags
@FUZZ
@given(data=tiffs())
def test_tiff_reader_refuses_with_dnrt_errors_only(fuzz_file: Path, data: bytes) -> None:
    from dnrt.runtime.io import open_image

    fuzz_file.write_bytes(data)
    try:
        source = open_image(fuzz_file, workers=1)
    except DnrtError:
        return
    with source:
        assert source.height > 0 and source.width > 0 and source.channels in (1, 3)
        plane = source._planes[0][0]
        if plane.segment_bytes() <= 1 << 20:  # decode a corner only when it is cheap
            try:
                corner = source.read_region(0, min(16, source.height), 0, min(16, source.width))
            except DnrtError:
                return
            assert corner.shape[2] == source.channels
