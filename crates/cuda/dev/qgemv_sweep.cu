// qgemv_sweep.cu: the decode GEMV on quantized weights, variants side by side (not built
// by cargo; `bash crates/cuda/dev/build.sh qgemv_sweep` -> .gpu/qgemv_sweep).
//
// Variants, per block type, at Llama-3.2-1B / Llama-3.1-8B decode shapes, M = 1 and 8 rows
// of bf16 x:
//   dequant       the session-2 kernel (qgemv_dequant.cuh): blocks dequantized in registers
//                 against float x, f32 FMAs
//   dp4a u=U      the shipped pair (qmatmul.cu): qquant_x (x -> q8_1) + qgemv with dp4a,
//                 U weight chunks in flight per lane (U = 2, 4, 8; shipped: 2 at M = 1, 4 above)
//   dp4a-b2 u=4   Q8_0 / Q4_0 / Q6_K (2-byte-aligned blocks) read with 16-bit loads
//                 instead of aligned words + funnel shifts (quant.cuh QUANT_W4)
// Check: every variant against the dequant kernel on all rows: max |diff| over mean |y|
// (q8_1 activations cost ~0.5%; a layout bug costs ~100%): FAIL above 3%. (The Rust tests
// check both against an f64 reference of the dequantized blocks.)
// Timing: a CUDA graph of 20 launches (pairs for dp4a) replayed 10 times, over enough
// copies of the weight to defeat L2 (>= 256 MB); us per matmul, GB/s on the weight bytes,
// % of the device-to-device copy bandwidth measured in the same run.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <type_traits>
#include <cstdlib>
#include <vector>

#include "qmatmul.cu"
#include "qgemv_dequant.cuh"

#define CK(x)                                                                          \
    do {                                                                               \
        cudaError_t e_ = (x);                                                          \
        if (e_ != cudaSuccess) {                                                       \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

template <typename Q, typename T, int MT>
__global__ void __launch_bounds__(128) base_kernel(const uint8_t* w, const T* x, void* y, uint32_t M, uint32_t N,
                                                   uint32_t K, uint32_t ldx, uint32_t ldy, uint32_t rb, uint32_t flags) {
    qgemv_dequant::qgemv_impl<Q, T, MT>(w, x, y, M, N, K, ldx, ldy, rb, flags);
}

template <typename Q, typename T, int MT, int UU>
__global__ void __launch_bounds__(128) dp4a_kernel(const uint8_t* w, const int8_t* xq, const float2* xds, void* y,
                                                   uint32_t M, uint32_t N, uint32_t K, uint32_t ldy, uint32_t rb,
                                                   uint32_t flags) {
    qmatmul_cu::qgemv_impl<Q, T, MT, UU>(w, xq, xds, y, M, N, K, ldy, rb, flags);
}

// Random bytes, then valid small f16 scales at the type's scale offsets.
__global__ void fill_random(uint8_t* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13, h *= 3266489917u, h ^= h >> 16;
        p[i] = (uint8_t)h;
    }
}
__global__ void fix_scales(uint8_t* p, size_t blocks, int bytes, int off0, int off1, float scale) {
    for (size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x; b < blocks; b += (size_t)gridDim.x * blockDim.x) {
        uint8_t* blk = p + b * bytes;
        uint32_t h = (uint32_t)b * 747796405u + 2891336453u;
        h ^= h >> 16;
        const float u = ((h & 0xFFFF) / 65535.f) * 2.f - 1.f;
        const float v = (((h >> 16) & 0xFFFF) / 65535.f);
        *reinterpret_cast<__half*>(blk + off0) = __float2half(scale * (u == 0.f ? 0.5f : u));
        if (off1 >= 0) *reinterpret_cast<__half*>(blk + off1) = __float2half(scale * v);
    }
}
__global__ void fill_x(__nv_bfloat16* x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u + 12345u;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        x[i] = __float2bfloat16(((h & 0xFFFFFF) / 16777215.f) * 2.f - 1.f);
    }
}

struct TypeInfo {
    const char* name;
    int qk, bytes, off0, off1;  // scale offsets: d (and m / dmin), -1 if none
};

struct Shape {
    const char* name;
    uint32_t n, k;
};

static float copy_gbps() {
    size_t bytes = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < 2; ++i) CK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e0));
    for (int i = 0; i < 10; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    CK(cudaEventRecord(e1));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaFree(a));
    CK(cudaFree(b));
    return 2.f * bytes * 10 / (ms * 1e-3f) / 1e9f;
}

// Time `launch(copy index)` as a graph of 20 launches, 10 replays: us per launch.
template <typename F>
static float time_graph(cudaStream_t s, int copies, F launch) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < 20; ++i) launch(i % copies);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s));
    CK(cudaStreamSynchronize(s));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, s));
    for (int r = 0; r < 10; ++r) CK(cudaGraphLaunch(ge, s));
    CK(cudaEventRecord(e1, s));
    CK(cudaEventSynchronize(e1));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return ms * 1e3f / 200.f;
}

template <typename Q, typename QB2, typename D>
static void sweep_type(const TypeInfo& ti, const std::vector<Shape>& shapes, cudaStream_t s, float copy, int& fails) {
    using T = __nv_bfloat16;
    for (const Shape& sh : shapes) {
        const size_t rb = (size_t)sh.k / ti.qk * ti.bytes, wbytes = rb * sh.n;
        const int copies = (int)std::max<size_t>(1, std::min<size_t>(20, (256u << 20) / wbytes + 1));
        uint8_t* w;
        CK(cudaMalloc(&w, wbytes * copies + 16));  // the upload's 16-byte tail
        fill_random<<<1024, 256, 0, s>>>(w, wbytes * copies, 77u);
        fix_scales<<<1024, 256, 0, s>>>(w, sh.n * (size_t)copies * (sh.k / ti.qk), ti.bytes, ti.off0, ti.off1,
                                        ti.qk == 256 ? 0.002f : 0.02f);
        for (uint32_t m : {1u, 8u}) {
            T* x;
            int8_t* xq;
            float2* xds;
            float *yb, *yv;
            CK(cudaMalloc(&x, (size_t)m * sh.k * sizeof(T)));
            CK(cudaMalloc(&xq, (size_t)m * sh.k));
            CK(cudaMalloc(&xds, (size_t)m * sh.k / 32 * sizeof(float2)));
            CK(cudaMalloc(&yb, (size_t)m * sh.n * 4));
            CK(cudaMalloc(&yv, (size_t)m * sh.n * 4));
            fill_x<<<256, 256, 0, s>>>(x, (size_t)m * sh.k);
            const uint32_t grid = (sh.n + 3) / 4, flags = 2u;  // f32 y
            auto base = [&](int c) {
                if (m == 1) base_kernel<D, T, 1><<<grid, 128, 0, s>>>(w + c * wbytes, x, yb, m, sh.n, sh.k, sh.k, sh.n, rb, flags | 4u);
                else base_kernel<D, T, 16><<<grid, 128, 0, s>>>(w + c * wbytes, x, yb, m, sh.n, sh.k, sh.k, sh.n, rb, flags | 4u);
            };
            auto quant = [&]() {
                qquant_x_bf16<<<(m * sh.k / 32 + 3) / 4, 128, 0, s>>>(x, m, sh.k, sh.k, xq, xds, nullptr, 0.f);
            };
            auto dp = [&](int c, int u) {
                quant();
                const uint8_t* wc = w + c * wbytes;
#define DP(QQ, MT, UU) dp4a_kernel<QQ, T, MT, UU><<<grid, 128, 0, s>>>(wc, xq, xds, yv, m, sh.n, sh.k, sh.n, rb, flags)
                if (m == 1) {
                    if (u == 2) DP(Q, 1, 2); else if (u == 4) DP(Q, 1, 4); else if (u == 8) DP(Q, 1, 8); else DP(QB2, 1, 4);
                } else {
                    if (u == 2) DP(Q, 16, 2); else if (u == 4) DP(Q, 16, 4); else if (u == 8) DP(Q, 16, 8); else DP(QB2, 16, 4);
                }
#undef DP
            };
            // correctness: every dp4a variant against the dequant kernel
            base(0);
            std::vector<float> hb((size_t)m * sh.n), hv(hb.size());
            CK(cudaMemcpyAsync(hb.data(), yb, hb.size() * 4, cudaMemcpyDeviceToHost, s));
            CK(cudaStreamSynchronize(s));
            double mean = 0;
            for (float v : hb) mean += fabs(v);
            mean /= hb.size();
            const float tb = time_graph(s, copies, base);
            printf("| %s | %s | %u | dequant | %.2f | %.0f | %.0f%% | |\n", ti.name, sh.name, m, tb, wbytes / tb / 1e3,
                   100.0 * wbytes / tb / 1e3 / copy);
            for (int u : {2, 4, 8, 0}) {
                if (u == 0 && std::is_same<Q, QB2>::value) continue;
                dp(0, u);
                CK(cudaMemcpyAsync(hv.data(), yv, hv.size() * 4, cudaMemcpyDeviceToHost, s));
                CK(cudaStreamSynchronize(s));
                double md = 0;
                for (size_t i = 0; i < hv.size(); ++i) md = std::max(md, (double)fabs(hv[i] - hb[i]));
                const double rel = md / std::max(mean, 1e-30);
                const bool bad = !(rel < 0.03);
                fails += bad;
                const float tv = time_graph(s, copies, [&](int c) { dp(c, u); });
                char var[32];
                snprintf(var, sizeof var, u == 0 ? "dp4a-b2 u=4" : "dp4a u=%d", u);
                printf("| %s | %s | %u | %s | %.2f | %.0f | %.0f%% | %s maxdiff/mean %.4f |\n", ti.name, sh.name,
                       m, var, tv, wbytes / tv / 1e3, 100.0 * wbytes / tv / 1e3 / copy, bad ? "FAIL" : "ok", rel);
            }
            CK(cudaFree(x));
            CK(cudaFree(xq));
            CK(cudaFree(xds));
            CK(cudaFree(yb));
            CK(cudaFree(yv));
        }
        CK(cudaFree(w));
    }
}

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "quick";
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    const float copy = copy_gbps();
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("qgemv sweep on %s, %d SMs, copy %.0f GB/s (read + write)\n\n", prop.name, prop.multiProcessorCount, copy);
    std::vector<Shape> shapes = {
        {"8B qkv 6144x4096", 6144, 4096},     {"8B o 4096x4096", 4096, 4096},
        {"8B gate_up 28672x4096", 28672, 4096}, {"8B down 4096x14336", 4096, 14336},
        {"8B lm_head 128256x4096", 128256, 4096}, {"1B qkv 3072x2048", 3072, 2048},
        {"1B gate_up 16384x2048", 16384, 2048}, {"1B down 2048x8192", 2048, 8192},
    };
    if (quick) shapes.resize(2);
    printf("| type | shape | M | variant | us | GB/s | %% copy | check |\n|---|---|---|---|---|---|---|---|\n");
    int fails = 0;
    // Q4_K_M's types first (Q4_K, Q6_K), then Q8_0, then the rest
    sweep_type<DotQ4_K, DotQ4_K, BlockQ4_K>({"Q4_K", 256, 144, 0, 2}, shapes, s, copy, fails);
    sweep_type<DotQ6_K, DotQ6_KT<!QUANT_W4>, BlockQ6_K>({"Q6_K", 256, 210, 208, -1}, shapes, s, copy, fails);
    sweep_type<DotQ8_0, DotQ8_0T<!QUANT_W4>, BlockQ8_0>({"Q8_0", 32, 34, 0, -1}, shapes, s, copy, fails);
    sweep_type<DotQ5_K, DotQ5_K, BlockQ5_K>({"Q5_K", 256, 176, 0, 2}, shapes, s, copy, fails);
    sweep_type<DotQ4_0, DotQ4_01<false, !QUANT_W4>, BlockQ4_0>({"Q4_0", 32, 18, 0, -1}, shapes, s, copy, fails);
    sweep_type<DotQ4_1, DotQ4_1, BlockQ4_1>({"Q4_1", 32, 20, 0, 2}, shapes, s, copy, fails);
    printf("\nqgemv sweep: %d FAIL\n", fails);
    return fails != 0;
}
