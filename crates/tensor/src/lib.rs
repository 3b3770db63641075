//! encore's core types: dtypes, shapes and strided layouts, the by-value kernel launch
//! metadata, host tensors, and the backend contract every backend implements.
//!
//! This crate knows nothing of CUDA: the CPU and CUDA backends both implement
//! [`Backend`], and model code is written once against it.

mod backend;
pub mod check;
mod dtype;
mod error;
mod host;
mod layout;
mod meta;
pub mod quant;
pub mod rope;
pub mod testing;

pub use backend::{
    AttentionParams, Backend, BinaryOp, DecodeAttention, FusedMatmul, GluActivation, QInput, QkNorm, SampleParams,
    Tensor, UnaryOp, SAMPLE_UNIFORM_SCALE,
};
pub use dtype::DType;
pub use error::{Error, Result};
pub use host::HostTensor;
pub use layout::{Layout, MAX_RANK};
pub use meta::{StridedMeta, MAX_OPERANDS, META_ALL_CONTIGUOUS};
pub use quant::{HostQTensor, QTensor, QuantType};
