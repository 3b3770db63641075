//! GPU tests of the CUDA kernels (run on a GPU host only; here they must compile):
//!
//! - the backend-parity suite of `encore_cpu::parity` (written once, run on every backend),
//!   one test per op and launch-parameter mode (inline, cached, upload); the strided ops
//!   also assert that the mode was really used (launch counters);
//! - direct CUDA-vs-CPU comparisons at model shapes the parity suite does not reach:
//!   attention at decode shapes (the tensor-core decode kernel with split-K, up to 64
//!   sequences at 8k positions), prefill shapes (the plan + tensor-core prefill kernel:
//!   chunks at depth over earlier context, several sequences' chunks in one launch, rows out
//!   of sequence order), every head-dim class, GQA from 1 to 128 heads a group, block sizes 1
//!   to 32, the f32 and scalar (unaligned) paths, each also replayed from a captured graph
//!   (kernel nodes only, bits equal to the eager launch); wide rows for rms_norm / softmax /
//!   argmax, embedding rows that are not whole 16-byte vectors.
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
