//! Ops that move whole rows by index: the embedding lookup and writing K / V into their
//! cache slots. Rows are copied in their own dtype, bit for bit. Indices are checked
//! against the table / cache size, so a bad id is an error rather than a panic.

use crate::storage::{with_reads, with_write, Data};
use crate::strided::{gather, i32s, scatter, u32s};
use crate::Cpu;
use encore_tensor::{check, Error, Result, StridedMeta, Tensor};

pub(crate) fn embedding(ids: &Tensor<Cpu>, table: &Tensor<Cpu>, dst: &Tensor<Cpu>) -> Result<()> {
    const OP: &str = "embedding";
    let (_t, c, v) = check::embedding(ids, table, dst)?;
    let rows = with_reads(OP, &[ids, table], |d| {
        let ids = u32s(OP, d[0], ids.layout())?;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= v) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("token id {id} is out of range for {v} rows") });
        }
        let off = table.layout().offset();
        Ok(match d[1] {
            Data::F32(t) => Data::F32(take_rows(&t[off..], c, ids)),
            Data::BF16(t) => Data::BF16(take_rows(&t[off..], c, ids)),
            Data::F16(t) => Data::F16(take_rows(&t[off..], c, ids)),
            Data::U32(t) => Data::U32(take_rows(&t[off..], c, ids)),
            Data::I32(t) => Data::I32(take_rows(&t[off..], c, ids)),
        })
    })?;
    with_write(OP, dst, |d| scatter(OP, d, dst.layout(), &rows))
}

fn take_rows<T: Copy>(table: &[T], c: usize, ids: &[u32]) -> Vec<T> {
    ids.iter().flat_map(|&id| &table[id as usize * c..(id as usize + 1) * c]).copied().collect()
}

pub(crate) fn kv_write(
    k: &Tensor<Cpu>,
    v: &Tensor<Cpu>,
    k_cache: &Tensor<Cpu>,
    v_cache: &Tensor<Cpu>,
    slot_mapping: &Tensor<Cpu>,
) -> Result<()> {
    const OP: &str = "kv_write";
    let (_t, hkv, d, s) = check::kv_write(k, v, k_cache, v_cache, slot_mapping)?;
    StridedMeta::exact(OP, &[k.layout(), v.layout()])?;
    let (k_rows, v_rows, slots) = with_reads(OP, &[k, v, slot_mapping], |data| {
        let slots = i32s(OP, data[2], slot_mapping.layout())?;
        if let Some(&slot) = slots.iter().find(|&&slot| slot >= 0 && slot as usize >= s) {
            return Err(Error::InvalidArgument { op: OP, msg: format!("slot {slot} is out of range for {s} slots") });
        }
        Ok((gather(data[0], k.layout()), gather(data[1], v.layout()), slots.to_vec()))
    })?;
    let row = hkv * d;
    for (cache, rows) in [(k_cache, &k_rows), (v_cache, &v_rows)] {
        let off = cache.layout().offset();
        with_write(OP, cache, |data| {
            match (data, rows) {
                (Data::F32(c), Data::F32(r)) => put_rows(&mut c[off..], row, r, &slots),
                (Data::BF16(c), Data::BF16(r)) => put_rows(&mut c[off..], row, r, &slots),
                (Data::F16(c), Data::F16(r)) => put_rows(&mut c[off..], row, r, &slots),
                (c, r) => return Err(Error::DTypeMismatch { op: OP, lhs: r.dtype(), rhs: c.dtype() }),
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Row `t` of `rows` goes to row `slots[t]` of `cache`; negative slots (padding) are skipped.
fn put_rows<T: Copy>(cache: &mut [T], row: usize, rows: &[T], slots: &[i32]) {
    for (t, &slot) in slots.iter().enumerate() {
        if slot >= 0 {
            let slot = slot as usize;
            cache[slot * row..(slot + 1) * row].copy_from_slice(&rows[t * row..(t + 1) * row]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::{Backend, DType, HostTensor};

    #[test]
    fn put_rows_skips_padding_and_take_rows_repeats() {
        let mut cache = [0u32; 6];
        put_rows(&mut cache, 2, &[1, 2, 3, 4, 5, 6], &[2, -1, 0]);
        assert_eq!(cache, [5, 6, 0, 0, 1, 2]);
        assert_eq!(take_rows(&cache, 2, &[2, 2, 0]), vec![1, 2, 1, 2, 5, 6]);
    }

    #[test]
    fn out_of_range_ids_and_slots_are_errors() {
        let table = Cpu.tensor(&HostTensor::from_f32(&[3, 2], &[1.0; 6])).unwrap();
        let ids = Cpu.tensor(&HostTensor::from_u32(&[2], &[0, 3])).unwrap();
        let out = Cpu.zeros(DType::F32, &[2, 2]).unwrap();
        assert!(matches!(embedding(&ids, &table, &out), Err(Error::InvalidArgument { .. })));
        let k = Cpu.zeros(DType::F32, &[2, 1, 2]).unwrap();
        let cache = Cpu.zeros(DType::F32, &[4, 1, 2]).unwrap();
        let slots = Cpu.tensor(&HostTensor::from_i32(&[2], &[-1, 4])).unwrap();
        assert!(matches!(kv_write(&k, &k, &cache, &cache, &slots), Err(Error::InvalidArgument { .. })));
    }
}
