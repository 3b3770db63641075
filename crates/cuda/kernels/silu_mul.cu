// silu_mul.cu: SwiGLU, dst[i] = silu(gate[i]) * up[i] with silu(x) = x / (1 + exp(-x)), in f32.
//
// Layout: StridedMeta with 3 operands, [0] = dst, [1] = gate, [2] = up, all of the same dims
// (check::silu_mul), coalesced by StridedMeta::new, so the usual contiguous case is the flat
// fast path. dst must not overlap the inputs.
// Thread mapping: one element per thread, grid-stride loop.
#include "common.cuh"

namespace silu_mul_cu {

template <typename T>
__device__ __forceinline__ void silu_mul_impl(const T* __restrict__ gate, const T* __restrict__ up,
                                              T* __restrict__ dst, const StridedMeta& meta) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < meta.numel; i += gridDim.x * blockDim.x) {
        uint32_t off[3];
        strided_offsets<3>(meta, i, off);
        const float g = load_f32(gate + off[1]);
        store_f32(dst + off[0], silu_f32(g) * load_f32(up + off[2]));
    }
}

}  // namespace silu_mul_cu

#define SILU_MUL(NAME, T)                                                                                      \
    extern "C" __global__ void NAME(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ dst, \
        const StridedMeta meta) { ENCORE_PDL_ENTRY();                                                                              \
        silu_mul_cu::silu_mul_impl<T>(gate, up, dst, meta);                                                    \
    }

SILU_MUL(silu_mul_f32, float)
SILU_MUL(silu_mul_bf16, __nv_bfloat16)
SILU_MUL(silu_mul_f16, __half)

#undef SILU_MUL
