// qgemv_dequant.cuh: the first decode GEMV of qmatmul.cu (session 2), kept as the sweep's
// baseline: weights dequantized in registers (quant.cuh `dequant8`) against float x, f32
// FMAs. The shipped kernel (qmatmul.cu qgemv_*) quantizes x to 8 bits and uses dp4a.
#pragma once
#include "quant.cuh"

namespace qgemv_dequant {

constexpr int WARPS = 4;

// 4 consecutive x elements as floats: one 8- or 16-byte load when `vec`.
template <typename T>
__device__ __forceinline__ void load4(const T* __restrict__ p, bool vec, float (&out)[4]) {
    if (vec) {
        if constexpr (sizeof(T) == 4) {
            const float4 v = *reinterpret_cast<const float4*>(p);
            out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
        } else {
            const uint2 v = *reinterpret_cast<const uint2*>(p);
            const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
            for (int i = 0; i < 4; ++i) out[i] = to_f32(h[i]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) out[i] = to_f32(p[i]);
    }
}

template <typename Q, typename T, int MT>
__device__ __forceinline__ void qgemv_impl(const uint8_t* __restrict__ w, const T* __restrict__ x, void* y,
                                           uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy,
                                           uint32_t row_bytes, uint32_t flags) {
    const bool accumulate = flags & 1u, y_f32 = flags & 2u, x_vec = flags & 4u;
    const uint32_t lane = threadIdx.x & 31;
    const uint32_t n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const uint8_t* row = w + static_cast<size_t>(n) * row_bytes;
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;
    // each lane takes 4 consecutive parts (a whole 32-element block, or 16 contiguous
    // bytes of a k-quant's qs): four independent loads in flight per lane
    const uint32_t parts = K / 8;  // a multiple of 4 (K is whole blocks of >= 32)
    for (uint32_t p0 = 4 * lane; p0 < parts; p0 += 4 * 32) {
        float wv[4][8];
        int e0[4], e1[4];
        uint32_t k0[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const uint32_t p = p0 + j, blk = p / Q::PARTS;
            Q::dequant8(row + static_cast<size_t>(blk) * Q::BYTES, p % Q::PARTS, wv[j], e0[j], e1[j]);
            k0[j] = blk * Q::QK;
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < static_cast<int>(M)) {
                const T* xr = x + static_cast<size_t>(m) * ldx;
                float s = acc[m];
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    float a[4], c[4];
                    load4(xr + k0[j] + e0[j], x_vec, a);
                    load4(xr + k0[j] + e1[j], x_vec, c);
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        s = fmaf(wv[j][i], a[i], s);
                        s = fmaf(wv[j][4 + i], c[i], s);
                    }
                }
                acc[m] = s;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        if (m < static_cast<int>(M)) {
            const float s = warp_sum(acc[m]);
            if (lane == 0) {
                const size_t at = static_cast<size_t>(m) * ldy + n;
                if (y_f32) {
                    float* yp = static_cast<float*>(y) + at;
                    *yp = accumulate ? *yp + s : s;
                } else {
                    T* yp = static_cast<T*>(y) + at;
                    store_f32(yp, accumulate ? to_f32(*yp) + s : s);
                }
            }
        }
    }
}

}  // namespace qgemv_dequant
