//! The preallocated KV cache: per layer one K and one V buffer of `[S, Hkv, D]` slots, with
//! `S = max_seqs * max_ctx`. Sequence `s` owns slots `s * max_ctx ..`, so position `p` of it
//! lives at slot `s * max_ctx + p`. Nothing is ever grown or concatenated (that could not be
//! captured in a graph); a later paged cache replaces the slot arithmetic with block tables.

use encore_tensor::{Backend, DType, Result, Tensor};

pub struct KvCache<B: Backend> {
    /// per layer, k: [S, Hkv, D]
    pub k: Vec<Tensor<B>>,
    /// per layer, v: [S, Hkv, D]
    pub v: Vec<Tensor<B>>,
    pub max_seqs: usize,
    pub max_ctx: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(
        b: &B,
        dtype: DType,
        layers: usize,
        max_seqs: usize,
        max_ctx: usize,
        hkv: usize,
        d: usize,
    ) -> Result<Self> {
        let dims = [max_seqs * max_ctx, hkv, d];
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(b.zeros(dtype, &dims)?);
            v.push(b.zeros(dtype, &dims)?);
        }
        Ok(KvCache { k, v, max_seqs, max_ctx })
    }

    /// Slot of position 0 of sequence `seq`.
    pub fn seq_start(&self, seq: usize) -> i32 {
        (seq * self.max_ctx) as i32
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.numel() * t.dtype().size_in_bytes()).sum()
    }

    /// Bytes one layer's K and V take per token.
    pub fn bytes_per_token(layers: usize, hkv: usize, d: usize, dtype: DType) -> usize {
        2 * layers * hkv * d * dtype.size_in_bytes()
    }
}
