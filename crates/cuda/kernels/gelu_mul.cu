// gelu_mul.cu: GeGLU (Gemma's MLP), dst[i] = gelu(gate[i]) * up[i] with the tanh
// approximation gelu(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), in f32 (precise
// tanhf, as unary.cu's Gelu).
//
// Layout: StridedMeta with 3 operands, [0] = dst, [1] = gate, [2] = up, all of the same dims
// (check::gelu_mul), coalesced by StridedMeta::new, so the usual contiguous case is the flat
// fast path (gate and up are the two halves of one fused gate_up row). dst must not overlap
// the inputs.
// Thread mapping: one element per thread, grid-stride loop.
#include "common.cuh"

namespace gelu_mul_cu {

template <typename T>
__device__ __forceinline__ void gelu_mul_impl(const T* __restrict__ gate, const T* __restrict__ up,
                                              T* __restrict__ dst, const StridedMeta& meta) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < meta.numel; i += gridDim.x * blockDim.x) {
        uint32_t off[3];
        strided_offsets<3>(meta, i, off);
        store_f32(dst + off[0], gelu_tanh_f32(load_f32(gate + off[1])) * load_f32(up + off[2]));
    }
}

}  // namespace gelu_mul_cu

#define GELU_MUL(NAME, T)                                                                                      \
    extern "C" __global__ void NAME(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ dst, \
        const StridedMeta meta) { ENCORE_PDL_ENTRY();                                                                              \
        gelu_mul_cu::gelu_mul_impl<T>(gate, up, dst, meta);                                                    \
    }

GELU_MUL(gelu_mul_f32, float)
GELU_MUL(gelu_mul_bf16, __nv_bfloat16)
GELU_MUL(gelu_mul_f16, __half)

#undef GELU_MUL
