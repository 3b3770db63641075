//! The x86-64 builds: AVX2 + FMA + F16C on 256-bit registers, and the same with AVX-512
//! VNNI, whose `vpdpbusd` (u8 x i8 sums of 4 into i32) replaces `vpmaddubsw` + `vpmaddwd`
//! where the block has one scale. `vpdpbusd` is emitted with `asm!` (on ymm registers, the
//! EVEX form: AVX512-VNNI + AVX512-VL) because its intrinsic is newer than the workspace's
//! minimum Rust. Each dot is generic over `VNNI`; [`detect`] installs the builds this CPU
//! runs. Layouts as in `encore_tensor::quant` and `repack.rs`; every product runs over both
//! activation levels (`act.rs`), and the integer sums equal the scalar build's.
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
                |w, a| unsafe { dot_q4::<$vnni, false>(w, a) },
                |w, a| unsafe { dot_q4::<$vnni, true>(w, a) },
                |w, a| unsafe { dot_q45_k::<false>(w, a) },
                |w, a| unsafe { dot_q45_k::<true>(w, a) },
                |w, a| unsafe { dot_q6_k(w, a) },
            ],
            dot8: [
                // SAFETY (all three): as above.
                Some(|g, a, o| unsafe { dot8::<$vnni, 0>(g, a, o) }),
                Some(|g, a, o| unsafe { dot8::<$vnni, 1>(g, a, o) }),
                Some(|g, a, o| unsafe { dot8::<$vnni, 2>(g, a, o) }),
                None,
                None,
                None,
            ],
            // SAFETY (both): as above.
            quantize_32: |x, q1, q2, d, i, s| unsafe { quantize::<32>(x, q1, q2, d, i, s) },
            quantize_k: |x, q1, q2, d, i, s| unsafe { quantize::<256>(x, q1, q2, d, i, s) },
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

/// `256 S1 + S2` per i32 lane: the products of `u` (u8) with both activation levels.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn two_levels<const VNNI: bool>(u: __m256i, x1: __m256i, x2: __m256i) -> __m256i {
    // SAFETY: register-only, with this function's features.
    unsafe {
        let z = _mm256_setzero_si256();
        _mm256_add_epi32(_mm256_slli_epi32(dot_u8i8::<VNNI>(z, u, x1), 8), dot_u8i8::<VNNI>(z, u, x2))
    }
}

/// The rows' blocks of 32 (Q8_0, Q4_0, Q4_1, row layout): `block(b)` gives block `b`'s
/// `256 S1 + S2` lanes and `d_w * d`; two accumulators keep two blocks in flight.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn blocks32(nb: usize, block: impl Fn(usize) -> (__m256i, f32)) -> f32 {
    // SAFETY: register-only intrinsics of this function's features; `block` is the
    // caller's in-bounds block reader.
    unsafe {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 1 < nb {
            let (p0, s0) = block(b);
            let (p1, s1) = block(b + 1);
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(s1), acc1);
            b += 2;
        }
        if b < nb {
            let (p0, s0) = block(b);
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(s0), acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

/// Checks the activation row covers `nb` blocks of `block` elements.
fn check_row(a: &ActRow, nb: usize, block: usize) {
    let sums = if block == 32 { nb } else { 16 * nb };
    assert!(a.q1.len() >= nb * block && a.q2.len() >= nb * block && a.d.len() >= nb && a.xsum.len() >= sums);
    assert!(block != 32 || a.isum.len() >= nb);
}

/// # Safety
/// AVX2, FMA and F16C (and AVX512-VNNI + VL when `VNNI`); `w` whole Q8_0 blocks (row
/// layout), `a` their activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0<const VNNI: bool>(w: &[u8], a: &ActRow) -> f32 {
    let nb = w.len() / 34;
    check_row(a, nb, 32);
    let (wp, x1, x2) = (w.as_ptr(), a.q1.as_ptr() as *const u8, a.q2.as_ptr() as *const u8);
    // SAFETY: b < nb: the block (34 bytes) and its activations are in bounds.
    let block = |b: usize| unsafe {
        let blk = wp.add(34 * b);
        let q = load256(blk.add(2));
        // signed x signed as |q| (u8) x sign(x, q): exact, and -128 becomes 128
        let u = _mm256_sign_epi8(q, q);
        let s1 = _mm256_sign_epi8(load256(x1.add(32 * b)), q);
        let s2 = _mm256_sign_epi8(load256(x2.add(32 * b)), q);
        (two_levels::<VNNI>(u, s1, s2), f16_at(w, 34 * b) * *a.d.get_unchecked(b))
    };
    // SAFETY: this function's features.
    unsafe { blocks32(nb, block) }
}

/// Q4_0 (`MINS` false: `-8 d sum(x)`) and Q4_1 (`MINS`: `m sum(x)`), row layout.
///
/// # Safety
/// As [`dot_q8_0`], for Q4_0 / Q4_1 blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4<const VNNI: bool, const MINS: bool>(w: &[u8], a: &ActRow) -> f32 {
    let bb = if MINS { 20 } else { 18 };
    let nb = w.len() / bb;
    check_row(a, nb, 32);
    let (wp, x1, x2) = (w.as_ptr(), a.q1.as_ptr() as *const u8, a.q2.as_ptr() as *const u8);
    // SAFETY: b < nb: the block and its activations are in bounds.
    let block = |b: usize| unsafe {
        let blk = wp.add(bb * b);
        let u = nibbles16(blk.add(bb - 16));
        let p = two_levels::<VNNI>(u, load256(x1.add(32 * b)), load256(x2.add(32 * b)));
        (p, f16_at(w, bb * b) * *a.d.get_unchecked(b))
    };
    // SAFETY: this function's features.
    let dot = unsafe { blocks32(nb, block) };
    let side: f32 = (0..nb)
        .map(|b| {
            let s = a.xsum[b];
            if MINS {
                f16_at(w, bb * b + 2) * s
            } else {
                -8.0 * f16_at(w, bb * b) * s
            }
        })
        .sum();
    dot + side
}

/// Q4_K (`FIVE` false) and Q5_K: per 64-element chunk, the low and high nibbles (plus the
/// fifth bit from `qh`) times their sub-block's scale, summed in i32 per activation level.
///
/// # Safety
/// AVX2, FMA, F16C; `w` whole blocks of the type, `a` their (256-block) activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q45_k<const FIVE: bool>(w: &[u8], a: &ActRow) -> f32 {
    let bb = if FIVE { 176 } else { 144 };
    let nb = w.len() / bb;
    check_row(a, nb, QK_K);
    let (x1p, x2p) = (a.q1.as_ptr() as *const u8, a.q2.as_ptr() as *const u8);
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let (sc, mn) = scales_mins(&blk[4..16]);
        let mins = f16_at(blk, 2) * mins_dot(&mn, &a.xsum[16 * b..16 * b + 16]);
        let qs = if FIVE { 48 } else { 16 };
        // SAFETY: the block holds qh at 16..48 (Q5_K) and 128 bytes of qs at `qs`; the
        // activations of block b are 256 bytes at 256 b (check_row).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let qh = if FIVE { load256(blk.as_ptr().add(16)) } else { _mm256_setzero_si256() };
            let (mut s1, mut s2) = (_mm256_setzero_si256(), _mm256_setzero_si256());
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
                let (scl, sch) = (_mm256_set1_epi16(sc[2 * c] as i16), _mm256_set1_epi16(sc[2 * c + 1] as i16));
                let at = QK_K * b + 64 * c;
                for (s, xp) in [(&mut s1, x1p), (&mut s2, x2p)] {
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(xp.add(at))), scl);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(xp.add(at + 32))), sch);
                    *s = _mm256_add_epi32(*s, _mm256_add_epi32(pl, ph));
                }
            }
            let sumi = 256.0 * hsum_i32(s1) as f32 + hsum_i32(s2) as f32;
            acc += f16_at(blk, 0) * a.d[b] * sumi - mins;
        }
    }
    acc
}

/// Q6_K: the four 32-element runs of each half, 6-bit values as u8 (the -32 offset from the
/// activation sums), each 16 times its i8 scale, per activation level.
///
/// # Safety
/// AVX2, FMA, F16C; `w` whole Q6_K blocks, `a` their (256-block) activations.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(w: &[u8], a: &ActRow) -> f32 {
    let nb = w.len() / 210;
    check_row(a, nb, QK_K);
    let (x1p, x2p) = (a.q1.as_ptr() as *const u8, a.q2.as_ptr() as *const u8);
    let mut acc = 0.0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let sc = &blk[192..208];
        let offset: f32 = (0..16).map(|g| sc[g] as i8 as f32 * a.xsum[16 * b + g]).sum::<f32>() * 32.0;
        // SAFETY: ql (0..128), qh (128..192) are inside the block; the activations of
        // block b are 256 bytes at 256 b (check_row).
        unsafe {
            let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
            let p = blk.as_ptr();
            let (mut s1, mut s2) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for half in 0..2 {
                let ql0 = load256(p.add(64 * half));
                let ql1 = load256(p.add(64 * half + 32));
                let qh = load256(p.add(128 + 32 * half));
                let hi = |shift: i32| match shift {
                    0 => _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4),
                    2 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4),
                    4 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m3), 4),
                    _ => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m3), 4),
                };
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql0, m4), hi(0)),
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), hi(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hi(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hi(6)),
                ];
                for (i, q) in q.into_iter().enumerate() {
                    let g = 8 * half + 2 * i;
                    let s =
                        _mm256_set_m128i(_mm_set1_epi16(sc[g + 1] as i8 as i16), _mm_set1_epi16(sc[g] as i8 as i16));
                    let at = QK_K * b + 128 * half + 32 * i;
                    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(x1p.add(at))), s));
                    s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(_mm256_maddubs_epi16(q, load256(x2p.add(at))), s));
                }
            }
            let sumi = 256.0 * hsum_i32(s1) as f32 + hsum_i32(s2) as f32;
            acc += f16_at(blk, 208) * (a.d[b] * sumi - offset);
        }
    }
    acc
}

/// `dot8_*` for 1 to 4 activation rows; `TYPE` indexes Q8_0, Q4_0, Q4_1.
///
/// # Safety
/// As [`dot_q8_0`]; `g` whole group-blocks (repack.rs) of the type, `acts` 1 to 4 rows of
/// their activations, `out` 8 per row.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8<const VNNI: bool, const TYPE: u8>(g: &[u8], acts: &[ActRow], out: &mut [f32]) {
    // SAFETY: forwarded (this function's features and the caller's contract).
    unsafe {
        match (TYPE, acts.len()) {
            (0, 1) => dot8_q8_0::<VNNI, 1>(g, acts, out),
            (0, 2) => dot8_q8_0::<VNNI, 2>(g, acts, out),
            (0, 3) => dot8_q8_0::<VNNI, 3>(g, acts, out),
            (0, _) => dot8_q8_0::<VNNI, 4>(g, acts, out),
            (1, 1) => dot8_q4::<VNNI, false, 1>(g, acts, out),
            (1, 2) => dot8_q4::<VNNI, false, 2>(g, acts, out),
            (1, 3) => dot8_q4::<VNNI, false, 3>(g, acts, out),
            (1, _) => dot8_q4::<VNNI, false, 4>(g, acts, out),
            (_, 1) => dot8_q4::<VNNI, true, 1>(g, acts, out),
            (_, 2) => dot8_q4::<VNNI, true, 2>(g, acts, out),
            (_, 3) => dot8_q4::<VNNI, true, 3>(g, acts, out),
            (_, _) => dot8_q4::<VNNI, true, 4>(g, acts, out),
        }
    }
}

/// Checks the shapes `dot8_*` rely on; returns the group-blocks.
fn check8(g: &[u8], gbb: usize, acts: &[ActRow], m: usize, out: &[f32]) -> usize {
    let nb = g.len() / gbb;
    assert!(acts.len() == m && out.len() >= 8 * m);
    acts.iter().for_each(|a| check_row(a, nb, 32));
    nb
}

/// The 4 activations at `x` (i8) in every i32 lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bcast4(x: *const u8) -> __m256i {
    // SAFETY: the caller's activation row holds 4 bytes at `x`.
    unsafe { _mm256_set1_epi32((x as *const i32).read_unaligned()) }
}

/// Q4_0 (`MINS` false: the -8 offset from the activation sums) and Q4_1 (`MINS`: the min
/// term) over 8 interleaved rows. A group-block's weights are unpacked once for the `M`
/// activation rows.
///
/// # Safety
/// As [`dot8`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_q4<const VNNI: bool, const MINS: bool, const M: usize>(g: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let gbb = if MINS { 160 } else { 144 };
    let nb = check8(g, gbb, acts, M, out);
    // SAFETY: check8 bounds every read: group-block b < nb, activations 32 b.. of each row.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); M];
        let mut side = [_mm256_setzero_ps(); M];
        for b in 0..nb {
            let gb = g.as_ptr().add(b * gbb);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(gb as *const __m128i));
            let mv = if MINS { _mm256_cvtph_ps(_mm_loadu_si128(gb.add(16) as *const __m128i)) } else { d };
            let qs = gb.add(if MINS { 32 } else { 16 });
            let w: [__m256i; 8] = std::array::from_fn(|i| {
                let run = load256(qs.add(32 * (i / 2)));
                if i % 2 == 0 {
                    _mm256_and_si256(run, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(run, 4), m4)
                }
            });
            for m in 0..M {
                let a = &acts[m];
                let x1 = (a.q1.as_ptr() as *const u8).add(32 * b);
                let x2 = (a.q2.as_ptr() as *const u8).add(32 * b);
                let (mut s1, mut s2) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for j in 0..4 {
                    s1 = dot_u8i8::<VNNI>(s1, w[2 * j], bcast4(x1.add(4 * j)));
                    s2 = dot_u8i8::<VNNI>(s2, w[2 * j], bcast4(x2.add(4 * j)));
                    s1 = dot_u8i8::<VNNI>(s1, w[2 * j + 1], bcast4(x1.add(16 + 4 * j)));
                    s2 = dot_u8i8::<VNNI>(s2, w[2 * j + 1], bcast4(x2.add(16 + 4 * j)));
                }
                let isum = _mm256_add_epi32(_mm256_slli_epi32(s1, 8), s2);
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*a.d.get_unchecked(b)));
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[m]);
                side[m] = _mm256_fmadd_ps(mv, _mm256_set1_ps(*a.xsum.get_unchecked(b)), side[m]);
            }
        }
        for m in 0..M {
            let r = if MINS {
                _mm256_add_ps(acc[m], side[m])
            } else {
                _mm256_fnmadd_ps(_mm256_set1_ps(8.0), side[m], acc[m])
            };
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * m), r);
        }
    }
}

/// Q8_0 over 8 interleaved rows; the weights are stored `q + 128` (u8). VNNI multiplies
/// them as they are and subtracts `128 * sum(256 q1 + q2)`; without VNNI they are made
/// signed again for the `|q| x sign(x, q)` product (`vpmaddubsw` would saturate on u8
/// values above 127).
///
/// # Safety
/// As [`dot8`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot8_q8_0<const VNNI: bool, const M: usize>(g: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let nb = check8(g, 272, acts, M, out);
    // SAFETY: check8 bounds every read: group-block b < nb, activations 32 b.. of each row.
    unsafe {
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let mut acc = [_mm256_setzero_ps(); M];
        for b in 0..nb {
            let gb = g.as_ptr().add(b * 272);
            let d = _mm256_cvtph_ps(_mm_loadu_si128(gb as *const __m128i));
            let w: [__m256i; 8] = std::array::from_fn(|j| {
                let run = load256(gb.add(16 + 32 * j));
                if VNNI {
                    run
                } else {
                    _mm256_xor_si256(run, flip)
                }
            });
            for m in 0..M {
                let a = &acts[m];
                let x1 = (a.q1.as_ptr() as *const u8).add(32 * b);
                let x2 = (a.q2.as_ptr() as *const u8).add(32 * b);
                let (mut s1, mut s2) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for j in 0..8 {
                    let (v1, v2) = (bcast4(x1.add(4 * j)), bcast4(x2.add(4 * j)));
                    if VNNI {
                        s1 = dot_u8i8::<VNNI>(s1, w[j], v1);
                        s2 = dot_u8i8::<VNNI>(s2, w[j], v2);
                    } else {
                        let u = _mm256_sign_epi8(w[j], w[j]);
                        s1 = dot_u8i8::<VNNI>(s1, u, _mm256_sign_epi8(v1, w[j]));
                        s2 = dot_u8i8::<VNNI>(s2, u, _mm256_sign_epi8(v2, w[j]));
                    }
                }
                let mut isum = _mm256_add_epi32(_mm256_slli_epi32(s1, 8), s2);
                if VNNI {
                    isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(128 * *a.isum.get_unchecked(b)));
                }
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(*a.d.get_unchecked(b)));
                acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale, acc[m]);
            }
        }
        for m in 0..M {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * m), acc[m]);
        }
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

/// 8 i32 lanes packed to i8 bytes, for 4 vectors (32 values) in element order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack32(v: [__m256i; 4], q: *mut i8) {
    // SAFETY: the caller's slice holds 32 bytes at `q`.
    unsafe {
        let p = _mm256_packs_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
        // packs work per 128-bit lane: restore element order
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q as *mut __m256i, p);
    }
}

/// `act.rs`'s two levels over blocks of `B` (32 or 256): `q1 = round(t)` (half to even),
/// `q2 = round(256 (t - q1))` clamped to -127..=127, `t = x / d1`.
///
/// # Safety
/// AVX2, FMA, F16C; `x.len()` a multiple of `B`, `q1`, `q2` as long, `d` one per block,
/// `isum` one per block (B = 32) or empty, `xsum` one per block (B = 32) or per 16.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize<const B: usize>(
    x: &[f32],
    q1: &mut [i8],
    q2: &mut [i8],
    d: &mut [f32],
    isum: &mut [i32],
    xsum: &mut [f32],
) {
    let nb = x.len() / B;
    let per_sum = if B == 32 { 32 } else { 16 };
    assert!(q1.len() >= x.len() && q2.len() >= x.len() && d.len() >= nb && xsum.len() >= x.len() / per_sum);
    assert!(B != 32 || isum.len() >= nb);
    for (b, c) in x.chunks_exact(B).enumerate() {
        // SAFETY: AVX2 (this function's features).
        let (scale, id) = scale_of(unsafe { amax(c) });
        d[b] = scale / 256.0;
        let mut total = 0i32;
        for j in 0..B / 32 {
            let at = B * b + 32 * j;
            // SAFETY: 32 values at c[32 j..], 32 bytes at q1/q2[at..] (asserted above).
            unsafe {
                let (lim_hi, lim_lo) = (_mm256_set1_epi32(127), _mm256_set1_epi32(-127));
                let xs: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(c.as_ptr().add(32 * j + 8 * i)));
                let t: [__m256; 4] = std::array::from_fn(|i| _mm256_mul_ps(xs[i], _mm256_set1_ps(id)));
                let r: [__m256; 4] =
                    std::array::from_fn(|i| _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t[i]));
                let l1: [__m256i; 4] = std::array::from_fn(|i| _mm256_cvtps_epi32(r[i]));
                let l2: [__m256i; 4] = std::array::from_fn(|i| {
                    let v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(t[i], r[i]), _mm256_set1_ps(256.0)));
                    _mm256_max_epi32(_mm256_min_epi32(v, lim_hi), lim_lo)
                });
                pack32(l1, q1.as_mut_ptr().add(at));
                pack32(l2, q2.as_mut_ptr().add(at));
                let both: [__m256i; 4] = std::array::from_fn(|i| _mm256_add_epi32(_mm256_slli_epi32(l1[i], 8), l2[i]));
                total +=
                    hsum_i32(_mm256_add_epi32(_mm256_add_epi32(both[0], both[1]), _mm256_add_epi32(both[2], both[3])));
                if B == 32 {
                    xsum[b] = hsum(_mm256_add_ps(_mm256_add_ps(xs[0], xs[1]), _mm256_add_ps(xs[2], xs[3])));
                } else {
                    xsum[16 * b + 2 * j] = hsum(_mm256_add_ps(xs[0], xs[1]));
                    xsum[16 * b + 2 * j + 1] = hsum(_mm256_add_ps(xs[2], xs[3]));
                }
            }
        }
        if B == 32 {
            isum[b] = total;
        }
    }
}
