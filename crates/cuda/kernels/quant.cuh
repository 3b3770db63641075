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
