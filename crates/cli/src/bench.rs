//! `encore bench`: the decode-step benchmark (random-weight presets created on the GPU, or
//! a model folder's config) and `encore bench launch` (the launch-metadata micro-benchmark).
//! CUDA only: a build without the `cuda` feature says so, after the flags were checked.

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// `launch` runs the launch-metadata micro-benchmark instead of a model.
    what: Option<String>,
    /// Model shape(s), comma-separated: smollm2-135m, qwen2.5-0.5b, llama-3.2-1b,
    /// qwen2.5-1.5b, qwen2.5-7b, llama-3.1-8b, qwen3-0.6b, gemma3-270m, gemma3-1b (random
    /// weights created on the GPU).
    /// (Default llama-3.2-1b; CUDA only: the CPU bench runs a real model file.)
    #[arg(long)]
    preset: Option<String>,
    /// A model folder: its config.json shape is benchmarked (weights random); or a model
    /// file (`.gguf`, `.safetensors` beside its config.json): its own weights, quantized
    /// GGUF blocks kept quantized.
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
    /// Random weights as random blocks of a ggml type (q8_0, q4_0, q4_1, q4_k, q5_k, q6_k)
    /// instead of floats: the quantized kernels at a preset's shape, without a file.
    #[arg(long)]
    quantize: Option<String>,
    /// Launch kernels with programmatic dependent launch (Hopper and newer): run the bench
    /// with and without it in one call to measure its effect.
    #[arg(long)]
    pdl: bool,
    /// Fewest keys a split of the decode attention takes (a tuning knob: the default is the
    /// measured choice). Short contexts run fewer splits, down to one with no merge.
    #[arg(long, value_name = "KEYS", value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    decode_min_chunk: Option<u32>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn usizes(flag: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| match x.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{flag}: `{x}` is not a positive integer"),
        })
        .collect()
}

/// `--dtype`, or `default` when not given.
fn dtype_or(a: &BenchArgs, default: encore_tensor::DType) -> Result<encore_tensor::DType> {
    let Some(s) = &a.dtype else { return Ok(default) };
    match s.parse::<encore_tensor::DType>() {
        Ok(d) if d.is_float() => Ok(d),
        _ => bail!("--dtype: unknown dtype `{s}` (expected f32, bf16 or f16)"),
    }
}

/// The flags, validated before anything needs CUDA: a build without it names the wrong flag
/// first, and only then says that CUDA is missing.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Checked {
    dtype: encore_tensor::DType,
    ordinal: usize,
    /// `--modes` (or the default list), each a valid mode of the benchmark chosen.
    modes: Vec<String>,
    batches: Vec<usize>,
    /// (name, shape) of each preset, or of `--model`'s config.json.
    models: Vec<(String, encore_models::config::ModelConfig)>,
    /// `--model` when it is a file: the weights to load.
    weights: Option<std::path::PathBuf>,
    /// `--quantize`: random blocks of this type.
    quant: Option<encore_tensor::QuantType>,
}

/// `eager` or `graph-<launch mode>` (encore_engine::bench::BenchMode, which needs CUDA).
fn check_model_mode(m: &str) -> Result<()> {
    match m.strip_prefix("graph-") {
        _ if m == "eager" => Ok(()),
        Some(p) if p.parse::<encore_cuda::LaunchParamMode>().is_ok() => Ok(()),
        _ => bail!("--modes: unknown mode `{m}` (expected eager, graph-upload, graph-cached or graph-inline)"),
    }
}

fn check(a: &BenchArgs) -> Result<Checked> {
    let dtype = dtype_or(a, encore_tensor::DType::BF16)?;
    let ordinal = match a.device.parse::<encore_engine::Device>() {
        Ok(encore_engine::Device::Cuda(n)) => n,
        Ok(encore_engine::Device::Cpu) => bail!("--device: `bench launch` measures CUDA launches; use cuda or cuda:N"),
        Err(e) => bail!("--device: {e}"),
    };
    let launch = match a.what.as_deref() {
        None => false,
        Some("launch") => true,
        Some(x) => bail!("bench: unknown benchmark `{x}` (expected nothing or `launch`)"),
    };
    if a.steps == 0 {
        bail!("--steps: must be at least 1");
    }
    let default_modes = if launch { "upload,cached,inline" } else { "eager,graph-upload,graph-cached,graph-inline" };
    let modes: Vec<String> =
        a.modes.as_deref().unwrap_or(default_modes).split(',').map(|m| m.trim().to_string()).collect();
    for m in &modes {
        if launch {
            m.parse::<encore_cuda::LaunchParamMode>().map_err(|e| anyhow::anyhow!("--modes: {e}"))?;
        } else {
            check_model_mode(m)?;
        }
    }
    if launch {
        if a.ops == 0 {
            bail!("--ops: must be at least 1");
        }
        if a.pdl || a.decode_min_chunk.is_some() {
            bail!("--pdl, --decode-min-chunk: `bench launch` measures the launch-metadata modes; they are flags of the model bench");
        }
        return Ok(Checked {
            dtype,
            ordinal,
            modes,
            batches: Vec::new(),
            models: Vec::new(),
            weights: None,
            quant: None,
        });
    }
    let batches = usizes("--batch", &a.batch)?;
    if a.ctx == 0 {
        bail!("--ctx: must be at least 1");
    }
    if a.pos >= a.ctx {
        bail!("--pos: {} is not below --ctx {}", a.pos, a.ctx);
    }
    if a.prefill == 0 || a.prefill_depth + a.prefill > a.ctx {
        bail!(
            "--prefill: {} tokens at --prefill-depth {} must be at least 1 and fit in --ctx {}",
            a.prefill,
            a.prefill_depth,
            a.ctx
        );
    }
    let weights = a.model.as_ref().filter(|p| p.is_file()).cloned();
    if weights.is_some() && a.preset.is_some() {
        bail!("--preset: give either a preset or a model file with --model, not both");
    }
    let quant = match &a.quantize {
        None => None,
        Some(_) if weights.is_some() => {
            bail!("--quantize: random blocks replace random weights; a model file brings its own")
        }
        Some(s) => Some(encore_tensor::QuantType::parse(s).ok_or_else(|| {
            anyhow::anyhow!("--quantize: unknown type `{s}` (expected q8_0, q4_0, q4_1, q4_k, q5_k or q6_k)")
        })?),
    };
    let models: Vec<(String, encore_models::config::ModelConfig)> = match &a.model {
        Some(file) if file.is_file() => {
            // the config only (a GGUF's metadata, or the config.json beside the file)
            let files = encore_models::hub::open_model(file).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
            vec![(file.display().to_string(), files.config)]
        }
        Some(dir) => {
            vec![(dir.display().to_string(), encore_models::config::ModelConfig::from_file(&dir.join("config.json"))?)]
        }
        None => a
            .preset
            .as_deref()
            .unwrap_or("llama-3.2-1b")
            .split(',')
            .map(|p| Ok((p.trim().to_string(), encore_models::presets::preset(p.trim())?)))
            .collect::<Result<_>>()?,
    };
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    for (name, m) in &models {
        if m.kv_cache_bytes(max_batch, a.ctx, dtype).is_none() {
            bail!("--ctx: a KV cache of {max_batch} sequences x {} positions for {name} overflows 64 bits", a.ctx);
        }
    }
    Ok(Checked { dtype, ordinal, modes, batches, models, weights, quant })
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.what.is_none() && a.device == "cpu" {
        return bench_cpu(&a, dtype_or(&a, encore_tensor::DType::F32)?);
    }
    let checked = check(&a)?;
    if a.what.is_some() {
        bench_launch(&a, checked)
    } else {
        bench_model(&a, checked)
    }
}

/// `--device cpu`: a real model file (`--model`, default: the default model), prefill and
/// eager decode tok/s.
fn bench_cpu(a: &BenchArgs, dtype: encore_tensor::DType) -> Result<()> {
    use encore_engine::bench_cpu::{run_cpu_bench, CpuBenchConfig};
    if a.preset.is_some() {
        bail!("--preset: presets are random-weight CUDA shapes; on --device cpu give a model file with --model");
    }
    if a.capture_all || a.modes.is_some() || a.pdl || a.decode_min_chunk.is_some() {
        bail!("--device cpu runs eagerly: --modes, --capture-all, --pdl and --decode-min-chunk are CUDA flags");
    }
    if a.quantize.is_some() {
        bail!("--quantize: random blocks are a CUDA bench of presets; on --device cpu give a model file with --model");
    }
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
fn bench_model(_: &BenchArgs, _: Checked) -> Result<()> {
    bail!("bench: this encore was built without CUDA; rebuild with `--features cuda`")
}

/// The report's model name, with the settings that change what ran.
#[cfg(feature = "cuda")]
fn bench_name(name: &str, quant: Option<encore_tensor::QuantType>, pdl: bool, min_chunk: Option<u32>) -> String {
    let mut notes = Vec::new();
    if let Some(q) = quant {
        notes.push(format!("{q} random blocks"));
    }
    if pdl {
        notes.push("pdl".to_string());
    }
    if let Some(k) = min_chunk {
        notes.push(format!("decode min chunk {k}"));
    }
    if notes.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({})", notes.join(", "))
    }
}

#[cfg(not(feature = "cuda"))]
fn bench_launch(a: &BenchArgs, c: Checked) -> Result<()> {
    bench_model(a, c)
}

#[cfg(feature = "cuda")]
fn bench_model(a: &BenchArgs, c: Checked) -> Result<()> {
    use encore_engine::bench::{run_bench, BenchConfig, BenchMode};
    let Checked { dtype, ordinal, modes, batches, models, weights, quant } = c;
    let modes: Vec<BenchMode> = modes
        .iter()
        .map(|m| m.parse::<BenchMode>().map_err(|e| anyhow::anyhow!("--modes: {e}")))
        .collect::<Result<_>>()?;
    let mut reports = Vec::new();
    for (name, model) in models {
        let cfg = BenchConfig {
            name: bench_name(&name, quant, a.pdl, a.decode_min_chunk),
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
            weights: weights.clone(),
            quant,
            pdl: a.pdl,
            decode_min_chunk: a.decode_min_chunk,
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
fn bench_launch(a: &BenchArgs, c: Checked) -> Result<()> {
    use encore_cuda::{CudaDevice, LaunchBenchConfig, LaunchParamMode};
    let (dtype, ordinal) = (c.dtype, c.ordinal);
    let modes: Vec<LaunchParamMode> = c
        .modes
        .iter()
        .map(|m| m.parse::<LaunchParamMode>().map_err(|e| anyhow::anyhow!("--modes: {e}")))
        .collect::<Result<_>>()?;
    let dev = CudaDevice::new(ordinal).map_err(|e| anyhow::anyhow!("--device cuda:{ordinal}: {e}"))?;
    let cfg = LaunchBenchConfig { ops: a.ops, reps: a.steps, dtype, modes, ..Default::default() };
    let r = encore_cuda::bench_launch(&dev, cfg)?;
    println!("{}", r.to_table());
    if let Some(path) = &a.json {
        std::fs::write(path, r.to_json()).map_err(|e| anyhow::anyhow!("--json {}: {e}", path.display()))?;
    }
    Ok(())
}
