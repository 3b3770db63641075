// rope.cu: rotary position embedding, rotate-half (Hugging Face) convention.
//
// For token t at position p = positions[t], head h and i < D/2:
//   dst[t,h,i]       = x[t,h,i] * cos[p,i] - x[t,h,i+D/2] * sin[p,i]
//   dst[t,h,i+D/2]   = x[t,h,i+D/2] * cos[p,i] + x[t,h,i] * sin[p,i]
// computed in f32. cos/sin are f32 tables [P, D/2] (contiguous), positions i32 [T].
// A padded row (p < 0), or a position outside the table (p >= P, which only a caller bug
// produces), copies x to dst unchanged, so dst is always fully defined and no table read
// goes out of bounds.
// Layout: StridedMeta::exact over [T, H, D] with 2 operands, [0] = dst, [1] = x (x may be a
// strided view, e.g. q narrowed out of a fused qkv); check::rope makes D even.
// dst may alias x exactly: one thread reads both elements of a pair before writing them.
// Thread mapping: one thread per (t, h, i < D/2), grid-stride loop over T*H*D/2.
#include "common.cuh"

namespace rope_cu {

template <typename T>
__device__ __forceinline__ void rope_impl(const T* x, T* dst, const float* __restrict__ cos_table,
                                          const float* __restrict__ sin_table, const int32_t* __restrict__ positions,
                                          uint32_t heads, uint32_t half, uint32_t max_pos, const StridedMeta& meta) {
    const Strides3 sd = meta_strides3(meta, 0);
    const Strides3 sx = meta_strides3(meta, 1);
    const uint32_t pairs = meta.numel / 2;
    for (uint32_t g = blockIdx.x * blockDim.x + threadIdx.x; g < pairs; g += gridDim.x * blockDim.x) {
        const uint32_t i = g % half;
        const uint32_t th = g / half;
        const uint32_t h = th % heads;
        const uint32_t t = th / heads;
        const uint32_t xo = meta.offsets[1] + t * sx.s0 + h * sx.s1 + i * sx.s2;
        const uint32_t xo2 = xo + half * sx.s2;
        const uint32_t o = meta.offsets[0] + t * sd.s0 + h * sd.s1 + i * sd.s2;
        const uint32_t o2 = o + half * sd.s2;
        const float a = load_f32(x + xo);
        const float b = load_f32(x + xo2);
        const int32_t p = positions[t];
        if (p < 0 || static_cast<uint32_t>(p) >= max_pos) {
            store_f32(dst + o, a);
            store_f32(dst + o2, b);
        } else {
            const size_t ti = static_cast<size_t>(p) * half + i;
            const float c = cos_table[ti];
            const float s = sin_table[ti];
            store_f32(dst + o, a * c - b * s);
            store_f32(dst + o2, b * c + a * s);
        }
    }
}

}  // namespace rope_cu

#define ROPE(NAME, T)                                                                               \
    extern "C" __global__ void NAME(const T* x, T* dst, const float* __restrict__ cos_table,        \
        const float* __restrict__ sin_table, const int32_t* __restrict__ positions, uint32_t heads, \
        uint32_t half, uint32_t max_pos, const StridedMeta meta) {                                  \
        rope_cu::rope_impl<T>(x, dst, cos_table, sin_table, positions, heads, half, max_pos, meta); \
    }

ROPE(rope_f32, float)
ROPE(rope_bf16, __nv_bfloat16)
ROPE(rope_f16, __half)

#undef ROPE
