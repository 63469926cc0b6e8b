"""The TensorRT backend end to end on strict fakes of ``tensorrt`` and cuda-python's cudart.

No machine dnrt is developed on has TensorRT or a GPU, so ``runtime/backends/trt.py`` is run
here against ``fake_tensorrt`` and ``fake_cudart`` (their docstrings say what they model and
check): the engine "runs" the bundle's graph with ONNX Runtime, DenseNorm through the fake
plugin (dnrt's reference function body). What this proves is that trt.py drives the TensorRT
10 / cuda-python API by its real names and conventions, with pinned buffers kept alive until
their stream is synchronised, shapes inside the profile, every tensor address set, nothing
leaked; and that tiles come back to the right place (the result equals the ONNX Runtime
backend's). It does not prove TensorRT's numbers or the CUDA plugin: that needs a GPU
(tests/test_trt_backend.py).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")  # the small bundle is exported from a torch module

import fake_cudart
import fake_tensorrt

from dnrt.data.synthetic import render_region
from dnrt.runtime.api import Translator


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``tensorrt`` and ``cuda.bindings.runtime`` are the fakes; a plugin file and an engine
    cache in ``tmp_path``; the registry sees a GPU."""
    fake_cudart.reset()
    fake_tensorrt.reset()
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.__path__ = []  # a package
    bindings.__path__ = []
    cuda.bindings = bindings  # type: ignore[attr-defined]
    bindings.runtime = fake_cudart  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cudart)
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / fake_tensorrt.PLUGIN_FILE).write_bytes(b"\x7fELF fake")
    monkeypatch.setenv("DNRT_PLUGIN_DIR", str(plugins))
    monkeypatch.setenv("DNRT_CACHE_DIR", str(tmp_path / "cache"))

    import dnrt.runtime.backends as registry

    real = registry._cuda_visible
    monkeypatch.setattr(registry, "_cuda_visible", lambda kind: kind == "torch-or-cuda-python" or real(kind))
    yield tmp_path
    assert fake_cudart.live_allocations() == {"pinned": 0, "device": 0, "streams": 0, "events": 0}


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return render_region(0, 4096, 4096, 1800, 1900, 1800, 1930, stain="he")  # 4 x 5 tiles of 32 px


@pytest.fixture(scope="module")
def ort_results(small_bundle_path, tissue) -> dict[str, np.ndarray]:
    out = {}
    for mode in ("in", "tin", "kin", "dn"):
        with Translator(small_bundle_path, mode=mode, backend="ort", kin_kernel=3, batch=3) as t:
            out[mode] = t.translate(tissue).astype(np.int16)
    return out


@pytest.mark.parametrize("schedule", ["streaming", "two-pass"])
@pytest.mark.parametrize("mode", ["in", "tin", "kin", "dn"])
def test_trt_backend_on_fakes_matches_ort(
    fake_gpu, small_bundle_path, tissue, ort_results, mode: str, schedule: str
) -> None:
    # batch 3 with a profile of 2: _batched splits the runs, and the last chunk is smaller.
    with Translator(
        small_bundle_path,
        mode=mode,
        schedule=schedule,
        backend="trt",
        kin_kernel=3,
        batch=3,
        backend_options={"batch": 2},
    ) as t:
        assert t.backend.name == "trt"
        assert "TensorRT 10.16" in t.backend.describe()
        got = t.translate(tissue).astype(np.int16)
        again = t.translate(tissue).astype(np.int16)  # buffers reused on a second image
    np.testing.assert_array_equal(got, again)
    diff = np.abs(got - ort_results[mode])
    assert got.shape == tissue.shape
    assert diff.max() <= 1, (mode, schedule, diff.max())
    # Engines were built once and cached on disk.
    engines = sorted(p.name.split("_")[0] for p in (fake_gpu / "cache" / "engines").glob("*.engine"))
    assert engines == (["stats"] if mode == "in" else ["dense", "stats"])


def test_trt_fp16_path_runs_and_keeps_reductions_fp32(
    fake_gpu, monkeypatch, small_bundle_path, tissue, ort_results
) -> None:
    flags, outputs = [], []
    set_flag, set_output_type = fake_tensorrt.IBuilderConfig.set_flag, fake_tensorrt.ILayer.set_output_type

    def spy_flag(self, flag):
        flags.append(flag)
        return set_flag(self, flag)

    def spy_output(self, index, dtype):
        outputs.append((self.type, self.precision, dtype))
        return set_output_type(self, index, dtype)

    monkeypatch.setattr(fake_tensorrt.IBuilderConfig, "set_flag", spy_flag)
    monkeypatch.setattr(fake_tensorrt.ILayer, "set_output_type", spy_output)
    with Translator(small_bundle_path, mode="dn", backend="trt", backend_options={"precision": "fp16"}) as t:
        got = t.translate(tissue).astype(np.int16)
        assert t.backend.describe().endswith("fp16")
        # Image I/O is fp16 (half the bytes over PCIe), statistics stay fp32; the runner reads
        # the types from the engine, and the fake engine reads the device bytes in those types.
        stats, dense = t.backend.stats_engine, t.backend.dense_engine
        assert stats.dtypes["tiles"] == np.float16 and stats.dtypes["image"] == np.float16
        assert stats.dtypes["tile_mean"] == np.float32 and stats.dtypes["collect_params"] == np.float32
        assert dense.dtypes["tiles"] == dense.dtypes["image"] == np.float16
        assert dense.dtypes["nbr_mean"] == np.float32
        assert dense.device["tiles"][1] < 4 * 3 * 48 * 48 * 4  # fp16-sized, not float32-sized
    assert fake_tensorrt.BuilderFlag.FP16 in flags
    assert fake_tensorrt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS in flags
    reduce = fake_tensorrt.LayerType.REDUCE
    assert outputs and all(
        entry == (reduce, fake_tensorrt.float32, fake_tensorrt.float32) for entry in outputs
    )
    # The fake computes in fp32 between fp16 I/O: this checks the plumbing, not fp16 kernels.
    assert np.abs(got - ort_results["dn"]).max() <= 1


@pytest.mark.parametrize(
    ("mode", "schedule"), [("in", "streaming"), ("tin", "streaming"), ("kin", "two-pass"), ("dn", "two-pass")]
)
def test_trt_fp16_io_every_mode_and_schedule(
    fake_gpu, small_bundle_path, tissue, ort_results, mode: str, schedule: str
) -> None:
    """fp16 engine I/O in every mode: the statistics each mode feeds back (TIN's and KIN's
    thumbnail pass, DN's table) travel in the engine's types, not an assumed float32."""
    with Translator(
        small_bundle_path,
        mode=mode,
        schedule=schedule,
        backend="trt",
        kin_kernel=3,
        batch=3,
        backend_options={"precision": "fp16", "batch": 2},
    ) as t:
        got = t.translate(tissue).astype(np.int16)
        assert t.backend.stats_engine.dtypes["tiles"] == np.float16
    assert np.abs(got - ort_results[mode]).max() <= 1, (mode, schedule)


def _tensorrt_11(monkeypatch) -> None:
    """Make the fake look like TensorRT 11: strongly typed only, no FP16 / precision-constraint flags."""
    import enum

    flags = enum.Enum("BuilderFlag", {"DEBUG": 2, "TF32": 6})
    monkeypatch.setattr(fake_tensorrt, "BuilderFlag", flags)
    monkeypatch.setattr(fake_tensorrt, "__version__", "11.1.0.4")


def test_trt_11_runs_fp32_and_refuses_fp16_clearly(
    fake_gpu, monkeypatch, small_bundle_path, tissue, ort_results
):
    from dnrt.errors import DnrtError

    _tensorrt_11(monkeypatch)
    with Translator(small_bundle_path, mode="dn", backend="trt") as t:
        got = t.translate(tissue).astype(np.int16)
        assert "TensorRT 11.1" in t.backend.describe()
    assert np.abs(got - ort_results["dn"]).max() <= 1
    with pytest.raises(DnrtError, match="strongly typed networks only.*torch-cuda for fp16"):
        Translator(small_bundle_path, mode="dn", backend="trt", backend_options={"precision": "fp16"}).open()
    assert not list((fake_gpu / "cache" / "engines").glob("*fp16*"))  # refused before any build


def test_trt_engine_cache_hit_needs_no_graph_preparation(fake_gpu, monkeypatch, small_bundle_path) -> None:
    import dnrt.runtime.backends.trt as trt_module
    from dnrt.bundle import load_bundle
    from dnrt.runtime.backends.trt import TrtBackend
    from dnrt.runtime.backends.trt_cache import engine_key

    bundle = load_bundle(small_bundle_path)
    with TrtBackend(bundle, batch=2) as first:
        assert first.built == ["stats", "dense"]
    prepared = []
    real = trt_module.prepare_graph
    monkeypatch.setattr(trt_module, "prepare_graph", lambda p, w: prepared.append(w) or real(p, w))
    with TrtBackend(bundle, batch=2) as second:
        assert second.built == [] and prepared == []  # no parse, no onnx import on a hit
    with TrtBackend(bundle, batch=3) as third:  # another profile: another engine
        assert third.built == ["stats", "dense"] and prepared == ["stats", "dense"]
    base = engine_key(b"graph", "GPU", "89", "10.16", "fp32", "s32-48_b2")
    assert base != engine_key(b"graph", "GPU", "89", "10.16", "fp16", "s32-48_b2")
    assert base != engine_key(b"graph", "GPU", "90", "10.16", "fp32", "s32-48_b2")
    assert base != engine_key(b"graph", "GPU", "89", "11.1", "fp32", "s32-48_b2")
    assert base != engine_key(b"graph2", "GPU", "89", "10.16", "fp32", "s32-48_b2")
    assert "/" not in engine_key(b"g", "NVIDIA H200 / SXM", "90", "10.16", "fp32", "s")


def test_trt_cli_on_fakes(fake_gpu, small_bundle_path, tissue, ort_results) -> None:
    tifffile = pytest.importorskip("tifffile")
    from click.testing import CliRunner

    from dnrt.runtime.cli import translate_command

    src, dst = fake_gpu / "in.tif", fake_gpu / "out.tif"
    tifffile.imwrite(src, tissue, photometric="rgb", tile=(32, 32), compression="zlib")
    args = [str(src), "-o", str(dst), "--model", str(small_bundle_path), "--mode", "dn"]
    result = CliRunner().invoke(translate_command, [*args, "--backend", "trt", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    got = tifffile.imread(dst).astype(np.int16)
    assert np.abs(got - ort_results["dn"]).max() <= 1


def test_out_of_profile_shape_is_reported(fake_gpu, small_bundle_path) -> None:
    from dnrt.bundle import load_bundle
    from dnrt.errors import DnrtError
    from dnrt.runtime.backends.trt import TrtBackend
    from dnrt.semantics import collect_flavour

    with TrtBackend(load_bundle(small_bundle_path), batch=2) as backend:
        too_big = np.zeros((1, 3, 64, 64), np.float32)  # profile: 32..48 px
        with pytest.raises(DnrtError, match="outside the engine's profile"):
            backend.collect(too_big, collect_flavour("dn"))


# --------------------------------------------------------------------------- the fakes are strict


def test_fake_tensorrt_rejects_misspellings_and_wrong_types(fake_gpu) -> None:
    trt = fake_tensorrt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    with pytest.raises(AttributeError):
        builder.create_network_v2(0)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        builder.max_batch_size = 4  # removed in TensorRT 10; __slots__ refuse it
    with pytest.raises(TypeError):
        trt.Builder("logger")  # type: ignore[arg-type]
    config = builder.create_builder_config()
    with pytest.raises(TypeError):
        config.set_memory_pool_limit("workspace", 1 << 20)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        config.set_flag("FP16")  # type: ignore[arg-type]
    profile = builder.create_optimization_profile()
    with pytest.raises(RuntimeError):
        profile.set_shape("tiles", (1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 48, 48))  # min > opt
    with pytest.raises(TypeError):
        profile.set_shape("tiles", (1, 3, 32.0, 32), (1, 3, 32, 32), (1, 3, 48, 48))
    with pytest.raises(TypeError):
        trt.get_plugin_registry().load_library(Path("/x.so"))  # type: ignore[arg-type]


def _tiny_engine(tmp_path: Path):
    """A one-node engine (image = Tanh(tiles)) on the fakes, and its context."""
    import onnx
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Tanh", ["tiles"], ["image"])],
        "tiny",
        [helper.make_tensor_value_info("tiles", f32, ["N", 2])],
        [helper.make_tensor_value_info("image", f32, ["N", 2])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))
    trt = fake_tensorrt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse(data)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("tiles", (1, 2), (2, 2), (2, 2))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))
    return engine, engine.create_execution_context()


def _ok(result: tuple):
    assert int(result[0]) == 0, result
    return result[1] if len(result) == 2 else None


def test_fake_engine_needs_addresses_shapes_and_an_int_stream(fake_gpu) -> None:
    cudart = fake_cudart
    engine, context = _tiny_engine(fake_gpu)
    with pytest.raises(AttributeError):
        context.execute_async_v2([0, 0], 0)  # type: ignore[attr-defined]  # gone in TensorRT 10
    stream = _ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    ptr_in, ptr_out = _ok(cudart.cudaMalloc(16)), _ok(cudart.cudaMalloc(16))
    assert context.set_input_shape("tiles", (2, 2))
    assert not context.set_input_shape("tiles", (3, 2))  # outside the profile: False, as TensorRT
    context.set_tensor_address("tiles", ptr_in)
    with pytest.raises(RuntimeError, match="no address set for \\['image'\\]"):
        context.execute_async_v3(int(stream))
    with pytest.raises(TypeError):
        context.set_tensor_address("image", float(ptr_out))  # type: ignore[arg-type]
    context.set_tensor_address("image", ptr_out)
    with pytest.raises(TypeError):
        context.execute_async_v3(stream)  # type: ignore[arg-type]  # the handle must be an int
    assert tuple(context.get_tensor_shape("image")) == (2, 2)
    assert context.execute_async_v3(int(stream))
    _ok(cudart.cudaStreamSynchronize(stream))
    for ptr in (ptr_in, ptr_out):
        _ok(cudart.cudaFree(ptr))
    _ok(cudart.cudaStreamDestroy(stream))


def test_fake_cudart_is_asynchronous_and_insists_on_pinned_memory(fake_gpu) -> None:
    import ctypes

    cudart = fake_cudart
    h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
    d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    with pytest.raises(AttributeError):
        cudart.cudaMallocPinned(16)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        cudart.cudaMallocHost(16.0)  # type: ignore[arg-type]
    stream = _ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    dev = _ok(cudart.cudaMalloc(16))
    pageable = np.arange(4, dtype=np.float32)
    with pytest.raises(cudart.FakeCudaMisuse, match="not inside a live cudaMallocHost block"):
        cudart.cudaMemcpyAsync(dev, pageable.ctypes.data, 16, h2d, stream)
    with pytest.raises(TypeError):
        cudart.cudaMemcpyAsync(dev, pageable, 16, h2d, stream)  # type: ignore[arg-type]
    host = _ok(cudart.cudaMallocHost(16))
    view = np.frombuffer((ctypes.c_byte * 16).from_address(host), np.float32)
    with pytest.raises(TypeError):
        cudart.cudaMemcpyAsync(dev, host, 16, h2d, int(stream))  # type: ignore[arg-type]
    view[:] = 1.0
    _ok(cudart.cudaMemcpyAsync(dev, host, 16, h2d, stream))
    view[:] = 2.0  # before the synchronisation: the copy has not run yet, so it sees 2.0
    with pytest.raises(cudart.FakeCudaMisuse, match="pending"):
        cudart.cudaFreeHost(host)
    event = _ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))
    _ok(cudart.cudaEventRecord(event, stream))
    _ok(cudart.cudaEventSynchronize(event))
    view[:] = 0.0
    _ok(cudart.cudaMemcpyAsync(host, dev, 16, d2h, stream))
    _ok(cudart.cudaStreamSynchronize(stream))
    assert view.tolist() == [2.0] * 4
    assert int(cudart.cudaFreeHost(host + 4)[0]) != 0  # not the start of a block
    for result in (
        cudart.cudaFreeHost(host),
        cudart.cudaFree(dev),
        cudart.cudaEventDestroy(event),
        cudart.cudaStreamDestroy(stream),
    ):
        _ok(result)
    assert int(cudart.cudaFree(dev)[0]) != 0  # a double free is an error


@pytest.mark.parametrize("schedule", ["streaming", "two-pass"])
def test_trt_on_the_second_gpu(
    fake_gpu, monkeypatch, small_bundle_path, tissue, ort_results, schedule
) -> None:
    """The current CUDA device is per host thread: memory the scheduler's worker threads
    allocate must still land on the backend's GPU."""
    monkeypatch.setattr(fake_cudart, "DEVICE_COUNT", 2)
    with Translator(
        small_bundle_path, mode="dn", schedule=schedule, backend="trt", backend_options={"device_index": 1}
    ) as t:
        got = t.translate(tissue).astype(np.int16)
    assert np.abs(got - ort_results["dn"]).max() <= 1
