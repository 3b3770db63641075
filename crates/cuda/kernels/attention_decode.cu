// attention_decode.cu: paged attention for decode-shaped steps (few query rows, long
// contexts) on tensor cores, bf16 / f16. The same function as attention.cu (see there and
// Backend::attention): query t at position pos attends keys max(0, pos - window + 1)..=pos
// of sequence row_seq[t] through its block table; padded rows (pos < 0) give zeros.
//
// Layout: q, dst [T, H, D]; k_cache, v_cache [N * bs, Hkv, D]; contiguous, 16-byte aligned,
// D % 16 == 0, D <= DMAX (the launcher checks: attention_tensor_core in backend.rs).
//
// Thread mapping: grid (nsplit, Hkv * ceil(G / 16), T), 4 warps. One CTA takes one query
// row t, one KV head and up to 16 of its G = H / Hkv query heads, which are the 16 rows of
// the mma tiles (G < 16 leaves rows idle: the tensor cores have the rate to spare), so every
// K/V byte is read once per row instead of once per query head. The row's key range is cut
// into nsplit chunks of whole 64-key tiles; a split past the end exits at once (writing
// LSE = -inf). Tiles stream through a STAGES-deep cp.async pipeline; warp w folds keys
// 16w..16w+15 of each tile into its own (m, l, O); the 4 warp states are merged through
// shared memory at the end. nsplit == 1 writes dst; otherwise the unnormalised partial
// (O, max, sum) goes to the workspace in attention_merge's layout ([T*H, nsplit, 2] and
// [T*H, nsplit, D]) and the last split CTA of each (row, KV head, head chunk) to finish
// merges them (splits in index order, so the result does not depend on which CTA is last)
// and writes dst. "Last" is counted in `counters` (one i32 per (t, blockIdx.y), zero
// between launches: the merging CTA resets its counter). The atomic only elects the
// merger; no result depends on the order of the atomics. With counters == nullptr the
// partials are left for attention_merge_<dtype> instead, which is what the launcher does:
// the separate merge measured faster at small batches, equal at large ones
// (crates/cuda/dev/NOTES.md); the in-kernel merge stays for the sweep to keep measuring.
//
// CUDA graphs: the grid depends on T, Hkv, G and nsplit (from the SM count and T) only; the
// context length is read from `positions` on the device.
//
// Shared memory (dynamic): Q [16][D + 8], then STAGES x {K, V} [64][D + 8] elements; a
// launch with less traps (the launcher's tc_decode_smem must match decode_stages).
//
// Entry points: attention_decode_d<DMAX>_<dtype>, DMAX in {64, 128, 256}.
#include "attention_tc.cuh"

namespace attention_tc {

constexpr int DEC_TK = 64;  // keys a tile: 4 warps x 16

__host__ __device__ constexpr int decode_stages(int) { return 2; }

// Split-K epilogue: count this CTA's partial in; the last of the nsplit (<= 32) CTAs of
// the column (blockIdx.z, blockIdx.y) combines the gc rows' partials as attention_merge
// does (one weight a split per row first, then independent loads) and resets the counter.
template <typename T>
__device__ __forceinline__ void merge_if_last(const float* __restrict__ ws_ml, const float* __restrict__ ws_acc,
                                              int32_t* __restrict__ counters, T* __restrict__ dst, size_t head0,
                                              int gc, int D, uint32_t nsplit) {
    __shared__ int s_last;
    __shared__ float s_w[16][32];
    __shared__ float s_inv[16];
    if (nsplit > 32) __trap();
    __threadfence();  // this CTA's partials, visible device-wide before it is counted
    __syncthreads();
    int32_t* counter = counters + static_cast<size_t>(blockIdx.z) * gridDim.y + blockIdx.y;
    if (threadIdx.x == 0) s_last = atomicAdd(counter, 1) == static_cast<int>(nsplit) - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int r = warp; r < gc; r += THREADS / 32) {
        const size_t row0 = (head0 + r) * nsplit;
        const float ms = lane < nsplit ? __ldcg(ws_ml + (row0 + lane) * 2) : -INFINITY;
        const float mb = warp_max(ms);
        const float w = ms == -INFINITY ? 0.f : exp2f(ms - mb);
        const float l = warp_sum(lane < nsplit ? __ldcg(ws_ml + (row0 + lane) * 2 + 1) * w : 0.f);
        s_w[r][lane] = w;
        if (lane == 0) s_inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < gc * D; i += THREADS) {
        const int r = i / D, d = i - r * D;
        const size_t row0 = (head0 + r) * nsplit;
        float o = 0.f;
#pragma unroll 8
        for (uint32_t s = 0; s < nsplit; ++s) {
            const float a = __ldcg(ws_acc + (row0 + s) * D + d);
            o = s_w[r][s] != 0.f ? fmaf(a, s_w[r][s], o) : o;
        }
        store_f32(dst + (head0 + r) * D + d, o * s_inv[r]);
    }
    if (threadIdx.x == 0) *counter = 0;  // ready for the next launch (stream-ordered)
}

template <typename T, int DMAX, int STAGES>
__device__ __forceinline__ void decode_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                            const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                            const int32_t* __restrict__ row_seq,
                                            const int32_t* __restrict__ positions, T* __restrict__ dst,
                                            float* __restrict__ ws_ml, float* __restrict__ ws_acc,
                                            int32_t* __restrict__ counters, uint32_t heads,
                                            uint32_t heads_kv, uint32_t head_dim, uint32_t max_blocks,
                                            uint32_t block_size, float scale, uint32_t window) {
    constexpr bool QREGS = DMAX <= 128;
    extern __shared__ __align__(16) unsigned char smem[];
    const int D = static_cast<int>(head_dim), nch = D / 8, kt = D / 16, nt = D / 8;
    const uint32_t rb = (D + 8) * 2;  // bytes a shared row
    const uint32_t G = heads / heads_kv, nhc = (G + 15) / 16;
    const uint32_t kvh = blockIdx.y / nhc, g0 = (blockIdx.y - kvh * nhc) * 16;
    const int gc = static_cast<int>(min(16u, G - g0));
    const uint32_t t = blockIdx.z, split = blockIdx.x, nsplit = gridDim.x;
    const size_t head0 = static_cast<size_t>(t) * heads + kvh * G + g0;  // (t, h) row of local row 0
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, qd = lane & 3;
    if (dynamic_smem_bytes() < (16 + STAGES * 2 * DEC_TK) * rb) __trap();

    int kbeg, kend;
    key_range(positions[t], window, max_blocks, block_size, kbeg, kend);
    const int len = max(kend - kbeg, 0);
    const int chunk = ((len + static_cast<int>(nsplit) - 1) / static_cast<int>(nsplit) + DEC_TK - 1) / DEC_TK * DEC_TK;
    const int sbeg = kbeg + static_cast<int>(split) * chunk;
    const int send = min(kend, sbeg + chunk);
    if (sbeg >= send) {  // past the end, or a padded row: nothing to fold in
        for (int i = tid; i < gc * D; i += THREADS) {
            const int r = i / D, d = i - r * D;
            if (nsplit == 1) {
                store_f32(dst + (head0 + r) * D + d, 0.f);
            } else if (d == 0) {
                const size_t w = (head0 + r) * nsplit + split;
                ws_ml[w * 2] = -INFINITY;
                ws_ml[w * 2 + 1] = 0.f;
            }
        }
        if (nsplit > 1 && counters != nullptr) merge_if_last(ws_ml, ws_acc, counters, dst, head0, gc, D, nsplit);
        return;
    }

    const uint32_t sq = smem_addr(smem);
    const uint32_t skv = sq + 16 * rb;
    const uint32_t stage_bytes = 2 * DEC_TK * rb;
    // Q: the CTA's 16 head rows (rows >= gc zero), in the first cp.async group.
    for (int i = tid; i < 16 * nch; i += THREADS) {
        const int r = i / nch, c = i - r * nch;
        const bool ok = r < gc;
        cp_async16(sq + r * rb + c * 16, q + (head0 + (ok ? r : 0)) * D + c * 8, ok);
    }
    const int32_t* table = block_tables + static_cast<size_t>(row_seq[t]) * max_blocks;
    const T* kb = k_cache + static_cast<size_t>(kvh) * D;
    const T* vb = v_cache + static_cast<size_t>(kvh) * D;
    const size_t slot_stride = static_cast<size_t>(heads_kv) * D;
    const int ntile = (send - sbeg + DEC_TK - 1) / DEC_TK;
    auto load = [&](int tile) {
        const uint32_t sk = skv + (tile % STAGES) * stage_bytes;
        load_kv_tile<T, DEC_TK>(sk, sk + DEC_TK * rb, rb, kb, vb, table, sbeg + tile * DEC_TK, send, block_size,
                                slot_stride, nch);
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ntile) load(s);
        cp_async_commit();
    }

    WarpAttn<T, 16, DMAX, QREGS> wa;
    wa.init();
    const float sl2 = scale * ENCORE_LOG2E;
    for (int it = 0; it < ntile; ++it) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // tile `it` landed for everyone; the stage refilled below is free
        if (it == 0) wa.load_q(sq, rb, kt);
        if (it + STAGES - 1 < ntile) load(it + STAGES - 1);
        cp_async_commit();
        const int j0 = sbeg + it * DEC_TK + warp * 16;
        if (j0 < send) {  // warp-uniform
            const uint32_t sk = skv + (it % STAGES) * stage_bytes + warp * 16 * rb;
            wa.step(sq, sk, sk + DEC_TK * rb, rb, kt, nt, sl2, j0 + 16 > send,
                    [&](int n, int e) { return j0 + n * 8 + 2 * qd + (e & 1) < send; });
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is done with the tiles: reuse the shared memory
    wa.finish();

    merge_warps(smem, wa, gc, D, [&](int r, int d, float o, float l, float m) {
        if (nsplit == 1) {
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
    if (nsplit > 1 && counters != nullptr) merge_if_last(ws_ml, ws_acc, counters, dst, head0, gc, D, nsplit);
}

}  // namespace attention_tc

#define ATTENTION_DECODE(NAME, T, DMAX)                                                                        \
    extern "C" __global__ void __launch_bounds__(attention_tc::THREADS)                                        \
        NAME(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,            \
             const int32_t* __restrict__ block_tables, const int32_t* __restrict__ row_seq,                     \
             const int32_t* __restrict__ positions, T* __restrict__ dst, float* __restrict__ ws_ml,              \
             float* __restrict__ ws_acc, int32_t* __restrict__ counters, uint32_t heads, uint32_t heads_kv,       \
             uint32_t head_dim, uint32_t max_blocks, uint32_t block_size, float scale, uint32_t window) { ENCORE_PDL_ENTRY();         \
        attention_tc::decode_impl<T, DMAX, attention_tc::decode_stages(DMAX)>(                                  \
            q, k_cache, v_cache, block_tables, row_seq, positions, dst, ws_ml, ws_acc, counters, heads, heads_kv, \
            head_dim, max_blocks, block_size, scale, window);                                                   \
    }

ATTENTION_DECODE(attention_decode_d64_bf16, __nv_bfloat16, 64)
ATTENTION_DECODE(attention_decode_d64_f16, __half, 64)
ATTENTION_DECODE(attention_decode_d128_bf16, __nv_bfloat16, 128)
ATTENTION_DECODE(attention_decode_d128_f16, __half, 128)
ATTENTION_DECODE(attention_decode_d256_bf16, __nv_bfloat16, 256)
ATTENTION_DECODE(attention_decode_d256_f16, __half, 256)

#undef ATTENTION_DECODE
