//! The scalar build: plain loops over the ggml block layouts (see `encore_tensor::quant`
//! for each layout), integer sums per block, one f32 scaling per block. It is the fallback
//! where no SIMD build runs and the reference the SIMD builds are tested against.

use super::{ActRow, Simd};
use encore_tensor::quant::{scale_min_k4, QK_K};
use half::f16;

pub(crate) static SCALAR: Simd =
    Simd { name: "scalar", dot: [dot_q8_0, dot_q4_0, dot_q4_1, dot_q4_k, dot_q5_k, dot_q6_k], quantize_32, quantize_k };

pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// The scale of a block whose largest magnitude is `amax`, and its inverse (0 for 0).
pub(super) fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

fn quantize_32(x: &[f32], qs: &mut [i8], ds: &mut [[f32; 2]]) {
    for ((x, q), ds) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)).zip(ds.iter_mut()) {
        let (d, id) = scale_of(x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        *ds = [d, d * sum as f32];
    }
}

fn quantize_k(x: &[f32], qs: &mut [i8], d: &mut [f32], bsums: &mut [i16]) {
    for (((x, q), d), bs) in
        x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K)).zip(d.iter_mut()).zip(bsums.chunks_exact_mut(16))
    {
        let (scale, id) = scale_of(x.iter().fold(0.0f32, |m, v| m.max(v.abs())));
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        for (s, q) in bs.iter_mut().zip(q.chunks_exact(16)) {
            *s = q.iter().map(|&v| v as i16).sum();
        }
        *d = scale;
    }
}

fn dot_q8_0(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let x = &a.qs[32 * b..32 * b + 32];
        let p: i32 = blk[2..34].iter().zip(x).map(|(&q, &x)| q as i8 as i32 * x as i32).sum();
        s += f16_at(blk, 0) * a.ds[b][0] * p as f32;
    }
    s
}

/// `sum((q - 8) x) = sum(q x) - 8 sum(x)`: the second term from the block's `d * sum(q)`.
fn dot_q4_0(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(18).enumerate() {
        let x = &a.qs[32 * b..32 * b + 32];
        let mut p = 0i32;
        for (j, &q) in blk[2..18].iter().enumerate() {
            p += (q & 0xF) as i32 * x[j] as i32 + (q >> 4) as i32 * x[j + 16] as i32;
        }
        let d = f16_at(blk, 0);
        s += d * (a.ds[b][0] * p as f32 - 8.0 * a.ds[b][1]);
    }
    s
}

fn dot_q4_1(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(20).enumerate() {
        let x = &a.qs[32 * b..32 * b + 32];
        let mut p = 0i32;
        for (j, &q) in blk[4..20].iter().enumerate() {
            p += (q & 0xF) as i32 * x[j] as i32 + (q >> 4) as i32 * x[j + 16] as i32;
        }
        s += f16_at(blk, 0) * a.ds[b][0] * p as f32 + f16_at(blk, 2) * a.ds[b][1];
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

/// `sum_j min_j * sum(x of sub-block j)`, the min term of a Q4_K / Q5_K block.
pub(super) fn mins_dot(mn: &[u8; 8], bsums: &[i16]) -> i32 {
    (0..8).map(|j| mn[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32)).sum()
}

fn dot_q4_k(w: &[u8], a: &ActRow) -> f32 {
    dot_q45_k(w, a, false)
}

fn dot_q5_k(w: &[u8], a: &ActRow) -> f32 {
    dot_q45_k(w, a, true)
}

fn dot_q45_k(w: &[u8], a: &ActRow, five: bool) -> f32 {
    let bb = if five { 176 } else { 144 };
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let (sc, mn) = scales_mins(&blk[4..16]);
        let x = &a.qs[QK_K * b..QK_K * (b + 1)];
        let (qh, qs) = if five { (&blk[16..48], &blk[48..176]) } else { (&blk[0..0], &blk[16..144]) };
        let mut sumi = 0i32;
        for (c, q) in qs.chunks_exact(32).enumerate() {
            let (mut lo, mut hi) = (0i32, 0i32);
            for (l, &v) in q.iter().enumerate() {
                let (mut ql, mut qh5) = ((v & 0xF) as i32, (v >> 4) as i32);
                if five {
                    ql += (((qh[l] >> (2 * c)) & 1) as i32) << 4;
                    qh5 += (((qh[l] >> (2 * c + 1)) & 1) as i32) << 4;
                }
                lo += ql * x[64 * c + l] as i32;
                hi += qh5 * x[64 * c + 32 + l] as i32;
            }
            sumi += sc[2 * c] as i32 * lo + sc[2 * c + 1] as i32 * hi;
        }
        let dx = a.dk[b];
        let mins = mins_dot(&mn, &a.bsums[16 * b..16 * b + 16]);
        s += f16_at(blk, 0) * dx * sumi as f32 - f16_at(blk, 2) * dx * mins as f32;
    }
    s
}

fn dot_q6_k(w: &[u8], a: &ActRow) -> f32 {
    let mut s = 0.0f32;
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let x = &a.qs[QK_K * b..QK_K * (b + 1)];
        let mut sumi = 0i32;
        for half in 0..2 {
            let ql = &blk[64 * half..64 * half + 64];
            let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
            let sc = &blk[192 + 8 * half..192 + 8 * half + 8];
            let x = &x[128 * half..128 * half + 128];
            let mut p = [0i32; 8];
            for l in 0..32 {
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let g = l / 16;
                p[g] += q1 * x[l] as i32;
                p[g + 2] += q2 * x[l + 32] as i32;
                p[g + 4] += q3 * x[l + 64] as i32;
                p[g + 6] += q4 * x[l + 96] as i32;
            }
            sumi += (0..8).map(|g| sc[g] as i8 as i32 * p[g]).sum::<i32>();
        }
        s += f16_at(blk, 208) * a.dk[b] * sumi as f32;
    }
    s
}
