// attn_sweep.cu: scratch timing sweep + CPU check of the paged attention kernels (not built
// by cargo; crates/cuda/dev/build.sh compiles it with the pinned nvcc into .gpu/attn_sweep).
//
// It #includes the real kernels/*.cu and instantiates extra template variants (pipeline
// depth, split count) next to the shipped ones, so the winner is picked by numbers:
//   A. decode: H=32 Hkv=8 D=64 (Llama-3.2-1B) and D=128 (Llama-3.1-8B), batch 1/8/64,
//      ctx 512..8192, every row at position ctx - 1: attention.cu (the baseline) against
//      attention_decode: the shipped choice (2 stages, backend.rs's split count, merge in
//      the kernel), the separate merge kernel, 3 stages, half and twice the split count;
//      us per layer (attention + merge), GB/s on the K/V bytes read, % of the device copy
//      bandwidth;
//   B. large decode batches (64..256): decode kernel against the plan + prefill path;
//   C. prefill: fresh chunks (512..4096 tokens), a 512-token chunk at depth 4096, 4
//      sequences' chunks in one launch, a chunk mixed with decode rows: attention.cu against
//      attention_prefill (STAGES variants); us and causal TFLOP/s.
// Caches are filled on the device from a hash (the CPU recomputes any element), block tables
// are random permutations of a pool, and timed launches rotate over enough table sets that
// the K/V read per rotation is >= 512 MB (several times the 50 MB L2). Every variant's
// output is checked against an f64 CPU reference on sampled rows (max error printed, FAIL
// if beyond the bf16 tolerance of encore_tensor::testing) and against the baseline kernel on
// all rows, and re-run to check it is bit-identical. Timing: 20 launches captured in a CUDA
// graph (no host launch gaps, as in the engine's decode step), median of 7 replays.
//
// Usage: attn_sweep [quick]   (quick: fewer sizes). Prints a table per part, a summary last.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../kernels/attention.cu"
#include "../kernels/attention_decode.cu"
#include "../kernels/attention_prefill.cu"

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

typedef __nv_bfloat16 bf16;

// ---- variants ---------------------------------------------------------------------------------

template <int DMAX, int STAGES>
__global__ void __launch_bounds__(128)
    dec_var(const bf16* q, const bf16* k, const bf16* v, const int32_t* bt, const int32_t* rs, const int32_t* pos,
            bf16* dst, float* ws_ml, float* ws_acc, int32_t* counters, uint32_t h, uint32_t hkv, uint32_t d,
            uint32_t mb, uint32_t bs, float scale, uint32_t window) {
    // q contiguous [T, H, D], no fused prologue, chunks of at least one tile (64 keys)
    const attention_tc::NewKv<bf16> none{};
    attention_tc::decode_impl<bf16, DMAX, STAGES, false>(q, k, v, bt, rs, pos, dst, ws_ml, ws_acc, counters, h, hkv, d, mb, bs,
                                                  scale, window, h * d, 1, none);
}
template <int DMAX, int STAGES, int MINB>
__global__ void __launch_bounds__(128, MINB)
    pre_var(const bf16* q, const bf16* k, const bf16* v, const int32_t* bt, const int32_t* rs, const int32_t* pos,
            bf16* dst, const int2* items, const int32_t* count, uint32_t h, uint32_t hkv, uint32_t d, uint32_t mb,
            uint32_t bs, float scale, uint32_t window) {
    attention_tc::prefill_impl<bf16, DMAX, STAGES>(q, k, v, bt, rs, pos, dst, items, count, h, hkv, d, mb, bs, scale,
                                                   window);
}

// ---- data ---------------------------------------------------------------------------------------

__host__ __device__ inline uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
// uniform in [-1, 1)
__host__ __device__ inline float hval(uint64_t i, uint64_t seed) {
    return static_cast<float>(mix64(i ^ (seed * 0x5851F42D4C957F2Dull)) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}
__global__ void fill_hash(bf16* p, size_t n, uint64_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16_rn(hval(i, seed));
}
static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
    float r;
    memcpy(&r, &u, 4);
    return r;
}
static float bf16_to_f(bf16 v) {
    uint16_t h;
    memcpy(&h, &v, 2);
    uint32_t u = (uint32_t)h << 16;
    float r;
    memcpy(&r, &u, 4);
    return r;
}

struct Shape {
    const char* name;
    int h, hkv, d;
};

// One problem: rows (seq, pos), B sequences of up to `ctx` positions, NSETS block-table sets.
struct Problem {
    Shape s;
    int bs = 16;
    int t = 0, nseq = 0, mb = 0, nsets = 1;
    std::vector<int> seq, pos;
    size_t pool_blocks = 0;
    std::vector<std::vector<int>> tables;  // [set][nseq * mb]
    double kv_bytes = 0;                   // K+V bytes one launch reads (decode: rows' contexts)
    double flops = 0;                      // 4 * H * D * attended keys
    // device
    bf16 *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *ref = nullptr;
    int32_t *d_seq = nullptr, *d_pos = nullptr;
    std::vector<int32_t*> d_tables;
    std::vector<float> hq;  // q values (bf16-rounded)
    uint64_t seed_k = 11, seed_v = 23;

    void build(std::mt19937_64& rng) {
        t = (int)seq.size();
        nseq = 0;
        int maxpos = 0;
        for (int i = 0; i < t; ++i) nseq = std::max(nseq, seq[i] + 1), maxpos = std::max(maxpos, pos[i]);
        mb = maxpos / bs + 1;
        std::vector<int> last(nseq, -1);
        for (int i = 0; i < t; ++i) last[seq[i]] = std::max(last[seq[i]], pos[i]);
        size_t per_set = 0;
        for (int sidx = 0; sidx < nseq; ++sidx) per_set += last[sidx] / bs + 1;
        kv_bytes = 0;
        flops = 0;
        for (int i = 0; i < t; ++i)
            if (pos[i] >= 0) {
                kv_bytes += (double)(pos[i] + 1) * s.hkv * s.d * 2 * 2;
                flops += 4.0 * s.h * s.d * (pos[i] + 1);
            }
        double set_bytes = (double)per_set * bs * s.hkv * s.d * 4;
        nsets = std::max(1, std::min(32, (int)std::ceil(512e6 / set_bytes)));
        pool_blocks = per_set * nsets + 1;
        std::vector<int> ids(pool_blocks);
        for (size_t i = 0; i < pool_blocks; ++i) ids[i] = (int)i;
        std::shuffle(ids.begin(), ids.end(), rng);
        size_t next = 0;
        tables.assign(nsets, std::vector<int>((size_t)nseq * mb, -1));
        for (int st = 0; st < nsets; ++st)
            for (int sidx = 0; sidx < nseq; ++sidx)
                for (int b = 0; b <= last[sidx] / bs; ++b) tables[st][(size_t)sidx * mb + b] = ids[next++];
        size_t cache_elems = pool_blocks * bs * (size_t)s.hkv * s.d;
        CK(cudaMalloc(&k, cache_elems * 2));
        CK(cudaMalloc(&v, cache_elems * 2));
        fill_hash<<<4096, 256>>>(k, cache_elems, seed_k);
        fill_hash<<<4096, 256>>>(v, cache_elems, seed_v);
        CK(cudaGetLastError());
        size_t qn = (size_t)t * s.h * s.d;
        std::uniform_real_distribution<float> u(-2.f, 2.f);
        hq.resize(qn);
        std::vector<bf16> qb(qn);
        for (size_t i = 0; i < qn; ++i) {
            hq[i] = bf16_round(u(rng));
            qb[i] = __float2bfloat16_rn(hq[i]);
        }
        CK(cudaMalloc(&q, qn * 2));
        CK(cudaMalloc(&out, qn * 2));
        CK(cudaMalloc(&ref, qn * 2));
        CK(cudaMemcpy(q, qb.data(), qn * 2, cudaMemcpyHostToDevice));
        CK(cudaMalloc(&d_seq, t * 4));
        CK(cudaMalloc(&d_pos, t * 4));
        CK(cudaMemcpy(d_seq, seq.data(), t * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(d_pos, pos.data(), t * 4, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
        d_tables.resize(nsets);
        for (int st = 0; st < nsets; ++st) {
            CK(cudaMalloc(&d_tables[st], tables[st].size() * 4));
            CK(cudaMemcpy(d_tables[st], tables[st].data(), tables[st].size() * 4, cudaMemcpyHostToDevice));
        }
    }
    void free_all() {
        CK(cudaFree(k));
        CK(cudaFree(v));
        CK(cudaFree(q));
        CK(cudaFree(out));
        CK(cudaFree(ref));
        CK(cudaFree(d_seq));
        CK(cudaFree(d_pos));
        for (auto p : d_tables) CK(cudaFree(p));
    }
    // f64 reference of row i (all heads), table set 0: out[h * D + d]
    std::vector<double> reference(int i) const {
        std::vector<double> o((size_t)s.h * s.d, 0.0);
        if (pos[i] < 0) return o;
        const int g = s.h / s.hkv, p = pos[i];
        const double scale = 1.0 / std::sqrt((double)s.d);
        auto head = [&](int h) {
            std::vector<double> sc(p + 1);
            const int kvh = h / g;
            double mx = -1e300;
            for (int j = 0; j <= p; ++j) {
                size_t slot = (size_t)tables[0][(size_t)seq[i] * mb + j / bs] * bs + j % bs;
                size_t base = (slot * s.hkv + kvh) * s.d;
                double a = 0;
                for (int d = 0; d < s.d; ++d)
                    a += (double)hq[((size_t)i * s.h + h) * s.d + d] * bf16_round(hval(base + d, seed_k));
                sc[j] = a * scale;
                mx = std::max(mx, sc[j]);
            }
            double sum = 0;
            for (int j = 0; j <= p; ++j) sum += (sc[j] = std::exp(sc[j] - mx));
            for (int j = 0; j <= p; ++j) {
                size_t slot = (size_t)tables[0][(size_t)seq[i] * mb + j / bs] * bs + j % bs;
                size_t base = (slot * s.hkv + kvh) * s.d;
                for (int d = 0; d < s.d; ++d) o[(size_t)h * s.d + d] += sc[j] / sum * bf16_round(hval(base + d, seed_v));
            }
        };
        std::vector<std::thread> th;
        for (int h = 0; h < s.h; ++h) th.emplace_back(head, h);
        for (auto& x : th) x.join();
        return o;
    }
};

// ---- launchers (mirror crates/cuda/src/backend.rs) ---------------------------------------------

static int g_sms = 132;
static cudaStream_t g_stream;
static int32_t* g_counters = nullptr;  // zeroed, for the fused split-K merge
static float* g_ws = nullptr;          // workspace
static const size_t WS_BYTES = 64u << 20;

// set = which block-table set
using Launch = std::function<void(Problem&, int set)>;

static Launch old_kernel() {
    return [](Problem& P, int set) {
        const int blocks = P.t * P.s.h, d = P.s.d;
        int target = 2 * g_sms, n = 1;
        if (blocks < target) {
            int by_len = std::max(1, P.mb * P.bs / 64);
            n = std::min(std::min((target + blocks - 1) / blocks, 32), by_len);
            while (n > 1 && (size_t)blocks * n * (d + 2) * 4 > WS_BYTES) --n;
        }
        float* ws_ml = g_ws;
        float* ws_acc = g_ws + (size_t)blocks * n * 2;
        int chunks = d / 8, lpk = 1;
        while (lpk < chunks) lpk <<= 1;
        lpk = std::min(lpk, 32);
        attention_bf16<<<dim3(blocks, n), 128, 0, g_stream>>>(P.q, P.k, P.v, P.d_tables[set], P.d_seq, P.d_pos, P.out, ws_ml, ws_acc,
                                                 P.s.h, P.s.hkv, d, P.mb, P.bs, 1.f / sqrtf((float)d), 0, lpk);
        if (n > 1) attention_merge_bf16<<<blocks, 128, 0, g_stream>>>(ws_ml, ws_acc, P.out, d, n);
    };
}

// backend.rs decode_splits: columns = T * Hkv * ceil(G / 16), slots = occupancy * SMs
static int auto_splits(int columns, int slots) {
    if (columns < slots) return std::max(1, std::min(32, slots / columns));
    auto waves = [&](long n) { return (columns * n + slots - 1) / slots; };
    long best = 1;
    for (long n = 1; n <= 32; ++n)
        if (waves(n) * (64 + n) * best < waves(best) * (64 + best) * n) best = n;
    return (int)best;
}

template <int DMAX, int STAGES>
static int dec_slots(int d) {
    const size_t smem = (size_t)(16 + STAGES * 2 * 64) * (d + 8) * 2;
    CK(cudaFuncSetAttribute(dec_var<DMAX, STAGES>, cudaFuncAttributeMaxDynamicSharedMemorySize, 200 * 1024));
    int per_sm = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, dec_var<DMAX, STAGES>, 128, smem));
    return per_sm * g_sms;
}

// splits: 0 = auto (backend.rs), else fixed; fused: the in-kernel merge (else attention_merge)
template <int DMAX, int STAGES>
static Launch decode_kernel(int splits, bool fused, int* chosen = nullptr) {
    return [splits, fused, chosen](Problem& P, int set) {
        const int g = P.s.h / P.s.hkv, nhc = (g + 15) / 16, d = P.s.d;
        static int slots = dec_slots<DMAX, STAGES>(d);
        int n = splits ? splits : auto_splits(P.t * P.s.hkv * nhc, slots);
        while (n > 1 && (size_t)P.t * P.s.h * n * (d + 2) * 4 > WS_BYTES) --n;
        if (chosen) *chosen = n;
        const size_t smem = (size_t)(16 + STAGES * 2 * 64) * (d + 8) * 2;
        float* ws_ml = g_ws;
        float* ws_acc = g_ws + (size_t)P.t * P.s.h * n * 2;
        dec_var<DMAX, STAGES><<<dim3(n, P.s.hkv * nhc, P.t), 128, smem, g_stream>>>(
            P.q, P.k, P.v, P.d_tables[set], P.d_seq, P.d_pos, P.out, ws_ml, ws_acc, fused ? g_counters : nullptr,
            P.s.h, P.s.hkv, d, P.mb, P.bs, 1.f / sqrtf((float)d), 0);
        if (n > 1 && !fused) attention_merge_bf16<<<P.t * P.s.h, 128, 0, g_stream>>>(ws_ml, ws_acc, P.out, d, n);
    };
}

template <int DMAX, int STAGES, int MINB>
static Launch prefill_kernel() {
    return [](Problem& P, int set) {
        const int g = P.s.h / P.s.hkv, d = P.s.d;
        const int tt = std::max(1, 64 / g), nhc = (g + 63) / 64;
        const int cap = std::min(P.t, (P.t + tt - 1) / tt + P.nseq);
        const size_t smem = (size_t)(64 + STAGES * 2 * 64) * (d + 8) * 2;
        static bool attr = false;
        if (!attr) {
            CK(cudaFuncSetAttribute(pre_var<DMAX, STAGES, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    200 * 1024));
            attr = true;
        }
        int32_t* count = reinterpret_cast<int32_t*>(g_ws);
        int2* items = reinterpret_cast<int2*>(g_ws + 4);
        attention_plan<<<1, 1024, 0, g_stream>>>(P.d_seq, P.d_pos, P.t, tt, items, count);
        pre_var<DMAX, STAGES, MINB><<<dim3(cap, P.s.hkv * nhc), 128, smem, g_stream>>>(
            P.q, P.k, P.v, P.d_tables[set], P.d_seq, P.d_pos, P.out, items, count, P.s.h, P.s.hkv, d, P.mb, P.bs,
            1.f / sqrtf((float)d), 0);
    };
}

// ---- measure -----------------------------------------------------------------------------------

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

// Graph replay of R launches (rotating table sets), so host launch gaps stay out, as in the
// engine's captured decode step: median over 7 replays of (replay time / R).
static double time_us(Problem& P, const Launch& f) {
    const int R = 20;
    for (int i = 0; i < 3; ++i) f(P, i % P.nsets);
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaGetLastError());
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < R; ++i) f(P, i % P.nsets);
    CK(cudaStreamEndCapture(g_stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(exec, g_stream));
    std::vector<double> ts;
    for (int i = 0; i < 7; ++i) {
        CK(cudaEventRecord(a, g_stream));
        CK(cudaGraphLaunch(exec, g_stream));
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        ts.push_back(ms * 1e3 / R);
    }
    CK(cudaGetLastError());
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    return median(ts);
}

static int g_fail = 0;

// Run once on set 0 (output poisoned first), compare sampled rows with the CPU and all rows
// with `ref` (if given). Returns the max abs error vs the CPU.
static double check(Problem& P, const Launch& f, const std::vector<int>& rows,
                    const std::vector<std::vector<double>>& want, bool vs_ref, double* max_vs_ref) {
    const size_t n = (size_t)P.t * P.s.h * P.s.d;
    CK(cudaMemsetAsync(P.out, 0x7f, n * 2, g_stream));  // poison: 0x7f7f is a huge bf16
    f(P, 0);
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaGetLastError());
    std::vector<bf16> got(n), ref;
    CK(cudaMemcpy(got.data(), P.out, n * 2, cudaMemcpyDeviceToHost));
    double err = 0;
    bool bad = false;
    for (size_t ri = 0; ri < rows.size(); ++ri) {
        const int i = rows[ri];
        for (size_t e = 0; e < (size_t)P.s.h * P.s.d; ++e) {
            const double g = bf16_to_f(got[(size_t)i * P.s.h * P.s.d + e]), w = want[ri][e];
            const double d = std::fabs(g - w);
            if (!(d <= 1.6e-2 + 1.6e-2 * std::fabs(w))) bad = true;
            if (!(d <= err)) err = d;  // NaN sticks
            if (P.pos[i] < 0 && g != 0.0) bad = true;
        }
    }
    if (vs_ref) {
        ref.resize(n);
        CK(cudaMemcpy(ref.data(), P.ref, n * 2, cudaMemcpyDeviceToHost));
        double m = 0;
        for (size_t e = 0; e < n; ++e) {
            const double d = std::fabs((double)bf16_to_f(got[e]) - bf16_to_f(ref[e]));
            if (!(d <= m)) m = d;
        }
        *max_vs_ref = m;
        if (!(m <= 3e-2)) bad = true;
    }
    if (bad) ++g_fail;
    return bad ? -err - 1 : err;
}

struct Row {
    std::string what;
    double us, gbs, pct, tflops, err, err_ref;
};
static std::vector<Row> g_rows;
// per problem: baseline and best variant
struct Best {
    std::string what, best;
    double old_us, us, gbs, pct, tflops;
};
static std::vector<Best> g_best;
static double g_copy_gbs = 0;

static void run_variants(Problem& P, const char* what, const std::vector<std::pair<std::string, Launch>>& vs,
                         const std::vector<int>& rows) {
    std::vector<std::vector<double>> want;
    for (int i : rows) want.push_back(P.reference(i));
    // baseline first: its output is the all-rows reference for the others
    double best = 1e30;
    for (size_t vi = 0; vi < vs.size(); ++vi) {
        double vr = 0;
        const double err = check(P, vs[vi].second, rows, want, vi > 0, &vr);
        if (vi == 0) CK(cudaMemcpy(P.ref, P.out, (size_t)P.t * P.s.h * P.s.d * 2, cudaMemcpyDeviceToDevice));
        if (vi > 0) {  // twice more on other data, then set 0 again: bit-identical (deterministic)
            std::vector<bf16> a((size_t)P.t * P.s.h * P.s.d), b(a.size());
            CK(cudaMemcpy(a.data(), P.out, a.size() * 2, cudaMemcpyDeviceToHost));
            vs[vi].second(P, P.nsets - 1);
            vs[vi].second(P, 0);
            CK(cudaStreamSynchronize(g_stream));
            CK(cudaMemcpy(b.data(), P.out, b.size() * 2, cudaMemcpyDeviceToHost));
            if (memcmp(a.data(), b.data(), a.size() * 2) != 0) {
                printf("%s %s: NOT DETERMINISTIC  FAIL\n", what, vs[vi].first.c_str());
                ++g_fail;
            }
        }
        const double us = time_us(P, vs[vi].second);
        const double gbs = P.kv_bytes / us / 1e3;
        Row r{std::string(what) + " " + vs[vi].first, us, gbs, 100.0 * gbs / g_copy_gbs, P.flops / us / 1e6, err, vr};
        if (vi == 0) g_best.push_back({what, "", us, 1e30, 0, 0, 0});
        if (vi > 0 && us < best) {
            best = us;
            g_best.back().best = vs[vi].first;
            g_best.back().us = us;
            g_best.back().gbs = gbs;
            g_best.back().pct = r.pct;
            g_best.back().tflops = r.tflops;
        }
        printf("%-58s %9.1f us %7.0f GB/s %5.1f%% %7.1f TF/s err %.2e vs-base %.2e%s\n", r.what.c_str(), r.us, r.gbs,
               r.pct, r.tflops, std::fabs(err), vr, err < 0 ? "  FAIL" : "");
        fflush(stdout);
        g_rows.push_back(r);
    }
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "quick";
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    g_sms = prop.multiProcessorCount;
    printf("device %s, %d SMs, L2 %d MB, smem/block opt-in %zu KB\n", prop.name, g_sms, prop.l2CacheSize >> 20,
           prop.sharedMemPerBlockOptin >> 10);
    CK(cudaMalloc(&g_ws, WS_BYTES));
    CK(cudaMalloc(&g_counters, 4 << 16));
    CK(cudaMemset(g_counters, 0, 4 << 16));
    CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    {  // copy bandwidth, bytes read + written
        const size_t n = 1ull << 30;
        void *a, *b;
        CK(cudaMalloc(&a, n));
        CK(cudaMalloc(&b, n));
        CK(cudaMemset(a, 1, n));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        std::vector<double> ts;
        for (int i = 0; i < 13; ++i) {
            CK(cudaEventRecord(e0));
            CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            if (i >= 3) ts.push_back(ms);
        }
        g_copy_gbs = 2.0 * n / (median(ts) * 1e-3) / 1e9;
        printf("copy bandwidth (read + write) %.0f GB/s\n", g_copy_gbs);
        CK(cudaFree(a));
        CK(cudaFree(b));
    }
    std::mt19937_64 rng(12345);
    const Shape shapes[2] = {{"1B", 32, 8, 64}, {"8B", 32, 8, 128}};

    // A. decode
    printf("\n== A. decode: every row at position ctx - 1, bs 16; us per layer (attention + merge)\n");
    const std::vector<int> ctxs = quick ? std::vector<int>{8192} : std::vector<int>{512, 1024, 2048, 4096, 8192};
    for (const Shape& s : shapes)
        for (int batch : {1, 8, 64})
            for (int ctx : ctxs) {
                Problem P;
                P.s = s;
                for (int b = 0; b < batch; ++b) P.seq.push_back(b), P.pos.push_back(ctx - 1);
                P.build(rng);
                std::vector<std::pair<std::string, Launch>> vs{{"old", old_kernel()}};
                int n = 1;  // the auto split count, for the fixed-n neighbours
                if (s.d == 64) {
                    decode_kernel<64, 2>(0, true, &n)(P, 0);
                    vs.push_back({"dec s2 auto fused", decode_kernel<64, 2>(0, true)});
                    vs.push_back({"dec s2 auto merge-kernel", decode_kernel<64, 2>(0, false)});
                    vs.push_back({"dec s3 auto merge-kernel", decode_kernel<64, 3>(0, false)});
                    vs.push_back({"dec s2 n/2 merge-kernel", decode_kernel<64, 2>(std::max(1, n / 2), false)});
                    vs.push_back({"dec s2 2n merge-kernel", decode_kernel<64, 2>(std::min(32, 2 * n), false)});
                } else {
                    decode_kernel<128, 2>(0, true, &n)(P, 0);
                    vs.push_back({"dec s2 auto fused", decode_kernel<128, 2>(0, true)});
                    vs.push_back({"dec s2 auto merge-kernel", decode_kernel<128, 2>(0, false)});
                    vs.push_back({"dec s3 auto merge-kernel", decode_kernel<128, 3>(0, false)});
                    vs.push_back({"dec s2 n/2 merge-kernel", decode_kernel<128, 2>(std::max(1, n / 2), false)});
                    vs.push_back({"dec s2 2n merge-kernel", decode_kernel<128, 2>(std::min(32, 2 * n), false)});
                }
                CK(cudaStreamSynchronize(g_stream));
                printf("# auto splits n=%d\n", n);
                char what[96];
                snprintf(what, sizeof what, "%s b%d ctx%d", s.name, batch, ctx);
                run_variants(P, what, vs, {0, batch - 1});
                P.free_all();
            }

    // B. large decode batches: decode kernel vs the plan + prefill path
    printf("\n== B. large decode batches, ctx 4096: decode kernel vs prefill kernel\n");
    for (const Shape& s : shapes)
        for (int batch : {64, 128, 256}) {
            Problem P;
            P.s = s;
            for (int b = 0; b < batch; ++b) P.seq.push_back(b), P.pos.push_back(4095);
            P.build(rng);
            std::vector<std::pair<std::string, Launch>> vs{{"old", old_kernel()}};
            if (s.d == 64) {
                vs.push_back({"dec s2 auto merge-kernel", decode_kernel<64, 2>(0, false)});
                vs.push_back({"pre s2", prefill_kernel<64, 2, 1>()});
                vs.push_back({"pre s2 minb4", prefill_kernel<64, 2, 4>()});
            } else {
                vs.push_back({"dec s2 auto merge-kernel", decode_kernel<128, 2>(0, false)});
                vs.push_back({"pre s2", prefill_kernel<128, 2, 1>()});
                vs.push_back({"pre s2 minb2", prefill_kernel<128, 2, 2>()});
            }
            char what[96];
            snprintf(what, sizeof what, "%s b%d ctx4096", s.name, batch);
            run_variants(P, what, vs, {0, batch - 1});
            P.free_all();
        }

    // C. prefill
    printf("\n== C. prefill (causal); TF/s = 4 H D (attended keys) per row\n");
    struct Case {
        const char* name;
        std::vector<std::pair<int, int>> chunks;  // (start, len) per sequence
        int decode_rows, decode_pos;
    };
    std::vector<Case> cases = {
        {"fresh 512", {{0, 512}}, 0, 0},
        {"fresh 2048", {{0, 2048}}, 0, 0},
        {"fresh 4096", {{0, 4096}}, 0, 0},
        {"chunk 512 @4096", {{4096, 512}}, 0, 0},
        {"4 seqs x 512", {{0, 512}, {0, 512}, {0, 512}, {0, 512}}, 0, 0},
        {"chunk 2048 + 64 decodes @4096", {{0, 2048}}, 64, 4095},
        {"chunk 64 @8192", {{8192, 64}}, 0, 0},
    };
    if (quick) cases.resize(2);
    for (const Shape& s : shapes)
        for (const Case& c : cases) {
            Problem P;
            P.s = s;
            std::vector<int> rows;
            int sq = 0;
            for (auto [start, len] : c.chunks) {
                rows.push_back(P.seq.size());
                for (int j = 0; j < len; ++j) P.seq.push_back(sq), P.pos.push_back(start + j);
                rows.push_back(P.seq.size() - 1);
                ++sq;
            }
            for (int i = 0; i < c.decode_rows; ++i) P.seq.push_back(sq++), P.pos.push_back(c.decode_pos);
            if (c.decode_rows) rows.push_back(P.seq.size() - 1);
            P.seq.push_back(0), P.pos.push_back(-1);  // a padded row at the end
            rows.push_back(P.seq.size() - 1);
            rows.push_back(rows[0] + 37 < (int)P.seq.size() ? rows[0] + 37 : 0);
            P.build(rng);
            std::vector<std::pair<std::string, Launch>> vs{{"old", old_kernel()}};
            if (s.d == 64) {
                vs.push_back({"pre s2", prefill_kernel<64, 2, 1>()});
                vs.push_back({"pre s2 minb4", prefill_kernel<64, 2, 4>()});
                vs.push_back({"pre s3 minb3", prefill_kernel<64, 3, 3>()});
            } else {
                vs.push_back({"pre s2", prefill_kernel<128, 2, 1>()});
                vs.push_back({"pre s2 minb2", prefill_kernel<128, 2, 2>()});
            }
            if (P.t <= 64)
                vs.push_back({"dec s2 auto merge-kernel",
                              s.d == 64 ? decode_kernel<64, 2>(0, false) : decode_kernel<128, 2>(0, false)});
            char what[96];
            snprintf(what, sizeof what, "%s %s", s.name, c.name);
            run_variants(P, what, vs, rows);
            P.free_all();
        }
    printf("\n== best variant per problem (copy bandwidth %.0f GB/s)\n", g_copy_gbs);
    printf("%-34s %9s | %-18s %9s %7s %6s %7s\n", "problem", "old us", "best", "us", "GB/s", "%copy", "TF/s");
    for (const Best& b : g_best)
        printf("%-34s %9.1f | %-18s %9.1f %7.0f %5.1f%% %7.1f\n", b.what.c_str(), b.old_us, b.best.c_str(), b.us, b.gbs,
               b.pct, b.tflops);
    printf("\n== summary: %zu measurements, %d FAIL\n", g_rows.size(), g_fail);
    return g_fail ? 1 : 0;
}
