"""A strict shim of ``torch.cuda`` streams and events on a CPU-only PyTorch, for the torch-cuda path.

:func:`install` (a pytest ``monkeypatch`` does the patching, so everything is restored after the
test) makes CPU PyTorch look like a CUDA build with one device: ``torch.cuda.is_available()`` is
true, ``torch.cuda.Stream`` / ``Event`` / ``stream`` / ``current_stream`` / ``get_device_name`` /
``synchronize`` are the fakes below, with the parameter names of PyTorch's own
(``torch/cuda/streams.py``, ``torch/cuda/__init__.py``). Tensors and modules moved ``.to("cuda")``
stay on the CPU, so the network computes with the real CPU kernels.

Work is not reordered (the CPU computes at once), so what the shim checks is the *bookkeeping*
that makes real asynchronous streams safe, and each rule is one that real CUDA breaks silently:

- **Ordering across streams.** Every device operation made through ``.to(cuda)`` is work on the
  calling thread's current stream. Weights written by ``Module.to(cuda)`` / ``Module.to(dtype)``
  on one stream may be read on another stream only after that stream waited for them
  (``Stream.wait_event`` on an event recorded after the write, or ``wait_stream``); an upload on
  a pass stream that has not is a :class:`FakeCudaMisuse`. Waiting on an event never recorded
  (a no-op in CUDA) is one too.
- **Pinned sources for asynchronous copies**: ``.to(cuda, non_blocking=True)`` from a tensor that
  did not come from ``pin_memory()`` is refused (real CUDA silently copies synchronously).
- **Streams on the right device**, and of the right types (a ``TypeError`` as pybind11 raises).

``ledger`` records every device operation as ``(kind, stream name)`` for tests to inspect.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

DEVICE_NAME = "Fake CUDA Device (torch shim)"


class FakeCudaMisuse(RuntimeError):
    """A use of the stream API that real CUDA would not report but punish (a race)."""


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.local = threading.local()
        self.ids = itertools.count(1)
        self.default = object.__new__(Stream)
        Stream._init(self.default, 0, "default")
        #: (stream, position) of the latest write of the module weights.
        self.weights: tuple[Stream, int] | None = None
        self.ledger: list[tuple[str, str]] = []


_state: _State | None = None


def _s() -> _State:
    if _state is None:
        raise RuntimeError("fake_torch_cuda.install() was not called")
    return _state


def _device_index(device: Any) -> int:
    import torch

    if device is None:
        return 0
    if isinstance(device, int) and not isinstance(device, bool):
        index = device
    elif isinstance(device, str | torch.device):
        d = torch.device(device)
        if d.type != "cuda":
            raise ValueError(f"Expected a cuda device, but got: {d}")
        index = d.index or 0
    else:
        raise TypeError(f"device: expected torch.device, str or int, got {type(device).__name__}")
    if index != 0:
        raise ValueError(f"Invalid device index {index}: the shim has one device")
    return index


class Stream:
    """``torch.cuda.Stream(device=None, priority=0)``."""

    __slots__ = ("device_index", "name", "position", "waited", "__weakref__")

    def __new__(cls, device: Any = None, priority: int = 0, **kwargs: Any) -> Stream:
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority: expected int, got {type(priority).__name__}")
        if kwargs:
            raise TypeError(f"unexpected keyword argument(s) {sorted(kwargs)}")
        self = super().__new__(cls)
        cls._init(self, _device_index(device), f"stream{next(_s().ids)}")
        return self

    def _init(self, device_index: int, name: str) -> None:
        self.device_index = device_index
        self.name = name
        self.position = 0  # operations ever queued
        self.waited: dict[int, int] = {}  # id(other stream) -> position waited for

    def wait_event(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"event: expected torch.cuda.Event, got {type(event).__name__}")
        if event.recorded is None:
            raise FakeCudaMisuse(f"{self.name} waits on an event that was never recorded (a no-op in CUDA)")
        stream, position = event.recorded
        with _s().lock:
            self.waited[id(stream)] = max(self.waited.get(id(stream), 0), position)
            _s().ledger.append(("wait", self.name))

    def wait_stream(self, stream: Stream) -> None:
        if not isinstance(stream, Stream):
            raise TypeError(f"stream: expected torch.cuda.Stream, got {type(stream).__name__}")
        self.wait_event(stream.record_event())

    def record_event(self, event: Event | None = None) -> Event:
        event = Event() if event is None else event
        event.record(self)
        return event

    def synchronize(self) -> None:
        _s().ledger.append(("synchronize", self.name))

    def query(self) -> bool:
        return True

    @property
    def cuda_stream(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<fake torch.cuda.Stream {self.name} device=cuda:{self.device_index}>"


class Event:
    """``torch.cuda.Event(enable_timing=False, blocking=False, interprocess=False)``."""

    __slots__ = ("recorded",)

    def __init__(
        self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False
    ) -> None:
        for name, value in (
            ("enable_timing", enable_timing),
            ("blocking", blocking),
            ("interprocess", interprocess),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: expected bool, got {type(value).__name__}")
        self.recorded: tuple[Stream, int] | None = None

    def record(self, stream: Stream | None = None) -> None:
        stream = current_stream() if stream is None else stream
        if not isinstance(stream, Stream):
            raise TypeError(f"stream: expected torch.cuda.Stream, got {type(stream).__name__}")
        self.recorded = (stream, stream.position)
        _s().ledger.append(("record", stream.name))

    def wait(self, stream: Stream | None = None) -> None:
        (current_stream() if stream is None else stream).wait_event(self)

    def synchronize(self) -> None:
        if self.recorded is None:
            raise FakeCudaMisuse("synchronize on an event that was never recorded")

    def query(self) -> bool:
        return True


def is_available() -> bool:
    return True


def device_count() -> int:
    return 1


def get_device_name(device: Any = None) -> str:
    _device_index(device)
    return DEVICE_NAME


def current_stream(device: Any = None) -> Stream:
    _device_index(device)
    return getattr(_s().local, "stream", None) or _s().default


@contextlib.contextmanager
def stream(stream: Stream | None) -> Iterator[None]:
    if stream is not None and not isinstance(stream, Stream):
        raise TypeError(f"stream: expected torch.cuda.Stream, got {type(stream).__name__}")
    local = _s().local
    before = getattr(local, "stream", None)
    if stream is not None:
        local.stream = stream
    try:
        yield
    finally:
        local.stream = before


def synchronize(device: Any = None) -> None:
    _device_index(device)
    _s().ledger.append(("synchronize", "device"))


# --------------------------------------------------------------------------- device operations


def _work(kind: str) -> Stream:
    """One operation queued on the current stream; checks it may read the weights."""
    state = _s()
    s = current_stream()
    with state.lock:
        if kind == "upload" and state.weights is not None:
            writer, position = state.weights
            if writer is not s and s.waited.get(id(writer), 0) < position:
                raise FakeCudaMisuse(
                    f"{s.name} runs work that reads the weights written on {writer.name} without "
                    "waiting for them (Stream.wait_event / wait_stream): a race on a real GPU"
                )
        s.position += 1
        state.ledger.append((kind, s.name))
    return s


def _is_cuda(device: Any) -> bool:
    import torch

    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.split(":")[0] == "cuda"


def install(monkeypatch: Any) -> _State:
    """Patch ``torch`` for the duration of a test (``monkeypatch`` undoes it). Returns the state."""
    global _state
    import torch

    _state = _State()
    for name in (
        "is_available",
        "device_count",
        "get_device_name",
        "current_stream",
        "stream",
        "synchronize",
    ):
        monkeypatch.setattr(torch.cuda, name, globals()[name])
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)

    tensor_to = torch.Tensor.to
    module_to = torch.nn.Module.to

    def pin_memory(self: torch.Tensor, device: Any = None) -> torch.Tensor:
        pinned = self.clone()
        pinned._fake_pinned = True  # type: ignore[attr-defined]
        return pinned

    def is_pinned(self: torch.Tensor, device: Any = None) -> bool:
        return bool(getattr(self, "_fake_pinned", False))

    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = list(args)
        cuda = False
        if args and _is_cuda(args[0]):
            cuda, args[0] = True, torch.device("cpu")
        if _is_cuda(kwargs.get("device")):
            cuda, kwargs["device"] = True, torch.device("cpu")
        if cuda and not getattr(_state.local, "in_module_to", False):
            blocking = not (kwargs.get("non_blocking") or (len(args) >= 3 and args[2] is True))
            if not blocking and not getattr(self, "_fake_pinned", False):
                raise FakeCudaMisuse(
                    "to(cuda, non_blocking=True) from pageable memory: pin_memory() it first "
                    "(CUDA would silently copy synchronously)"
                )
            _work("upload")
        return tensor_to(self, *args, **kwargs)

    def mod_to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        cuda = any(_is_cuda(a) for a in args) or _is_cuda(kwargs.get("device"))
        on_device = cuda or getattr(self, "_fake_on_cuda", False)
        _state.local.in_module_to = True
        try:
            out = module_to(self, *args, **kwargs)
        finally:
            _state.local.in_module_to = False
        if on_device:
            for module in out.modules():
                object.__setattr__(module, "_fake_on_cuda", True)
            # Uploading or converting weights on the device: work on the current stream.
            s = _work("weights")
            _state.weights = (s, s.position)
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", is_pinned)
    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.nn.Module, "to", mod_to)
    return _state
