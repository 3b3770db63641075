//! Parity of causal attention over a paged cache: several sequences in one step (prefill
//! rows, decode rows, a padded row), random block tables whose blocks are scattered over the
//! cache, two sequences sharing a prefix block, unused table entries of -1 (holes), block
//! sizes 4 and 16, grouped KV heads from MHA to MQA (ratios 1, 3, 4, 8), head dims 16 to 128,
//! with and without a sliding window, caches at an offset.

use super::inputs::{download, expect_err, i32s, input, output, View};
use encore_tensor::testing::{assert_close, Rng};
use encore_tensor::{AttentionParams, Backend, DType, Error, HostTensor, Tensor};

/// Query rows of one step: `(sequence, position)`; position -1 is a padded row.
const ROWS: [(usize, i32); 10] = [(0, 0), (0, 1), (0, 5), (0, 13), (0, 23), (1, 3), (1, 9), (2, -1), (2, 17), (1, 20)];
/// Highest position of each sequence (sizes its table).
const LAST: [usize; 3] = [23, 20, 17];

/// A paged cache layout: `tables[s]` lists the blocks of sequence `s` (-1 past its end).
pub struct Paging {
    pub block_size: usize,
    pub blocks: usize,
    pub mb: usize,
    pub tables: Vec<Vec<i32>>,
}

impl Paging {
    /// Three sequences over a shuffled cache; sequence 1 shares sequence 0's first block.
    pub fn random(rng: &mut Rng, block_size: usize, last: &[usize]) -> Paging {
        let mb = last.iter().max().unwrap() / block_size + 1;
        let blocks = last.len() * mb + 2;
        let mut ids: Vec<i32> = (0..blocks as i32).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let mut next = ids.into_iter();
        let mut tables: Vec<Vec<i32>> = Vec::new();
        for (s, &p) in last.iter().enumerate() {
            let used = p / block_size + 1;
            let mut row: Vec<i32> = (0..used).map(|_| next.next().unwrap()).collect();
            if s == 1 {
                row[0] = tables[0][0]; // a shared prefix block
            }
            row.resize(mb, -1);
            tables.push(row);
        }
        Paging { block_size, blocks, mb, tables }
    }

    pub fn slot(&self, seq: usize, j: usize) -> usize {
        self.tables[seq][j / self.block_size] as usize * self.block_size + j % self.block_size
    }

    pub fn upload<B: Backend>(&self, b: &B) -> Tensor<B> {
        let flat: Vec<i32> = self.tables.iter().flatten().copied().collect();
        b.tensor(&HostTensor::from_i32(&[self.tables.len(), self.mb], &flat)).expect("upload")
    }
}

pub fn attention_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("attention");
    let t = ROWS.len();
    let seqs: Vec<i32> = ROWS.map(|r| r.0 as i32).to_vec();
    let pos: Vec<i32> = ROWS.map(|r| r.1).to_vec();
    let (seq_t, pos_t) = (i32s(b, &seqs), i32s(b, &pos));
    for dt in DType::FLOATS {
        for (h, hkv, d) in [(4, 4, 16), (6, 2, 32), (8, 2, 64), (8, 1, 128)] {
            for (block_size, window) in [(4, 0), (16, 0), (4, 3), (16, 7)] {
                let paging = Paging::random(&mut rng, block_size, &LAST);
                let tables = paging.upload(b);
                let slots = paging.blocks * block_size;
                for view in [View::Contiguous, View::Offset] {
                    let what = format!("attention {dt} H={h} Hkv={hkv} D={d} bs={block_size} window={window} {view:?}");
                    let q = input(b, &mut rng, dt, &[t, h, d], view, (-1.0, 1.0));
                    let kc = input(b, &mut rng, dt, &[slots, hkv, d], view, (-1.0, 1.0));
                    let vc = input(b, &mut rng, dt, &[slots, hkv, d], View::Contiguous, (-2.0, 2.0));
                    // random destination: the padded row must be written as zeros
                    let out = output(b, &mut rng, dt, &[t, h, d], view);
                    let params = AttentionParams {
                        scale: 1.0 / (d as f32).sqrt(),
                        sliding_window: window,
                        block_size: block_size as u32,
                    };
                    b.attention(&q.t, &kc.t, &vc.t, &tables, &seq_t, &pos_t, params, &out.t).unwrap();
                    let rows: Vec<(usize, i32)> = ROWS.to_vec();
                    let want = reference(&q.values, &kc.values, &vc.values, &rows, &paging, (h, hkv, d), params);
                    assert_close(&what, dt, &download(b, &out.t), &want);
                    out.check_untouched(b, &what);
                }
            }
        }
    }
    bad_arguments(b);
}

fn bad_arguments<B: Backend>(b: &B) {
    let f = |dims: &[usize]| b.zeros(DType::F32, dims).unwrap();
    let (q, cache, ix) = (f(&[2, 4, 8]), f(&[16, 2, 8]), i32s::<B>(b, &[0, 1]));
    let table: Tensor<B> = b.tensor(&HostTensor::from_i32(&[2, 2], &[0, 1, 2, 3])).unwrap();
    let p = AttentionParams { scale: 0.3, sliding_window: 0, block_size: 4 };
    let qt = f(&[4, 2, 8]).transpose(0, 1).unwrap();
    let call = |q: &Tensor<B>, c: &Tensor<B>, tb: &Tensor<B>, pos: &Tensor<B>, p, o: &Tensor<B>| {
        b.attention(q, c, c, tb, &ix, pos, p, o)
    };
    expect_err!("attention q layout", call(&qt, &cache, &table, &ix, p, &q), Error::LayoutRequired { .. });
    let c3 = f(&[16, 3, 8]);
    expect_err!("attention groups", call(&q, &c3, &table, &ix, p, &q), Error::ShapeMismatch { .. });
    let cd = f(&[16, 2, 4]);
    expect_err!("attention head dim", call(&q, &cd, &table, &ix, p, &q), Error::ShapeMismatch { .. });
    let upos: Tensor<B> = b.tensor(&HostTensor::from_u32(&[2], &[0, 1])).unwrap();
    expect_err!("attention positions dtype", call(&q, &cache, &table, &upos, p, &q), Error::DTypeMismatch { .. });
    let hq = b.zeros(DType::BF16, &[2, 4, 8]).unwrap();
    expect_err!("attention dtype", call(&hq, &cache, &table, &ix, p, &hq), Error::DTypeMismatch { .. });
    expect_err!("attention dst", call(&q, &cache, &table, &ix, p, &f(&[2, 4, 4])), Error::ShapeMismatch { .. });
    let p5 = AttentionParams { block_size: 5, ..p };
    expect_err!("attention partial block", call(&q, &cache, &table, &ix, p5, &q), Error::InvalidArgument { .. });
    let flat = i32s::<B>(b, &[0, 1]);
    expect_err!("attention table rank", call(&q, &cache, &flat, &ix, p, &q), Error::InvalidArgument { .. });
}

/// f64 attention on row-major values over the logical positions of each sequence.
pub fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[(usize, i32)],
    paging: &Paging,
    (h, hkv, d): (usize, usize, usize),
    params: AttentionParams,
) -> Vec<f64> {
    let mut out = vec![0.0; q.len()];
    for (t, &(seq, p)) in rows.iter().enumerate() {
        if p < 0 {
            continue;
        }
        let p = p as usize;
        let w = params.sliding_window as usize;
        let first = if w > 0 && p + 1 > w { p + 1 - w } else { 0 };
        for head in 0..h {
            let kvh = head / (h / hkv);
            let qrow = &q[(t * h + head) * d..][..d];
            let at = |j: usize| (paging.slot(seq, j) * hkv + kvh) * d;
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
