"""A strict stand-in for the TensorRT 10 Python API (``import tensorrt``), for trt.py's tests.

Only the subset ``dnrt.runtime.backends.trt`` uses exists, with the names, parameter names and
return conventions of TensorRT's pybind11 bindings (python/src/infer/pyCore.cpp, pyGraph.cpp,
pyPlugin.cpp, parsers/pyOnnx.cpp of NVIDIA/TensorRT v10.x): every class has ``__slots__`` and
no ``__getattr__``, so a misspelt method or property is an ``AttributeError``; arguments of the
wrong type are a ``TypeError`` as pybind11 raises for an overload mismatch.

How it "runs" an engine: the serialized engine is the (parsed) ONNX model plus the optimisation
profile; ``execute_async_v3`` queues on the fake CUDA stream (``fake_cudart``) an op that reads
the inputs from fake device memory, runs the model with ONNX Runtime on the CPU and writes the
outputs back to device memory. DenseNorm nodes: the parser, like onnx-tensorrt's fallback
importer, binds a node with no local function to a plugin creator from the registry, by op type,
``plugin_version`` and ``plugin_namespace``; the fake plugin library (any file named
``libdnrt_trt_plugin.so`` given to ``load_library``) implements DenseNorm with dnrt's reference
ONNX function body (``dnrt.export.op_schema.attach_function``), so the engine computes what the
CUDA plugin is specified to compute. Precision flags are recorded, not emulated (fp16 runs fp32);
I/O tensor types are real: a network input or output set to ``float16`` makes an engine whose
``get_tensor_dtype`` says HALF and whose device buffers are read and written as fp16 bytes.

Checks made, each where TensorRT makes it (or where real TensorRT would misbehave):
profile shapes (``set_input_shape`` returns False outside min..max, as TensorRT does);
``execute_async_v3`` requires every I/O tensor's address and every input's shape to be set and
each address to hold the tensor's bytes in one live device allocation; the stream handle must be
an int (pybind11's size_t).
"""

from __future__ import annotations

import enum
import json
import threading
from pathlib import Path

import fake_cudart
import numpy as np

__version__ = "10.16.1.11"
PLUGIN_FILE = "libdnrt_trt_plugin.so"
_MAGIC = b"FAKETRT\x01"


def _check_type(name: str, value: object, *types: type) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        want = " or ".join(t.__name__ for t in types)
        raise TypeError(
            f"{name}: incompatible function arguments; expected {want}, got {type(value).__name__}"
        )


def _dims(name: str, value: object) -> tuple[int, ...]:
    """pybind11's conversion of a tuple/list (or Dims) to nvinfer1::Dims."""
    if isinstance(value, Dims):
        return value._d
    if not isinstance(value, tuple | list):
        raise TypeError(f"{name}: expected a tuple, list or Dims of ints, got {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise TypeError(f"{name}: dims must be ints, got {type(v).__name__}")
        out.append(int(v.__index__()))
    return tuple(out)


def _buffer(name: str, value: object) -> bytes:
    if isinstance(value, IHostMemory):
        return value._data
    try:
        return bytes(memoryview(value))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name}: expected a buffer, got {type(value).__name__}") from None


# --------------------------------------------------------------------------- enums, basic types


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 8


float32 = DataType.FLOAT
float16 = DataType.HALF
int32 = DataType.INT32
int64 = DataType.INT64


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    OBEY_PRECISION_CONSTRAINTS = 11
    PREFER_PRECISION_CONSTRAINTS = 12


class LayerType(enum.Enum):
    CONVOLUTION = 0
    ACTIVATION = 2
    POOLING = 3
    ELEMENTWISE = 6
    REDUCE = 14
    SHUFFLE = 16
    PLUGIN_V3 = 46
    UNARY = 9
    OTHER = 99  # the fake's bucket for the layer types trt.py never looks at


class Dims:
    __slots__ = ("_d",)

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self._d = tuple(int(v) for v in shape)

    def __len__(self) -> int:
        return len(self._d)

    def __getitem__(self, index: int) -> int:
        return self._d[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Dims):
            return self._d == other._d
        if isinstance(other, tuple | list):
            return self._d == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"({', '.join(map(str, self._d))})"


class ILogger:
    __slots__ = ("min_severity",)

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR = Severity.INTERNAL_ERROR
    ERROR = Severity.ERROR
    WARNING = Severity.WARNING
    INFO = Severity.INFO
    VERBOSE = Severity.VERBOSE


class Logger(ILogger):
    __slots__ = ("messages",)

    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        _check_type("min_severity", min_severity, ILogger.Severity)
        self.min_severity = min_severity
        self.messages: list[tuple[ILogger.Severity, str]] = []

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        self.messages.append((severity, msg))


class IHostMemory:
    """Serialized data; exposes the buffer protocol (``bytes(mem)``, ``memoryview(mem)``)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __buffer__(self, flags: int) -> memoryview:  # Python 3.12+
        return memoryview(self._data)

    def __bytes__(self) -> bytes:  # Python < 3.12 has no __buffer__ for Python classes
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------- plugins


class IPluginCreatorInterface:
    __slots__ = ("name", "plugin_version", "plugin_namespace")

    def __init__(self, name: str, version: str, namespace: str) -> None:
        self.name, self.plugin_version, self.plugin_namespace = name, version, namespace


class IPluginRegistry:
    __slots__ = ("_creators", "_libraries")

    def __init__(self) -> None:
        self._creators: dict[tuple[str, str, str], IPluginCreatorInterface] = {}
        self._libraries: list[str] = []

    def load_library(self, plugin_path: str) -> object | None:
        _check_type("plugin_path", plugin_path, str)
        path = Path(plugin_path)
        if not path.is_file():
            return None
        self._libraries.append(plugin_path)
        if path.name == PLUGIN_FILE:
            self._creators[("DenseNorm", "1", "dnrt")] = IPluginCreatorInterface("DenseNorm", "1", "dnrt")
        return object()

    def get_creator(self, type: str, version: str, plugin_namespace: str = "") -> object | None:  # noqa: A002
        for name, value in (("type", type), ("version", version), ("plugin_namespace", plugin_namespace)):
            _check_type(name, value, str)
        return self._creators.get((type, version, plugin_namespace))


_registry = IPluginRegistry()
_plugins_initialised: list[str] = []


def get_plugin_registry() -> IPluginRegistry:
    return _registry


def init_libnvinfer_plugins(logger: ILogger, namespace: str) -> bool:
    _check_type("logger", logger, ILogger)
    _check_type("namespace", namespace, str)
    _plugins_initialised.append(namespace)
    return True


def reset() -> None:
    """A fresh plugin registry (between tests)."""
    global _registry
    _registry = IPluginRegistry()
    _plugins_initialised.clear()


# --------------------------------------------------------------------------- network, parser


_REDUCE_OPS = {"ReduceMean", "ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceSumSquare"}


class ILayer:
    __slots__ = ("name", "type", "_precision", "_output_types", "num_outputs")

    def __init__(self, name: str, layer_type: LayerType, num_outputs: int) -> None:
        self.name = name
        self.type = layer_type
        self._precision = DataType.FLOAT
        self._output_types: dict[int, DataType] = {}
        self.num_outputs = num_outputs

    @property
    def precision(self) -> DataType:
        return self._precision

    @precision.setter
    def precision(self, value: DataType) -> None:
        _check_type("precision", value, DataType)
        self._precision = value

    def set_output_type(self, index: int, dtype: DataType) -> None:
        _check_type("index", index, int)
        _check_type("dtype", dtype, DataType)
        if not 0 <= index < self.num_outputs:
            raise IndexError(f"layer {self.name} has {self.num_outputs} output(s)")
        self._output_types[index] = dtype


class ITensor:
    """A network tensor. ``dtype`` is settable on network inputs and outputs (TensorRT 10's
    weakly typed networks: the I/O type the engine will have); read-only in TensorRT 11."""

    __slots__ = ("name", "_dtype", "shape")

    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...]) -> None:
        self.name = name
        self._dtype = dtype
        self.shape = Dims(shape)

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @dtype.setter
    def dtype(self, value: DataType) -> None:
        _check_type("dtype", value, DataType)
        self._dtype = value


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL}
_NUMPY_TYPES = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32}


class INetworkDefinition:
    __slots__ = ("_builder", "_model", "_layers", "_parsed", "_inputs", "_outputs")

    def __init__(self, builder: Builder) -> None:
        self._builder = builder
        self._model: bytes | None = None
        self._layers: list[ILayer] = []
        self._parsed = False
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_layer(self, index: int) -> ILayer:
        _check_type("index", index, int)
        return self._layers[index]

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_input(self, index: int) -> ITensor:
        _check_type("index", index, int)
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        _check_type("index", index, int)
        return self._outputs[index]


class OnnxParser:
    __slots__ = ("_network", "_errors")

    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        _check_type("network", network, INetworkDefinition)
        _check_type("logger", logger, ILogger)
        self._network = network
        self._errors: list[str] = []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> str:
        _check_type("index", index, int)
        return self._errors[index]

    def parse(self, model: bytes, path: str | None = None) -> bool:
        data = _buffer("model", model)
        if path is not None:
            _check_type("path", path, str)
        if self._network._parsed:
            self._errors.append("network already populated")
            return False
        import onnx

        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # noqa: BLE001 - the parser reports, it does not raise
            self._errors.append(f"not an ONNX model: {exc}")
            return False
        local = {(f.domain, f.name) for f in proto.functions}
        plugin_nodes = []
        for node in proto.graph.node:
            if node.domain not in ("", "ai.onnx") and (node.domain, node.op_type) not in local:
                attrs = {a.name: a for a in node.attribute}
                version = attrs["plugin_version"].s.decode() if "plugin_version" in attrs else "1"
                namespace = attrs["plugin_namespace"].s.decode() if "plugin_namespace" in attrs else ""
                if _registry.get_creator(node.op_type, version, namespace) is None:
                    self._errors.append(
                        f"node {node.name or node.op_type}: no importer and no plugin creator for "
                        f"{node.op_type} version {version!r} namespace {namespace!r}"
                    )
                    return False
                plugin_nodes.append(node)
        if plugin_nodes:
            # The fake DenseNorm plugin computes with dnrt's reference function body.
            from dnrt.export.op_schema import attach_function

            for node in plugin_nodes:
                kept = [a for a in node.attribute if a.name not in ("plugin_version", "plugin_namespace")]
                del node.attribute[:]
                node.attribute.extend(kept)
            proto = attach_function(proto)
        layers = []
        for i, node in enumerate(proto.graph.node):
            if node in plugin_nodes:
                kind = LayerType.PLUGIN_V3
            elif node.op_type in _REDUCE_OPS:
                kind = LayerType.REDUCE
            else:
                kind = LayerType.OTHER
            layers.append(ILayer(node.name or f"{node.op_type}_{i}", kind, len(node.output)))
        self._network._layers = layers

        def tensors(values) -> list[ITensor]:
            return [
                ITensor(
                    v.name,
                    _ONNX_TYPES.get(v.type.tensor_type.elem_type, DataType.FLOAT),
                    tuple(
                        d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
                    ),
                )
                for v in values
            ]

        self._network._inputs = tensors(proto.graph.input)
        self._network._outputs = tensors(proto.graph.output)
        self._network._model = proto.SerializeToString()
        self._network._parsed = True
        return True


# --------------------------------------------------------------------------- builder


class IOptimizationProfile:
    __slots__ = ("_shapes",)

    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: object, opt: object, max: object) -> None:  # noqa: A002
        _check_type("input", input, str)
        lo, mid, hi = _dims("min", min), _dims("opt", opt), _dims("max", max)
        if not (len(lo) == len(mid) == len(hi)) or not all(
            a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)
        ):
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        self._shapes[input] = (lo, mid, hi)


class ITimingCache:
    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._data or b"fake-timing-cache")


class IBuilderConfig:
    __slots__ = ("_pools", "_flags", "_profiles", "_timing")

    def __init__(self) -> None:
        self._pools: dict[MemoryPoolType, int] = {}
        self._flags: set[BuilderFlag] = set()
        self._profiles: list[IOptimizationProfile] = []
        self._timing: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        _check_type("pool", pool, MemoryPoolType)
        _check_type("pool_size", pool_size, int)
        self._pools[pool] = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        _check_type("flag", flag, BuilderFlag)
        self._flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        _check_type("flag", flag, BuilderFlag)
        return flag in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _check_type("profile", profile, IOptimizationProfile)
        self._profiles.append(profile)
        return len(self._profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(_buffer("serialized_timing_cache", serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _check_type("cache", cache, ITimingCache)
        _check_type("ignore_mismatch", ignore_mismatch, bool)
        self._timing = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing


class Builder:
    __slots__ = ("logger",)

    def __init__(self, logger: ILogger) -> None:
        _check_type("logger", logger, ILogger)
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _check_type("flags", flags, int)
        return INetworkDefinition(self)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None:
        _check_type("network", network, INetworkDefinition)
        _check_type("config", config, IBuilderConfig)
        if network._model is None:
            self.logger.log(ILogger.ERROR, "network has no layers")
            return None
        import onnx

        model = onnx.load_from_string(network._model)
        profile_shapes: dict[str, list[list[int]]] = {}
        for graph_input in model.graph.input:
            dims = graph_input.type.tensor_type.shape.dim
            dynamic = any(not d.HasField("dim_value") for d in dims)
            given = [p._shapes.get(graph_input.name) for p in config._profiles]
            if dynamic and (not config._profiles or given[0] is None):
                # TensorRT: "Network has dynamic or shape inputs, but no optimization profile".
                self.logger.log(
                    ILogger.ERROR, f"input {graph_input.name} is dynamic and has no profile shape"
                )
                return None
            if given and given[0] is not None:
                lo, _, hi = given[0]
                static = tuple(d.dim_value for d in dims)
                if len(lo) != len(dims) or any(
                    d.HasField("dim_value") and not (a == d.dim_value == b)
                    for d, a, b in zip(dims, lo, hi, strict=True)
                ):
                    self.logger.log(ILogger.ERROR, f"profile of {graph_input.name} does not fit {static}")
                    return None
                profile_shapes[graph_input.name] = [list(lo), list(hi)]
            else:
                static = [d.dim_value for d in dims]
                profile_shapes[graph_input.name] = [static, static]
        header = json.dumps(
            {
                "profile": profile_shapes,
                "inputs": [i.name for i in model.graph.input],
                "outputs": [o.name for o in model.graph.output],
                "flags": sorted(f.name for f in config._flags),
                # The engine's I/O types: what the network's tensors were set to.
                "dtypes": {t.name: t.dtype.name for t in network._inputs + network._outputs},
            }
        ).encode()
        return IHostMemory(_MAGIC + len(header).to_bytes(4, "little") + header + network._model)


# --------------------------------------------------------------------------- runtime, engine


class Runtime:
    __slots__ = ("logger",)

    def __init__(self, logger: ILogger) -> None:
        _check_type("logger", logger, ILogger)
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = _buffer("serialized_engine", serialized_engine)
        if not data.startswith(_MAGIC):
            self.logger.log(ILogger.ERROR, "engine plan file is corrupted")
            return None
        n = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
        header = json.loads(data[len(_MAGIC) + 4 : len(_MAGIC) + 4 + n])
        return ICudaEngine(self, header, data[len(_MAGIC) + 4 + n :])


class ICudaEngine:
    __slots__ = ("_runtime", "_header", "_model", "_session", "_session_lock", "_device")

    def __init__(self, runtime: Runtime, header: dict, model: bytes) -> None:
        self._runtime = runtime  # the engine keeps its runtime alive (py::keep_alive<0, 1>)
        self._header = header
        self._model = model
        self._session = None
        self._session_lock = threading.Lock()
        self._device = fake_cudart._device()

    @property
    def num_io_tensors(self) -> int:
        return len(self._header["inputs"]) + len(self._header["outputs"])

    def _names(self) -> list[str]:
        return self._header["inputs"] + self._header["outputs"]

    def get_tensor_name(self, index: int) -> str:
        _check_type("index", index, int)
        return self._names()[index]

    def _name(self, name: object) -> str:
        _check_type("name", name, str)
        if name not in self._names():
            raise RuntimeError(f"no I/O tensor named {name!r}")  # TensorRT logs and returns kNONE
        return name  # type: ignore[return-value]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        name = self._name(name)
        return TensorIOMode.INPUT if name in self._header["inputs"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        name = self._name(name)
        return DataType[self._header["dtypes"][name]]

    def _np(self, name: str) -> type:  # the fake's own: the numpy type of an I/O tensor's bytes
        return _NUMPY_TYPES[self.get_tensor_dtype(name)]

    def get_tensor_shape(self, name: str) -> Dims:
        name = self._name(name)
        if name in self._header["profile"]:
            lo, hi = self._header["profile"][name]
            return Dims(tuple(a if a == b else -1 for a, b in zip(lo, hi, strict=True)))
        return Dims((-1,))

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def session(self):  # the fake's own: the ONNX Runtime session that plays the GPU
        with self._session_lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                self._session = ort.InferenceSession(
                    self._model, sess_options=options, providers=["CPUExecutionProvider"]
                )
            return self._session


class IExecutionContext:
    __slots__ = ("engine", "_shapes", "_addresses", "_out_shapes")

    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._out_shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}

    def set_input_shape(self, name: str, shape: object) -> bool:
        _check_type("name", name, str)
        dims = _dims("shape", shape)
        header = self.engine._header
        if name not in header["inputs"]:
            return False
        lo, hi = header["profile"][name]
        if len(dims) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, dims, hi, strict=True)):
            self.engine._runtime.logger.log(ILogger.ERROR, f"{name}: {dims} outside the profile {lo}..{hi}")
            return False
        self._shapes[name] = dims
        return True

    def _all_shapes(self) -> dict[str, tuple[int, ...]] | None:
        inputs = self.engine._header["inputs"]
        if any(n not in self._shapes for n in inputs):
            return None
        key = tuple(self._shapes[n] for n in inputs)
        if key not in self._out_shapes:
            # Shape inference by running the model on zeros of the set shapes.
            session = self.engine.session()
            feeds = {n: np.zeros(self._shapes[n], np.float32) for n in inputs}  # the model is fp32 inside
            outs = session.run(self.engine._header["outputs"], feeds)
            self._out_shapes[key] = {
                n: tuple(o.shape) for n, o in zip(self.engine._header["outputs"], outs, strict=True)
            }
        return {**self._shapes, **self._out_shapes[key]}

    def get_tensor_shape(self, name: str) -> Dims:
        name = self.engine._name(name)
        shapes = self._all_shapes()
        if shapes is None:
            return Dims(tuple(-1 for _ in self.engine.get_tensor_shape(name)))
        return Dims(shapes[name])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        _check_type("name", name, str)
        _check_type("memory", memory, int)
        if name not in self.engine._names():
            return False
        self._addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _check_type("stream_handle", stream_handle, int)
        stream = fake_cudart._streams.get(stream_handle)
        if stream is None:
            raise fake_cudart.FakeCudaMisuse(f"execute_async_v3: 0x{stream_handle:x} is not a live stream")
        if fake_cudart._device() != self.engine._device:
            # Kernels cannot be launched from a thread whose current device is another GPU.
            raise fake_cudart.FakeCudaMisuse(
                f"execute_async_v3: this thread's current device is {fake_cudart._device()}, "
                f"the engine's {self.engine._device} (cudaSetDevice is per host thread)"
            )
        header = self.engine._header
        missing = [n for n in self.engine._names() if n not in self._addresses]
        if missing:
            raise RuntimeError(f"execute_async_v3: no address set for {missing}")
        shapes = self._all_shapes()
        if shapes is None:
            unset = [n for n in header["inputs"] if n not in self._shapes]
            raise RuntimeError(f"execute_async_v3: no input shape set for {unset}")
        blocks = []
        for name in self.engine._names():
            nbytes = int(np.prod(shapes[name])) * np.dtype(self.engine._np(name)).itemsize
            found = fake_cudart.find_device(self._addresses[name], max(nbytes, 1))
            if found is None:
                raise fake_cudart.FakeCudaMisuse(
                    f"execute_async_v3: {name} needs {nbytes} bytes at 0x{self._addresses[name]:x}, "
                    "which is not inside one live device allocation"
                )
            if found[1].device != self.engine._device:
                raise fake_cudart.FakeCudaMisuse(
                    f"execute_async_v3: {name} lives on device {found[1].device}, the engine on "
                    f"{self.engine._device}"
                )
            blocks.append(found[1])
        addresses = dict(self._addresses)
        engine = self.engine

        def run() -> None:
            # The device bytes are read and written in the engine's I/O types (fp16 image I/O);
            # the model inside computes in float32, as the fake's "GPU".
            feeds = {}
            for n in header["inputs"]:
                kind = np.dtype(engine._np(n))
                raw = fake_cudart.read_device(addresses[n], int(np.prod(shapes[n])) * kind.itemsize)
                feeds[n] = np.frombuffer(raw, kind).reshape(shapes[n]).astype(np.float32)
            outs = engine.session().run(header["outputs"], feeds)
            for n, value in zip(header["outputs"], outs, strict=True):
                data = np.ascontiguousarray(value, engine._np(n)).tobytes()
                fake_cudart.write_device(addresses[n], data)

        fake_cudart.enqueue(stream, run, blocks)
        return True
