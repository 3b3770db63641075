//! Building parity inputs: fresh random values (never zero) rounded to the dtype, uploaded
//! and seen through one of several views, with their row-major values kept on the host for
//! the f64 reference; destination views whose surrounding elements must stay untouched.

use encore_tensor::testing::{round_to, Rng};
use encore_tensor::{Backend, DType, HostTensor, Layout, Tensor};

/// How a tensor of the wanted dims is laid out in its storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Contiguous,
    /// Contiguous, but starting one dim-0 slice into its storage.
    Offset,
    /// The last dim narrowed out of a wider one: rows with gaps, unit last stride.
    Narrowed,
    /// The last two dims stored swapped (`transpose(r-2, r-1)`): last stride is not 1.
    Transposed,
    /// The first two dims stored swapped (`transpose(0, 1)`): last stride stays 1.
    SwapLeading,
    /// Dim 0 broadcast from size 1 (stride 0).
    Broadcast,
}

/// The dims to allocate for `view` of `dims`.
fn storage_dims(dims: &[usize], view: View) -> Vec<usize> {
    let mut s = dims.to_vec();
    let r = s.len();
    match view {
        View::Contiguous => {}
        View::Offset => s[0] += 1,
        View::Narrowed => s[r - 1] += 3,
        View::Transposed => s.swap(r - 2, r - 1),
        View::SwapLeading => s.swap(0, 1),
        View::Broadcast => s[0] = 1,
    }
    s
}

/// `view` of `dims` over a tensor allocated with `storage_dims(dims, view)`.
pub fn apply<B: Backend>(base: &Tensor<B>, dims: &[usize], view: View) -> Tensor<B> {
    let r = dims.len();
    match view {
        View::Contiguous => Ok(base.clone()),
        View::Offset => base.narrow(0, 1, dims[0]),
        View::Narrowed => base.narrow(r - 1, 1, dims[r - 1]),
        View::Transposed => base.transpose(r - 2, r - 1),
        View::SwapLeading => base.transpose(0, 1),
        View::Broadcast => base.broadcast_as(dims),
    }
    .unwrap_or_else(|e| panic!("view {view:?} of {dims:?}: {e}"))
}

/// A tensor on the backend and its values in row-major order, as the backend stores them.
pub struct Input<B: Backend> {
    pub t: Tensor<B>,
    pub values: Vec<f32>,
}

impl<B: Backend> Input<B> {
    pub fn reference(&self) -> Vec<f64> {
        self.values.iter().map(|&v| v as f64).collect()
    }
}

/// Random values uniform in `range` (never zero), rounded to `dtype`, seen as `view`.
pub fn input<B: Backend>(
    b: &B,
    rng: &mut Rng,
    dtype: DType,
    dims: &[usize],
    view: View,
    range: (f32, f32),
) -> Input<B> {
    let sd = storage_dims(dims, view);
    let stored = round_to(dtype, &rng.vec(sd.iter().product(), range.0, range.1));
    input_from(b, dtype, &sd, &stored, dims, view)
}

/// `stored` (storage order, already representable in `dtype`) seen as `view` of `dims`.
pub fn input_from<B: Backend>(
    b: &B,
    dtype: DType,
    storage_dims: &[usize],
    stored: &[f32],
    dims: &[usize],
    view: View,
) -> Input<B> {
    let base = b.tensor(&HostTensor::from_f32_as(storage_dims, stored, dtype)).expect("upload");
    let t = apply(&base, dims, view);
    let values = t.layout().indices().map(|i| stored[i]).collect();
    Input { t, values }
}

/// A u32 / i32 tensor holding exactly `bits` (reinterpreted for i32).
pub fn ints<B: Backend>(b: &B, dtype: DType, dims: &[usize], bits: &[u32]) -> Tensor<B> {
    let host = HostTensor { dtype, ..HostTensor::from_u32(dims, bits) };
    b.tensor(&host).expect("upload")
}

pub fn i32s<B: Backend>(b: &B, values: &[i32]) -> Tensor<B> {
    b.tensor(&HostTensor::from_i32(&[values.len()], values)).expect("upload")
}

/// A destination view over random storage: after the op, [`Output::check_untouched`]
/// verifies the op wrote nothing outside the view.
pub struct Output<B: Backend> {
    pub t: Tensor<B>,
    base: Tensor<B>,
    before: Vec<f32>,
}

pub fn output<B: Backend>(b: &B, rng: &mut Rng, dtype: DType, dims: &[usize], view: View) -> Output<B> {
    let sd = storage_dims(dims, view);
    let before = round_to(dtype, &rng.vec(sd.iter().product(), -9.0, 9.0));
    let base = b.tensor(&HostTensor::from_f32_as(&sd, &before, dtype)).expect("upload");
    Output { t: apply(&base, dims, view), base, before }
}

impl<B: Backend> Output<B> {
    pub fn check_untouched(&self, b: &B, what: &str) {
        let after = download(b, &self.base);
        let mut inside = vec![false; after.len()];
        self.t.layout().indices().for_each(|i| inside[i] = true);
        for (i, (a, w)) in after.iter().zip(&self.before).enumerate() {
            assert!(inside[i] || a == w, "{what}: element {i} outside the destination view changed: {w} -> {a}");
        }
    }
}

/// The tensor's values in row-major order, as f32.
pub fn download<B: Backend>(b: &B, t: &Tensor<B>) -> Vec<f32> {
    b.download(t).expect("download").to_f32()
}

/// Row-major values of `dims` broadcast (numpy rules) to `to`.
pub fn broadcast(values: &[f32], dims: &[usize], to: &[usize]) -> Vec<f32> {
    let l = Layout::contiguous(dims).broadcast_as(to).expect("broadcastable");
    l.indices().map(|i| values[i]).collect()
}

/// `dims` with rank 9, one over the limit, small enough to allocate.
pub const RANK_9: [usize; 9] = [2, 1, 2, 1, 1, 2, 1, 1, 2];

/// A strided (so no backend can take a contiguous shortcut) `RANK_9` view.
pub fn rank_9<B: Backend>(b: &B, dtype: DType) -> Tensor<B> {
    let mut dims = RANK_9;
    dims[8] += 1;
    b.zeros(dtype, &dims).expect("alloc").narrow(8, 1, RANK_9[8]).expect("narrow")
}

/// Assert that a call returned the named error variant.
macro_rules! expect_err {
    ($what:expr, $call:expr, $pat:pat) => {{
        let r = $call;
        assert!(matches!(r, Err($pat)), "{}: expected {}, got {:?}", $what, stringify!($pat), r);
    }};
}
pub(crate) use expect_err;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_has_the_wanted_dims_and_the_right_contiguity() {
        let dims = [3, 4, 5];
        for (view, contiguous) in [
            (View::Contiguous, true),
            (View::Offset, true),
            (View::Narrowed, false),
            (View::Transposed, false),
            (View::SwapLeading, false),
            (View::Broadcast, false),
        ] {
            let l = Layout::contiguous(&storage_dims(&dims, view));
            let v = match view {
                View::Contiguous => l,
                View::Offset => l.narrow(0, 1, 3).unwrap(),
                View::Narrowed => l.narrow(2, 1, 5).unwrap(),
                View::Transposed => l.transpose(1, 2).unwrap(),
                View::SwapLeading => l.transpose(0, 1).unwrap(),
                View::Broadcast => l.broadcast_as(&dims).unwrap(),
            };
            assert_eq!((v.dims(), v.is_contiguous()), (&dims[..], contiguous), "{view:?}");
        }
    }

    #[test]
    fn broadcast_repeats_rows() {
        assert_eq!(broadcast(&[1.0, 2.0], &[2, 1], &[2, 3]), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    }
}
