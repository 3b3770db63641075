//! The one error type of the tensor layer, shared by every backend so that bad arguments
//! give the same structured error on CPU and CUDA.

use crate::DType;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch, {lhs:?} vs {rhs:?}")]
    ShapeMismatch { op: &'static str, lhs: Vec<usize>, rhs: Vec<usize> },
    #[error("{op}: dtype mismatch, {lhs} vs {rhs}")]
    DTypeMismatch { op: &'static str, lhs: DType, rhs: DType },
    #[error("{op}: dtype {dtype} is not supported")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: rank {rank} is over the limit of {max}")]
    RankTooLarge { op: &'static str, rank: usize, max: usize },
    #[error("{op}: dim {dim} out of range for rank {rank}")]
    DimOutOfRange { op: &'static str, dim: usize, rank: usize },
    #[error("{op}: range {start}..{end} out of bounds for dim {dim} of size {size}")]
    NarrowOutOfBounds { op: &'static str, dim: usize, start: usize, end: usize, size: usize },
    #[error("{op}: cannot broadcast {from:?} to {to:?}")]
    BroadcastMismatch { op: &'static str, from: Vec<usize>, to: Vec<usize> },
    #[error("{op}: {numel} elements do not fit the shape {shape:?}")]
    ElementCount { op: &'static str, numel: usize, shape: Vec<usize> },
    #[error("{op}: the layout must be {expected}")]
    LayoutRequired { op: &'static str, expected: &'static str },
    #[error("{op}: {numel} elements exceed the 32-bit index limit")]
    TooLarge { op: &'static str, numel: usize },
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument { op: &'static str, msg: String },
    #[error("{op}: tensors live on different backends or devices")]
    DeviceMismatch { op: &'static str },
    /// Host<->device interaction, allocation or a cache miss while a stream is capturing.
    #[error("capture violation: {op} is not allowed while the stream is capturing")]
    CaptureViolation { op: String },
    /// A backend failure (driver call, library status), with the call that failed.
    #[error("{backend}: {msg}")]
    Backend { backend: &'static str, msg: String },
}
