// common.cuh: what every encore kernel shares.
//
// - StridedMeta: the exact mirror of `encore_tensor::StridedMeta` (crates/tensor/src/meta.rs),
//   passed BY VALUE to every strided kernel. Both sides assert its size (168 bytes).
// - Index helpers: the element offset of each operand for a linear index in row-major order
//   of the common dims, read from `meta.info` (cached/upload modes) when non-zero, else from
//   the inline arrays; the ALL_CONTIGUOUS fast path is `offset + i`. All indexing is 32-bit:
//   the launcher (StridedMeta::new/exact) refuses views that need 2^31 elements or more.
// - Conversions: every kernel computes in f32; load_f32/store_f32 convert from/to
//   float, __nv_bfloat16 and __half (round to nearest even).
// - Block and warp reductions used by the row kernels.
// - Shared formulas: rms_inv (RMSNorm's scale), rope_pair (one rotated RoPE pair).
// - ENCORE_PDL_ENTRY, the first statement of every entry point.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stddef.h>
#include <stdint.h>

#define ENCORE_MAX_RANK 8
#define ENCORE_MAX_OPERANDS 3
#define ENCORE_META_ALL_CONTIGUOUS 1u
#define ENCORE_FULL_MASK 0xffffffffu

// Programmatic dependent launch (PDL, Hopper and newer): every entry point starts with
// ENCORE_PDL_ENTRY(). Launched with programmatic stream serialization (device.rs `set_pdl`),
// a kernel may be scheduled while its predecessor in the stream drains: it first waits for
// that grid's completion and memory (griddepcontrol.wait), so nothing is read or written
// early, then lets its own successor be scheduled (launch_dependents). Launched without the
// attribute, both are no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define ENCORE_PDL_ENTRY() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n" ::: "memory")
#else
#define ENCORE_PDL_ENTRY() \
    do {                   \
    } while (0)
#endif

// Field for field the Rust struct (#[repr(C)]): keep the two in sync.
struct StridedMeta {
    uint32_t rank;
    uint32_t numel;
    uint32_t flags;
    uint32_t num_operands;
    uint32_t offsets[ENCORE_MAX_OPERANDS];
    uint32_t _pad;
    uint32_t dims[ENCORE_MAX_RANK];
    uint32_t strides[ENCORE_MAX_OPERANDS][ENCORE_MAX_RANK];
    // Device pointer to [dims[rank], strides[op0][rank], strides[op1][rank], ...] (u32 words),
    // or 0 when the arrays above are filled (inline mode).
    uint64_t info;
};
static_assert(sizeof(StridedMeta) == 168, "StridedMeta must match encore_tensor::StridedMeta (168 bytes)");
static_assert(offsetof(StridedMeta, dims) == 32, "StridedMeta.dims offset");
static_assert(offsetof(StridedMeta, strides) == 64, "StridedMeta.strides offset");
static_assert(offsetof(StridedMeta, info) == 160, "StridedMeta.info offset");

__device__ __forceinline__ bool meta_all_contiguous(const StridedMeta& m) {
    return (m.flags & ENCORE_META_ALL_CONTIGUOUS) != 0;
}

// Size of dim `d` (d < rank). `d` must be a compile-time constant after unrolling, so the
// by-value struct is read from the parameter bank and never copied to local memory.
__device__ __forceinline__ uint32_t meta_dim(const StridedMeta& m, const uint32_t* __restrict__ info, int d) {
    return info != nullptr ? info[d] : m.dims[d];
}

// Stride of operand `k` along dim `d` (both compile-time constants after unrolling).
__device__ __forceinline__ uint32_t meta_stride(const StridedMeta& m, const uint32_t* __restrict__ info, int k,
                                                int d) {
    return info != nullptr ? info[m.rank * (1 + k) + d] : m.strides[k][d];
}

__device__ __forceinline__ const uint32_t* meta_info(const StridedMeta& m) {
    return reinterpret_cast<const uint32_t*>(m.info);
}

// Element offsets of the first N operands for linear index `i` (row-major over the dims).
// One div/mod per dim is shared by all operands.
template <int N>
__device__ __forceinline__ void strided_offsets(const StridedMeta& m, uint32_t i, uint32_t (&off)[N]) {
    if (meta_all_contiguous(m)) {
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] = m.offsets[k] + i;
        return;
    }
    const uint32_t* info = meta_info(m);
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = m.offsets[k];
    const int rank = static_cast<int>(m.rank);
#pragma unroll
    for (int d = ENCORE_MAX_RANK - 1; d >= 0; --d) {
        if (d < rank) {
            const uint32_t size = meta_dim(m, info, d);
            const uint32_t q = i / size;
            const uint32_t r = i - q * size;
#pragma unroll
            for (int k = 0; k < N; ++k) off[k] += r * meta_stride(m, info, k, d);
            i = q;
        }
    }
}

// The strides of operand `k` over an exact rank-3 meta ([T, H, D] for rope and kv_write).
struct Strides3 {
    uint32_t s0, s1, s2;
};

__device__ __forceinline__ Strides3 meta_strides3(const StridedMeta& m, int k) {
    const uint32_t* info = meta_info(m);
    return Strides3{meta_stride(m, info, k, 0), meta_stride(m, info, k, 1), meta_stride(m, info, k, 2)};
}

// ---- conversions -------------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

template <typename T>
__device__ __forceinline__ float load_f32(const T* p) { return to_f32(*p); }

template <typename T>
__device__ __forceinline__ void store_f32(T* p, float x) { *p = from_f32<T>(x); }

// x rounded to T and back: the value a T buffer would hold (what a fused kernel feeds on
// where the unfused pair of kernels stored T in between).
template <typename T>
__device__ __forceinline__ float round_to(float x) {
    return to_f32(from_f32<T>(x));
}

// ---- shared formulas ---------------------------------------------------------------------

// 1 / rms of a row of n elements whose squares sum to ss (rms_norm.cu, gemv.cu's fused
// norm and qmatmul.cu's norm quantizer: one formula, so the fused kernels give the bits of
// the unfused rms_norm).
__device__ __forceinline__ float rms_inv(float ss, uint32_t n, float eps) {
    return 1.f / sqrtf(ss / static_cast<float>(n) + eps);
}

// The RoPE rotation of the pair (a, b) by the angle whose cosine and sine are c and s.
__device__ __forceinline__ void rope_rotate(float a, float b, float c, float s, float& o0, float& o1) {
    o0 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    o1 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// RoPE, rotate-half: the pair (x[i], x[i + D/2]) of a head at position p rotated by the f32
// tables cos / sin [max_pos, half]; a padded row (p < 0) or a position off the table (a
// caller bug) leaves the pair unchanged. Explicit roundings (no contraction choice left to
// the compiler), so rope.cu and attention_decode.cu's fused prologue give the same bits.
__device__ __forceinline__ void rope_pair(float a, float b, int32_t p, uint32_t i, uint32_t half, uint32_t max_pos,
                                          const float* __restrict__ cos_table, const float* __restrict__ sin_table,
                                          float& o0, float& o1) {
    if (p < 0 || static_cast<uint32_t>(p) >= max_pos) {
        o0 = a;
        o1 = b;
        return;
    }
    const size_t ti = static_cast<size_t>(p) * half + i;
    rope_rotate(a, b, cos_table[ti], sin_table[ti], o0, o1);
}

// The gated-MLP activations, one definition for silu_mul.cu, gelu_mul.cu and the kernels
// that fuse them: silu(g) = g / (1 + exp(-g)); the tanh approximation of gelu (precise
// tanhf, as unary.cu's Gelu).
__device__ __forceinline__ float silu_f32(float g) { return g / (1.f + expf(-g)); }
__device__ __forceinline__ float gelu_tanh_f32(float g) {
    const float k = 0.7978845608028654f;  // sqrt(2 / pi)
    return 0.5f * g * (1.f + tanhf(k * (g + 0.044715f * g * g * g)));
}

// 16-byte vectors: VecOf<T>::N elements of T in one uint4 / float4 load.
template <typename T>
struct Vec16 {
    static constexpr int N = 16 / sizeof(T);
};

// Load N = 16 / sizeof(T) consecutive elements (16-byte aligned) as floats.
__device__ __forceinline__ void load16_f32(const float* __restrict__ p, float (&out)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
}
__device__ __forceinline__ void load16_f32(const __nv_bfloat16* __restrict__ p, float (&out)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        __nv_bfloat162 h;
        memcpy(&h, &w[i], sizeof(h));
        const float2 f = __bfloat1622float2(h);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void load16_f32(const __half* __restrict__ p, float (&out)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        __half2 h;
        memcpy(&h, &w[i], sizeof(h));
        const float2 f = __half22float2(h);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

// Load VEC consecutive elements as floats: VEC == 1 is a plain load, VEC == Vec16<T>::N a
// 16-byte vector load (the pointer must then be 16-byte aligned; the launcher checks).
template <typename T, int VEC>
__device__ __forceinline__ void load_vec_f32(const T* __restrict__ p, float (&out)[VEC]) {
    if constexpr (VEC == 1) {
        out[0] = load_f32(p);
    } else {
        static_assert(VEC == Vec16<T>::N, "vector loads are 16 bytes");
        load16_f32(p, out);
    }
}

// ---- reductions ----------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(ENCORE_FULL_MASK, x, o);
    return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(ENCORE_FULL_MASK, x, o));
    return x;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. `scratch` holds 32 floats of shared memory; the function syncs before reuse.
__device__ __forceinline__ float block_sum(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < nwarps ? scratch[lane] : 0.f;
    return warp_sum(x);
}

// Exponent base change: exp(x) = exp2(x * LOG2E); kernels that accumulate many exps work
// in base 2.
#define ENCORE_LOG2E 1.4426950408889634f

// Max over the whole block; same contract as block_sum.
__device__ __forceinline__ float block_max(float x, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < nwarps ? scratch[lane] : -INFINITY;
    return warp_max(x);
}

// ---- sm_80+ building blocks: cp.async, ldmatrix, mma.sync (bf16 / f16, f32 accumulate) ---

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1. `valid` false reads nothing and zero-fills the
// destination (src must still be a global address; pass any in-bounds one).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i gets
// matrix i in the mma fragment layout (lane l: row l / 4, columns 2 (l % 4), +1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
// The same, each matrix transposed (lane l: rows 2 (l % 4), +1 of column l / 4).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c += a (16x16, row-major fragment) * b (16x8, column-major fragment), f32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to a packed pair (lo in the low half: the lower column of a fragment).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    uint32_t u;
    memcpy(&u, &v, sizeof(u));
    return u;
}

// Bytes of dynamic shared memory this launch was given (kernels that size their tiles from
// run-time arguments trap rather than overrun when a launcher passes too little).
__device__ __forceinline__ uint32_t dynamic_smem_bytes() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(r));
    return r;
}
