//! The paged KV cache: per layer one K and one V buffer of `[N * bs, Hkv, D]` slots, `N`
//! blocks of `bs` (block_size) slots each. Which block holds which positions of which
//! sequence is the block manager's business (engine); kernels find keys through the block
//! tables of the step inputs, and K/V are written at the slots of the slot mapping. The
//! buffers are allocated once and never grown (a captured graph addresses them).

use encore_tensor::{Backend, DType, Result, Tensor};

pub struct KvCache<B: Backend> {
    /// per layer, k: [N * bs, Hkv, D]
    pub k: Vec<Tensor<B>>,
    /// per layer, v: [N * bs, Hkv, D]
    pub v: Vec<Tensor<B>>,
    pub num_blocks: usize,
    pub block_size: usize,
}

impl<B: Backend> KvCache<B> {
    pub fn new(
        b: &B,
        dtype: DType,
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        hkv: usize,
        d: usize,
    ) -> Result<Self> {
        let dims = [num_blocks * block_size, hkv, d];
        let mut k = Vec::with_capacity(layers);
        let mut v = Vec::with_capacity(layers);
        for _ in 0..layers {
            k.push(b.zeros(dtype, &dims)?);
            v.push(b.zeros(dtype, &dims)?);
        }
        Ok(KvCache { k, v, num_blocks, block_size })
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.numel() * t.dtype().size_in_bytes()).sum()
    }

    /// Bytes K and V of every layer take per token.
    pub fn bytes_per_token(layers: usize, hkv: usize, d: usize, dtype: DType) -> usize {
        2 * layers * hkv * d * dtype.size_in_bytes()
    }
}
