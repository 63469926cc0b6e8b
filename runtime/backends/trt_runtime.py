"""Running a deserialized TensorRT engine: execution context, one CUDA stream, buffers, an event.

Tensor types and sizes come from the engine (``get_tensor_dtype``, the context's
``get_tensor_shape`` once input shapes are set), never an assumed float32: an fp16 engine's
image tensors are half the bytes, and inputs are converted to the engine's type while they are
staged. Host staging buffers are pinned (``cudaMallocHost``) so the copies are asynchronous and
overlap the other pass's stream; a block is replaced only between runs (``run`` waits for its
stream before returning), so no queued copy ever reads a freed block.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Collection
from typing import Any

import numpy as np

from dnrt.errors import DnrtError
from dnrt.runtime.backends.trt_cuda import check

#: TensorRT DataType names -> numpy dtypes (bf16 and the 8/4-bit types have no numpy dtype).
_NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype))
    if name not in _NUMPY:
        raise DnrtError(f"TensorRT tensor type {name} has no host representation in dnrt")
    return np.dtype(_NUMPY[name])


class EngineRunner:
    """One engine with its execution context, stream, event and buffers."""

    def __init__(self, trt: Any, engine: Any, cudart: Any, label: str, device_index: int = 0) -> None:
        self.cudart = cudart
        self.label = label
        self.device_index = device_index
        self.engine = engine
        self.device: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self.host: dict[str, np.ndarray] = {}  # pinned staging, viewed as bytes
        self.pinned: dict[str, tuple[int, int]] = {}  # name -> (pinned pointer, bytes)
        self.lock = threading.Lock()
        self.stream: Any = None
        self.done: Any = None
        self.context: Any = None
        try:
            self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            self.inputs = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.outputs = [n for n in self.names if n not in self.inputs]
            self.dtypes = {n: numpy_dtype(engine.get_tensor_dtype(n)) for n in self.names}
            self.context = engine.create_execution_context()
            if self.context is None:
                raise DnrtError(f"{label}: TensorRT could not create an execution context")
            self.stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
            self.done = check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
        except BaseException:
            self.close()
            raise

    def _device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self.device.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                check(self.cudart.cudaFree(ptr))
                del self.device[name]
            ptr = check(self.cudart.cudaMalloc(nbytes))
            self.device[name] = (ptr, nbytes)
        return ptr

    def _host_buffer(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A ``dtype`` view of ``shape`` on the pinned staging block ``key``, grown as needed.

        numpy arrays take no new attributes, so the block's pointer is kept beside its view in
        ``self.pinned``."""
        count = int(np.prod(shape))
        nbytes = max(count * dtype.itemsize, 1)
        ptr, size = self.pinned.get(key, (0, 0))
        if size < nbytes:
            if ptr:
                del self.host[key]
                self.pinned.pop(key)
                check(self.cudart.cudaFreeHost(ptr))
            ptr = int(check(self.cudart.cudaMallocHost(nbytes)))
            self.pinned[key] = (ptr, nbytes)
            self.host[key] = np.frombuffer((ctypes.c_byte * nbytes).from_address(ptr), dtype=np.uint8)
        return self.host[key][: count * dtype.itemsize].view(dtype).reshape(shape)

    def run(
        self, feeds: dict[str, np.ndarray], wanted: Collection[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run on ``feeds``; return the outputs named in ``wanted`` (all by default) as float32.
        Every output still gets device memory (TensorRT writes them all); only the wanted ones
        are copied back."""
        cudart = self.cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self.lock:
            # The current device is per host thread, and the scheduler calls from its own threads:
            # without this, buffers grown here would be allocated on (and kernels launched from)
            # device 0 whatever device_index says.
            check(cudart.cudaSetDevice(self.device_index))
            for name in self.inputs:
                value = feeds[name]
                if not self.context.set_input_shape(name, tuple(value.shape)):
                    raise DnrtError(
                        f"{self.label}: shape {tuple(value.shape)} of {name} is outside the engine's profile"
                    )
                staged = self._host_buffer("in:" + name, value.shape, self.dtypes[name])
                staged[...] = value  # converts to the engine's type (fp16 image I/O)
                ptr = self._device_buffer(name, staged.nbytes)
                check(cudart.cudaMemcpyAsync(ptr, staged.ctypes.data, staged.nbytes, h2d, self.stream))
                self.context.set_tensor_address(name, ptr)
            results = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise DnrtError(f"{self.label}: TensorRT left the shape of {name} unresolved: {shape}")
                nbytes = max(int(np.prod(shape)) * self.dtypes[name].itemsize, 1)
                ptr = self._device_buffer(name, nbytes)
                self.context.set_tensor_address(name, ptr)
                results.append((name, shape, ptr))
            if not self.context.execute_async_v3(int(self.stream)):
                raise DnrtError(f"{self.label}: TensorRT execution failed")
            out = {}
            for name, shape, ptr in results:
                if wanted is not None and name not in wanted:
                    continue
                staged = self._host_buffer("out:" + name, shape, self.dtypes[name])
                check(cudart.cudaMemcpyAsync(staged.ctypes.data, ptr, staged.nbytes, d2h, self.stream))
                out[name] = staged
            check(cudart.cudaEventRecord(self.done, self.stream))
            check(cudart.cudaEventSynchronize(self.done))
            # Copy out of the pinned staging buffers (the next call reuses them), as float32.
            return {name: staged.astype(np.float32, copy=True) for name, staged in out.items()}

    def close(self) -> None:
        """Release everything; safe on a runner whose construction failed half-way."""
        cudart = self.cudart
        cudart.cudaSetDevice(self.device_index)
        if self.stream is not None:
            # A run that failed half-way may have left copies queued: let them finish first.
            cudart.cudaStreamSynchronize(self.stream)
        for ptr, _ in self.device.values():
            cudart.cudaFree(ptr)
        self.host.clear()
        for ptr, _ in self.pinned.values():
            cudart.cudaFreeHost(ptr)
        self.device.clear()
        self.pinned.clear()
        if self.done is not None:
            cudart.cudaEventDestroy(self.done)
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
        self.stream = self.done = self.context = None
