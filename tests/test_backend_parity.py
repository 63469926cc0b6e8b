"""ONNX Runtime and PyTorch backends agree on the same bundle, in every mode and schedule."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from dnrt.data.synthetic import render_region
from dnrt.runtime.api import Translator


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    # Tissue only (no perfectly flat glass): on flat tiles instance norm amplifies float
    # rounding noise layer after layer, so two correct backends may differ there.
    return render_region(0, 4096, 4096, 1800, 1900, 1800, 1930, stain="he")  # 4 x 5 tiles of 32 px


@pytest.mark.parametrize("mode", ["in", "tin", "kin", "dn"])
def test_torch_backend_matches_ort_within_one_grey_level(small_bundle_path, tissue, mode: str) -> None:
    outs = {}
    for backend in ("ort", "torch"):
        with Translator(small_bundle_path, mode=mode, backend=backend, kin_kernel=3) as translator:
            outs[backend] = translator.translate(tissue).astype(np.int16)
    diff = np.abs(outs["ort"] - outs["torch"])
    assert outs["ort"].shape == tissue.shape
    assert (diff <= 1).mean() >= 0.999 and diff.max() <= 2


@pytest.mark.parametrize("mode", ["kin", "dn"])
def test_torch_backend_streaming_equals_two_pass(small_bundle_path, tissue, mode: str) -> None:
    results = []
    for schedule in ("streaming", "two-pass"):
        with Translator(small_bundle_path, mode=mode, schedule=schedule, backend="torch", batch=2) as t:
            results.append(t.translate(tissue))
    np.testing.assert_array_equal(results[0], results[1])


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_matches_ort_cpu_and_streaming_equals_two_pass(
    small_bundle_path, tissue, precision
) -> None:
    if not _cuda():
        pytest.skip("no CUDA GPU visible to PyTorch")
    with Translator(small_bundle_path, mode="dn", backend="ort") as t:
        want = t.translate(tissue).astype(np.int16)
    results = []
    for schedule in ("streaming", "two-pass"):
        options = {"precision": precision}
        with Translator(
            small_bundle_path, mode="dn", schedule=schedule, backend="torch-cuda", backend_options=options
        ) as t:
            results.append(t.translate(tissue))
    np.testing.assert_array_equal(results[0], results[1])
    diff = np.abs(results[0].astype(np.int16) - want)
    if precision == "fp32":
        assert (diff <= 1).mean() >= 0.999
    else:
        assert (diff <= 2).mean() >= 0.99


@pytest.mark.parametrize("mode", ["in", "dn"])
def test_torch_cpu_bf16_stays_close_to_fp32(small_bundle_path, tissue, mode: str) -> None:
    """bf16 activations on the CPU (statistics and norm layers fp32): a few grey levels at most
    off the fp32 result, bit-identical between schedules, and any CPU runs it (emulated where
    it lacks AVX512-BF16/AMX, which describe() says)."""
    with Translator(small_bundle_path, mode=mode, backend="ort") as t:
        want = t.translate(tissue).astype(np.int16)
    results = []
    for schedule in ("streaming", "two-pass"):
        options = {"precision": "bf16"}
        with Translator(
            small_bundle_path, mode=mode, schedule=schedule, backend="torch", backend_options=options
        ) as t:
            results.append(t.translate(tissue))
            assert ", bf16" in t.backend.describe()
    np.testing.assert_array_equal(results[0], results[1])
    diff = np.abs(results[0].astype(np.int16) - want)
    assert diff.mean() < 2 and np.percentile(diff, 99) <= 8, (
        diff.mean(),
        np.percentile(diff, 99),
        diff.max(),
    )
    assert diff.max() > 0  # it did compute in bf16


def test_torch_precision_errors(small_bundle_path) -> None:
    from dnrt.errors import DnrtError

    with pytest.raises(DnrtError, match="fp16 needs a CUDA device; on the CPU use fp32, or bf16"):
        Translator(small_bundle_path, backend="torch", backend_options={"precision": "fp16"})
    with pytest.raises(DnrtError, match="unknown precision 'int8'"):
        Translator(small_bundle_path, backend="torch", backend_options={"precision": "int8"})
    with pytest.raises(DnrtError, match="fp32 only .* use torch for bf16 on the CPU"):
        Translator(small_bundle_path, backend="ort", backend_options={"precision": "bf16"})
