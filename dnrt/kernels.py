"""Find, build and call dnrt's native libraries (``plugins/``).

Three shared libraries come out of ``plugins/CMakeLists.txt``:

- ``libdnrt_kernels.so``: the CUDA kernels (DenseNorm, collect step) behind a small C ABI
  (``plugins/dense_norm/dnrt_kernels.h``), CUDA runtime linked statically: it needs only the
  driver. Used by the PyTorch backend through ctypes (device pointers + a CUDA stream).
- ``libdnrt_trt_plugin.so``: the TensorRT ``DenseNorm`` plugin (namespace ``dnrt``, version 1),
  built only when TensorRT headers are given; load it with ``IPluginRegistry.load_library`` or
  ``trtexec --dynamicPlugins``.
- ``libdnrt_kernels_host.so``: the same per-pixel arithmetic compiled for the CPU, the oracle
  of the GPU kernels in the tests.

Nothing here imports more than the standard library and numpy.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnrt.errors import DnrtError
from dnrt.ops import TRT_PLUGIN_LIB
from dnrt.semantics import DN_EPS, CollectFlavour

#: Environment variable naming a folder that holds the built libraries (searched first).
PLUGIN_DIR_ENV = "DNRT_PLUGIN_DIR"
KERNELS_LIB = "libdnrt_kernels.so"
HOST_LIB = "libdnrt_kernels_host.so"
#: Must equal DNRT_KERNELS_ABI_VERSION in plugins/dense_norm/dnrt_kernels.h.
ABI_VERSION = 1
#: CUDA architectures of a default build: Turing to Hopper as SASS, plus PTX for newer GPUs.
DEFAULT_CUDA_ARCHITECTURES = "75;80;86;89;90-real;90-virtual"

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent
#: Errors the C ABI reports itself (all others are CUDA error codes).
STATUS_INVALID_VALUE = 1


# --------------------------------------------------------------------------- finding


def plugins_source_dir() -> Path:
    """The ``plugins/`` folder of a source checkout (editable installs keep it next to ``dnrt/``)."""
    return _REPO_ROOT / "plugins"


def default_build_dir() -> Path:
    return _REPO_ROOT / "build" / "plugins"


def search_dirs() -> list[Path]:
    """Where the libraries are looked for, in order: ``$DNRT_PLUGIN_DIR``, ``build/plugins`` of
    the checkout, the package folder."""
    dirs = []
    env = os.environ.get(PLUGIN_DIR_ENV)
    if env:
        dirs.append(Path(env).expanduser())
    dirs += [default_build_dir(), _PACKAGE_DIR]
    return dirs


def find_library(name: str) -> Path | None:
    """Path of a built library by file name, or None when it has not been built."""
    for folder in search_dirs():
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def find_kernels_library() -> Path | None:
    return find_library(KERNELS_LIB)


def find_host_library() -> Path | None:
    return find_library(HOST_LIB)


def require_library(name: str) -> Path:
    path = find_library(name)
    if path is None:
        where = ", ".join(str(d) for d in search_dirs())
        raise DnrtError(
            f"{name} not found (looked in {where}); build it with `dnrt build-plugins` "
            f"or point {PLUGIN_DIR_ENV} at the folder that holds it"
        )
    return path


# --------------------------------------------------------------------------- building


def _run(cmd: list[str], quiet: bool, what: str) -> None:
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        tail = ""
        if quiet:
            lines = (result.stdout + result.stderr).strip().splitlines()
            tail = ": " + " | ".join(lines[-8:])
        raise DnrtError(f"{what} failed (exit {result.returncode}){tail}")


def build_plugins(
    build_dir: str | os.PathLike[str] | None = None,
    tensorrt_include: str | os.PathLike[str] | None = None,
    tensorrt_lib: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    cuda_architectures: str | None = None,
    cuda: bool = True,
    jobs: int | None = None,
) -> dict[str, Path]:
    """Configure and build ``plugins/`` with CMake; return the built libraries by file name.

    ``cuda_architectures`` is CMake's list (``"86"``, ``"native"``, ``"75;80;86;89;90"``);
    default: Turing to Hopper plus PTX. ``cuda=False`` builds only the host library (no nvcc
    needed). The TensorRT plugin is built when ``tensorrt_include`` (the folder holding
    ``NvInfer.h``) is given or CMake finds TensorRT's headers in the usual places;
    ``tensorrt_lib`` (the folder holding ``libnvinfer.so``) is only checked: the plugin uses
    TensorRT's header-defined interfaces alone and does not link libnvinfer.
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise DnrtError("cmake not found on PATH; install CMake >= 3.24 to build the dnrt plugins")
    source = plugins_source_dir()
    if not (source / "CMakeLists.txt").is_file():
        raise DnrtError(f"plugin sources not found at {source} (building needs a source checkout of dnrt)")
    nvcc = find_nvcc()
    if cuda and nvcc is None:
        raise DnrtError(
            "nvcc (the CUDA compiler) not found: install the CUDA toolkit or put its bin/ on PATH "
            "(or build only the CPU library with cuda=False)"
        )
    if tensorrt_include is not None and not (Path(tensorrt_include) / "NvInfer.h").is_file():
        raise DnrtError(f"NvInfer.h not found in {tensorrt_include} (pass TensorRT's include folder)")
    if tensorrt_include is not None and not cuda:
        raise DnrtError("the TensorRT plugin needs the CUDA build (cuda=True)")
    build = Path(build_dir) if build_dir is not None else default_build_dir()
    build.mkdir(parents=True, exist_ok=True)
    cmd = [cmake, "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    cmd.append(f"-DDNRT_BUILD_CUDA={'ON' if cuda else 'OFF'}")
    if cuda:
        cmd.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architectures or DEFAULT_CUDA_ARCHITECTURES}")
        if shutil.which("nvcc") is None:
            cmd.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    if tensorrt_include is not None:
        cmd.append(f"-DTENSORRT_INCLUDE_DIR={Path(tensorrt_include).resolve()}")
    if tensorrt_lib is not None:
        cmd.append(f"-DTENSORRT_LIB_DIR={Path(tensorrt_lib).resolve()}")
    _run(cmd, quiet, "configuring the dnrt plugins (cmake)")
    build_cmd = [cmake, "--build", str(build), "--parallel", str(jobs or os.cpu_count() or 1)]
    _run(build_cmd, quiet, "building the dnrt plugins")
    built = {}
    for name in (KERNELS_LIB, TRT_PLUGIN_LIB, HOST_LIB):
        if (build / name).is_file():
            built[name] = build / name
    return built


def compile_host_library(out_dir: str | os.PathLike[str], cxx: str | None = None) -> Path:
    """Compile ``libdnrt_kernels_host.so`` with a C++ compiler alone (no CMake, no CUDA).

    The flags matter: ``-ffp-contract=off`` keeps the compiler from fusing multiply-adds
    that the GPU build does not fuse either.
    """
    compiler = cxx or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise DnrtError("no C++ compiler found (g++ or $CXX) to build the dnrt host library")
    src = plugins_source_dir() / "dense_norm"
    out = Path(out_dir) / HOST_LIB
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fvisibility=hidden"]
    cmd += [f"-I{src}", str(src / "denseNormHost.cpp"), "-o", str(out)]
    _run(cmd, True, "compiling the dnrt host library")
    return out


def find_nvcc() -> str | None:
    """nvcc on PATH, else the default CUDA toolkit location."""
    found = shutil.which("nvcc")
    if found is None:
        for candidate in (os.environ.get("CUDACXX"), "/usr/local/cuda/bin/nvcc"):
            if candidate and Path(candidate).is_file():
                return candidate
    return found


def compile_kernels_library(
    out_dir: str | os.PathLike[str], arch: str = "native", nvcc: str | None = None
) -> Path:
    """Compile ``libdnrt_kernels.so`` with nvcc alone (no CMake), for one architecture.

    ``arch`` is ``"native"`` (the GPUs of this machine) or a number such as ``"75"`` / ``"sm_90"``
    (SASS for it plus its PTX). The flags are those of ``plugins/CMakeLists.txt``.
    """
    compiler = nvcc or find_nvcc()
    if compiler is None:
        raise DnrtError(
            "nvcc (the CUDA compiler) not found: install the CUDA toolkit or put its bin/ on PATH"
        )
    src = plugins_source_dir() / "dense_norm"
    out = Path(out_dir) / KERNELS_LIB
    out.parent.mkdir(parents=True, exist_ok=True)
    if arch == "native":
        gencode = ["-arch=native"]
    else:
        sm = arch.removeprefix("sm_")
        gencode = [f"-gencode=arch=compute_{sm},code=[sm_{sm},compute_{sm}]"]
    cmd = [compiler, "-O3", "-std=c++17", "--fmad=false", "-Xcompiler=-fPIC,-fvisibility=hidden", "-shared"]
    cmd += ["-cudart=static", *gencode, f"-I{src}", "-Xlinker=--exclude-libs,ALL"]
    cmd += [str(src / "denseNormKernel.cu"), str(src / "dnrtKernelsCApi.cpp"), "-o", str(out)]
    _run(cmd, True, "compiling the dnrt CUDA kernels (nvcc)")
    return out


# --------------------------------------------------------------------------- host library


def _f32(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


def _ptr(a: np.ndarray | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if a is None else a.ctypes.data)


def _activation_flag(activation: str) -> int:
    if activation not in ("none", "relu"):
        raise DnrtError(f"unknown activation {activation!r} (expected 'none' or 'relu')")
    return 1 if activation == "relu" else 0


_VP = ctypes.c_void_p
_I = ctypes.c_int
_F = ctypes.c_float
_D = ctypes.c_double


class HostKernels:
    """ctypes binding of ``libdnrt_kernels_host.so`` on numpy arrays (float32 in and out)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else require_library(HOST_LIB)
        self._lib = ctypes.CDLL(str(self.path))
        lib = self._lib
        lib.dnrt_host_abi_version.restype = _I
        if lib.dnrt_host_abi_version() != ABI_VERSION:
            raise DnrtError(
                f"{self.path} has ABI {lib.dnrt_host_abi_version()}, dnrt expects {ABI_VERSION}: rebuild it"
            )
        lib.dnrt_host_axis_weight.argtypes = [_I, _I, ctypes.POINTER(_I), ctypes.POINTER(_F)]
        lib.dnrt_host_axis_weight.restype = _I
        lib.dnrt_host_dense_pixel.argtypes = [_F, _VP, _VP, _F, _F, _F, _I, _I, _I, _I, _I]
        lib.dnrt_host_dense_pixel.restype = _F
        lib.dnrt_host_dense_norm_f32.argtypes = [_VP] * 6 + [_I] * 4 + [_F, _I]
        lib.dnrt_host_dense_norm_f32.restype = _I
        lib.dnrt_host_collect_f32.argtypes = [_VP] * 6 + [_I] * 5 + [_D, _D, _I, _I]
        lib.dnrt_host_collect_f32.restype = _I

    def axis_weight(self, i: int, n: int) -> tuple[int, float]:
        """(index of the other neighbour, its weight) for pixel ``i`` of a map of size ``n``."""
        other, weight = _I(), _F()
        status = self._lib.dnrt_host_axis_weight(i, n, ctypes.byref(other), ctypes.byref(weight))
        if status:
            raise DnrtError(f"axis weight of pixel {i} in a map of size {n} rejected (status {status})")
        return other.value, weight.value

    def dense_pixel(
        self, x: float, mean9: np.ndarray, std9: np.ndarray, gamma: float, beta: float, eps: float, i: int, j: int,
        h: int, w: int, relu: bool = False,
    ) -> float:  # fmt: skip
        m, s = _f32(mean9), _f32(std9)
        return float(
            self._lib.dnrt_host_dense_pixel(x, _ptr(m), _ptr(s), gamma, beta, eps, i, j, h, w, int(relu))
        )

    def dense_normalize_status(
        self,
        x: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        gamma: np.ndarray | None = None,
        beta: np.ndarray | None = None,
        eps: float = DN_EPS,
        activation: str = "none",
    ) -> tuple[int, np.ndarray]:
        """Raw call: (status, y). ``x [N, C, H, W]``, ``mean``/``std [N, C, 3, 3]``."""
        x32, m32, s32, g32, b32 = _f32(x), _f32(mean), _f32(std), _f32(gamma), _f32(beta)
        n, c, h, w = x32.shape
        if m32.shape != (n, c, 3, 3) or s32.shape != (n, c, 3, 3):
            raise DnrtError(f"neighbourhoods must be [{n}, {c}, 3, 3], got {m32.shape} and {s32.shape}")
        y = np.empty_like(x32)
        status = self._lib.dnrt_host_dense_norm_f32(
            _ptr(x32), _ptr(m32), _ptr(s32), _ptr(g32), _ptr(b32), _ptr(y), n, c, h, w, eps,
            _activation_flag(activation),
        )  # fmt: skip
        return status, y

    def dense_normalize(
        self, x: np.ndarray, mean: np.ndarray, std: np.ndarray, **kwargs: object
    ) -> np.ndarray:
        """The DenseNorm op on the CPU (same arithmetic as the CUDA kernel)."""
        status, y = self.dense_normalize_status(x, mean, std, **kwargs)  # type: ignore[arg-type]
        if status:
            raise DnrtError(f"DenseNorm rejected a {tuple(np.shape(x))} input (needs even, positive H and W)")
        return y

    def collect_status(
        self,
        x: np.ndarray,
        flavour: CollectFlavour,
        gamma: np.ndarray | None = None,
        beta: np.ndarray | None = None,
        activation: str = "none",
        vec: int = 4,
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        x32, g32, b32 = _f32(x), _f32(gamma), _f32(beta)
        n, c, h, w = x32.shape
        y = np.empty_like(x32)
        mean = np.empty((n, c), np.float32)
        std = np.empty((n, c), np.float32)
        status = self._lib.dnrt_host_collect_f32(
            _ptr(x32), _ptr(g32), _ptr(b32), _ptr(y), _ptr(mean), _ptr(std), n, c, h, w,
            int(flavour.ddof), float(flavour.eps), float(flavour.floor), _activation_flag(activation), vec,
        )  # fmt: skip
        return status, y, mean, std

    def collect(
        self, x: np.ndarray, flavour: CollectFlavour, gamma: np.ndarray | None = None,
        beta: np.ndarray | None = None, activation: str = "none", vec: int = 4,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
        """Collect step on the CPU: ``(y, mean [N, C], std [N, C])``, replaying the GPU's reduction
        order for vectors of ``vec`` elements (4 = what the GPU uses for float32)."""
        status, y, mean, std = self.collect_status(x, flavour, gamma, beta, activation, vec)
        if status:
            raise DnrtError(
                f"collect rejected a {tuple(np.shape(x))} input with ddof={flavour.ddof}, vec={vec}"
            )
        return y, mean, std


# --------------------------------------------------------------------------- CUDA library


@dataclass(frozen=True)
class DeviceBuffer:
    """A device allocation made through the kernels library (for tests and the C API)."""

    ptr: int
    nbytes: int


class CudaKernels:
    """ctypes binding of ``libdnrt_kernels.so``: launches take device pointers (ints) and a CUDA
    stream handle (int, 0 = default stream), as ``torch.Tensor.data_ptr()`` and
    ``torch.cuda.Stream.cuda_stream`` give them. Launches are asynchronous."""

    _DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else require_library(KERNELS_LIB)
        self._lib = ctypes.CDLL(str(self.path))
        lib = self._lib
        lib.dnrt_kernels_abi_version.restype = _I
        if lib.dnrt_kernels_abi_version() != ABI_VERSION:
            raise DnrtError(
                f"{self.path} has ABI {lib.dnrt_kernels_abi_version()}, dnrt expects {ABI_VERSION}: rebuild it"
            )
        lib.dnrt_error_string.argtypes = [_I]
        lib.dnrt_error_string.restype = ctypes.c_char_p
        for suffix in self._DTYPES.values():
            fn = getattr(lib, f"dnrt_dense_norm_{suffix}")
            fn.argtypes = [_VP] * 6 + [_I] * 4 + [_F, _I, _VP]
            fn.restype = _I
            fn = getattr(lib, f"dnrt_collect_{suffix}")
            fn.argtypes = [_VP] * 6 + [_I] * 5 + [_D, _D, _I, _VP, ctypes.c_size_t, _VP]
            fn.restype = _I
        lib.dnrt_collect_workspace_size.argtypes = [_I] * 4
        lib.dnrt_collect_workspace_size.restype = ctypes.c_size_t
        lib.dnrt_cuda_device_count.argtypes = [ctypes.POINTER(_I)]
        lib.dnrt_cuda_malloc.argtypes = [ctypes.POINTER(_VP), ctypes.c_size_t]
        lib.dnrt_cuda_free.argtypes = [_VP]
        lib.dnrt_cuda_memcpy_htod.argtypes = [_VP, _VP, ctypes.c_size_t]
        lib.dnrt_cuda_memcpy_dtoh.argtypes = [_VP, _VP, ctypes.c_size_t]
        lib.dnrt_cuda_memset.argtypes = [_VP, _I, ctypes.c_size_t]
        for name in ("malloc", "free", "memcpy_htod", "memcpy_dtoh", "memset", "synchronize", "device_count"):
            getattr(lib, f"dnrt_cuda_{name}").restype = _I

    # -- status ------------------------------------------------------------------------
    def error_string(self, status: int) -> str:
        return self._lib.dnrt_error_string(status).decode()

    def check(self, status: int, what: str) -> None:
        if status:
            raise DnrtError(f"{what} failed: {self.error_string(status)} (status {status})")

    def device_count(self) -> tuple[int, int]:
        """(number of CUDA devices, CUDA status); a missing driver gives (0, its error code)."""
        count = _I(0)
        status = self._lib.dnrt_cuda_device_count(ctypes.byref(count))
        return count.value, status

    # -- kernels -----------------------------------------------------------------------
    def _suffix(self, dtype: str) -> str:
        if dtype not in self._DTYPES:
            raise DnrtError(f"unsupported element type {dtype!r} (expected one of {', '.join(self._DTYPES)})")
        return self._DTYPES[dtype]

    def dense_norm(
        self, dtype: str, x: int, mean: int, std: int, gamma: int | None, beta: int | None, y: int,
        n: int, c: int, h: int, w: int, eps: float = DN_EPS, relu: bool = False, stream: int = 0,
    ) -> int:  # fmt: skip
        """Launch DenseNorm; returns the status (0 = launched)."""
        fn = getattr(self._lib, f"dnrt_dense_norm_{self._suffix(dtype)}")
        return fn(x, mean, std, gamma, beta, y, n, c, h, w, eps, int(relu), stream or None)

    def collect_workspace_size(self, n: int, c: int, h: int, w: int) -> int:
        return int(self._lib.dnrt_collect_workspace_size(n, c, h, w))

    def collect(
        self, dtype: str, x: int, gamma: int | None, beta: int | None, y: int | None, mean: int | None,
        std: int | None, n: int, c: int, h: int, w: int, flavour: CollectFlavour, relu: bool, workspace: int,
        workspace_bytes: int, stream: int = 0,
    ) -> int:  # fmt: skip
        """Launch the collect step; returns the status (0 = launched)."""
        fn = getattr(self._lib, f"dnrt_collect_{self._suffix(dtype)}")
        return fn(
            x, gamma, beta, y, mean, std, n, c, h, w, int(flavour.ddof), float(flavour.eps), float(flavour.floor),
            int(relu), workspace, workspace_bytes, stream or None,
        )  # fmt: skip

    # -- memory helpers (tests, C API; the backends use their framework's allocator) ----
    def malloc(self, nbytes: int) -> DeviceBuffer:
        ptr = _VP()
        self.check(self._lib.dnrt_cuda_malloc(ctypes.byref(ptr), max(nbytes, 1)), "cudaMalloc")
        return DeviceBuffer(int(ptr.value or 0), nbytes)

    def free(self, buf: DeviceBuffer) -> None:
        self.check(self._lib.dnrt_cuda_free(buf.ptr), "cudaFree")

    def upload(self, array: np.ndarray) -> DeviceBuffer:
        array = np.ascontiguousarray(array)
        buf = self.malloc(array.nbytes)
        self.check(
            self._lib.dnrt_cuda_memcpy_htod(buf.ptr, array.ctypes.data, array.nbytes), "cudaMemcpy H2D"
        )
        return buf

    def download(self, buf: DeviceBuffer, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        if out.nbytes > buf.nbytes:
            raise DnrtError(f"download of {out.nbytes} bytes from a {buf.nbytes}-byte buffer")
        self.check(self._lib.dnrt_cuda_memcpy_dtoh(out.ctypes.data, buf.ptr, out.nbytes), "cudaMemcpy D2H")
        return out

    def memset(self, buf: DeviceBuffer, value: int) -> None:
        self.check(self._lib.dnrt_cuda_memset(buf.ptr, value, buf.nbytes), "cudaMemset")

    def synchronize(self) -> None:
        self.check(self._lib.dnrt_cuda_synchronize(), "cudaDeviceSynchronize")
