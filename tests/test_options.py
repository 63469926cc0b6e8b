"""TranslateOptions: one validator for every front end, its JSON form, and the Python API's
argument checks that lean on it (issue 15's options object, issue 16's API items)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dnrt.errors import Cancelled, DnrtError
from dnrt.runtime.options import BACKENDS, MODES, TranslateOptions
from dnrt.semantics import DegenerateRule, Mode

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"batch": 2.5}, "batch must be an integer"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"tile": True}, "tile must be an integer"),
        ({"margin": -1}, "margin must be at least 0"),
        ({"std_floor": "x"}, "std floor must be a finite number"),
        ({"std_floor": float("nan")}, "std floor must be a finite number"),
        ({"std_floor": -1.0}, "std floor must be positive"),
        ({"kin_kernel": 4}, "positive odd number"),
        ({"mode": "bn"}, "unknown mode 'bn'"),
        ({"schedule": 3}, "unknown schedule"),
        ({"backend": "cuda"}, "unknown backend 'cuda'"),
        ({"margin_source": "zeros"}, "unknown margin source"),
        ({"degenerate": "median"}, "unknown degenerate-statistics rule"),
        ({"degenerate_ratio": 0.0}, "degenerate ratio"),
        ({"overlap": "yes"}, "overlap must be true or false"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"device": -1}, "device index must be at least 0"),
        ({"compression": "gzip9"}, "unknown compression"),
        ({"compression": "jpeg:500"}, "level must be"),
        ({"compression": 5}, "compression must be a name"),
        ({"pyramid": 1}, "pyramid must be true or false"),
        ({"writer_tile": 100}, "multiple of 16"),
    ],
)
def test_every_bad_value_is_a_usage_error_naming_the_option(settings: dict, words: str) -> None:
    with pytest.raises(DnrtError, match=words) as info:
        TranslateOptions(**settings)
    assert info.value.exit_code == 2
    assert "\n" not in str(info.value)


def test_values_are_normalised() -> None:
    options = TranslateOptions(mode="KIN", degenerate="Reference", backend="ORT", batch=2.0)
    assert options.mode is Mode.KIN
    assert options.degenerate is DegenerateRule.REFERENCE
    assert options.backend == "ort"
    assert options.batch == 2 and isinstance(options.batch, int)


def test_json_round_trip_and_unknown_keys() -> None:
    options = TranslateOptions(mode="tin", tile=256, margin=16, overlap=False, compression="zstd:3")
    data = json.loads(options.to_json())
    assert data["mode"] == "tin" and data["degenerate"] == "slide"
    assert TranslateOptions.from_json(options.to_json()) == options
    with pytest.raises(DnrtError, match="unknown translation option.*tiles"):
        TranslateOptions.from_dict({"tiles": 3})
    with pytest.raises(DnrtError, match="JSON object"):
        TranslateOptions.from_dict([1, 2])
    with pytest.raises(DnrtError, match="not valid JSON"):
        TranslateOptions.from_json("[" * 100000)


def test_backend_names_are_the_registry_s() -> None:
    from dnrt.runtime.backends import _REGISTRY, BACKEND_NAMES
    from dnrt.runtime.options import BACKEND_PRECISIONS, GPU_BACKENDS

    assert BACKEND_NAMES == BACKENDS
    assert ("auto", *_REGISTRY) == BACKENDS
    assert tuple(BACKEND_PRECISIONS) == tuple(_REGISTRY)
    assert set(GPU_BACKENDS) < set(_REGISTRY)


def test_cli_choices_and_defaults_come_from_the_options() -> None:
    from dnrt.runtime.cli import options_from_cli, translate_command

    params = {p.name: p for p in translate_command.params}
    assert tuple(params["mode"].type.choices) == MODES
    assert tuple(params["backend"].type.choices) == BACKENDS
    # Parsed with no option given, the command's settings are exactly the default options.
    ctx = translate_command.make_context("trt-translate", ["in.tif", "-o", "out.tif", "-m", "b"])
    settings = {k: v for k, v in ctx.params.items() if k in TranslateOptions.field_names()}
    assert set(settings) == set(TranslateOptions.field_names())
    assert options_from_cli(settings) == TranslateOptions()


# --------------------------------------------------------------------------- Python API


def test_translator_checks_its_arguments(small_bundle_path: Path) -> None:
    from dnrt.runtime.api import Translator

    with pytest.raises(DnrtError, match="batch must be an integer"):
        Translator(small_bundle_path, batch=2.5)
    with pytest.raises(DnrtError, match="unknown translation option.*tiles"):
        Translator(small_bundle_path, tiles=32)
    with pytest.raises(DnrtError, match="model must be a bundle directory"):
        Translator(123)
    with pytest.raises(DnrtError, match="on_progress must be callable"):
        Translator(small_bundle_path, on_progress=5)
    with pytest.raises(DnrtError, match="options must be a TranslateOptions"):
        Translator(small_bundle_path, {"mode": "in"})


def test_options_object_and_keywords_combine(small_bundle_path: Path) -> None:
    from dnrt.runtime.api import Translator

    base = TranslateOptions(mode="kin", kin_kernel=3, backend="ort")
    with Translator(small_bundle_path, base, kin_kernel=5) as translator:
        assert translator.options.mode is Mode.KIN
        assert translator.options.kin_kernel == 5
        assert translator.schedule_options.kin_kernel == 5
    assert base.kin_kernel == 3  # frozen: the keyword made a copy


def test_translate_refuses_non_path_arguments(tmp_path: Path, small_bundle_path: Path) -> None:
    from dnrt.runtime.api import translate

    with pytest.raises(DnrtError, match="input must be a file path, got 123"):
        translate(123, tmp_path / "o.tif", small_bundle_path)
    with pytest.raises(DnrtError, match="output must be a file path"):
        translate(tmp_path / "i.tif", None, small_bundle_path)


def test_out_overlapping_the_input_is_refused(small_bundle_path: Path) -> None:
    from dnrt.runtime.api import Translator

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with Translator(small_bundle_path, mode="in", backend="ort") as translator:
        expected = translator.translate(image)
        with pytest.raises(DnrtError, match="must not overlap the input"):
            translator.translate(image, out=image)
        with pytest.raises(DnrtError, match="must not overlap the input"):
            translator.translate(image[:, :], out=image[:, :])
        separate = np.empty_like(image)
        np.testing.assert_array_equal(translator.translate(image, out=separate), expected)


def test_a_raising_progress_callback_ends_the_run_cleanly(tmp_path: Path, small_bundle_path: Path) -> None:
    import tifffile

    from dnrt.runtime.api import translate

    source = tmp_path / "in.tif"
    tifffile.imwrite(source, np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8))
    calls: list[int] = []

    def broken(done: int, total: int) -> bool:
        calls.append(done)
        if done > 0:
            raise ValueError("boom")
        return True

    with pytest.raises(DnrtError, match="the progress callback raised ValueError: boom") as info:
        translate(source, tmp_path / "out.tif", small_bundle_path, backend="ort", on_progress=broken)
    assert not isinstance(info.value, Cancelled)
    assert isinstance(info.value.__cause__, ValueError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
