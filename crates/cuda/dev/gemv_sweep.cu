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
    gemv_var(const bf16* x, const bf16* w, O* y, uint32_t M, uint32_t N, uint32_t K, uint32_t ldx, uint32_t ldy,
             uint32_t acc) {
    gemv_cu::gemv_impl<bf16, O, MT, R, U>(x, w, y, M, N, K, ldx, ldy, acc);
}

typedef void (*KernBf16)(const bf16*, const bf16*, bf16*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t);
typedef void (*KernF32)(const bf16*, const bf16*, float*, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t);

struct Variant {
    const char* name;
    int r;
    KernBf16 k[4];  // tiers m1, m2, m4, m8
    KernF32 kf[4];
};

#define TIERS(R, U)                                                                                             \
    {                                                                                                            \
        "R" #R "U" #U, R, {gemv_var<bf16, 1, R, U>, gemv_var<bf16, 2, R, U>, gemv_var<bf16, 4, R, U>,            \
                           gemv_var<bf16, 8, R, U>},                                                             \
            {gemv_var<float, 1, R, U>, gemv_var<float, 2, R, U>, gemv_var<float, 4, R, U>, gemv_var<float, 8, R, U>} \
    }
static const Variant VARIANTS[] = {
    {"shipped", 0, {gemv_bf16_m1, gemv_bf16_m2, gemv_bf16_m4, gemv_bf16_m8},
     {gemv_bf16_f32_m1, gemv_bf16_f32_m2, gemv_bf16_f32_m4, gemv_bf16_f32_m8}},
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
        std::vector<std::vector<float>> hw(rows.size(), std::vector<float>(s.k));
        for (size_t i = 0; i < rows.size(); ++i) {
            std::vector<bf16> tmp(s.k);
            CK(cudaMemcpy(tmp.data(), w + (size_t)rows[i] * s.k, s.k * 2, cudaMemcpyDeviceToHost));
            for (int j = 0; j < s.k; ++j) hw[i][j] = host_bf16(tmp[j]);
        }
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
                        v.kf[tier]<<<grid, gemv_cu::WARPS * 32, 0, g_stream>>>(x, wi, (float*)y, m, s.n, s.k, s.k, s.n, acc);
                    else
                        v.k[tier]<<<grid, gemv_cu::WARPS * 32, 0, g_stream>>>(x, wi, (bf16*)y, m, s.n, s.k, s.k, s.n, acc);
                };
                // check (copy 0)
                CK(cudaMemsetAsync(y, 0, (size_t)8 * s.n * es, g_stream));
                launch(0, 0);
                CK(cudaStreamSynchronize(g_stream));
                CK(cudaGetLastError());
                std::vector<char> hy((size_t)m * s.n * es);
                CK(cudaMemcpy(hy.data(), y, hy.size(), cudaMemcpyDeviceToHost));
                auto out_at = [&](int mm, int n) {
                    if (s.f32_out) return ((float*)hy.data())[(size_t)mm * s.n + n];
                    return host_bf16(((bf16*)hy.data())[(size_t)mm * s.n + n]);
                };
                double worst = 0;
                for (int mm = 0; mm < m; ++mm)
                    for (size_t i = 0; i < rows.size(); ++i) {
                        double ref = 0, mag = 0;
                        for (int j = 0; j < s.k; ++j) {
                            const double p = (double)host_bf16(hx[(size_t)mm * s.k + j]) * hw[i][j];
                            ref += p;
                            mag += fabs(p);
                        }
                        worst = std::max(worst, fabs(out_at(mm, rows[i]) - ref) / (mag + 1e-30));
                    }
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
    printf("\nchecks: %s\n", all_ok ? "all ok" : "SOME FAILED");
    return all_ok ? 0 : 1;
}
