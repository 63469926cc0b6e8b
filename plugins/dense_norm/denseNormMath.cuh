/*
 * SPDX-License-Identifier: Apache-2.0
 *
 * dnrt DenseNorm: the per-pixel and per-plane arithmetic, shared by the CUDA kernels
 * (denseNormKernel.cu) and the CPU reference library (denseNormHost.cpp).
 *
 * Everything here is a __host__ __device__ inline function, so CI without a GPU tests
 * exactly the arithmetic the GPU runs. The semantics are those of
 * docs/semantics.md (section 4: reference geometry; section 2: collect
 * flavours) and of dnrt/semantics.py.
 *
 * Bit-for-bit host/device agreement: every multiply-add that matters is an explicit
 * fma(); the kernels are compiled with --fmad=false and the host code with
 * -ffp-contract=off, so neither compiler fuses anything else. Division and sqrt are
 * IEEE-rounded on both sides (nvcc's defaults -prec-div=true -prec-sqrt=true; never
 * build with --use_fast_math). The reductions below have a fixed order that the host
 * reference replays, so the collect statistics agree bit for bit too.
 */
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define DNRT_HD __host__ __device__ __forceinline__
#else
#define DNRT_HD inline
#endif

namespace dnrt
{

// ------------------------------------------------------------------------------ status codes
// Numerically equal to cudaSuccess / cudaErrorInvalidValue, so the C ABI returns one code space.
constexpr int kStatusOk = 0;
constexpr int kStatusInvalidValue = 1;

// ------------------------------------------------------------------------------ geometry

//! Weight of the non-centre neighbour along one axis, and which neighbour it is (0 = previous,
//! 2 = next). The centre (index 1) implicitly gets 1 - w.
struct AxisWeight
{
    float w;
    int other;
};

//! 1 / (2 n) rounded to float: the unit of the axis weights of a map of size n. Computed once
//! per launch (in double, then rounded) so host and device use the same value.
DNRT_HD float axisStep(int n)
{
    return static_cast<float>(1.0 / (2.0 * static_cast<double>(n)));
}

//! Reference geometry (docs/semantics.md 4.4): pixel i sits at i + 0.5, the tile centre at n / 2,
//! the neighbouring centres n pixels away, so the weight of the other neighbour is
//! |i + 0.5 - n / 2| / n = |2 i + 1 - n| / (2 n). For even n the numerator is odd, hence never 0:
//! every pixel blends with exactly one side.
DNRT_HD AxisWeight axisWeight(int i, int n, float step)
{
    int const k = 2 * i + 1 - n;
    AxisWeight a;
    a.other = k < 0 ? 0 : 2;
    a.w = static_cast<float>(k < 0 ? -k : k) * step;
    return a;
}

//! centre + w (other - centre): exact at w = 0, one rounding for the blend.
DNRT_HD float lerpTo(float centre, float other, float w)
{
    return fmaf(w, other - centre, centre);
}

// ------------------------------------------------------------------------------ DenseNorm

//! Per-(n, c) constants of one DenseNorm plane. scale[k] = gamma / (std[k] + eps): the affine
//! scale is folded into the reciprocal std before interpolation. Interpolation is linear, so
//! this is exactly interp(rinv) * gamma, with one rounding fewer per pixel. Computed in double
//! and rounded once.
struct DenseCoeffs
{
    float mean[9];
    float scale[9];
    float beta;
};

DNRT_HD float denseScaleEntry(float stdValue, float gamma, float eps)
{
    return static_cast<float>(
        static_cast<double>(gamma) / (static_cast<double>(stdValue) + static_cast<double>(eps)));
}

DNRT_HD void denseCoeffs(float const* mean9, float const* std9, float gamma, float beta, float eps, DenseCoeffs& out)
{
    for (int k = 0; k < 9; ++k)
    {
        out.mean[k] = mean9[k];
        out.scale[k] = denseScaleEntry(std9[k], gamma, eps);
    }
    out.beta = beta;
}

//! The 3x3 neighbourhood blended along the row axis for one row: three columns (previous,
//! own, next tile) of mean and scale. Shared by all pixels of the row.
struct RowCoeffs
{
    float m0, m1, m2;
    float s0, s1, s2;
};

DNRT_HD RowCoeffs rowCoeffs(DenseCoeffs const& c, AxisWeight wy)
{
    int const a = 3 * wy.other; // first entry of the other row
    RowCoeffs r;
    r.m0 = lerpTo(c.mean[3], c.mean[a], wy.w);
    r.m1 = lerpTo(c.mean[4], c.mean[a + 1], wy.w);
    r.m2 = lerpTo(c.mean[5], c.mean[a + 2], wy.w);
    r.s0 = lerpTo(c.scale[3], c.scale[a], wy.w);
    r.s1 = lerpTo(c.scale[4], c.scale[a + 1], wy.w);
    r.s2 = lerpTo(c.scale[5], c.scale[a + 2], wy.w);
    return r;
}

//! ReLU that keeps NaN visible (like numpy's maximum), so a broken input never turns into 0.
DNRT_HD float activate(float y, int relu)
{
    return (relu != 0 && y < 0.0F) ? 0.0F : y;
}

//! One output pixel: y = (x - mu) * rinv * gamma + beta, mu and rinv * gamma interpolated.
DNRT_HD float denseNormPixel(float x, RowCoeffs const& r, AxisWeight wx, float beta, int relu)
{
    float const mu = lerpTo(r.m1, wx.other == 0 ? r.m0 : r.m2, wx.w);
    float const s = lerpTo(r.s1, wx.other == 0 ? r.s0 : r.s2, wx.w);
    return activate(fmaf(x - mu, s, beta), relu);
}

// ------------------------------------------------------------------------------ collect step

//! Running moments in the Welford / Chan form: count, mean, sum of squared deviations.
struct MomentsF
{
    float n, mean, m2;
};

struct MomentsD
{
    double n, mean, m2;
};

//! The collect step accumulates x - pivot with the pivot = the plane's first element: an
//! activation's values sit within a few std of each other, so the shifted values are small and
//! float32 keeps their mean and deviations accurate even when |mean| >> std (without the
//! shift, float rounding of thread-level means near 1000 would cost ~1e-5 of a 0.01 std).
DNRT_HD float collectPivot(float firstElement)
{
    return firstElement;
}

//! Moments of V consecutive values (V in 1, 2, 4, 8: 1 / V is exact). Two passes over a
//! handful of registers, so the deviations are taken from the batch's own mean.
template <int V>
DNRT_HD MomentsF batchMoments(float const (&v)[V])
{
    float s = 0.0F;
    for (int k = 0; k < V; ++k)
    {
        s += v[k];
    }
    float const mean = s * (1.0F / static_cast<float>(V));
    float m2 = 0.0F;
    for (int k = 0; k < V; ++k)
    {
        float const d = v[k] - mean;
        m2 = fmaf(d, d, m2);
    }
    MomentsF out;
    out.n = static_cast<float>(V);
    out.mean = mean;
    out.m2 = m2;
    return out;
}

//! Chan et al.'s pairwise merge. Empty operands pass the other through unchanged, so a thread
//! or block without data does not perturb the result (and the order stays fixed).
DNRT_HD MomentsF mergeMoments(MomentsF a, MomentsF b)
{
    if (b.n == 0.0F)
    {
        return a;
    }
    if (a.n == 0.0F)
    {
        return b;
    }
    float const n = a.n + b.n;
    float const delta = b.mean - a.mean;
    float const r = b.n / n;
    MomentsF out;
    out.n = n;
    out.mean = fmaf(delta, r, a.mean);
    out.m2 = fmaf(delta * delta, a.n * r, a.m2 + b.m2);
    return out;
}

DNRT_HD MomentsD mergeMoments(MomentsD a, MomentsD b)
{
    if (b.n == 0.0)
    {
        return a;
    }
    if (a.n == 0.0)
    {
        return b;
    }
    double const n = a.n + b.n;
    double const delta = b.mean - a.mean;
    double const r = b.n / n;
    MomentsD out;
    out.n = n;
    out.mean = fma(delta, r, a.mean);
    out.m2 = fma(delta * delta, a.n * r, a.m2 + b.m2);
    return out;
}

DNRT_HD MomentsD toDouble(MomentsF m)
{
    MomentsD out;
    out.n = static_cast<double>(m.n);
    out.mean = static_cast<double>(m.mean);
    out.m2 = static_cast<double>(m.m2);
    return out;
}

//! Normalization constants of one plane in the collect step: y = (x - mean) * scale + beta,
//! scale = gamma / std (double, rounded once).
struct OwnCoeffs
{
    float mean;
    float scale;
    float beta;
};

//! std = max(sqrt(m2 / (n - ddof) + eps), floor) in double (docs/semantics.md section 2 and 8).
//! The moments were taken of x - pivot (see collectPivot); the mean gets the pivot back here.
//! A NaN std stays NaN (like numpy's maximum), so broken inputs stay visible.
DNRT_HD void finalizeMoments(MomentsD m, float pivot, int ddof, double eps, double stdFloor, float gamma,
    float beta, float& meanOut, float& stdOut, OwnCoeffs& coeffs)
{
    double const var = m.m2 / (m.n - static_cast<double>(ddof));
    double sd = sqrt(var + eps);
    if (sd < stdFloor)
    {
        sd = stdFloor;
    }
    meanOut = static_cast<float>(static_cast<double>(pivot) + m.mean);
    stdOut = static_cast<float>(sd);
    coeffs.mean = meanOut;
    coeffs.scale = static_cast<float>(static_cast<double>(gamma) / sd);
    coeffs.beta = beta;
}

DNRT_HD float ownNormPixel(float x, OwnCoeffs const& c, int relu)
{
    return activate(fmaf(x - c.mean, c.scale, c.beta), relu);
}

// ------------------------------------------------------------------------------ launch plans
// Shared by the CUDA launchers and the host reference, which replays the same partition and
// the same reduction tree.

constexpr int kApplyBlock = 256;  //!< threads per block of the elementwise kernels
constexpr int kApplyItems = 4;    //!< vectors per thread per block
constexpr int kCollectBlock = 256; //!< threads per block of the partial-moments kernel
constexpr int kCollectItems = 8;   //!< vectors per thread per chunk
constexpr int kWarp = 32;

//! Shapes DenseNorm accepts: sizes >= 0 with positive, even H and W (axis_weights rejects odd
//! maps; the reference geometry needs the centre between two pixels). N or C = 0 is a no-op.
DNRT_HD int checkDenseShape(int n, int c, int h, int w)
{
    if (n < 0 || c < 0 || h <= 0 || w <= 0 || (h % 2) != 0 || (w % 2) != 0)
    {
        return kStatusInvalidValue;
    }
    return kStatusOk;
}

//! Shapes the collect step accepts: a plane must have more than ddof elements (ddof 0 or 1).
DNRT_HD int checkCollectShape(int n, int c, int h, int w, int ddof)
{
    if (n < 0 || c < 0 || h <= 0 || w <= 0 || ddof < 0 || ddof > 1
        || static_cast<int64_t>(h) * static_cast<int64_t>(w) - ddof <= 0)
    {
        return kStatusInvalidValue;
    }
    return kStatusOk;
}

//! Vectors of one plane covered by one partial-moments block.
DNRT_HD int64_t collectChunkVectors()
{
    return static_cast<int64_t>(kCollectBlock) * kCollectItems;
}

//! Number of partial-moments blocks (chunks) per plane of `len` elements read in vectors of `vec`.
DNRT_HD int64_t collectChunks(int64_t len, int vec)
{
    int64_t const vectors = len / vec;
    return (vectors + collectChunkVectors() - 1) / collectChunkVectors();
}

} // namespace dnrt
