// unary.cu: elementwise unary ops, dst[i] = op(src[i]), computed in f32.
//
// One entry point per (op, dtype): unary_<op>_<dtype>, op one of encore_tensor::UnaryOp
// (neg exp silu gelu sqrt recip square abs tanh), so the op is a compile-time template
// argument and the kernel has no per-element switch. Gelu is the tanh approximation
// (gelu_pytorch_tanh). Precise libm functions (expf, tanhf), not the fast intrinsics.
// Layout: StridedMeta with 2 operands, [0] = dst, [1] = src (StridedMeta::new, coalesced);
// dst may alias src exactly (each element is read and written by the same thread).
// Thread mapping: one element per thread, grid-stride loop.
#include "common.cuh"

namespace unary_cu {

enum class UnaryOp { Neg, Exp, Silu, Gelu, Sqrt, Recip, Square, Abs, Tanh };

template <UnaryOp OP>
__device__ __forceinline__ float unary_eval(float x) {
    if constexpr (OP == UnaryOp::Neg) return -x;
    if constexpr (OP == UnaryOp::Exp) return expf(x);
    if constexpr (OP == UnaryOp::Silu) return x / (1.f + expf(-x));
    if constexpr (OP == UnaryOp::Gelu) {
        const float k = 0.7978845608028654f;  // sqrt(2 / pi)
        return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
    }
    if constexpr (OP == UnaryOp::Sqrt) return sqrtf(x);
    if constexpr (OP == UnaryOp::Recip) return 1.f / x;
    if constexpr (OP == UnaryOp::Square) return x * x;
    if constexpr (OP == UnaryOp::Abs) return fabsf(x);
    if constexpr (OP == UnaryOp::Tanh) return tanhf(x);
}

template <UnaryOp OP, typename T>
__device__ __forceinline__ void unary_impl(const T* src, T* dst, const StridedMeta& meta) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < meta.numel; i += gridDim.x * blockDim.x) {
        uint32_t off[2];
        strided_offsets<2>(meta, i, off);
        store_f32(dst + off[0], unary_eval<OP>(load_f32(src + off[1])));
    }
}

}  // namespace unary_cu

// No __restrict__ here: dst may alias src.
#define UNARY(NAME, OP, T)                                                          \
    extern "C" __global__ void NAME(const T* src, T* dst, const StridedMeta meta) { ENCORE_PDL_ENTRY(); \
        unary_cu::unary_impl<unary_cu::UnaryOp::OP, T>(src, dst, meta);             \
    }

UNARY(unary_neg_f32, Neg, float)
UNARY(unary_neg_bf16, Neg, __nv_bfloat16)
UNARY(unary_neg_f16, Neg, __half)
UNARY(unary_exp_f32, Exp, float)
UNARY(unary_exp_bf16, Exp, __nv_bfloat16)
UNARY(unary_exp_f16, Exp, __half)
UNARY(unary_silu_f32, Silu, float)
UNARY(unary_silu_bf16, Silu, __nv_bfloat16)
UNARY(unary_silu_f16, Silu, __half)
UNARY(unary_gelu_f32, Gelu, float)
UNARY(unary_gelu_bf16, Gelu, __nv_bfloat16)
UNARY(unary_gelu_f16, Gelu, __half)
UNARY(unary_sqrt_f32, Sqrt, float)
UNARY(unary_sqrt_bf16, Sqrt, __nv_bfloat16)
UNARY(unary_sqrt_f16, Sqrt, __half)
UNARY(unary_recip_f32, Recip, float)
UNARY(unary_recip_bf16, Recip, __nv_bfloat16)
UNARY(unary_recip_f16, Recip, __half)
UNARY(unary_square_f32, Square, float)
UNARY(unary_square_bf16, Square, __nv_bfloat16)
UNARY(unary_square_f16, Square, __half)
UNARY(unary_abs_f32, Abs, float)
UNARY(unary_abs_bf16, Abs, __nv_bfloat16)
UNARY(unary_abs_f16, Abs, __half)
UNARY(unary_tanh_f32, Tanh, float)
UNARY(unary_tanh_bf16, Tanh, __nv_bfloat16)
UNARY(unary_tanh_f16, Tanh, __half)

#undef UNARY
