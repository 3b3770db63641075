//! The x86-64 builds: AVX2 + FMA + F16C on 256-bit registers, and the same with AVX-512
//! VNNI, whose `vpdpbusd` (u8 x i8 sums of 4 into i32) replaces `vpmaddubsw` + `vpmaddwd`
//! where the block has one scale. `vpdpbusd` is emitted with `asm!` (on ymm registers, the
//! EVEX form: AVX512-VNNI + AVX512-VL) because its intrinsic is newer than the workspace's
//! minimum Rust. Each dot is generic over `VNNI`; [`detect`] installs the builds this CPU
//! runs. Layouts as in `encore_tensor::quant`; integer sums equal the scalar build's.
//!
//! Intrinsic calls sit in `unsafe` blocks even inside `#[target_feature]` functions, where
//! Rust >= 1.86 calls them safe: the workspace's minimum Rust (1.85) still needs the blocks.
#![allow(unused_unsafe)]

use super::scalar::{f16_at, mins_dot, scale_of, scales_mins};
use super::{ActRow, Simd};
use encore_tensor::quant::QK_K;
use std::arch::asm;
use std::arch::x86_64::*;

macro_rules! build {
    ($name:ident, $label:literal, $vnni:literal) => {
        static $name: Simd = Simd {
            name: $label,
            dot: [
                // SAFETY (all six): installed by `detect` only after the features were found.
                |w, a| unsafe { dot_q8_0::<$vnni>(w, a) },
                |w, a| unsafe { dot_q4_0::<$vnni>(w, a) },
                |w, a| unsafe { dot_q4_1::<$vnni>(w, a) },
                |w, a| unsafe { dot_q45_k::<false>(w, a) },
                |w, a| unsafe { dot_q45_k::<true>(w, a) },
                |w, a| unsafe { dot_q6_k(w, a) },
            ],
            // SAFETY: as above.
            quantize_32: |x, q, d| unsafe { quantize_32(x, q, d) },
            // SAFETY: as above.
            quantize_k: |x, q, d, b| unsafe { quantize_k(x, q, d, b) },
        };
    };
}
build!(AVX2, "avx2", false);
build!(AVX512_VNNI, "avx2+avx512vnni", true);

fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

fn has_vnni() -> bool {
    has_avx2() && is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
}

pub(super) fn detect() -> Option<&'static Simd> {
    if has_vnni() {
        Some(&AVX512_VNNI)
    } else if has_avx2() {
        Some(&AVX2)
    } else {
        None
    }
}

#[cfg(test)]
pub(super) fn available() -> Vec<&'static Simd> {
    let mut v = Vec::new();
    if has_avx2() {
        v.push(&AVX2);
    }
    if has_vnni() {
        v.push(&AVX512_VNNI);
    }
    v
}

/// `acc + sum of 4 (u8 x i8)` per i32 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8i8<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    if VNNI {
        let mut acc = acc;
        // SAFETY: register-only instruction; `detect` installs VNNI builds only on CPUs
        // with AVX512-VNNI and AVX512-VL (its EVEX ymm form).
        unsafe {
            asm!("vpdpbusd {acc}, {u}, {s}", acc = inout(ymm_reg) acc, u = in(ymm_reg) u, s = in(ymm_reg) s,
                options(pure, nomem, nostack));
        }
        acc
    } else {
        // |u| <= 255, |s| <= 127 in every caller: the pair sums fit i16 (maddubs saturates)
        // SAFETY: register-only intrinsics of this function's features.
        unsafe {
            let p = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics of this function's features.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: register-only intrinsics of this function's features.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
    }
}

/// The f16 at `p` (unaligned) as f32, in every lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_splat(p: *const u8) -> __m128 {
    // SAFETY: the caller's block holds two bytes at `p`.
    unsafe { _mm_cvtph_ps(_mm_set1_epi16((p as *const i16).read_unaligned())) }
}

/// 32 bytes at `p` (unaligned).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load256(p: *const u8) -> __m256i {
    // SAFETY: the caller's slice holds 32 bytes at `p`.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// The 32 4-bit values of 16 bytes: low nibbles (elements 0..16), then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles16(p: *const u8) -> __m256i {
    // SAFETY: the caller's block holds 16 bytes at `p`.
    unsafe {
        let q = _mm_loadu_si128(p as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0F))
    }
}

/// # Safety
/// AVX2, FMA and F16C (and AVX512-VNNI + VL when `VNNI`); `w` whole Q8_0 blocks, `a` their
/// activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0<const VNNI: bool>(w: &[u8], a: &ActRow) -> f32 {
    let nb = w.len() / 34;
    assert!(a.qs.len() >= nb * 32 && a.ds.len() >= nb);
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let mut acc = [_mm256_setzero_ps(); 2];
    for b in 0..nb {
        // SAFETY: b < nb: the block (34 bytes) and its 32 activations are in bounds.
        unsafe {
            let blk = wp.add(34 * b);
            let q = load256(blk.add(2));
            let x = load256(xp.add(32 * b));
            // signed x signed as |q| (u8) x sign(x, q): exact, and -128 becomes 128
            let p = dot_u8i8::<VNNI>(_mm256_setzero_si256(), _mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
            let d = _mm_mul_ss(f16_splat(blk), _mm_load_ss(&a.ds[b][0]));
            acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(d), acc[b & 1]);
        }
    }
    // SAFETY: register-only, with this function's features.
    unsafe { hsum(_mm256_add_ps(acc[0], acc[1])) }
}

/// # Safety
/// As [`dot_q8_0`], for Q4_0 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0<const VNNI: bool>(w: &[u8], a: &ActRow) -> f32 {
    let nb = w.len() / 18;
    assert!(a.qs.len() >= nb * 32 && a.ds.len() >= nb);
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let mut acc = [_mm256_setzero_ps(); 2];
    // lane 1 sums d * (d_x * sum(q_x)): the -8 offset, applied once at the end
    let mut offs = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: b < nb: the block (18 bytes) and its 32 activations are in bounds.
        unsafe {
            let blk = wp.add(18 * b);
            let x = load256(xp.add(32 * b));
            let p = dot_u8i8::<VNNI>(_mm256_setzero_si256(), nibbles16(blk.add(2)), x);
            let xs = _mm_castpd_ps(_mm_load_sd(a.ds[b].as_ptr() as *const f64));
            let d = _mm_mul_ps(f16_splat(blk), xs);
            offs = _mm_add_ps(offs, d);
            acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(d), acc[b & 1]);
        }
    }
    // SAFETY: register-only, with this function's features.
    unsafe { hsum(_mm256_add_ps(acc[0], acc[1])) - 8.0 * _mm_cvtss_f32(_mm_movehdup_ps(offs)) }
}

/// # Safety
/// As [`dot_q8_0`], for Q4_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1<const VNNI: bool>(w: &[u8], a: &ActRow) -> f32 {
    let nb = w.len() / 20;
    assert!(a.qs.len() >= nb * 32 && a.ds.len() >= nb);
    let (wp, xp) = (w.as_ptr(), a.qs.as_ptr() as *const u8);
    let mut acc = [_mm256_setzero_ps(); 2];
    // lane 1 sums m * (d_x * sum(q_x)), the min term
    let mut mins = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: b < nb: the block (20 bytes) and its 32 activations are in bounds.
        unsafe {
            let blk = wp.add(20 * b);
            let x = load256(xp.add(32 * b));
            let p = dot_u8i8::<VNNI>(_mm256_setzero_si256(), nibbles16(blk.add(4)), x);
            // [d, m] * [d_x, d_x sum(q_x)]
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
            let prod = _mm_mul_ps(dm, _mm_castpd_ps(_mm_load_sd(a.ds[b].as_ptr() as *const f64)));
            mins = _mm_add_ps(mins, prod);
            acc[b & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcastss_ps(prod), acc[b & 1]);
        }
    }
    // SAFETY: register-only, with this function's features.
    unsafe { hsum(_mm256_add_ps(acc[0], acc[1])) + _mm_cvtss_f32(_mm_movehdup_ps(mins)) }
}

/// Q4_K (`FIVE` false) and Q5_K: per 64-element chunk, the low and high nibbles (plus the
/// fifth bit from `qh`) times their sub-block's scale, summed in i32.
///
/// # Safety
/// AVX2, FMA, F16C; `w` whole blocks of the type, `a` their (256-block) activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q45_k<const FIVE: bool>(w: &[u8], a: &ActRow) -> f32 {
    let bb = if FIVE { 176 } else { 144 };
    let nb = w.len() / bb;
    assert!(a.qs.len() >= nb * QK_K && a.dk.len() >= nb && a.bsums.len() >= nb * 16);
    let xp = a.qs.as_ptr() as *const u8;
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut mins = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let (sc, mn) = scales_mins(&blk[4..16]);
        let dx = a.dk[b];
        mins += f16_at(blk, 2) * dx * mins_dot(&mn, &a.bsums[16 * b..16 * b + 16]) as f32;
        let qs = if FIVE { 48 } else { 16 };
        let mut sumi = _mm256_setzero_si256();
        // SAFETY: the block holds qh at 16..48 (Q5_K) and 128 bytes of qs at `qs`; the
        // activations of block b are 256 bytes at 256 b.
        unsafe {
            let qh = if FIVE { load256(blk.as_ptr().add(16)) } else { _mm256_setzero_si256() };
            for c in 0..4 {
                let q = load256(blk.as_ptr().add(qs + 32 * c));
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                if FIVE {
                    let sixteen = _mm256_set1_epi8(16);
                    let b1 = _mm256_set1_epi8((1u8 << (2 * c)) as i8);
                    let b2 = _mm256_set1_epi8((2u8 << (2 * c)) as i8);
                    let h1 = _mm256_cmpeq_epi8(_mm256_and_si256(qh, b1), b1);
                    let h2 = _mm256_cmpeq_epi8(_mm256_and_si256(qh, b2), b2);
                    lo = _mm256_or_si256(lo, _mm256_and_si256(h1, sixteen));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(h2, sixteen));
                }
                let xl = load256(xp.add(QK_K * b + 64 * c));
                let xh = load256(xp.add(QK_K * b + 64 * c + 32));
                let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_set1_epi16(sc[2 * c] as i16));
                let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), _mm256_set1_epi16(sc[2 * c + 1] as i16));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            let d = _mm256_set1_ps(f16_at(blk, 0) * dx);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), d, acc);
        }
    }
    // SAFETY: register-only, with this function's features.
    unsafe { hsum(acc) - mins }
}

/// Q6_K: the four 32-element runs of each half, 6-bit values as u8 (the -32 offset from the
/// activation sums), each 16 times its i8 scale.
///
/// # Safety
/// AVX2, FMA, F16C; `w` whole Q6_K blocks, `a` their (256-block) activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(w: &[u8], a: &ActRow) -> f32 {
    let nb = w.len() / 210;
    assert!(a.qs.len() >= nb * QK_K && a.dk.len() >= nb && a.bsums.len() >= nb * 16);
    let xp = a.qs.as_ptr() as *const u8;
    let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
    let mut acc = _mm256_setzero_ps();
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let bs = &a.bsums[16 * b..16 * b + 16];
        let sc = &blk[192..208];
        let offset: i32 = (0..16).map(|g| sc[g] as i8 as i32 * bs[g] as i32).sum::<i32>() * 32;
        let mut sumi = _mm256_setzero_si256();
        // SAFETY: ql (0..128), qh (128..192) are inside the block; the activations of
        // block b are 256 bytes at 256 b.
        unsafe {
            let p = blk.as_ptr();
            for half in 0..2 {
                let ql0 = load256(p.add(64 * half));
                let ql1 = load256(p.add(64 * half + 32));
                let qh = load256(p.add(128 + 32 * half));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4)),
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4),
                    ),
                ];
                for (i, q) in q.into_iter().enumerate() {
                    let x = load256(xp.add(QK_K * b + 128 * half + 32 * i));
                    let g = 8 * half + 2 * i;
                    let s =
                        _mm256_set_m128i(_mm_set1_epi16(sc[g + 1] as i8 as i16), _mm_set1_epi16(sc[g] as i8 as i16));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), s));
                }
            }
            let d = f16_at(blk, 208) * a.dk[b];
            let total = _mm256_sub_epi32(sumi, _mm256_setr_epi32(offset, 0, 0, 0, 0, 0, 0, 0));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), _mm256_set1_ps(d), acc);
        }
    }
    // SAFETY: register-only, with this function's features.
    unsafe { hsum(acc) }
}

/// 32 f32 at `x` times `id`, rounded to i8 (round half to even), stored at `q`; returns
/// their sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn round32(x: *const f32, id: __m256, q: *mut i8) -> (i32, [__m256i; 4]) {
    // SAFETY: the caller's slices hold 32 values at `x` and 32 bytes at `q`.
    unsafe {
        let v: [__m256i; 4] =
            std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.add(8 * i)), id)));
        let p01 = _mm256_packs_epi32(v[0], v[1]);
        let p23 = _mm256_packs_epi32(v[2], v[3]);
        let p = _mm256_packs_epi16(p01, p23);
        // packs work per 128-bit lane: restore element order
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q as *mut __m256i, p);
        let s = _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]));
        (hsum_i32(s), v)
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn amax(x: &[f32]) -> f32 {
    // SAFETY: each load reads one whole chunk of 8 values.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for c in x.chunks_exact(8) {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(c.as_ptr())));
        }
        let s = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)))
    }
}

/// # Safety
/// AVX2, FMA, F16C; `x.len()` a multiple of 32, `qs` as long, `ds` one per 32.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_32(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    assert!(qs.len() >= x.len() && ds.len() >= x.len() / 32);
    for (b, c) in x.chunks_exact(32).enumerate() {
        // SAFETY: AVX2 (this function's features).
        let (d, id) = scale_of(unsafe { amax(c) });
        // SAFETY: 32 values at c, 32 bytes at qs[32 b..] (asserted above).
        let (sum, _) = unsafe { round32(c.as_ptr(), _mm256_set1_ps(id), qs.as_mut_ptr().add(32 * b)) };
        ds[b] = [d, d * sum as f32];
    }
}

/// # Safety
/// AVX2, FMA, F16C; `x.len()` a multiple of 256, `qs` as long, `d` one per 256, `bsums`
/// one per 16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    assert!(qs.len() >= x.len() && d.len() >= x.len() / QK_K && bsums.len() >= x.len() / 16);
    for (b, c) in x.chunks_exact(QK_K).enumerate() {
        // SAFETY: AVX2 (this function's features).
        let (scale, id) = scale_of(unsafe { amax(c) });
        d[b] = scale;
        for j in 0..QK_K / 32 {
            // SAFETY: 32 values at c[32 j..], 32 bytes at qs[256 b + 32 j..] (asserted above).
            let (_, v) =
                unsafe { round32(c.as_ptr().add(32 * j), _mm256_set1_ps(id), qs.as_mut_ptr().add(QK_K * b + 32 * j)) };
            // SAFETY: AVX2.
            unsafe {
                bsums[16 * b + 2 * j] = hsum_i32(_mm256_add_epi32(v[0], v[1])) as i16;
                bsums[16 * b + 2 * j + 1] = hsum_i32(_mm256_add_epi32(v[2], v[3])) as i16;
            }
        }
    }
}
