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
//
// rope_kv_write_<dtype>: a layer's attention prologue in one launch (Backend::rope_kv_write):
// q_dst = rope(q); for rows with 0 <= slot < S, k_cache[slot] = rope(k), v_cache[slot] = v
// (kv_write.cu's rule: other slots write nothing). q, k, v are [T, H|Hkv, D] views with any
// strides (3 per operand, passed as 12 u32 arguments: no launch metadata; e.g. narrowed out
// of a fused qkv; the launcher checks every view fits 32-bit offsets), q_dst
// likewise; caches contiguous [S, Hkv, D]. The rotation is common.cuh's rope_pair, shared
// with rope_impl and attention_decode.cu's fused prologue, so the cache holds exactly the
// bits of rope + kv_write. One thread per (t, head of H + 2 Hkv, i < D/2): a pair of q, a
// pair of k, or two elements of v.
//
// norm_rope_kv_write_<dtype>: the same with the per-head RMSNorm of q and k before the
// rotation (Qwen3, Gemma 3: Backend::norm_rope_kv_write), one warp a head.
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
        float o0, o1;
        rope_pair(load_f32(x + xo), load_f32(x + xo2), positions[t], i, half, max_pos, cos_table, sin_table, o0, o1);
        store_f32(dst + o, o0);
        store_f32(dst + o2, o1);
    }
}

// Strides (elements) of a [T, heads, D] view.
struct View3 {
    uint32_t s0, s1, s2;
};

template <typename T>
__device__ __forceinline__ void rope_kv_write_impl(const T* __restrict__ q, const T* __restrict__ k,
                                                   const T* __restrict__ v, T* __restrict__ q_dst,
                                                   T* __restrict__ k_cache, T* __restrict__ v_cache,
                                                   const float* __restrict__ cos_table,
                                                   const float* __restrict__ sin_table,
                                                   const int32_t* __restrict__ positions,
                                                   const int32_t* __restrict__ slots, uint32_t tokens, uint32_t heads,
                                                   uint32_t heads_kv, uint32_t half, uint32_t max_pos,
                                                   uint32_t num_slots, View3 sq, View3 sk, View3 sv, View3 sd) {
    const uint32_t all_heads = heads + 2 * heads_kv;
    const uint32_t work = tokens * all_heads * half;
    for (uint32_t g = blockIdx.x * blockDim.x + threadIdx.x; g < work; g += gridDim.x * blockDim.x) {
        const uint32_t i = g % half;
        const uint32_t th = g / half;
        const uint32_t j = th % all_heads;
        const uint32_t t = th / all_heads;
        if (j < heads) {
            const T* x = q + static_cast<size_t>(t) * sq.s0 + static_cast<size_t>(j) * sq.s1;
            float o0, o1;
            rope_pair(load_f32(x + static_cast<size_t>(i) * sq.s2), load_f32(x + static_cast<size_t>(i + half) * sq.s2),
                      positions[t], i, half, max_pos, cos_table, sin_table, o0, o1);
            T* o = q_dst + static_cast<size_t>(t) * sd.s0 + static_cast<size_t>(j) * sd.s1;
            store_f32(o + static_cast<size_t>(i) * sd.s2, o0);
            store_f32(o + static_cast<size_t>(i + half) * sd.s2, o1);
            continue;
        }
        const int32_t slot = slots[t];
        if (slot < 0 || static_cast<uint32_t>(slot) >= num_slots) continue;
        const uint32_t hk = j < heads + heads_kv ? j - heads : j - heads - heads_kv;
        const size_t c = (static_cast<size_t>(slot) * heads_kv + hk) * (2 * half);
        if (j < heads + heads_kv) {
            const T* x = k + static_cast<size_t>(t) * sk.s0 + static_cast<size_t>(hk) * sk.s1;
            float o0, o1;
            rope_pair(load_f32(x + static_cast<size_t>(i) * sk.s2), load_f32(x + static_cast<size_t>(i + half) * sk.s2),
                      positions[t], i, half, max_pos, cos_table, sin_table, o0, o1);
            store_f32(k_cache + c + i, o0);
            store_f32(k_cache + c + i + half, o1);
        } else {
            const T* x = v + static_cast<size_t>(t) * sv.s0 + static_cast<size_t>(hk) * sv.s1;
            v_cache[c + i] = x[static_cast<size_t>(i) * sv.s2];
            v_cache[c + i + half] = x[static_cast<size_t>(i + half) * sv.s2];
        }
    }
}

// One warp per (t, head of H + 2 Hkv): q and k heads are RMS-normed over their D values,
// rounded to T, then rotated pair by pair (through the warp's shared row, so any even
// D <= 256); v heads are copied. The sum of squares mirrors rms_norm.cu launched on the
// [T * heads, D] rows with `vthreads * 32` threads (backend.rs row_block): lane l plays
// its threads l + 32 v (v < vthreads), each summing x[c]^2 over its columns in order, warp
// sums per v, then their sum; the rotation is rope_pair's (its table lookup hoisted); so
// q_dst and the caches hold the bits of copy, rms_norm and rope_kv_write.
constexpr int NORM_WARPS = 4;
constexpr int NORM_MAX_D = 256;

template <typename T>
__device__ __forceinline__ void norm_rope_kv_write_impl(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ q_dst,
    T* __restrict__ k_cache, T* __restrict__ v_cache, const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, const int32_t* __restrict__ positions, const int32_t* __restrict__ slots,
    const T* __restrict__ q_norm, const T* __restrict__ k_norm, float eps, uint32_t tokens, uint32_t heads,
    uint32_t heads_kv, uint32_t half, uint32_t max_pos, uint32_t num_slots, uint32_t vthreads, View3 sq, View3 sk,
    View3 sv, View3 sd) {
    constexpr int E = NORM_MAX_D / 32;  // elements a lane holds
    __shared__ float rows[NORM_WARPS][NORM_MAX_D];
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t all_heads = heads + 2 * heads_kv, d = 2 * half;
    const uint32_t g = blockIdx.x * NORM_WARPS + warp;
    if (d > NORM_MAX_D || vthreads == 0 || vthreads > 2) __trap();
    if (g >= tokens * all_heads) return;  // the whole warp
    const uint32_t j = g % all_heads, t = g / all_heads;
    const int32_t slot = slots[t];
    const bool stored = slot >= 0 && static_cast<uint32_t>(slot) < num_slots;
    const bool is_q = j < heads;
    if (!is_q && !stored) return;
    const uint32_t hk = j < heads + heads_kv ? j - heads : j - heads - heads_kv;
    const size_t c0 = (static_cast<size_t>(slot) * heads_kv + hk) * d;  // the cache row
    if (j >= heads + heads_kv) {
        const T* x = v + static_cast<size_t>(t) * sv.s0 + static_cast<size_t>(hk) * sv.s1;
        for (uint32_t c = lane; c < d; c += 32) v_cache[c0 + c] = x[static_cast<size_t>(c) * sv.s2];
        return;
    }
    const T* x = is_q ? q + static_cast<size_t>(t) * sq.s0 + static_cast<size_t>(j) * sq.s1
                      : k + static_cast<size_t>(t) * sk.s0 + static_cast<size_t>(hk) * sk.s1;
    const uint32_t xs = is_q ? sq.s2 : sk.s2;
    const T* w = is_q ? q_norm : k_norm;
    // Every load the head needs goes out at once: x and the norm weight by element, the
    // angles of the lane's pairs i = lane + 32 u (rope_pair's table lookup, done here so that
    // it does not wait behind the sum).
    constexpr int UP = NORM_MAX_D / 64;  // pairs a lane rotates
    const int32_t p = positions[t];
    const bool rot = p >= 0 && static_cast<uint32_t>(p) < max_pos;  // else rope_pair's copy
    float ca[UP], sa[UP];  // cos, sin of each pair's angle
#pragma unroll
    for (int u = 0; u < UP; ++u) {
        const uint32_t i = lane + 32 * u;
        const size_t ti = static_cast<size_t>(rot ? p : 0) * half + i;
        ca[u] = rot && i < half ? cos_table[ti] : 1.f;
        sa[u] = rot && i < half ? sin_table[ti] : 0.f;
    }
    float xv[E], wv[E];
    float ss0 = 0.f, ss1 = 0.f;  // threads lane and lane + 32 of rms_norm's block
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const uint32_t c = lane + 32 * e;
        xv[e] = c < d ? load_f32(x + static_cast<size_t>(c) * xs) : 0.f;
        wv[e] = c < d ? load_f32(w + c) : 0.f;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
        if (lane + 32 * e < d) {
            // fmaf as rms_norm.cu writes it: no contraction choice left to the compiler
            if (vthreads == 2 && (e & 1)) {
                ss1 = fmaf(xv[e], xv[e], ss1);
            } else {
                ss0 = fmaf(xv[e], xv[e], ss0);
            }
        }
    }
    float ss = warp_sum(ss0);
    if (vthreads == 2) ss += warp_sum(ss1);
    const float inv = rms_inv(ss, d, eps);
    float* row = rows[warp];
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const uint32_t c = lane + 32 * e;
        if (c < d) row[c] = round_to<T>(xv[e] * inv * wv[e]);
    }
    __syncwarp();
#pragma unroll
    for (int u = 0; u < UP; ++u) {
        const uint32_t i = lane + 32 * u;
        if (i >= half) break;
        float o0 = row[i], o1 = row[i + half];
        if (rot) rope_rotate(row[i], row[i + half], ca[u], sa[u], o0, o1);
        if (is_q) {
            T* o = q_dst + static_cast<size_t>(t) * sd.s0 + static_cast<size_t>(j) * sd.s1;
            store_f32(o + static_cast<size_t>(i) * sd.s2, o0);
            store_f32(o + static_cast<size_t>(i + half) * sd.s2, o1);
        } else {
            store_f32(k_cache + c0 + i, o0);
            store_f32(k_cache + c0 + i + half, o1);
        }
    }
}

}  // namespace rope_cu

#define ROPE(NAME, T)                                                                               \
    extern "C" __global__ void NAME(const T* x, T* dst, const float* __restrict__ cos_table,        \
        const float* __restrict__ sin_table, const int32_t* __restrict__ positions, uint32_t heads, \
        uint32_t half, uint32_t max_pos, const StridedMeta meta) { ENCORE_PDL_ENTRY();                                  \
        rope_cu::rope_impl<T>(x, dst, cos_table, sin_table, positions, heads, half, max_pos, meta); \
    }

ROPE(rope_f32, float)
ROPE(rope_bf16, __nv_bfloat16)
ROPE(rope_f16, __half)

#undef ROPE

#define ROPE_KV_WRITE(NAME, T)                                                                                     \
    extern "C" __global__ void NAME(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,      \
        T* __restrict__ q_dst, T* __restrict__ k_cache, T* __restrict__ v_cache, const float* __restrict__ cos_table, \
        const float* __restrict__ sin_table, const int32_t* __restrict__ positions, const int32_t* __restrict__ slots, \
        uint32_t tokens, uint32_t heads, uint32_t heads_kv, uint32_t half, uint32_t max_pos, uint32_t num_slots,     \
        uint32_t q0, uint32_t q1, uint32_t q2, uint32_t k0, uint32_t k1, uint32_t k2, uint32_t v0, uint32_t v1,    \
        uint32_t v2, uint32_t d0, uint32_t d1, uint32_t d2) { ENCORE_PDL_ENTRY();                                                      \
        rope_cu::rope_kv_write_impl<T>(q, k, v, q_dst, k_cache, v_cache, cos_table, sin_table, positions, slots,    \
            tokens, heads, heads_kv, half, max_pos, num_slots, {q0, q1, q2}, {k0, k1, k2}, {v0, v1, v2},           \
            {d0, d1, d2});                                                                                          \
    }

ROPE_KV_WRITE(rope_kv_write_f32, float)
ROPE_KV_WRITE(rope_kv_write_bf16, __nv_bfloat16)
ROPE_KV_WRITE(rope_kv_write_f16, __half)

#undef ROPE_KV_WRITE

// norm_rope_kv_write_<dtype> (Backend::norm_rope_kv_write): rope_kv_write with the per-head
// RMSNorm of q and k (weights q_norm, k_norm [D]) first; grid ceil(T (H + 2 Hkv) / 4) x 128.
#define NORM_ROPE_KV_WRITE(NAME, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(rope_cu::NORM_WARPS * 32) NAME(const T* __restrict__ q,             \
        const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ q_dst, T* __restrict__ k_cache,          \
        T* __restrict__ v_cache, const float* __restrict__ cos_table, const float* __restrict__ sin_table,         \
        const int32_t* __restrict__ positions, const int32_t* __restrict__ slots, const T* __restrict__ q_norm,    \
        const T* __restrict__ k_norm, float eps, uint32_t tokens, uint32_t heads, uint32_t heads_kv, uint32_t half, \
        uint32_t max_pos, uint32_t num_slots, uint32_t vthreads, uint32_t q0, uint32_t q1, uint32_t q2, uint32_t k0, \
        uint32_t k1, uint32_t k2, uint32_t v0, uint32_t v1, uint32_t v2, uint32_t d0, uint32_t d1, uint32_t d2) {    \
        ENCORE_PDL_ENTRY();                                                                                        \
        rope_cu::norm_rope_kv_write_impl<T>(q, k, v, q_dst, k_cache, v_cache, cos_table, sin_table, positions,      \
            slots, q_norm, k_norm, eps, tokens, heads, heads_kv, half, max_pos, num_slots, vthreads, {q0, q1, q2},   \
            {k0, k1, k2}, {v0, v1, v2}, {d0, d1, d2});                                                             \
    }

NORM_ROPE_KV_WRITE(norm_rope_kv_write_f32, float)
NORM_ROPE_KV_WRITE(norm_rope_kv_write_bf16, __nv_bfloat16)
NORM_ROPE_KV_WRITE(norm_rope_kv_write_f16, __half)

#undef NORM_ROPE_KV_WRITE
