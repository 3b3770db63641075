// sample.cu: one token per row of f32 logits [R, V], each row with its own settings
// (params [R, 4] i32: temperature bits, top_k, top_p bits, min_p bits). A row with
// temperature <= 0 (or NaN) is greedy: the argmax (argmax.cu's block argmax, which precedes
// this file in the one translation unit build.rs makes). Otherwise the token is drawn from
// softmax(logits / T) after top-k, min-p and top-p filtering, with the row's uniform
// u = uniform[r] / 2^24 given by the host (so a captured graph samples new tokens each replay,
// a seed reproduces them, and one graph serves any mix of requests' settings).
//
// Semantics (encore_tensor::SampleParams; the CPU backend computes the same set exactly):
// p_i = exp((l_i - max) / T) (unnormalised, max p = 1); threshold tau = max(min_p, p of the
// k-th largest, p where the top mass reaches top_p); kept = {i : p_i >= tau}; the token is
// the first i in id order whose running kept mass exceeds u * (kept mass).
// Thread mapping: grid (R, S), blockDim a multiple of 32, <= 1024. A greedy row is split
// over its S blocks, each the argmax of a 1/S slice, merged in one pass (no second kernel):
// each block folds (value, index) into one u64 key of the row's scratch with atomicMax, and
// the last block of the row to finish (a counter) writes the index and resets both words
// for the next launch (the max of the keys does not depend on the order: deterministic).
// With S = 1 (the launcher's choice when R exceeds the scratch) the block writes directly.
// A sampling row is done by its first block alone (the others return): thresholds are found
// by bisection over p in [0, 1] (32 steps, each a block-wide count or sum), so no sort and no
// scratch memory; the final pick is a block-wide scan over contiguous chunks.
// logits rows contiguous (row stride given), uniform i32 [R], out u32 [R] (check::sample);
// scratch: keys u64 [R] then counters u32 [R], zero between launches (backend.rs
// SAMPLE_SCRATCH_ROWS; allocated zeroed).
#include "common.cuh"

namespace sample_cu {

struct SampleParams {
    float temperature;
    uint32_t top_k;
    float top_p;
    float min_p;
};

__device__ __forceinline__ float prob(const float* __restrict__ l, uint32_t i, float m, float inv_t) {
    return exp2f((l[i] - m) * inv_t * ENCORE_LOG2E);
}

// Sum over the row of p (or of 1 with `count`) where p >= tau.
__device__ __forceinline__ float kept(const float* __restrict__ l, uint32_t V, float m, float inv_t, float tau,
                                      bool count, float* scratch) {
    float s = 0.f;
    for (uint32_t i = threadIdx.x; i < V; i += blockDim.x) {
        const float p = prob(l, i, m, inv_t);
        if (p >= tau) s += count ? 1.f : p;
    }
    return block_sum(s, scratch);
}

// (value, index) as one u64 that orders like argmax_better: the float's bits made monotonic
// in the high word, ~index in the low one (smaller index wins ties). A block with no
// candidate (all NaN) gives index 0xffffffff: low word 0, below any real candidate.
__device__ __forceinline__ unsigned long long argmax_key(float v, uint32_t i) {
    const uint32_t u = __float_as_uint(v == 0.f ? 0.f : v);  // -0 ties +0, as in argmax_better
    const uint32_t ord = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (static_cast<unsigned long long>(ord) << 32) | static_cast<unsigned long long>(~i);
}

// Block blockIdx.y of gridDim.y of one greedy row `l` (V values).
__device__ __forceinline__ void argmax_split(const float* __restrict__ l, uint32_t V,
                                             unsigned long long* __restrict__ ws, uint32_t* __restrict__ out) {
    __shared__ float svals[32];
    __shared__ uint32_t sidx[32];
    const uint32_t per = (V + gridDim.y - 1) / gridDim.y;
    const uint32_t begin = min(V, blockIdx.y * per), end = min(V, begin + per);
    float best = -INFINITY;
    uint32_t best_i = 0xffffffffu;
#pragma unroll 4
    for (uint32_t c = begin + threadIdx.x; c < end; c += blockDim.x) {
        const float v = l[c];
        if (argmax_cu::argmax_better(v, c, best, best_i)) {
            best = v;
            best_i = c;
        }
    }
    argmax_cu::argmax_warp(best, best_i);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (lane == 0) {
        svals[warp] = best;
        sidx[warp] = best_i;
    }
    __syncthreads();
    if (warp != 0) return;
    best = lane < nwarps ? svals[lane] : -INFINITY;
    best_i = lane < nwarps ? sidx[lane] : 0xffffffffu;
    argmax_cu::argmax_warp(best, best_i);
    if (lane != 0) return;
    unsigned long long* key = ws + blockIdx.x;
    uint32_t* counter = reinterpret_cast<uint32_t*>(ws + gridDim.x) + blockIdx.x;
    atomicMax(key, argmax_key(best, best_i));
    __threadfence();
    if (atomicAdd(counter, 1u) == gridDim.y - 1) {  // the row's last block: every key is in
        const unsigned long long k = atomicExch(key, 0ull);
        *counter = 0u;
        const uint32_t low = static_cast<uint32_t>(k);
        out[blockIdx.x] = low == 0u ? 0u : ~low;
    }
}

__device__ __forceinline__ void sample_impl(const float* __restrict__ logits, uint32_t V, uint32_t row_stride,
                                            const int32_t* __restrict__ uniform, const int32_t* __restrict__ params,
                                            uint32_t* __restrict__ out, unsigned long long* __restrict__ scratch_ws) {
    const int32_t* w = params + static_cast<size_t>(blockIdx.x) * 4;
    SampleParams sp;
    sp.temperature = __int_as_float(w[0]);
    sp.top_k = static_cast<uint32_t>(w[1]);
    sp.top_p = __int_as_float(w[2]);
    sp.min_p = __int_as_float(w[3]);
    if (!(sp.temperature > 0.f)) {  // greedy row (uniform across the block: no divergence)
        if (gridDim.y == 1) {
            argmax_cu::argmax_impl<float>(logits, out, V, row_stride);
        } else {
            argmax_split(logits + static_cast<size_t>(blockIdx.x) * row_stride, V, scratch_ws, out);
        }
        return;
    }
    if (blockIdx.y != 0) return;
    __shared__ float scratch[32];
    __shared__ float chunk_prefix[1024];
    __shared__ uint32_t picked;
    __shared__ int last_any;
    const float* l = logits + static_cast<size_t>(blockIdx.x) * row_stride;
    float m = -INFINITY;
    for (uint32_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, l[i]);
    m = block_max(m, scratch);
    const float inv_t = 1.f / sp.temperature;

    float tau = sp.min_p;  // max p is 1
    if (sp.top_k > 0 && sp.top_k < V) {
        float lo = 0.f, hi = 1.f;  // invariant: count(p >= lo) >= k
        for (int it = 0; it < 32; ++it) {
            const float mid = 0.5f * (lo + hi);
            if (kept(l, V, m, inv_t, mid, true, scratch) >= static_cast<float>(sp.top_k)) lo = mid; else hi = mid;
        }
        tau = fmaxf(tau, lo);
    }
    if (sp.top_p < 1.f) {
        const float target = sp.top_p * kept(l, V, m, inv_t, tau, false, scratch);
        float lo = tau, hi = 1.f;  // invariant: mass(p >= lo) >= target
        for (int it = 0; it < 32; ++it) {
            const float mid = 0.5f * (lo + hi);
            if (kept(l, V, m, inv_t, mid, false, scratch) >= target) lo = mid; else hi = mid;
        }
        tau = lo;
    }

    // each thread owns a contiguous chunk of ids; scan the chunk masses across the block
    const uint32_t chunk = (V + blockDim.x - 1) / blockDim.x;
    const uint32_t begin = min(V, threadIdx.x * chunk), end = min(V, begin + chunk);
    float s = 0.f;
    uint32_t last_kept = 0xFFFFFFFFu;
    for (uint32_t i = begin; i < end; ++i) {
        const float p = prob(l, i, m, inv_t);
        if (p >= tau) {
            s += p;
            last_kept = i;
        }
    }
    chunk_prefix[threadIdx.x] = s;
    if (threadIdx.x == 0) {
        picked = 0xFFFFFFFFu;
        last_any = -1;
    }
    __syncthreads();
    if (last_kept != 0xFFFFFFFFu) atomicMax(&last_any, static_cast<int>(last_kept));
    // inclusive scan (Hillis-Steele) over blockDim entries
    for (uint32_t off = 1; off < blockDim.x; off <<= 1) {
        const float add = threadIdx.x >= off ? chunk_prefix[threadIdx.x - off] : 0.f;
        __syncthreads();
        chunk_prefix[threadIdx.x] += add;
        __syncthreads();
    }
    const float total = chunk_prefix[blockDim.x - 1];
    const float r = static_cast<float>(uniform[blockIdx.x]) * (1.f / 16777216.f) * total;
    const float before = chunk_prefix[threadIdx.x] - s;
    if (s > 0.f && before <= r && r < before + s) {
        float acc = before;
        uint32_t at = last_kept;
        for (uint32_t i = begin; i < end; ++i) {
            const float p = prob(l, i, m, inv_t);
            if (p >= tau) {
                acc += p;
                if (acc > r) {
                    at = i;
                    break;
                }
            }
        }
        atomicMin(&picked, at);
    }
    __syncthreads();
    // rounding left r at or past the total: take the last kept id (max p = 1 is always kept)
    if (threadIdx.x == 0) out[blockIdx.x] = picked != 0xFFFFFFFFu ? picked : static_cast<uint32_t>(last_any);
}

}  // namespace sample_cu

extern "C" __global__ void sample_f32(const float* __restrict__ logits, uint32_t V, uint32_t row_stride,
                                      const int32_t* __restrict__ uniform, const int32_t* __restrict__ params,
                                      uint32_t* __restrict__ out, unsigned long long* __restrict__ scratch) {
    ENCORE_PDL_ENTRY();
    sample_cu::sample_impl(logits, V, row_stride, uniform, params, out, scratch);
}
