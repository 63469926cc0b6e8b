"""The DenseNorm kernel and collect step (plugins/dense_norm) against dnrt.semantics.

Three tiers, each skipped with its reason when the machine lacks what it needs:

- CPU (a C++ compiler): the per-pixel arithmetic of the CUDA kernels, compiled for the host
  from the same header (libdnrt_kernels_host.so), against the float64 numpy reference.
- nvcc (+ CMake): the CUDA library (and, with TensorRT headers, the TensorRT plugin) compiles;
  the plugin's smoke test runs its interfaces without a TensorRT runtime.
- GPU (``-m gpu``): the kernels on the device against the reference and, bit for bit, against
  the CPU library; every output element written (Y pre-filled with NaN).

Tolerance: the float32 result is compared with the float64 reference as
``|y - ref| <= tol * max(|ref|, scale)``, where ``scale`` is the size of the terms that cancel
when y is near zero, ``(|x| + interp(|Mean|)) * |rinv * gamma| + |beta|``: a relative error of
``tol`` wherever y is not the difference of much larger numbers, and an absolute floor where it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dnrt import kernels as K
from dnrt import semantics as S
from dnrt.errors import DnrtError

F32_TOL = 1e-6
F16_TOL = 2e-3
MODES = ("in", "tin", "kin", "dn")
DENSE_SHAPES = [(1, 1, 2, 2), (2, 3, 4, 6), (1, 2, 6, 10), (3, 4, 16, 8), (2, 2, 34, 18), (1, 3, 136, 64)]


# --------------------------------------------------------------------------- inputs


def dense_inputs(shape, seed=0, affine=True):
    n, c, h, w = shape
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 2.0, shape).astype(np.float32)
    mean = rng.normal(0.0, 1.0, (n, c, 3, 3)).astype(np.float32)
    std = rng.uniform(0.05, 3.0, (n, c, 3, 3)).astype(np.float32)
    gamma = rng.normal(1.0, 0.5, c).astype(np.float32) if affine else None
    beta = rng.normal(0.0, 0.5, c).astype(np.float32) if affine else None
    return x, mean, std, gamma, beta


def dense_scale(x, mean, std, gamma, beta, eps=S.DN_EPS):
    """Size of the terms of (x - mu) * rinv * gamma + beta (the absolute floor of the tolerance).
    mu is a blend of up to four neighbourhood means that may cancel, so its terms count too."""
    h, w = x.shape[-2:]
    mu_terms = S.interpolate(np.abs(mean.astype(np.float64)), h, w)
    rinv = S.interpolate(1.0 / (std.astype(np.float64) + eps), h, w)
    g = np.ones(x.shape[-3]) if gamma is None else np.abs(gamma.astype(np.float64))
    b = np.zeros(x.shape[-3]) if beta is None else np.abs(beta.astype(np.float64))
    return (np.abs(x) + mu_terms) * rinv * g[:, None, None] + b[:, None, None]


def own_scale(x, mean, std, gamma, beta):
    c = x.shape[-3]
    g = np.ones(c) if gamma is None else np.abs(gamma.astype(np.float64))
    b = np.zeros(c) if beta is None else np.abs(beta.astype(np.float64))
    m, s = mean.astype(np.float64)[..., None, None], std.astype(np.float64)[..., None, None]
    return (np.abs(x) + np.abs(m)) / s * g[:, None, None] + b[:, None, None]


def assert_close(y, ref, scale, tol, what):
    err = np.abs(y.astype(np.float64) - ref)
    bound = tol * np.maximum(np.abs(ref), scale)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(np.isfinite(y)), f"{what}: non-finite output"
    assert np.all(err <= bound), f"{what}: error {err[worst]:.3g} > {bound[worst]:.3g} at {worst}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> K.HostKernels:
    """libdnrt_kernels_host.so compiled with the C++ compiler alone."""
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler (g++ or $CXX) to build the host library")
    path = K.compile_host_library(tmp_path_factory.mktemp("host"))
    return K.HostKernels(path)


def _gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def _tensorrt_include() -> Path | None:
    """TensorRT headers for the plugin build: $TENSORRT_INCLUDE_DIR, else the usual install places."""
    candidates = [
        os.environ.get("TENSORRT_INCLUDE_DIR"),
        "/usr/include/x86_64-linux-gnu",
        "/usr/local/tensorrt/include",
    ]
    for c in candidates:
        if c and (Path(c) / "NvInfer.h").is_file():
            return Path(c)
    return None


@pytest.fixture(scope="session")
def cuda_build(tmp_path_factory) -> dict:
    """The CUDA library (and the TensorRT plugin when headers exist), built for this machine's GPU
    or, without one, for sm_75 only to keep the compile short. CMake when present, else nvcc alone."""
    if K.find_nvcc() is None:
        pytest.skip("nvcc not found: the CUDA kernels library cannot be compiled here")
    out = tmp_path_factory.mktemp("cuda")
    gpu = _gpu_present()
    trt = _tensorrt_include()
    start = time.perf_counter()
    if shutil.which("cmake") is not None:
        arch = "native" if gpu else "75"
        built = K.build_plugins(out, tensorrt_include=trt, quiet=True, cuda_architectures=arch)
        how = f"cmake, CUDA architectures {arch}"
    else:
        built = {K.KERNELS_LIB: K.compile_kernels_library(out, arch="native" if gpu else "75")}
        how = "nvcc alone (no cmake)"
        trt = None
    seconds = time.perf_counter() - start
    print(f"\n[dnrt] CUDA build ({how}, TensorRT headers: {trt}) took {seconds:.1f} s")
    return {"dir": out, "built": built, "seconds": seconds, "trt": trt}


@pytest.fixture(scope="session")
def cuda(cuda_build) -> K.CudaKernels:
    lib = K.CudaKernels(cuda_build["built"][K.KERNELS_LIB])
    count, status = lib.device_count()
    if count == 0:
        reason = lib.error_string(status) if status else "no devices"
        pytest.skip(f"no CUDA GPU ({reason})")
    return lib


# --------------------------------------------------------------------------- CPU: geometry


@pytest.mark.parametrize("n", [2, 4, 6, 10, 34, 136, 544])
def test_axis_weights_match_reference(host, n):
    ref = S.axis_weights(n)
    for i in range(n):
        other, w = host.axis_weight(i, n)
        assert other in (0, 2)
        assert ref[i, 2 - other] == 0.0, "the weight goes to the wrong neighbour"
        assert abs(w - ref[i, other]) <= 1.2e-7 * ref[i, other]
        assert abs((1.0 - w) - ref[i, 1]) <= 1e-7


def test_axis_weight_rejects_odd_and_out_of_range(host):
    for i, n in [(0, 3), (0, 0), (-1, 4), (4, 4)]:
        with pytest.raises(DnrtError):
            host.axis_weight(i, n)


# --------------------------------------------------------------------------- CPU: DenseNorm


@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_dense_normalize_matches_reference(host, shape, affine, activation):
    x, mean, std, gamma, beta = dense_inputs(shape, seed=sum(shape), affine=affine)
    y = host.dense_normalize(x, mean, std, gamma=gamma, beta=beta, activation=activation)
    ref = S.dense_normalize(x, mean, std, gamma, beta, activation=activation)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert_close(y, ref, dense_scale(x, mean, std, gamma, beta), F32_TOL, f"DenseNorm {shape}")
    if activation == "relu":
        assert np.all(y >= 0)


def test_dense_pixel_is_the_loop_body(host):
    x, mean, std, gamma, beta = dense_inputs((2, 3, 6, 10), seed=3)
    y = host.dense_normalize(x, mean, std, gamma=gamma, beta=beta, activation="relu")
    for n, c, i, j in [(0, 0, 0, 0), (1, 2, 5, 9), (0, 1, 2, 7), (1, 0, 3, 4)]:
        p = host.dense_pixel(
            float(x[n, c, i, j]),
            mean[n, c],
            std[n, c],
            float(gamma[c]),
            float(beta[c]),
            S.DN_EPS,
            i,
            j,
            6,
            10,
            True,
        )
        assert np.float32(p) == y[n, c, i, j]


def test_constant_neighbourhood_is_plain_normalization(host):
    """Nine equal entries (how TIN and KIN use the op, docs/semantics.md 4.5): y = (x - m) / sigma."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 8, 12)).astype(np.float32)
    m = rng.normal(size=(2, 3))
    sigma = rng.uniform(0.5, 2.0, (2, 3))
    mean = S.constant_neighbourhood(m).astype(np.float32)
    std = S.constant_neighbourhood(S.std_for_dense_op(sigma)).astype(np.float32)
    y = host.dense_normalize(x, mean, std)
    ref = (x - m.astype(np.float32)[..., None, None]) / (std[..., :1, :1].astype(np.float64) + S.DN_EPS)
    assert_close(
        y, ref, (np.abs(x) + np.abs(m[..., None, None])) / sigma[..., None, None], F32_TOL, "constant"
    )


def test_dense_rejects_odd_and_empty_sizes(host):
    x, mean, std, gamma, beta = dense_inputs((1, 2, 4, 4))
    for h, w in [(3, 4), (4, 5), (1, 1)]:
        xo = np.zeros((1, 2, h, w), np.float32)
        status, _ = host.dense_normalize_status(xo, mean, std, gamma, beta)
        assert status == K.STATUS_INVALID_VALUE
        with pytest.raises(DnrtError, match="even"):
            host.dense_normalize(xo, mean, std)
    status, _ = host.dense_normalize_status(np.zeros((0, 2, 4, 4), np.float32), mean[:0], std[:0])
    assert status == 0, "an empty batch is a no-op"


# --------------------------------------------------------------------------- CPU: collect step


def check_collect(y, mean, std, x, flavour, gamma, beta, tol, what, activation="none"):
    ref_y, ref_mean, ref_std = S.normalize_own(x, flavour, gamma, beta)
    if activation == "relu":
        ref_y = np.maximum(ref_y, 0.0)
    assert np.all(np.abs(std - ref_std) <= tol * ref_std), f"{what}: std"
    assert np.all(np.abs(mean - ref_mean) <= tol * (np.abs(ref_mean) + ref_std)), f"{what}: mean"
    assert_close(y, ref_y, own_scale(x, ref_mean, ref_std, gamma, beta), tol, f"{what}: y")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_collect_matches_reference(host, mode, vec):
    flavour = S.collect_flavour(mode)
    for shape, affine in [((2, 3, 4, 6), True), ((1, 2, 34, 36), False), ((1, 2, 136, 136), True)]:
        x, _, _, gamma, beta = dense_inputs(shape, seed=vec, affine=affine)
        for activation in ("none", "relu"):
            y, mean, std = host.collect(x, flavour, gamma, beta, activation=activation, vec=vec)
            check_collect(
                y, mean, std, x, flavour, gamma, beta, F32_TOL, f"{mode} {shape} vec {vec}", activation
            )


@pytest.mark.parametrize("offset, spread", [(1000.0, 0.01), (1e4, 1.0), (-300.0, 0.003)])
def test_collect_is_accurate_far_from_zero(host, offset, spread):
    """|mean| >> std: a naive float32 sum of squares loses the std entirely here."""
    rng = np.random.default_rng(11)
    x = (offset + spread * rng.normal(size=(1, 2, 272, 272))).astype(np.float32)
    flavour = S.collect_flavour("in")
    _, mean, std = host.collect(x, flavour)
    _, ref_mean, ref_std = S.normalize_own(x, flavour)
    assert np.all(np.abs(std - ref_std) <= F32_TOL * ref_std)
    assert np.all(np.abs(mean - ref_mean) <= F32_TOL * np.abs(ref_mean))


def test_collect_constant_plane_is_floored(host):
    """A flat tile (docs/semantics.md 8): std = sqrt(eps) for IN, the floor for KIN/DN; y = beta, finite."""
    x = np.full((1, 2, 8, 8), 0.7, np.float32)
    beta = np.array([0.25, -1.0], np.float32)
    for mode in MODES:
        flavour = S.collect_flavour(mode)
        y, mean, std = host.collect(x, flavour, np.ones(2, np.float32), beta)
        expected = max(np.sqrt(flavour.eps), flavour.floor)
        assert np.allclose(std, expected, rtol=1e-6) and np.allclose(mean, 0.7, rtol=1e-7)
        assert np.all(np.isfinite(y)) and np.allclose(y, beta[None, :, None, None])


def test_collect_rejects_bad_shapes(host):
    one = np.ones((1, 1, 1, 1), np.float32)
    status, *_ = host.collect_status(one, S.collect_flavour("dn"), vec=1)
    assert status == K.STATUS_INVALID_VALUE, "a 1x1 map has no unbiased std"
    status, *_ = host.collect_status(one, S.collect_flavour("in"), vec=1)
    assert status == 0, "IN's biased std of one pixel is fine"
    status, *_ = host.collect_status(np.ones((1, 1, 3, 3), np.float32), S.collect_flavour("in"), vec=4)
    assert status == K.STATUS_INVALID_VALUE, "vec must divide h*w"


# --------------------------------------------------------------------------- build tooling


def test_library_search_order(tmp_path, monkeypatch):
    lib = tmp_path / K.HOST_LIB
    lib.write_bytes(b"")
    monkeypatch.setenv(K.PLUGIN_DIR_ENV, str(tmp_path))
    assert K.search_dirs()[0] == tmp_path
    assert K.find_host_library() == lib
    monkeypatch.setenv(K.PLUGIN_DIR_ENV, str(tmp_path / "empty"))
    if K.find_library(K.TRT_PLUGIN_LIB) is None:
        with pytest.raises(DnrtError, match="dnrt build-plugins"):
            K.require_library(K.TRT_PLUGIN_LIB)


def test_build_plugins_reports_missing_tools(tmp_path, monkeypatch):
    monkeypatch.setattr(K.shutil, "which", lambda name: None)
    with pytest.raises(DnrtError, match="cmake not found"):
        K.build_plugins(tmp_path)
    monkeypatch.setattr(K.shutil, "which", lambda name: "/usr/bin/cmake" if name == "cmake" else None)
    monkeypatch.setattr(K, "find_nvcc", lambda: None)
    with pytest.raises(DnrtError, match="nvcc"):
        K.build_plugins(tmp_path)
    with pytest.raises(DnrtError, match="NvInfer.h"):
        K.build_plugins(tmp_path, cuda=False, tensorrt_include=tmp_path)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found")
def test_cmake_host_only_build(tmp_path, host):
    """plugins/CMakeLists.txt with DNRT_BUILD_CUDA=OFF: the CPU library alone, same numbers."""
    built = K.build_plugins(tmp_path, cuda=False, quiet=True)
    assert set(built) == {K.HOST_LIB}
    cmake_host = K.HostKernels(built[K.HOST_LIB])
    x, mean, std, gamma, beta = dense_inputs((2, 3, 6, 10), seed=9)
    a = cmake_host.dense_normalize(x, mean, std, gamma=gamma, beta=beta)
    b = host.dense_normalize(x, mean, std, gamma=gamma, beta=beta)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_nvcc_builds_kernels_library(cuda_build):
    built = cuda_build["built"]
    lib = K.CudaKernels(built[K.KERNELS_LIB])  # loads and checks the ABI version
    assert lib.collect_workspace_size(2, 3, 544, 544) > 0
    assert lib.error_string(K.STATUS_INVALID_VALUE).startswith("invalid argument")
    # Argument checks run before any CUDA call, so they work without a GPU.
    assert lib.dense_norm("float32", 1, 1, 1, None, None, 1, 1, 1, 5, 4) == K.STATUS_INVALID_VALUE
    with pytest.raises(DnrtError, match="unsupported element type"):
        lib.dense_norm("int8", 1, 1, 1, None, None, 1, 1, 1, 4, 4)


@pytest.mark.tensorrt
def test_tensorrt_plugin_smoke(cuda_build):
    """libdnrt_trt_plugin.so loaded as TensorRT loads it, driven without a TensorRT runtime."""
    plugin = cuda_build["built"].get(K.TRT_PLUGIN_LIB)
    if plugin is None:
        assert cuda_build["trt"] is None, "TensorRT headers were found but the plugin was not built"
        pytest.skip("TensorRT headers not found: set TENSORRT_INCLUDE_DIR to TensorRT's include/ folder")
    smoke = cuda_build["dir"] / "dnrt_trt_plugin_smoke"
    result = subprocess.run([str(smoke), str(plugin)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK DenseNorm plugin smoke test" in result.stdout


# --------------------------------------------------------------------------- GPU

DTYPES = {"float32": np.float32, "float16": np.float16}


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (as __float2bfloat16_rn)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def run_dense_gpu(cuda, dtype, x_dev, mean, std, gamma, beta, activation="none", offset=0):
    """DenseNorm on the device. ``x_dev`` holds the element values (float32, float16 or bfloat16
    bits as uint16); Y is pre-filled with NaN; ``offset`` elements shift X and Y off alignment."""
    n, c, h, w = x_dev.shape
    itemsize = x_dev.dtype.itemsize
    xs = np.concatenate([np.zeros(offset, x_dev.dtype), x_dev.ravel()])
    bufs = [cuda.upload(a) for a in (xs, mean, std)]
    gb = cuda.upload(gamma) if gamma is not None else None
    bb = cuda.upload(beta) if beta is not None else None
    y = cuda.malloc(xs.nbytes)
    cuda.memset(y, 0xFF)  # NaN in float32, float16 and bfloat16
    try:
        status = cuda.dense_norm(
            dtype, bufs[0].ptr + offset * itemsize, bufs[1].ptr, bufs[2].ptr, gb.ptr if gb else None,
            bb.ptr if bb else None, y.ptr + offset * itemsize, n, c, h, w, S.DN_EPS, activation == "relu",
        )  # fmt: skip
        cuda.check(status, "dnrt_dense_norm")
        cuda.synchronize()
        out = cuda.download(y, (xs.size,), x_dev.dtype)[offset:].reshape(x_dev.shape)
    finally:
        for b in [*bufs, y, gb, bb]:
            if b is not None:
                cuda.free(b)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    "shape, offset",
    [((1, 1, 2, 2), 0), ((2, 3, 6, 10), 0), ((2, 3, 6, 10), 1), ((3, 4, 16, 8), 0), ((2, 8, 34, 136), 0),
     ((1, 3, 136, 64), 3), ((1, 70000, 2, 2), 0)],
)  # fmt: skip
@pytest.mark.parametrize("activation", ["none", "relu"])
def test_gpu_dense_norm(cuda, host, dtype, shape, offset, activation):
    """Vector paths: 16-byte (W % 4 / W % 8), pairs (W = 6, 10), scalars (offset); > 65535 planes."""
    x, mean, std, gamma, beta = dense_inputs(shape, seed=shape[1] + offset)
    x_dev = x.astype(DTYPES[dtype])
    x = x_dev.astype(np.float32)
    y = run_dense_gpu(cuda, dtype, x_dev, mean, std, gamma, beta, activation, offset)
    assert not np.any(np.isnan(y)), "some output elements were not written"
    ref = S.dense_normalize(x, mean, std, gamma, beta, activation=activation)
    tol = F32_TOL if dtype == "float32" else F16_TOL
    assert_close(
        y.astype(np.float32), ref, dense_scale(x, mean, std, gamma, beta), tol, f"GPU {dtype} {shape}"
    )
    # Same arithmetic as the CPU library, bit for bit (float16: the same float32 result, rounded once).
    cpu = host.dense_normalize(x, mean, std, gamma=gamma, beta=beta, activation=activation)
    assert np.array_equal(y, cpu.astype(DTYPES[dtype])), "GPU and CPU library disagree"


@pytest.mark.gpu
def test_gpu_dense_norm_bfloat16(cuda, host):
    x, mean, std, gamma, beta = dense_inputs((2, 4, 16, 24), seed=2)
    bits = to_bf16_bits(x)
    xb = from_bf16_bits(bits)
    y_bits = run_dense_gpu(cuda, "bfloat16", bits, mean, std, gamma, beta)
    assert not np.any(np.isnan(from_bf16_bits(y_bits))), "some output elements were not written"
    ref = S.dense_normalize(xb, mean, std, gamma, beta)
    assert_close(from_bf16_bits(y_bits), ref, dense_scale(xb, mean, std, gamma, beta), 1e-2, "GPU bfloat16")
    cpu = host.dense_normalize(xb, mean, std, gamma=gamma, beta=beta)
    assert np.array_equal(y_bits, to_bf16_bits(cpu)), "GPU and CPU library disagree"


@pytest.mark.gpu
def test_gpu_dense_norm_rejects_odd_sizes(cuda):
    assert cuda.dense_norm("float32", 1, 1, 1, None, None, 1, 1, 1, 6, 5) == K.STATUS_INVALID_VALUE


def run_collect_gpu(cuda, dtype, x, flavour, gamma, beta, activation="none"):
    n, c, h, w = x.shape
    np_dtype = DTYPES[dtype]
    xb = cuda.upload(x.astype(np_dtype))
    y = cuda.malloc(xb.nbytes)
    cuda.memset(y, 0xFF)
    mean = cuda.malloc(n * c * 4)
    std = cuda.malloc(n * c * 4)
    ws = cuda.malloc(cuda.collect_workspace_size(n, c, h, w))
    gb, bb = cuda.upload(gamma), cuda.upload(beta)
    try:
        status = cuda.collect(
            dtype, xb.ptr, gb.ptr, bb.ptr, y.ptr, mean.ptr, std.ptr, n, c, h, w, flavour, activation == "relu",
            ws.ptr, ws.nbytes,
        )  # fmt: skip
        cuda.check(status, "dnrt_collect")
        cuda.synchronize()
        out = cuda.download(y, x.shape, np_dtype), cuda.download(mean, (n, c), np.float32)
        out = (*out, cuda.download(std, (n, c), np.float32))
    finally:
        for b in (xb, y, mean, std, ws, gb, bb):
            cuda.free(b)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    "shape", [(2, 3, 4, 6), (1, 4, 34, 36), (2, 8, 136, 136), (1, 2, 2, 3), (1, 2, 5, 7)]
)
def test_gpu_collect(cuda, host, mode, dtype, shape):
    flavour = S.collect_flavour(mode)
    x, _, _, gamma, beta = dense_inputs(shape, seed=7)
    if dtype == "float16":
        x = x.astype(np.float16).astype(np.float32)
    y, mean, std = run_collect_gpu(cuda, dtype, x, flavour, gamma, beta, "relu")
    assert not np.any(np.isnan(y.astype(np.float32))), "some output elements were not written"
    check_collect(y.astype(np.float32), mean, std, x, flavour, gamma, beta,
                  F32_TOL if dtype == "float32" else F16_TOL, f"GPU collect {dtype}", "relu")  # fmt: skip
    # The GPU reads 16 bytes at a time when h*w allows (4 floats, 8 halves), else pairs, else
    # scalars; the CPU library replays that partition and reduction tree bit for bit.
    plane = shape[2] * shape[3]
    wide = 4 if dtype == "float32" else 8
    vec = wide if plane % wide == 0 else (2 if plane % 2 == 0 else 1)
    cy, cmean, cstd = host.collect(x, flavour, gamma, beta, activation="relu", vec=vec)
    assert np.array_equal(mean, cmean) and np.array_equal(std, cstd), "statistics differ from the CPU library"
    assert np.array_equal(y, cy.astype(DTYPES[dtype])), "normalized output differs from the CPU library"


@pytest.mark.gpu
def test_gpu_collect_is_deterministic(cuda):
    """Same input, same bits: what makes streaming == two-pass possible."""
    x, _, _, gamma, beta = dense_inputs((2, 16, 136, 136), seed=4)
    flavour = S.collect_flavour("dn")
    a = run_collect_gpu(cuda, "float32", x, flavour, gamma, beta)
    b = run_collect_gpu(cuda, "float32", x, flavour, gamma, beta)
    for u, v in zip(a, b, strict=True):
        assert np.array_equal(u, v)
