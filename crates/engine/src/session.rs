//! One generation run from loaded model files: picks the backend (`--device`), loads the
//! weights in the compute dtype, builds the runner (and, on CUDA, the decode graphs), and
//! drives [`crate::generate`]. The one place where backend choice is made.

use crate::device::Device;
use crate::generate::{generate, Eager, Flow, Generation};
use crate::runner::{ModelRunner, RunnerConfig};
use crate::sampler::SamplingParams;
use crate::EngineError;
use encore_cuda::LaunchParamMode;
use encore_models::hub::ModelFiles;
use encore_models::Llama;
use encore_tensor::{Backend, DType};
use std::time::Instant;

#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub device: Device,
    /// None: f32 on the CPU, bf16 on CUDA.
    pub dtype: Option<DType>,
    /// None: the model's max positions, capped at 4096.
    pub max_ctx: Option<usize>,
    pub prefill_chunk: usize,
    /// Decode with captured graphs (CUDA only).
    pub graphs: bool,
    pub launch_params: LaunchParamMode,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            device: Device::Cpu,
            dtype: None,
            max_ctx: None,
            prefill_chunk: 512,
            graphs: true,
            launch_params: LaunchParamMode::Inline,
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
}

pub fn run_generate(
    files: &ModelFiles,
    cfg: &EngineConfig,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<(Generation, RunReport), EngineError> {
    let max_ctx = cfg.max_ctx.unwrap_or(files.config.max_position_embeddings.min(4096));
    if max_ctx == 0 {
        return Err(EngineError::Config("--max-ctx must be at least 1".into()));
    }
    let rc =
        RunnerConfig { max_seqs: prompts.len(), max_ctx, prefill_chunk: cfg.prefill_chunk, max_batch: prompts.len() };
    match cfg.device {
        Device::Cpu => {
            let b = encore_cpu::Cpu;
            let dtype = cfg.dtype.unwrap_or(DType::F32);
            let t0 = Instant::now();
            let mut runner = load(b, files, dtype, rc)?;
            let mut report = RunReport { device_name: "cpu".into(), dtype: Some(dtype), ..Default::default() };
            report.load_secs = t0.elapsed().as_secs_f64();
            let eos = &files.config.eos_token_ids;
            let out = generate(&mut runner, &mut Eager, prompts, params, eos, on_token)?;
            Ok((out, report))
        }
        Device::Cuda(ordinal) => run_cuda(ordinal, files, cfg, rc, prompts, params, on_token),
    }
}

fn load<B: Backend>(b: B, files: &ModelFiles, dtype: DType, rc: RunnerConfig) -> Result<ModelRunner<B>, EngineError> {
    let model = Llama::load(&b, files.config.clone(), files.weights.as_ref(), dtype, rc.max_ctx)?;
    ModelRunner::new(b, model, rc)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(
    ordinal: usize,
    _: &ModelFiles,
    _: &EngineConfig,
    _: RunnerConfig,
    _: &[Vec<u32>],
    _: &SamplingParams,
    _: impl FnMut(usize, u32) -> Flow,
) -> Result<(Generation, RunReport), EngineError> {
    Err(EngineError::Device(
        format!("cuda:{ordinal}"),
        "this encore was built without CUDA; rebuild with `--features cuda` (after scripts/setup-cuda.sh)".into(),
    ))
}

#[cfg(feature = "cuda")]
fn run_cuda(
    ordinal: usize,
    files: &ModelFiles,
    cfg: &EngineConfig,
    rc: RunnerConfig,
    prompts: &[Vec<u32>],
    params: &SamplingParams,
    on_token: impl FnMut(usize, u32) -> Flow,
) -> Result<(Generation, RunReport), EngineError> {
    use crate::graph_runner::GraphDecoder;
    let device = format!("cuda:{ordinal}");
    let b = encore_cuda::Cuda::new(ordinal).map_err(|e| EngineError::Device(device.clone(), e.to_string()))?;
    b.device().set_launch_mode(cfg.launch_params);
    let dtype = cfg.dtype.unwrap_or(DType::BF16);
    let t0 = Instant::now();
    let mut runner = load(b.clone(), files, dtype, rc)?;
    let mut report = RunReport { device_name: b.device().name(), dtype: Some(dtype), ..Default::default() };
    report.load_secs = t0.elapsed().as_secs_f64();
    let eos = files.config.eos_token_ids.clone();
    let out = if cfg.graphs {
        let t1 = Instant::now();
        runner.sampling = crate::generate::device_sampling(params); // baked into the graphs
        let mut graphs = GraphDecoder::capture(&mut runner, cfg.launch_params, None)?;
        report.capture_secs = t1.elapsed().as_secs_f64();
        report.fallbacks = graphs.fallbacks().to_vec();
        generate(&mut runner, &mut graphs, prompts, params, &eos, on_token)?
    } else {
        generate(&mut runner, &mut Eager, prompts, params, &eos, on_token)?
    };
    Ok((out, report))
}
