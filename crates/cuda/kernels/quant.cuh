// quant.cuh: ggml's block layouts (the byte order of GGUF files; see
// crates/tensor/src/quant.rs for each layout and its reference decoding), decoded in
// registers 8 elements at a time.
//
// Every block type is a struct with QK (elements per block), BYTES (bytes per block), PARTS
// (= QK / 8, the 8-element parts of a block) and
//   dequant8(block, part, w[8], e0, e1): w[0..4] = elements e0..e0+4, w[4..8] = elements
//   e1..e1+4 (offsets inside the block) of part `part`.
// A row is a whole number of blocks; rows follow each other (row_bytes = K / QK * BYTES).
// Alignment: blocks of Q4_1, Q4_K and Q5_K are 4-byte aligned (their BYTES are multiples of
// 4); Q8_0, Q4_0 and Q6_K blocks only 2-byte aligned (34, 18, 210 bytes), so their words
// are read as two 16-bit halves.
#pragma once

#include "common.cuh"

namespace quant_cuh {

__device__ __forceinline__ float f16_at(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}

// 4 bytes at a 2-byte aligned address.
__device__ __forceinline__ uint32_t ld32_2(const uint8_t* p) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}

// 4 bytes at a 4-byte aligned address.
__device__ __forceinline__ uint32_t ld32_4(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// The 6-bit scale and min of sub-block j (0..8) in the 12 scale bytes of Q4_K / Q5_K.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, float& sc, float& mn) {
    if (j < 4) {
        sc = static_cast<float>(q[j] & 63);
        mn = static_cast<float>(q[j + 4] & 63);
    } else {
        sc = static_cast<float>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        mn = static_cast<float>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

}  // namespace quant_cuh

// { f16 d; i8 qs[32] }: part p is elements 8p..8p+8.
struct BlockQ8_0 {
    static constexpr int QK = 32, BYTES = 34, PARTS = 4;
    static __device__ __forceinline__ void dequant8(const uint8_t* b, int p, float (&w)[8], int& e0, int& e1) {
        const float d = quant_cuh::f16_at(b);
        const uint32_t lo = quant_cuh::ld32_2(b + 2 + 8 * p), hi = quant_cuh::ld32_2(b + 6 + 8 * p);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w[i] = d * static_cast<float>(static_cast<int8_t>(lo >> (8 * i)));
            w[4 + i] = d * static_cast<float>(static_cast<int8_t>(hi >> (8 * i)));
        }
        e0 = 8 * p;
        e1 = 8 * p + 4;
    }
};

// { f16 d; u8 qs[16] }: element j is (lo nibble of qs[j] - 8) d, element j + 16 the high
// nibble; part p is qs[4p..4p+4]: elements 4p.. (low) and 16 + 4p.. (high).
struct BlockQ4_0 {
    static constexpr int QK = 32, BYTES = 18, PARTS = 4;
    static __device__ __forceinline__ void dequant8(const uint8_t* b, int p, float (&w)[8], int& e0, int& e1) {
        const float d = quant_cuh::f16_at(b);
        const uint32_t q = quant_cuh::ld32_2(b + 2 + 4 * p);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w[i] = d * static_cast<float>(static_cast<int>((q >> (8 * i)) & 0xF) - 8);
            w[4 + i] = d * static_cast<float>(static_cast<int>((q >> (8 * i + 4)) & 0xF) - 8);
        }
        e0 = 4 * p;
        e1 = 16 + 4 * p;
    }
};

// { f16 d; f16 m; u8 qs[16] }: as Q4_0 with q d + m.
struct BlockQ4_1 {
    static constexpr int QK = 32, BYTES = 20, PARTS = 4;
    static __device__ __forceinline__ void dequant8(const uint8_t* b, int p, float (&w)[8], int& e0, int& e1) {
        const float d = quant_cuh::f16_at(b), m = quant_cuh::f16_at(b + 2);
        const uint32_t q = quant_cuh::ld32_4(b + 4 + 4 * p);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            w[i] = fmaf(d, static_cast<float>((q >> (8 * i)) & 0xF), m);
            w[4 + i] = fmaf(d, static_cast<float>((q >> (8 * i + 4)) & 0xF), m);
        }
        e0 = 4 * p;
        e1 = 16 + 4 * p;
    }
};

// { f16 d; f16 dmin; u8 scales[12]; (Q5_K: u8 qh[32];) u8 qs[128] }: 4 chunks c of 64
// elements, each 32 bytes of qs: low nibbles are sub-block 2c, high nibbles 2c + 1; Q5_K's
// fifth bit of element l of the chunk is bit 2c (low) / 2c + 1 (high) of qh[l]. Part p is
// chunk c = p / 8, bytes 4 (p % 8).. of its 32: elements 64c + 4(p%8).. and 64c + 32 + 4(p%8)..
template <bool FIVE>
struct BlockQ45_K {
    static constexpr int QK = 256, BYTES = FIVE ? 176 : 144, PARTS = 32;
    static __device__ __forceinline__ void dequant8(const uint8_t* b, int p, float (&w)[8], int& e0, int& e1) {
        const int c = p >> 3, l = 4 * (p & 7);
        const float d = quant_cuh::f16_at(b), dmin = quant_cuh::f16_at(b + 2);
        float sc1, m1, sc2, m2;
        quant_cuh::scale_min_k4(2 * c, b + 4, sc1, m1);
        quant_cuh::scale_min_k4(2 * c + 1, b + 4, sc2, m2);
        const float d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2;
        const uint32_t q = quant_cuh::ld32_4(b + (FIVE ? 48 : 16) + 32 * c + l);
        const uint32_t h = FIVE ? quant_cuh::ld32_4(b + 16 + l) : 0u;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            uint32_t lo = (q >> (8 * i)) & 0xF, hi = (q >> (8 * i + 4)) & 0xF;
            if (FIVE) {
                lo |= ((h >> (8 * i + 2 * c)) & 1u) << 4;
                hi |= ((h >> (8 * i + 2 * c + 1)) & 1u) << 4;
            }
            w[i] = fmaf(d1, static_cast<float>(lo), -min1);
            w[4 + i] = fmaf(d2, static_cast<float>(hi), -min2);
        }
        e0 = 64 * c + l;
        e1 = 64 * c + 32 + l;
    }
};
using BlockQ4_K = BlockQ45_K<false>;
using BlockQ5_K = BlockQ45_K<true>;

// { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: halves h of 128 elements; element
// 32 r + l of a half (runs r = 0..4, l < 32) is the low (r = 0, 1) or high (r = 2, 3) nibble
// of ql[64h + l + 32 (r & 1)] with bits 2r.. of qh[32h + l] as bits 4, 5, minus 32, times
// d * scales[8h + (32 r + l) / 16]. Part p is half p / 16, run (p % 16) / 4, l = 8 (p % 4)..+8:
// 8 consecutive elements of one scale.
struct BlockQ6_K {
    static constexpr int QK = 256, BYTES = 210, PARTS = 32;
    static __device__ __forceinline__ void dequant8(const uint8_t* b, int p, float (&w)[8], int& e0, int& e1) {
        const int h = p >> 4, r = (p >> 2) & 3, l = 8 * (p & 3);
        const uint8_t* ql = b + 64 * h + 32 * (r & 1) + l;
        const uint8_t* qh = b + 128 + 32 * h + l;
        const float ds = quant_cuh::f16_at(b + 208) * static_cast<float>(static_cast<int8_t>(b[192 + 8 * h + 2 * r + l / 16]));
        const uint32_t lq[2] = {quant_cuh::ld32_2(ql), quant_cuh::ld32_2(ql + 4)};
        const uint32_t hq[2] = {quant_cuh::ld32_2(qh), quant_cuh::ld32_2(qh + 4)};
        const int shift = r >= 2 ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t lo = (lq[i >> 2] >> (8 * (i & 3) + shift)) & 0xF;
            const uint32_t hi = (hq[i >> 2] >> (8 * (i & 3) + 2 * r)) & 3;
            w[i] = ds * static_cast<float>(static_cast<int>(lo | (hi << 4)) - 32);
        }
        e0 = 128 * h + 32 * r + l;
        e1 = e0 + 4;
    }
};

// ---------------------------------------------------------------------------------------
// Integer dot products against 8-bit activations (the decode GEMV, qmatmul.cu).
//
// x is quantized once per matmul input (qmatmul.cu `qquant_x`) to q8_1 in two arrays:
// xq int8 [M, K] (row-major, rows 16-byte aligned) and xds float2 [M, K / 32]: per 32
// elements (d, d * sum(q)) with x ~= d q. Each block type below splits one weight block
// into LPB lane chunks: `load(block, s)` reads chunk s's bytes (the widest loads its
// alignment allows: 16 bytes for Q4_K / Q5_K, 4 for Q4_1, 2 for the 2-byte-aligned Q8_0,
// Q4_0 and Q6_K), `dot(w, xq, xds)` is the chunk's contribution with xq / xds at the block's
// first element / 32-element group of one x row; dp4a does four byte products a step.
// Summed over a block's LPB chunks, `dot` is sum_k dequant(w)[k] * d_x q_x[k].
namespace quant_cuh {

__device__ __forceinline__ uint32_t ld16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
__device__ __forceinline__ int ld_i32_2(const uint8_t* p) { return static_cast<int>(ld32_2(p)); }
__device__ __forceinline__ float2 ld_half2(const uint8_t* p) {
    return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ int dot4(const int4& a, const int4& b, int s) {
    s = __dp4a(a.x, b.x, s);
    s = __dp4a(a.y, b.y, s);
    s = __dp4a(a.z, b.z, s);
    return __dp4a(a.w, b.w, s);
}
__device__ __forceinline__ int4 and4(const int4& a, int m) { return make_int4(a.x & m, a.y & m, a.z & m, a.w & m); }
__device__ __forceinline__ int4 shr4(const int4& a, int s) {
    return make_int4(static_cast<int>(static_cast<uint32_t>(a.x) >> s), static_cast<int>(static_cast<uint32_t>(a.y) >> s),
                     static_cast<int>(static_cast<uint32_t>(a.z) >> s), static_cast<int>(static_cast<uint32_t>(a.w) >> s));
}
__device__ __forceinline__ int4 shl4(const int4& a, int s) {
    return make_int4(a.x << s, a.y << s, a.z << s, a.w << s);
}
__device__ __forceinline__ int4 or4(const int4& a, const int4& b) {
    return make_int4(a.x | b.x, a.y | b.y, a.z | b.z, a.w | b.w);
}
// N consecutive 32-bit words at a 2-byte-aligned address. W4: as N + 1 aligned words
// joined by funnel shifts (the CUDA upload pads 16 bytes past the last block, so the extra
// word stays inside the allocation); else as 2N 16-bit loads.
template <bool W4, int N>
__device__ __forceinline__ void ld_words_2(const uint8_t* p, int (&out)[N]) {
    if constexpr (W4) {
        const uintptr_t a = reinterpret_cast<uintptr_t>(p);
        const uint32_t* w = reinterpret_cast<const uint32_t*>(a & ~static_cast<uintptr_t>(3));
        const uint32_t sh = static_cast<uint32_t>(a & 2) * 8;
        uint32_t v[N + 1];
#pragma unroll
        for (int i = 0; i <= N; ++i) v[i] = w[i];
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = static_cast<int>(__funnelshift_r(v[i], v[i + 1], sh));
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = ld_i32_2(p + 4 * i);
    }
}
__device__ __forceinline__ int4 ld_x16(const int8_t* p) { return *reinterpret_cast<const int4*>(p); }
__device__ __forceinline__ int2 ld_x8(const int8_t* p) { return *reinterpret_cast<const int2*>(p); }

}  // namespace quant_cuh

// Q8_0: 2 chunks of 16 elements (qs bytes 16s..16s+16 at block offset 2 + 16s).
template <bool W4>
struct DotQ8_0T {
    static constexpr int QK = 32, BYTES = 34, LPB = 2;
    struct W {
        int4 q;
        float d;
        int s;
    };
    static __device__ __forceinline__ W load(const uint8_t* b, int s) {
        int q[4];
        quant_cuh::ld_words_2<W4>(b + 2 + 16 * s, q);
        return {make_int4(q[0], q[1], q[2], q[3]), quant_cuh::f16_at(b), s};
    }
    static __device__ __forceinline__ float dot(const W& w, const int8_t* xq, const float2* xds) {
        const int sumi = quant_cuh::dot4(w.q, quant_cuh::ld_x16(xq + 16 * w.s), 0);
        return w.d * xds[0].x * static_cast<float>(sumi);
    }
};

// Q4_0 / Q4_1: 2 chunks; chunk s has qs bytes 8s..8s+8: low nibbles are elements 8s..8s+8,
// high nibbles 16 + 8s..; (q - 8) d (Q4_0) or q d + m (Q4_1). The offset term uses the
// x group's d * sum(q), half of it per chunk.
template <bool ONE, bool W4>
struct DotQ4_01 {
    static constexpr int QK = 32, BYTES = ONE ? 20 : 18, LPB = 2;
    struct W {
        int q0, q1;
        float2 dm;  // (d, m) (m = 0 for Q4_0)
        int s;
    };
    static __device__ __forceinline__ W load(const uint8_t* b, int s) {
        using namespace quant_cuh;
        if constexpr (ONE) {
            const uint8_t* p = b + 4 + 8 * s;
            return {static_cast<int>(ld32_4(p)), static_cast<int>(ld32_4(p + 4)), ld_half2(b), s};
        } else {
            int q[2];
            ld_words_2<W4>(b + 2 + 8 * s, q);
            return {q[0], q[1], make_float2(f16_at(b), 0.f), s};
        }
    }
    static __device__ __forceinline__ float dot(const W& w, const int8_t* xq, const float2* xds) {
        const int2 lo = quant_cuh::ld_x8(xq + 8 * w.s), hi = quant_cuh::ld_x8(xq + 16 + 8 * w.s);
        int sumi = __dp4a(w.q0 & 0x0F0F0F0F, lo.x, 0);
        sumi = __dp4a(w.q1 & 0x0F0F0F0F, lo.y, sumi);
        sumi = __dp4a((w.q0 >> 4) & 0x0F0F0F0F, hi.x, sumi);
        sumi = __dp4a((w.q1 >> 4) & 0x0F0F0F0F, hi.y, sumi);
        const float2 ds = xds[0];
        if constexpr (ONE) return w.dm.x * ds.x * static_cast<float>(sumi) + 0.5f * w.dm.y * ds.y;
        else return w.dm.x * (ds.x * static_cast<float>(sumi) - 4.f * ds.y);
    }
};
// The 2-byte-aligned types read aligned words (the sweep measured both; see qmatmul.rs).
constexpr bool QUANT_W4 = true;
using DotQ8_0 = DotQ8_0T<QUANT_W4>;
using DotQ4_0 = DotQ4_01<false, QUANT_W4>;
using DotQ4_1 = DotQ4_01<true, false>;

// Q4_K / Q5_K: 8 chunks of 32 elements; chunk s is qs bytes 16s..16s+16 (one 16-byte
// load): chunk c = s / 2 of 64 elements, l0 = 16 (s % 2): low nibbles are elements
// 64c + l0.. (sub-block 2c, x group 2c), high nibbles 64c + 32 + l0.. (sub-block 2c + 1);
// Q5_K's fifth bits from qh bytes l0..l0+16 (bits 2c, 2c + 1). The 6-bit scales / mins of
// the two sub-blocks come from three 16-bit words of the 12 scale bytes.
template <bool FIVE>
struct DotQ45_K {
    static constexpr int QK = 256, BYTES = FIVE ? 176 : 144, LPB = 8;
    struct W {
        int4 q, h;
        float d1, m1, d2, m2;  // d * scale and dmin * min of sub-blocks 2c, 2c + 1
        int s;
    };
    static __device__ __forceinline__ W load(const uint8_t* b, int s) {
        using namespace quant_cuh;
        const int c = s >> 1, l0 = 16 * (s & 1);
        W w;
        w.q = *reinterpret_cast<const int4*>(b + (FIVE ? 48 : 16) + 16 * s);
        w.h = FIVE ? *reinterpret_cast<const int4*>(b + 16 + l0) : make_int4(0, 0, 0, 0);
        const float2 dm = ld_half2(b);
        const uint8_t* sc = b + 4;
        const uint32_t a = ld16(sc + 2 * c), hi = ld16(sc + 2 * c + 4);
        uint32_t s1, s2, m1, m2;
        if (c < 2) {
            s1 = a & 63, s2 = (a >> 8) & 63, m1 = hi & 63, m2 = (hi >> 8) & 63;
        } else {
            const uint32_t lo = ld16(sc + 2 * c - 4);
            s1 = (hi & 0xF) | (((lo >> 6) & 3) << 4);
            s2 = ((hi >> 8) & 0xF) | (((lo >> 14) & 3) << 4);
            m1 = ((hi >> 4) & 0xF) | (((a >> 6) & 3) << 4);
            m2 = ((hi >> 12) & 0xF) | (((a >> 14) & 3) << 4);
        }
        w.d1 = dm.x * static_cast<float>(s1), w.m1 = dm.y * static_cast<float>(m1);
        w.d2 = dm.x * static_cast<float>(s2), w.m2 = dm.y * static_cast<float>(m2);
        w.s = s;
        return w;
    }
    static __device__ __forceinline__ float dot(const W& w, const int8_t* xq, const float2* xds) {
        using namespace quant_cuh;
        const int c = w.s >> 1, l0 = 16 * (w.s & 1);
        int4 lo = and4(w.q, 0x0F0F0F0F), hi = and4(shr4(w.q, 4), 0x0F0F0F0F);
        if constexpr (FIVE) {
            // bits 2c / 2c + 1 of each qh byte, moved to bit 4 (worth 16)
            lo = or4(lo, shl4(and4(shr4(w.h, 2 * c), 0x01010101), 4));
            hi = or4(hi, shl4(and4(shr4(w.h, 2 * c + 1), 0x01010101), 4));
        }
        const int4 xl = ld_x16(xq + 64 * c + l0), xh = ld_x16(xq + 64 * c + 32 + l0);
        const int ones = 0x01010101;
        const int sl = dot4(lo, xl, 0), sh = dot4(hi, xh, 0);
        const int ul = dot4(make_int4(ones, ones, ones, ones), xl, 0), uh = dot4(make_int4(ones, ones, ones, ones), xh, 0);
        const float dl = xds[2 * c].x, dh = xds[2 * c + 1].x;
        return dl * (w.d1 * static_cast<float>(sl) - w.m1 * static_cast<float>(ul)) +
               dh * (w.d2 * static_cast<float>(sh) - w.m2 * static_cast<float>(uh));
    }
};
using DotQ4_K = DotQ45_K<false>;
using DotQ5_K = DotQ45_K<true>;

// Q6_K: 8 chunks of 32 elements; chunk s is half h = s / 4 (128 elements), l = 8 (s % 4)..+8
// of each of its four runs r (elements 128h + 32r + l.., scale 8h + 2r + l / 16, x group
// 4h + r): ql bytes 64h + l.. (runs 0 / 2: low / high nibbles) and 64h + 32 + l.. (runs
// 1 / 3), qh bytes 32h + l.. (bits 2r, 2r + 1); the 6-bit values are offset by 32.
template <bool W4>
struct DotQ6_KT {
    static constexpr int QK = 256, BYTES = 210, LPB = 8;
    struct W {
        int a0, a1, b0, b1, h0, h1;  // ql at l (runs 0, 2), ql at 32 + l (runs 1, 3), qh
        float ds[4];                 // d * scale of each run
        int s;
    };
    static __device__ __forceinline__ W load(const uint8_t* b, int s) {
        using namespace quant_cuh;
        const int h = s >> 2, l = 8 * (s & 3);
        const uint8_t* ql = b + 64 * h + l;
        const uint8_t* qh = b + 128 + 32 * h + l;
        W w;
        int a[2], c[2], e[2], sc[2];
        ld_words_2<W4>(ql, a);
        ld_words_2<W4>(ql + 32, c);
        ld_words_2<W4>(qh, e);
        ld_words_2<W4>(b + 192 + 8 * h, sc);  // the half's 8 scales
        w.a0 = a[0], w.a1 = a[1], w.b0 = c[0], w.b1 = c[1], w.h0 = e[0], w.h1 = e[1];
        const float d = f16_at(b + 208);
        const int pick = 8 * (l >> 4);  // scale 2r + l / 16: byte 2 (r % 2) + l / 16 of word r / 2
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const uint32_t v = static_cast<uint32_t>(sc[r >> 1]) >> (16 * (r & 1) + pick);
            w.ds[r] = d * static_cast<float>(static_cast<int8_t>(v & 0xFF));
        }
        w.s = s;
        return w;
    }
    static __device__ __forceinline__ float dot(const W& w, const int8_t* xq, const float2* xds) {
        using namespace quant_cuh;
        const int h = w.s >> 2, l = 8 * (w.s & 3);
        float acc = 0.f;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int src0 = (r & 1) ? w.b0 : w.a0, src1 = (r & 1) ? w.b1 : w.a1;
            const int sh = r >= 2 ? 4 : 0;
            const int v0 = __vsubss4(((src0 >> sh) & 0x0F0F0F0F) | (((w.h0 >> (2 * r)) & 0x03030303) << 4), 0x20202020);
            const int v1 = __vsubss4(((src1 >> sh) & 0x0F0F0F0F) | (((w.h1 >> (2 * r)) & 0x03030303) << 4), 0x20202020);
            const int2 x = ld_x8(xq + 128 * h + 32 * r + l);
            const int sumi = __dp4a(v1, x.y, __dp4a(v0, x.x, 0));
            acc = fmaf(w.ds[r] * xds[4 * h + r].x, static_cast<float>(sumi), acc);
        }
        return acc;
    }
};
using DotQ6_K = DotQ6_KT<QUANT_W4>;
