// attention_prefill.cu: paged causal attention for prefill-shaped steps (chunks of new
// tokens of one or more sequences, each attending its earlier context and itself) on
// tensor cores, bf16 / f16. Same function as attention.cu (see there and
// Backend::attention); padded rows (pos < 0) give zeros.
//
// Layout: q, dst [T, H, D]; k_cache, v_cache [N * bs, Hkv, D]; contiguous, 16-byte aligned,
// D % 16 == 0, D <= DMAX (the launcher checks: attention_tensor_core in backend.rs). Rows
// of one sequence are consecutive in q (the step-packing contract); rows in any other
// order stay correct, only slower.
//
// Two kernels:
// - attention_plan: one block cuts the T rows into items, token ranges [t0, t1) of one
//   sequence and at most TT = max(1, 64 / G) tokens: a new item starts at every multiple of
//   TT and at every valid row whose predecessor is padded or of another sequence. Padded
//   rows never start an item except at a multiple of TT, so an item is a run of valid rows
//   of one sequence followed by padded rows, or padded rows only. The items go to the
//   workspace as int2 [count] after the count; there are at most ceil(T / TT) + (runs of
//   valid rows) of them, which the launcher bounds by ceil(T / TT) + R (and by T).
// - attention_prefill_d<DMAX>_<dtype>: grid (cap, Hkv * ceil(G / 64)), 4 warps. A CTA
//   takes item count - 1 - i (the latest tokens, with the most keys, start first) for
//   i = blockIdx.x, blockIdx.x + cap, ...; its 64 packed rows are (token, query head of
//   the KV group) pairs, r = (t - t0) * Gc + g, so the G heads that share a KV head share
//   every K/V tile. Warp w owns rows 16w..16w+15. The CTA streams the keys
//   [min over rows of the window start, max over rows of pos + 1) in 64-key tiles through
//   a STAGES-deep cp.async pipeline; each warp skips tiles outside its rows' ranges and
//   masks per row (causal and window) only on tiles that cut some row's range.
//
// CUDA graphs: both grids depend on T, R, H, Hkv only; everything else is read on the
// device. No atomics on results (shared-memory min/max of the key range are exact).
//
// Items of at most 16 rows (decode rows and short runs mixed into a prefill step) would
// leave 3 of the 4 warps idle: there the 4 warps hold the same 16 rows and split each tile's
// keys instead, merging through shared memory at the end.
//
// Shared memory (dynamic): Q [64][D + 8], then STAGES x {K, V} [64][D + 8] elements; a
// launch with less traps (the launcher's tc_prefill_smem must match prefill_stages).
#include "attention_tc.cuh"

namespace attention_tc {

constexpr int PRE_BM = 64;  // packed query rows a CTA
constexpr int PRE_BN = 64;  // keys a tile

__host__ __device__ constexpr int prefill_stages(int) { return 2; }

// Exact min / max over the warp.
__device__ __forceinline__ int warp_min_i(int x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = min(x, __shfl_xor_sync(ENCORE_FULL_MASK, x, o));
    return x;
}
__device__ __forceinline__ int warp_max_i(int x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = max(x, __shfl_xor_sync(ENCORE_FULL_MASK, x, o));
    return x;
}

// Everything of one item after its Q copies are queued and its key range [lo, hi) is known.
// SPLIT (items of at most 16 rows: decode rows, short runs): the 4 warps hold the same 16
// rows and fold disjoint 16-key slabs of each tile, merged at the end (merge_warps); else
// warp w holds rows 16w.. and folds whole 64-key tiles.
template <typename T, int DMAX, int STAGES, bool SPLIT>
__device__ __forceinline__ void prefill_rows(unsigned char* smem, int t0, int nrows, int gc, int lo, int hi,
                                             size_t hbase, const T* __restrict__ k_cache,
                                             const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                             const int32_t* __restrict__ row_seq,
                                             const int32_t* __restrict__ positions, T* __restrict__ dst,
                                             uint32_t heads, uint32_t heads_kv, int D, uint32_t max_blocks,
                                             uint32_t block_size, float scale, uint32_t window) {
    constexpr bool QREGS = DMAX <= 128;
    constexpr int NKEY = SPLIT ? 16 : PRE_BN;  // keys a warp folds per tile
    const int nch = D / 8, kt = D / 16, nt = D / 8;
    const uint32_t rb = (D + 8) * 2;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gr = lane >> 2, qd = lane & 3;
    const int row0 = SPLIT ? 0 : warp * 16;     // this warp's first row
    const int key0 = SPLIT ? warp * 16 : 0;     // this warp's first key of a tile
    const uint32_t sq = smem_addr(smem);
    const uint32_t skv = sq + PRE_BM * rb;
    const uint32_t stage_bytes = 2 * PRE_BN * rb;

    // This thread's rows: attended keys [rlo, rhi) (empty for padded rows), and the warp's
    // union (tiles to visit) and intersection (tiles that need no mask) of them. Rows past
    // the item constrain neither.
    int rlo[2], rhi[2], ulo = INT_MAX, uhi = INT_MIN, ilo = INT_MIN, ihi = INT_MAX;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int r = row0 + gr + 8 * i;
        rlo[i] = INT_MAX;
        rhi[i] = INT_MIN;
        if (r < nrows) {
            int a, b;
            key_range(positions[t0 + r / gc], window, max_blocks, block_size, a, b);
            if (a < b) {
                rlo[i] = a;
                rhi[i] = b;
            }
            ulo = min(ulo, rlo[i]);
            uhi = max(uhi, rhi[i]);
            ilo = max(ilo, rlo[i]);
            ihi = min(ihi, rhi[i]);
        }
    }
    ulo = warp_min_i(ulo);
    uhi = warp_max_i(uhi);
    ilo = warp_max_i(ilo);
    ihi = warp_min_i(ihi);

    WarpAttn<T, NKEY, DMAX, QREGS> wa;
    wa.init();
    const int ntile = lo < hi ? (hi - lo + PRE_BN - 1) / PRE_BN : 0;
    if (ntile > 0) {
        const int32_t* table = block_tables + static_cast<size_t>(row_seq[t0]) * max_blocks;
        const T* kb = k_cache + static_cast<size_t>(hbase / (heads / heads_kv)) * D;
        const T* vb = v_cache + static_cast<size_t>(hbase / (heads / heads_kv)) * D;
        const size_t slot_stride = static_cast<size_t>(heads_kv) * D;
        auto load = [&](int tile) {
            const uint32_t sk = skv + (tile % STAGES) * stage_bytes;
            load_kv_tile<T, PRE_BN>(sk, sk + PRE_BN * rb, rb, kb, vb, table, lo + tile * PRE_BN, hi, block_size,
                                    slot_stride, nch);
        };
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < ntile) load(s);
            cp_async_commit();
        }
        const float sl2 = scale * ENCORE_LOG2E;
        const uint32_t swq = sq + row0 * rb;
        for (int it = 0; it < ntile; ++it) {
            cp_async_wait<STAGES - 2>();
            __syncthreads();
            if (it == 0) wa.load_q(swq, rb, kt);
            if (it + STAGES - 1 < ntile) load(it + STAGES - 1);
            cp_async_commit();
            const int jb = lo + it * PRE_BN + key0;  // this warp's first key
            if (jb < uhi && jb + NKEY > ulo) {       // warp-uniform
                const uint32_t sk = skv + (it % STAGES) * stage_bytes + key0 * rb;
                const bool need_mask = !(jb >= ilo && jb + NKEY <= ihi);
                wa.step(swq, sk, sk + PRE_BN * rb, rb, kt, nt, sl2, need_mask, [&](int n, int e) {
                    const int j = jb + n * 8 + 2 * qd + (e & 1);
                    return j >= rlo[e >> 1] && j < rhi[e >> 1];
                });
            }
        }
    }
    cp_async_commit();  // with ntile == 0 the Q copies are in no group yet
    cp_async_wait<0>();
    wa.finish();
    auto out_row = [&](int r) {
        return dst + (static_cast<size_t>(t0 + r / gc) * heads + hbase + r % gc) * D;
    };
    if constexpr (SPLIT) {
        __syncthreads();  // every warp is done with the tiles: merge_warps reuses the memory
        merge_warps(smem, wa, nrows, D, [&](int r, int d, float o, float l, float) {
            store_f32(out_row(r) + d, l > 0.f ? o / l : 0.f);
        });
    } else {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int r = row0 + gr + 8 * i;
            if (r < nrows) {
                const float inv = wa.l[i] > 0.f ? 1.f / wa.l[i] : 0.f;
                T* out = out_row(r) + 2 * qd;
#pragma unroll
                for (int n = 0; n < DMAX / 8; ++n) {
                    if (n < nt) {
                        *reinterpret_cast<uint32_t*>(out + n * 8) =
                            pack2<T>(wa.o[n][2 * i] * inv, wa.o[n][2 * i + 1] * inv);
                    }
                }
            }
        }
    }
}

template <typename T, int DMAX, int STAGES>
__device__ __forceinline__ void prefill_item(unsigned char* smem, int* s_range, int t0, int t1,
                                             const T* __restrict__ q, const T* __restrict__ k_cache,
                                             const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                             const int32_t* __restrict__ row_seq,
                                             const int32_t* __restrict__ positions, T* __restrict__ dst,
                                             uint32_t heads, uint32_t heads_kv, uint32_t head_dim,
                                             uint32_t max_blocks, uint32_t block_size, float scale, uint32_t window) {
    const int D = static_cast<int>(head_dim), nch = D / 8;
    const uint32_t rb = (D + 8) * 2;
    const uint32_t G = heads / heads_kv, nhc = (G + PRE_BM - 1) / PRE_BM;
    const uint32_t kvh = blockIdx.y / nhc, g0 = (blockIdx.y - kvh * nhc) * PRE_BM;
    const int gc = static_cast<int>(min(static_cast<uint32_t>(PRE_BM), G - g0));
    const int tid = threadIdx.x;
    const int ntok = t1 - t0;
    const int nrows = min(ntok * gc, PRE_BM);
    const size_t hbase = static_cast<size_t>(kvh) * G + g0;  // query head of local head 0

    if (tid == 0) {
        s_range[0] = INT_MAX;
        s_range[1] = INT_MIN;
    }
    __syncthreads();
    if (tid < ntok) {
        int lo, hi;
        key_range(positions[t0 + tid], window, max_blocks, block_size, lo, hi);
        if (lo < hi) {
            atomicMin(&s_range[0], lo);
            atomicMax(&s_range[1], hi);
        }
    }
    const uint32_t sq = smem_addr(smem);
    for (int i = tid; i < PRE_BM * nch; i += THREADS) {
        const int r = i / nch, c = i - r * nch;
        const bool ok = r < nrows;
        const int rr = ok ? r : 0;
        const size_t row = static_cast<size_t>(t0 + rr / gc) * heads + hbase + rr % gc;
        cp_async16(sq + r * rb + c * 16, q + row * D + c * 8, ok);
    }
    __syncthreads();
    const int lo = s_range[0], hi = s_range[1];
    if (nrows <= 16) {
        prefill_rows<T, DMAX, STAGES, true>(smem, t0, nrows, gc, lo, hi, hbase, k_cache, v_cache, block_tables,
                                            row_seq, positions, dst, heads, heads_kv, D, max_blocks, block_size,
                                            scale, window);
    } else {
        prefill_rows<T, DMAX, STAGES, false>(smem, t0, nrows, gc, lo, hi, hbase, k_cache, v_cache, block_tables,
                                             row_seq, positions, dst, heads, heads_kv, D, max_blocks, block_size,
                                             scale, window);
    }
}

template <typename T, int DMAX, int STAGES>
__device__ __forceinline__ void prefill_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                             const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                             const int32_t* __restrict__ row_seq,
                                             const int32_t* __restrict__ positions, T* __restrict__ dst,
                                             const int2* __restrict__ items, const int32_t* __restrict__ count,
                                             uint32_t heads, uint32_t heads_kv, uint32_t head_dim,
                                             uint32_t max_blocks, uint32_t block_size, float scale, uint32_t window) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int s_range[2];
    if (dynamic_smem_bytes() < (PRE_BM + STAGES * 2 * PRE_BN) * (head_dim + 8) * 2) __trap();
    const int n = *count;
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        const int2 it = items[n - 1 - i];
        prefill_item<T, DMAX, STAGES>(smem, s_range, it.x, it.y, q, k_cache, v_cache, block_tables, row_seq,
                                      positions, dst, heads, heads_kv, head_dim, max_blocks, block_size, scale,
                                      window);
        __syncthreads();  // shared memory is reused by the next item
    }
}

}  // namespace attention_tc

// items: int2 [count] (t0, t1), count: one i32. One block of exactly 1024 threads (the
// launcher's ATTENTION_PLAN_THREADS; 30 registers, so no launch bound is needed), any T.
extern "C" __global__ void attention_plan(const int32_t* __restrict__ row_seq, const int32_t* __restrict__ positions,
                                          uint32_t num_rows, uint32_t tokens_per_item, int2* __restrict__ items,
                                          int32_t* __restrict__ count) {
    ENCORE_PDL_ENTRY();
    __shared__ int warp_total[32];
    __shared__ int s_carry;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int T = static_cast<int>(num_rows), tt = static_cast<int>(tokens_per_item);
    if (tid == 0) s_carry = 0;
    __syncthreads();
    for (int base = 0; base < T; base += 1024) {
        const int t = base + tid;
        bool start = false;
        if (t < T) {
            if (t % tt == 0) {
                start = true;
            } else if (positions[t] >= 0) {
                start = positions[t - 1] < 0 || row_seq[t] != row_seq[t - 1];
            }
        }
        const uint32_t ballot = __ballot_sync(ENCORE_FULL_MASK, start);
        if (lane == 0) warp_total[warp] = __popc(ballot);
        __syncthreads();
        int before = s_carry;  // items of earlier chunks and earlier warps
        for (int w = 0; w < warp; ++w) before += warp_total[w];
        if (start) items[before + __popc(ballot & ((1u << lane) - 1))].x = t;
        __syncthreads();  // everyone has read s_carry and warp_total
        if (tid == 0) {
            int total = 0;
            for (int w = 0; w < 32; ++w) total += warp_total[w];
            s_carry += total;
        }
        __syncthreads();
    }
    const int n = s_carry;
    for (int k = tid; k < n; k += 1024) items[k].y = k + 1 < n ? items[k + 1].x : T;
    if (tid == 0) *count = n;
}

// MINB: CTAs an SM must hold (the register cap that keeps D <= 64 at 4 CTAs an SM).
#define ATTENTION_PREFILL(NAME, T, DMAX, MINB)                                                                   \
    extern "C" __global__ void __launch_bounds__(attention_tc::THREADS, MINB)                                    \
        NAME(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,              \
             const int32_t* __restrict__ block_tables, const int32_t* __restrict__ row_seq,                       \
             const int32_t* __restrict__ positions, T* __restrict__ dst, const int2* __restrict__ items,           \
             const int32_t* __restrict__ count, uint32_t heads, uint32_t heads_kv, uint32_t head_dim,              \
             uint32_t max_blocks, uint32_t block_size, float scale, uint32_t window) { ENCORE_PDL_ENTRY();                            \
        attention_tc::prefill_impl<T, DMAX, attention_tc::prefill_stages(DMAX)>(                                  \
            q, k_cache, v_cache, block_tables, row_seq, positions, dst, items, count, heads, heads_kv, head_dim,  \
            max_blocks, block_size, scale, window);                                                               \
    }

ATTENTION_PREFILL(attention_prefill_d64_bf16, __nv_bfloat16, 64, 4)
ATTENTION_PREFILL(attention_prefill_d64_f16, __half, 64, 4)
ATTENTION_PREFILL(attention_prefill_d128_bf16, __nv_bfloat16, 128, 2)
ATTENTION_PREFILL(attention_prefill_d128_f16, __half, 128, 2)
ATTENTION_PREFILL(attention_prefill_d256_bf16, __nv_bfloat16, 256, 1)
ATTENTION_PREFILL(attention_prefill_d256_f16, __half, 256, 1)

#undef ATTENTION_PREFILL
