"""The embedded demo model: shipped weights, that it translates, its record, its bundle."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from dnrt import demo  # noqa: E402
from dnrt.bundle import load_bundle  # noqa: E402
from dnrt.data.synthetic import sample_pairs  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.models.zoo import build_generator  # noqa: E402


def _train_demo():  # tools/train_demo.py: a script of the checkout, not part of the package
    spec = importlib.util.spec_from_file_location(
        "train_demo", Path(__file__).resolve().parents[1] / "tools" / "train_demo.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_train = _train_demo()
HELDOUT_SLIDES, TRAIN_SLIDES = _train.HELDOUT_SLIDES, _train.TRAIN_SLIDES
psnr, ssim, translate = _train.psnr, _train.ssim, _train.translate


@pytest.fixture(scope="module")
def generator():
    torch.set_num_threads(2)
    return demo.load_demo_generator()


def test_weights_match_the_configured_generator_exactly() -> None:
    from safetensors import safe_open

    config = demo.demo_config()
    assert config["features"] > 0 and config["residuals"] > 0
    reference = build_generator("official", config).state_dict()
    with safe_open(str(demo.demo_weights_path()), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert keys == set(reference)
    assert shapes == {k: tuple(v.shape) for k, v in reference.items()}
    assert dtypes == {"F32"}
    assert json.loads(meta["config"]) == config
    # a few MB at most: it ships inside the package
    assert demo.demo_weights_path().stat().st_size < 5_000_000


def test_load_is_strict_and_eval(generator) -> None:
    assert not generator.training
    # strict load succeeded and weights are trained, not the random init
    fresh = build_generator("official", demo.demo_config()).state_dict()
    trained = generator.state_dict()
    assert any(not torch.equal(fresh[k], trained[k]) for k in fresh)


def test_translates_he_towards_ihc(generator) -> None:
    # Held-out slide (seed not used for training), a 256 px tile as a user would give it.
    seed, h, w = HELDOUT_SLIDES[0]
    assert seed not in {s for s, _, _ in TRAIN_SLIDES}
    he, ihc = sample_pairs(seed + 17, 2, 256, h, w)
    out = translate(generator, he, batch=2)
    assert out.shape == he.shape and out.dtype == np.uint8
    gain = psnr(out, ihc) - psnr(he, ihc)
    # measured +10.9 dB on this tile; leave a wide margin for platform differences
    assert gain > 6.0, f"PSNR gain {gain:.2f} dB"
    # IHC background is pale and neutral; H&E pink/purple: the mean colour must move towards IHC
    assert (
        np.abs(out.mean((0, 1, 2)) - ihc.mean((0, 1, 2))).max()
        < np.abs(he.mean((0, 1, 2)) - ihc.mean((0, 1, 2))).max()
    )


def test_record_lists_metrics_and_command() -> None:
    info = demo.demo_info()
    assert info["command"].startswith("python -m dnrt.data.train_demo")
    assert info["config"] == demo.demo_config()
    assert isinstance(info["seed"], int) and info["wall_time_s"]["total_s"] > 0
    assert info["machine"]["cpu_count"] >= 1
    for size in ("128", "512"):
        m = info["metrics"][size]
        assert m["tiles"] >= 16
        assert m["psnr_model"] > m["psnr_identity"] + 5
        for key in ("ssim_model", "ssim_identity"):
            assert 0 < m[key] <= 1


def test_ssim_and_psnr_behave() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf")
    noisy = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    worse = np.clip(a.astype(int) + rng.integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim(a, worse) < ssim(a, noisy) < 1
    assert ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    assert psnr(a, worse) < psnr(a, noisy)
    # MSE of 1 grey level everywhere -> 48.13 dB
    assert psnr(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)) == pytest.approx(
        48.1308, abs=1e-3
    )


@pytest.mark.slow  # two dynamo ONNX exports of a 13-norm-layer graph: 20-30 s on 2 shared cores
def test_export_demo_bundle(tmp_path) -> None:
    logs: list[str] = []
    result = demo.export_demo_bundle(tmp_path / "demo", tile=64, margin=8, log=logs.append)
    bundle = load_bundle(result.path)
    m = bundle.manifest
    config = demo.demo_config()
    assert (m.architecture, m.config, m.tile, m.margin) == ("official", config, 64, 8)
    assert m.source["format"] == "safetensors" and len(m.source["sha256"]) == 64

    from dnrt.export.onnx_export import count_dense_nodes

    assert count_dense_nodes(bundle.dense_graph) == 2 * config["residuals"] + 5
    assert result.validation is None or result.validation.passed()
    with pytest.raises(DnrtError):
        demo.export_demo_bundle(tmp_path / "demo", tile=64, margin=8, log=logs.append)


def test_missing_weights_is_one_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(demo, "_HERE", tmp_path)
    with pytest.raises(DnrtError, match="train_demo"):
        demo.load_demo_generator()
