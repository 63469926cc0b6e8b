"""TensorRT backend: engines built from the bundle's graphs, DenseNorm on the CUDA plugin.

Written against the TensorRT 10 Python API and cuda-python (``cuda.bindings``).
Neither can be installed on dnrt's development machines, so this module is
exercised only where TensorRT exists; its tests skip elsewhere with the reason.

Design:

- **Plugin binding.** onnx-tensorrt imports a node through a model-local
  function when one exists, before it looks for a plugin. The DN graph carries
  such a function body for ONNX Runtime, so before parsing we drop the body and
  tag every DenseNorm node with ``plugin_namespace="dnrt"`` and
  ``plugin_version="1"``; the parser's fallback importer then binds the node to
  ``libdnrt_trt_plugin.so``'s creator.
- **Engines** are cached on disk, keyed by the graph's hash, the GPU, the
  compute capability, the TensorRT version, the precision and the shape profile
  (tile size and batch). A timing cache is kept beside them.
- **Two CUDA streams.** The stats engine runs on its own stream and the DN
  engine on another; the scheduler calls ``collect`` and ``infer`` from two
  threads in streaming mode, so the statistics of row r+1 are computed on the
  GPU while row r is inferred. Host buffers are pinned, so the copies are
  asynchronous and overlap the other stream's compute.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dnrt.bundle import Bundle, check_external_data
from dnrt.errors import DnrtError
from dnrt.ops import DOMAIN as PLUGIN_NAMESPACE
from dnrt.ops import OP_TYPE, PLUGIN_VERSION
from dnrt.ops import TRT_PLUGIN_LIB as PLUGIN_LIBRARY
from dnrt.runtime.backends.base import Backend
from dnrt.semantics import CollectFlavour


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            raise DnrtError("the TensorRT backend needs cuda-python: pip install 'dnrt[gpu]'") from None
    return cudart


def _check(result: tuple[Any, ...]) -> Any:
    """cuda-python returns ``(error, *values)``; raise on error, return the values."""
    err, *values = result
    if int(err) != 0:
        cudart = _cudart()
        _, name = cudart.cudaGetErrorName(err)
        raise DnrtError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cache_dir() -> Path:
    root = (
        os.environ.get("DNRT_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dnrt"
    )
    path = Path(root) / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_onnx_for_tensorrt(data: bytes, folder: Path | None = None, label: str = "graph") -> bytes:
    """Drop DenseNorm's function body and tag its nodes so the parser uses the plugin.

    With ``folder`` (the bundle's), external-data locations that are absolute or lead out of it
    are refused (:func:`dnrt.bundle.check_external_data`)."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(data)
    if folder is not None:
        check_external_data(model, folder, label)
    kept = [f for f in model.functions if not (f.domain == PLUGIN_NAMESPACE and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend(kept)
    for node in model.graph.node:
        if node.domain == PLUGIN_NAMESPACE and node.op_type == OP_TYPE:
            names = {a.name for a in node.attribute}
            if "plugin_namespace" not in names:
                node.attribute.append(helper.make_attribute("plugin_namespace", PLUGIN_NAMESPACE))
            if "plugin_version" not in names:
                node.attribute.append(helper.make_attribute("plugin_version", PLUGIN_VERSION))
    return model.SerializeToString()


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


class _Engine:
    """One deserialized engine with its execution context, stream and pinned buffers."""

    def __init__(self, trt: Any, engine: Any, cudart: Any, label: str, device_index: int = 0) -> None:
        self.trt = trt
        self.device_index = device_index
        self.engine = engine
        self.cudart = cudart
        self.label = label
        self.context = engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        self.done = _check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self.host: dict[str, np.ndarray] = {}  # pinned staging, viewed as numpy
        self.pinned: dict[str, tuple[int, int]] = {}  # name -> (pinned pointer, bytes)
        self.lock = threading.Lock()

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.device.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self.cudart.cudaFree(ptr))
            ptr = _check(self.cudart.cudaMalloc(nbytes))
            self.device[name] = (ptr, nbytes)
        return ptr

    def _host_buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 view of ``shape`` on the pinned staging block of ``name``, grown as needed.

        numpy arrays take no new attributes, so the block's pointer is kept beside its view in
        ``self.pinned``. A block is replaced only between runs (``run`` synchronises its stream
        before returning), so no queued copy still reads the one freed here."""
        count = int(np.prod(shape))
        nbytes = max(count * 4, 4)
        ptr, size = self.pinned.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                del self.host[name]
                _check(self.cudart.cudaFreeHost(ptr))
                self.pinned.pop(name)
            ptr = _check(self.cudart.cudaMallocHost(nbytes))
            self.pinned[name] = (int(ptr), nbytes)
            raw = (ctypes.c_byte * nbytes).from_address(int(ptr))
            self.host[name] = np.frombuffer(raw, dtype=np.float32)
        return self.host[name][:count].reshape(shape)

    def run(
        self, feeds: dict[str, np.ndarray], wanted: Collection[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run on ``feeds``; return the outputs named in ``wanted`` (all by default). Every
        output still gets device memory (TensorRT writes them all); only the wanted ones are
        copied back."""
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self.lock:
            # The current device is per host thread, and the scheduler calls from its own threads:
            # without this, buffers grown here would be allocated on (and kernels launched from)
            # device 0 whatever device_index says.
            _check(cudart.cudaSetDevice(self.device_index))
            for name in self.inputs:
                array = np.ascontiguousarray(feeds[name], dtype=np.float32)
                staged = self._host_buffer(name, array.shape)
                staged[...] = array
                ptr = self._device_buffer(name, array.nbytes)
                _check(cudart.cudaMemcpyAsync(ptr, staged.ctypes.data, array.nbytes, h2d, self.stream))
                if not self.context.set_input_shape(name, array.shape):
                    raise DnrtError(
                        f"{self.label}: shape {array.shape} of {name} is outside the engine's profile"
                    )
                self.context.set_tensor_address(name, ptr)
            results = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                ptr = self._device_buffer(name, max(int(np.prod(shape)) * 4, 4))
                self.context.set_tensor_address(name, ptr)
                results.append((name, shape, ptr))
            if not self.context.execute_async_v3(int(self.stream)):
                raise DnrtError(f"{self.label}: TensorRT execution failed")
            out = {}
            for name, shape, ptr in results:
                if wanted is not None and name not in wanted:
                    continue
                staged = self._host_buffer("out:" + name, shape)
                _check(cudart.cudaMemcpyAsync(staged.ctypes.data, ptr, staged.nbytes, d2h, self.stream))
                out[name] = staged
            _check(cudart.cudaEventRecord(self.done, self.stream))
            _check(cudart.cudaEventSynchronize(self.done))
            # Copy out of the pinned staging buffers: the next call reuses them.
            return {name: staged.copy() for name, staged in out.items()}

    def close(self) -> None:
        cudart = self.cudart
        cudart.cudaSetDevice(self.device_index)
        # A run that failed half-way may have left copies queued on the stream: let them finish
        # before their buffers go.
        cudart.cudaStreamSynchronize(self.stream)
        for ptr, _ in self.device.values():
            cudart.cudaFree(ptr)
        self.host.clear()
        for ptr, _ in self.pinned.values():
            cudart.cudaFreeHost(ptr)
        self.device.clear()
        self.pinned.clear()
        cudart.cudaEventDestroy(self.done)
        cudart.cudaStreamDestroy(self.stream)
        self.context = None


class TrtBackend(Backend):
    name = "trt"
    #: collect and infer run on separate streams, so the scheduler may call them concurrently.
    concurrent_passes = True

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "fp32",
        batch: int = 4,
        tile: int | None = None,
        margin: int | None = None,
        device_index: int = 0,
        plugin: str | None = None,
        workspace_mb: int = 4096,
        threads: int | None = None,
    ) -> None:
        super().__init__(bundle)
        if precision not in ("fp32", "fp16"):
            raise DnrtError(f"unknown precision {precision!r} (expected fp32 or fp16)")
        self.precision = precision
        tile = tile or self.manifest.tile
        margin = self.manifest.margin if margin is None else margin
        self.profile = Profile(
            size=tile + 2 * margin, min_size=min(tile, tile + 2 * margin), batch=max(1, batch)
        )
        self.device_index = device_index
        self.plugin_path = plugin
        self.workspace = workspace_mb << 20
        self.stats_engine: _Engine | None = None
        self.dense_engine: _Engine | None = None

    # -- building -------------------------------------------------------------------------
    def _load_plugin(self, trt: Any, logger: Any) -> None:
        from dnrt.kernels import find_library

        path = self.plugin_path or find_library(PLUGIN_LIBRARY)
        if path is None:
            raise DnrtError(
                f"{PLUGIN_LIBRARY} not found: build it with `dnrt build-plugins --tensorrt-include ...` "
                "or set DNRT_PLUGIN_DIR"
            )
        trt.init_libnvinfer_plugins(logger, "")
        registry = trt.get_plugin_registry()
        registry.load_library(str(path))
        if registry.get_creator(OP_TYPE, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            raise DnrtError(
                f"{path} loaded but registers no DenseNorm creator in namespace {PLUGIN_NAMESPACE}"
            )

    def engine_key(self, graph: bytes, gpu: str, capability: str, trt_version: str) -> str:
        digest = hashlib.sha256(graph).hexdigest()[:16]
        safe_gpu = "".join(ch if ch.isalnum() else "-" for ch in gpu)
        return f"{digest}_{safe_gpu}_sm{capability}_trt{trt_version}_{self.precision}_{self.profile.key()}"

    def _build(
        self,
        trt: Any,
        logger: Any,
        graph: bytes,
        input_shapes: dict[str, tuple[tuple, tuple, tuple]],
        timing_path: Path,
    ) -> bytes:
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(graph):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise DnrtError(f"TensorRT could not parse the graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
            # Statistics stay float32: keep reductions (mean, variance) out of fp16.
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            for i in range(network.num_layers):
                layer = network.get_layer(i)
                if layer.type == trt.LayerType.REDUCE:
                    layer.precision = trt.float32
                    layer.set_output_type(0, trt.float32)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in input_shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
        config.set_timing_cache(timing, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise DnrtError("TensorRT failed to build an engine (see its log above)")
        timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)

    def _engine(self, trt: Any, logger: Any, path: Path, which: str, gpu: str, capability: str) -> _Engine:
        graph = path.read_bytes()
        if which == "dense":
            graph = prepare_onnx_for_tensorrt(graph, path.parent, str(path))
        else:
            import onnx

            check_external_data(onnx.load_from_string(graph), path.parent, str(path))
        p = self.profile
        cin = self.manifest.in_channels
        channels = self.manifest.total_channels
        shapes: dict[str, tuple[tuple, tuple, tuple]] = {
            "tiles": (
                (1, cin, p.min_size, p.min_size),
                (p.batch, cin, p.size, p.size),
                (p.batch, cin, p.size, p.size),
            )
        }
        if which == "dense":
            for name in ("nbr_mean", "nbr_std"):
                shapes[name] = ((1, channels, 3, 3), (p.batch, channels, 3, 3), (p.batch, channels, 3, 3))
        key = self.engine_key(graph, gpu, capability, trt.__version__)
        engine_path = cache_dir() / f"{which}_{key}.engine"
        if not engine_path.is_file():
            data = self._build(
                trt, logger, graph, shapes, cache_dir() / f"timing_{gpu.replace(' ', '-')}.cache"
            )
            tmp = engine_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, engine_path)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise DnrtError(f"could not deserialize {engine_path}; delete it to rebuild")
        return _Engine(trt, engine, _cudart(), which, self.device_index)

    def activate(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise DnrtError(
                "the TensorRT backend needs the tensorrt Python package (NVIDIA's distribution; "
                "it is not on PyPI for every platform); use --backend ort or torch-cuda"
            ) from None
        cudart = _cudart()
        _check(cudart.cudaSetDevice(self.device_index))
        props = _check(cudart.cudaGetDeviceProperties(self.device_index))
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        capability = f"{props.major}{props.minor}"
        self.gpu_name = gpu
        logger = trt.Logger(trt.Logger.WARNING)
        self._load_plugin(trt, logger)
        self._engine_context = (trt, logger, gpu, capability)
        self.stats_engine = self._engine(trt, logger, self.bundle.stats_graph, "stats", gpu, capability)
        # Building an engine takes minutes the first time: IN (expect_graphs) never runs dense.
        if self.expected_graphs is None or "dense" in self.expected_graphs:
            self._dense_engine()
        super().activate()

    def _dense_engine(self) -> _Engine:
        if self.dense_engine is None:
            trt, logger, gpu, capability = self._engine_context
            self.dense_engine = self._engine(trt, logger, self.bundle.dense_graph, "dense", gpu, capability)
        return self.dense_engine

    def deactivate(self) -> None:
        for engine in (self.stats_engine, self.dense_engine):
            if engine is not None:
                engine.close()
        self.stats_engine = self.dense_engine = None
        super().deactivate()

    def describe(self) -> str:
        import tensorrt as trt

        return f"TensorRT {trt.__version__} on {getattr(self, 'gpu_name', 'GPU')}, {self.precision}"

    # -- the two passes -------------------------------------------------------------------
    def _batched(
        self,
        engine: _Engine,
        batched: dict[str, np.ndarray],
        fixed: dict[str, np.ndarray] | None = None,
        wanted: Collection[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run in chunks of at most the profile's batch; ``fixed`` inputs are not sliced."""
        fixed = fixed or {}
        n = next(iter(batched.values())).shape[0]
        step = self.profile.batch
        if n <= step:
            return engine.run({**batched, **fixed}, wanted)
        parts = [
            engine.run({**{k: v[i : i + step] for k, v in batched.items()}, **fixed}, wanted)
            for i in range(0, n, step)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def collect(
        self, tiles: np.ndarray, flavour: CollectFlavour, *, image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        if self.stats_engine is None:
            raise DnrtError("the TensorRT backend is used before activate()")
        wanted = ("image", "tile_mean", "tile_std") if image else ("tile_mean", "tile_std")
        out = self._batched(
            self.stats_engine, {"tiles": tiles}, {"collect_params": flavour.as_array()}, wanted
        )
        return (out["image"] if image else None), out["tile_mean"], out["tile_std"]

    def infer(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        if self.stats_engine is None:
            raise DnrtError("the TensorRT backend is used before activate()")
        out = self._batched(self._dense_engine(), {"tiles": tiles, "nbr_mean": nbr_mean, "nbr_std": nbr_std})
        return out["image"]
