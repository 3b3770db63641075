//! Models: HF config parsing, weight loaders (safetensors, GGUF), tokenizer and chat
//! template, and the one decoder that serves Llama, Mistral and Qwen2 (flags, not copies).

pub mod kv_cache;
pub mod llama;

pub use kv_cache::KvCache;
pub use llama::{Llama, RunState, StepInputs};
