// gemv_tc.cuh: the skinny GEMM of decode steps of 3..16 rows on tensor cores,
// y[m, n] (+)= sum_k x[m, k] * w[n, k], bf16 / f16 in, f32 accumulate: the M where gemv.cu's
// CUDA-core dot products are FMA-bound (8 FMAs a weight element a row at M = 8) and cuBLAS
// reads W at 45-70% of copy. Entry points: gemv_tc.cu; variants timed in
// crates/cuda/dev/gemv_sweep.cu (its third table), which includes this header.
//
// mma.sync m16n8k16 with W as the A operand (16 rows of W a tile) and x^T as B (8 rows of x
// a tile; NT = 1 or 2 tiles: M <= 8 or <= 16). The dot product does not care in which order
// k is summed, so A and B use the same permutation of each 32-wide k step that lets every
// lane read 16 contiguous bytes: lane (g = lane / 4, q = lane % 4) loads k 8q..8q+7 of W rows
// g and g + 8 and of x row g, and feeds registers .x .y to the first mma of the step
// (logical k 2q, 2q+1, 2q+8, 2q+9 <- physical 8q..8q+3) and .z .w to the second
// (physical 8q+4..8q+7). So W streams in 16-byte evict-first loads straight into the
// fragments: no shared memory, no ldmatrix on the weight path.
//
// Thread mapping: a block owns 16 rows of W (grid = ceil(N / 16)); its KW warps split the K
// steps into contiguous ranges, U steps of loads in flight per lane; the KW partial tiles are
// summed through shared memory in a fixed order (deterministic: graph replays are
// bit-identical to eager) and warp 0 stores, with `accumulate` y + sum rounded once.
// Preconditions (backend.rs `gemv_tc_shape`): K % 32 == 0, x rows and w 16-byte aligned
// (ldx % 8 == 0), W [N, K] contiguous rows, 1 <= M <= 8 * NT, N >= 1.
#pragma once

#include "common.cuh"

namespace gemv_tc {

template <typename T, typename O, int NT, int KW, int U>
__device__ __forceinline__ void tc_gemv_impl(const T* __restrict__ x, const T* __restrict__ w, O* __restrict__ y,
                                             uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy,
                                             uint32_t accumulate) {
    __shared__ float red[KW][NT][4][32];
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t g = lane >> 2, q = lane & 3;
    const uint32_t n0 = blockIdx.x * 16;
    // W rows g and g + 8 of the tile (rows past N re-read row N - 1 and store nothing)
    const uint4* w0 = reinterpret_cast<const uint4*>(w + static_cast<size_t>(min(n0 + g, N - 1)) * K) + q;
    const uint4* w1 = reinterpret_cast<const uint4*>(w + static_cast<size_t>(min(n0 + g + 8, N - 1)) * K) + q;
    // x row g of each n-tile (rows past M are zeros)
    const uint4* xr[NT];
    bool xok[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
        const uint32_t m = j * 8 + g;
        xok[j] = m < M;
        xr[j] = reinterpret_cast<const uint4*>(x + static_cast<size_t>(xok[j] ? m : 0) * ldx) + q;
    }
    const uint32_t steps = K / 32;  // a step: 32 k, 4 uint4 a row
    const uint32_t per = (steps + KW - 1) / KW;
    const uint32_t s_beg = min(steps, warp * per), s_end = min(steps, s_beg + per);
    float c[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[j][e] = 0.f;
    for (uint32_t s = s_beg; s < s_end; s += U) {
        uint4 a0[U], a1[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (s + u < s_end) {
                a0[u] = __ldcs(w0 + static_cast<size_t>(s + u) * 4);
                a1[u] = __ldcs(w1 + static_cast<size_t>(s + u) * 4);
            } else {
                a0[u] = a1[u] = make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (s + u >= s_end) break;
            const uint32_t lo[4] = {a0[u].x, a1[u].x, a0[u].y, a1[u].y};
            const uint32_t hi[4] = {a0[u].z, a1[u].z, a0[u].w, a1[u].w};
#pragma unroll
            for (int j = 0; j < NT; ++j) {
                const uint4 b = xok[j] ? xr[j][static_cast<size_t>(s + u) * 4] : make_uint4(0, 0, 0, 0);
                mma_16816<T>(c[j], lo, b.x, b.y);
                mma_16816<T>(c[j], hi, b.z, b.w);
            }
        }
    }
    // sum the KW warps' tiles in warp order
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) red[warp][j][e][lane] = c[j][e];
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int j = 0; j < NT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float s = 0.f;
#pragma unroll
            for (int v = 0; v < KW; ++v) s += red[v][j][e][lane];
            // c[e]: W row g (e < 2) or g + 8, x row 8j + 2q + (e & 1)
            const uint32_t n = n0 + g + (e >= 2 ? 8 : 0), m = j * 8 + 2 * q + (e & 1);
            if (n < N && m < M) {
                O* p = y + static_cast<size_t>(m) * ldy + n;
                store_f32(p, accumulate ? load_f32(p) + s : s);
            }
        }
    }
}

}  // namespace gemv_tc
