//! Parity of `sample`: the backend's pick against the CPU's exact reference
//! (`ops::sample::sample_row`) on random logits, every launch mixing rows of different
//! settings (one per filter, and greedy rows); every pick must lie in the kept set, greedy
//! rows must be the argmax, and (rounding at a threshold aside) picks the same token.

use super::inputs::{expect_err, i32s};
use crate::ops::sample::sample_row;
use encore_tensor::testing::Rng;
use encore_tensor::{Backend, DType, Error, HostTensor, SampleParams, Tensor, SAMPLE_UNIFORM_SCALE};

const ROW_PARAMS: [SampleParams; 8] = [
    SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 },
    SampleParams { temperature: 0.7, top_k: 40, top_p: 1.0, min_p: 0.0 },
    SampleParams::GREEDY,
    SampleParams { temperature: 1.3, top_k: 0, top_p: 0.9, min_p: 0.0 },
    SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.05 },
    SampleParams { temperature: 0.8, top_k: 50, top_p: 0.95, min_p: 0.02 },
    SampleParams { temperature: 1.0, top_k: 1, top_p: 1.0, min_p: 0.0 },
    SampleParams { temperature: -1.0, top_k: 7, top_p: 0.5, min_p: 0.5 }, // greedy too
];

fn params_tensor<B: Backend>(b: &B, rows: &[SampleParams]) -> Tensor<B> {
    let words: Vec<i32> = rows.iter().flat_map(|p| p.to_words()).collect();
    b.tensor(&HostTensor::from_i32(&[rows.len(), 4], &words)).unwrap()
}

pub fn sample_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("sample");
    let (rows, v) = (ROW_PARAMS.len(), 1000);
    let pt = params_tensor(b, &ROW_PARAMS);
    let (mut same, mut total) = (0, 0);
    for round in 0..6 {
        let logits: Vec<f32> = rng.vec(rows * v, -6.0, 6.0);
        let u: Vec<i32> = (0..rows).map(|_| rng.below(SAMPLE_UNIFORM_SCALE as usize) as i32).collect();
        let lt = b.tensor(&HostTensor::from_f32(&[rows, v], &logits)).unwrap();
        let ut = i32s(b, &u);
        let dst = b.zeros(DType::U32, &[rows]).unwrap();
        b.sample(&lt, &ut, &pt, &dst).unwrap();
        let got = b.download(&dst).unwrap().to_u32().unwrap();
        for (r, p) in ROW_PARAMS.iter().copied().enumerate() {
            let row = &logits[r * v..(r + 1) * v];
            let want = sample_row(row, u[r] as f64 / SAMPLE_UNIFORM_SCALE as f64, p);
            let g = got[r] as usize;
            let what = format!("sample round {round} row {r} {p:?}");
            assert!(g < v, "{what}: id {g} out of range");
            if p.is_greedy() || p.top_k == 1 {
                assert_eq!(g, want as usize, "{what}: greedy rows take the argmax");
                continue;
            }
            // kept-set membership, with the thresholds relaxed by rounding
            let m = row.iter().fold(f32::MIN, |a, &x| a.max(x));
            let gp = ((row[g] - m) / p.temperature).exp();
            assert!(gp >= p.min_p * 0.999, "{what}: id {g} (p {gp}) is below min-p");
            let mut sorted: Vec<f32> = row.iter().map(|&x| ((x - m) / p.temperature).exp()).collect();
            sorted.sort_by(|a, c| c.total_cmp(a));
            let k = p.top_k as usize + 2;
            if p.top_k > 0 && k < v {
                assert!(gp >= sorted[k - 1], "{what}: id {g} is outside the top-k");
            }
            same += (g == want as usize) as usize;
            total += 1;
        }
    }
    assert!(same * 10 >= total * 9, "sample: only {same} of {total} picks equal the reference");
    let l = b.zeros(DType::F32, &[2, 8]).unwrap();
    let u = i32s(b, &[1, 2]);
    let d = b.zeros(DType::U32, &[2]).unwrap();
    let p2 = params_tensor(b, &ROW_PARAMS[..2]);
    let h = b.zeros(DType::BF16, &[2, 8]).unwrap();
    expect_err!("sample bf16 logits", b.sample(&h, &u, &p2, &d), Error::DTypeMismatch { .. });
    let d3 = b.zeros(DType::U32, &[3]).unwrap();
    expect_err!("sample rows", b.sample(&l, &u, &p2, &d3), Error::ShapeMismatch { .. });
    let p3 = params_tensor(b, &ROW_PARAMS[..3]);
    expect_err!("sample params rows", b.sample(&l, &u, &p3, &d), Error::ShapeMismatch { .. });
}
