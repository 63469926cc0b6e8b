"""The ``dnrt::DenseNorm`` op in one place: its identity, its ONNX form, its PyTorch form.

- this module: the op's names (standard library only), which every implementation agrees on:
  the ONNX domain and type, its version, the opsets its function body needs, and the file name
  of the TensorRT plugin library that registers a creator under the same names;
- :mod:`dnrt.ops.onnx_op`: the ONNX schema and the function body of standard ops (needs onnx,
  not torch), which ONNX Runtime runs and TensorRT replaces with the plugin;
- :mod:`dnrt.ops.torch_op`: the ``dnrt::dense_norm`` torch custom op (needs torch), its eager
  reference and its dispatch to the CUDA kernel of ``libdnrt_kernels.so`` when built.

The math they all implement is ``dnrt.semantics.dense_normalize`` (docs/semantics.md 4).
"""

from __future__ import annotations

#: ONNX domain of the op; also the TensorRT plugin namespace its creator registers under.
DOMAIN = "dnrt"
#: ONNX op type; also the TensorRT plugin name.
OP_TYPE = "DenseNorm"
#: ONNX op-set version of the domain; the TensorRT plugin version is the same number as a string.
OP_VERSION = 1
PLUGIN_VERSION = str(OP_VERSION)
#: Default and minimum opset of exported graphs: the body compares strings with Equal
#: (opset 19+), and a model-local function must import the same opset as its model.
DEFAULT_OPSET = 19
MIN_OPSET = 19
#: The TensorRT plugin library built from plugins/ (``dnrt build-plugins --tensorrt-include``).
TRT_PLUGIN_LIB = "libdnrt_trt_plugin.so"

__all__ = [
    "DEFAULT_OPSET",
    "DOMAIN",
    "MIN_OPSET",
    "OP_TYPE",
    "OP_VERSION",
    "PLUGIN_VERSION",
    "TRT_PLUGIN_LIB",
]
