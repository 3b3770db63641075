// attention_decode.cu: paged attention for decode-shaped steps (few query rows, long
// contexts) on tensor cores, bf16 / f16. The same function as attention.cu (see there and
// Backend::attention): query t at position pos attends keys max(0, pos - window + 1)..=pos
// of sequence row_seq[t] through its block table; padded rows (pos < 0) give zeros.
//
// Fused decode prologue (Backend::decode_attention; the `rope` entries): q is the unrotated
// q of a fused qkv, and the launch also does rope_kv_write's work, so a decode layer's
// attention is one launch. Each CTA rotates its q rows in shared memory once they land; the
// row's new key (position pos) is rotated once per CTA that needs it: the first head chunk
// of the split that attends it stores it (and v) at slots[t] of the caches (rope_kv_write's
// rule: a slot outside [0, num_slots) stores nothing), and every CTA of that split puts it
// into its last tile's shared rows instead of loading it. That is exact only when no row
// attends another row's new key, i.e. every row is its own sequence (a pure decode step);
// the launcher's caller guarantees it. The rotation is common.cuh's rope_pair and the
// values are rounded to T before use, so the result has the bits of rope_kv_write followed
// by the unfused launch.
//
// Layout: q rows `q_row` elements apart, heads D apart (a fused qkv's q, or a contiguous
// [T, H, D]); dst [T, H, D]; k_cache, v_cache [N * bs, Hkv, D]; 16-byte aligned, D % 16 == 0,
// D <= DMAX (the launcher checks: tensor_core_class in backend.rs).
//
// Thread mapping: grid (nsplit, Hkv * ceil(G / 16), T), 4 warps. One CTA takes one query
// row t, one KV head and up to 16 of its G = H / Hkv query heads, which are the 16 rows of
// the mma tiles (G < 16 leaves rows idle: the tensor cores have the rate to spare), so every
// K/V byte is read once per row instead of once per query head. The row's key range is cut
// into chunks of whole 64-key tiles, at least `min_chunk` keys each, so a short context
// takes fewer than nsplit splits (nact, the same in every CTA of the row); splits past the
// last active one exit at once. Tiles stream through a STAGES-deep cp.async pipeline; warp
// w folds keys 16w..16w+15 of each tile into its own (m, l, O); the 4 warp states are merged
// through shared memory at the end. One active split writes dst; otherwise the unnormalised
// partial (O, max, sum) goes to the workspace in attention_merge's layout ([T*H, nsplit, 2]
// and [T*H, nsplit, D]) and the last of the nact split CTAs of each (row, KV head, head
// chunk) to finish merges them (splits in index order, so the result does not depend on
// which CTA is last) and writes dst. "Last" is counted in `counters` (one i32 per (t,
// blockIdx.y), zero between launches: the merging CTA resets its counter). The atomic only
// elects the merger; no result depends on the order of the atomics. With counters ==
// nullptr every split writes its partial (an empty one LSE = -inf) for attention_merge_<dtype>
// instead, which is what the launcher does: the separate merge measured faster in the decode
// step (BENCHMARKS.md, session 6); crates/cuda/dev/attn_sweep.cu compares the two.
//
// CUDA graphs: the grid depends on T, Hkv, G and nsplit (from the SM count and T) only; the
// context length is read from `positions` on the device.
//
// Shared memory (dynamic): Q [16][D + 8], then STAGES x {K, V} [64][D + 8] elements; a
// launch with less traps (the launcher's tc_decode_smem must match decode_stages).
//
// Entry points: attention_decode_d<DMAX>_<dtype>, DMAX in {64, 128, 256}, and the fused
// prologue's attention_decode_rope_d<DMAX>_<dtype>, DMAX in {64, 128}.
#include "attention_tc.cuh"

namespace attention_tc {

constexpr int DEC_TK = 64;  // keys a tile: 4 warps x 16

__host__ __device__ constexpr int decode_stages(int) { return 2; }

// Split-K epilogue: count this CTA's partial in; the last of the nact active split CTAs
// (<= nsplit <= 32) of the column (blockIdx.z, blockIdx.y) combines the gc rows' partials as
// attention_merge does (one weight a split per row first, then independent loads) and resets
// the counter. Partials are nsplit apart in the workspace.
template <typename T>
__device__ __forceinline__ void merge_if_last(const float* __restrict__ ws_ml, const float* __restrict__ ws_acc,
                                              int32_t* __restrict__ counters, T* __restrict__ dst, size_t head0,
                                              int gc, int D, uint32_t nsplit, int nact) {
    __shared__ int s_last;
    __shared__ float s_w[16][32];
    __shared__ float s_inv[16];
    if (nsplit > 32) __trap();
    __threadfence();  // this CTA's partials, visible device-wide before it is counted
    __syncthreads();
    int32_t* counter = counters + static_cast<size_t>(blockIdx.z) * gridDim.y + blockIdx.y;
    if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == nact - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = warp; r < gc; r += THREADS / 32) {
        const size_t row0 = (head0 + r) * nsplit;
        const float ms = static_cast<int>(lane) < nact ? __ldcg(ws_ml + (row0 + lane) * 2) : -INFINITY;
        const float mb = warp_max(ms);
        const float w = ms == -INFINITY ? 0.f : exp2f(ms - mb);
        const float l = warp_sum(static_cast<int>(lane) < nact ? __ldcg(ws_ml + (row0 + lane) * 2 + 1) * w : 0.f);
        s_w[r][lane] = w;
        if (lane == 0) s_inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < gc * D; i += THREADS) {
        const int r = i / D, d = i - r * D;
        const size_t row0 = (head0 + r) * nsplit;
        float o = 0.f;
#pragma unroll 8
        for (int s = 0; s < nact; ++s) {
            const float a = __ldcg(ws_acc + (row0 + s) * D + d);
            o = s_w[r][s] != 0.f ? fmaf(a, s_w[r][s], o) : o;
        }
        store_f32(dst + (head0 + r) * D + d, o * s_inv[r]);
    }
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch (stream-ordered)
}

// The fused prologue's operands (k == nullptr: q is rotated and the caches hold every key).
template <typename T>
struct NewKv {
    const T* k;             // [T, Hkv, D] unrotated keys, rows k_row elements apart, heads D apart
    const T* v;             // likewise, rows v_row apart
    T* k_cache;             // the caches the launch reads, written at slots[t]
    T* v_cache;
    const float* cos;       // [max_pos, D / 2]
    const float* sin;
    const int32_t* slots;   // [T]
    uint32_t k_row, v_row, max_pos, num_slots;
};

template <typename T, int DMAX, int STAGES, bool FUSED>
__device__ __forceinline__ void decode_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                            const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                            const int32_t* __restrict__ row_seq,
                                            const int32_t* __restrict__ positions, T* __restrict__ dst,
                                            float* __restrict__ ws_ml, float* __restrict__ ws_acc,
                                            int32_t* __restrict__ counters, uint32_t heads,
                                            uint32_t heads_kv, uint32_t head_dim, uint32_t max_blocks,
                                            uint32_t block_size, float scale, uint32_t window, uint32_t q_row,
                                            uint32_t min_chunk, const NewKv<T>& nk) {
    constexpr bool QREGS = DMAX <= 128;
    extern __shared__ __align__(16) unsigned char smem[];
    const int D = static_cast<int>(head_dim), nch = D / 8, kt = D / 16, nt = D / 8, half = D / 2;
    const uint32_t rb = (D + 8) * 2;  // bytes a shared row
    const uint32_t G = heads / heads_kv, nhc = (G + 15) / 16;
    const uint32_t kvh = blockIdx.y / nhc, g0 = (blockIdx.y - kvh * nhc) * 16;
    const int gc = static_cast<int>(min(16u, G - g0));
    const uint32_t t = blockIdx.z, nsplit = gridDim.x;
    const int split = static_cast<int>(blockIdx.x);
    const size_t head0 = static_cast<size_t>(t) * heads + kvh * G + g0;  // (t, h) row of local row 0
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, qd = lane & 3;
    if (dynamic_smem_bytes() < (16 + STAGES * 2 * DEC_TK) * rb) __trap();

    const int32_t pos = positions[t];
    int kbeg, kend;
    key_range(pos, window, max_blocks, block_size, kbeg, kend);
    const int len = max(kend - kbeg, 0);
    const int nsp = static_cast<int>(nsplit);
    const int want = max((len + nsp - 1) / nsp, max(static_cast<int>(min_chunk), 1));
    const int chunk = (want + DEC_TK - 1) / DEC_TK * DEC_TK;
    const int nact = (len + chunk - 1) / chunk;  // active splits; 0 for a padded row
    const int sbeg = kbeg + split * chunk;
    const int send = min(kend, sbeg + chunk);
    const int ntile = sbeg < send ? (send - sbeg + DEC_TK - 1) / DEC_TK : 0;

    // The fused prologue's new key: attended by the split that holds pos (then pos is its
    // last key, send - 1), stored by that split's first head chunk (split 0's when pos is
    // outside the range: a padded row, or a caller's position past the table).
    const bool fused = FUSED;  // a compile-time branch: the plain entries carry none of it
    const bool attends_new = fused && pos >= sbeg && pos < send;
    const int store_split = pos >= kbeg && pos < kend ? (pos - kbeg) / chunk : 0;
    const bool stores_new = fused && g0 == 0 && split == store_split;
    const int lend = attends_new ? pos : send;  // keys loaded from the cache: [sbeg, lend)

    const uint32_t sq = smem_addr(smem);
    const uint32_t skv = sq + 16 * rb;
    const uint32_t stage_bytes = 2 * DEC_TK * rb;
    const T* qt = q + static_cast<size_t>(t) * q_row + static_cast<size_t>(kvh * G + g0) * D;
    // Q: the CTA's 16 head rows (rows >= gc zero), unrotated when fused, in the first
    // cp.async group with the first tile
    for (int i = tid; i < 16 * nch && ntile > 0; i += THREADS) {
        const int r = i / nch, c = i - r * nch;
        const bool ok = r < gc;
        cp_async16(sq + r * rb + c * 16, qt + (ok ? r : 0) * D + c * 8, ok);
    }
    const int32_t* table = block_tables + static_cast<size_t>(pos >= 0 ? row_seq[t] : 0) * max_blocks;
    const T* kb = k_cache + static_cast<size_t>(kvh) * D;
    const T* vb = v_cache + static_cast<size_t>(kvh) * D;
    const size_t slot_stride = static_cast<size_t>(heads_kv) * D;
    auto load = [&](int tile) {
        const uint32_t sk = skv + (tile % STAGES) * stage_bytes;
        load_kv_tile<T, DEC_TK>(sk, sk + DEC_TK * rb, rb, kb, vb, table, sbeg + tile * DEC_TK, lend, block_size,
                                slot_stride, nch);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntile) load(s);
        cp_async_commit();
    }

    // While those land: this thread's RoPE angle (pair tid % half: the pair of every Q
    // element it rotates when half divides THREADS) and the new key and value, rotated and
    // stored in the cache by the CTA that stores them.
    const bool rot = fused && pos >= 0 && static_cast<uint32_t>(pos) < nk.max_pos;
    const int pc = tid % half;
    float rc = 1.f, rs = 0.f;
    if (rot) {
        rc = nk.cos[static_cast<size_t>(pos) * half + pc];
        rs = nk.sin[static_cast<size_t>(pos) * half + pc];
    }
    T nk0 = from_f32<T>(0.f), nk1 = nk0, nv0 = nk0, nv1 = nk0;  // pair tid of the new key and value
    if ((attends_new || stores_new) && tid < half) {
        const T* kr = nk.k + static_cast<size_t>(t) * nk.k_row + static_cast<size_t>(kvh) * D;
        const T* vr = nk.v + static_cast<size_t>(t) * nk.v_row + static_cast<size_t>(kvh) * D;
        float o0 = load_f32(kr + tid), o1 = load_f32(kr + tid + half);
        if (rot) rope_rotate(o0, o1, rc, rs, o0, o1);
        nk0 = from_f32<T>(o0);
        nk1 = from_f32<T>(o1);
        nv0 = vr[tid];
        nv1 = vr[tid + half];
        const int32_t slot = nk.slots[t];
        if (stores_new && slot >= 0 && static_cast<uint32_t>(slot) < nk.num_slots) {
            const size_t c = (static_cast<size_t>(slot) * heads_kv + kvh) * D;
            nk.k_cache[c + tid] = nk0;
            nk.k_cache[c + tid + half] = nk1;
            nk.v_cache[c + tid] = nv0;
            nk.v_cache[c + tid + half] = nv1;
        }
    }

    const bool direct = nsplit == 1 || (counters != nullptr && nact == 1);  // this CTA writes dst
    if (ntile == 0) {  // past the last active split, or a padded row: nothing to fold in
        for (int i = tid; i < gc * D; i += THREADS) {
            const int r = i / D, d = i - r * D;
            if (counters == nullptr && nsplit > 1) {  // attention_merge reads every split
                if (d == 0) {
                    const size_t w = (head0 + r) * nsplit + split;
                    ws_ml[w * 2] = -INFINITY;
                    ws_ml[w * 2 + 1] = 0.f;
                }
            } else if (split == 0) {  // nact == 0: the row's output is zero
                store_f32(dst + (head0 + r) * D + d, 0.f);
            }
        }
        return;
    }

    if (rot) {  // rotate the Q rows in place once they land (the loop's first wait is then free)
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        for (int i = tid; i < gc * half; i += THREADS) {
            const int r = i / half, c = i - r * half;
            T* row = reinterpret_cast<T*>(smem + r * rb);
            float c0 = rc, s0 = rs;
            if (c != pc) {  // half does not divide THREADS
                c0 = nk.cos[static_cast<size_t>(pos) * half + c];
                s0 = nk.sin[static_cast<size_t>(pos) * half + c];
            }
            float o0, o1;
            rope_rotate(to_f32(row[c]), to_f32(row[c + half]), c0, s0, o0, o1);
            row[c] = from_f32<T>(o0);
            row[c + half] = from_f32<T>(o1);
        }
    }

    WarpAttn<T, 16, DMAX, QREGS> wa;
    wa.init();
    const float sl2 = scale * ENCORE_LOG2E;
    for (int it = 0; it < ntile; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile `it` landed for everyone; the stage refilled below is free
        const uint32_t stage = skv + (it % STAGES) * stage_bytes;
        const bool patch = attends_new && it == ntile - 1;
        if (patch && tid < half) {  // the new key's row, zero-filled by the load
            const int r = pos - (sbeg + it * DEC_TK);
            T* kr = reinterpret_cast<T*>(smem + (stage - sq) + r * rb);
            T* vr = reinterpret_cast<T*>(smem + (stage - sq) + (DEC_TK + r) * rb);
            kr[tid] = nk0;
            kr[tid + half] = nk1;
            vr[tid] = nv0;
            vr[tid + half] = nv1;
        }
        if (patch) __syncthreads();
        if (it == 0) wa.load_q(sq, rb, kt);
        if (it + STAGES - 1 < ntile) load(it + STAGES - 1);
        cp_async_commit();
        const int j0 = sbeg + it * DEC_TK + warp * 16;
        if (j0 < send) {  // warp-uniform
            const uint32_t sk = stage + warp * 16 * rb;
            wa.step(sq, sk, sk + DEC_TK * rb, rb, kt, nt, sl2, j0 + 16 > send,
                    [&](int n, int e) { return j0 + n * 8 + 2 * qd + (e & 1) < send; });
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the tiles: reuse the shared memory
    wa.finish();

    merge_warps(smem, wa, gc, D, [&](int r, int d, float o, float l, float m) {
        if (direct) {
            store_f32(dst + (head0 + r) * D + d, l > 0.f ? o / l : 0.f);
        } else {
            const size_t w = (head0 + r) * nsplit + split;
            ws_acc[w * D + d] = o;
            if (d == 0) {
                ws_ml[w * 2] = m;
                ws_ml[w * 2 + 1] = l;
            }
        }
    });
    if (!direct && counters != nullptr) merge_if_last(ws_ml, ws_acc, counters, dst, head0, gc, D, nsplit, nact);
}

}  // namespace attention_tc

// NAME, T, DMAX, FUSED: the plain entries (attention_decode_d<DMAX>_<dtype>, the NewKv
// arguments unused) and the fused-prologue ones (attention_decode_rope_d<DMAX>_<dtype>),
// separate functions so that the plain kernel's registers are not the fused code's.
#define ATTENTION_DECODE(NAME, T, DMAX, FUSED)                                                                 \
    extern "C" __global__ void __launch_bounds__(attention_tc::THREADS)                                        \
        NAME(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,            \
             const int32_t* __restrict__ block_tables, const int32_t* __restrict__ row_seq,                     \
             const int32_t* __restrict__ positions, T* __restrict__ dst, float* __restrict__ ws_ml,              \
             float* __restrict__ ws_acc, int32_t* __restrict__ counters, uint32_t heads, uint32_t heads_kv,       \
             uint32_t head_dim, uint32_t max_blocks, uint32_t block_size, float scale, uint32_t window,          \
             uint32_t q_row, uint32_t min_chunk, const T* k_new, const T* v_new, T* k_store, T* v_store,          \
             const float* cos_table, const float* sin_table, const int32_t* slots, uint32_t k_row,               \
             uint32_t v_row, uint32_t max_pos, uint32_t num_slots) {                                             \
        ENCORE_PDL_ENTRY();                                                                                    \
        if (FUSED && k_new == nullptr) __trap();                                                               \
        const attention_tc::NewKv<T> nk{k_new, v_new, k_store, v_store, cos_table, sin_table,                 \
                                        slots, k_row, v_row, max_pos, num_slots};                             \
        attention_tc::decode_impl<T, DMAX, attention_tc::decode_stages(DMAX), FUSED>(                           \
            q, k_cache, v_cache, block_tables, row_seq, positions, dst, ws_ml, ws_acc, counters, heads, heads_kv, \
            head_dim, max_blocks, block_size, scale, window, q_row, min_chunk, nk);                             \
    }

ATTENTION_DECODE(attention_decode_d64_bf16, __nv_bfloat16, 64, false)
ATTENTION_DECODE(attention_decode_d64_f16, __half, 64, false)
ATTENTION_DECODE(attention_decode_d128_bf16, __nv_bfloat16, 128, false)
ATTENTION_DECODE(attention_decode_d128_f16, __half, 128, false)
ATTENTION_DECODE(attention_decode_d256_bf16, __nv_bfloat16, 256, false)
ATTENTION_DECODE(attention_decode_d256_f16, __half, 256, false)
// The fused prologue (attention.rs FUSED_DECODE_MAX_D): D classes 64 and 128.
ATTENTION_DECODE(attention_decode_rope_d64_bf16, __nv_bfloat16, 64, true)
ATTENTION_DECODE(attention_decode_rope_d64_f16, __half, 64, true)
ATTENTION_DECODE(attention_decode_rope_d128_bf16, __nv_bfloat16, 128, true)
ATTENTION_DECODE(attention_decode_rope_d128_f16, __half, 128, true)

#undef ATTENTION_DECODE
