//! `Cuda`: the CUDA implementation of [`encore_tensor::Backend`], i.e. the typed launchers of
//! `kernels/*.cu`. Each op validates its arguments with `encore_tensor::check` (the same
//! structured errors as the CPU backend), checks every operand lies inside its storage,
//! builds the launch metadata (`StridedMeta::new`, coalesced, or `::exact` for the kernels
//! that name `[T, H, D]`), passes strided metadata through `CudaDevice::prepare_meta` (the
//! launch-parameter mode), and queues one kernel on the device stream. Grid sizes come from
//! shapes only, never from device data, so every op can be captured in a CUDA graph.
//! matmul goes to cuBLAS.
//!
//! What it is not: no synchronisation (except `download`/`synchronize`), no allocation per op
//! (attention's split-K workspace is allocated once, in [`Cuda::from_device`]).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::sys;
use encore_tensor::check::{self, MatOperand, Rows};
use encore_tensor::{
    AttentionParams, Backend, BinaryOp, DType, Error, HostQTensor, HostTensor, QTensor, Result, StridedMeta, Tensor,
    UnaryOp,
};

use crate::device::{CudaDevice, DeviceBuffer};
use crate::error::drv;
use crate::kernels::{binary_index, float_index, unary_index, Kernel};
use crate::CudaError;

/// Threads per block of the elementwise kernels (grid-stride loops).
const ELEMENTWISE_BLOCK: u32 = 256;
/// attention.cu: ATTN_WARPS * 32 threads per block; head dims up to ATTN_MAX_D.
const ATTENTION_BLOCK: u32 = 128;
const ATTENTION_MAX_D: usize = 256;
/// Most splits of one query's keys (attention.cu split-K), and the fewest keys worth a split.
const ATTENTION_MAX_SPLITS: usize = 32;
const ATTENTION_MIN_KEYS_PER_SPLIT: usize = 64;

/// The CUDA backend on one device. Cheap to clone (shares the device and the workspace).
#[derive(Clone)]
pub struct Cuda {
    dev: CudaDevice,
    attn: Arc<AttentionWorkspace>,
    /// The prefill scratch of quantized matmuls (qmatmul.rs), sized by `upload_quant`.
    pub(crate) quant: Arc<crate::qmatmul::QuantScratch>,
}

/// Scratch for split-K attention: `[T*H, nsplit, 2]` (max, sum) then `[T*H, nsplit, D]` f32
/// partial outputs. The launcher only splits while `T*H < 2 * SMs`, so `T*H*nsplit < 4 * SMs`
/// and `4 * SMs * (256 + 2)` floats always suffice. One buffer per device is safe because
/// every launch is ordered on the device's single stream.
struct AttentionWorkspace {
    buf: DeviceBuffer,
    sm_count: usize,
}

impl Cuda {
    /// A new device context on GPU `ordinal` (see [`CudaDevice::new`]).
    pub fn new(ordinal: usize) -> std::result::Result<Self, CudaError> {
        Self::from_device(CudaDevice::new(ordinal)?)
    }

    /// The backend over an existing device; allocates the attention workspace (do this
    /// before capturing anything).
    pub fn from_device(dev: CudaDevice) -> std::result::Result<Self, CudaError> {
        dev.bind()?;
        let mut cu_device = 0;
        // SAFETY: valid out-pointer; the ordinal names an existing device (CudaDevice::new
        // checked it) and the driver is initialised.
        drv("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut cu_device, dev.ordinal() as i32) })?;
        let mut sms = 0;
        // SAFETY: valid out-pointer and device handle.
        drv("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(
                &mut sms,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                cu_device,
            )
        })?;
        let sm_count = (sms.max(1)) as usize;
        let buf = dev.alloc(4 * sm_count * (ATTENTION_MAX_D + 2) * 4)?;
        Ok(Cuda { dev, attn: Arc::new(AttentionWorkspace { buf, sm_count }), quant: Arc::default() })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Queue `kernel` with `args` (in the kernel's parameter order), then `meta` by value if
    /// given (strided kernels take it last).
    fn launch(
        &self,
        kernel: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
        meta: Option<&StridedMeta>,
    ) -> Result<()> {
        let mut params = [std::ptr::null_mut::<c_void>(); MAX_ARGS];
        let n = args.len() + meta.is_some() as usize;
        assert!(n <= MAX_ARGS, "{}: too many kernel arguments", kernel.name);
        for (p, a) in params.iter_mut().zip(args) {
            *p = a.as_param();
        }
        if let Some(m) = meta {
            params[args.len()] = m as *const StridedMeta as *mut c_void;
        }
        // SAFETY: each launcher below lists `args` (then the meta) in the order and with the
        // types of its kernel's signature in kernels/*.cu (u64 for pointers, u32, f32,
        // StridedMeta by value); the values outlive the call, which copies them; every
        // pointer addresses a storage that `in_bounds` checked covers the view the kernel
        // touches.
        unsafe { self.dev.launch(kernel, grid, (block, 1, 1), 0, &mut params[..n]) }?;
        Ok(())
    }

    /// A strided launch: one thread per `items` (grid-stride), `meta` through the device's
    /// launch-parameter mode.
    fn launch_strided(&self, kernel: &Kernel, meta: StridedMeta, items: usize, args: &[Arg]) -> Result<()> {
        if items == 0 {
            return Ok(());
        }
        // Keep `prepared` alive until the launch is queued (upload mode frees its buffer on drop).
        let prepared = self.dev.prepare_meta(meta)?;
        let result =
            self.launch(kernel, (elementwise_grid(items), 1, 1), ELEMENTWISE_BLOCK, args, Some(&prepared.meta));
        drop(prepared);
        result
    }

    /// Every operand must live on this device and its view must fit its storage.
    /// `matmul` (`accumulate` false) and `matmul_add` (true): cuBLAS, or gemv.cu where noted.
    fn gemm(&self, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>, dst: &Tensor<Cuda>, accumulate: bool) -> Result<()> {
        const OP: &str = "matmul";
        let dims = if accumulate { check::matmul_add(lhs, rhs, dst)? } else { check::matmul(lhs, rhs, dst)? };
        blas_compatible(OP, "lhs", lhs, &dims.lhs, dims.m, dims.k)?;
        blas_compatible(OP, "rhs", rhs, &dims.rhs, dims.k, dims.n)?;
        self.in_bounds(OP, &[lhs, rhs, dst])?;
        // gemv.cu serves only the f32-output (LM head) decode matmuls: for them cuBLAS picks
        // a split-K kernel that adds a memset node to a captured graph. For bf16 projections
        // cuBLAS measured faster than gemv.cu (BENCHMARKS.md), so they stay on cuBLAS.
        if !accumulate && dst.dtype() == DType::F32 && lhs.dtype() != DType::F32 {
            if let Some(g) = gemv_shape(&dims, lhs, rhs) {
                return self.gemv(g, lhs, rhs, dst);
            }
        }
        let (a, b, c) = (lhs.storage().ptr(), rhs.storage().ptr(), dst.storage().ptr());
        Ok(self.dev.blas().gemm_to(lhs.dtype(), dst.dtype(), &dims, a, b, c, accumulate)?)
    }

    /// gemv.cu for decode-shaped matmuls (see `gemv_shape`).
    fn gemv(&self, g: GemvShape, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "matmul";
        if g.n == 0 {
            return Ok(());
        }
        let ks = self.dev.kernels();
        let kernel = match (lhs.dtype(), dst.dtype()) {
            (DType::BF16, DType::F32) => &ks.gemv_to_f32[0],
            (DType::F16, DType::F32) => &ks.gemv_to_f32[1],
            (dt, _) => &ks.gemv[float_ix(OP, dt)?],
        };
        let args = [
            Arg::Ptr(at(lhs)),
            Arg::Ptr(at(rhs)),
            Arg::Ptr(at(dst)),
            Arg::U32(g.m as u32),
            Arg::U32(u32_of(OP, "rows of W", g.n)?),
            Arg::U32(u32_of(OP, "inner dim", g.k)?),
            Arg::U32(u32_of(OP, "lhs row stride", g.ldx)?),
            Arg::U32(u32_of(OP, "dst row stride", g.ldy)?),
        ];
        // gemv.cu: GEMV_THREADS threads and GEMV_ROWS outputs a block
        self.launch(kernel, (g.n.div_ceil(GEMV_ROWS) as u32, 1, 1), GEMV_THREADS, &args, None)
    }

    fn in_bounds(&self, op: &'static str, tensors: &[&Tensor<Cuda>]) -> Result<()> {
        for t in tensors {
            if t.storage().device().ordinal() != self.dev.ordinal() {
                return Err(Error::DeviceMismatch { op });
            }
            let need = t.layout().required_len() * t.dtype().size_in_bytes();
            if need > t.storage().bytes() {
                return Err(Error::InvalidArgument {
                    op,
                    msg: format!("view {:?} needs {need} bytes, its storage has {}", t.layout(), t.storage().bytes()),
                });
            }
        }
        Ok(())
    }

    /// Split count for attention over `blocks = T*H` queries and `slots` cache slots.
    fn attention_splits(&self, blocks: usize, slots: usize, d: usize) -> usize {
        let target = 2 * self.attn.sm_count;
        if blocks == 0 || blocks >= target {
            return 1;
        }
        let by_len = (slots / ATTENTION_MIN_KEYS_PER_SPLIT).max(1);
        let mut n = target.div_ceil(blocks).min(ATTENTION_MAX_SPLITS).min(by_len);
        while n > 1 && blocks * n * (d + 2) * 4 > self.attn.buf.bytes() {
            n -= 1;
        }
        n
    }
}

/// Most arguments of any kernel (attention has 17).
const MAX_ARGS: usize = 20;

/// One scalar kernel argument, stored by value so that its address can go to cuLaunchKernel.
#[derive(Clone, Copy)]
enum Arg {
    /// A device pointer (`const T*` / `T*` in the kernel).
    Ptr(u64),
    U32(u32),
    U64(u64),
    F32(f32),
}

impl Arg {
    fn as_param(&self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *const u64 as *mut c_void,
            Arg::U32(v) => v as *const u32 as *mut c_void,
            Arg::U64(v) => v as *const u64 as *mut c_void,
            Arg::F32(v) => v as *const f32 as *mut c_void,
        }
    }
}

/// Base address of the storage (strided kernels add the element offsets of the metadata).
fn base(t: &Tensor<Cuda>) -> Arg {
    Arg::Ptr(t.storage().ptr())
}

/// Address of the view's first element (for kernels over contiguous data or rows).
fn at(t: &Tensor<Cuda>) -> u64 {
    t.storage().ptr() + (t.layout().offset() * t.dtype().size_in_bytes()) as u64
}

fn at_offset(t: &Tensor<Cuda>, offset: usize) -> Arg {
    Arg::Ptr(t.storage().ptr() + (offset * t.dtype().size_in_bytes()) as u64)
}

/// gemv.cu's `THREADS` and `R`: the block size and outputs a block.
const GEMV_THREADS: u32 = 256;
const GEMV_ROWS: usize = 4;

/// The decode-step shape gemv.cu serves: `x [M <= 8, K] @ W^T` with `W [N, K]` stored in
/// contiguous rows, x rows and W 16-byte aligned, K a multiple of a 16-byte vector.
#[derive(Clone, Copy, Debug)]
struct GemvShape {
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    ldy: usize,
}

fn gemv_shape(d: &check::MatmulDims, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>) -> Option<GemvShape> {
    let es = lhs.dtype().size_in_bytes();
    let vec = 16 / es;
    let aligned = |t: &Tensor<Cuda>, off: usize| (t.storage().ptr() as usize + off * es) % 16 == 0;
    let ok = d.batch == 1
        && (1..=8).contains(&d.m)
        && d.k % vec == 0
        && d.lhs.col_stride == 1
        && (d.m == 1 || (d.lhs.row_stride * es) % 16 == 0)
        && d.rhs.row_stride == 1
        && d.rhs.col_stride == d.k
        && d.dst.col_stride == 1
        && aligned(lhs, d.lhs.offset)
        && aligned(rhs, d.rhs.offset);
    ok.then_some(GemvShape { m: d.m, n: d.n, k: d.k, ldx: d.lhs.row_stride, ldy: d.dst.row_stride })
}

fn elementwise_grid(n: usize) -> u32 {
    // n < 2^31 (StridedMeta refuses more), so this is below 2^23 blocks.
    n.div_ceil(ELEMENTWISE_BLOCK as usize) as u32
}

/// Threads for a one-block-per-row kernel: about 4 columns per thread, 32..=1024.
fn row_block(cols: usize) -> u32 {
    cols.div_ceil(4).next_power_of_two().clamp(32, 1024) as u32
}

fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument { op, msg: format!("{what} {v} exceeds u32") })
}

/// Rows as a grid: at most 2^31 - 1 blocks.
fn row_grid(op: &'static str, rows: usize) -> Result<u32> {
    if rows > i32::MAX as usize {
        return Err(Error::TooLarge { op, numel: rows });
    }
    Ok(rows as u32)
}

fn float_ix(op: &'static str, dtype: DType) -> Result<usize> {
    float_index(dtype).ok_or(Error::UnsupportedDType { op, dtype })
}

fn blas_compatible(
    op: &'static str,
    which: &str,
    t: &Tensor<Cuda>,
    m: &MatOperand,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if m.is_blas_compatible(rows, cols) {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        op,
        msg: format!(
            "{which} layout {:?} is not BLAS-compatible (cuBLAS needs a unit stride on its rows or columns); copy it first",
            t.layout()
        ),
    })
}

impl Backend for Cuda {
    type Storage = DeviceBuffer;

    fn name(&self) -> String {
        format!("cuda:{}", self.dev.ordinal())
    }

    fn alloc(&self, dtype: DType, numel: usize) -> Result<DeviceBuffer> {
        Ok(self.dev.alloc_zeroed(numel * dtype.size_in_bytes())?)
    }

    fn upload(&self, host: &HostTensor) -> Result<DeviceBuffer> {
        let buf = self.dev.alloc(host.data.len())?;
        self.dev.htod(&host.data, &buf, 0)?;
        Ok(buf)
    }

    fn write(&self, host: &HostTensor, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "write";
        if host.dtype != dst.dtype() {
            return Err(Error::DTypeMismatch { op: OP, lhs: host.dtype, rhs: dst.dtype() });
        }
        if host.numel() != dst.numel() || host.data.len() != host.numel() * host.dtype.size_in_bytes() {
            return Err(Error::ElementCount { op: OP, numel: host.numel(), shape: dst.dims().to_vec() });
        }
        check::contiguous(OP, dst)?;
        self.in_bounds(OP, &[dst])?;
        let offset = dst.layout().offset() * dst.dtype().size_in_bytes();
        Ok(self.dev.htod(&host.data, dst.storage(), offset)?)
    }

    fn download(&self, src: &Tensor<Cuda>) -> Result<HostTensor> {
        const OP: &str = "download";
        self.in_bounds(OP, &[src])?;
        let (dtype, dims) = (src.dtype(), src.dims().to_vec());
        let mut data = vec![0u8; src.numel() * dtype.size_in_bytes()];
        if src.is_contiguous() {
            self.dev.dtoh(src.storage(), src.layout().offset() * dtype.size_in_bytes(), &mut data)?;
        } else {
            // Gather into a contiguous temporary on the device, then one copy.
            let tmp = Tensor::from_storage(self.dev.alloc(data.len())?, dtype, &dims);
            self.copy(src, &tmp)?;
            self.dev.dtoh(tmp.storage(), 0, &mut data)?;
        }
        HostTensor::new(dtype, dims, data)
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.dev.synchronize()?)
    }

    fn copy(&self, src: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "copy";
        check::copy(src, dst)?;
        let meta = StridedMeta::new(OP, &[dst.layout(), src.layout()])?;
        self.in_bounds(OP, &[src, dst])?;
        let k = self.dev.kernels();
        let kernel = match (float_index(src.dtype()), float_index(dst.dtype())) {
            (Some(s), Some(d)) => &k.copy[s][d],
            _ if src.dtype() == DType::U32 => &k.copy_u32,
            _ => &k.copy_i32, // check::copy: same dtype, so I32
        };
        self.launch_strided(kernel, meta, meta.numel as usize, &[base(src), base(dst)])
    }

    fn unary(&self, op: UnaryOp, src: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "unary";
        check::unary(src, dst)?;
        let meta = StridedMeta::new(OP, &[dst.layout(), src.layout()])?;
        self.in_bounds(OP, &[src, dst])?;
        let kernel = &self.dev.kernels().unary[unary_index(op)][float_ix(OP, src.dtype())?];
        self.launch_strided(kernel, meta, meta.numel as usize, &[base(src), base(dst)])
    }

    fn binary(&self, op: BinaryOp, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "binary";
        let (l, r) = check::binary(lhs, rhs, dst)?;
        let meta = StridedMeta::new(OP, &[dst.layout(), &l, &r])?;
        self.in_bounds(OP, &[lhs, rhs, dst])?;
        let kernel = &self.dev.kernels().binary[binary_index(op)][float_ix(OP, dst.dtype())?];
        self.launch_strided(kernel, meta, meta.numel as usize, &[base(lhs), base(rhs), base(dst)])
    }

    fn matmul_add(&self, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        self.gemm(lhs, rhs, dst, true)
    }

    fn matmul(&self, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        self.gemm(lhs, rhs, dst, false)
    }

    /// qmatmul.rs: GEMV on the blocks for M <= 16, dequantize + cuBLAS above.
    fn qmatmul(&self, x: &Tensor<Cuda>, w: &QTensor<Cuda>, dst: &Tensor<Cuda>, accumulate: bool) -> Result<()> {
        self.qmatmul_blocks(x, w, dst, accumulate)
    }

    fn qembedding(&self, ids: &Tensor<Cuda>, table: &QTensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        self.qembedding_blocks(ids, table, dst)
    }

    fn upload_quant(&self, host: &HostQTensor) -> Result<QTensor<Cuda>> {
        self.upload_quant_blocks(host)
    }

    fn rms_norm(&self, x: &Tensor<Cuda>, weight: &Tensor<Cuda>, eps: f32, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "rms_norm";
        let (xr, dr) = check::rms_norm(x, weight, dst)?;
        self.in_bounds(OP, &[x, weight, dst])?;
        if xr.rows == 0 || xr.cols == 0 {
            return Ok(());
        }
        let kernel = &self.dev.kernels().rms_norm[float_ix(OP, x.dtype())?];
        let args = [
            at_offset(x, xr.offset),
            Arg::Ptr(at(weight)),
            at_offset(dst, dr.offset),
            Arg::U32(u32_of(OP, "columns", xr.cols)?),
            Arg::U32(u32_of(OP, "row stride", xr.row_stride)?),
            Arg::U32(u32_of(OP, "row stride", dr.row_stride)?),
            Arg::F32(eps),
        ];
        self.launch(kernel, (row_grid(OP, xr.rows)?, 1, 1), row_block(xr.cols), &args, None)
    }

    fn softmax(&self, x: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "softmax";
        let (xr, dr) = check::softmax(x, dst)?;
        self.in_bounds(OP, &[x, dst])?;
        if xr.rows == 0 || xr.cols == 0 {
            return Ok(());
        }
        let kernel = &self.dev.kernels().softmax[float_ix(OP, x.dtype())?];
        let args = [
            at_offset(x, xr.offset),
            at_offset(dst, dr.offset),
            Arg::U32(u32_of(OP, "columns", xr.cols)?),
            Arg::U32(u32_of(OP, "row stride", xr.row_stride)?),
            Arg::U32(u32_of(OP, "row stride", dr.row_stride)?),
        ];
        self.launch(kernel, (row_grid(OP, xr.rows)?, 1, 1), row_block(xr.cols), &args, None)
    }

    fn silu_mul(&self, gate: &Tensor<Cuda>, up: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "silu_mul";
        check::silu_mul(gate, up, dst)?;
        let meta = StridedMeta::new(OP, &[dst.layout(), gate.layout(), up.layout()])?;
        self.in_bounds(OP, &[gate, up, dst])?;
        let kernel = &self.dev.kernels().silu_mul[float_ix(OP, dst.dtype())?];
        self.launch_strided(kernel, meta, meta.numel as usize, &[base(gate), base(up), base(dst)])
    }

    fn rope(
        &self,
        x: &Tensor<Cuda>,
        cos: &Tensor<Cuda>,
        sin: &Tensor<Cuda>,
        positions: &Tensor<Cuda>,
        dst: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "rope";
        let (_t, h, d) = check::rope(x, cos, sin, positions, dst)?;
        let meta = StridedMeta::exact(OP, &[dst.layout(), x.layout()])?;
        self.in_bounds(OP, &[x, cos, sin, positions, dst])?;
        let kernel = &self.dev.kernels().rope[float_ix(OP, x.dtype())?];
        let args = [
            base(x),
            base(dst),
            Arg::Ptr(at(cos)),
            Arg::Ptr(at(sin)),
            Arg::Ptr(at(positions)),
            Arg::U32(u32_of(OP, "heads", h)?),
            Arg::U32(u32_of(OP, "half head dim", d / 2)?),
            Arg::U32(u32_of(OP, "table rows", cos.dims()[0])?),
        ];
        // One thread per rotated pair (i, i + D/2).
        self.launch_strided(kernel, meta, meta.numel as usize / 2, &args)
    }

    /// On the device (fill.cu): random benchmark weights never cross the bus.
    fn fill_uniform(&self, dst: &Tensor<Cuda>, seed: u64, scale: f32) -> Result<()> {
        const OP: &str = "fill_uniform";
        check::float(OP, dst)?;
        check::contiguous(OP, dst)?;
        self.in_bounds(OP, &[dst])?;
        let n = dst.numel();
        if n == 0 {
            return Ok(());
        }
        let kernel = &self.dev.kernels().fill_uniform[float_ix(OP, dst.dtype())?];
        let args = [Arg::Ptr(at(dst)), Arg::U64(n as u64), Arg::U64(seed), Arg::F32(scale)];
        let blocks = n.div_ceil(256).min(132 * 32) as u32;
        self.launch(kernel, (blocks, 1, 1), 256, &args, None)
    }

    fn embedding(&self, ids: &Tensor<Cuda>, table: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "embedding";
        let (t, c, v) = check::embedding(ids, table, dst)?;
        self.in_bounds(OP, &[ids, table, dst])?;
        if t == 0 || c == 0 {
            return Ok(());
        }
        let kernel = &self.dev.kernels().embedding[float_ix(OP, table.dtype())?];
        let args = [
            Arg::Ptr(at(ids)),
            Arg::Ptr(at(table)),
            Arg::Ptr(at(dst)),
            Arg::U32(u32_of(OP, "columns", c)?),
            Arg::U32(u32_of(OP, "vocabulary", v)?),
        ];
        let block = (c / 8).next_power_of_two().clamp(32, 256) as u32;
        self.launch(kernel, (row_grid(OP, t)?, 1, 1), block, &args, None)
    }

    fn kv_write(
        &self,
        k: &Tensor<Cuda>,
        v: &Tensor<Cuda>,
        k_cache: &Tensor<Cuda>,
        v_cache: &Tensor<Cuda>,
        slot_mapping: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "kv_write";
        let (_t, hkv, d, s) = check::kv_write(k, v, k_cache, v_cache, slot_mapping)?;
        let meta = StridedMeta::exact(OP, &[k.layout(), v.layout()])?;
        self.in_bounds(OP, &[k, v, k_cache, v_cache, slot_mapping])?;
        let kernel = &self.dev.kernels().kv_write[float_ix(OP, k.dtype())?];
        let args = [
            base(k),
            base(v),
            Arg::Ptr(at(k_cache)),
            Arg::Ptr(at(v_cache)),
            Arg::Ptr(at(slot_mapping)),
            Arg::U32(u32_of(OP, "kv heads", hkv)?),
            Arg::U32(u32_of(OP, "head dim", d)?),
            Arg::U32(u32_of(OP, "slots", s)?),
        ];
        self.launch_strided(kernel, meta, meta.numel as usize, &args)
    }

    fn attention(
        &self,
        q: &Tensor<Cuda>,
        k_cache: &Tensor<Cuda>,
        v_cache: &Tensor<Cuda>,
        block_tables: &Tensor<Cuda>,
        row_seq: &Tensor<Cuda>,
        positions: &Tensor<Cuda>,
        params: AttentionParams,
        dst: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let dims = check::attention(q, k_cache, v_cache, block_tables, row_seq, positions, params.block_size, dst)?;
        if dims.d > ATTENTION_MAX_D {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("head dim {} is over the kernel's limit of {ATTENTION_MAX_D}", dims.d),
            });
        }
        self.in_bounds(OP, &[q, k_cache, v_cache, block_tables, row_seq, positions, dst])?;
        let blocks = dims.t * dims.h;
        if blocks == 0 || dims.d == 0 {
            return Ok(());
        }
        let dtype = q.dtype();
        let dx = float_ix(OP, dtype)?;
        let (pq, pk, pv, po) = (at(q), at(k_cache), at(v_cache), at(dst));
        // 16-byte vector loads need whole vectors per head and 16-byte aligned rows.
        let vec = 16 / dtype.size_in_bytes();
        let vectorized = dims.d % vec == 0 && (pq | pk | pv | po) % 16 == 0;
        let k = self.dev.kernels();
        let (kernel, chunks) =
            if vectorized { (&k.attention[dx], dims.d / vec) } else { (&k.attention_scalar[dx], dims.d) };
        let lanes_per_key = chunks.next_power_of_two().min(32);
        let splits = self.attention_splits(blocks, dims.mb * dims.block_size, dims.d);
        let ws = self.attn.buf.ptr();
        let ws_acc = ws + (blocks * splits * 2 * 4) as u64;
        let args = [
            Arg::Ptr(pq),
            Arg::Ptr(pk),
            Arg::Ptr(pv),
            Arg::Ptr(at(block_tables)),
            Arg::Ptr(at(row_seq)),
            Arg::Ptr(at(positions)),
            Arg::Ptr(po),
            Arg::Ptr(ws),
            Arg::Ptr(ws_acc),
            Arg::U32(u32_of(OP, "heads", dims.h)?),
            Arg::U32(u32_of(OP, "kv heads", dims.hkv)?),
            Arg::U32(dims.d as u32),
            Arg::U32(u32_of(OP, "block-table columns", dims.mb)?),
            Arg::U32(params.block_size),
            Arg::F32(params.scale),
            Arg::U32(params.sliding_window),
            Arg::U32(lanes_per_key as u32),
        ];
        let grid = row_grid(OP, blocks)?;
        self.launch(kernel, (grid, splits as u32, 1), ATTENTION_BLOCK, &args, None)?;
        if splits > 1 {
            let merge = &k.attention_merge[dx];
            let args = [Arg::Ptr(ws), Arg::Ptr(ws_acc), Arg::Ptr(po), Arg::U32(dims.d as u32), Arg::U32(splits as u32)];
            self.launch(merge, (grid, 1, 1), ATTENTION_BLOCK, &args, None)?;
        }
        Ok(())
    }

    fn sample(
        &self,
        logits: &Tensor<Cuda>,
        uniform: &Tensor<Cuda>,
        params: &Tensor<Cuda>,
        dst: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "sample";
        let Rows { rows, cols, row_stride, offset } = check::sample(logits, uniform, params, dst)?;
        self.in_bounds(OP, &[logits, uniform, params, dst])?;
        if rows == 0 {
            return Ok(());
        }
        let args = [
            at_offset(logits, offset),
            Arg::U32(u32_of(OP, "columns", cols)?),
            Arg::U32(u32_of(OP, "row stride", row_stride)?),
            Arg::Ptr(at(uniform)),
            Arg::Ptr(at(params)),
            Arg::Ptr(at(dst)),
        ];
        self.launch(&self.dev.kernels().sample, (row_grid(OP, rows)?, 1, 1), 1024, &args, None)
    }

    fn argmax(&self, x: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "argmax";
        let Rows { rows, cols, row_stride, offset } = check::argmax(x, dst)?;
        self.in_bounds(OP, &[x, dst])?;
        if rows == 0 {
            return Ok(());
        }
        let kernel = &self.dev.kernels().argmax[float_ix(OP, x.dtype())?];
        let args = [
            at_offset(x, offset),
            Arg::Ptr(at(dst)),
            Arg::U32(u32_of(OP, "columns", cols)?),
            Arg::U32(u32_of(OP, "row stride", row_stride)?),
        ];
        self.launch(kernel, (row_grid(OP, rows)?, 1, 1), row_block(cols), &args, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_blocks_are_whole_warps_within_limits() {
        for cols in [1, 31, 48, 576, 4096, 8192, 128_256] {
            let b = row_block(cols);
            assert!(b % 32 == 0 && (32..=1024).contains(&b), "{cols} -> {b}");
        }
        assert_eq!(row_block(576), 256);
    }

    #[test]
    fn kernel_arguments_point_at_their_values() {
        let args = [Arg::Ptr(0xdead_beef), Arg::U32(7), Arg::F32(0.5)];
        // SAFETY: each pointer was made from the matching variant's value, alive in `args`.
        unsafe {
            assert_eq!(*(args[0].as_param() as *const u64), 0xdead_beef);
            assert_eq!(*(args[1].as_param() as *const u32), 7);
            assert_eq!(*(args[2].as_param() as *const f32), 0.5);
        }
    }
}
