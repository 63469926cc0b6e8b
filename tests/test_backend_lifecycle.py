"""One lifecycle for every backend (runtime/backends/base.py): idempotent activate/deactivate, a
failed activation releases what it built, use while inactive is a clear error, the job context
arrives as one typed object.

ort and torch run here on the CPU; trt on the strict fakes (tests/fake_tensorrt.py,
fake_cudart.py); torch-cuda on the torch.cuda shim (tests/test_torch_cuda_shim.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fakes import FakeBackend, fake_bundle

# The fixture of the TensorRT fakes (tensorrt and cuda.bindings.runtime swapped in).
from test_trt_fakes import fake_gpu  # noqa: F401

from dnrt.errors import DnrtError
from dnrt.runtime.backends.base import BackendContext
from dnrt.semantics import collect_flavour


class _Recording(FakeBackend):
    """The numpy fake backend, counting lifecycle calls, failing on demand."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(fake_bundle())
        self.fail = fail
        self.events: list[str] = []
        self.resource: object | None = None

    def activate_impl(self) -> None:
        self.events.append("activate")
        self.resource = object()  # built before the failure: must be released
        if self.fail:
            raise RuntimeError("engine build failed half-way")

    def deactivate_impl(self) -> None:
        self.events.append("deactivate")
        self.resource = None


def _tiles(n: int = 1, size: int = 32) -> np.ndarray:
    return np.zeros((n, 3, size, size), np.float32)


def test_activation_is_idempotent_and_a_context_manager() -> None:
    backend = _Recording()
    backend.deactivate()  # never activated: nothing to do
    assert backend.events == []
    with backend as same:
        assert same is backend and backend.active
        backend.activate()
        assert backend.events == ["activate"]
        backend.collect(_tiles(), collect_flavour("in"))
    assert not backend.active and backend.events == ["activate", "deactivate"]
    backend.deactivate()
    assert backend.events == ["activate", "deactivate"]


def test_failed_activation_releases_and_can_be_retried() -> None:
    backend = _Recording(fail=True)
    with pytest.raises(RuntimeError, match="half-way"):
        backend.activate()
    assert not backend.active and backend.resource is None
    assert backend.events == ["activate", "deactivate"]
    backend.fail = False
    backend.activate()
    assert backend.active and backend.resource is not None


def test_use_while_inactive_is_a_clear_error() -> None:
    backend = _Recording()
    with pytest.raises(DnrtError, match="fake backend is not active: collect\\(\\) needs activate"):
        backend.collect(_tiles(), collect_flavour("in"))
    with backend:
        pass
    mean = np.zeros((1, backend.manifest.total_channels, 3, 3), np.float32)
    with pytest.raises(DnrtError, match="not active: infer\\(\\)"):
        backend.infer(_tiles(), mean, mean + 1)


def test_context_is_one_frozen_typed_object() -> None:
    context = BackendContext(threads=2, batch=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        context.threads = 4  # type: ignore[misc]
    assert context.replace(batch=None, precision="fp16") == BackendContext(
        threads=2, batch=3, precision="fp16"
    )
    with pytest.raises(TypeError, match="workspace"):
        context.replace(workspace=1)
    with pytest.raises(DnrtError, match="threads must be at least 1"):
        BackendContext(threads=0)
    backend = FakeBackend(fake_bundle())
    assert backend.context == BackendContext() and backend.preferred_batch == 4
    # Optional features are declared on the ABC: the defaults are harmless no-ops.
    assert backend.set_concurrency(True) is None and backend.concurrent_passes is False


# --------------------------------------------------------------------------- ONNX Runtime


def test_ort_lifecycle(small_bundle_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends import get_backend
    from dnrt.runtime.backends.ort import OrtBackend

    bundle = load_bundle(small_bundle_path)
    backend = get_backend("ort", bundle, context=BackendContext(threads=1, tile=32))
    assert isinstance(backend, OrtBackend) and backend.threads == 1
    backend.expect_graphs(frozenset({"stats", "dense"}))
    backend.activate()
    sessions = (backend._stats, backend._dense)
    backend.activate()  # a second activation builds nothing
    assert (backend._stats, backend._dense) == sessions and None not in sessions
    backend.deactivate()
    assert (backend._stats, backend._dense) == (None, None)
    with pytest.raises(DnrtError, match="ort backend is not active"):
        backend.collect(_tiles(size=48), collect_flavour("in"))

    # The second session fails to load: the first one is released, nothing stays half-built.
    real = OrtBackend._session
    made = []

    def failing(self, path, graph):
        if made:
            raise DnrtError(f"cannot load {path}: broken")
        made.append(graph)
        return real(self, path, graph)

    monkeypatch.setattr(OrtBackend, "_session", failing)
    with pytest.raises(DnrtError, match="broken"):
        backend.activate()
    assert made == ["dense"] and not backend.active
    assert (backend._stats, backend._collect, backend._dense) == (None, None, None)


# --------------------------------------------------------------------------- PyTorch on the CPU


def test_torch_lifecycle(small_bundle_path) -> None:
    pytest.importorskip("torch")
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends import get_backend

    bundle = load_bundle(small_bundle_path)
    backend = get_backend("torch", bundle, context=BackendContext(threads=1))
    with backend:
        model = backend.model
        backend.activate()
        assert backend.model is model is not None
        _, mean, _ = backend.collect(_tiles(size=48), collect_flavour("in"))
        assert mean.shape == (1, bundle.manifest.total_channels)
    assert backend.model is None
    with pytest.raises(DnrtError, match="torch backend is not active: collect"):
        backend.collect(_tiles(size=48), collect_flavour("in"))


def test_torch_deactivate_impl_drops_a_partial_model(small_bundle_path, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.torch_backend import TorchBackend

    backend = TorchBackend(load_bundle(small_bundle_path), threads=1)
    real = torch.nn.Module.to

    def failing(self, *args, **kwargs):
        if "memory_format" in kwargs:
            raise RuntimeError("out of memory")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        backend.activate()
    assert backend.model is None and not backend.active


# --------------------------------------------------------------------------- TensorRT on the fakes


def test_trt_lifecycle_on_fakes(fake_gpu, small_bundle_path, monkeypatch) -> None:  # noqa: F811
    import fake_cudart

    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends import get_backend

    bundle = load_bundle(small_bundle_path)
    backend = get_backend("trt", bundle, context=BackendContext(batch=2))
    assert backend.profile.batch == 2
    with backend:
        engine = backend.stats_engine
        backend.activate()
        assert backend.stats_engine is engine is not None
    assert backend.stats_engine is None and backend.dense_engine is None
    assert fake_cudart.live_allocations() == {"pinned": 0, "device": 0, "streams": 0, "events": 0}
    with pytest.raises(DnrtError, match="trt backend is not active: collect"):
        backend.collect(_tiles(size=48), collect_flavour("in"))

    # The dense engine fails to build after the stats engine (its stream, event) exists.
    import dnrt.runtime.backends.trt as trt_module

    real = trt_module.prepare_graph

    def broken(path, which):
        if which == "dense":
            raise DnrtError("TensorRT could not parse the graph: broken")
        return real(path, which)

    monkeypatch.setattr(trt_module, "prepare_graph", broken)
    monkeypatch.setenv("DNRT_CACHE_DIR", str(fake_gpu / "empty-cache"))  # a miss: the build runs
    with pytest.raises(DnrtError, match="broken"):
        backend.activate()
    assert not backend.active and backend.stats_engine is None
    assert fake_cudart.live_allocations() == {"pinned": 0, "device": 0, "streams": 0, "events": 0}
