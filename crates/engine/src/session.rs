//! Building an engine from model files: the one place where the backend is chosen
//! (`--device`), the weights are loaded in the compute dtype, the KV cache is sized from
//! memory, and (on CUDA) the decode graphs are captured. [`Engine`] is the small enum over
//! backends that the rest of the program (generate, the server's worker) talks to.

use crate::device::Device;
use crate::generate::{generate, Flow, Generation};
use crate::llm_engine::{EngineCounters, EngineGauges, LlmEngine, StepOutput};
use crate::model_runner::{Eager, ModelRunner, RunnerConfig};
use crate::sampler::SamplingParams;
use crate::sequence::{FinishReason, RequestId};
use crate::EngineError;
use encore_cuda::LaunchParamMode;
use encore_models::hub::ModelFiles;
use encore_models::{Llama, LoadOptions};
use encore_tensor::{Backend, DType, QuantType};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub device: Device,
    /// None: f32 on the CPU, bf16 on CUDA.
    pub dtype: Option<DType>,
    /// Positions per sequence; None: the model's max positions, capped at 4096.
    pub max_ctx: Option<usize>,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens per step (the prefill chunk).
    pub max_num_batched_tokens: usize,
    /// Slots per KV block.
    pub block_size: usize,
    /// KV blocks; None: sized from memory.
    pub kv_blocks: Option<usize>,
    /// CUDA: fraction of the device's memory this engine may use in all.
    pub gpu_memory_utilization: f64,
    /// CPU: bytes of KV cache (also capped at half the available memory).
    pub cpu_kv_bytes: usize,
    /// Decode with captured graphs (CUDA only).
    pub graphs: bool,
    /// Also capture graphs for steps with prefill rows of up to this many tokens (0: decode
    /// graphs only; capped at `max_num_batched_tokens`).
    pub graph_max_tokens: usize,
    pub launch_params: LaunchParamMode,
    /// CUDA: launch kernels with programmatic dependent launch (Hopper and newer).
    pub pdl: bool,
    /// Quantize float weights to this block type at load (`--quantize`); quantized GGUF
    /// tensors always stay in their blocks.
    pub quantize: Option<QuantType>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: Device::Cpu,
            dtype: None,
            max_ctx: None,
            max_num_seqs: 16,
            max_num_batched_tokens: 512,
            block_size: 16,
            kv_blocks: None,
            gpu_memory_utilization: 0.9,
            cpu_kv_bytes: 2 << 30,
            graphs: true,
            graph_max_tokens: 512,
            launch_params: LaunchParamMode::Inline,
            pdl: false,
            quantize: None,
        }
    }
}

/// What happened besides the tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    pub device_name: String,
    pub dtype: Option<DType>,
    pub load_secs: f64,
    /// Decode-graph capture, when graphs are on.
    pub capture_secs: f64,
    /// Buckets that run eagerly because their capture failed, with the reason.
    pub fallbacks: Vec<(usize, String)>,
    /// KV cache: blocks, tokens, bytes.
    pub kv_blocks: usize,
    pub kv_tokens: usize,
    pub kv_bytes: usize,
    pub max_model_len: usize,
}

impl RunReport {
    /// The start-up line for logs.
    pub fn kv_line(&self) -> String {
        format!(
            "KV cache: {} blocks, {} tokens, {:.2} GiB; context {} tokens",
            self.kv_blocks,
            self.kv_tokens,
            self.kv_bytes as f64 / (1u64 << 30) as f64,
            self.max_model_len
        )
    }
}

/// The engine over whichever backend `--device` chose.
pub enum Engine {
    Cpu(LlmEngine<encore_cpu::Cpu>),
    #[cfg(feature = "cuda")]
    Cuda(LlmEngine<encore_cuda::Cuda>),
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            Engine::Cpu($e) => $body,
            #[cfg(feature = "cuda")]
            Engine::Cuda($e) => $body,
        }
    };
}

impl Engine {
    pub fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<RequestId, EngineError> {
        each!(self, e => e.add_request(prompt, params))
    }
    pub fn step(&mut self) -> Result<Vec<StepOutput>, EngineError> {
        each!(self, e => e.step())
    }
    pub fn abort(&mut self, id: RequestId) -> bool {
        each!(self, e => e.abort(id))
    }
    pub fn finish(&mut self, id: RequestId, reason: FinishReason) -> bool {
        each!(self, e => e.finish(id, reason))
    }
    pub fn has_unfinished(&self) -> bool {
        each!(self, e => e.has_unfinished())
    }
    pub fn counters(&self) -> EngineCounters {
        each!(self, e => e.counters())
    }
    pub fn gauges(&self) -> EngineGauges {
        each!(self, e => e.gauges())
    }
    pub fn max_model_len(&self) -> usize {
        each!(self, e => e.max_model_len())
    }
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        on_token: impl FnMut(usize, u32) -> Flow,
    ) -> Result<Generation, EngineError> {
        each!(self, e => generate(e, prompts, params, on_token))
    }
}

/// Load the model and build the engine on `cfg.device`.
pub fn build_engine(files: &ModelFiles, cfg: &EngineConfig) -> Result<(Engine, RunReport), EngineError> {
    let max_ctx = cfg.max_ctx.unwrap_or(files.config.max_position_embeddings.min(4096));
    if max_ctx == 0 {
        return Err(EngineError::Config("--max-ctx must be at least 1".into()));
    }
    if cfg.block_size == 0 || cfg.block_size > 1024 {
        return Err(EngineError::Config(format!("--block-size must be in 1..=1024, got {}", cfg.block_size)));
    }
    if cfg.max_num_seqs == 0 {
        return Err(EngineError::Config("--max-num-seqs must be at least 1".into()));
    }
    if cfg.max_num_batched_tokens == 0 {
        return Err(EngineError::Config("--max-num-batched-tokens must be at least 1".into()));
    }
    if !(cfg.gpu_memory_utilization > 0.0 && cfg.gpu_memory_utilization <= 1.0) {
        return Err(EngineError::Config(format!(
            "--gpu-memory-utilization must be in (0, 1], got {}",
            cfg.gpu_memory_utilization
        )));
    }
    match cfg.device {
        Device::Cpu => {
            let dtype = cfg.dtype.unwrap_or(DType::F32);
            let t0 = Instant::now();
            let b = encore_cpu::Cpu;
            let opts = LoadOptions { quantize: cfg.quantize, ..Default::default() };
            let model = Llama::load_with(&b, files.config.clone(), files.weights.as_ref(), dtype, max_ctx, &opts)?;
            // never more than the running sequences can fill, nor half the free memory
            let avail = available_host_memory().map_or(usize::MAX, |a| a / 2);
            let need = cfg.max_num_seqs.saturating_mul(max_ctx.div_ceil(cfg.block_size) * cfg.block_size);
            let want = cfg.cpu_kv_bytes.min(need.saturating_mul(model.kv_bytes_per_token()));
            let (rc, mut report) = size_cache(&model, cfg, max_ctx, want.min(avail), avail)?;
            let runner = ModelRunner::new(b, model, rc)?;
            report.device_name = "cpu".into();
            report.dtype = Some(dtype);
            report.load_secs = t0.elapsed().as_secs_f64();
            let eos = files.config.eos_token_ids.clone();
            Ok((Engine::Cpu(LlmEngine::new(runner, Box::new(Eager), eos)), report))
        }
        Device::Cuda(ordinal) => build_cuda(ordinal, files, cfg, max_ctx),
    }
}

/// Size the KV cache: an explicit block count (checked against `available` bytes before
/// anything is allocated), or what `budget` bytes hold.
fn size_cache<B: Backend>(
    model: &Llama<B>,
    cfg: &EngineConfig,
    max_ctx: usize,
    budget: usize,
    available: usize,
) -> Result<(RunnerConfig, RunReport), EngineError> {
    let bs = cfg.block_size;
    let per_block = model.kv_bytes_per_token() * bs;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    let num_blocks = match cfg.kv_blocks {
        Some(n) => {
            let bytes = n.saturating_mul(per_block);
            if bytes > available {
                return Err(EngineError::Config(format!(
                    "--kv-blocks {n}: the KV cache needs {:.1} GiB; {:.1} GiB are available: lower --kv-blocks",
                    gib(bytes),
                    gib(available)
                )));
            }
            n
        }
        None => budget / per_block.max(1),
    };
    let max_num_seqs = cfg.max_num_seqs;
    let rc = RunnerConfig {
        block_size: bs,
        num_blocks,
        max_num_seqs,
        max_num_batched_tokens: cfg.max_num_batched_tokens.max(max_num_seqs),
        max_model_len: max_ctx,
    };
    if num_blocks < rc.max_blocks_per_seq() {
        return Err(EngineError::Config(format!(
            "the KV cache holds {} tokens ({:.2} GiB) but one sequence of --max-ctx {max_ctx} needs {} ({:.2} GiB): lower --max-ctx, or give the cache more memory (--kv-blocks, --gpu-memory-utilization, --kv-cache-gib)",
            num_blocks * bs,
            (num_blocks * per_block) as f64 / (1u64 << 30) as f64,
            rc.max_blocks_per_seq() * bs,
            (rc.max_blocks_per_seq() * per_block) as f64 / (1u64 << 30) as f64,
        )));
    }
    let report = RunReport {
        kv_blocks: num_blocks,
        kv_tokens: num_blocks * bs,
        kv_bytes: num_blocks * per_block,
        max_model_len: max_ctx,
        ..Default::default()
    };
    Ok((rc, report))
}

/// `MemAvailable` of /proc/meminfo, in bytes (None where it cannot be read).
pub fn available_host_memory() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Generate from `prompts` (one-shot): build the engine, run, report.
pub fn run_generate(
    files: &ModelFiles,
    cfg: &EngineConfig,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<(Generation, RunReport), EngineError> {
    let cfg = EngineConfig { max_num_seqs: prompts.len().max(1), ..cfg.clone() };
    let (mut engine, report) = build_engine(files, &cfg)?;
    let out = engine.generate(prompts, params, on_token)?;
    Ok((out, report))
}

#[cfg(not(feature = "cuda"))]
fn build_cuda(ordinal: usize, _: &ModelFiles, _: &EngineConfig, _: usize) -> Result<(Engine, RunReport), EngineError> {
    Err(EngineError::Device(
        format!("cuda:{ordinal}"),
        "this encore was built without CUDA; rebuild with `--features cuda` (after scripts/setup-cuda.sh)".into(),
    ))
}

/// Memory the graphs, cuBLAS workspaces and allocator slack may still take after the KV
/// cache is in place (decode graphs of every bucket measured at ~4 MiB on an H100).
#[cfg(feature = "cuda")]
const CUDA_RESERVE_BYTES: usize = 512 << 20;

#[cfg(feature = "cuda")]
fn build_cuda(
    ordinal: usize,
    files: &ModelFiles,
    cfg: &EngineConfig,
    max_ctx: usize,
) -> Result<(Engine, RunReport), EngineError> {
    use crate::graph_runner::GraphDecoder;
    let device = format!("cuda:{ordinal}");
    let b = encore_cuda::Cuda::new(ordinal).map_err(|e| EngineError::Device(device.clone(), e.to_string()))?;
    b.device().set_launch_mode(cfg.launch_params);
    b.device().set_pdl(cfg.pdl).map_err(|e| EngineError::Device(device.clone(), format!("--pdl: {e}")))?;
    let dtype = cfg.dtype.unwrap_or(DType::BF16);
    let t0 = Instant::now();
    let opts = LoadOptions { quantize: cfg.quantize, ..Default::default() };
    let model = Llama::load_with(&b, files.config.clone(), files.weights.as_ref(), dtype, max_ctx, &opts)?;
    let (free, total) = b.device().mem_info().map_err(|e| EngineError::Device(device.clone(), e.to_string()))?;
    let tokens = cfg.max_num_batched_tokens.max(cfg.max_num_seqs);
    let state = model.state_bytes(tokens, cfg.max_num_seqs);
    let others = ((1.0 - cfg.gpu_memory_utilization) * total as f64) as usize;
    let budget = free.saturating_sub(others + state + CUDA_RESERVE_BYTES);
    let (rc, mut report) = size_cache(&model, cfg, max_ctx, budget, free.saturating_sub(state))?;
    let mut runner = ModelRunner::new(b.clone(), model, rc)?;
    report.device_name = b.device().name();
    report.dtype = Some(dtype);
    report.load_secs = t0.elapsed().as_secs_f64();
    let eos = files.config.eos_token_ids.clone();
    let engine = if cfg.graphs {
        let t1 = Instant::now();
        let graphs = GraphDecoder::capture_all(&mut runner, cfg.launch_params, None, cfg.graph_max_tokens)?;
        report.capture_secs = t1.elapsed().as_secs_f64();
        report.fallbacks = graphs.fallbacks().to_vec();
        LlmEngine::new(runner, Box::new(graphs), eos)
    } else {
        LlmEngine::new(runner, Box::new(Eager), eos)
    };
    Ok((Engine::Cuda(engine), report))
}
