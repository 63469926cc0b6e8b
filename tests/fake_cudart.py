"""A strict stand-in for cuda-python's ``cuda.bindings.runtime`` (cudart), for the TensorRT backend's tests.

Only the calls ``dnrt.runtime.backends.trt`` makes exist, with cuda-python's names and calling
convention: every function returns a tuple whose first element is a :class:`cudaError_t`, the
values after it (a pointer as ``int``, a ``cudaStream_t``, a ``cudaEvent_t``, a
``cudaDeviceProp``). Anything else is an ``AttributeError``, as a misspelling would be.

What it checks, beyond argument types:

- **Pinned host memory.** ``cudaMallocHost`` hands out real memory (the caller may view it with
  ctypes/numpy); every host pointer given to ``cudaMemcpyAsync`` must lie, with its byte count,
  inside one live ``cudaMallocHost`` block. Real CUDA accepts pageable memory too (and then
  copies synchronously); refusing it here holds trt.py to its design, pinned staging buffers.
- **Device memory** (``cudaMalloc``) lives in a separate fake address range that the host never
  dereferences; a copy or an engine run touching bytes outside one live allocation fails.
- **Streams are asynchronous.** Work queued on a stream (copies, ``execute_async_v3``) runs
  only when the stream is synchronised (``cudaStreamSynchronize`` or ``cudaEventSynchronize``
  on an event recorded on it): a copy reads its source *then*, so a host buffer reused or freed
  before the synchronisation is caught (freeing one with work pending is an error here).
- **Leaks and double frees**: freeing what was not allocated (or twice) is an error;
  :func:`live_allocations` lets a test check that everything was released.

Errors come back as cuda-python returns them, a non-zero ``cudaError_t`` in the tuple, except
misuse that real CUDA would turn into corrupted memory or a crash (which raises
:class:`FakeCudaMisuse`).
"""

from __future__ import annotations

import ctypes
import enum
import threading
from collections.abc import Callable

__all__ = [
    "cudaError_t",
    "cudaMemcpyKind",
    "cudaStream_t",
    "cudaEvent_t",
    "cudaDeviceProp",
    "cudaStreamNonBlocking",
    "cudaEventDisableTiming",
    "cudaGetErrorName",
    "cudaSetDevice",
    "cudaGetDeviceProperties",
    "cudaMalloc",
    "cudaFree",
    "cudaMallocHost",
    "cudaFreeHost",
    "cudaMemcpyAsync",
    "cudaStreamCreateWithFlags",
    "cudaStreamDestroy",
    "cudaStreamSynchronize",
    "cudaEventCreateWithFlags",
    "cudaEventDestroy",
    "cudaEventRecord",
    "cudaEventSynchronize",
]


class FakeCudaMisuse(RuntimeError):
    """A use of the API that real CUDA would not report but punish (corruption, a crash)."""


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


#: Module-level flag constants, as cuda-python defines them.
cudaStreamDefault = 0  # noqa: N816
cudaStreamNonBlocking = 1  # noqa: N816
cudaEventDefault = 0  # noqa: N816
cudaEventBlockingSync = 1  # noqa: N816
cudaEventDisableTiming = 2  # noqa: N816

DEVICE_COUNT = 1
DEVICE_NAME = b"Fake GPU 9000"
DEVICE_CAPABILITY = (8, 9)

_lock = threading.RLock()
_current = threading.local()


class cudaStream_t:  # noqa: N801
    """A stream handle: ``int()`` gives its address, as cuda-python's does."""

    __slots__ = ("_handle", "_queue", "_alive", "_marks")

    def __init__(self, handle: int) -> None:
        self._handle = handle
        self._queue: list[Callable[[], None]] = []
        self._alive = True
        self._marks = 0  # ops ever enqueued

    def __int__(self) -> int:
        return self._handle

    def __repr__(self) -> str:
        return f"<cudaStream_t 0x{self._handle:x}>"


class cudaEvent_t:  # noqa: N801
    __slots__ = ("_handle", "_stream", "_mark", "_alive")

    def __init__(self, handle: int) -> None:
        self._handle = handle
        self._stream: cudaStream_t | None = None
        self._mark = 0
        self._alive = True

    def __int__(self) -> int:
        return self._handle


class cudaDeviceProp:  # noqa: N801
    __slots__ = ("name", "major", "minor", "totalGlobalMem")

    def __init__(self, name: bytes, major: int, minor: int) -> None:
        self.name = name
        self.major = major
        self.minor = minor
        self.totalGlobalMem = 80 << 30


class _Pinned:
    __slots__ = ("buffer", "size", "pending")

    def __init__(self, size: int) -> None:
        self.buffer = ctypes.create_string_buffer(size)
        self.size = size
        self.pending = 0  # queued stream ops that touch this block


class _Device:
    __slots__ = ("data", "size", "device", "pending")

    def __init__(self, size: int, device: int) -> None:
        self.data = bytearray(size)
        self.size = size
        self.device = device
        self.pending = 0


_pinned: dict[int, _Pinned] = {}
_device_mem: dict[int, _Device] = {}
_streams: dict[int, cudaStream_t] = {}
_events: dict[int, cudaEvent_t] = {}
_next = {"device": 0x7F00_0000_0000, "handle": 0x1000}
#: Every call made, by name: tests may look (e.g. that streams were created non-blocking).
calls: list[str] = []


def reset() -> None:
    """Forget every allocation (between tests)."""
    with _lock:
        _pinned.clear()
        _device_mem.clear()
        _streams.clear()
        _events.clear()
        calls.clear()


def live_allocations() -> dict[str, int]:
    with _lock:
        return {
            "pinned": len(_pinned),
            "device": len(_device_mem),
            "streams": len(_streams),
            "events": len(_events),
        }


def _int_arg(name: str, value: object) -> int:
    # cuda-python's size_t/int parameters take Python ints (numpy ints convert through __index__);
    # a float or None is a TypeError there too.
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    return int(value.__index__())  # type: ignore[attr-defined]


def _ptr_arg(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: expected a pointer as int, got {type(value).__name__}")
    return value


def _device() -> int:
    return getattr(_current, "device", 0)


def _handle() -> int:
    _next["handle"] += 0x10
    return _next["handle"]


def _stream_arg(stream: object) -> cudaStream_t:
    if not isinstance(stream, cudaStream_t):
        # cuda-python also takes an int handle or None (the legacy default stream), which
        # trt.py never means to use: the default stream would serialise the two passes.
        raise TypeError(f"stream: expected cudaStream_t, got {type(stream).__name__}")
    with _lock:
        if not stream._alive or _streams.get(stream._handle) is not stream:
            raise FakeCudaMisuse(f"{stream!r} was destroyed")
    return stream


# --------------------------------------------------------------------------- errors, devices


def cudaGetErrorName(error: cudaError_t) -> tuple[cudaError_t, bytes]:  # noqa: N802
    calls.append("cudaGetErrorName")
    if not isinstance(error, cudaError_t):
        raise TypeError(f"error: expected cudaError_t, got {type(error).__name__}")
    return cudaError_t.cudaSuccess, error.name.encode()


def cudaSetDevice(device: int) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaSetDevice")
    device = _int_arg("device", device)
    if not 0 <= device < DEVICE_COUNT:
        return (cudaError_t.cudaErrorInvalidDevice,)
    _current.device = device
    return (cudaError_t.cudaSuccess,)


def cudaGetDeviceProperties(device: int) -> tuple[cudaError_t, cudaDeviceProp | None]:  # noqa: N802
    calls.append("cudaGetDeviceProperties")
    device = _int_arg("device", device)
    if not 0 <= device < DEVICE_COUNT:
        return cudaError_t.cudaErrorInvalidDevice, None
    return cudaError_t.cudaSuccess, cudaDeviceProp(DEVICE_NAME, *DEVICE_CAPABILITY)


# --------------------------------------------------------------------------- memory


def cudaMalloc(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
    calls.append("cudaMalloc")
    size = _int_arg("size", size)
    if size <= 0:
        return cudaError_t.cudaErrorInvalidValue, 0
    with _lock:
        ptr = _next["device"]
        _next["device"] += (size + 0xFFF) & ~0xFFF
        _device_mem[ptr] = _Device(size, _device())
    return cudaError_t.cudaSuccess, ptr


def cudaFree(devPtr: int) -> tuple[cudaError_t]:  # noqa: N802, N803
    calls.append("cudaFree")
    ptr = _ptr_arg("devPtr", devPtr)
    with _lock:
        block = _device_mem.get(ptr)
        if block is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        if block.pending:
            raise FakeCudaMisuse(f"device block 0x{ptr:x} freed with {block.pending} stream op(s) pending")
        del _device_mem[ptr]
    return (cudaError_t.cudaSuccess,)


def cudaMallocHost(size: int) -> tuple[cudaError_t, int]:  # noqa: N802
    calls.append("cudaMallocHost")
    size = _int_arg("size", size)
    if size <= 0:
        return cudaError_t.cudaErrorInvalidValue, 0
    block = _Pinned(size)
    ptr = ctypes.addressof(block.buffer)
    with _lock:
        _pinned[ptr] = block
    return cudaError_t.cudaSuccess, ptr


def cudaFreeHost(ptr: int) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaFreeHost")
    ptr = _ptr_arg("ptr", ptr)
    with _lock:
        block = _pinned.get(ptr)
        if block is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        if block.pending:
            raise FakeCudaMisuse(f"pinned block 0x{ptr:x} freed with {block.pending} stream op(s) pending")
        del _pinned[ptr]
    return (cudaError_t.cudaSuccess,)


def _find_pinned(ptr: int, count: int) -> _Pinned | None:
    for start, block in _pinned.items():
        if start <= ptr and ptr + count <= start + block.size:
            return block
    return None


def find_device(ptr: int, count: int) -> tuple[int, _Device] | None:
    """The live device allocation holding ``[ptr, ptr + count)`` (for the fake TensorRT)."""
    with _lock:
        for start, block in _device_mem.items():
            if start <= ptr and ptr + count <= start + block.size:
                return start, block
    return None


def read_device(ptr: int, count: int) -> bytes:
    found = find_device(ptr, count)
    if found is None:
        raise FakeCudaMisuse(f"read of {count} bytes at 0x{ptr:x}: not inside one live device allocation")
    start, block = found
    return bytes(block.data[ptr - start : ptr - start + count])


def write_device(ptr: int, data: bytes) -> None:
    found = find_device(ptr, len(data))
    if found is None:
        raise FakeCudaMisuse(
            f"write of {len(data)} bytes at 0x{ptr:x}: not inside one live device allocation"
        )
    start, block = found
    block.data[ptr - start : ptr - start + len(data)] = data


def enqueue(stream: cudaStream_t, op: Callable[[], None], holds: list) -> None:
    """Queue ``op`` on ``stream``; ``holds`` (pinned or device blocks) may not be freed until it ran."""
    with _lock:
        for block in holds:
            block.pending += 1

    def run() -> None:
        try:
            op()
        finally:
            with _lock:
                for block in holds:
                    block.pending -= 1

    with _lock:
        stream._queue.append(run)
        stream._marks += 1


def cudaMemcpyAsync(  # noqa: N802
    dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: cudaStream_t
) -> tuple[cudaError_t]:
    calls.append("cudaMemcpyAsync")
    dst = _ptr_arg("dst", dst)
    src = _ptr_arg("src", src)
    count = _int_arg("count", count)
    if not isinstance(kind, cudaMemcpyKind):
        raise TypeError(f"kind: expected cudaMemcpyKind, got {type(kind).__name__}")
    stream = _stream_arg(stream)
    with _lock:
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            host, dev = _find_pinned(src, count), find_device(dst, count)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            host, dev = _find_pinned(dst, count), find_device(src, count)
        else:
            raise FakeCudaMisuse(f"{kind.name}: trt.py copies host<->device only")
    if host is None:
        where = src if kind == cudaMemcpyKind.cudaMemcpyHostToDevice else dst
        raise FakeCudaMisuse(
            f"cudaMemcpyAsync: host range 0x{where:x}+{count} is not inside a live cudaMallocHost block "
            "(pageable memory makes the copy synchronous and can be freed before it runs)"
        )
    if dev is None:
        return (cudaError_t.cudaErrorInvalidValue,)

    if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:

        def op() -> None:
            write_device(dst, ctypes.string_at(src, count))

    else:

        def op() -> None:
            ctypes.memmove(dst, read_device(src, count), count)

    enqueue(stream, op, [host, dev[1]])
    return (cudaError_t.cudaSuccess,)


# --------------------------------------------------------------------------- streams, events


def cudaStreamCreateWithFlags(flags: int) -> tuple[cudaError_t, cudaStream_t | None]:  # noqa: N802
    calls.append("cudaStreamCreateWithFlags")
    flags = _int_arg("flags", flags)
    if flags not in (cudaStreamDefault, cudaStreamNonBlocking):
        return cudaError_t.cudaErrorInvalidValue, None
    stream = cudaStream_t(_handle())
    with _lock:
        _streams[stream._handle] = stream
    return cudaError_t.cudaSuccess, stream


def _drain(stream: cudaStream_t, upto: int | None = None) -> None:
    """Run the stream's queued work (all of it, or what was queued before mark ``upto``)."""
    while True:
        with _lock:
            done = stream._marks - len(stream._queue)
            if not stream._queue or (upto is not None and done >= upto):
                return
            op = stream._queue.pop(0)
        op()


def cudaStreamSynchronize(stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaStreamSynchronize")
    _drain(_stream_arg(stream))
    return (cudaError_t.cudaSuccess,)


def cudaStreamDestroy(stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaStreamDestroy")
    stream = _stream_arg(stream)
    _drain(stream)  # CUDA finishes pending work before releasing the stream
    with _lock:
        stream._alive = False
        del _streams[stream._handle]
    return (cudaError_t.cudaSuccess,)


def cudaEventCreateWithFlags(flags: int) -> tuple[cudaError_t, cudaEvent_t | None]:  # noqa: N802
    calls.append("cudaEventCreateWithFlags")
    flags = _int_arg("flags", flags)
    if flags & ~(cudaEventBlockingSync | cudaEventDisableTiming):
        return cudaError_t.cudaErrorInvalidValue, None
    event = cudaEvent_t(_handle())
    with _lock:
        _events[event._handle] = event
    return cudaError_t.cudaSuccess, event


def _event_arg(event: object) -> cudaEvent_t:
    if not isinstance(event, cudaEvent_t):
        raise TypeError(f"event: expected cudaEvent_t, got {type(event).__name__}")
    if not event._alive:
        raise FakeCudaMisuse("event was destroyed")
    return event


def cudaEventRecord(event: cudaEvent_t, stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaEventRecord")
    event = _event_arg(event)
    stream = _stream_arg(stream)
    with _lock:
        event._stream = stream
        event._mark = stream._marks
    return (cudaError_t.cudaSuccess,)


def cudaEventSynchronize(event: cudaEvent_t) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaEventSynchronize")
    event = _event_arg(event)
    if event._stream is not None:
        _drain(event._stream, event._mark)
    return (cudaError_t.cudaSuccess,)


def cudaEventDestroy(event: cudaEvent_t) -> tuple[cudaError_t]:  # noqa: N802
    calls.append("cudaEventDestroy")
    event = _event_arg(event)
    with _lock:
        event._alive = False
        del _events[event._handle]
    return (cudaError_t.cudaSuccess,)
