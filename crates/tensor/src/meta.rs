//! The by-value kernel launch metadata: one `#[repr(C)]` struct that every strided kernel
//! takes as a parameter, mirrored exactly by `StridedMeta` in `crates/cuda/kernels/common.cuh`
//! (both sides assert its size).
//!
//! In `inline` mode the launcher fills `dims`/`strides` and leaves `info` null. In `cached`
//! and `upload` modes it leaves the arrays empty and points `info` at a device copy of
//! [`StridedMeta::info_words`]: `[dims[rank], strides[op0][rank], strides[op1][rank], ...]`
//! as `u32`. One kernel ABI serves all three modes.

use crate::{Error, Layout, Result, MAX_RANK};

/// Operands one strided kernel may index (output plus two inputs).
pub const MAX_OPERANDS: usize = 3;

/// `flags` bit: every operand is contiguous and un-offset-free-of-gaps; kernels take the
/// flat fast path and ignore dims/strides (computed once on the host, not per thread).
pub const META_ALL_CONTIGUOUS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StridedMeta {
    pub rank: u32,
    pub numel: u32,
    pub flags: u32,
    pub num_operands: u32,
    pub offsets: [u32; MAX_OPERANDS],
    pub _pad: u32,
    pub dims: [u32; MAX_RANK],
    pub strides: [[u32; MAX_RANK]; MAX_OPERANDS],
    /// Device pointer to `info_words`, or 0 when the arrays above are filled.
    pub info: u64,
}

const _: () = assert!(std::mem::size_of::<StridedMeta>() == 168);

impl StridedMeta {
    /// Metadata for operands that all have the same dims (broadcast inputs first with
    /// [`Layout::broadcast_as`]). Dims are coalesced, so a contiguous op has rank 1.
    pub fn new(op: &'static str, layouts: &[&Layout]) -> Result<Self> {
        Self::build(op, layouts, true)
    }

    /// Metadata that keeps every dim as given (no coalescing), for kernels that decompose
    /// the index into named dims (rope and kv_write read `[T, H, D]`).
    pub fn exact(op: &'static str, layouts: &[&Layout]) -> Result<Self> {
        Self::build(op, layouts, false)
    }

    fn build(op: &'static str, layouts: &[&Layout], coalesce: bool) -> Result<Self> {
        assert!(!layouts.is_empty() && layouts.len() <= MAX_OPERANDS, "{op}: 1..=3 operands");
        let dims0 = layouts[0].dims();
        for l in layouts {
            if l.dims() != dims0 {
                return Err(Error::ShapeMismatch { op, lhs: dims0.to_vec(), rhs: l.dims().to_vec() });
            }
        }
        if dims0.len() > MAX_RANK {
            return Err(Error::RankTooLarge { op, rank: dims0.len(), max: MAX_RANK });
        }
        let numel = layouts[0].numel();
        let limit = i32::MAX as usize;
        if numel > limit || layouts.iter().any(|l| l.required_len() > limit) {
            return Err(Error::TooLarge { op, numel });
        }
        let merged: Vec<Layout> =
            if coalesce { Layout::coalesce(layouts) } else { layouts.iter().map(|l| (*l).clone()).collect() };
        let mut m = StridedMeta::zeroed_meta();
        m.rank = merged[0].rank() as u32;
        m.numel = numel as u32;
        m.num_operands = layouts.len() as u32;
        let all_contig = layouts.iter().all(|l| l.is_contiguous());
        m.flags = if all_contig { META_ALL_CONTIGUOUS } else { 0 };
        for (k, l) in merged.iter().enumerate() {
            m.offsets[k] = l.offset() as u32;
            for d in 0..l.rank() {
                m.strides[k][d] = l.strides()[d] as u32;
            }
        }
        for d in 0..merged[0].rank() {
            m.dims[d] = merged[0].dims()[d] as u32;
        }
        Ok(m)
    }

    fn zeroed_meta() -> Self {
        bytemuck::Zeroable::zeroed()
    }

    pub fn is_contiguous(&self) -> bool {
        self.flags & META_ALL_CONTIGUOUS != 0
    }

    /// The `[dims, strides...]` words that `cached`/`upload` modes put in device memory.
    pub fn info_words(&self) -> Vec<u32> {
        let r = self.rank as usize;
        let mut w = Vec::with_capacity(r * (1 + self.num_operands as usize));
        w.extend_from_slice(&self.dims[..r]);
        for k in 0..self.num_operands as usize {
            w.extend_from_slice(&self.strides[k][..r]);
        }
        w
    }

    /// The same metadata with the arrays cleared and `info` pointing at device words.
    pub fn with_info_ptr(&self, ptr: u64) -> Self {
        let mut m = *self;
        m.dims = [0; MAX_RANK];
        m.strides = [[0; MAX_RANK]; MAX_OPERANDS];
        m.info = ptr;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_ops_coalesce_to_rank_one() {
        let l = Layout::contiguous(&[3, 4, 5]);
        let m = StridedMeta::new("t", &[&l, &l]).unwrap();
        assert!(m.is_contiguous());
        assert_eq!((m.rank, m.numel), (1, 60));
    }

    #[test]
    fn strided_ops_keep_their_strides() {
        let o = Layout::contiguous(&[4, 3]);
        let t = Layout::contiguous(&[3, 4]).transpose(0, 1).unwrap();
        let m = StridedMeta::new("t", &[&o, &t]).unwrap();
        assert!(!m.is_contiguous());
        assert_eq!(m.info_words(), vec![4, 3, 3, 1, 1, 4]);
        let p = m.with_info_ptr(0xdead);
        assert_eq!((p.info, p.dims[0]), (0xdead, 0));
    }

    #[test]
    fn rank_over_limit_is_an_error() {
        let l = Layout::contiguous(&[2; 9]);
        let t = l.transpose(0, 8).unwrap();
        assert!(matches!(
            StridedMeta::new("t", &[&l, &t]),
            Err(Error::RankTooLarge { .. }) | Err(Error::ShapeMismatch { .. })
        ));
        let u = Layout::contiguous(&[2; 9]).transpose(0, 1).unwrap();
        assert!(matches!(StridedMeta::new("t", &[&u]), Err(Error::RankTooLarge { rank: 9, .. })));
    }
}
