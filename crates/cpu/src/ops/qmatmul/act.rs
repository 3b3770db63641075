//! Activations quantized for the integer dot products: every row of `x [M, K]` in blocks
//! (32 for the Q8_0 / Q4_0 / Q4_1 weights, 256 for the k-quants), each element as two i8,
//! `x = d1 * (q1 + q2 / 256)`: `q1 = round(x / d1)` with `d1 = max|x| / 127`, and `q2` its
//! rounded residual. That is 16-bit precision (an error of at most `d1 / 512`) from the
//! 8-bit instructions: each dot product runs twice and combines `256 * S1 + S2`.
//!
//! Why not llama.cpp's 8 bits: on SmolLM2 they move the logits by up to ~1, and the HF
//! goldens (made from dequantized weights in f32) have near-ties 0.08 apart.
//! Sums of `x` (for the mins and offsets of the weights) are kept in f32.

use super::Simd;
use encore_tensor::quant::QK_K;
use encore_tensor::QuantType;

/// One quantized row. Per block: `d = d1 / 256`, the scale of `256 q1 + q2`. Blocks of 32
/// also keep `isum = sum(256 q1 + q2)` and `xsum = sum(x)`; blocks of 256 keep `xsum` per
/// 16 elements.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub q1: &'a [i8],
    pub q2: &'a [i8],
    pub d: &'a [f32],
    pub isum: &'a [i32],
    pub xsum: &'a [f32],
}

/// `M` quantized rows of `K`.
pub(crate) struct Acts {
    k: usize,
    block: usize,
    pub q1: Vec<i8>,    // [M, K]
    pub q2: Vec<i8>,    // [M, K]
    pub d: Vec<f32>,    // [M, K / block]
    pub isum: Vec<i32>, // [M, K / 32] (blocks of 32)
    pub xsum: Vec<f32>, // [M, K / 32] (blocks of 32) or [M, K / 16] (blocks of 256)
}

/// The output of one quantizer call over a row: `(q1, q2, d, isum, xsum)`.
pub(crate) type QuantizeFn = fn(&[f32], &mut [i8], &mut [i8], &mut [f32], &mut [i32], &mut [f32]);

impl Acts {
    /// `x: [M, K]` row-major, for weights of `qtype` (K a multiple of its block).
    pub fn quantize(simd: &Simd, qtype: QuantType, x: &[f32], m: usize, k: usize) -> Acts {
        let block = if qtype.block_len() == QK_K { QK_K } else { 32 };
        let per_sum = if block == QK_K { 16 } else { 32 };
        let nb = k / block;
        let mut a = Acts {
            k,
            block,
            q1: vec![0; m * k],
            q2: vec![0; m * k],
            d: vec![0.0; m * nb],
            isum: vec![0; if block == 32 { m * nb } else { 0 }],
            xsum: vec![0.0; m * k / per_sum],
        };
        if k == 0 {
            return a;
        }
        let quantize = if block == QK_K { simd.quantize_k } else { simd.quantize_32 };
        let isum_len = if block == 32 { nb } else { 0 };
        for i in 0..m {
            quantize(
                &x[i * k..(i + 1) * k],
                &mut a.q1[i * k..(i + 1) * k],
                &mut a.q2[i * k..(i + 1) * k],
                &mut a.d[i * nb..(i + 1) * nb],
                &mut a.isum[i * isum_len..(i + 1) * isum_len],
                &mut a.xsum[i * k / per_sum..(i + 1) * k / per_sum],
            );
        }
        a
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let (k, nb) = (self.k, self.k / self.block);
        let part = |len: usize, per: usize| if len == 0 { 0..0 } else { i * per..(i + 1) * per };
        ActRow {
            q1: &self.q1[i * k..(i + 1) * k],
            q2: &self.q2[i * k..(i + 1) * k],
            d: &self.d[i * nb..(i + 1) * nb],
            isum: &self.isum[part(self.isum.len(), nb)],
            xsum: &self.xsum[part(self.xsum.len(), self.xsum.len() / (self.q1.len() / k).max(1))],
        }
    }
}
