//! llama.cpp's ggml block formats, dequantised to f32 on load. Each function mirrors the
//! matching `dequantize_row_*` in ggml-quants.c, block by block; the byte layout of every
//! block is spelled out above it. Quantised weights are expanded once at load time: the
//! decoder only ever sees float tensors.

use half::{bf16, f16};

/// The ggml tensor types encore can read, with their codes in the GGUF tensor info.
#[allow(non_camel_case_types)] // ggml's own names
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
}

/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

impl GgmlType {
    /// `Err(code)` for a type encore does not dequantise (its name, when known, in the error).
    pub fn from_code(code: u32) -> Result<Self, String> {
        Ok(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => {
                const NAMES: [(u32, &str); 10] = [
                    (6, "Q5_0"),
                    (7, "Q5_1"),
                    (9, "Q8_1"),
                    (10, "Q2_K"),
                    (11, "Q3_K"),
                    (13, "Q5_K"),
                    (15, "Q8_K"),
                    (24, "I8"),
                    (26, "I32"),
                    (28, "F64"),
                ];
                let name = NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n).unwrap_or("unknown");
                return Err(format!("ggml type {code} ({name})"));
            }
        })
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q6_K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q6_K => 210,
        }
    }

    /// Bytes taken by `numel` elements (`numel` a multiple of the block length); `None` when
    /// the count overflows (a corrupt shape).
    pub fn bytes_for(self, numel: usize) -> Option<usize> {
        (numel / self.block_len()).checked_mul(self.block_bytes())
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Every element of `data` (whole blocks of type `ty`) as f32.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Vec<f32> {
    debug_assert_eq!(data.len() % ty.block_bytes(), 0);
    let mut out = Vec::with_capacity(data.len() / ty.block_bytes() * ty.block_len());
    let blocks = data.chunks_exact(ty.block_bytes());
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(blocks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| q6_k(b, &mut out)),
    }
    out
}

/// `{ f16 d; u8 qs[16] }`: x[j] = (lo nibble of qs[j] - 8) * d, x[j + 16] = (hi nibble - 8) * d.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// `{ f16 d; f16 m; u8 qs[16] }`: x[j] = lo nibble * d + m, x[j + 16] = hi nibble * d + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// `{ f16 d; i8 qs[32] }`: x[j] = qs[j] * d.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in Q4_K's 12 `scales` bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`, 8 sub-blocks of 32: sub-block `s` is
/// `d * scale[s] * q - dmin * min[s]`; each 64 elements take 32 bytes of `qs`, low nibbles
/// first, then high nibbles.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|&v| d1 * (v & 0xF) as f32 - min1));
        out.extend(q.iter().map(|&v| d2 * (v >> 4) as f32 - min2));
    }
}

/// `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`: 6-bit values (4 low bits in `ql`, 2
/// high bits in `qh`) minus 32, times `d * scales[16 elements]`; two halves of 128.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let mut y = [0f32; QK_K];
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
    out.extend_from_slice(&y);
}
