//! A strided view of a buffer: dims, strides (in elements) and a start offset. Every view
//! operation (narrow, transpose, permute, broadcast, reshape) returns a new Layout and never
//! touches data.

use crate::{Error, Result};

/// The largest rank a kernel accepts; every LLM op fits in 4, 8 leaves room.
pub const MAX_RANK: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    dims: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides of `dims`.
pub fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut acc = 1;
    for i in (0..dims.len()).rev() {
        strides[i] = acc;
        acc *= dims[i];
    }
    strides
}

impl Layout {
    pub fn contiguous(dims: &[usize]) -> Self {
        Layout { dims: dims.to_vec(), strides: contiguous_strides(dims), offset: 0 }
    }

    /// A layout from raw parts, checked against the rank limit.
    pub fn new(dims: Vec<usize>, strides: Vec<usize>, offset: usize) -> Result<Self> {
        if dims.len() != strides.len() {
            return Err(Error::ShapeMismatch { op: "layout", lhs: dims, rhs: strides });
        }
        Ok(Layout { dims, strides, offset })
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn offset(&self) -> usize {
        self.offset
    }
    pub fn rank(&self) -> usize {
        self.dims.len()
    }
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.dims[i]
    }

    /// One past the largest element index the view touches (0 for an empty view).
    pub fn required_len(&self) -> usize {
        if self.numel() == 0 {
            return self.offset;
        }
        self.offset + self.dims.iter().zip(&self.strides).map(|(d, s)| (d - 1) * s).sum::<usize>() + 1
    }

    /// Row-major with no gaps (size-1 dims may carry any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for i in (0..self.dims.len()).rev() {
            if self.dims[i] != 1 && self.strides[i] != acc {
                return false;
            }
            acc *= self.dims[i];
        }
        true
    }

    fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange { op, dim, rank: self.rank() });
        }
        Ok(())
    }

    /// Elements `start..start+len` of `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        self.check_dim("narrow", dim)?;
        let size = self.dims[dim];
        if start + len > size {
            return Err(Error::NarrowOutOfBounds { op: "narrow", dim, start, end: start + len, size });
        }
        let mut out = self.clone();
        out.dims[dim] = len;
        out.offset += start * self.strides[dim];
        Ok(out)
    }

    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Self> {
        self.check_dim("transpose", d0)?;
        self.check_dim("transpose", d1)?;
        let mut out = self.clone();
        out.dims.swap(d0, d1);
        out.strides.swap(d0, d1);
        Ok(out)
    }

    /// `perm[i]` names the source dim that becomes dim `i`.
    pub fn permute(&self, perm: &[usize]) -> Result<Self> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank() {
            return Err(Error::ShapeMismatch { op: "permute", lhs: self.dims.clone(), rhs: perm.to_vec() });
        }
        for &p in perm {
            self.check_dim("permute", p)?;
            if std::mem::replace(&mut seen[p], true) {
                return Err(Error::InvalidArgument { op: "permute", msg: format!("dim {p} repeated in {perm:?}") });
            }
        }
        Ok(Layout {
            dims: perm.iter().map(|&p| self.dims[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Numpy broadcasting to `dims`: new leading dims and size-1 dims get stride 0.
    pub fn broadcast_as(&self, dims: &[usize]) -> Result<Self> {
        let err = || Error::BroadcastMismatch { op: "broadcast_as", from: self.dims.clone(), to: dims.to_vec() };
        if dims.len() < self.rank() {
            return Err(err());
        }
        let lead = dims.len() - self.rank();
        let mut strides = vec![0; dims.len()];
        for i in 0..self.rank() {
            let (src, dst) = (self.dims[i], dims[lead + i]);
            strides[lead + i] = if src == dst {
                self.strides[i]
            } else if src == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout { dims: dims.to_vec(), strides, offset: self.offset })
    }

    /// A view with new dims over the same elements, when the strides allow it without a
    /// copy (each group of merged/split dims must be contiguous within itself).
    pub fn reshape(&self, dims: &[usize]) -> Result<Self> {
        let numel: usize = dims.iter().product();
        if numel != self.numel() {
            return Err(Error::ElementCount { op: "reshape", numel: self.numel(), shape: dims.to_vec() });
        }
        if self.is_contiguous() {
            return Ok(Layout { dims: dims.to_vec(), strides: contiguous_strides(dims), offset: self.offset });
        }
        // Walk source and target dims in lockstep, matching groups of equal product.
        let src: Vec<(usize, usize)> =
            self.dims.iter().copied().zip(self.strides.iter().copied()).filter(|(d, _)| *d != 1).collect();
        let mut strides = vec![0; dims.len()];
        let (mut i, mut j) = (0, 0);
        let not_view = || Error::LayoutRequired { op: "reshape", expected: "reshapeable without a copy" };
        while j < dims.len() {
            if dims[j] == 1 {
                strides[j] = 1;
                j += 1;
                continue;
            }
            if i >= src.len() {
                return Err(not_view());
            }
            // Group source dims i..ie and target dims j..je with equal products.
            let (mut ps, mut pt) = (src[i].0, dims[j]);
            let (mut ie, mut je) = (i + 1, j + 1);
            while ps != pt {
                if ps < pt {
                    if ie >= src.len() {
                        return Err(not_view());
                    }
                    ps *= src[ie].0;
                    ie += 1;
                } else {
                    while je < dims.len() && dims[je] == 1 {
                        je += 1;
                    }
                    if je >= dims.len() {
                        return Err(not_view());
                    }
                    pt *= dims[je];
                    je += 1;
                }
            }
            for k in i..ie - 1 {
                if src[k].1 != src[k + 1].1 * src[k + 1].0 {
                    return Err(not_view());
                }
            }
            let mut acc = src[ie - 1].1;
            for k in (j..je).rev() {
                strides[k] = acc;
                acc *= dims[k];
            }
            i = ie;
            j = je;
        }
        Ok(Layout { dims: dims.to_vec(), strides, offset: self.offset })
    }

    /// Merge adjacent dims that are contiguous with each other in every layout given
    /// (all of the same dims), and drop size-1 dims. Kernels then loop over fewer dims.
    pub fn coalesce(layouts: &[&Layout]) -> Vec<Layout> {
        let dims0 = layouts[0].dims();
        let mut dims: Vec<usize> = Vec::new();
        let mut strides: Vec<Vec<usize>> = vec![Vec::new(); layouts.len()];
        for d in 0..dims0.len() {
            if dims0[d] == 1 {
                continue;
            }
            let mergeable = !dims.is_empty()
                && layouts.iter().enumerate().all(|(k, l)| *strides[k].last().unwrap() == l.strides[d] * dims0[d]);
            if mergeable {
                *dims.last_mut().unwrap() *= dims0[d];
                for (k, l) in layouts.iter().enumerate() {
                    *strides[k].last_mut().unwrap() = l.strides[d];
                }
            } else {
                dims.push(dims0[d]);
                for (k, l) in layouts.iter().enumerate() {
                    strides[k].push(l.strides[d]);
                }
            }
        }
        if dims.is_empty() {
            dims.push(1);
            strides.iter_mut().for_each(|s| s.push(1));
        }
        layouts.iter().zip(strides).map(|(l, s)| Layout { dims: dims.clone(), strides: s, offset: l.offset }).collect()
    }

    /// Element index of the `i`-th element in row-major order of the view.
    pub fn index_of(&self, mut i: usize) -> usize {
        let mut idx = self.offset;
        for d in (0..self.dims.len()).rev() {
            idx += (i % self.dims[d]) * self.strides[d];
            i /= self.dims[d];
        }
        idx
    }

    /// Iterator over the element indices of the view in row-major order.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.numel()).map(move |i| self.index_of(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_transpose_offsets() {
        let l = Layout::contiguous(&[4, 6]);
        let n = l.narrow(1, 2, 3).unwrap();
        assert_eq!(n.offset(), 2);
        assert!(!n.is_contiguous());
        let t = l.transpose(0, 1).unwrap();
        assert_eq!(t.strides(), &[1, 6]);
        assert_eq!(t.index_of(1), 6);
        assert!(matches!(l.narrow(1, 5, 2), Err(Error::NarrowOutOfBounds { .. })));
    }

    #[test]
    fn broadcast_rules() {
        let l = Layout::contiguous(&[1, 3]);
        let b = l.broadcast_as(&[2, 4, 3]).unwrap();
        assert_eq!(b.strides(), &[0, 0, 1]);
        assert!(l.broadcast_as(&[2, 4]).is_err());
    }

    #[test]
    fn reshape_views_and_refusals() {
        let l = Layout::contiguous(&[2, 3, 4]);
        let t = l.transpose(0, 1).unwrap(); // [3,2,4] strides [4,12,1]
                                            // merging the last two dims of a transposed view is legal only where contiguous
        assert!(t.reshape(&[6, 4]).is_err());
        let r = t.reshape(&[3, 2, 2, 2]).unwrap();
        assert_eq!(r.strides(), &[4, 12, 2, 1]);
        for i in 0..24 {
            assert_eq!(r.index_of(i), t.index_of(i));
        }
        let n = l.narrow(2, 0, 2).unwrap(); // [2,3,2]
        assert!(n.reshape(&[12]).is_err());
        assert_eq!(n.reshape(&[2, 3, 2, 1]).unwrap().index_of(5), n.index_of(5));
    }

    #[test]
    fn coalesce_merges_contiguous_runs() {
        let a = Layout::contiguous(&[2, 3, 4]);
        let b = Layout::contiguous(&[1, 3, 4]).broadcast_as(&[2, 3, 4]).unwrap();
        let c = Layout::coalesce(&[&a, &b]);
        assert_eq!(c[0].dims(), &[2, 12]);
        assert_eq!(c[1].strides(), &[0, 1]);
        for i in 0..24 {
            assert_eq!(c[1].index_of(i), b.index_of(i));
        }
    }
}
