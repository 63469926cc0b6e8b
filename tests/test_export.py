"""ONNX export: the DenseNorm function body, both graphs, the bundle, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402
from torch import nn  # noqa: E402
from torch_models import small_generator  # noqa: E402

from dnrt import semantics as S  # noqa: E402
from dnrt.bundle import load_bundle  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.export import export_module  # noqa: E402
from dnrt.export.onnx_export import count_dense_nodes  # noqa: E402
from dnrt.ops.onnx_op import DOMAIN, attach_function, register_schema  # noqa: E402


def single_op_model(activation: str, dtype: int) -> bytes:
    register_schema()
    node = helper.make_node(
        "DenseNorm",
        ["X", "Mean", "Std", "Gamma", "Beta"],
        ["Y"],
        domain=DOMAIN,
        eps=1e-7,
        activation=activation,
    )
    graph = helper.make_graph(
        [node],
        "one_dense_norm",
        [
            helper.make_tensor_value_info("X", dtype, ["N", "C", "H", "W"]),
            helper.make_tensor_value_info("Mean", TensorProto.FLOAT, ["N", "C", 3, 3]),
            helper.make_tensor_value_info("Std", TensorProto.FLOAT, ["N", "C", 3, 3]),
            helper.make_tensor_value_info("Gamma", TensorProto.FLOAT, ["C"]),
            helper.make_tensor_value_info("Beta", TensorProto.FLOAT, ["C"]),
        ],
        [helper.make_tensor_value_info("Y", dtype, ["N", "C", "H", "W"])],
    )
    # IR 10 (ONNX 1.16): what ONNX Runtime and TensorRT parsers of this era accept.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    model = attach_function(model)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


@pytest.mark.parametrize("activation", ["none", "relu"])
@pytest.mark.parametrize("h,w", [(2, 2), (8, 6), (34, 20)])
def test_function_body_matches_reference_fp32(activation: str, h: int, w: int) -> None:
    rng = np.random.default_rng(7)
    sess = ort.InferenceSession(
        single_op_model(activation, TensorProto.FLOAT), providers=["CPUExecutionProvider"]
    )
    x = rng.normal(size=(3, 5, h, w)).astype(np.float32)
    mean = rng.normal(size=(3, 5, 3, 3)).astype(np.float32)
    std = rng.uniform(0.1, 3, size=(3, 5, 3, 3)).astype(np.float32)
    gamma = rng.normal(size=5).astype(np.float32)
    beta = rng.normal(size=5).astype(np.float32)
    (y,) = sess.run(None, {"X": x, "Mean": mean, "Std": std, "Gamma": gamma, "Beta": beta})
    want = S.dense_normalize(x, mean, std, gamma, beta, activation=activation)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=2e-5)


def test_function_body_runs_in_fp16() -> None:
    rng = np.random.default_rng(8)
    sess = ort.InferenceSession(
        single_op_model("relu", TensorProto.FLOAT16), providers=["CPUExecutionProvider"]
    )
    x = rng.normal(size=(2, 4, 8, 8)).astype(np.float16)
    mean = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    std = rng.uniform(0.5, 2, size=(2, 4, 3, 3)).astype(np.float32)
    ones, zeros = np.ones(4, np.float32), np.zeros(4, np.float32)
    (y,) = sess.run(None, {"X": x, "Mean": mean, "Std": std, "Gamma": ones, "Beta": zeros})
    assert y.dtype == np.float16
    want = S.dense_normalize(x.astype(np.float32), mean, std, activation="relu")
    np.testing.assert_allclose(y.astype(np.float32), want, rtol=2e-3, atol=2e-3)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export") / "small.dnrt"
    logs: list[str] = []
    result = export_module(small_generator(), out, tile=32, margin=8, log=logs.append)
    return result, logs


def test_bundle_contents_and_manifest(small_bundle) -> None:
    result, logs = small_bundle
    bundle = load_bundle(result.path)
    m = bundle.manifest
    assert (m.in_channels, m.out_channels, m.tile, m.margin) == (3, 3, 32, 8)
    assert [layer.stride for layer in m.layers] == [1, 2, 1]
    assert m.total_channels == 14 and m.dnrt_version
    assert bundle.weights.is_file()
    assert count_dense_nodes(bundle.dense_graph) == 3
    data = json.loads((result.path / "manifest.json").read_text())
    assert data["total_channels"] == 14 and data["std_flavours"]["dn"].startswith("unbiased")
    # validation numbers are printed and within tolerance
    assert result.validation is not None and result.validation.passed()
    assert any("validation" in line for line in logs)
    for path in (bundle.stats_graph, bundle.dense_graph):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_dense_nodes_carry_fused_relu(small_bundle) -> None:
    result, _ = small_bundle
    proto = onnx.load(str(result.path / "dense.onnx"))
    acts = [
        next(a.s.decode() for a in node.attribute if a.name == "activation")
        for node in proto.graph.node
        if node.op_type == "DenseNorm"
    ]
    assert acts == ["relu", "none", "none"]
    assert any(f.name == "DenseNorm" and f.domain == DOMAIN for f in proto.functions)


def test_graphs_have_dynamic_batch_height_width(small_bundle) -> None:
    result, _ = small_bundle
    stats = ort.InferenceSession(str(result.path / "stats.onnx"), providers=["CPUExecutionProvider"])
    dense = ort.InferenceSession(str(result.path / "dense.onnx"), providers=["CPUExecutionProvider"])
    for n, h, w in [(1, 16, 16), (3, 48, 32)]:
        x = np.random.default_rng(n).normal(size=(n, 3, h, w)).astype(np.float32)
        image, mean, std = stats.run(None, {"tiles": x, "collect_params": S.collect_flavour("dn").as_array()})
        assert image.shape == (n, 3, h, w) and mean.shape == (n, 14) and std.shape == (n, 14)
        nbr_m = np.repeat(np.repeat(mean[:, :, None, None], 3, 2), 3, 3)
        nbr_s = np.repeat(np.repeat(std[:, :, None, None], 3, 2), 3, 3) - np.float32(S.DN_EPS)
        (out,) = dense.run(None, {"tiles": x, "nbr_mean": nbr_m, "nbr_std": nbr_s})
        np.testing.assert_allclose(out, image, atol=1e-4)


def test_in_mode_of_stats_graph_equals_original_module(small_bundle) -> None:
    result, _ = small_bundle
    stats = ort.InferenceSession(str(result.path / "stats.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(3).normal(size=(2, 3, 40, 24)).astype(np.float32)
    (image, _, _) = stats.run(None, {"tiles": x, "collect_params": S.collect_flavour("in").as_array()})
    with torch.no_grad():
        want = small_generator()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(image, want, atol=1e-4)


def test_existing_output_is_refused_and_kept(tmp_path) -> None:
    out = tmp_path / "b.dnrt"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DnrtError, match="exists; pass --overwrite"):
        export_module(small_generator(), out, tile=32, margin=8, log=lambda _: None)
    assert (out / "keep.txt").read_text() == "x"


def test_odd_map_sizes_are_rejected_before_writing(tmp_path) -> None:
    out = tmp_path / "odd.dnrt"
    with pytest.raises(DnrtError, match="even"):
        export_module(small_generator(), out, tile=30, margin=8, log=lambda _: None)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_model_without_norm_layers_exports(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh())
    result = export_module(net, tmp_path / "plain.dnrt", tile=16, margin=0, log=lambda _: None)
    assert result.manifest.layers == [] and count_dense_nodes(result.path / "dense.onnx") == 0
