// gemv.cu: y[m, n] (+)= sum_k x[m, k] * w[n, k] for M <= 2 rows m (decode steps of one or
// two rows), the dense projections and the LM head's f32 logits (the launcher's rule,
// backend.rs gemv_shape). cuBLAS reads the weights of these skinny shapes at 29-81% of the
// HBM bandwidth on an H200 (BENCHMARKS.md, issue 10 profile) and picks split-K kernels whose
// memsets are non-kernel nodes of captured graphs; this kernel streams W once, at up to the
// copy bandwidth for M = 1 (crates/cuda/dev/gemv_sweep.cu). It is FMA-bound from M = 4 on
// (8 FMAs a weight element a row of x at M = 8): from 3 rows the projections take cuBLAS's
// tensor cores and the logits gemv_tc.cu's.
//
// x: [M, K] rows of stride ldx; w: [N, K] contiguous rows (a Hugging Face Linear weight);
// y: [M, N] rows of stride ldy, of type O (the input type, or f32 for f32 logits). With
// `accumulate` y = y + x w^T (the residual add, one rounding, as cuBLAS's beta = 1).
// Preconditions (checked by the launcher, backend.rs `gemv_shape`): M <= MT, K a multiple of
// a 16-byte vector, x rows and w 16-byte aligned, N < 2^31.
// Fusions (the `gemv_rms*` entries, backend.rs `matmul_fused`): what the decoder ran as
// kernels around the projection, at M <= 2:
// - NORM, the RMSNorm before it: x is the residual stream; the main loop also sums the
//   squares of the x chunks it loads (each lane's chunks cover the row once) and multiplies
//   each chunk by the norm weight `nw` [K], and the sums are scaled by 1 / rms at the end:
//   y = (x * nw) w^T / rms(x). The normed x is not rounded to T on the way (the unfused
//   rms_norm.cu stores it in T): the fused result is the more precise one.
// - ACT (SILU / GELU), the gated MLP after it: `w` is the gate weight and `wu` the up weight
//   (both [N, K]); a warp owns output columns n of both, and stores
//   act(gate) * up with gate and up rounded to T first, as silu_mul.cu / gelu_mul.cu see
//   them in the unfused gate_up output.
// Thread mapping: a block is WARPS warps in groups of `ksplit` (1, 2 or 4: the launcher's
// gemv_ksplit); each group owns R consecutive rows n (of w, and of wu with ACT) and all M
// rows of x, and warp kp of a group takes the 16-byte chunks kp * 32 + lane + j * 32 ksplit
// of those rows: U chunks a row per step with all R * U weight loads issued first (streaming
// loads, evict-first: W is read once), each x chunk (L1-resident) reused for the R rows.
// Splitting K puts more warps on a matrix of few rows (an o_proj or down projection of
// 2048 rows: 2048 warps of 16 KB serial chains unsplit) and shortens each warp's chain of
// dependent loads. One warp reduction per output and warp, then (ksplit > 1) the group's
// first warp adds the others' sums from shared memory in warp order; no atomics
// (deterministic: graph replays are bit-identical to eager).
#include "common.cuh"

namespace gemv_cu {

constexpr int WARPS = 4;
constexpr int ACT_NONE = 0;
constexpr int ACT_SILU = 1;
constexpr int ACT_GELU = 2;

// 8 bf16 / 8 f16 / 4 f32 of a 16-byte chunk as floats.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& v, float (&out)[Vec16<T>::N]);
template <>
__device__ __forceinline__ void unpack16<float>(const uint4& v, float (&out)[4]) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
}
template <>
__device__ __forceinline__ void unpack16<__nv_bfloat16>(const uint4& v, float (&out)[8]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <>
__device__ __forceinline__ void unpack16<__half>(const uint4& v, float (&out)[8]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        __half2 h;
        memcpy(&h, &w[i], sizeof(h));
        const float2 f = __half22float2(h);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

// The gated-MLP activation of ACT (common.cuh's, as silu_mul.cu / gelu_mul.cu apply it).
template <int ACT>
__device__ __forceinline__ float act_of(float g) {
    if constexpr (ACT == ACT_SILU) {
        return silu_f32(g);
    } else {
        return gelu_tanh_f32(g);
    }
}

// acc[m][r] += x[m, chunk] (* nw[chunk] with NORM) . w[r][chunk] for the U chunks
// `c + cs u` (u < UA) of this lane, over the RR weight rows `wr`; with NORM also
// ss[m] += x[m, chunk]^2 (the lane's share of the row's sum of squares). MASK: the row's
// last step, only the chunks below `chunks` (all of their loads still issued first).
template <typename T, int MT, int RR, int UA, bool NORM, bool MASK = false>
__device__ __forceinline__ void gemv_chunks(const T* __restrict__ x, uint32_t ldx, uint32_t M,
                                            const uint4* const (&wr)[RR], const T* __restrict__ nw, uint32_t c,
                                            uint32_t cs, float (&acc)[MT][RR], float (&ss)[MT],
                                            uint32_t chunks = 0) {
    constexpr int V = Vec16<T>::N;
    uint4 wv[UA][RR];
#pragma unroll
    for (int u = 0; u < UA; ++u)
#pragma unroll
        for (int r = 0; r < RR; ++r) {
            if (!MASK || c + cs * u < chunks) wv[u][r] = __ldcs(wr[r] + c + cs * u);
        }
#pragma unroll
    for (int u = 0; u < UA; ++u) {
        if (MASK && c + cs * u >= chunks) break;
        const size_t col = static_cast<size_t>(c + cs * u) * V;
        float g[V];
        if constexpr (NORM) load16_f32(nw + col, g);
        float xv[MT][V];
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            if (m < static_cast<int>(M)) {
                load16_f32(x + static_cast<size_t>(m) * ldx + col, xv[m]);
                if constexpr (NORM) {
#pragma unroll
                    for (int j = 0; j < V; ++j) {
                        ss[m] = fmaf(xv[m][j], xv[m][j], ss[m]);
                        xv[m][j] *= g[j];
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < RR; ++r) {
            float wf[V];
            unpack16<T>(wv[u][r], wf);
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < static_cast<int>(M)) {
#pragma unroll
                    for (int j = 0; j < V; ++j) acc[m][r] = fmaf(xv[m][j], wf[j], acc[m][r]);
                }
            }
        }
    }
}

template <typename T, typename O, int MT, int R, int U, bool NORM, int ACT, int KS>
__device__ __forceinline__ void gemv_impl(const T* __restrict__ x, const T* __restrict__ w, O* __restrict__ y,
                                          uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy,
                                          uint32_t accumulate, const T* __restrict__ nw, float eps,
                                          const T* __restrict__ wu) {
    constexpr uint32_t ksplit = KS;  // a compile-time stride: the unsplit loop is the plain one
    constexpr int V = Vec16<T>::N;
    constexpr int RR = ACT == ACT_NONE ? R : 2 * R;  // weight rows a warp streams
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t kp = warp % ksplit;  // this warp's share of K
    const uint32_t n0 = (blockIdx.x * (WARPS / ksplit) + warp / ksplit) * R;
    if (ksplit == 1 && n0 >= N) return;  // the whole warp: nothing below synchronises the block
    const uint32_t chunks = K / V;
    const uint4* wr[RR];
#pragma unroll
    for (int r = 0; r < RR; ++r) {
        // rows past N re-read row N - 1 (in bounds) and store nothing; with ACT rows R.. are up's
        const T* base = (ACT != ACT_NONE && r >= R) ? wu : w;
        wr[r] = reinterpret_cast<const uint4*>(base + static_cast<size_t>(min(n0 + r % R, N - 1)) * K);
    }
    float acc[MT][RR], ss[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        ss[m] = 0.f;
#pragma unroll
        for (int r = 0; r < RR; ++r) acc[m][r] = 0.f;
    }
    const uint32_t cs = 32 * ksplit;  // chunks between a lane's consecutive chunks
    uint32_t c = 32 * kp + lane;
    for (; c + cs * (U - 1) < chunks; c += cs * U) gemv_chunks<T, MT, RR, U, NORM>(x, ldx, M, wr, nw, c, cs, acc, ss);
    // the < U chunks left, their loads issued together (not one dependent load at a time)
    if (c < chunks) gemv_chunks<T, MT, RR, U - 1 < 1 ? 1 : U - 1, NORM, true>(x, ldx, M, wr, nw, c, cs, acc, ss, chunks);
    // the warp's sums (every lane gets each), then the group's: warps kp = 0.. in order
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        if constexpr (NORM) ss[m] = warp_sum(ss[m]);
#pragma unroll
        for (int r = 0; r < RR; ++r) acc[m][r] = warp_sum(acc[m][r]);
    }
    if (ksplit > 1) {
        __shared__ float part[WARPS][MT * (RR + 1)];
        if (lane == 0) {
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                part[warp][m * (RR + 1) + RR] = ss[m];
#pragma unroll
                for (int r = 0; r < RR; ++r) part[warp][m * (RR + 1) + r] = acc[m][r];
            }
        }
        __syncthreads();
        if (kp != 0 || n0 >= N) return;
#pragma unroll
        for (int m = 0; m < MT; ++m) {
            for (uint32_t j = 1; j < ksplit; ++j) {
                if constexpr (NORM) ss[m] += part[warp + j][m * (RR + 1) + RR];
#pragma unroll
                for (int r = 0; r < RR; ++r) acc[m][r] += part[warp + j][m * (RR + 1) + r];
            }
        }
    }
    // 1 / rms of each row (rms_norm.cu's formula): the group's chunks cover the row once
    float inv[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        inv[m] = 1.f;
        if constexpr (NORM) {
            if (m < static_cast<int>(M)) inv[m] = rms_inv(ss[m], K, eps);
        }
    }
    // output i = m * R + r is stored by lane i % 32
#pragma unroll
    for (int m = 0; m < MT; ++m) {
        if (m < static_cast<int>(M)) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float s = acc[m][r];
                if constexpr (NORM) s *= inv[m];
                if constexpr (ACT != ACT_NONE) {
                    float up = acc[m][R + r];
                    if constexpr (NORM) up *= inv[m];
                    s = act_of<ACT>(round_to<T>(s)) * round_to<T>(up);
                }
                const uint32_t n = n0 + r;
                if (lane == static_cast<uint32_t>((m * R + r) % 32) && n < N) {
                    O* p = y + static_cast<size_t>(m) * ldy + n;
                    store_f32(p, accumulate ? load_f32(p) + s : s);
                }
            }
        }
    }
}

}  // namespace gemv_cu

// NAME, input T, output O, MT (max rows of x), R (rows of W a warp), U (chunks a row a step),
// NORM, ACT (the fusions), BOUNDS (its __launch_bounds__). One signature for every entry:
// nw, eps and wu are unused by the entries without their fusion; ksplit is 1, 2 or 4 (each a
// compile-time instantiation: a runtime stride made the unsplit loop of the Llama-3.1-8B
// projections slower).
#define GEMV_ENTRY(NAME, T, O, MT, R, U, NORM, ACT, BOUNDS)                                                  \
    extern "C" __global__ void BOUNDS NAME(const T* __restrict__ x,                                          \
        const T* __restrict__ w, O* __restrict__ y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx,       \
        uint32_t ldy, uint32_t accumulate, const T* __restrict__ nw, float eps, const T* __restrict__ wu,    \
        uint32_t ksplit) {                                                                                 \
        ENCORE_PDL_ENTRY();                                                                                \
        if (ksplit == 4) {                                                                                 \
            gemv_cu::gemv_impl<T, O, MT, R, U, NORM, ACT, 4>(x, w, y, M, N, K, ldx, ldy, accumulate, nw, eps, wu); \
        } else if (ksplit == 2) {                                                                          \
            gemv_cu::gemv_impl<T, O, MT, R, U, NORM, ACT, 2>(x, w, y, M, N, K, ldx, ldy, accumulate, nw, eps, wu); \
        } else {                                                                                           \
            gemv_cu::gemv_impl<T, O, MT, R, U, NORM, ACT, 1>(x, w, y, M, N, K, ldx, ldy, accumulate, nw, eps, wu); \
        }                                                                                                  \
    }
#define GEMV_BOUNDS __launch_bounds__(gemv_cu::WARPS * 32)
#define GEMV_FUSED(NAME, T, O, MT, R, U, NORM, ACT) GEMV_ENTRY(NAME, T, O, MT, R, U, NORM, ACT, GEMV_BOUNDS)
#define GEMV(NAME, T, O, MT, R, U) GEMV_ENTRY(NAME, T, O, MT, R, U, false, gemv_cu::ACT_NONE, GEMV_BOUNDS)
// The plain bf16 / f16 one-row projections at 32 registers: 16 blocks (64 warps) an SM, the
// most an SM holds. With the launcher's K split (backend.rs gemv_ksplit: the grid in one
// wave of the kernel's occupancy) a 2048-row projection split 4 ways (8192 warps) or a
// 4096-row one split 2 ways is one wave; at 34 registers (60 warps an SM) it ran past one
// wave, its last few warps alone (H200, session 8 call B: Llama-3.1-8B b1 4.19 against
// 4.49 ms). The fused kernels keep their registers: capped at 40 they were slower (call B,
// encore-w). f32 stays uncapped: at 32 registers it spills 200 bytes.
#define GEMV_ONE_WAVE(NAME, T, O, MT, R, U) \
    GEMV_ENTRY(NAME, T, O, MT, R, U, false, gemv_cu::ACT_NONE, __launch_bounds__(gemv_cu::WARPS * 32, 16))

// Tiers M <= 1, 2 (kernels.rs GEMV_TIERS). R and U per tier are the sweep's winners
// (crates/cuda/dev/gemv_sweep.cu, NOTES.md): summed over the projection shapes of the six
// presets for the same-dtype kernels, over the LM heads for the f32-output ones; backend.rs
// GEMV_ROWS_PER_WARP mirrors the R column.
GEMV(gemv_f32_m1, float, float, 1, 1, 4)
GEMV(gemv_f32_m2, float, float, 2, 1, 8)
GEMV_ONE_WAVE(gemv_bf16_m1, __nv_bfloat16, __nv_bfloat16, 1, 1, 4)
GEMV(gemv_bf16_m2, __nv_bfloat16, __nv_bfloat16, 2, 1, 8)
GEMV_ONE_WAVE(gemv_f16_m1, __half, __half, 1, 1, 4)
GEMV(gemv_f16_m2, __half, __half, 2, 1, 8)
GEMV(gemv_bf16_f32_m1, __nv_bfloat16, float, 1, 2, 2)
GEMV(gemv_bf16_f32_m2, __nv_bfloat16, float, 2, 4, 1)
GEMV(gemv_f16_f32_m1, __half, float, 1, 2, 2)
GEMV(gemv_f16_f32_m2, __half, float, 2, 4, 1)
// The fused decoder projections (kernels.rs GEMV_FUSED), same-dtype, M <= 1, 2:
// `gemv_rms_<dtype>_m<tier>` (qkv: the norm before it), `gemv_rms_<silu|gelu>_<dtype>_m<tier>`
// (gate_up: the norm before, the gated activation after). R and U keep the plain tiers' loads
// in flight: the activation kernels stream two rows (gate, up) a warp-row.
GEMV_FUSED(gemv_rms_f32_m1, float, float, 1, 1, 4, true, gemv_cu::ACT_NONE)
GEMV_FUSED(gemv_rms_f32_m2, float, float, 2, 1, 8, true, gemv_cu::ACT_NONE)
GEMV_FUSED(gemv_rms_bf16_m1, __nv_bfloat16, __nv_bfloat16, 1, 1, 4, true, gemv_cu::ACT_NONE)
GEMV_FUSED(gemv_rms_bf16_m2, __nv_bfloat16, __nv_bfloat16, 2, 1, 8, true, gemv_cu::ACT_NONE)
GEMV_FUSED(gemv_rms_f16_m1, __half, __half, 1, 1, 4, true, gemv_cu::ACT_NONE)
GEMV_FUSED(gemv_rms_f16_m2, __half, __half, 2, 1, 8, true, gemv_cu::ACT_NONE)
GEMV_FUSED(gemv_rms_silu_f32_m1, float, float, 1, 1, 2, true, gemv_cu::ACT_SILU)
GEMV_FUSED(gemv_rms_silu_f32_m2, float, float, 2, 1, 4, true, gemv_cu::ACT_SILU)
GEMV_FUSED(gemv_rms_silu_bf16_m1, __nv_bfloat16, __nv_bfloat16, 1, 1, 2, true, gemv_cu::ACT_SILU)
GEMV_FUSED(gemv_rms_silu_bf16_m2, __nv_bfloat16, __nv_bfloat16, 2, 1, 4, true, gemv_cu::ACT_SILU)
GEMV_FUSED(gemv_rms_silu_f16_m1, __half, __half, 1, 1, 2, true, gemv_cu::ACT_SILU)
GEMV_FUSED(gemv_rms_silu_f16_m2, __half, __half, 2, 1, 4, true, gemv_cu::ACT_SILU)
GEMV_FUSED(gemv_rms_gelu_f32_m1, float, float, 1, 1, 2, true, gemv_cu::ACT_GELU)
GEMV_FUSED(gemv_rms_gelu_f32_m2, float, float, 2, 1, 4, true, gemv_cu::ACT_GELU)
GEMV_FUSED(gemv_rms_gelu_bf16_m1, __nv_bfloat16, __nv_bfloat16, 1, 1, 2, true, gemv_cu::ACT_GELU)
GEMV_FUSED(gemv_rms_gelu_bf16_m2, __nv_bfloat16, __nv_bfloat16, 2, 1, 4, true, gemv_cu::ACT_GELU)
GEMV_FUSED(gemv_rms_gelu_f16_m1, __half, __half, 1, 1, 2, true, gemv_cu::ACT_GELU)
GEMV_FUSED(gemv_rms_gelu_f16_m2, __half, __half, 2, 1, 4, true, gemv_cu::ACT_GELU)
#undef GEMV
#undef GEMV_FUSED
#undef GEMV_ONE_WAVE
#undef GEMV_ENTRY
#undef GEMV_BOUNDS
