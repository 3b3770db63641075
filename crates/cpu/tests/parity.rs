//! The backend-parity suite (`encore_cpu::parity`) run on the CPU backend, one test per op.

use encore_cpu::{parity, Cpu};

#[test]
fn memory() {
    parity::memory_cases(&Cpu);
}

#[test]
fn copy() {
    parity::copy_cases(&Cpu);
}

#[test]
fn unary() {
    parity::unary_cases(&Cpu);
}

#[test]
fn binary() {
    parity::binary_cases(&Cpu);
}

#[test]
fn silu_mul() {
    parity::silu_mul_cases(&Cpu);
}

#[test]
fn gelu_mul() {
    parity::gelu_mul_cases(&Cpu);
}

#[test]
fn matmul() {
    parity::matmul_cases(&Cpu);
}

#[test]
fn rms_norm() {
    parity::rms_norm_cases(&Cpu);
}

#[test]
fn softmax() {
    parity::softmax_cases(&Cpu);
}

#[test]
fn argmax() {
    parity::argmax_cases(&Cpu);
}

#[test]
fn rope() {
    parity::rope_cases(&Cpu);
}

#[test]
fn embedding() {
    parity::embedding_cases(&Cpu);
}

#[test]
fn kv_write() {
    parity::kv_write_cases(&Cpu);
}

#[test]
fn rope_kv_write() {
    parity::rope_kv_write_cases(&Cpu);
}

#[test]
fn attention() {
    parity::attention_cases(&Cpu);
}

#[test]
fn decode_attention() {
    parity::decode_attention_cases(&Cpu);
}

#[test]
fn sample() {
    parity::sample_cases(&Cpu);
}
