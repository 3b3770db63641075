//! Batched matmul `[(Bt), M, K] x [(Bt), K, N] -> [(Bt), M, N]` on the `gemm` crate.
//!
//! f32 operands are handed to `gemm` in place, with their row / column strides, so a
//! transposed weight view (`[N, K]` seen as `[K, N]`) is never copied. A bf16 / f16
//! operand is converted to an f32 copy of the storage span its view covers, in storage
//! order (a linear, vectorised conversion), and read with its own strides; an uploaded
//! bf16 / f16 weight carries that f32 copy from upload on (`CpuStorage::with_f32_copy`), so
//! it is converted once, not per matmul. Either way the
//! product accumulates in f32 into a contiguous temporary and is rounded once when stored
//! into `dst`.

use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather_f32, scatter_f32};
use crate::Cpu;
use encore_tensor::check::{self, MatOperand, MatmulDims};
use encore_tensor::{Error, Layout, Result, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::borrow::Cow;

/// `dst = lhs x rhs`, or with `accumulate` `dst += lhs x rhs` (the sum in f32, rounded once).
pub(crate) fn matmul(lhs: &Tensor<Cpu>, rhs: &Tensor<Cpu>, dst: &Tensor<Cpu>, accumulate: bool) -> Result<()> {
    const OP: &str = "matmul";
    let md = if accumulate { check::matmul_add(lhs, rhs, dst)? } else { check::matmul(lhs, rhs, dst)? };
    let mut out = with_reads(OP, &[lhs, rhs], |d| match (d[0], d[1]) {
        (Data::F32(a), Data::F32(b)) => Ok(gemm_f32(&md, a, md.lhs, b, md.rhs)),
        (a, b) => {
            // an uploaded weight's f32 copy is read in place (taken under the read guards)
            let (a_copy, b_copy) = (lhs.storage().f32_copy(), rhs.storage().f32_copy());
            let (a, a_op) = match a_copy.as_deref() {
                Some(c) => (Cow::Borrowed(c), md.lhs),
                None => span_f32(OP, a, lhs.layout(), md.lhs).map(|(v, o)| (Cow::Owned(v), o))?,
            };
            let (b, b_op) = match b_copy.as_deref() {
                Some(c) => (Cow::Borrowed(c), md.rhs),
                None => span_f32(OP, b, rhs.layout(), md.rhs).map(|(v, o)| (Cow::Owned(v), o))?,
            };
            Ok(gemm_f32(&md, &a, a_op, &b, b_op))
        }
    })?;
    if accumulate {
        let prev = with_reads(OP, &[dst], |d| gather_f32(OP, d[0], dst.layout()))?;
        out.iter_mut().zip(prev).for_each(|(o, p)| *o += p);
    }
    // `out` is `[(Bt), M, N]` row-major: dst's dims in row-major order.
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &out))
}

/// The storage elements `offset..required_len` of the view, as f32, and the operand
/// rebased onto that copy (same strides, offset 0).
fn span_f32(op: &'static str, data: &Data, l: &Layout, mo: MatOperand) -> Result<(Vec<f32>, MatOperand)> {
    const CHUNK: usize = 1 << 16;
    let span = l.offset()..l.required_len();
    let mut out = vec![0.0f32; span.len()];
    match data {
        Data::F32(v) => out.copy_from_slice(&v[span]),
        Data::BF16(v) => {
            out.par_chunks_mut(CHUNK).zip(v[span].par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o))
        }
        Data::F16(v) => {
            out.par_chunks_mut(CHUNK).zip(v[span].par_chunks(CHUNK)).for_each(|(o, s)| s.convert_to_f32_slice(o))
        }
        d => return Err(Error::UnsupportedDType { op, dtype: d.dtype() }),
    }
    Ok((out, MatOperand { offset: 0, ..mo }))
}

/// `[batch, m, n]` row-major f32 product of the operands `a` (in `a_src`) and `b` (in
/// `b_src`), whose views lie inside their slices (checked by `with_reads`).
fn gemm_f32(md: &MatmulDims, a_src: &[f32], a: MatOperand, b_src: &[f32], b: MatOperand) -> Vec<f32> {
    let (m, n, k) = (md.m, md.n, md.k);
    let mut out = vec![0.0f32; md.batch * m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    for (bi, c) in out.chunks_exact_mut(m * n).enumerate() {
        let a_ptr = a_src[a.offset + bi * a.batch_stride..].as_ptr();
        let b_ptr = b_src[b.offset + bi * b.batch_stride..].as_ptr();
        // SAFETY: `c` is an exclusive m x n row-major buffer (row stride n, column stride 1).
        // Every element gemm reads is `ptr + i * row_stride + j * col_stride` with i, j below
        // the operand's dims; the operand's view (checked against its slice length by
        // `with_reads`) contains exactly those elements, so all reads are in bounds. The
        // slices outlive the call and nothing writes to them meanwhile (read guards held).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a_ptr,
                a.col_stride as isize,
                a.row_stride as isize,
                b_ptr,
                b.col_stride as isize,
                b.row_stride as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::{Backend, DType, HostTensor};

    #[test]
    fn gemm_reads_strided_operands_in_place() {
        // a: 2x3 stored transposed (3x2 row-major); b: 3x2 row-major.
        let a_t = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let md = MatmulDims {
            batch: 1,
            m: 2,
            n: 2,
            k: 3,
            lhs: MatOperand { offset: 0, batch_stride: 0, row_stride: 1, col_stride: 2 },
            rhs: MatOperand { offset: 0, batch_stride: 0, row_stride: 2, col_stride: 1 },
            dst: MatOperand { offset: 0, batch_stride: 0, row_stride: 2, col_stride: 1 },
        };
        assert_eq!(gemm_f32(&md, &a_t, md.lhs, &b, md.rhs), vec![22.0, 28.0, 49.0, 64.0]);
    }

    #[test]
    fn an_empty_reduction_gives_zeros() {
        let op = MatOperand { offset: 0, batch_stride: 0, row_stride: 1, col_stride: 1 };
        let md = MatmulDims { batch: 2, m: 2, n: 3, k: 0, lhs: op, rhs: op, dst: op };
        assert_eq!(gemm_f32(&md, &[], op, &[], op), vec![0.0; 12]);
    }

    #[test]
    fn broadcast_rows_are_read_in_place() {
        // lhs [1, 3] broadcast to [2, 3] (row stride 0), which BLAS backends may refuse
        let a = Cpu.tensor(&HostTensor::from_f32(&[1, 3], &[1.0, 2.0, 3.0])).unwrap();
        let a = a.broadcast_as(&[2, 3]).unwrap();
        let b = Cpu.tensor(&HostTensor::from_f32(&[3, 1], &[1.0, 1.0, 1.0])).unwrap();
        let out = Cpu.zeros(DType::F32, &[2, 1]).unwrap();
        matmul(&a, &b, &out, false).unwrap();
        assert_eq!(Cpu.download(&out).unwrap().to_f32(), vec![6.0, 6.0]);
    }

    #[test]
    fn an_uploaded_half_weight_is_converted_once_and_dropped_on_write() {
        use encore_tensor::testing::Rng;
        let mut rng = Rng::fresh("an_uploaded_half_weight_is_converted_once_and_dropped_on_write");
        for dt in [DType::BF16, DType::F16] {
            let (m, k, n) = (3, 40, 24);
            let host = |v: &[f32], dims: &[usize]| HostTensor::from_f32_as(dims, v, dt);
            let (wv, xv, w2) = (rng.vec(n * k, -1.0, 1.0), rng.vec(m * k, -1.0, 1.0), rng.vec(n * k, -1.0, 1.0));
            let uploaded = Cpu.tensor(&host(&wv, &[n, k])).unwrap();
            assert!(uploaded.storage().f32_copy().is_some(), "{dt:?}: upload keeps an f32 copy");
            let written = Cpu.zeros(dt, &[n, k]).unwrap();
            Cpu.write(&host(&wv, &[n, k]), &written).unwrap();
            assert!(written.storage().f32_copy().is_none());
            let x = Cpu.tensor(&host(&xv, &[m, k])).unwrap();
            let run = |w: &Tensor<Cpu>| {
                // x [M, K] x w^T [K, N], and a column slice of w^T (an offset view)
                let out = Cpu.zeros(dt, &[m, n]).unwrap();
                matmul(&x, &w.transpose(0, 1).unwrap(), &out, false).unwrap();
                let part = Cpu.zeros(dt, &[m, 8]).unwrap();
                matmul(&x, &w.narrow(0, 5, 8).unwrap().transpose(0, 1).unwrap(), &part, false).unwrap();
                (Cpu.download(&out).unwrap().data, Cpu.download(&part).unwrap().data)
            };
            assert_eq!(run(&uploaded), run(&written), "{dt:?}: same bits as the per-call conversion");
            Cpu.write(&host(&w2, &[n, k]), &uploaded).unwrap();
            assert!(uploaded.storage().f32_copy().is_none(), "a write drops the copy");
            Cpu.write(&host(&w2, &[n, k]), &written).unwrap();
            assert_eq!(run(&uploaded), run(&written), "{dt:?}: the new values are read");
        }
    }
}
