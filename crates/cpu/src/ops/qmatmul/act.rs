//! Activations quantized to 8 bits for the integer dot products: every row of `x [M, K]`
//! in symmetric blocks (`q = round(x / d)`, `d = max|x| / 127`), blocks of 32 for the
//! Q8_0 / Q4_0 / Q4_1 weights and of 256 (with sums per 16) for the k-quants.

use super::Simd;
use encore_tensor::quant::QK_K;
use encore_tensor::QuantType;

/// One quantized row. For blocks of 32 `ds` holds `(d, d * sum(qs))` per block; for blocks
/// of 256 `dk` holds `d` per block and `bsums` the sum of every 16 `qs`.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub ds: &'a [[f32; 2]],
    pub dk: &'a [f32],
    pub bsums: &'a [i16],
}

/// `M` quantized rows of `K`.
pub(crate) struct Acts {
    k: usize,
    pub qs: Vec<i8>,       // [M, K]
    pub ds: Vec<[f32; 2]>, // [M, K / 32] (blocks of 32)
    pub d: Vec<f32>,       // [M, K / 256] (blocks of 256)
    pub bsums: Vec<i16>,   // [M, K / 16] (blocks of 256)
}

/// Whether the weights of `qtype` pair with blocks of 256.
pub(crate) fn is_k(qtype: QuantType) -> bool {
    qtype.block_len() == QK_K
}

impl Acts {
    /// `x: [M, K]` row-major, for weights of `qtype` (K a multiple of its block).
    pub fn quantize(simd: &Simd, qtype: QuantType, x: &[f32], m: usize, k: usize) -> Acts {
        let mut a = Acts { k, qs: vec![0; m * k], ds: Vec::new(), d: Vec::new(), bsums: Vec::new() };
        if k == 0 {
            return a;
        }
        if is_k(qtype) {
            a.d = vec![0.0; m * k / QK_K];
            a.bsums = vec![0; m * k / 16];
            for (((x, qs), d), bs) in x
                .chunks_exact(k)
                .zip(a.qs.chunks_exact_mut(k))
                .zip(a.d.chunks_exact_mut(k / QK_K))
                .zip(a.bsums.chunks_exact_mut(k / 16))
            {
                (simd.quantize_k)(x, qs, d, bs);
            }
        } else {
            a.ds = vec![[0.0; 2]; m * k / 32];
            for ((x, qs), ds) in x.chunks_exact(k).zip(a.qs.chunks_exact_mut(k)).zip(a.ds.chunks_exact_mut(k / 32)) {
                (simd.quantize_32)(x, qs, ds);
            }
        }
        a
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let k = self.k;
        let part = |len: usize, per: usize| if len == 0 { 0..0 } else { i * k / per..(i + 1) * k / per };
        ActRow {
            qs: &self.qs[i * k..(i + 1) * k],
            ds: &self.ds[part(self.ds.len(), 32)],
            dk: &self.d[part(self.d.len(), QK_K)],
            bsums: &self.bsums[part(self.bsums.len(), 16)],
        }
    }
}
