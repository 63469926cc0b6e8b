"""TensorRT backend: graph preparation runs everywhere; engine tests need TensorRT and a GPU."""

from __future__ import annotations

import importlib.util

import pytest

onnx = pytest.importorskip("onnx")

from dnrt.runtime.backends.trt import PLUGIN_NAMESPACE, prepare_onnx_for_tensorrt  # noqa: E402

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_dense_norm_nodes_are_tagged_for_the_plugin_and_lose_their_body(small_bundle_path) -> None:
    data = (small_bundle_path / "dense.onnx").read_bytes()
    original = onnx.load_from_string(data)
    assert any(f.name == "DenseNorm" for f in original.functions)
    prepared = onnx.load_from_string(prepare_onnx_for_tensorrt(data))
    # Without the body, onnx-tensorrt falls back to the plugin registry for the node.
    assert not any(f.name == "DenseNorm" for f in prepared.functions)
    nodes = [n for n in prepared.graph.node if n.op_type == "DenseNorm"]
    assert len(nodes) == sum(1 for n in original.graph.node if n.op_type == "DenseNorm") > 0
    for node in nodes:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["plugin_namespace"].s.decode() == PLUGIN_NAMESPACE
        assert attrs["plugin_version"].s.decode() == "1"
        assert {"eps", "activation"} <= set(attrs)
    # Everything else is untouched.
    assert [n.op_type for n in prepared.graph.node] == [n.op_type for n in original.graph.node]
    assert len(prepared.graph.initializer) == len(original.graph.initializer)


@pytest.mark.tensorrt
@pytest.mark.skipif(
    not HAS_TENSORRT, reason="TensorRT is not installed (it is not served by PyPI for this machine)"
)
def test_trt_backend_matches_ort(small_bundle_path) -> None:  # pragma: no cover - needs TensorRT and a GPU
    import numpy as np

    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.ort import OrtBackend
    from dnrt.runtime.backends.trt import TrtBackend
    from dnrt.semantics import collect_flavour

    bundle = load_bundle(small_bundle_path)
    tiles = np.random.default_rng(0).uniform(-1, 1, (2, 3, 48, 48)).astype(np.float32)
    with OrtBackend(bundle) as ref, TrtBackend(bundle, batch=2) as trt:
        flavour = collect_flavour("dn")
        want = ref.collect(tiles, flavour)
        got = trt.collect(tiles, flavour)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
        mean = np.repeat(np.repeat(want[1][:, :, None, None], 3, 2), 3, 3)
        std = np.repeat(np.repeat(want[2][:, :, None, None], 3, 2), 3, 3)
        np.testing.assert_allclose(trt.infer(tiles, mean, std), ref.infer(tiles, mean, std), atol=1e-4)
