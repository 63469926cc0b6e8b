"""Schedules against a brute-force translation written straight from docs/semantics.md.

Every test takes a ``backend_factory`` fixture so the same checks run on each
backend: the numpy toy (``fake``) and the same toy exported to ONNX and run by
ONNX Runtime (``ort``). Real bundles plug in the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fakes import MARGIN, TILE, FakeBackend, fake_bundle, write_toy_bundle

from dnrt.bundle import Bundle, load_bundle
from dnrt.errors import DnrtError
from dnrt.runtime.api import ArraySink, ArraySource, Translator
from dnrt.runtime.backends.base import Backend
from dnrt.runtime.plan import TilePlan
from dnrt.runtime.scheduler import ScheduleOptions, Scheduler
from dnrt.runtime.tables import DenseStats, StatisticsReadBeforeWritten
from dnrt.semantics import (
    DEGENERATE_DEFAULT,
    DEGENERATE_RATIO_DEFAULT,
    STD_FLOOR_DEFAULT,
    CollectFlavour,
    area_resize,
    collect_flavour,
    condition_neighbourhood,
    constant_neighbourhood,
    from_network,
    gather_neighbourhood,
    kin_kernel,
    kin_smooth,
    reflect_index,
    std_for_dense_op,
    to_network,
)

MODES = ("in", "tin", "kin", "dn")
SCHEDULES = ("streaming", "two-pass")

BackendFactory = Callable[..., Backend]


@pytest.fixture(scope="module")
def toy_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnx")
    return write_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle")


@pytest.fixture(params=["fake", "ort", "ort-official"])
def backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    """``factory(tile=..., margin=...) -> Backend`` for each backend under test.

    ``ort-official`` is the exporter's real bundle of a tiny official generator
    (``small_bundle_path`` from conftest.py; needs torch to export).
    """
    if request.param == "fake":
        return lambda tile=TILE, margin=MARGIN: FakeBackend(fake_bundle(tile=tile, margin=margin))
    pytest.importorskip("onnxruntime")
    if request.param == "ort-official":
        bundle_dir = request.getfixturevalue("small_bundle_path")
    else:
        bundle_dir = request.getfixturevalue("toy_bundle_dir")

    def make(tile: int = TILE, margin: int = MARGIN) -> Backend:
        from dnrt.runtime.backends.ort import OrtBackend

        bundle = load_bundle(bundle_dir)
        bundle.manifest.tile, bundle.manifest.margin = tile, margin
        return OrtBackend(bundle, threads=2)

    return make


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Smooth-ish content plus noise, so statistics vary across tiles like a real image's.
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 80 * np.sin(yy[..., None] / 9.0 + np.array([0, 1, 2])) * np.cos(xx[..., None] / 13.0)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the reference


def reference_translate(
    backend: Backend,
    image: np.ndarray,
    mode: str,
    tile: int = TILE,
    margin: int = MARGIN,
    std_floor: float = STD_FLOOR_DEFAULT,
    k: int = 5,
    kernel_type: str = "constant",
    margin_source: str = "image",
    degenerate: str = DEGENERATE_DEFAULT.value,
    degenerate_ratio: float = DEGENERATE_RATIO_DEFAULT,
) -> np.ndarray:
    """docs/semantics.md sections 1-4 and 8, one tile at a time, no cleverness."""
    backend.activate()  # idempotent: callers may pass an active backend
    h, w = image.shape[:2]
    rows, cols = -(-h // tile), -(-w // tile)
    padded = np.pad(image, ((0, rows * tile - h), (0, cols * tile - w), (0, 0)), mode="reflect")
    # True context: the image mirrored only at its own border, then windows of T + 2M.
    ry = reflect_index(np.arange(-margin, rows * tile + margin), h)
    rx = reflect_index(np.arange(-margin, cols * tile + margin), w)
    context = image[ry][:, rx]

    def net_input(r: int, q: int) -> np.ndarray:
        if margin_source == "image":
            s = tile + 2 * margin
            t = context[r * tile : r * tile + s, q * tile : q * tile + s]
        else:
            t = padded[r * tile : (r + 1) * tile, q * tile : (q + 1) * tile]
            t = np.pad(t, ((margin, margin), (margin, margin), (0, 0)), mode="reflect")
        return to_network(t).transpose(2, 0, 1)[None]

    out = np.zeros((rows * tile, cols * tile, 3), np.uint8)

    def put(r: int, q: int, y: np.ndarray) -> None:
        crop = y[0, :, margin : margin + tile, margin : margin + tile].transpose(1, 2, 0)
        out[r * tile : (r + 1) * tile, q * tile : (q + 1) * tile] = from_network(crop)

    def dense(r: int, q: int, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> None:
        put(
            r,
            q,
            backend.infer(
                net_input(r, q), nbr_mean[None].astype(np.float32), nbr_std[None].astype(np.float32)
            ),
        )

    def thumbnail_moments(flavour: CollectFlavour) -> tuple[np.ndarray, np.ndarray]:
        thumb = area_resize(image, tile, tile)
        x = (thumb / 127.5 - 1.0).astype(np.float32).transpose(2, 0, 1)[None]
        _, mean, std = backend.collect(x, flavour)
        return mean, std

    if mode == "in":
        for r in range(rows):
            for q in range(cols):
                put(r, q, backend.collect(net_input(r, q), collect_flavour("in"))[0])
    elif mode == "tin":
        mean, std = thumbnail_moments(collect_flavour("tin"))
        for r in range(rows):
            for q in range(cols):
                dense(r, q, constant_neighbourhood(mean[0]), constant_neighbourhood(std_for_dense_op(std[0])))
    else:
        flavour = collect_flavour(mode, std_floor)
        n = backend.manifest.total_channels
        means, stds = np.zeros((rows, cols, n), np.float32), np.zeros((rows, cols, n), np.float32)
        for r in range(rows):
            for q in range(cols):
                _, m, s = backend.collect(net_input(r, q), flavour)
                means[r, q], stds[r, q] = m[0], s[0]
        if mode == "kin":
            kernel = kin_kernel(k, kernel_type)
            sm_mean = kin_smooth(means, kernel)
            sm_std = np.maximum(kin_smooth(stds, kernel), std_floor)
            for r in range(rows):
                for q in range(cols):
                    nbr_std = constant_neighbourhood(std_for_dense_op(sm_std[r, q]))
                    dense(r, q, constant_neighbourhood(sm_mean[r, q]), nbr_std)
        else:
            slide = None
            if degenerate == "slide":
                slide_mean, slide_std = thumbnail_moments(flavour)
                slide = (slide_mean[0], slide_std[0])
            for r in range(rows):
                for q in range(cols):
                    nbr_mean, nbr_std = condition_neighbourhood(
                        gather_neighbourhood(means, r, q).astype(np.float32),
                        gather_neighbourhood(stds, r, q).astype(np.float32),
                        degenerate,
                        std_floor,
                        degenerate_ratio,
                        slide,
                    )
                    dense(r, q, nbr_mean, nbr_std)
    return out[:h, :w]


def _translate(backend: Backend, image: np.ndarray, **options) -> np.ndarray:
    with Translator(backend=backend, **options) as translator:
        return translator.translate(image)


# --------------------------------------------------------------------------- correctness


#: dnrt's defaults, and the published pipeline's geometry and arithmetic (section 1's
#: self-reflected margins, section 8's floor alone).
CONFIGS = {"default": {}, "published": {"margin_source": "tile", "degenerate": "reference"}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_reference(backend_factory: BackendFactory, mode: str, schedule: str, config: str) -> None:
    image = _image(50, 70)  # 4 x 5 tiles, the last row and column partial
    backend = backend_factory()
    got = _translate(backend, image, mode=mode, schedule=schedule, batch=1, **CONFIGS[config])
    expected = reference_translate(backend_factory(), image, mode, **CONFIGS[config])
    assert got.shape == image.shape
    if mode == "tin":
        # The streamed thumbnail differs from area_resize in the last float64 bits only.
        assert np.abs(got.astype(int) - expected).max() <= 1
        assert (got != expected).mean() < 0.01
    else:
        np.testing.assert_array_equal(got, expected)


def _flat_next_to_texture(h: int = 50, w: int = 90, seed: int = 4) -> np.ndarray:
    """Texture on the left, a perfectly flat 255 region spanning several tiles on the right."""
    image = _image(h, w, seed=seed)
    image[:, w // 2 :] = 255
    return image


@pytest.mark.parametrize("rule", ["reference", "relative-floor", "zero", "isolate", "slide"])
@pytest.mark.parametrize("margin_source", ["image", "tile"])
def test_degenerate_rules_match_reference_and_stream_bit_identically(
    backend_factory: BackendFactory, rule: str, margin_source: str
) -> None:
    image = _flat_next_to_texture()
    outs = {}
    for schedule in SCHEDULES:
        outs[schedule] = _translate(
            backend_factory(),
            image,
            mode="dn",
            schedule=schedule,
            batch=2,
            degenerate=rule,
            degenerate_ratio=0.3,
            margin_source=margin_source,
        )
    np.testing.assert_array_equal(outs["streaming"], outs["two-pass"])
    expected = reference_translate(
        backend_factory(), image, "dn", degenerate=rule, degenerate_ratio=0.3, margin_source=margin_source
    )
    if rule == "slide":
        # The streamed thumbnail differs from area_resize in the last float64 bits only.
        assert np.abs(outs["streaming"].astype(int) - expected).max() <= 1
    else:
        np.testing.assert_array_equal(outs["streaming"], expected)


@pytest.mark.parametrize("rule", ["reference", "slide"])
def test_degenerate_rules_match_reference_on_torch(small_bundle_path: Path, rule: str) -> None:
    """The PyTorch backend gets the rule from the same tables: its translation equals the
    brute-force one run on PyTorch (the rule lives on the table side, not in the op)."""
    pytest.importorskip("torch")
    from dnrt.runtime.backends import get_backend

    bundle = load_bundle(small_bundle_path)

    def factory() -> Backend:
        backend = get_backend("torch", bundle, context={"threads": 1})
        backend.activate()  # reference_translate calls it directly
        return backend

    image = _flat_next_to_texture(64, 96)
    # Batch 1 like the brute-force reference: batched oneDNN convolutions may round differently
    # (one uint8 level) on some CPUs, and this test is about the tables, not the convolution.
    got = _translate(factory(), image, mode="dn", batch=1, degenerate=rule)
    expected = reference_translate(
        factory(), image, "dn", tile=bundle.manifest.tile, margin=bundle.manifest.margin, degenerate=rule
    )
    assert np.abs(got.astype(int) - expected).max() <= (1 if rule == "slide" else 0)


def test_degenerate_rules_act_on_flat_regions() -> None:
    """Guards the test above: on this image every rule gives a different output."""
    image = _flat_next_to_texture()
    outs = {
        rule: _translate(FakeBackend(fake_bundle()), image, mode="dn", degenerate=rule, degenerate_ratio=0.3)
        for rule in ("reference", "relative-floor", "zero", "isolate", "slide")
    }
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(outs[a], outs[b]), (a, b)


@pytest.mark.parametrize(("h", "w"), [(5, 3), (16, 16), (17, 33), (1, 40), (33, 1)])
@pytest.mark.parametrize("mode", ["in", "kin", "dn"])
def test_odd_sizes_match_reference(h: int, w: int, mode: str) -> None:
    image = _image(h, w, seed=h * w)
    got = _translate(FakeBackend(fake_bundle()), image, mode=mode, batch=2)
    assert got.shape == image.shape
    np.testing.assert_array_equal(got, reference_translate(FakeBackend(fake_bundle()), image, mode))


def test_kin_gaussian_and_floor_options() -> None:
    image = _image(40, 40, seed=3)
    got = _translate(
        FakeBackend(fake_bundle()),
        image,
        mode="kin",
        kin_kernel=3,
        kin_kernel_type="gaussian",
        std_floor=0.05,
    )
    expected = reference_translate(
        FakeBackend(fake_bundle()), image, "kin", std_floor=0.05, k=3, kernel_type="gaussian"
    )
    np.testing.assert_array_equal(got, expected)


def test_modes_differ() -> None:
    """Guards the reference itself: the four modes must not collapse into one computation."""
    image = _image(50, 70)
    outs = {m: reference_translate(FakeBackend(fake_bundle()), image, m) for m in MODES}
    for a in MODES:
        for b in MODES:
            if a < b:
                assert not np.array_equal(outs[a], outs[b]), (a, b)


# --------------------------------------------------------------------------- bit-identity


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_streaming_equals_two_pass_bitwise(backend_factory: BackendFactory, mode: str, batch: int) -> None:
    image = _image(60, 90, seed=batch)
    outs = [_translate(backend_factory(), image, mode=mode, schedule=s, batch=batch) for s in SCHEDULES]
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("mode", ["kin", "dn"])
def test_bit_identity_survives_batch_dependent_backend(mode: str) -> None:
    """A backend whose numbers depend on the batch (ORT can) still gives identical schedules."""
    image = _image(60, 90, seed=7)

    def run(schedule: str, batch: int, overlap: bool = False) -> np.ndarray:
        backend = FakeBackend(fake_bundle(), batch_sensitive=True)
        return _translate(backend, image, mode=mode, schedule=schedule, batch=batch, overlap=overlap)

    streaming = run("streaming", 4)
    assert not np.array_equal(streaming, run("streaming", 1)), "the fake should be batch-sensitive"
    np.testing.assert_array_equal(streaming, run("two-pass", 4))
    np.testing.assert_array_equal(streaming, run("streaming", 4, overlap=True))


@pytest.mark.parametrize("mode", ["kin", "dn"])
def test_overlapped_streaming_equals_sequential(backend_factory: BackendFactory, mode: str) -> None:
    image = _image(70, 50, seed=11)
    a = _translate(backend_factory(), image, mode=mode, overlap=True, batch=2)
    b = _translate(backend_factory(), image, mode=mode, overlap=False, batch=2)
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(
    ("mode", "schedule", "overlap", "window"),
    [
        ("dn", "streaming", False, 3),
        ("dn", "streaming", True, 4),
        ("kin", "streaming", False, 5),
        ("kin", "streaming", True, 6),
        ("dn", "two-pass", False, 40),
        ("kin", "two-pass", False, 40),
    ],
)
def test_streaming_statistics_memory_follows_the_width_not_the_area(
    mode: str, schedule: str, overlap: bool, window: int
) -> None:
    """Streaming holds the rows of statistics around the inferred one; two-pass needs all."""
    backend = FakeBackend(fake_bundle())
    plan = TilePlan.create(16 * 40, 16 * 7, TILE, MARGIN, backend.manifest.strides)
    options = ScheduleOptions(mode=mode, schedule=schedule, overlap=overlap)
    stats = Scheduler(backend, plan, options).stats
    assert stats.tables.window == window and stats.tables.mean.shape[0] == window


class _Recorder:
    """A source and sink that log the order of reads and writes."""

    def __init__(self, image: np.ndarray) -> None:
        self.source = ArraySource(image)
        self.sink = ArraySink(*image.shape)
        self.events: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.height, self.width, self.channels = self.source.height, self.source.width, self.source.channels

    def read_region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        with self.lock:
            self.events.append(("read", y1))
        return self.source.read_region(y0, y1, x0, x1)

    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:
        with self.lock:
            self.events.append(("write", band.shape[0]))
        self.sink.write_band(band, copy=copy)


@pytest.mark.parametrize(("mode", "lookahead"), [("dn", 1), ("kin", 2)])
@pytest.mark.parametrize("overlap", [False, True])
def test_streaming_holds_only_the_lookahead_window(mode: str, lookahead: int, overlap: bool) -> None:
    image = _image(16 * 9, 40, seed=5)  # 9 tile rows
    backend = FakeBackend(fake_bundle())
    backend.activate()  # the Scheduler drives an active backend; Translator.open() does this
    plan = TilePlan.create(image.shape[0], image.shape[1], TILE, MARGIN, backend.manifest.strides)
    options = ScheduleOptions(mode=mode, schedule="streaming", batch=2, overlap=overlap, read_ahead=1)
    rec = _Recorder(image)
    Scheduler(backend, plan, options).run(rec, rec)
    events = rec.events
    if mode == "dn":
        # DN's default rule first streams the image once into the slide thumbnail (each band
        # dropped as soon as it is added); the window below is that of the second read.
        first = [kind for kind, _ in events[: plan.rows]]
        assert first == ["read"] * plan.rows
        events = events[plan.rows :]
    reads = writes = 0
    worst = 0
    for kind, _ in events:
        reads += kind == "read"
        writes += kind == "write"
        worst = max(worst, reads - writes)
    # Rows read but not yet written: the row being inferred and its look-ahead, plus one band
    # waiting in the reader's queue (read_ahead=1; producers reserve room before reading, so a
    # blocked reader holds nothing). Overlapped: one band being collected and one handed over.
    bound = 1 + lookahead + 1 + (2 if overlap else 0)
    assert worst <= bound
    assert reads == writes == plan.rows
    np.testing.assert_array_equal(
        rec.sink.pixels, reference_translate(FakeBackend(fake_bundle()), image, mode)
    )


class _ProgressiveSink:
    """A sink with ``open_band``: checks that every published column is already final."""

    def __init__(self, expected: np.ndarray) -> None:
        self.expected = expected
        self.row = 0
        self.published: list[tuple[int, int]] = []  # (band's first row, columns)

    def write_band(self, band: np.ndarray, *, copy: bool = True) -> None:
        raise AssertionError("a sink with open_band gets every band through it")

    def open_band(self, band: np.ndarray) -> Callable[[int], None]:
        y0, y1 = self.row, self.row + band.shape[0]
        self.row = y1

        def publish(columns: int) -> None:
            np.testing.assert_array_equal(band[:, :columns], self.expected[y0:y1, :columns])
            self.published.append((y0, columns))

        return publish


@pytest.mark.parametrize("mode", ["in", "dn"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_bands_are_published_chunk_by_chunk(mode: str, schedule: str) -> None:
    image = _image(40, 100, seed=7)  # 3 rows x 7 columns of 16 px tiles, the last 4 px wide
    backend = FakeBackend(fake_bundle())
    backend.activate()
    expected = reference_translate(FakeBackend(fake_bundle()), image, mode)
    plan = TilePlan.create(image.shape[0], image.shape[1], TILE, MARGIN, backend.manifest.strides)
    sink = _ProgressiveSink(expected)
    Scheduler(backend, plan, ScheduleOptions(mode=mode, schedule=schedule, batch=3)).run(
        ArraySource(image), sink
    )
    # batches of 3 columns: tiles 0-2, 3-5, 6 -> columns 48, 96 and the image's 100
    assert sink.published == [(y0, x) for y0 in (0, 16, 32) for x in (48, 96, 100)]


def test_statistics_never_read_before_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The written-mask check is live: a scheduler that looks ahead too little is caught."""
    monkeypatch.setattr(DenseStats, "lookahead", 0)
    with pytest.raises(StatisticsReadBeforeWritten):
        _translate(FakeBackend(fake_bundle()), _image(40, 40), mode="dn", schedule="streaming")


def test_uniform_region_gives_finite_output_in_every_mode() -> None:
    """Section 8: a perfectly flat region over several tiles (std = 0) must not produce NaN/garbage."""
    image = _image(96, 112, seed=2)
    image[8:88, 10:100] = 200  # whole tiles (rows 1-4, cols 1-5) and parts of their neighbours

    class Checked(FakeBackend):
        def collect(self, tiles, flavour, *, image=True):
            image_, mean, std = super().collect(tiles, flavour, image=True)
            assert np.isfinite(image_).all() and np.isfinite(mean).all() and np.isfinite(std).all()
            return image_, mean, std

        def infer(self, tiles, nbr_mean, nbr_std):
            assert np.isfinite(nbr_mean).all() and np.isfinite(nbr_std).all()
            assert nbr_std.min() > 0
            y = super().infer(tiles, nbr_mean, nbr_std)
            assert np.isfinite(y).all()
            return y

    outs = {}
    for mode in MODES:
        outs[mode] = _translate(Checked(fake_bundle()), image, mode=mode)
    outs["dn-reference"] = _translate(Checked(fake_bundle()), image, mode="dn", degenerate="reference")
    # Flat tiles next to textured ones are where the reference explodes; with the floor alone DN
    # stays bounded there and, on flat tiles whose neighbours are flat too, equals patch-wise IN.
    # dnrt's default rule gives those tiles the slide's statistics: TIN's normalization.
    interior = (slice(32, 64), slice(32, 80))
    diff = np.abs(outs["dn-reference"][interior].astype(int) - outs["in"][interior])
    assert diff.max() <= 1
    diff = np.abs(outs["dn"][interior].astype(int) - outs["tin"][interior])
    assert diff.max() <= 1


# --------------------------------------------------------------------------- errors and report


def test_reader_errors_surface_without_hanging() -> None:
    class Broken(ArraySource):
        def read_region(self, y0, y1, x0, x1):
            if y0 >= 32:
                raise DnrtError("truncated TIFF: strip 3 is missing")
            return super().read_region(y0, y1, x0, x1)

    backend = FakeBackend(fake_bundle())
    plan = TilePlan.create(64, 40, TILE, MARGIN, backend.manifest.strides)
    for overlap in (False, True):
        scheduler = Scheduler(backend, plan, ScheduleOptions(mode="dn", overlap=overlap))
        with pytest.raises(DnrtError, match="truncated"):
            scheduler.run(Broken(_image(64, 40)), ArraySink(64, 40, 3))


def test_input_validation() -> None:
    backend = FakeBackend(fake_bundle())
    with pytest.raises(DnrtError, match="3-channel"):
        _translate(backend, np.zeros((20, 20), np.uint8))
    with pytest.raises(DnrtError, match="uint8"):
        _translate(backend, np.zeros((20, 20, 3), np.float32))
    with pytest.raises(DnrtError, match="mode"):
        Translator(backend=backend, mode="bn")
    with pytest.raises(DnrtError, match="schedule"):
        Translator(backend=backend, schedule="one-stage")
    with pytest.raises(DnrtError, match="odd"):
        Translator(backend=backend, mode="kin", kin_kernel=4)
    with pytest.raises(DnrtError, match="even"):
        Translator(backend=backend, margin=3)
    with pytest.raises(DnrtError, match="TIN"):
        # Tile 14 + margin 1 gives 16 px network inputs (fine), but the 14 px thumbnail has a 7 px map.
        _translate(FakeBackend(fake_bundle(tile=14, margin=1)), _image(30, 30), mode="tin")


def test_report(backend_factory: BackendFactory) -> None:
    translator = Translator(backend=backend_factory(), mode="dn", batch=3)
    out = translator.translate(_image(50, 70))
    report = translator.last_report
    translator.close()
    assert out.shape == (50, 70, 3)
    assert (report.rows, report.cols, report.tiles, report.tile_runs) == (4, 5, 20, 40)
    assert report.mode == "dn" and report.schedule == "streaming" and report.batch == 3
    assert set(report.seconds) == {"read", "thumbnail", "collect", "infer", "write", "total"}
    assert report.seconds["collect"] > 0 and report.seconds["infer"] > 0
    assert report.peak_rss_mb > 0 and report.megapixels_per_s > 0
    assert '"tile_runs": 40' in report.to_json()


def test_batches_are_fixed_per_row() -> None:
    backend = FakeBackend(fake_bundle())
    _translate(backend, _image(40, 100), mode="dn", batch=3)  # 3 rows x 7 columns
    sizes = [n for kind, n in backend.calls if kind == "infer"]
    assert sizes == [3, 3, 1] * 3
    # The first collect is the slide thumbnail of DN's default degenerate-statistics rule.
    assert [n for kind, n in backend.calls if kind == "collect"] == [1] + [3, 3, 1] * 3


@pytest.mark.parametrize(
    ("mode", "wants_image"), [("in", True), ("tin", False), ("kin", False), ("dn", False)]
)
def test_collect_asks_for_the_image_only_when_it_is_written(mode: str, wants_image: bool) -> None:
    backend = FakeBackend(fake_bundle())
    _translate(backend, _image(40, 56), mode=mode, batch=2)
    collects = sum(kind == "collect" for kind, _ in backend.calls)
    # TIN: the thumbnail only; else 3 rows x 2 batches, and for DN the slide thumbnail first.
    assert collects == {"tin": 1, "dn": 7}.get(mode, 6)
    assert backend.image_requests == [wants_image] * collects


def test_bundle_object_and_tile_override(backend_factory: BackendFactory) -> None:
    """Tile and margin other than the bundle's change the result but keep the semantics."""
    image = _image(40, 56, seed=9)
    backend = backend_factory(tile=24, margin=4)
    got = _translate(backend, image, mode="dn", tile=24, margin=4)
    np.testing.assert_array_equal(
        got, reference_translate(backend_factory(tile=24, margin=4), image, "dn", tile=24, margin=4)
    )
    assert isinstance(backend.bundle, Bundle)


@pytest.mark.parametrize(
    ("mode", "loaded"),
    [
        ("in", {"stats"}),
        ("tin", {"collect", "dense"}),
        ("kin", {"collect", "dense"}),
        ("dn", {"collect", "dense"}),
    ],
)
def test_ort_loads_exactly_the_graphs_of_the_mode(
    small_bundle_path: Path, mode: str, loaded: set[str]
) -> None:
    pytest.importorskip("onnxruntime")
    with Translator(small_bundle_path, mode=mode, backend="ort", progress=False) as translator:
        backend = translator.backend
        sessions = {"stats": backend._stats, "collect": backend._collect, "dense": backend._dense}
        assert {name for name, session in sessions.items() if session is not None} == loaded
        translator.translate(_image(40, 56))
        sessions = {"stats": backend._stats, "collect": backend._collect, "dense": backend._dense}
        assert {name for name, session in sessions.items() if session is not None} == loaded
