//! Quantized matmul `dst (+)= x w^T` and the embedding lookup of quantized rows, on weights
//! that stay in their ggml blocks.
//!
//! As llama.cpp does, each row of `x` is first quantized to 8-bit blocks: blocks of 32
//! (`d`, `d * sum(q)`; Q8_0-style) for the Q8_0 / Q4_0 / Q4_1 weights, blocks of 256 with
//! sums per 16 (Q8_K-style) for the k-quants. A weight row is then dotted with it in
//! integers block by block, and each block's integer sum is scaled once in f32. The
//! activation quantization is the only rounding beyond f32 (at most half a step of
//! `max|x| / 127` of its block per element; the parity suite bounds it per block type).
//!
//! The dot products come in builds chosen once at run time ([`Simd::detect`]): AVX2 (+FMA,
//! F16C), the same with AVX-512 VNNI's `vpdpbusd` on 256-bit registers, and a scalar
//! fallback (also the reference the SIMD builds are tested against). Weight rows are split
//! over rayon's pool; with one thread the loop runs inline.

mod act;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather_f32, scatter_f32, u32s, Float};
use crate::Cpu;
use encore_tensor::check::{self, Rows};
use encore_tensor::quant::dequantize_row;
use encore_tensor::{Error, QTensor, QuantType, Result, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

pub(crate) use act::{ActRow, Acts};

/// One weight row (whole blocks) dotted with one quantized activation row.
pub(crate) type DotFn = fn(&[u8], &ActRow) -> f32;

/// The dot products and activation quantizers of one instruction-set build.
pub(crate) struct Simd {
    #[cfg_attr(not(test), allow(dead_code))] // named in test failures
    pub name: &'static str,
    /// Indexed like [`QuantType::ALL`].
    pub dot: [DotFn; 6],
    /// `x` into blocks of 32: `qs`, and `(d, d * sum(q))` per block.
    pub quantize_32: fn(&[f32], &mut [i8], &mut [[f32; 2]]),
    /// `x` into blocks of 256: `qs`, `d` per block, sums of 16 `qs`.
    pub quantize_k: fn(&[f32], &mut [i8], &mut [f32], &mut [i16]),
}

impl Simd {
    /// The fastest build this CPU runs (detected once).
    pub(crate) fn detect() -> &'static Simd {
        static SIMD: OnceLock<&'static Simd> = OnceLock::new();
        SIMD.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if let Some(s) = x86::detect() {
                return s;
            }
            &scalar::SCALAR
        })
    }

    /// Every build this CPU runs, scalar first (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<&'static Simd> {
        #[allow(unused_mut)]
        let mut v = vec![&scalar::SCALAR];
        #[cfg(target_arch = "x86_64")]
        v.extend(x86::available());
        v
    }
}

fn type_index(t: QuantType) -> usize {
    QuantType::ALL.iter().position(|&q| q == t).expect("ALL lists every type")
}

/// Weight rows per rayon task: about 64 KiB of blocks, so a task outlasts its scheduling.
fn rows_per_task(row_bytes: usize) -> usize {
    ((64 << 10) / row_bytes.max(1)).max(1)
}

pub(crate) fn qmatmul(x: &Tensor<Cpu>, w: &QTensor<Cpu>, dst: &Tensor<Cpu>, accumulate: bool) -> Result<()> {
    const OP: &str = "qmatmul";
    let d = check::qmatmul(x, w, dst, accumulate)?;
    let (m, n) = (d.m, d.n);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let simd = Simd::detect();
    let xs = with_reads(OP, &[x], |data| gather_f32(OP, data[0], x.layout()))?;
    let acts = Acts::quantize(simd, w.qtype(), &xs, m, d.k);
    // out: [N, M] (each weight row's M dots side by side), transposed on store
    let mut out = vec![0.0f32; n * m];
    with_reads(OP, &[w.data()], |data| {
        let bytes = block_bytes(OP, data[0], w)?;
        let dot = simd.dot[type_index(w.qtype())];
        let rb = w.row_bytes();
        let per_task = rows_per_task(rb);
        let work = |(i, o): (usize, &mut [f32])| {
            for (r, o) in o.chunks_exact_mut(m).enumerate() {
                let row = &bytes[(i * per_task + r) * rb..][..rb];
                for (mi, o) in o.iter_mut().enumerate() {
                    *o = dot(row, &acts.row(mi));
                }
            }
        };
        if rayon::current_num_threads() == 1 || n <= per_task {
            out.chunks_mut(per_task * m).enumerate().for_each(work);
        } else {
            out.par_chunks_mut(per_task * m).enumerate().for_each(work);
        }
        Ok(())
    })?;
    with_write(OP, dst, |data| store_rows(OP, data, d.dst, m, n, &out, accumulate))
}

/// The block bytes of `w` inside its `u32` storage.
fn block_bytes<'a>(op: &'static str, data: &'a Data, w: &QTensor<Cpu>) -> Result<&'a [u8]> {
    let words = u32s(op, data, w.data().layout())?;
    let bytes: &[u8] = bytemuck::cast_slice(words);
    bytes.get(..w.bytes()).ok_or_else(|| Error::InvalidArgument {
        op,
        msg: format!("{w:?} needs {} bytes, its storage view has {}", w.bytes(), bytes.len()),
    })
}

/// `dst[i, j] (+)= out[j, i]` over the rows of `dst`.
fn store_rows(
    op: &'static str,
    data: &mut Data,
    rows: Rows,
    m: usize,
    n: usize,
    out: &[f32],
    accumulate: bool,
) -> Result<()> {
    fn put<T: Float>(dst: &mut [T], rows: Rows, m: usize, n: usize, out: &[f32], accumulate: bool) {
        for i in 0..m {
            let row = &mut dst[rows.offset + i * rows.row_stride..][..n];
            for (j, d) in row.iter_mut().enumerate() {
                let v = out[j * m + i];
                *d = T::from_f32(if accumulate { d.to_f32() + v } else { v });
            }
        }
    }
    match data {
        Data::F32(v) => put(v, rows, m, n, out, accumulate),
        Data::BF16(v) => put(v, rows, m, n, out, accumulate),
        Data::F16(v) => put(v, rows, m, n, out, accumulate),
        d => return Err(Error::UnsupportedDType { op, dtype: d.dtype() }),
    }
    Ok(())
}

pub(crate) fn qembedding(ids: &Tensor<Cpu>, table: &QTensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "qembedding";
    let (t, c, v) = check::qembedding(ids, table, dst)?;
    let rows = with_reads(OP, &[ids, table.data()], |data| {
        let ids = u32s(OP, data[0], ids.layout())?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= v) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("token id {id} is out of range for {v} rows") });
        }
        let bytes = block_bytes(OP, data[1], table)?;
        let rb = table.row_bytes();
        let mut out = vec![0.0f32; t * c];
        if c > 0 {
            for (o, &id) in out.chunks_exact_mut(c).zip(ids) {
                dequantize_row(table.qtype(), &bytes[id as usize * rb..][..rb], o);
            }
        }
        Ok(out)
    })?;
    with_write(OP, dst, |data| scatter_f32(OP, data, dst.layout(), &rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::quant::random_blocks;
    use encore_tensor::testing::Rng;

    /// Every SIMD build gives the scalar build's integer sums: the results agree to f32
    /// rounding of the per-block scaling.
    #[test]
    fn simd_builds_agree_with_the_scalar_build() {
        let mut rng = Rng::fresh("simd_builds_agree_with_the_scalar_build");
        let k = 512 + 256;
        let builds = Simd::available();
        for qt in QuantType::ALL {
            let w = random_blocks(&mut rng, qt, 4, k);
            let x = rng.vec(k, -2.0, 2.0);
            let acts = Acts::quantize(builds[0], qt, &x, 1, k);
            let want: Vec<f32> = (0..4).map(|r| (builds[0].dot[type_index(qt)])(w.row(r), &acts.row(0))).collect();
            for s in &builds[1..] {
                // the scalar quantizer's activations: the sums must then agree exactly
                for r in 0..4 {
                    let got = (s.dot[type_index(qt)])(w.row(r), &acts.row(0));
                    let tol = 1e-5 * want[r].abs().max(1.0);
                    assert!((got - want[r]).abs() <= tol, "{} {qt} row {r}: {got} vs scalar {}", s.name, want[r]);
                }
            }
        }
    }

    #[test]
    fn simd_quantizers_agree_with_the_scalar_one() {
        let mut rng = Rng::fresh("simd_quantizers_agree_with_the_scalar_one");
        let k = 512;
        let x = rng.vec(k, -3.0, 3.0);
        let builds = Simd::available();
        for qt in [QuantType::Q8_0, QuantType::Q6_K] {
            let want = Acts::quantize(builds[0], qt, &x, 1, k);
            for s in &builds[1..] {
                let got = Acts::quantize(s, qt, &x, 1, k);
                // round-half-even vs half-away-from-zero may move a tie by one step
                for (a, b) in got.qs.iter().zip(&want.qs) {
                    assert!((*a as i32 - *b as i32).abs() <= 1, "{} {qt}", s.name);
                }
                for (a, b) in got.d.iter().zip(&want.d) {
                    assert!((a - b).abs() <= 1e-6 * b.abs(), "{} {qt}: d {a} vs {b}", s.name);
                }
                let sums = |a: &Acts| a.ds.iter().map(|p| p[1]).collect::<Vec<_>>();
                for (a, b) in sums(&got).iter().zip(sums(&want)) {
                    assert!((a - b).abs() <= 1e-2 + 1e-5 * b.abs(), "{} {qt}: d sum(q) {a} vs {b}", s.name);
                }
            }
        }
    }
}
