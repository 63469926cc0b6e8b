"""Export a DnrtModel's two passes to ONNX: the stats graph and the DenseNorm graph."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from dnrt.errors import DnrtError, first_line
from dnrt.export.deconv import rewrite_conv_transpose
from dnrt.export.graph_edit import prune_to_outputs
from dnrt.models.normswap import DnrtModel
from dnrt.ops.onnx_op import DOMAIN, OP_TYPE, OP_VERSION, attach_function, register_schema
from dnrt.ops.torch_op import dense_norm


class _StatsGraph(nn.Module):
    def __init__(self, model: DnrtModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tiles: Tensor, collect_params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.collect(tiles, collect_params)


class _DenseGraph(nn.Module):
    def __init__(self, model: DnrtModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tiles: Tensor, nbr_mean: Tensor, nbr_std: Tensor) -> Tensor:
        return self.model.apply(tiles, nbr_mean, nbr_std)


def _dense_norm_to_onnx(x, mean, std, gamma, beta, eps: float, activation: str):  # type: ignore[no-untyped-def]
    # Emit a bare custom-domain node: the exporter would inline an onnxscript
    # function, and TensorRT must see the node itself to bind its plugin.
    import onnxscript

    opset = onnxscript.values.Opset(DOMAIN, OP_VERSION)
    return getattr(opset, OP_TYPE)(x, mean, std, gamma, beta, eps=eps, activation=activation)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and warnings meant for its own developers."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export(
    module: nn.Module,
    args: tuple[Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict[str, dict[int, str]],
    opset: int,
) -> onnx.ModelProto:
    register_schema()
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                custom_translation_table={torch.ops.dnrt.dense_norm.default: _dense_norm_to_onnx},
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    except DnrtError:
        raise
    except Exception as exc:  # the exporter's errors are long; keep the first line
        raise DnrtError(f"ONNX export failed: {first_line(exc, empty=type(exc).__name__)}") from exc
    assert dense_norm is not None  # the op must be registered before export
    return program.model_proto


def _example_size(model: DnrtModel) -> int:
    return max(64, model.input_multiple * 2)


def export_stats_graph(model: DnrtModel, in_channels: int, opset: int) -> onnx.ModelProto:
    size = _example_size(model)
    args = (torch.randn(2, in_channels, size, size), torch.tensor([1.0, 0.0, 3e-3]))
    dynamic = {"tiles": {0: "N", 2: "H", 3: "W"}, "collect_params": {}}
    proto = _export(
        _StatsGraph(model),
        args,
        ["tiles", "collect_params"],
        ["image", "tile_mean", "tile_std"],
        dynamic,
        opset,
    )
    rewrite_conv_transpose(proto)
    _check(proto, "stats")
    return proto


def statistics_only(stats: onnx.ModelProto) -> onnx.ModelProto:
    """The stats graph without its ``image`` output and every node, initializer and value
    annotation only that output needed (what collect.onnx holds; see dnrt.bundle)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(stats)
    graph = proto.graph
    keep_outputs = [o for o in graph.output if o.name != "image"]
    del graph.output[:]
    graph.output.extend(keep_outputs)
    prune_to_outputs(graph)
    _check(proto, "collect")
    return proto


def export_dense_graph(model: DnrtModel, in_channels: int, opset: int) -> onnx.ModelProto:
    size = _example_size(model)
    channels = model.total_channels
    args = (
        torch.randn(2, in_channels, size, size),
        torch.randn(2, channels, 3, 3),
        torch.rand(2, channels, 3, 3) + 0.5,
    )
    dynamic = {"tiles": {0: "N", 2: "H", 3: "W"}, "nbr_mean": {0: "N"}, "nbr_std": {0: "N"}}
    proto = _export(_DenseGraph(model), args, ["tiles", "nbr_mean", "nbr_std"], ["image"], dynamic, opset)
    proto = attach_function(proto)
    rewrite_conv_transpose(proto)
    found = sum(1 for node in proto.graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE)
    if found != len(model.layers):
        raise DnrtError(
            f"DN graph has {found} DenseNorm nodes but the model has {len(model.layers)} norm layers"
        )
    _check(proto, "DN")
    return proto


def _check(proto: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise DnrtError(f"the exported {what} graph fails onnx.checker: {first_line(exc)}") from exc


def count_dense_nodes(path: str | Path) -> int:
    proto = onnx.load(str(path), load_external_data=False)
    return sum(1 for node in proto.graph.node if node.domain == DOMAIN and node.op_type == OP_TYPE)
