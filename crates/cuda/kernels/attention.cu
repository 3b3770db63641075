// attention.cu: causal attention over a paged KV cache, decode and prefill alike, on CUDA
// cores: the general path (f32, any D <= 256, unaligned operands). bf16 / f16 with aligned
// operands and D % 16 == 0 take the tensor-core kernels of attention_decode.cu and
// attention_prefill.cu instead (the launcher, backend.rs, picks); attention_merge_<dtype>
// below also finishes their split-K partials when the decode kernel cannot merge itself.
//
// Query t (head h) attends the positions j in [max(0, pos - window + 1), pos] (window 0 = no
// window), pos = positions[t], of the sequence whose block table is row row_seq[t] of
// block_tables [R, MB]; key j lives at slot table[j / bs] * bs + j % bs:
//   dst[t, h, :] = sum_j softmax_j(scale * q[t, h, :] . k[slot_j, h / G, :]) * v[slot_j, h / G, :]
// with G = H / Hkv query heads per KV head (GQA). Scores, softmax and the weighted sum are f32
// (online softmax in base 2: q is pre-scaled by scale * log2(e)). pos < 0 (a padded row)
// gives zeros. Positions past the table (j / bs >= MB) are never read; block ids are trusted
// (the block manager owns them; the CPU reference checks them).
//
// Layout: q, dst [T, H, D]; k_cache, v_cache [N * bs, Hkv, D]; row_seq, positions i32 [T]; all
// contiguous (check::attention), passed already advanced to their view offsets. D <= 256.
//
// CUDA graphs: the grid depends on T, H and the split count only, never on the context
// length: positions are read from device memory, so one captured graph serves every step.
//
// Thread mapping: one block of 4 warps per (t*H + h, split) (grid = (T*H, nsplit)). The key
// range of a query is cut into nsplit contiguous chunks (the launcher picks nsplit > 1 only
// when T*H blocks would leave SMs idle, i.e. small-batch decode). Inside a block each warp
// is split into groups of LPK lanes (a power of two); a group owns one key at a time: lane i
// of a group holds the head-dim chunks i, i + LPK, ... (VEC elements each: 16-byte vector
// loads, or single elements on the scalar path), dots them with q, and reduces over the group
// with xor shuffles. Each group keeps its own online-softmax state (m, l, acc) and takes
// UNROLL keys per step (K and V of both loaded up front). States are merged across the groups
// of a warp by shuffles, then across warps through shared memory. With nsplit == 1 the block
// writes dst; otherwise it writes its unnormalised state to the workspace and
// attention_merge_<dtype> (one block per t*H + h) combines the splits.
// Register budget: every lane holds at most 8 head-dim elements (MAXC * VEC == 8), which is
// what bounds D to 256 = 32 lanes * 8.
//
// Entry points: attention_<dtype> (VEC = 16 / sizeof(T): D % VEC == 0 and 16-byte aligned
// q, caches and dst, checked by the launcher), attention_scalar_<dtype> (VEC = 1, any D),
// attention_merge_<dtype>.
#include "common.cuh"

#define ATTN_WARPS 4
#define ATTN_UNROLL 2
#define ATTN_MAX_D 256
#define ATTN_MERGE_MAX_SPLITS 32

namespace attention_cu {

template <typename T, int VEC>
__device__ __forceinline__ void attention_impl(const T* __restrict__ q, const T* __restrict__ k_cache,
                                               const T* __restrict__ v_cache, const int32_t* __restrict__ block_tables,
                                               const int32_t* __restrict__ row_seq,
                                               const int32_t* __restrict__ positions, T* __restrict__ dst,
                                               float* __restrict__ ws_ml, float* __restrict__ ws_acc, uint32_t heads,
                                               uint32_t heads_kv, uint32_t head_dim, uint32_t max_blocks,
                                               uint32_t block_size, float scale, uint32_t window,
                                               uint32_t lanes_per_key) {
    constexpr int MAXC = 8 / VEC;  // head-dim chunks per lane
    __shared__ float s_m[ATTN_WARPS], s_l[ATTN_WARPS];
    __shared__ float s_acc[ATTN_WARPS][ATTN_MAX_D];

    const uint32_t bh = blockIdx.x;  // t * H + h
    const uint32_t t = bh / heads;
    const uint32_t h = bh - t * heads;
    const uint32_t kvh = h / (heads / heads_kv);
    const uint32_t nsplit = gridDim.y, split = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int lpk = static_cast<int>(lanes_per_key);
    const int gpw = 32 / lpk;  // key groups per warp
    const int group = lane / lpk, li = lane % lpk;
    const int nch = static_cast<int>(head_dim) / VEC;

    // The keys of this query, clipped to its block table, then this block's chunk of them.
    const int32_t pos = positions[t];
    long long kbeg = 0, kend = 0;
    const int32_t* table = block_tables;
    if (pos >= 0) {
        table += static_cast<size_t>(row_seq[t]) * max_blocks;
        kbeg = window > 0 ? max(0LL, static_cast<long long>(pos) - static_cast<long long>(window) + 1) : 0LL;
        kend = min(static_cast<long long>(pos) + 1, static_cast<long long>(max_blocks) * block_size);
    }
    const long long len = max(kend - kbeg, 0LL);
    const long long chunk = (len + nsplit - 1) / nsplit;
    const long long sbeg = kbeg + static_cast<long long>(split) * chunk;
    const long long send = min(kend, sbeg + chunk);

    // q, pre-scaled so that scores are in base 2.
    const float qscale = scale * ENCORE_LOG2E;
    float qf[MAXC][VEC];
    const T* qrow = q + static_cast<size_t>(bh) * head_dim;
#pragma unroll
    for (int k = 0; k < MAXC; ++k) {
        const int c = li + k * lpk;
        if (c < nch) {
            load_vec_f32<T, VEC>(qrow + c * VEC, qf[k]);
#pragma unroll
            for (int e = 0; e < VEC; ++e) qf[k][e] *= qscale;
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) qf[k][e] = 0.f;
        }
    }

    float m = -INFINITY, l = 0.f;
    float acc[MAXC][VEC];
#pragma unroll
    for (int k = 0; k < MAXC; ++k)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[k][e] = 0.f;

    const size_t row_stride = static_cast<size_t>(heads_kv) * head_dim;  // one slot
    const T* kbase = k_cache + static_cast<size_t>(kvh) * head_dim;
    const T* vbase = v_cache + static_cast<size_t>(kvh) * head_dim;
    const int keys_per_warp_step = gpw * ATTN_UNROLL;
    // j0 is warp-uniform, so every lane runs the same iterations and the shuffles are legal.
    for (long long j0 = sbeg + warp * keys_per_warp_step; j0 < send; j0 += ATTN_WARPS * keys_per_warp_step) {
        float kf[ATTN_UNROLL][MAXC][VEC], vf[ATTN_UNROLL][MAXC][VEC];
        bool valid[ATTN_UNROLL];
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            const long long j = j0 + u * gpw + group;
            valid[u] = j < send;
            const long long jj = valid[u] ? j : j0;  // j0 is a valid key
            const size_t slot = static_cast<size_t>(table[jj / block_size]) * block_size + jj % block_size;
            const T* kr = kbase + slot * row_stride;
            const T* vr = vbase + slot * row_stride;
#pragma unroll
            for (int k = 0; k < MAXC; ++k) {
                const int c = li + k * lpk;
                if (c < nch) {
                    load_vec_f32<T, VEC>(kr + c * VEC, kf[u][k]);
                    load_vec_f32<T, VEC>(vr + c * VEC, vf[u][k]);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) kf[u][k][e] = vf[u][k][e] = 0.f;
                }
            }
        }
        float s[ATTN_UNROLL];
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            float dot = 0.f;
#pragma unroll
            for (int k = 0; k < MAXC; ++k)
#pragma unroll
                for (int e = 0; e < VEC; ++e) dot = fmaf(qf[k][e], kf[u][k][e], dot);
            for (int o = lpk >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(ENCORE_FULL_MASK, dot, o);
            s[u] = valid[u] ? dot : -INFINITY;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) mx = fmaxf(mx, s[u]);
        if (mx != -INFINITY) {  // uniform within a group; no shuffles below
            const float corr = exp2f(m - mx);  // m == -inf: 0
            float p[ATTN_UNROLL];
            float psum = 0.f;
#pragma unroll
            for (int u = 0; u < ATTN_UNROLL; ++u) {
                p[u] = exp2f(s[u] - mx);  // invalid key: exp2f(-inf) = 0
                psum += p[u];
            }
            l = l * corr + psum;
#pragma unroll
            for (int k = 0; k < MAXC; ++k)
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    float a = acc[k][e] * corr;
#pragma unroll
                    for (int u = 0; u < ATTN_UNROLL; ++u) a = fmaf(p[u], vf[u][k][e], a);
                    acc[k][e] = a;
                }
            m = mx;
        }
    }

    // Merge the groups of this warp: lane i of group g meets lane i of group g ^ (o / LPK),
    // which holds the same head-dim chunks.
    for (int o = lpk; o < 32; o <<= 1) {
        const float mo = __shfl_xor_sync(ENCORE_FULL_MASK, m, o);
        const float lo = __shfl_xor_sync(ENCORE_FULL_MASK, l, o);
        const float mn = fmaxf(m, mo);
        const float a = m == -INFINITY ? 0.f : exp2f(m - mn);
        const float b = mo == -INFINITY ? 0.f : exp2f(mo - mn);
        l = l * a + lo * b;
#pragma unroll
        for (int k = 0; k < MAXC; ++k)
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const float other = __shfl_xor_sync(ENCORE_FULL_MASK, acc[k][e], o);
                acc[k][e] = acc[k][e] * a + other * b;
            }
        m = mn;
    }
    if (lane < lpk) {  // group 0 holds the warp's state; its lanes cover every chunk
#pragma unroll
        for (int k = 0; k < MAXC; ++k) {
            const int c = li + k * lpk;
            if (c < nch) {
#pragma unroll
                for (int e = 0; e < VEC; ++e) s_acc[warp][c * VEC + e] = acc[k][e];
            }
        }
        if (lane == 0) {
            s_m[warp] = m;
            s_l[warp] = l;
        }
    }
    __syncthreads();

    // Merge the warps.
    float mb = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) mb = fmaxf(mb, s_m[w]);
    float wgt[ATTN_WARPS];
    float lb = 0.f;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; ++w) {
        wgt[w] = s_m[w] == -INFINITY ? 0.f : exp2f(s_m[w] - mb);
        lb += s_l[w] * wgt[w];
    }
    const size_t ws_row = static_cast<size_t>(bh) * nsplit + split;
    for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; ++w) o = fmaf(s_acc[w][d], wgt[w], o);
        if (nsplit == 1) {
            store_f32(dst + static_cast<size_t>(bh) * head_dim + d, lb > 0.f ? o / lb : 0.f);
        } else {
            ws_acc[ws_row * head_dim + d] = o;
        }
    }
    if (nsplit > 1 && threadIdx.x == 0) {
        ws_ml[ws_row * 2] = mb;
        ws_ml[ws_row * 2 + 1] = lb;
    }
}

// Combine the nsplit partial states of one (t, h): grid = T*H, any block size of whole
// warps, nsplit <= ATTN_MERGE_MAX_SPLITS (the launchers cap their splits at 32).
// ws_ml: [T*H, nsplit, 2] (max in base 2, sum of exp2), ws_acc: [T*H, nsplit, D]. The first
// warp turns the maxima into one weight a split (in shared memory), then every output is a
// sum of independent loads. A split with weight 0 (empty: its ws_acc row was never
// written) is skipped by a select, so stale workspace bits cannot leak in.
template <typename T>
__device__ __forceinline__ void attention_merge_impl(const float* __restrict__ ws_ml, const float* __restrict__ ws_acc,
                                                     T* __restrict__ dst, uint32_t head_dim, uint32_t nsplit) {
    __shared__ float s_w[ATTN_MERGE_MAX_SPLITS];
    __shared__ float s_inv;
    const size_t row0 = static_cast<size_t>(blockIdx.x) * nsplit;
    if (threadIdx.x < 32) {
        const uint32_t lane = threadIdx.x;
        const float ms = lane < nsplit ? ws_ml[(row0 + lane) * 2] : -INFINITY;
        const float mb = warp_max(ms);
        const float w = ms == -INFINITY ? 0.f : exp2f(ms - mb);
        const float l = warp_sum(lane < nsplit ? ws_ml[(row0 + lane) * 2 + 1] * w : 0.f);
        s_w[lane] = w;
        if (lane == 0) s_inv = l > 0.f ? 1.f / l : 0.f;
    }
    __syncthreads();
    for (uint32_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.f;
#pragma unroll 8
        for (uint32_t s = 0; s < nsplit; ++s) {
            const float a = ws_acc[(row0 + s) * head_dim + d];
            o = s_w[s] != 0.f ? fmaf(a, s_w[s], o) : o;
        }
        store_f32(dst + static_cast<size_t>(blockIdx.x) * head_dim + d, o * s_inv);
    }
}

}  // namespace attention_cu

#define ATTENTION(NAME, T, VEC)                                                                              \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32)                                             \
        NAME(const T* __restrict__ q, const T* __restrict__ k_cache, const T* __restrict__ v_cache,          \
             const int32_t* __restrict__ block_tables, const int32_t* __restrict__ row_seq,                   \
             const int32_t* __restrict__ positions, T* __restrict__ dst, float* __restrict__ ws_ml,            \
             float* __restrict__ ws_acc, uint32_t heads, uint32_t heads_kv, uint32_t head_dim,                 \
             uint32_t max_blocks, uint32_t block_size, float scale, uint32_t window, uint32_t lanes_per_key) { ENCORE_PDL_ENTRY(); \
        attention_cu::attention_impl<T, VEC>(q, k_cache, v_cache, block_tables, row_seq, positions, dst, ws_ml, \
                                             ws_acc, heads, heads_kv, head_dim, max_blocks, block_size, scale,  \
                                             window, lanes_per_key);                                            \
    }
#define ATTENTION_MERGE(NAME, T)                                                                       \
    extern "C" __global__ void NAME(const float* __restrict__ ws_ml, const float* __restrict__ ws_acc, \
        T* __restrict__ dst, uint32_t head_dim, uint32_t nsplit) { ENCORE_PDL_ENTRY();                                     \
        attention_cu::attention_merge_impl<T>(ws_ml, ws_acc, dst, head_dim, nsplit);                   \
    }

ATTENTION(attention_f32, float, 4)
ATTENTION(attention_bf16, __nv_bfloat16, 8)
ATTENTION(attention_f16, __half, 8)
ATTENTION(attention_scalar_f32, float, 1)
ATTENTION(attention_scalar_bf16, __nv_bfloat16, 1)
ATTENTION(attention_scalar_f16, __half, 1)
ATTENTION_MERGE(attention_merge_f32, float)
ATTENTION_MERGE(attention_merge_bf16, __nv_bfloat16)
ATTENTION_MERGE(attention_merge_f16, __half)

#undef ATTN_WARPS
#undef ATTN_UNROLL
#undef ATTN_MAX_D
#undef ATTN_MERGE_MAX_SPLITS
#undef ATTENTION
#undef ATTENTION_MERGE
