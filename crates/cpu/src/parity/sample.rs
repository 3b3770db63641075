//! Parity of `sample`: the backend's pick against the CPU's exact reference
//! (`ops::sample::sample_row`) on random logits, for each filter; every pick must lie in the
//! kept set, and (rounding at a threshold aside) be the same token.

use super::inputs::{expect_err, i32s};
use crate::ops::sample::sample_row;
use encore_tensor::testing::Rng;
use encore_tensor::{Backend, DType, Error, HostTensor, SampleParams, SAMPLE_UNIFORM_SCALE};

pub fn sample_cases<B: Backend>(b: &B) {
    let mut rng = Rng::fresh("sample");
    let (rows, v) = (6, 1000);
    let params = [
        SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 },
        SampleParams { temperature: 0.7, top_k: 40, top_p: 1.0, min_p: 0.0 },
        SampleParams { temperature: 1.3, top_k: 0, top_p: 0.9, min_p: 0.0 },
        SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.05 },
        SampleParams { temperature: 0.8, top_k: 50, top_p: 0.95, min_p: 0.02 },
        SampleParams { temperature: 1.0, top_k: 1, top_p: 1.0, min_p: 0.0 },
    ];
    let (mut same, mut total) = (0, 0);
    for p in params {
        let logits: Vec<f32> = rng.vec(rows * v, -6.0, 6.0);
        let u: Vec<i32> = (0..rows).map(|_| rng.below(SAMPLE_UNIFORM_SCALE as usize) as i32).collect();
        let lt = b.tensor(&HostTensor::from_f32(&[rows, v], &logits)).unwrap();
        let ut = i32s(b, &u);
        let dst = b.zeros(DType::U32, &[rows]).unwrap();
        b.sample(&lt, &ut, p, &dst).unwrap();
        let got = b.download(&dst).unwrap().to_u32().unwrap();
        for r in 0..rows {
            let row = &logits[r * v..(r + 1) * v];
            let want = sample_row(row, u[r] as f64 / SAMPLE_UNIFORM_SCALE as f64, p);
            // kept-set membership, with the threshold relaxed by rounding
            let loose = SampleParams {
                top_k: if p.top_k > 0 { p.top_k + 2 } else { 0 },
                top_p: (p.top_p * 1.001).min(1.0),
                min_p: p.min_p * 0.999,
                ..p
            };
            let m = row.iter().fold(f32::MIN, |a, &x| a.max(x));
            let g = got[r] as usize;
            assert!(g < v, "sample {p:?} row {r}: id {g} out of range");
            let gp = ((row[g] - m) / p.temperature).exp();
            assert!(gp >= p.min_p * 0.999, "sample {p:?} row {r}: id {g} (p {gp}) is below min-p");
            let mut sorted: Vec<f32> = row.iter().map(|&x| ((x - m) / p.temperature).exp()).collect();
            sorted.sort_by(|a, c| c.total_cmp(a));
            if loose.top_k > 0 && (loose.top_k as usize) < v {
                assert!(gp >= sorted[loose.top_k as usize - 1], "sample {p:?} row {r}: id {g} is outside the top-k");
            }
            if p.top_k == 1 {
                assert_eq!(g, want as usize, "top-k 1 is greedy");
            }
            same += (g == want as usize) as usize;
            total += 1;
        }
    }
    assert!(same * 10 >= total * 9, "sample: only {same} of {total} picks equal the reference");
    let l = b.zeros(DType::F32, &[2, 8]).unwrap();
    let u = i32s(b, &[1, 2]);
    let d = b.zeros(DType::U32, &[2]).unwrap();
    let ok = SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 };
    expect_err!(
        "sample temperature 0",
        b.sample(&l, &u, SampleParams { temperature: 0.0, ..ok }, &d),
        Error::InvalidArgument { .. }
    );
    expect_err!(
        "sample top_p 0",
        b.sample(&l, &u, SampleParams { top_p: 0.0, ..ok }, &d),
        Error::InvalidArgument { .. }
    );
    let h = b.zeros(DType::BF16, &[2, 8]).unwrap();
    expect_err!("sample bf16 logits", b.sample(&h, &u, ok, &d), Error::DTypeMismatch { .. });
    let d3 = b.zeros(DType::U32, &[3]).unwrap();
    expect_err!("sample rows", b.sample(&l, &u, ok, &d3), Error::ShapeMismatch { .. });
}
