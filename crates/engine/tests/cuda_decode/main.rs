//! Decode on CUDA (runs on a GPU host only; `--features cuda`):
//! - a graph replay gives bit-identical logits and tokens to the eager step it came from,
//!   over 256 greedy steps at batch 1 and for 3 sequences in the 4-bucket, with a prefill
//!   interleaved between replays;
//! - the decode graph audits to kernel nodes only in `inline` and warm `cached` modes, and
//!   to one alloc + memcpy + free group per strided launch in `upload` mode;
//! - a forced capture failure falls back to eager for that bucket with the same tokens;
//! - programmatic dependent launch (`set_pdl`) gives the bits of plain launches, eager and
//!   replayed; a one-row step launches at most 7 kernels a layer (the fused projections);
//! - the model on CUDA agrees with transformers' goldens (f32) and with the CPU backend
//!   (bf16: greedy tokens, top-5 at the first difference, |logprob diff| <= 5e-2).
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
