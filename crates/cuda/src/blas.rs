//! cuBLAS / cuBLASLt on the device's stream, with an explicit workspace so that capture never
//! allocates one (cuBLAS would otherwise take workspace from a stream-ordered pool, which a
//! capture records as mem-alloc nodes or refuses).
//!
//! `Blas::gemm` gives row-major semantics on top of column-major cuBLAS with the transpose
//! trick: row-major `C = A * B` is column-major `C^T = B^T * A^T`, so cuBLAS gets B first,
//! and each operand is passed as-is (`N`) or transposed (`T`) depending on which of its
//! strides is 1. The cuBLASLt handle shares the workspace (all work is on one stream) and is
//! there for fused epilogues later; nothing calls it yet.

use std::ffi::c_void;

use cudarc::cublas::sys as cublas;
use cudarc::cublaslt::sys as cublaslt;
use cudarc::driver::sys;
use encore_tensor::check::{MatOperand, MatmulDims};
use encore_tensor::DType;

use crate::device::RawDeviceMem;
use crate::error::{blas, blas_lt};
use crate::CudaError;

pub struct Blas {
    handle: cublas::cublasHandle_t,
    lt: cublaslt::cublasLtHandle_t,
    workspace: RawDeviceMem,
}

// SAFETY: cuBLAS handles may be used from any thread (one at a time per handle); every call
// here goes to the device's single stream, and the device is used by one thread at a time.
unsafe impl Send for Blas {}
// SAFETY: as above: `gemm` only reads the handle values; cuBLAS serialises on the stream.
unsafe impl Sync for Blas {}

impl Blas {
    /// Handles bound to `stream`, with a `workspace_bytes` workspace. The device context must
    /// be current.
    pub(crate) fn new(stream: sys::CUstream, workspace_bytes: usize) -> Result<Self, CudaError> {
        // SAFETY: only probes whether the libraries can be opened.
        if !unsafe { cublas::is_culib_present() } || !unsafe { cublaslt::is_culib_present() } {
            return Err(CudaError::Unavailable("libcublas.so.13 / libcublasLt.so.13 were not found".into()));
        }
        let workspace = RawDeviceMem::alloc(workspace_bytes.max(1 << 20))?;
        let mut b = Blas { handle: std::ptr::null_mut(), lt: std::ptr::null_mut(), workspace };
        // SAFETY: valid out-pointers; on any error below `b` drops and destroys what exists.
        unsafe {
            blas("cublasCreate_v2", cublas::cublasCreate_v2(&mut b.handle))?;
            // The stream first: cublasSetStream resets the workspace to the default pool.
            blas("cublasSetStream_v2", cublas::cublasSetStream_v2(b.handle, stream as cublas::cudaStream_t))?;
            blas(
                "cublasSetWorkspace_v2",
                cublas::cublasSetWorkspace_v2(b.handle, b.workspace.ptr as *mut c_void, b.workspace.bytes),
            )?;
            // f32 accumulation all the way: no reduced-precision split-K reductions.
            blas(
                "cublasSetMathMode",
                cublas::cublasSetMathMode(
                    b.handle,
                    cublas::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
                ),
            )?;
            blas_lt("cublasLtCreate", cublaslt::cublasLtCreate(&mut b.lt))?;
        }
        Ok(b)
    }

    /// The cuBLASLt handle and its workspace (device pointer, bytes); same stream rules.
    pub fn lt(&self) -> (cublaslt::cublasLtHandle_t, u64, usize) {
        (self.lt, self.workspace.ptr, self.workspace.bytes)
    }

    /// Row-major `C[b] (m x n) = A[b] (m x k) * B[b] (k x n)` for `b < dims.batch`, queued on
    /// the device stream. `a`, `b`, `c` are base device pointers; offsets and strides (in
    /// elements) come from `dims` exactly as `encore_tensor::check::matmul` returns them
    /// (a batch stride of 0 shares one matrix across the batch). f32/bf16/f16 in and out,
    /// f32 accumulate. Each operand needs a unit stride on its rows or its columns.
    pub fn gemm(&self, dtype: DType, dims: &MatmulDims, a: u64, b: u64, c: u64) -> Result<(), CudaError> {
        self.gemm_to(dtype, dtype, dims, a, b, c, false)
    }

    /// [`Blas::gemm`] with C in `out` (the inputs' dtype, or f32 from bf16/f16 inputs), and
    /// with `accumulate` `C += A * B` (beta = 1: the residual add fused into the GEMM).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_to(
        &self,
        dtype: DType,
        out: DType,
        dims: &MatmulDims,
        a: u64,
        b: u64,
        c: u64,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        let cuda_type = |dt: DType| match dt {
            DType::F32 => Ok(cublas::cudaDataType_t::CUDA_R_32F),
            DType::BF16 => Ok(cublas::cudaDataType_t::CUDA_R_16BF),
            DType::F16 => Ok(cublas::cudaDataType_t::CUDA_R_16F),
            other => Err(CudaError::from(encore_tensor::Error::UnsupportedDType { op: "matmul", dtype: other })),
        };
        let (ty, cty) = (cuda_type(dtype)?, cuda_type(out)?);
        let ces = out.size_in_bytes() as u64;
        let p = gemm_plan(dims)?;
        if p.skip {
            return Ok(());
        }
        let es = dtype.size_in_bytes() as u64;
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        let ptr = |base: u64, off: usize| (base + off as u64 * es) as *const c_void;
        // SAFETY: the plan's dims, leading dimensions and strides describe memory inside the
        // operands' storages (the caller passes the pointers of tensors whose layouts gave
        // `dims`); alpha/beta are host f32 as CUBLAS_COMPUTE_32F expects; the handle is alive
        // and bound to the device stream with an explicit workspace.
        blas("cublasGemmStridedBatchedEx", unsafe {
            cublas::cublasGemmStridedBatchedEx(
                self.handle,
                p.op_first,
                p.op_second,
                p.m,
                p.n,
                p.k,
                &alpha as *const f32 as *const c_void,
                ptr(b, dims.rhs.offset),
                ty,
                p.ld_first,
                p.stride_first,
                ptr(a, dims.lhs.offset),
                ty,
                p.ld_second,
                p.stride_second,
                &beta as *const f32 as *const c_void,
                (c + dims.dst.offset as u64 * ces) as *mut c_void,
                cty,
                p.ldc,
                p.stride_c,
                p.batch,
                cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: handles created in `new` (null ones skipped) and destroyed once; the owning
        // device synced its stream and made its context current before dropping us.
        unsafe {
            if !self.lt.is_null() {
                let _ = cublaslt::cublasLtDestroy(self.lt);
            }
            if !self.handle.is_null() {
                let _ = cublas::cublasDestroy_v2(self.handle);
            }
        }
    }
}

/// The column-major call computing row-major `C = A * B`: cuBLAS's first operand is B^T
/// (n x k), its second A^T (k x m), its output C^T (n x m).
#[derive(Debug, PartialEq, Eq)]
struct GemmPlan {
    skip: bool,
    m: i32,
    n: i32,
    k: i32,
    op_first: cublas::cublasOperation_t,
    ld_first: i32,
    stride_first: i64,
    op_second: cublas::cublasOperation_t,
    ld_second: i32,
    stride_second: i64,
    ldc: i32,
    stride_c: i64,
    batch: i32,
}

fn int<T: TryFrom<usize>>(what: &str, v: usize) -> Result<T, CudaError> {
    T::try_from(v).map_err(|_| {
        CudaError::Tensor(encore_tensor::Error::InvalidArgument {
            op: "matmul",
            msg: format!("{what} = {v} exceeds the cuBLAS integer range"),
        })
    })
}

/// How cuBLAS (column-major) sees the transpose of a row-major `rows x cols` operand:
/// as-is (`N`, ld = row stride) when its columns are unit-stride, transposed (`T`, ld =
/// column stride) when its rows are. Degenerate dims (size 1) accept any stride.
fn col_major_view(op: &MatOperand, rows: usize, cols: usize) -> Option<(cublas::cublasOperation_t, usize)> {
    use cublas::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    // N: X (cols x rows) col-major, X[c, r] at c + r*ld, ld >= cols.
    if op.col_stride == 1 || cols == 1 {
        let ld = if rows == 1 { cols.max(1) } else { op.row_stride };
        if ld >= cols.max(1) {
            return Some((CUBLAS_OP_N, ld));
        }
    }
    // T: X = Y^T, Y (rows x cols) col-major, Y[r, c] at r + c*ld, ld >= rows.
    if op.row_stride == 1 || rows == 1 {
        let ld = if cols == 1 { rows.max(1) } else { op.col_stride };
        if ld >= rows.max(1) {
            return Some((CUBLAS_OP_T, ld));
        }
    }
    None
}

fn gemm_plan(d: &MatmulDims) -> Result<GemmPlan, CudaError> {
    let layout_err = |which: &str| {
        CudaError::Tensor(encore_tensor::Error::LayoutRequired {
            op: "matmul",
            expected: match which {
                "lhs" => "an lhs with unit stride on its rows or columns",
                "rhs" => "an rhs with unit stride on its rows or columns",
                _ => "a row-major destination",
            },
        })
    };
    let (op_first, ld_first) = col_major_view(&d.rhs, d.k, d.n).ok_or_else(|| layout_err("rhs"))?;
    let (op_second, ld_second) = col_major_view(&d.lhs, d.m, d.k).ok_or_else(|| layout_err("lhs"))?;
    // C^T (n x m) col-major, not transposed: C's columns must be unit-stride.
    let ldc = if d.m == 1 { d.n.max(1) } else { d.dst.row_stride };
    if (d.dst.col_stride != 1 && d.n > 1) || ldc < d.n.max(1) {
        return Err(layout_err("dst"));
    }
    Ok(GemmPlan {
        skip: d.m == 0 || d.n == 0 || d.batch == 0,
        m: int("n", d.n)?,
        n: int("m", d.m)?,
        k: int("k", d.k)?,
        op_first,
        ld_first: int("ldb", ld_first)?,
        stride_first: int("rhs batch stride", d.rhs.batch_stride)?,
        op_second,
        ld_second: int("lda", ld_second)?,
        stride_second: int("lhs batch stride", d.lhs.batch_stride)?,
        ldc: int("ldc", ldc)?,
        stride_c: int("dst batch stride", d.dst.batch_stride)?,
        batch: int("batch", d.batch)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cublas::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};

    fn row_major(rows: usize, cols: usize) -> MatOperand {
        MatOperand { offset: 0, batch_stride: rows * cols, row_stride: cols, col_stride: 1 }
    }

    fn transposed(rows: usize, cols: usize) -> MatOperand {
        // A (rows x cols) view of a row-major (cols x rows) matrix.
        MatOperand { offset: 0, batch_stride: rows * cols, row_stride: 1, col_stride: rows }
    }

    #[test]
    fn row_major_operands_need_no_transpose() {
        let (m, n, k) = (3, 5, 7);
        let d = MatmulDims { batch: 2, m, n, k, lhs: row_major(m, k), rhs: row_major(k, n), dst: row_major(m, n) };
        let p = gemm_plan(&d).unwrap();
        assert_eq!((p.m, p.n, p.k), (5, 3, 7), "cuBLAS computes C^T (n x m)");
        assert_eq!((p.op_first, p.ld_first, p.op_second, p.ld_second, p.ldc), (CUBLAS_OP_N, 5, CUBLAS_OP_N, 7, 5));
        assert_eq!((p.stride_first, p.stride_second, p.stride_c), (35, 21, 15));
    }

    #[test]
    fn transposed_views_become_cublas_transposes() {
        let (m, n, k) = (4, 6, 8);
        let mut rhs = transposed(k, n); // e.g. x @ W^T with W [n, k]
        rhs.batch_stride = 0; // shared weight
        let d = MatmulDims { batch: 3, m, n, k, lhs: transposed(m, k), rhs, dst: row_major(m, n) };
        let p = gemm_plan(&d).unwrap();
        assert_eq!((p.op_first, p.ld_first), (CUBLAS_OP_T, k as i32));
        assert_eq!((p.op_second, p.ld_second), (CUBLAS_OP_T, m as i32));
        assert_eq!(p.stride_first, 0);
    }

    #[test]
    fn degenerate_dims_accept_any_stride_and_strided_operands_are_refused() {
        // A single row (decode: m = 1) whose row stride is meaningless.
        let lhs = MatOperand { offset: 9, batch_stride: 0, row_stride: 0, col_stride: 1 };
        let d = MatmulDims { batch: 1, m: 1, n: 4, k: 8, lhs, rhs: row_major(8, 4), dst: row_major(1, 4) };
        let p = gemm_plan(&d).unwrap();
        assert_eq!((p.op_second, p.ld_second, p.ldc), (CUBLAS_OP_N, 8, 4));
        // Neither stride is 1: cuBLAS cannot read it.
        let bad = MatOperand { offset: 0, batch_stride: 0, row_stride: 16, col_stride: 2 };
        let d = MatmulDims { lhs: bad, m: 4, dst: row_major(4, 4), ..d };
        assert!(matches!(gemm_plan(&d), Err(CudaError::Tensor(encore_tensor::Error::LayoutRequired { .. }))));
    }

    #[test]
    fn empty_products_are_skipped() {
        let d =
            MatmulDims { batch: 1, m: 0, n: 4, k: 8, lhs: row_major(0, 8), rhs: row_major(8, 4), dst: row_major(0, 4) };
        assert!(gemm_plan(&d).unwrap().skip);
    }
}
