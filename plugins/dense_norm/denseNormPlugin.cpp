/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT IPluginV3 DenseNorm plugin (see denseNormPlugin.h) and the library entry points.
 */
#include "denseNormPlugin.h"

#include "denseNormKernel.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <sstream>

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace dnrt
{
namespace trt
{
namespace
{

// ------------------------------------------------------------------------------ logging

//! The logger finder TensorRT hands the library through setLoggerFinder().
class LoggerFinderSlot
{
public:
    void set(nvinfer1::ILoggerFinder* finder)
    {
        std::lock_guard<std::mutex> lock(mMutex);
        if (mFinder == nullptr && finder != nullptr)
        {
            mFinder = finder;
        }
    }

    nvinfer1::ILogger* logger()
    {
        std::lock_guard<std::mutex> lock(mMutex);
        return mFinder != nullptr ? mFinder->findLogger() : nullptr;
    }

private:
    std::mutex mMutex;
    nvinfer1::ILoggerFinder* mFinder{nullptr};
};

LoggerFinderSlot& loggerSlot()
{
    static LoggerFinderSlot slot;
    return slot;
}

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        if (nvinfer1::ILogger* logger = loggerSlot().logger())
        {
            std::string const text = std::string("[dnrt::DenseNorm] ") + message;
            logger->log(severity, text.c_str());
        }
    }
    catch (...)
    {
        // Logging must never take the engine down.
    }
}

void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

// ------------------------------------------------------------------------------ shape checks

enum Input : int32_t
{
    kX = 0,
    kMean = 1,
    kStd = 2,
    kGamma = 3,
    kBeta = 4,
};

//! Dimension agreement where both are known (build-time dims may be -1 wildcards).
bool agree(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

//! Checks the five input shapes against each other; false with a message when they disagree.
//! With runtime (concrete) dims every check is exact; at build time wildcards pass.
bool checkInputShapes(nvinfer1::Dims const* dims, std::string& error)
{
    nvinfer1::Dims const& x = dims[kX];
    if (x.nbDims != 4)
    {
        error = "X must be 4-D [N, C, H, W], got " + std::to_string(x.nbDims) + "-D";
        return false;
    }
    for (int32_t i : {kMean, kStd})
    {
        nvinfer1::Dims const& s = dims[i];
        if (s.nbDims != 4 || !agree(s.d[0], x.d[0]) || !agree(s.d[1], x.d[1]) || !agree(s.d[2], 3)
            || !agree(s.d[3], 3))
        {
            error = std::string(i == kMean ? "Mean" : "Std") + " must be [N, C, 3, 3] matching X";
            return false;
        }
    }
    for (int32_t i : {kGamma, kBeta})
    {
        nvinfer1::Dims const& s = dims[i];
        if (s.nbDims != 1 || !agree(s.d[0], x.d[1]))
        {
            error = std::string(i == kGamma ? "Gamma" : "Beta") + " must be [C] matching X";
            return false;
        }
    }
    for (int32_t axis : {2, 3})
    {
        int64_t const size = x.d[axis];
        if (size >= 0 && (size == 0 || size % 2 != 0))
        {
            error = "DenseNorm needs an even, positive H and W (the reference geometry puts the tile centre "
                    "between two pixels); got "
                + std::string(axis == 2 ? "H = " : "W = ") + std::to_string(size)
                + ": choose tile and margin so every norm layer's map is even";
            return false;
        }
    }
    return true;
}

bool isSupportedInputType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

std::string formatEps(float eps)
{
    std::ostringstream os;
    os.precision(9);
    os << eps;
    return os.str();
}

} // namespace

// ------------------------------------------------------------------------------ field parsing

bool parseDenseNormFields(PluginFieldCollection const* fc, float& eps, bool& relu, std::string& error)
{
    eps = kDenseNormDefaultEps;
    relu = false;
    if (fc == nullptr || fc->nbFields <= 0 || fc->fields == nullptr)
    {
        return true;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            continue;
        }
        std::string const name(f.name);
        if (name == "eps")
        {
            if (f.data == nullptr || f.length < 1)
            {
                error = "field 'eps' has no value";
                return false;
            }
            if (f.type == PluginFieldType::kFLOAT32)
            {
                eps = *static_cast<float const*>(f.data);
            }
            else if (f.type == PluginFieldType::kFLOAT64)
            {
                eps = static_cast<float>(*static_cast<double const*>(f.data));
            }
            else
            {
                error = "field 'eps' must be float32";
                return false;
            }
            if (!std::isfinite(eps) || eps < 0.0F)
            {
                error = "field 'eps' must be a finite number >= 0, got " + formatEps(eps);
                return false;
            }
        }
        else if (name == "activation")
        {
            if (f.type == PluginFieldType::kCHAR)
            {
                // The ONNX parser passes a string attribute as kCHAR data with its NUL terminator
                // counted in `length`; getFieldsToSerialize() does the same. Accept either way.
                std::string value;
                if (f.data != nullptr && f.length > 0)
                {
                    auto const* chars = static_cast<char const*>(f.data);
                    value.assign(chars, strnlen(chars, static_cast<size_t>(f.length)));
                }
                if (value == "none" || value.empty())
                {
                    relu = false;
                }
                else if (value == "relu")
                {
                    relu = true;
                }
                else
                {
                    error = "field 'activation' must be 'none' or 'relu', got '" + value + "'";
                    return false;
                }
            }
            else if (f.type == PluginFieldType::kINT32 && f.data != nullptr && f.length >= 1)
            {
                // Convenience for network-API users: 0 = none, 1 = relu.
                int32_t const v = *static_cast<int32_t const*>(f.data);
                if (v != 0 && v != 1)
                {
                    error = "field 'activation' as int32 must be 0 (none) or 1 (relu)";
                    return false;
                }
                relu = v == 1;
            }
            else
            {
                error = "field 'activation' must be a string ('none' or 'relu')";
                return false;
            }
        }
        // Other fields (e.g. a future attribute) are ignored on purpose.
    }
    return true;
}

// ------------------------------------------------------------------------------ plugin

DenseNormPlugin::DenseNormPlugin(float eps, bool relu)
    : mEps(eps)
    , mRelu(relu)
{
    refreshStrings();
}

DenseNormPlugin::DenseNormPlugin(DenseNormPlugin const& other)
    : mEps(other.mEps)
    , mRelu(other.mRelu)
{
    refreshStrings();
}

void DenseNormPlugin::refreshStrings()
{
    mActivation = mRelu ? "relu" : "none";
    mMetadata = "eps=" + formatEps(mEps) + ";activation=" + mActivation;
}

IPluginCapability* DenseNormPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* DenseNormPlugin::clone() noexcept
{
    try
    {
        return new DenseNormPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logError(std::string("clone failed: ") + e.what());
    }
    return nullptr;
}

char const* DenseNormPlugin::getPluginName() const noexcept
{
    return kDenseNormName;
}

char const* DenseNormPlugin::getPluginVersion() const noexcept
{
    return kDenseNormVersion;
}

char const* DenseNormPlugin::getPluginNamespace() const noexcept
{
    return kDenseNormNamespace;
}

int32_t DenseNormPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kDenseNormInputs || nbOutputs != 1)
        {
            logError("expects 5 inputs (X, Mean, Std, Gamma, Beta) and 1 output");
            return -1;
        }
        nvinfer1::Dims dims[kDenseNormInputs];
        for (int32_t i = 0; i < kDenseNormInputs; ++i)
        {
            dims[i] = in[i].desc.dims;
        }
        std::string error;
        if (!checkInputShapes(dims, error))
        {
            logError(error);
            return -1;
        }
        // Profile bounds: H and W must be even wherever the profile fixes them.
        for (int32_t axis : {2, 3})
        {
            int64_t const lo = in[kX].min.d[axis];
            int64_t const hi = in[kX].max.d[axis];
            if (lo == hi && lo > 0 && lo % 2 != 0)
            {
                logError("the optimization profile fixes an odd " + std::string(axis == 2 ? "H" : "W") + " of "
                    + std::to_string(lo) + "; DenseNorm needs even maps");
                return -1;
            }
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("configurePlugin failed: ") + e.what());
    }
    return -1;
}

int32_t DenseNormPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != 1 || nbInputs != kDenseNormInputs)
    {
        logError("getOutputDataTypes: expects 5 inputs and 1 output");
        return -1;
    }
    outputTypes[0] = inputTypes[kX];
    return 0;
}

int32_t DenseNormPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kDenseNormInputs || nbOutputs != 1
        || nbShapeInputs != 0)
    {
        logError("getOutputShapes: expects 5 tensor inputs, no shape inputs and 1 output");
        return -1;
    }
    if (inputs[kX].nbDims != 4)
    {
        logError("X must be 4-D [N, C, H, W]");
        return -1;
    }
    outputs[0] = inputs[kX]; // Y has X's shape
    return 0;
}

bool DenseNormPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kDenseNormInputs || nbOutputs != 1 || pos < 0 || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == kX)
    {
        return isSupportedInputType(desc.type);
    }
    if (pos == nbInputs) // Y: the type of X
    {
        return desc.type == inOut[kX].desc.type;
    }
    return desc.type == DataType::kFLOAT; // statistics, gamma, beta
}

int32_t DenseNormPlugin::getNbOutputs() const noexcept
{
    return 1;
}

size_t DenseNormPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* DenseNormPlugin::getTimingCacheID() noexcept
{
    // Shapes and formats are added by TensorRT; the attributes are all that is left.
    return mMetadata.c_str();
}

char const* DenseNormPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

int32_t DenseNormPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != kDenseNormInputs || nbOutputs != 1)
        {
            logError("onShapeChange: expects 5 inputs and 1 output");
            return -1;
        }
        nvinfer1::Dims dims[kDenseNormInputs];
        for (int32_t i = 0; i < kDenseNormInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string error;
        if (!checkInputShapes(dims, error))
        {
            logError(error);
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        logError(std::string("onShapeChange failed: ") + e.what());
    }
    return -1;
}

int32_t DenseNormPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    nvinfer1::Dims const& d = inputDesc[kX].dims;
    if (d.nbDims != 4)
    {
        return -1;
    }
    for (int32_t i = 0; i < 4; ++i)
    {
        if (d.d[i] < 0 || d.d[i] > INT32_MAX)
        {
            logError("enqueue: dimension out of range");
            return -1;
        }
    }
    ElemType type = ElemType::kFloat32;
    switch (inputDesc[kX].type)
    {
    case DataType::kFLOAT: type = ElemType::kFloat32; break;
    case DataType::kHALF: type = ElemType::kFloat16; break;
    case DataType::kBF16: type = ElemType::kBFloat16; break;
    default: logError("enqueue: unsupported X type"); return -1;
    }
    cudaError_t const status = denseNormForward(type, inputs[kX], static_cast<float const*>(inputs[kMean]),
        static_cast<float const*>(inputs[kStd]), static_cast<float const*>(inputs[kGamma]),
        static_cast<float const*>(inputs[kBeta]), outputs[0], static_cast<int>(d.d[0]), static_cast<int>(d.d[1]),
        static_cast<int>(d.d[2]), static_cast<int>(d.d[3]), mEps, mRelu ? 1 : 0, stream);
    if (status != cudaSuccess)
    {
        logError(std::string("enqueue: ") + cudaGetErrorString(status));
        return static_cast<int32_t>(status);
    }
    return 0;
}

IPluginV3* DenseNormPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    // No per-context resources: the kernel needs no handles, no workspace, no device constants.
    return clone();
}

PluginFieldCollection const* DenseNormPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields.clear();
        mSerialFields.emplace_back("eps", &mEps, PluginFieldType::kFLOAT32, 1);
        mSerialFields.emplace_back(
            "activation", mActivation.c_str(), PluginFieldType::kCHAR, static_cast<int32_t>(mActivation.size() + 1));
        mSerialFc.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialFc.fields = mSerialFields.data();
        return &mSerialFc;
    }
    catch (std::exception const& e)
    {
        logError(std::string("getFieldsToSerialize failed: ") + e.what());
    }
    return nullptr;
}

// ------------------------------------------------------------------------------ creator

DenseNormCreator::DenseNormCreator()
{
    mFields.emplace_back("eps", nullptr, PluginFieldType::kFLOAT32, 1);
    mFields.emplace_back("activation", nullptr, PluginFieldType::kCHAR, 0);
    mFc.nbFields = static_cast<int32_t>(mFields.size());
    mFc.fields = mFields.data();
}

char const* DenseNormCreator::getPluginName() const noexcept
{
    return kDenseNormName;
}

char const* DenseNormCreator::getPluginVersion() const noexcept
{
    return kDenseNormVersion;
}

char const* DenseNormCreator::getPluginNamespace() const noexcept
{
    return kDenseNormNamespace;
}

PluginFieldCollection const* DenseNormCreator::getFieldNames() noexcept
{
    return &mFc;
}

IPluginV3* DenseNormCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        float eps = kDenseNormDefaultEps;
        bool relu = false;
        std::string error;
        if (!parseDenseNormFields(fc, eps, relu, error))
        {
            logError(std::string("node '") + (name != nullptr ? name : "?") + "': " + error);
            return nullptr;
        }
        return new DenseNormPlugin(eps, relu);
    }
    catch (std::exception const& e)
    {
        logError(std::string("createPlugin failed: ") + e.what());
    }
    return nullptr;
}

} // namespace trt
} // namespace dnrt

// ------------------------------------------------------------------------------ library entry points
// IPluginRegistry::loadLibrary and `trtexec --dynamicPlugins` look these up with dlsym. getCreators
// is the entry point for IPluginCreatorV3One (TensorRT >= 10.0); the older getPluginCreators can
// only return IPluginV2 creators, so this V3-only library does not export it.
// (TensorRT's own TENSORRTAPI macro expands to nothing outside TensorRT's build, and the library
// is compiled with hidden visibility, so the export is spelled out here.)
#if defined(_WIN32)
#define DNRT_PLUGIN_EXPORT __declspec(dllexport)
#else
#define DNRT_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

extern "C" DNRT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dnrt::trt::DenseNormCreator sDenseNormCreator;
    static nvinfer1::IPluginCreatorInterface* const kCreators[] = {&sDenseNormCreator};
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

extern "C" DNRT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    dnrt::trt::loggerSlot().set(finder);
}
