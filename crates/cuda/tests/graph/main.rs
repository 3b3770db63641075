//! GPU tests of the CUDA runtime (run on a GPU host only; here they must compile):
//!
//! - a graph replay gives bit-identical results to the eager run it was captured from, in
//!   every launch-parameter mode;
//! - node audits: inline and warm cached graphs are kernels only, upload mode is four nodes
//!   (mem-alloc, memcpy, kernel, mem-free) per strided op and one per contiguous op;
//! - one test per capture rule (allocation outside the pool, HtoD, DtoH, synchronise,
//!   ParamCache miss, module load, nested capture, a panic): each returns CaptureViolation
//!   (or unwinds) and leaves the device usable for an eager op and a new capture;
//! - exec update re-targets an instantiated graph at new buffers;
//! - cuBLAS gemm against an f64 reference, and captured without allocation nodes;
//! - the pool, staging copies, launch counters and the launch bench.
//!
//! The tests live in `gpu.rs` beside this file, included only with `--features cuda`;
//! without the feature this file holds one ignored placeholder, so `cargo test` reports
//! "1 ignored" instead of a misleading "0 passed".

#[cfg(feature = "cuda")]
include!("gpu.rs");

#[cfg(not(feature = "cuda"))]
#[test]
#[ignore = "needs --features cuda and a GPU"]
fn gpu_tests_need_the_cuda_feature_and_a_gpu() {}
