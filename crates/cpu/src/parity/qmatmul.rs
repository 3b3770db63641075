//! Parity of the quantized ops: `qmatmul` (`dst (+)= x w^T`, `w` in ggml blocks) for every
//! block type and float dtype, decode (M = 1) and prefill (M > 16) shapes, offset and
//! narrowed `x`, narrowed destinations, f32 outputs from bf16/f16 inputs; and `qembedding`.
//!
//! Weights are fresh random blocks (random bytes, random non-zero scales:
//! `encore_tensor::quant::random_blocks`); the reference dequantizes them and multiplies
//! in f64 by the dtype-rounded `x`. The tolerance per element is the dtype's, plus what
//! quantizing `x` to 8 bits may cost, which depends on the block type: half a step of
//! `max|x| / 127` over the activation block the type pairs with ([`act_block`]), times
//! `|w|`, summed over the row. Backends that keep `x` in float (dequantizing `w` in
//! registers) stay well inside it.

use super::inputs::{download, expect_err, input, output, View};
use encore_tensor::quant::{random_blocks, HostQTensor, QK_K};
use encore_tensor::testing::{tolerance, Rng};
use encore_tensor::{Backend, DType, Error, HostTensor, QTensor, QuantType};

/// The activation block a backend may quantize `x` in, for weights of `qtype`: Q8_0-style
/// blocks of 32 for the 32-element types, Q8_K blocks of 256 for the k-quants.
pub fn act_block(qtype: QuantType) -> usize {
    match qtype {
        QuantType::Q8_0 | QuantType::Q4_0 | QuantType::Q4_1 => 32,
        QuantType::Q4_K | QuantType::Q5_K | QuantType::Q6_K => QK_K,
    }
}

/// `[M, N]` f64 product `x w^T` and the per-element allowance for 8-bit activations.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize, block: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0.0; m * n];
    let mut allow = vec![0.0; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        let half_step: Vec<f64> = xr
            .chunks(block)
            .flat_map(|c| {
                let amax = c.iter().fold(0.0f64, |a, v| a.max(v.abs() as f64));
                std::iter::repeat_n(amax / 254.0, c.len())
            })
            .collect();
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            out[i * n + j] = (0..k).map(|p| xr[p] as f64 * wr[p] as f64).sum();
            let mass: f64 = (0..k).map(|p| (xr[p] as f64 * wr[p] as f64).abs()).sum();
            // quantized x: the rounding errors (uniform within half a step) add up to at most
            // the worst case, and stay within 8 standard deviations of their sum (a bug
            // must not hide in the worst case of long rows); plus f32 accumulation
            let worst: f64 = (0..k).map(|p| wr[p].abs() as f64 * half_step[p]).sum();
            let var: f64 = (0..k).map(|p| (wr[p] as f64 * half_step[p]).powi(2) / 3.0).sum();
            allow[i * n + j] = worst.min(8.0 * var.sqrt()) + 1e-6 * mass;
        }
    }
    (out, allow)
}

fn assert_within(what: &str, dtype: DType, got: &[f32], want: &[f64], allow: &[f64]) {
    let (atol, rtol) = tolerance(dtype);
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &a)) in got.iter().zip(want).zip(allow).enumerate() {
        let err = (g as f64 - w).abs();
        let bound = atol + rtol * w.abs() + a;
        assert!(err <= bound, "{what}: element {i} is {g} but the reference is {w} (|err| {err:.3e} > {bound:.3e})");
    }
}

/// Upload fresh random blocks of `qtype` `[n, k]`; returns them with their dequantized values.
pub fn random_qtensor<B: Backend>(
    b: &B,
    rng: &mut Rng,
    qtype: QuantType,
    n: usize,
    k: usize,
) -> (QTensor<B>, Vec<f32>) {
    let host = random_blocks(rng, qtype, n, k);
    let values = host.dequantize();
    (b.upload_quant(&host).expect("upload_quant"), values)
}

pub fn qmatmul_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("qmatmul");
    for qt in QuantType::ALL {
        let bl = qt.block_len();
        // (M, K, N): decode, a few rows, the GEMV limit and past it (prefill paths)
        let shapes = [(1, 2 * bl.max(256), 40), (3, bl * 3, 33), (16, bl.max(64), 24), (21, 2 * bl, 19)];
        for dt in DType::FLOATS {
            for (m, k, n) in shapes {
                let (w, wv) = random_qtensor(b, &mut rng, qt, n, k);
                for (xv, dv, acc) in [
                    (View::Contiguous, View::Contiguous, false),
                    (View::Offset, View::Narrowed, false),
                    (View::Narrowed, View::Contiguous, true),
                    (View::Contiguous, View::Narrowed, true),
                ] {
                    let what = format!("qmatmul {qt} {m}x{k}x{n} {dt} x {xv:?} dst {dv:?} accumulate {acc}");
                    let x = input(b, &mut rng, dt, &[m, k], xv, (-1.0, 1.0));
                    let out = output(b, &mut rng, dt, &[m, n], dv);
                    let before = download(b, &out.t);
                    b.qmatmul(&x.t, &w, &out.t, acc).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let (mut want, allow) = reference(&x.values, &wv, m, n, k, act_block(qt));
                    if acc {
                        want.iter_mut().zip(&before).for_each(|(w, d)| *w += *d as f64);
                    }
                    assert_within(&what, dt, &download(b, &out.t), &want, &allow);
                    out.check_untouched(b, &what);
                }
                if dt != DType::F32 {
                    // f32 logits from bf16/f16 activations
                    let what = format!("qmatmul {qt} {m}x{k}x{n} {dt} -> f32");
                    let x = input(b, &mut rng, dt, &[m, k], View::Contiguous, (-1.0, 1.0));
                    let out = output(b, &mut rng, DType::F32, &[m, n], View::Contiguous);
                    b.qmatmul(&x.t, &w, &out.t, false).unwrap_or_else(|e| panic!("{what}: {e}"));
                    let (want, allow) = reference(&x.values, &wv, m, n, k, act_block(qt));
                    assert_within(&what, DType::F32, &download(b, &out.t), &want, &allow);
                }
            }
        }
    }
    error_cases(b, &mut rng);
}

fn error_cases<B: Backend>(b: &B, rng: &mut Rng) {
    let (w, _) = random_qtensor(b, rng, QuantType::Q4_0, 8, 64);
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    expect_err!("qmatmul K", b.qmatmul(&f(&[2, 32]), &w, &f(&[2, 8]), false), Error::ShapeMismatch { .. });
    expect_err!("qmatmul N", b.qmatmul(&f(&[2, 64]), &w, &f(&[2, 9]), false), Error::ShapeMismatch { .. });
    let h = b.zeros(DType::BF16, &[2, 8]).unwrap();
    expect_err!("qmatmul dst dtype", b.qmatmul(&f(&[2, 64]), &w, &h, false), Error::DTypeMismatch { .. });
    let u = b.zeros(DType::U32, &[2, 64]).unwrap();
    expect_err!("qmatmul u32", b.qmatmul(&u, &w, &f(&[2, 8]), false), Error::UnsupportedDType { .. });
    let xt = f(&[64, 2]).transpose(0, 1).unwrap();
    expect_err!("qmatmul x layout", b.qmatmul(&xt, &w, &f(&[2, 8]), false), Error::LayoutRequired { .. });
    let x = f(&[2, 72]);
    expect_err!(
        "qmatmul accumulate aliasing",
        b.qmatmul(&x.narrow(1, 0, 64).unwrap(), &w, &x.narrow(1, 64, 8).unwrap(), true),
        Error::InvalidArgument { .. }
    );
    // words too few for the blocks: refused when the QTensor is made
    let words = b.zeros(DType::U32, &[10]).unwrap();
    assert!(QTensor::new(words, QuantType::Q4_0, 8, 64).is_err(), "a short QTensor must be refused");
}

pub fn qembedding_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("qembedding");
    let (v, t) = (37, 9);
    for qt in QuantType::ALL {
        let c = 2 * qt.block_len();
        let host: HostQTensor = random_blocks(&mut rng, qt, v, c);
        let table = b.upload_quant(&host).unwrap();
        let values = host.dequantize();
        let mut ids: Vec<u32> = (0..t).map(|_| rng.below(v) as u32).collect();
        ids[3] = ids[1];
        ids[4] = v as u32 - 1;
        let ids_t = b.tensor(&HostTensor::from_u32(&[t], &ids)).unwrap();
        for dt in DType::FLOATS {
            let out = b.zeros(dt, &[t, c]).unwrap();
            b.qembedding(&ids_t, &table, &out).unwrap();
            let want: Vec<f64> =
                ids.iter().flat_map(|&id| &values[id as usize * c..(id as usize + 1) * c]).map(|&x| x as f64).collect();
            let allow = vec![0.0; want.len()];
            assert_within(&format!("qembedding {qt} {dt}"), dt, &download(b, &out), &want, &allow);
        }
    }
    let host = random_blocks(&mut rng, QuantType::Q8_0, 4, 32);
    let table = b.upload_quant(&host).unwrap();
    let ids = b.tensor(&HostTensor::from_u32(&[2], &[0, 1])).unwrap();
    expect_err!(
        "qembedding dst",
        b.qembedding(&ids, &table, &b.zeros(DType::F32, &[2, 33]).unwrap()),
        Error::ShapeMismatch { .. }
    );
    let ids_i = b.tensor(&HostTensor::from_i32(&[2], &[0, 1])).unwrap();
    expect_err!(
        "qembedding ids dtype",
        b.qembedding(&ids_i, &table, &b.zeros(DType::F32, &[2, 32]).unwrap()),
        Error::DTypeMismatch { .. }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Cpu;

    #[test]
    fn qmatmul_on_cpu() {
        qmatmul_cases(&Cpu);
    }

    #[test]
    fn qembedding_on_cpu() {
        qembedding_cases(&Cpu);
    }

    #[test]
    fn qembedding_refuses_out_of_range_ids() {
        let mut rng = Rng::fresh("qembedding_refuses_out_of_range_ids");
        let table = Cpu.upload_quant(&random_blocks(&mut rng, QuantType::Q4_K, 3, 256)).unwrap();
        let ids = Cpu.tensor(&HostTensor::from_u32(&[1], &[3])).unwrap();
        let out = Cpu.zeros(DType::F32, &[1, 256]).unwrap();
        expect_err!("qembedding id", Cpu.qembedding(&ids, &table, &out), Error::InvalidArgument { .. });
    }
}
