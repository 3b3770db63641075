//! Parity of the fused decode attention, [`Backend::decode_attention`]: a pure decode step
//! (each row its own sequence: positions from 0 to past a thousand, so one to many 64-key
//! tiles and one to several key splits; a padded row), grouped heads from 1 to 20 a KV head
//! (20: two head chunks of the tensor-core kernel), head dims 16 to 128, with and without a
//! sliding window, with and without the per-head RMSNorm of q and k (`qk_norm`, head dims
//! to 256); q, k, v narrowed out of one fused qkv, as the decoder has them. Against the same
//! backend's ops on copies of the caches, bit for bit (the output and both caches):
//! `rope_kv_write` then `attention`, with qk_norm `copy` + `rms_norm` of q and of k first;
//! and against the f64 reference on the rotated q.

use super::attention::{reference, Paging};
use super::inputs::{download, expect_err, i32s, input, output, View};
use encore_tensor::rope::{tables, RopeScaling};
use encore_tensor::testing::{assert_close, Rng};
use encore_tensor::{AttentionParams, Backend, DType, DecodeAttention, Error, HostTensor, QkNorm, Tensor};

/// Row t is sequence t at position POS[t] (-1: padded). Sequence 1 shares sequence 0's first
/// block (Paging::random), which sequence 0 (at 300) does not write this step.
const POS: [i32; 6] = [300, 70, -1, 1033, 64, 0];
const MAX_POS: usize = 1100;

pub fn decode_attention_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("decode_attention");
    let t = POS.len();
    let last: Vec<usize> = POS.iter().map(|&p| p.max(0) as usize).collect();
    let rows: Vec<(usize, i32)> = POS.iter().enumerate().map(|(s, &p)| (s, p)).collect();
    let seq_t = i32s(b, &(0..t as i32).collect::<Vec<_>>());
    let pos_t = i32s(b, &POS);
    for dt in DType::FLOATS {
        let shapes = [(8, 2, 64, false), (40, 2, 64, false), (4, 1, 128, false), (4, 4, 16, false)];
        let normed = [(8, 2, 64, true), (16, 8, 128, true), (4, 1, 256, true), (4, 4, 16, true)];
        for (h, hkv, d, norm) in shapes.into_iter().chain(normed) {
            let (cos, sin) = tables(d, MAX_POS, 10000.0, &RopeScaling::None);
            let cos_t = b.tensor(&HostTensor::from_f32(&[MAX_POS, d / 2], &cos)).unwrap();
            let sin_t = b.tensor(&HostTensor::from_f32(&[MAX_POS, d / 2], &sin)).unwrap();
            for (block_size, window) in [(16, 0), (16, 200)] {
                let what = format!("decode_attention {dt} H={h} Hkv={hkv} D={d} window={window} qk_norm={norm}");
                let paging = Paging::random(&mut rng, block_size, &last);
                let tables_t = paging.upload(b);
                let slots = paging.blocks * block_size;
                let slot_of: Vec<i32> =
                    rows.iter().map(|&(s, p)| if p < 0 { -1 } else { paging.slot(s, p as usize) as i32 }).collect();
                let slots_t = i32s(b, &slot_of);
                let qkv = input(b, &mut rng, dt, &[t, (h + 2 * hkv) * d], View::Contiguous, (-1.0, 1.0));
                let view = |start: usize, heads: usize| {
                    qkv.t.narrow(1, start * d, heads * d).unwrap().reshape(&[t, heads, d]).unwrap()
                };
                let (q, k, v) = (view(0, h), view(h, hkv), view(h + hkv, hkv));
                let cache = |rng: &mut Rng| input(b, rng, dt, &[slots, hkv, d], View::Contiguous, (-1.0, 1.0));
                let (kc, vc) = (cache(&mut rng), cache(&mut rng));
                let copy = |values: &[f32]| b.tensor(&HostTensor::from_f32_as(&[slots, hkv, d], values, dt)).unwrap();
                let (kc2, vc2) = (copy(&kc.values), copy(&vc.values));
                let params = AttentionParams {
                    scale: 1.0 / (d as f32).sqrt(),
                    sliding_window: window,
                    block_size: block_size as u32,
                };
                let q_rot = b.zeros(dt, &[t, h, d]).unwrap();
                let out = output(b, &mut rng, dt, &[t, h, d], View::Contiguous);
                let weight = |rng: &mut Rng| input(b, rng, dt, &[d], View::Contiguous, (0.5, 1.5));
                let (wq, wk) = (weight(&mut rng), weight(&mut rng));
                let k_normed = b.zeros(dt, &[t, hkv, d]).unwrap();
                let qk_norm = norm.then_some(QkNorm { q: &wq.t, k: &wk.t, eps: 1e-6, k_normed: &k_normed });
                let a = DecodeAttention {
                    q: &q,
                    k: &k,
                    v: &v,
                    cos: &cos_t,
                    sin: &sin_t,
                    positions: &pos_t,
                    slot_mapping: &slots_t,
                    q_rot: &q_rot,
                    k_cache: &kc.t,
                    v_cache: &vc.t,
                    block_tables: &tables_t,
                    row_seq: &seq_t,
                    params,
                    qk_norm,
                };
                b.decode_attention(&a, &out.t).unwrap();
                // the unfused ops
                let (q2, out2) = (b.zeros(dt, &[t, h, d]).unwrap(), b.zeros(dt, &[t, h, d]).unwrap());
                if norm {
                    let k2 = b.zeros(dt, &[t, hkv, d]).unwrap();
                    b.copy(&q, &q2).unwrap();
                    b.rms_norm(&q2, &wq.t, 1e-6, &q2).unwrap();
                    b.copy(&k, &k2).unwrap();
                    b.rms_norm(&k2, &wk.t, 1e-6, &k2).unwrap();
                    b.rope_kv_write(&q2, &k2, &v, &cos_t, &sin_t, &pos_t, &slots_t, &q2, &kc2, &vc2).unwrap();
                } else {
                    b.rope_kv_write(&q, &k, &v, &cos_t, &sin_t, &pos_t, &slots_t, &q2, &kc2, &vc2).unwrap();
                }
                b.attention(&q2, &kc2, &vc2, &tables_t, &seq_t, &pos_t, params, &out2).unwrap();
                let got = download(b, &out.t);
                assert_eq!(download(b, &kc.t), download(b, &kc2), "{what}: k cache as rope_kv_write's");
                assert_eq!(download(b, &vc.t), download(b, &vc2), "{what}: v cache as rope_kv_write's");
                assert!(got == download(b, &out2), "{what}: output differs from the unfused ops");
                if norm {
                    assert_eq!(download(b, &q_rot), download(b, &q2), "{what}: rotated q as the unfused ops'");
                }
                let (qv, kv, vv) = (download(b, &q2), download(b, &kc2), download(b, &vc2));
                let want = reference(&qv, &kv, &vv, &rows, &paging, (h, hkv, d), params);
                assert_close(&what, dt, &got, &want);
            }
        }
    }
    bad_arguments(b);
}

fn bad_arguments<B: Backend>(b: &B) {
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (q, k, cache, table) = (f(&[2, 4, 8]), f(&[2, 2, 8]), f(&[16, 2, 8]), f(&[16, 4]));
    let ix = i32s::<B>(b, &[0, 1]);
    let blocks: Tensor<B> = b.tensor(&HostTensor::from_i32(&[2, 2], &[0, 1, 2, 3])).unwrap();
    let params = AttentionParams { scale: 0.3, sliding_window: 0, block_size: 4 };
    let good = DecodeAttention {
        q: &q,
        k: &k,
        v: &k,
        cos: &table,
        sin: &table,
        positions: &ix,
        slot_mapping: &ix,
        q_rot: &q,
        k_cache: &cache,
        v_cache: &cache,
        block_tables: &blocks,
        row_seq: &ix,
        params,
        qk_norm: None,
    };
    b.decode_attention(&good, &f(&[2, 4, 8])).unwrap();
    let (w8, w6) = (f(&[8]), f(&[6]));
    let norm = QkNorm { q: &w8, k: &w8, eps: 1e-6, k_normed: &k };
    b.decode_attention(&DecodeAttention { qk_norm: Some(norm), ..good }, &f(&[2, 4, 8])).unwrap();
    expect_err!(
        "decode_attention qk_norm weight dims",
        b.decode_attention(&DecodeAttention { qk_norm: Some(QkNorm { k: &w6, ..norm }), ..good }, &q),
        Error::ShapeMismatch { .. }
    );
    expect_err!(
        "decode_attention qk_norm k scratch",
        b.decode_attention(&DecodeAttention { qk_norm: Some(QkNorm { k_normed: &q, ..norm }), ..good }, &q),
        Error::ShapeMismatch { .. }
    );
    expect_err!("norm_rope_kv_write without weights", b.norm_rope_kv_write(&good), Error::InvalidArgument { .. });
    let k6 = f(&[2, 2, 6]);
    expect_err!(
        "decode_attention k head dim",
        b.decode_attention(&DecodeAttention { k: &k6, ..good }, &q),
        Error::ShapeMismatch { .. }
    );
    let hq = b.zeros(DType::BF16, &[2, 4, 8]).unwrap();
    expect_err!(
        "decode_attention q dtype",
        b.decode_attention(&DecodeAttention { q: &hq, ..good }, &q),
        Error::DTypeMismatch { .. }
    );
    expect_err!("decode_attention dst", b.decode_attention(&good, &f(&[2, 4, 4])), Error::ShapeMismatch { .. });
    let p5 = AttentionParams { block_size: 5, ..params };
    expect_err!(
        "decode_attention partial block",
        b.decode_attention(&DecodeAttention { params: p5, ..good }, &q),
        Error::InvalidArgument { .. }
    );
}
