// softmax.cu: dst = exp(x - max) / sum(exp(x - max)) over the last dim, in f32.
//
// Layout: rows over the last dim (check::softmax / check::rows): x and dst already advanced to
// their view offsets, C columns, row strides in elements (last dim stride 1).
// -inf inputs (masked logits) contribute exactly 0; a row of only -inf gives NaN (0/0), as in
// PyTorch. dst may alias x exactly.
// Thread mapping: one block per row (grid = rows), any multiple of 32 threads up to 1024.
// Pass 1: each thread keeps an online (max, sum of exp) pair in base 2, merged over the block;
// pass 2 rereads x and writes.
#include "common.cuh"

namespace softmax_cu {

template <typename T>
__device__ __forceinline__ void softmax_impl(const T* x, T* dst, uint32_t cols, uint32_t x_row_stride,
                                             uint32_t dst_row_stride) {
    __shared__ float scratch[32];
    const T* xr = x + static_cast<size_t>(blockIdx.x) * x_row_stride;
    T* dr = dst + static_cast<size_t>(blockIdx.x) * dst_row_stride;
    float m = -INFINITY, s = 0.f;  // running max and sum of exp2(v - m), v in base 2
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = load_f32(xr + c) * ENCORE_LOG2E;
        if (v > m) {
            s = s * exp2f(m - v) + 1.f;  // m == -inf: exp2f(-inf) = 0
            m = v;
        } else if (v > -INFINITY) {
            s += exp2f(v - m);
        }
    }
    const float row_max = block_max(m, scratch);
    const float total = block_sum(m == -INFINITY ? 0.f : s * exp2f(m - row_max), scratch);
    const float inv = 1.f / total;
#pragma unroll 4
    for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) {
        store_f32(dr + c, exp2f(load_f32(xr + c) * ENCORE_LOG2E - row_max) * inv);
    }
}

}  // namespace softmax_cu

#define SOFTMAX(NAME, T)                                                                      \
    extern "C" __global__ void NAME(const T* x, T* dst, uint32_t cols, uint32_t x_row_stride, \
        uint32_t dst_row_stride) { ENCORE_PDL_ENTRY();                                                            \
        softmax_cu::softmax_impl<T>(x, dst, cols, x_row_stride, dst_row_stride);              \
    }

SOFTMAX(softmax_f32, float)
SOFTMAX(softmax_bf16, __nv_bfloat16)
SOFTMAX(softmax_f16, __half)

#undef SOFTMAX
