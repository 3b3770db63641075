//! CPU storage: one typed vector behind an `RwLock`, which makes ops whose destination
//! aliases an input (the in-place residual add) sound. An op takes read guards on its
//! inputs, computes into a temporary, drops the guards, then takes one write guard on the
//! destination ([`with_reads`] then [`with_write`]). Read guards are taken in address
//! order, one per distinct storage, and a writer never holds a second lock, so ops running
//! on several threads over shared storages cannot deadlock. (One caveat: an op called from
//! inside a rayon task may be run by a worker that is waiting in another op's parallel loop
//! with read guards held; if it writes a storage that op reads, the two ops race anyway,
//! and here they deadlock.)

use crate::Cpu;
use encore_tensor::{DType, Error, Result, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

/// The storage of a CPU tensor. Views share it through `Tensor`'s `Arc`.
pub struct CpuStorage {
    data: RwLock<Data>,
    /// A bf16/f16 weight made by `upload`: its values widened to f32 once, so each matmul
    /// reads them in place instead of converting the weight again (3x slower than f32
    /// without it; the price is the f32 copy in memory). The first write drops it: the data
    /// then converts per use like any activation. Lock order: `data` first, then this.
    f32_copy: RwLock<Option<Vec<f32>>>,
}

/// The elements, one vector per dtype.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Data {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
}

impl Data {
    /// Zeros whose pages are written now (resident memory, as a device allocation is: the
    /// KV cache's size is real from the start, not faulted in while serving), and whose
    /// allocation fails with `None` instead of aborting.
    pub fn try_resident_zeros(dtype: DType, n: usize) -> Option<Data> {
        fn filled<T: Copy>(n: usize, zero: T) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            v.resize(n, zero); // writes every element (malloc + fill, not lazy calloc pages)
            Some(v)
        }
        Some(match dtype {
            DType::F32 => Data::F32(filled(n, 0.0)?),
            DType::BF16 => Data::BF16(filled(n, bf16::ZERO)?),
            DType::F16 => Data::F16(filled(n, f16::ZERO)?),
            DType::U32 => Data::U32(filled(n, 0)?),
            DType::I32 => Data::I32(filled(n, 0)?),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::BF16(_) => DType::BF16,
            Data::F16(_) => DType::F16,
            Data::U32(_) => DType::U32,
            Data::I32(_) => DType::I32,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::BF16(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::U32(v) => v.len(),
            Data::I32(v) => v.len(),
        }
    }

    /// Little-endian bytes as `dtype` (a trailing partial element is dropped; callers check).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Data {
        match dtype {
            DType::F32 => Data::F32(pod_vec(bytes)),
            DType::BF16 => Data::BF16(pod_vec(bytes)),
            DType::F16 => Data::F16(pod_vec(bytes)),
            DType::U32 => Data::U32(pod_vec(bytes)),
            DType::I32 => Data::I32(pod_vec(bytes)),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => bytemuck::cast_slice(v).to_vec(),
            Data::BF16(v) => bytemuck::cast_slice(v).to_vec(),
            Data::F16(v) => bytemuck::cast_slice(v).to_vec(),
            Data::U32(v) => bytemuck::cast_slice(v).to_vec(),
            Data::I32(v) => bytemuck::cast_slice(v).to_vec(),
        }
    }
}

/// Copy bytes into a fresh, well-aligned vector (`bytes` itself may be unaligned).
fn pod_vec<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut v = vec![T::zeroed(); n];
    bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
    v
}

impl CpuStorage {
    pub(crate) fn new(data: Data) -> Self {
        CpuStorage { data: RwLock::new(data), f32_copy: RwLock::new(None) }
    }

    /// Storage for uploaded (read-mostly) data: bf16/f16 also keep an f32 copy.
    pub(crate) fn with_f32_copy(data: Data) -> Self {
        const CHUNK: usize = 1 << 16;
        let widen = |n: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)| {
            let mut out = vec![0.0f32; n];
            out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| f(i * CHUNK, o));
            out
        };
        let copy = match &data {
            Data::BF16(v) => Some(widen(v.len(), &|at, o| v[at..at + o.len()].convert_to_f32_slice(o))),
            Data::F16(v) => Some(widen(v.len(), &|at, o| v[at..at + o.len()].convert_to_f32_slice(o))),
            _ => None,
        };
        CpuStorage { data: RwLock::new(data), f32_copy: RwLock::new(copy) }
    }

    /// The f32 copy of an uploaded bf16/f16 storage, if it is still valid. Take it only while
    /// holding this storage's read guard (`with_reads`), never before.
    pub(crate) fn f32_copy(&self) -> RwLockReadGuard<'_, Option<Vec<f32>>> {
        self.f32_copy.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn dtype(&self) -> DType {
        self.read().dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    // A poisoned lock only means another op panicked mid-write; the data is still a valid
    // vector, and ops must return errors rather than panic, so take the guard anyway.
    fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The view of `t` must lie inside its storage and agree on the dtype; a `Tensor` built by
/// `from_storage` with the wrong dims or dtype is caught here rather than by a panic.
fn validate(op: &'static str, t: &Tensor<Cpu>, data: &Data) -> Result<()> {
    // u32 <-> i32 views of one storage (`Tensor::bitcast`) share bits; `u32s`/`i32s` read either
    let ints = |d: DType| matches!(d, DType::U32 | DType::I32);
    if data.dtype() != t.dtype() && !(ints(data.dtype()) && ints(t.dtype())) {
        return Err(Error::DTypeMismatch { op, lhs: t.dtype(), rhs: data.dtype() });
    }
    let need = t.layout().required_len();
    if need > data.len() {
        return Err(Error::InvalidArgument {
            op,
            msg: format!("view {:?} needs {need} elements, the storage holds {}", t.layout(), data.len()),
        });
    }
    Ok(())
}

/// Run `f` with the data of each tensor in `ts` (same order), under read guards that are
/// released before this returns.
pub(crate) fn with_reads<R>(op: &'static str, ts: &[&Tensor<Cpu>], f: impl FnOnce(&[&Data]) -> Result<R>) -> Result<R> {
    let key = |t: &Tensor<Cpu>| t.storage() as *const CpuStorage as usize;
    let mut order: Vec<&Tensor<Cpu>> = ts.to_vec();
    order.sort_by_key(|t| key(t));
    order.dedup_by_key(|t| key(t));
    let guards: Vec<(usize, RwLockReadGuard<'_, Data>)> = order.iter().map(|t| (key(t), t.storage().read())).collect();
    let mut datas = Vec::with_capacity(ts.len());
    for t in ts {
        let (_, g) = guards.iter().find(|(k, _)| *k == key(t)).expect("every storage was locked above");
        validate(op, t, g)?;
        datas.push(&**g);
    }
    f(&datas)
}

/// Run `f` on the data of `t` under its write guard. Call it with no read guard held.
pub(crate) fn with_write<R>(op: &'static str, t: &Tensor<Cpu>, f: impl FnOnce(&mut Data) -> Result<R>) -> Result<R> {
    let mut g = t.storage().data.write().unwrap_or_else(PoisonError::into_inner);
    validate(op, t, &g)?;
    let mut copy = t.storage().f32_copy.write().unwrap_or_else(PoisonError::into_inner);
    *copy = None;
    drop(copy);
    f(&mut g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_tensor::Backend;

    #[test]
    fn bytes_round_trip_every_dtype() {
        for dt in [DType::F32, DType::BF16, DType::F16, DType::U32, DType::I32] {
            let bytes: Vec<u8> = (1..=4 * dt.size_in_bytes()).map(|i| i as u8).collect();
            let d = Data::from_bytes(dt, &bytes);
            assert_eq!((d.dtype(), d.len()), (dt, 4));
            assert_eq!(d.to_bytes(), bytes);
        }
    }

    #[test]
    fn reads_of_one_storage_twice_take_one_guard() {
        let x = Cpu.zeros(DType::F32, &[2, 3]).unwrap();
        let y = x.narrow(1, 1, 2).unwrap();
        let n = with_reads("t", &[&x, &y, &x], |d| Ok(d.iter().map(|d| d.len()).sum::<usize>())).unwrap();
        assert_eq!(n, 18);
        // the guards are gone: a write on the same storage does not block
        assert_eq!(with_write("t", &x, |d| Ok(d.len())).unwrap(), 6);
    }

    #[test]
    fn a_view_past_its_storage_is_an_error() {
        let s = Cpu.alloc(DType::F32, 4).unwrap();
        let t = Tensor::<Cpu>::from_storage(s, DType::F32, &[8]);
        assert!(matches!(with_reads("t", &[&t], |_| Ok(())), Err(Error::InvalidArgument { .. })));
        let s = Cpu.alloc(DType::F32, 4).unwrap();
        let t = Tensor::<Cpu>::from_storage(s, DType::BF16, &[4]);
        assert!(matches!(with_write("t", &t, |_| Ok(())), Err(Error::DTypeMismatch { .. })));
    }
}
