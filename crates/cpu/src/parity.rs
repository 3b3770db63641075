//! The backend-parity suite, written once and generic over any [`Backend`]: the CPU
//! tests (`crates/cpu/tests/parity.rs`) and the CUDA tests call these very bodies.
//!
//! Each `<op>_cases` builds fresh random inputs (seed printed; replay with
//! `ENCORE_TEST_SEED`), never zeros, rounded to the dtype, in several layouts (contiguous,
//! offset, narrowed, transposed, broadcast where the op allows), for every float dtype;
//! runs the op; and compares the download with a float64 reference computed here, under
//! `encore_tensor::testing::tolerance`. Destinations are views over random storage, and
//! the elements around them must come back untouched. Each also checks that bad
//! arguments give the structured `encore_tensor::Error` variant, never a panic.
//!
//! A failing case panics with the op, layouts and dtype in the message.

mod attention;
mod decode_attention;
mod elementwise;
mod index;
mod inputs;
mod matmul;
mod qmatmul;
mod rope;
mod rows;
mod sample;

pub use attention::{attention_cases, reference as attention_reference, Paging};
pub use decode_attention::decode_attention_cases;
pub use elementwise::{binary_cases, copy_cases, gelu_mul_cases, memory_cases, silu_mul_cases, unary_cases};
pub use index::{embedding_cases, kv_write_cases};
pub use inputs::{input, output, Input, Output, View};
pub use matmul::matmul_cases;
pub use qmatmul::{act_block, qembedding_cases, qmatmul_cases, random_qtensor};
pub use rope::{rope_cases, rope_kv_write_cases};
pub use rows::{argmax_cases, rms_norm_cases, softmax_cases};
pub use sample::sample_cases;

use encore_tensor::Backend;

/// The quantized ops' cases (qmatmul, qembedding) in one call.
pub fn run_quant_cases<B: Backend>(b: &B) {
    qmatmul_cases(b);
    qembedding_cases(b);
}

/// Every parity case, in the order a forward pass meets the ops.
pub fn run_all<B: Backend>(b: &B) {
    memory_cases(b);
    copy_cases(b);
    embedding_cases(b);
    rms_norm_cases(b);
    matmul_cases(b);
    run_quant_cases(b);
    rope_cases(b);
    kv_write_cases(b);
    rope_kv_write_cases(b);
    attention_cases(b);
    decode_attention_cases(b);
    unary_cases(b);
    binary_cases(b);
    silu_mul_cases(b);
    gelu_mul_cases(b);
    softmax_cases(b);
    argmax_cases(b);
    sample_cases(b);
}
