"""TensorRT backend: engines built from the bundle's graphs, DenseNorm on the CUDA plugin.

Written against the TensorRT 10 / 11 Python API and cuda-python (``cuda.bindings``). Neither
exists on dnrt's development machines or in CI: the host code runs there on strict fakes of
both (tests/fake_tensorrt.py, tests/fake_cudart.py), and for real only on a GPU machine.

Split as Polygraphy splits a runner from its loaders:

- ``trt_onnx``: the graph as onnx-tensorrt should see it (DenseNorm bound to the plugin);
- ``trt_build``: engine building with the shape profile, precision and timing cache, for
  TensorRT 10 (weakly typed, fp16 flag) and 11 (strongly typed only);
- ``trt_cache``: the on-disk engine cache and its key;
- ``trt_runtime``: running an engine (context, stream, event, pinned and device buffers,
  tensor types from the engine);
- this module: the backend, which loads the plugin, gets or builds the two engines and
  drives them from the scheduler's two passes.

**Two CUDA streams.** The stats engine runs on its own stream and the DN engine on another; the
scheduler calls ``collect`` and ``infer`` from two threads in streaming mode, so the statistics
of row r+1 are computed on the GPU while row r is inferred.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from dnrt.bundle import Bundle
from dnrt.errors import DnrtError
from dnrt.ops import OP_TYPE
from dnrt.runtime.backends.base import Backend, BackendContext
from dnrt.runtime.backends.trt_build import Profile, build_engine, check_precision
from dnrt.runtime.backends.trt_cache import cache_dir, cached_engine, engine_key, timing_cache_path
from dnrt.runtime.backends.trt_cuda import check, cudart
from dnrt.runtime.backends.trt_onnx import (
    PLUGIN_LIBRARY,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    prepare_graph,
    prepare_onnx_for_tensorrt,
)
from dnrt.runtime.backends.trt_runtime import EngineRunner
from dnrt.runtime.options import BACKEND_PRECISIONS
from dnrt.semantics import CollectFlavour

__all__ = [
    "PLUGIN_LIBRARY",
    "PLUGIN_NAMESPACE",
    "PLUGIN_VERSION",
    "Profile",
    "TrtBackend",
    "cache_dir",
    "prepare_onnx_for_tensorrt",
]


class TrtBackend(Backend):
    name = "trt"
    #: collect and infer run on separate streams, so the scheduler may call them concurrently.
    concurrent_passes = True

    def __init__(
        self,
        bundle: Bundle,
        context: BackendContext | None = None,
        plugin: str | None = None,
        workspace_mb: int = 4096,
        **context_fields: Any,
    ) -> None:
        super().__init__(bundle, context, **context_fields)
        precision = self.context.precision
        if precision not in BACKEND_PRECISIONS["trt"]:
            raise DnrtError(
                f"unknown precision {precision!r} (expected {' or '.join(BACKEND_PRECISIONS['trt'])})"
            )
        self.precision = precision
        tile = self.context.tile or self.manifest.tile
        margin = self.manifest.margin if self.context.margin is None else self.context.margin
        self.profile = Profile(
            size=tile + 2 * margin, min_size=min(tile, tile + 2 * margin), batch=self.context.batch or 4
        )
        self.device_index = self.context.device_index
        self.plugin_path = plugin
        self.workspace = workspace_mb << 20
        self.stats_engine: EngineRunner | None = None
        self.dense_engine: EngineRunner | None = None
        #: Which engines this activation built rather than found in the cache (tests, logs).
        self.built: list[str] = []

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

    def _engine(self, which: str) -> EngineRunner:
        """Get the ``stats`` or ``dense`` engine from the cache, building it on a miss."""
        trt, logger, gpu, capability = self._engine_context
        path = self.bundle.stats_graph if which == "stats" else self.bundle.dense_graph
        raw = path.read_bytes()
        key = engine_key(raw, gpu, capability, trt.__version__, self.precision, self.profile.key())

        def build() -> bytes:
            shapes = self.profile.shapes(which, self.manifest.in_channels, self.manifest.total_channels)
            return build_engine(
                trt,
                logger,
                prepare_graph(path, which),
                shapes,
                precision=self.precision,
                workspace=self.workspace,
                timing_cache=timing_cache_path(gpu),
            )

        plan, built = cached_engine(which, key, build)
        if built:
            self.built.append(which)
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise DnrtError(
                f"could not deserialize the cached {which} engine in {cache_dir()}; delete it to rebuild"
            )
        return EngineRunner(trt, engine, cudart(), which, self.device_index)

    def activate_impl(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise DnrtError(
                "the TensorRT backend needs the tensorrt Python package (NVIDIA's distribution; "
                "it is not on PyPI for every platform); use --backend ort or torch-cuda"
            ) from None
        check_precision(trt, self.precision)  # before minutes of building
        rt = cudart()
        check(rt.cudaSetDevice(self.device_index))
        props = check(rt.cudaGetDeviceProperties(self.device_index))
        gpu = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        capability = f"{props.major}{props.minor}"
        self.gpu_name = gpu
        logger = trt.Logger(trt.Logger.WARNING)
        self._load_plugin(trt, logger)
        self._engine_context = (trt, logger, gpu, capability)
        self.built = []
        self.stats_engine = self._engine("stats")
        # Building an engine takes minutes the first time: IN (expect_graphs) never runs dense.
        if self.expected_graphs is None or "dense" in self.expected_graphs:
            self._dense_engine()

    def _dense_engine(self) -> EngineRunner:
        if self.dense_engine is None:
            self.dense_engine = self._engine("dense")
        return self.dense_engine

    def deactivate_impl(self) -> None:
        # Also after a failed activation: whichever engines were built are closed.
        engines = (self.stats_engine, self.dense_engine)
        self.stats_engine = self.dense_engine = None
        for engine in engines:
            if engine is not None:
                engine.close()

    def describe(self) -> str:
        import tensorrt as trt

        return f"TensorRT {trt.__version__} on {getattr(self, 'gpu_name', 'GPU')}, {self.precision}"

    # -- the two passes -------------------------------------------------------------------
    def _batched(
        self,
        engine: EngineRunner,
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

    def collect_impl(
        self, tiles: np.ndarray, flavour: CollectFlavour, *, image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        if self.stats_engine is None:  # the base class only calls this on an active backend
            raise DnrtError("the TensorRT backend has no stats engine (not activated)")
        wanted = ("image", "tile_mean", "tile_std") if image else ("tile_mean", "tile_std")
        out = self._batched(
            self.stats_engine, {"tiles": tiles}, {"collect_params": flavour.as_array()}, wanted
        )
        return (out["image"] if image else None), out["tile_mean"], out["tile_std"]

    def infer_impl(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        out = self._batched(self._dense_engine(), {"tiles": tiles, "nbr_mean": nbr_mean, "nbr_std": nbr_std})
        return out["image"]
