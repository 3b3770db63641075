//! Launchers of `kernels/qmatmul.cu`: [`encore_tensor::Backend::qmatmul`],
//! `qembedding` and `upload_quant` for [`Cuda`], on weights that stay in their ggml blocks.
//!
//! - Decode (M <= 16 rows of x): `qquant_x` turns x into 8-bit q8_1 activations once, then
//!   `qgemv_<type>_<dtype>_m<tier>` takes integer dot products (dp4a) with the blocks, read
//!   once for all rows (llama.cpp's MMVQ scheme; the sweep in `crates/cuda/dev/` measured it
//!   against the dequantize-in-registers kernel it replaced).
//! - Prefill (M > 16): the weight is dequantized, a chunk of rows at a time, into a scratch
//!   in f16 (f32 for f32 x), and each chunk's columns of the output are a cuBLAS GEMM; bf16
//!   x is converted to f16 rows for it (f16 holds `d * q` with 11 significant bits, bf16 with
//!   8: llama.cpp also runs its dequantized GEMMs in f16), the f32 result written back.
//! - `qembedding`: `qdequant_<type>_<dtype>` over the looked-up rows.
//!
//! One scratch per device holds all of that (regions carved per call); `upload_quant`
//! sizes it from the quantized bytes uploaded so far (1/32 of them, 1 to 64 MiB, at least
//! what one row needs), i.e. at load: a forward pass allocates nothing, and a captured graph
//! holds kernels (and cuBLAS's) only. Grids depend on shapes only, never on device data.

use std::sync::Mutex;

use encore_tensor::check::{self, MatOperand, MatmulDims};
use encore_tensor::{Backend, DType, Error, GluActivation, HostQTensor, QInput, QTensor, QuantType, Result, Tensor};

use crate::backend::{at, check_norm_weight, u32_of, Arg};
use crate::device::DeviceBuffer;
use crate::kernels::{float_index, QGEMV_TIERS};
use crate::Cuda;

/// qmatmul.cu: `WARPS` warps (one weight row, or one 32-element group of x, each) per block.
const QGEMV_WARPS: u32 = 4;
/// Threads per block of `qdequant` and of the prefill helpers.
const QDEQUANT_THREADS: u32 = 128;
/// Blocks of the grid-stride prefill helpers (`qcvt_bf16_f16`, `qepi_bf16`).
const HELPER_BLOCKS: u32 = 1024;
/// The most rows of x the GEMV kernels take.
pub const QGEMV_MAX_M: usize = 16;
/// Scratch bounds: 1/32 of the quantized bytes, within [MIN, MAX].
const SCRATCH_MIN_BYTES: usize = 1 << 20;
const SCRATCH_MAX_BYTES: usize = 64 << 20;
/// Region alignment inside the scratch.
const ALIGN: usize = 256;
/// Zero bytes `upload_quant` leaves past the last block (read by the GEMV's word loads).
const TAIL_BYTES: usize = 16;

/// The scratch of quantized matmuls, shared by every quantized weight of the device (its
/// launches are ordered on the device's one stream, so reuse needs no sync).
#[derive(Default)]
pub(crate) struct QuantScratch {
    state: Mutex<ScratchState>,
}

#[derive(Default)]
struct ScratchState {
    buf: Option<DeviceBuffer>,
    /// Quantized bytes uploaded so far (the scratch's share is taken of them).
    uploaded: usize,
}

/// What the GEMV's activation quantizer computes on x first (qmatmul.cu `qquant_x*`).
#[derive(Clone, Copy)]
enum XQuant {
    Plain,
    /// The RMSNorm: its weight (device address) and epsilon; qmatmul.cu's per-row mapping.
    Rms {
        norm: u64,
        eps: f32,
    },
    /// The gated activation of x's rows `[gate | up]`.
    Gated(GluActivation),
}

/// qmatmul.cu's RMSNorm quantizer: threads a block and 32-element groups a block.
const RMS_QUANT_THREADS: u32 = 256;
const RMS_QUANT_GROUPS: usize = 32;

fn align(v: usize) -> usize {
    v.div_ceil(ALIGN) * ALIGN
}

/// Bytes the GEMV's q8_1 activations take: xq [M, K] i8 and xds [M, K / 32] float2.
fn q8_bytes(m: usize, k: usize) -> usize {
    align(m * k) + align(m * (k / 32) * 8)
}

/// The least scratch a weight of `k` columns needs: decode at M = 16, and a prefill of one
/// f32 weight row, one f16 x row and its output.
fn scratch_floor(k: usize) -> usize {
    q8_bytes(QGEMV_MAX_M, k).max(align(k * 4) + align(k * 2) + 4 * ALIGN)
}

fn type_index(t: QuantType) -> usize {
    QuantType::ALL.iter().position(|&q| q == t).expect("ALL lists every type")
}

impl Cuda {
    /// Upload the blocks as they are, and grow the scratch to the share of the quantized
    /// bytes uploaded so far (see the module doc): allocation at load only.
    pub(crate) fn upload_quant_blocks(&self, host: &HostQTensor) -> Result<QTensor<Cuda>> {
        // 16 zero bytes past the last block: the GEMV reads 2-byte-aligned chunks as whole
        // aligned words, the last of which may end up to 4 bytes past its chunk
        let mut words = host.to_words();
        words.data.resize(words.data.len() + TAIL_BYTES, 0);
        words.dims = vec![words.data.len() / 4];
        let q = QTensor::new(self.tensor(&words)?, host.qtype, host.rows, host.cols)?;
        let mut st = self.quant.state.lock().unwrap_or_else(|e| e.into_inner());
        st.uploaded += host.data.len();
        let floor = scratch_floor(host.cols);
        let want = (st.uploaded / 32).clamp(SCRATCH_MIN_BYTES, SCRATCH_MAX_BYTES).max(floor);
        // regrow only by a quarter or more (or below the floor): few reallocations
        if st.buf.as_ref().is_none_or(|b| b.bytes() < floor || b.bytes() * 4 < want * 3) {
            st.buf = None; // free the smaller one first
            st.buf = Some(self.device().alloc(want)?);
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
        self.with_scratch(OP, w, |scratch| {
            if d.m <= QGEMV_MAX_M {
                return self.qgemv(x, w, dst, accumulate, &d, scratch, XQuant::Plain);
            }
            self.qmatmul_prefill(x, w, dst, accumulate, &d, scratch)
        })
    }

    /// `f` with the quantized-matmul scratch (sized at upload), which it holds locked.
    fn with_scratch<R>(
        &self,
        op: &'static str,
        w: &QTensor<Cuda>,
        f: impl FnOnce(&DeviceBuffer) -> Result<R>,
    ) -> Result<R> {
        let st = self.quant.state.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = st.buf.as_ref().ok_or_else(|| Error::InvalidArgument {
            op,
            msg: format!("{w:?} has no scratch: upload quantized weights with Backend::upload_quant"),
        })?;
        f(scratch)
    }

    /// `Backend::qmatmul_fused`: at M <= 16 the input's op runs inside the activation
    /// quantizer (qmatmul.cu `qquant_x_<rms|silu|gelu>`); larger M: `Ok(false)`.
    pub(crate) fn qmatmul_fused_blocks(
        &self,
        input: &QInput<'_, Cuda>,
        w: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
    ) -> Result<bool> {
        const OP: &str = "qmatmul_fused";
        let k = w.cols();
        // the matmul's x as the quantizer indexes it: x, or the gate half of the rows
        let (x, quant) = match input {
            QInput::Normed { x, norm, eps } => {
                check_norm_weight(OP, norm, k, x)?;
                self.in_bounds(OP, &[norm])?;
                ((*x).clone(), XQuant::Rms { norm: at(norm), eps: *eps })
            }
            QInput::Gated { gate_up, act } => {
                if gate_up.rank() != 2 || gate_up.dims()[1] != 2 * k {
                    let msg = format!("gate_up {:?} must be [M, 2K] rows [gate | up] for K = {k}", gate_up.dims());
                    return Err(Error::InvalidArgument { op: OP, msg });
                }
                self.in_bounds(OP, &[gate_up])?;
                (gate_up.narrow(1, 0, k)?, XQuant::Gated(*act))
            }
        };
        let d = check::qmatmul(&x, w, dst, accumulate)?;
        self.in_bounds(OP, &[&x, dst, w.data()])?;
        if d.m > QGEMV_MAX_M {
            return Ok(false);
        }
        if d.m == 0 || d.n == 0 {
            return Ok(true);
        }
        self.with_scratch(OP, w, |scratch| self.qgemv(&x, w, dst, accumulate, &d, scratch, quant))?;
        Ok(true)
    }

    /// M <= 16: x to q8_1 in the scratch (by `quant`), then the integer-dot GEMV.
    #[allow(clippy::too_many_arguments)]
    fn qgemv(
        &self,
        x: &Tensor<Cuda>,
        w: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
        d: &check::QMatmulDims,
        scratch: &DeviceBuffer,
        quant: XQuant,
    ) -> Result<()> {
        const OP: &str = "qmatmul";
        let need = q8_bytes(d.m, d.k);
        if scratch.bytes() < need {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{w:?}: scratch of {} bytes, the GEMV needs {need}", scratch.bytes()),
            });
        }
        // the dot products' weight loads: 16 bytes (Q4_K / Q5_K), 4 (Q4_1) or 2
        let wp = w.data().storage().ptr() + w.byte_offset() as u64;
        let wal = match w.qtype() {
            QuantType::Q4_K | QuantType::Q5_K => 16,
            QuantType::Q4_1 => 4,
            _ => 2,
        };
        if wp % wal as u64 != 0 || w.row_bytes() % wal != 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{w:?}: blocks at byte {} are not {wal}-byte aligned", w.byte_offset()),
            });
        }
        // 2-byte-aligned types are read as whole aligned words: 4 bytes past the blocks
        let end = w.byte_offset() + w.bytes() + if wal == 2 { 4 } else { 0 };
        if w.data().storage().bytes() < end {
            return Err(Error::InvalidArgument {
                op: OP,
                msg: format!("{w:?}: the GEMV reads to byte {end} of its storage (upload it with upload_quant)"),
            });
        }
        let (xq, xds) = (scratch.ptr(), scratch.ptr() + align(d.m * d.k) as u64);
        let k = u32_of(OP, "inner dim", d.k)?;
        let dt = float_index(x.dtype()).ok_or(Error::UnsupportedDType { op: OP, dtype: x.dtype() })?;
        let kernels = self.device().kernels();
        let (quantizer, norm, eps) = match quant {
            XQuant::Plain => (&kernels.qquant_x[dt], 0, 0.0),
            XQuant::Rms { norm, eps } => (&kernels.qquant_x_fused[0][dt], norm, eps),
            XQuant::Gated(GluActivation::Silu) => (&kernels.qquant_x_fused[1][dt], 0, 0.0),
            XQuant::Gated(GluActivation::GeluTanh) => (&kernels.qquant_x_fused[2][dt], 0, 0.0),
        };
        let quant_args = [
            Arg::Ptr(at(x)),
            Arg::U32(d.m as u32),
            Arg::U32(k),
            Arg::U32(u32_of(OP, "x row stride", d.x.row_stride)?),
            Arg::Ptr(xq),
            Arg::Ptr(xds),
            Arg::Ptr(norm),
            Arg::F32(eps),
        ];
        if let XQuant::Rms { .. } = quant {
            let slices = u32_of(OP, "x slices", (d.k / 32).div_ceil(RMS_QUANT_GROUPS))?;
            self.launch(quantizer, (slices, d.m as u32, 1), RMS_QUANT_THREADS, &quant_args, None)?;
        } else {
            let groups = u32_of(OP, "x groups", d.m * d.k / 32)?;
            self.launch(quantizer, (groups.div_ceil(QGEMV_WARPS), 1, 1), QGEMV_WARPS * 32, &quant_args, None)?;
        }
        let tier = QGEMV_TIERS.iter().position(|&mt| d.m <= mt).expect("m <= the largest tier");
        let y_f32 = dst.dtype() == DType::F32 && x.dtype() != DType::F32;
        let flags = accumulate as u32 | (y_f32 as u32) << 1;
        let args = [
            Arg::Ptr(wp),
            Arg::Ptr(xq),
            Arg::Ptr(xds),
            Arg::Ptr(at(dst)),
            Arg::U32(d.m as u32),
            Arg::U32(u32_of(OP, "rows of w", d.n)?),
            Arg::U32(k),
            Arg::U32(u32_of(OP, "dst row stride", d.dst.row_stride)?),
            Arg::U32(u32_of(OP, "row bytes", w.row_bytes())?),
            Arg::U32(flags),
        ];
        let kernel = &kernels.qgemv[type_index(w.qtype())][dt][tier];
        let grid = u32_of(OP, "blocks", d.n.div_ceil(QGEMV_WARPS as usize))?;
        self.launch(kernel, (grid, 1, 1), QGEMV_WARPS * 32, &args, None)
    }

    /// M > 16: dequantize chunks of w's rows into the scratch (f16 for bf16 / f16 x, f32
    /// for f32 x), one cuBLAS GEMM per chunk into its columns of dst; bf16 x goes through
    /// f16 copies of a chunk of its rows and an f32 result (written back by `qepi_bf16`)
    /// unless dst is f32.
    fn qmatmul_prefill(
        &self,
        x: &Tensor<Cuda>,
        w: &QTensor<Cuda>,
        dst: &Tensor<Cuda>,
        accumulate: bool,
        d: &check::QMatmulDims,
        scratch: &DeviceBuffer,
    ) -> Result<()> {
        const OP: &str = "qmatmul";
        let wdt = if x.dtype() == DType::F32 { DType::F32 } else { DType::F16 };
        let convert = x.dtype() == DType::BF16;
        let epilogue = convert && dst.dtype() == DType::BF16;
        let plan = PrefillPlan::new(scratch.bytes(), d.m, d.n, d.k, wdt.size_in_bytes(), convert, epilogue)
            .ok_or_else(|| Error::InvalidArgument {
                op: OP,
                msg: format!("{w:?}: scratch of {} bytes holds no prefill chunk", scratch.bytes()),
            })?;
        let kernels = self.device().kernels();
        let dq = &kernels.qdequant[type_index(w.qtype())][float_index(wdt).expect("f16 / f32")];
        let w0 = w.data().storage().ptr() + w.byte_offset() as u64;
        let (rb, sp) = (w.row_bytes(), scratch.ptr());
        let k = u32_of(OP, "columns", d.k)?;
        let mut n0 = 0;
        while n0 < d.n {
            let nc = plan.nc.min(d.n - n0);
            let args = [
                Arg::Ptr(w0 + (n0 * rb) as u64),
                Arg::Ptr(0),
                Arg::Ptr(sp),
                Arg::U32(k),
                Arg::U32(u32_of(OP, "row bytes", rb)?),
                Arg::U32(nc as u32),
            ];
            self.launch(dq, (nc as u32, 1, 1), QDEQUANT_THREADS, &args, None)?;
            // scratch rows are w's rows n0..n0+nc: as [K, nc], row stride 1, column stride K
            let rhs = MatOperand { offset: 0, batch_stride: 0, row_stride: 1, col_stride: d.k };
            let mut m0 = 0;
            while m0 < d.m {
                let mc = if convert { plan.mt.min(d.m - m0) } else { d.m };
                let x_rows = MatOperand {
                    offset: d.x.offset + m0 * d.x.row_stride,
                    batch_stride: 0,
                    row_stride: d.x.row_stride,
                    col_stride: 1,
                };
                let (a, lhs) = if convert {
                    let cvt = [
                        Arg::Ptr(x.storage().ptr() + (x_rows.offset * 2) as u64),
                        Arg::U32(u32_of(OP, "x row stride", d.x.row_stride)?),
                        Arg::U32(mc as u32),
                        Arg::U32(k),
                        Arg::Ptr(sp + plan.x_at as u64),
                    ];
                    self.launch(&kernels.qcvt_bf16_f16, (HELPER_BLOCKS, 1, 1), QDEQUANT_THREADS, &cvt, None)?;
                    let dense = MatOperand { offset: 0, batch_stride: 0, row_stride: d.k, col_stride: 1 };
                    (sp + plan.x_at as u64, dense)
                } else {
                    (x.storage().ptr(), x_rows)
                };
                let dst_at = d.dst.offset + m0 * d.dst.row_stride + n0;
                let (c, out, out_dt, acc) = if epilogue {
                    let dense = MatOperand { offset: 0, batch_stride: 0, row_stride: nc, col_stride: 1 };
                    (sp + plan.out_at as u64, dense, DType::F32, false)
                } else {
                    let o = MatOperand { offset: dst_at, batch_stride: 0, row_stride: d.dst.row_stride, col_stride: 1 };
                    (dst.storage().ptr(), o, dst.dtype(), accumulate)
                };
                let dims = MatmulDims { batch: 1, m: mc, n: nc, k: d.k, lhs, rhs, dst: out };
                self.device().blas().gemm_to(wdt, out_dt, &dims, a, sp, c, acc)?;
                if epilogue {
                    let epi = [
                        Arg::Ptr(sp + plan.out_at as u64),
                        Arg::Ptr(dst.storage().ptr() + (dst_at * 2) as u64),
                        Arg::U32(u32_of(OP, "dst row stride", d.dst.row_stride)?),
                        Arg::U32(mc as u32),
                        Arg::U32(nc as u32),
                        Arg::U32(accumulate as u32),
                    ];
                    self.launch(&kernels.qepi_bf16, (HELPER_BLOCKS, 1, 1), QDEQUANT_THREADS, &epi, None)?;
                }
                m0 += mc;
            }
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
        self.launch(kernel, (u32_of(OP, "tokens", t)?, 1, 1), QDEQUANT_THREADS, &args, None)
    }
}

/// How one prefill qmatmul cuts the scratch: `nc` weight rows dequantized at byte 0, then
/// (bf16 x) `mt` rows of x in f16 at `x_at` and (bf16 dst) their f32 `[mt, nc]` result at
/// `out_at`. Half the scratch goes to the weight chunk.
struct PrefillPlan {
    nc: usize,
    mt: usize,
    x_at: usize,
    out_at: usize,
}

impl PrefillPlan {
    fn new(bytes: usize, m: usize, n: usize, k: usize, wes: usize, convert: bool, epilogue: bool) -> Option<Self> {
        let share = if convert { bytes / 2 } else { bytes };
        let nc = (share.saturating_sub(ALIGN) / (k * wes)).min(n);
        if nc == 0 {
            return None;
        }
        let x_at = align(nc * k * wes);
        if !convert {
            return Some(PrefillPlan { nc, mt: m, x_at, out_at: x_at });
        }
        let per_row = k * 2 + if epilogue { nc * 4 } else { 0 };
        let mt = (bytes.saturating_sub(x_at + 2 * ALIGN) / per_row).min(m);
        if mt == 0 {
            return None;
        }
        Some(PrefillPlan { nc, mt, x_at, out_at: x_at + align(mt * k * 2) })
    }
}
