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
use encore_tensor::check::{self, AttentionDims, MatOperand, Rows};
use encore_tensor::{
    AttentionParams, Backend, BinaryOp, DType, Error, FusedMatmul, GluActivation, HostQTensor, HostTensor, QInput,
    QTensor, Result, StridedMeta, Tensor, UnaryOp,
};

use crate::device::{CudaDevice, DeviceBuffer};
use crate::error::drv;
use crate::kernels::{binary_index, float_index, unary_index, Kernel, GEMV_TIERS};
use crate::CudaError;

/// Threads per block of the elementwise kernels (grid-stride loops).
const ELEMENTWISE_BLOCK: u32 = 256;
/// attention.cu: ATTN_WARPS * 32 threads per block; head dims up to ATTN_MAX_D.
const ATTENTION_BLOCK: u32 = 128;
const ATTENTION_MAX_D: usize = 256;
/// Most splits of one query's keys (attention.cu split-K; at most attention_merge's
/// ATTN_MERGE_MAX_SPLITS), and the fewest keys worth a split.
const ATTENTION_MAX_SPLITS: usize = 32;
const ATTENTION_MIN_KEYS_PER_SPLIT: usize = 64;

/// The tensor-core kernels (attention_decode.cu, attention_prefill.cu, attention_tc.cuh): 128
/// threads, head-dim classes (DMAX), pipeline depths (`attention_tc::decode_stages` and
/// `prefill_stages`: keep in sync), 64-key tiles, shared rows of D + 8 elements, and the
/// query rows a CTA holds (16 decode, 64 prefill).
const TC_THREADS: u32 = 128;
const TC_DMAX: [usize; 3] = [64, 128, 256];
const TC_DECODE_STAGES: [usize; 3] = [2, 2, 2];
const TC_PREFILL_STAGES: [usize; 3] = [2, 2, 2];
const TC_TILE_KEYS: usize = 64;
const TC_DECODE_ROWS: usize = 16;
const TC_PREFILL_ROWS: usize = 64;
/// Steps of at most this many query rows take the decode kernel (one CTA per row, split-K);
/// larger ones the plan + prefill kernels (one CTA per chunk of a sequence's rows).
const TC_DECODE_MAX_ROWS: usize = 64;
/// Decode split-K: at most this many splits of a row's keys (see `decode_splits`; also
/// attention_merge's ATTN_MERGE_MAX_SPLITS).
const TC_DECODE_MAX_SPLITS: usize = 32;
/// attention_plan runs as one block of this many threads.
const ATTENTION_PLAN_THREADS: u32 = 1024;
/// The attention workspace: split-K partials or the prefill plan, whichever a launch uses.
const ATTENTION_WS_BYTES: usize = 16 << 20;

/// Dynamic shared memory of the tensor-core kernels for head dim `d` in class `c`.
fn tc_decode_smem(c: usize, d: usize) -> usize {
    (TC_DECODE_ROWS + TC_DECODE_STAGES[c] * 2 * TC_TILE_KEYS) * (d + 8) * 2
}
fn tc_prefill_smem(c: usize, d: usize) -> usize {
    (TC_PREFILL_ROWS + TC_PREFILL_STAGES[c] * 2 * TC_TILE_KEYS) * (d + 8) * 2
}

/// Splits of each of `columns` decode CTA columns over a device holding `slots` CTAs at once.
/// Fewer columns than slots: as many splits as still fit one wave (a wave need not be full
/// to saturate memory, and every wave boundary costs a tail). More: the n that minimises
/// waves(n) * (1 / n + 1 / 64), waves(n) = ceil(columns * n / slots): a grid just under a
/// whole number of waves, not just over it, where each CTA also pays a fixed cost of about
/// 1/64 of a column's work (its prologue, epilogue and share of the merge); the smallest n
/// on ties. Measured in crates/cuda/dev/attn_sweep.cu (NOTES.md there).
fn decode_splits(columns: usize, slots: usize) -> usize {
    let slots = slots.max(1);
    if columns < slots {
        return (slots / columns.max(1)).clamp(1, TC_DECODE_MAX_SPLITS);
    }
    let waves = |n: usize| (columns * n).div_ceil(slots);
    // waves(n) (64 + n) / n < waves(best) (64 + best) / best, in integers
    let better = |n: usize, best: usize| waves(n) * (64 + n) * best < waves(best) * (64 + best) * n;
    (1..=TC_DECODE_MAX_SPLITS).fold(1, |best, n| if better(n, best) { n } else { best })
}

/// The CUDA backend on one device. Cheap to clone (shares the device and the workspace).
#[derive(Clone)]
pub struct Cuda {
    dev: CudaDevice,
    attn: Arc<AttentionWorkspace>,
    /// The scratch of quantized matmuls (q8_1 activations, prefill chunks; qmatmul.rs),
    /// sized by `upload_quant`.
    pub(crate) quant: Arc<crate::qmatmul::QuantScratch>,
    /// sample.cu's split-argmax scratch: u64 keys then u32 counters, [`SAMPLE_SCRATCH_ROWS`]
    /// each, zero between launches (the kernel resets what it used).
    sample_scratch: Arc<DeviceBuffer>,
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

/// Scratch of attention, [`ATTENTION_WS_BYTES`]: either split-K partials, `[T*H, nsplit, 2]`
/// (max, sum) then `[T*H, nsplit, D]` f32 (attention.cu and attention_decode.cu; the launchers
/// lower nsplit until they fit), or the prefill plan, an i32 count then int2 items (at most T
/// of them; steps with more rows than fit take attention.cu). One buffer per device is safe
/// because every launch is ordered on the device's single stream.
struct AttentionWorkspace {
    buf: DeviceBuffer,
    sm_count: usize,
    /// Per D class: whether the decode / prefill kernel's shared memory fits this device.
    tc_decode: [bool; 3],
    tc_prefill: [bool; 3],
    /// Per D class: decode CTAs the whole device holds at once (occupancy x SMs, at DMAX).
    tc_decode_slots: [usize; 3],
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
        let mut optin = 0;
        // SAFETY: as above.
        drv("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(
                &mut optin,
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                cu_device,
            )
        })?;
        // The tensor-core kernels need more than the default 48 KB of dynamic shared memory:
        // raise each one's limit once, for the largest D of its class; a class whose need is
        // over the device's opt-in limit stays on attention.cu.
        let k = dev.kernels();
        let mut tc_decode = [false; 3];
        let mut tc_prefill = [false; 3];
        let mut tc_decode_slots = [sm_count; 3];
        for c in 0..TC_DMAX.len() {
            let need = [tc_decode_smem(c, TC_DMAX[c]), tc_prefill_smem(c, TC_DMAX[c])];
            for (kind, (ok, kernels)) in
                [(&mut tc_decode[c], &k.attention_decode[c]), (&mut tc_prefill[c], &k.attention_prefill[c])]
                    .into_iter()
                    .enumerate()
            {
                if need[kind] > optin.max(0) as usize {
                    continue;
                }
                for kernel in kernels {
                    // SAFETY: a function handle of this device's loaded module; the attribute
                    // takes a byte count within the device's opt-in limit (checked above).
                    drv("cuFuncSetAttribute", unsafe {
                        sys::cuFuncSetAttribute(
                            kernel.func,
                            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                            need[kind] as i32,
                        )
                    })?;
                }
                *ok = true;
            }
            if tc_decode[c] {
                let mut per_sm = 0;
                // SAFETY: valid out-pointer, a loaded function, its block size and a dynamic
                // shared-memory size within the limit just set.
                drv("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
                    sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                        &mut per_sm,
                        k.attention_decode[c][0].func,
                        TC_THREADS as i32,
                        need[0],
                    )
                })?;
                tc_decode_slots[c] = sm_count * per_sm.max(1) as usize;
            }
        }
        let buf = dev.alloc(ATTENTION_WS_BYTES.max(4 * sm_count * (ATTENTION_MAX_D + 2) * 4))?;
        let ws = AttentionWorkspace { buf, sm_count, tc_decode, tc_prefill, tc_decode_slots };
        let sample_scratch = Arc::new(dev.alloc_zeroed(SAMPLE_SCRATCH_ROWS * (8 + 4))?);
        Ok(Cuda { dev, attn: Arc::new(ws), quant: Arc::default(), sample_scratch })
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
    fn launch_smem(
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
            rows_per_warp: GEMV_ROWS_PER_WARP[(row >= 3) as usize][tier],
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
        let args = [a0, a1, a2, a3, a4, a5, a6, a7, a8, Arg::Ptr(c.norm), Arg::F32(c.eps), Arg::Ptr(c.up)];
        let grid = u32_of(OP, "gemv blocks", g.n.div_ceil(GEMV_WARPS * c.rows_per_warp))?;
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
                rows_per_warp: GEMV_ROWS_PER_WARP[0][g.m - 1],
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

    /// The D class of the tensor-core kernels, when they serve this call: bf16 / f16, D a
    /// multiple of 16 (whole k-steps and 16-byte rows), every operand 16-byte aligned
    /// (cp.async and the packed stores), at most 65535 CTA rows of KV heads.
    fn tensor_core_class(&self, a: &AttnArgs) -> Option<usize> {
        let d = a.dims.d;
        let ok = matches!(a.dtype, DType::BF16 | DType::F16)
            && d % 16 == 0
            && (a.q | a.k | a.v | a.dst) % 16 == 0
            && a.dims.hkv * (a.dims.h / a.dims.hkv).div_ceil(TC_DECODE_ROWS) <= u16::MAX as usize;
        ok.then(|| TC_DMAX.iter().position(|&m| d <= m)).flatten()
    }

    /// The kernel arguments shared by attention.cu and the tensor-core kernels after their
    /// first seven pointers and two of their own: heads .. window.
    fn attention_tail(&self, a: &AttnArgs) -> Result<[Arg; 7]> {
        const OP: &str = "attention";
        Ok([
            Arg::U32(u32_of(OP, "heads", a.dims.h)?),
            Arg::U32(u32_of(OP, "kv heads", a.dims.hkv)?),
            Arg::U32(a.dims.d as u32),
            Arg::U32(u32_of(OP, "block-table columns", a.dims.mb)?),
            Arg::U32(a.params.block_size),
            Arg::F32(a.params.scale),
            Arg::U32(a.params.sliding_window),
        ])
    }

    fn attention_args(&self, a: &AttnArgs, ws0: u64, ws1: u64) -> Result<Vec<Arg>> {
        let mut args = vec![a.q, a.k, a.v, a.tables, a.row_seq, a.positions, a.dst, ws0, ws1]
            .into_iter()
            .map(Arg::Ptr)
            .collect::<Vec<_>>();
        args.extend(self.attention_tail(a)?);
        Ok(args)
    }

    /// attention_decode.cu: grid (nsplit, Hkv * ceil(G / 16), T), then attention_merge when
    /// split (the kernel's own last-CTA merge, counters != 0, measured slower at small
    /// batches: crates/cuda/dev/NOTES.md). nsplit comes from the device's CTA slots and the
    /// grid's other dims, never from the context: one captured graph serves every position.
    fn attention_decode(&self, c: usize, a: &AttnArgs) -> Result<()> {
        let AttentionDims { t, h, hkv, d, .. } = a.dims;
        let columns = t * hkv * (h / hkv).div_ceil(TC_DECODE_ROWS);
        let mut splits = decode_splits(columns, self.attn.tc_decode_slots[c]);
        while splits > 1 && t * h * splits * (d + 2) * 4 > self.attn.buf.bytes() {
            splits -= 1;
        }
        let ws = self.attn.buf.ptr();
        let ws_acc = ws + (t * h * splits * 2 * 4) as u64;
        let k = self.dev.kernels();
        let kernel = &k.attention_decode[c][(a.dtype == DType::F16) as usize];
        let mut args = self.attention_args(a, ws, ws_acc)?;
        args.insert(9, Arg::Ptr(0)); // counters: none, attention_merge finishes
        let grid = (splits as u32, (columns / t) as u32, t as u32);
        self.launch_smem(kernel, grid, TC_THREADS, tc_decode_smem(c, d), &args, None)?;
        if splits > 1 {
            let merge = &k.attention_merge[float_ix("attention", a.dtype)?];
            let args = [Arg::Ptr(ws), Arg::Ptr(ws_acc), Arg::Ptr(a.dst), Arg::U32(d as u32), Arg::U32(splits as u32)];
            self.launch(merge, (row_grid("attention", t * h)?, 1, 1), ATTENTION_BLOCK, &args, None)?;
        }
        Ok(())
    }

    /// attention_plan (one block) cuts the rows into items of at most TT tokens of one
    /// sequence; attention_prefill.cu runs them on a grid bounded by shapes only:
    /// min(T, ceil(T / TT) + R) x Hkv * ceil(G / 64) (its CTAs loop when a step has more
    /// items than that, which only rows out of sequence order can cause).
    fn attention_prefill(&self, c: usize, a: &AttnArgs) -> Result<()> {
        const OP: &str = "attention";
        let AttentionDims { t, h, hkv, d, r, .. } = a.dims;
        let g = h / hkv;
        let tt = (TC_PREFILL_ROWS / g).max(1);
        let nhc = g.div_ceil(TC_PREFILL_ROWS);
        let cap = t.min(t.div_ceil(tt) + r);
        let count = self.attn.buf.ptr();
        let items = count + 16;
        let k = self.dev.kernels();
        let rows = u32_of(OP, "query rows", t)?;
        let plan = [
            Arg::Ptr(a.row_seq),
            Arg::Ptr(a.positions),
            Arg::U32(rows),
            Arg::U32(tt as u32),
            Arg::Ptr(items),
            Arg::Ptr(count),
        ];
        self.launch(&k.attention_plan, (1, 1, 1), ATTENTION_PLAN_THREADS, &plan, None)?;
        let kernel = &k.attention_prefill[c][(a.dtype == DType::F16) as usize];
        let args = self.attention_args(a, items, count)?;
        let grid = (row_grid(OP, cap)?, (hkv * nhc) as u32, 1);
        self.launch_smem(kernel, grid, TC_THREADS, tc_prefill_smem(c, d), &args, None)
    }

    /// attention.cu: every dtype, any D <= 256, any alignment; one CTA per (t, h) and split.
    fn attention_cuda_cores(&self, a: &AttnArgs) -> Result<()> {
        const OP: &str = "attention";
        let AttentionDims { t, h, d, mb, block_size, .. } = a.dims;
        let blocks = t * h;
        let dx = float_ix(OP, a.dtype)?;
        // 16-byte vector loads need whole vectors per head and 16-byte aligned rows.
        let vec = 16 / a.dtype.size_in_bytes();
        let vectorized = d % vec == 0 && (a.q | a.k | a.v | a.dst) % 16 == 0;
        let k = self.dev.kernels();
        let (kernel, chunks) = if vectorized { (&k.attention[dx], d / vec) } else { (&k.attention_scalar[dx], d) };
        let lanes_per_key = chunks.next_power_of_two().min(32);
        let splits = self.attention_splits(blocks, mb * block_size, d);
        let ws = self.attn.buf.ptr();
        let ws_acc = ws + (blocks * splits * 2 * 4) as u64;
        let mut args = self.attention_args(a, ws, ws_acc)?;
        args.push(Arg::U32(lanes_per_key as u32));
        let grid = row_grid(OP, blocks)?;
        self.launch(kernel, (grid, splits as u32, 1), ATTENTION_BLOCK, &args, None)?;
        if splits > 1 {
            let merge = &k.attention_merge[dx];
            let args = [Arg::Ptr(ws), Arg::Ptr(ws_acc), Arg::Ptr(a.dst), Arg::U32(d as u32), Arg::U32(splits as u32)];
            self.launch(merge, (grid, 1, 1), ATTENTION_BLOCK, &args, None)?;
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

/// One attention call: the operands' first-element addresses and the checked dims.
struct AttnArgs {
    q: u64,
    k: u64,
    v: u64,
    tables: u64,
    row_seq: u64,
    positions: u64,
    dst: u64,
    dtype: DType,
    dims: AttentionDims,
    params: AttentionParams,
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
    rows_per_warp: usize,
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

pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
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
        // [T, heads, D] strides of q, k, v, q_dst: offsets from each view's start are
        // computed in 64 bits from these u32 strides
        let mut strides = [Arg::U32(0); 12];
        for (i, view) in [q, k, v, q_dst].into_iter().enumerate() {
            for (j, &stride) in view.layout().strides().iter().enumerate() {
                strides[3 * i + j] = Arg::U32(u32_of(OP, "stride", stride)?);
            }
        }
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
        if dims.t * dims.h == 0 || dims.d == 0 {
            return Ok(());
        }
        let a = AttnArgs {
            q: at(q),
            k: at(k_cache),
            v: at(v_cache),
            tables: at(block_tables),
            row_seq: at(row_seq),
            positions: at(positions),
            dst: at(dst),
            dtype: q.dtype(),
            dims,
            params,
        };
        if let Some(c) = self.tensor_core_class(&a) {
            if dims.t <= TC_DECODE_MAX_ROWS && self.attn.tc_decode[c] {
                return self.attention_decode(c, &a);
            }
            if self.attn.tc_prefill[c] && 16 + dims.t * 8 <= self.attn.buf.bytes() {
                return self.attention_prefill(c, &a);
            }
        }
        self.attention_cuda_cores(&a)
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
    fn decode_splits_fill_whole_waves() {
        // H200: 132 SMs x 5 CTAs (D = 64) or x 3 (D = 128); columns = T * Hkv
        assert_eq!(decode_splits(512, 660), 1, "batch 64 fits one wave");
        assert_eq!(decode_splits(512, 396), 3, "1.3 waves -> 3.9 waves");
        assert_eq!(decode_splits(64, 660), 10, "batch 8: one full wave");
        assert_eq!(decode_splits(8, 660), TC_DECODE_MAX_SPLITS, "batch 1: capped");
        for columns in 1..2000 {
            let n = decode_splits(columns, 396);
            assert!((1..=TC_DECODE_MAX_SPLITS).contains(&n), "{columns}: {n}");
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
