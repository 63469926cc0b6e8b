"""ONNX preparation for TensorRT: the bundle's graphs as onnx-tensorrt should parse them.

onnx-tensorrt imports a node through a model-local function when one exists, before it looks
for a plugin. The DN graph carries such a function body for ONNX Runtime, so before parsing the
body is dropped and every DenseNorm node tagged with ``plugin_namespace`` / ``plugin_version``;
the parser's fallback importer then binds the node to ``libdnrt_trt_plugin.so``'s creator.

``onnx`` is imported inside the functions: this module is imported with the TensorRT backend,
and importing onnx installs a SIGINT handler that translation paths must not (README, C API).
Only engine *building* needs it; a run served from the engine cache never imports it.
"""

from __future__ import annotations

from pathlib import Path

from dnrt.bundle import check_external_data

PLUGIN_NAMESPACE = "dnrt"
PLUGIN_VERSION = "1"
PLUGIN_LIBRARY = "libdnrt_trt_plugin.so"


def prepare_onnx_for_tensorrt(data: bytes, folder: Path | None = None, label: str = "graph") -> bytes:
    """Drop DenseNorm's function body and tag its nodes so the parser uses the plugin.

    With ``folder`` (the bundle's), external-data locations that are absolute or lead out of it
    are refused (:func:`dnrt.bundle.check_external_data`)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    if folder is not None:
        check_external_data(model, folder, label)
    kept = [f for f in model.functions if not (f.domain == PLUGIN_NAMESPACE and f.name == "DenseNorm")]
    del model.functions[:]
    model.functions.extend(kept)
    for node in model.graph.node:
        if node.domain == PLUGIN_NAMESPACE and node.op_type == "DenseNorm":
            names = {a.name for a in node.attribute}
            if "plugin_namespace" not in names:
                node.attribute.append(helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE))
            if "plugin_version" not in names:
                node.attribute.append(helper.make_attribute("plugin_version", PLUGIN_VERSION))
    return model.SerializeToString()


def prepare_graph(path: Path, which: str) -> bytes:
    """The bytes TensorRT parses for ``which`` (``stats`` or ``dense``), checked like the bundle."""
    data = path.read_bytes()
    if which == "dense":
        return prepare_onnx_for_tensorrt(data, path.parent, str(path))
    import onnx

    check_external_data(onnx.load_from_string(data), path.parent, str(path))
    return data
