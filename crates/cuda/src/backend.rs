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
    AttentionParams, Backend, BinaryOp, DType, DecodeAttention, Error, FusedMatmul, GluActivation, HostQTensor,
    HostTensor, QInput, QTensor, Result, StridedMeta, Tensor, UnaryOp,
};

use crate::attention::AttentionWorkspace;
use crate::device::{CudaDevice, DeviceBuffer};
use crate::error::drv;
use crate::kernels::{binary_index, float_index, unary_index, Kernel, GEMV_TIERS};
use crate::CudaError;

/// Threads per block of the elementwise kernels (grid-stride loops).
const ELEMENTWISE_BLOCK: u32 = 256;
/// The CUDA backend on one device. Cheap to clone (shares the device and the workspace).
#[derive(Clone)]
pub struct Cuda {
    pub(crate) dev: CudaDevice,
    pub(crate) attn: Arc<AttentionWorkspace>,
    /// The scratch of quantized matmuls (q8_1 activations, prefill chunks; qmatmul.rs),
    /// sized by `upload_quant`.
    pub(crate) quant: Arc<crate::qmatmul::QuantScratch>,
    /// sample.cu's split-argmax scratch: u64 keys then u32 counters, [`SAMPLE_SCRATCH_ROWS`]
    /// each, zero between launches (the kernel resets what it used).
    sample_scratch: Arc<DeviceBuffer>,
    /// Warps of each plain gemv.cu kernel (`Kernels::gemv`'s `[row][tier]`) the whole device
    /// holds at once: the one wave [`gemv_ksplit`] keeps a grid in.
    gemv_slots: [[usize; 2]; 5],
}

/// Rows whose greedy argmax sample.cu can split over several blocks (larger launches, e.g.
/// a prefill's every-row logits, take one block a row).
const SAMPLE_SCRATCH_ROWS: usize = 1024;
/// Logits a split-argmax block scans (at most SAMPLE_MAX_SPLITS blocks a row).
const SAMPLE_SPLIT_COLS: usize = 4096;
const SAMPLE_MAX_SPLITS: usize = 64;

/// Blocks a row of `cols` logits for `rows` rows (1: the one-block path).
fn sample_splits(rows: usize, cols: usize) -> usize {
    if rows > SAMPLE_SCRATCH_ROWS {
        return 1;
    }
    cols.div_ceil(SAMPLE_SPLIT_COLS).clamp(1, SAMPLE_MAX_SPLITS)
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
        let ws = AttentionWorkspace::new(&dev, cu_device, sm_count)?;
        let sample_scratch = Arc::new(dev.alloc_zeroed(SAMPLE_SCRATCH_ROWS * (8 + 4))?);
        let mut gemv_slots = [[0; 2]; 5];
        for (slots, kernels) in gemv_slots.iter_mut().zip(&dev.kernels().gemv) {
            for (s, kernel) in slots.iter_mut().zip(kernels) {
                *s = sm_count * GEMV_WARPS * kernel.blocks_per_sm(GEMV_WARPS as u32 * 32, 0)?;
            }
        }
        Ok(Cuda { dev, attn: Arc::new(ws), quant: Arc::default(), sample_scratch, gemv_slots })
    }

    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }

    /// Queue `kernel` with `args` (in the kernel's parameter order), then `meta` by value if
    /// given (strided kernels take it last).
    pub(crate) fn launch(
        &self,
        kernel: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        args: &[Arg],
        meta: Option<&StridedMeta>,
    ) -> Result<()> {
        self.launch_smem(kernel, grid, block, 0, args, meta)
    }

    /// [`Cuda::launch`] with `smem` bytes of dynamic shared memory (within the limit set for
    /// `kernel` in [`Cuda::from_device`]).
    pub(crate) fn launch_smem(
        &self,
        kernel: &Kernel,
        grid: (u32, u32, u32),
        block: u32,
        smem: usize,
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
        unsafe { self.dev.launch(kernel, grid, (block, 1, 1), smem as u32, &mut params[..n]) }?;
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
        // gemv.cu serves the decode-shaped matmuls (M <= 2 rows against a [N, K] weight) and
        // gemv_tc.cu the f32 logits of 3..16 rows, with the residual add as their epilogue:
        // they stream W at up to the copy bandwidth where cuBLAS reaches 29-81%, and add no
        // memset nodes to graphs.
        if let Some(g) = gemv_shape(&dims, lhs, rhs) {
            return self.gemv(g, lhs, rhs, dst, accumulate);
        }
        if let Some(g) = gemv_tc_shape(&dims, lhs, rhs, dst) {
            return self.gemv_tc(g, lhs, rhs, dst, accumulate);
        }
        let (a, b, c) = (lhs.storage().ptr(), rhs.storage().ptr(), dst.storage().ptr());
        Ok(self.dev.blas().gemm_to(lhs.dtype(), dst.dtype(), &dims, a, b, c, accumulate)?)
    }

    /// gemv.cu for decode-shaped matmuls (see `gemv_shape`); `dst += lhs rhs` when `accumulate`.
    fn gemv(
        &self,
        g: GemvShape,
        lhs: &Tensor<Cuda>,
        rhs: &Tensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "matmul";
        if g.n == 0 {
            return Ok(());
        }
        let tier = GEMV_TIERS.iter().position(|&t| g.m <= t).expect("gemv_shape keeps M <= 2");
        let row = match (lhs.dtype(), dst.dtype()) {
            (DType::BF16, DType::F32) => 3,
            (DType::F16, DType::F32) => 4,
            (dt, _) => float_ix(OP, dt)?,
        };
        self.launch_gemv(GemvCall {
            kernel: &self.dev.kernels().gemv[row][tier],
            warp_slots: self.gemv_slots[row][tier],
            rows_per_warp: GEMV_ROWS_PER_WARP[(row >= 3) as usize][tier],
            elem_bytes: lhs.dtype().size_in_bytes(),
            g,
            x: at(lhs),
            w: at(rhs),
            y: at(dst),
            accumulate,
            norm: 0,
            eps: 0.0,
            up: 0,
        })
    }

    /// gemv_tc.cu for the logits of 3..16 rows (see `gemv_tc_shape`): a block of 8 warps for
    /// 16 rows of W; `dst += x w^T` when `accumulate`.
    fn gemv_tc(
        &self,
        g: GemvShape,
        x: &Tensor<Cuda>,
        w: &Tensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "matmul";
        let row = match (x.dtype(), dst.dtype()) {
            (DType::BF16, DType::F32) => 0,
            (DType::F16, DType::F32) => 1,
            (dt, _) => return Err(Error::UnsupportedDType { op: OP, dtype: dt }),
        };
        if g.n == 0 {
            return Ok(());
        }
        let args = g.args(at(x), at(w), at(dst), accumulate)?;
        let kernel = &self.dev.kernels().gemv_tc[row][(g.m > GEMV_TC_TILE_ROWS) as usize];
        let grid = u32_of(OP, "gemv_tc blocks", g.n.div_ceil(GEMV_TC_TILE_ROWS * 2))?;
        self.launch(kernel, (grid, 1, 1), GEMV_TC_WARPS * 32, &args, None)
    }

    /// One gemv.cu launch (every entry of gemv.cu takes the same parameters).
    fn launch_gemv(&self, c: GemvCall<'_>) -> Result<()> {
        const OP: &str = "matmul";
        let g = c.g;
        let [a0, a1, a2, a3, a4, a5, a6, a7, a8] = g.args(c.x, c.w, c.y, c.accumulate)?;
        let warp_rows = g.n.div_ceil(c.rows_per_warp);
        let chunks = g.k * c.elem_bytes / 16;
        let ksplit = if c.warp_slots > 0 { gemv_ksplit(warp_rows, chunks, c.warp_slots) } else { 1 };
        let ks = Arg::U32(ksplit as u32);
        let args = [a0, a1, a2, a3, a4, a5, a6, a7, a8, Arg::Ptr(c.norm), Arg::F32(c.eps), Arg::Ptr(c.up), ks];
        let grid = u32_of(OP, "gemv blocks", warp_rows.div_ceil(GEMV_WARPS / ksplit))?;
        self.launch(c.kernel, (grid, 1, 1), GEMV_WARPS as u32 * 32, &args, None)
    }

    /// gemv.cu's fused kernels (`Backend::matmul_fused`): decode rows (the same-dtype gemv
    /// shape, M <= 2) with the RMSNorm done on x as the kernel loads it, and the gated
    /// activation on the gate and up sums as it stores them. Other shapes: `Ok(false)`.
    fn gemv_fused(&self, op: &FusedMatmul<'_, Cuda>) -> Result<bool> {
        const OP: &str = "matmul_fused";
        let (x, (nw, eps), dst) = (op.x, op.norm, op.dst);
        let k = op.w_t.dims().first().copied().unwrap_or(0);
        check_norm_weight(OP, nw, k, x)?;
        if op.glu.is_some() && op.accumulate {
            return Err(Error::InvalidArgument { op: OP, msg: "a gated projection does not accumulate".into() });
        }
        let dims = if op.accumulate { check::matmul_add(x, op.w_t, dst)? } else { check::matmul(x, op.w_t, dst)? };
        blas_compatible(OP, "lhs", x, &dims.lhs, dims.m, dims.k)?;
        blas_compatible(OP, "rhs", op.w_t, &dims.rhs, dims.k, dims.n)?;
        self.in_bounds(OP, &[x, op.w_t, dst, nw])?;
        let Some(g) = gemv_shape(&dims, x, op.w_t) else { return Ok(false) };
        // the norm weight is read in 16-byte vectors; the up weight like the gate's
        let mut aligned = at(nw) % 16 == 0;
        let (fusion, up) = match op.glu {
            None => (0, 0),
            Some((act, up)) => {
                if up.dims() != op.w_t.dims() || up.dtype() != op.w_t.dtype() {
                    let msg = format!("up weight {:?} for a gate weight {:?}", up.dims(), op.w_t.dims());
                    return Err(Error::InvalidArgument { op: OP, msg });
                }
                self.in_bounds(OP, &[up])?;
                // the same [K, N] view of [N, K] rows as the gate's, at an aligned address
                aligned &= at(up) % 16 == 0 && up.layout().strides() == op.w_t.layout().strides();
                (1 + (act == GluActivation::GeluTanh) as usize, at(up))
            }
        };
        if dst.dtype() != x.dtype() || g.m > GEMV_MAX_M_SAME_DTYPE || !aligned {
            return Ok(false);
        }
        if g.n > 0 {
            self.launch_gemv(GemvCall {
                kernel: &self.dev.kernels().gemv_fused[fusion][float_ix(OP, x.dtype())?][g.m - 1],
                // measured slower split (ncu, BENCHMARKS.md session 6): one warp a row
                warp_slots: 0,
                rows_per_warp: GEMV_ROWS_PER_WARP[0][g.m - 1],
                elem_bytes: x.dtype().size_in_bytes(),
                g,
                x: at(x),
                w: at(op.w_t),
                y: at(dst),
                accumulate: op.accumulate,
                norm: at(nw),
                eps,
                up,
            })?;
        }
        Ok(true)
    }

    pub(crate) fn in_bounds(&self, op: &'static str, tensors: &[&Tensor<Cuda>]) -> Result<()> {
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
}

/// Most arguments of any kernel (attention has 17).
const MAX_ARGS: usize = 32;

/// One scalar kernel argument, stored by value so that its address can go to cuLaunchKernelEx.
#[derive(Clone, Copy)]
pub(crate) enum Arg {
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
/// A fused RMSNorm's weight: `[K]`, contiguous, in x's dtype.
pub(crate) fn check_norm_weight(op: &'static str, norm: &Tensor<Cuda>, k: usize, x: &Tensor<Cuda>) -> Result<()> {
    if norm.dims() != [k] || norm.dtype() != x.dtype() || !norm.is_contiguous() {
        let msg = format!("norm weight {:?} {} for K = {k} and x {}", norm.dims(), norm.dtype(), x.dtype());
        return Err(Error::InvalidArgument { op, msg });
    }
    Ok(())
}

pub(crate) fn at(t: &Tensor<Cuda>) -> u64 {
    t.storage().ptr() + (t.layout().offset() * t.dtype().size_in_bytes()) as u64
}

fn at_offset(t: &Tensor<Cuda>, offset: usize) -> Arg {
    Arg::Ptr(t.storage().ptr() + (offset * t.dtype().size_in_bytes()) as u64)
}

/// gemv.cu's `WARPS` (a block) and, per tier of [`GEMV_TIERS`], its `R` (rows of W a warp)
/// for the same-dtype kernels `[0]` and the f32-output ones `[1]`: the instantiation lines at
/// the end of gemv.cu.
const GEMV_WARPS: usize = 4;
const GEMV_ROWS_PER_WARP: [[usize; 2]; 2] = [[1, 1], [2, 4]];
/// gemv.cu's K split (`gemv_ksplit`): the fewest 16-byte chunks a lane keeps (one step of
/// loads in flight).
const GEMV_MIN_LANE_CHUNKS: usize = 4;

/// Warps of a gemv.cu block that share its rows, each taking 1/ksplit of K (1, 2 or 4):
/// doubled while the grid of `warp_rows` warp-rows still fits one wave of the kernel's
/// `slots` (the warps the device holds at once) and each lane would still stream
/// [`GEMV_MIN_LANE_CHUNKS`] of the `chunks` 16-byte chunks of a row. A 2048-row down
/// projection (K = 8192) thus runs 8192 warps of 4 KB instead of 2048 of 16 KB; a 4096-row
/// one (Llama-3.1-8B) is split 2 ways, not 4: 16384 warps were two waves and a few, the last
/// few warps streaming alone (H200, session 8 call B: 8B b1 4.19 against 4.49 ms); the LM
/// head and the wide gate_up keep one warp a row.
fn gemv_ksplit(warp_rows: usize, chunks: usize, slots: usize) -> usize {
    let mut ks = 1;
    while ks < GEMV_WARPS && warp_rows * ks * 2 <= slots && chunks >= 32 * 2 * ks * GEMV_MIN_LANE_CHUNKS {
        ks *= 2;
    }
    ks
}

/// Rows of x up to which gemv.cu serves every projection (above, gemv.cu is FMA-bound from
/// M = 4: crates/cuda/dev/NOTES.md; cuBLAS takes the projections, gemv_tc.cu the logits).
const GEMV_MAX_M_SAME_DTYPE: usize = 2;
/// gemv_tc.cu: warps a block (its KW), rows of x an n8 tile (NT = 1 up to 8 rows, 2 up to
/// [`GEMV_TC_MAX_M`]); a block owns 2 * GEMV_TC_TILE_ROWS = 16 rows of W.
const GEMV_TC_WARPS: u32 = 8;
const GEMV_TC_TILE_ROWS: usize = 8;
const GEMV_TC_MAX_M: usize = 16;

/// One gemv.cu launch: the kernel, its rows of W a warp (`R`), the shape, device addresses,
/// and the fusions' operands: the norm weight and epsilon, the up weight (0 where unused).
struct GemvCall<'a> {
    kernel: &'a Kernel,
    /// The kernel's warps in one wave of the device, for the K split; 0: no split.
    warp_slots: usize,
    rows_per_warp: usize,
    /// Bytes of an element of x and W.
    elem_bytes: usize,
    g: GemvShape,
    x: u64,
    w: u64,
    y: u64,
    accumulate: bool,
    norm: u64,
    eps: f32,
    up: u64,
}

/// The decode-step shape gemv.cu serves: `x [M, K] @ W^T` (M <= 2) with `W [N, K]` stored in
/// contiguous rows, x rows and W 16-byte aligned, K a multiple of a 16-byte vector, the
/// output rows unit-stride (the kernel's preconditions).
#[derive(Clone, Copy, Debug)]
struct GemvShape {
    m: usize,
    n: usize,
    k: usize,
    ldx: usize,
    ldy: usize,
}

impl GemvShape {
    /// The parameters gemv.cu's and gemv_tc.cu's entries share: x, w, y, M, N, K, ldx, ldy,
    /// accumulate.
    fn args(&self, x: u64, w: u64, y: u64, accumulate: bool) -> Result<[Arg; 9]> {
        const OP: &str = "matmul";
        Ok([
            Arg::Ptr(x),
            Arg::Ptr(w),
            Arg::Ptr(y),
            Arg::U32(self.m as u32),
            Arg::U32(u32_of(OP, "rows of W", self.n)?),
            Arg::U32(u32_of(OP, "inner dim", self.k)?),
            Arg::U32(u32_of(OP, "lhs row stride", self.ldx)?),
            Arg::U32(u32_of(OP, "dst row stride", self.ldy)?),
            Arg::U32(accumulate as u32),
        ])
    }
}

fn gemv_shape(d: &check::MatmulDims, lhs: &Tensor<Cuda>, rhs: &Tensor<Cuda>) -> Option<GemvShape> {
    skinny_shape(d, lhs, rhs, 1..=GEMV_MAX_M_SAME_DTYPE, 16 / lhs.dtype().size_in_bytes())
}

/// The decode-step shape gemv_tc.cu serves: the LM head, f32 logits `x [M, K] @ W^T` with
/// 3 <= M <= 16 rows of bf16 or f16, K a multiple of 32 (whole mma k steps), the layout of
/// `gemv_shape`. (Same-dtype projections of 3..16 rows measured faster on cuBLAS in the
/// decode step: crates/cuda/dev/NOTES.md.)
fn gemv_tc_shape(
    d: &check::MatmulDims,
    lhs: &Tensor<Cuda>,
    rhs: &Tensor<Cuda>,
    dst: &Tensor<Cuda>,
) -> Option<GemvShape> {
    let logits = matches!(lhs.dtype(), DType::BF16 | DType::F16) && dst.dtype() == DType::F32;
    logits.then(|| skinny_shape(d, lhs, rhs, GEMV_MAX_M_SAME_DTYPE + 1..=GEMV_TC_MAX_M, 32)).flatten()
}

/// `x [M, K] @ W^T` with M in `rows`, `W [N, K]` stored in contiguous rows (1 <= N < 2^31),
/// K a multiple of `k_multiple` (at least a 16-byte vector), x rows and W 16-byte aligned,
/// the output rows unit-stride: the preconditions of gemv.cu and gemv_tc.cu.
fn skinny_shape(
    d: &check::MatmulDims,
    lhs: &Tensor<Cuda>,
    rhs: &Tensor<Cuda>,
    rows: std::ops::RangeInclusive<usize>,
    k_multiple: usize,
) -> Option<GemvShape> {
    let es = lhs.dtype().size_in_bytes();
    let aligned = |t: &Tensor<Cuda>, off: usize| (t.storage().ptr() as usize + off * es) % 16 == 0;
    let ok = d.batch == 1
        && rows.contains(&d.m)
        && d.n < i32::MAX as usize
        && d.k % k_multiple == 0
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

/// rope.cu's norm_rope_kv_write: warps a block (NORM_WARPS), the largest D (NORM_MAX_D).
const NORM_ROPE_WARPS: usize = 4;
const NORM_ROPE_MAX_D: usize = 256;

/// The `[T, heads, D]` strides of rope.cu's q, k, v and q_dst views as 12 u32 arguments (the
/// kernels compute offsets from each view's start in 64 bits).
fn view_strides(op: &'static str, views: [&Tensor<Cuda>; 4]) -> Result<[Arg; 12]> {
    let mut strides = [Arg::U32(0); 12];
    for (i, view) in views.into_iter().enumerate() {
        for (j, &stride) in view.layout().strides().iter().enumerate() {
            strides[3 * i + j] = Arg::U32(u32_of(op, "stride", stride)?);
        }
    }
    Ok(strides)
}

pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::InvalidArgument { op, msg: format!("{what} {v} exceeds u32") })
}

/// Rows as a grid: at most 2^31 - 1 blocks.
pub(crate) fn row_grid(op: &'static str, rows: usize) -> Result<u32> {
    if rows > i32::MAX as usize {
        return Err(Error::TooLarge { op, numel: rows });
    }
    Ok(rows as u32)
}

pub(crate) fn float_ix(op: &'static str, dtype: DType) -> Result<usize> {
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

    fn matmul_fused(&self, op: &FusedMatmul<'_, Cuda>) -> Result<bool> {
        self.gemv_fused(op)
    }

    /// qmatmul.rs: GEMV on the blocks for M <= 16, dequantize + cuBLAS above.
    fn qmatmul(&self, x: &Tensor<Cuda>, w: &QTensor<Cuda>, dst: &Tensor<Cuda>, accumulate: bool) -> Result<()> {
        self.qmatmul_blocks(x, w, dst, accumulate)
    }

    fn qmatmul_fused(
        &self,
        input: &QInput<'_, Cuda>,
        w: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
    ) -> Result<bool> {
        self.qmatmul_fused_blocks(input, w, dst, accumulate)
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

    fn gelu_mul(&self, gate: &Tensor<Cuda>, up: &Tensor<Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "gelu_mul";
        check::gelu_mul(gate, up, dst)?;
        let meta = StridedMeta::new(OP, &[dst.layout(), gate.layout(), up.layout()])?;
        self.in_bounds(OP, &[gate, up, dst])?;
        let kernel = &self.dev.kernels().gelu_mul[float_ix(OP, dst.dtype())?];
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
        let blocks = n.div_ceil(256).min(self.attn.sm_count * 32) as u32;
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

    /// rope.cu `rope_kv_write`: the three launches of rope, rope, kv_write in one.
    fn rope_kv_write(
        &self,
        q: &Tensor<Cuda>,
        k: &Tensor<Cuda>,
        v: &Tensor<Cuda>,
        cos: &Tensor<Cuda>,
        sin: &Tensor<Cuda>,
        positions: &Tensor<Cuda>,
        slot_mapping: &Tensor<Cuda>,
        q_dst: &Tensor<Cuda>,
        k_cache: &Tensor<Cuda>,
        v_cache: &Tensor<Cuda>,
    ) -> Result<()> {
        const OP: &str = "rope_kv_write";
        let (t, h, hkv, d, s) =
            check::rope_kv_write(q, k, v, cos, sin, positions, slot_mapping, q_dst, k_cache, v_cache)?;
        self.in_bounds(OP, &[q, k, v, cos, sin, positions, slot_mapping, q_dst, k_cache, v_cache])?;
        let work = t * (h + 2 * hkv) * (d / 2);
        if work == 0 {
            return Ok(());
        }
        u32_of(OP, "threads", work)?;
        let strides = view_strides(OP, [q, k, v, q_dst])?;
        let head = [
            Arg::Ptr(at(q)),
            Arg::Ptr(at(k)),
            Arg::Ptr(at(v)),
            Arg::Ptr(at(q_dst)),
            Arg::Ptr(at(k_cache)),
            Arg::Ptr(at(v_cache)),
            Arg::Ptr(at(cos)),
            Arg::Ptr(at(sin)),
            Arg::Ptr(at(positions)),
            Arg::Ptr(at(slot_mapping)),
            Arg::U32(t as u32),
            Arg::U32(h as u32),
            Arg::U32(hkv as u32),
            Arg::U32((d / 2) as u32),
            Arg::U32(u32_of(OP, "table rows", cos.dims()[0])?),
            Arg::U32(u32_of(OP, "slots", s)?),
        ];
        let mut args = [Arg::U32(0); 28];
        args[..16].copy_from_slice(&head);
        args[16..].copy_from_slice(&strides);
        let kernel = &self.dev.kernels().rope_kv_write[float_ix(OP, q.dtype())?];
        self.launch(kernel, (elementwise_grid(work), 1, 1), ELEMENTWISE_BLOCK, &args, None)
    }

    /// rope.cu `norm_rope_kv_write`: copy + rms_norm of q and of k, then rope_kv_write, in
    /// one launch (D <= 256 and contiguous norm weights; otherwise those ops).
    fn norm_rope_kv_write(&self, a: &DecodeAttention<'_, Cuda>) -> Result<()> {
        const OP: &str = "norm_rope_kv_write";
        let (t, h, hkv, d, s) = check::norm_rope_kv_write(a)?;
        let Some(n) = a.qk_norm else { unreachable!("checked") };
        let (q, k, v, q_dst) = (a.q, a.k, a.v, a.q_rot);
        self.in_bounds(
            OP,
            &[q, k, v, a.cos, a.sin, a.positions, a.slot_mapping, q_dst, a.k_cache, a.v_cache, n.q, n.k],
        )?;
        if d > NORM_ROPE_MAX_D || !n.q.is_contiguous() || !n.k.is_contiguous() {
            return a.norm_rope_kv_write_ops(self);
        }
        let warps = t * (h + 2 * hkv);
        if warps == 0 {
            return Ok(());
        }
        u32_of(OP, "threads", warps * 32)?;
        // rms_norm's block over rows of D (`row_block`), which the kernel's sums mirror
        let vthreads = row_block(d) / 32;
        let mut args = vec![
            Arg::Ptr(at(q)),
            Arg::Ptr(at(k)),
            Arg::Ptr(at(v)),
            Arg::Ptr(at(q_dst)),
            Arg::Ptr(at(a.k_cache)),
            Arg::Ptr(at(a.v_cache)),
            Arg::Ptr(at(a.cos)),
            Arg::Ptr(at(a.sin)),
            Arg::Ptr(at(a.positions)),
            Arg::Ptr(at(a.slot_mapping)),
            Arg::Ptr(at(n.q)),
            Arg::Ptr(at(n.k)),
            Arg::F32(n.eps),
            Arg::U32(t as u32),
            Arg::U32(h as u32),
            Arg::U32(hkv as u32),
            Arg::U32((d / 2) as u32),
            Arg::U32(u32_of(OP, "table rows", a.cos.dims()[0])?),
            Arg::U32(u32_of(OP, "slots", s)?),
            Arg::U32(vthreads),
        ];
        args.extend(view_strides(OP, [q, k, v, q_dst])?);
        let kernel = &self.dev.kernels().norm_rope_kv_write[float_ix(OP, q.dtype())?];
        let grid = u32_of(OP, "blocks", warps.div_ceil(NORM_ROPE_WARPS))?;
        self.launch(kernel, (grid, 1, 1), NORM_ROPE_WARPS as u32 * 32, &args, None)
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
        self.attention_op(q, k_cache, v_cache, block_tables, row_seq, positions, params, dst)
    }

    fn decode_attention(&self, a: &DecodeAttention<'_, Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        self.decode_attention_op(a, dst)
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
            Arg::Ptr(self.sample_scratch.ptr()),
        ];
        let splits = sample_splits(rows, cols) as u32;
        self.launch(&self.dev.kernels().sample, (row_grid(OP, rows)?, splits, 1), 1024, &args, None)
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
    fn sample_splits_cover_the_vocab_within_the_scratch() {
        assert_eq!(sample_splits(1, 128_256), 32);
        assert_eq!(sample_splits(8, 151_936), 38);
        assert_eq!(sample_splits(1, 100), 1);
        assert_eq!(sample_splits(1, 1 << 30), SAMPLE_MAX_SPLITS);
        assert_eq!(sample_splits(SAMPLE_SCRATCH_ROWS + 1, 128_256), 1, "past the scratch: one block a row");
    }

    #[test]
    fn gemv_splits_k_of_few_long_rows_only() {
        let t = 132 * 64; // H200, 16 blocks of 4 warps an SM
        assert_eq!(gemv_ksplit(2048, 8192 / 8, t), 4, "1B down: 2048 rows of 1024 chunks");
        assert_eq!(gemv_ksplit(2048, 8192 / 8, 132 * 60), 2, "8192 warps are past one wave of 7920");
        assert_eq!(gemv_ksplit(4096, 14336 / 8, t), 2, "8B down: one wave of 8192 warps, not two and a bit");
        assert_eq!(gemv_ksplit(2048, 2048 / 8, t), 2, "1B o_proj: 4 chunks a lane at most");
        assert_eq!(gemv_ksplit(128_256 / 2, 2048 / 8, t), 1, "LM head: rows enough");
        assert_eq!(gemv_ksplit(2048, 64, t), 1, "short rows");
        for rows in [1, 7, 100, 5000, 20_000] {
            for chunks in [8, 256, 1792, 4096] {
                let ks = gemv_ksplit(rows, chunks, t);
                assert!([1, 2, 4].contains(&ks) && GEMV_WARPS % ks == 0, "{rows} x {chunks}: {ks}");
                assert!(ks == 1 || chunks >= 32 * ks * GEMV_MIN_LANE_CHUNKS, "{rows} x {chunks}: {ks}");
                assert!(ks == 1 || rows * ks <= t, "{rows} x {chunks}: {ks} is past one wave");
            }
        }
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
