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
// Thread mapping: one block per row (blockDim a multiple of 32, <= 1024). Thresholds are
// found by bisection over p in [0, 1] (32 steps, each a block-wide count or sum), so no
// sort and no scratch memory; the final pick is a block-wide scan over contiguous chunks.
// logits rows contiguous (row stride given), uniform i32 [R], out u32 [R] (check::sample).
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

__device__ __forceinline__ void sample_impl(const float* __restrict__ logits, uint32_t V, uint32_t row_stride,
                                            const int32_t* __restrict__ uniform, const int32_t* __restrict__ params,
                                            uint32_t* __restrict__ out) {
    const int32_t* w = params + static_cast<size_t>(blockIdx.x) * 4;
    SampleParams sp;
    sp.temperature = __int_as_float(w[0]);
    sp.top_k = static_cast<uint32_t>(w[1]);
    sp.top_p = __int_as_float(w[2]);
    sp.min_p = __int_as_float(w[3]);
    if (!(sp.temperature > 0.f)) {  // greedy row (uniform across the block: no divergence)
        argmax_cu::argmax_impl<float>(logits, out, V, row_stride);
        return;
    }
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
                                      uint32_t* __restrict__ out) {
    sample_cu::sample_impl(logits, V, row_stride, uniform, params, out);
}
