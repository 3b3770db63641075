// kv_write.cu: write the step's keys and values into the slot-addressed KV cache.
//
// k_cache[slot_mapping[t], h, d] = k[t, h, d] and the same for v, for every token t with
// 0 <= slot_mapping[t] < S; a negative slot (padded row) is skipped, and so is a slot >= S
// (only a caller bug produces one; skipping keeps the write in bounds).
// Layout: k and v through ONE StridedMeta::exact over [T, Hkv, D] with 2 operands,
// [0] = k, [1] = v (each may be a strided view, e.g. narrowed out of a fused qkv);
// caches contiguous [S, Hkv, D] (check::kv_write), passed already advanced to their view
// offsets; slot_mapping i32 [T]. Cache indices are 64-bit (S * Hkv * D may pass 2^31).
// Thread mapping: one thread per element of [T, Hkv, D] (consecutive threads walk d, so the
// cache writes are coalesced), grid-stride loop.
#include "common.cuh"

namespace kv_write_cu {

template <typename T>
__device__ __forceinline__ void kv_write_impl(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,
                                              T* __restrict__ v_cache, const int32_t* __restrict__ slot_mapping,
                                              uint32_t heads_kv, uint32_t head_dim, uint32_t num_slots,
                                              const StridedMeta& meta) {
    const Strides3 sk = meta_strides3(meta, 0);
    const Strides3 sv = meta_strides3(meta, 1);
    for (uint32_t g = blockIdx.x * blockDim.x + threadIdx.x; g < meta.numel; g += gridDim.x * blockDim.x) {
        const uint32_t d = g % head_dim;
        const uint32_t th = g / head_dim;
        const uint32_t h = th % heads_kv;
        const uint32_t t = th / heads_kv;
        const int32_t slot = slot_mapping[t];
        if (slot < 0 || static_cast<uint32_t>(slot) >= num_slots) continue;
        const size_t c = (static_cast<size_t>(slot) * heads_kv + h) * head_dim + d;
        k_cache[c] = k[meta.offsets[0] + t * sk.s0 + h * sk.s1 + d * sk.s2];
        v_cache[c] = v[meta.offsets[1] + t * sv.s0 + h * sv.s1 + d * sv.s2];
    }
}

}  // namespace kv_write_cu

#define KV_WRITE(NAME, T)                                                                                         \
    extern "C" __global__ void NAME(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ k_cache,    \
        T* __restrict__ v_cache, const int32_t* __restrict__ slot_mapping, uint32_t heads_kv,                     \
        uint32_t head_dim, uint32_t num_slots, const StridedMeta meta) { ENCORE_PDL_ENTRY();                                          \
        kv_write_cu::kv_write_impl<T>(k, v, k_cache, v_cache, slot_mapping, heads_kv, head_dim, num_slots, meta); \
    }

KV_WRITE(kv_write_f32, float)
KV_WRITE(kv_write_bf16, __nv_bfloat16)
KV_WRITE(kv_write_f16, __half)

#undef KV_WRITE
