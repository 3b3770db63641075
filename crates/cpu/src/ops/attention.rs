//! Causal attention over a paged KV cache, for prefill and decode alike.
//!
//! Query token `t` (row of `q: [T, H, D]`) at position `p = positions[t] >= 0` attends the
//! positions `j` in `max(0, p - window + 1)..=p` (window 0: all) of the sequence whose block
//! table is row `row_seq[t]` of `block_tables: [R, MB]`; key `j` lives at cache slot
//! `block_tables[row, j / bs] * bs + j % bs`. KV heads are grouped (query head `h` reads KV
//! head `h / (H / Hkv)`). Scores, softmax and the weighted sum of V are in f32; the output is
//! rounded once. A padded row (`p < 0`) gets zeros. The caches are read in place, in their
//! own dtype. Every slot a row reads is checked first (a bad table is an error, not garbage).

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
    block_tables: &Tensor<Cpu>,
    row_seq: &Tensor<Cpu>,
    positions: &Tensor<Cpu>,
    params: AttentionParams,
    dst: &Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "attention";
    let ad = check::attention(q, k_cache, v_cache, block_tables, row_seq, positions, params.block_size, dst)?;
    if q.numel() == 0 {
        return Ok(());
    }
    let out = with_reads(OP, &[q, k_cache, v_cache, block_tables, row_seq, positions], |data| {
        let qv = gather_f32(OP, data[0], q.layout())?;
        let tables = i32s(OP, data[3], block_tables.layout())?;
        let seqs = i32s(OP, data[4], row_seq.layout())?;
        let pos = i32s(OP, data[5], positions.layout())?;
        check_tables(tables, seqs, pos, &ad)?;
        let (ko, vo) = (k_cache.layout().offset(), v_cache.layout().offset());
        let rows = Rows { q: &qv, tables, seqs, pos, ad, params };
        match (data[1], data[2]) {
            (Data::F32(k), Data::F32(v)) => Ok(rows.attend(&k[ko..], &v[vo..])),
            (Data::BF16(k), Data::BF16(v)) => Ok(rows.attend(&k[ko..], &v[vo..])),
            (Data::F16(k), Data::F16(v)) => Ok(rows.attend(&k[ko..], &v[vo..])),
            (k, v) => Err(Error::DTypeMismatch { op: OP, lhs: k.dtype(), rhs: v.dtype() }),
        }
    })?;
    with_write(OP, dst, |data| scatter_f32(OP, data, dst.layout(), &out))
}

/// Every live row's table row exists, covers its position, and names blocks of the cache.
fn check_tables(tables: &[i32], seqs: &[i32], pos: &[i32], ad: &AttentionDims) -> Result<()> {
    let err = |msg: String| Err(Error::InvalidArgument { op: "attention", msg });
    let blocks = ad.s / ad.block_size;
    for (t, (&seq, &p)) in seqs.iter().zip(pos).enumerate() {
        if p < 0 {
            continue;
        }
        let Some(row) = usize::try_from(seq).ok().filter(|&r| r < ad.r) else {
            return err(format!("row {t} reads block-table row {seq} of {}", ad.r));
        };
        let used = p as usize / ad.block_size + 1;
        if used > ad.mb {
            return err(format!("row {t} at position {p} needs {used} blocks; the table has {}", ad.mb));
        }
        if let Some(&b) = tables[row * ad.mb..][..used].iter().find(|&&b| b < 0 || b as usize >= blocks) {
            return err(format!("row {t} reads block {b} of a {blocks}-block cache"));
        }
    }
    Ok(())
}

/// The per-call inputs shared by every `(t, h)` row; tables were checked against the cache.
struct Rows<'a> {
    q: &'a [f32],
    tables: &'a [i32],
    seqs: &'a [i32],
    pos: &'a [i32],
    ad: AttentionDims,
    params: AttentionParams,
}

impl Rows<'_> {
    /// `[T, H, D]` row-major output; `k`, `v` are the caches from their view offset.
    fn attend<T: Float>(&self, k: &[T], v: &[T]) -> Vec<f32> {
        let AttentionDims { h, hkv, d, mb, block_size: bs, .. } = self.ad;
        let (group, window) = (h / hkv, self.params.sliding_window as usize);
        let mut out = vec![0.0f32; self.q.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
            let (t, head) = (row / h, row % h);
            let Ok(p) = usize::try_from(self.pos[t]) else { return };
            let first = if window > 0 { (p + 1).saturating_sub(window) } else { 0 };
            let (table, kv_head) = (&self.tables[self.seqs[t] as usize * mb..][..mb], head / group);
            let at = |j: usize| ((table[j / bs] as usize * bs + j % bs) * hkv + kv_head) * d;
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
        // T=2, H=2, Hkv=1, D=2; a cache of 2 blocks of 2 slots; the sequence lives in block 1.
        let q = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let k = [9.0f32, 9.0, 9.0, 9.0, 0.5, 0.25, 1.0, 1.0];
        let v = [9.0f32, 9.0, 9.0, 9.0, 10.0, 20.0, 30.0, 40.0];
        let ad = AttentionDims { t: 2, h: 2, hkv: 1, d: 2, s: 4, r: 1, mb: 1, block_size: 2 };
        let params = AttentionParams { scale: 1.0, sliding_window: 0, block_size: 2 };
        let rows = Rows { q: &q, tables: &[1], seqs: &[0, 0], pos: &[0, -1], ad, params };
        assert_eq!(rows.attend(&k, &v), vec![10.0, 20.0, 10.0, 20.0, 0.0, 0.0, 0.0, 0.0]);
        // window 1 at position 1 sees only slot 3
        let params = AttentionParams { sliding_window: 1, ..params };
        let rows = Rows { q: &q, tables: &[1], seqs: &[0, 0], pos: &[1, 1], ad, params };
        assert_eq!(&rows.attend(&k, &v)[..2], &[30.0, 40.0]);
    }

    #[test]
    fn tables_that_leave_the_cache_are_an_error() {
        let q = Cpu.zeros(DType::F32, &[1, 2, 4]).unwrap();
        let cache = Cpu.zeros(DType::F32, &[8, 1, 4]).unwrap();
        let i32t = |dims: &[usize], v: &[i32]| Cpu.tensor(&HostTensor::from_i32(dims, v)).unwrap();
        let params = AttentionParams { scale: 1.0, sliding_window: 0, block_size: 4 };
        let (row0, pos) = (i32t(&[1], &[0]), i32t(&[1], &[5]));
        for (what, table, seq) in [
            ("block past the cache", i32t(&[1, 2], &[0, 2]), &row0),
            ("negative block", i32t(&[1, 2], &[-1, 0]), &row0),
            ("position past the table", i32t(&[1, 1], &[0]), &row0),
            ("table row past the tables", i32t(&[1, 2], &[0, 1]), &i32t(&[1], &[1])),
        ] {
            let r = attention(&q, &cache, &cache, &table, seq, &pos, params, &q.clone());
            assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{what}: {r:?}");
        }
    }
}
