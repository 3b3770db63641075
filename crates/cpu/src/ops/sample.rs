//! Sampling one token per row of f32 logits, each row with its own temperature, top-k, min-p
//! and top-p (greedy rows take the argmax), from a given uniform per row
//! (`encore_tensor::SampleParams` defines the kept set). The thresholds are computed exactly
//! (sorting), the pick walks ids in order: the same choice as the CUDA kernel's bisection, up
//! to rounding at a threshold. [`sample_row`] is also the engine's host sampler: one rule.

use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather_f32, i32s, scatter};
use crate::Cpu;
use encore_tensor::{check, Error, Result, SampleParams, Tensor, SAMPLE_UNIFORM_SCALE};

pub(crate) fn sample(
    logits: &Tensor<Cpu>,
    uniform: &Tensor<Cpu>,
    params: &Tensor<Cpu>,
    dst: &Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "sample";
    let rows = check::sample(logits, uniform, params, dst)?;
    let (l, u, w) = with_reads(OP, &[logits, uniform, params], |d| {
        let l = gather_f32(OP, d[0], logits.layout())?;
        Ok((l, i32s(OP, d[1], uniform.layout())?.to_vec(), i32s(OP, d[2], params.layout())?.to_vec()))
    })?;
    let mut picks = Vec::with_capacity(rows.rows);
    for ((row, &x), w) in l.chunks(rows.cols).zip(&u).zip(w.chunks(4)) {
        let p = SampleParams::from_words([w[0], w[1], w[2], w[3]]);
        if !p.is_valid() {
            return Err(Error::InvalidArgument { op: OP, msg: format!("invalid sampling parameters {p:?}") });
        }
        picks.push(sample_row(row, x as f64 / SAMPLE_UNIFORM_SCALE as f64, p));
    }
    with_write(OP, dst, |d| scatter(OP, d, dst.layout(), &Data::U32(picks)))
}

/// The token `p` picks from one row of logits with the uniform `u` in `[0, 1)`: the argmax
/// (first on ties, NaN never wins) when greedy, else the kept set's pick; see `SampleParams`.
pub fn sample_row(l: &[f32], u: f64, p: SampleParams) -> u32 {
    if p.is_greedy() {
        let mut best = 0;
        for (i, &x) in l.iter().enumerate() {
            if x > l[best] || (l[best].is_nan() && !x.is_nan()) {
                best = i;
            }
        }
        return best as u32;
    }
    let m = l.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / p.temperature;
    let probs: Vec<f64> = l.iter().map(|&x| (((x - m) * inv_t) as f64).exp()).collect();
    let mut sorted = probs.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut tau = p.min_p as f64;
    if p.top_k > 0 && (p.top_k as usize) < l.len() {
        tau = tau.max(sorted[p.top_k as usize - 1]);
    }
    if p.top_p < 1.0 {
        let target = p.top_p as f64 * sorted.iter().filter(|&&q| q >= tau).sum::<f64>();
        let mut acc = 0.0;
        for &q in sorted.iter().filter(|&&q| q >= tau) {
            acc += q;
            if acc >= target {
                tau = q;
                break;
            }
        }
    }
    let total: f64 = probs.iter().filter(|&&q| q >= tau).sum();
    let r = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &q) in probs.iter().enumerate() {
        if q >= tau {
            acc += q;
            last = i;
            if acc > r {
                return i as u32;
            }
        }
    }
    last as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::{Backend, DType, HostTensor};

    #[test]
    fn invalid_settings_are_an_error_naming_them() {
        let l = Cpu.zeros(DType::F32, &[1, 8]).unwrap();
        let u = Cpu.tensor(&HostTensor::from_i32(&[1], &[3])).unwrap();
        let d = Cpu.zeros(DType::U32, &[1]).unwrap();
        for bad in [
            SampleParams { temperature: 1.0, top_k: 0, top_p: 0.0, min_p: 0.0 },
            SampleParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 1.0 },
            SampleParams { temperature: f32::INFINITY, top_k: 0, top_p: 1.0, min_p: 0.0 },
        ] {
            let p = Cpu.tensor(&HostTensor::from_i32(&[1, 4], &bad.to_words())).unwrap();
            assert!(matches!(sample(&l, &u, &p, &d), Err(Error::InvalidArgument { .. })), "{bad:?}");
        }
    }

    fn sp(top_k: u32, top_p: f32, min_p: f32) -> SampleParams {
        SampleParams { temperature: 1.0, top_k, top_p, min_p }
    }

    #[test]
    fn picks_follow_the_uniform_in_id_order() {
        // p = [1, 1, 1, 1] / 4: u in [0.25, 0.5) picks id 1
        let l = [0.0f32; 4];
        assert_eq!(sample_row(&l, 0.0, sp(0, 1.0, 0.0)), 0);
        assert_eq!(sample_row(&l, 0.3, sp(0, 1.0, 0.0)), 1);
        assert_eq!(sample_row(&l, 0.99, sp(0, 1.0, 0.0)), 3);
    }

    #[test]
    fn filters_cut_the_tail() {
        let l = [3.0f32, 1.0, 2.0, 0.0];
        // top-k 2 keeps ids 0 and 2 only
        assert!((0..100).all(|i| [0, 2].contains(&sample_row(&l, i as f64 / 100.0, sp(2, 1.0, 0.0)))));
        // top-k 1 is greedy
        assert!((0..100).all(|i| sample_row(&l, i as f64 / 100.0, sp(1, 1.0, 0.0)) == 0));
        // min-p 0.5: p/p_max = [1, e^-2, e^-1, e^-3]: only id 0
        assert!((0..100).all(|i| sample_row(&l, i as f64 / 100.0, sp(0, 1.0, 0.5)) == 0));
        // top-p 0.8: id 0 holds 0.64 of the mass, id 2 takes it past 0.8
        assert!((0..100).all(|i| [0, 2].contains(&sample_row(&l, i as f64 / 100.0, sp(0, 0.8, 0.0)))));
        assert!((0..100).any(|i| sample_row(&l, i as f64 / 100.0, sp(0, 0.8, 0.0)) == 2));
    }
}
