/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * dnrt kernels: the C ABI of libdnrt_kernels.so (CUDA) and libdnrt_kernels_host.so (CPU
 * reference of the same arithmetic). Plain C, no CUDA header needed: the stream is CUDA's
 * own `cudaStream_t` type (`struct CUstream_st*`), NULL meaning the legacy default stream.
 *
 * Layouts: X and Y are NCHW, contiguous ("linear"); Mean and Std of DenseNorm are
 * [N, C, 3, 3] float32 (per-sample 3x3 neighbourhoods of tile statistics, row-major, the
 * tile itself at [1][1]); Gamma and Beta are [C] float32 and may be NULL (identity).
 * float16 / bfloat16 buffers are passed as `void*` holding IEEE half / bfloat16 values;
 * the arithmetic is float32 (statistics in double where it is cheap).
 *
 * Return codes: 0 on success (cudaSuccess), 1 (cudaErrorInvalidValue) for a rejected
 * argument (odd H or W for DenseNorm, non-positive sizes, NULL buffers, too small a
 * workspace, n - ddof <= 0), otherwise the cudaError_t of the failed launch.
 * All launches are asynchronous on `stream`; nothing allocates or synchronizes.
 */
#ifndef DNRT_KERNELS_H
#define DNRT_KERNELS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DNRT_API __declspec(dllexport)
#else
#define DNRT_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a signature below changes; dnrt/kernels.py checks it. */
#define DNRT_KERNELS_ABI_VERSION 1

struct CUstream_st;
typedef struct CUstream_st* dnrt_stream_t; /* == cudaStream_t */

/* ================================================================ libdnrt_kernels.so (CUDA) */

DNRT_API int dnrt_kernels_abi_version(void);

/* Text of a return code (a CUDA error string, or dnrt's own wording for code 1). */
DNRT_API char const* dnrt_error_string(int code);

/* DenseNorm (one fused pass): per-pixel mean and gamma / (std + eps) interpolated between the
 * 3x3 neighbourhood in the reference geometry, y = (x - mu) * rinv * gamma + beta, then ReLU
 * when relu != 0. H and W must be even. */
DNRT_API int dnrt_dense_norm_f32(float const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, float* y, int n, int c, int h, int w, float eps, int relu, dnrt_stream_t stream);
DNRT_API int dnrt_dense_norm_f16(void const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, void* y, int n, int c, int h, int w, float eps, int relu, dnrt_stream_t stream);
DNRT_API int dnrt_dense_norm_bf16(void const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, void* y, int n, int c, int h, int w, float eps, int relu, dnrt_stream_t stream);

/* Collect step: per-(n, c) mean and std in a flavour
 *   std = max(sqrt(sum((x - mean)^2) / (h w - ddof) + eps), std_floor)
 * written to mean_out / std_out ([N, C] float32; either may be NULL), and, when y != NULL,
 * y = (x - mean) / std * gamma + beta (+ ReLU). Needs a device workspace of
 * dnrt_collect_workspace_size(n, c, h, w) bytes (256-byte aligned). Deterministic: the
 * result depends only on the shape, the data and the buffers' alignment. */
DNRT_API size_t dnrt_collect_workspace_size(int n, int c, int h, int w);
DNRT_API int dnrt_collect_f32(float const* x, float const* gamma, float const* beta, float* y, float* mean_out,
    float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu, void* workspace,
    size_t workspace_bytes, dnrt_stream_t stream);
DNRT_API int dnrt_collect_f16(void const* x, float const* gamma, float const* beta, void* y, float* mean_out,
    float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu, void* workspace,
    size_t workspace_bytes, dnrt_stream_t stream);
DNRT_API int dnrt_collect_bf16(void const* x, float const* gamma, float const* beta, void* y, float* mean_out,
    float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu, void* workspace,
    size_t workspace_bytes, dnrt_stream_t stream);

/* Small CUDA runtime helpers, so a process without any other CUDA library (ctypes tests, the
 * C API) can use the kernels: device count (a missing driver reads as 0 devices with the
 * driver's error code returned), memory, copies, synchronization. */
DNRT_API int dnrt_cuda_device_count(int* count);
DNRT_API int dnrt_cuda_malloc(void** ptr, size_t bytes);
DNRT_API int dnrt_cuda_free(void* ptr);
DNRT_API int dnrt_cuda_memcpy_htod(void* dst, void const* src, size_t bytes);
DNRT_API int dnrt_cuda_memcpy_dtoh(void* dst, void const* src, size_t bytes);
DNRT_API int dnrt_cuda_memset(void* ptr, int value, size_t bytes);
DNRT_API int dnrt_cuda_synchronize(void);

/* ================================================================ libdnrt_kernels_host.so (CPU) */
/* The same arithmetic on the CPU, compiled by a plain C++ compiler from the same header
 * (denseNormMath.cuh). Used by CI without a GPU, and as the bit-exact oracle of the GPU. */

DNRT_API int dnrt_host_abi_version(void);

/* Axis weight of pixel i in a map of size n (n even): *other is 0 (previous tile) or 2 (next),
 * *weight its weight; the own tile gets 1 - weight. */
DNRT_API int dnrt_host_axis_weight(int i, int n, int* other, float* weight);

/* One output pixel (i, j) of an h x w map from its plane's 3x3 neighbourhood. */
DNRT_API float dnrt_host_dense_pixel(float x, float const* mean9, float const* std9, float gamma, float beta,
    float eps, int i, int j, int h, int w, int relu);

DNRT_API int dnrt_host_dense_norm_f32(float const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, float* y, int n, int c, int h, int w, float eps, int relu);

/* vec: the vector width (1, 2, 4 or 8) whose partition and reduction order to replay; the GPU
 * reads float32 in 4s and half/bfloat16 in 8s when h * w and the buffers allow it. */
DNRT_API int dnrt_host_collect_f32(float const* x, float const* gamma, float const* beta, float* y,
    float* mean_out, float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu,
    int vec);

#ifdef __cplusplus
}
#endif

#endif /* DNRT_KERNELS_H */
