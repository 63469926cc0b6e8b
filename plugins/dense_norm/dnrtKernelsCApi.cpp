/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * The C ABI of libdnrt_kernels.so (dnrt_kernels.h): thin wrappers over the C++ launchers,
 * plus a few CUDA runtime helpers so a process with no other CUDA library (ctypes tests, a
 * C caller) can drive the kernels. The CUDA runtime is linked statically: the library needs
 * only the driver at run time.
 */
#include "denseNormKernel.h"
#include "dnrt_kernels.h"

#include <cuda_runtime_api.h>

namespace
{

cudaStream_t toStream(dnrt_stream_t s)
{
    return reinterpret_cast<cudaStream_t>(s);
}

} // namespace

extern "C" {

DNRT_API int dnrt_kernels_abi_version(void)
{
    return DNRT_KERNELS_ABI_VERSION;
}

DNRT_API char const* dnrt_error_string(int code)
{
    if (code == cudaErrorInvalidValue)
    {
        return "invalid argument (DenseNorm needs even, positive H and W; collect needs h*w > ddof; "
               "buffers must be non-null and the workspace large enough and 256-byte aligned)";
    }
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

DNRT_API int dnrt_dense_norm_f32(float const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, float* y, int n, int c, int h, int w, float eps, int relu, dnrt_stream_t stream)
{
    return dnrt::denseNormForward(
        dnrt::ElemType::kFloat32, x, mean, std, gamma, beta, y, n, c, h, w, eps, relu, toStream(stream));
}

DNRT_API int dnrt_dense_norm_f16(void const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, void* y, int n, int c, int h, int w, float eps, int relu, dnrt_stream_t stream)
{
    return dnrt::denseNormForward(
        dnrt::ElemType::kFloat16, x, mean, std, gamma, beta, y, n, c, h, w, eps, relu, toStream(stream));
}

DNRT_API int dnrt_dense_norm_bf16(void const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, void* y, int n, int c, int h, int w, float eps, int relu, dnrt_stream_t stream)
{
    return dnrt::denseNormForward(
        dnrt::ElemType::kBFloat16, x, mean, std, gamma, beta, y, n, c, h, w, eps, relu, toStream(stream));
}

DNRT_API size_t dnrt_collect_workspace_size(int n, int c, int h, int w)
{
    return dnrt::collectWorkspaceSize(n, c, h, w);
}

DNRT_API int dnrt_collect_f32(float const* x, float const* gamma, float const* beta, float* y, float* mean_out,
    float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu, void* workspace,
    size_t workspace_bytes, dnrt_stream_t stream)
{
    return dnrt::collectForward(dnrt::ElemType::kFloat32, x, gamma, beta, y, mean_out, std_out, n, c, h, w, ddof, eps,
        std_floor, relu, workspace, workspace_bytes, toStream(stream));
}

DNRT_API int dnrt_collect_f16(void const* x, float const* gamma, float const* beta, void* y, float* mean_out,
    float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu, void* workspace,
    size_t workspace_bytes, dnrt_stream_t stream)
{
    return dnrt::collectForward(dnrt::ElemType::kFloat16, x, gamma, beta, y, mean_out, std_out, n, c, h, w, ddof, eps,
        std_floor, relu, workspace, workspace_bytes, toStream(stream));
}

DNRT_API int dnrt_collect_bf16(void const* x, float const* gamma, float const* beta, void* y, float* mean_out,
    float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu, void* workspace,
    size_t workspace_bytes, dnrt_stream_t stream)
{
    return dnrt::collectForward(dnrt::ElemType::kBFloat16, x, gamma, beta, y, mean_out, std_out, n, c, h, w, ddof,
        eps, std_floor, relu, workspace, workspace_bytes, toStream(stream));
}

DNRT_API int dnrt_cuda_device_count(int* count)
{
    if (count == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    *count = 0;
    cudaError_t const err = cudaGetDeviceCount(count);
    if (err != cudaSuccess)
    {
        *count = 0;
        cudaGetLastError(); // a missing driver is not an error of later calls
    }
    return err;
}

DNRT_API int dnrt_cuda_malloc(void** ptr, size_t bytes)
{
    return cudaMalloc(ptr, bytes);
}

DNRT_API int dnrt_cuda_free(void* ptr)
{
    return cudaFree(ptr);
}

DNRT_API int dnrt_cuda_memcpy_htod(void* dst, void const* src, size_t bytes)
{
    return cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
}

DNRT_API int dnrt_cuda_memcpy_dtoh(void* dst, void const* src, size_t bytes)
{
    return cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
}

DNRT_API int dnrt_cuda_memset(void* ptr, int value, size_t bytes)
{
    return cudaMemset(ptr, value, bytes);
}

DNRT_API int dnrt_cuda_synchronize(void)
{
    return cudaDeviceSynchronize();
}

} // extern "C"
