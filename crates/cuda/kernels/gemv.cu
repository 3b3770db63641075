// gemv.cu: y[m, n] = sum_k x[m, k] * w[n, k] for a few rows m (decode steps). Used for the
// LM head's f32 logits (M <= 8): there cuBLAS picks a split-K kernel whose memset would be a
// non-kernel node of every captured decode graph. (For the bf16 projections cuBLAS measured
// faster than this kernel on an H200, so Cuda::matmul keeps them on cuBLAS.)
//
// x: [M, K] rows of stride ldx; w: [N, K] contiguous rows (a Hugging Face Linear weight);
// y: [M, N] rows of stride ldy, of type O (the input type, or f32 for f32 logits).
// Preconditions (checked by the launcher, Cuda::matmul): M <= 8, K a multiple of a 16-byte
// vector, x rows and w 16-byte aligned.
// Thread mapping: one 256-thread block computes R = 4 consecutive outputs n for all M rows.
// The threads split K: each streams 16-byte slices of the R weight rows (R loads in flight),
// multiplies them by the same slice of every x row (L1/L2-resident), accumulates in f32;
// warps reduce with shuffles, then the block through shared memory. W is read once.
#include "common.cuh"

namespace gemv_cu {

constexpr int R = 4;
constexpr int MAX_M = 8;
constexpr int THREADS = 256;

template <typename T, typename O>
__device__ __forceinline__ void gemv_impl(const T* __restrict__ x, const T* __restrict__ w, O* __restrict__ y,
                                          uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy) {
    constexpr int V = Vec16<T>::N;
    constexpr int WARPS = THREADS / 32;
    __shared__ float partial[WARPS][MAX_M * R];
    const uint32_t n0 = blockIdx.x * R;
    float acc[MAX_M][R];
#pragma unroll
    for (int m = 0; m < MAX_M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = 0.f;
    const T* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + static_cast<size_t>(min(n0 + r, N - 1)) * K;

    for (uint32_t k = threadIdx.x * V; k < K; k += THREADS * V) {
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
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int m = 0; m < MAX_M; ++m) {
        if (m < static_cast<int>(M)) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const float s = warp_sum(acc[m][r]);
                if (lane == 0) partial[warp][m * R + r] = s;
            }
        }
    }
    __syncthreads();
    // thread i < M * R owns output (m, r) = (i / R, i % R)
    const uint32_t i = threadIdx.x;
    if (i < M * R) {
        float s = 0.f;
#pragma unroll
        for (int wi = 0; wi < WARPS; ++wi) s += partial[wi][i];
        const uint32_t m = i / R, n = n0 + i % R;
        if (n < N) store_f32(y + static_cast<size_t>(m) * ldy + n, s);
    }
}

}  // namespace gemv_cu

#define GEMV(NAME, T, O)                                                                                   \
    extern "C" __global__ void __launch_bounds__(gemv_cu::THREADS, 2) NAME(const T* __restrict__ x,           \
        const T* __restrict__ w, O* __restrict__ y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx,       \
        uint32_t ldy) {                                                                                     \
        gemv_cu::gemv_impl<T, O>(x, w, y, M, N, K, ldx, ldy);                                              \
    }
GEMV(gemv_f32, float, float)
GEMV(gemv_bf16, __nv_bfloat16, __nv_bfloat16)
GEMV(gemv_f16, __half, __half)
GEMV(gemv_bf16_f32, __nv_bfloat16, float)
GEMV(gemv_f16_f32, __half, float)
#undef GEMV
