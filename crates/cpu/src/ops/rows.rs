//! Ops that reduce over the last dim, one row at a time: RMSNorm, softmax, argmax. Rows
//! must have a unit-stride last dim (checked by `check::rows`); the row stride is free,
//! so a view narrowed out of a wider buffer works. Statistics are kept in f32.

use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather_f32, scatter, scatter_f32};
use crate::Cpu;
use encore_tensor::{check, Result, Tensor};
use rayon::prelude::*;

/// Rows per parallel task, so that a decode step's single row does not pay for a split.
const PAR_MIN_ROWS: usize = 4;

pub(crate) fn rms_norm(x: &Tensor<Cpu>, weight: &Tensor<Cpu>, eps: f32, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "rms_norm";
    let (rows, _) = check::rms_norm(x, weight, dst)?;
    if rows.rows == 0 || rows.cols == 0 {
        return Ok(());
    }
    let cols = rows.cols;
    let out = with_reads(OP, &[x, weight], |d| {
        let mut out = gather_f32(OP, d[0], x.layout())?;
        let w = gather_f32(OP, d[1], weight.layout())?;
        out.par_chunks_mut(cols).with_min_len(PAR_MIN_ROWS).for_each(|row| {
            let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            let inv_rms = 1.0 / (mean_sq + eps).sqrt();
            row.iter_mut().zip(&w).for_each(|(v, w)| *v = *v * inv_rms * w);
        });
        Ok(out)
    })?;
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &out))
}

pub(crate) fn softmax(x: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "softmax";
    let (rows, _) = check::softmax(x, dst)?;
    if rows.rows == 0 || rows.cols == 0 {
        return Ok(());
    }
    let mut v = with_reads(OP, &[x], |d| gather_f32(OP, d[0], x.layout()))?;
    v.par_chunks_mut(rows.cols).with_min_len(PAR_MIN_ROWS).for_each(softmax_row);
    with_write(OP, dst, |d| scatter_f32(OP, d, dst.layout(), &v))
}

/// In place; subtracting the max keeps `exp` finite for any logits.
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

pub(crate) fn argmax(x: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "argmax";
    let rows = check::argmax(x, dst)?;
    let v = with_reads(OP, &[x], |d| gather_f32(OP, d[0], x.layout()))?;
    let idx: Vec<u32> = v.par_chunks(rows.cols).with_min_len(PAR_MIN_ROWS).map(argmax_row).collect();
    with_write(OP, dst, |d| scatter(OP, d, dst.layout(), &Data::U32(idx)))
}

/// The first index of the largest value; NaNs are never chosen.
pub(crate) fn argmax_row(row: &[f32]) -> u32 {
    let (mut best, mut at) = (f32::NEG_INFINITY, 0);
    for (i, &v) in row.iter().enumerate() {
        if v > best {
            (best, at) = (v, i);
        }
    }
    at as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_skips_nan() {
        assert_eq!(argmax_row(&[1.0, 3.0, 2.0, 3.0]), 1);
        assert_eq!(argmax_row(&[f32::NAN, -1.0, f32::NAN, 0.5]), 3);
        assert_eq!(argmax_row(&[f32::NEG_INFINITY; 3]), 0);
    }

    #[test]
    fn softmax_of_huge_logits_stays_finite() {
        let mut r = [1000.0f32, 999.0, -1000.0];
        softmax_row(&mut r);
        let e = (-1.0f64).exp();
        assert!((r[0] as f64 - 1.0 / (1.0 + e)).abs() < 1e-6);
        assert!((r[1] as f64 - e / (1.0 + e)).abs() < 1e-6);
        assert_eq!(r[2], 0.0);
    }
}
