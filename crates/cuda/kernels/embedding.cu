// embedding.cu: token embedding lookup, dst[t, :] = table[ids[t], :].
//
// ids u32 [T]; table [V, C] and dst [T, C] contiguous (check::embedding), passed already
// advanced to their view offsets. An id >= V (only a caller bug produces one) writes a zero
// row instead of reading out of bounds.
// Thread mapping: one block per token (grid = T), threads stride over the row; 16-byte
// vector copies when C * sizeof(T) is a multiple of 16 and both bases are 16-byte aligned
// (checked once per block, uniform), element copies otherwise.
#include "common.cuh"

namespace embedding_cu {

template <typename T>
__device__ __forceinline__ void embedding_impl(const uint32_t* __restrict__ ids, const T* __restrict__ table,
                                               T* __restrict__ dst, uint32_t cols, uint32_t vocab) {
    const uint32_t id = ids[blockIdx.x];
    T* out = dst + static_cast<size_t>(blockIdx.x) * cols;
    const bool vec = (cols % Vec16<T>::N) == 0 &&
                     ((reinterpret_cast<uintptr_t>(table) | reinterpret_cast<uintptr_t>(dst)) & 15) == 0;
    if (id >= vocab) {
        for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) store_f32(out + c, 0.f);
        return;
    }
    const T* row = table + static_cast<size_t>(id) * cols;
    if (vec) {
        const uint4* src4 = reinterpret_cast<const uint4*>(row);
        uint4* dst4 = reinterpret_cast<uint4*>(out);
        const uint32_t n4 = cols / Vec16<T>::N;
        for (uint32_t c = threadIdx.x; c < n4; c += blockDim.x) dst4[c] = src4[c];
    } else {
        for (uint32_t c = threadIdx.x; c < cols; c += blockDim.x) out[c] = row[c];
    }
}

}  // namespace embedding_cu

#define EMBEDDING(NAME, T)                                                                         \
    extern "C" __global__ void NAME(const uint32_t* __restrict__ ids, const T* __restrict__ table, \
        T* __restrict__ dst, uint32_t cols, uint32_t vocab) { ENCORE_PDL_ENTRY();                                      \
        embedding_cu::embedding_impl<T>(ids, table, dst, cols, vocab);                             \
    }

EMBEDDING(embedding_f32, float)
EMBEDDING(embedding_bf16, __nv_bfloat16)
EMBEDDING(embedding_f16, __half)

#undef EMBEDDING
