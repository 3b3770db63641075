// copy.cu: strided copy with dtype conversion.
//
// Computes dst[i] = convert(src[i]) for every element i (row-major order of the common
// dims). Floats convert through f32 (round to nearest even when narrowing); u32 and i32
// copy bits unchanged (same-dtype only: check::copy refuses int <-> float).
// Layout: StridedMeta with 2 operands, [0] = dst, [1] = src (StridedMeta::new, coalesced),
// built by Cuda::copy; dst must not overlap src.
// Thread mapping: one element per thread, grid-stride loop (the launcher caps the grid).
#include "common.cuh"

namespace copy_cu {

template <typename S, typename D>
__device__ __forceinline__ void copy_impl(const S* __restrict__ src, D* __restrict__ dst, const StridedMeta& meta) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < meta.numel; i += gridDim.x * blockDim.x) {
        uint32_t off[2];
        strided_offsets<2>(meta, i, off);
        store_f32(dst + off[0], load_f32(src + off[1]));
    }
}

template <typename T>
__device__ __forceinline__ void copy_bits(const T* __restrict__ src, T* __restrict__ dst, const StridedMeta& meta) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < meta.numel; i += gridDim.x * blockDim.x) {
        uint32_t off[2];
        strided_offsets<2>(meta, i, off);
        dst[off[0]] = src[off[1]];
    }
}

}  // namespace copy_cu

#define COPY(NAME, S, D)                                                                                      \
    extern "C" __global__ void NAME(const S* __restrict__ src, D* __restrict__ dst, const StridedMeta meta) { ENCORE_PDL_ENTRY(); \
        copy_cu::copy_impl<S, D>(src, dst, meta);                                                             \
    }

COPY(copy_f32_f32, float, float)
COPY(copy_f32_bf16, float, __nv_bfloat16)
COPY(copy_f32_f16, float, __half)
COPY(copy_bf16_f32, __nv_bfloat16, float)
COPY(copy_bf16_bf16, __nv_bfloat16, __nv_bfloat16)
COPY(copy_bf16_f16, __nv_bfloat16, __half)
COPY(copy_f16_f32, __half, float)
COPY(copy_f16_bf16, __half, __nv_bfloat16)
COPY(copy_f16_f16, __half, __half)
extern "C" __global__ void copy_u32_u32(const uint32_t* __restrict__ src, uint32_t* __restrict__ dst,
                                        const StridedMeta meta) {
    ENCORE_PDL_ENTRY();
    copy_cu::copy_bits(src, dst, meta);
}
extern "C" __global__ void copy_i32_i32(const int32_t* __restrict__ src, int32_t* __restrict__ dst,
                                        const StridedMeta meta) {
    ENCORE_PDL_ENTRY();
    copy_cu::copy_bits(src, dst, meta);
}

#undef COPY
