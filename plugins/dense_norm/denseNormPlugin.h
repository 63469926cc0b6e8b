/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * TensorRT IPluginV3 plugin for dnrt's DenseNorm op (domain `dnrt`, op `DenseNorm`, version 1).
 *
 *   inputs : X [N, C, H, W] float32 | float16 | bfloat16, linear (H, W even)
 *            Mean [N, C, 3, 3], Std [N, C, 3, 3], Gamma [C], Beta [C]: float32, linear
 *   output : Y, same shape and type as X
 *   fields : eps (float32, default 1e-7), activation ("none" | "relu", char, default "none")
 *
 * Plugin name "DenseNorm", version "1", namespace "dnrt". The library exports getCreators()
 * and setLoggerFinder(), the entry points IPluginRegistry::loadLibrary and
 * `trtexec --dynamicPlugins` look for.
 */
#pragma once

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>
#include <vector>

namespace dnrt
{
namespace trt
{

constexpr char const* kDenseNormName = "DenseNorm";
constexpr char const* kDenseNormVersion = "1";
constexpr char const* kDenseNormNamespace = "dnrt";
constexpr float kDenseNormDefaultEps = 1e-7F;
constexpr int32_t kDenseNormInputs = 5;

class DenseNormPlugin : public nvinfer1::IPluginV3,
                        public nvinfer1::IPluginV3OneCore,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime
{
public:
    DenseNormPlugin(float eps, bool relu);
    DenseNormPlugin(DenseNormPlugin const& other);
    DenseNormPlugin& operator=(DenseNormPlugin const&) = delete;
    ~DenseNormPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    float eps() const noexcept
    {
        return mEps;
    }
    bool relu() const noexcept
    {
        return mRelu;
    }

private:
    void refreshStrings();

    float mEps;
    bool mRelu;
    std::string mActivation; //!< "none" | "relu", serialized as a kCHAR field
    std::string mMetadata;   //!< timing-cache id / metadata: the attributes as text
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialFc{};
};

class DenseNormCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    DenseNormCreator();
    ~DenseNormCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFc{};
};

//! Parse the plugin fields (as the ONNX parser or getFieldsToSerialize() give them). Returns
//! false with a message for a bad value; unknown fields are ignored, missing ones keep defaults.
bool parseDenseNormFields(nvinfer1::PluginFieldCollection const* fc, float& eps, bool& relu, std::string& error);

} // namespace trt
} // namespace dnrt
