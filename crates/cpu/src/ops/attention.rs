//! Causal attention over a slot-addressed KV cache, for prefill and decode alike.
//!
//! Query token `t` (row of `q: [T, H, D]`) at position `p = positions[t] >= 0` attends the
//! cache slots `seq_start[t] + j` for `j` in `max(0, p - window + 1)..=p` (window 0: all),
//! with grouped KV heads (query head `h` reads KV head `h / (H / Hkv)`). Scores, softmax
//! and the weighted sum of V are in f32; the output is rounded once. A padded row
//! (`p < 0`) gets zeros. The caches are read in place, in their own dtype.

use super::rows::softmax_row;
use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather_f32, i32s, scatter_f32, Float};
use crate::Cpu;
use encore_tensor::check::{self, AttentionDims};
use encore_tensor::{AttentionParams, Error, Result, Tensor};
use rayon::prelude::*;

pub(crate) fn attention(
    q: &Tensor<Cpu>,
    k_cache: &Tensor<Cpu>,
    v_cache: &Tensor<Cpu>,
    seq_start: &Tensor<Cpu>,
    positions: &Tensor<Cpu>,
    params: AttentionParams,
    dst: &Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "attention";
    let ad = check::attention(q, k_cache, v_cache, seq_start, positions, dst)?;
    if q.numel() == 0 {
        return Ok(());
    }
    let out = with_reads(OP, &[q, k_cache, v_cache, seq_start, positions], |data| {
        let qv = gather_f32(OP, data[0], q.layout())?;
        let starts = i32s(OP, data[3], seq_start.layout())?;
        let pos = i32s(OP, data[4], positions.layout())?;
        for (&start, &p) in starts.iter().zip(pos) {
            if p >= 0 && (start < 0 || start as usize + p as usize >= ad.s) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    msg: format!("slots {start}..={} are outside the {} cache slots", start as i64 + p as i64, ad.s),
                });
            }
        }
        let (ko, vo) = (k_cache.layout().offset(), v_cache.layout().offset());
        let rows = Rows { q: &qv, starts, pos, ad, params };
        match (data[1], data[2]) {
            (Data::F32(k), Data::F32(v)) => Ok(rows.attend(&k[ko..], &v[vo..])),
            (Data::BF16(k), Data::BF16(v)) => Ok(rows.attend(&k[ko..], &v[vo..])),
            (Data::F16(k), Data::F16(v)) => Ok(rows.attend(&k[ko..], &v[vo..])),
            (k, v) => Err(Error::DTypeMismatch { op: OP, lhs: k.dtype(), rhs: v.dtype() }),
        }
    })?;
    with_write(OP, dst, |data| scatter_f32(OP, data, dst.layout(), &out))
}

/// The per-call inputs shared by every `(t, h)` row; slots were checked against the cache.
struct Rows<'a> {
    q: &'a [f32],
    starts: &'a [i32],
    pos: &'a [i32],
    ad: AttentionDims,
    params: AttentionParams,
}

impl Rows<'_> {
    /// `[T, H, D]` row-major output; `k`, `v` are the caches from their view offset.
    fn attend<T: Float>(&self, k: &[T], v: &[T]) -> Vec<f32> {
        let AttentionDims { h, hkv, d, .. } = self.ad;
        let (group, window) = (h / hkv, self.params.sliding_window as usize);
        let mut out = vec![0.0f32; self.q.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
            let (t, head) = (row / h, row % h);
            let Ok(p) = usize::try_from(self.pos[t]) else { return };
            let first = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
            let (start, kv_head) = (self.starts[t] as usize, head / group);
            let at = |j: usize| ((start + j) * hkv + kv_head) * d;
            let qrow = &self.q[row * d..(row + 1) * d];
            let mut scores: Vec<f32> = (first..=p)
                .map(|j| {
                    self.params.scale * qrow.iter().zip(&k[at(j)..at(j) + d]).map(|(a, b)| a * b.to_f32()).sum::<f32>()
                })
                .collect();
            softmax_row(&mut scores);
            for (j, &w) in (first..=p).zip(&scores) {
                o.iter_mut().zip(&v[at(j)..at(j) + d]).for_each(|(o, x)| *o += w * x.to_f32());
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::{Backend, DType, HostTensor};

    #[test]
    fn one_key_returns_its_value_and_padding_is_zero() {
        // T=2, H=2, Hkv=1, D=2; cache of 3 slots, the sequence starts at slot 1.
        let q = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let k = [9.0f32, 9.0, 0.5, 0.25, 1.0, 1.0];
        let v = [9.0f32, 9.0, 10.0, 20.0, 30.0, 40.0];
        let ad = AttentionDims { t: 2, h: 2, hkv: 1, d: 2, s: 3 };
        let params = AttentionParams { scale: 1.0, sliding_window: 0 };
        let rows = Rows { q: &q, starts: &[1, 1], pos: &[0, -1], ad, params };
        assert_eq!(rows.attend(&k, &v), vec![10.0, 20.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0]);
        // window 1 at position 1 sees only slot 2
        let rows =
            Rows { q: &q, starts: &[1, 1], pos: &[1, 1], ad, params: AttentionParams { sliding_window: 1, ..params } };
        assert_eq!(&rows.attend(&k, &v)[..2], &[30.0, 40.0]);
    }

    #[test]
    fn keys_past_the_cache_are_an_error() {
        let q = Cpu.zeros(DType::F32, &[1, 2, 4]).unwrap();
        let cache = Cpu.zeros(DType::F32, &[8, 1, 4]).unwrap();
        let start = Cpu.tensor(&HostTensor::from_i32(&[1], &[5])).unwrap();
        let pos = Cpu.tensor(&HostTensor::from_i32(&[1], &[3])).unwrap();
        let params = AttentionParams { scale: 1.0, sliding_window: 0 };
        let r = attention(&q, &cache, &cache, &start, &pos, params, &q.clone());
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    }
}
