// attention_tc.cuh: the tensor-core pieces shared by attention_decode.cu and
// attention_prefill.cu (bf16 / f16 only; f32 stays on attention.cu's CUDA-core path).
//
// - load_kv_tile: NK consecutive keys of one sequence and one KV head, paged through the
//   block table, into shared memory with cp.async (16-byte chunks; a key is D contiguous
//   elements of the [slot, Hkv, D] cache, slots Hkv * D elements apart). Keys at or past
//   `jend` are zero-filled and read nothing.
// - WarpAttn: one warp's flash-attention state over 16 packed query rows (rows of
//   mma.m16n8k16): online softmax in base 2 (m, l per row), the f32 output accumulators
//   o[D/8][4], and `step`, which folds one slab of NKEY keys from shared memory into them:
//   S = Q K^T (ldmatrix + mma), scale and mask, softmax update, O += P V (P rounded to the
//   input dtype, V through ldmatrix.trans).
//
// Shared-memory tiles are row-major [rows][D + 8] elements: the 16-byte pad makes the row
// stride an odd number of 16-byte units (D % 16 == 0), so the 8 row addresses of an
// ldmatrix hit 8 different bank groups.
//
// Fragment layout (PTX m16n8k16, lane = 4 * gr + qd): a thread holds rows gr and gr + 8 of
// S and O, columns 2 qd, 2 qd + 1 of each 8-wide n-tile.
#pragma once

#include "common.cuh"

namespace attention_tc {

constexpr int THREADS = 128;  // 4 warps

// Keys [j0, j0 + NK) of one sequence into sk / sv (rb bytes a row). kb, vb point at the KV
// head's first element of slot 0; table is the sequence's block-table row.
template <typename T, int NK>
__device__ __forceinline__ void load_kv_tile(uint32_t sk, uint32_t sv, uint32_t rb, const T* __restrict__ kb,
                                             const T* __restrict__ vb, const int32_t* __restrict__ table, int j0,
                                             int jend, uint32_t block_size, size_t slot_stride, int nch) {
    // chunk i = r * nch + c, stepped by THREADS: carry c into r instead of dividing per chunk
    int r = threadIdx.x / nch, c = threadIdx.x - r * nch;
    const int dr = THREADS / nch, dc = THREADS - dr * nch;
    for (; r < NK; r += dr) {
        const int j = j0 + r;
        const bool ok = j < jend;
        size_t off = static_cast<size_t>(c) * 8;
        if (ok) {
            const uint32_t ju = static_cast<uint32_t>(j);
            off += (static_cast<size_t>(table[ju / block_size]) * block_size + ju % block_size) * slot_stride;
        }
        const uint32_t so = r * rb + c * 16;
        cp_async16(sk + so, kb + off, ok);
        cp_async16(sv + so, vb + off, ok);
        c += dc;
        if (c >= nch) {
            c -= nch;
            r += 1;
        }
    }
}

// One warp, 16 query rows, keys in slabs of NKEY (a multiple of 16). DMAX bounds D (a
// multiple of 16, D <= DMAX); QREGS keeps the Q fragments in registers (else they are
// re-read from shared memory every slab, for DMAX = 256 where registers run out).
template <typename T, int NKEY, int DMAX, bool QREGS>
struct WarpAttn {
    static constexpr int NS = NKEY / 8;  // n-tiles of S
    static constexpr int NO = DMAX / 8;  // n-tiles of O
    static constexpr int KQ = DMAX / 16; // k-steps over D
    float o[NO][4];
    float m[2], l[2];
    uint32_t qa[QREGS ? KQ : 1][4];

    __device__ __forceinline__ void init() {
#pragma unroll
        for (int n = 0; n < NO; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
        m[0] = m[1] = -INFINITY;
        l[0] = l[1] = 0.f;
    }

    // A fragment of k-step kk from the 16 Q rows at sq.
    __device__ __forceinline__ void q_frag(uint32_t (&a)[4], uint32_t sq, uint32_t rb, int kk) const {
        const int lane = threadIdx.x & 31, mi = lane >> 3, r8 = lane & 7;
        ldmatrix_x4(a, sq + ((mi & 1) * 8 + r8) * rb + (kk * 16 + (mi >> 1) * 8) * 2);
    }

    __device__ __forceinline__ void load_q(uint32_t sq, uint32_t rb, int kt) {
        if constexpr (QREGS) {
#pragma unroll
            for (int kk = 0; kk < KQ; ++kk)
                if (kk < kt) q_frag(qa[kk], sq, rb, kk);
        }
    }

    // Fold keys sk[0..NKEY) / sv[0..NKEY) in. valid(n, e): whether S element e of n-tile n
    // (key n * 8 + 2 qd + (e & 1), row gr + 8 (e >> 1)) is attended; asked only when
    // need_mask. sl2 = scale * log2(e).
    template <class Valid>
    __device__ __forceinline__ void step(uint32_t sq, uint32_t sk, uint32_t sv, uint32_t rb, int kt, int nt,
                                         float sl2, bool need_mask, Valid valid) {
        const int lane = threadIdx.x & 31, mi = lane >> 3, r8 = lane & 7;
        float s[NS][4];
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KQ; ++kk) {
            if (kk < kt) {
                uint32_t a[4];
                if constexpr (QREGS) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[i] = qa[kk][i];
                } else {
                    q_frag(a, sq, rb, kk);
                }
#pragma unroll
                for (int np = 0; np < NS / 2; ++np) {
                    // keys np*16 + {0..7, 8..15} x d kk*16 + {0..7, 8..15}: B of n-tiles 2np, 2np+1
                    uint32_t b[4];
                    ldmatrix_x4(b, sk + (np * 16 + (mi >> 1) * 8 + r8) * rb + (kk * 16 + (mi & 1) * 8) * 2);
                    mma_16816<T>(s[2 * np], a, b[0], b[1]);
                    mma_16816<T>(s[2 * np + 1], a, b[2], b[3]);
                }
            }
        }
        // online softmax (base 2); rows gr (e < 2) and gr + 8 (e >= 2)
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float v = s[n][e] * sl2;
                if (need_mask && !valid(n, e)) v = -INFINITY;
                s[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float corr[2], ms[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(ENCORE_FULL_MASK, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(ENCORE_FULL_MASK, mx[i], 2));
            ms[i] = mx[i] == -INFINITY ? 0.f : mx[i];  // a row with nothing yet: p = 0, corr = 0
            corr[i] = exp2f(m[i] - ms[i]);
            m[i] = mx[i];
        }
        float ps[2] = {0.f, 0.f};
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = exp2f(s[n][e] - ms[e >> 1]);
                s[n][e] = p;
                ps[e >> 1] += p;
            }
        l[0] = l[0] * corr[0] + ps[0];
        l[1] = l[1] * corr[1] + ps[1];
#pragma unroll
        for (int n = 0; n < NO; ++n) {
            if (n < nt) {
                o[n][0] *= corr[0];
                o[n][1] *= corr[0];
                o[n][2] *= corr[1];
                o[n][3] *= corr[1];
            }
        }
        // O += P V: the S accumulators of n-tiles 2kc, 2kc+1 are the A fragment of keys kc*16..
#pragma unroll
        for (int kc = 0; kc < NKEY / 16; ++kc) {
            const uint32_t pa[4] = {pack2<T>(s[2 * kc][0], s[2 * kc][1]), pack2<T>(s[2 * kc][2], s[2 * kc][3]),
                                    pack2<T>(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                    pack2<T>(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int np = 0; np < NO / 2; ++np) {
                if (2 * np < nt) {
                    // keys kc*16 + {0..7, 8..15} x d (2np + {0, 1}) * 8..: B of n-tiles 2np, 2np+1
                    uint32_t b[4];
                    ldmatrix_x4_trans(b, sv + (kc * 16 + (mi & 1) * 8 + r8) * rb + ((2 * np + (mi >> 1)) * 8) * 2);
                    mma_16816<T>(o[2 * np], pa, b[0], b[1]);
                    mma_16816<T>(o[2 * np + 1], pa, b[2], b[3]);
                }
            }
        }
    }

    // Sum l over the quad that shares a row (each lane summed its own columns).
    __device__ __forceinline__ void finish() {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            l[i] += __shfl_xor_sync(ENCORE_FULL_MASK, l[i], 1);
            l[i] += __shfl_xor_sync(ENCORE_FULL_MASK, l[i], 2);
        }
    }
};

// Merge the states of the 4 warps, which folded disjoint keys of the same 16 rows, through
// shared memory (`smem`: free by now, at least 512 + 256 * D bytes; the caller syncs
// before). emit(r, d, o, l, m) for every row r < nrows and d < D: o unnormalised, l the sum
// and m the max (base 2) over all 4 warps. Ends with the block synced.
template <class WA, class Emit>
__device__ __forceinline__ void merge_warps(unsigned char* smem, const WA& wa, int nrows, int D, Emit emit) {
    float* sm_m = reinterpret_cast<float*>(smem);  // [4][16]
    float* sm_l = sm_m + 64;                       // [4][16]
    float* so = sm_l + 64;                         // [4][16][D]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gr = lane >> 2, qd = lane & 3;
    const int nt = D / 8;
    if (qd == 0) {
        sm_m[warp * 16 + gr] = wa.m[0];
        sm_m[warp * 16 + gr + 8] = wa.m[1];
        sm_l[warp * 16 + gr] = wa.l[0];
        sm_l[warp * 16 + gr + 8] = wa.l[1];
    }
#pragma unroll
    for (int n = 0; n < WA::NO; ++n) {
        if (n < nt) {
            float* r0 = so + (warp * 16 + gr) * D + n * 8 + 2 * qd;
            float* r1 = r0 + 8 * D;
            r0[0] = wa.o[n][0];
            r0[1] = wa.o[n][1];
            r1[0] = wa.o[n][2];
            r1[1] = wa.o[n][3];
        }
    }
    __syncthreads();
    for (int i = tid; i < nrows * D; i += THREADS) {
        const int r = i / D, d = i - r * D;
        float mb = -INFINITY;
#pragma unroll
        for (int w = 0; w < 4; ++w) mb = fmaxf(mb, sm_m[w * 16 + r]);
        float lb = 0.f, ob = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const float mw = sm_m[w * 16 + r];
            const float wt = mw == -INFINITY ? 0.f : exp2f(mw - mb);
            lb = fmaf(sm_l[w * 16 + r], wt, lb);
            ob = fmaf(so[(w * 16 + r) * D + d], wt, ob);
        }
        emit(r, d, ob, lb, mb);
    }
    __syncthreads();
}

// The keys [kbeg, kend) a query at `pos` attends (empty for a padded row), clipped to the
// block table.
__device__ __forceinline__ void key_range(int32_t pos, uint32_t window, uint32_t max_blocks, uint32_t block_size,
                                          int& kbeg, int& kend) {
    kbeg = 0;
    kend = 0;
    if (pos >= 0) {
        kbeg = window > 0 && static_cast<uint32_t>(pos) >= window ? pos - static_cast<int>(window) + 1 : 0;
        const long long cap = static_cast<long long>(max_blocks) * block_size;
        kend = static_cast<int>(min(static_cast<long long>(pos) + 1, cap));
    }
}

}  // namespace attention_tc
