/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * C++ launchers of the DenseNorm and collect kernels (denseNormKernel.cu). Used by the
 * TensorRT plugin (denseNormPlugin.cpp) and by the C ABI (dnrtKernelsCApi.cpp); the
 * arithmetic itself lives in denseNormMath.cuh.
 */
#pragma once

#include <cstddef>
#include <cuda_runtime_api.h>

namespace dnrt
{

//! Element type of X / Y (the statistics, gamma and beta are always float32).
enum class ElemType : int
{
    kFloat32 = 0,
    kFloat16 = 1,
    kBFloat16 = 2,
};

//! One fused DenseNorm pass: y = (x - mu_p) * rinv_p * gamma + beta (+ ReLU), NCHW linear.
//! mean / std: [N, C, 3, 3] float32; gamma / beta: [C] float32 or nullptr (identity).
//! Rejects (cudaErrorInvalidValue) odd or non-positive H, W and null buffers; N or C = 0 is a no-op.
cudaError_t denseNormForward(ElemType type, void const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, void* y, int n, int c, int h, int w, float eps, int relu, cudaStream_t stream) noexcept;

//! Device workspace (bytes) that collectForward needs for this shape; 0 for an empty batch.
size_t collectWorkspaceSize(int n, int c, int h, int w) noexcept;

//! Collect step: per-(n, c) mean and std in the flavour (ddof, eps, stdFloor), written to
//! meanOut / stdOut ([N, C] float32, either may be null), and y = normalized x when y != null.
cudaError_t collectForward(ElemType type, void const* x, float const* gamma, float const* beta, void* y,
    float* meanOut, float* stdOut, int n, int c, int h, int w, int ddof, double eps, double stdFloor, int relu,
    void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept;

} // namespace dnrt
