"""ONNX Runtime backend: the bundle's two graphs as two InferenceSessions.

The DenseNorm nodes of dense.onnx are custom-domain nodes that carry a
function body of standard ops; ONNX Runtime inlines it, so the CPU and CUDA
execution providers run the bundle with no custom kernel.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from dnrt.bundle import Bundle
from dnrt.errors import DnrtError, first_line
from dnrt.runtime.backends.base import Backend, BackendContext
from dnrt.semantics import CollectFlavour

DEVICES = ("cpu", "cuda")
#: Graph I/O names (dnrt/bundle.py documents them).
STATS_INPUTS = ("tiles", "collect_params")
STATS_OUTPUTS = ("image", "tile_mean", "tile_std")
#: collect.onnx: the statistics only.
COLLECT_OUTPUTS = ("tile_mean", "tile_std")
DENSE_INPUTS = ("tiles", "nbr_mean", "nbr_std")
DENSE_OUTPUTS = ("image",)


_ARENA_LOCK = threading.Lock()
_ARENA_STATE: list[bool] = []


def _shared_cpu_arena() -> bool:
    """Register (once per process) a CPU arena that all sessions share and that grows by exactly
    what is requested; False when this onnxruntime cannot, and sessions keep their own."""
    with _ARENA_LOCK:
        if not _ARENA_STATE:
            import onnxruntime as ort

            try:
                config = ort.OrtArenaCfg(0, 1, -1, -1)  # no cap, kSameAsRequested, defaults
                info = ort.OrtMemoryInfo(
                    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
                )
                ort.create_and_register_allocator(info, config)
                _ARENA_STATE.append(True)
            except Exception:
                # A second registration (another library in this process) is accepted (checked with
                # onnxruntime 1.32), so a failure means this build cannot share an arena: sessions
                # keep their own.
                _ARENA_STATE.append(False)
        return _ARENA_STATE[0]


#: Oldest ONNX Runtime that runs bundles: < 1.19 refuses ONNX IR version 10 (the exporter's),
#: 1.19-1.21 reject some valid graphs in an optimizer pass (GatherSliceToSplitFusion).
MIN_VERSION = (1, 22)


def _check_version(version: str) -> None:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_VERSION:
        raise DnrtError(
            f"onnxruntime {version} is too old for dnrt bundles; "
            f"pip install -U 'onnxruntime>={MIN_VERSION[0]}.{MIN_VERSION[1]}'"
        )


class OrtBackend(Backend):
    """ONNX Runtime on the CPU or CUDA execution provider.

    Collect and infer may run at the same time (two sessions; ``run`` releases the GIL), each
    session then getting a share of the CPU threads (:meth:`set_concurrency`). On the CPU
    that is opt-in (``--overlap``): it helps on a loaded machine but costs time and memory on a
    quiet one (benchmarks/README.md), so ``concurrent_passes`` is on for CUDA only.
    """

    name = "ort"
    #: Tiles per call when the user does not say: on the CPU one tile at a time is fastest (the
    #: working set stays in cache) and needs the least memory.
    preferred_batch = 1

    def __init__(
        self,
        bundle: Bundle,
        context: BackendContext | None = None,
        device: str = "cpu",
        **context_fields: Any,
    ) -> None:
        super().__init__(bundle, context, **context_fields)
        precision = self.context.precision
        if precision != "fp32":
            # The bundle's graphs are float32; a half-precision ONNX graph would be a second export.
            raise DnrtError(
                f"the ONNX Runtime backend runs fp32 only (asked for {precision}); "
                "use torch for bf16 on the CPU, torch-cuda or trt on a GPU"
            )
        self.device_index = self.context.device_index
        if device not in DEVICES:
            raise DnrtError(f"unknown ONNX Runtime device {device!r} (expected one of {', '.join(DEVICES)})")
        self.device = device
        self.threads = self.context.threads
        self.name = "ort-cuda" if device == "cuda" else "ort"
        # Measured on a quiet 2-core machine (benchmarks/results/cpu-ort-demo-3024x4302-dn-vs-in.md):
        # overlapped passes on split thread pools took 78.0 s and 760 MB against 74.2 s and
        # 591 MB one after the other, so the CPU default is serial; --overlap still splits.
        self.concurrent_passes = device == "cuda"
        self.preferred_batch = 4 if device == "cuda" else 1
        self._concurrent = False
        self._stats = None
        self._collect = None
        self._dense = None
        self._lazy_lock = threading.Lock()

    #: Below this many norm-layer activations per tile a network is too small to split across
    #: cores (see :meth:`default_threads`).
    SMALL_NETWORK_ACTIVATIONS = 2_000_000

    @property
    def total_threads(self) -> int:
        return self.threads or self.default_threads()

    def tile_activations(self) -> int:
        """Values the network's norm layers see per tile of the bundle's size: a measure of its work per call."""
        size = self.manifest.tile + 2 * self.manifest.margin
        return sum(layer.channels * (size // layer.stride) ** 2 for layer in self.manifest.layers)

    def default_threads(self) -> int:
        """Intra-op threads when the user does not say: every core, except for a tiny network.

        A tiny network's ops are too short to share out, and the reader and writer threads
        need the other cores more: a 3-channel network (1x1 conv, one norm) runs no faster on
        two threads than on one, while the official generator gains from every core.
        """
        cores = os.cpu_count() or 1
        if self.device == "cpu" and self.tile_activations() < self.SMALL_NETWORK_ACTIVATIONS:
            return 1
        return cores

    def session_threads(self, graph: str) -> int:
        """Intra-op threads of the ``stats`` or ``dense`` session: all cores, or a share of them
        when the passes overlap (the dense graph is the heavier one and gets the odd core).

        Changing thread counts does not change the numbers: ONNX Runtime's CPU kernels were
        checked to give bit-identical results for 1-4 threads on the official generator, which
        is what keeps streaming (split) and two-pass (all threads) bit-identical.
        """
        total = self.total_threads
        if not (self._concurrent and self.device == "cpu") or total < 2:
            return total
        dense = -(-total // 2)
        return dense if graph == "dense" else total - dense

    def set_concurrency(self, concurrent: bool) -> None:
        """Size the sessions for passes that run one at a time or side by side."""
        if concurrent != self._concurrent:
            self._concurrent = concurrent
            if self.active:
                self.deactivate()
                self.activate()

    #: Channels per block of ONNX Runtime's blocked (NCHWc) CPU convolution layout: 8 with
    #: AVX2, 16 with AVX-512.
    NCHWC_BLOCK = 8

    def blocked_layout_pays(self) -> bool:
        """Whether to let ONNX Runtime rewrite the CPU graph into its blocked NCHWc layout
        (``ORT_ENABLE_ALL``) rather than stop at ``ORT_ENABLE_EXTENDED``.

        The rewrite pads every convolution to whole channel blocks and reorders tensors in
        and out of it: it speeds up the official generator (more, the wider it is) and slows a
        3-channel model (1x1 conv, one norm) down, whose convolutions would be computed on
        channels padded to several times their number.
        The bundle's norm layers tell how wide the network is.
        """
        if self.device != "cpu":
            return True
        widest = max((layer.channels for layer in self.manifest.layers), default=0)
        return widest >= self.NCHWC_BLOCK

    # -- lifecycle ---------------------------------------------------------------------
    def _providers(self) -> list:
        import onnxruntime as ort

        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DnrtError(
                    "the ort-cuda backend needs onnxruntime-gpu and a CUDA GPU; this onnxruntime offers "
                    f"{', '.join(ort.get_available_providers())} (use --backend ort for the CPU)"
                )
            return [("CUDAExecutionProvider", {"device_id": self.device_index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _session(self, path, graph: str):
        import onnxruntime as ort

        _check_version(ort.__version__)
        options = ort.SessionOptions()
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.blocked_layout_pays()
            else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        )
        options.intra_op_num_threads = self.session_threads(graph)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initializers etc. are noise to users
        # Idle intra-op threads sleep instead of spinning: the reader and writer threads need those
        # cores (spinning doubled the CPU time of a trivial graph and made it slower, not faster).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device == "cpu":
            # Memory: per-session arenas with memory patterns peak about twice as high and grow on
            # the second run; one shared arena without patterns does not, at the same speed.
            options.enable_mem_pattern = False
            if _shared_cpu_arena():
                options.add_session_config_entry("session.use_env_allocators", "1")
        # No dnrt check of external-data locations here: it needs the onnx package, whose import
        # installs a SIGINT handler inside an embedding C application; ONNX Runtime itself
        # refuses absolute and escaping locations (tests/test_hostile.py).
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=self._providers())
        except DnrtError:
            raise
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise DnrtError(f"cannot load {path}: {first_line(exc, empty=type(exc).__name__)}") from None

    def activate_impl(self) -> None:
        """Load the sessions of the expected graphs (``expect_graphs``); when nobody said, the
        dense one, the others on first use. Session creation is a sizeable part of a short run
        (0.3-0.8 s each for the 64-feature generator), so IN never builds dense.onnx."""
        graphs = self.expected_graphs if self.expected_graphs is not None else frozenset({"dense"})
        if "dense" in graphs:
            self._dense_session()
        for graph in sorted(graphs - {"dense"}):
            self._collect_session(image=graph == "stats")

    def deactivate_impl(self) -> None:
        with self._lazy_lock:
            self._stats = None
            self._collect = None
            self._dense = None

    def _dense_session(self):
        with self._lazy_lock:
            if self._dense is None:
                session = self._session(self.bundle.dense_graph, "dense")
                self._check_io("dense", session)
                self._dense = session
            return self._dense

    def _collect_session(self, image: bool):
        """The session a collect call needs, created on first use: stats.onnx when the image is
        wanted (IN), else the bundle's statistics-only collect.onnx (KIN, DN, TIN's thumbnail),
        so a DN run never holds the weights of a session it does not use."""
        with self._lazy_lock:
            if image or self.bundle.collect_graph is None:
                if self._stats is None:
                    session = self._session(self.bundle.stats_graph, "stats")
                    self._check_io("stats", session)
                    self._stats = session
                return self._stats
            if self._collect is None:
                session = self._session(self.bundle.collect_graph, "stats")
                self._check_io("collect", session)
                self._collect = session
            return self._collect

    def _check_io(self, name: str, session) -> None:
        inputs, outputs = {
            "stats": (STATS_INPUTS, STATS_OUTPUTS),
            "collect": (STATS_INPUTS, COLLECT_OUTPUTS),
            "dense": (DENSE_INPUTS, DENSE_OUTPUTS),
        }[name]
        have_in = {i.name for i in session.get_inputs()}
        have_out = {o.name for o in session.get_outputs()}
        if not set(inputs) <= have_in or not set(outputs) <= have_out:
            raise DnrtError(
                f"model bundle {self.bundle.path}: {name}.onnx has inputs {sorted(have_in)} and outputs "
                f"{sorted(have_out)}; expected {sorted(inputs)} -> {sorted(outputs)}"
            )
        # Validated bundles (issue 16): the graphs' fixed dimensions must agree with the manifest
        # (a lying manifest would otherwise fail deep inside a run, or mis-slice the statistics).
        manifest = self.bundle.manifest
        expected_dims = {
            "tiles": (1, manifest.in_channels, "in_channels"),
            "image": (1, manifest.out_channels, "out_channels"),
            "tile_mean": (1, manifest.total_channels, "the layers' channels"),
            "tile_std": (1, manifest.total_channels, "the layers' channels"),
            "nbr_mean": (1, manifest.total_channels, "the layers' channels"),
            "nbr_std": (1, manifest.total_channels, "the layers' channels"),
        }
        for arg in [*session.get_inputs(), *session.get_outputs()]:
            if arg.name not in expected_dims:
                continue
            axis, want, field = expected_dims[arg.name]
            shape = list(arg.shape or [])
            got = shape[axis] if len(shape) > axis else None
            if isinstance(got, int) and got != want:
                raise DnrtError(
                    f"model bundle {self.bundle.path}: {name}.onnx declares {arg.name} with {got} channels "
                    f"but the manifest says {want} ({field})"
                )

    def describe(self) -> str:
        import onnxruntime as ort

        if self.device == "cuda":
            where = "CUDA"
        elif self._concurrent:
            where = (
                f"CPU, collect and infer side by side on {self.session_threads('stats')} + "
                f"{self.session_threads('dense')} threads"
            )
        else:
            n = self.total_threads
            where = f"CPU, {n} thread{'s' if n != 1 else ''}"
        return f"onnxruntime {ort.__version__} ({where})"

    # -- the two passes ----------------------------------------------------------------
    def collect_impl(
        self, tiles: np.ndarray, flavour: CollectFlavour, *, image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        session = self._collect_session(image)
        feeds = {"tiles": np.ascontiguousarray(tiles, np.float32), "collect_params": flavour.as_array()}
        if image:
            out_image, mean, std = session.run(list(STATS_OUTPUTS), feeds)
            return out_image, mean, std
        mean, std = session.run(list(COLLECT_OUTPUTS), feeds)
        return None, mean, std

    def infer_impl(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        (image,) = self._dense_session().run(
            ["image"],
            {
                "tiles": np.ascontiguousarray(tiles, np.float32),
                "nbr_mean": np.ascontiguousarray(nbr_mean, np.float32),
                "nbr_std": np.ascontiguousarray(nbr_std, np.float32),
            },
        )
        return image
