//! Parity of RoPE (rotate-half convention) with plain and Llama-3.1-scaled tables, over
//! contiguous and strided `x: [T, H, D]` (a head slice of a fused QKV buffer, a
//! `[H, T, D]` buffer seen as `[T, H, D]`), strided destinations and a padded row.

use super::inputs::{download, expect_err, i32s, input, output, View};
use encore_tensor::rope::{tables, RopeScaling};
use encore_tensor::testing::{assert_close, Rng};
use encore_tensor::{Backend, DType, Error, HostTensor, Tensor};

pub fn rope_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("rope");
    let (t, h, max_pos) = (5, 3, 40);
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 64,
    };
    for dt in DType::FLOATS {
        for d in [8, 64] {
            for (theta, scaling) in [(10000.0, RopeScaling::None), (500000.0, llama3.clone())] {
                let (cos, sin) = tables(d, max_pos, theta, &scaling);
                let cos_t = b.tensor(&HostTensor::from_f32(&[max_pos, d / 2], &cos)).unwrap();
                let sin_t = b.tensor(&HostTensor::from_f32(&[max_pos, d / 2], &sin)).unwrap();
                let mut pos: Vec<i32> = (0..t).map(|_| rng.below(max_pos) as i32).collect();
                pos[2] = -1; // a padded row is copied unchanged
                let pos_t = i32s(b, &pos);
                for xv in [View::Contiguous, View::Offset, View::Narrowed, View::SwapLeading, View::Transposed] {
                    for dv in [View::Contiguous, View::Narrowed] {
                        let what = format!("rope D={d} {scaling:?} x {xv:?} dst {dv:?}");
                        let x = input(b, &mut rng, dt, &[t, h, d], xv, (-2.0, 2.0));
                        let out = output(b, &mut rng, dt, &[t, h, d], dv);
                        b.rope(&x.t, &cos_t, &sin_t, &pos_t, &out.t).unwrap();
                        let want = reference(&x.values, &cos, &sin, &pos, h, d);
                        assert_close(&what, dt, &download(b, &out.t), &want);
                        out.check_untouched(b, &what);
                    }
                }
            }
        }
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (x, table, pos) = (f(&[2, 3, 8]), f(&[16, 4]), i32s::<B>(b, &[0, 1]));
    expect_err!(
        "rope odd D",
        b.rope(&f(&[2, 3, 7]), &f(&[16, 3]), &f(&[16, 3]), &pos, &f(&[2, 3, 7])),
        Error::InvalidArgument { .. }
    );
    expect_err!("rope rank", b.rope(&f(&[2, 8]), &table, &table, &pos, &f(&[2, 8])), Error::InvalidArgument { .. });
    expect_err!("rope table", b.rope(&x, &f(&[16, 3]), &f(&[16, 3]), &pos, &x), Error::ShapeMismatch { .. });
    let bf_table = b.zeros(DType::BF16, &[16, 4]).unwrap();
    expect_err!("rope table dtype", b.rope(&x, &bf_table, &bf_table, &pos, &x), Error::DTypeMismatch { .. });
    let upos: Tensor<B> = b.tensor(&HostTensor::from_u32(&[2], &[0, 1])).unwrap();
    expect_err!("rope positions dtype", b.rope(&x, &table, &table, &upos, &x), Error::DTypeMismatch { .. });
    expect_err!(
        "rope positions len",
        b.rope(&x, &table, &table, &i32s(b, &[0, 1, 2]), &x),
        Error::ShapeMismatch { .. }
    );
    let h = b.zeros(DType::F16, &[2, 3, 8]).unwrap();
    expect_err!("rope dst dtype", b.rope(&x, &table, &table, &pos, &h), Error::DTypeMismatch { .. });
    let table_t = f(&[4, 16]).transpose(0, 1).unwrap();
    expect_err!("rope table layout", b.rope(&x, &table_t, &table_t, &pos, &x), Error::LayoutRequired { .. });
}

/// Rotate-half on row-major `[T, H, D]` values, angles from the tables.
fn reference(x: &[f32], cos: &[f32], sin: &[f32], pos: &[i32], h: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    for (t, &p) in pos.iter().enumerate() {
        if p < 0 {
            continue;
        }
        for head in 0..h {
            let row = (t * h + head) * d;
            for i in 0..half {
                let (c, s) = (cos[p as usize * half + i] as f64, sin[p as usize * half + i] as f64);
                let (x0, x1) = (x[row + i] as f64, x[row + half + i] as f64);
                out[row + i] = x0 * c - x1 * s;
                out[row + half + i] = x1 * c + x0 * s;
            }
        }
    }
    out
}

/// The fused attention prologue, `rope_kv_write`, on q, k, v narrowed out of one fused
/// `[T, (H + 2 Hkv) D]` buffer (as the decoder has them) and on separate strided views: q
/// against the f64 rotate-half reference, the caches against rope + rope + kv_write of the
/// same backend, bit for bit (one rounding of the same f32 values either way), with a padded
/// row (position -1, slot -1) and a row whose slot is -1 alone; slots not written keep their
/// random values.
pub fn rope_kv_write_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("rope_kv_write");
    let (t, h, hkv, s, max_pos) = (6, 4, 2, 16, 40);
    for dt in DType::FLOATS {
        for d in [8, 64] {
            let (cos, sin) = tables(d, max_pos, 10000.0, &RopeScaling::None);
            let cos_t = b.tensor(&HostTensor::from_f32(&[max_pos, d / 2], &cos)).unwrap();
            let sin_t = b.tensor(&HostTensor::from_f32(&[max_pos, d / 2], &sin)).unwrap();
            let mut pos: Vec<i32> = (0..t).map(|_| rng.below(max_pos) as i32).collect();
            let mut free: Vec<i32> = (0..s as i32).collect();
            let mut slots: Vec<i32> = (0..t).map(|_| free.swap_remove(rng.below(free.len()))).collect();
            (pos[2], slots[2]) = (-1, -1); // a padded row
            slots[4] = -1; // a row whose K/V are not kept
            let (pos_t, slots_t) = (i32s(b, &pos), i32s(b, &slots));
            for fused in [true, false] {
                let what = format!("rope_kv_write {dt} D={d} fused qkv {fused}");
                let (q, k, v) = if fused {
                    let w = (h + 2 * hkv) * d;
                    let qkv = input(b, &mut rng, dt, &[t, w], View::Contiguous, (-2.0, 2.0));
                    let view = |start: usize, heads: usize| {
                        qkv.t.narrow(1, start * d, heads * d).unwrap().reshape(&[t, heads, d]).unwrap()
                    };
                    (view(0, h), view(h, hkv), view(h + hkv, hkv))
                } else {
                    let q = input(b, &mut rng, dt, &[t, h, d], View::Narrowed, (-2.0, 2.0)).t;
                    let k = input(b, &mut rng, dt, &[t, hkv, d], View::SwapLeading, (-2.0, 2.0)).t;
                    let v = input(b, &mut rng, dt, &[t, hkv, d], View::Offset, (-2.0, 2.0)).t;
                    (q, k, v)
                };
                let q_values = download(b, &q);
                let cache = |rng: &mut Rng| input(b, rng, dt, &[s, hkv, d], View::Contiguous, (-5.0, 5.0));
                let (kc, vc) = (cache(&mut rng), cache(&mut rng));
                let out = output(b, &mut rng, dt, &[t, h, d], View::Narrowed);
                b.rope_kv_write(&q, &k, &v, &cos_t, &sin_t, &pos_t, &slots_t, &out.t, &kc.t, &vc.t).unwrap();
                assert_close(&what, dt, &download(b, &out.t), &reference(&q_values, &cos, &sin, &pos, h, d));
                out.check_untouched(b, &what);
                // the unfused ops on copies of the same caches
                let copy =
                    |c: &super::Input<B>| b.tensor(&HostTensor::from_f32_as(&[s, hkv, d], &c.values, dt)).unwrap();
                let (kc2, vc2) = (copy(&kc), copy(&vc));
                let (q2, k2) = (b.zeros(dt, &[t, h, d]).unwrap(), b.zeros(dt, &[t, hkv, d]).unwrap());
                b.rope(&q, &cos_t, &sin_t, &pos_t, &q2).unwrap();
                b.rope(&k, &cos_t, &sin_t, &pos_t, &k2).unwrap();
                b.kv_write(&k2, &v, &kc2, &vc2, &slots_t).unwrap();
                assert_eq!(download(b, &out.t), download(b, &q2), "{what}: q as rope's");
                assert_eq!(download(b, &kc.t), download(b, &kc2), "{what}: k cache as rope + kv_write");
                assert_eq!(download(b, &vc.t), download(b, &vc2), "{what}: v cache as kv_write");
            }
        }
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (q, k, table, pos) = (f(&[2, 4, 8]), f(&[2, 2, 8]), f(&[16, 4]), i32s::<B>(b, &[0, 1]));
    let cache = f(&[s, 2, 8]);
    expect_err!(
        "rope_kv_write k head dim",
        b.rope_kv_write(&q, &f(&[2, 2, 6]), &k, &table, &table, &pos, &pos, &q, &cache, &cache),
        Error::ShapeMismatch { .. }
    );
    let hk = b.zeros(DType::F16, &[2, 2, 8]).unwrap();
    expect_err!(
        "rope_kv_write k dtype",
        b.rope_kv_write(&q, &hk, &k, &table, &table, &pos, &pos, &q, &cache, &cache),
        Error::DTypeMismatch { .. }
    );
}
