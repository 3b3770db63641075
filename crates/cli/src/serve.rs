//! `encore serve`: the OpenAI-compatible server. Flags are validated into an
//! `EngineConfig` (the engine thread's) and a `ServerConfig` (HTTP: address, key, limits);
//! the port is bound before the model loads, and requests get 503 until it is ready.

use anyhow::{bail, Result};
use clap::Args;
use encore_engine::{Device, EngineConfig, QueueLimits};
use encore_server::ServerConfig;
use encore_tensor::DType;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model: a folder, a .gguf file, or an `org/name` id from the local Hugging Face cache.
    /// Default: SmolLM2-135M-Instruct (fetched once into encore's cache).
    #[arg(long)]
    model: Option<String>,
    /// The `model` id clients send (default: the model folder or file name, or the `org/name`).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16 (default: f32 on cpu, bf16 on cuda).
    #[arg(long)]
    dtype: Option<String>,
    /// Positions per sequence (default: the model's, capped at 4096).
    #[arg(long)]
    max_ctx: Option<usize>,
    /// Sequences decoded together (default: 64 on cuda, 8 on cpu).
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// Tokens per step (the prefill chunk).
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// Slots per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// KV blocks (default: sized from memory).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// CUDA: fraction of the device's memory to use in all.
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// CPU: GiB of KV cache (capped at half the available memory).
    #[arg(long, default_value_t = 2.0)]
    kv_cache_gib: f64,
    /// Decode eagerly instead of replaying CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
    /// How kernels get their layout metadata: inline, cached or upload.
    #[arg(long, default_value = "inline")]
    launch_params: String,
    /// Requests in the engine at once; more wait in the queue.
    #[arg(long, default_value_t = 256)]
    max_concurrent: usize,
    /// Requests waiting beyond --max-concurrent; more are refused with 429.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let cfg = config(a)?;
    encore_server::run(cfg)?;
    Ok(())
}

fn config(a: ServeArgs) -> Result<ServerConfig> {
    let device: Device = a.device.parse().map_err(|e: String| anyhow::anyhow!("--device: {e}"))?;
    let dtype = match &a.dtype {
        Some(s) => match s.parse::<DType>() {
            Ok(d) if d.is_float() => Some(d),
            _ => bail!("--dtype: unknown dtype `{s}` (expected f32, bf16 or f16)"),
        },
        None => None,
    };
    let launch_params = a.launch_params.parse().map_err(|e: String| anyhow::anyhow!("--launch-params: {e}"))?;
    if !(a.kv_cache_gib > 0.0 && a.kv_cache_gib.is_finite()) {
        bail!("--kv-cache-gib must be > 0, got {}", a.kv_cache_gib);
    }
    if a.max_concurrent == 0 {
        bail!("--max-concurrent must be at least 1");
    }
    if a.max_body_bytes == 0 {
        bail!("--max-body-bytes must be at least 1");
    }
    if a.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        bail!("--api-key must not be empty");
    }
    let default_seqs = if device == Device::Cpu { 8 } else { 64 };
    let engine = EngineConfig {
        device,
        dtype,
        max_ctx: a.max_ctx,
        max_num_seqs: a.max_num_seqs.unwrap_or(default_seqs),
        max_num_batched_tokens: a.max_num_batched_tokens,
        block_size: a.block_size,
        kv_blocks: a.kv_blocks,
        gpu_memory_utilization: a.gpu_memory_utilization,
        cpu_kv_bytes: (a.kv_cache_gib * (1u64 << 30) as f64) as usize,
        graphs: !a.no_graphs,
        launch_params,
        quantize: None,
    };
    Ok(ServerConfig {
        host: a.host,
        port: a.port,
        model: a.model,
        served_model_name: a.served_model_name,
        api_key: a.api_key,
        max_body_bytes: a.max_body_bytes,
        limits: QueueLimits { max_concurrent: a.max_concurrent, max_queue: a.max_queue },
        engine,
    })
}
