//! Launchers of the attention kernels for [`Cuda`]: `Backend::attention` (attention.cu on
//! CUDA cores, attention_decode.cu and attention_prefill.cu on tensor cores) and the fused
//! decode form `Backend::decode_attention` (rope + KV write + attention in one launch),
//! with the device's attention workspace (split-K partials, the prefill plan) allocated once, in [`Cuda::from_device`].
//!
//! Kernel choice, from shapes only (so every launch can be captured): bf16 / f16 with D a
//! multiple of 16 and 16-byte aligned operands take the tensor cores, the decode kernel up
//! to [`TC_DECODE_MAX_ROWS`] rows (split-K over the keys), the prefill kernel beyond; the
//! rest attention.cu. The decode split count depends on the grid, never on the context.

use std::sync::atomic::{AtomicU32, Ordering};

use cudarc::driver::sys;
use encore_tensor::check::{self, AttentionDims};
use encore_tensor::{AttentionParams, DType, DecodeAttention, Error, Result, Tensor};

use crate::backend::{at, float_ix, row_grid, u32_of, Arg};
use crate::device::{CudaDevice, DeviceBuffer};
use crate::error::drv;
use crate::{Cuda, CudaError};

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
/// Decode split-K: the fewest keys a split takes (the kernel's `min_chunk`; whole 64-key
/// tiles), so a short context runs fewer splits than the grid has. One tile (64) measured
/// best: 256, 512 and 1024 keys were 5% slower at Llama-3.2-1B batch 1, pos 300
/// (BENCHMARKS.md, session 6). [`Cuda::set_decode_min_chunk`] changes it for tuning runs
/// (`encore bench --decode-min-chunk`).
pub const DECODE_MIN_CHUNK: u32 = 64;

/// The fused decode prologue (rope + KV write inside attention_decode.cu, its own entry
/// points `attention_decode_rope_*`) serves head dims up to this. Session 6 measured it slower
/// at 128 while it shared one function with the plain kernel (whose registers it then set);
/// as separate entries it is 0.7% faster than rope_kv_write + attention at Llama-3.1-8B and
/// Qwen2.5-7B batch 1 (BENCHMARKS.md, session 7).
const FUSED_DECODE_MAX_D: usize = 128;
const _: () = assert!(FUSED_DECODE_MAX_D <= TC_DMAX[1], "attention_decode_rope has the D classes 64 and 128");
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

/// Scratch of attention, [`ATTENTION_WS_BYTES`]: either split-K partials, `[T*H, nsplit, 2]`
/// (max, sum) then `[T*H, nsplit, D]` f32 (attention.cu and attention_decode.cu; the launchers
/// lower nsplit until they fit), or the prefill plan, an i32 count then int2 items (at most T
/// of them; steps with more rows than fit take attention.cu). One buffer per device is safe
/// because every launch is ordered on the device's single stream.
pub(crate) struct AttentionWorkspace {
    buf: DeviceBuffer,
    /// The decode kernel's `min_chunk` (keys), read at each launch (so at capture).
    min_chunk: AtomicU32,
    pub(crate) sm_count: usize,
    /// Per D class: whether the decode / prefill kernel's shared memory fits this device.
    tc_decode: [bool; 3],
    tc_prefill: [bool; 3],
    /// Per D class: decode CTAs the whole device holds at once (occupancy x SMs, at DMAX).
    tc_decode_slots: [usize; 3],
}

impl AttentionWorkspace {
    /// Raises the tensor-core kernels' shared-memory limits, measures their occupancy and
    /// allocates the workspace; `cu_device` and `sm_count` describe `dev`'s GPU.
    pub(crate) fn new(
        dev: &CudaDevice,
        cu_device: sys::CUdevice,
        sm_count: usize,
    ) -> std::result::Result<Self, CudaError> {
        let mut optin = 0;
        // SAFETY: valid out-pointer and device handle.
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
                let rope = k.attention_decode_rope.get(c).filter(|_| kind == 0).into_iter().flatten();
                for kernel in kernels.iter().chain(rope) {
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
                // a dynamic shared-memory size within the limit just set
                tc_decode_slots[c] = sm_count * k.attention_decode[c][0].blocks_per_sm(TC_THREADS, need[0])?;
            }
        }
        let buf = dev.alloc(ATTENTION_WS_BYTES.max(4 * sm_count * (ATTENTION_MAX_D + 2) * 4))?;
        let min_chunk = AtomicU32::new(DECODE_MIN_CHUNK);
        Ok(AttentionWorkspace { buf, min_chunk, sm_count, tc_decode, tc_prefill, tc_decode_slots })
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

impl AttnArgs {
    #[allow(clippy::too_many_arguments)]
    fn new(
        q: &Tensor<Cuda>,
        k_cache: &Tensor<Cuda>,
        v_cache: &Tensor<Cuda>,
        block_tables: &Tensor<Cuda>,
        row_seq: &Tensor<Cuda>,
        positions: &Tensor<Cuda>,
        dst: &Tensor<Cuda>,
        dims: AttentionDims,
        params: AttentionParams,
    ) -> Self {
        AttnArgs {
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
        }
    }
}

/// The fused decode prologue's operands (attention_decode.cu `NewKv`): the unrotated k and
/// v rows of the step, the caches they go into, the RoPE tables and the slots; `q_row`,
/// `k_row`, `v_row` are the row strides (elements) of q, k, v, whose heads are D apart.
struct NewKvArgs {
    k: u64,
    v: u64,
    k_cache: u64,
    v_cache: u64,
    cos: u64,
    sin: u64,
    slots: u64,
    q_row: usize,
    k_row: usize,
    v_row: usize,
    max_pos: usize,
    num_slots: usize,
}

impl NewKvArgs {
    fn args(&self) -> Result<[Arg; 11]> {
        const OP: &str = "decode_attention";
        Ok([
            Arg::Ptr(self.k),
            Arg::Ptr(self.v),
            Arg::Ptr(self.k_cache),
            Arg::Ptr(self.v_cache),
            Arg::Ptr(self.cos),
            Arg::Ptr(self.sin),
            Arg::Ptr(self.slots),
            Arg::U32(u32_of(OP, "k row stride", self.k_row)?),
            Arg::U32(u32_of(OP, "v row stride", self.v_row)?),
            Arg::U32(u32_of(OP, "rope table rows", self.max_pos)?),
            Arg::U32(u32_of(OP, "cache slots", self.num_slots)?),
        ])
    }
}

/// The row stride of a `[T, heads, D]` view whose heads are D apart and whose elements are
/// adjacent (a head slice of a fused qkv, or a contiguous tensor); None otherwise.
fn head_rows(x: &Tensor<Cuda>) -> Option<usize> {
    let (dims, strides) = (x.dims(), x.layout().strides());
    (dims.len() == 3 && strides[2] == 1 && strides[1] == dims[2]).then_some(strides[0])
}

impl Cuda {
    /// The decode kernel's fewest keys a split (see [`DECODE_MIN_CHUNK`]); for tuning runs,
    /// before graphs are captured (a captured launch keeps the value it was captured with).
    pub fn set_decode_min_chunk(&self, keys: u32) {
        self.attn.min_chunk.store(keys.max(1), Ordering::Relaxed);
    }

    pub(crate) fn attention_op(
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
        let a = AttnArgs::new(q, k_cache, v_cache, block_tables, row_seq, positions, dst, dims, params);
        if let Some(c) = self.tensor_core_class(&a) {
            if dims.t <= TC_DECODE_MAX_ROWS && self.attn.tc_decode[c] {
                return self.attention_decode(c, &a, None);
            }
            if self.attn.tc_prefill[c] && 16 + dims.t * 8 <= self.attn.buf.bytes() {
                return self.attention_prefill(c, &a);
            }
        }
        self.attention_cuda_cores(&a)
    }

    /// `Backend::decode_attention`: one attention_decode.cu launch with the rope + KV-write
    /// prologue when the tensor-core decode kernel serves the step, D <= [`FUSED_DECODE_MAX_D`]
    /// and q, k, v have adjacent heads (the decoder's views of its fused qkv), without
    /// qk_norm; otherwise (norm_)rope_kv_write then attention.
    pub(crate) fn decode_attention_op(&self, a: &DecodeAttention<'_, Cuda>, dst: &Tensor<Cuda>) -> Result<()> {
        const OP: &str = "decode_attention";
        let (dims, num_slots) = check::decode_attention(a, dst)?;
        let (q, k, v, cos, sin, positions, slots) = (a.q, a.k, a.v, a.cos, a.sin, a.positions, a.slot_mapping);
        self.in_bounds(
            OP,
            &[q, k, v, cos, sin, positions, slots, a.q_rot, a.k_cache, a.v_cache, a.block_tables, a.row_seq, dst],
        )?;
        let mut args =
            AttnArgs::new(a.q_rot, a.k_cache, a.v_cache, a.block_tables, a.row_seq, a.positions, dst, dims, a.params);
        let rows = (head_rows(a.q), head_rows(a.k), head_rows(a.v));
        let class = self
            .tensor_core_class(&args)
            .filter(|&c| dims.t <= TC_DECODE_MAX_ROWS && self.attn.tc_decode[c] && dims.d <= FUSED_DECODE_MAX_D);
        // (the per-head norm of Qwen3 / Gemma 3 runs in norm_rope_kv_write, before attention)
        let (Some(c), (Some(q_row), Some(k_row), Some(v_row)), None) = (class, rows, a.qk_norm) else {
            return a.unfused(self, dst);
        };
        if dims.t * dims.h == 0 {
            return Ok(());
        }
        args.q = at(a.q);
        let new_kv = NewKvArgs {
            k: at(a.k),
            v: at(a.v),
            k_cache: at(a.k_cache),
            v_cache: at(a.v_cache),
            cos: at(a.cos),
            sin: at(a.sin),
            slots: at(a.slot_mapping),
            q_row,
            k_row,
            v_row,
            max_pos: a.cos.dims()[0],
            num_slots,
        };
        self.attention_decode(c, &args, Some(&new_kv))
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
    /// split. nsplit comes from the device's CTA slots and the grid's other dims, never from
    /// the context, so one captured graph serves every position; the kernel runs as many of
    /// the splits as the row's keys fill at [`DECODE_MIN_CHUNK`] keys or more each (the others
    /// write empty partials). The kernel's own last-CTA merge (counters) measured slower than
    /// the merge kernel in the decode step, 2.3 us a layer at Llama-3.1-8B batch 1
    /// (BENCHMARKS.md, session 6), so the launcher passes no counters. `new_kv`: the fused
    /// rope + KV-write prologue (`Backend::decode_attention`), and q's row stride.
    fn attention_decode(&self, c: usize, a: &AttnArgs, new_kv: Option<&NewKvArgs>) -> Result<()> {
        const OP: &str = "attention";
        let AttentionDims { t, h, hkv, d, .. } = a.dims;
        let columns = t * hkv * (h / hkv).div_ceil(TC_DECODE_ROWS);
        let mut splits = decode_splits(columns, self.attn.tc_decode_slots[c]);
        while splits > 1 && t * h * splits * (d + 2) * 4 > self.attn.buf.bytes() {
            splits -= 1;
        }
        let ws = self.attn.buf.ptr();
        let ws_acc = ws + (t * h * splits * 2 * 4) as u64;
        let kernels = self.dev.kernels();
        let dt = (a.dtype == DType::F16) as usize;
        let kernel = match new_kv {
            Some(_) => &kernels.attention_decode_rope[c][dt], // c < 2: FUSED_DECODE_MAX_D <= 128
            None => &kernels.attention_decode[c][dt],
        };
        let mut args = self.attention_args(a, ws, ws_acc)?;
        args.insert(9, Arg::Ptr(0)); // counters: none, attention_merge finishes
        let q_row = new_kv.map_or(h * d, |n| n.q_row);
        args.push(Arg::U32(u32_of(OP, "q row stride", q_row)?));
        args.push(Arg::U32(self.attn.min_chunk.load(Ordering::Relaxed)));
        match new_kv {
            Some(n) => args.extend(n.args()?),
            None => args.extend([Arg::Ptr(0); 7].into_iter().chain([Arg::U32(0); 4])),
        }
        let grid = (splits as u32, (columns / t) as u32, t as u32);
        self.launch_smem(kernel, grid, TC_THREADS, tc_decode_smem(c, d), &args, None)?;
        if splits > 1 {
            let merge = &kernels.attention_merge[float_ix(OP, a.dtype)?];
            let args = [Arg::Ptr(ws), Arg::Ptr(ws_acc), Arg::Ptr(a.dst), Arg::U32(d as u32), Arg::U32(splits as u32)];
            self.launch(merge, (row_grid(OP, t * h)?, 1, 1), ATTENTION_BLOCK, &args, None)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
