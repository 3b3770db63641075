//! Walking strided views: the element offsets of a layout in row-major order, and gathering
//! a view into a contiguous vector / scattering one back, converting float dtypes through
//! f32 (exact for every float dtype; rounding happens once, on store).

use crate::storage::Data;
use encore_tensor::{DType, Error, Layout, Result};
use half::{bf16, f16};

/// A float element type: converts to and from f32 (round to nearest even on the way back).
pub(crate) trait Float: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Float for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Float for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Float for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

/// Call `f` with the storage offset of every element of `layout`, in row-major order.
pub(crate) fn for_each_offset(layout: &Layout, mut f: impl FnMut(usize)) {
    if layout.numel() == 0 {
        return;
    }
    if layout.is_contiguous() {
        (layout.offset()..layout.offset() + layout.numel()).for_each(f);
        return;
    }
    let l = &Layout::coalesce(&[layout])[0];
    let (dims, strides) = (l.dims(), l.strides());
    let r = l.rank();
    let (inner, inner_stride) = (dims[r - 1], strides[r - 1]);
    // An odometer over the outer dims; the innermost dim is a plain loop.
    let mut counter = vec![0usize; r - 1];
    let mut base = l.offset();
    loop {
        for i in 0..inner {
            f(base + i * inner_stride);
        }
        let mut d = r - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            counter[d] += 1;
            base += strides[d];
            if counter[d] < dims[d] {
                break;
            }
            base -= strides[d] * dims[d];
            counter[d] = 0;
        }
    }
}

/// The elements of the view, in row-major order, mapped by `f`.
pub(crate) fn gather_with<T: Copy, U>(src: &[T], layout: &Layout, f: impl Fn(T) -> U) -> Vec<U> {
    if layout.is_contiguous() {
        return src[layout.offset()..layout.offset() + layout.numel()].iter().map(|&x| f(x)).collect();
    }
    let mut out = Vec::with_capacity(layout.numel());
    for_each_offset(layout, |i| out.push(f(src[i])));
    out
}

/// Store `values` (row-major) into the view, mapped by `f`.
pub(crate) fn scatter_with<T: Copy, U: Copy>(dst: &mut [T], layout: &Layout, values: &[U], f: impl Fn(U) -> T) {
    debug_assert_eq!(values.len(), layout.numel());
    let mut it = values.iter();
    for_each_offset(layout, |i| {
        if let Some(&v) = it.next() {
            dst[i] = f(v);
        }
    });
}

/// The view as f32 values (float dtypes only).
pub(crate) fn gather_f32(op: &'static str, data: &Data, layout: &Layout) -> Result<Vec<f32>> {
    match data {
        Data::F32(v) => Ok(gather_with(v, layout, |x| x)),
        Data::BF16(v) => Ok(gather_with(v, layout, Float::to_f32)),
        Data::F16(v) => Ok(gather_with(v, layout, Float::to_f32)),
        d => Err(Error::UnsupportedDType { op, dtype: d.dtype() }),
    }
}

/// Store f32 values into the view, rounding once to the storage dtype.
pub(crate) fn scatter_f32(op: &'static str, data: &mut Data, layout: &Layout, values: &[f32]) -> Result<()> {
    match data {
        Data::F32(v) => scatter_with(v, layout, values, |x| x),
        Data::BF16(v) => scatter_with(v, layout, values, Float::from_f32),
        Data::F16(v) => scatter_with(v, layout, values, Float::from_f32),
        d => return Err(Error::UnsupportedDType { op, dtype: d.dtype() }),
    }
    Ok(())
}

/// The view as a contiguous `Data` of the same dtype (an exact copy).
pub(crate) fn gather(data: &Data, layout: &Layout) -> Data {
    match data {
        Data::F32(v) => Data::F32(gather_with(v, layout, |x| x)),
        Data::BF16(v) => Data::BF16(gather_with(v, layout, |x| x)),
        Data::F16(v) => Data::F16(gather_with(v, layout, |x| x)),
        Data::U32(v) => Data::U32(gather_with(v, layout, |x| x)),
        Data::I32(v) => Data::I32(gather_with(v, layout, |x| x)),
    }
}

/// Store a contiguous `Data` into the view. Same dtype: an exact copy; float to float: a
/// cast (through f32, which holds every bf16 and f16 value exactly).
pub(crate) fn scatter(op: &'static str, data: &mut Data, layout: &Layout, values: &Data) -> Result<()> {
    match (data, values) {
        (Data::F32(d), Data::F32(s)) => scatter_with(d, layout, s, |x| x),
        (Data::BF16(d), Data::BF16(s)) => scatter_with(d, layout, s, |x| x),
        (Data::F16(d), Data::F16(s)) => scatter_with(d, layout, s, |x| x),
        (Data::U32(d), Data::U32(s)) => scatter_with(d, layout, s, |x| x),
        (Data::I32(d), Data::I32(s)) => scatter_with(d, layout, s, |x| x),
        // u32 <-> i32 views of one storage (`Tensor::bitcast`): same bits
        (Data::U32(d), Data::I32(s)) => scatter_with(d, layout, s, |x| x as u32),
        (Data::I32(d), Data::U32(s)) => scatter_with(d, layout, s, |x| x as i32),
        (d, s) if d.dtype().is_float() && s.dtype().is_float() => {
            let values = gather_f32(op, s, &Layout::contiguous(&[s.len()]))?;
            scatter_f32(op, d, layout, &values)?;
        }
        (d, s) => return Err(Error::DTypeMismatch { op, lhs: s.dtype(), rhs: d.dtype() }),
    }
    Ok(())
}

/// The contiguous f32 elements of a view (rope's cos / sin tables).
pub(crate) fn f32s<'a>(op: &'static str, data: &'a Data, layout: &Layout) -> Result<&'a [f32]> {
    match data {
        Data::F32(v) if layout.is_contiguous() => Ok(&v[layout.offset()..layout.offset() + layout.numel()]),
        Data::F32(_) => Err(Error::LayoutRequired { op, expected: "contiguous" }),
        d => Err(Error::DTypeMismatch { op, lhs: d.dtype(), rhs: DType::F32 }),
    }
}

/// The contiguous i32 elements of a view (positions, slots, sequence starts).
pub(crate) fn i32s<'a>(op: &'static str, data: &'a Data, layout: &Layout) -> Result<&'a [i32]> {
    match data {
        Data::I32(v) if layout.is_contiguous() => Ok(&v[layout.offset()..layout.offset() + layout.numel()]),
        // a u32 storage seen through `Tensor::bitcast`: same bits
        Data::U32(v) if layout.is_contiguous() => {
            Ok(bytemuck::cast_slice(&v[layout.offset()..layout.offset() + layout.numel()]))
        }
        Data::I32(_) | Data::U32(_) => Err(Error::LayoutRequired { op, expected: "contiguous" }),
        d => Err(Error::DTypeMismatch { op, lhs: d.dtype(), rhs: DType::I32 }),
    }
}

/// The contiguous u32 elements of a view (token ids).
pub(crate) fn u32s<'a>(op: &'static str, data: &'a Data, layout: &Layout) -> Result<&'a [u32]> {
    match data {
        Data::U32(v) if layout.is_contiguous() => Ok(&v[layout.offset()..layout.offset() + layout.numel()]),
        // an i32 storage seen through `Tensor::bitcast` (the packed step inputs): same bits
        Data::I32(v) if layout.is_contiguous() => {
            Ok(bytemuck::cast_slice(&v[layout.offset()..layout.offset() + layout.numel()]))
        }
        Data::U32(_) | Data::I32(_) => Err(Error::LayoutRequired { op, expected: "contiguous" }),
        d => Err(Error::DTypeMismatch { op, lhs: d.dtype(), rhs: DType::U32 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(l: &Layout) -> Vec<usize> {
        let mut v = Vec::new();
        for_each_offset(l, |i| v.push(i));
        v
    }

    #[test]
    fn offsets_match_index_of_for_every_kind_of_view() {
        let base = Layout::contiguous(&[3, 4, 5]);
        let views = [
            base.clone(),
            base.transpose(0, 2).unwrap(),
            base.narrow(2, 1, 3).unwrap(),
            base.narrow(0, 1, 2).unwrap().permute(&[2, 0, 1]).unwrap(),
            Layout::contiguous(&[1, 4, 1]).broadcast_as(&[3, 4, 5]).unwrap(),
            base.narrow(1, 2, 0).unwrap(),
        ];
        for l in &views {
            let want: Vec<usize> = l.indices().collect();
            assert_eq!(offsets(l), want, "{l:?}");
        }
    }

    #[test]
    fn gather_then_scatter_is_the_identity_on_a_transposed_view() {
        let src: Vec<f32> = (0..12).map(|i| i as f32 + 0.5).collect();
        let l = Layout::contiguous(&[3, 4]).transpose(0, 1).unwrap();
        let g = gather_with(&src, &l, |x| x);
        assert_eq!(&g[..4], &[0.5, 4.5, 8.5, 1.5]);
        let mut back = vec![0.0f32; 12];
        scatter_with(&mut back, &l, &g, |x| x);
        assert_eq!(back, src);
    }

    #[test]
    fn scatter_casts_between_floats_and_refuses_ints() {
        let mut d = Data::try_resident_zeros(DType::BF16, 2).unwrap();
        scatter("t", &mut d, &Layout::contiguous(&[2]), &Data::F32(vec![1.0, 1.0 + 1.0 / 256.0])).unwrap();
        // 1 + 2^-8 is a tie between two bf16 values: round to even gives 1.0
        assert_eq!(d, Data::BF16(vec![bf16::ONE, bf16::ONE]));
        let err = scatter("t", &mut d, &Layout::contiguous(&[2]), &Data::U32(vec![1, 2]));
        assert!(matches!(err, Err(Error::DTypeMismatch { .. })));
    }
}
