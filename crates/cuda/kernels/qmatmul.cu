// qmatmul.cu: matmuls and lookups over weights that stay in ggml blocks (quant.cuh).
//
// Decode (M <= 16 rows of x), two kernels, as llama.cpp's MMVQ:
// qquant_x_<T>: x [M, K] (rows of stride ldx) -> q8_1 activations: xq int8 [M, K] and
// xds float2 [M, K / 32] (d, d * sum q) per 32 elements, d = max|x| / 127 (quant.cuh).
// qquant_x_rms_<T> quantizes rms_norm(x) * nw instead (a block per slice of 32 groups of a
// row sums the row's squares once: grid (ceil(K / 1024), M), 256 threads),
// qquant_x_<silu|gelu>_<T> act(gate) * up of rows [gate | up] (2K wide): the
// kernel the decoder ran before the quantization fused in, its value rounded to T as that
// kernel stored it (backend `qmatmul_fused`).
// Thread mapping: one warp per 32-element group, one element per lane.
// qgemv_<type>_<T>_m<MT>: y[m, n] (+)= sum_k x[m, k] * w[n, k] for M <= MT, w [N, K]
// quantized, integer dot products (dp4a) of each weight chunk against xq, f32 sums. y is
// T, or f32 when `y_f32` (logits); `accumulate` adds to y (the residual fused into o_proj /
// down_proj). Thread mapping: one warp per weight row n; the row's blocks are cut into
// LPB lane chunks each (quant.cuh Dot*), lanes take consecutive chunks (so a warp's loads
// cover consecutive bytes), U<MT> chunks in flight per lane; the weight chunk is read once for
// all M rows. Warp-shuffle reduction; lane 0 stores.
// Preconditions (checked by the launcher, crates/cuda/src/qmatmul.rs): M <= MT, K a
// multiple of the block, w 16-byte aligned with rows of row_bytes (a multiple of 16 for
// Q4_K / Q5_K, of 4 otherwise); xq rows of K bytes, 16-byte aligned; y rows of stride ldy.
//
// qdequant_<type>_<T>: out[r, :] = dequantize(w[ids ? ids[r] : r, :]) in T: the embedding
// lookup of a quantized table (ids [R]) and the prefill path's dequantize-to-scratch (ids
// null, w advanced to the first row). An id >= V writes a zero row.
// Thread mapping: one block per output row, threads strided over the row's parts.
//
// Prefill helpers (bf16 x: the GEMM runs in f16, whose 11-bit significand holds the
// dequantized weights far closer than bf16's 8): qcvt_bf16_f16 copies x rows [R, K]
// (stride ldx) to dense f16, saturating at +-65504; qepi_bf16 writes the f32 GEMM result
// [R, C] into y (stride ldy), added to y when `accumulate`. Grid-stride over elements.
#include "quant.cuh"

namespace qmatmul_cu {

constexpr int WARPS = 4;
// Weight chunks in flight per lane: 2 for one row of x, 4 for more (the sweep: at M = 1,
// U = 2 beat 4 by 10-40% at every 8B / 1B shape and type; at M = 8, 4 or 8 won).
template <int MT>
constexpr int U = MT == 1 ? 2 : 4;

// What qquant_x computes on x before quantizing it.
constexpr int PRO_NONE = 0;
constexpr int PRO_RMS = 1;
constexpr int PRO_SILU = 2;
constexpr int PRO_GELU = 3;

// One 32-element group to q8_1: v is this lane's element k of row m, group gi of the row.
__device__ __forceinline__ void quantize_group(float v, uint32_t lane, int8_t* __restrict__ q_out,
                                               float2* __restrict__ ds_out) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.f;
    const int q = amax > 0.f ? __float2int_rn(v / d) : 0;
    *q_out = static_cast<int8_t>(q);
    const float sum = warp_sum(static_cast<float>(q));  // exact: |sum| <= 32 * 127
    if (lane == 0) *ds_out = make_float2(d, d * sum);
}

// The RMSNorm quantizer's mapping: grid (ceil(groups / RMS_GROUPS), M), RMS_THREADS threads;
// a block sums its row's squares once, then its warps quantize up to RMS_GROUPS groups.
constexpr int RMS_THREADS = 256;
constexpr int RMS_GROUPS = 32;

template <typename T, int PRO>
__device__ __forceinline__ void qquant_x_impl(const T* __restrict__ x, uint32_t M, uint32_t K, uint32_t ldx,
                                              int8_t* __restrict__ xq, float2* __restrict__ xds,
                                              const T* __restrict__ nw, float eps) {
    const uint32_t groups = K / 32, lane = threadIdx.x & 31;
    if constexpr (PRO == PRO_RMS) {
        __shared__ float scratch[32];
        const uint32_t m = blockIdx.y;
        const T* row = x + static_cast<size_t>(m) * ldx;
        float ss = 0.f;
        for (uint32_t j = threadIdx.x; j < K; j += blockDim.x) {
            const float t = to_f32(row[j]);
            ss = fmaf(t, t, ss);
        }
        const float inv = rms_inv(block_sum(ss, scratch), K, eps);
        const uint32_t end = min(groups, (blockIdx.x + 1) * RMS_GROUPS);
        for (uint32_t gi = blockIdx.x * RMS_GROUPS + (threadIdx.x >> 5); gi < end; gi += blockDim.x >> 5) {
            const uint32_t k = gi * 32 + lane;
            const float v = round_to<T>(to_f32(row[k]) * inv * to_f32(nw[k]));
            quantize_group(v, lane, xq + static_cast<size_t>(m) * K + k, xds + static_cast<size_t>(m) * groups + gi);
        }
    } else {
        const uint32_t g = blockIdx.x * WARPS + (threadIdx.x >> 5);
        if (g >= M * groups) return;
        const uint32_t m = g / groups, k = (g % groups) * 32 + lane;
        const T* row = x + static_cast<size_t>(m) * ldx;
        float v = to_f32(row[k]);
        if constexpr (PRO == PRO_SILU) {
            v = round_to<T>(silu_f32(v) * to_f32(row[K + k]));
        } else if constexpr (PRO == PRO_GELU) {
            v = round_to<T>(gelu_tanh_f32(v) * to_f32(row[K + k]));
        }
        quantize_group(v, lane, xq + static_cast<size_t>(m) * K + k, xds + g);
    }
}

template <typename Q, typename T, int MT, int UU = U<MT>>
__device__ __forceinline__ void qgemv_impl(const uint8_t* __restrict__ w, const int8_t* __restrict__ xq,
                                           const float2* __restrict__ xds, void* y, uint32_t M, uint32_t N,
                                           uint32_t K, uint32_t ldy, uint32_t row_bytes, uint32_t flags) {
    const bool accumulate = flags & 1u, y_f32 = flags & 2u;
    const uint32_t lane = threadIdx.x & 31;
    const uint32_t n = blockIdx.x * WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const uint8_t* row = w + static_cast<size_t>(n) * row_bytes;
    const uint32_t chunks = K / Q::QK * Q::LPB, groups = K / 32;
    float acc[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m] = 0.f;
    for (uint32_t c0 = lane; c0 < chunks; c0 += 32 * UU) {
        typename Q::W wv[UU];
#pragma unroll
        for (int u = 0; u < UU; ++u) {
            const uint32_t c = c0 + 32 * u;
            if (c < chunks) wv[u] = Q::load(row + static_cast<size_t>(c / Q::LPB) * Q::BYTES, c % Q::LPB);
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < static_cast<int>(M)) {
                float s = acc[m];
#pragma unroll
                for (int u = 0; u < UU; ++u) {
                    const uint32_t c = c0 + 32 * u;
                    if (c < chunks) {
                        const uint32_t blk = c / Q::LPB;
                        s += Q::dot(wv[u], xq + static_cast<size_t>(m) * K + blk * Q::QK,
                                    xds + static_cast<size_t>(m) * groups + blk * (Q::QK / 32));
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

__device__ __forceinline__ void qcvt_bf16_f16_impl(const __nv_bfloat16* __restrict__ x, uint32_t ldx, uint32_t R,
                                                   uint32_t K, __half* __restrict__ out) {
    const size_t total = static_cast<size_t>(R) * K;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        const size_t r = i / K, k = i % K;
        const float v = __bfloat162float(x[r * ldx + k]);
        out[i] = __float2half_rn(fminf(fmaxf(v, -65504.f), 65504.f));
    }
}

__device__ __forceinline__ void qepi_bf16_impl(const float* __restrict__ src, __nv_bfloat16* __restrict__ y,
                                               uint32_t ldy, uint32_t R, uint32_t C, uint32_t accumulate) {
    const size_t total = static_cast<size_t>(R) * C;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<size_t>(gridDim.x) * blockDim.x) {
        __nv_bfloat16* yp = y + (i / C) * ldy + i % C;
        const float v = src[i];
        *yp = __float2bfloat16_rn(accumulate ? __bfloat162float(*yp) + v : v);
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
        const int8_t* __restrict__ xq, const float2* __restrict__ xds, void* y, uint32_t M, uint32_t N,       \
        uint32_t K, uint32_t ldy, uint32_t row_bytes, uint32_t flags) { ENCORE_PDL_ENTRY();                                        \
        qmatmul_cu::qgemv_impl<Q, T, MT>(w, xq, xds, y, M, N, K, ldy, row_bytes, flags);                       \
    }

// One signature for the four kinds: nw and eps are the RMSNorm's (unused by the others).
// Launch bounds: the RMSNorm kind's block (the others launch WARPS warps).
#define QQUANT_X(NAME, T, PRO)                                                                                   \
    extern "C" __global__ void __launch_bounds__(qmatmul_cu::RMS_THREADS) NAME(const T* __restrict__ x,         \
        uint32_t M, uint32_t K, uint32_t ldx, int8_t* __restrict__ xq, float2* __restrict__ xds,                 \
        const T* __restrict__ nw, float eps) { ENCORE_PDL_ENTRY();                                               \
        qmatmul_cu::qquant_x_impl<T, PRO>(x, M, K, ldx, xq, xds, nw, eps);                                       \
    }

#define QDEQUANT(NAME, Q, T)                                                                            \
    extern "C" __global__ void NAME(const uint8_t* __restrict__ w, const uint32_t* __restrict__ ids,    \
        T* __restrict__ out, uint32_t cols, uint32_t row_bytes, uint32_t rows_in) { ENCORE_PDL_ENTRY();                     \
        qmatmul_cu::qdequant_impl<Q, T>(w, ids, out, cols, row_bytes, rows_in);                         \
    }

QQUANT_X(qquant_x_f32, float, qmatmul_cu::PRO_NONE)
QQUANT_X(qquant_x_bf16, __nv_bfloat16, qmatmul_cu::PRO_NONE)
QQUANT_X(qquant_x_f16, __half, qmatmul_cu::PRO_NONE)
QQUANT_X(qquant_x_rms_f32, float, qmatmul_cu::PRO_RMS)
QQUANT_X(qquant_x_rms_bf16, __nv_bfloat16, qmatmul_cu::PRO_RMS)
QQUANT_X(qquant_x_rms_f16, __half, qmatmul_cu::PRO_RMS)
QQUANT_X(qquant_x_silu_f32, float, qmatmul_cu::PRO_SILU)
QQUANT_X(qquant_x_silu_bf16, __nv_bfloat16, qmatmul_cu::PRO_SILU)
QQUANT_X(qquant_x_silu_f16, __half, qmatmul_cu::PRO_SILU)
QQUANT_X(qquant_x_gelu_f32, float, qmatmul_cu::PRO_GELU)
QQUANT_X(qquant_x_gelu_bf16, __nv_bfloat16, qmatmul_cu::PRO_GELU)
QQUANT_X(qquant_x_gelu_f16, __half, qmatmul_cu::PRO_GELU)

extern "C" __global__ void qcvt_bf16_f16(const __nv_bfloat16* __restrict__ x, uint32_t ldx, uint32_t R, uint32_t K,
                                         __half* __restrict__ out) {
    ENCORE_PDL_ENTRY();
    qmatmul_cu::qcvt_bf16_f16_impl(x, ldx, R, K, out);
}

extern "C" __global__ void qepi_bf16(const float* __restrict__ src, __nv_bfloat16* __restrict__ y, uint32_t ldy,
                                     uint32_t R, uint32_t C, uint32_t accumulate) {
    ENCORE_PDL_ENTRY();
    qmatmul_cu::qepi_bf16_impl(src, y, ldy, R, C, accumulate);
}

// GEMV for up to 1, 4 and 16 rows of x per type and dtype; then dequantize.
QGEMV(qgemv_q8_0_f32_m1, DotQ8_0, float, 1)
QGEMV(qgemv_q8_0_f32_m4, DotQ8_0, float, 4)
QGEMV(qgemv_q8_0_f32_m16, DotQ8_0, float, 16)
QGEMV(qgemv_q8_0_bf16_m1, DotQ8_0, __nv_bfloat16, 1)
QGEMV(qgemv_q8_0_bf16_m4, DotQ8_0, __nv_bfloat16, 4)
QGEMV(qgemv_q8_0_bf16_m16, DotQ8_0, __nv_bfloat16, 16)
QGEMV(qgemv_q8_0_f16_m1, DotQ8_0, __half, 1)
QGEMV(qgemv_q8_0_f16_m4, DotQ8_0, __half, 4)
QGEMV(qgemv_q8_0_f16_m16, DotQ8_0, __half, 16)
QGEMV(qgemv_q4_0_f32_m1, DotQ4_0, float, 1)
QGEMV(qgemv_q4_0_f32_m4, DotQ4_0, float, 4)
QGEMV(qgemv_q4_0_f32_m16, DotQ4_0, float, 16)
QGEMV(qgemv_q4_0_bf16_m1, DotQ4_0, __nv_bfloat16, 1)
QGEMV(qgemv_q4_0_bf16_m4, DotQ4_0, __nv_bfloat16, 4)
QGEMV(qgemv_q4_0_bf16_m16, DotQ4_0, __nv_bfloat16, 16)
QGEMV(qgemv_q4_0_f16_m1, DotQ4_0, __half, 1)
QGEMV(qgemv_q4_0_f16_m4, DotQ4_0, __half, 4)
QGEMV(qgemv_q4_0_f16_m16, DotQ4_0, __half, 16)
QGEMV(qgemv_q4_1_f32_m1, DotQ4_1, float, 1)
QGEMV(qgemv_q4_1_f32_m4, DotQ4_1, float, 4)
QGEMV(qgemv_q4_1_f32_m16, DotQ4_1, float, 16)
QGEMV(qgemv_q4_1_bf16_m1, DotQ4_1, __nv_bfloat16, 1)
QGEMV(qgemv_q4_1_bf16_m4, DotQ4_1, __nv_bfloat16, 4)
QGEMV(qgemv_q4_1_bf16_m16, DotQ4_1, __nv_bfloat16, 16)
QGEMV(qgemv_q4_1_f16_m1, DotQ4_1, __half, 1)
QGEMV(qgemv_q4_1_f16_m4, DotQ4_1, __half, 4)
QGEMV(qgemv_q4_1_f16_m16, DotQ4_1, __half, 16)
QGEMV(qgemv_q4_k_f32_m1, DotQ4_K, float, 1)
QGEMV(qgemv_q4_k_f32_m4, DotQ4_K, float, 4)
QGEMV(qgemv_q4_k_f32_m16, DotQ4_K, float, 16)
QGEMV(qgemv_q4_k_bf16_m1, DotQ4_K, __nv_bfloat16, 1)
QGEMV(qgemv_q4_k_bf16_m4, DotQ4_K, __nv_bfloat16, 4)
QGEMV(qgemv_q4_k_bf16_m16, DotQ4_K, __nv_bfloat16, 16)
QGEMV(qgemv_q4_k_f16_m1, DotQ4_K, __half, 1)
QGEMV(qgemv_q4_k_f16_m4, DotQ4_K, __half, 4)
QGEMV(qgemv_q4_k_f16_m16, DotQ4_K, __half, 16)
QGEMV(qgemv_q5_k_f32_m1, DotQ5_K, float, 1)
QGEMV(qgemv_q5_k_f32_m4, DotQ5_K, float, 4)
QGEMV(qgemv_q5_k_f32_m16, DotQ5_K, float, 16)
QGEMV(qgemv_q5_k_bf16_m1, DotQ5_K, __nv_bfloat16, 1)
QGEMV(qgemv_q5_k_bf16_m4, DotQ5_K, __nv_bfloat16, 4)
QGEMV(qgemv_q5_k_bf16_m16, DotQ5_K, __nv_bfloat16, 16)
QGEMV(qgemv_q5_k_f16_m1, DotQ5_K, __half, 1)
QGEMV(qgemv_q5_k_f16_m4, DotQ5_K, __half, 4)
QGEMV(qgemv_q5_k_f16_m16, DotQ5_K, __half, 16)
QGEMV(qgemv_q6_k_f32_m1, DotQ6_K, float, 1)
QGEMV(qgemv_q6_k_f32_m4, DotQ6_K, float, 4)
QGEMV(qgemv_q6_k_f32_m16, DotQ6_K, float, 16)
QGEMV(qgemv_q6_k_bf16_m1, DotQ6_K, __nv_bfloat16, 1)
QGEMV(qgemv_q6_k_bf16_m4, DotQ6_K, __nv_bfloat16, 4)
QGEMV(qgemv_q6_k_bf16_m16, DotQ6_K, __nv_bfloat16, 16)
QGEMV(qgemv_q6_k_f16_m1, DotQ6_K, __half, 1)
QGEMV(qgemv_q6_k_f16_m4, DotQ6_K, __half, 4)
QGEMV(qgemv_q6_k_f16_m16, DotQ6_K, __half, 16)
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
#undef QQUANT_X
#undef QDEQUANT
