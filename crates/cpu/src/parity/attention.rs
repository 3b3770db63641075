//! Parity of causal attention over a slot-addressed cache: several sequences in one step
//! (a prefill, a decode token, a continued prefill chunk, a padded row), grouped KV heads
//! from MHA to MQA, with and without a sliding window, caches at an offset.

use super::inputs::{download, expect_err, i32s, input, output, View};
use encore_tensor::testing::{assert_close, Rng};
use encore_tensor::{AttentionParams, Backend, DType, Error, HostTensor, Tensor};

/// Query rows of one step: `(seq_start, position)`; position -1 is a padded row.
const ROWS: [(i32, i32); 10] = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (10, 7), (0, -1), (20, 2), (20, 3)];
const SLOTS: usize = 24;

pub fn attention_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("attention");
    let t = ROWS.len();
    let starts = i32s(b, &ROWS.map(|r| r.0));
    let pos: Vec<i32> = ROWS.map(|r| r.1).to_vec();
    let pos_t = i32s(b, &pos);
    for dt in DType::FLOATS {
        for (h, hkv, d) in [(4, 4, 16), (4, 2, 16), (6, 2, 32), (8, 1, 8)] {
            for window in [0, 3] {
                for view in [View::Contiguous, View::Offset] {
                    let what = format!("attention {dt} H={h} Hkv={hkv} D={d} window={window} {view:?}");
                    let q = input(b, &mut rng, dt, &[t, h, d], view, (-1.0, 1.0));
                    let kc = input(b, &mut rng, dt, &[SLOTS, hkv, d], view, (-1.0, 1.0));
                    let vc = input(b, &mut rng, dt, &[SLOTS, hkv, d], View::Contiguous, (-2.0, 2.0));
                    // random destination: the padded row must be written as zeros
                    let out = output(b, &mut rng, dt, &[t, h, d], view);
                    let params = AttentionParams { scale: 1.0 / (d as f32).sqrt(), sliding_window: window };
                    b.attention(&q.t, &kc.t, &vc.t, &starts, &pos_t, params, &out.t).unwrap();
                    let dims = (h, hkv, d);
                    let want = reference(&q.values, &kc.values, &vc.values, &pos, dims, params);
                    assert_close(&what, dt, &download(b, &out.t), &want);
                    out.check_untouched(b, &what);
                }
            }
        }
    }
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (q, cache, ix) = (f(&[2, 4, 8]), f(&[SLOTS, 2, 8]), i32s::<B>(b, &[0, 1]));
    let p = AttentionParams { scale: 0.3, sliding_window: 0 };
    let qt = f(&[4, 2, 8]).transpose(0, 1).unwrap();
    expect_err!("attention q layout", b.attention(&qt, &cache, &cache, &ix, &ix, p, &q), Error::LayoutRequired { .. });
    let c3 = f(&[SLOTS, 3, 8]);
    expect_err!("attention groups", b.attention(&q, &c3, &c3, &ix, &ix, p, &q), Error::ShapeMismatch { .. });
    let cd = f(&[SLOTS, 2, 4]);
    expect_err!("attention head dim", b.attention(&q, &cd, &cd, &ix, &ix, p, &q), Error::ShapeMismatch { .. });
    let upos: Tensor<B> = b.tensor(&HostTensor::from_u32(&[2], &[0, 1])).unwrap();
    expect_err!(
        "attention positions dtype",
        b.attention(&q, &cache, &cache, &ix, &upos, p, &q),
        Error::DTypeMismatch { .. }
    );
    let hq = b.zeros(DType::BF16, &[2, 4, 8]).unwrap();
    expect_err!("attention dtype", b.attention(&hq, &cache, &cache, &ix, &ix, p, &hq), Error::DTypeMismatch { .. });
    expect_err!(
        "attention dst",
        b.attention(&q, &cache, &cache, &ix, &ix, p, &f(&[2, 4, 4])),
        Error::ShapeMismatch { .. }
    );
}

/// f64 attention on row-major values; `ROWS` gives each query's sequence start.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos: &[i32],
    (h, hkv, d): (usize, usize, usize),
    params: AttentionParams,
) -> Vec<f64> {
    let mut out = vec![0.0; q.len()];
    for (t, &p) in pos.iter().enumerate() {
        if p < 0 {
            continue;
        }
        let (start, p) = (ROWS[t].0 as usize, p as usize);
        let w = params.sliding_window as usize;
        let first = if w > 0 && p + 1 > w { p + 1 - w } else { 0 };
        for head in 0..h {
            let kvh = head / (h / hkv);
            let qrow = &q[(t * h + head) * d..][..d];
            let at = |j: usize| ((start + j) * hkv + kvh) * d;
            let scores: Vec<f64> = (first..=p)
                .map(|j| params.scale as f64 * (0..d).map(|i| qrow[i] as f64 * k[at(j) + i] as f64).sum::<f64>())
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (j, e) in (first..=p).zip(&e) {
                for i in 0..d {
                    out[(t * h + head) * d + i] += e / sum * v[at(j) + i] as f64;
                }
            }
        }
    }
    out
}
