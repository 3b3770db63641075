//! The scalar build: plain loops over the ggml block layouts (see `encore_tensor::quant`
//! for each layout), integer sums per block (`256 S1 + S2` of the two activation levels),
//! one f32 scaling per block. It is the fallback where no SIMD build runs and the reference
//! the SIMD builds are tested against.

use super::repack::{plain_row, ROWS};
use super::{ActRow, DotFn, Simd};
use encore_tensor::quant::{scale_min_k4, QK_K};
use encore_tensor::QuantType;
use half::f16;

pub(crate) static SCALAR: Simd = Simd {
    name: "scalar",
    dot: [dot_q8_0, dot_q4_0, dot_q4_1, dot_q4_k, dot_q5_k, dot_q6_k],
    dot8: [
        Some(|g, a, o| dot8(QuantType::Q8_0, dot_q8_0, g, a, o)),
        Some(|g, a, o| dot8(QuantType::Q4_0, dot_q4_0, g, a, o)),
        Some(|g, a, o| dot8(QuantType::Q4_1, dot_q4_1, g, a, o)),
        None,
        None,
        None,
    ],
    quantize_32,
    quantize_k,
};

/// 8 interleaved rows: each restored to its ggml blocks, then dotted.
fn dot8(qtype: QuantType, dot: DotFn, group: &[u8], acts: &[ActRow], out: &mut [f32]) {
    let rb = group.len() / ROWS;
    let cols = rb / qtype.block_bytes() * qtype.block_len();
    let mut row = vec![0u8; rb];
    for r in 0..ROWS {
        plain_row(qtype, ROWS, cols, group, r, &mut row);
        for (m, a) in acts.iter().enumerate() {
            out[m * ROWS + r] = dot(&row, a);
        }
    }
}

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `(d1, 1 / d1)` of a block whose largest magnitude is `amax` (`(0, 0)` for 0).
pub(super) fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// The two levels of `v * id`: `q1 = round(t)`, `q2 = round(256 (t - q1))` (in -127..=127).
pub(super) fn levels(t: f32) -> (i8, i8) {
    let q1 = t.round();
    (q1 as i8, ((t - q1) * 256.0).round().clamp(-127.0, 127.0) as i8)
}

fn quantize_32(x: &[f32], q1: &mut [i8], q2: &mut [i8], d: &mut [f32], isum: &mut [i32], xsum: &mut [f32]) {
    for (b, x) in x.chunks_exact(32).enumerate() {
        let (scale, id) = scale_of(x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        let mut sum = 0i32;
        for (j, &v) in x.iter().enumerate() {
            let (a, c) = levels(v * id);
            (q1[32 * b + j], q2[32 * b + j]) = (a, c);
            sum += 256 * a as i32 + c as i32;
        }
        d[b] = scale / 256.0;
        isum[b] = sum;
        xsum[b] = x.iter().sum();
    }
}

fn quantize_k(x: &[f32], q1: &mut [i8], q2: &mut [i8], d: &mut [f32], _isum: &mut [i32], xsum: &mut [f32]) {
    for (b, x) in x.chunks_exact(QK_K).enumerate() {
        let (scale, id) = scale_of(x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        for (j, &v) in x.iter().enumerate() {
            (q1[QK_K * b + j], q2[QK_K * b + j]) = levels(v * id);
        }
        d[b] = scale / 256.0;
        for (s, c) in xsum[16 * b..16 * b + 16].iter_mut().zip(x.chunks_exact(16)) {
            *s = c.iter().sum();
        }
    }
}

/// `sum(w * (256 q1 + q2))` over `n` elements, `w(i)` the integer weight of element `i`.
fn isum(n: usize, q1: &[i8], q2: &[i8], w: impl Fn(usize) -> i32) -> i32 {
    (0..n).map(|i| w(i) * (256 * q1[i] as i32 + q2[i] as i32)).sum()
}

fn dot_q8_0(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let p = isum(32, &a.q1[32 * b..], &a.q2[32 * b..], |i| blk[2 + i] as i8 as i32);
        s += f16_at(blk, 0) * a.d[b] * p as f32;
    }
    s
}

/// The 4-bit value of element `i` of a Q4_0 / Q4_1 block's 16 `qs` bytes.
fn nibble(qs: &[u8], i: usize) -> i32 {
    if i < 16 {
        (qs[i] & 0xF) as i32
    } else {
        (qs[i - 16] >> 4) as i32
    }
}

/// `sum((q - 8) x) = sum(q x) - 8 sum(x)`.
fn dot_q4_0(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let p = isum(32, &a.q1[32 * b..], &a.q2[32 * b..], |i| nibble(&blk[2..18], i));
        let d = f16_at(blk, 0);
        s += d * (a.d[b] * p as f32 - 8.0 * a.xsum[b]);
    }
    s
}

fn dot_q4_1(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let p = isum(32, &a.q1[32 * b..], &a.q2[32 * b..], |i| nibble(&blk[4..20], i));
        s += f16_at(blk, 0) * a.d[b] * p as f32 + f16_at(blk, 2) * a.xsum[b];
    }
    s
}

/// The 8 scales and mins of a Q4_K / Q5_K block.
pub(super) fn scales_mins(scales: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, scales);
    }
    (sc, mn)
}

/// `sum_j min_j * sum(x of sub-block j)`, the min term of a Q4_K / Q5_K block, from the
/// sums of 16.
pub(super) fn mins_dot(mn: &[u8; 8], xsum: &[f32]) -> f32 {
    (0..8).map(|j| mn[j] as f32 * (xsum[2 * j] + xsum[2 * j + 1])).sum()
}

fn dot_q4_k(w: &[u8], a: &ActRow) -> f32 {
    dot_q45_k(w, a, false)
}

fn dot_q5_k(w: &[u8], a: &ActRow) -> f32 {
    dot_q45_k(w, a, true)
}

/// The 4- (or 5-) bit value of element `e` (0..256) of a Q4_K / Q5_K block.
fn q45(qs: &[u8], qh: &[u8], five: bool, e: usize) -> i32 {
    let (c, l, high) = (e / 64, e % 32, (e % 64) >= 32);
    let v = qs[32 * c + l];
    let mut q = if high { (v >> 4) as i32 } else { (v & 0xF) as i32 };
    if five {
        q += (((qh[l] >> (2 * c + high as usize)) & 1) as i32) << 4;
    }
    q
}

fn dot_q45_k(w: &[u8], a: &ActRow, five: bool) -> f32 {
    let bb = if five { 176 } else { 144 };
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let (sc, mn) = scales_mins(&blk[4..16]);
        let (qh, qs) = if five { (&blk[16..48], &blk[48..176]) } else { (&blk[0..0], &blk[16..144]) };
        let (q1, q2) = (&a.q1[QK_K * b..], &a.q2[QK_K * b..]);
        // per sub-block: sums of both levels kept apart (256 S1 would overflow i32 here)
        let (mut s1, mut s2) = (0i64, 0i64);
        for j in 0..8 {
            let (mut p1, mut p2) = (0i32, 0i32);
            for i in 32 * j..32 * j + 32 {
                let q = q45(qs, qh, five, i);
                p1 += q * q1[i] as i32;
                p2 += q * q2[i] as i32;
            }
            s1 += sc[j] as i64 * p1 as i64;
            s2 += sc[j] as i64 * p2 as i64;
        }
        let sumi = 256.0 * s1 as f32 + s2 as f32;
        let mins = mins_dot(&mn, &a.xsum[16 * b..16 * b + 16]);
        s += f16_at(blk, 0) * a.d[b] * sumi - f16_at(blk, 2) * mins;
    }
    s
}

/// The 6-bit value (0..64, before the -32) of element `e` of a Q6_K block.
fn q6(blk: &[u8], e: usize) -> i32 {
    let (half, r) = (e / 128, e % 128);
    let (ql, qh) = (&blk[64 * half..], &blk[128 + 32 * half..]);
    let (run, l) = (r / 32, r % 32);
    let lo = match run {
        0 => ql[l] & 0xF,
        1 => ql[l + 32] & 0xF,
        2 => ql[l] >> 4,
        _ => ql[l + 32] >> 4,
    };
    (lo | (((qh[l] >> (2 * run)) & 3) << 4)) as i32
}

fn dot_q6_k(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let sc = &blk[192..208];
        let (q1, q2) = (&a.q1[QK_K * b..], &a.q2[QK_K * b..]);
        let (mut s1, mut s2) = (0i64, 0i64);
        let mut offset = 0.0f32;
        for g in 0..16 {
            let (mut p1, mut p2) = (0i32, 0i32);
            for i in 16 * g..16 * g + 16 {
                let q = q6(blk, i);
                p1 += q * q1[i] as i32;
                p2 += q * q2[i] as i32;
            }
            let scale = sc[g] as i8 as i64;
            s1 += scale * p1 as i64;
            s2 += scale * p2 as i64;
            offset += scale as f32 * a.xsum[16 * b + g];
        }
        let d = f16_at(blk, 208);
        s += d * (a.d[b] * (256.0 * s1 as f32 + s2 as f32) - 32.0 * offset);
    }
    s
}
