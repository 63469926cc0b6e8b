/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * Smoke test of libdnrt_trt_plugin.so without a TensorRT runtime: dlopen the library the way
 * IPluginRegistry::loadLibrary does, take the creator from getCreators(), create plugins from
 * fields shaped like the ONNX parser's (a string attribute arrives as kCHAR data with its NUL
 * counted), and drive the build/runtime interfaces by hand. With a CUDA device it also runs
 * enqueue() and compares with the CPU reference (denseNormHost.cpp), bit for bit.
 *
 *   dnrt_trt_plugin_smoke path/to/libdnrt_trt_plugin.so      -> exit 0 and "OK ..." on success
 *
 * Built by plugins/CMakeLists.txt when TensorRT headers are given; run by tests/test_kernels.py.
 */
#include "NvInferRuntime.h"

#include "denseNormMath.cuh"
#include "dnrt_kernels.h"

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void check(bool ok, char const* what)
{
    if (!ok)
    {
        std::printf("FAIL: %s\n", what);
        ++gFailures;
    }
}

class CapturingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            last = msg;
            std::printf("  [plugin log] %s\n", msg);
        }
    }
    std::string last;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

//! DenseNorm's output shape is X's: the builder is never called, so an unbacked one will do.
class UnusedExprBuilder : public IExprBuilder
{
public:
    UnusedExprBuilder()
    {
        mImpl = nullptr;
    }
};

using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
using SetLoggerFinderFn = void (*)(ILoggerFinder*);

IPluginV3* create(IPluginCreatorV3One* creator, float const* eps, char const* activation, int32_t activationLength,
    TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    std::vector<PluginField> fields;
    if (eps != nullptr)
    {
        fields.emplace_back("eps", eps, PluginFieldType::kFLOAT32, 1);
    }
    if (activation != nullptr)
    {
        fields.emplace_back("activation", activation, PluginFieldType::kCHAR, activationLength);
    }
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    return creator->createPlugin("dense_norm_node", &fc, phase);
}

DynamicPluginTensorDesc dyn(std::vector<int64_t> const& dims, DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.desc.type = type;
    d.desc.format = format;
    d.desc.scale = -1.0F;
    d.min = d.desc.dims;
    d.max = d.desc.dims;
    d.opt = d.desc.dims;
    return d;
}

std::vector<DynamicPluginTensorDesc> io(int64_t n, int64_t c, int64_t h, int64_t w, DataType xType, DataType yType)
{
    return {dyn({n, c, h, w}, xType), dyn({n, c, 3, 3}, DataType::kFLOAT), dyn({n, c, 3, 3}, DataType::kFLOAT),
        dyn({c}, DataType::kFLOAT), dyn({c}, DataType::kFLOAT), dyn({n, c, h, w}, yType)};
}

bool supportsAll(IPluginV3OneBuild* build, std::vector<DynamicPluginTensorDesc> const& t)
{
    for (int32_t pos = 0; pos < 6; ++pos)
    {
        if (!build->supportsFormatCombination(pos, t.data(), 5, 1))
        {
            return false;
        }
    }
    return true;
}

//! enqueue() on the device against the CPU reference, float32 and float16.
void runOnDevice(IPluginV3* plugin, float eps, int relu)
{
    int const n = 2, c = 3, h = 6, w = 10;
    size_t const count = static_cast<size_t>(n) * c * h * w;
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0F, 1.0F);
    std::vector<float> x(count), mean(n * c * 9), stdv(n * c * 9), gamma(c), beta(c), ref(count);
    for (auto& v : x) v = 2.0F * normal(rng) + 0.3F;
    for (auto& v : mean) v = normal(rng);
    for (auto& v : stdv) v = 0.2F + std::fabs(normal(rng));
    for (auto& v : gamma) v = 1.0F + 0.3F * normal(rng);
    for (auto& v : beta) v = 0.3F * normal(rng);

    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    for (DataType type : {DataType::kFLOAT, DataType::kHALF})
    {
        bool const half = type == DataType::kHALF;
        std::vector<float> xin = x;
        std::vector<__half> xh(count), yh(count);
        if (half)
        {
            for (size_t i = 0; i < count; ++i)
            {
                xh[i] = __float2half_rn(x[i]);
                xin[i] = __half2float(xh[i]);
            }
        }
        dnrt_host_dense_norm_f32(xin.data(), mean.data(), stdv.data(), gamma.data(), beta.data(), ref.data(), n, c, h, w,
            eps, relu);
        size_t const xBytes = count * (half ? sizeof(__half) : sizeof(float));
        void *dx = nullptr, *dy = nullptr, *dm = nullptr, *ds = nullptr, *dg = nullptr, *db = nullptr;
        cudaMalloc(&dx, xBytes);
        cudaMalloc(&dy, xBytes);
        cudaMalloc(&dm, mean.size() * 4);
        cudaMalloc(&ds, stdv.size() * 4);
        cudaMalloc(&dg, gamma.size() * 4);
        cudaMalloc(&db, beta.size() * 4);
        cudaMemcpy(dx, half ? static_cast<void const*>(xh.data()) : x.data(), xBytes, cudaMemcpyHostToDevice);
        cudaMemcpy(dm, mean.data(), mean.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(ds, stdv.data(), stdv.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(dg, gamma.data(), gamma.size() * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(db, beta.data(), beta.size() * 4, cudaMemcpyHostToDevice);
        cudaMemset(dy, 0xFF, xBytes); // NaN everywhere: every element must be written

        auto t = io(n, c, h, w, type, type);
        PluginTensorDesc in[5], out[1];
        for (int i = 0; i < 5; ++i) in[i] = t[i].desc;
        out[0] = t[5].desc;
        check(runtime->onShapeChange(in, 5, out, 1) == 0, "onShapeChange accepts a valid shape");
        void const* inputs[5] = {dx, dm, ds, dg, db};
        void* outputs[1] = {dy};
        check(runtime->enqueue(in, out, inputs, outputs, nullptr, nullptr) == 0, "enqueue returns 0");
        check(cudaDeviceSynchronize() == cudaSuccess, "kernel ran");
        size_t mismatches = 0;
        if (half)
        {
            cudaMemcpy(yh.data(), dy, xBytes, cudaMemcpyDeviceToHost);
            for (size_t i = 0; i < count; ++i)
            {
                __half const r = __float2half_rn(ref[i]);
                mismatches += std::memcmp(&r, &yh[i], sizeof(__half)) != 0;
            }
        }
        else
        {
            std::vector<float> y(count);
            cudaMemcpy(y.data(), dy, xBytes, cudaMemcpyDeviceToHost);
            mismatches += std::memcmp(y.data(), ref.data(), xBytes) != 0 ? 1 : 0;
        }
        check(mismatches == 0, half ? "float16 enqueue == CPU reference (bitwise)" : "float32 enqueue == CPU reference");
        std::printf("  device enqueue %s: %zu mismatches\n", half ? "float16" : "float32", mismatches);
        for (void* p : {dx, dy, dm, ds, dg, db}) cudaFree(p);
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::printf("usage: %s libdnrt_trt_plugin.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        std::printf("FAIL: dlopen: %s\n", dlerror());
        return 1;
    }
    auto getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinderFn>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr, "getCreators is exported");
    check(setLoggerFinder != nullptr, "setLoggerFinder is exported");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    CapturingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);

    int32_t nb = 0;
    IPluginCreatorInterface* const* creators = getCreators(nb);
    check(nb == 1 && creators != nullptr && creators[0] != nullptr, "one creator");
    if (nb != 1)
    {
        return 1;
    }
    check(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is V3One");
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    check(std::strcmp(creator->getPluginName(), "DenseNorm") == 0, "name DenseNorm");
    check(std::strcmp(creator->getPluginVersion(), "1") == 0, "version 1");
    check(std::strcmp(creator->getPluginNamespace(), "dnrt") == 0, "namespace dnrt");
    PluginFieldCollection const* names = creator->getFieldNames();
    check(names != nullptr && names->nbFields == 2 && std::strcmp(names->fields[0].name, "eps") == 0
            && std::strcmp(names->fields[1].name, "activation") == 0,
        "fields eps, activation");

    // As the ONNX parser passes them: float attribute -> kFLOAT32, string -> kCHAR incl. NUL.
    float const eps = 1e-7F;
    char const relu[] = "relu";
    IPluginV3* plugin = create(creator, &eps, relu, static_cast<int32_t>(sizeof(relu)));
    check(plugin != nullptr, "createPlugin(eps, activation='relu')");
    if (plugin == nullptr)
    {
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    check(core != nullptr && build != nullptr && runtime != nullptr, "three capability interfaces");
    check(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0, "core interface kind");
    check(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build interface kind");
    check(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "runtime interface kind");
    check(std::strcmp(core->getPluginName(), "DenseNorm") == 0 && std::strcmp(core->getPluginNamespace(), "dnrt") == 0,
        "plugin name and namespace");
    check(build->getNbOutputs() == 1, "one output");

    // Serialization round trip, then a plugin created for the runtime phase from it.
    PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
    check(ser != nullptr && ser->nbFields == 2, "two serialized fields");
    bool sawRelu = false;
    for (int32_t i = 0; ser != nullptr && i < ser->nbFields; ++i)
    {
        if (std::strcmp(ser->fields[i].name, "activation") == 0)
        {
            sawRelu = ser->fields[i].type == PluginFieldType::kCHAR
                && std::strcmp(static_cast<char const*>(ser->fields[i].data), "relu") == 0;
        }
    }
    check(sawRelu, "activation serialized as kCHAR 'relu'");
    IPluginV3* restored = creator->createPlugin("restored", ser, TensorRTPhase::kRUNTIME);
    check(restored != nullptr, "createPlugin from serialized fields (runtime phase)");
    if (restored != nullptr)
    {
        auto* rb = static_cast<IPluginV3OneBuild*>(restored->getCapabilityInterface(PluginCapabilityType::kBUILD));
        check(std::strcmp(rb->getMetadataString(), build->getMetadataString()) == 0, "round trip keeps eps, activation");
        std::printf("  metadata: %s\n", rb->getMetadataString());
        delete restored;
    }

    // Defaults, string without NUL in length, bad values.
    IPluginV3* defaults = create(creator, nullptr, nullptr, 0);
    check(defaults != nullptr, "createPlugin with no fields (defaults)");
    if (defaults != nullptr)
    {
        auto* db = static_cast<IPluginV3OneBuild*>(defaults->getCapabilityInterface(PluginCapabilityType::kBUILD));
        check(std::string(db->getMetadataString()).find("activation=none") != std::string::npos, "default none");
        delete defaults;
    }
    IPluginV3* noNul = create(creator, &eps, relu, 4);
    check(noNul != nullptr, "kCHAR 'relu' with length 4 (no NUL)");
    delete noNul;
    char const bad[] = "gelu";
    check(create(creator, &eps, bad, sizeof(bad)) == nullptr, "activation 'gelu' rejected");
    check(logger.last.find("gelu") != std::string::npos, "rejection logged through setLoggerFinder's logger");
    float const badEps = -1.0F;
    check(create(creator, &badEps, relu, sizeof(relu)) == nullptr, "negative eps rejected");

    // Formats: float32 / float16 / bfloat16 X with Y of the same type; statistics float32 linear.
    check(supportsAll(build, io(2, 8, 16, 16, DataType::kFLOAT, DataType::kFLOAT)), "float32 in/out");
    check(supportsAll(build, io(2, 8, 16, 16, DataType::kHALF, DataType::kHALF)), "float16 in/out");
    check(supportsAll(build, io(2, 8, 16, 16, DataType::kBF16, DataType::kBF16)), "bfloat16 in/out");
    check(!supportsAll(build, io(2, 8, 16, 16, DataType::kHALF, DataType::kFLOAT)), "Y must match X");
    check(!supportsAll(build, io(2, 8, 16, 16, DataType::kINT8, DataType::kINT8)), "int8 rejected");
    auto halfStats = io(2, 8, 16, 16, DataType::kFLOAT, DataType::kFLOAT);
    halfStats[1].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(1, halfStats.data(), 5, 1), "float16 statistics rejected");
    auto chw4 = io(2, 8, 16, 16, DataType::kHALF, DataType::kHALF);
    chw4[0].desc.format = TensorFormat::kCHW4;
    check(!build->supportsFormatCombination(0, chw4.data(), 5, 1), "non-linear format rejected");

    DataType outType{};
    DataType const inTypes[5] = {DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
    check(build->getOutputDataTypes(&outType, 1, inTypes, 5) == 0 && outType == DataType::kHALF, "Y type = X type");

    // getOutputShapes copies X's expressions.
    DimsExprs inExprs[5]{};
    inExprs[0].nbDims = 4;
    for (auto& e : inExprs) e.nbDims = e.nbDims ? e.nbDims : 1;
    DimsExprs outExprs[1]{};
    UnusedExprBuilder exprBuilder;
    check(build->getOutputShapes(inExprs, 5, nullptr, 0, outExprs, 1, exprBuilder) == 0 && outExprs[0].nbDims == 4,
        "output shape = X shape");

    auto good = io(2, 8, 16, 16, DataType::kFLOAT, DataType::kFLOAT);
    check(build->configurePlugin(good.data(), 5, good.data() + 5, 1) == 0, "configurePlugin accepts 16x16");
    auto odd = io(2, 8, 15, 16, DataType::kFLOAT, DataType::kFLOAT);
    check(build->configurePlugin(odd.data(), 5, odd.data() + 5, 1) != 0, "configurePlugin rejects H = 15");
    auto wild = io(-1, 8, -1, -1, DataType::kFLOAT, DataType::kFLOAT);
    wild[0].min.d[2] = 16;
    wild[0].max.d[2] = 64;
    check(build->configurePlugin(wild.data(), 5, wild.data() + 5, 1) == 0, "configurePlugin accepts wildcards");
    auto badStats = io(2, 8, 16, 16, DataType::kFLOAT, DataType::kFLOAT);
    badStats[2].desc.dims.d[3] = 4;
    check(build->configurePlugin(badStats.data(), 5, badStats.data() + 5, 1) != 0, "Std must be [N, C, 3, 3]");
    check(build->getWorkspaceSize(good.data(), 5, good.data() + 5, 1) == 0, "no workspace");

    PluginTensorDesc in[5], out[1];
    for (int i = 0; i < 5; ++i) in[i] = odd[i].desc;
    out[0] = odd[5].desc;
    check(runtime->onShapeChange(in, 5, out, 1) != 0, "onShapeChange rejects H = 15");
    void const* nullInputs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    void* nullOutputs[1] = {nullptr};
    check(runtime->enqueue(in, out, nullInputs, nullOutputs, nullptr, nullptr) != 0, "enqueue rejects H = 15");

    IPluginV3* attached = runtime->attachToContext(nullptr);
    check(attached != nullptr && attached != plugin, "attachToContext clones");
    IPluginV3* cloned = plugin->clone();
    check(cloned != nullptr, "clone");

    int devices = 0;
    if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0)
    {
        runOnDevice(attached != nullptr ? attached : plugin, eps, 1);
    }
    else
    {
        std::printf("  no CUDA device: enqueue on the GPU not run\n");
    }
    delete attached;
    delete cloned;
    delete plugin;
    if (gFailures != 0)
    {
        std::printf("%d check(s) failed\n", gFailures);
        return 1;
    }
    std::printf("OK DenseNorm plugin smoke test (TensorRT headers %d.%d.%d)\n", NV_TENSORRT_MAJOR, NV_TENSORRT_MINOR,
        NV_TENSORRT_PATCH);
    return 0;
}
