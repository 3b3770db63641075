// gemv.cu: y[m, n] = sum_k x[m, k] * w[n, k] for a few rows m (decode steps): the
// memory-bound x @ W^T of every projection when M <= 8, where cuBLAS's choice for tiny M
// leaves bandwidth unused (and for some shapes adds a memset node to a captured graph).
//
// x: [M, K] rows of stride ldx; w: [N, K] contiguous rows (a Hugging Face Linear weight);
// y: [M, N] rows of stride ldy. Preconditions (checked by the launcher, Cuda::matmul):
// M <= 8, K a multiple of 16 bytes' worth of elements, x / w rows 16-byte aligned.
// Thread mapping: one warp computes R = 4 consecutive outputs n for all M rows: each lane
// streams 16-byte slices of the R weight rows (R loads in flight, two k-steps unrolled),
// multiplies them by the same slice of every x row (L1-resident), accumulates in f32, and
// the warp reduces with shuffles. The weight matrix is read exactly once.
#include "common.cuh"

namespace gemv_cu {

constexpr int R = 4;
constexpr int MAX_M = 8;

template <typename T>
__device__ __forceinline__ void gemv_impl(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                          uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy) {
    constexpr int V = Vec16<T>::N;
    const uint32_t lane = threadIdx.x % 32;
    const uint32_t n0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * R;
    if (n0 >= N) return;
    float acc[MAX_M][R];
#pragma unroll
    for (int m = 0; m < MAX_M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.f;
    const T* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + static_cast<size_t>(min(n0 + r, N - 1)) * K;

#pragma unroll 2
    for (uint32_t k = lane * V; k < K; k += 32 * V) {
        float wv[R][V];
#pragma unroll
        for (int r = 0; r < R; ++r) load16_f32(wr[r] + k, wv[r]);
#pragma unroll
        for (int m = 0; m < MAX_M; ++m) {
            if (m < static_cast<int>(M)) {
                float xv[V];
                load16_f32(x + static_cast<size_t>(m) * ldx + k, xv);
#pragma unroll
                for (int r = 0; r < R; ++r)
#pragma unroll
                    for (int j = 0; j < V; ++j) acc[m][r] = fmaf(xv[j], wv[r][j], acc[m][r]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < MAX_M; ++m) {
        if (m < static_cast<int>(M)) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float s = warp_sum(acc[m][r]);
                if (lane == 0 && n0 + r < N) store_f32(y + static_cast<size_t>(m) * ldy + n0 + r, s);
            }
        }
    }
}

}  // namespace gemv_cu

#define GEMV(NAME, T)                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) NAME(const T* __restrict__ x, const T* __restrict__ w, \
        T* __restrict__ y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy) {               \
        gemv_cu::gemv_impl<T>(x, w, y, M, N, K, ldx, ldy);                                                \
    }
GEMV(gemv_f32, float)
GEMV(gemv_bf16, __nv_bfloat16)
GEMV(gemv_f16, __half)
#undef GEMV
