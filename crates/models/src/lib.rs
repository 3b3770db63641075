//! Models: HF config parsing, weight loaders (safetensors, GGUF), tokenizer and chat
//! template, and the one decoder that serves Llama, Mistral, Qwen2, Qwen3 and Gemma 3 (flags,
//! not copies).

pub mod chat;
pub mod chat_worker;
pub mod config;
pub mod dequant;
pub mod error;
pub mod gguf;
pub mod gguf_config;
pub mod golden;
pub mod hub;
pub mod hub_download;
pub mod kv_cache;
pub mod limits;
pub mod linear;
pub mod llama;
pub mod mlp;
pub mod presets;
pub mod pypi;
pub mod quantize;
pub mod safetensors;
pub mod sentencepiece;
pub mod step_inputs;
pub mod tokenizer;
pub mod weights;

pub use error::ModelError;
pub use kv_cache::KvCache;
pub use linear::{Embedding, Linear, LoadOptions};
pub use llama::{Llama, RunState};
pub use step_inputs::{HostInputs, InputDims, LogitRow, StepInputs, StepKind, TokenRow};
