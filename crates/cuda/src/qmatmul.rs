//! Launchers of `kernels/qmatmul.cu`: [`encore_tensor::Backend::qmatmul`],
//! `qembedding` and `upload_quant` for [`Cuda`], on weights that stay in their ggml blocks.
//!
//! - Decode (M <= 16 rows of x): `qgemv_<type>_<dtype>_m<tier>`, the weights dequantized in
//!   registers, read once for all rows.
//! - Prefill (M > 16): the weight is dequantized, a chunk of rows at a time, into one scratch
//!   buffer in x's dtype, and each chunk's columns of the output are a cuBLAS GEMM. The
//!   scratch is allocated by `upload_quant`, i.e. at load: a forward pass allocates
//!   nothing, and a captured graph holds kernels (and cuBLAS's) only.
//! - `qembedding`: `qdequant_<type>_<dtype>` over the looked-up rows.
//!
//! Grids depend on shapes only, never on device data, so every launch can be captured.

use std::ffi::c_void;
use std::sync::Mutex;

use encore_tensor::check::{self, MatOperand, MatmulDims};
use encore_tensor::{DType, Error, HostQTensor, QTensor, QuantType, Result, Tensor};

use crate::device::DeviceBuffer;
use crate::kernels::{float_index, Kernel, QGEMV_TIERS};
use crate::Cuda;

/// qmatmul.cu: `WARPS` warps (one weight row each) per block.
const QGEMV_WARPS: u32 = 4;
/// Threads per block of `qdequant`.
const QDEQUANT_THREADS: u32 = 128;
/// The most rows of x the GEMV kernels take.
pub const QGEMV_MAX_M: usize = 16;
/// Largest prefill scratch: the weight is dequantized in chunks of rows this size holds.
const SCRATCH_MAX_BYTES: usize = 64 << 20;

/// The prefill path's dequantize buffer, shared by every quantized weight of the device
/// (its launches are ordered on the device's one stream, so reuse needs no sync).
#[derive(Default)]
pub(crate) struct QuantScratch {
    buf: Mutex<Option<DeviceBuffer>>,
}

fn type_index(t: QuantType) -> usize {
    QuantType::ALL.iter().position(|&q| q == t).expect("ALL lists every type")
}

fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument { op, msg: format!("{what} {v} exceeds u32") })
}

/// One kernel argument, kept by value so that its address can go to cuLaunchKernel.
#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    U32(u32),
}

impl Arg {
    fn as_param(&self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *const u64 as *mut c_void,
            Arg::U32(v) => v as *const u32 as *mut c_void,
        }
    }
}

/// Address of a tensor view's first element.
fn at(t: &Tensor<Cuda>) -> u64 {
    t.storage().ptr() + (t.layout().offset() * t.dtype().size_in_bytes()) as u64
}

impl Cuda {
    fn quant_launch(&self, kernel: &Kernel, grid: u32, block: u32, args: &[Arg]) -> Result<()> {
        let mut params = [std::ptr::null_mut::<c_void>(); 10];
        assert!(args.len() <= params.len(), "{}: too many kernel arguments", kernel.name);
        for (p, a) in params.iter_mut().zip(args) {
            *p = a.as_param();
        }
        // SAFETY: each launcher below lists `args` in the order and with the types of its
        // kernel's signature in qmatmul.cu (u64 pointers, u32 values); the values outlive
        // the call, which copies them; the pointers address storages that `in_bounds`
        // checked hold the views the kernel touches (the grid covers exactly those rows).
        unsafe { self.device().launch(kernel, (grid, 1, 1), (block, 1, 1), 0, &mut params[..args.len()]) }?;
        Ok(())
    }

    /// Upload the blocks as they are, and grow the prefill scratch to hold the weight in
    /// f32 (capped at [`SCRATCH_MAX_BYTES`], at least one row): allocation at load only.
    pub(crate) fn upload_quant_blocks(&self, host: &HostQTensor) -> Result<QTensor<Cuda>> {
        let q = QTensor::upload(self, host)?;
        let want = (host.rows * host.cols * 4).min(SCRATCH_MAX_BYTES).max(host.cols * 4);
        let mut buf = self.quant.buf.lock().unwrap_or_else(|e| e.into_inner());
        if buf.as_ref().is_none_or(|b| b.bytes() < want) {
            *buf = None; // free the smaller one first
            *buf = Some(self.device().alloc(want)?);
        }
        Ok(q)
    }

    pub(crate) fn qmatmul_blocks(
        &self,
        x: &Tensor<Cuda>,
        w: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "qmatmul";
        let d = check::qmatmul(x, w, dst, accumulate)?;
        self.in_bounds(OP, &[x, dst, w.data()])?;
        if d.m == 0 || d.n == 0 {
            return Ok(());
        }
        let dt = float_index(x.dtype()).ok_or(Error::UnsupportedDType { op: OP, dtype: x.dtype() })?;
        let t = type_index(w.qtype());
        if d.m <= QGEMV_MAX_M {
            let tier = QGEMV_TIERS.iter().position(|&mt| d.m <= mt).expect("m <= the largest tier");
            let es = x.dtype().size_in_bytes();
            let xp = at(x);
            // 4-element vector loads of x: the rows' starts aligned to 4 elements
            let x_vec = xp % (4 * es) as u64 == 0 && (d.x.row_stride * es) % (4 * es) == 0;
            let y_f32 = dst.dtype() == DType::F32 && x.dtype() != DType::F32;
            let flags = accumulate as u32 | (y_f32 as u32) << 1 | (x_vec as u32) << 2;
            let args = [
                Arg::Ptr(w.data().storage().ptr() + w.byte_offset() as u64),
                Arg::Ptr(xp),
                Arg::Ptr(at(dst)),
                Arg::U32(d.m as u32),
                Arg::U32(u32_of(OP, "rows of w", d.n)?),
                Arg::U32(u32_of(OP, "inner dim", d.k)?),
                Arg::U32(u32_of(OP, "x row stride", d.x.row_stride)?),
                Arg::U32(u32_of(OP, "dst row stride", d.dst.row_stride)?),
                Arg::U32(u32_of(OP, "row bytes", w.row_bytes())?),
                Arg::U32(flags),
            ];
            let kernel = &self.device().kernels().qgemv[t][dt][tier];
            let grid = u32_of(OP, "blocks", d.n.div_ceil(QGEMV_WARPS as usize))?;
            return self.quant_launch(kernel, grid, QGEMV_WARPS * 32, &args);
        }
        self.qmatmul_prefill(x, w, dst, accumulate, &d)
    }

    /// M > 16: dequantize chunks of w's rows into the scratch (x's dtype), one cuBLAS GEMM
    /// per chunk into its columns of dst.
    fn qmatmul_prefill(
        &self,
        x: &Tensor<Cuda>,
        w: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
        d: &check::QMatmulDims,
    ) -> Result<()> {
        const OP: &str = "qmatmul";
        let es = x.dtype().size_in_bytes();
        let guard = self.quant.buf.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = guard.as_ref().filter(|b| b.bytes() >= d.k * es).ok_or_else(|| Error::InvalidArgument {
            op: OP,
            msg: format!("{w:?} has no prefill scratch: upload quantized weights with Backend::upload_quant"),
        })?;
        let chunk = (scratch.bytes() / (d.k * es).max(1)).clamp(1, d.n);
        let dt = float_index(x.dtype()).ok_or(Error::UnsupportedDType { op: OP, dtype: x.dtype() })?;
        let kernel = &self.device().kernels().qdequant[type_index(w.qtype())][dt];
        let w0 = w.data().storage().ptr() + w.byte_offset() as u64;
        let rb = w.row_bytes();
        let mut n0 = 0;
        while n0 < d.n {
            let nc = chunk.min(d.n - n0);
            let args = [
                Arg::Ptr(w0 + (n0 * rb) as u64),
                Arg::Ptr(0),
                Arg::Ptr(scratch.ptr()),
                Arg::U32(u32_of(OP, "columns", d.k)?),
                Arg::U32(u32_of(OP, "row bytes", rb)?),
                Arg::U32(nc as u32),
            ];
            self.quant_launch(kernel, nc as u32, QDEQUANT_THREADS, &args)?;
            // scratch rows are w's rows n0..n0+nc: as [K, nc], row stride 1, column stride K
            let dims = MatmulDims {
                batch: 1,
                m: d.m,
                n: nc,
                k: d.k,
                lhs: MatOperand { offset: d.x.offset, batch_stride: 0, row_stride: d.x.row_stride, col_stride: 1 },
                rhs: MatOperand { offset: 0, batch_stride: 0, row_stride: 1, col_stride: d.k },
                dst: MatOperand {
                    offset: d.dst.offset + n0,
                    batch_stride: 0,
                    row_stride: d.dst.row_stride,
                    col_stride: 1,
                },
            };
            let (a, c) = (x.storage().ptr(), dst.storage().ptr());
            self.device().blas().gemm_to(x.dtype(), dst.dtype(), &dims, a, scratch.ptr(), c, accumulate)?;
            n0 += nc;
        }
        Ok(())
    }

    pub(crate) fn qembedding_blocks(
        &self,
        ids: &Tensor<Cuda>,
        table: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "qembedding";
        let (t, c, v) = check::qembedding(ids, table, dst)?;
        self.in_bounds(OP, &[ids, dst, table.data()])?;
        if t == 0 || c == 0 {
            return Ok(());
        }
        let dt = float_index(dst.dtype()).ok_or(Error::UnsupportedDType { op: OP, dtype: dst.dtype() })?;
        let kernel = &self.device().kernels().qdequant[type_index(table.qtype())][dt];
        let args = [
            Arg::Ptr(table.data().storage().ptr() + table.byte_offset() as u64),
            Arg::Ptr(at(ids)),
            Arg::Ptr(at(dst)),
            Arg::U32(u32_of(OP, "columns", c)?),
            Arg::U32(u32_of(OP, "row bytes", table.row_bytes())?),
            Arg::U32(u32_of(OP, "rows", v)?),
        ];
        self.quant_launch(kernel, u32_of(OP, "tokens", t)?, QDEQUANT_THREADS, &args)
    }
}
