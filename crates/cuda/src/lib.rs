//! encore's CUDA backend: device + one stream, caching allocator, kernels, launch-parameter
//! modes, ParamCache, graph capture/replay/audit, cuBLAS(Lt). Declarations and re-exports only.
//!
//! Without the `cuda` feature only the GPU-free parts are built (no nvcc, no cudarc): the
//! launch-parameter cache (`ParamCache`, tested on the CPU), `LaunchParamMode` and its
//! counters, and the error type.

mod error;
mod modes;
pub mod param_cache;

#[cfg(any(feature = "cuda", test))]
mod alloc;
#[cfg(test)]
mod kernel_sources;

#[cfg(feature = "cuda")]
mod attention;
#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod bench_launch;
#[cfg(feature = "cuda")]
pub mod blas;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
pub mod graph;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
mod qmatmul;

pub use error::CudaError;
pub use modes::{info_words_into, LaunchParamMode, LaunchStats, MAX_INFO_WORDS};
pub use param_cache::{ArenaUpload, CacheGuard, CacheStats, ParamCache, PinScope, Pins};

#[cfg(feature = "cuda")]
pub use alloc::{size_class, PoolStats};
#[cfg(feature = "cuda")]
pub use attention::DECODE_MIN_CHUNK;
#[cfg(feature = "cuda")]
pub use backend::Cuda;
#[cfg(feature = "cuda")]
pub use bench_launch::{bench_launch, LaunchBenchConfig, LaunchBenchReport, LaunchBenchRow};
#[cfg(feature = "cuda")]
pub use blas::Blas;
#[cfg(feature = "cuda")]
pub use device::{CudaDevice, DeviceBuffer, DeviceConfig, Module, PreparedMeta};
#[cfg(feature = "cuda")]
pub use graph::{capture, Graph, GraphExec, NodeAudit};
#[cfg(feature = "cuda")]
pub use kernels::{Kernel, Kernels};
#[cfg(feature = "cuda")]
pub use qmatmul::QGEMV_MAX_M;
