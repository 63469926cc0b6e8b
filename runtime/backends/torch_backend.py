"""PyTorch backend: the bundle's generator rebuilt from its safetensors weights.

It runs wherever PyTorch runs (CPU or CUDA). Activations may be float16 (CUDA) or
bfloat16 (CUDA, or CPUs with AVX512-BF16 / AMX); statistics and the norm layers
stay float32 in every precision. The module is rebuilt from the zoo architecture
recorded in the manifest, so the original checkpoint is not needed.

On the CPU the network runs channels-last: oneDNN's NHWC convolutions took a 64-feature
generator's two passes over a 544 px tile from 16.4 s (NCHW) to 11.2 s in fp32 and 4.9 s
in bf16 on a 2-core AMX guest (benchmarks/README.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dnrt.bundle import Bundle
from dnrt.errors import DnrtError, first_line
from dnrt.runtime.backends.base import Backend, BackendContext
from dnrt.runtime.options import PRECISIONS
from dnrt.semantics import CollectFlavour


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates it, slower than fp32. Private torch helpers, so a missing one reads as no."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


class TorchBackend(Backend):
    """The generator on PyTorch, on the CPU or one CUDA device.

    On CUDA each pass runs on its own stream (so streaming overlaps them); the weights are
    uploaded and converted on the device's current stream during activation, and both pass
    streams wait on an event recorded after that, so no pass reads a weight before it lands.
    """

    name = "torch"

    def __init__(
        self,
        bundle: Bundle,
        context: BackendContext | None = None,
        device: str = "cpu",
        **context_fields: Any,
    ) -> None:
        super().__init__(bundle, context, **context_fields)
        precision = self.context.precision
        if precision not in PRECISIONS:
            raise DnrtError(f"unknown precision {precision!r} (expected one of {', '.join(PRECISIONS)})")
        if precision == "fp16" and not device.startswith("cuda"):
            raise DnrtError(
                "fp16 needs a CUDA device; on the CPU use fp32, or bf16 where the CPU has AVX512-BF16/AMX"
            )
        if device == "cuda" and self.context.device_index:
            device = f"cuda:{self.context.device_index}"
        self.device_name = device
        self.precision = precision
        self.threads = self.context.threads
        self.model: Any = None
        self.name = "torch-cuda" if device.startswith("cuda") else "torch"
        # On a GPU each pass gets its own CUDA stream, so streaming overlaps them.
        self.concurrent_passes = device.startswith("cuda")
        # Tiles per call when the user does not say: on the CPU one at a time keeps a tile's
        # activations in cache (faster per tile than batches of two); GPUs want batches.
        self.preferred_batch = 4 if device.startswith("cuda") else 1
        self.streams: dict[str, Any] = {}
        # oneDNN's NHWC convolutions on the CPU (see the module docstring); CUDA keeps NCHW.
        self.channels_last = not device.startswith("cuda")

    def activate_impl(self) -> None:
        try:
            import torch
        except ImportError:
            raise DnrtError("the torch backend needs PyTorch: pip install 'dnrt[export]'") from None
        from dnrt.models.normswap import convert
        from dnrt.models.zoo import ARCHITECTURES, build_generator

        m = self.manifest
        if m.architecture not in ARCHITECTURES:
            raise DnrtError(
                f"the torch backend rebuilds zoo architectures only; this bundle holds {m.architecture!r} "
                "(use --backend ort)"
            )
        if self.device_name.startswith("cuda") and not torch.cuda.is_available():
            raise DnrtError("--backend torch-cuda asked for, but PyTorch sees no CUDA device")
        if self.threads:
            torch.set_num_threads(self.threads)
        if not self.bundle.weights.is_file():
            raise DnrtError(f"model bundle {self.bundle.path} has no weights.safetensors")
        from safetensors.torch import load_file

        generator = build_generator(m.architecture, m.config)
        try:
            generator.load_state_dict(load_file(str(self.bundle.weights)), strict=True)
        except RuntimeError as exc:
            raise DnrtError(
                f"bundle weights do not fit architecture {m.architecture}: {first_line(exc)}"
            ) from None
        model = convert(generator, m.in_channels, batchnorm=m.batchnorm or "eval")
        if [(ly.channels, ly.stride, ly.activation) for ly in model.layers] != [
            (ly.channels, ly.stride, ly.activation) for ly in m.layers
        ]:
            raise DnrtError("the rebuilt generator's norm layers differ from the bundle manifest")
        self.device = torch.device(self.device_name)
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        # Norm buffers (gamma/beta) stay float32: the statistics path is float32 throughout.
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.generator.to(memory_format=torch.channels_last)
        if self.dtype != torch.float32:
            from dnrt.models.norm import DenseNorm2d

            self.model.generator.to(self.dtype)
            for module in self.model.generator.modules():
                if isinstance(module, DenseNorm2d):
                    module.float()
        if self.device.type == "cuda":
            self._create_streams(torch)

    def _create_streams(self, torch: Any) -> None:
        """Two pass streams, ordered after the weights' upload and conversion.

        PyTorch's pool streams do not synchronise with the device's current stream, on which
        ``model.to`` queued its copies and dtype conversions: without the wait, the first pass
        could read weights still being written."""
        setup = torch.cuda.current_stream(self.device)
        ready = torch.cuda.Event()
        ready.record(setup)
        streams = {"collect": torch.cuda.Stream(self.device), "infer": torch.cuda.Stream(self.device)}
        for stream in streams.values():
            stream.wait_event(ready)
        self.streams = streams

    def deactivate_impl(self) -> None:
        # Let queued work finish before the model's memory goes back to the caching allocator.
        for stream in self.streams.values():
            stream.synchronize()
        self.streams = {}
        self.model = None

    def describe(self) -> str:
        import torch

        device = getattr(self, "device", torch.device(self.device_name))
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        precision = self.precision
        if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
            precision += " (emulated: this CPU has no AVX512-BF16/AMX, fp32 is faster)"
        return f"PyTorch {torch.__version__} on {where}, {precision}"

    def _on_stream(self, which: str) -> Any:
        import contextlib

        import torch

        stream = self.streams.get(which)
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def _to_device(self, array: np.ndarray, dtype: Any) -> Any:
        import torch

        array = np.ascontiguousarray(array)
        if not array.flags.writeable:  # broadcast views (TIN's constant neighbourhoods): torch warns
            array = array.copy()
        tensor = torch.from_numpy(array)
        if self.device.type != "cuda":
            return tensor.to(self.device, dtype)
        # Pinned, so the copy is asynchronous on this pass's stream; PyTorch's caching host
        # allocator keeps the pinned block until the copy that reads it has run.
        return tensor.pin_memory().to(self.device, dtype, non_blocking=True)

    def _tiles(self, tiles: np.ndarray) -> Any:
        import torch

        x = self._to_device(tiles, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def collect_impl(
        self, tiles: np.ndarray, flavour: CollectFlavour, *, image: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode(), self._on_stream("collect"):
            x = self._tiles(tiles)
            params = self._to_device(flavour.as_array(), torch.float32)
            output, mean, std = self.model.collect(x, params)
            # Without the image, only the small statistics cross back to the host.
            return (_host(output) if image else None), _host(mean), _host(std)

    def infer_impl(self, tiles: np.ndarray, nbr_mean: np.ndarray, nbr_std: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode(), self._on_stream("infer"):
            x = self._tiles(tiles)
            mean = self._to_device(nbr_mean.astype(np.float32, copy=False), torch.float32)
            std = self._to_device(nbr_std.astype(np.float32, copy=False), torch.float32)
            return _host(self.model.apply(x, mean, std))


def _host(t: Any) -> np.ndarray:
    import torch

    # Contiguous NCHW float32, whatever the activation dtype and memory format.
    return t.float().cpu().contiguous(memory_format=torch.contiguous_format).numpy()
