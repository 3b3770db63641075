//! Quantized matmul `dst (+)= x w^T` and the embedding lookup of quantized rows, on weights
//! that stay in their ggml blocks.
//!
//! Each row of `x` is first quantized in blocks (32 for the Q8_0 / Q4_0 / Q4_1 weights,
//! 256 for the k-quants) to two 8-bit levels, `d1 * (q1 + q2 / 256)` (`act.rs`): 16-bit
//! precision with llama.cpp's 8-bit integer dot products run twice. A weight row is dotted
//! with it in integers block by block, and each block's sum is scaled once in f32. The
//! activation rounding (at most `max|x| / (127 * 512)` per element) is the only one beyond
//! f32; it keeps SmolLM2's greedy tokens on the HF goldens, which one 8-bit level did not.
//! The blocks of 32 are stored interleaved in groups of 8 rows (`repack.rs`), so one
//! `vpdpbusd` serves 8 rows.
//!
//! The dot products come in builds chosen once at run time ([`Simd::detect`]): AVX2 (+FMA,
//! F16C), the same with AVX-512 VNNI's `vpdpbusd` on 256-bit registers, and a scalar
//! fallback (also the reference the SIMD builds are tested against). Weight rows are split
//! over rayon's pool; with one thread the loop runs inline.

mod act;
mod repack;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather_f32, scatter_f32, u32s, Float};
use crate::Cpu;
use encore_tensor::check::{self, Rows};
use encore_tensor::quant::dequantize_row;
use encore_tensor::{Error, HostQTensor, QTensor, QuantType, Result, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

pub(crate) use act::{ActRow, Acts, QuantizeFn};
use repack::ROWS;

/// One weight row (whole blocks) dotted with one quantized activation row.
pub(crate) type DotFn = fn(&[u8], &ActRow) -> f32;
/// One group of 8 interleaved weight rows dotted with 1 to 4 activation rows.
pub(crate) type Dot8Fn = fn(&[u8], &[ActRow], &mut [f32]);

/// The dot products and activation quantizers of one instruction-set build.
pub(crate) struct Simd {
    #[cfg_attr(not(test), allow(dead_code))] // named in test failures
    pub name: &'static str,
    /// Indexed like [`QuantType::ALL`].
    pub dot: [DotFn; 6],
    /// The same over 8 interleaved rows (`repack`'s layout) for the types it interleaves,
    /// against 1 to 4 activation rows: `out[m * 8 + r]`.
    pub dot8: [Option<Dot8Fn>; 6],
    /// `x` into blocks of 32 (`act.rs`).
    pub quantize_32: QuantizeFn,
    /// `x` into blocks of 256 (`act.rs`).
    pub quantize_k: QuantizeFn,
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

/// Weight rows per rayon task: about 64 KiB of blocks (so a task outlasts its scheduling),
/// in whole groups of 8.
fn rows_per_task(row_bytes: usize) -> usize {
    ((64 << 10) / row_bytes.max(1)).max(1).next_multiple_of(ROWS)
}

/// The CPU's copy of `host`: interleaved in groups of 8 rows where [`repack`] does that.
pub(crate) fn upload_quant(host: &HostQTensor) -> Result<QTensor<Cpu>> {
    QTensor::upload(&Cpu, &repack::repack(host))
}

pub(crate) fn qmatmul(x: &Tensor<Cpu>, w: &QTensor<Cpu>, dst: &Tensor<Cpu>, accumulate: bool) -> Result<()> {
    const OP: &str = "qmatmul";
    let d = check::qmatmul(x, w, dst, accumulate)?;
    let (m, n) = (d.m, d.n);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if d.k == 0 {
        let zeros = vec![0.0f32; n * m];
        return with_write(OP, dst, |data| store_rows(OP, data, d.dst, m, n, &zeros, accumulate));
    }
    let simd = Simd::detect();
    let xs = with_reads(OP, &[x], |data| gather_f32(OP, data[0], x.layout()))?;
    let acts = Acts::quantize(simd, w.qtype(), &xs, m, d.k);
    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
    // out: [N, M] (each weight row's M dots side by side), transposed on store
    let mut out = vec![0.0f32; n * m];
    with_reads(OP, &[w.data()], |data| {
        let bytes = block_bytes(OP, data[0], w)?;
        let t = type_index(w.qtype());
        let (dot, dot8) = (simd.dot[t], simd.dot8[t]);
        let rb = w.row_bytes();
        let grouped = match dot8 {
            Some(_) => repack::grouped_rows(w.qtype(), n),
            None => 0,
        };
        let per_task = rows_per_task(rb);
        // rows r0.. of one task (r0 a multiple of 8): whole groups, then single rows
        let work = |(task, o): (usize, &mut [f32])| {
            let r0 = task * per_task;
            let mut local = [0.0f32; 4 * ROWS];
            let mut r = r0;
            while r < r0 + o.len() / m {
                let o = &mut o[(r - r0) * m..];
                if r < grouped {
                    let group = &bytes[r * rb..(r + ROWS) * rb];
                    for (c, chunk) in rows.chunks(4).enumerate() {
                        (dot8.expect("grouped rows have dot8"))(group, chunk, &mut local);
                        for (mi, l) in local.chunks_exact(ROWS).take(chunk.len()).enumerate() {
                            for (ri, v) in l.iter().enumerate() {
                                o[ri * m + 4 * c + mi] = *v;
                            }
                        }
                    }
                    r += ROWS;
                } else {
                    let row = &bytes[r * rb..(r + 1) * rb];
                    for (mi, a) in rows.iter().enumerate() {
                        o[mi] = dot(row, a);
                    }
                    r += 1;
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
        let mut row = vec![0u8; table.row_bytes()];
        let mut out = vec![0.0f32; t * c];
        if c > 0 {
            for (o, &id) in out.chunks_exact_mut(c).zip(ids) {
                repack::plain_row(table.qtype(), v, c, bytes, id as usize, &mut row);
                dequantize_row(table.qtype(), &row, o);
            }
        }
        Ok(out)
    })?;
    with_write(OP, dst, |data| scatter_f32(OP, data, dst.layout(), &rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parity::act_block;
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

    /// The interleaved kernels give the row kernels' dots, for 1 to 4 activation rows.
    #[test]
    fn interleaved_groups_agree_with_rows() {
        let mut rng = Rng::fresh("interleaved_groups_agree_with_rows");
        let k = 96;
        for qt in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
            let w = random_blocks(&mut rng, qt, ROWS, k);
            let g = repack::repack(&w);
            let x = rng.vec(4 * k, -2.0, 2.0);
            for s in Simd::available() {
                let acts = Acts::quantize(s, qt, &x, 4, k);
                for m in 1..=4 {
                    let rows: Vec<ActRow> = (0..m).map(|i| acts.row(i)).collect();
                    let mut out = [0.0f32; 32];
                    (s.dot8[type_index(qt)].unwrap())(&g.data, &rows, &mut out);
                    for (mi, a) in rows.iter().enumerate() {
                        for r in 0..ROWS {
                            let want = (s.dot[type_index(qt)])(w.row(r), a);
                            let got = out[mi * ROWS + r];
                            assert!(
                                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                                "{} {qt} m {m}: {got} vs {want}",
                                s.name
                            );
                        }
                    }
                }
            }
        }
    }

    /// Against the dequantized weights in f64: the two activation levels leave at most
    /// `max|x| / (127 * 512)` per element (far inside the parity suite's 8-bit allowance).
    #[test]
    fn dots_are_within_the_two_level_step() {
        let mut rng = Rng::fresh("dots_are_within_the_two_level_step");
        let k = 512;
        for qt in QuantType::ALL {
            let w = random_blocks(&mut rng, qt, 3, k);
            let wv = w.dequantize();
            let x = rng.vec(k, -2.0, 2.0);
            let block = act_block(qt);
            for s in Simd::available() {
                let acts = Acts::quantize(s, qt, &x, 1, k);
                for r in 0..3 {
                    let got = (s.dot[type_index(qt)])(w.row(r), &acts.row(0));
                    let wr = &wv[r * k..(r + 1) * k];
                    let want: f64 = wr.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let bound: f64 = x
                        .chunks(block)
                        .zip(wr.chunks(block))
                        .map(|(xc, wc)| {
                            let amax = xc.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                            wc.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / (127.0 * 512.0)
                        })
                        .sum::<f64>()
                        + 1e-5 * want.abs().max(1.0);
                    let err = (got as f64 - want).abs();
                    assert!(err <= bound, "{} {qt} row {r}: {got} vs {want} (|err| {err:e} > {bound:e})", s.name);
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
            let block = act_block(qt);
            for s in &builds[1..] {
                let got = Acts::quantize(s, qt, &x, 1, k);
                for (a, b) in got.d.iter().zip(&want.d) {
                    assert!((a - b).abs() <= 1e-6 * b.abs(), "{} {qt}: d {a} vs {b}", s.name);
                }
                // rounding ties (half to even vs away from zero) may move q1 by one and q2
                // by 256 the other way: compare the values both levels stand for
                for i in 0..k {
                    let v = |a: &Acts| (256 * a.q1[i] as i32 + a.q2[i] as i32) as f32 * a.d[i / block];
                    let (g, w) = (v(&got), v(&want));
                    assert!((g - w).abs() <= 2.0 * want.d[i / block], "{} {qt} [{i}]: {g} vs {w}", s.name);
                    // and both stand for x within half a step of q2 (plus a clamped tie)
                    assert!((w - x[i]).abs() <= 1.01 * want.d[i / block], "{qt} [{i}]: {w} vs x {}", x[i]);
                }
                for (a, b) in got.xsum.iter().zip(&want.xsum) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{} {qt}: sum(x) {a} vs {b}", s.name);
                }
                if qt == QuantType::Q8_0 {
                    for (a, b) in got.isum.iter().zip(&want.isum) {
                        assert!((a - b).abs() <= 32 * 256, "{} {qt}: isum {a} vs {b}", s.name);
                    }
                }
            }
        }
    }
}

/// Decode-step speed of the SmolLM2-135M shapes (Q4_1 projections, Q8_0 LM head), one row
/// of activations: `cargo test --release -p encore-cpu --lib qmatmul_speed -- --ignored --nocapture`.
#[cfg(test)]
mod speed {
    use super::*;
    use encore_tensor::quant::random_blocks;
    use encore_tensor::testing::Rng;
    use encore_tensor::{Backend, DType, HostTensor};
    use std::time::Instant;

    #[test]
    #[ignore]
    fn qmatmul_speed() {
        let mut rng = Rng::seeded(1);
        let shapes = [
            (QuantType::Q4_1, 960, 576, 30),
            (QuantType::Q4_1, 576, 576, 30),
            (QuantType::Q4_1, 3072, 576, 30),
            (QuantType::Q4_1, 576, 1536, 30),
            (QuantType::Q8_0, 49152, 576, 1),
        ];
        let mut total = 0.0;
        for (qt, n, k, per_token) in shapes {
            // as many copies as a token reads, so the weights come from memory, not cache
            let ws: Vec<_> =
                (0..per_token).map(|_| Cpu.upload_quant(&random_blocks(&mut rng, qt, n, k)).unwrap()).collect();
            let x = Cpu.tensor(&HostTensor::from_f32(&[1, k], &rng.vec(k, -1.0, 1.0))).unwrap();
            let out = Cpu.zeros(DType::F32, &[1, n]).unwrap();
            // the fastest of 20 passes: this machine is shared, slow passes were interrupted
            let mut secs = f64::INFINITY;
            for _ in 0..20 {
                let t0 = Instant::now();
                for w in &ws {
                    Cpu.qmatmul(&x, w, &out, false).unwrap();
                }
                secs = secs.min(t0.elapsed().as_secs_f64());
            }
            let bytes = (ws[0].bytes() * per_token) as f64;
            total += secs;
            eprintln!(
                "{qt} [{n}, {k}] x{per_token}: {:.3} ms per token, {:.1} GB/s ({})",
                secs * 1e3,
                bytes / secs / 1e9,
                Simd::detect().name
            );
        }
        eprintln!("matmuls of one token: {:.3} ms = {:.0} tok/s at most", total * 1e3, 1.0 / total);
    }
}
