/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * libdnrt_kernels_host.so: the CPU reference of the CUDA kernels, built from the same
 * arithmetic (denseNormMath.cuh) by a plain C++ compiler. The loops replay the GPU's work
 * partition and reduction tree, so on the same float32 input the GPU must reproduce these
 * outputs bit for bit (tests/test_kernels.py checks this on a GPU machine) and CI can test
 * the numerics without one.
 *
 * Build with -ffp-contract=off (CMake and dnrt/kernels.py do) so that the compiler fuses
 * nothing beyond the explicit fma() calls.
 */
#include "denseNormMath.cuh"
#include "dnrt_kernels.h"

#include <cstdint>
#include <vector>

namespace
{

using dnrt::kStatusInvalidValue;
using dnrt::kStatusOk;

float gammaAt(float const* gamma, int c)
{
    return gamma != nullptr ? gamma[c] : 1.0F;
}

float betaAt(float const* beta, int c)
{
    return beta != nullptr ? beta[c] : 0.0F;
}

//! Per-thread moments of one chunk, as the partial-moments kernel computes them.
template <int V>
dnrt::MomentsF threadMoments(float const* plane, float pivot, int64_t vectors, int64_t chunk, int thread)
{
    dnrt::MomentsF acc{0.0F, 0.0F, 0.0F};
    for (int k = 0; k < dnrt::kCollectItems; ++k)
    {
        int64_t const v = chunk * dnrt::collectChunkVectors() + static_cast<int64_t>(k) * dnrt::kCollectBlock + thread;
        if (v >= vectors)
        {
            break;
        }
        float vals[V];
        for (int e = 0; e < V; ++e)
        {
            vals[e] = plane[v * V + e] - pivot;
        }
        acc = dnrt::mergeMoments(acc, dnrt::batchMoments<V>(vals));
    }
    return acc;
}

//! One chunk's block reduction: shuffle-down tree inside each warp, then warp results in order.
template <int V>
dnrt::MomentsD chunkMoments(float const* plane, float pivot, int64_t vectors, int64_t chunk)
{
    constexpr int kWarps = dnrt::kCollectBlock / dnrt::kWarp;
    dnrt::MomentsD warpResult[kWarps];
    for (int warp = 0; warp < kWarps; ++warp)
    {
        dnrt::MomentsD lanes[dnrt::kWarp];
        for (int lane = 0; lane < dnrt::kWarp; ++lane)
        {
            lanes[lane] = dnrt::toDouble(threadMoments<V>(plane, pivot, vectors, chunk, warp * dnrt::kWarp + lane));
        }
        for (int offset = dnrt::kWarp / 2; offset > 0; offset /= 2)
        {
            for (int lane = 0; lane < offset; ++lane)
            {
                lanes[lane] = dnrt::mergeMoments(lanes[lane], lanes[lane + offset]);
            }
        }
        warpResult[warp] = lanes[0];
    }
    dnrt::MomentsD acc = warpResult[0];
    for (int warp = 1; warp < kWarps; ++warp)
    {
        acc = dnrt::mergeMoments(acc, warpResult[warp]);
    }
    return acc;
}

template <int V>
dnrt::MomentsD planeMoments(float const* plane, float pivot, int64_t len)
{
    int64_t const vectors = len / V;
    int64_t const chunks = dnrt::collectChunks(len, V);
    dnrt::MomentsD acc = chunkMoments<V>(plane, pivot, vectors, 0);
    for (int64_t chunk = 1; chunk < chunks; ++chunk)
    {
        acc = dnrt::mergeMoments(acc, chunkMoments<V>(plane, pivot, vectors, chunk));
    }
    return acc;
}

dnrt::MomentsD planeMomentsVec(float const* plane, float pivot, int64_t len, int vec)
{
    switch (vec)
    {
    case 8: return planeMoments<8>(plane, pivot, len);
    case 4: return planeMoments<4>(plane, pivot, len);
    case 2: return planeMoments<2>(plane, pivot, len);
    default: return planeMoments<1>(plane, pivot, len);
    }
}

} // namespace

extern "C" {

DNRT_API int dnrt_host_abi_version(void)
{
    return DNRT_KERNELS_ABI_VERSION;
}

DNRT_API int dnrt_host_axis_weight(int i, int n, int* other, float* weight)
{
    if (n <= 0 || (n % 2) != 0 || i < 0 || i >= n || other == nullptr || weight == nullptr)
    {
        return kStatusInvalidValue;
    }
    dnrt::AxisWeight const a = dnrt::axisWeight(i, n, dnrt::axisStep(n));
    *other = a.other;
    *weight = a.w;
    return kStatusOk;
}

DNRT_API float dnrt_host_dense_pixel(float x, float const* mean9, float const* std9, float gamma, float beta,
    float eps, int i, int j, int h, int w, int relu)
{
    dnrt::DenseCoeffs coeffs;
    dnrt::denseCoeffs(mean9, std9, gamma, beta, eps, coeffs);
    dnrt::RowCoeffs const row = dnrt::rowCoeffs(coeffs, dnrt::axisWeight(i, h, dnrt::axisStep(h)));
    return dnrt::denseNormPixel(x, row, dnrt::axisWeight(j, w, dnrt::axisStep(w)), coeffs.beta, relu);
}

DNRT_API int dnrt_host_dense_norm_f32(float const* x, float const* mean, float const* std, float const* gamma,
    float const* beta, float* y, int n, int c, int h, int w, float eps, int relu)
{
    if (dnrt::checkDenseShape(n, c, h, w) != kStatusOk)
    {
        return kStatusInvalidValue;
    }
    if (n == 0 || c == 0)
    {
        return kStatusOk;
    }
    if (x == nullptr || mean == nullptr || std == nullptr || y == nullptr)
    {
        return kStatusInvalidValue;
    }
    float const stepH = dnrt::axisStep(h);
    float const stepW = dnrt::axisStep(w);
    int64_t const planeLen = static_cast<int64_t>(h) * w;
    int64_t const planes = static_cast<int64_t>(n) * c;
    for (int64_t p = 0; p < planes; ++p)
    {
        int const ch = static_cast<int>(p % c);
        dnrt::DenseCoeffs coeffs;
        dnrt::denseCoeffs(mean + 9 * p, std + 9 * p, gammaAt(gamma, ch), betaAt(beta, ch), eps, coeffs);
        float const* xp = x + p * planeLen;
        float* yp = y + p * planeLen;
        for (int i = 0; i < h; ++i)
        {
            dnrt::RowCoeffs const row = dnrt::rowCoeffs(coeffs, dnrt::axisWeight(i, h, stepH));
            for (int j = 0; j < w; ++j)
            {
                int64_t const k = static_cast<int64_t>(i) * w + j;
                yp[k] = dnrt::denseNormPixel(xp[k], row, dnrt::axisWeight(j, w, stepW), coeffs.beta, relu);
            }
        }
    }
    return kStatusOk;
}

DNRT_API int dnrt_host_collect_f32(float const* x, float const* gamma, float const* beta, float* y,
    float* mean_out, float* std_out, int n, int c, int h, int w, int ddof, double eps, double std_floor, int relu,
    int vec)
{
    if (dnrt::checkCollectShape(n, c, h, w, ddof) != kStatusOk)
    {
        return kStatusInvalidValue;
    }
    int64_t const planeLen = static_cast<int64_t>(h) * w;
    if ((vec != 1 && vec != 2 && vec != 4 && vec != 8) || planeLen % vec != 0)
    {
        return kStatusInvalidValue;
    }
    if (n == 0 || c == 0)
    {
        return kStatusOk;
    }
    if (x == nullptr || (y == nullptr && mean_out == nullptr && std_out == nullptr))
    {
        return kStatusInvalidValue;
    }
    int64_t const planes = static_cast<int64_t>(n) * c;
    for (int64_t p = 0; p < planes; ++p)
    {
        int const ch = static_cast<int>(p % c);
        float const* xp = x + p * planeLen;
        float const pivot = dnrt::collectPivot(xp[0]);
        dnrt::MomentsD const m = planeMomentsVec(xp, pivot, planeLen, vec);
        float meanValue = 0.0F;
        float stdValue = 0.0F;
        dnrt::OwnCoeffs coeffs;
        dnrt::finalizeMoments(
            m, pivot, ddof, eps, std_floor, gammaAt(gamma, ch), betaAt(beta, ch), meanValue, stdValue, coeffs);
        if (mean_out != nullptr)
        {
            mean_out[p] = meanValue;
        }
        if (std_out != nullptr)
        {
            std_out[p] = stdValue;
        }
        if (y != nullptr)
        {
            float* yp = y + p * planeLen;
            for (int64_t k = 0; k < planeLen; ++k)
            {
                yp[k] = dnrt::ownNormPixel(xp[k], coeffs, relu);
            }
        }
    }
    return kStatusOk;
}

} // extern "C"
