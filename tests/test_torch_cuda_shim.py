"""The torch-cuda backend's stream logic on the torch.cuda shim (tests/fake_torch_cuda.py).

PyTorch here is the CPU build; the shim gives it CUDA streams and events that check ordering,
so the torch-cuda code path (two streams, the weights' ready event, pinned asynchronous
uploads) runs in ``make test``. The numbers come from the CPU kernels: what this proves is the
host-side logic, not CUDA's arithmetic (that needs a GPU: ``pytest -m gpu``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import fake_torch_cuda  # noqa: E402

from dnrt.data.synthetic import render_region  # noqa: E402
from dnrt.errors import DnrtError  # noqa: E402
from dnrt.runtime.api import Translator  # noqa: E402
from dnrt.semantics import collect_flavour  # noqa: E402


@pytest.fixture
def shim(monkeypatch: pytest.MonkeyPatch):
    state = fake_torch_cuda.install(monkeypatch)
    import dnrt.runtime.backends as registry

    real = registry._cuda_visible
    monkeypatch.setattr(registry, "_cuda_visible", lambda kind: kind == "torch" or real(kind))
    return state


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return render_region(0, 4096, 4096, 1800, 1900, 1800, 1930, stain="he")  # 4 x 5 tiles of 32 px


@pytest.mark.parametrize("schedule", ["streaming", "two-pass"])
def test_torch_cuda_on_the_shim_matches_ort(shim, small_bundle_path, tissue, schedule: str) -> None:
    with Translator(small_bundle_path, mode="dn", backend="ort", batch=2) as ort:
        want = ort.translate(tissue).astype(np.int16)
    with Translator(small_bundle_path, mode="dn", schedule=schedule, backend="torch-cuda", batch=2) as t:
        backend = t.backend
        assert backend.name == "torch-cuda" and backend.concurrent_passes
        assert fake_torch_cuda.DEVICE_NAME in backend.describe()
        got = t.translate(tissue).astype(np.int16)
        streams = dict(backend.streams)
    assert np.abs(got - want).max() <= 1
    # Two distinct pass streams, neither the device's default one, each waited on the weights.
    names = {k: s.name for k, s in streams.items()}
    assert len(set(names.values())) == 2 and "default" not in names.values()
    ledger = shim.ledger
    assert ("weights", "default") in ledger and ("record", "default") in ledger
    assert all(("wait", n) in ledger for n in names.values())
    # Each pass uploads on its own stream: the collect stream carries the first pass, the infer
    # stream the dense one; nothing of a pass runs on the default stream.
    uploads = {s for kind, s in ledger if kind == "upload"}
    assert uploads == set(names.values())
    # Deactivation drains both streams before the model goes.
    assert all(("synchronize", n) in ledger for n in names.values())
    assert backend.streams == {} and backend.model is None


def test_the_shim_catches_a_pass_stream_that_does_not_wait_for_the_weights(
    shim, monkeypatch, small_bundle_path
) -> None:
    """Without the ready event (the code before this change), the first pass would read
    weights still being uploaded on the default stream: the shim refuses it."""
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.torch_backend import TorchBackend

    def no_wait(self, torch) -> None:
        self.streams = {"collect": torch.cuda.Stream(self.device), "infer": torch.cuda.Stream(self.device)}

    monkeypatch.setattr(TorchBackend, "_create_streams", no_wait)
    with (
        TorchBackend(load_bundle(small_bundle_path), device="cuda") as backend,
        pytest.raises(fake_torch_cuda.FakeCudaMisuse, match="without waiting"),
    ):
        backend.collect(np.zeros((1, 3, 48, 48), np.float32), collect_flavour("dn"))


def test_the_shim_refuses_pageable_async_copies_and_bad_types(shim) -> None:
    x = torch.zeros(4)
    with pytest.raises(fake_torch_cuda.FakeCudaMisuse, match="pin_memory"):
        x.to("cuda", non_blocking=True)
    assert x.pin_memory().to(torch.device("cuda"), non_blocking=True).device.type == "cpu"
    with pytest.raises(TypeError):
        torch.cuda.Stream(device=1.5)
    with pytest.raises(ValueError, match="cuda device"):
        torch.cuda.Stream(torch.device("cpu"))
    with pytest.raises(TypeError):
        torch.cuda.Event(enable_timing="yes")
    stream = torch.cuda.Stream()
    with pytest.raises(fake_torch_cuda.FakeCudaMisuse, match="never recorded"):
        stream.wait_event(torch.cuda.Event())
    with pytest.raises(TypeError):
        stream.wait_stream("default")
    with pytest.raises(AttributeError):
        stream.wait_for(torch.cuda.Event())  # not PyTorch's name


def test_torch_cuda_lifecycle_on_the_shim(shim, monkeypatch, small_bundle_path) -> None:
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends import get_backend
    from dnrt.runtime.backends.torch_backend import TorchBackend

    backend = get_backend("torch-cuda", load_bundle(small_bundle_path), precision="bf16")
    with backend:
        streams = dict(backend.streams)
        backend.activate()
        assert backend.streams == streams and len(streams) == 2
    with pytest.raises(DnrtError, match="torch-cuda backend is not active: infer"):
        backend.infer(np.zeros((1, 3, 48, 48), np.float32), np.zeros((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))

    # Stream creation fails after the model is on the device: the model is released.
    def broken(self, torch) -> None:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(TorchBackend, "_create_streams", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        backend.activate()
    assert not backend.active and backend.model is None and backend.streams == {}
