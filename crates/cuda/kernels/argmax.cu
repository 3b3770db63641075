// argmax.cu: index of the largest value of each row over the last dim, u32 out.
//
// Ties go to the first (smallest) index; NaN never wins; a row of only NaN gives 0.
// Layout: rows over the last dim (check::argmax / check::rows): x already advanced to its view
// offset, C columns, row stride in elements; dst is contiguous [rows] u32.
// Thread mapping: one block per row (grid = rows), any multiple of 32 threads up to 1024; each
// thread scans columns tid, tid + blockDim, ... keeping its first best, then (value, index)
// pairs are merged by warp shuffles and shared memory.
#include "common.cuh"

namespace argmax_cu {

// (v, i) beats (bv, bi): larger value, or equal value at a smaller index.
__device__ __forceinline__ bool argmax_better(float v, uint32_t i, float bv, uint32_t bi) {
    return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void argmax_warp(float& v, uint32_t& i) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(ENCORE_FULL_MASK, v, o);
        const uint32_t oi = __shfl_xor_sync(ENCORE_FULL_MASK, i, o);
        if (argmax_better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

template <typename T>
__device__ __forceinline__ void argmax_impl(const T* __restrict__ x, uint32_t* __restrict__ dst, uint32_t cols,
                                            uint32_t x_row_stride) {
    __shared__ float svals[32];
    __shared__ uint32_t sidx[32];
    const T* xr = x + static_cast<size_t>(blockIdx.x) * x_row_stride;
    float best = -INFINITY;
    uint32_t best_i = 0xffffffffu;
#pragma unroll 4
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = load_f32(xr + c);
        if (argmax_better(v, c, best, best_i)) {
            best = v;
            best_i = c;
        }
    }
    argmax_warp(best, best_i);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        svals[warp] = best;
        sidx[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < nwarps ? svals[lane] : -INFINITY;
        best_i = lane < nwarps ? sidx[lane] : 0xffffffffu;
        argmax_warp(best, best_i);
        if (lane == 0) dst[blockIdx.x] = best_i == 0xffffffffu ? 0u : best_i;
    }
}

}  // namespace argmax_cu

#define ARGMAX(NAME, T)                                                                                 \
    extern "C" __global__ void NAME(const T* __restrict__ x, uint32_t* __restrict__ dst, uint32_t cols, \
        uint32_t x_row_stride) { ENCORE_PDL_ENTRY();                                                                        \
        argmax_cu::argmax_impl<T>(x, dst, cols, x_row_stride);                                          \
    }

ARGMAX(argmax_f32, float)
ARGMAX(argmax_bf16, __nv_bfloat16)
ARGMAX(argmax_f16, __half)

#undef ARGMAX
