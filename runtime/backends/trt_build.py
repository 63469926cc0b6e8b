"""Engine building: an ONNX graph and a shape profile in, a serialized TensorRT engine out.

Handles the two TensorRT API generations dnrt meets:

- **TensorRT 10** builds weakly typed networks by default: ``BuilderFlag.FP16`` lets the
  builder pick fp16 kernels, precision constraints keep the reductions (mean, variance) in
  fp32, and the image tensors' I/O type can be set to fp16 (half the bytes over PCIe). The
  setters used (``ILayer.precision``, ``set_output_type``, ``ITensor.dtype``) are deprecated
  since 10.12 (a DeprecationWarning) and still work through 10.x.
- **TensorRT 11** networks are always strongly typed: ``BuilderFlag.FP16`` and the precision
  constraint flags are gone and tensor types are read-only; the graph's own types decide. dnrt
  bundles are fp32 graphs, so fp16 on TensorRT 11 is refused with a clear message rather than
  silently built in fp32.

The timing cache (per GPU) is read before and written after every build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnrt.errors import DnrtError

#: Inputs and outputs that carry images (fp16 I/O on a fp16 engine); statistics stay fp32.
IMAGE_TENSORS = frozenset({"tiles", "image"})

Shapes = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class Profile:
    """The shape range an engine is built for: square tiles of ``size`` px, 1..``batch`` of them.

    ``min_size`` lets the stats engine also take TIN's thumbnail (T x T, no margin).
    """

    size: int
    min_size: int
    batch: int

    def key(self) -> str:
        return f"s{self.min_size}-{self.size}_b{self.batch}"

    def shapes(self, which: str, in_channels: int, stat_channels: int) -> Shapes:
        """min / opt / max of every input of the ``stats`` or ``dense`` graph."""
        lo, hi = (
            (1, in_channels, self.min_size, self.min_size),
            (self.batch, in_channels, self.size, self.size),
        )
        shapes: Shapes = {"tiles": (lo, hi, hi)}
        if which == "dense":
            stats_lo, stats_hi = (1, stat_channels, 3, 3), (self.batch, stat_channels, 3, 3)
            for name in ("nbr_mean", "nbr_std"):
                shapes[name] = (stats_lo, stats_hi, stats_hi)
        return shapes


def weakly_typed_fp16(trt: Any) -> bool:
    """Whether this TensorRT has the fp16 builder flag (10.x) rather than strong typing only (11+)."""
    return hasattr(trt.BuilderFlag, "FP16")


def check_precision(trt: Any, precision: str) -> None:
    if precision == "fp16" and not weakly_typed_fp16(trt):
        raise DnrtError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (no BuilderFlag.FP16): an fp16 "
            "engine needs an fp16 graph, which dnrt bundles do not carry; use --precision fp32, or "
            "--backend torch-cuda for fp16"
        )


def _fp16(trt: Any, network: Any, config: Any) -> None:
    config.set_flag(trt.BuilderFlag.FP16)
    # Statistics stay float32: keep reductions (mean, variance) out of fp16.
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.REDUCE:
            layer.precision = trt.float32
            layer.set_output_type(0, trt.float32)
    # Image I/O in fp16: the runner reads the types back from the engine (get_tensor_dtype).
    for tensors, count in (
        (network.get_input, network.num_inputs),
        (network.get_output, network.num_outputs),
    ):
        for i in range(count):
            tensor = tensors(i)
            if tensor.name in IMAGE_TENSORS:
                tensor.dtype = trt.float16


def build_engine(
    trt: Any,
    logger: Any,
    graph: bytes,
    shapes: Shapes,
    *,
    precision: str,
    workspace: int,
    timing_cache: Path,
) -> bytes:
    """Parse ``graph`` (already prepared for the plugin) and build an engine for ``shapes``."""
    check_precision(trt, precision)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DnrtError(f"TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if precision == "fp16":
        _fp16(trt, network, config)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    timing = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DnrtError("TensorRT failed to build an engine (see its log above)")
    from dnrt.atomic import write_file_atomic

    write_file_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)
