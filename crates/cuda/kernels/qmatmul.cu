// qmatmul.cu: matmuls and lookups over weights that stay in ggml blocks (quant.cuh).
//
// qgemv_<type>_<T>_m<MT>: y[m, n] (+)= sum_k x[m, k] * w[n, k] for M <= MT rows of x (the
// decode steps), w [N, K] quantized, dequantized in registers against x in T (f32, bf16 or
// f16), f32 accumulation. y is T, or f32 when `y_f32` (logits); `accumulate` adds to y (the
// residual fused into o_proj / down_proj).
// Thread mapping: one warp per weight row n; each lane takes 4 consecutive 8-element parts
// of the row (quant.cuh) at a time, strided by the warp: for the 32-element types a lane
// reads a whole block, for the k-quants 8 lanes split a 256-element block, so a warp reads
// 8 blocks or 4 super-blocks of its row per step with 4 loads in flight per lane; each
// weight is read once for all M rows. Warp-shuffle reduction; lane 0 stores.
// Preconditions (checked by the launcher, crates/cuda/src/qmatmul.rs): M <= MT, K a
// multiple of the block, w 4-byte aligned with rows of row_bytes; x rows of stride ldx,
// y rows of stride ldy. x is read with 4-element vector loads when `x_vec` (x 8- or
// 16-byte aligned rows, checked by the launcher), element loads otherwise.
//
// qdequant_<type>_<T>: out[r, :] = dequantize(w[ids ? ids[r] : r, :]) in T: the embedding
// lookup of a quantized table (ids [R]) and the prefill path's dequantize-to-scratch (ids
// null, w advanced to the first row). An id >= V writes a zero row.
// Thread mapping: one block per output row, threads strided over the row's parts.
#include "quant.cuh"

namespace qmatmul_cu {

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

template <typename Q, typename T>
__device__ __forceinline__ void qdequant_impl(const uint8_t* __restrict__ w, const uint32_t* __restrict__ ids,
                                              T* __restrict__ out, uint32_t cols, uint32_t row_bytes,
                                              uint32_t rows_in) {
    const uint32_t r = blockIdx.x;
    const uint32_t src = ids != nullptr ? ids[r] : r;
    T* o = out + static_cast<size_t>(r) * cols;
    if (src >= rows_in) {
        for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) store_f32(o + c, 0.f);
        return;
    }
    const uint8_t* row = w + static_cast<size_t>(src) * row_bytes;
    for (uint32_t p = threadIdx.x; p < cols / 8; p += blockDim.x) {
        const uint32_t blk = p / Q::PARTS, part = p % Q::PARTS;
        float wv[8];
        int e0, e1;
        Q::dequant8(row + static_cast<size_t>(blk) * Q::BYTES, part, wv, e0, e1);
        T* ob = o + blk * Q::QK;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            store_f32(ob + e0 + i, wv[i]);
            store_f32(ob + e1 + i, wv[4 + i]);
        }
    }
}

}  // namespace qmatmul_cu

#define QGEMV(NAME, Q, T, MT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(qmatmul_cu::WARPS * 32) NAME(const uint8_t* __restrict__ w, \
        const T* __restrict__ x, void* y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy,     \
        uint32_t row_bytes, uint32_t flags) {                                                                  \
        qmatmul_cu::qgemv_impl<Q, T, MT>(w, x, y, M, N, K, ldx, ldy, row_bytes, flags);                        \
    }

#define QDEQUANT(NAME, Q, T)                                                                            \
    extern "C" __global__ void NAME(const uint8_t* __restrict__ w, const uint32_t* __restrict__ ids,    \
        T* __restrict__ out, uint32_t cols, uint32_t row_bytes, uint32_t rows_in) {                     \
        qmatmul_cu::qdequant_impl<Q, T>(w, ids, out, cols, row_bytes, rows_in);                         \
    }

// GEMV for up to 1, 4 and 16 rows of x per type and dtype; then dequantize.
QGEMV(qgemv_q8_0_f32_m1, BlockQ8_0, float, 1)
QGEMV(qgemv_q8_0_f32_m4, BlockQ8_0, float, 4)
QGEMV(qgemv_q8_0_f32_m16, BlockQ8_0, float, 16)
QGEMV(qgemv_q8_0_bf16_m1, BlockQ8_0, __nv_bfloat16, 1)
QGEMV(qgemv_q8_0_bf16_m4, BlockQ8_0, __nv_bfloat16, 4)
QGEMV(qgemv_q8_0_bf16_m16, BlockQ8_0, __nv_bfloat16, 16)
QGEMV(qgemv_q8_0_f16_m1, BlockQ8_0, __half, 1)
QGEMV(qgemv_q8_0_f16_m4, BlockQ8_0, __half, 4)
QGEMV(qgemv_q8_0_f16_m16, BlockQ8_0, __half, 16)
QGEMV(qgemv_q4_0_f32_m1, BlockQ4_0, float, 1)
QGEMV(qgemv_q4_0_f32_m4, BlockQ4_0, float, 4)
QGEMV(qgemv_q4_0_f32_m16, BlockQ4_0, float, 16)
QGEMV(qgemv_q4_0_bf16_m1, BlockQ4_0, __nv_bfloat16, 1)
QGEMV(qgemv_q4_0_bf16_m4, BlockQ4_0, __nv_bfloat16, 4)
QGEMV(qgemv_q4_0_bf16_m16, BlockQ4_0, __nv_bfloat16, 16)
QGEMV(qgemv_q4_0_f16_m1, BlockQ4_0, __half, 1)
QGEMV(qgemv_q4_0_f16_m4, BlockQ4_0, __half, 4)
QGEMV(qgemv_q4_0_f16_m16, BlockQ4_0, __half, 16)
QGEMV(qgemv_q4_1_f32_m1, BlockQ4_1, float, 1)
QGEMV(qgemv_q4_1_f32_m4, BlockQ4_1, float, 4)
QGEMV(qgemv_q4_1_f32_m16, BlockQ4_1, float, 16)
QGEMV(qgemv_q4_1_bf16_m1, BlockQ4_1, __nv_bfloat16, 1)
QGEMV(qgemv_q4_1_bf16_m4, BlockQ4_1, __nv_bfloat16, 4)
QGEMV(qgemv_q4_1_bf16_m16, BlockQ4_1, __nv_bfloat16, 16)
QGEMV(qgemv_q4_1_f16_m1, BlockQ4_1, __half, 1)
QGEMV(qgemv_q4_1_f16_m4, BlockQ4_1, __half, 4)
QGEMV(qgemv_q4_1_f16_m16, BlockQ4_1, __half, 16)
QGEMV(qgemv_q4_k_f32_m1, BlockQ4_K, float, 1)
QGEMV(qgemv_q4_k_f32_m4, BlockQ4_K, float, 4)
QGEMV(qgemv_q4_k_f32_m16, BlockQ4_K, float, 16)
QGEMV(qgemv_q4_k_bf16_m1, BlockQ4_K, __nv_bfloat16, 1)
QGEMV(qgemv_q4_k_bf16_m4, BlockQ4_K, __nv_bfloat16, 4)
QGEMV(qgemv_q4_k_bf16_m16, BlockQ4_K, __nv_bfloat16, 16)
QGEMV(qgemv_q4_k_f16_m1, BlockQ4_K, __half, 1)
QGEMV(qgemv_q4_k_f16_m4, BlockQ4_K, __half, 4)
QGEMV(qgemv_q4_k_f16_m16, BlockQ4_K, __half, 16)
QGEMV(qgemv_q5_k_f32_m1, BlockQ5_K, float, 1)
QGEMV(qgemv_q5_k_f32_m4, BlockQ5_K, float, 4)
QGEMV(qgemv_q5_k_f32_m16, BlockQ5_K, float, 16)
QGEMV(qgemv_q5_k_bf16_m1, BlockQ5_K, __nv_bfloat16, 1)
QGEMV(qgemv_q5_k_bf16_m4, BlockQ5_K, __nv_bfloat16, 4)
QGEMV(qgemv_q5_k_bf16_m16, BlockQ5_K, __nv_bfloat16, 16)
QGEMV(qgemv_q5_k_f16_m1, BlockQ5_K, __half, 1)
QGEMV(qgemv_q5_k_f16_m4, BlockQ5_K, __half, 4)
QGEMV(qgemv_q5_k_f16_m16, BlockQ5_K, __half, 16)
QGEMV(qgemv_q6_k_f32_m1, BlockQ6_K, float, 1)
QGEMV(qgemv_q6_k_f32_m4, BlockQ6_K, float, 4)
QGEMV(qgemv_q6_k_f32_m16, BlockQ6_K, float, 16)
QGEMV(qgemv_q6_k_bf16_m1, BlockQ6_K, __nv_bfloat16, 1)
QGEMV(qgemv_q6_k_bf16_m4, BlockQ6_K, __nv_bfloat16, 4)
QGEMV(qgemv_q6_k_bf16_m16, BlockQ6_K, __nv_bfloat16, 16)
QGEMV(qgemv_q6_k_f16_m1, BlockQ6_K, __half, 1)
QGEMV(qgemv_q6_k_f16_m4, BlockQ6_K, __half, 4)
QGEMV(qgemv_q6_k_f16_m16, BlockQ6_K, __half, 16)
QDEQUANT(qdequant_q8_0_f32, BlockQ8_0, float)
QDEQUANT(qdequant_q8_0_bf16, BlockQ8_0, __nv_bfloat16)
QDEQUANT(qdequant_q8_0_f16, BlockQ8_0, __half)
QDEQUANT(qdequant_q4_0_f32, BlockQ4_0, float)
QDEQUANT(qdequant_q4_0_bf16, BlockQ4_0, __nv_bfloat16)
QDEQUANT(qdequant_q4_0_f16, BlockQ4_0, __half)
QDEQUANT(qdequant_q4_1_f32, BlockQ4_1, float)
QDEQUANT(qdequant_q4_1_bf16, BlockQ4_1, __nv_bfloat16)
QDEQUANT(qdequant_q4_1_f16, BlockQ4_1, __half)
QDEQUANT(qdequant_q4_k_f32, BlockQ4_K, float)
QDEQUANT(qdequant_q4_k_bf16, BlockQ4_K, __nv_bfloat16)
QDEQUANT(qdequant_q4_k_f16, BlockQ4_K, __half)
QDEQUANT(qdequant_q5_k_f32, BlockQ5_K, float)
QDEQUANT(qdequant_q5_k_bf16, BlockQ5_K, __nv_bfloat16)
QDEQUANT(qdequant_q5_k_f16, BlockQ5_K, __half)
QDEQUANT(qdequant_q6_k_f32, BlockQ6_K, float)
QDEQUANT(qdequant_q6_k_bf16, BlockQ6_K, __nv_bfloat16)
QDEQUANT(qdequant_q6_k_f16, BlockQ6_K, __half)

#undef QGEMV
#undef QDEQUANT
