//! llama.cpp's ggml tensor types as GGUF names them, and dequantization to f32 (for float
//! compute dtypes and for tensors the decoder keeps in float). The block layouts and their
//! reference decoding live in `encore_tensor::quant`, beside the quantized tensors that keep
//! them as they are ([`GgmlType::quant_type`] maps a GGUF type to its block type).

use encore_tensor::quant::{dequantize_row, QuantType};
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
    /// Q5_0 / Q5_1 (llama.cpp's Q4_K_M/Q5_K_M mixes use them for some tensors) have no block
    /// type in `encore_tensor::quant`: they are dequantized here and the decoder keeps them in
    /// float (dense `Linear`).
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl GgmlType {
    /// `Err(code)` for a type encore does not dequantise (its name, when known, in the error).
    pub fn from_code(code: u32) -> Result<Self, String> {
        Ok(match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => {
                const NAMES: [(u32, &str); 7] =
                    [(9, "Q8_1"), (10, "Q2_K"), (11, "Q3_K"), (15, "Q8_K"), (24, "I8"), (26, "I32"), (28, "F64")];
                let name = NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n).unwrap_or("unknown");
                return Err(format!("ggml type {code} ({name})"));
            }
        })
    }

    /// The block type of a quantized type; `None` for the float types.
    pub fn quant_type(self) -> Option<QuantType> {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q5_0 | GgmlType::Q5_1 => None,
            GgmlType::Q4_0 => Some(QuantType::Q4_0),
            GgmlType::Q4_1 => Some(QuantType::Q4_1),
            GgmlType::Q8_0 => Some(QuantType::Q8_0),
            GgmlType::Q4_K => Some(QuantType::Q4_K),
            GgmlType::Q5_K => Some(QuantType::Q5_K),
            GgmlType::Q6_K => Some(QuantType::Q6_K),
        }
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q5_0 | GgmlType::Q5_1 => 32,
            q => q.quant_type().map_or(1, QuantType::block_len),
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            q => q.quant_type().map_or(1, QuantType::block_bytes),
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
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            q => q.quant_type().map_or("?", QuantType::name),
        }
    }
}

/// Every element of `data` (whole blocks of type `ty`) as f32.
pub fn dequantize(ty: GgmlType, data: &[u8]) -> Vec<f32> {
    debug_assert_eq!(data.len() % ty.block_bytes(), 0);
    let blocks = data.chunks_exact(ty.block_bytes());
    match ty {
        GgmlType::F32 => blocks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GgmlType::F16 => blocks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        GgmlType::BF16 => blocks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        GgmlType::Q5_0 => blocks.flat_map(|b| q5_block(f16_at(b, 0), 0.0, 16, &b[2..])).collect(),
        GgmlType::Q5_1 => blocks.flat_map(|b| q5_block(f16_at(b, 0), f16_at(b, 2), 0, &b[4..])).collect(),
        q => {
            let qt = q.quant_type().expect("the float types are matched above");
            let mut out = vec![0.0; data.len() / qt.block_bytes() * qt.block_len()];
            dequantize_row(qt, data, &mut out);
            out
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// One Q5_0 / Q5_1 block of 32 (ggml's `dequantize_row_q5_{0,1}`): `rest` is the u32 of high
/// bits then 16 bytes of low nibbles; element `j` is nibble `j % 16` (low half first) plus
/// bit `j` of the high bits as bit 4. Q5_0 centres the 5-bit value (`offset` 16, `m` 0),
/// Q5_1 adds its minimum `m` (`offset` 0).
fn q5_block(d: f32, m: f32, offset: i32, rest: &[u8]) -> [f32; 32] {
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let qs = &rest[4..20];
    let mut out = [0.0f32; 32];
    for j in 0..16 {
        let lo = (qs[j] & 0x0F) as i32 | ((((qh >> j) & 1) << 4) as i32);
        let hi = (qs[j] >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
        out[j] = (lo - offset) as f32 * d + m;
        out[j + 16] = (hi - offset) as f32 * d + m;
    }
    out
}
