// gemv_sweep.cu: scratch timing sweep + CPU check of the decode GEMV (not built by cargo;
// crates/cuda/dev/build.sh compiles it with the pinned nvcc into .gpu/gemv_sweep).
//
// It #includes the real kernels/gemv.cu and instantiates bf16 variants of its template
// (R rows of W a warp x U 16-byte chunks a row a step) next to the shipped tiers, for every
// projection shape of the six presets (qkv, o_proj, gate_up, down; the LM head with f32
// out) at M = 1, 2, 4, 8 rows of x. Weights rotate over copies totalling >= 512 MB (ten
// times the 50 MB L2: cold reads, as in a decode step). Every variant's output is checked
// against an f64 CPU reference on 64 sampled outputs (FAIL beyond 2^-7 relative to the row's
// absolute sum), and the accumulate path (y += x w^T) on the shipped kernel. Timing: 20
// launches in one CUDA graph, median of 5 replays; GB/s on the weight bytes, % of a
// device-to-device copy measured in the same run.
//
// A second table times the fused decoder projections (gemv.cu `gemv_rms_bf16_m*`,
// `gemv_rms_silu_bf16_m*`) against the kernels they replace in the same graph (rms_norm.cu +
// the shipped GEMV, + silu_mul.cu for gate_up) at the qkv and gate_up shapes, M = 1, 2,
// checked against an f64 reference of norm -> projection (-> silu(gate) * up).
//
// A third table times the tensor-core skinny GEMM (gemv_tc.cuh, scratch) at M = 3, 4, 8, 16
// against the shipped CUDA-core tier, with the same check.
//
// Usage: gemv_sweep [quick]   (quick: 1B and 8B only). A best-variant table comes last.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../kernels/gemv.cu"
#include "../kernels/rms_norm.cu"
#include "../kernels/silu_mul.cu"
#include "../kernels/gemv_tc.cuh"

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t e_ = (x);                                                                  \
        if (e_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

typedef __nv_bfloat16 bf16;

template <typename O, int MT, int R, int U>
__global__ void __launch_bounds__(gemv_cu::WARPS * 32)
    gemv_var(const bf16* x, const bf16* w, O* y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx,
                   uint32_t ldy, uint32_t acc, const bf16*, float, const bf16*, uint32_t ksplit) {
    if (ksplit != 1) __trap();  // the variants are unsplit
    gemv_cu::gemv_impl<bf16, O, MT, R, U, false, gemv_cu::ACT_NONE, 1>(x, w, y, M, N, K, ldx, ldy, acc, nullptr, 0.f,
                                                                       nullptr);
}

// every gemv.cu entry: (x, w, y, M, N, K, ldx, ldy, accumulate, nw, eps, wu, ksplit)
typedef void (*KernBf16)(const bf16*, const bf16*, bf16*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t,
                         const bf16*, float, const bf16*, uint32_t);
typedef void (*KernF32)(const bf16*, const bf16*, float*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t,
                        const bf16*, float, const bf16*, uint32_t);

struct Variant {
    const char* name;
    int r;
    KernBf16 k[4];  // tiers m1, m2, m4, m8
    KernF32 kf[4];
};

#define TIERS(R, U)                                                                                             \
    {                                                                                                            \
        "R" #R "U" #U, R,                                                                                        \
            {gemv_var<bf16, 1, R, U>, gemv_var<bf16, 2, R, U>, gemv_var<bf16, 4, R, U>,          \
             gemv_var<bf16, 8, R, U>},                                                                     \
            {gemv_var<float, 1, R, U>, gemv_var<float, 2, R, U>, gemv_var<float, 4, R, U>,       \
             gemv_var<float, 8, R, U>}                                                                     \
    }
static const Variant VARIANTS[] = {
    // gemv.cu's tiers at M = 1, 2; at 4 and 8 its former tiers (R4U1), which gemv_tc.cu replaced
    {"shipped", 0, {gemv_bf16_m1, gemv_bf16_m2, gemv_var<bf16, 4, 4, 1>, gemv_var<bf16, 8, 4, 1>},
     {gemv_bf16_f32_m1, gemv_bf16_f32_m2, gemv_var<float, 4, 4, 1>, gemv_var<float, 8, 4, 1>}},
    TIERS(1, 4), TIERS(1, 8), TIERS(2, 2), TIERS(2, 4), TIERS(4, 1), TIERS(4, 2),
};
// the shipped R per tier (gemv.cu's instantiation lines): same-dtype, f32 output
static const int SHIPPED_R[4] = {1, 1, 4, 4};
static const int SHIPPED_R_F32[4] = {2, 4, 4, 4};
static const int TIER_M[4] = {1, 2, 4, 8};

struct Shape {
    const char* preset;
    const char* op;
    int n, k;
    bool f32_out;
};

static std::vector<Shape> shapes(bool quick) {
    struct P {
        const char* name;
        int v, c, i, h, kv, d;
    };
    const P ps[] = {{"smollm2-135m", 49152, 576, 1536, 9, 3, 64},   {"qwen2.5-0.5b", 151936, 896, 4864, 14, 2, 64},
                    {"llama-3.2-1b", 128256, 2048, 8192, 32, 8, 64}, {"qwen2.5-1.5b", 151936, 1536, 8960, 12, 2, 128},
                    {"qwen2.5-7b", 152064, 3584, 18944, 28, 4, 128}, {"llama-3.1-8b", 128256, 4096, 14336, 32, 8, 128}};
    std::vector<Shape> out;
    for (const P& p : ps) {
        if (quick && strcmp(p.name, "llama-3.2-1b") != 0 && strcmp(p.name, "llama-3.1-8b") != 0) continue;
        out.push_back({p.name, "qkv", (p.h + 2 * p.kv) * p.d, p.c, false});
        out.push_back({p.name, "o_proj", p.c, p.h * p.d, false});
        out.push_back({p.name, "gate_up", 2 * p.i, p.c, false});
        out.push_back({p.name, "down", p.c, p.i, false});
        out.push_back({p.name, "lm_head", p.v, p.c, true});
    }
    return out;
}

static cudaStream_t g_stream;

// Median us of one launch of `launch(i)` over 20 captured launches (i = 0..19).
template <typename F>
static double time_graph(F launch) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < 20; ++i) launch(i);
    CK(cudaStreamEndCapture(g_stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaGraphLaunch(exec, g_stream));
    std::vector<double> t;
    for (int rep = 0; rep < 5; ++rep) {
        CK(cudaEventRecord(a, g_stream));
        CK(cudaGraphLaunch(exec, g_stream));
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1e3 / 20);
    }
    CK(cudaGraphExecDestroy(exec));
    CK(cudaGraphDestroy(graph));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[2];
}

__global__ void fill_bf16(bf16* p, size_t n, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = __float2bfloat16_rn(scale * ((h & 0xffffff) / 8388608.f - 1.f));
    }
}

static float host_bf16(bf16 v) {
    uint16_t b;
    memcpy(&b, &v, 2);
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Rows `rows` of the [N, k] bf16 matrix w, on the host as floats (the references' weights).
static std::vector<std::vector<float>> host_rows(const bf16* w, int k, const std::vector<int>& rows) {
    std::vector<std::vector<float>> out(rows.size(), std::vector<float>(k));
    std::vector<bf16> tmp(k);
    for (size_t i = 0; i < rows.size(); ++i) {
        CK(cudaMemcpy(tmp.data(), w + (size_t)rows[i] * k, k * 2, cudaMemcpyDeviceToHost));
        for (int j = 0; j < k; ++j) out[i][j] = host_bf16(tmp[j]);
    }
    return out;
}

// The worst error of the m x n output hy (bf16, or f32 when f32_out) at the sampled columns
// `rows` against the f64 product of x (hx: rows of k) and those weight rows (hw), relative
// to each sum's absolute mass.
static double worst_rel_error(const std::vector<char>& hy, bool f32_out, int m, int n, int k,
                              const std::vector<bf16>& hx, const std::vector<int>& rows,
                              const std::vector<std::vector<float>>& hw) {
    double worst = 0;
    for (int mm = 0; mm < m; ++mm)
        for (size_t i = 0; i < rows.size(); ++i) {
            double ref = 0, mag = 0;
            for (int j = 0; j < k; ++j) {
                const double p = (double)host_bf16(hx[(size_t)mm * k + j]) * hw[i][j];
                ref += p;
                mag += fabs(p);
            }
            const size_t o = (size_t)mm * n + rows[i];
            const double got = f32_out ? ((const float*)hy.data())[o] : host_bf16(((const bf16*)hy.data())[o]);
            worst = std::max(worst, fabs(got - ref) / (mag + 1e-30));
        }
    return worst;
}

// ---- fused decoder projections against the kernels they replace ---------------------------

// An f64 reference of one output column: the norm, the projection by the gate (or only)
// row, and with an up row silu(gate) * up.
static double fused_ref(const std::vector<float>& xr, const std::vector<float>& nw, const std::vector<float>& wg,
                        const std::vector<float>* wu, float eps) {
    const size_t k = xr.size();
    double ss = 0;
    for (float v : xr) ss += (double)v * v;
    const double inv = 1.0 / sqrt(ss / k + eps);
    double g = 0, u = 0;
    for (size_t j = 0; j < k; ++j) {
        const double xn = xr[j] * inv * nw[j];
        g += xn * wg[j];
        if (wu) u += xn * (*wu)[j];
    }
    if (!wu) return g;
    return g / (1 + exp(-g)) * u;
}

static bool fused_table(bool quick, double copy_gbs) {
    bool all_ok = true;
    printf("\nfused projections (norm before, silu(gate) * up after) against the kernels they replace\n");
    printf("| preset | op | N | K | M | unfused us | fused us | fused %% copy | check |\n|---|---|---|---|---|---|---|---|---|\n");
    const float eps = 1e-5f;
    for (const Shape& s : shapes(quick)) {
        const bool gated = strcmp(s.op, "gate_up") == 0;
        if (!gated && strcmp(s.op, "qkv") != 0) continue;
        const int n_out = gated ? s.n / 2 : s.n;  // gate_up: s.n = 2I rows [gate; up], I outputs
        const size_t wn = (size_t)s.n * s.k, wbytes = wn * 2;
        const int copies = (int)std::max<size_t>(1, std::min<size_t>(20, ((512ull << 20) + wbytes - 1) / wbytes));
        bf16 *w, *x, *nw, *xn, *gu, *y;
        CK(cudaMalloc(&w, wbytes * copies));
        CK(cudaMalloc(&x, (size_t)2 * s.k * 2));
        CK(cudaMalloc(&nw, (size_t)s.k * 2));
        CK(cudaMalloc(&xn, (size_t)2 * s.k * 2));
        CK(cudaMalloc(&gu, (size_t)2 * s.n * 2));
        CK(cudaMalloc(&y, (size_t)2 * n_out * 2));
        fill_bf16<<<1024, 256, 0, g_stream>>>(w, wn * copies, 23u, 1.f / sqrtf((float)s.k));
        fill_bf16<<<64, 256, 0, g_stream>>>(x, (size_t)2 * s.k, 5u, 2.f);
        fill_bf16<<<64, 256, 0, g_stream>>>(nw, (size_t)s.k, 7u, 1.f);
        CK(cudaStreamSynchronize(g_stream));
        std::vector<bf16> hx((size_t)2 * s.k), hn(s.k);
        CK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(hn.data(), nw, hn.size() * 2, cudaMemcpyDeviceToHost));
        std::vector<float> hnf(s.k);
        for (int j = 0; j < s.k; ++j) hnf[j] = host_bf16(hn[j]);
        std::mt19937 rng(s.n * 7 + s.k);
        for (int m = 1; m <= 2; ++m) {
            const unsigned rn_block = std::min(1024u, std::max(32u, (unsigned)(s.k / 4)));
            const unsigned grid_plain = (s.n + gemv_cu::WARPS - 1) / gemv_cu::WARPS;  // R = 1 at M <= 2
            const unsigned grid_fused = (n_out + gemv_cu::WARPS - 1) / gemv_cu::WARPS;
            // silu_mul's operands as the decoder passes them: dst [m, I], gate and up [m, I] views
            // of the [m, 2I] projection (contiguous at m = 1)
            StridedMeta meta{};
            meta.num_operands = 3;
            if (m == 1) {
                meta.rank = 1;
                meta.numel = n_out;
                meta.flags = ENCORE_META_ALL_CONTIGUOUS;
                meta.dims[0] = n_out;
                for (int o = 0; o < 3; ++o) meta.strides[o][0] = 1;
            } else {
                meta.rank = 2;
                meta.numel = 2 * n_out;
                meta.dims[0] = 2;
                meta.dims[1] = n_out;
                meta.strides[0][0] = n_out;
                meta.strides[1][0] = meta.strides[2][0] = s.n;
                for (int o = 0; o < 3; ++o) meta.strides[o][1] = 1;
            }
            KernBf16 plain = m == 1 ? gemv_bf16_m1 : gemv_bf16_m2;
            KernBf16 fused = gated ? (m == 1 ? gemv_rms_silu_bf16_m1 : gemv_rms_silu_bf16_m2)
                                   : (m == 1 ? gemv_rms_bf16_m1 : gemv_rms_bf16_m2);
            auto unfused = [&](int i) {
                const bf16* wi = w + (size_t)(i % copies) * wn;
                rms_norm_bf16<<<m, rn_block, 0, g_stream>>>(x, nw, xn, s.k, s.k, s.k, eps);
                bf16* out = gated ? gu : y;
                plain<<<grid_plain, gemv_cu::WARPS * 32, 0, g_stream>>>(xn, wi, out, m, s.n, s.k, s.k, s.n, 0, nullptr,
                                                                        0.f, nullptr, 1u);
                if (gated) silu_mul_bf16<<<(m * n_out + 255) / 256, 256, 0, g_stream>>>(gu, gu + n_out, y, meta);
            };
            auto fused_launch = [&](int i) {
                const bf16* wi = w + (size_t)(i % copies) * wn;
                fused<<<grid_fused, gemv_cu::WARPS * 32, 0, g_stream>>>(x, wi, y, m, n_out, s.k, s.k, n_out, 0, nw, eps,
                                                                        gated ? wi + (size_t)n_out * s.k : nullptr, 1u);
            };
            // the fused output (copy 0) on 32 sampled columns against the f64 reference
            fused_launch(0);
            CK(cudaStreamSynchronize(g_stream));
            CK(cudaGetLastError());
            std::vector<bf16> hy((size_t)m * n_out);
            CK(cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost));
            double worst = 0;
            for (int mm = 0; mm < m; ++mm) {
                std::vector<float> xr(s.k);
                for (int j = 0; j < s.k; ++j) xr[j] = host_bf16(hx[(size_t)mm * s.k + j]);
                for (int t = 0; t < 32; ++t) {
                    const int n = t == 0 ? n_out - 1 : (int)(rng() % n_out);
                    std::vector<bf16> tg(s.k), tu(s.k);
                    CK(cudaMemcpy(tg.data(), w + (size_t)n * s.k, s.k * 2, cudaMemcpyDeviceToHost));
                    std::vector<float> wg(s.k), wu(s.k);
                    for (int j = 0; j < s.k; ++j) wg[j] = host_bf16(tg[j]);
                    if (gated) {
                        CK(cudaMemcpy(tu.data(), w + (size_t)(n_out + n) * s.k, s.k * 2, cudaMemcpyDeviceToHost));
                        for (int j = 0; j < s.k; ++j) wu[j] = host_bf16(tu[j]);
                    }
                    const double ref = fused_ref(xr, hnf, wg, gated ? &wu : nullptr, eps);
                    const double got = host_bf16(hy[(size_t)mm * n_out + n]);
                    worst = std::max(worst, fabs(got - ref) / (fabs(ref) + 1e-2));
                }
            }
            const bool ok = worst <= 1.0 / 32;  // bf16 rounding of gate, up and the output
            all_ok &= ok;
            const double us_unfused = time_graph(unfused), us_fused = time_graph(fused_launch);
            printf("| %s | %s | %d | %d | %d | %.2f | %.2f | %.0f | %s %.1e |\n", s.preset, s.op, n_out, s.k, m,
                   us_unfused, us_fused, 100 * (wbytes / us_fused / 1e3) / copy_gbs, ok ? "ok" : "FAIL", worst);
        }
        for (void* p : {(void*)w, (void*)x, (void*)nw, (void*)xn, (void*)gu, (void*)y}) CK(cudaFree(p));
    }
    return all_ok;
}

// ---- tensor-core skinny GEMM (gemv_tc.cuh) against the CUDA-core GEMV -----------------------

template <typename O, int NT, int KW, int U>
__global__ void __launch_bounds__(KW * 32)
    tc_var(const bf16* x, const bf16* w, O* y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy,
           uint32_t acc) {
    gemv_tc::tc_gemv_impl<bf16, O, NT, KW, U>(x, w, y, M, N, K, ldx, ldy, acc);
}
typedef void (*TcBf16)(const bf16*, const bf16*, bf16*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t);
typedef void (*TcF32)(const bf16*, const bf16*, float*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t);
struct TcVariant {
    const char* name;
    int kw;
    TcBf16 k[2];  // NT = 1 (M <= 8), 2 (M <= 16)
    TcF32 kf[2];
};
#define TC(KW, U) \
    {"tcK" #KW "U" #U, KW, {tc_var<bf16, 1, KW, U>, tc_var<bf16, 2, KW, U>}, {tc_var<float, 1, KW, U>, tc_var<float, 2, KW, U>}}
static const TcVariant TC_VARIANTS[] = {TC(2, 2), TC(2, 4), TC(4, 2), TC(4, 4), TC(8, 2), TC(8, 4)};

static bool tc_table(bool quick, double copy_gbs) {
    printf("\ntensor-core skinny GEMM (gemv_tc.cuh) against the shipped CUDA-core GEMV tier\n");
    printf("| preset | op | N | K | M | variant | us | %% copy | check |\n|---|---|---|---|---|---|---|---|---|\n");
    bool all_ok = true;
    const int MS[] = {3, 4, 8, 16};
    for (const Shape& s : shapes(quick)) {
        const size_t wn = (size_t)s.n * s.k, wbytes = wn * 2, es = s.f32_out ? 4 : 2;
        const int copies = (int)std::max<size_t>(1, std::min<size_t>(20, ((512ull << 20) + wbytes - 1) / wbytes));
        bf16 *w, *x;
        void* y;
        CK(cudaMalloc(&w, wbytes * copies));
        CK(cudaMalloc(&x, (size_t)16 * s.k * 2));
        CK(cudaMalloc(&y, (size_t)16 * s.n * es));
        fill_bf16<<<1024, 256, 0, g_stream>>>(w, wn * copies, 29u, 1.f / sqrtf((float)s.k));
        fill_bf16<<<256, 256, 0, g_stream>>>(x, (size_t)16 * s.k, 31u, 1.f);
        std::vector<bf16> hx((size_t)16 * s.k);
        CK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
        std::mt19937 rng(s.n * 13 + s.k);
        std::vector<int> rows(48);
        for (int& r : rows) r = rng() % s.n;
        rows[0] = s.n - 1;
        const std::vector<std::vector<float>> hw = host_rows(w, s.k, rows);
        for (int m : MS) {
            // the check: 48 sampled columns of every row of x against f64, relative to the absolute sum
            auto check = [&](auto launch0) {
                CK(cudaMemsetAsync(y, 0, (size_t)16 * s.n * es, g_stream));
                launch0();
                CK(cudaStreamSynchronize(g_stream));
                CK(cudaGetLastError());
                std::vector<char> hy((size_t)m * s.n * es);
                CK(cudaMemcpy(hy.data(), y, hy.size(), cudaMemcpyDeviceToHost));
                return worst_rel_error(hy, s.f32_out, m, s.n, s.k, hx, rows, hw);
            };
            auto report = [&](const char* name, double us, double worst) {
                const bool ok = worst <= 1.0 / 128;
                all_ok &= ok;
                printf("| %s | %s | %d | %d | %d | %s | %.2f | %.0f | %s %.1e |\n", s.preset, s.op, s.n, s.k, m, name, us,
                       100 * (wbytes / us / 1e3) / copy_gbs, ok ? "ok" : "FAIL", worst);
            };
            if (m <= 8) {  // the shipped CUDA-core tier
                const int tier = m <= 4 ? 2 : 3;
                const int r = (s.f32_out ? SHIPPED_R_F32 : SHIPPED_R)[tier];
                const unsigned grid = (s.n + r * gemv_cu::WARPS - 1) / (r * gemv_cu::WARPS);
                auto launch = [&](int i) {
                    const bf16* wi = w + (size_t)(i % copies) * wn;
                    if (s.f32_out)
                        VARIANTS[0].kf[tier]<<<grid, gemv_cu::WARPS * 32, 0, g_stream>>>(
                            x, wi, (float*)y, m, s.n, s.k, s.k, s.n, 0, nullptr, 0.f, nullptr, 1u);
                    else
                        VARIANTS[0].k[tier]<<<grid, gemv_cu::WARPS * 32, 0, g_stream>>>(
                            x, wi, (bf16*)y, m, s.n, s.k, s.k, s.n, 0, nullptr, 0.f, nullptr, 1u);
                };
                const double worst = check([&] { launch(0); });
                report("gemv.cu", time_graph(launch), worst);
            }
            for (const TcVariant& v : TC_VARIANTS) {
                const int nt = m <= 8 ? 0 : 1;
                const unsigned grid = (s.n + 15) / 16;
                auto launch = [&](int i) {
                    const bf16* wi = w + (size_t)(i % copies) * wn;
                    if (s.f32_out)
                        v.kf[nt]<<<grid, v.kw * 32, 0, g_stream>>>(x, wi, (float*)y, m, s.n, s.k, s.k, s.n, 0);
                    else
                        v.k[nt]<<<grid, v.kw * 32, 0, g_stream>>>(x, wi, (bf16*)y, m, s.n, s.k, s.k, s.n, 0);
                };
                const double worst = check([&] { launch(0); });
                report(v.name, time_graph(launch), worst);
            }
        }
        CK(cudaFree(w));
        CK(cudaFree(x));
        CK(cudaFree(y));
    }
    return all_ok;
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    CK(cudaStreamCreate(&g_stream));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    // copy bandwidth (read + write), 1 GB
    double copy_gbs;
    {
        const size_t bytes = 1ull << 30;
        void *a, *b;
        CK(cudaMalloc(&a, bytes));
        CK(cudaMalloc(&b, bytes));
        const double us = time_graph([&](int) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, g_stream)); });
        copy_gbs = 2.0 * bytes / us / 1e3;
        CK(cudaFree(a));
        CK(cudaFree(b));
    }
    printf("copy bandwidth (read + write): %.0f GB/s\n\n", copy_gbs);
    printf("| preset | op | N | K | M | variant | us | GB/s | %% copy | check |\n|---|---|---|---|---|---|---|---|---|---|\n");
    std::vector<std::string> best_lines;
    bool all_ok = true;
    for (const Shape& s : shapes(quick)) {
        const size_t wn = (size_t)s.n * s.k;
        const size_t wbytes = wn * 2;
        const int copies = (int)std::max<size_t>(1, std::min<size_t>(20, ((512ull << 20) + wbytes - 1) / wbytes));
        bf16* w;
        CK(cudaMalloc(&w, wbytes * copies));
        fill_bf16<<<1024, 256, 0, g_stream>>>(w, wn * copies, 17u, 1.f / sqrtf((float)s.k));
        bf16* x;
        CK(cudaMalloc(&x, (size_t)8 * s.k * 2));
        fill_bf16<<<256, 256, 0, g_stream>>>(x, (size_t)8 * s.k, 99u, 1.f);
        void* y;
        const size_t es = s.f32_out ? 4 : 2;
        CK(cudaMalloc(&y, (size_t)8 * s.n * es));
        // host copies of x and the sampled weight rows for the reference
        std::vector<bf16> hx((size_t)8 * s.k);
        CK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
        std::mt19937 rng(s.n * 31 + s.k);
        std::vector<int> rows(64);
        for (int& r : rows) r = rng() % s.n;
        rows[0] = s.n - 1;
        const std::vector<std::vector<float>> hw = host_rows(w, s.k, rows);
        for (int tier = 0; tier < 4; ++tier) {
            const int m = TIER_M[tier];
            double best_us = 1e30;
            std::string best_name;
            for (const Variant& v : VARIANTS) {
                const int r = v.r ? v.r : (s.f32_out ? SHIPPED_R_F32 : SHIPPED_R)[tier];
                const int rows_a_block = r * gemv_cu::WARPS;
                const unsigned grid = (s.n + rows_a_block - 1) / rows_a_block;
                auto launch = [&](int i, uint32_t acc) {
                    const bf16* wi = w + (size_t)(i % copies) * wn;
                    if (s.f32_out)
                        v.kf[tier]<<<grid, gemv_cu::WARPS * 32, 0, g_stream>>>(x, wi, (float*)y, m, s.n, s.k, s.k, s.n,
                                                                               acc, nullptr, 0.f, nullptr, 1u);
                    else
                        v.k[tier]<<<grid, gemv_cu::WARPS * 32, 0, g_stream>>>(x, wi, (bf16*)y, m, s.n, s.k, s.k, s.n,
                                                                              acc, nullptr, 0.f, nullptr, 1u);
                };
                // check (copy 0)
                CK(cudaMemsetAsync(y, 0, (size_t)8 * s.n * es, g_stream));
                launch(0, 0);
                CK(cudaStreamSynchronize(g_stream));
                CK(cudaGetLastError());
                std::vector<char> hy((size_t)m * s.n * es);
                CK(cudaMemcpy(hy.data(), y, hy.size(), cudaMemcpyDeviceToHost));
                const double worst = worst_rel_error(hy, s.f32_out, m, s.n, s.k, hx, rows, hw);
                bool ok = worst <= 1.0 / 128;
                // accumulate on the shipped kernel: y0 + x w^T == 2 (x w^T) when y0 = x w^T
                if (v.r == 0) {
                    launch(0, 1);
                    CK(cudaStreamSynchronize(g_stream));
                    std::vector<char> hy2(hy.size());
                    CK(cudaMemcpy(hy2.data(), y, hy2.size(), cudaMemcpyDeviceToHost));
                    for (int mm = 0; mm < m; ++mm)
                        for (size_t i = 0; i < rows.size(); ++i) {
                            const size_t o = (size_t)mm * s.n + rows[i];
                            const float a = s.f32_out ? ((float*)hy.data())[o] : host_bf16(((bf16*)hy.data())[o]);
                            const float b = s.f32_out ? ((float*)hy2.data())[o] : host_bf16(((bf16*)hy2.data())[o]);
                            if (fabsf(b - 2 * a) > 1e-2f * fabsf(a) + 1e-6f) ok = false;
                        }
                }
                all_ok &= ok;
                const double us = time_graph([&](int i) { launch(i, 0); });
                const double gbs = wbytes / us / 1e3;
                printf("| %s | %s | %d | %d | %d | %s | %.2f | %.0f | %.0f | %s %.1e |\n", s.preset, s.op, s.n, s.k, m,
                       v.name, us, gbs, 100 * gbs / copy_gbs, ok ? "ok" : "FAIL", worst);
                if (us < best_us) {
                    best_us = us;
                    best_name = v.name;
                }
            }
            char line[256];
            snprintf(line, sizeof line, "| %s | %s | %d | %d | %d | %s | %.2f | %.0f |", s.preset, s.op, s.n, s.k, m,
                     best_name.c_str(), best_us, 100 * (wbytes / best_us / 1e3) / copy_gbs);
            best_lines.push_back(line);
        }
        CK(cudaFree(w));
        CK(cudaFree(x));
        CK(cudaFree(y));
    }
    printf("\nbest variant per problem (%% of copy bandwidth %.0f GB/s)\n", copy_gbs);
    printf("| preset | op | N | K | M | best | us | %% copy |\n|---|---|---|---|---|---|---|---|\n");
    for (auto& l : best_lines) printf("%s\n", l.c_str());
    all_ok &= fused_table(quick, copy_gbs);
    all_ok &= tc_table(quick, copy_gbs);
    printf("\nchecks: %s\n", all_ok ? "all ok" : "SOME FAILED");
    return all_ok ? 0 : 1;
}
