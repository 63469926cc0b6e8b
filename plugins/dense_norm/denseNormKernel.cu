/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * CUDA kernels of dnrt's DenseNorm op and of the collect step.
 *
 * DenseNorm is one memory-bound pass: every element of X is read once and every element of Y
 * written once; the statistics are 18 floats per (n, c) plane, turned into interpolation
 * coefficients once per block in shared memory. Blocks tile a plane (grid.x) and loop over
 * planes (grid.y); each thread moves kApplyItems vectors of 16 bytes (float4 / 8 halves) when
 * the row width and the buffers' alignment allow it, else pairs, else scalars.
 *
 * Collect is three launches: partial moments per (plane, chunk) of x - pivot (the plane's first
 * element) with float Welford/Chan merging inside a thread and double merging across threads
 * and chunks (a fixed tree: the result is deterministic and the host library replays it), a
 * per-plane finalize in the flavour, and the normalization pass.
 *
 * Build with --fmad=false (see denseNormMath.cuh): only the explicit fma() calls fuse.
 */
#include "denseNormKernel.h"
#include "denseNormMath.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace dnrt
{
namespace
{

// ------------------------------------------------------------------------------ element types

template <typename T>
struct Elem;

template <>
struct Elem<float>
{
    static __device__ __forceinline__ float load(float v)
    {
        return v;
    }
    static __device__ __forceinline__ float store(float v)
    {
        return v;
    }
};

template <>
struct Elem<__half>
{
    static __device__ __forceinline__ float load(__half v)
    {
        return __half2float(v);
    }
    static __device__ __forceinline__ __half store(float v)
    {
        return __float2half_rn(v);
    }
};

template <>
struct Elem<__nv_bfloat16>
{
    static __device__ __forceinline__ float load(__nv_bfloat16 v)
    {
        return __bfloat162float(v);
    }
    static __device__ __forceinline__ __nv_bfloat16 store(float v)
    {
        return __float2bfloat16_rn(v);
    }
};

//! V consecutive elements moved as one aligned load / store (LDG.128 for 16 bytes).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack
{
    T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Pack<T, V> loadPack(T const* p)
{
    return *reinterpret_cast<Pack<T, V> const*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void storePack(T* p, Pack<T, V> const& v)
{
    *reinterpret_cast<Pack<T, V>*>(p) = v;
}

constexpr int kMaxGridY = 65535;

bool aligned(void const* p, size_t bytes)
{
    return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

//! Widest vector (16 bytes, then 2 elements, then 1) that divides `extent` and that both
//! buffers' alignment allows. Planes start at multiples of `extent`-divisible offsets, so one
//! check on the base pointers covers every plane and row.
template <typename T>
int pickVector(int64_t extent, void const* x, void const* y)
{
    constexpr int kWide = static_cast<int>(16 / sizeof(T));
    if (extent % kWide == 0 && aligned(x, 16) && (y == nullptr || aligned(y, 16)))
    {
        return kWide;
    }
    if (extent % 2 == 0 && aligned(x, 2 * sizeof(T)) && (y == nullptr || aligned(y, 2 * sizeof(T))))
    {
        return 2;
    }
    return 1;
}

unsigned gridY(int64_t planes)
{
    return static_cast<unsigned>(planes < kMaxGridY ? planes : kMaxGridY);
}

// ------------------------------------------------------------------------------ DenseNorm

template <typename T, int V>
__global__ void __launch_bounds__(kApplyBlock) denseNormKernel(T const* __restrict__ x,
    float const* __restrict__ mean, float const* __restrict__ std, float const* __restrict__ gamma,
    float const* __restrict__ beta, T* __restrict__ y, int64_t planes, int c, int h, int w, float eps, float stepH,
    float stepW, int relu)
{
    __shared__ DenseCoeffs coeffs;
    int const vecsPerRow = w / V;
    int const vecsPerPlane = h * vecsPerRow;
    int64_t const planeLen = static_cast<int64_t>(h) * w;
    int const first = static_cast<int>(blockIdx.x) * (kApplyBlock * kApplyItems) + static_cast<int>(threadIdx.x);

    for (int64_t p = blockIdx.y; p < planes; p += gridDim.y)
    {
        int const ch = static_cast<int>(p % c);
        if (threadIdx.x < 9)
        {
            float const g = gamma != nullptr ? gamma[ch] : 1.0F;
            coeffs.mean[threadIdx.x] = mean[9 * p + threadIdx.x];
            coeffs.scale[threadIdx.x] = denseScaleEntry(std[9 * p + threadIdx.x], g, eps);
        }
        else if (threadIdx.x == 9)
        {
            coeffs.beta = beta != nullptr ? beta[ch] : 0.0F;
        }
        __syncthreads();

        T const* xp = x + p * planeLen;
        T* yp = y + p * planeLen;
        // All loads first, so kApplyItems 16-byte requests are in flight per thread.
        Pack<T, V> in[kApplyItems];
#pragma unroll
        for (int k = 0; k < kApplyItems; ++k)
        {
            int const v = first + k * kApplyBlock;
            if (v < vecsPerPlane)
            {
                in[k] = loadPack<T, V>(xp + static_cast<int64_t>(v) * V);
            }
        }
#pragma unroll
        for (int k = 0; k < kApplyItems; ++k)
        {
            int const v = first + k * kApplyBlock;
            if (v < vecsPerPlane)
            {
                int const row = v / vecsPerRow;
                int const col = (v - row * vecsPerRow) * V;
                RowCoeffs const rc = rowCoeffs(coeffs, axisWeight(row, h, stepH));
                Pack<T, V> out;
#pragma unroll
                for (int e = 0; e < V; ++e)
                {
                    float const r = denseNormPixel(
                        Elem<T>::load(in[k].v[e]), rc, axisWeight(col + e, w, stepW), coeffs.beta, relu);
                    out.v[e] = Elem<T>::store(r);
                }
                storePack<T, V>(yp + static_cast<int64_t>(v) * V, out);
            }
        }
        __syncthreads(); // the next plane overwrites coeffs
    }
}

template <typename T, int V>
void launchDense(T const* x, float const* mean, float const* std, float const* gamma, float const* beta, T* y,
    int64_t planes, int c, int h, int w, float eps, int relu, cudaStream_t stream)
{
    int const vecsPerPlane = h * (w / V);
    dim3 const grid((vecsPerPlane + kApplyBlock * kApplyItems - 1) / (kApplyBlock * kApplyItems), gridY(planes));
    denseNormKernel<T, V><<<grid, kApplyBlock, 0, stream>>>(
        x, mean, std, gamma, beta, y, planes, c, h, w, eps, axisStep(h), axisStep(w), relu);
}

template <typename T>
cudaError_t denseNormTyped(void const* xv, float const* mean, float const* std, float const* gamma,
    float const* beta, void* yv, int n, int c, int h, int w, float eps, int relu, cudaStream_t stream)
{
    if (checkDenseShape(n, c, h, w) != kStatusOk || static_cast<int64_t>(h) * w > INT32_MAX)
    {
        return cudaErrorInvalidValue;
    }
    if (n == 0 || c == 0)
    {
        return cudaSuccess;
    }
    if (xv == nullptr || mean == nullptr || std == nullptr || yv == nullptr)
    {
        return cudaErrorInvalidValue;
    }
    auto const* x = static_cast<T const*>(xv);
    auto* y = static_cast<T*>(yv);
    int64_t const planes = static_cast<int64_t>(n) * c;
    switch (pickVector<T>(w, x, y))
    {
    case 8: launchDense<T, 8>(x, mean, std, gamma, beta, y, planes, c, h, w, eps, relu, stream); break;
    case 4: launchDense<T, 4>(x, mean, std, gamma, beta, y, planes, c, h, w, eps, relu, stream); break;
    case 2: launchDense<T, 2>(x, mean, std, gamma, beta, y, planes, c, h, w, eps, relu, stream); break;
    default: launchDense<T, 1>(x, mean, std, gamma, beta, y, planes, c, h, w, eps, relu, stream); break;
    }
    return cudaGetLastError();
}

// ------------------------------------------------------------------------------ collect

__device__ __forceinline__ MomentsD shuffleDown(MomentsD m, int offset)
{
    MomentsD o;
    o.n = __shfl_down_sync(0xffffffffU, m.n, offset);
    o.mean = __shfl_down_sync(0xffffffffU, m.mean, offset);
    o.m2 = __shfl_down_sync(0xffffffffU, m.m2, offset);
    return o;
}

//! One block per (plane, chunk): thread-local float merging of kCollectItems vectors, then a
//! shuffle-down tree per warp and the warps in order, in double. denseNormHost.cpp replays it.
template <typename T, int V>
__global__ void __launch_bounds__(kCollectBlock) partialMomentsKernel(
    T const* __restrict__ x, MomentsD* __restrict__ partials, int64_t planes, int planeLen, int chunks)
{
    __shared__ MomentsD warpResult[kCollectBlock / kWarp];
    int const vectors = planeLen / V;
    int const lane = static_cast<int>(threadIdx.x) % kWarp;
    int const warp = static_cast<int>(threadIdx.x) / kWarp;
    int const first
        = static_cast<int>(blockIdx.x) * static_cast<int>(collectChunkVectors()) + static_cast<int>(threadIdx.x);

    for (int64_t p = blockIdx.y; p < planes; p += gridDim.y)
    {
        T const* xp = x + p * planeLen;
        float const pivot = collectPivot(Elem<T>::load(xp[0]));
        Pack<T, V> in[kCollectItems];
#pragma unroll
        for (int k = 0; k < kCollectItems; ++k)
        {
            int const v = first + k * kCollectBlock;
            if (v < vectors)
            {
                in[k] = loadPack<T, V>(xp + static_cast<int64_t>(v) * V);
            }
        }
        MomentsF acc{0.0F, 0.0F, 0.0F};
#pragma unroll
        for (int k = 0; k < kCollectItems; ++k)
        {
            int const v = first + k * kCollectBlock;
            if (v < vectors)
            {
                float vals[V];
#pragma unroll
                for (int e = 0; e < V; ++e)
                {
                    vals[e] = Elem<T>::load(in[k].v[e]) - pivot;
                }
                acc = mergeMoments(acc, batchMoments<V>(vals));
            }
        }
        MomentsD m = toDouble(acc);
#pragma unroll
        for (int offset = kWarp / 2; offset > 0; offset /= 2)
        {
            m = mergeMoments(m, shuffleDown(m, offset));
        }
        if (lane == 0)
        {
            warpResult[warp] = m;
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            MomentsD total = warpResult[0];
            for (int i = 1; i < kCollectBlock / kWarp; ++i)
            {
                total = mergeMoments(total, warpResult[i]);
            }
            partials[p * chunks + blockIdx.x] = total;
        }
        __syncthreads(); // warpResult is reused by the next plane
    }
}

//! One thread per plane: chunks merged in order, then the flavour's std and the norm constants.
template <typename T>
__global__ void finalizeMomentsKernel(T const* __restrict__ x, MomentsD const* __restrict__ partials,
    int64_t planes, int c, int planeLen, int chunks, int ddof, double eps, double stdFloor,
    float const* __restrict__ gamma, float const* __restrict__ beta, float* __restrict__ meanOut,
    float* __restrict__ stdOut, OwnCoeffs* __restrict__ coeffs)
{
    int64_t const p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p >= planes)
    {
        return;
    }
    int const ch = static_cast<int>(p % c);
    MomentsD acc = partials[p * chunks];
    for (int k = 1; k < chunks; ++k)
    {
        acc = mergeMoments(acc, partials[p * chunks + k]);
    }
    float meanValue = 0.0F;
    float stdValue = 0.0F;
    OwnCoeffs own;
    float const pivot = collectPivot(Elem<T>::load(x[p * planeLen]));
    finalizeMoments(acc, pivot, ddof, eps, stdFloor, gamma != nullptr ? gamma[ch] : 1.0F,
        beta != nullptr ? beta[ch] : 0.0F, meanValue, stdValue, own);
    if (meanOut != nullptr)
    {
        meanOut[p] = meanValue;
    }
    if (stdOut != nullptr)
    {
        stdOut[p] = stdValue;
    }
    coeffs[p] = own;
}

template <typename T, int V>
__global__ void __launch_bounds__(kApplyBlock) ownNormKernel(T const* __restrict__ x,
    OwnCoeffs const* __restrict__ coeffs, T* __restrict__ y, int64_t planes, int planeLen, int relu)
{
    int const vectors = planeLen / V;
    int const first = static_cast<int>(blockIdx.x) * (kApplyBlock * kApplyItems) + static_cast<int>(threadIdx.x);
    for (int64_t p = blockIdx.y; p < planes; p += gridDim.y)
    {
        OwnCoeffs const cf = coeffs[p];
        T const* xp = x + p * planeLen;
        T* yp = y + p * planeLen;
        Pack<T, V> in[kApplyItems];
#pragma unroll
        for (int k = 0; k < kApplyItems; ++k)
        {
            int const v = first + k * kApplyBlock;
            if (v < vectors)
            {
                in[k] = loadPack<T, V>(xp + static_cast<int64_t>(v) * V);
            }
        }
#pragma unroll
        for (int k = 0; k < kApplyItems; ++k)
        {
            int const v = first + k * kApplyBlock;
            if (v < vectors)
            {
                Pack<T, V> out;
#pragma unroll
                for (int e = 0; e < V; ++e)
                {
                    out.v[e] = Elem<T>::store(ownNormPixel(Elem<T>::load(in[k].v[e]), cf, relu));
                }
                storePack<T, V>(yp + static_cast<int64_t>(v) * V, out);
            }
        }
    }
}

constexpr size_t kWorkspaceAlign = 256;

size_t alignUp(size_t v)
{
    return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign;
}

//! Workspace layout: partial moments [planes][chunks] (chunks counted for 1-element vectors,
//! the most there can be), then the per-plane norm constants.
size_t partialsBytes(int64_t planes, int64_t planeLen)
{
    return alignUp(static_cast<size_t>(planes * collectChunks(planeLen, 1)) * sizeof(MomentsD));
}

template <typename T, int V>
void launchCollect(T const* x, float const* gamma, float const* beta, T* y, float* meanOut, float* stdOut,
    int64_t planes, int c, int planeLen, int ddof, double eps, double stdFloor, int relu, MomentsD* partials,
    OwnCoeffs* coeffs, cudaStream_t stream)
{
    int const chunks = static_cast<int>(collectChunks(planeLen, V));
    partialMomentsKernel<T, V><<<dim3(chunks, gridY(planes)), kCollectBlock, 0, stream>>>(
        x, partials, planes, planeLen, chunks);
    constexpr int kFinalizeBlock = 128;
    finalizeMomentsKernel<T><<<static_cast<unsigned>((planes + kFinalizeBlock - 1) / kFinalizeBlock),
        kFinalizeBlock, 0, stream>>>(
        x, partials, planes, c, planeLen, chunks, ddof, eps, stdFloor, gamma, beta, meanOut, stdOut, coeffs);
    if (y != nullptr)
    {
        int const vectors = planeLen / V;
        dim3 const grid((vectors + kApplyBlock * kApplyItems - 1) / (kApplyBlock * kApplyItems), gridY(planes));
        ownNormKernel<T, V><<<grid, kApplyBlock, 0, stream>>>(x, coeffs, y, planes, planeLen, relu);
    }
}

template <typename T>
cudaError_t collectTyped(void const* xv, float const* gamma, float const* beta, void* yv, float* meanOut,
    float* stdOut, int n, int c, int h, int w, int ddof, double eps, double stdFloor, int relu, void* workspace,
    size_t workspaceBytes, cudaStream_t stream)
{
    if (checkCollectShape(n, c, h, w, ddof) != kStatusOk || static_cast<int64_t>(h) * w > INT32_MAX)
    {
        return cudaErrorInvalidValue;
    }
    if (n == 0 || c == 0)
    {
        return cudaSuccess;
    }
    if (xv == nullptr || (yv == nullptr && meanOut == nullptr && stdOut == nullptr) || workspace == nullptr
        || !aligned(workspace, kWorkspaceAlign) || workspaceBytes < collectWorkspaceSize(n, c, h, w))
    {
        return cudaErrorInvalidValue;
    }
    auto const* x = static_cast<T const*>(xv);
    auto* y = static_cast<T*>(yv);
    int64_t const planes = static_cast<int64_t>(n) * c;
    int const planeLen = h * w;
    auto* partials = static_cast<MomentsD*>(workspace);
    auto* coeffs = reinterpret_cast<OwnCoeffs*>(static_cast<char*>(workspace) + partialsBytes(planes, planeLen));
    switch (pickVector<T>(planeLen, x, y))
    {
    case 8:
        launchCollect<T, 8>(x, gamma, beta, y, meanOut, stdOut, planes, c, planeLen, ddof, eps, stdFloor, relu,
            partials, coeffs, stream);
        break;
    case 4:
        launchCollect<T, 4>(x, gamma, beta, y, meanOut, stdOut, planes, c, planeLen, ddof, eps, stdFloor, relu,
            partials, coeffs, stream);
        break;
    case 2:
        launchCollect<T, 2>(x, gamma, beta, y, meanOut, stdOut, planes, c, planeLen, ddof, eps, stdFloor, relu,
            partials, coeffs, stream);
        break;
    default:
        launchCollect<T, 1>(x, gamma, beta, y, meanOut, stdOut, planes, c, planeLen, ddof, eps, stdFloor, relu,
            partials, coeffs, stream);
        break;
    }
    return cudaGetLastError();
}

} // namespace

cudaError_t denseNormForward(ElemType type, void const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, void* y, int n, int c, int h, int w, float eps, int relu, cudaStream_t stream) noexcept
{
    switch (type)
    {
    case ElemType::kFloat32:
        return denseNormTyped<float>(x, mean, std, gamma, beta, y, n, c, h, w, eps, relu, stream);
    case ElemType::kFloat16:
        return denseNormTyped<__half>(x, mean, std, gamma, beta, y, n, c, h, w, eps, relu, stream);
    case ElemType::kBFloat16:
        return denseNormTyped<__nv_bfloat16>(x, mean, std, gamma, beta, y, n, c, h, w, eps, relu, stream);
    }
    return cudaErrorInvalidValue;
}

size_t collectWorkspaceSize(int n, int c, int h, int w) noexcept
{
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
    {
        return 0;
    }
    int64_t const planes = static_cast<int64_t>(n) * c;
    int64_t const planeLen = static_cast<int64_t>(h) * w;
    return partialsBytes(planes, planeLen) + alignUp(static_cast<size_t>(planes) * sizeof(OwnCoeffs));
}

cudaError_t collectForward(ElemType type, void const* x, float const* gamma, float const* beta, void* y,
    float* meanOut, float* stdOut, int n, int c, int h, int w, int ddof, double eps, double stdFloor, int relu,
    void* workspace, size_t workspaceBytes, cudaStream_t stream) noexcept
{
    switch (type)
    {
    case ElemType::kFloat32:
        return collectTyped<float>(x, gamma, beta, y, meanOut, stdOut, n, c, h, w, ddof, eps, stdFloor, relu,
            workspace, workspaceBytes, stream);
    case ElemType::kFloat16:
        return collectTyped<__half>(x, gamma, beta, y, meanOut, stdOut, n, c, h, w, ddof, eps, stdFloor, relu,
            workspace, workspaceBytes, stream);
    case ElemType::kBFloat16:
        return collectTyped<__nv_bfloat16>(x, gamma, beta, y, meanOut, stdOut, n, c, h, w, ddof, eps, stdFloor,
            relu, workspace, workspaceBytes, stream);
    }
    return cudaErrorInvalidValue;
}

} // namespace dnrt
