// binary.cu: elementwise binary ops with broadcasting, dst[i] = op(lhs[i], rhs[i]) in f32.
//
// One entry point per (op, dtype): binary_<op>_<dtype>, op one of encore_tensor::BinaryOp
// (add sub mul div max min), a compile-time template argument. max/min are fmaxf/fminf
// (a NaN operand yields the other one, like f64::max).
// Layout: StridedMeta with 3 operands, [0] = dst, [1] = lhs, [2] = rhs, the inputs already
// broadcast to dst's dims by check::binary (broadcast dims have stride 0), then coalesced by
// StridedMeta::new. dst may alias an input exactly (same layout): each element is read and
// written by the same thread.
// Thread mapping: one element per thread, grid-stride loop.
#include "common.cuh"

namespace binary_cu {

enum class BinaryOp { Add, Sub, Mul, Div, Max, Min };

template <BinaryOp OP>
__device__ __forceinline__ float binary_eval(float a, float b) {
    if constexpr (OP == BinaryOp::Add) return a + b;
    if constexpr (OP == BinaryOp::Sub) return a - b;
    if constexpr (OP == BinaryOp::Mul) return a * b;
    if constexpr (OP == BinaryOp::Div) return a / b;
    if constexpr (OP == BinaryOp::Max) return fmaxf(a, b);
    if constexpr (OP == BinaryOp::Min) return fminf(a, b);
}

template <BinaryOp OP, typename T>
__device__ __forceinline__ void binary_impl(const T* lhs, const T* rhs, T* dst, const StridedMeta& meta) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < meta.numel; i += gridDim.x * blockDim.x) {
        uint32_t off[3];
        strided_offsets<3>(meta, i, off);
        store_f32(dst + off[0], binary_eval<OP>(load_f32(lhs + off[1]), load_f32(rhs + off[2])));
    }
}

}  // namespace binary_cu

// No __restrict__ here: dst may alias lhs or rhs.
#define BINARY(NAME, OP, T)                                                                       \
    extern "C" __global__ void NAME(const T* lhs, const T* rhs, T* dst, const StridedMeta meta) { ENCORE_PDL_ENTRY(); \
        binary_cu::binary_impl<binary_cu::BinaryOp::OP, T>(lhs, rhs, dst, meta);                  \
    }

BINARY(binary_add_f32, Add, float)
BINARY(binary_add_bf16, Add, __nv_bfloat16)
BINARY(binary_add_f16, Add, __half)
BINARY(binary_sub_f32, Sub, float)
BINARY(binary_sub_bf16, Sub, __nv_bfloat16)
BINARY(binary_sub_f16, Sub, __half)
BINARY(binary_mul_f32, Mul, float)
BINARY(binary_mul_bf16, Mul, __nv_bfloat16)
BINARY(binary_mul_f16, Mul, __half)
BINARY(binary_div_f32, Div, float)
BINARY(binary_div_bf16, Div, __nv_bfloat16)
BINARY(binary_div_f16, Div, __half)
BINARY(binary_max_f32, Max, float)
BINARY(binary_max_bf16, Max, __nv_bfloat16)
BINARY(binary_max_f16, Max, __half)
BINARY(binary_min_f32, Min, float)
BINARY(binary_min_bf16, Min, __nv_bfloat16)
BINARY(binary_min_f16, Min, __half)

#undef BINARY
