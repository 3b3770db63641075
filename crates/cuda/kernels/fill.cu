// fill.cu: dst[i] = uniform in [-scale, scale) from a counter-based hash of (seed, i), for
// random benchmark weights created on the device (no host copy of 16 GB of weights).
//
// dst contiguous (check::contiguous in the launcher), n elements; grid-stride loop, one
// element per thread per iteration. The values depend only on (seed, i), not on the grid.
#include "common.cuh"

namespace fill_cu {

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

template <typename T>
__device__ __forceinline__ void fill_uniform_impl(T* __restrict__ dst, uint64_t n, uint64_t seed, float scale) {
    const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
    for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const uint64_t h = splitmix64(seed ^ (i * 0xD1B54A32D192ED03ull));
        const float u = static_cast<float>(h >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
        store_f32(dst + i, (2.0f * u - 1.0f) * scale);
    }
}

}  // namespace fill_cu

#define FILL_UNIFORM(NAME, T)                                                                             \
    extern "C" __global__ void NAME(T* __restrict__ dst, uint64_t n, uint64_t seed, float scale) { ENCORE_PDL_ENTRY();        \
        fill_cu::fill_uniform_impl<T>(dst, n, seed, scale);                                               \
    }
FILL_UNIFORM(fill_uniform_f32, float)
FILL_UNIFORM(fill_uniform_bf16, __nv_bfloat16)
FILL_UNIFORM(fill_uniform_f16, __half)
#undef FILL_UNIFORM
