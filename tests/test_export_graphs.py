"""Export-time graph rewrites: ConvTranspose as sub-pixel Conv, and the statistics-only collect graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")  # dnrt.export (the package of these rewrites) is the torch extra
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dnrt.export.deconv import rewrite_conv_transpose  # noqa: E402


def _model(
    c_in: int, c_out: int, kernel: tuple[int, int], bias: bool, seed: int = 0, **attrs
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    group = attrs.get("group", 1)
    weight = rng.standard_normal((c_in, c_out // group, *kernel)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("ConvTranspose", inputs, ["y"], kernel_shape=list(kernel), **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, c_in, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, None, None])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


CASES = {
    # the official DN generator's upsampling (after a replication pad of 1)
    "official k4 s2 p3": ((4, 4), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    # CycleGAN / pix2pix ResnetGenerator
    "cyclegan k3 s2 p1 op1": ((3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])),
    "k2 s2": ((2, 2), dict(strides=[2, 2])),
    "k4 s2 p1": ((4, 4), dict(strides=[2, 2], pads=[1, 1, 1, 1])),
    "asymmetric k5x3 s3": ((5, 3), dict(strides=[3, 3], pads=[2, 1, 0, 2], output_padding=[1, 2])),
    "kernel smaller than stride": ((1, 1), dict(strides=[2, 2], output_padding=[1, 1])),
    "k3 s2 no pad": ((3, 3), dict(strides=[2, 2])),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_rewrite_matches_conv_transpose(case: str, bias: bool) -> None:
    kernel, attrs = CASES[case]
    model = _model(3, 5, kernel, bias, **attrs)
    rewritten = copy.deepcopy(model)
    assert rewrite_conv_transpose(rewritten) == 1
    onnx.checker.check_model(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "ConvTranspose" not in ops and ops[:2] == ["Conv", "DepthToSpace"]
    assert {t.name for t in rewritten.graph.initializer}.isdisjoint({"w", "b"})  # old weights dropped
    rng = np.random.default_rng(1)
    for size in [(8, 8), (5, 7), (13, 4)]:
        x = rng.standard_normal((2, 3, *size)).astype(np.float32)
        expected = _run(model, x)
        got = _run(rewritten, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "cropped"),
    [("cyclegan k3 s2 p1 op1", False), ("k2 s2", False), ("official k4 s2 p3", True), ("k4 s2 p1", True)],
)
def test_rewrite_uses_fewest_taps_and_crops_only_when_it_must(case: str, cropped: bool) -> None:
    """Every phase convolution has ceil(K / s) taps (no zero taps computed), and the output is
    cropped (a Slice: a copy of the whole upsampled tensor) only when no block origin avoids it."""
    kernel, attrs = CASES[case]
    model = _model(3, 5, kernel, False, **attrs)
    assert rewrite_conv_transpose(model) == 1
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    shape = next(list(a.ints) for a in conv.attribute if a.name == "kernel_shape")
    assert shape == [-(-k // 2) for k in kernel]
    assert ("Slice" in [n.op_type for n in model.graph.node]) is cropped


@pytest.mark.parametrize(
    "attrs",
    [
        dict(strides=[1, 1], pads=[1, 1, 1, 1]),  # stride 1: already a convolution
        dict(strides=[2, 2], group=5),
        dict(strides=[2, 2], dilations=[2, 2]),
        dict(strides=[2, 1]),  # DepthToSpace has one block size
        dict(strides=[2, 2], auto_pad="SAME_UPPER"),
        dict(strides=[2, 2], output_shape=[16, 16]),
    ],
)
def test_unsupported_forms_are_left_alone(attrs: dict) -> None:
    model = _model(5, 5, (3, 3), True, **attrs)
    before = model.SerializeToString()
    assert rewrite_conv_transpose(model) == 0
    assert model.SerializeToString() == before


def test_weights_computed_at_run_time_are_left_alone() -> None:
    model = _model(3, 5, (4, 4), False, strides=[2, 2])
    model.graph.initializer.pop()  # "w" becomes a graph input
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 5, 4, 4]))
    assert rewrite_conv_transpose(model) == 0


def test_exported_official_bundle_has_no_conv_transpose(small_bundle_path) -> None:
    for graph in ("stats", "dense"):
        model = onnx.load(str(small_bundle_path / f"{graph}.onnx"))
        ops = {n.op_type for n in model.graph.node}
        assert "ConvTranspose" not in ops and "DepthToSpace" in ops, graph


def test_collect_graph_keeps_only_the_statistics(small_bundle_path) -> None:
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.ort import OrtBackend
    from dnrt.semantics import collect_flavour

    bundle = load_bundle(small_bundle_path)
    assert bundle.collect_graph is not None
    stats = onnx.load(str(bundle.stats_graph))
    collect = onnx.load(str(bundle.collect_graph))
    assert [o.name for o in collect.graph.output] == ["tile_mean", "tile_std"]
    assert len(collect.graph.node) < len(stats.graph.node)
    # The last layer (the 7x7 convolution to RGB) is gone with the image.
    last_conv = [n for n in stats.graph.node if n.op_type == "Conv"][-1]
    assert last_conv.name not in {n.name for n in collect.graph.node}
    assert len(collect.graph.initializer) < len(stats.graph.initializer)

    rng = np.random.default_rng(3)
    tiles = rng.uniform(-1, 1, (2, 3, 48, 48)).astype(np.float32)
    with OrtBackend(bundle, threads=1) as backend:
        for mode in ("in", "tin", "kin", "dn"):
            image, mean, std = backend.collect(tiles, collect_flavour(mode), image=True)
            none, c_mean, c_std = backend.collect(tiles, collect_flavour(mode), image=False)
            assert image is not None and none is None
            np.testing.assert_allclose(c_mean, mean, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(c_std, std, rtol=1e-6, atol=1e-6)
