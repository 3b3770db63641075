//! `encore bench`: the decode-step benchmark (random-weight presets created on the GPU, or
//! a model folder's config) and `encore bench launch` (the launch-metadata micro-benchmark).
//! CUDA only: a build without the `cuda` feature says so.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `launch` runs the launch-metadata micro-benchmark instead of a model.
    what: Option<String>,
    /// Model shape(s), comma-separated: smollm2-135m, qwen2.5-0.5b, llama-3.2-1b,
    /// qwen2.5-1.5b, qwen2.5-7b, llama-3.1-8b (random weights created on the GPU).
    #[arg(long, default_value = "llama-3.2-1b")]
    preset: String,
    /// A model folder: its config.json shape is benchmarked (weights random).
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// Batch sizes, comma-separated.
    #[arg(long, default_value = "1,8")]
    batch: String,
    /// KV-cache positions per sequence.
    #[arg(long, default_value_t = 1024)]
    ctx: usize,
    /// Position every row decodes at.
    #[arg(long, default_value_t = 300)]
    pos: usize,
    /// Timed steps per mode (launch: repetitions).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Comma-separated; default all: eager, graph-upload, graph-cached, graph-inline
    /// (launch: upload, cached, inline).
    #[arg(long)]
    modes: Option<String>,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Position the timed prefill starts at (a chunk attending to earlier context).
    #[arg(long, default_value_t = 0)]
    prefill_depth: usize,
    /// f32, bf16 or f16 (default: bf16 on cuda, f32 on cpu).
    #[arg(long)]
    dtype: Option<String>,
    /// cuda, cuda:N, or cpu (a real model file's prefill and decode tok/s).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// launch: strided ops in the chain.
    #[arg(long, default_value_t = 256)]
    ops: usize,
    /// Also capture every decode bucket up to the largest --batch (as serving does at
    /// load) and report the total capture time and graph memory.
    #[arg(long)]
    capture_all: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn list<T: std::str::FromStr<Err = String>>(flag: &str, s: &str) -> Result<Vec<T>> {
    s.split(',').map(|x| x.trim().parse::<T>().map_err(|e| anyhow::anyhow!("{flag}: {e}"))).collect()
}

fn usizes(flag: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| match x.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{flag}: `{x}` is not a positive integer"),
        })
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    let dtype = |default: encore_tensor::DType| -> Result<encore_tensor::DType> {
        let Some(s) = &a.dtype else { return Ok(default) };
        match s.parse::<encore_tensor::DType>() {
            Ok(d) if d.is_float() => Ok(d),
            _ => bail!("--dtype: unknown dtype `{s}` (expected f32, bf16 or f16)"),
        }
    };
    let cpu_dtype = dtype(encore_tensor::DType::F32)?;
    let dtype = dtype(encore_tensor::DType::BF16)?;
    let ordinal = match a.device.parse::<encore_engine::Device>() {
        Ok(encore_engine::Device::Cuda(n)) => n,
        Ok(encore_engine::Device::Cpu) if a.what.is_none() => return bench_cpu(&a, cpu_dtype),
        Ok(encore_engine::Device::Cpu) => bail!("--device: `bench launch` measures CUDA launches; use cuda or cuda:N"),
        Err(e) => bail!("--device: {e}"),
    };
    match a.what.as_deref() {
        None => bench_model(&a, dtype, ordinal),
        Some("launch") => bench_launch(&a, dtype, ordinal),
        Some(x) => bail!("bench: unknown benchmark `{x}` (expected nothing or `launch`)"),
    }
}

/// `--device cpu`: a real model file (`--model`, default: the default model), prefill and
/// eager decode tok/s.
fn bench_cpu(a: &BenchArgs, dtype: encore_tensor::DType) -> Result<()> {
    use encore_engine::bench_cpu::{run_cpu_bench, CpuBenchConfig};
    let path = match &a.model {
        Some(m) => encore_models::hub::resolve_model(&m.display().to_string())?,
        None => encore_models::hub::default_model_path()?,
    };
    let files = encore_models::hub::open_model(&path)?;
    let cfg = CpuBenchConfig {
        dtype,
        batches: usizes("--batch", &a.batch)?,
        prefill_tokens: a.prefill,
        steps: a.steps.min(64),
        pos: a.pos,
    };
    let r = run_cpu_bench(&files, &cfg)?;
    let name = path.display().to_string();
    println!("{}", r.to_table(&name, dtype));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r.to_json(&name, dtype))?)
            .map_err(|e| anyhow::anyhow!("--json {}: {e}", p.display()))?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn bench_model(_: &BenchArgs, _: encore_tensor::DType, _: usize) -> Result<()> {
    bail!("bench: this encore was built without CUDA; rebuild with `--features cuda`")
}

#[cfg(not(feature = "cuda"))]
fn bench_launch(a: &BenchArgs, d: encore_tensor::DType, o: usize) -> Result<()> {
    bench_model(a, d, o)
}

#[cfg(feature = "cuda")]
fn bench_model(a: &BenchArgs, dtype: encore_tensor::DType, ordinal: usize) -> Result<()> {
    use encore_engine::bench::{run_bench, BenchConfig, BenchMode};
    let modes: Vec<BenchMode> =
        list("--modes", a.modes.as_deref().unwrap_or("eager,graph-upload,graph-cached,graph-inline"))?;
    let batches = usizes("--batch", &a.batch)?;
    let models: Vec<(String, encore_models::config::ModelConfig)> = match &a.model {
        Some(dir) => {
            vec![(dir.display().to_string(), encore_models::config::ModelConfig::from_file(&dir.join("config.json"))?)]
        }
        None => a
            .preset
            .split(',')
            .map(|p| Ok((p.trim().to_string(), encore_models::presets::preset(p.trim())?)))
            .collect::<Result<_>>()?,
    };
    let mut reports = Vec::new();
    for (name, model) in models {
        let cfg = BenchConfig {
            name,
            model,
            batches: batches.clone(),
            ctx: a.ctx,
            pos: a.pos,
            steps: a.steps,
            modes: modes.clone(),
            prefill_tokens: a.prefill,
            prefill_depth: a.prefill_depth,
            dtype,
            ordinal,
            capture_all: a.capture_all,
        };
        let r = run_bench(&cfg)?;
        println!("{}", r.to_table());
        reports.push(r.to_json());
    }
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)
            .map_err(|e| anyhow::anyhow!("--json {}: {e}", path.display()))?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn bench_launch(a: &BenchArgs, dtype: encore_tensor::DType, ordinal: usize) -> Result<()> {
    use encore_cuda::{CudaDevice, LaunchBenchConfig, LaunchParamMode};
    let modes: Vec<LaunchParamMode> = list("--modes", a.modes.as_deref().unwrap_or("upload,cached,inline"))?;
    let dev = CudaDevice::new(ordinal).map_err(|e| anyhow::anyhow!("--device cuda:{ordinal}: {e}"))?;
    let cfg = LaunchBenchConfig { ops: a.ops, reps: a.steps, dtype, modes, ..Default::default() };
    let r = encore_cuda::bench_launch(&dev, cfg)?;
    println!("{}", r.to_table());
    if let Some(path) = &a.json {
        std::fs::write(path, r.to_json()).map_err(|e| anyhow::anyhow!("--json {}: {e}", path.display()))?;
    }
    Ok(())
}
